//! HTTP at its edges: the runner under floods and slow or malformed clients, HEAD, CORS preflight,
//! Cache-Control, and a service that starts while its ledger is down. Real runner (in-process, or
//! the `seatkeeper` binary where the open-file limit matters), real Redis, real ledgers.
//!
//! Waits here are bounded waits for a timeout to fire or an answer to arrive, never measurements.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use seatkeeper_local::{serve_with, Limits};
use seatkeeper_tests::seatkeeper_core::http::{handle, ROUTES};
use seatkeeper_tests::seatkeeper_core::Service;
use seatkeeper_tests::{
    seatkeeper_bin, spawn_runner, unique, Backend, Database, Options, Proxy, RedisServer, Resp, TestApp, ADMIN_TOKEN,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on any single wait for an answer or a close.
const BOUND: Duration = Duration::from_secs(15);

// ---- raw HTTP/1.1 ----

/// One answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The contract's error shape with this status and code.
    fn expect_error(&self, status: u16, code: &str) {
        let v = self.json();
        assert_eq!(self.status, status, "{self:?} {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only `error` at the top: {v}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
    }
}

/// Splits what a server wrote into answers (every answer here has a Content-Length).
fn parse_answers(mut bytes: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let body = bytes[end + 4..end + 4 + len].to_vec();
        bytes = &bytes[end + 4 + len..];
        out.push(Raw { status, headers, body });
    }
    assert!(bytes.is_empty(), "trailing bytes: {:?}", String::from_utf8_lossy(bytes));
    out
}

/// Reads until the server closes the connection; panics if it does not within `BOUND`.
async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, conn.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!("the server did not close the connection; read so far: {:?}", String::from_utf8_lossy(&out))
        })
        .expect("read");
    out
}

/// Reads one whole answer (head and Content-Length body) off a kept-alive connection.
async fn read_answer(conn: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return parse_answers(&buf).remove(0);
            }
        }
        let n = tokio::time::timeout(BOUND, conn.read(&mut chunk)).await.expect("an answer in time").expect("read");
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to the runner")
}

// ---- a second runner over a TestApp's service, with chosen limits ----

async fn runner_with(svc: Service, limits: Limits) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (addr, tokio::spawn(serve_with(svc, listener, limits, std::future::pending())))
}

fn short_limits() -> Limits {
    Limits { max_connections: 64, header_timeout: Duration::from_secs(1), body_timeout: Duration::from_secs(1) }
}

async fn call(base: &str, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Resp {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}")).timeout(BOUND);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.expect("request reaches the runner");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    Resp { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers }
}

// ---- 1. floods and slow clients ----

/// Slow heads, idle keep-alive connections and slow bodies are cut off; a body the client never
/// sends is answered 408 in the contract's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_time_out() {
    let app = TestApp::start(Backend::Sqlite).await;
    let (addr, _server) = runner_with(app.svc.clone(), short_limits()).await;

    // Half a head, then nothing: closed without an answer.
    let mut c = connect(&addr).await;
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(read_to_close(&mut c).await.is_empty(), "a timed-out head gets no answer");

    // A served request, then silence: the kept-alive connection is closed.
    let mut c = connect(&addr).await;
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut c).await.status, 200);
    assert!(read_to_close(&mut c).await.is_empty(), "an idle keep-alive connection is closed");

    // A body announced and never finished: 408 request_timeout, then closed.
    let mut c = connect(&addr).await;
    c.write_all(b"POST /api/licenses/sessions/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"se")
        .await
        .unwrap();
    let answers = parse_answers(&read_to_close(&mut c).await);
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers[0].expect_error(408, "request_timeout");
}

/// A declared Content-Length over 16 KiB is answered 413 at once, without waiting for the body,
/// and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_declared_body_is_refused_at_once() {
    let app = TestApp::start(Backend::Sqlite).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    for len in ["16385", "10000000000"] {
        let mut c = connect(&addr).await;
        let head = format!("POST /api/licenses/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{{");
        c.write_all(head.as_bytes()).await.unwrap();
        let answers = parse_answers(&read_to_close(&mut c).await);
        assert_eq!(answers.len(), 1, "{answers:?}");
        answers[0].expect_error(413, "payload_too_large");
    }
    // At the limit the body is read and judged.
    let r = app.raw(Method::POST, "/api/licenses/sessions", Some("k"), vec![b' '; 16 * 1024]).await;
    let err = r.expect_error(400, "invalid_request");
    assert_eq!(err["field"], "userId", "16 KiB is within the limit, and read: {r:?}");
}

