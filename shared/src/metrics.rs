//! The process's metrics, in Prometheus's data model (the `prometheus-client` crate): one registry
//! per process, fed where things happen (a request answered, an outbox batch committed, a refusal,
//! a sweep, a webhook sent) and rendered in the text format by the local runner's `/metrics`.
//! Names follow Prometheus's conventions: base units (seconds), `_total` for counters, a
//! `seatkeeper_` prefix. Labels stay bounded: routes come from the route table, features are the
//! product's feature names, never license or user ids.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    pub feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub feature: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub sessions_started: Family<FeatureLabels, Counter>,
    pub sessions_ended: Family<EndLabels, Counter>,
    pub limit_refusals: Family<FeatureLabels, Counter>,
    pub store_errors: Family<StoreLabels, Counter>,
    pub outbox_entries_drained: Counter,
    pub sweeps: Counter,
    pub sweep_expired: Counter,
    pub sweep_orphans_removed: Counter,
    pub sweep_repaired: Counter,
    pub sweep_failed_slots: Counter,
    pub webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// Read at scrape time from the queue in Redis.
    pub webhook_queue: Gauge,
    pub webhook_queue_overdue_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn new() -> Metrics {
    let mut registry = Registry::with_prefix("seatkeeper");
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register("http_requests", "HTTP requests answered, by route (operation id) and status", requests.clone());
    // 0.5 ms to about 16 s.
    let request_seconds =
        Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
    registry.register("http_request_duration_seconds", "Time to answer a request, by route", request_seconds.clone());
    let sessions_started = Family::<FeatureLabels, Counter>::default();
    registry.register(
        "sessions_started",
        "Sessions granted a seat, as their history reached the ledger through this process",
        sessions_started.clone(),
    );
    let sessions_ended = Family::<EndLabels, Counter>::default();
    registry.register(
        "sessions_ended",
        "Sessions over, by reason, as their history reached the ledger through this process",
        sessions_ended.clone(),
    );
    let limit_refusals = Family::<FeatureLabels, Counter>::default();
    registry.register(
        "limit_refusals",
        "Creates refused with 409 seat_limit_reached, by feature",
        limit_refusals.clone(),
    );
    let store_errors = Family::<StoreLabels, Counter>::default();
    registry.register("store_errors", "Requests answered 503 because a store failed, by store", store_errors.clone());
    let outbox_entries_drained = Counter::default();
    registry.register(
        "outbox_entries_drained",
        "Outbox entries committed to the ledger and deleted",
        outbox_entries_drained.clone(),
    );
    let sweeps = Counter::default();
    registry.register("sweeps", "Sweeps run", sweeps.clone());
    let sweep_expired = Counter::default();
    registry.register("sweep_expired_sessions", "Leases the sweep found run out and recorded", sweep_expired.clone());
    let sweep_orphans_removed = Counter::default();
    registry.register(
        "sweep_orphans_removed",
        "Orphans (seats without rows, rows without seats) removed",
        sweep_orphans_removed.clone(),
    );
    let sweep_repaired = Counter::default();
    registry.register("sweep_repaired", "Drift between the stores the sweep mended", sweep_repaired.clone());
    let sweep_failed_slots = Counter::default();
    registry.register(
        "sweep_failed_slots",
        "Slots a sweep could not sweep (a store failed)",
        sweep_failed_slots.clone(),
    );
    let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "webhook_deliveries",
        "Webhook delivery attempts, by outcome (delivered, failed and retried, given_up)",
        webhook_deliveries.clone(),
    );
    let webhook_queue = Gauge::default();
    registry.register("webhook_queue", "Webhook deliveries waiting in Redis", webhook_queue.clone());
    let webhook_queue_overdue_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    registry.register(
        "webhook_queue_overdue_seconds",
        "How long the most overdue waiting webhook delivery has been due",
        webhook_queue_overdue_seconds.clone(),
    );
    Metrics {
        registry,
        requests,
        request_seconds,
        sessions_started,
        sessions_ended,
        limit_refusals,
        store_errors,
        outbox_entries_drained,
        sweeps,
        sweep_expired,
        sweep_orphans_removed,
        sweep_repaired,
        sweep_failed_slots,
        webhook_deliveries,
        webhook_queue,
        webhook_queue_overdue_seconds,
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// `route`: an operation id of the route table (static: a request costs no allocation here).
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.request_seconds.get_or_create(&RouteLabels { route }).observe(took.as_secs_f64());
    }

    pub fn feature(feature: &str) -> FeatureLabels {
        FeatureLabels { feature: feature.to_owned() }
    }

    /// The text exposition format (`text/plain; version=0.0.4`, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One CloudWatch Embedded Metric Format line (metrics from a log line, no agent needed):
/// `metrics` as (name, unit, value) in namespace `seatkeeper`, with `dimensions` as (name, value).
pub fn emf_line(
    now_ms: i64,
    dimensions: &[(&str, serde_json::Value)],
    metrics: &[(&str, &str, serde_json::Value)],
) -> String {
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": "seatkeeper",
                "Dimensions": [dimensions.iter().map(|(d, _)| *d).collect::<Vec<_>>()],
                "Metrics": metrics.iter().map(|(name, unit, _)| serde_json::json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }],
        },
    });
    for (name, value) in dimensions {
        line[*name] = value.clone();
    }
    for (name, _, value) in metrics {
        line[*name] = value.clone();
    }
    line.to_string()
}

/// The EMF line for a request a Lambda function answered: what `/metrics` counts in the runner,
/// for CloudWatch, by route (each instance would count alone).
pub fn request_emf_line(route: &str, status: u16, took: Duration, now_ms: i64) -> String {
    emf_line(
        now_ms,
        &[("route", route.into())],
        &[
            ("Requests", "Count", 1.into()),
            ("Latency", "Milliseconds", (took.as_secs_f64() * 1000.0).into()),
            ("LimitRefusals", "Count", u8::from(status == 409).into()),
            ("StoreErrors", "Count", u8::from(status == 503).into()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_emf_line_by_route() {
        let v: serde_json::Value =
            serde_json::from_str(&request_emf_line("createSession", 409, Duration::from_millis(4), 7)).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 7);
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["route"]]));
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(v.get(*name).is_some(), "every metric named has a value: {name}");
        }
        assert_eq!(
            (v["route"].as_str(), v["LimitRefusals"].as_u64(), v["StoreErrors"].as_u64()),
            (Some("createSession"), Some(1), Some(0))
        );
        assert!((v["Latency"].as_f64().unwrap() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = metrics();
        m.request("createSession", 201, Duration::from_millis(3));
        m.limit_refusals.get_or_create(&Metrics::feature("export")).inc();
        let text = m.render();
        assert!(text.contains("# TYPE seatkeeper_http_requests counter"), "{text}");
        assert!(text.contains(r#"seatkeeper_http_requests_total{route="createSession",status="201"}"#), "{text}");
        assert!(
            text.contains("# UNIT seatkeeper_http_request_duration_seconds seconds")
                || text.contains("seatkeeper_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains(r#"seatkeeper_limit_refusals_total{feature="export"}"#), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    }
}
