//! Scaling out: many runners on one set of stores, and Redis Cluster.
//!
//! - Two `seatkeeper serve` processes (the real binary) on their own loopback ports share one Redis
//!   (a cluster with `SEATKEEPER_TEST_REDIS=cluster`) and one PostgreSQL database: under contention
//!   split across them they admit exactly the limit, and two sweeps at once (one through a
//!   runner's `cleanup-sessions`, one `seatkeeper sweep --full`) end no live session and leave
//!   nothing for a third sweep to mend. A license changed through one runner binds the other at
//!   once, whatever its license cache holds.
//! - On a three-master cluster whatever the mode: the sweep finds due leases on every master; a
//!   runner starts while its cluster is down and serves once it is up, and its health fails when a
//!   master is down; a stalled master's creates answer 503 and take no seat; nothing stored on
//!   any master or seen by any master's MONITOR is a usable secret.
//!
//! Every wait is bounded; nothing here measures time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::{Ident, Slot};
use seatkeeper_tests::seatkeeper_core::ops::sweep::SweepScope;
use seatkeeper_tests::{
    admitted_or_unavailable, seatkeeper_bin, spawn_runner, unique, Backend, Database, Options, RedisServer, Resp,
    TestApp, ADMIN_TOKEN,
};
use serde_json::{json, Value};

/// Bound on any single wait for a process or a store to come up.
const BOUND: Duration = Duration::from_secs(30);

fn store_env<'a>(redis_url: &'a str, ledger_url: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("SEATKEEPER_REDIS_URL", redis_url),
        ("SEATKEEPER_LEDGER_URL", ledger_url),
        ("SEATKEEPER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RUST_LOG", "warn"),
    ]
}

