//! The sweep, fault recovery, the admin routes and the admin CLI, against real Redis and real SQL.
//!
//! Every scenario runs on its own redis-server and its own database. Leases are short (1 s, a few
//! 2 s where a scripted history must not run out under load) and the tests sleep just past expiry;
//! nothing asserts on timing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::{Ident, Slot};
use seatkeeper_tests::seatkeeper_core::ops::sweep::{SweepReport, SweepScope};
use seatkeeper_tests::{ledger_tests, Backend, Options, Resp, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

// ---- helpers ----

fn sid(v: &Value) -> String {
    v["sessionId"].as_str().expect("sessionId").to_owned()
}

fn tok(v: &Value) -> String {
    v["sessionToken"].as_str().expect("sessionToken").to_owned()
}

/// A Redis key of a slot: `sk:{license/feature}:<suffix>`.
fn rkey(license: &str, feature: &str, suffix: &str) -> String {
    format!("sk:{{{license}/{feature}}}:{suffix}")
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Creates a session for `user` on `feature` (with a device when given); asserts 201.
async fn create_on(app: &TestApp, key: &str, user: &str, feature: &str, device: Option<&str>) -> Value {
    let mut body = json!({"userId": user, "feature": feature});
    if let Some(d) = device {
        body["deviceId"] = d.into();
    }
    let r = app.create(key, body).await;
    assert_eq!(r.status, 201, "create for {user} on {feature}: {r:?}");
    r.body
}

/// Creates `n` sessions (users `u0..`) on `feature` through the API, 16 at a time; asserts each 201.
async fn create_many(app: &TestApp, key: &str, feature: &str, n: usize) -> Vec<String> {
    let results: Vec<Resp> = futures::stream::iter(0..n)
        .map(|i| app.create(key, json!({"userId": format!("u{i}"), "feature": feature})))
        .buffer_unordered(16)
        .collect()
        .await;
    results
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "bulk create: {r:?}");
            sid(&r.body)
        })
        .collect()
}

async fn sweep(app: &TestApp, full: bool) -> SweepReport {
    let report = app.svc.sweep(&SweepScope { full, ..Default::default() }).await.expect("sweep runs");
    assert_eq!(report.failed_slots, 0, "no slot failed: {report:?}");
    report
}

/// Runs an SQL statement on the test's own connection (never cut by a proxy); returns rows affected.
/// Only ids the service generated (hex) and fixed words are put into SQL text.
async fn exec(pool: &sqlx::AnyPool, sql: String) -> u64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

async fn count(pool: &sqlx::AnyPool, sql: String) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A field of a session's record in Redis: "u", "d", "c", "h", or "e" (its lease expiry).
async fn record_field(app: &TestApp, license: &str, feature: &str, session: &str, field: &str) -> Option<String> {
    if field == "e" {
        let mut c = app.redis_conn().await;
        let score: Option<f64> =
            redis::cmd("ZSCORE").arg(rkey(license, feature, "leases")).arg(session).query_async(&mut c).await.unwrap();
        return score.map(|e| (e as i64).to_string());
    }
    let (u, d, c, h) = app.seat_record(license, feature, session).await?;
    Some(match field {
        "u" => u,
        "d" => d,
        "c" => c.to_string(),
        "h" => h.to_string(),
        other => panic!("no record field {other}"),
    })
}

/// Whether a session holds a lease (live or due) in its slot.
async fn has_lease(app: &TestApp, license: &str, feature: &str, session: &str) -> bool {
    let mut c = app.redis_conn().await;
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg(rkey(license, feature, "leases")).arg(session).query_async(&mut c).await.unwrap();
    score.is_some()
}

/// Makes a seat with no ledger row: deletes the session's ledger row and ages its Redis record
/// past the 30 s grace a create in flight gets.
async fn orphan_seat(app: &TestApp, pool: &sqlx::AnyPool, license: &str, feature: &str, session: &str) {
    assert_eq!(exec(pool, format!("DELETE FROM sessions WHERE session_id = '{session}'")).await, 1);
    app.age_seat(license, feature, session, 60_000).await;
}

/// Makes an active ledger row with no seat: removes the session's lease and record from Redis.
async fn orphan_row(app: &TestApp, license: &str, feature: &str, session: &str) {
    app.drop_seat(license, feature, session).await;
}

async fn debug_view(app: &TestApp, user: &str, feature: &str) -> Value {
    let r =
        app.admin(Method::GET, &format!("/api/licenses/sessions/debug?userId={user}&feature={feature}"), None).await;
    assert_eq!(r.status, 200, "debug: {r:?}");
    r.body
}

fn debug_license<'a>(view: &'a Value, license: &str) -> &'a Value {
    view["licenses"]
        .as_array()
        .expect("licenses")
        .iter()
        .find(|l| l["licenseId"] == license)
        .unwrap_or_else(|| panic!("license {license} in debug view {view}"))
}

fn debug_session<'a>(view: &'a Value, session: &str) -> &'a Value {
    view["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["sessionId"] == session)
        .unwrap_or_else(|| panic!("session {session} in debug view {view}"))
}

// ---- 1. the sweep expires what ran out, exactly once ----

