//! The group commit's batches, on each ledger: what one `record` call is given is recorded once,
//! whole, whichever way the backend writes it (PostgreSQL as one statement, SQLite as one call in
//! one transaction, MariaDB and DynamoDB statement by statement), and a batch holding a row that
//! is recorded already still records every other part of it.

use std::collections::BTreeMap;

use seatkeeper_tests::seatkeeper_core::domain::{EndReason, FeaturePolicy, Ident, OnLimit};
use seatkeeper_tests::seatkeeper_core::ledger::{self, Ledger, NewSession, SessionEnd, SessionRow};
use seatkeeper_tests::{ledger_tests, Backend, Database};

const T0: i64 = 1_700_000_000_000;

fn row(sid: &str, user: &str, device: Option<&str>) -> SessionRow {
    SessionRow {
        session_id: sid.to_owned(),
        license_id: "lic-batch".into(),
        feature: "pro".into(),
        user_id: user.to_owned(),
        device_id: device.map(str::to_owned),
        token_hash: format!("{:0>64}", sid),
        idempotency_key: None,
        metadata: Some(r#"{"tab":"it's \"quoted\""}"#.into()),
        status: "active".into(),
        created_at_ms: T0,
        last_heartbeat_at_ms: T0,
        expires_at_ms: T0 + 90_000,
        ended_at_ms: None,
    }
}

fn end(sid: &str, reason: EndReason, at: i64, hb: Option<i64>) -> SessionEnd {
    SessionEnd { session_id: sid.to_owned(), reason, ended_at_ms: at, last_heartbeat_at_ms: hb }
}

fn new(sid: &str, ends: Vec<SessionEnd>) -> NewSession {
    NewSession { row: row(sid, &format!("user-{sid}"), Some("dev")), ends }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn sid(n: u32) -> String {
    format!("{n:032x}")
}

async fn open(backend: Backend) -> (Database, std::sync::Arc<dyn Ledger>) {
    let db = Database::create(backend).await;
    let ledger = ledger::open(&db.url, 4).await.expect("ledger URL");
    ledger.migrate().await.expect("migrations");
    let mut features = BTreeMap::new();
    features.insert(
        Ident::parse("feature", "pro").unwrap(),
        FeaturePolicy {
            max_sessions: 100,
            max_sessions_per_user: None,
            on_limit: OnLimit::Reject,
            lease_ttl_seconds: 90,
            heartbeat_interval_seconds: 30,
            resurrect_window_seconds: 0,
        },
    );
    let id = Ident::parse("licenseId", "lic-batch").unwrap();
    ledger.put_license(&id, Some(&"ab".repeat(32)), &features, T0).await.expect("license");
    (db, ledger)
}

/// (status, last heartbeat, ended at) of a session row.
async fn state(ledger: &dyn Ledger, sid: &str) -> (String, i64, Option<i64>) {
    let r = ledger.session(sid).await.expect("read").unwrap_or_else(|| panic!("no row for {sid}"));
    (r.status, r.last_heartbeat_at_ms, r.ended_at_ms)
}

async fn counts(ledger: &dyn Ledger) -> (u64, BTreeMap<&'static str, u64>) {
    let id = Ident::parse("licenseId", "lic-batch").unwrap();
    let stats = ledger.stats(&id, T0 - 1, T0 + 1_000_000).await.expect("stats");
    let pro = stats.get("pro").cloned().unwrap_or_default();
    (pro.created, pro.ended_by)
}

/// Rows, the ends they caused, and ends of their own, in one batch and then in a second batch
/// whose one replayed row sends the batch down its slower path: every row once, every end once,
/// one event each, the later heartbeat kept, and metadata kept as given.
async fn a_batch_is_recorded_whole_and_once(backend: Backend) {
    let (_db, ledger) = open(backend).await;
    let (a, b, c, d, e) = (sid(1), sid(2), sid(3), sid(4), sid(5));

    let first = [new(&a, vec![]), new(&b, vec![]), new(&c, vec![])];
    let (results, ended) = ledger.record(&first, &[]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    ended.expect("no ends");
    for s in [&a, &b, &c] {
        assert_eq!(state(&*ledger, s).await, ("active".into(), T0, None));
    }
    let stored = ledger.session(&a).await.unwrap().unwrap();
    assert_eq!(stored.metadata, first[0].row.metadata, "metadata as given");
    assert_eq!(stored.device_id.as_deref(), Some("dev"));

    // D evicts A; B logs out (twice in the batch: two requests of one client); C ends with a
    // heartbeat older than the row's, which keeps the row's.
    let second = [new(&d, vec![end(&a, EndReason::Evicted, T0 + 10, Some(T0 + 5))])];
    let ends = [
        end(&b, EndReason::Ended, T0 + 20, Some(T0 + 15)),
        end(&b, EndReason::Ended, T0 + 20, Some(T0 + 15)),
        end(&c, EndReason::Expired, T0 + 30, Some(T0 - 5)),
    ];
    let (results, ended) = ledger.record(&second, &ends).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sorted(ended.expect("ends recorded")), vec![b.clone(), c.clone()], "the ends asked for, once");
    assert_eq!(state(&*ledger, &a).await, ("evicted".into(), T0 + 5, Some(T0 + 10)));
    assert_eq!(state(&*ledger, &b).await, ("ended".into(), T0 + 15, Some(T0 + 20)));
    assert_eq!(state(&*ledger, &c).await, ("expired".into(), T0, Some(T0 + 30)));
    assert_eq!(state(&*ledger, &d).await, ("active".into(), T0, None));

    // A replay of D (recorded already) beside a new row E and an end of D: D's row stands, E is
    // recorded, D's end is recorded, and nothing is counted twice.
    let third = [new(&d, vec![]), new(&e, vec![])];
    let (results, ended) = ledger.record(&third, &[end(&d, EndReason::Ended, T0 + 40, None)]).await;
    assert!(results.iter().all(Result::is_ok), "a replayed row is recorded already: {results:?}");
    assert_eq!(ended.expect("ends recorded"), vec![d.clone()]);
    assert_eq!(state(&*ledger, &e).await, ("active".into(), T0, None));
    assert_eq!(state(&*ledger, &d).await, ("ended".into(), T0, Some(T0 + 40)));
    // Ending what is over changes nothing.
    let (_, ended) = ledger.record(&[], &[end(&b, EndReason::Expired, T0 + 50, Some(T0 + 45))]).await;
    assert_eq!(ended.expect("nothing to end"), Vec::<String>::new());
    assert_eq!(state(&*ledger, &b).await, ("ended".into(), T0 + 15, Some(T0 + 20)));

    let (created, ended_by) = counts(&*ledger).await;
    assert_eq!(created, 5, "one created event per session");
    let want: BTreeMap<&str, u64> = [("ended", 2), ("evicted", 1), ("expired", 1)].into_iter().collect();
    assert_eq!(ended_by.into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>(), want);
}

/// A large batch, past the statement chunk sizes the SQL path uses: every row, every end.
async fn a_large_batch_is_recorded(backend: Backend) {
    let (_db, ledger) = open(backend).await;
    let rows: Vec<NewSession> = (100..400).map(|n| new(&sid(n), vec![])).collect();
    let (results, ended) = ledger.record(&rows, &[]).await;
    assert!(results.iter().all(Result::is_ok));
    ended.unwrap();
    let ends: Vec<SessionEnd> = (100..400).step_by(2).map(|n| end(&sid(n), EndReason::Ended, T0 + 1, None)).collect();
    let more: Vec<NewSession> = (400..650).map(|n| new(&sid(n), vec![])).collect();
    let (results, ended) = ledger.record(&more, &ends).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(ended.unwrap().len(), 150);
    let (created, ended_by) = counts(&*ledger).await;
    assert_eq!(created, 550);
    assert_eq!(ended_by.get("ended").copied(), Some(150));
    assert_eq!(state(&*ledger, &sid(101)).await.0, "active");
    assert_eq!(state(&*ledger, &sid(102)).await.0, "ended");
    assert_eq!(state(&*ledger, &sid(649)).await.0, "active");
}

// The large batch checks the SQL paths' statement chunks; DynamoDB writes a session per request,
// and moto takes over a minute for these 550.
ledger_tests!(a_batch_is_recorded_whole_and_once; sql_only: a_large_batch_is_recorded);
