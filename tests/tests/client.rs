//! The client routes (create, heartbeat, cleanup), the license routes and health, black-box over
//! real HTTP against a real Redis and a real SQL ledger, on every ledger backend.
//!
//! Timing: leases of 1 s and sleeps just past them only where expiry must happen; heartbeats that
//! keep a 1 s lease alive run every 250 ms, which leaves a 750 ms margin on a loaded machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::Ident;
use seatkeeper_tests::seatkeeper_core::{domain::Slot, token};
use seatkeeper_tests::{ledger_tests, Backend, Resp, TestApp};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SESSIONS: &str = "/api/licenses/sessions";
const HEARTBEAT: &str = "/api/licenses/sessions/heartbeat";
const CLEANUP: &str = "/api/licenses/sessions/cleanup";

/// Just past a 1 s lease.
const PAST_ONE_SECOND: Duration = Duration::from_millis(1250);

fn token_of(v: &Value) -> String {
    v["sessionToken"].as_str().unwrap_or_else(|| panic!("sessionToken in {v}")).to_owned()
}

fn sid_of(v: &Value) -> String {
    v["sessionId"].as_str().unwrap_or_else(|| panic!("sessionId in {v}")).to_owned()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Asserts a `410 session_expired` with this reason.
fn assert_gone(r: &Resp, reason: &str) {
    let err = r.expect_error(410, "session_expired");
    assert_eq!(err["reason"], reason, "{r:?}");
}

/// Asserts the contract's error shape for a client mistake: the status and code, a message, the
/// only top-level member is `error`, and never a 5xx. Returns the error object.
fn client_error<'a>(what: &str, r: &'a Resp, status: u16, code: &str) -> &'a Value {
    assert!(r.status < 500, "{what}: a client's mistake must not be a 5xx: {r:?}");
    assert_eq!(r.status, status, "{what}: {r:?}");
    let err = r.expect_error(status, code);
    let keys: Vec<&String> = r.body.as_object().expect("object body").keys().collect();
    assert_eq!(keys, ["error"], "{what}: only `error` at the top: {r:?}");
    err
}

/// Asserts a 400 whose message and `field` detail name `field`.
fn assert_invalid(what: &str, r: &Resp, field: &str) {
    let err = client_error(what, r, 400, "invalid_request");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(field), "{what}: message names {field}: {r:?}");
    assert_eq!(err["field"], field, "{what}: {r:?}");
}

async fn assert_seat_limit(r: &Resp, scope: &str, limit: u64, active: u64, ttl: u64) {
    let err = r.expect_error(409, "seat_limit_reached");
    assert_eq!(err["message"], "Maximum user limit reached", "{r:?}");
    assert_eq!(err["scope"], scope, "{r:?}");
    assert_eq!(err["limit"], limit, "{r:?}");
    assert_eq!(err["active"], active, "{r:?}");
    let retry = err["retryAfterSeconds"].as_u64().unwrap_or_else(|| panic!("retryAfterSeconds: {r:?}"));
    assert!((1..=ttl).contains(&retry), "retryAfterSeconds {retry} within 1..={ttl}: {r:?}");
    assert_eq!(r.header("retry-after"), Some(retry.to_string().as_str()), "Retry-After header: {r:?}");
}

async fn post_body(app: &TestApp, path: &str, body: Value) -> Resp {
    app.raw(Method::POST, path, None, body.to_string().into_bytes()).await
}

// ---- 1. seats fill, then 409 ----

async fn seats_fill_then_the_next_create_is_refused(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3, "leaseTtlSeconds": 30})).await;
    for (i, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        let s = app.create_ok(&key, user).await;
        assert_eq!(s["seats"], json!({"limit": 3, "active": i + 1}), "{s}");
        assert_eq!(s["licenseId"], license.as_str());
        assert_eq!(s["userId"], user);
        assert_eq!(s["feature"], "f");
        assert_eq!(s["deviceId"], Value::Null);
        assert_eq!(s["leaseTtlSeconds"], 30);
        assert_eq!(s["heartbeatIntervalSeconds"], 10);
        for field in ["sessionToken", "sessionId", "createdAt", "expiresAt"] {
            assert!(s[field].as_str().is_some_and(|v| !v.is_empty()), "{field} in {s}");
        }
        assert!(s["expiresAt"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC: {s}");
    }
    let r = app.create(&key, json!({"userId": "u4", "feature": "f"})).await;
    assert_seat_limit(&r, "license", 3, 3, 30).await;
    assert_eq!(app.live_leases(&license, "f").await, 3);
}

// ---- 2. a lease that runs out frees its seat ----

async fn an_expired_lease_frees_its_seat_without_a_sweep(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1, "leaseTtlSeconds": 1})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let r = app.create(&key, json!({"userId": "u2", "feature": "f"})).await;
    assert_seat_limit(&r, "license", 1, 1, 1).await;
    sleep_ms(PAST_ONE_SECOND.as_millis() as u64).await;
    assert_eq!(app.live_leases(&license, "f").await, 0, "the lease ran out");
    let s2 = app.create_ok(&key, "u2").await;
    assert_eq!(s2["seats"], json!({"limit": 1, "active": 1}));
    assert_gone(&app.heartbeat(&token_of(&s1)).await, "expired");
    assert_eq!(app.heartbeat(&token_of(&s2)).await.status, 200);
}

// ---- 3. heartbeats keep a session alive ----

async fn heartbeats_keep_a_session_alive_across_lease_lengths(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1, "leaseTtlSeconds": 1})).await;
    let s = app.create_ok(&key, "u1").await;
    let token = token_of(&s);
    // 14 x 250 ms = 3.5 s: three and a half lease lengths.
    for i in 0..14 {
        sleep_ms(250).await;
        let hb = app.heartbeat(&token).await;
        assert_eq!(hb.status, 200, "heartbeat {i}: {hb:?}");
        assert_eq!(hb.body["resurrected"], false, "{hb:?}");
        assert_eq!(hb.body["sessionId"], s["sessionId"]);
        assert_eq!(hb.body["heartbeatIntervalSeconds"], 1);
        if i % 5 == 2 {
            let r = app.create(&key, json!({"userId": "u2", "feature": "f"})).await;
            assert_seat_limit(&r, "license", 1, 1, 1).await;
        }
    }
    assert_eq!(app.live_leases(&license, "f").await, 1);
}