async fn sweep_expires_each_lease_once(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 1})).await;
    // The first one renews its lease once, a little after its creation and well before expiry.
    let renewed = app.create_ok(&key, "u1").await;
    sleep_ms(30).await;
    let hb = app.heartbeat(&tok(&renewed)).await;
    assert_eq!(hb.status, 200, "heartbeat before expiry: {hb:?}");
    let beat_ms: i64 = record_field(&app, &license, "f", &sid(&renewed), "h").await.unwrap().parse().unwrap();
    let s: Vec<Value> = vec![renewed, app.create_ok(&key, "u2").await, app.create_ok(&key, "u3").await];
    sleep_ms(1_300).await;
    assert_eq!(app.live_leases(&license, "f").await, 0, "every lease ran out");
    assert_eq!(app.all_leases(&license, "f").await, 3, "due leases wait for the sweep");

    let first = sweep(&app, false).await;
    assert_eq!(first.expired, 3, "{first:?}");
    let second = sweep(&app, false).await;
    assert_eq!(second.expired, 0, "nothing is expired twice: {second:?}");
    assert_eq!(app.all_leases(&license, "f").await, 0);

    for session in &s {
        assert_eq!(app.ledger_status(&sid(session)).await.as_deref(), Some("expired"));
    }
    // The heartbeat time the seat store kept was written back to the ledger with the expiry.
    let row = app.svc.ledger().session(&sid(&s[0])).await.unwrap().unwrap();
    assert_eq!(row.last_heartbeat_at_ms, beat_ms, "ledger has the seat store's heartbeat time");
    assert!(row.last_heartbeat_at_ms > row.created_at_ms, "{row:?}");
    assert!(row.ended_at_ms.is_some_and(|e| e > beat_ms), "ended when the renewed lease ran out: {row:?}");

    let pool = app.db.pool().await;
    let filter = format!("FROM session_events WHERE kind = 'expired' AND license_id = '{license}'");
    assert_eq!(count(&pool, format!("SELECT COUNT(*) {filter}")).await, 3);
    assert_eq!(count(&pool, format!("SELECT COUNT(DISTINCT session_id) {filter}")).await, 3, "one event per session");
}

// ---- 2. a full sweep writes heartbeat times back ----

async fn full_sweep_writes_heartbeats_back(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 60})).await;
    let s = app.create_ok(&key, "u1").await;
    let quiet = app.create_ok(&key, "u2").await;
    sleep_ms(30).await;
    assert_eq!(app.heartbeat(&tok(&s)).await.status, 200);
    let beat_ms: i64 = record_field(&app, &license, "f", &sid(&s), "h").await.unwrap().parse().unwrap();
    let lease_ms: i64 = record_field(&app, &license, "f", &sid(&s), "e").await.unwrap().parse().unwrap();
    let before = app.svc.ledger().session(&sid(&s)).await.unwrap().unwrap();
    assert!(before.last_heartbeat_at_ms < beat_ms, "heartbeats touch only the seat store");

    let report = sweep(&app, true).await;
    assert_eq!(report.heartbeats_written, 1, "only the renewed session had news: {report:?}");
    assert_eq!(report.expired + report.orphans_removed() + report.repaired, 0, "{report:?}");
    let after = app.svc.ledger().session(&sid(&s)).await.unwrap().unwrap();
    assert_eq!(after.last_heartbeat_at_ms, beat_ms);
    assert_eq!(after.expires_at_ms, lease_ms, "the renewed expiry is written back too");
    assert_eq!(after.status, "active");
    let untouched = app.svc.ledger().session(&sid(&quiet)).await.unwrap().unwrap();
    assert_eq!(untouched.last_heartbeat_at_ms, untouched.created_at_ms);

    let again = sweep(&app, true).await;
    assert_eq!(again.heartbeats_written, 0, "already written: {again:?}");
}

// ---- 3. orphans both ways ----

