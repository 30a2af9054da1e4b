//! Webhooks as a customer's receiver sees them: a receiver written with the `standardwebhooks`
//! library (tests/webhooks/receiver.py) verifies every delivery's signature; the tests read what
//! it accepted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use seatkeeper_tests::{ledger_tests, Backend, Options, RunnerProcess, TestApp};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver, as a child process, and the log of what it saw.
struct Receiver {
    _child: tokio::process::Child,
    log: PathBuf,
    port: u16,
}

impl Receiver {
    /// Listens on `port` (0: one the system picks); `fail_first`: answers 500 to each id's first delivery.
    async fn start(port: u16, fail_first: bool) -> Receiver {
        let dir = std::env::temp_dir().join(format!("sk-hooks-{}-{:x}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let (log, port_file) = (dir.join("log.jsonl"), dir.join("port"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/receiver.py");
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(script).arg("--secret").arg(SECRET).arg("--log").arg(&log).arg("--port-file").arg(&port_file);
        cmd.arg("--port").arg(port.to_string());
        if fail_first {
            cmd.arg("--fail-first");
        }
        let child = cmd.kill_on_drop(true).spawn().expect("python3 tests/webhooks/receiver.py");
        let start = Instant::now();
        loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                return Receiver { _child: child, log, port: p.trim().parse().unwrap() };
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the receiver did not start (is `standardwebhooks` installed?)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a log line"))
            .collect()
    }

    /// Waits up to `within` until `done` holds of the log; returns the log.
    async fn until(&self, within: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let seen = self.entries();
            assert!(seen.iter().all(|e| e.get("invalid").is_none()), "a delivery failed verification: {seen:?}");
            if done(&seen) {
                return seen;
            }
            assert!(start.elapsed() < within, "{what} did not arrive within {within:?}: {seen:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn of_type<'a>(seen: &'a [Value], kind: &str) -> Vec<&'a Value> {
    seen.iter().filter(|e| e["event"]["type"] == kind).collect()
}

fn hooked(url: String) -> Options {
    Options { webhook: Some((url, SECRET.to_owned())), ..Options::default() }
}

/// An operator ends a session: the receiver gets `session.force_ended`, signed; it fails the
/// first delivery, and the same event (same id, same body) comes again after the back-off.
async fn a_force_end_is_signed_and_redelivered_after_a_failure(b: Backend) {
    let receiver = Receiver::start(0, true).await;
    let app = TestApp::start_with(b, hooked(receiver.url())).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    let s = app.create_ok(&key, "alice").await;
    let sid = s["sessionId"].as_str().unwrap().to_owned();
    let r = app.admin(Method::DELETE, &format!("/api/licenses/{license}/sessions/{sid}"), None).await;
    assert_eq!(r.body, json!({"ended": true}), "{r:?}");

    let seen = receiver
        .until(Duration::from_secs(30), "a redelivery", |seen| of_type(seen, "session.force_ended").len() >= 2)
        .await;
    let got = of_type(&seen, "session.force_ended");
    assert_eq!(got[0]["answered"], 500);
    assert_eq!(got[1]["answered"], 204);
    assert_eq!(got[0]["webhookId"], got[1]["webhookId"], "a retry is the same message");
    assert_eq!(got[0]["event"], got[1]["event"]);
    let event = &got[1]["event"];
    assert_eq!(event["id"], got[1]["webhookId"], "the body's id is the webhook-id header");
    assert_eq!(event["data"]["sessionId"], sid.as_str());
    assert_eq!(event["data"]["userId"], "alice");
    assert_eq!(event["data"]["licenseId"], license.as_str());
    assert_eq!(event["data"]["feature"], "f");
    assert!(event["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
    let (t0, t1) = (ts(got[0]), ts(got[1]));
    assert!(t1 - t0 >= 4, "the retry waited for its back-off: {t0} then {t1}");
    // Nothing else was an operator's business: the create and its seat are no events.
    assert_eq!(seen.len(), 2, "{seen:#?}");
}

fn ts(entry: &Value) -> i64 {
    entry["timestamp"].as_str().unwrap().parse().unwrap()
}

/// A feature filled to its limit tells `license.near_capacity`; refused creates tell one
/// `seat.limit_reached` per minute, after that minute, counting them.
async fn capacity_and_refusals_are_told_once_per_minute(b: Backend) {
    let receiver = Receiver::start(0, false).await;
    let app = TestApp::start_with(b, hooked(receiver.url())).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    app.create_ok(&key, "u1").await;
    app.create_ok(&key, "u2").await;
    for u in ["u3", "u4", "u5"] {
        assert_eq!(app.create(&key, json!({"userId": u, "feature": "f"})).await.status, 409);
    }
    // The refusals' minute must end before they are told: up to 62 s.
    let seen = receiver
        .until(Duration::from_secs(75), "seat.limit_reached", |seen| {
            of_type(seen, "seat.limit_reached")
                .iter()
                .map(|e| e["event"]["data"]["refusals"].as_u64().unwrap_or(0))
                .sum::<u64>()
                >= 3
        })
        .await;
    let near = of_type(&seen, "license.near_capacity");
    assert!(!near.is_empty(), "{seen:#?}");
    assert_eq!(near[0]["event"]["data"]["active"], 2);
    assert_eq!(near[0]["event"]["data"]["limit"], 2);
    assert_eq!(near[0]["event"]["data"]["licenseId"], license.as_str());
    let limited = of_type(&seen, "seat.limit_reached");
    let minutes: std::collections::BTreeSet<&str> =
        limited.iter().map(|e| e["event"]["data"]["minuteStart"].as_str().unwrap()).collect();
    assert_eq!(minutes.len(), limited.len(), "one per minute: {limited:#?}");
    assert_eq!(limited.iter().map(|e| e["event"]["data"]["refusals"].as_u64().unwrap()).sum::<u64>(), 3);
    assert_eq!(limited[0]["event"]["data"]["limit"], 2);
}

/// The runner is killed with a delivery queued (the receiver was down); a runner started later,
/// with the receiver back, delivers it.
async fn queued_webhooks_survive_a_killed_runner(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 3})).await;
    let s = app.create_ok(&key, "bob").await;
    let sid = s["sessionId"].as_str().unwrap().to_owned();
    // A port nobody listens on, for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let env = [("SEATKEEPER_WEBHOOK_URL", url.as_str()), ("SEATKEEPER_WEBHOOK_SECRET", SECRET)];
    let mut runner = RunnerProcess::start_with(&app.redis.url, &app.db.url, &env).await;
    let ended = reqwest::Client::new()
        .delete(format!("{}/api/licenses/{license}/sessions/{sid}", runner.base))
        .bearer_auth(seatkeeper_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let start = Instant::now();
    while app.svc.seats().webhook_backlog().await.unwrap().0 == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the delivery was never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runner.kill().await;

    let receiver = Receiver::start(port, false).await;
    let _next = RunnerProcess::start_with(&app.redis.url, &app.db.url, &env).await;
    let seen = receiver
        .until(Duration::from_secs(45), "the queued delivery", |seen| !of_type(seen, "session.force_ended").is_empty())
        .await;
    assert_eq!(of_type(&seen, "session.force_ended")[0]["event"]["data"]["sessionId"], sid.as_str());
    let start = Instant::now();
    while app.svc.seats().webhook_backlog().await.unwrap().0 > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "a delivered webhook stays queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

ledger_tests!(
    a_force_end_is_signed_and_redelivered_after_a_failure,
    capacity_and_refusals_are_told_once_per_minute,
    queued_webhooks_survive_a_killed_runner,
);