/// `seatkeeper serve` as a child process on a free loopback port, killed on drop.
struct Runner {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

impl Runner {
    /// Starts the runner and waits (bounded) until it answers HTTP at all.
    async fn start(redis_url: &str, ledger_url: &str) -> Self {
        let log = std::env::temp_dir().join(unique("sk-scale-out-"));
        let mut command = tokio::process::Command::new(seatkeeper_bin());
        command
            .envs(store_env(redis_url, ledger_url))
            .env("SEATKEEPER_SWEEP_INTERVAL_SECONDS", "3600")
            .stderr(std::fs::File::create(&log).unwrap());
        let (child, base) = spawn_runner(command, Some(&log)).await;
        let mut runner = Runner { child, base, log, http: reqwest::Client::new() };
        let deadline = tokio::time::Instant::now() + BOUND;
        while runner.http.get(format!("{}/health", runner.base)).send().await.is_err() {
            runner.assert_alive();
            assert!(tokio::time::Instant::now() < deadline, "seatkeeper serve did not come up: {}", runner.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runner
    }

    /// Waits (bounded) until /health answers `want` (the runner migrates its ledger at start).
    async fn health_becomes(&mut self, want: u16) -> Resp {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let r = self.request(Method::GET, "/health", None, None).await;
            if r.status == want {
                return r;
            }
            self.assert_alive();
            assert!(tokio::time::Instant::now() < deadline, "health never answered {want}: {r:?}\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("seatkeeper serve exited ({status}): {}", self.log_text());
        }
    }

    async fn request(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
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

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.request(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// A license with these features under a fresh id; returns (licenseId, key).
    async fn license(&self, features: Value) -> (String, String) {
        let id = format!("lic-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let r = self.admin(Method::PUT, &format!("/api/licenses/{id}"), Some(json!({ "features": features }))).await;
        assert_eq!(r.status, 201, "license created: {r:?}");
        (id, r.body["key"].as_str().expect("generated key").to_owned())
    }

    async fn create(&self, key: &str, user: &str, feature: &str) -> Resp {
        self.request(
            Method::POST,
            "/api/licenses/sessions",
            Some(key),
            Some(json!({"userId": user, "feature": feature})),
        )
        .await
    }

    async fn heartbeat(&self, token: &str) -> Resp {
        self.request(Method::POST, "/api/licenses/sessions/heartbeat", Some(token), None).await
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Two runners on one Redis (a cluster in cluster mode) and one fresh PostgreSQL database.
struct Pair {
    runners: [Runner; 2],
    redis: RedisServer,
    db: Database,
}

impl Pair {
    async fn start() -> Self {
        let redis = RedisServer::start().await;
        let db = Database::create(Backend::Postgres).await;
        // Both start at once: both migrate the one database at their start.
        let (mut a, mut b) = tokio::join!(Runner::start(&redis.url, &db.url), Runner::start(&redis.url, &db.url));
        for r in [&mut a, &mut b] {
            r.health_becomes(200).await;
        }
        Pair { runners: [a, b], redis, db }
    }

    /// Live leases of a slot by the Redis server's clock, read by hand.
    async fn live_leases(&self, license: &str, feature: &str) -> u64 {
        let mut c = self.redis.conn().await;
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        redis::cmd("ZCOUNT")
            .arg(TestApp::seat_key(license, feature, "leases"))
            .arg(format!("({}", secs * 1000 + micros / 1000))
            .arg("+inf")
            .query_async(&mut c)
            .await
            .unwrap()
    }

    async fn all_leases(&self, license: &str, feature: &str) -> u64 {
        let mut c = self.redis.conn().await;
        redis::cmd("ZCARD").arg(TestApp::seat_key(license, feature, "leases")).query_async(&mut c).await.unwrap()
    }

    /// The ledger's session rows of a slot by status, once they are `want`: the runners' writers
    /// move history from the outbox within moments (5 s at most, as README.md says).
    async fn ledger_settles(&self, license: &str, feature: &str, want: HashMap<String, i64>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.ledger_statuses(license, feature).await;
            if got == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the ledger holds {got:?}, not {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ledger's session rows of a slot by status.
    async fn ledger_statuses(&self, license: &str, feature: &str) -> HashMap<String, i64> {
        let pool = self.db.pool().await;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, CAST(COUNT(*) AS BIGINT) FROM sessions WHERE license_id = $1 AND feature = $2 GROUP BY status",
        )
        .bind(license)
        .bind(feature)
        .fetch_all(&pool)
        .await
        .expect("ledger read");
        pool.close().await;
        rows.into_iter().collect()
    }
}

fn token(body: &Value) -> String {
    body["sessionToken"].as_str().expect("sessionToken").to_owned()
}

/// 200 creates for 50 seats, half through each runner, all at once: exactly 50 admitted, every
/// other one refused with 409; the live leases, sampled in Redis while the creates run, never
/// exceed 50; both runners and the ledger agree on 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_admit_exactly_the_limit() {
    const LIMIT: u64 = 50;
    const CREATES: usize = 200;
    let pair = Arc::new(Pair::start().await);
    let (license, key) = pair.runners[0].license(json!({"f": {"maxSessions": LIMIT, "leaseTtlSeconds": 120}})).await;

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pair, done, peak, license) = (pair.clone(), done.clone(), peak.clone(), license.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            // Bounded: the creates end well before this many samples.
            while !done.load(Ordering::SeqCst) && samples < 100_000 {
                peak.fetch_max(pair.live_leases(&license, "f").await, Ordering::SeqCst);
                samples += 1;
            }
            samples
        })
    };
    let start = Arc::new(tokio::sync::Barrier::new(CREATES));
    let mut creates = Vec::new();
    for i in 0..CREATES {
        let (pair, key, start) = (pair.clone(), key.clone(), start.clone());
        creates.push(tokio::spawn(async move {
            start.wait().await;
            pair.runners[i % 2].create(&key, &format!("u{i}"), "f").await
        }));
    }
    let mut admitted = [0u64; 2];
    let mut tokens = Vec::new();
    let mut refused = 0;
    for (i, c) in creates.into_iter().enumerate() {
        let r = c.await.unwrap();
        match r.status {
            201 => {
                admitted[i % 2] += 1;
                assert_eq!(r.body["seats"]["limit"], LIMIT, "{r:?}");
                assert!(r.body["seats"]["active"].as_u64().is_some_and(|a| a <= LIMIT), "{r:?}");
                tokens.push(token(&r.body));
            }
            409 => {
                r.expect_error(409, "seat_limit_reached");
                refused += 1;
            }
            _ => panic!("create {i}: unexpected answer {r:?}"),
        }
    }
    done.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    println!(
        "admitted per runner {admitted:?}, refused {refused}, {samples} samples, peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(admitted[0] + admitted[1], LIMIT, "exactly the limit admitted across both runners");
    assert_eq!(refused, CREATES as u64 - LIMIT);
    assert!(samples > 0);
    assert!(peak.load(Ordering::SeqCst) <= LIMIT, "live leases went above the limit");
    assert_eq!(pair.live_leases(&license, "f").await, LIMIT);
    pair.ledger_settles(&license, "f", HashMap::from([("active".to_owned(), LIMIT as i64)])).await;
    for r in &pair.runners {
        // A refusal is recorded in the ledger after the 409 is sent: wait (bounded) for them all.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let stats = r.admin(Method::GET, &format!("/api/licenses/{license}/session-stats"), None).await;
            assert_eq!(stats.body["features"]["f"]["active"], LIMIT, "{stats:?}");
            let rejections = stats.body["features"]["f"]["limitRejections"].as_u64().expect("limitRejections");
            assert!(rejections <= refused, "{stats:?}");
            if rejections == refused {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{refused} refusals never all recorded: {stats:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every admitted session is served by either runner; one more is refused by both.
    for (i, t) in tokens.iter().enumerate() {
        let h = pair.runners[i % 2].heartbeat(t).await;
        assert_eq!(h.status, 200, "{h:?}");
    }
    for r in &pair.runners {
        r.create(&key, "late", "f").await.expect_error(409, "seat_limit_reached");
    }
}

/// Several licenses (so, on a cluster, slots on every master), each with live sessions and
/// sessions whose leases ran out. Two sweeps at once: runner A's `cleanup-sessions` for every
/// license, and `seatkeeper sweep --full` (its own process) over everything, while runner B
/// heartbeats the live sessions. No live session is ended; every run-out one is expired exactly
/// once; a third sweep finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeps_at_once_stay_safe() {
    const LICENSES: usize = 8;
    const LIVE: usize = 5;
    const DUE: usize = 15;
    let pair = Pair::start().await;
    let [a, b] = &pair.runners;
    let mut licenses = Vec::new();
    let (mut live, mut due) = (Vec::new(), Vec::new());
    for l in 0..LICENSES {
        let (id, key) = a
            .license(json!({
                "live": {"maxSessions": 50, "leaseTtlSeconds": 300},
                "due": {"maxSessions": 50, "leaseTtlSeconds": 1},
            }))
            .await;
        for i in 0..LIVE {
            let r = pair.runners[i % 2].create(&key, &format!("l{l}u{i}"), "live").await;
            assert_eq!(r.status, 201, "{r:?}");
            live.push(token(&r.body));
        }
        for i in 0..DUE {
            let r = pair.runners[i % 2].create(&key, &format!("d{l}u{i}"), "due").await;
            assert_eq!(r.status, 201, "{r:?}");
            due.push(token(&r.body));
        }
        licenses.push(id);
    }
    // The 1 s leases run out (resurrect window 0: due at once).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in &licenses {
        assert_eq!(pair.live_leases(id, "due").await, 0);
        assert_eq!(pair.all_leases(id, "due").await, DUE as u64, "run out, not yet swept");
    }

    let cli = {
        let (redis_url, ledger_url) = (pair.redis.url.clone(), pair.db.url.clone());
        tokio::spawn(async move {
            tokio::process::Command::new(seatkeeper_bin())
                .args(["sweep", "--full"])
                .envs(store_env(&redis_url, &ledger_url))
                .kill_on_drop(true)
                .output()
                .await
                .expect("seatkeeper sweep")
        })
    };
    // While the CLI sweeps, runner A sweeps license by license (in the reverse order, round after
    // round until the CLI is done: at most 30 rounds) and runner B heartbeats every live session.
    let sweeping_a = async {
        let mut answers = Vec::new();
        for _ in 0..30 {
            for id in licenses.iter().rev() {
                answers.push(
                    a.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({ "licenseId": id }))).await,
                );
            }
            if cli.is_finished() {
                break;
            }
        }
        answers
    };
    let heartbeats = futures::future::join_all(live.iter().map(|t| b.heartbeat(t)));
    let (cleanups, heartbeats) = tokio::join!(sweeping_a, heartbeats);
    let cli = tokio::time::timeout(BOUND, cli).await.expect("sweep --full ends").unwrap();
    assert!(cli.status.success(), "seatkeeper sweep --full: {cli:?}");
    let report: Value = serde_json::from_slice(&cli.stdout).expect("sweep report JSON");
    println!("sweep --full: {report}; {} cleanup-sessions calls", cleanups.len());
    assert_eq!(report["failedSlots"], 0, "{report}");

    let mut expired = report["expired"].as_u64().expect("expired");
    for c in &cleanups {
        assert_eq!(c.status, 200, "{c:?}");
        assert_eq!(c.body["orphansRemoved"], 0, "{c:?}");
        expired += c.body["expired"].as_u64().expect("expired");
    }
    assert_eq!(report["orphanSeats"].as_u64().unwrap_or(0) + report["orphanRows"].as_u64().unwrap_or(0), 0, "{report}");
    for h in &heartbeats {
        assert_eq!(h.status, 200, "a live session kept its seat through both sweeps: {h:?}");
    }
    assert_eq!(expired, (LICENSES * DUE) as u64, "each run-out lease expired once across both sweeps");

    for id in &licenses {
        assert_eq!(pair.live_leases(id, "live").await, LIVE as u64);
        assert_eq!(pair.all_leases(id, "due").await, 0);
        pair.ledger_settles(id, "live", HashMap::from([("active".to_owned(), LIVE as i64)])).await;
        pair.ledger_settles(id, "due", HashMap::from([("expired".to_owned(), DUE as i64)])).await;
        for r in &pair.runners {
            let stats = r.admin(Method::GET, &format!("/api/licenses/{id}/session-stats"), None).await;
            assert_eq!(stats.body["features"]["due"]["expired"], DUE, "{stats:?}");
            assert_eq!(stats.body["features"]["live"]["active"], LIVE, "{stats:?}");
        }
    }
    for (i, t) in live.iter().enumerate() {
        assert_eq!(pair.runners[i % 2].heartbeat(t).await.status, 200);
    }
    for (i, t) in due.iter().enumerate() {
        let h = pair.runners[i % 2].heartbeat(t).await;
        assert_eq!(h.expect_error(410, "session_expired")["reason"], "expired", "{h:?}");
    }
    // Nothing is left for a third, full sweep to mend.
    let again = a.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({"licenseId": licenses[0]}))).await;
    assert_eq!(again.body["expired"], 0, "{again:?}");
    let third = tokio::process::Command::new(seatkeeper_bin())
        .args(["sweep", "--full"])
        .envs(store_env(&pair.redis.url, &pair.db.url))
        .kill_on_drop(true)
        .output()
        .await
        .expect("seatkeeper sweep");
    assert!(third.status.success(), "{third:?}");
    let third: Value = serde_json::from_slice(&third.stdout).expect("sweep report JSON");
    for field in ["expired", "orphanSeats", "orphanRows", "repaired", "failedSlots"] {
        assert_eq!(third[field], 0, "{field} after both sweeps: {third}");
    }
}

// ---- on a three-master cluster, whatever the mode ----

/// MONITOR on every master, over a raw connection of its own, read in-process (a piped
/// `redis-cli MONITOR` loses what it buffered when killed).
struct Monitors {
    readers: Vec<tokio::task::JoinHandle<String>>,
}

const MONITOR_END: &str = "sk-monitor-end";

impl Monitors {
    async fn start(redis: &RedisServer) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut readers = Vec::new();
        for url in &redis.masters {
            let addr = url.trim_start_matches("redis://").to_owned();
            let mut stream = tokio::io::BufReader::new(tokio::net::TcpStream::connect(&addr).await.expect("master"));
            stream.get_mut().write_all(b"MONITOR\r\n").await.unwrap();
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line.trim_end(), "+OK", "MONITOR on {addr}");
            readers.push(tokio::spawn(async move {
                let mut seen = String::new();
                loop {
                    let mut line = String::new();
                    let read = tokio::time::timeout(BOUND, stream.read_line(&mut line)).await;
                    let n = read.expect("MONITOR shows the end marker").expect("MONITOR stream");
                    assert!(n > 0, "MONITOR stream closed");
                    if line.contains(MONITOR_END) {
                        return seen;
                    }
                    seen.push_str(&line);
                }
            }));
        }
        Monitors { readers }
    }

