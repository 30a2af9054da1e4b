//! Item 6: the resident memory of one function process under load. The heartbeat Lambda function
//! runs as a real process against a stand-in for the Lambda Runtime API served here (the same HTTP
//! protocol: long-poll `next`, post `response`), fed API Gateway HTTP API (v2) events back to back,
//! one at a time as Lambda does. Its memory is read from /proc before the first event (right after
//! init) and under load. Baseline for its rate: the same heartbeats by raw EVALSHA from one client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use crate::infra::{database, free_port, ledger_backend, progress, rss, RedisServer, Stack};
use crate::load::Lat;
use crate::raw::{self, Shas};
use crate::report::Row;
use crate::Args;

struct RuntimeApi {
    next: Mutex<mpsc::Receiver<(String, String)>>,
    pending: Mutex<HashMap<String, oneshot::Sender<u16>>>,
    polled: Notify,
    init_error: Mutex<Option<String>>,
}

fn event(token: &str, n: u64) -> String {
    serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /api/licenses/sessions/heartbeat",
        "rawPath": "/api/licenses/sessions/heartbeat",
        "rawQueryString": "",
        "headers": {
            "authorization": format!("Bearer {token}"),
            "content-length": "0",
            "host": "bench.execute-api.localhost",
            "user-agent": "seatkeeper-bench",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.execute-api.localhost",
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": "/api/licenses/sessions/heartbeat",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "seatkeeper-bench"
            },
            "requestId": format!("req-{n}"),
            "routeKey": "POST /api/licenses/sessions/heartbeat",
            "stage": "$default",
            "time": "01/Jan/2030:00:00:00 +0000",
            "timeEpoch": 1_893_456_000_000u64
        },
        "isBase64Encoded": false
    })
    .to_string()
}

async fn handle(api: Arc<RuntimeApi>, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let reply = |status: u16, body: &'static str| {
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("response")
    };
    if path == "/2018-06-01/runtime/invocation/next" {
        api.polled.notify_one();
        let next = api.next.lock().await.recv().await;
        let Some((id, body)) = next else {
            // Done: hold the poll until the process is stopped.
            std::future::pending::<()>().await;
            unreachable!();
        };
        let deadline = raw::chrono_now_ms() + 30_000;
        return hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("lambda-runtime-aws-request-id", id)
            .header("lambda-runtime-deadline-ms", deadline.to_string())
            .header("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:heartbeat")
            .header("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000")
            .body(Full::new(Bytes::from(body)))
            .expect("response");
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path == "/2018-06-01/runtime/init/error" {
        *api.init_error.lock().await = Some(String::from_utf8_lossy(&body).into_owned());
        return reply(202, "{}");
    }
    if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
        let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
        let status = match kind {
            "response" => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["statusCode"].as_u64())
                .unwrap_or(0) as u16,
            _ => 599,
        };
        if let Some(tx) = api.pending.lock().await.remove(id) {
            let _ = tx.send(status);
        }
        return reply(202, "{}");
    }
    reply(404, "{}")
}

/// The real `heartbeat` function binary when it is built beside this one, else this binary.
fn function_command(a: &Args) -> (PathBuf, Vec<&'static str>, &'static str) {
    if let Some(p) = &a.function_bin {
        return (p.clone(), vec![], "heartbeat function binary");
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(sibling) = exe.parent().map(|d| d.join("heartbeat")).filter(|p| p.is_file()) {
            return (sibling, vec![], "heartbeat function binary");
        }
        return (exe, vec!["internal-function"], "heartbeat function (seatkeeper_functions::serve in this binary)");
    }
    (PathBuf::from("heartbeat"), vec![], "heartbeat function binary")
}