// ---- 4. heartbeat after an explicit end ----

async fn heartbeat_after_cleanup_is_gone_with_reason_ended(b: Backend) {
    let app = TestApp::start(b).await;
    let (_, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let s = app.create_ok(&key, "u1").await;
    let token = token_of(&s);
    assert_eq!(app.cleanup(&token).await.body, json!({"ended": true}));
    assert_gone(&app.heartbeat(&token).await, "ended");
    assert_eq!(app.ledger_status(&sid_of(&s)).await.as_deref(), Some("ended"));
}

// ---- 5. cleanup is idempotent; unknown tokens are 401 ----

async fn cleanup_is_idempotent_by_header_and_by_body(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let s2 = app.create_ok(&key, "u2").await;
    let (t1, t2) = (token_of(&s1), token_of(&s2));

    // Token in the Authorization header.
    let r = app.cleanup(&t1).await;
    assert_eq!((r.status, &r.body), (200, &json!({"ended": true})), "{r:?}");
    let r = app.cleanup(&t1).await;
    assert_eq!((r.status, &r.body), (200, &json!({"ended": false, "reason": "ended"})), "{r:?}");

    // Token in the body, as a beacon sends it.
    let r = post_body(&app, CLEANUP, json!({"sessionToken": t2})).await;
    assert_eq!((r.status, &r.body), (200, &json!({"ended": true})), "{r:?}");
    let r = post_body(&app, CLEANUP, json!({"sessionToken": t2})).await;
    assert_eq!((r.status, &r.body), (200, &json!({"ended": false, "reason": "ended"})), "{r:?}");
    // The body token works for heartbeats too.
    assert_gone(&post_body(&app, HEARTBEAT, json!({"sessionToken": t2})).await, "ended");

    // Both seats are free again.
    assert_eq!(app.live_leases(&license, "f").await, 0);
    assert_eq!(app.create_ok(&key, "u3").await["seats"]["active"], 1);
    assert_eq!(app.create_ok(&key, "u4").await["seats"]["active"], 2);
    for s in [&s1, &s2] {
        assert_eq!(app.ledger_status(&sid_of(s)).await.as_deref(), Some("ended"));
    }

    // Unknown tokens: garbage, and a well-formed token for a session that does not exist, and a
    // real session's routing part with a secret the service never issued.
    let slot = Slot { license: Ident::parse("l", &license).unwrap(), feature: Ident::parse("f", "f").unwrap() };
    let no_such_session = token::mint_session_token(&slot, &token::new_session_id()).token;
    let forged = token::mint_session_token(&slot, &sid_of(&s1)).token;
    for bad in ["garbage", "a.b", no_such_session.as_str(), forged.as_str()] {
        client_error(&format!("heartbeat {bad}"), &app.heartbeat(bad).await, 401, "unauthorized");
        client_error(&format!("cleanup {bad}"), &app.cleanup(bad).await, 401, "unauthorized");
        let r = post_body(&app, CLEANUP, json!({"sessionToken": bad})).await;
        client_error(&format!("cleanup body {bad}"), &r, 401, "unauthorized");
    }
    // No token at all.
    let r = app.request(Method::POST, CLEANUP, None, None).await;
    client_error("cleanup without a token", &r, 401, "unauthorized");
    let r = post_body(&app, CLEANUP, json!({})).await;
    client_error("cleanup with an empty body", &r, 401, "unauthorized");
    let r = app.request(Method::POST, HEARTBEAT, None, None).await;
    client_error("heartbeat without a token", &r, 401, "unauthorized");
}

// ---- 6. idempotency keys ----

async fn idempotency_key_replays_the_same_session(b: Backend) {
    let app = TestApp::start(b).await;

    // Limit 1: the replay succeeds although the only seat is taken (by this very session).
    let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
    let body = json!({"userId": "u1", "feature": "f", "idempotencyKey": "k-1"});
    let first = app.create(&key, body.clone()).await;
    assert_eq!(first.status, 201, "{first:?}");
    for _ in 0..2 {
        let again = app.create(&key, body.clone()).await;
        assert_eq!(again.status, 200, "replay: {again:?}");
        assert_eq!(again.body["sessionId"], first.body["sessionId"]);
        assert_eq!(again.body["sessionToken"], first.body["sessionToken"]);
        assert_eq!(again.body["seats"], json!({"limit": 1, "active": 1}));
        assert_eq!(app.live_leases(&license, "f").await, 1, "no second seat");
    }
    assert_eq!(app.heartbeat(&token_of(&first.body)).await.status, 200);

    // Limit 2: a different key is a new session; the same key by another user is refused.
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let a = app.create(&key, json!({"userId": "u1", "feature": "f", "idempotencyKey": "k-1"})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let b2 = app.create(&key, json!({"userId": "u1", "feature": "f", "idempotencyKey": "k-2"})).await;
    assert_eq!(b2.status, 201, "{b2:?}");
    assert_ne!(a.body["sessionId"], b2.body["sessionId"]);
    assert_eq!(b2.body["seats"]["active"], 2);
    assert_eq!(app.live_leases(&license, "f").await, 2);
    // Full now, and the replay of k-1 still answers.
    let again = app.create(&key, json!({"userId": "u1", "feature": "f", "idempotencyKey": "k-1"})).await;
    assert_eq!((again.status, &again.body["sessionId"]), (200, &a.body["sessionId"]), "{again:?}");
    let r = app.create(&key, json!({"userId": "u2", "feature": "f", "idempotencyKey": "k-1"})).await;
    assert_invalid("idempotencyKey of another user", &r, "idempotencyKey");
    assert_eq!(app.live_leases(&license, "f").await, 2);
}

// ---- 7. device takeover ----

async fn same_device_takes_its_seat_over(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
    let body = json!({"userId": "u1", "feature": "f", "deviceId": "laptop-1"});
    let old = app.create(&key, body.clone()).await;
    assert_eq!(old.status, 201, "{old:?}");
    assert_eq!(old.body["deviceId"], "laptop-1");
    assert!(old.body.get("replacedSessionId").is_none(), "{old:?}");
    // Limit 1 and the seat taken: the takeover needs no free seat.
    let new = app.create(&key, body).await;
    assert_eq!(new.status, 201, "{new:?}");
    assert_eq!(new.body["replacedSessionId"], old.body["sessionId"]);
    assert_ne!(new.body["sessionId"], old.body["sessionId"]);
    assert_eq!(new.body["seats"], json!({"limit": 1, "active": 1}));
    assert_gone(&app.heartbeat(&token_of(&old.body)).await, "replaced");
    assert_eq!(app.heartbeat(&token_of(&new.body)).await.status, 200);
    assert_eq!(app.ledger_status(&sid_of(&old.body)).await.as_deref(), Some("replaced"));
    assert_eq!(app.ledger_status(&sid_of(&new.body)).await.as_deref(), Some("active"));
    assert_eq!(app.live_leases(&license, "f").await, 1);
    // Another device of the same user is another seat: none is free.
    let r = app.create(&key, json!({"userId": "u1", "feature": "f", "deviceId": "laptop-2"})).await;
    assert_seat_limit(&r, "license", 1, 1, 90).await;

    // Without a deviceId nothing is ever replaced.
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let a = app.create_ok(&key, "u1").await;
    let b2 = app.create_ok(&key, "u1").await;
    for s in [&a, &b2] {
        assert!(s.get("replacedSessionId").is_none(), "{s}");
        assert_eq!(app.heartbeat(&token_of(s)).await.status, 200);
    }
    assert_eq!(b2["seats"]["active"], 2);
    assert_eq!(app.live_leases(&license, "f").await, 2);
}

// ---- 8. per-user cap ----

async fn per_user_cap_refuses_with_scope_user(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "maxSessionsPerUser": 1})).await;
    let first = app.create(&key, json!({"userId": "u1", "feature": "f", "deviceId": "d1"})).await;
    assert_eq!(first.status, 201, "{first:?}");
    let r = app.create(&key, json!({"userId": "u1", "feature": "f", "deviceId": "d2"})).await;
    assert_seat_limit(&r, "user", 1, 1, 90).await;
    let r = app.create(&key, json!({"userId": "u1", "feature": "f"})).await;
    assert_seat_limit(&r, "user", 1, 1, 90).await;
    // Another user still gets in.
    let other = app.create_ok(&key, "u2").await;
    assert_eq!(other["seats"], json!({"limit": 5, "active": 2}));
    // The same device taking its own seat over stays within the cap.
    let again = app.create(&key, json!({"userId": "u1", "feature": "f", "deviceId": "d1"})).await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body["replacedSessionId"], first.body["sessionId"]);
    assert_eq!(app.live_leases(&license, "f").await, 2);
}

