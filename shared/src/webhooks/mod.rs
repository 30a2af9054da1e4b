//! Webhooks by the Standard Webhooks specification, fed from the outbox: while a slot's outbox
//! is drained (`service::outbox`), the changes an operator is told of become deliveries in a queue
//! in Redis (`seats::queue`), added before the outbox entries are deleted. Senders (the runner's
//! background task, or the scheduled `webhooks` function on Lambda) take what is due, sign it and
//! POST it; a failure is retried with back-off. Nothing of this runs on a client's request path,
//! and a process that dies loses nothing: what it held comes due again.
//!
//! Events: `session.force_ended` (an operator ended a session), `license.near_capacity` (a grant
//! left the feature at 90 % of its limit or more; at most one per license and feature per
//! minute) and `seat.limit_reached` (creates were refused in a minute; one per license, feature
//! and minute, sent once that minute is over, with `refusals` counting them all).

pub mod sign;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::domain::{rfc3339_ms, EndReason, Slot};
use crate::error::Result;
use crate::ledger::Ledger;
use crate::seats::queue::{Claimed, Delivery};
use crate::seats::{OutboxEvent, SeatStore};

pub use crate::config::WebhookConfig;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub const FORCE_ENDED: &str = "session.force_ended";
pub const NEAR_CAPACITY: &str = "license.near_capacity";
pub const LIMIT_REACHED: &str = "seat.limit_reached";

/// How long after a minute's end its `seat.limit_reached` is sent (creates of that minute that
/// were still in flight have been counted by then).
const LIMIT_GRACE_MS: i64 = 1_000;
/// Waits after each failed attempt; after the last, the delivery is given up (and logged).
/// About 29 hours in all, as the specification's own schedule.
const RETRY_DELAYS_MS: [u64; 10] =
    [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];
/// A POST that has not answered by then failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a taken delivery stays hidden from other senders: longer than a POST may take.
const CLAIM_LEASE_MS: u64 = 30_000;
/// Deliveries taken, and sent side by side, per round.
const CLAIM_BATCH: usize = 32;
/// How often the background sender looks for what came due without a nudge (retries, minutes
/// that closed).
const POLL: Duration = Duration::from_millis(500);

/// The deliveries a drained batch of one slot's outbox gives (pure: the outbox entries' ids and
/// contents decide every id, so draining a batch twice gives the same ones).
pub fn deliveries_of(slot: &Slot, batch: &[(String, OutboxEvent)]) -> Vec<Delivery> {
    let mut out: Vec<Delivery> = Vec::new();
    for (entry_id, event) in batch {
        let (kind, id, due_ms, created_ms, data) = match event {
            OutboxEvent::End { session_id, reason: EndReason::ForceEnded, at_ms, user, .. } => (
                FORCE_ENDED,
                event_id(slot, FORCE_ENDED, entry_id),
                None,
                *at_ms,
                json!({"sessionId": session_id, "userId": user, "endedAt": rfc3339_ms(*at_ms)}),
            ),
            OutboxEvent::Start { created_ms, active, limit, .. }
                if *limit > 0 && u64::from(*active) * 10 >= u64::from(*limit) * 9 =>
            {
                let minute = created_ms - created_ms.rem_euclid(60_000);
                (
                    NEAR_CAPACITY,
                    event_id(slot, NEAR_CAPACITY, &minute.to_string()),
                    None,
                    *created_ms,
                    json!({"active": active, "limit": limit, "at": rfc3339_ms(*created_ms)}),
                )
            }
            OutboxEvent::Refused { minute_ms, limit, active, scope } => (
                LIMIT_REACHED,
                event_id(slot, LIMIT_REACHED, &minute_ms.to_string()),
                Some(minute_ms + 60_000 + LIMIT_GRACE_MS),
                minute_ms + 60_000,
                json!({
                    "minuteStart": rfc3339_ms(*minute_ms),
                    "refusals": Value::Null,
                    "limit": limit,
                    "activeAtFirstRefusal": active,
                    "firstScope": scope,
                }),
            ),
            _ => continue,
        };
        if out.iter().any(|d| d.id == id) {
            continue;
        }
        let mut data = data;
        data["licenseId"] = json!(slot.license.as_str());
        data["feature"] = json!(slot.feature.as_str());
        let body = json!({"id": id, "type": kind, "createdAt": rfc3339_ms(created_ms), "data": data});
        out.push(Delivery { id, due_ms, body: body.to_string() });
    }
    out
}

/// `msg_` and 32 hex digits of a hash of what the event tells of.
fn event_id(slot: &Slot, kind: &str, key: &str) -> String {
    let mut h = Sha256::new();
    for part in [slot.license.as_str(), slot.feature.as_str(), kind, key] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// What one round of sending did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    pub delivered: u64,
    pub failed: u64,
    pub given_up: u64,
}

/// The sender.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    seats: SeatStore,
    ledger: Arc<dyn Ledger>,
    config: WebhookConfig,
    client: HttpClient,
    wake: Notify,
    started: AtomicBool,
}

