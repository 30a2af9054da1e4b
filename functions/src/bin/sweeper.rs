//! The scheduled sweep (an EventBridge schedule, every SEATKEEPER_SWEEP_INTERVAL_SECONDS).
//! Logs one structured summary and one CloudWatch Embedded Metric Format line per run, and fails
//! the invocation when a slot could not be swept (see `seatkeeper_functions::sweep`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    seatkeeper_functions::serve_sweeper().await
}
