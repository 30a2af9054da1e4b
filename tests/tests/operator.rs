//! The operator's routes over HTTP, on every ledger: who holds a full license's seats and freeing
//! one, every license page by page, a new key that binds every instance at once.

use std::collections::BTreeSet;

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::service::CreateSession;
use seatkeeper_tests::seatkeeper_core::{domain::Ident, Error, Service};
use seatkeeper_tests::{ledger_tests, Backend, TestApp};
use serde_json::{json, Value};

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_owned()
}

async fn operator_sees_who_holds_a_full_license_and_frees_a_seat(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.license(json!({"f": {"maxSessions": 2}, "g": {"maxSessions": 5}})).await;
    let body = |user: &str, feature: &str| json!({"userId": user, "feature": feature});
    let mut first = body("u1", "f");
    first["deviceId"] = "laptop-1".into();
    first["metadata"] = json!({"browser": "chrome"});
    let a = app.create(&key, first).await;
    assert_eq!(a.status, 201, "{a:?}");
    let b2 = app.create(&key, body("u2", "f")).await;
    assert_eq!(b2.status, 201, "{b2:?}");
    assert_eq!(app.create(&key, body("u3", "g")).await.status, 201);
    app.create(&key, body("u4", "f")).await.expect_error(409, "seat_limit_reached");

    // Who holds the seats: every live session of the license, counts from the same read.
    let all = app.admin(Method::GET, &format!("/api/licenses/{license}/sessions"), None).await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.body["licenseId"], license.as_str());
    let sessions = all.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{all:?}");
    assert_eq!(all.body["features"], json!({"f": {"limit": 2, "active": 2}, "g": {"limit": 5, "active": 1}}));
    let mine = sessions.iter().find(|x| x["sessionId"] == a.body["sessionId"]).expect("u1's session listed");
    assert_eq!(mine["userId"], "u1");
    assert_eq!(mine["feature"], "f");
    assert_eq!(mine["deviceId"], "laptop-1");
    assert_eq!(mine["metadata"], json!({"browser": "chrome"}));
    assert_eq!(mine["expiresAt"], a.body["expiresAt"]);
    for k in ["createdAt", "lastHeartbeatAt"] {
        assert!(mine[k].is_string(), "{k}: {mine}");
    }
    let f_only = app.admin(Method::GET, &format!("/api/licenses/{license}/sessions?feature=f"), None).await;
    let users: BTreeSet<String> = f_only.body["sessions"].as_array().unwrap().iter().map(|x| s(x, "userId")).collect();
    assert_eq!(users, BTreeSet::from(["u1".to_owned(), "u2".to_owned()]), "{f_only:?}");
    assert_eq!(f_only.body["features"], json!({"f": {"limit": 2, "active": 2}}));
    app.admin(Method::GET, &format!("/api/licenses/{license}/sessions?feature=nope"), None)
        .await
        .expect_error(404, "not_found");
    app.admin(Method::GET, "/api/licenses/no-such-license/sessions", None).await.expect_error(404, "not_found");

    // Free one: its holder hears force_ended, the seat is free at once, the ledger agrees.
    let sid = s(&a.body, "sessionId");
    let path = format!("/api/licenses/{license}/sessions/{sid}");
    let ended = app.admin(Method::DELETE, &path, None).await;
    assert_eq!((ended.status, &ended.body), (200, &json!({"ended": true})), "{ended:?}");
    let again = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(again.body, json!({"ended": false, "reason": "force_ended"}), "idempotent: {again:?}");
    let hb = app.heartbeat(&s(&a.body, "sessionToken")).await;
    assert_eq!(hb.expect_error(410, "session_expired")["reason"], "force_ended");
    assert_eq!(app.ledger_status(&sid).await.as_deref(), Some("force_ended"));
    assert_eq!(app.create(&key, body("u4", "f")).await.status, 201, "the freed seat is taken");

    // Sessions of no license, of another license, or not session ids at all: 404.
    let (other, other_key) = app.simple_license(json!({"maxSessions": 1})).await;
    let foreign = app.create_ok(&other_key, "x").await;
    let foreign_path = format!("/api/licenses/{license}/sessions/{}", s(&foreign, "sessionId"));
    app.admin(Method::DELETE, &foreign_path, None).await.expect_error(404, "not_found");
    assert_eq!(app.heartbeat(&s(&foreign, "sessionToken")).await.status, 200, "another license's session lives on");
    for bad in ["0123456789abcdef0123456789abcdef", "not-a-session"] {
        let r = app.admin(Method::DELETE, &format!("/api/licenses/{license}/sessions/{bad}"), None).await;
        r.expect_error(404, "not_found");
    }
    let _ = other;

    // The debug view names each session's device.
    let debug = app.admin(Method::GET, "/api/licenses/sessions/debug?userId=u1&feature=f", None).await;
    assert_eq!(debug.body["sessions"][0]["deviceId"], "laptop-1", "{debug:?}");

    // Without the admin token, nothing.
    for (method, path) in [
        (Method::GET, format!("/api/licenses/{license}/sessions")),
        (Method::DELETE, format!("/api/licenses/{license}/sessions/{sid}")),
        (Method::GET, "/api/licenses".to_owned()),
        (Method::POST, format!("/api/licenses/{license}/key")),
    ] {
        app.request(method.clone(), &path, None, None).await.expect_error(401, "unauthorized");
        app.request(method, &path, Some(&key), None).await.expect_error(401, "unauthorized");
    }
}

