//! The webhook sender on Lambda (an EventBridge schedule, every minute): sends what is due in
//! the queue the outbox's drain fills (see `seatkeeper_functions::serve_webhooks`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    seatkeeper_functions::serve_webhooks().await
}