impl Webhooks {
    pub fn new(seats: SeatStore, ledger: Arc<dyn Ledger>, config: WebhookConfig) -> Self {
        crate::seats::install_crypto_provider();
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "no root certificates found: https webhooks will fail");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Webhooks {
            inner: Arc::new(Inner {
                seats,
                ledger,
                config,
                client,
                wake: Notify::new(),
                started: AtomicBool::new(false),
            }),
        }
    }

    /// Something was queued: the background sender looks now.
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Sends everything due now, round after round, until nothing due is left.
    pub async fn send_due(&self) -> Result<SendReport> {
        let mut report = SendReport::default();
        loop {
            let taken = self.inner.seats.webhook_claim(CLAIM_BATCH, CLAIM_LEASE_MS).await?;
            let n = taken.len();
            let outcomes = futures::future::join_all(taken.into_iter().map(|c| self.send_one(c))).await;
            for outcome in outcomes {
                let (counter, label) = match outcome? {
                    Sent::Delivered => (&mut report.delivered, "delivered"),
                    Sent::Failed => (&mut report.failed, "failed"),
                    Sent::GivenUp => (&mut report.given_up, "given_up"),
                };
                *counter += 1;
                let labels = crate::metrics::OutcomeLabels { outcome: label.to_owned() };
                crate::metrics::metrics().webhook_deliveries.get_or_create(&labels).inc();
            }
            if n < CLAIM_BATCH {
                return Ok(report);
            }
        }
    }

    async fn send_one(&self, claimed: Claimed) -> Result<Sent> {
        let body = self.complete(&claimed.body).await?;
        let id = claimed.id.as_str();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign::signature(&self.inner.config.secrets, id, timestamp, body.as_bytes());
        let request = hyper::Request::post(self.inner.config.url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", concat!("seatkeeper/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| crate::Error::seat_store(format!("a webhook request: {e}")))?;
        // Redirects are not followed: a 3xx is a failure like any answer but 2xx.
        let failure = match tokio::time::timeout(SEND_TIMEOUT, self.inner.client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => None,
            Ok(Ok(r)) => Some(format!("the receiver answered {}", r.status().as_u16())),
            Ok(Err(e)) if e.is_connect() => Some("the receiver could not be reached".to_owned()),
            Ok(Err(_)) => Some("the request failed".to_owned()),
            Err(_) => Some(format!("no answer within {SEND_TIMEOUT:?}")),
        };
        let Some(failure) = failure else {
            self.inner.seats.webhook_done(id).await?;
            return Ok(Sent::Delivered);
        };
        match RETRY_DELAYS_MS.get(claimed.attempts as usize) {
            Some(&delay) => {
                tracing::warn!(
                    webhook_id = id,
                    attempt = claimed.attempts + 1,
                    retry_in_ms = delay,
                    "webhook not delivered: {failure}"
                );
                self.inner.seats.webhook_retry(id, delay, &body).await?;
                Ok(Sent::Failed)
            }
            None => {
                tracing::error!(
                    webhook_id = id,
                    attempts = claimed.attempts + 1,
                    "webhook given up after its last retry: {failure}"
                );
                self.inner.seats.webhook_done(id).await?;
                Ok(Sent::GivenUp)
            }
        }
    }

    /// A `seat.limit_reached` is queued with `refusals` open; its first attempt, after its minute
    /// is over, counts them (in Redis, plus any the sweep moved to the ledger already), and every
    /// later attempt sends that same body.
    async fn complete(&self, body: &str) -> Result<String> {
        let mut v: Value =
            serde_json::from_str(body).map_err(|e| crate::Error::seat_store(format!("queued webhook: {e}")))?;
        if v["type"] != LIMIT_REACHED || !v["data"]["refusals"].is_null() {
            return Ok(body.to_owned());
        }
        let d = &v["data"];
        let parse = |k: &'static str, v: &Value| crate::domain::Ident::parse(k, v.as_str().unwrap_or_default());
        let (Ok(license), Ok(feature)) = (parse("licenseId", &d["licenseId"]), parse("feature", &d["feature"])) else {
            return Ok(body.to_owned());
        };
        let minute = chrono::DateTime::parse_from_rfc3339(d["minuteStart"].as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis())
            .unwrap_or_default();
        let slot = Slot { license, feature };
        let in_redis: u64 =
            self.inner.seats.rejections(&slot).await?.iter().filter(|(m, _)| *m == minute).map(|(_, n)| n).sum();
        let in_ledger = match self.inner.ledger.stats(&slot.license, minute, minute + 59_999).await {
            Ok(stats) => stats.get(slot.feature.as_str()).map_or(0, |s| s.limit_rejections),
            Err(e) => {
                tracing::warn!(error = %e, "counting a minute's refusals without the ledger's share");
                0
            }
        };
        v["data"]["refusals"] = json!((in_redis + in_ledger).max(1));
        Ok(v.to_string())
    }

    /// Reads the queue's depth into the metrics (at scrape time).
    pub async fn refresh_gauges(&self) {
        match self.inner.seats.webhook_backlog().await {
            Ok((waiting, overdue_ms)) => {
                let m = crate::metrics::metrics();
                m.webhook_queue.set(waiting as i64);
                m.webhook_queue_overdue_seconds.set(overdue_ms as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the webhook queue for /metrics"),
        }
    }

    /// Starts the background sender of a long-lived process (once).
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.send_due().await {
                    tracing::warn!(error = %e, "webhook queue unreachable; retrying");
                }
                let _ = tokio::time::timeout(POLL, me.inner.wake.notified()).await;
            }
        });
    }
}

