//! The scheduled sweep (an EventBridge schedule, every SEATKEEPER_SWEEP_INTERVAL_SECONDS).
//! Logs one structured summary and one CloudWatch Embedded Metric Format line per run.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use seatkeeper_core::sweep::SweepScope;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let svc = seatkeeper_functions::service().await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
        let report = svc.sweep(&SweepScope::default()).await?;
        tracing::info!(?report, "sweep finished");
        println!("{}", report.emf_line(seatkeeper_core::domain::now_ms()));
        Ok::<_, Error>(serde_json::to_value(&report)?)
    }))
    .await
}
