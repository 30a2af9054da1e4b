//! History through the outbox: a login never waits on the ledger, and every change Redis made
//! reaches the ledger once, whatever happens to the ledger or the runner in between.

use std::time::{Duration, Instant};

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::{Ident, Slot};
use seatkeeper_tests::seatkeeper_core::ops::sweep::SweepScope;
use seatkeeper_tests::seatkeeper_core::seats::{CreateOutcome, Versioned};
use seatkeeper_tests::seatkeeper_core::token;
use seatkeeper_tests::{direct_seat, ledger_tests, Backend, Options, RunnerProcess, TestApp};
use serde_json::{json, Value};

fn sid(v: &Value) -> String {
    v["sessionId"].as_str().unwrap().to_owned()
}

fn tok(v: &Value) -> String {
    v["sessionToken"].as_str().unwrap().to_owned()
}

fn slot(license: &str) -> Slot {
    Slot { license: Ident::parse("l", license).unwrap(), feature: Ident::parse("f", "f").unwrap() }
}

/// Waits (5 s at most: the bound README.md gives for the ledger's lag once it is back) until the
/// ledger holds each session with the status wanted, without draining anything itself: the
/// runner's own writer must bring it. Returns how long it took.
async fn ledger_catches_up(app: &TestApp, want: &[(String, &str)]) -> Duration {
    let start = Instant::now();
    loop {
        let mut behind = Vec::new();
        for (sid, status) in want {
            let got = app.svc.ledger().session(sid).await.ok().flatten().map(|r| r.status);
            if got.as_deref() != Some(*status) {
                behind.push(format!("{sid}: {got:?}, not {status}"));
            }
        }
        if behind.is_empty() {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the ledger did not catch up within 5 s: {behind:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ledger unreachable (its connections cut) for 30 s on PostgreSQL, 10 s elsewhere, longer
/// than the license cache's life: logins, heartbeats and logouts go on answering as if nothing
/// happened, every one of them before the ledger is back. Once it is, the runner's own writer puts
/// every session of the outage into the ledger, once each.
async fn a_ledger_outage_costs_logins_nothing(b: Backend) {
    let outage = Duration::from_secs(if b == Backend::Postgres { 30 } else { 10 });
    let app = TestApp::start_with(b, Options { proxy: true, ..Default::default() }).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    let first = app.create_ok(&key, "before").await;
    app.history().await;
    app.proxy.as_ref().unwrap().cut();
    let cut_at = Instant::now();
    let mut want = vec![(sid(&first), "ended")];
    let mut i = 0;
    while cut_at.elapsed() < outage {
        let user = format!("u{i}");
        let created = app.create(&key, json!({"userId": user, "feature": "f", "deviceId": "d"})).await;
        assert_eq!(created.status, 201, "a login during the outage: {created:?}");
        assert_eq!(app.heartbeat(&tok(&created.body)).await.status, 200);
        if i % 2 == 0 {
            assert_eq!(app.cleanup(&tok(&created.body)).await.body, json!({"ended": true}));
            want.push((sid(&created.body), "ended"));
        } else {
            // The same user and device again: a takeover, decided and recorded in one step.
            let again = app.create(&key, json!({"userId": user, "feature": "f", "deviceId": "d"})).await;
            assert_eq!(again.status, 201, "{again:?}");
            assert_eq!(again.body["replacedSessionId"], sid(&created.body).as_str());
            want.push((sid(&created.body), "replaced"));
            assert_eq!(app.cleanup(&tok(&again.body)).await.status, 200);
            want.push((sid(&again.body), "ended"));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.cleanup(&tok(&first)).await.body, json!({"ended": true}));
    // Nothing of it is in the ledger yet: every answer above came without it.
    let outbox: u64 = app.svc.seats().outbox_len(&slot(&license)).await.unwrap();
    assert!(outbox as usize >= want.len(), "the outbox holds the outage's history: {outbox}");
    app.proxy.as_ref().unwrap().restore();
    let lag = ledger_catches_up(&app, &want).await;
    println!("{} sessions over a {outage:?} outage; in the ledger {lag:?} after it ended", want.len());
    // Once each: every session one row, every create counted once.
    app.history().await;
    let stats = app.svc.ledger().stats(&slot(&license).license, 0, i64::MAX / 2).await.unwrap();
    assert_eq!(stats["f"].created, want.len() as u64, "each session recorded once");
    assert_eq!(app.svc.seats().outbox_len(&slot(&license)).await.unwrap(), 0, "only what committed is trimmed");
    assert_eq!(app.svc.ledger().active_sessions(&slot(&license)).await.unwrap().len(), 0);
}

/// The outbox has a bound: with the ledger away, new seats answer 503 once a slot's outbox holds
/// `SEATKEEPER_OUTBOX_LIMIT` entries, while heartbeats, logouts and refusals go on. Nothing a 503
/// refused reaches the ledger; everything before it does, once the ledger is back.
async fn the_outbox_bound_refuses_new_seats_and_loses_nothing(b: Backend) {
    let app = TestApp::start_with(b, Options { proxy: true, outbox_limit: Some(6), ..Default::default() }).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 50})).await;
    app.create_ok(&key, "warm").await;
    app.history().await;
    app.proxy.as_ref().unwrap().cut();
    let mut granted = Vec::new();
    let refused = loop {
        let r = app.create(&key, json!({"userId": format!("u{}", granted.len()), "feature": "f"})).await;
        match r.status {
            201 => granted.push(r.body),
            _ => break r,
        }
        assert!(granted.len() <= 6, "the bound holds");
    };
    refused.expect_error(503, "store_unavailable");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(granted.len(), 6, "one start each up to the bound");
    assert_eq!(app.live_leases(&license, "f").await, 7, "the refused create took no seat");
    // Sessions that hold seats keep them, and may leave.
    assert_eq!(app.heartbeat(&tok(&granted[0])).await.status, 200);
    assert_eq!(app.cleanup(&tok(&granted[1])).await.body, json!({"ended": true}));
    app.proxy.as_ref().unwrap().restore();
    let mut want: Vec<(String, &str)> = granted.iter().map(|g| (sid(g), "active")).collect();
    want[1].1 = "ended";
    ledger_catches_up(&app, &want).await;
    // Drained: seats are granted again.
    app.create_ok(&key, "after").await;
    app.history().await;
    let rows = app.svc.ledger().active_sessions(&slot(&license)).await.unwrap();
    assert_eq!(rows.len(), 7, "warm, five of the six, and the one after: {rows:?}");
}

/// The runner is killed (SIGKILL) while its ledger is locked, after a create and a logout were
/// answered: their history is in Redis only. A runner started afterwards puts it into the ledger,
/// once, by itself.
async fn a_killed_runner_loses_no_history(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5})).await;
    let s = app.create_ok(&key, "u1").await;
    app.history().await;
    let mut runner = RunnerProcess::start(&app.redis.url, &app.db.url).await;
    let lock = app.lock_sessions().await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/licenses/sessions", runner.base))
        .bearer_auth(&key)
        .json(&json!({"userId": "u2", "feature": "f", "metadata": {"tab": "7"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ended = http.post(format!("{}/api/licenses/sessions/cleanup", runner.base)).bearer_auth(tok(&s)).send().await;
    assert_eq!(ended.unwrap().status(), 200, "a logout needs no ledger");
    runner.kill().await;
    app.unlock_sessions(lock).await;
    assert!(app.svc.seats().outbox_len(&slot(&license)).await.unwrap() >= 2, "the history waits in Redis");
    let _next = RunnerProcess::start(&app.redis.url, &app.db.url).await;
    ledger_catches_up(&app, &[(sid(&created), "active"), (sid(&s), "ended")]).await;
    let row = app.svc.ledger().session(&sid(&created)).await.unwrap().unwrap();
    assert_eq!(row.metadata.as_deref(), Some(r#"{"tab":"7"}"#));
    assert_eq!(row.user_id, "u2");
    app.history().await;
    let stats = app.svc.ledger().stats(&slot(&license).license, 0, i64::MAX / 2).await.unwrap();
    assert_eq!(stats["f"].created, 2, "each create recorded once");
}

/// Reads never take history still in the outbox for drift: a session admitted in Redis whose
/// start no writer has taken yet is neither an orphan to the sweep nor a discrepancy to `debug`.
async fn history_in_the_outbox_is_not_drift(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5})).await;
    app.create_ok(&key, "warm").await;
    let slot = slot(&license);
    let l = app.svc.ledger().license(&slot.license).await.unwrap().unwrap();
    let policy = l.features.get(&slot.feature).unwrap().clone();
    // A create's script, as another instance ran it a minute ago: its start is in the outbox only.
    let session_id = token::new_session_id();
    let minted = token::mint_session_token(&slot, &session_id);
    let seat = direct_seat(&session_id, "u1", &minted.hash);
    let outcome =
        app.svc.seats().create(&slot, Versioned { policy: &policy, version: l.version }, &seat).await.unwrap();
    assert!(matches!(outcome, CreateOutcome::Admitted { .. }), "{outcome:?}");
    app.age_seat(&license, "f", &session_id, 60_000).await;
    let debug = app.admin(Method::GET, "/api/licenses/sessions/debug?userId=u1&feature=f", None).await;
    assert_eq!(debug.status, 200, "{debug:?}");
    let licenses = debug.body["licenses"].as_array().expect("licenses");
    assert!(!licenses.is_empty() && licenses.iter().all(|l| l["consistent"] == true), "no drift: {}", debug.body);
    let shown = debug.body["sessions"].as_array().unwrap();
    assert!(shown.iter().any(|s| s["sessionId"] == session_id.as_str() && s["inLedger"] == true), "{}", debug.body);
    let report = app.svc.sweep(&SweepScope { full: true, ..Default::default() }).await.unwrap();
    assert_eq!((report.orphan_seats, report.orphan_rows), (0, 0), "{report:?}");
    assert_eq!(app.ledger_status(&session_id).await.as_deref(), Some("active"));
    assert_eq!(app.heartbeat(&minted.token).await.status, 200);
}

ledger_tests!(history_in_the_outbox_is_not_drift; sql_only: a_killed_runner_loses_no_history);

macro_rules! outage_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres_outage {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { seatkeeper_tests::bounded(super::$name(seatkeeper_tests::Backend::Postgres)).await } )*
        }
        mod mysql_outage {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { seatkeeper_tests::bounded(super::$name(seatkeeper_tests::Backend::MySql)).await } )*
        }
        mod dynamo_outage {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { seatkeeper_tests::bounded(super::$name(seatkeeper_tests::Backend::Dynamo)).await } )*
        }
    };
}

outage_tests!(a_ledger_outage_costs_logins_nothing, the_outbox_bound_refuses_new_seats_and_loses_nothing);
