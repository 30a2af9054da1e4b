//! License-scoped admin tokens over HTTP, on every ledger: made by the service admin and shown
//! once, acting on their own license only (narrowed to it where a route takes a license
//! optionally), refused at once when revoked or when their license is deleted, stored hashed.

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::{token, Config, Service};
use seatkeeper_tests::{ledger_tests, Backend, Resp, TestApp};
use serde_json::{json, Value};

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_owned()
}

/// A token for `license`, as the service admin makes it: (tokenId, token).
async fn make_token(app: &TestApp, license: &str) -> (String, String) {
    let r = app.admin(Method::POST, &format!("/api/licenses/{license}/admin-tokens"), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "the token is shown once: {r:?}");
    assert_eq!(r.body["licenseId"], license);
    (s(&r.body, "tokenId"), s(&r.body, "token"))
}

async fn as_token(app: &TestApp, token: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
    app.request(method, path, Some(token), body).await
}

async fn a_scoped_token_acts_on_its_own_license_only(b: Backend) {
    let app = TestApp::start(b).await;
    let (mine, mine_key) = app.simple_license(json!({"maxSessions": 5})).await;
    let (other, other_key) = app.simple_license(json!({"maxSessions": 5})).await;
    let (_, tok) = make_token(&app, &mine).await;
    assert!(tok.starts_with("sat_") && tok.len() >= 4 + 43, "256 random bits, base64url: {tok}");

    // The same user holds a seat in both licenses; u2 a second one in mine.
    let stale_mine = app.create_ok(&mine_key, "u1").await;
    let stale_other = app.create_ok(&other_key, "u1").await;
    let live_mine = app.create_ok(&mine_key, "u2").await;
    let other_live = app.create_ok(&other_key, "u3").await;

    // Reading its license, its sessions, stats and usage.
    let got = as_token(&app, &tok, Method::GET, &format!("/api/licenses/{mine}"), None).await;
    assert_eq!((got.status, &got.body["licenseId"]), (200, &json!(mine)), "{got:?}");
    let listed = as_token(&app, &tok, Method::GET, &format!("/api/licenses/{mine}/sessions"), None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body["sessions"].as_array().map(Vec::len), Some(2), "{listed:?}");
    for route in ["session-stats", "usage?feature=f"] {
        let r = as_token(&app, &tok, Method::GET, &format!("/api/licenses/{mine}/{route}"), None).await;
        assert_eq!(r.status, 200, "{route}: {r:?}");
    }

    // Debug without a licenseId shows its own license's sessions only.
    let debug = as_token(&app, &tok, Method::GET, "/api/licenses/sessions/debug?userId=u1&feature=f", None).await;
    assert_eq!(debug.status, 200, "{debug:?}");
    let licenses: Vec<&Value> = debug.body["sessions"].as_array().unwrap().iter().map(|x| &x["licenseId"]).collect();
    assert_eq!(licenses, [&json!(mine)], "nothing of another license: {debug:?}");
    assert_eq!(debug.body["licenses"].as_array().map(Vec::len), Some(1), "{debug:?}");
    let all = app.admin(Method::GET, "/api/licenses/sessions/debug?userId=u1&feature=f", None).await;
    assert_eq!(all.body["sessions"].as_array().map(Vec::len), Some(2), "the service admin sees both: {all:?}");

    // cleanup-sessions without a licenseId sweeps its own license, and nothing else: both u1
    // leases ran out unswept; only mine is expired by it.
    app.lapse_seat(&mine, "f", &s(&stale_mine, "sessionId"), 5_000).await;
    app.lapse_seat(&other, "f", &s(&stale_other, "sessionId"), 5_000).await;
    let swept = as_token(&app, &tok, Method::POST, "/api/licenses/cleanup-sessions", Some(json!({}))).await;
    assert_eq!(swept.status, 200, "{swept:?}");
    assert_eq!((&swept.body["licenseId"], &swept.body["expired"]), (&json!(mine), &json!(1)), "{swept:?}");
    assert_eq!(app.ledger_status(&s(&stale_mine, "sessionId")).await.as_deref(), Some("expired"));
    assert_eq!(
        app.ledger_status(&s(&stale_other, "sessionId")).await.as_deref(),
        Some("active"),
        "another license's stale seat was not touched"
    );
    assert!(
        app.lease_ids(&other, "f").await.contains(&s(&stale_other, "sessionId")),
        "its lease is still in the seat store"
    );

    // Ending one of its sessions.
    let path = format!("/api/licenses/{mine}/sessions/{}", s(&live_mine, "sessionId"));
    let ended = as_token(&app, &tok, Method::DELETE, &path, None).await;
    assert_eq!((ended.status, &ended.body), (200, &json!({"ended": true})), "{ended:?}");
    app.heartbeat(&s(&live_mine, "sessionToken")).await.expect_error(410, "session_expired");

    // Anything of another license: 403, and nothing happens there.
    let foreign_sid = s(&other_live, "sessionId");
    for (method, path, body) in [
        (Method::GET, format!("/api/licenses/{other}"), None),
        (Method::GET, format!("/api/licenses/{other}/sessions"), None),
        (Method::GET, format!("/api/licenses/{other}/session-stats"), None),
        (Method::GET, format!("/api/licenses/{other}/usage?feature=f"), None),
        (Method::DELETE, format!("/api/licenses/{other}/sessions/{foreign_sid}"), None),
        (Method::GET, format!("/api/licenses/sessions/debug?userId=u1&feature=f&licenseId={other}"), None),
        (Method::DELETE, format!("/api/licenses/sessions/force-cleanup/u3/f?licenseId={other}"), None),
        (Method::POST, "/api/licenses/cleanup-sessions".to_owned(), Some(json!({"licenseId": other}))),
        (Method::GET, "/api/licenses/no-such-license".to_owned(), None),
    ] {
        as_token(&app, &tok, method.clone(), &path, body).await.expect_error(403, "forbidden");
    }
    assert_eq!(app.heartbeat(&s(&other_live, "sessionToken")).await.status, 200, "the other license's seat lives");

    // What only the service admin may do, on its own license too: 403.
    let (admin_token_id, _) = make_token(&app, &mine).await;
    for (method, path, body) in [
        (Method::PUT, format!("/api/licenses/{mine}"), Some(json!({"features": {"f": {"maxSessions": 99}}}))),
        (Method::DELETE, format!("/api/licenses/{mine}"), None),
        (Method::POST, format!("/api/licenses/{mine}/key"), None),
        (Method::GET, "/api/licenses".to_owned(), None),
        (Method::POST, format!("/api/licenses/{mine}/admin-tokens"), None),
        (Method::DELETE, format!("/api/licenses/{mine}/admin-tokens/{admin_token_id}"), None),
    ] {
        as_token(&app, &tok, method.clone(), &path, body).await.expect_error(403, "forbidden");
    }
    let after = app.admin(Method::GET, &format!("/api/licenses/{mine}"), None).await;
    assert_eq!(after.body["features"]["f"]["maxSessions"], 5, "the policy is unchanged: {after:?}");
    assert_eq!(app.create(&mine_key, json!({"userId": "u9", "feature": "f"})).await.status, 201, "same key");

    // Made by the service admin only, for a license that exists.
    app.admin(Method::POST, "/api/licenses/no-such-license/admin-tokens", None).await.expect_error(404, "not_found");
    app.request(Method::POST, &format!("/api/licenses/{mine}/admin-tokens"), Some(&mine_key), None)
        .await
        .expect_error(401, "unauthorized");
    app.request(Method::GET, &format!("/api/licenses/{mine}/sessions"), Some("sat_not-a-token"), None)
        .await
        .expect_error(401, "unauthorized");
}