/// At the connection limit the runner stops accepting; a waiting connection is served as soon as
/// another one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_one() {
    let app = TestApp::start(Backend::Sqlite).await;
    let limits = Limits { max_connections: 3, header_timeout: Duration::from_secs(60), ..short_limits() };
    let (addr, _server) = runner_with(app.svc.clone(), limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&addr).await;
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_answer(&mut c).await.status, 200);
        held.push(c);
    }
    let mut waiting = connect(&addr).await;
    waiting.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), waiting.read(&mut byte)).await;
    assert!(early.is_err(), "a fourth connection is not served while three are open: {early:?}");
    drop(held.pop());
    // Reading again is safe: the timed-out read took nothing.
    assert_eq!(read_answer(&mut waiting).await.status, 200, "served once a connection closed");
}

/// `seatkeeper serve` as a child process under an open-file limit of 256, on a fresh SQLite ledger.
struct Child {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
    _redis: RedisServer,
    _db: Database,
}

impl Child {
    /// On a fresh SQLite ledger, once /health answers 200.
    async fn start(env: &[(&str, &str)]) -> Self {
        let db = Database::create(Backend::Sqlite).await;
        let url = db.url.clone();
        let mut runner = Self::start_on(db, &url, env).await;
        runner.health_ok().await;
        runner
    }

    /// On `db` reached through `ledger_url`, once the runner answers HTTP at all.
    async fn start_on(db: Database, ledger_url: &str, env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start().await;
        let log = std::env::temp_dir().join(unique("sk-http-edges-"));
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n 256 && exec "$0" "$@""#)
            .arg(seatkeeper_bin())
            .env("SEATKEEPER_REDIS_URL", &redis.url)
            .env("SEATKEEPER_LEDGER_URL", ledger_url)
            .env("SEATKEEPER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env_remove("SEATKEEPER_MAX_CONNECTIONS")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap());
        let (child, base) = spawn_runner(cmd, Some(&log)).await;
        let mut runner = Child { child, base, log, _redis: redis, _db: db };
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if reqwest::get(format!("{}/health", runner.base)).await.is_ok() {
                break;
            }
            runner.assert_alive();
            assert!(tokio::time::Instant::now() < deadline, "seatkeeper serve did not come up: {}", runner.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runner
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("seatkeeper serve exited ({status}): {}", self.log_text());
        }
    }

    /// /health answers 200 within the bound (the request may wait in the listen backlog).
    async fn health_ok(&mut self) {
        let r = call(&self.base, Method::GET, "/health", &[], None).await;
        assert_eq!(r.status, 200, "{r:?}");
        self.assert_alive();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Opens `n` TCP connections and leaves them idle.
async fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            tokio::time::timeout(BOUND, TcpStream::connect(addr)).await.expect("connect in time").expect("connect"),
        );
    }
    conns
}

/// The issue's flood: 256 open files, 300 idle connections. With the connection limit set above
/// what the process can open, accept() fails with EMFILE: the runner logs it, pauses, goes on, and
/// answers as soon as the idle connections time out. It migrated its fresh ledger at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_survives_accept_failures() {
    let mut runner =
        Child::start(&[("SEATKEEPER_MAX_CONNECTIONS", "1000"), ("SEATKEEPER_HEADER_TIMEOUT_SECONDS", "1")]).await;
    let flood = idle_connections(runner.addr(), 300).await;
    runner.health_ok().await;
    assert!(
        runner.log_text().contains("accept failed"),
        "the flood did exhaust the descriptors: {}",
        runner.log_text()
    );
    drop(flood);
    runner.health_ok().await;
    let r = call(
        &runner.base,
        Method::PUT,
        "/api/licenses/after-flood",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        Some(json!({"features": {"f": {"maxSessions": 1}}})),
    )
    .await;
    assert_eq!(r.status, 201, "serve migrated its ledger at start: {r:?}");
}

/// With the default limit (from the open-file limit) the same flood never exhausts the
/// descriptors: the runner stops accepting first, and serves again once the flood is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_connection_limit_stays_below_the_open_file_limit() {
    let mut runner = Child::start(&[("SEATKEEPER_HEADER_TIMEOUT_SECONDS", "60")]).await;
    let flood = idle_connections(runner.addr(), 300).await;
    // Each of the flood's connections that the runner accepted is open and idle; give it a moment
    // to accept all it will, then check that it never ran out of descriptors.
    tokio::time::sleep(Duration::from_secs(1)).await;
    runner.assert_alive();
    drop(flood);
    runner.health_ok().await;
    assert!(!runner.log_text().contains("accept failed"), "{}", runner.log_text());
}

