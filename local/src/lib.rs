//! The local runner: serves every route of the core's route table over HTTP through the very same
//! handlers the Lambda functions run, and runs the sweep on its interval.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, ORIGIN, TRANSFER_ENCODING};
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use seatkeeper_core::http::{dispatch, with_cors, ApiError, MAX_BODY_BYTES};
use seatkeeper_core::lambda_body::{Body, Request};
use seatkeeper_core::ops::sweep::SweepScope;
use seatkeeper_core::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub mod admin;

/// File descriptors kept back from the connection limit for everything else the process opens:
/// Redis, the ledger pool, SQLite's files, the listener, stdio, the runtime's own.
const RESERVED_FDS: u64 = 64;

/// How the runner protects itself from slow, idle or abusive clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`SEATKEEPER_MAX_CONNECTIONS`). Beyond it the runner stops
    /// accepting; new connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time to receive a request head (`SEATKEEPER_HEADER_TIMEOUT_SECONDS`). The clock starts
    /// whenever the connection waits for a request, so it is also the idle keep-alive timeout.
    pub header_timeout: Duration,
    /// Time to receive a request body once its head has arrived (`SEATKEEPER_BODY_TIMEOUT_SECONDS`).
    pub body_timeout: Duration,
}

impl Limits {
    /// The defaults: 10 s for a head or an idle keep-alive, 10 s for a body, and as many
    /// connections as the open-file limit leaves room for beside the ledger pool.
    pub fn defaults(ledger_pool_size: u32) -> Self {
        Limits {
            max_connections: default_max_connections(ledger_pool_size),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }

    pub fn from_env(ledger_pool_size: u32) -> Result<Self, String> {
        Self::from_lookup(ledger_pool_size, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(ledger_pool_size: u32, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let num = |name: &str| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or(format!("{name} must be a whole number, 1 or more"))
                })
                .transpose()
        };
        let d = Self::defaults(ledger_pool_size);
        Ok(Limits {
            max_connections: num("SEATKEEPER_MAX_CONNECTIONS")?.map_or(d.max_connections, |n| n as usize),
            header_timeout: num("SEATKEEPER_HEADER_TIMEOUT_SECONDS")?.map_or(d.header_timeout, Duration::from_secs),
            body_timeout: num("SEATKEEPER_BODY_TIMEOUT_SECONDS")?.map_or(d.body_timeout, Duration::from_secs),
        })
    }
}

/// The soft open-file limit less what the rest of the process needs, at least 1, at most 10,000.
fn default_max_connections(ledger_pool_size: u32) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
    soft.saturating_sub(RESERVED_FDS + u64::from(ledger_pool_size)).clamp(1, 10_000) as usize
}

/// Serves HTTP/1.1 on `listener` with the default limits until `shutdown` completes.
pub async fn serve(svc: Service, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let limits = Limits::defaults(svc.config().ledger_pool_size);
    serve_with(svc, listener, limits, shutdown).await
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes. A failed `accept()` (out of file
/// descriptors, a connection aborted before it was taken) is logged and retried after a short
/// pause that doubles up to a second; it never ends the loop.
pub async fn serve_with(
    svc: Service,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // History leaves the outbox in the background, as soon as a request has written it.
    svc.start_history_writer();
    // Webhooks, when configured, go from the queue the drain fills, never from a request.
    svc.start_webhook_sender();
    let finished = svc.clone();
    let shutdown = async move {
        shutdown.await;
        // What this process wrote and has not moved yet; anything left waits in Redis.
        finished.flush_history(Duration::from_secs(2)).await;
    };
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A read EOF while a response is being made does not abort it: the guard below ends the
        // read side after a malformed head, and the responses owed before it still go out.
        .half_close(true);
    let http = Arc::new(http);
    let mut backoff = Duration::from_millis(5);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return Ok(()),
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; pausing");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (svc, http, body_timeout) = (svc.clone(), http.clone(), limits.body_timeout);
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(svc, &http, stream, body_timeout).await;
        });
    }
}

async fn serve_connection(
    svc: Service,
    http: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    body_timeout: Duration,
) {
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, Infallible>(handle(&svc, req, body_timeout).await) }
    });
    match http.serve_connection(TokioIo::new(Guarded::new(stream)), service).without_shutdown().await {
        Ok(parts) => {
            let mut io = parts.io.into_inner();
            if let Some(err) = io.rejected.take() {
                // The answers owed to the requests before it are out: answer the malformed head.
                let bytes = raw_response(err);
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    io.io.write_all(&bytes).await?;
                    io.io.shutdown().await
                })
                .await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "connection closed"),
    }
}