async fn a_revoked_token_is_refused_at_once_everywhere(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, _key) = app.simple_license(json!({"maxSessions": 2})).await;
    let (id, tok) = make_token(&app, &license).await;
    let (kept_id, kept) = make_token(&app, &license).await;
    assert_ne!(id, kept_id);
    let sessions = format!("/api/licenses/{license}/sessions");
    assert_eq!(as_token(&app, &tok, Method::GET, &sessions, None).await.status, 200);
    // A second instance on the same stores, which has seen the token work.
    let other = Service::connect(app.svc.config().clone()).await.unwrap();
    assert_eq!(other.scoped_admin(&tok).await.unwrap().map(|l| l.to_string()), Some(license.clone()));

    let revoked = app.admin(Method::DELETE, &format!("/api/licenses/{license}/admin-tokens/{id}"), None).await;
    assert_eq!((revoked.status, &revoked.body), (200, &json!({"revoked": true})), "{revoked:?}");
    as_token(&app, &tok, Method::GET, &sessions, None).await.expect_error(401, "unauthorized");
    assert_eq!(other.scoped_admin(&tok).await.unwrap(), None, "the other instance refuses it at once");
    assert_eq!(as_token(&app, &kept, Method::GET, &sessions, None).await.status, 200, "only that token");
    // Admin routes answer 401 until SEATKEEPER_ADMIN_TOKEN is set: to a scoped token too.
    let unset = Service::connect(Config { admin_token: None, ..app.svc.config().clone() }).await.unwrap();
    let req = lambda_http::http::Request::builder()
        .method("GET")
        .uri(sessions.as_str())
        .header("authorization", format!("Bearer {kept}"))
        .body(lambda_http::Body::Empty)
        .unwrap();
    let resp = seatkeeper_tests::seatkeeper_core::http::dispatch(&unset, req).await;
    assert_eq!(resp.status(), 401, "{:?}", resp.body());

    // Revoking again, an unknown id, a malformed one, another license's: 404.
    let (other_license, _) = app.simple_license(json!({"maxSessions": 1})).await;
    for path in [
        format!("/api/licenses/{license}/admin-tokens/{id}"),
        format!("/api/licenses/{license}/admin-tokens/0123456789abcdef"),
        format!("/api/licenses/{license}/admin-tokens/not-an-id"),
        format!("/api/licenses/{other_license}/admin-tokens/{kept_id}"),
        format!("/api/licenses/no-such-license/admin-tokens/{kept_id}"),
    ] {
        app.admin(Method::DELETE, &path, None).await.expect_error(404, "not_found");
    }
    assert_eq!(as_token(&app, &kept, Method::GET, &sessions, None).await.status, 200);

    // Deleting the license removes its tokens: even a license made again under its id does not
    // bring them back.
    let deleted = app.admin(Method::DELETE, &format!("/api/licenses/{license}"), None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    as_token(&app, &kept, Method::GET, &sessions, None).await.expect_error(401, "unauthorized");
    let again = app
        .admin(Method::PUT, &format!("/api/licenses/{license}"), Some(json!({"features": {"f": {"maxSessions": 1}}})))
        .await;
    assert_eq!(again.status, 201, "{again:?}");
    as_token(&app, &kept, Method::GET, &sessions, None).await.expect_error(401, "unauthorized");
    assert_eq!(other.scoped_admin(&kept).await.unwrap(), None);
}