async fn every_license_appears_once_across_the_pages(b: Backend) {
    let app = TestApp::start(b).await;
    let mut made = BTreeSet::new();
    let mut held = String::new();
    for i in 0..7 {
        let (id, key) = app.license(json!({"f": {"maxSessions": 3}})).await;
        if i == 0 {
            app.create_ok(&key, "u1").await;
            held = id.clone();
        }
        made.insert(id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = app.admin(Method::GET, &format!("/api/licenses?limit=3{q}"), None).await;
        assert_eq!(page.status, 200, "{page:?}");
        let licenses = page.body["licenses"].as_array().unwrap().clone();
        pages.push(licenses.len());
        for l in &licenses {
            seen.push(s(l, "licenseId"));
            assert_eq!(l["features"]["f"]["maxSessions"], 3, "{l}");
            let want = u64::from(l["licenseId"] == held.as_str());
            assert_eq!(l["features"]["f"]["active"], want, "seats taken now: {l}");
        }
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, [3, 3, 1], "every page but the last holds exactly limit");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "each license once: {seen:?}");
    assert_eq!(unique, made);
    let whole = app.admin(Method::GET, "/api/licenses?limit=500", None).await;
    assert_eq!(whole.body["licenses"].as_array().unwrap().len(), 7, "{whole:?}");
    assert!(whole.body["nextCursor"].is_null(), "one page holds all: {whole:?}");
    for bad in ["limit=0", "limit=501", "limit=x", "cursor=no%20spaces"] {
        app.admin(Method::GET, &format!("/api/licenses?{bad}"), None).await.expect_error(400, "invalid_request");
    }
}

async fn a_rotated_key_stops_taking_seats_everywhere_at_once(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, old_key) = app.simple_license(json!({"maxSessions": 5})).await;
    let live = app.create_ok(&old_key, "u1").await;
    // A second instance on the same stores, whose cache holds the license under the old key.
    let other = Service::connect(app.svc.config().clone()).await.unwrap();
    let create = |user: &str| CreateSession {
        user: Ident::parse("userId", user).unwrap(),
        feature: Ident::parse("feature", "f").unwrap(),
        device: None,
        idempotency_key: None,
        metadata: None,
        license: None,
    };
    other.create_session(&old_key, create("u2")).await.expect("the old key works before the rotation");

    let rotated = app.admin(Method::POST, &format!("/api/licenses/{license}/key"), None).await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    let new_key = s(&rotated.body, "key");
    assert_eq!(rotated.body["licenseId"], license.as_str());
    assert_ne!(new_key, old_key);

    app.create(&old_key, json!({"userId": "u3", "feature": "f"})).await.expect_error(401, "unauthorized");
    match other.create_session(&old_key, create("u3")).await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("the instance that cached the old key refuses it at once: {other:?}"),
    }
    assert_eq!(app.create(&new_key, json!({"userId": "u3", "feature": "f"})).await.status, 201);
    other.create_session(&new_key, create("u4")).await.expect("the new key works on the other instance");
    assert_eq!(app.heartbeat(&s(&live, "sessionToken")).await.status, 200, "live sessions keep their tokens");
    let got = app.admin(Method::GET, &format!("/api/licenses/{license}"), None).await;
    assert!(got.body.get("key").is_none(), "the key is shown once: {got:?}");
    app.admin(Method::POST, "/api/licenses/no-such-license/key", None).await.expect_error(404, "not_found");
}