// ---- 9. evict_idle ----

async fn evict_idle_ends_the_least_recently_renewed_session(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 2, "onLimit": "evict_idle"})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let s2 = app.create_ok(&key, "u2").await;
    sleep_ms(20).await;
    assert_eq!(app.heartbeat(&token_of(&s2)).await.status, 200);
    let s3 = app.create(&key, json!({"userId": "u3", "feature": "f"})).await;
    assert_eq!(s3.status, 201, "{s3:?}");
    assert_eq!(s3.body["seats"], json!({"limit": 2, "active": 2}));
    assert_gone(&app.heartbeat(&token_of(&s1)).await, "evicted");
    assert_eq!(app.heartbeat(&token_of(&s2)).await.status, 200);
    assert_eq!(app.heartbeat(&token_of(&s3.body)).await.status, 200);
    assert_eq!(app.ledger_status(&sid_of(&s1)).await.as_deref(), Some("evicted"));
    assert_eq!(app.ledger_status(&sid_of(&s2)).await.as_deref(), Some("active"));
    assert_eq!(app.live_leases(&license, "f").await, 2);
    // Cleanup of an evicted session reports why it is over.
    assert_eq!(app.cleanup(&token_of(&s1)).await.body, json!({"ended": false, "reason": "evicted"}));
}

// ---- 10. resurrection ----

async fn resurrection_within_the_window_needs_a_free_seat(b: Backend) {
    let app = TestApp::start(b).await;
    let policy = json!({"maxSessions": 1, "leaseTtlSeconds": 1, "resurrectWindowSeconds": 5});

    let (license, key) = app.simple_license(policy.clone()).await;
    let s = app.create_ok(&key, "u1").await;
    sleep_ms(PAST_ONE_SECOND.as_millis() as u64).await;
    assert_eq!(app.live_leases(&license, "f").await, 0, "the lease ran out");
    let hb = app.heartbeat(&token_of(&s)).await;
    assert_eq!((hb.status, &hb.body["resurrected"]), (200, &json!(true)), "{hb:?}");
    assert_eq!(app.live_leases(&license, "f").await, 1, "revived: it holds the seat again");
    let hb = app.heartbeat(&token_of(&s)).await;
    assert_eq!((hb.status, &hb.body["resurrected"]), (200, &json!(false)), "{hb:?}");
    let r = app.create(&key, json!({"userId": "u2", "feature": "f"})).await;
    assert_seat_limit(&r, "license", 1, 1, 1).await;

    // The only seat went to someone else meanwhile: no revival.
    let (license, key) = app.simple_license(policy).await;
    let s = app.create_ok(&key, "u1").await;
    sleep_ms(PAST_ONE_SECOND.as_millis() as u64).await;
    let other = app.create_ok(&key, "u2").await;
    assert_gone(&app.heartbeat(&token_of(&s)).await, "expired");
    assert_eq!(app.live_leases(&license, "f").await, 1);
    assert_eq!(app.heartbeat(&token_of(&other)).await.status, 200);
}

// ---- 11. contention ----

async fn concurrent_creates_admit_exactly_the_limit(b: Backend) {
    let app = TestApp::start(b).await;
    for round in 0..5 {
        let (license, key) = app.simple_license(json!({"maxSessions": 10})).await;
        let creates = (0..200).map(|i| app.create(&key, json!({"userId": format!("u{round}-{i}"), "feature": "f"})));
        let results = join_all(creates).await;
        let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
        for r in &results {
            *by_status.entry(r.status).or_default() += 1;
            if r.status == 409 {
                assert_eq!(r.body["error"]["code"], "seat_limit_reached", "{r:?}");
            }
        }
        assert_eq!(by_status, BTreeMap::from([(201, 10), (409, 190)]), "round {round}");
        let actives: HashSet<u64> =
            results.iter().filter(|r| r.status == 201).map(|r| r.body["seats"]["active"].as_u64().unwrap()).collect();
        assert_eq!(actives, (1..=10).collect(), "each admission counted one more seat");
        assert_eq!(app.live_leases(&license, "f").await, 10, "round {round}");
    }
}