// ---- 2. errors raised below the handlers ----

/// Malformed heads get the contract's error shape, after the answers owed to the requests before
/// them on the same connection; bodies are framed by Content-Length, so a body that looks like a
/// bad head is a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_the_error_shape() {
    let app = TestApp::start(Backend::Sqlite).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /health HTTP/1.1\r\n{many_headers}\r\n");
    let big_headers = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "v".repeat(20_000));
    let cases: [(&str, &[u8], u16, &str); 10] = [
        // What hyper's own parser refuses is refused first, in the contract's shape.
        ("a signed length", b"POST /health HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde", 400, "invalid_request"),
        ("a listed length", b"POST /health HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab", 400, "invalid_request"),
        (
            "chunked on HTTP/1.0",
            b"POST /health HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "invalid_request",
        ),
        ("garbage request line", b"GARBAGE\r\n\r\n", 400, "invalid_request"),
        ("bad version", b"GET /health HTTP/9.9\r\n\r\n", 400, "invalid_request"),
        ("bad header name", b"GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "invalid_request"),
        (
            "two lengths",
            b"POST /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            "invalid_request",
        ),
        ("URI too long", long_uri.as_bytes(), 414, "uri_too_long"),
        ("too many headers", many_headers.as_bytes(), 431, "headers_too_large"),
        ("headers too long", big_headers.as_bytes(), 431, "headers_too_large"),
    ];
    for (what, bytes, status, code) in cases {
        let mut c = connect(&addr).await;
        c.write_all(bytes).await.unwrap();
        let answers = parse_answers(&read_to_close(&mut c).await);
        assert_eq!(answers.len(), 1, "{what}: {answers:?}");
        answers[0].expect_error(status, code);
        assert_eq!(answers[0].header("cache-control"), Some("no-store"), "{what}");
    }

    // Pipelined: a body holding a bad-looking head, a good request, then a bad one.
    let mut c = connect(&addr).await;
    let body = b"GARBAGE\r\n\r\n";
    let mut bytes =
        format!("POST /api/licenses/sessions/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nNOT A REQUEST\r\n\r\n");
    c.write_all(&bytes).await.unwrap();
    let answers = parse_answers(&read_to_close(&mut c).await);
    assert_eq!(answers.len(), 3, "{answers:?}");
    answers[0].expect_error(400, "invalid_request");
    assert!(answers[0].json()["error"]["message"].as_str().unwrap().contains("JSON"), "{:?}", answers[0].json());
    assert_eq!(answers[1].status, 200, "{:?}", answers[1]);
    assert_eq!(answers[1].json()["status"], "ok");
    answers[2].expect_error(400, "invalid_request");

    // Keep-alive goes on across requests with bodies.
    let mut c = connect(&addr).await;
    for _ in 0..3 {
        c.write_all(b"POST /api/licenses/sessions/cleanup HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        read_answer(&mut c).await.expect_error(401, "unauthorized");
    }
}

// ---- 3. HEAD ----

/// A concrete path and admin-credentialed request for every GET route.
async fn get_routes(app: &TestApp) -> Vec<(&'static str, seatkeeper_tests::seatkeeper_core::http::Op, String)> {
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    app.create_ok(&key, "u1").await;
    ROUTES
        .iter()
        .filter(|r| r.method == Method::GET)
        .map(|r| {
            let path = match r.operation_id {
                "debugSessions" => format!("{}?userId=u1&feature=f", r.path),
                "sessionStats" | "getLicense" | "licenseSessions" => r.path.replace("{licenseId}", &license),
                "listLicenses" => format!("{}?limit=5", r.path),
                "licenseUsage" => format!("{}?feature=f", r.path.replace("{licenseId}", &license)),
                "health" | "openapi" => r.path.to_owned(),
                other => panic!("give the GET route {other} a path here"),
            };
            (r.operation_id, r.op, path)
        })
        .collect()
}

fn without_date(h: &reqwest::header::HeaderMap) -> BTreeSet<(String, String)> {
    h.iter().filter(|(n, _)| *n != "date").map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned())).collect()
}

