//! The route table, the OpenAPI document and health agree; a full session cycle works on each ledger.

use reqwest::Method;
use seatkeeper_tests::{ledger_tests, Backend, TestApp, ADMIN_TOKEN};
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

/// A schema of the OpenAPI document, `$ref`s followed (also the first of an `allOf` or `anyOf`).
fn schema<'a>(doc: &'a serde_json::Value, v: &'a serde_json::Value) -> &'a serde_json::Value {
    match v["$ref"].as_str().or_else(|| v["allOf"][0]["$ref"].as_str()).or_else(|| v["anyOf"][0]["$ref"].as_str()) {
        Some(r) => schema(doc, doc.pointer(r.trim_start_matches('#')).expect("$ref resolves")),
        None => v,
    }
}

/// The bounds the OpenAPI document gives are the ones the server enforces, at both edges: each
/// policy number, metadata's size, key and value lengths, the idempotencyKey rule; maxSessions 0
/// is accepted and refuses every create; HEAD and OPTIONS are documented where they are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_bounds_are_the_servers() {
    use serde_json::Value;
    let app = TestApp::start(Backend::Sqlite).await;
    let doc = app.request(Method::GET, "/openapi.json", None, None).await.body;
    let num = |v: &Value, k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} documented in {v}"));

    // Policy numbers: the documented minimum and maximum pass, one beyond either is 400.
    let policy = &doc["components"]["schemas"]["FeaturePolicyInput"]["properties"];
    let mut n = 0;
    for field in
        ["maxSessions", "maxSessionsPerUser", "leaseTtlSeconds", "heartbeatIntervalSeconds", "resurrectWindowSeconds"]
    {
        let (min, max) = (num(&policy[field], "minimum"), num(&policy[field], "maximum"));
        for (value, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
            n += 1;
            let mut p = json!({"maxSessions": 1, "leaseTtlSeconds": 86_400});
            p[field] = value.into();
            let r =
                app.admin(Method::PUT, &format!("/api/licenses/bounds-{n}"), Some(json!({"features": {"f": p}}))).await;
            if ok {
                assert_eq!(r.status, 201, "{field} = {value} is documented as allowed: {r:?}");
            } else {
                let err = r.expect_error(400, "invalid_request");
                assert_eq!(err["field"], format!("features.f.{field}"), "{r:?}");
            }
        }
    }

    // maxSessions 0 is allowed and switches the feature off.
    assert_eq!(num(&policy["maxSessions"], "minimum"), 0);
    let (_, off) = app.simple_license(json!({"maxSessions": 0})).await;
    app.create(&off, json!({"userId": "u1", "feature": "f"})).await.expect_error(409, "seat_limit_reached");

    // Metadata and idempotencyKey.
    let (_, key) = app.simple_license(json!({"maxSessions": 1_000})).await;
    let schemas = &doc["components"]["schemas"];
    let meta = schema(&doc, &schemas["CreateSessionRequest"]["properties"]["metadata"]);
    let (entries, key_len) = (num(meta, "maxProperties") as usize, num(&meta["propertyNames"], "maxLength") as usize);
    let value_len = num(&meta["additionalProperties"], "maxLength") as usize;
    let idem = schema(&doc, &schemas["CreateSessionRequest"]["properties"]["idempotencyKey"]);
    let idem_len = num(idem, "maxLength") as usize;
    assert_eq!(idem["pattern"], schemas["Identifier"]["pattern"], "idempotencyKey follows the identifier rule");
    let many = |count: usize| -> Value { (0..count).map(|i| (format!("k{i}"), Value::from("v"))).collect() };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("metadata at its entry limit", json!({"metadata": many(entries)}), true),
        ("metadata over its entry limit", json!({"metadata": many(entries + 1)}), false),
        ("metadata key at its length limit", json!({"metadata": {"k".repeat(key_len): "v"}}), true),
        ("metadata key over its length limit", json!({"metadata": {"k".repeat(key_len + 1): "v"}}), false),
        ("metadata empty key", json!({"metadata": {"": "v"}}), false),
        ("metadata value at its length limit", json!({"metadata": {"k": "v".repeat(value_len)}}), true),
        ("metadata value over its length limit", json!({"metadata": {"k": "v".repeat(value_len + 1)}}), false),
        ("idempotencyKey at its length limit", json!({"idempotencyKey": "i".repeat(idem_len)}), true),
        ("idempotencyKey over its length limit", json!({"idempotencyKey": "i".repeat(idem_len + 1)}), false),
        ("idempotencyKey outside the alphabet", json!({"idempotencyKey": "no spaces"}), false),
    ];
    for (i, (what, mut body, ok)) in cases.into_iter().enumerate() {
        body["userId"] = format!("user-{i}").into();
        body["feature"] = "f".into();
        let r = app.create(&key, body).await;
        if ok {
            assert_eq!(r.status, 201, "{what}: {r:?}");
        } else {
            r.expect_error(400, "invalid_request");
        }
    }
    // The same idempotencyKey from another user of the license and feature is 400.
    let r = app.create(&key, json!({"userId": "other", "feature": "f", "idempotencyKey": "i".repeat(idem_len)})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "idempotencyKey", "{r:?}");

    // HEAD where GET is served, with GET's statuses; OPTIONS everywhere; every path parameter
    // defined once for the whole path, so that each method, OPTIONS too, has it.
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(item.get("options").is_some(), "{path}: OPTIONS documented");
        assert_eq!(item.get("get").is_some(), item.get("head").is_some(), "{path}: HEAD documented with GET");
        if let (Some(get), Some(head)) = (item.get("get"), item.get("head")) {
            let codes = |op: &Value| op["responses"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(codes(get), codes(head), "{path}: HEAD answers what GET answers");
        }
        let at_path: Vec<&str> = item["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        let in_template: Vec<&str> =
            path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
        assert_eq!(at_path, in_template, "{path}: path parameters at the path level");
    }
    let r = app
        .request(Method::HEAD, "/api/licenses/sessions/debug?userId=nobody&feature=f", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(r.status, 404, "HEAD answers GET's 404 without a body: {r:?}");

    // session-stats' window: the documented maximum passes, one more is 400.
    let stats = &doc["paths"]["/api/licenses/{licenseId}/session-stats"]["get"]["parameters"];
    let window = stats.as_array().unwrap().iter().find(|p| p["name"] == "windowSeconds").unwrap();
    let max = num(&window["schema"], "maximum");
    let (license, _) = app.simple_license(json!({"maxSessions": 1})).await;
    for (w, status) in [(max, 200), (max + 1, 400)] {
        let r = app.admin(Method::GET, &format!("/api/licenses/{license}/session-stats?windowSeconds={w}"), None).await;
        assert_eq!(r.status, status, "windowSeconds={w}: {r:?}");
    }

    // A null optional policy field is documented and means "not given"; a GET's policy round-trips.
    for field in
        ["maxSessionsPerUser", "onLimit", "leaseTtlSeconds", "heartbeatIntervalSeconds", "resurrectWindowSeconds"]
    {
        let documented = policy[field]["type"].as_array().is_some_and(|t| t.contains(&json!("null")))
            || policy[field]["anyOf"].as_array().is_some_and(|a| a.contains(&json!({"type": "null"})));
        assert!(documented, "{field}: null documented");
        let r = app
            .admin(
                Method::PUT,
                &format!("/api/licenses/null-{field}"),
                Some(json!({"features": {"f": {"maxSessions": 1, field: null}}})),
            )
            .await;
        assert_eq!(r.status, 201, "{field}: null: {r:?}");
        let again = app
            .admin(Method::PUT, &format!("/api/licenses/null-{field}"), Some(json!({"features": r.body["features"]})))
            .await;
        assert_eq!(again.status, 200, "{field}: a GET's features PUT back: {again:?}");
    }

    // A feature name with `.` or `:` is bracketed in the error's field.
    let r = app.admin(Method::PUT, "/api/licenses/colon", Some(json!({"features": {":": {"maxSessions": -1}}}))).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "features[\":\"].maxSessions", "{r:?}");
    let reasons = &schemas["SessionEndReason"]["enum"];
    assert!(reasons.as_array().unwrap().contains(&json!("revoked")), "{reasons}");
    let codes = schemas["ErrorCode"]["enum"].as_array().unwrap();
    for code in ["payload_too_large", "request_timeout", "uri_too_long", "headers_too_large"] {
        assert!(codes.contains(&json!(code)), "{code} documented");
    }
    let debug = &doc["paths"]["/api/licenses/sessions/debug"]["get"]["responses"];
    assert!(debug.get("404").is_some(), "debug documents 404");
    let r = app.admin(Method::GET, "/api/licenses/sessions/debug?userId=nobody&feature=f", None).await;
    r.expect_error(404, "not_found");
}