// ---- 13. heartbeat cost ----

/// One heartbeat is one Redis command (an EVALSHA) and writes nothing to the ledger.
///
/// What Redis 7.0 counts, found empirically: `INFO commandstats` and `total_commands_processed`
/// both count the commands a script runs with `redis.call` (a heartbeat shows up as `evalsha`
/// plus `time`, `hmget`, `hset`, `pexpireat`, `zadd`), and neither tells a nested call from a
/// client's. MONITOR does: it prints a client's command with the client's address
/// (`[0 unix:/path]`) and a script's with `[0 lua]`. So the test:
/// - reads MONITOR between two ECHO markers and asserts that every client command in between is
///   an EVALSHA, N of them;
/// - asserts `cmdstat_evalsha` calls == N and that no EVAL or SCRIPT ran (no NOSCRIPT fallback);
/// - ties both views together: `total_commands_processed` since CONFIG RESETSTAT must equal
///   RESETSTAT itself + the two ECHOs + N + the script-run commands MONITOR saw. MONITOR hides
///   admin commands (CONFIG) and a few others (AUTH, HELLO); the total counts those too, so any
///   command besides our RESETSTAT that escaped MONITOR would break this equation. (INFO is not
///   counted in its own reply.)
async fn heartbeat_is_one_redis_command_and_no_ledger_write(b: Backend) {
    // Skipped on Redis Cluster: this counts commands on one server (MONITOR on its Unix socket, INFO
    // totals since CONFIG RESETSTAT), and a cluster client also sends its own topology commands to
    // the masters, so the equation has no meaning there. The heartbeat runs the same script, one
    // EVALSHA, in both modes; the single-server run of this test covers it.
    if seatkeeper_tests::cluster_mode() {
        eprintln!("skipped on Redis Cluster: heartbeat_is_one_redis_command_and_no_ledger_write needs a single server (see the comment)");
        return;
    }
    const N: usize = 5;
    let app = TestApp::start(b).await;
    let (_, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let s = app.create_ok(&key, "u1").await;
    let (sid, token) = (sid_of(&s), token_of(&s));
    // Warm up: the heartbeat script is in Redis's script cache from now on.
    assert_eq!(app.heartbeat(&token).await.status, 200);
    app.history().await;
    let row_before = app.svc.ledger().session(&sid).await.unwrap().expect("ledger row");
    let pool = app.db.pool().await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM session_events").fetch_one(&pool).await.unwrap()
    };
    let events_before = events().await;
    sleep_ms(20).await; // any renewal written to the ledger would now change its times

    let socket = app.redis.url.strip_prefix("redis+unix://").expect("unix socket url");
    let mut monitor = BufReader::new(tokio::net::UnixStream::connect(socket).await.unwrap());
    monitor.get_mut().write_all(b"MONITOR\r\n").await.unwrap();
    let mut line = String::new();
    monitor.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim_end(), "+OK");

    let mut c = app.redis_conn().await;
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let _: String = redis::cmd("ECHO").arg("sk-begin").query_async(&mut c).await.unwrap();
    let mut last_expiry = String::new();
    for _ in 0..N {
        let hb = app.heartbeat(&token).await;
        assert_eq!(hb.status, 200, "{hb:?}");
        last_expiry = hb.body["expiresAt"].as_str().unwrap().to_owned();
    }
    let _: String = redis::cmd("ECHO").arg("sk-end").query_async(&mut c).await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").arg("stats").query_async(&mut c).await.unwrap();

    let (mut begun, mut client_cmds, mut script_cmds) = (false, Vec::new(), 0u64);
    loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(10), monitor.read_line(&mut line)).await;
        assert!(read.expect("MONITOR shows the end marker").unwrap() > 0, "MONITOR stream closed");
        let Some((_, rest)) = line.trim_end().split_once(" [") else { continue };
        let (origin, command) = rest.split_once("] ").expect("MONITOR line");
        let name = command.split(' ').next().unwrap().trim_matches('"').to_ascii_uppercase();
        if name == "ECHO" && command.contains("\"sk-begin\"") {
            begun = true;
        } else if name == "ECHO" && command.contains("\"sk-end\"") {
            break;
        } else if begun && origin.ends_with(" lua") {
            script_cmds += 1;
        } else if begun {
            client_cmds.push(name);
        }
    }
    assert!(begun);
    assert_eq!(client_cmds, vec!["EVALSHA"; N], "client commands while heartbeating");

    let stat = |name: &str| -> Option<u64> {
        let prefix = format!("cmdstat_{name}:calls=");
        info.lines().find_map(|l| l.strip_prefix(&prefix)).map(|rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    assert_eq!(stat("evalsha"), Some(N as u64), "{info}");
    for absent in ["eval", "script|load", "script|exists", "evalsha_ro", "fcall"] {
        assert_eq!(stat(absent), None, "{absent} ran: {info}");
    }
    let total: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .expect("total_commands_processed")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, 1 + 2 + N as u64 + script_cmds, "every counted command is explained: {info}");

    // The renewals happened, in Redis only.
    assert!(last_expiry.as_str() > s["expiresAt"].as_str().unwrap(), "the lease moved");
    let row_after = app.svc.ledger().session(&sid).await.unwrap().expect("ledger row");
    assert_eq!(row_after.last_heartbeat_at_ms, row_before.last_heartbeat_at_ms);
    assert_eq!(row_after.expires_at_ms, row_before.expires_at_ms);
    assert_eq!(row_after, row_before, "no ledger write");
    assert_eq!(events().await, events_before, "no ledger event");
}

// ---- 14. a ledger failure during create leaves no seat taken ----

