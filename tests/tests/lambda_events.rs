//! The Lambda handlers behind API Gateway: real API Gateway events (HTTP API v2 and REST v1, with a
//! stage in the path) decoded by lambda_http and served by the same core handler each function runs.

use lambda_http::Body;
use seatkeeper_tests::seatkeeper_core::http::{handle, Op};
use seatkeeper_tests::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

/// An HTTP API event whose route API Gateway authorized with IAM: the request context names the
/// verified caller, and `Authorization` holds the SigV4 signature, not a bearer token.
fn iam_signed_event(method: &str, path: &str, query: &str) -> String {
    let mut event: Value = serde_json::from_str(&http_api_event(method, path, query, None, None)).unwrap();
    event["headers"]["authorization"] =
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261203/eu-west-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc".into();
    event["requestContext"]["authorizer"] = json!({"iam": {
        "accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "callerId": "AIDAEXAMPLE",
        "principalOrgId": null, "userArn": "arn:aws:iam::123456789012:user/operator", "userId": "AIDAEXAMPLE"
    }});
    event.to_string()
}

fn http_api_event(method: &str, path: &str, query: &str, bearer: Option<&str>, body: Option<Value>) -> String {
    let mut headers = json!({"host": "abc.execute-api.eu-west-1.amazonaws.com", "content-type": "application/json"});
    if let Some(b) = bearer {
        headers["authorization"] = format!("Bearer {b}").into();
    }
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc", "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc", "requestId": "r", "routeKey": format!("{method} {path}"), "stage": "$default",
            "time": "27/Nov/2026:18:00:00 +0000", "timeEpoch": 1_795_888_800_000u64,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"}
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    })
    .to_string()
}

fn rest_api_event(method: &str, stage: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> String {
    let mut headers = json!({"Host": "abc.execute-api.eu-west-1.amazonaws.com", "Content-Type": "application/json"});
    if let Some(b) = bearer {
        headers["Authorization"] = format!("Bearer {b}").into();
    }
    json!({
        "resource": path, "path": format!("/{stage}{path}"), "httpMethod": method,
        "headers": headers, "multiValueHeaders": {}, "queryStringParameters": null,
        "multiValueQueryStringParameters": null, "pathParameters": null, "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "resourceId": "r", "stage": stage, "requestId": "r",
            "identity": {"sourceIp": "127.0.0.1"}, "resourcePath": path, "httpMethod": method, "apiId": "abc",
            "path": format!("/{stage}{path}")
        },
        "body": body.map(|b| b.to_string()), "isBase64Encoded": false
    })
    .to_string()
}

async fn call(app: &TestApp, op: Op, event: String) -> (u16, Value) {
    call_with(&app.svc, op, event).await
}

async fn call_with(svc: &seatkeeper_tests::seatkeeper_core::Service, op: Op, event: String) -> (u16, Value) {
    let req = lambda_http::request::from_str(&event).expect("an API Gateway event");
    let resp = handle(svc, op, req).await;
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (resp.status().as_u16(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gateway_events_reach_the_handlers() {
    let app = TestApp::start(Backend::Sqlite).await;
    let features = json!({"features": {"f": {"maxSessions": 1}}});
    let (status, license) =
        call(&app, Op::PutLicense, http_api_event("PUT", "/api/licenses/lam-1", "", Some(ADMIN_TOKEN), Some(features)))
            .await;
    assert_eq!(status, 201, "{license}");
    let key = license["key"].as_str().unwrap();

    // A REST API event with its stage in the path reaches the same handler.
    let create = json!({"userId": "u1", "feature": "f"});
    let (status, session) = call(
        &app,
        Op::CreateSession,
        rest_api_event("POST", "prod", "/api/licenses/sessions", Some(key), Some(create.clone())),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let token = session["sessionToken"].as_str().unwrap();
    let (status, refused) =
        call(&app, Op::CreateSession, http_api_event("POST", "/api/licenses/sessions", "", Some(key), Some(create)))
            .await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("seat_limit_reached")));

    // The token in the body, as a keepalive fetch sends it.
    let (status, beat) = call(
        &app,
        Op::Heartbeat,
        http_api_event("POST", "/api/licenses/sessions/heartbeat", "", None, Some(json!({"sessionToken": token}))),
    )
    .await;
    assert_eq!((status, &beat["resurrected"]), (200, &json!(false)), "{beat}");

    // Query strings and path parameters come through.
    let (status, debug) = call(
        &app,
        Op::DebugSessions,
        http_api_event("GET", "/api/licenses/sessions/debug", "userId=u1&feature=f", Some(ADMIN_TOKEN), None),
    )
    .await;
    assert_eq!(status, 200, "{debug}");
    assert_eq!(debug["licenses"][0]["seatStoreActive"], 1);
    let (status, ended) = call(
        &app,
        Op::ForceCleanup,
        rest_api_event("DELETE", "prod", "/api/licenses/sessions/force-cleanup/u1/f", Some(ADMIN_TOKEN), None),
    )
    .await;
    assert_eq!((status, &ended["ended"]), (200, &json!(1)), "{ended}");

    // A function serves its own route only: another method is 405.
    let (status, wrong) = call(&app, Op::Health, http_api_event("POST", "/health", "", None, None)).await;
    assert_eq!((status, wrong["error"]["code"].as_str()), (405, Some("method_not_allowed")));
}

/// `SEATKEEPER_ADMIN_AUTH=iam`: a caller whom API Gateway's IAM authorizer verified needs no admin
/// token; without that request context the token is still required; and with `token` (the
/// default) the IAM context lets no one in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_verified_admins_need_no_token() {
    use seatkeeper_tests::Options;
    let debug = |app: &TestApp, event: String| {
        let svc = app.svc.clone();
        async move { call_with(&svc, Op::DebugSessions, event).await }
    };
    let app = TestApp::start_with(Backend::Sqlite, Options { admin_iam: true, ..Default::default() }).await;
    let (_, key) = app.simple_license(json!({"maxSessions": 1})).await;
    app.create_ok(&key, "u1").await;
    let path = "/api/licenses/sessions/debug";
    let (status, body) = debug(&app, iam_signed_event("GET", path, "userId=u1&feature=f")).await;
    assert_eq!(status, 200, "an IAM-verified caller reads without a token: {body}");
    assert_eq!(body["licenses"][0]["seatStoreActive"], 1);
    let (status, body) = debug(&app, http_api_event("GET", path, "userId=u1&feature=f", None, None)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "no context, no token: {body}");
    let (status, body) = debug(&app, http_api_event("GET", path, "userId=u1&feature=f", Some("wrong"), None)).await;
    assert_eq!(status, 401, "a wrong token is still refused: {body}");
    let (status, _) = debug(&app, http_api_event("GET", path, "userId=u1&feature=f", Some(ADMIN_TOKEN), None)).await;
    assert_eq!(status, 200, "the token still works beside IAM");
    // The local runner builds its requests from the socket: nothing a client sends is a context.
    let r = app.request(reqwest::Method::GET, &format!("{path}?userId=u1&feature=f"), None, None).await;
    assert_eq!(r.status, 401, "the runner never takes a request as IAM-verified: {r:?}");

    let token_only = TestApp::start(Backend::Sqlite).await;
    let (status, body) = debug(&token_only, iam_signed_event("GET", path, "userId=u1&feature=f")).await;
    assert_eq!(status, 401, "with SEATKEEPER_ADMIN_AUTH=token an IAM context is not a credential: {body}");
}
