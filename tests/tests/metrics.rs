//! `GET /metrics`: the Prometheus text format, behind the service admin's credential, counting
//! what the runner did.

use reqwest::Method;
use seatkeeper_tests::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::json;

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

async fn scrape(app: &TestApp, bearer: Option<&str>) -> (u16, String, String) {
    let mut req = app.http.get(format!("{}/metrics", app.base));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_sessions_refusals_and_sweeps() {
    seatkeeper_tests::bounded(async {
        let app = TestApp::start(Backend::Sqlite).await;
        let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
        let (_, _, before) = scrape(&app, Some(ADMIN_TOKEN)).await;
        let created =
            |t: &str| sample(t, r#"seatkeeper_http_requests_total{route="createSession",status="201"}"#).unwrap_or(0.0);
        let refused = |t: &str| sample(t, r#"seatkeeper_limit_refusals_total{feature="f"}"#).unwrap_or(0.0);
        let started = |t: &str| sample(t, r#"seatkeeper_sessions_started_total{feature="f"}"#).unwrap_or(0.0);
        let ended =
            |t: &str| sample(t, r#"seatkeeper_sessions_ended_total{feature="f",reason="ended"}"#).unwrap_or(0.0);
        let sweeps = |t: &str| sample(t, "seatkeeper_sweeps_total").unwrap_or(0.0);

        let s = app.create_ok(&key, "u1").await;
        assert_eq!(app.create(&key, json!({"userId": "u2", "feature": "f"})).await.status, 409);
        assert_eq!(app.create(&key, json!({"userId": "u3", "feature": "f"})).await.status, 409);
        assert_eq!(app.cleanup(s["sessionToken"].as_str().unwrap()).await.status, 200);
        app.history().await;
        let r = app.admin(Method::POST, "/api/licenses/cleanup-sessions", Some(json!({"licenseId": license}))).await;
        assert_eq!(r.status, 200, "{r:?}");

        let (status, ctype, after) = scrape(&app, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        // The registry is the process's: other tests in this binary may count too, never less.
        assert!(created(&after) - created(&before) >= 1.0, "{after}");
        assert!(refused(&after) - refused(&before) >= 2.0, "{after}");
        assert!(started(&after) - started(&before) >= 1.0, "{after}");
        assert!(ended(&after) - ended(&before) >= 1.0, "{after}");
        assert!(sweeps(&after) - sweeps(&before) >= 1.0, "{after}");
        assert!(after.contains("# TYPE seatkeeper_http_request_duration_seconds histogram"), "{after}");
        assert!(
            sample(&after, r#"seatkeeper_http_request_duration_seconds_count{route="createSession"}"#).unwrap_or(0.0)
                >= 3.0,
            "every create is timed: {after}"
        );
        assert!(after.trim_end().ends_with("# EOF"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_service_admin() {
    seatkeeper_tests::bounded(async {
        let app = TestApp::start(Backend::Sqlite).await;
        let (license, _) = app.simple_license(json!({"maxSessions": 1})).await;
        let (status, _, body) = scrape(&app, None).await;
        assert_eq!(status, 401);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized", "the contract's error shape: {body}");
        let made = app.admin(Method::POST, &format!("/api/licenses/{license}/admin-tokens"), None).await;
        assert_eq!(made.status, 201, "{made:?}");
        let (status, _, _) = scrape(&app, made.body["token"].as_str()).await;
        assert_eq!(status, 403, "a license's own admin sees no service-wide counters");
        let (status, _, _) = scrape(&app, Some("wrong")).await;
        assert_eq!(status, 401);
    })
    .await
}