async fn ledger_failure_on_create_takes_no_seat(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
    let pool = app.db.pool().await;
    sqlx::query("ALTER TABLE sessions RENAME TO sessions_off").execute(&pool).await.unwrap();

    let body = json!({"userId": "u1", "feature": "f", "deviceId": "d1", "idempotencyKey": "idem-1"});
    for _ in 0..2 {
        let r = app.create(&key, body.clone()).await;
        let err = r.expect_error(503, "store_unavailable");
        let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("Retry-After seconds");
        assert!(retry >= 1, "{r:?}");
        let message = err["message"].as_str().unwrap().to_ascii_lowercase();
        for internal in ["sessions", "sql", "relation", "table", "exist", "redis", "error:", "insert"] {
            assert!(!message.contains(internal), "message leaks {internal:?}: {r:?}");
        }
        assert_eq!(app.all_leases(&license, "f").await, 0, "no seat taken, not even a due one");
    }

    sqlx::query("ALTER TABLE sessions_off RENAME TO sessions").execute(&pool).await.unwrap();
    // The same idempotency key now makes a real session: the failed one left nothing behind.
    let r = app.create(&key, body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["seats"], json!({"limit": 1, "active": 1}));
    assert!(r.body.get("replacedSessionId").is_none(), "{r:?}");
    assert_eq!(app.ledger_status(&sid_of(&r.body)).await.as_deref(), Some("active"));
    assert_eq!(app.all_leases(&license, "f").await, 1);
    assert_eq!(app.heartbeat(&token_of(&r.body)).await.status, 200);
}

// ---- 15. bad input ----

