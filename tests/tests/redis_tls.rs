//! `rediss://` with credentials, on one server and on a three-master Redis Cluster: the real
//! `seatkeeper serve` on a `redis-server` that listens on TLS only, with a certificate from a
//! private CA (`SEATKEEPER_REDIS_CA_FILE`), a password on the default user and an ACL user.
//!
//! - As the default user (`rediss://:password@`) and as the ACL user (`rediss://user:password@`):
//!   a license made through the admin route, a session created, heartbeaten and logged out, and
//!   the limit's 409; the seats are in that Redis.
//! - A wrong password, and a server certificate nothing trusts (no CA file: the system's roots),
//!   answer 503 store_unavailable at once, and /health says the seat store is down.
//! - No password (right or wrong) appears in anything the runner writes, at RUST_LOG=debug.
//!
//! Skipped, saying why, only when `redis-server` is built without TLS.

use std::time::{Duration, Instant};

use reqwest::Method;
use seatkeeper_tests::tls::{redis_has_tls, TlsRedis, TlsRunner, ACL_PASSWORD, ACL_USER, DEFAULT_PASSWORD};
use seatkeeper_tests::{unique, Backend, Database, Resp, ADMIN_TOKEN};
use serde_json::{json, Value};

const WRONG_PASSWORD: &str = "wrong-Pw-0c4e2a77";

/// A refused call must answer within this, not hang (connect and response timeouts are 2 s).
const PROMPT: Duration = Duration::from_secs(10);

async fn request(r: &TlsRunner, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
    let mut req = r.http.request(method, format!("{}{}", r.base, path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_string());
    }
    let resp = req.send().await.expect("request reaches the runner");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    Resp { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers }
}

/// A license with one feature `f` of at most one session; returns its key.
async fn license(r: &TlsRunner) -> String {
    let id = unique("lic-");
    let body = json!({"features": {"f": {"maxSessions": 1}}});
    let resp = request(r, Method::PUT, &format!("/api/licenses/{id}"), Some(ADMIN_TOKEN), Some(body)).await;
    assert_eq!(resp.status, 201, "license created: {resp:?}\n{}", r.output());
    resp.body["key"].as_str().expect("generated key").to_owned()
}

async fn create(r: &TlsRunner, key: &str, user: &str) -> Resp {
    let body = json!({"userId": user, "feature": "f"});
    request(r, Method::POST, "/api/licenses/sessions", Some(key), Some(body)).await
}

/// Waits (bounded) for /health to answer `want` (the runner migrates its ledger as it starts).
async fn health_becomes(r: &TlsRunner, want: u16) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = request(r, Method::GET, "/health", None, None).await;
        if h.status == want || Instant::now() > deadline {
            assert_eq!(h.status, want, "health: {h:?}\n{}", r.output());
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client's whole cycle, on three licenses (in a cluster their slots fall on several masters).
async fn client_flow(r: &TlsRunner) {
    let health = health_becomes(r, 200).await;
    assert_eq!(health.body, json!({"status": "ok", "seatStore": "ok", "ledger": "ok"}));
    for _ in 0..3 {
        let key = license(r).await;
        let s = create(r, &key, "u1").await;
        assert_eq!(s.status, 201, "create: {s:?}\n{}", r.output());
        assert_eq!(s.body["seats"], json!({"limit": 1, "active": 1}));
        let token = s.body["sessionToken"].as_str().expect("session token").to_owned();
        let hb = request(r, Method::POST, "/api/licenses/sessions/heartbeat", Some(&token), None).await;
        assert_eq!(hb.status, 200, "heartbeat: {hb:?}");
        create(r, &key, "u2").await.expect_error(409, "seat_limit_reached");
        let out = request(r, Method::POST, "/api/licenses/sessions/cleanup", Some(&token), None).await;
        assert_eq!(out.body, json!({"ended": true}), "logout: {out:?}");
        let again = create(r, &key, "u2").await;
        assert_eq!(again.status, 201, "the seat is free after the logout: {again:?}");
    }
}

/// A runner that cannot use its Redis: health says so, and a create answers 503 promptly.
async fn refused(r: &TlsRunner, key: &str, why: &str) {
    let health = health_becomes(r, 503).await;
    assert_eq!(health.body["seatStore"], "down", "{why}: {health:?}");
    for _ in 0..2 {
        let started = Instant::now();
        let resp = create(r, key, "u9").await;
        resp.expect_error(503, "store_unavailable");
        assert!(started.elapsed() < PROMPT, "{why}: the refusal took {:?}", started.elapsed());
    }
}

fn assert_no_secret(r: &TlsRunner, what: &str) {
    let out = r.output();
    for secret in [DEFAULT_PASSWORD, ACL_PASSWORD, WRONG_PASSWORD] {
        assert!(!out.contains(secret), "{what}: the runner wrote a password:\n{out}");
    }
}

async fn scenario(redis: TlsRedis) {
    let db = Database::create(Backend::Sqlite).await;
    let ca = Some(redis.certs.ca.as_path());
    let shape = if redis.is_cluster() { "cluster" } else { "one node" };

    // The default user's password (an ElastiCache AUTH token's form), then the ACL user.
    let runner = TlsRunner::start(&redis.url(None, DEFAULT_PASSWORD), ca, &db.url).await;
    client_flow(&runner).await;
    let key = license(&runner).await; // for the refused runners below, which share the ledger
    assert_no_secret(&runner, &format!("{shape}, default user"));
    drop(runner);
    let acl = TlsRunner::start(&redis.url(Some(ACL_USER), ACL_PASSWORD), ca, &db.url).await;
    client_flow(&acl).await;
    assert_no_secret(&acl, &format!("{shape}, ACL user"));
    drop(acl);
    assert!(!redis.keys().await.is_empty(), "{shape}: the seats were written to the TLS Redis");

    let wrong = TlsRunner::start(&redis.url(Some(ACL_USER), WRONG_PASSWORD), ca, &db.url).await;
    refused(&wrong, &key, &format!("{shape}, a wrong password")).await;
    assert_no_secret(&wrong, &format!("{shape}, a wrong password"));
    drop(wrong);

    let untrusted = TlsRunner::start(&redis.url(Some(ACL_USER), ACL_PASSWORD), None, &db.url).await;
    refused(&untrusted, &key, &format!("{shape}, no CA file for a private CA's certificate")).await;
    assert_no_secret(&untrusted, &format!("{shape}, no CA file"));
}

async fn tls_or_skip() -> bool {
    match redis_has_tls().await {
        Ok(()) => true,
        Err(why) => {
            println!("SKIPPED: {why}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_one_node_with_password_and_acl_user() {
    if tls_or_skip().await {
        seatkeeper_tests::bounded(async { scenario(TlsRedis::single().await).await }).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_with_password_and_acl_user() {
    if tls_or_skip().await {
        seatkeeper_tests::bounded(async { scenario(TlsRedis::cluster().await).await }).await;
    }
}