/// HEAD answers every GET route with the GET answer's status and headers and no body, through
/// the runner and through each function's own handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_works_wherever_get_does() {
    let app = TestApp::start(Backend::Sqlite).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (name, op, path) in get_routes(&app).await {
        let get = app.http.get(format!("{}{path}", app.base)).header("authorization", &auth).send().await.unwrap();
        let (get_status, get_headers) = (get.status(), get.headers().clone());
        let get_body = get.bytes().await.unwrap();
        assert_eq!(get_status, 200, "GET {name}");
        let head = app.http.head(format!("{}{path}", app.base)).header("authorization", &auth).send().await.unwrap();
        assert_eq!(head.status(), get_status, "HEAD {name}");
        assert_eq!(without_date(head.headers()), without_date(&get_headers), "HEAD {name}: the same headers");
        assert_eq!(head.headers()["content-length"], get_body.len().to_string().as_str(), "HEAD {name}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {name}: no body");

        // The function's own handler.
        let req = |m: &str| {
            lambda_http::http::Request::builder()
                .method(m)
                .uri(format!("https://abc.execute-api.eu-west-1.amazonaws.com{path}"))
                .header("authorization", &auth)
                .body(lambda_http::Body::Empty)
                .unwrap()
        };
        let get = handle(&app.svc, op, req("GET")).await;
        let head = handle(&app.svc, op, req("HEAD")).await;
        assert_eq!((head.status(), get.status().as_u16()), (get.status(), 200), "function {name}");
        let get_len = match get.body() {
            lambda_http::Body::Text(t) => t.len(),
            other => panic!("function {name}: text body, not {other:?}"),
        };
        assert!(matches!(head.body(), lambda_http::Body::Empty), "function {name}: HEAD has no body");
        assert_eq!(head.headers()["content-length"], get_len.to_string().as_str(), "function {name}");
        for (n, v) in get.headers() {
            assert_eq!(head.headers().get(n), Some(v), "function {name}: header {n}");
        }
    }
    // HEAD on a route that is not GET is a wrong method.
    let r = app.request(Method::HEAD, "/api/licenses/sessions/heartbeat", None, None).await;
    assert_eq!(r.status, 405, "{r:?}");
}

// ---- 4. CORS ----

const EXTENSION: &str = "chrome-extension://abcdefghijklmnopabcdefghijklmnop";
const WEB_APP: &str = "https://app.example.com";

/// The methods a preflight should allow on each distinct path of the route table.
fn paths_and_methods(license: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for r in ROUTES {
        let path = r.path.replace("{licenseId}", license).replace("{userId}", "u1").replace("{feature}", "f");
        let mut methods = BTreeSet::from([r.method.to_string(), "OPTIONS".to_owned()]);
        if r.method == Method::GET {
            methods.insert("HEAD".into());
        }
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, m)) => m.extend(methods),
            None => out.push((path, methods)),
        }
    }
    out
}

fn method_set(v: Option<&str>) -> BTreeSet<String> {
    v.unwrap_or("").split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect()
}

