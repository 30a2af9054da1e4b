//! `/health` tells the truth about stores that answer but are not fit to hold seats, and the
//! service recovers by itself once they are: a ledger on a full disk, a Redis that evicts keys.

use std::time::Duration;

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::{Ident, Slot};
use seatkeeper_tests::{unique, Backend, RedisServer, RunnerProcess, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

/// A tmpfs of its own (the test runs as root, as CI does), unmounted on drop.
struct TinyDisk {
    dir: std::path::PathBuf,
}

impl TinyDisk {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("sk-disk-"));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs needs root (CI runs as root)");
        TinyDisk { dir }
    }

    /// Writes zeros into a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|_| f.flush()).is_ok() {}
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn call(base: &str, method: Method, path: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the runner answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The SQLite ledger's disk fills up: logins go on (their history waits in Redis), and `/health`
/// says the ledger refuses writes. Once there is room again the history lands by itself (no pooled
/// connection is left stuck in a failed transaction), every session once, and `/health` is well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_history_back_and_then_recovers() {
    let redis = RedisServer::start().await;
    let disk = TinyDisk::mount("2m");
    let ledger_url = format!("sqlite://{}", disk.dir.join("ledger.db").display());
    let runner = RunnerProcess::start(&redis.url, &ledger_url).await;
    let base = runner.base.clone();
    let license = unique("lic-");
    let (status, put) = call(
        &base,
        Method::PUT,
        &format!("/api/licenses/{license}"),
        ADMIN_TOKEN,
        Some(json!({"features": {"f": {"maxSessions": 100000}}})),
    )
    .await;
    assert_eq!(status, 201, "{put}");
    let key = put["key"].as_str().unwrap().to_owned();
    let create = |n: usize| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            call(
                &base,
                Method::POST,
                "/api/licenses/sessions",
                &key,
                Some(json!({"userId": format!("u{n}"), "feature": "f"})),
            )
            .await
        }
    };
    assert_eq!(create(0).await.0, 201);
    let filler = disk.fill();
    // SQLite may still reuse free pages and WAL space for a while: write until it cannot.
    let mut created = 1;
    let mut degraded = None;
    for n in 1..5000 {
        let (status, body) = create(n).await;
        assert_eq!(status, 201, "a login does not wait on the ledger: {body}");
        created += 1;
        if n % 25 == 0 {
            let (status, health) = call(&base, Method::GET, "/health", "", None).await;
            if status == 503 {
                degraded = Some(health);
                break;
            }
        }
    }
    let health = degraded.expect("/health reported a ledger that refuses writes");
    assert_eq!(health["ledger"].as_str(), Some("degraded"), "{health}");
    assert!(health["problems"].as_array().is_some_and(|p| !p.is_empty()), "{health}");

    std::fs::remove_file(filler).unwrap();
    for n in 100_000..100_005 {
        assert_eq!(create(n).await.0, 201);
        created += 1;
    }
    let ledger = seatkeeper_tests::seatkeeper_core::ledger::open(&ledger_url, 1).await.unwrap();
    let slot = Slot { license: Ident::parse("l", &license).unwrap(), feature: Ident::parse("f", "f").unwrap() };
    let mut rows = 0;
    for _ in 0..100 {
        rows = ledger.active_sessions(&slot).await.map(|r| r.len()).unwrap_or(0);
        if rows == created {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, created, "every session of the full disk's time reached the ledger, once");
    let (status, health) = call(&base, Method::GET, "/health", "", None).await;
    assert_eq!((status, health), (200, json!({"status": "ok", "seatStore": "ok", "ledger": "ok"})));
    drop(runner);
}

/// A Redis whose `maxmemory-policy` evicts keys could drop a slot's records and end sessions that
/// heartbeat on time: `/health` answers 503 and says why, on every master, until it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_reported() {
    let app = TestApp::start(Backend::Sqlite).await;
    let set = |policy: &'static str| {
        let redis = &app.redis;
        async move {
            // One master is enough to make the whole seat store unfit.
            let mut c = redis.master_conns().await.pop().unwrap();
            let _: () =
                redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(policy).query_async(&mut c).await.unwrap();
        }
    };
    set("allkeys-lru").await;
    let r = app.request(Method::GET, "/health", None, None).await;
    assert_eq!((r.status, r.body["seatStore"].as_str()), (503, Some("degraded")), "{r:?}");
    assert!(r.body["problems"][0].as_str().is_some_and(|p| p.contains("allkeys-lru")), "{r:?}");
    assert_eq!(r.body["ledger"], "ok");
    set("noeviction").await;
    let r = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A Redis at its `maxmemory` refuses writes: `/health` says so before every create fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_at_its_memory_bound_is_reported() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut c = app.redis.master_conns().await.pop().unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used + 1024).query_async(&mut c).await.unwrap();
    let r = app.request(Method::GET, "/health", None, None).await;
    assert_eq!((r.status, r.body["seatStore"].as_str()), (503, Some("degraded")), "{r:?}");
    assert!(r.body["problems"][0].as_str().is_some_and(|p| p.contains("maxmemory")), "{r:?}");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(app.request(Method::GET, "/health", None, None).await.status, 200);
}