async fn orphans_both_ways_are_removed(b: Backend) {
    let app = TestApp::start(b).await;
    let pool = app.db.pool().await;
    let (l1, k1) = app
        .license(json!({
            "f": {"maxSessions": 10, "leaseTtlSeconds": 300},
            "short": {"maxSessions": 10, "leaseTtlSeconds": 1},
        }))
        .await;
    let a = sid(&create_on(&app, &k1, "ua", "f", None).await); // will be a seat with no ledger row
    let bb = sid(&create_on(&app, &k1, "ub", "f", None).await); // will be a ledger row with no seat
    let c = sid(&create_on(&app, &k1, "uc", "f", None).await); // stays consistent
    let d = create_on(&app, &k1, "ud", "f", None).await; // an end the ledger "forgets"
    let e = sid(&create_on(&app, &k1, "ue", "short", None).await); // runs out
    assert_eq!(app.cleanup(&tok(&d)).await.body, json!({"ended": true}));
    let d = sid(&d);
    // The ledger has every row and end before the stores are tampered with.
    app.history().await;

    orphan_seat(&app, &pool, &l1, "f", &a).await;
    orphan_row(&app, &l1, "f", &bb).await;
    let reverted =
        exec(&pool, format!("UPDATE sessions SET status = 'active', ended_at = NULL WHERE session_id = '{d}'")).await;
    assert_eq!(reverted, 1);
    sleep_ms(1_200).await;

    let r = app.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({"licenseId": l1}))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["licenseId"], l1.as_str());
    assert_eq!(r.body["orphansRemoved"], 2, "{r:?}");
    assert_eq!(r.body["orphanSeats"], 1, "{r:?}");
    assert_eq!(r.body["orphanRows"], 1, "{r:?}");
    assert_eq!(r.body["repaired"], 1, "the forgotten end is copied from the seat store: {r:?}");
    assert_eq!(r.body["expired"], 1, "the run-out lease is expired, not an orphan: {r:?}");

    assert!(!has_lease(&app, &l1, "f", &a).await, "the orphan seat is gone from Redis");
    assert_eq!(record_field(&app, &l1, "f", &a, "u").await, None, "and its record");
    assert_ne!(app.ledger_status(&bb).await.as_deref(), Some("active"), "the orphan row is no longer active");
    assert_eq!(app.ledger_status(&d).await.as_deref(), Some("ended"));
    assert_eq!(app.ledger_status(&e).await.as_deref(), Some("expired"));
    assert_eq!(app.ledger_status(&c).await.as_deref(), Some("active"));
    assert!(has_lease(&app, &l1, "f", &c).await);
    let again = app.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({"licenseId": l1}))).await;
    assert_eq!(
        (again.body["expired"].clone(), again.body["orphansRemoved"].clone(), again.body["repaired"].clone()),
        (json!(0), json!(0), json!(0)),
        "a second run finds nothing: {again:?}"
    );

    // The scheduled sweep reads a slot member by member once it is due for its hourly check, or
    // when the service marked it dirty (a ledger write it knows missed); other slots it leaves be.
    let (l2, k2) = app
        .license(
            json!({"f": {"maxSessions": 10, "leaseTtlSeconds": 300}, "g": {"maxSessions": 10, "leaseTtlSeconds": 300}}),
        )
        .await;
    let x = sid(&create_on(&app, &k2, "ux", "f", None).await);
    let x2 = sid(&create_on(&app, &k2, "ux2", "f", None).await);
    let y = sid(&create_on(&app, &k2, "uy", "g", None).await);
    let y2 = sid(&create_on(&app, &k2, "uy2", "g", None).await);
    orphan_seat(&app, &pool, &l2, "f", &x).await; // f: 2 leases, 1 active row
    orphan_row(&app, &l2, "g", &y).await; // g: 1 lease, 2 active rows
    let quiet = sweep(&app, false).await;
    assert_eq!((quiet.orphan_seats, quiet.orphan_rows, quiet.reconciled), (0, 0, 0), "none due: {quiet:?}");
    let mut c = app.redis_conn().await;
    let two_hours_ago = seatkeeper_tests::seatkeeper_core::domain::now_ms() - 7_200_000;
    let _: () = redis::cmd("HSET")
        .arg(TestApp::seat_key(&l2, "f", "cfg"))
        .arg("rec")
        .arg(two_hours_ago)
        .query_async(&mut c)
        .await
        .unwrap();
    let g = Slot { license: Ident::parse("l", &l2).unwrap(), feature: Ident::parse("f", "g").unwrap() };
    app.svc.seats().mark_dirty(&g).await.unwrap();
    let report = sweep(&app, false).await;
    assert_eq!(report.reconciled, 2, "{report:?}");
    assert_eq!((report.orphan_seats, report.orphan_rows), (1, 1), "{report:?}");
    assert_eq!((report.expired, report.repaired), (0, 0), "{report:?}");
    assert!(!has_lease(&app, &l2, "f", &x).await);
    assert_eq!(app.ledger_status(&y).await.as_deref(), Some("expired"));
    assert_eq!(app.ledger_status(&x2).await.as_deref(), Some("active"));
    assert_eq!(app.ledger_status(&y2).await.as_deref(), Some("active"));
    assert_eq!(app.all_leases(&l2, "f").await + app.all_leases(&l2, "g").await, 2);
    let after = sweep(&app, false).await;
    assert_eq!(after.reconciled, 0, "reconciled slots are clean and fresh again: {after:?}");
}

// ---- 4. the seat store loses its data ----

async fn flushall_rebuilds_from_the_ledger(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 2, "leaseTtlSeconds": 60})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let s2 = app.create_ok(&key, "u2").await;
    let mut c = app.redis_conn().await;
    // Redis loses its data once the history is in the ledger: what the outbox still held
    // is lost with it (README.md, "History").
    app.history().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    assert_eq!(app.all_leases(&license, "f").await, 0, "the seat store lost everything");

    // The ledger's live sessions still fill the limit: the slot is rebuilt before admitting.
    let refused = app.create(&key, json!({"userId": "u3", "feature": "f"})).await;
    let err = refused.expect_error(409, "seat_limit_reached");
    assert_eq!((err["limit"].clone(), err["active"].clone()), (json!(2), json!(2)), "{refused:?}");
    assert!(refused.header("retry-after").is_some());
    for s in [&s1, &s2] {
        let hb = app.heartbeat(&tok(s)).await;
        assert_eq!(hb.status, 200, "a live session survives the flush: {hb:?}");
        assert_eq!(hb.body["sessionId"], sid(s).as_str());
    }
    assert_eq!(app.live_leases(&license, "f").await, 2);
    let view = debug_view(&app, "u1", "f").await;
    let lic = debug_license(&view, &license);
    assert_eq!(lic["consistent"], true, "{view}");
    assert_eq!((lic["seatStoreActive"].clone(), lic["ledgerActive"].clone()), (json!(2), json!(2)), "{view}");
    let mine = debug_session(&view, &sid(&s1));
    assert_eq!((mine["inSeatStore"].clone(), mine["inLedger"].clone()), (json!(true), json!(true)));
}

// ---- 5. the ledger goes down ----