/// Preflights from configured origins (an extension among them) get 204 with the path's methods;
/// answers to them carry Allow-Origin and Vary; other origins get no CORS headers and a 403 on
/// preflight; the runner and each function answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_configured_origins_only() {
    let opts = Options { cors_origins: vec![EXTENSION.into(), WEB_APP.into()], ..Default::default() };
    let app = TestApp::start_with(Backend::Sqlite, opts).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5})).await;
    for origin in [EXTENSION, WEB_APP] {
        for (path, methods) in paths_and_methods(&license) {
            let pre = [
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization, content-type"),
            ];
            let r = call(&app.base, Method::OPTIONS, &path, &pre, None).await;
            assert_eq!(r.status, 204, "preflight {path} from {origin}: {r:?}");
            assert_eq!(r.header("access-control-allow-origin"), Some(origin), "{path}");
            assert_eq!(method_set(r.header("access-control-allow-methods")), methods, "{path}");
            let allowed = method_set(r.header("access-control-allow-headers"));
            assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{path}: {allowed:?}");
            assert!(
                r.header("access-control-max-age").and_then(|v| v.parse::<u32>().ok()).is_some_and(|s| s > 0),
                "{r:?}"
            );
            assert_eq!(r.header("vary"), Some("Origin"), "{path}");
        }
        // The actual request: a create, with the origin echoed.
        let r = call(
            &app.base,
            Method::POST,
            "/api/licenses/sessions",
            &[("origin", origin), ("authorization", &format!("Bearer {key}"))],
            Some(json!({"userId": "u-cors", "feature": "f"})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("vary"), Some("Origin"));
        assert_eq!(r.header("access-control-expose-headers"), Some("Retry-After"));
    }

    // An answer the runner gives before the router (413 on a declared length) carries them too.
    let mut c = connect(app.base.trim_start_matches("http://")).await;
    let head = format!(
        "POST /api/licenses/sessions HTTP/1.1\r\nHost: x\r\nOrigin: {EXTENSION}\r\nContent-Length: 20000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let answers = parse_answers(&read_to_close(&mut c).await);
    answers[0].expect_error(413, "payload_too_large");
    assert_eq!(answers[0].header("access-control-allow-origin"), Some(EXTENSION), "{answers:?}");

    // Another origin: preflight refused in the error shape, answers without CORS headers.
    let stranger = [("origin", "https://evil.example"), ("access-control-request-method", "POST")];
    let r = call(&app.base, Method::OPTIONS, "/api/licenses/sessions", &stranger, None).await;
    r.expect_error(403, "forbidden");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = call(&app.base, Method::GET, "/health", &stranger[..1], None).await;
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, None), "{r:?}");
    assert_eq!(r.header("vary"), Some("Origin"), "the answer depends on Origin");
    // An unknown path is still 404, and OPTIONS without an Origin just lists the methods.
    let r = call(&app.base, Method::OPTIONS, "/nope", &[("origin", EXTENSION)], None).await;
    r.expect_error(404, "not_found");
    let r = call(&app.base, Method::OPTIONS, "/health", &[], None).await;
    assert_eq!((r.status, method_set(r.header("allow"))), (204, method_set(Some("GET, HEAD, OPTIONS"))), "{r:?}");

    // Each function answers its own path's preflight the same way.
    for route in ROUTES {
        let path = route.path.replace("{licenseId}", &license).replace("{userId}", "u1").replace("{feature}", "f");
        let req = lambda_http::http::Request::builder()
            .method("OPTIONS")
            .uri(format!("https://abc.execute-api.eu-west-1.amazonaws.com{path}"))
            .header("origin", EXTENSION)
            .header("access-control-request-method", route.method.as_str())
            .body(lambda_http::Body::Empty)
            .unwrap();
        let resp = handle(&app.svc, route.op, req).await;
        assert_eq!(resp.status(), 204, "function {}", route.operation_id);
        assert_eq!(resp.headers()["access-control-allow-origin"], EXTENSION);
        let methods = paths_and_methods(&license).into_iter().find(|(p, _)| *p == path).unwrap().1;
        let got = method_set(resp.headers().get("access-control-allow-methods").and_then(|v| v.to_str().ok()));
        assert_eq!(got, methods, "function {}", route.operation_id);
    }
}

// ---- 5. Cache-Control ----

/// Answers that carry a session token or a license key are never stored by a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_key_answers_are_no_store() {
    let app = TestApp::start(Backend::Sqlite).await;
    let put =
        app.admin(Method::PUT, "/api/licenses/lic-cache", Some(json!({"features": {"f": {"maxSessions": 3}}}))).await;
    assert_eq!(put.status, 201, "{put:?}");
    assert!(put.body["key"].is_string());
    assert_eq!(put.header("cache-control"), Some("no-store"), "a generated key");
    let key = put.body["key"].as_str().unwrap();
    let body = json!({"userId": "u1", "feature": "f", "idempotencyKey": "retry-1"});
    let first = app.create(key, body.clone()).await;
    let replay = app.create(key, body).await;
    assert_eq!((first.status, replay.status), (201, 200), "{first:?} {replay:?}");
    for r in [&first, &replay] {
        assert!(r.body["sessionToken"].is_string());
        assert_eq!(r.header("cache-control"), Some("no-store"), "a session token: {r:?}");
    }
    let hb = app.heartbeat(first.body["sessionToken"].as_str().unwrap()).await;
    assert_eq!((hb.status, hb.header("cache-control")), (200, Some("no-store")));
}

// ---- 6. starting without the ledger ----