async fn bad_input_gets_the_contract_errors(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 50})).await;
    let create_raw = |body: &'static [u8]| app.raw(Method::POST, SESSIONS, Some(&key), body.to_vec());

    // Malformed JSON and JSON that is not an object.
    for body in [&b"{not json"[..], b"{\"userId\": \"u1\",", b"[1, 2]", b"\"u1\"", b"42", b"null"] {
        let what = format!("body {:?}", String::from_utf8_lossy(body));
        client_error(&what, &create_raw(body).await, 400, "invalid_request");
    }

    // Missing, mistyped and invalid identifiers.
    assert_invalid("missing userId", &app.create(&key, json!({"feature": "f"})).await, "userId");
    assert_invalid("empty body", &app.raw(Method::POST, SESSIONS, Some(&key), Vec::new()).await, "userId");
    assert_invalid("missing feature", &app.create(&key, json!({"userId": "u1"})).await, "feature");
    assert_invalid("numeric userId", &app.create(&key, json!({"userId": 5, "feature": "f"})).await, "userId");
    let long = "a".repeat(129);
    let max = "a".repeat(128);
    for bad in ["", "a b", "a/b", "é", "a\u{0}b", "{x}", "x%41", long.as_str()] {
        let r = app.create(&key, json!({"userId": bad, "feature": "f"})).await;
        assert_invalid(&format!("userId {bad:?}"), &r, "userId");
        let r = app.create(&key, json!({"userId": "u1", "feature": bad})).await;
        assert_invalid(&format!("feature {bad:?}"), &r, "feature");
        let r = app.create(&key, json!({"userId": "u1", "feature": "f", "deviceId": bad})).await;
        assert_invalid(&format!("deviceId {bad:?}"), &r, "deviceId");
    }
    // 128 characters of the whole alphabet are fine.
    let r = app.create(&key, json!({"userId": max, "feature": "f", "deviceId": "A-z.0_9:x@y"})).await;
    assert_eq!(r.status, 201, "{r:?}");

    // Metadata: at most 16 entries, strings only.
    let meta = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect());
    let r = app.create(&key, json!({"userId": "u1", "feature": "f", "metadata": meta(17)})).await;
    assert_invalid("17 metadata entries", &r, "metadata");
    for bad in [json!({"a": 1}), json!({"a": null}), json!({"a": {"b": "c"}}), json!("text"), json!(["a"])] {
        let r = app.create(&key, json!({"userId": "u1", "feature": "f", "metadata": bad})).await;
        assert_invalid(&format!("metadata {bad}"), &r, "metadata");
    }
    let r = app.create(&key, json!({"userId": "u1", "feature": "f", "metadata": meta(16)})).await;
    assert_eq!(r.status, 201, "16 metadata entries are fine: {r:?}");

    // Over 16 KiB.
    let big = json!({"userId": "u1", "feature": "f", "metadata": {"a": "x".repeat(17 * 1024)}}).to_string();
    let r = app.raw(Method::POST, SESSIONS, Some(&key), big.into_bytes()).await;
    client_error("body over 16 KiB", &r, 413, "payload_too_large");
    let r = app.raw(Method::POST, HEARTBEAT, None, vec![b' '; 16 * 1024 + 1]).await;
    client_error("heartbeat body over 16 KiB", &r, 413, "payload_too_large");

    // Credentials.
    let ok_body = json!({"userId": "u1", "feature": "f"});
    let r = app.create("sk_not-a-key", ok_body.clone()).await;
    client_error("unknown license key", &r, 401, "unauthorized");
    let r = app.create(&"k".repeat(300), ok_body.clone()).await;
    client_error("overlong license key", &r, 401, "unauthorized");
    let r = app.request(Method::POST, SESSIONS, None, Some(ok_body.clone())).await;
    client_error("no Authorization", &r, 401, "unauthorized");
    let r = app
        .http
        .post(format!("{}{SESSIONS}", app.base))
        .header("authorization", format!("Basic {key}"))
        .body(ok_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a Basic credential is not a bearer key");

    // The license's features and id.
    let r = app.create(&key, json!({"userId": "u1", "feature": "g"})).await;
    client_error("unknown feature", &r, 404, "not_found");
    let (_, other_key) = app.simple_license(json!({"maxSessions": 1})).await;
    let r = app.create(&other_key, json!({"userId": "u1", "feature": "f", "licenseId": license})).await;
    client_error("licenseId of another license", &r, 403, "forbidden");
    let r = app.create(&key, json!({"userId": "u1", "feature": "f", "licenseId": license})).await;
    assert_eq!(r.status, 201, "the key's own licenseId: {r:?}");

    // Routes and methods.
    for (method, path, allow) in [
        // Every route on the path is named: `/api/licenses/sessions` is also the license `sessions`.
        (Method::PATCH, SESSIONS, "POST, PUT, GET, DELETE"),
        (Method::PUT, HEARTBEAT, "POST"),
        (Method::GET, CLEANUP, "POST"),
        (Method::DELETE, "/health", "GET"),
        (Method::POST, "/api/licenses/some-license", "PUT, GET, DELETE"),
    ] {
        let r = app.request(method.clone(), path, Some(&key), None).await;
        client_error(&format!("{method} {path}"), &r, 405, "method_not_allowed");
        let mut got: Vec<&str> = r.header("allow").expect("Allow header").split(',').map(str::trim).collect();
        let mut want: Vec<&str> = allow.split(", ").collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{method} {path}: {r:?}");
    }
    for path in ["/nope", "/api/licenses/sessions/nope", "/api/nothing/here/at/all"] {
        client_error(path, &app.request(Method::GET, path, None, None).await, 404, "not_found");
    }

    // Admin routes: no token, a wrong one, a license key.
    for bearer in [None, Some("wrong-token"), Some(key.as_str())] {
        let r = app.request(Method::GET, &format!("/api/licenses/{license}"), bearer, None).await;
        client_error(&format!("GET license with {bearer:?}"), &r, 401, "unauthorized");
        let body = json!({"features": {"f": {"maxSessions": 1000}}});
        let r = app.request(Method::PUT, &format!("/api/licenses/{license}"), bearer, Some(body)).await;
        client_error(&format!("PUT license with {bearer:?}"), &r, 401, "unauthorized");
    }
    let r = app.admin(Method::GET, &format!("/api/licenses/{license}"), None).await;
    assert_eq!(r.body["features"]["f"]["maxSessions"], 50, "the refused PUTs changed nothing");

    // Unknown fields are ignored; null optional fields count as absent.
    let r = app
        .create(
            &key,
            json!({"userId": "u9", "feature": "f", "deviceId": null, "color": "blue", "nested": {"x": [1, 2]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}

// ---- 16. license routes ----

async fn license_routes_create_update_and_read(b: Backend) {
    let app = TestApp::start(b).await;
    let id = format!("lic-routes-{}", b as u8);
    let path = format!("/api/licenses/{id}");

    // Created: a generated key, once.
    let r = app.admin(Method::PUT, &path, Some(json!({"features": {"f": {"maxSessions": 2}}}))).await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.body["key"].as_str().expect("generated key").to_owned();
    assert!(key.len() >= 32, "a generated key holds at least 128 random bits: {key}");
    assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
    assert_eq!(r.body["licenseId"], id.as_str());
    let (_, other) = app.license(json!({"f": {"maxSessions": 1}})).await;
    assert_ne!(key, other, "keys are random");

    // Updated without a key: 200, no key, the old key still works.
    let r = app
        .admin(Method::PUT, &path, Some(json!({"features": {"f": {"maxSessions": 3}, "g": {"maxSessions": 1}}})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.get("key").is_none(), "the key is returned only once: {r:?}");
    let s = app.create_ok(&key, "u1").await;
    assert_eq!(s["seats"], json!({"limit": 3, "active": 1}));

    // GET: resolved policies with the defaults filled in, never the key.
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["licenseId"], id.as_str());
    assert!(r.body.get("key").is_none() && r.body.get("keyHash").is_none(), "{r:?}");
    assert!(!r.body.to_string().contains(&key), "{r:?}");
    let features = r.body["features"].as_object().expect("features");
    assert_eq!(features.keys().collect::<Vec<_>>(), ["f", "g"]);
    let f = &features["f"];
    assert_eq!(f["maxSessions"], 3);
    assert_eq!(f["leaseTtlSeconds"], 90);
    assert_eq!(f["heartbeatIntervalSeconds"], 30);
    assert_eq!(f["onLimit"], "reject");
    assert_eq!(f["resurrectWindowSeconds"], 0);
    assert!(f["maxSessionsPerUser"].is_null(), "{f}");
    assert_eq!(features["g"]["maxSessions"], 1);

    // An explicit key replaces the old one.
    let explicit = format!("explicit-key-{}!~", b as u8);
    let r = app.admin(Method::PUT, &path, Some(json!({"key": explicit, "features": {"f": {"maxSessions": 3}}}))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.get("key").is_none(), "{r:?}");
    app.create_ok(&explicit, "u2").await;
    client_error(
        "the replaced key",
        &app.create(&key, json!({"userId": "u3", "feature": "f"})).await,
        401,
        "unauthorized",
    );
    // A new license with an explicit key: created, the key not echoed.
    let r = app.admin(Method::PUT, "/api/licenses/lic-explicit", Some(json!({"key": "my-own-key-123", "features": {"f": {"maxSessions": 1, "maxSessionsPerUser": 1, "onLimit": "evict_idle", "leaseTtlSeconds": 10, "heartbeatIntervalSeconds": 5, "resurrectWindowSeconds": 7}}}))).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body.get("key").is_none(), "{r:?}");
    assert_eq!(
        r.body["features"]["f"],
        json!({"maxSessions": 1, "maxSessionsPerUser": 1, "onLimit": "evict_idle", "leaseTtlSeconds": 10, "heartbeatIntervalSeconds": 5, "resurrectWindowSeconds": 7})
    );
    let s = app.create_ok("my-own-key-123", "u1").await;
    assert_eq!((s["leaseTtlSeconds"].as_u64(), s["heartbeatIntervalSeconds"].as_u64()), (Some(10), Some(5)));

    // Unknown license.
    let r = app.admin(Method::GET, "/api/licenses/no-such-license", None).await;
    client_error("GET unknown license", &r, 404, "not_found");

    // Invalid policies name the field, and change nothing.
    let cases = [
        (json!({"f": {"maxSessions": -1}}), "features.f.maxSessions"),
        (json!({"f": {"maxSessions": "3"}}), "features.f.maxSessions"),
        (json!({"f": {"maxSessions": 1.5}}), "features.f.maxSessions"),
        (json!({"f": {}}), "features.f.maxSessions"),
        (json!({"f": {"maxSessions": 1, "onLimit": "kick"}}), "features.f.onLimit"),
        (
            json!({"f": {"maxSessions": 1, "leaseTtlSeconds": 10, "heartbeatIntervalSeconds": 11}}),
            "features.f.heartbeatIntervalSeconds",
        ),
        (json!({"f": {"maxSessions": 1, "leaseTtlSeconds": 0}}), "features.f.leaseTtlSeconds"),
        (json!({"f": {"maxSessions": 1, "maxSessionsPerUser": 0}}), "features.f.maxSessionsPerUser"),
        (json!({"f": {"maxSessions": 1, "resurrectWindowSeconds": -1}}), "features.f.resurrectWindowSeconds"),
        (json!({"f": 3}), "features.f"),
    ];
    for (features, field) in cases {
        for target in [path.as_str(), "/api/licenses/never-created"] {
            let r = app.admin(Method::PUT, target, Some(json!({ "features": features }))).await;
            assert_invalid(&format!("PUT {target} {features}"), &r, field);
        }
    }
    assert_invalid("no features", &app.admin(Method::PUT, &path, Some(json!({}))).await, "features");
    assert_invalid("bad key", &app.admin(Method::PUT, &path, Some(json!({"key": "a b", "features": {}}))).await, "key");
    assert_invalid(
        "bad license id",
        &app.admin(Method::PUT, "/api/licenses/a%20b", Some(json!({"features": {}}))).await,
        "licenseId",
    );
    client_error("never created", &app.admin(Method::GET, "/api/licenses/never-created", None).await, 404, "not_found");
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.body["features"]["f"]["maxSessions"], 3, "refused PUTs changed nothing: {r:?}");

    // Lowering maxSessions below the live count cuts nobody, and refuses newcomers.
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    let live: Vec<Value> =
        [app.create_ok(&key, "u1").await, app.create_ok(&key, "u2").await, app.create_ok(&key, "u3").await].into();
    let r = app
        .admin(Method::PUT, &format!("/api/licenses/{license}"), Some(json!({"features": {"f": {"maxSessions": 1}}})))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    for s in &live {
        assert_eq!(app.heartbeat(&token_of(s)).await.status, 200, "lowering the limit cut {s}");
    }
    assert_eq!(app.live_leases(&license, "f").await, 3);
    let r = app.create(&key, json!({"userId": "u4", "feature": "f"})).await;
    assert_seat_limit(&r, "license", 1, 3, 90).await;
    // Back under the new limit only when all but one are gone.
    assert_eq!(app.cleanup(&token_of(&live[0])).await.body, json!({"ended": true}));
    assert_eq!(app.cleanup(&token_of(&live[1])).await.body, json!({"ended": true}));
    let r = app.create(&key, json!({"userId": "u4", "feature": "f"})).await;
    assert_seat_limit(&r, "license", 1, 1, 90).await;
    assert_eq!(app.cleanup(&token_of(&live[2])).await.body, json!({"ended": true}));
    assert_eq!(app.create_ok(&key, "u4").await["seats"], json!({"limit": 1, "active": 1}));
}

// ---- 16b. what a careless client sends ----

/// A keepalive `fetch` from a page can carry the page's own `Authorization`: the body's session
/// token is then the credential, and the logout is not lost.
async fn a_foreign_authorization_gives_way_to_the_body_token(b: Backend) {
    let app = TestApp::start(b).await;
    let (_license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    let s = app.create_ok(&key, "u1").await;
    let body = json!({"sessionToken": s["sessionToken"]});
    let beat = app.request(Method::POST, HEARTBEAT, Some("the-page-own-jwt"), Some(body.clone())).await;
    assert_eq!(beat.status, 200, "{beat:?}");
    let r = app.request(Method::POST, CLEANUP, Some("the-page-own-jwt"), Some(body)).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"ended": true})), "{r:?}");
    // With no token in the body, the foreign credential is what was sent: unknown.
    let r = app.request(Method::POST, CLEANUP, Some("the-page-own-jwt"), Some(json!({}))).await;
    client_error("foreign credential alone", &r, 401, "unauthorized");
}