    /// Everything each master's MONITOR showed, up to an end marker sent to each master.
    async fn stop(self, redis: &RedisServer) -> Vec<String> {
        for mut c in redis.master_conns().await {
            let _: String = redis::cmd("ECHO").arg(MONITOR_END).query_async(&mut c).await.unwrap();
        }
        let mut out = Vec::new();
        for r in self.readers {
            out.push(r.await.unwrap());
        }
        out
    }
}

/// The master (index into `masters`) that owns a key: the others answer MOVED.
async fn owner_of(redis: &RedisServer, key: &str) -> usize {
    let mut owners = Vec::new();
    for (i, mut c) in redis.master_conns().await.into_iter().enumerate() {
        let r: redis::RedisResult<i64> = redis::cmd("EXISTS").arg(key).query_async(&mut c).await;
        if r.is_ok() {
            owners.push(i);
        }
    }
    assert_eq!(owners.len(), 1, "one master owns {key}");
    owners[0]
}

/// 60 licenses, each a slot of run-out leases and a slot of live ones, spread over the three
/// masters. One sweep expires every run-out lease on every master and leaves every live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_finds_every_masters_keys() {
    const LICENSES: usize = 60;
    let app = TestApp::start_on(RedisServer::start_cluster().await, Backend::Sqlite, Options::default()).await;
    assert_eq!(app.redis.masters.len(), 3);
    let mut licenses = Vec::new();
    let mut live_tokens = Vec::new();
    for i in 0..LICENSES {
        let (id, key) = app
            .license(json!({
                "due": {"maxSessions": 5, "leaseTtlSeconds": 1},
                "live": {"maxSessions": 5, "leaseTtlSeconds": 300},
            }))
            .await;
        for feature in ["due", "live"] {
            let r = app.create(&key, json!({"userId": format!("u{i}"), "feature": feature})).await;
            assert_eq!(r.status, 201, "{r:?}");
            if feature == "live" {
                live_tokens.push(token(&r.body));
            }
        }
        licenses.push(id);
    }
    // Each master's lease keys, by feature.
    let leases_by_master = |feature: &'static str| {
        let redis = &app.redis;
        async move {
            let mut out = Vec::new();
            for (keys, mut c) in redis.keys_by_master("sk:*:leases").await.into_iter().zip(redis.master_conns().await) {
                let mut members = 0u64;
                let mut slots = 0;
                for k in keys.iter().filter(|k| k.ends_with(&format!("/{feature}}}:leases"))) {
                    members += redis::cmd("ZCARD").arg(k).query_async::<u64>(&mut c).await.unwrap();
                    slots += 1;
                }
                out.push((slots, members));
            }
            out
        }
    };
    let due_before = leases_by_master("due").await;
    let live_before = leases_by_master("live").await;
    println!("per master (slots, leases): due {due_before:?}, live {live_before:?}");
    for (m, (slots, members)) in due_before.iter().enumerate() {
        assert!(*slots > 0, "master {m} holds due slots: {due_before:?}");
        assert_eq!(slots, members, "one lease per slot");
    }
    assert_eq!(due_before.iter().map(|d| d.1).sum::<u64>(), LICENSES as u64);
    assert_eq!(live_before.iter().map(|d| d.1).sum::<u64>(), LICENSES as u64);
    assert!(live_before.iter().all(|l| l.0 > 0), "every master holds live slots: {live_before:?}");
    // slot_size's pipeline (three reads of one slot) goes whole to the slot's master, wherever it is.
    for id in &licenses {
        for feature in ["due", "live"] {
            let slot = Slot { license: Ident::parse("l", id).unwrap(), feature: Ident::parse("f", feature).unwrap() };
            let size = app.svc.seats().slot_size(&slot).await.expect("slot_size on a cluster");
            assert!(size.initialized && !size.revoked && size.leases == 1, "{id}/{feature}: {size:?}");
        }
    }
    // Every slot's keys are on the master that owns its hash tag.
    for id in licenses.iter().take(10) {
        let owner = owner_of(&app.redis, &TestApp::seat_key(id, "due", "leases")).await;
        let keys = &app.redis.keys_by_master(&format!("sk:{{{id}/due}}:*")).await;
        for (m, k) in keys.iter().enumerate() {
            assert_eq!(k.is_empty(), m != owner, "slot {id}/due lives on master {owner} only: {keys:?}");
        }
    }

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let report = app.svc.sweep(&SweepScope::default()).await.expect("sweep runs");
    println!("{report:?}");
    assert_eq!(report.failed_slots, 0, "{report:?}");
    assert_eq!(report.expired, LICENSES as u64, "{report:?}");
    assert_eq!(report.orphan_seats + report.orphan_rows + report.repaired, 0, "{report:?}");
    let due_after = leases_by_master("due").await;
    assert!(due_after.iter().all(|d| d.1 == 0), "every master's run-out leases are gone: {due_after:?}");
    assert_eq!(leases_by_master("live").await, live_before, "every master's live leases untouched");
    for id in &licenses {
        assert_eq!(ledger_counts(&app, id).await, (1, 1), "{id}: one active, one expired");
    }
    for t in &live_tokens {
        assert_eq!(app.heartbeat(t).await.status, 200);
    }
}