/// A service connected while its ledger is cut starts, keeps existing sessions alive by heartbeat,
/// answers what needs the ledger with 503 store_unavailable, and recovers when the ledger is back.
async fn starts_while_the_ledger_is_down(b: Backend) {
    let app = TestApp::start_with(b, Options { proxy: true, ..Default::default() }).await;
    let (_, key) = app.simple_license(json!({"maxSessions": 5})).await;
    let s = app.create_ok(&key, "u1").await;
    let token = s["sessionToken"].as_str().unwrap().to_owned();
    let proxy = app.proxy.as_ref().unwrap();
    proxy.cut();

    let config = app.svc.config().clone();
    let svc = tokio::time::timeout(BOUND, Service::connect(config))
        .await
        .expect("connecting does not wait for the ledger")
        .expect("a cold start needs no ledger");
    let (addr, _server) = runner_with(svc, Limits::defaults(8)).await;
    let base = format!("http://{addr}");

    let hb = call(
        &base,
        Method::POST,
        "/api/licenses/sessions/heartbeat",
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(hb.status, 200, "a heartbeat needs no ledger: {hb:?}");
    let auth = format!("Bearer {key}");
    let create = [("authorization", auth.as_str())];
    let r = call(&base, Method::POST, "/api/licenses/sessions", &create, Some(json!({"userId": "u2", "feature": "f"})))
        .await;
    r.expect_error(503, "store_unavailable");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    let health = call(&base, Method::GET, "/health", &[], None).await;
    assert_eq!((health.status, &health.body["ledger"]), (503, &json!("down")), "{health:?}");

    proxy.restore();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let r =
            call(&base, Method::POST, "/api/licenses/sessions", &create, Some(json!({"userId": "u2", "feature": "f"})))
                .await;
        if r.status == 201 {
            break;
        }
        r.expect_error(503, "store_unavailable");
        assert!(tokio::time::Instant::now() < deadline, "the service did not recover: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_ledger_is_down_postgres() {
    starts_while_the_ledger_is_down(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_ledger_is_down_mysql() {
    starts_while_the_ledger_is_down(Backend::MySql).await
}

/// `seatkeeper serve` started while its ledger is down serves at once (503 for what needs the
/// ledger) and applies the migrations in the background once the ledger is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_migrates_once_the_ledger_is_back() {
    let db = Database::create(Backend::Postgres).await;
    let rest = db.url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_owned();
    let proxy = Proxy::start(host_port.clone()).await;
    proxy.cut();
    let ledger_url = db.url.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
    let mut runner = Child::start_on(db, &ledger_url, &[]).await;
    let health = call(&runner.base, Method::GET, "/health", &[], None).await;
    assert_eq!((health.status, &health.body["ledger"]), (503, &json!("down")), "{health:?}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let put = |base: String, auth: String| async move {
        let body = json!({"features": {"f": {"maxSessions": 1}}});
        call(&base, Method::PUT, "/api/licenses/late-ledger", &[("authorization", &auth)], Some(body)).await
    };
    put(runner.base.clone(), auth.clone()).await.expect_error(503, "store_unavailable");

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let r = put(runner.base.clone(), auth.clone()).await;
        if r.status == 201 {
            break;
        }
        r.expect_error(503, "store_unavailable");
        runner.assert_alive();
        assert!(tokio::time::Instant::now() < deadline, "never migrated: {r:?} {}", runner.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    runner.health_ok().await;
}

/// Connecting never migrates; `seatkeeper migrate` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_only_when_asked() {
    let redis = RedisServer::start().await;
    let db = Database::create(Backend::Sqlite).await;
    let config = seatkeeper_tests::seatkeeper_core::Config {
        redis_url: redis.url.clone(),
        ledger_url: db.url.clone(),
        ..seatkeeper_tests::seatkeeper_core::Config::from_lookup(|_| None).unwrap()
    };
    let svc = Service::connect(config.clone()).await.expect("connect");
    let id = seatkeeper_tests::seatkeeper_core::domain::Ident::parse("licenseId", "lic-m").unwrap();
    let err = svc.get_license(id.clone()).await.expect_err("no tables before migrating");
    assert!(matches!(err, seatkeeper_tests::seatkeeper_core::Error::StoreUnavailable { .. }), "{err:?}");

    let out = tokio::process::Command::new(seatkeeper_bin())
        .arg("migrate")
        .env("SEATKEEPER_LEDGER_URL", &db.url)
        .env("SEATKEEPER_REDIS_URL", &redis.url)
        .output()
        .await
        .expect("run seatkeeper migrate");
    assert!(out.status.success(), "seatkeeper migrate: {}", String::from_utf8_lossy(&out.stderr));
    let err = svc.get_license(id).await.expect_err("migrated: an unknown license is not found");
    assert!(matches!(err, seatkeeper_tests::seatkeeper_core::Error::NotFound(_)), "{err:?}");
}