/// `sessions` and `cleanup-sessions` are valid license ids: the routes on their paths that take
/// other methods are the license's own.
async fn the_route_paths_are_license_ids_too(b: Backend) {
    let app = TestApp::start(b).await;
    for id in ["sessions", "cleanup-sessions"] {
        let path = format!("/api/licenses/{id}");
        let put = app.admin(Method::PUT, &path, Some(json!({"features": {"f": {"maxSessions": 1}}}))).await;
        assert_eq!(put.status, 201, "{id}: {put:?}");
        let get = app.admin(Method::GET, &path, None).await;
        assert_eq!((get.status, &get.body["licenseId"]), (200, &json!(id)), "{id}: {get:?}");
        let key = put.body["key"].as_str().unwrap();
        let s = app.create_ok(key, "u1").await;
        assert_eq!(s["licenseId"], id);
        let del = app.admin(Method::DELETE, &path, None).await;
        assert_eq!((del.status, &del.body["ended"]), (200, &json!(1)), "{id}: {del:?}");
    }
}

/// Metadata keys are 1 to 128 characters and values at most 1024, counted in characters.
async fn metadata_is_bounded_in_characters(b: Backend) {
    let app = TestApp::start(b).await;
    let (_license, key) = app.simple_license(json!({"maxSessions": 5})).await;
    let with = |k: String, v: String| json!({"userId": "u1", "feature": "f", "metadata": {k: v}});
    let r = app.create(&key, with("é".repeat(128), "ü".repeat(1024))).await;
    assert_eq!(r.status, 201, "128 two-byte characters are 128 characters: {r:?}");
    let r = app.create(&key, with("é".repeat(129), "v".into())).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "metadata", "{r:?}");
    let r = app.create(&key, with("k".into(), "ü".repeat(1025))).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "metadata", "{r:?}");
}

// ---- 17. health ----

async fn health_reports_both_stores(b: Backend) {
    let app = TestApp::start(b).await;
    let r = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"status": "ok", "seatStore": "ok", "ledger": "ok"}));
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{r:?}");
}