ledger_tests!(
    operator_sees_who_holds_a_full_license_and_frees_a_seat,
    every_license_appears_once_across_the_pages,
    a_rotated_key_stops_taking_seats_everywhere_at_once,
);

/// The same questions through the CLI, as an operator meets them: who holds the seats, free one,
/// a new key; tables within 100 columns, and a missing token named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_who_holds_the_seats_and_frees_one() {
    seatkeeper_tests::bounded(async {
        let app = TestApp::start(Backend::Sqlite).await;
        let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
        let held = app.create(&key, json!({"userId": "alice", "feature": "f", "deviceId": "laptop"})).await;
        assert_eq!(held.status, 201);
        app.create_ok(&key, "bob").await;
        let cli = |token: Option<&str>, args: &[&str]| {
            let mut cmd = tokio::process::Command::new(seatkeeper_tests::seatkeeper_bin());
            cmd.arg("admin").arg("--api-url").arg(&app.base).args(args);
            cmd.env_remove("SEATKEEPER_API_URL").env_remove("SEATKEEPER_ADMIN_TOKEN");
            if let Some(t) = token {
                cmd.env("SEATKEEPER_ADMIN_TOKEN", t);
            }
            async move {
                let out = cmd.output().await.expect("run seatkeeper");
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (out.status.code().expect("exit code"), text(&out.stdout), text(&out.stderr))
            }
        };
        let admin = Some(seatkeeper_tests::ADMIN_TOKEN);
        let narrow =
            |out: &str| assert!(out.lines().all(|l| l.chars().count() <= 100), "wider than 100 columns:\n{out}");

        let (code, _, err) = cli(None, &["sessions", &license]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("SEATKEEPER_ADMIN_TOKEN") && err.contains("--admin-token"), "{err}");

        let (code, out, err) = cli(admin, &["licenses", "--limit", "500"]).await;
        assert_eq!(code, 0, "{err}");
        let row = out.lines().find(|l| l.starts_with(license.as_str())).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), [license.as_str(), "f", "2", "2"], "{out}");
        narrow(&out);

        let (code, out, err) = cli(admin, &["sessions", &license]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("2 live session(s)"), "{out}");
        let sid = held.body["sessionId"].as_str().unwrap();
        let line = out.lines().find(|l| l.starts_with(sid)).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("alice") && line.contains("laptop") && line.contains("s ago"), "{line}");
        narrow(&out);

        let (code, out, err) = cli(admin, &["end-session", &license, sid]).await;
        assert_eq!((code, out.trim()), (0, format!("ended session {sid}").as_str()), "{err}");
        assert_eq!(app.heartbeat(held.body["sessionToken"].as_str().unwrap()).await.status, 410);
        let (code, out, _) = cli(admin, &["end-session", &license, sid]).await;
        assert_eq!(code, 0);
        assert!(out.contains("already over (force_ended)"), "{out}");

        let (code, out, err) = cli(admin, &["rotate-key", &license]).await;
        assert_eq!(code, 0, "{err}");
        let new_key = out.lines().nth(1).unwrap_or_default().trim().to_owned();
        assert_eq!(app.create(&new_key, json!({"userId": "carol", "feature": "f"})).await.status, 201, "{out}");
        app.create(&key, json!({"userId": "dave", "feature": "f"})).await.expect_error(401, "unauthorized");
    })
    .await
}