/// (active, expired) session rows of a license.
async fn ledger_counts(app: &TestApp, license: &str) -> (i64, i64) {
    let pool = app.db.pool().await;
    let mut out = [0; 2];
    for (n, status) in out.iter_mut().zip(["active", "expired"]) {
        *n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sessions WHERE license_id = ? AND status = ?")
            .bind(license)
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    (out[0], out[1])
}

/// A runner started while its cluster is down serves 503s (its health says the seat store is
/// down) and serves normally once the cluster is up; when one master goes down its health fails
/// again, as the creates whose slot that master owned do.
/// A runner takes its first request only once its ledger's migrations have run: a license written
/// the moment it answers is written, on every SQL ledger, never refused by a schema half applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_meets_a_migrated_ledger() {
    let redis = RedisServer::start().await;
    for backend in [Backend::Sqlite, Backend::Postgres, Backend::MySql] {
        let db = Database::create(backend).await;
        let runner = Runner::start(&redis.url, &db.url).await;
        runner.license(json!({"f": {"maxSessions": 1}})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_outlives_its_cluster() {
    let ports = RedisServer::cluster_ports().await;
    let url = RedisServer::cluster_url(&ports);
    let db = Database::create(Backend::Sqlite).await;
    let mut runner = Runner::start(&url, &db.url).await;
    let health = runner.health_becomes(503).await;
    assert_eq!(health.body["seatStore"], "down", "{health:?}");
    // A license is written to the ledger while the seat store is down (its policy reaches the
    // seat store with the first create); creates answer 503.
    let (license, key) = runner.license(json!({"f": {"maxSessions": 100}})).await;
    runner.create(&key, "u0", "f").await.expect_error(503, "store_unavailable");

    let redis = RedisServer::start_cluster_at(&ports).await;
    runner.health_becomes(200).await;
    // The first calls after the cluster came up may still find it unknown; bounded.
    let mut created = None;
    for _ in 0..50 {
        let r = runner.create(&key, "u1", "f").await;
        if r.status == 201 {
            created = Some(r);
            break;
        }
        r.expect_error(503, "store_unavailable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = created.expect("a create succeeds once the cluster is up");
    assert_eq!(runner.heartbeat(&token(&created.body)).await.status, 200);

    // One master down: health fails (PING goes to every master), and so do creates on its slots.
    let owner = owner_of(&redis, &TestApp::seat_key(&license, "f", "leases")).await;
    let mut conns = redis.master_conns().await;
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async(&mut conns[owner]).await;
    let down = runner.health_becomes(503).await;
    assert_eq!(down.body["seatStore"], "down", "{down:?}");
    runner.create(&key, "u2", "f").await.expect_error(503, "store_unavailable");
    runner.heartbeat(&token(&created.body)).await.expect_error(503, "store_unavailable");
}

/// The slot's master stalls (a long script holds its one thread) while creates arrive: they answer
/// 503 and their scripts, run once the master resumes, refuse to run late. Seats taken = 201s
/// given, and the runner serves again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_takes_no_seat_on_a_cluster() {
    let app =
        Arc::new(TestApp::start_on(RedisServer::start_cluster().await, Backend::Sqlite, Options::default()).await);
    let (license, key) = app.simple_license(json!({"maxSessions": 1000})).await;
    app.create_ok(&key, "warm").await;
    let owner = owner_of(&app.redis, &TestApp::seat_key(&license, "f", "leases")).await;
    let stall = {
        let url = app.redis.masters[owner].clone();
        tokio::spawn(async move {
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
            // Busy for 3 s on the server's clock, past the service's 2 s response timeout.
            let _: i64 = redis::cmd("EVAL")
                .arg(
                    "local function now() local t = redis.call('TIME') return tonumber(t[1]) + tonumber(t[2]) / 1e6 end \
                     local s = now() local n = 0 \
                     while true do n = n + 1 if n % 10000 == 0 and now() - s > 3 then return n end end",
                )
                .arg(0)
                .query_async(&mut c)
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let creates: Vec<_> = (0..40)
        .map(|i| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move { app.create(&key, json!({"userId": format!("u{i}"), "feature": "f"})).await })
        })
        .collect();
    let (admitted, refused) = admitted_or_unavailable(creates).await;
    let mut admitted = admitted + 1; // the session created before the stall
    stall.await.unwrap();
    assert!(refused > 0, "the stall made creates time out");
    // Bounded: once the master is back a create is admitted again.
    let mut again = false;
    for _ in 0..50 {
        let r = app.create(&key, json!({"userId": "after", "feature": "f"})).await;
        if r.status == 201 {
            again = true;
            admitted += 1;
            break;
        }
        r.expect_error(503, "store_unavailable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "the runner serves again once the master resumes");
    assert_eq!(app.live_leases(&license, "f").await, admitted, "{admitted} admitted, {refused} refused");
}

/// What every master stores and what every master's MONITOR shows holds neither a license key
/// nor a session token's secret; an idempotent replay still gives the same token back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_holds_no_usable_secret() {
    let app = TestApp::start_on(RedisServer::start_cluster().await, Backend::Sqlite, Options::default()).await;
    let monitors = Monitors::start(&app.redis).await;
    let mut secrets = Vec::new();
    for i in 0..12 {
        let (_, key) = app.simple_license(json!({"maxSessions": 5})).await;
        let body = json!({"userId": "u1", "feature": "f", "idempotencyKey": format!("k-{i}")});
        let first = app.create(&key, body.clone()).await;
        assert_eq!(first.status, 201, "{first:?}");
        let replay = app.create(&key, body).await;
        assert_eq!(replay.status, 200, "{replay:?}");
        assert_eq!(replay.body["sessionToken"], first.body["sessionToken"]);
        assert_eq!(app.heartbeat(&token(&first.body)).await.status, 200);
        secrets.push(key);
        secrets.push(token(&first.body).split_once('.').expect("id.secret token").1.to_owned());
    }
    let seen = monitors.stop(&app.redis).await;
    let scripted: HashSet<usize> = (0..seen.len()).filter(|&i| seen[i].contains("EVALSHA")).collect();
    assert_eq!(scripted.len(), 3, "every master ran scripts (12 licenses spread over the slots)");

    let mut held = Vec::new();
    for (keys, mut c) in app.redis.keys_by_master("*").await.into_iter().zip(app.redis.master_conns().await) {
        assert!(!keys.is_empty(), "every master holds keys");
        for k in keys {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query_async(&mut c).await.unwrap();
            held.push(String::from_utf8_lossy(&dump).into_owned());
            held.push(k);
        }
    }
    for (what, text) in [("MONITOR", seen.join("\n")), ("stored data", held.join("\n"))] {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} shows a secret");
        }
    }
}

/// The hash tag `{...}` of a seat-store key (`sk:{license/feature}:...`), if it is one.
fn hash_tag(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix("sk:{")?;
    rest.split_once('}').map(|(tag, _)| tag)
}

/// A MONITOR line's origin and its arguments, unquoted (`1.2 [0 127.0.0.1:5] "ZADD" "k" "1"`).
fn monitor_line(line: &str) -> Option<(&str, Vec<String>)> {
    let (_, rest) = line.split_once(" [")?;
    let (origin, command) = rest.split_once("] ")?;
    let args = command.split("\" \"").map(|a| a.trim_matches('"').replace("\\\"", "\"")).collect();
    Some((origin, args))
}

/// Every script of the seat store, by name and SHA, as the service sends them (prelude first).
fn seat_scripts() -> HashMap<String, &'static str> {
    macro_rules! lua {
        ($($file:literal),*) => {
            [$((
                redis::Script::new(concat!(
                    include_str!("../../shared/src/seats/lua/prelude.lua"),
                    include_str!(concat!("../../shared/src/seats/lua/", $file))
                )).get_hash().to_owned(),
                $file,
            )),*]
        };
    }
    HashMap::from(lua!(
        "create.lua",
        "heartbeat.lua",
        "end.lua",
        "release.lua",
        "rebuild.lua",
        "policy.lua",
        "due.lua",
        "expire.lua",
        "snapshot.lua",
        "record.lua",
        "revoke.lua"
    ))
}

/// On a real cluster, under every master's MONITOR, the service runs each of its scripts (create
/// and its replay, heartbeat, end, a policy change, the sweep's due/expire/snapshot, a record read
/// for a ledger row whose seat was lost, a release after a lost reply, the outbox's drain, a rebuild after
/// FLUSHALL, a revoke after a feature's removal). Every EVALSHA's KEYS share one hash tag, and
/// every command a script runs inside Redis (MONITOR's `lua` lines) touches only keys with that
/// same tag: the slot's own keys (`x:<id>`, `u`, `prov`, `i:<key>` built from the prefix too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_stays_in_its_slot() {
    let app = TestApp::start_on(RedisServer::start_cluster().await, Backend::Sqlite, Options::default()).await;
    let monitors = Monitors::start(&app.redis).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        let (license, key) =
            app.license(json!({"f": {"maxSessions": 3, "resurrectWindowSeconds": 0}, "g": {"maxSessions": 2}})).await;
        let path = format!("/api/licenses/{license}");
        let body = json!({"userId": "u1", "feature": "f", "idempotencyKey": format!("k{i}")});
        let s1 = app.create(&key, body.clone()).await;
        assert_eq!(s1.status, 201, "{s1:?}");
        assert_eq!(app.create(&key, body).await.status, 200, "replay");
        assert_eq!(app.heartbeat(&token(&s1.body)).await.status, 200);
        let changed = json!({"features": {"f": {"maxSessions": 4}, "g": {"maxSessions": 2}}});
        assert_eq!(app.admin(Method::PUT, &path, Some(changed)).await.status, 200);
        assert_eq!(app.cleanup(&token(&s1.body)).await.body, json!({"ended": true}));
        let s2 = app.create_ok(&key, "u2").await;
        let s3 = app.create_ok(&key, "u3").await;
        let on_g = app.create(&key, json!({"userId": "u1", "feature": "g"})).await;
        assert_eq!(on_g.status, 201, "{on_g:?}");
        app.lapse_seat(&license, "f", s3["sessionId"].as_str().unwrap(), 5_000).await;
        // A ledger row whose seat was lost: the full sweep asks the store for its record.
        let s5 = app.create_ok(&key, "u5").await;
        app.drop_seat(&license, "f", s5["sessionId"].as_str().unwrap()).await;
        let full = app.svc.sweep(&SweepScope { full: true, ..Default::default() }).await.expect("sweep");
        assert_eq!(full.failed_slots, 0, "{full:?}");
        // A create whose reply was lost gives its seat back (release.lua), and its outbox entry.
        let s4 = app.create_ok(&key, "u4").await;
        let slot = seatkeeper_tests::seatkeeper_core::domain::Slot {
            license: seatkeeper_tests::seatkeeper_core::domain::Ident::parse("l", &license).unwrap(),
            feature: seatkeeper_tests::seatkeeper_core::domain::Ident::parse("f", "f").unwrap(),
        };
        app.svc.seats().release(&slot, s4["sessionId"].as_str().unwrap(), None).await.expect("release");
        // Redis loses its data once the history is in the ledger: what the outbox still held
        // is lost with it (README.md, "History").
        app.history().await;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut app.redis_conn().await).await.unwrap();
        assert_eq!(app.heartbeat(&token(&s2)).await.status, 200, "rebuilt from the ledger");
        let removed = json!({"features": {"f": {"maxSessions": 4}}});
        assert_eq!(app.admin(Method::PUT, &path, Some(removed)).await.status, 200);
        app.heartbeat(&token(&on_g.body)).await.expect_error(410, "session_expired");
        let swept = app.svc.sweep(&SweepScope::default()).await.expect("sweep");
        assert_eq!(swept.failed_slots, 0, "{swept:?}");
        ids.push(license);
    }
    let scripts = seat_scripts();
    let mut ran: HashMap<&str, u64> = HashMap::new();
    let (mut evals, mut nested, mut checked) = (0u64, 0u64, 0u64);
    for text in monitors.stop(&app.redis).await {
        // A script runs atomically: its `lua` lines follow its EVALSHA on that master's stream.
        let mut current: Option<String> = None;
        for line in text.lines() {
            let Some((origin, args)) = monitor_line(line) else { continue };
            let name = args[0].to_ascii_uppercase();
            if origin.ends_with(" lua") {
                let tag = current.as_deref().unwrap_or_else(|| panic!("a script command outside a script: {line}"));
                for a in args.iter().skip(1).filter(|a| a.starts_with("sk:")) {
                    assert_eq!(hash_tag(a), Some(tag), "a script with KEYS in {{{tag}}} touched {a}: {line}");
                    checked += 1;
                }
                nested += 1;
            } else if name == "EVALSHA" || name == "EVAL" {
                let numkeys: usize = args[2].parse().expect("numkeys");
                let keys = &args[3..3 + numkeys];
                let tags: HashSet<Option<&str>> = keys.iter().map(|k| hash_tag(k)).collect();
                assert_eq!(tags.len(), 1, "one hash tag for all KEYS: {line}");
                let tag =
                    tags.into_iter().next().unwrap().unwrap_or_else(|| panic!("KEYS outside the seat store: {line}"));
                for a in args[3 + numkeys..].iter().filter(|a| a.starts_with("sk:")) {
                    assert_eq!(hash_tag(a), Some(tag), "an ARGV key prefix of another slot: {line}");
                }
                current = Some(tag.to_owned());
                if name == "EVALSHA" {
                    if let Some(script) = scripts.get(&args[1]) {
                        *ran.entry(script).or_default() += 1;
                        evals += 1;
                    }
                }
            } else {
                current = None;
            }
        }
    }
    println!("{evals} seat-store scripts, {nested} commands inside them, {checked} keys checked: {ran:?}");
    assert!(nested > evals && checked > evals, "MONITOR showed the keys the scripts touched");
    let missing: Vec<_> = scripts.values().filter(|s| !ran.contains_key(*s)).collect();
    assert!(missing.is_empty(), "scripts this scenario did not run: {missing:?} (ran {ran:?})");
}