async fn ledger_outage_is_caught_up_after(b: Backend) {
    let app = TestApp::start_with(b, Options { proxy: true, ..Default::default() }).await;
    let proxy = app.proxy.as_ref().expect("proxy");
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 60})).await;
    let s1 = app.create_ok(&key, "u1").await;
    app.history().await;

    proxy.cut();
    // The seat store alone serves logins (the license is known from a lookup before), heartbeats
    // and ends; their history waits in the slot's outbox.
    let s2 = app.create_ok(&key, "u2").await;
    let hb = app.heartbeat(&tok(&s1)).await;
    assert_eq!(hb.status, 200, "{hb:?}");
    let end = app.cleanup(&tok(&s1)).await;
    assert_eq!((end.status, end.body.clone()), (200, json!({"ended": true})), "{end:?}");
    assert_eq!(app.all_leases(&license, "f").await, 1, "s1's seat is free, s2 holds one");

    proxy.restore();
    assert_eq!(app.ledger_status(&sid(&s1)).await.as_deref(), Some("ended"));
    assert_eq!(app.ledger_status(&sid(&s2)).await.as_deref(), Some("active"));
    // Nothing was left for the sweep to mend.
    let r = app.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({"licenseId": license}))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["repaired"].clone(), r.body["orphansRemoved"].clone()), (json!(0), json!(0)), "{r:?}");
    app.create_ok(&key, "u3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ledger_outage_is_caught_up_after() {
    ledger_outage_is_caught_up_after(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_ledger_outage_is_caught_up_after() {
    ledger_outage_is_caught_up_after(Backend::MySql).await
}

// ---- 6. two sweeps at once, and a sweep killed halfway ----

/// More due sessions than one sweep batch (500).
const MANY_DUE: usize = 650;

async fn many_due(app: &TestApp) -> String {
    let (license, key) = app.simple_license(json!({"maxSessions": 1000, "leaseTtlSeconds": 1})).await;
    create_many(app, &key, "f", MANY_DUE).await;
    sleep_ms(1_200).await;
    assert_eq!(app.live_leases(&license, "f").await, 0);
    assert_eq!(app.all_leases(&license, "f").await, MANY_DUE as u64);
    license
}

/// Exactly one expired row and one expired event per session, and nothing left in Redis.
async fn assert_all_expired_once(app: &TestApp, pool: &sqlx::AnyPool, license: &str) {
    let n = MANY_DUE as i64;
    let rows =
        count(pool, format!("SELECT COUNT(*) FROM sessions WHERE license_id = '{license}' AND status = 'expired'"))
            .await;
    assert_eq!(rows, n);
    let filter = format!("FROM session_events WHERE license_id = '{license}' AND kind = 'expired'");
    assert_eq!(count(pool, format!("SELECT COUNT(*) {filter}")).await, n);
    assert_eq!(count(pool, format!("SELECT COUNT(DISTINCT session_id) {filter}")).await, n);
    assert_eq!(app.all_leases(license, "f").await, 0, "no lease left");
}

async fn concurrent_sweeps_expire_each_lease_once(b: Backend) {
    let app = TestApp::start(b).await;
    let pool = app.db.pool().await;
    let license = many_due(&app).await;
    let spawn = || {
        let svc = app.svc.clone();
        tokio::spawn(async move { svc.sweep(&SweepScope::default()).await.expect("sweep runs") })
    };
    let (one, two) = (spawn(), spawn());
    let (one, two) = (one.await.unwrap(), two.await.unwrap());
    assert_eq!((one.failed_slots, two.failed_slots), (0, 0), "{one:?} {two:?}");
    assert_eq!(one.expired + two.expired, MANY_DUE as u64, "each lease expired by exactly one sweep: {one:?} {two:?}");
    assert_all_expired_once(&app, &pool, &license).await;
    assert_eq!(sweep(&app, true).await.expired, 0);
}

async fn killed_sweep_is_finished_by_the_next(b: Backend) {
    let app = TestApp::start(b).await;
    let pool = app.db.pool().await;
    let license = many_due(&app).await;
    let svc = app.svc.clone();
    let task = tokio::spawn(async move { svc.sweep(&SweepScope::default()).await });
    // Kill it once the ledger shows its first batch, i.e. part way (or after it, if it was quicker).
    let expired_rows = format!("SELECT COUNT(*) FROM sessions WHERE license_id = '{license}' AND status = 'expired'");
    while !task.is_finished() && count(&pool, expired_rows.clone()).await == 0 {
        sleep_ms(2).await;
    }
    task.abort();
    let _ = task.await;
    // A transaction the kill interrupted is rolled back (or its commit lands) just after: wait
    // until the ledger's count holds still.
    let mut done_before = count(&pool, expired_rows.clone()).await as u64;
    loop {
        sleep_ms(200).await;
        let now = count(&pool, expired_rows.clone()).await as u64;
        if now == done_before {
            break;
        }
        done_before = now;
    }
    println!("killed the sweep with {done_before} of {MANY_DUE} recorded");

    // Leases end in Redis with their ends in the outbox, then the outbox drains: the next sweep
    // expires what the killed one had not reached and drains the rest, each end once.
    let finish = sweep(&app, false).await;
    assert!(finish.expired <= MANY_DUE as u64 - done_before, "nothing expired twice: {finish:?}");
    assert_eq!(finish.failed_slots, 0, "{finish:?}");
    assert_all_expired_once(&app, &pool, &license).await;
    let after = sweep(&app, true).await;
    assert_eq!((after.expired, after.orphans_removed(), after.repaired), (0, 0, 0), "{after:?}");
}

// ---- 7. admin credentials ----

/// Every admin route, with a body where it takes one.
fn admin_routes(license: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::DELETE, "/api/licenses/sessions/force-cleanup/u1/f".into(), None),
        (Method::GET, "/api/licenses/sessions/debug?userId=u1&feature=f".into(), None),
        (Method::POST, "/api/licenses/cleanup-sessions".into(), Some(json!({"licenseId": license}))),
        (Method::GET, format!("/api/licenses/{license}/session-stats"), None),
        (Method::PUT, format!("/api/licenses/{license}"), Some(json!({"features": {"f": {"maxSessions": 1}}}))),
        (Method::GET, format!("/api/licenses/{license}"), None),
    ]
}

async fn admin_routes_refuse_missing_and_wrong_tokens(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    let s = app.create_ok(&key, "u1").await;
    let session_token = tok(&s);
    for (method, path, body) in admin_routes(&license) {
        // No token, a wrong one, and the other credentials of the API: none opens an admin route.
        for bearer in [None, Some("wrong-token"), Some(key.as_str()), Some(session_token.as_str())] {
            let r = app.request(method.clone(), &path, bearer, body.clone()).await;
            r.expect_error(401, "unauthorized");
        }
        if path.contains("force-cleanup") {
            assert_eq!(app.ledger_status(&sid(&s)).await.as_deref(), Some("active"), "refused calls did nothing");
        }
        let ok = app.request(method.clone(), &path, Some(ADMIN_TOKEN), body.clone()).await;
        assert!((200..300).contains(&ok.status), "{method} {path} with the admin token: {ok:?}");
    }
    assert_eq!(app.ledger_status(&sid(&s)).await.as_deref(), Some("force_ended"), "the admin token did act");
}

