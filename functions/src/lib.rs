//! Wiring shared by the Lambda functions: configuration, stores, tracing, the runtime loop.
//! Each binary in `src/bin/` names its route and calls [`serve`]; all logic lives in the core.
//!
//! The runtime loop is lambda_runtime's `run_concurrent` (feature `concurrency-tokio`): on classic
//! Lambda (`AWS_LAMBDA_MAX_CONCURRENCY` unset or 1) it polls one event at a time like `run`; where
//! the environment allows several invocations per instance (Lambda Managed Instances, and
//! `cargo lambda watch`) it polls that many at once. Plain `run` cannot, and says so in a warning
//! at every start whenever the variable is set.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use lambda_http::{service_fn, Error, Request};
use lambda_runtime::{Diagnostic, LambdaEvent};
use seatkeeper_core::domain::now_ms;
use seatkeeper_core::http::{handle, Op, ROUTES};
use seatkeeper_core::metrics::request_emf_line;
use seatkeeper_core::ops::sweep::{SweepReport, SweepScope};
use seatkeeper_core::{telemetry, Config, Service};
use serde_json::Value;

/// Connects to the stores named by the environment (once per cold start).
pub async fn service() -> Result<Arc<Service>, Error> {
    telemetry::init();
    let config = Config::from_env()?;
    Ok(Arc::new(Service::connect(config).await?))
}

/// How long a function spends, once its answer is made and before it hands it back, moving the history its request wrote to
/// the outbox into the ledger. A ledger that is away costs a request at most this; what is left
/// waits in Redis for the next request on that license or the sweeper.
pub const HISTORY_BUDGET: std::time::Duration = std::time::Duration::from_millis(150);

/// Serves one route of the core's route table under the Lambda runtime; logs one CloudWatch
/// Embedded Metric Format line per request (route, latency, refusals, store errors).
pub async fn serve(op: Op) -> Result<(), Error> {
    let svc = service().await?;
    let route = ROUTES.iter().find(|r| r.op == op).map_or("unknown", |r| r.operation_id);
    lambda_http::run_concurrent(service_fn(move |req: Request| {
        let svc = Arc::clone(&svc);
        async move {
            let started = std::time::Instant::now();
            let response = handle(&svc, op, req).await;
            println!("{}", request_emf_line(route, response.status().as_u16(), started.elapsed(), now_ms()));
            // No work survives the answer on Lambda (the instance freezes): the history goes now.
            svc.flush_history(HISTORY_BUDGET).await;
            Ok::<_, Infallible>(response)
        }
    }))
    .await
}

/// Runs the scheduled sweep under the Lambda runtime: one sweep per event, whatever the event.
pub async fn serve_sweeper() -> Result<(), Error> {
    let svc = service().await?;
    lambda_runtime::run_concurrent(lambda_runtime::service_fn(move |_event: LambdaEvent<Value>| {
        let svc = Arc::clone(&svc);
        async move { sweep(&svc).await }
    }))
    .await
}

/// Sends the webhooks that are due under the Lambda runtime (an EventBridge schedule, every
/// minute): on Lambda nothing runs between invocations, so this is the sender. Fails the
/// invocation when the queue cannot be read; a delivery that failed is retried by the queue.
pub async fn serve_webhooks() -> Result<(), Error> {
    let svc = service().await?;
    lambda_runtime::run_concurrent(lambda_runtime::service_fn(move |_event: LambdaEvent<Value>| {
        let svc = Arc::clone(&svc);
        async move {
            let report = svc.send_webhooks().await.map_err(|e| Diagnostic {
                error_type: "WebhooksFailed".into(),
                error_message: format!("the webhook queue could not be read: {e}"),
            })?;
            tracing::info!(?report, "webhooks sent");
            Ok::<_, Diagnostic>(match report {
                Some(r) => serde_json::json!({"delivered": r.delivered, "failed": r.failed, "givenUp": r.given_up}),
                None => serde_json::json!({"webhooks": "not configured"}),
            })
        }
    }))
    .await
}

/// One sweep. Logs the report and its CloudWatch Embedded Metric Format line, then answers the
/// report, or fails the invocation when any slot could not be swept: Lambda's `Errors` metric,
/// alarms and the asynchronous retry then see a sweep that did not finish its work.
pub async fn sweep(svc: &Service) -> Result<Value, Diagnostic> {
    let report = svc.sweep(&SweepScope::default()).await.map_err(|e| Diagnostic {
        error_type: "SweepFailed".into(),
        error_message: format!("the sweep could not run: {e}"),
    })?;
    println!("{}", report.emf_line(now_ms()));
    if report.failed_slots > 0 {
        tracing::error!(?report, "sweep incomplete");
        return Err(SweepIncomplete(report).into());
    }
    tracing::info!(?report, "sweep finished");
    serde_json::to_value(&report)
        .map_err(|e| Diagnostic { error_type: "SweepReport".into(), error_message: e.to_string() })
}

/// A sweep that ran but could not sweep every slot.
#[derive(Debug)]
pub struct SweepIncomplete(pub SweepReport);

impl fmt::Display for SweepIncomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} slots could not be swept (a store is down or refused); see the sweep report in the log",
            self.0.failed_slots, self.0.slots
        )
    }
}

impl std::error::Error for SweepIncomplete {}

impl From<SweepIncomplete> for Diagnostic {
    fn from(e: SweepIncomplete) -> Self {
        Diagnostic { error_type: "SweepIncomplete".into(), error_message: e.to_string() }
    }
}