async fn tokens_are_stored_hashed(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, _key) = app.simple_license(json!({"maxSessions": 2})).await;
    let (id, tok) = make_token(&app, &license).await;
    let secret = tok.trim_start_matches("sat_").to_owned();
    let hash = token::hash_secret(&tok);
    // Everything the ledger holds about the token, as text.
    let stored: String = match b {
        Backend::Dynamo => {
            let ledger = app.db.dynamo().await;
            let scan = ledger.client().scan().table_name(ledger.table()).send().await.expect("scan the table");
            format!("{:?}", scan.items())
        }
        _ => {
            let pool = app.db.pool().await;
            let rows = sqlx::query("SELECT token_id, license_id, token_hash FROM admin_tokens")
                .fetch_all(&pool)
                .await
                .expect("read admin_tokens");
            use sqlx::Row;
            let text = rows
                .iter()
                .map(|r| (0..3).map(|i| r.try_get::<String, _>(i).unwrap()).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(rows.len(), 1, "{text}");
            pool.close().await;
            text
        }
    };
    assert!(stored.contains(&hash), "the hash is what is stored: {stored}");
    assert!(stored.contains(&id) && stored.contains(&license), "{stored}");
    assert!(!stored.contains(&tok) && !stored.contains(&secret), "the token itself is not: {stored}");
}

