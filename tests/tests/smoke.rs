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

/// The OpenAPI document served at /openapi.json describes exactly the route table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_route_table() {
    use seatkeeper_tests::seatkeeper_core::http::ROUTES;
    let app = TestApp::start(Backend::Sqlite).await;
    let doc = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone(), op["operationId"].as_str().unwrap().to_owned()));
            }
        }
    }
    let mut served: Vec<(String, String, String)> =
        ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_owned(), r.operation_id.to_owned())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

/// Health names the store that is down and answers 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_store_that_is_down() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut redis = app.redis_conn().await;
    let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async(&mut redis).await;
    let health = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body, json!({"status": "degraded", "seatStore": "down", "ledger": "ok"}));
    assert!(health.header("retry-after").is_some());
}