/// A slot moves to another master while sessions use it, as a resharding moves it: first
/// mid-migration (its keys already on the new master, which answers only after ASKING: the old one
/// answers ASK), then for good (the old master answers MOVED). Heartbeats follow it both times,
/// creates once it has moved (mid-migration one may answer 503 and takes no seat), and every key
/// of the slot ends up on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_slot_is_followed() {
    let app = TestApp::start_on(RedisServer::start_cluster().await, Backend::Sqlite, Options::default()).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 10})).await;
    let s1 = app.create_ok(&key, "u1").await;
    let leases = TestApp::seat_key(&license, "f", "leases");
    let src = owner_of(&app.redis, &leases).await;
    let dst = (src + 1) % app.redis.masters.len();
    let mut conns = app.redis.master_conns().await;
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&leases).query_async(&mut conns[0]).await.unwrap();
    let mut ids = Vec::new();
    for c in conns.iter_mut() {
        ids.push(redis::cmd("CLUSTER").arg("MYID").query_async::<String>(c).await.unwrap());
    }
    let dst_port: u16 = app.redis.masters[dst].rsplit_once(':').unwrap().1.parse().unwrap();
    let setslot = |state: &'static str, node: String| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
        cmd
    };
    let () = setslot("IMPORTING", ids[src].clone()).query_async(&mut conns[dst]).await.unwrap();
    let () = setslot("MIGRATING", ids[dst].clone()).query_async(&mut conns[src]).await.unwrap();
    let keys: Vec<String> =
        redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1000).query_async(&mut conns[src]).await.unwrap();
    assert!(keys.len() >= 3, "the slot's keys: {keys:?}");
    let () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(dst_port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&keys)
        .query_async(&mut conns[src])
        .await
        .unwrap();

    // Mid-migration: the old master answers ASK, the new one serves after ASKING. A create's
    // script also names keys that do not exist yet (its idempotency record), which an importing
    // master refuses (TRYAGAIN) until the slot is all its own: 503, and no seat taken.
    let h = app.heartbeat(&token(&s1)).await;
    assert_eq!(h.status, 200, "heartbeat followed ASK: {h:?}");
    let mid = app.create(&key, json!({"userId": "u-mid", "feature": "f"})).await;
    println!("create mid-migration: {} {}", mid.status, mid.body);
    let mid_admitted = match mid.status {
        201 => 1,
        _ => {
            mid.expect_error(503, "store_unavailable");
            0
        }
    };

    // Done: every master learns the slot's new owner; the service's map is stale (MOVED).
    for m in [dst, src, 3 - src - dst] {
        let () = setslot("NODE", ids[dst].clone()).query_async(&mut conns[m]).await.unwrap();
    }
    assert_eq!(app.heartbeat(&token(&s1)).await.status, 200, "heartbeat followed MOVED");
    let s2 = app.create_ok(&key, "u2").await;
    assert_eq!(app.heartbeat(&token(&s2)).await.status, 200);
    if mid_admitted == 1 {
        assert_eq!(app.heartbeat(&token(&mid.body)).await.status, 200);
    }
    assert_eq!(app.live_leases(&license, "f").await, 2 + mid_admitted);
    let by_master = app.redis.keys_by_master(&format!("sk:{{{license}/f}}:*")).await;
    for (m, keys) in by_master.iter().enumerate() {
        assert_eq!(keys.is_empty(), m != dst, "the slot's keys are all on master {dst}: {by_master:?}");
    }
    let report = app.svc.sweep(&SweepScope { full: true, ..Default::default() }).await.expect("sweep");
    assert_eq!(report.failed_slots, 0, "{report:?}");
    assert_eq!(report.orphan_seats + report.orphan_rows + report.repaired, 0, "{report:?}");
}