ledger_tests!(
    a_scoped_token_acts_on_its_own_license_only,
    a_revoked_token_is_refused_at_once_everywhere,
    tokens_are_stored_hashed,
);

/// `seatkeeper admin token create|revoke` and `seatkeeper admin usage`, against the local runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_token_and_usage_verbs() {
    let app = TestApp::start(Backend::Sqlite).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
    app.create_ok(&key, "u1").await;
    app.create(&key, json!({"userId": "u2", "feature": "f"})).await.expect_error(409, "seat_limit_reached");
    let cli = |token: String, args: Vec<String>| {
        let base = app.base.clone();
        async move {
            let out = tokio::process::Command::new(seatkeeper_tests::seatkeeper_bin())
                .arg("admin")
                .arg("--api-url")
                .arg(base)
                .args(args)
                .env_remove("SEATKEEPER_API_URL")
                .env("SEATKEEPER_ADMIN_TOKEN", token)
                .output()
                .await
                .expect("run seatkeeper");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.code().expect("exit code"), text(&out.stdout), text(&out.stderr))
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let admin = seatkeeper_tests::ADMIN_TOKEN.to_owned();

    let (code, out, err) = cli(admin.clone(), args(&["token", "create", &license])).await;
    assert_eq!(code, 0, "{out} {err}");
    let mut lines = out.lines();
    let head = lines.next().unwrap_or_default();
    let id = head.strip_prefix("token ").and_then(|r| r.split(' ').next()).unwrap_or_default().to_owned();
    assert!(head.contains(&license) && head.contains("shown once") && id.len() == 16, "{out}");
    let tok = lines.next().unwrap_or_default().trim().to_owned();
    assert!(tok.starts_with("sat_"), "{out}");

    // The scoped token drives the usage verb: one row per step, within 100 columns.
    let (code, out, err) =
        cli(tok.clone(), args(&["usage", &license, "--feature", "f", "--step-seconds", "600"])).await;
    assert_eq!(code, 0, "{out} {err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert!(rows[0].starts_with("STEP START (UTC)") && rows[0].contains("REFUSED"), "{out}");
    assert_eq!(rows.len(), 1 + 144, "24 hours in steps of 600 s: {out}");
    assert!(rows.iter().all(|r| r.len() <= 100), "{out}");
    let last = rows.last().unwrap().split_whitespace().collect::<Vec<_>>();
    assert_eq!(&last[1..], ["1", "1", "1"], "peak, started, refused in the last step: {out}");
    let (code, _, err) = cli(tok.clone(), args(&["usage", &license, "--feature", "f", "--step-seconds", "5"])).await;
    assert!(code == 1 && err.contains("400") && err.contains("stepSeconds"), "{err}");

    // A scoped token cannot make tokens; the service admin revokes it, and it stops working.
    let (code, _, err) = cli(tok.clone(), args(&["token", "create", &license])).await;
    assert!(code == 1 && err.contains("403"), "{err}");
    let (code, out, err) = cli(admin.clone(), args(&["token", "revoke", &license, &id])).await;
    assert_eq!((code, out.trim()), (0, format!("revoked token {id}; it no longer works").as_str()), "{err}");
    let (code, _, err) = cli(tok, args(&["usage", &license, "--feature", "f"])).await;
    assert!(code == 1 && err.contains("401"), "{err}");
    let (code, _, err) = cli(admin, args(&["token", "revoke", &license, &id])).await;
    assert!(code == 1 && err.contains("404"), "{err}");
}