async fn admin_routes_are_closed_without_a_configured_token(b: Backend) {
    let app = TestApp::start_with(b, Options { admin_token: None, ..Default::default() }).await;
    for (method, path, body) in admin_routes("lic-x") {
        for bearer in [None, Some(ADMIN_TOKEN), Some("")] {
            let r = app.request(method.clone(), &path, bearer, body.clone()).await;
            r.expect_error(401, "unauthorized");
        }
    }
    // Client routes still work: health answers.
    assert_eq!(app.request(Method::GET, "/health", None, None).await.status, 200);
}

// ---- 8. force-cleanup ----

async fn force_cleanup_ends_a_users_sessions(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 60})).await;
    let (other_license, other_key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 60})).await;
    let a1 = create_on(&app, &key, "alice", "f", Some("laptop")).await;
    let a2 = create_on(&app, &key, "alice", "f", Some("phone")).await;
    let bob = create_on(&app, &key, "bob", "f", Some("laptop")).await;
    let elsewhere = create_on(&app, &other_key, "alice", "f", Some("laptop")).await;

    // `?licenseId=` narrows it to one license.
    let r = app
        .admin(Method::DELETE, &format!("/api/licenses/sessions/force-cleanup/alice/f?licenseId={other_license}"), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"userId": "alice", "feature": "f", "ended": 1, "sessionIds": [sid(&elsewhere)]}));
    assert_eq!(app.heartbeat(&tok(&a1)).await.status, 200, "the other license is untouched");

    let r = app.admin(Method::DELETE, "/api/licenses/sessions/force-cleanup/alice/f", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.body["userId"].clone(), r.body["feature"].clone(), r.body["ended"].clone()),
        (json!("alice"), json!("f"), json!(2))
    );
    let ids: BTreeSet<String> =
        r.body["sessionIds"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, BTreeSet::from([sid(&a1), sid(&a2)]));

    for s in [&a1, &a2, &elsewhere] {
        let hb = app.heartbeat(&tok(s)).await;
        let err = hb.expect_error(410, "session_expired");
        assert_eq!(err["reason"], "force_ended", "{hb:?}");
        assert_eq!(app.ledger_status(&sid(s)).await.as_deref(), Some("force_ended"));
    }
    assert_eq!(app.heartbeat(&tok(&bob)).await.status, 200, "another user is untouched");
    assert_eq!(app.ledger_status(&sid(&bob)).await.as_deref(), Some("active"));
    assert_eq!(app.live_leases(&license, "f").await, 1);

    let view = debug_view(&app, "alice", "f").await;
    let sessions = view["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{view}");
    assert!(
        sessions.iter().all(|s| s["status"] == "force_ended" && s["inSeatStore"] == false && s["inLedger"] == true),
        "{view}"
    );
    let lic = debug_license(&view, &license);
    assert_eq!(lic["consistent"], true, "{view}");
    assert_eq!(
        (lic["seatStoreActive"].clone(), lic["ledgerActive"].clone(), lic["limit"].clone()),
        (json!(1), json!(1), json!(5))
    );
    let other = debug_license(&view, &other_license);
    assert_eq!(
        (other["consistent"].clone(), other["seatStoreActive"].clone(), other["ledgerActive"].clone()),
        (json!(true), json!(0), json!(0))
    );

    // Nothing left to end; an unknown license is 404.
    let again = app.admin(Method::DELETE, "/api/licenses/sessions/force-cleanup/alice/f", None).await;
    assert_eq!((again.body["ended"].clone(), again.body["sessionIds"].clone()), (json!(0), json!([])), "{again:?}");
    app.admin(Method::DELETE, "/api/licenses/sessions/force-cleanup/alice/f?licenseId=no-such-license", None)
        .await
        .expect_error(404, "not_found");
}

// ---- 9. debug flags drift ----

