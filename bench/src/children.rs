//! The processes the benchmarks start, run by re-executing this binary with a hidden subcommand so
//! that the measured process holds nothing but what it serves:
//!
//! - `internal-runner`: what `seatkeeper serve` does (telemetry, `Service::connect` from the
//!   environment, the sweep on its interval, `seatkeeper_local::serve`);
//! - `internal-static`: the same hyper HTTP/1.1 server shape answering a fixed heartbeat-sized JSON
//!   body with no service behind it (the HTTP baseline);
//! - `internal-function`: the heartbeat Lambda function, `seatkeeper_functions::serve(Op::Heartbeat)`,
//!   used when the real `heartbeat` binary is not built next to this one.
//!
//! Each child exits when its standard input closes, so a parent that dies leaves nothing behind.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Exits the process when stdin reaches EOF (the parent closed it or died).
fn exit_with_parent() {
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

pub fn runner(listen: SocketAddr) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        exit_with_parent();
        seatkeeper_core::telemetry::init();
        let config = match seatkeeper_core::Config::from_env() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("runner: {e}");
                return ExitCode::from(2);
            }
        };
        let svc = match seatkeeper_core::Service::connect(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("runner: {e:?}");
                return ExitCode::from(3);
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("runner: {e}");
                return ExitCode::from(4);
            }
        };
        tokio::spawn(seatkeeper_local::sweep_every(svc.clone(), svc.config().sweep_interval));
        match seatkeeper_local::serve(svc, listener, std::future::pending()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(5),
        }
    })
}

/// A heartbeat answer's shape and size, fixed.
pub const STATIC_BODY: &str = r#"{"expiresAt":"2030-01-01T00:00:00.000Z","heartbeatIntervalSeconds":30,"resurrected":false,"sessionId":"0123456789abcdef0123456789abcdef"}"#;

pub fn static_server(listen: SocketAddr) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        exit_with_parent();
        let Ok(listener) = tokio::net::TcpListener::bind(listen).await else { return ExitCode::from(4) };
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let resp = hyper::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(STATIC_BODY.as_bytes())))
                        .expect("static response");
                    Ok::<_, Infallible>(resp)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

pub fn function() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        exit_with_parent();
        match seatkeeper_functions::serve(seatkeeper_core::http::Op::Heartbeat).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("function: {e}");
                ExitCode::from(1)
            }
        }
    })
}