ledger_tests!(
    a_foreign_authorization_gives_way_to_the_body_token,
    the_route_paths_are_license_ids_too,
    metadata_is_bounded_in_characters,
    seats_fill_then_the_next_create_is_refused,
    an_expired_lease_frees_its_seat_without_a_sweep,
    heartbeats_keep_a_session_alive_across_lease_lengths,
    heartbeat_after_cleanup_is_gone_with_reason_ended,
    cleanup_is_idempotent_by_header_and_by_body,
    idempotency_key_replays_the_same_session,
    same_device_takes_its_seat_over,
    per_user_cap_refuses_with_scope_user,
    evict_idle_ends_the_least_recently_renewed_session,
    resurrection_within_the_window_needs_a_free_seat,
    concurrent_creates_admit_exactly_the_limit,
    bad_input_gets_the_contract_errors,
    license_routes_create_update_and_read,
    health_reports_both_stores,
    ; sql_only:
    // Not on DynamoDB: the first counts the event rows with SQL, the second renames the sessions
    // table under the running service; neither has a DynamoDB equivalent the harness can reach.
    heartbeat_is_one_redis_command_and_no_ledger_write,
    ledger_failure_on_create_takes_no_seat,
);

// ---- 12. property: random interleavings never exceed the limits (SQLite ledger) ----

const PROP_LIMIT: u64 = 3;
const PROP_PER_USER: u64 = 2;

#[derive(Clone, Debug)]
enum Op {
    Create { user: u8, device: Option<u8> },
    Heartbeat(Index),
    Cleanup(Index),
}

#[derive(Clone, Debug)]
enum Step {
    /// Sleep past the 1 s lease.
    WaitPastExpiry,
    /// Run these concurrently.
    Ops(Vec<Op>),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, proptest::option::of(0u8..2)).prop_map(|(user, device)| Op::Create { user, device }),
        2 => any::<Index>().prop_map(Op::Heartbeat),
        1 => any::<Index>().prop_map(Op::Cleanup),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::WaitPastExpiry),
        9 => proptest::collection::vec(op_strategy(), 1..=4).prop_map(Step::Ops),
    ]
}

/// Live leases of a slot per user, by the Redis server's clock. Run between steps, when nothing
/// but expiry changes the slot, so the reads are consistent.
async fn live_per_user(app: &TestApp, license: &str) -> HashMap<String, u64> {
    let mut c = app.redis_conn().await;
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("sk:{{{license}/f}}:leases"))
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for id in ids {
        let (user, ..) = app.seat_record(license, "f", &id).await.expect("a live lease has its record");
        *out.entry(user).or_default() += 1;
    }
    out
}

/// One case: a fresh license on the shared app, then the steps; the invariants after every step.
async fn run_case(app: &TestApp, evict: bool, resurrect: u32, steps: &[Step]) {
    let policy = json!({
        "maxSessions": PROP_LIMIT,
        "maxSessionsPerUser": PROP_PER_USER,
        "leaseTtlSeconds": 1,
        "onLimit": if evict { "evict_idle" } else { "reject" },
        "resurrectWindowSeconds": resurrect,
    });
    let (license, key) = app.simple_license(policy).await;
    // Every token the service handed out, and the ones a cleanup reported as ended.
    let tokens: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut ended: HashSet<String> = HashSet::new();
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::WaitPastExpiry => sleep_ms(1100).await,
            Step::Ops(ops) => {
                let known = tokens.lock().unwrap().clone();
                let ended_before = ended.clone();
                let runs = ops.iter().map(|op| {
                    let (known, key, tokens, ended_before) = (&known, &key, &tokens, &ended_before);
                    async move {
                        match op {
                            Op::Create { user, device } => {
                                let mut body = json!({"userId": format!("u{user}"), "feature": "f"});
                                if let Some(d) = device {
                                    body["deviceId"] = format!("d{d}").into();
                                }
                                let r = app.create(key, body).await;
                                match r.status {
                                    201 => {
                                        let active = r.body["seats"]["active"].as_u64().unwrap();
                                        assert!(active <= PROP_LIMIT, "admitted beyond the limit: {r:?}");
                                        tokens.lock().unwrap().push(token_of(&r.body));
                                    }
                                    409 => {
                                        let err = r.expect_error(409, "seat_limit_reached");
                                        assert!(
                                            !evict || err["scope"] == "user",
                                            "evict_idle refused by license: {r:?}"
                                        );
                                    }
                                    _ => panic!("create: {r:?}"),
                                }
                                None
                            }
                            Op::Heartbeat(i) if !known.is_empty() => {
                                let t = &known[i.index(known.len())];
                                let r = app.heartbeat(t).await;
                                match r.status {
                                    200 => assert!(!ended_before.contains(t), "an ended session renewed: {r:?}"),
                                    410 if ended_before.contains(t) => assert_gone(&r, "ended"),
                                    410 => {
                                        let reason = r.body["error"]["reason"].as_str().unwrap_or_default();
                                        assert!(["expired", "ended", "evicted", "replaced"].contains(&reason), "{r:?}");
                                    }
                                    _ => panic!("heartbeat: {r:?}"),
                                }
                                None
                            }
                            Op::Cleanup(i) if !known.is_empty() => {
                                let t = &known[i.index(known.len())];
                                let r = app.cleanup(t).await;
                                assert_eq!(r.status, 200, "cleanup: {r:?}");
                                let over = r.body["ended"] == true || r.body["reason"] == "ended";
                                if ended_before.contains(t) {
                                    assert_eq!(r.body, json!({"ended": false, "reason": "ended"}));
                                }
                                over.then(|| t.clone())
                            }
                            Op::Heartbeat(_) | Op::Cleanup(_) => None,
                        }
                    }
                });
                ended.extend(join_all(runs).await.into_iter().flatten());
            }
        }
        let live = app.live_leases(&license, "f").await;
        assert!(live <= PROP_LIMIT, "step {n}: {live} live leases over the limit {PROP_LIMIT}");
        for (user, n_live) in live_per_user(app, &license).await {
            assert!(n_live <= PROP_PER_USER, "step {n}: user {user} holds {n_live} live leases");
        }
    }
}

#[test]
fn property_random_interleavings_never_exceed_the_limits_sqlite() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(TestApp::start(Backend::Sqlite));
    let config = PropConfig { cases: 12, max_shrink_iters: 64, failure_persistence: None, ..PropConfig::default() };
    let strategy =
        (any::<bool>(), prop_oneof![Just(0u32), Just(3u32)], proptest::collection::vec(step_strategy(), 1..=12));
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |(evict, resurrect, steps)| {
        rt.block_on(run_case(&app, evict, resurrect, &steps));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