async fn debug_flags_drift(b: Backend) {
    let app = TestApp::start(b).await;
    let pool = app.db.pool().await;
    let (license, key) = app.simple_license(json!({"maxSessions": 5, "leaseTtlSeconds": 60})).await;
    let kept = create_on(&app, &key, "carol", "f", Some("laptop")).await;
    let lost = create_on(&app, &key, "carol", "f", Some("phone")).await;

    let view = debug_view(&app, "carol", "f").await;
    assert_eq!(view["userId"], "carol");
    assert_eq!(view["feature"], "f");
    assert_eq!(debug_license(&view, &license)["consistent"], true, "{view}");

    assert_eq!(exec(&pool, format!("DELETE FROM sessions WHERE session_id = '{}'", sid(&lost))).await, 1);
    let view = debug_view(&app, "carol", "f").await;
    let s = debug_session(&view, &sid(&lost));
    assert_eq!((s["inSeatStore"].clone(), s["inLedger"].clone()), (json!(true), json!(false)), "{view}");
    assert_eq!(s["status"], "active", "the seat store says it is live: {view}");
    assert_eq!(s["licenseId"], license.as_str());
    assert!(s["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{view}");
    let k = debug_session(&view, &sid(&kept));
    assert_eq!((k["inSeatStore"].clone(), k["inLedger"].clone()), (json!(true), json!(true)), "{view}");
    let lic = debug_license(&view, &license);
    assert_eq!(lic["consistent"], false, "drift flagged: {view}");
    assert_eq!((lic["seatStoreActive"].clone(), lic["ledgerActive"].clone()), (json!(2), json!(1)), "{view}");

    // Missing query fields are 400.
    app.admin(Method::GET, "/api/licenses/sessions/debug?userId=carol", None)
        .await
        .expect_error(400, "invalid_request");
}

// ---- 10. session-stats ----

async fn session_stats_agree_with_history(b: Backend) {
    let app = TestApp::start(b).await;
    // 2 s leases: the scripted steps below must all happen while the first two are live.
    let (license, key) = app.simple_license(json!({"maxSessions": 2, "leaseTtlSeconds": 2})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let _s2 = app.create_ok(&key, "u2").await; // peak: 2 at once
    app.create(&key, json!({"userId": "u3", "feature": "f"})).await.expect_error(409, "seat_limit_reached");
    assert_eq!(app.cleanup(&tok(&s1)).await.body, json!({"ended": true}));
    let s3 = app.create_ok(&key, "u3").await;
    let fc = app.admin(Method::DELETE, "/api/licenses/sessions/force-cleanup/u2/f", None).await;
    assert_eq!(fc.body["ended"], 1, "{fc:?}");
    sleep_ms(2_300).await; // s3 runs out
    let report = sweep(&app, false).await;
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(app.ledger_status(&sid(&s3)).await.as_deref(), Some("expired"));

    let path = format!("/api/licenses/{license}/session-stats");
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["licenseId"], license.as_str());
    let f = &r.body["features"]["f"];
    let want = json!({"limit": 2, "active": 0, "peakActive": 2, "created": 3, "ended": 1, "expired": 1,
        "evicted": 0, "replaced": 0, "forceEnded": 1, "limitRejections": 1});
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&f[k], v, "{k} in {f}");
    }
    assert!(f["averageSessionSeconds"].as_f64().is_some_and(|s| s > 0.0), "{f}");

    // The window is honoured: every create is over a second old now.
    let hour = app.admin(Method::GET, &format!("{path}?windowSeconds=3600"), None).await;
    assert_eq!(hour.body["features"]["f"]["created"], 3, "{hour:?}");
    let recent = app.admin(Method::GET, &format!("{path}?windowSeconds=1"), None).await;
    assert_eq!(recent.status, 200, "{recent:?}");
    assert_eq!(recent.body["features"]["f"]["created"], 0, "{recent:?}");
    assert_eq!(recent.body["features"]["f"]["limitRejections"], 0, "{recent:?}");
    for bad in ["0", "abc", "-5", "31708801"] {
        app.admin(Method::GET, &format!("{path}?windowSeconds={bad}"), None).await.expect_error(400, "invalid_request");
    }
    app.admin(Method::GET, "/api/licenses/no-such-license/session-stats", None).await.expect_error(404, "not_found");
}

// ---- 11. sweep cost follows what is due ----

/// `INFO commandstats` as command name -> calls.
async fn command_calls(app: &TestApp) -> HashMap<String, u64> {
    let mut c = app.redis_conn().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn sweep_cost_follows_what_is_due(b: Backend) {
    const LIVE: usize = 2_000;
    const DUE: usize = 20;
    let app = TestApp::start(b).await;
    let (license, key) = app
        .license(json!({
            "live": {"maxSessions": 5000, "leaseTtlSeconds": 300},
            "due": {"maxSessions": 100, "leaseTtlSeconds": 1},
        }))
        .await;
    create_many(&app, &key, "live", LIVE).await;
    create_many(&app, &key, "due", DUE).await;
    sleep_ms(1_200).await;
    assert_eq!(app.live_leases(&license, "live").await, LIVE as u64);
    assert_eq!(app.live_leases(&license, "due").await, 0);

    let mut c = app.redis_conn().await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let report = sweep(&app, false).await;
    let calls = command_calls(&app).await;
    let n = |cmd: &str| calls.get(cmd).copied().unwrap_or(0);
    println!("sweep report {report:?}; redis calls {calls:?}");

    assert_eq!(report.expired, DUE as u64, "{report:?}");
    assert_eq!(report.orphans_removed() + report.repaired, 0, "{report:?}");
    assert_eq!(app.all_leases(&license, "due").await, 0);
    assert_eq!(app.live_leases(&license, "live").await, LIVE as u64, "live sessions untouched");
    // What the scheduled sweep reads follows the 20 due leases, not the 2,000 live ones:
    // - due.lua reads one record (HGET of the slot's sessions hash) per due lease and expire.lua one
    //   per lease it expires, plus one HGET of each slot's cfg per script: about 2 x 20 + 3, never
    //   ~2,000;
    // - the live slot's lease count equals its ledger count, so it is never read member by member:
    //   no ZRANGE of the whole slot (snapshot.lua's pattern, one record read per lease);
    // - each expiry appends its end to the slot's outbox (one XADD), drained in a batch;
    // - in all, a few commands per due lease, far below one per live session.
    assert!(n("hget") <= 3 * DUE as u64 + 10, "record reads follow the due count: {calls:?}");
    assert_eq!(n("zrange"), 0, "no full read of a slot: {calls:?}");
    assert_eq!(n("hgetall") + n("hvals"), 0, "no read of a whole sessions hash: {calls:?}");
    // Connection setup (a script load, a ping and the slot map per node) is per node, not per lease:
    // a three-master cluster triples it, so it is left out of the per-lease total.
    let setup = ["info", "config|resetstat", "script|load", "ping", "cluster|slots"];
    let total: u64 = calls.iter().filter(|(k, _)| !setup.contains(&k.as_str())).map(|(_, v)| v).sum();
    assert!(total < 11 * DUE as u64 + 50, "{total} commands for {DUE} due leases beside {LIVE} live: {calls:?}");

    // A full pass, by contrast, reads every live session (this is what the count check avoids).
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    let full = sweep(&app, true).await;
    assert_eq!(full.expired + full.orphans_removed() + full.repaired, 0, "{full:?}");
    let calls = command_calls(&app).await;
    assert!(calls.get("hget").copied().unwrap_or(0) >= LIVE as u64, "a full pass reads each record: {calls:?}");
}

// ---- 12. seeds of the original design ----

async fn closed_tab_and_silent_client_lose_their_seat(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1, "leaseTtlSeconds": 1})).await;

    // A closed tab sends its cleanup: the session ends at once and the seat is free.
    let tab = app.create_ok(&key, "u1").await;
    assert_eq!(app.cleanup(&tok(&tab)).await.body, json!({"ended": true}));
    assert_eq!(app.cleanup(&tok(&tab)).await.body, json!({"ended": false, "reason": "ended"}), "idempotent");
    assert_eq!(app.ledger_status(&sid(&tab)).await.as_deref(), Some("ended"));
    assert_eq!(app.live_leases(&license, "f").await, 0);

    // A client that stops heartbeating loses its session when the lease runs out.
    let silent = app.create_ok(&key, "u2").await;
    app.create(&key, json!({"userId": "u3", "feature": "f"})).await.expect_error(409, "seat_limit_reached");
    sleep_ms(1_300).await;
    let hb = app.heartbeat(&tok(&silent)).await;
    assert_eq!(hb.expect_error(410, "session_expired")["reason"], "expired", "{hb:?}");
    let next = app.create_ok(&key, "u3").await; // the seat is free, sweeper or not
    assert_eq!(next["seats"]["active"], 1);
    sweep(&app, false).await;
    assert_eq!(app.ledger_status(&sid(&silent)).await.as_deref(), Some("expired"));
}