/// Runner B has the license in its cache (a create through it just read it) when runner A
/// changes it. At once, before B's cache could have expired: a raised limit, an added feature and
/// a feature added back admit through B; a lowered limit binds B's creates; a removed feature, a
/// replaced key and a deleted license admit nobody through B (404 and 401, as from a runner that
/// never cached the license), and whoever held a seat there hears so on the next heartbeat. A
/// license deleted and made again under its id is the new one through B at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_runner_binds_the_other_at_once() {
    let pair = Pair::start().await;
    let [a, b] = &pair.runners;
    // A PUT through A of this body; answers with its status.
    let put = |license: &str, body: Value| {
        let path = format!("/api/licenses/{license}");
        async move { a.admin(Method::PUT, &path, Some(body)).await.status }
    };
    let one = json!({"maxSessions": 1, "leaseTtlSeconds": 120});
    let two = json!({"maxSessions": 2, "leaseTtlSeconds": 120});
    let (license, key) = a.license(json!({"f": one})).await;
    let f1 = b.create(&key, "u1", "f").await;
    assert_eq!(f1.status, 201, "{f1:?}");
    b.create(&key, "u2", "f").await.expect_error(409, "seat_limit_reached");

    // Grown through A: B admits at once.
    assert_eq!(put(&license, json!({"features": {"f": two}})).await, 200);
    let f2 = b.create(&key, "u2", "f").await;
    assert_eq!(f2.status, 201, "a raised limit, through a runner that cached the license: {f2:?}");
    assert_eq!(put(&license, json!({"features": {"f": two, "g": two}})).await, 200);
    let g1 = b.create(&key, "u1", "g").await;
    assert_eq!(g1.status, 201, "an added feature, through a runner that cached the license: {g1:?}");

    // Shrunk through A: B refuses at once.
    assert_eq!(put(&license, json!({"features": {"f": one, "g": two}})).await, 200);
    b.create(&key, "u3", "f").await.expect_error(409, "seat_limit_reached");
    assert_eq!(put(&license, json!({"features": {"f": one}})).await, 200);
    b.create(&key, "u2", "g").await.expect_error(404, "not_found");
    assert_eq!(pair.live_leases(&license, "g").await, 0);
    let h = b.heartbeat(&token(&g1.body)).await;
    assert_eq!((h.status, h.body["error"]["reason"].as_str()), (410, Some("revoked")), "{h:?}");

    // g added back: B admits to it again.
    assert_eq!(put(&license, json!({"features": {"f": one, "g": one}})).await, 200);
    let g2 = b.create(&key, "u2", "g").await;
    assert_eq!(g2.status, 201, "a feature added back, through a runner that cached the license: {g2:?}");

    // A new key through A: B refuses the old one and takes the new.
    let new_key = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    let body = json!({"key": new_key, "features": {"f": {"maxSessions": 3, "leaseTtlSeconds": 120}, "g": one}});
    assert_eq!(put(&license, body).await, 200);
    b.create(&key, "u3", "f").await.expect_error(401, "unauthorized");
    let f3 = b.create(&new_key, "u3", "f").await;
    assert_eq!(f3.status, 201, "{f3:?}");

    // The license goes away: B admits nobody, and the sessions are revoked.
    let del = a.admin(Method::DELETE, &format!("/api/licenses/{license}"), None).await;
    assert_eq!(del.status, 200, "{del:?}");
    b.create(&new_key, "u4", "f").await.expect_error(401, "unauthorized");
    assert_eq!(pair.live_leases(&license, "f").await, 0);
    for s in [&f1, &f2, &g2, &f3] {
        let h = b.heartbeat(&token(&s.body)).await;
        assert_eq!((h.status, h.body["error"]["reason"].as_str()), (410, Some("revoked")), "{h:?}");
    }

    // Deleted and made again under the same id, while B still holds the old one in its cache: the
    // old key admits nobody through B, and the new license's policy is the one in force.
    let (license, key) = a.license(json!({"f": two})).await;
    for _ in 0..4 {
        assert_eq!(put(&license, json!({"features": {"f": two}})).await, 200);
    }
    let h1 = b.create(&key, "u1", "f").await;
    assert_eq!(h1.status, 201, "{h1:?}");
    let del = a.admin(Method::DELETE, &format!("/api/licenses/{license}"), None).await;
    assert_eq!(del.status, 200, "{del:?}");
    let again_key = format!("again-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(put(&license, json!({"key": again_key, "features": {"f": one}})).await, 201);
    b.create(&key, "u2", "f").await.expect_error(401, "unauthorized");
    let h2 = b.create(&again_key, "u2", "f").await;
    assert_eq!((h2.status, &h2.body["seats"]), (201, &json!({"limit": 1, "active": 1})), "{h2:?}");
    b.create(&again_key, "u3", "f").await.expect_error(409, "seat_limit_reached");
}
