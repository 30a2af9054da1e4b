//! The route table, the OpenAPI document and health agree; a full session cycle works on each ledger.

use reqwest::Method;
use seatkeeper_tests::{ledger_tests, Backend, TestApp};
use serde_json::json;

async fn session_cycle(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 1})).await;
    let s = app.create_ok(&key, "u1").await;
    assert_eq!(s["licenseId"], license.as_str());
    assert_eq!(s["seats"], json!({"limit": 1, "active": 1}));
    let token = s["sessionToken"].as_str().unwrap();
    let hb = app.heartbeat(token).await;
    assert_eq!(hb.status, 200, "{hb:?}");
    assert_eq!(hb.body["resurrected"], false);
    assert_eq!(app.cleanup(token).await.body, json!({"ended": true}));
    assert_eq!(app.ledger_status(s["sessionId"].as_str().unwrap()).await.as_deref(), Some("ended"));
    let health = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(health.body, json!({"status": "ok", "seatStore": "ok", "ledger": "ok"}));
}

ledger_tests!(session_cycle);
