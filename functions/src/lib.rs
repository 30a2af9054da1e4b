//! Wiring shared by the Lambda functions: configuration, stores, tracing, the runtime loop.
//! Each binary in `src/bin/` names its route and calls [`serve`]; all logic lives in the core.

use std::convert::Infallible;

use lambda_http::{service_fn, Error, Request};
use seatkeeper_core::http::{handle, Op};
use seatkeeper_core::{telemetry, Config, Service};

/// Connects to the stores named by the environment (once per cold start).
pub async fn service() -> Result<Service, Error> {
    telemetry::init();
    let config = Config::from_env()?;
    Ok(Service::connect(config).await?)
}

/// Serves one route of the core's route table under the Lambda runtime.
pub async fn serve(op: Op) -> Result<(), Error> {
    let svc = service().await?;
    let svc = &svc;
    lambda_http::run(service_fn(move |req: Request| async move { Ok::<_, Infallible>(handle(svc, op, req).await) }))
        .await
}