async fn admin_force_cleans_a_stuck_user(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1, "leaseTtlSeconds": 60})).await;
    let stuck = create_on(&app, &key, "stuck", "f", Some("old-pc")).await;
    app.create(&key, json!({"userId": "newcomer", "feature": "f"})).await.expect_error(409, "seat_limit_reached");

    let before = debug_view(&app, "stuck", "f").await;
    let lic = debug_license(&before, &license);
    assert_eq!(
        (lic["limit"].clone(), lic["active"].clone(), lic["consistent"].clone()),
        (json!(1), json!(1), json!(true))
    );

    let r = app.admin(Method::DELETE, "/api/licenses/sessions/force-cleanup/stuck/f", None).await;
    assert_eq!(r.body["sessionIds"], json!([sid(&stuck)]), "{r:?}");
    let after = debug_view(&app, "stuck", "f").await;
    let lic = debug_license(&after, &license);
    assert_eq!(
        (lic["seatStoreActive"].clone(), lic["ledgerActive"].clone(), lic["consistent"].clone()),
        (json!(0), json!(0), json!(true)),
        "{after}"
    );
    assert_eq!(debug_session(&after, &sid(&stuck))["status"], "force_ended");
    app.create_ok(&key, "newcomer").await;
}

/// A user, license or feature the service does not know is 404 on the admin routes that name them.
async fn admin_routes_name_unknown_users_licenses_and_features(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    app.create_ok(&key, "known").await;
    for path in [
        "/api/licenses/sessions/force-cleanup/nobody/f".to_owned(),
        "/api/licenses/sessions/debug?userId=nobody&feature=f".to_owned(),
        "/api/licenses/sessions/force-cleanup/known/other-feature".to_owned(),
        format!("/api/licenses/sessions/force-cleanup/known/other-feature?licenseId={license}"),
        "/api/licenses/sessions/force-cleanup/known/f?licenseId=no-such-license".to_owned(),
    ] {
        let method = if path.contains("debug") { Method::GET } else { Method::DELETE };
        app.admin(method, &path, None).await.expect_error(404, "not_found");
    }
    // A known user with nothing live: 200 and nothing ended, also when a license narrows it.
    let r = app
        .admin(Method::DELETE, &format!("/api/licenses/sessions/force-cleanup/nobody/f?licenseId={license}"), None)
        .await;
    assert_eq!(r.body, json!({"userId": "nobody", "feature": "f", "ended": 0, "sessionIds": []}), "{r:?}");
    assert_eq!(app.live_leases(&license, "f").await, 1, "the known user's session is untouched");
}

ledger_tests!(
    admin_routes_name_unknown_users_licenses_and_features,
    full_sweep_writes_heartbeats_back,
    flushall_rebuilds_from_the_ledger,
    admin_routes_refuse_missing_and_wrong_tokens,
    admin_routes_are_closed_without_a_configured_token,
    force_cleanup_ends_a_users_sessions,
    session_stats_agree_with_history,
    closed_tab_and_silent_client_lose_their_seat,
    admin_force_cleans_a_stuck_user,
    ; sql_only:
    // Not on DynamoDB: these count rows and events, delete a session row or revert an end with
    // SQL on the test's own connection.
    sweep_expires_each_lease_once,
    orphans_both_ways_are_removed,
    concurrent_sweeps_expire_each_lease_once,
    killed_sweep_is_finished_by_the_next,
    debug_flags_drift,
    // Not on DynamoDB's emulator: its subject is the Redis commands a sweep sends beside 2,000
    // live sessions, and moto copies the whole table for each item of a TransactWriteItems, so
    // 2,000 creates cost minutes and gigabytes there (DynamoDB itself does no such thing).
    sweep_cost_follows_what_is_due,
);

// ---- 13. the admin CLI against a running local runner ----