enum Sent {
    Delivered,
    Failed,
    GivenUp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Ident;

    fn slot() -> Slot {
        Slot { license: Ident::parse("l", "acme").unwrap(), feature: Ident::parse("f", "export").unwrap() }
    }

    fn start(sid: &str, created_ms: i64, active: u32, limit: u32) -> OutboxEvent {
        OutboxEvent::Start {
            session_id: sid.into(),
            user: "u".into(),
            device: None,
            token_hash: "th".into(),
            idempotency_key: None,
            metadata: None,
            created_ms,
            expires_ms: created_ms + 90_000,
            active,
            limit,
        }
    }

    fn end(sid: &str, reason: EndReason) -> OutboxEvent {
        OutboxEvent::End {
            session_id: sid.into(),
            reason,
            at_ms: 1_000,
            last_heartbeat_ms: 900,
            user: Some("u".into()),
        }
    }

    fn body(d: &Delivery) -> Value {
        serde_json::from_str(&d.body).unwrap()
    }

    #[test]
    fn only_operator_facing_changes_become_deliveries() {
        let batch = vec![
            ("1-0".to_owned(), start("a", 0, 1, 10)),
            ("2-0".to_owned(), end("a", EndReason::Ended)),
            ("3-0".to_owned(), end("b", EndReason::Expired)),
            ("4-0".to_owned(), end("c", EndReason::ForceEnded)),
        ];
        let out = deliveries_of(&slot(), &batch);
        assert_eq!(out.len(), 1, "{out:?}");
        let v = body(&out[0]);
        assert_eq!(v["type"], FORCE_ENDED);
        assert_eq!(v["id"], out[0].id.as_str());
        assert_eq!(v["data"]["sessionId"], "c");
        assert_eq!(v["data"]["userId"], "u");
        assert_eq!(v["data"]["licenseId"], "acme");
        assert_eq!(v["data"]["feature"], "export");
        assert_eq!(out[0].due_ms, None, "sent at once");
    }

    #[test]
    fn ids_follow_what_they_tell_of() {
        let batch = vec![("4-0".to_owned(), end("c", EndReason::ForceEnded))];
        assert_eq!(deliveries_of(&slot(), &batch), deliveries_of(&slot(), &batch), "a batch drained twice");
        let other = vec![("5-0".to_owned(), end("c", EndReason::ForceEnded))];
        assert_ne!(deliveries_of(&slot(), &batch)[0].id, deliveries_of(&slot(), &other)[0].id);
        assert!(deliveries_of(&slot(), &batch)[0].id.starts_with("msg_"));
    }

    #[test]
    fn near_capacity_is_one_per_minute_at_ninety_percent() {
        let batch = vec![
            ("1-0".to_owned(), start("a", 60_000, 8, 10)),
            ("2-0".to_owned(), start("b", 60_001, 9, 10)),
            ("3-0".to_owned(), start("c", 60_002, 10, 10)),
            ("4-0".to_owned(), start("d", 120_000, 10, 10)),
            ("5-0".to_owned(), start("e", 120_000, 1, 1)),
        ];
        let out = deliveries_of(&slot(), &batch);
        assert_eq!(out.len(), 2, "one for each minute: {out:?}");
        assert_eq!(body(&out[0])["data"]["active"], 9);
        assert_eq!(body(&out[1])["createdAt"], "1970-01-01T00:02:00.000Z");
        assert!(deliveries_of(&slot(), &[("1-0".to_owned(), start("a", 0, 1, 0))]).is_empty(), "no limit known");
    }

    #[test]
    fn a_minute_of_refusals_is_sent_after_it_ends_with_the_count_open() {
        let batch = vec![(
            "1-0".to_owned(),
            OutboxEvent::Refused { minute_ms: 120_000, limit: 3, active: 3, scope: "license".into() },
        )];
        let out = deliveries_of(&slot(), &batch);
        assert_eq!(out[0].due_ms, Some(181_000));
        let v = body(&out[0]);
        assert_eq!(v["type"], LIMIT_REACHED);
        assert_eq!(v["data"]["refusals"], Value::Null, "counted at the first attempt");
        assert_eq!(v["data"]["minuteStart"], "1970-01-01T00:02:00.000Z");
    }
}