/// One request: refuse a declared body over the limit at once, read the body up to the limit
/// within the body timeout, then hand it to the core's router.
async fn handle(svc: &Service, req: hyper::Request<Incoming>, body_timeout: Duration) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let origin = parts.headers.get(ORIGIN).cloned();
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    // After a chunked body the guard no longer knows where requests start: end the connection.
    let mut close = parts.headers.contains_key(TRANSFER_ENCODING);
    // An answer given here, before the core's router, gets the same CORS headers as any other.
    let early = |err: ApiError| with_cors(svc, origin.as_ref(), err.into_response());
    let resp = if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // The body is never read: the connection cannot carry another request.
        close = true;
        early(ApiError::payload_too_large())
    } else {
        match tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                let body = if bytes.is_empty() {
                    Body::Empty
                } else {
                    match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => Body::Text(text),
                        Err(e) => Body::Binary(e.into_bytes()),
                    }
                };
                let req = Request::from_parts(parts, body);
                // The runner's own route: one process's counters (see `seatkeeper_core::metrics`).
                let read = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                if read && req.uri().path() == "/metrics" {
                    with_cors(svc, origin.as_ref(), seatkeeper_core::http::metrics(svc, &req).await)
                } else if read && seatkeeper_core::http::is_console(req.uri().path()) {
                    // The console: static pages that call the API with the operator's token.
                    seatkeeper_core::http::console(req.uri().path())
                } else {
                    dispatch(svc, req).await
                }
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                close = true;
                early(ApiError::payload_too_large())
            }
            Ok(Err(_)) => {
                close = true;
                early(ApiError::bad_body("the request body could not be read"))
            }
            Err(_) => {
                close = true;
                early(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the request body did not arrive within {} s", body_timeout.as_secs()),
                ))
            }
        }
    };
    let mut resp = resp.map(|body| {
        Full::new(match body {
            Body::Text(t) => Bytes::from(t),
            Body::Binary(b) => Bytes::from(b),
            _ => Bytes::new(),
        })
    });
    if close {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

// ---- errors raised below the handlers ----
//
// hyper answers a request head it cannot parse with a bare status line (400, 414 or 431, no
// body), and has no hook to shape that answer. So each request head is read and checked here,
// with the same parser hyper uses, before hyper sees it: a good head goes on to hyper unchanged;
// a bad one ends the read side, and once hyper has answered every request before it, the
// contract's error is written and the connection closed. Bodies are passed through by their
// Content-Length, so keep-alive and pipelining keep working; after a chunked body the connection
// is closed (see `handle`).

/// A request head (request line and headers) over this many bytes: `431 headers_too_large`.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A request line over this many bytes: `414 uri_too_long`.
const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// Header lines in a request, as hyper's default.
const MAX_HEADERS: usize = 100;

enum Framing {
    /// The next bytes start a request head.
    Head,
    /// This many bytes of a body remain.
    Body(u64),
    /// Past a chunked body: everything goes to hyper unchecked.
    Opaque,
}

/// A connection whose request heads are checked before hyper reads them.
struct Guarded {
    io: TcpStream,
    /// Bytes read from the socket that hyper has not taken yet.
    buf: Vec<u8>,
    /// How many leading bytes of `buf` are checked and may go to hyper.
    passable: usize,
    framing: Framing,
    /// The answer to a malformed head; hyper sees the end of the stream instead of it.
    rejected: Option<ApiError>,
    eof: bool,
}

impl Guarded {
    fn new(io: TcpStream) -> Self {
        Guarded { io, buf: Vec::new(), passable: 0, framing: Framing::Head, rejected: None, eof: false }
    }

    /// Marks as passable what the framing allows, checking each complete head.
    fn advance(&mut self) {
        while self.rejected.is_none() && self.passable < self.buf.len() {
            match self.framing {
                Framing::Opaque => self.passable = self.buf.len(),
                Framing::Body(left) => {
                    let take = left.min((self.buf.len() - self.passable) as u64);
                    self.passable += take as usize;
                    self.framing = if take == left { Framing::Head } else { Framing::Body(left - take) };
                }
                Framing::Head => match check_head(&self.buf[self.passable..]) {
                    Ok(Some((len, framing))) => {
                        self.passable += len;
                        self.framing = framing;
                    }
                    Ok(None) => return,
                    Err(e) => self.rejected = Some(e),
                },
            }
        }
    }
}

fn below(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// `Ok(None)`: the head is not complete yet (and within the limits).
fn check_head(bytes: &[u8]) -> Result<Option<(usize, Framing)>, ApiError> {
    let line_len = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len());
    if line_len > MAX_REQUEST_LINE_BYTES {
        return Err(below(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request line is over {MAX_REQUEST_LINE_BYTES} bytes"),
        ));
    }
    let too_large = || {
        below(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header lines"),
        )
    };
    let malformed =
        |what: String| below(StatusCode::BAD_REQUEST, "invalid_request", format!("malformed request: {what}"));
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => return Err(malformed(e.to_string())),
    };
    let target = req.path.unwrap_or_default();
    if target.parse::<hyper::Uri>().is_err() {
        return Err(malformed(format!("{:?} is not a request target", target.chars().take(64).collect::<String>())));
    }
    // The same rules as hyper's parser, which reads the head after this and would answer a bare
    // 400 of its own to what it refuses.
    let mut framing = Framing::Head;
    let mut length: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if req.version != Some(1) {
                return Err(malformed("Transfer-Encoding needs HTTP/1.1".into()));
            }
            let last = std::str::from_utf8(h.value).ok().and_then(|v| v.rsplit(',').next()).map(str::trim);
            if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
                return Err(malformed("Transfer-Encoding must end with chunked".into()));
            }
            framing = Framing::Opaque;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only: no sign, no list, no spaces inside.
            let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
            let value = digits.then(|| std::str::from_utf8(h.value).ok()?.parse::<u64>().ok()).flatten();
            match (value, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(malformed("Content-Length is not one whole number".into())),
            }
        }
    }
    match (framing, length) {
        (Framing::Opaque, _) => Ok(Some((len, Framing::Opaque))),
        (_, Some(n)) if n > 0 => Ok(Some((len, Framing::Body(n)))),
        _ => Ok(Some((len, Framing::Head))),
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.passable > 0 {
                let n = this.passable.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                this.passable -= n;
                return Poll::Ready(Ok(()));
            }
            if this.rejected.is_some() || this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
            }
            this.buf.extend_from_slice(chunk.filled());
            this.advance();
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An error as HTTP/1.1 bytes, closing the connection.
fn raw_response(err: ApiError) -> Vec<u8> {
    let resp = err.into_response();
    let body: &[u8] = match resp.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    let status = resp.status();
    let mut out = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in resp.headers() {
        out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
    }
    out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Runs the scheduled sweep every `interval`, forever. A failed run is logged; the next one
/// finishes the job.
/// Moves every slot's outbox into the ledger at the start and then every `interval`: what a
/// process that died (or another instance) left behind, between the sweeps.
pub async fn drain_history_every(svc: Service, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match svc.drain_all_history().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "moved history left in the outbox into the ledger"),
            Err(e) => tracing::warn!(error = %e, "could not list the slots to drain; trying again later"),
        }
    }
}

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
pub async fn run_sweep(svc: &Service, scope: &SweepScope) -> Option<seatkeeper_core::ops::sweep::SweepReport> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn limits(vars: &[(&str, &str)]) -> Result<Limits, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Limits::from_lookup(8, |k| map.get(k).cloned())
    }

    #[test]
    fn limits_default_from_the_open_file_limit_and_take_overrides() {
        let d = limits(&[]).unwrap();
        assert_eq!(d, Limits::defaults(8));
        assert!((1..=10_000).contains(&d.max_connections));
        let l = limits(&[
            ("SEATKEEPER_MAX_CONNECTIONS", "50"),
            ("SEATKEEPER_HEADER_TIMEOUT_SECONDS", "3"),
            ("SEATKEEPER_BODY_TIMEOUT_SECONDS", "4"),
        ])
        .unwrap();
        assert_eq!(
            l,
            Limits {
                max_connections: 50,
                header_timeout: Duration::from_secs(3),
                body_timeout: Duration::from_secs(4)
            }
        );
        for bad in ["0", "-1", "many", ""] {
            let err = limits(&[("SEATKEEPER_MAX_CONNECTIONS", bad)]).unwrap_err();
            assert!(err.contains("SEATKEEPER_MAX_CONNECTIONS"), "{err}");
        }
    }

    #[test]
    fn heads_are_framed_by_their_length() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        let (len, framing) = check_head(head).unwrap().unwrap();
        assert_eq!(&head[..len], b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(framing, Framing::Body(3)));
        assert!(check_head(b"GET /x HTTP/1.1\r\nHost: a").unwrap().is_none(), "incomplete");
        assert!(matches!(
            check_head(b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some((_, Framing::Opaque)))
        ));
        let status = |b: &[u8]| check_head(b).err().map(|e| e.status.as_u16());
        assert_eq!(status(b"GET /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /x HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"), Some(400));
        assert_eq!(status(&[b'x'; MAX_REQUEST_LINE_BYTES + 1]), Some(414));
    }
}