/// The `seatkeeper` binary the workspace builds, next to this test's executable.
fn seatkeeper_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = dir.join(format!("seatkeeper{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build the CLI first with `cargo build -p seatkeeper-local --bin seatkeeper` (or `cargo build --workspace`)",
        bin.display()
    );
    bin
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(api_url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(seatkeeper_bin());
    cmd.arg("admin").arg("--api-url").arg(api_url).args(args);
    cmd.env_remove("SEATKEEPER_API_URL").env_remove("SEATKEEPER_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("SEATKEEPER_ADMIN_TOKEN", t);
    }
    let out = cmd.output().await.expect("run seatkeeper");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI with the admin token and asserts it succeeded.
async fn cli_ok(app: &TestApp, args: &[&str]) -> String {
    let r = cli(&app.base, Some(ADMIN_TOKEN), args).await;
    assert_eq!(r.code, 0, "seatkeeper admin {args:?}: stdout {} stderr {}", r.stdout, r.stderr);
    r.stdout
}

/// The value under `header` in a table row: columns start where their headers start.
fn column<'a>(header_line: &str, row: &'a str, header: &str) -> &'a str {
    let at = header_line.find(header).unwrap_or_else(|| panic!("{header} in {header_line:?}"));
    assert!(at == 0 || header_line[..at].ends_with("  "), "columns are two spaces apart: {header_line:?}");
    row.get(at..).unwrap_or("").split("  ").next().unwrap_or("").trim_end()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_admin_verbs_against_the_local_runner() {
    let app = TestApp::start(Backend::Sqlite).await;
    let license = "cli-lic-1";

    // license put prints the generated key once; it works for creates.
    let out = cli_ok(&app, &["license", "put", license, "--feature", "f=2"]).await;
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key (shown once): "))
        .unwrap_or_else(|| panic!("the key is printed: {out}"))
        .trim()
        .to_owned();
    assert!(out.contains(license), "{out}");
    let s1 = create_on(&app, &key, "dave", "f", Some("laptop")).await;
    let s2 = create_on(&app, &key, "dave", "f", Some("phone")).await;

    let got: Value = serde_json::from_str(&cli_ok(&app, &["license", "get", license, "--json"]).await).expect("JSON");
    assert_eq!(got["licenseId"], license);
    assert_eq!(got["features"]["f"]["maxSessions"], 2);
    assert!(got.get("key").is_none(), "the key is never shown again: {got}");

    // debug prints aligned tables: each cell starts under its header.
    let out = cli_ok(&app, &["debug", "dave", "f"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let header = lines[0];
    assert!(header.starts_with("SESSION") && header.contains("SEAT STORE") && header.contains("LEDGER"), "{out}");
    let rows = &lines[1..3];
    let ids: BTreeSet<&str> = rows.iter().map(|r| column(header, r, "SESSION")).collect();
    assert_eq!(ids, BTreeSet::from([sid(&s1).as_str(), sid(&s2).as_str()]), "{out}");
    for row in rows {
        assert_eq!(column(header, row, "LICENSE"), license, "{out}");
        assert_eq!(column(header, row, "STATUS"), "active", "{out}");
        assert_eq!(column(header, row, "SEAT STORE"), "true", "{out}");
    }
    let lic_header = lines.iter().position(|l| l.starts_with("LICENSE")).expect("license table");
    assert_eq!(column(lines[lic_header], lines[lic_header + 1], "CONSISTENT"), "true", "{out}");
    assert_eq!(column(lines[lic_header], lines[lic_header + 1], "ACTIVE"), "2", "{out}");

    let fc: Value = serde_json::from_str(&cli_ok(&app, &["force-cleanup", "dave", "f", "--json"]).await).expect("JSON");
    assert_eq!(fc["ended"], 2, "{fc}");
    assert_eq!(app.heartbeat(&tok(&s1)).await.status, 410);

    let out = cli_ok(&app, &["cleanup-sessions", license]).await;
    assert!(out.starts_with("FIELD") && out.contains("orphansRemoved") && out.contains(license), "{out}");
    let cleaned: Value = serde_json::from_str(&cli_ok(&app, &["cleanup-sessions", license, "--json"]).await).unwrap();
    assert_eq!((cleaned["expired"].clone(), cleaned["orphansRemoved"].clone()), (json!(0), json!(0)), "{cleaned}");

    let out = cli_ok(&app, &["stats", license]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("FEATURE"), "{out}");
    assert_eq!(column(lines[0], lines[1], "FEATURE"), "f", "{out}");
    assert_eq!(column(lines[0], lines[1], "CREATED"), "2", "{out}");
    assert_eq!(column(lines[0], lines[1], "FORCE ENDED"), "2", "{out}");
    let stats: Value = serde_json::from_str(&cli_ok(&app, &["stats", license, "--json"]).await).unwrap();
    assert_eq!(stats["features"]["f"]["forceEnded"], 2, "{stats}");

    // Refused by the API: exit 1 with the reason on stderr.
    let r = cli(&app.base, Some("wrong-token"), &["stats", license]).await;
    assert_eq!(r.code, 1, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("401") && r.stderr.contains("unauthorized"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // No token at all: a usage error (exit 2) that says where a token comes from.
    let r = cli(&app.base, None, &["stats", license]).await;
    assert_eq!(r.code, 2, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("SEATKEEPER_ADMIN_TOKEN") && r.stderr.contains("--admin-token"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let r = cli(&app.base, Some(ADMIN_TOKEN), &["stats", "no-such-license"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("404"), "{}", r.stderr);

    // license delete removes it: its sessions end (revoked) and its key stops working.
    let s3 = create_on(&app, &key, "erin", "f", None).await;
    let out = cli_ok(&app, &["license", "delete", license]).await;
    assert_eq!(out.trim(), format!("removed license {license}; ended 1 session(s)"), "{out}");
    assert_eq!(app.heartbeat(&tok(&s3)).await.body["error"]["reason"], "revoked");
    let r = cli(&app.base, Some(ADMIN_TOKEN), &["license", "get", license]).await;
    assert!(r.code == 1 && r.stderr.contains("404"), "{}", r.stderr);

    // Unreachable: exit 3.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = cli(&format!("http://127.0.0.1:{closed}"), Some(ADMIN_TOKEN), &["stats", license]).await;
    assert_eq!(r.code, 3, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("cannot reach"), "{}", r.stderr);
}