pub async fn run(a: &Args, redis: &RedisServer, rows: &mut Vec<Row>) -> Result<()> {
    let backend = ledger_backend(&a.http_ledger)?;
    let invocations = a.function_invocations();
    redis.flushall().await?;
    let db = database(backend, &a.urls()).await?;
    let stack = Stack::connect(&redis.url, &db).await?;
    let seated =
        crate::scen_heartbeat::seat_sessions(&stack.svc, "bench-fn", "bench-fn-key-0123456789abcdef", 100, 100).await?;
    stack.close().await;

    let (tx, rx) = mpsc::channel(1);
    let api = Arc::new(RuntimeApi {
        next: Mutex::new(rx),
        pending: Mutex::new(HashMap::new()),
        polled: Notify::new(),
        init_error: Mutex::new(None),
    });
    let port = free_port()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let api = api.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(handle(api, req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        })
    };
    let (exe, args, what) = function_command(a);
    let env = [
        ("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}")),
        ("AWS_LAMBDA_FUNCTION_NAME", "heartbeat".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/heartbeat".to_owned()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".to_owned()),
        ("SEATKEEPER_REDIS_URL", redis.url.clone()),
        ("SEATKEEPER_LEDGER_URL", db.url.clone()),
        ("SEATKEEPER_LEDGER_POOL_SIZE", crate::infra::ledger_pool_size().to_string()),
    ];
    let result = async {
        let child = crate::scen_http::spawn(&exe, &args, &env, "heartbeat function")?;
        let pid = child.pid();
        tokio::time::timeout(Duration::from_secs(30), api.polled.notified())
            .await
            .context("the function never polled the runtime API for its first event")?;
        let (idle_rss, _) = rss(pid).context("reading the function's memory")?;
        progress(format!(
            "function: {what} (pid {pid}) ready, {:.1} MiB resident; {invocations} invocations",
            idle_rss as f64 / 1048576.0
        ));
        let mut lat = Lat::default();
        let mut peak = idle_rss;
        let started = Instant::now();
        for n in 0..invocations as u64 {
            let id = format!("req-{n}");
            let (rtx, rrx) = oneshot::channel();
            api.pending.lock().await.insert(id.clone(), rtx);
            let t = Instant::now();
            tx.send((id, event(&seated.tokens[(n % 100) as usize], n))).await.context("runtime API stopped")?;
            let status = tokio::time::timeout(Duration::from_secs(10), rrx)
                .await
                .context("the function did not answer within 10 s")?
                .context("runtime API dropped the invocation")?;
            lat.push(t.elapsed());
            if status != 200 {
                bail!("invocation {n} answered status {status}; init error: {:?}", api.init_error.lock().await);
            }
            if n % 250 == 0 {
                peak = peak.max(rss(pid).map_or(0, |r| r.0));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let (cur, hwm) = rss(pid).unwrap_or((0, 0));
        peak = peak.max(cur).max(hwm);
        child.stop().await;
        anyhow::Ok((idle_rss, peak, lat, secs))
    }
    .await;
    server.abort();
    let (idle_rss, peak, mut lat, secs) = result?;

    // Baseline for the rate: the same heartbeats by raw EVALSHA, one client, one at a time.
    let mut conn = redis.conn().await?;
    let shas = Shas::load(&mut conn).await?;
    let mut base = Lat::default();
    let t0 = Instant::now();
    for n in 0..invocations {
        let (p, sid, th) = &seated.raw[n % 100];
        let t = Instant::now();
        let v = raw::raw_heartbeat(&mut conn, &shas, p, sid, th).await?;
        raw::expect_tag(&v, "ok").map_err(anyhow::Error::msg)?;
        base.push(t.elapsed());
    }
    let base_secs = t0.elapsed().as_secs_f64();
    rows.push(
        Row::new(
            6,
            "memory.function_rss",
            format!("heartbeat function resident memory, {invocations} invocations"),
            peak as f64 / 1048576.0,
            "MiB",
        )
        .baseline(idle_rss as f64 / 1048576.0, "same process right after init, before its first event")
        .note(what),
    );
    let bname = "raw EVALSHA heartbeat.lua, one client";
    rows.push(
        Row::new(
            6,
            "function.rate",
            "function invocations/s (one process, one at a time)",
            invocations as f64 / secs,
            "/s",
        )
        .baseline(invocations as f64 / base_secs, bname),
    );
    rows.push(
        Row::new(6, "function.p50", "function invocation p50 (runtime API round trip)", lat.pct_ms(50.0), "ms")
            .baseline(base.pct_ms(50.0), bname),
    );
    drop(db);
    Ok(())
}
