//! The local runner: serves every route of the core's route table over HTTP through the very same
//! handlers the Lambda functions run, and runs the sweep on its interval.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use seatkeeper_core::http::{dispatch, ApiError, MAX_BODY_BYTES};
use seatkeeper_core::lambda_body::{Body, Request};
use seatkeeper_core::sweep::SweepScope;
use seatkeeper_core::Service;
use tokio::net::TcpListener;

pub mod admin;

/// Serves HTTP/1.1 on `listener` until `shutdown` completes.
pub async fn serve(svc: Service, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let svc = svc.clone();
                async move { Ok::<_, Infallible>(handle(&svc, req).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
}

/// One request: read the body up to the contract's limit, then hand it to the core's router.
async fn handle(svc: &Service, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let resp = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let body = if bytes.is_empty() {
                Body::Empty
            } else {
                match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => Body::Text(text),
                    Err(e) => Body::Binary(e.into_bytes()),
                }
            };
            dispatch(svc, Request::from_parts(parts, body)).await
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => ApiError::payload_too_large().into_response(),
        Err(_) => ApiError::bad_body("the request body could not be read").into_response(),
    };
    resp.map(|body| {
        Full::new(match body {
            Body::Text(t) => Bytes::from(t),
            Body::Binary(b) => Bytes::from(b),
            _ => Bytes::new(),
        })
    })
}

/// Runs the scheduled sweep every `interval`, forever. A failed run is logged; the next one
/// finishes the job.
pub async fn sweep_every(svc: Service, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        run_sweep(&svc, &SweepScope::default()).await;
    }
}

/// One sweep with its structured summary and metrics line; `None` when it could not run.
pub async fn run_sweep(svc: &Service, scope: &SweepScope) -> Option<seatkeeper_core::sweep::SweepReport> {
    match svc.sweep(scope).await {
        Ok(report) => {
            tracing::info!(
                slots = report.slots,
                expired = report.expired,
                orphan_seats = report.orphan_seats,
                orphan_rows = report.orphan_rows,
                repaired = report.repaired,
                heartbeats_written = report.heartbeats_written,
                failed_slots = report.failed_slots,
                duration_ms = report.duration_ms,
                "sweep finished"
            );
            Some(report)
        }
        Err(e) => {
            tracing::warn!(error = %e, "sweep could not run; the next one will");
            None
        }
    }
}
