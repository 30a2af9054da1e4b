//! The HTTP face of the service: the route table, request parsing and the contract's response and
//! error shapes. Handlers take a `lambda_http::Request`, so the very same code runs in each Lambda
//! function and in the local runner.

use std::collections::BTreeMap;
use std::time::Instant;

use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::{json, Map, Value};

use crate::domain::{feature_field, rfc3339_ms, FeaturePolicyInput, Ident, License};
use crate::error::Error;
use crate::ops::tokens::Caller;
use crate::service::{CreateSession, PutLicense, Service};
use crate::token;

mod admin;
mod console;

pub use console::{console, is_console};

/// Request bodies larger than this get `413 payload_too_large`.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The contract's OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    CreateSession,
    Heartbeat,
    CleanupSession,
    ForceCleanup,
    DebugSessions,
    CleanupSessions,
    SessionStats,
    PutLicense,
    GetLicense,
    DeleteLicense,
    ListLicenses,
    LicenseSessions,
    EndLicenseSession,
    RotateLicenseKey,
    CreateAdminToken,
    RevokeAdminToken,
    LicenseUsage,
    Health,
    OpenApi,
}

pub struct Route {
    pub method: Method,
    /// Path template; `{name}` matches one segment.
    pub path: &'static str,
    pub op: Op,
    /// The OpenAPI operationId, and the name of the Lambda function that serves the route.
    pub operation_id: &'static str,
}

/// Every route of the service: the local runner, the Lambda functions and the infrastructure
/// template all read this one table.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/api/licenses/sessions",
        op: Op::CreateSession,
        operation_id: "createSession",
    },
    Route {
        method: Method::POST,
        path: "/api/licenses/sessions/heartbeat",
        op: Op::Heartbeat,
        operation_id: "heartbeat",
    },
    Route {
        method: Method::POST,
        path: "/api/licenses/sessions/cleanup",
        op: Op::CleanupSession,
        operation_id: "cleanupSession",
    },
    Route {
        method: Method::DELETE,
        path: "/api/licenses/sessions/force-cleanup/{userId}/{feature}",
        op: Op::ForceCleanup,
        operation_id: "forceCleanup",
    },
    Route {
        method: Method::GET,
        path: "/api/licenses/sessions/debug",
        op: Op::DebugSessions,
        operation_id: "debugSessions",
    },
    Route {
        method: Method::POST,
        path: "/api/licenses/cleanup-sessions",
        op: Op::CleanupSessions,
        operation_id: "cleanupSessions",
    },
    Route {
        method: Method::GET,
        path: "/api/licenses/{licenseId}/session-stats",
        op: Op::SessionStats,
        operation_id: "sessionStats",
    },
    Route { method: Method::PUT, path: "/api/licenses/{licenseId}", op: Op::PutLicense, operation_id: "putLicense" },
    Route { method: Method::GET, path: "/api/licenses/{licenseId}", op: Op::GetLicense, operation_id: "getLicense" },
    Route {
        method: Method::DELETE,
        path: "/api/licenses/{licenseId}",
        op: Op::DeleteLicense,
        operation_id: "deleteLicense",
    },
    Route { method: Method::GET, path: "/api/licenses", op: Op::ListLicenses, operation_id: "listLicenses" },
    Route {
        method: Method::GET,
        path: "/api/licenses/{licenseId}/sessions",
        op: Op::LicenseSessions,
        operation_id: "licenseSessions",
    },
    Route {
        method: Method::DELETE,
        path: "/api/licenses/{licenseId}/sessions/{sessionId}",
        op: Op::EndLicenseSession,
        operation_id: "endLicenseSession",
    },
    Route {
        method: Method::POST,
        path: "/api/licenses/{licenseId}/key",
        op: Op::RotateLicenseKey,
        operation_id: "rotateLicenseKey",
    },
    Route {
        method: Method::POST,
        path: "/api/licenses/{licenseId}/admin-tokens",
        op: Op::CreateAdminToken,
        operation_id: "createAdminToken",
    },
    Route {
        method: Method::DELETE,
        path: "/api/licenses/{licenseId}/admin-tokens/{tokenId}",
        op: Op::RevokeAdminToken,
        operation_id: "revokeAdminToken",
    },
    Route {
        method: Method::GET,
        path: "/api/licenses/{licenseId}/usage",
        op: Op::LicenseUsage,
        operation_id: "licenseUsage",
    },
    Route { method: Method::GET, path: "/health", op: Op::Health, operation_id: "health" },
    Route { method: Method::GET, path: "/openapi.json", op: Op::OpenApi, operation_id: "openapi" },
];

impl Op {
    pub fn route(self) -> &'static Route {
        ROUTES.iter().find(|r| r.op == self).expect("every op has a route")
    }
}

/// An error as the contract shapes it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    pub retry_after: Option<u64>,
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Map::new(), retry_after: None, allow: None }
    }

    fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn payload_too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is over {MAX_BODY_BYTES} bytes"),
        )
    }

    pub fn bad_body(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.details);
        let mut resp = json_response(self.status, json!({ "error": error }));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest { field, message } => {
                let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
                match field {
                    Some(f) => err.detail("field", f),
                    None => err,
                }
            }
            Error::Unauthorized(m) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m),
            Error::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::SeatLimitReached { scope, limit, active, retry_after_seconds } => {
                let mut err = ApiError::new(StatusCode::CONFLICT, "seat_limit_reached", "Maximum user limit reached")
                    .detail("limit", limit)
                    .detail("active", active)
                    .detail("retryAfterSeconds", retry_after_seconds)
                    .detail("scope", scope.as_str());
                err.retry_after = Some(retry_after_seconds);
                err
            }
            Error::SessionExpired { reason } => {
                ApiError::new(StatusCode::GONE, "session_expired", format!("the session is over ({})", reason.as_str()))
                    .detail("reason", reason.as_str())
            }
            Error::StoreUnavailable { store, detail, .. } => {
                tracing::error!(store = store.as_str(), error = %detail, "store unavailable");
                crate::metrics::metrics()
                    .store_errors
                    .get_or_create(&crate::metrics::StoreLabels { store: store.as_str().to_owned() })
                    .inc();
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("the {} is unavailable; nothing was changed, try again", store.as_str()),
                );
                err.retry_after = Some(2);
                err
            }
        }
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

/// Every JSON answer of the API is `Cache-Control: no-store`: several carry a session token or a
/// license key, and none is worth keeping in a cache (seat counts change by the second).
fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    let mut resp = Response::new(Body::Text(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn json_ok(value: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, value))
}

pub(crate) fn json_created(value: Value) -> ApiResult {
    Ok(json_response(StatusCode::CREATED, value))
}

/// Matches a path against a template, comparing the template with the path's last segments (so
/// that an API Gateway stage prefix does not matter). Returns the decoded path parameters.
fn match_template(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').trim_start_matches('/').split('/').collect();
    if p.len() < t.len() {
        return None;
    }
    let p = &p[p.len() - t.len()..];
    let mut params = BTreeMap::new();
    for (ts, ps) in t.iter().zip(p) {
        if let Some(name) = ts.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            if ps.is_empty() {
                return None;
            }
            params.insert(name.to_owned(), percent_decode(ps)?);
        } else if ts != ps {
            return None;
        }
    }
    Some(params)
}

/// Literal segments of a template: a more literal template wins over a parameter.
fn literal_segments(template: &str) -> usize {
    template.split('/').filter(|s| !s.starts_with('{')).count()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_params(req: &Request) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `GET /metrics` (the local runner's; a Lambda function's counters would cover one instance):
/// the Prometheus text format, for the service admin's credential only (a scrape config's
/// `authorization`), as the operator routes.
pub async fn metrics(svc: &Service, req: &Request) -> Response<Body> {
    let started = Instant::now();
    let resp = match authorize(svc, req).await.and_then(|c| c.check_service().map_err(ApiError::from)) {
        Err(e) => e.into_response(),
        Ok(()) => {
            if let Some(w) = svc.webhooks() {
                w.refresh_gauges().await;
            }
            let mut resp = Response::new(Body::Text(crate::metrics::metrics().render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            resp
        }
    };
    log_request("metrics", resp.status(), started);
    resp
}

/// Serves a request through the route table (the local runner's entry point).
pub async fn dispatch(svc: &Service, req: Request) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let path = req.uri().path().to_owned();
    // Each template is matched once; the parameters of the route chosen go on to its handler.
    let segments = path.trim_end_matches('/').split('/').count();
    let mut matching: Vec<(&Route, Params)> = ROUTES
        .iter()
        .filter(|r| r.path.split('/').count() == segments)
        .filter_map(|r| Some((r, match_template(r.path, &path)?)))
        .collect();
    // Of the routes that serve this method, the most literal template wins: `POST
    // /api/licenses/sessions` creates a session, `PUT` on the same path writes the license named
    // `sessions` (as API Gateway picks a route by method and path together).
    let pick = |exact: bool| {
        matching
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| if exact { r.method == req.method() } else { serves(r.method.clone(), req.method()) })
            .max_by_key(|(_, (r, _))| literal_segments(r.path))
            .map(|(i, _)| i)
    };
    let served = pick(true).or_else(|| pick(false));
    let candidates: Vec<&Route> = matching.iter().map(|(r, _)| *r).collect();
    let resp = match served {
        Some(i) => {
            let (route, params) = matching.swap_remove(i);
            handle_op(svc, route.op, req, Some(params)).await
        }
        None if candidates.is_empty() => {
            log_request("unknown", StatusCode::NOT_FOUND, Instant::now());
            ApiError::not_found(format!("no route {path}")).into_response()
        }
        None => {
            let methods: Vec<Method> = candidates.iter().map(|r| r.method.clone()).collect();
            let resp = if req.method() == Method::OPTIONS {
                // A preflight names the methods of the path's own template, as its function does.
                let best = candidates.iter().map(|r| literal_segments(r.path)).max();
                let own: Vec<Method> = candidates
                    .iter()
                    .filter(|r| Some(literal_segments(r.path)) == best)
                    .map(|r| r.method.clone())
                    .collect();
                options(svc, &req, &own)
            } else {
                method_not_allowed(&req, &methods)
            };
            log_request(candidates[0].operation_id, resp.status(), Instant::now());
            resp
        }
    };
    with_cors(svc, origin.as_ref(), resp)
}

/// Serves one operation (a Lambda function's entry point). Logs route, status, latency and license.
/// Also answers `HEAD` when the operation is a `GET`, and preflight `OPTIONS` on its path.
pub async fn handle(svc: &Service, op: Op, req: Request) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let resp = handle_op(svc, op, req, None).await;
    with_cors(svc, origin.as_ref(), resp)
}

/// The path parameters of a matched route.
type Params = BTreeMap<String, String>;

/// One operation; `params` when the router has matched the path already.
async fn handle_op(svc: &Service, op: Op, req: Request, params: Option<Params>) -> Response<Body> {
    use tracing::Instrument;
    let route = op.route();
    let span = tracing::info_span!("request", route = route.operation_id, license = tracing::field::Empty);
    let started = Instant::now();
    let resp = async {
        let methods = path_methods(route.path);
        let resp = if serves(route.method.clone(), req.method()) {
            let head = req.method() == Method::HEAD;
            let resp = match run(svc, op, route, req, params).await {
                Ok(resp) => resp,
                Err(err) => err.into_response(),
            };
            if head {
                without_body(resp)
            } else {
                resp
            }
        } else if req.method() == Method::OPTIONS {
            options(svc, &req, &methods)
        } else {
            // A wrong method is answered and logged like any other outcome.
            method_not_allowed(&req, &methods)
        };
        log_request(route.operation_id, resp.status(), started);
        resp
    }
    .instrument(span)
    .await;
    resp
}

/// A route of `route_method` serves `method`: the same, or `HEAD` on a `GET` route.
fn serves(route_method: Method, method: &Method) -> bool {
    route_method == *method || (route_method == Method::GET && method == Method::HEAD)
}

/// The methods of every route on this path template.
fn path_methods(template: &str) -> Vec<Method> {
    ROUTES.iter().filter(|r| r.path == template).map(|r| r.method.clone()).collect()
}

fn method_not_allowed(req: &Request, methods: &[Method]) -> Response<Body> {
    let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let mut err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}; use {allow}", req.method(), req.uri().path()),
    );
    err.allow = Some(allow);
    err.into_response()
}

/// The answer to `HEAD`: the `GET` answer's status and headers, its length, no body.
fn without_body(mut resp: Response<Body>) -> Response<Body> {
    let len = match resp.body() {
        Body::Text(t) => t.len(),
        Body::Binary(b) => b.len(),
        _ => 0,
    };
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    *resp.body_mut() = Body::Empty;
    resp
}

// ---- CORS ----

/// How long a browser may keep a preflight answer.
const CORS_MAX_AGE_SECONDS: u32 = 600;

/// The request's `Origin` when `SEATKEEPER_CORS_ORIGINS` lists it (exactly, as browsers send it).
fn allowed_origin<'a>(svc: &Service, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
    let origin = origin?;
    let text = origin.to_str().ok()?;
    svc.config().cors_origins.iter().any(|o| o == text).then_some(origin)
}

/// A preflight (`OPTIONS`): from a listed origin, `204` with the CORS allowances; from an unlisted
/// one, `403 forbidden`; without an `Origin` (not a browser's preflight), `204` with `Allow`.
fn options(svc: &Service, req: &Request, methods: &[Method]) -> Response<Body> {
    let mut allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if methods.contains(&Method::GET) {
        allow.push("HEAD");
    }
    allow.push("OPTIONS");
    let allow = allow.join(", ");
    let origin = req.headers().get(header::ORIGIN);
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = StatusCode::NO_CONTENT;
    match (origin, allowed_origin(svc, origin)) {
        (Some(given), None) => {
            let given = given.to_str().unwrap_or("this origin");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{given} may not call this API from a browser: it is not in SEATKEEPER_CORS_ORIGINS"),
            )
            .into_response();
        }
        (_, Some(_)) => {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_str(&allow).expect("method names"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(CORS_MAX_AGE_SECONDS));
        }
        (None, None) => {}
    }
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_str(&allow).expect("method names"));
    resp
}

/// CORS headers on any answer: `Vary: Origin` whenever origins are configured (the answer
/// depends on it), and for a listed origin `Access-Control-Allow-Origin` (that origin) and
/// `Retry-After` exposed to scripts. `dispatch` and `handle` apply it; a transport that answers
/// before them (the runner's 413 and 408) applies it too.
pub fn with_cors(svc: &Service, origin: Option<&HeaderValue>, mut resp: Response<Body>) -> Response<Body> {
    if svc.config().cors_origins.is_empty() {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed_origin(svc, origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
    }
    resp
}

/// One line per request: at `debug` for answers the contract expects (a heartbeat costs a few
/// microseconds of CPU, a log line about as much again), at `warn` when a store failed.
fn log_request(route: &'static str, status: StatusCode, started: Instant) {
    crate::metrics::metrics().request(route, status.as_u16(), started.elapsed());
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(route, status = status.as_u16(), latency_ms, "request");
    } else {
        tracing::debug!(route, status = status.as_u16(), latency_ms, "request");
    }
}

async fn run(svc: &Service, op: Op, route: &Route, req: Request, params: Option<Params>) -> ApiResult {
    let params = match params {
        Some(p) => p,
        None => match_template(route.path, req.uri().path())
            .ok_or_else(|| ApiError::not_found(format!("no route {}", req.uri().path())))?,
    };
    match op {
        Op::CreateSession => create_session(svc, &req).await,
        Op::Heartbeat => heartbeat(svc, &req).await,
        Op::CleanupSession => cleanup_session(svc, &req).await,
        Op::PutLicense => put_license(svc, &req, &params).await,
        Op::GetLicense => get_license(svc, &req, &params).await,
        Op::DeleteLicense => delete_license(svc, &req, &params).await,
        Op::Health => health(svc).await,
        Op::OpenApi => Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::Text(OPENAPI_JSON.to_owned()))
            .expect("static response")),
        Op::ForceCleanup => admin::force_cleanup(svc, &req, &params).await,
        Op::DebugSessions => admin::debug(svc, &req).await,
        Op::CleanupSessions => admin::cleanup_sessions(svc, &req).await,
        Op::SessionStats => admin::session_stats(svc, &req, &params).await,
        Op::ListLicenses => admin::list_licenses(svc, &req).await,
        Op::LicenseSessions => admin::license_sessions(svc, &req, &params).await,
        Op::EndLicenseSession => admin::end_license_session(svc, &req, &params).await,
        Op::RotateLicenseKey => admin::rotate_license_key(svc, &req, &params).await,
        Op::CreateAdminToken => admin::create_admin_token(svc, &req, &params).await,
        Op::RevokeAdminToken => admin::revoke_admin_token(svc, &req, &params).await,
        Op::LicenseUsage => admin::license_usage(svc, &req, &params).await,
    }
}

// ---- request parsing ----

/// The body as a JSON object; an empty body is an empty object. Oversized: 413.
pub(crate) fn body_object(req: &Request) -> Result<Map<String, Value>, ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(s) => s.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => {
            Err(Error::InvalidRequest { field: None, message: "request body must be a JSON object".into() }.into())
        }
        Err(e) => {
            Err(Error::InvalidRequest { field: None, message: format!("request body is not valid JSON: {e}") }.into())
        }
    }
}

/// An optional string field; `null` counts as absent.
pub(crate) fn opt_str<'a>(body: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, Error> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::invalid(field, format!("{field} must be a string"))),
    }
}

pub(crate) fn opt_ident(body: &Map<String, Value>, field: &'static str) -> Result<Option<Ident>, Error> {
    opt_str(body, field)?.map(|s| Ident::parse(field, s)).transpose()
}

pub(crate) fn req_ident(body: &Map<String, Value>, field: &'static str) -> Result<Ident, Error> {
    opt_ident(body, field)?.ok_or_else(|| Error::invalid(field, format!("{field} is required")))
}

/// The bearer credential of the Authorization header, if any.
pub(crate) fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, cred) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| cred.trim()).filter(|c| !c.is_empty())
}

/// Who an admin request comes from: the service admin (an IAM principal API Gateway verified, or
/// `SEATKEEPER_ADMIN_TOKEN`, compared in constant time), or a license-scoped admin token (looked
/// up by its hash in the ledger on every request: a revoked one is refused at once). Until
/// `SEATKEEPER_ADMIN_TOKEN` is set, only verified IAM callers get in. Handlers then ask the
/// `Caller` what it may do.
pub(crate) async fn authorize(svc: &Service, req: &Request) -> Result<Caller, ApiError> {
    if svc.config().admin_iam {
        if let Some(caller) = iam_caller(req) {
            tracing::info!(caller, "admin request by an IAM principal that API Gateway verified");
            return Ok(Caller::Service);
        }
    }
    // The contract: admin routes answer 401 until SEATKEEPER_ADMIN_TOKEN is set (scoped tokens too).
    let Some(expected) = svc.config().admin_token.as_deref() else {
        return Err(Error::Unauthorized("admin routes are disabled: SEATKEEPER_ADMIN_TOKEN is not set").into());
    };
    let Some(given) = bearer(req) else {
        return Err(Error::Unauthorized("missing admin token: use Authorization: Bearer <adminToken>").into());
    };
    if token::secrets_equal(given, expected) {
        return Ok(Caller::Service);
    }
    match svc.scoped_admin(given).await? {
        Some(license) => {
            tracing::Span::current().record("license", license.as_str());
            Ok(Caller::License(license))
        }
        None => Err(Error::Unauthorized("unknown admin token").into()),
    }
}

/// The IAM principal that API Gateway's IAM authorizer verified for this request (an HTTP API's
/// request context names it), if any. Only a Lambda event carries a request context: the local
/// runner builds its requests from the socket, so no header a client sends can forge one.
fn iam_caller(req: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => {
            let iam = ctx.authorizer.as_ref()?.iam.as_ref()?;
            iam.user_arn.clone().or_else(|| iam.caller_id.clone()).filter(|c| !c.is_empty())
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub(crate) fn path_ident(params: &BTreeMap<String, String>, name: &'static str) -> Result<Ident, ApiError> {
    Ok(Ident::parse(name, params.get(name).map(String::as_str).unwrap_or(""))?)
}

pub(crate) fn query_ident(req: &Request, name: &'static str, required: bool) -> Result<Option<Ident>, ApiError> {
    match query_params(req).get(name) {
        Some(v) => Ok(Some(Ident::parse(name, v)?)),
        None if required => Err(Error::invalid(name, format!("query parameter {name} is required")).into()),
        None => Ok(None),
    }
}

/// An RFC 3339 time in the query (`2026-01-31T12:00:00.000Z`, any offset), as Unix milliseconds.
pub(crate) fn query_time(req: &Request, name: &'static str) -> Result<Option<i64>, ApiError> {
    match query_params(req).get(name) {
        None => Ok(None),
        Some(v) => chrono::DateTime::parse_from_rfc3339(v).ok().map(|t| Some(t.timestamp_millis())).ok_or_else(|| {
            Error::invalid(name, format!("{name} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00.000Z")).into()
        }),
    }
}

pub(crate) fn query_u64(req: &Request, name: &'static str, default: u64, max: u64) -> Result<u64, ApiError> {
    query_u64_in(req, name, default, 1, max)
}

pub(crate) fn query_u64_in(
    req: &Request,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match query_params(req).get(name) {
        None => Ok(default),
        Some(v) => {
            v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                Error::invalid(name, format!("{name} must be a whole number from {min} to {max}")).into()
            })
        }
    }
}

// ---- client routes ----

async fn create_session(svc: &Service, req: &Request) -> ApiResult {
    let body = body_object(req)?;
    let key = bearer(req).ok_or(Error::Unauthorized("missing license key: use Authorization: Bearer <licenseKey>"))?;
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(Error::invalid("metadata", "metadata holds at most 16 entries").into());
            }
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(Error::invalid("metadata", format!("metadata.{k} must be a string")).into());
                };
                if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 1024 {
                    return Err(Error::invalid(
                        "metadata",
                        "metadata keys are 1 to 128 characters and values at most 1024",
                    )
                    .into());
                }
                out.insert(k.clone(), v.clone());
            }
            Some(out)
        }
        Some(_) => return Err(Error::invalid("metadata", "metadata must be an object of strings").into()),
    };
    let create = CreateSession {
        user: req_ident(&body, "userId")?,
        feature: req_ident(&body, "feature")?,
        device: opt_ident(&body, "deviceId")?,
        idempotency_key: opt_ident(&body, "idempotencyKey")?,
        metadata,
        license: opt_ident(&body, "licenseId")?,
    };
    let s = svc.create_session(key, create).await?;
    let mut out = json!({
        "sessionToken": s.token,
        "sessionId": s.session_id,
        "licenseId": s.license,
        "userId": s.user,
        "feature": s.feature,
        "deviceId": s.device,
        "createdAt": rfc3339_ms(s.created_ms),
        "expiresAt": rfc3339_ms(s.expires_ms),
        "heartbeatIntervalSeconds": s.policy.heartbeat_interval_seconds,
        "leaseTtlSeconds": s.policy.lease_ttl_seconds,
        "seats": {"limit": s.policy.max_sessions, "active": s.active},
    });
    if let Some(replaced) = s.replaced_session_id {
        out["replacedSessionId"] = replaced.into();
    }
    let status = if s.replay { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json_response(status, out))
}

/// A session token from the Authorization header or, for keepalive fetches and beacons, the body.
/// A header that carries some other credential (a page's own auth, sent along by a keepalive
/// `fetch`) gives way to the body's token.
fn session_token(req: &Request) -> Result<String, ApiError> {
    let header = bearer(req);
    if let Some(t) = header.filter(|t| crate::token::parse_session_token(t).is_some()) {
        return Ok(t.to_owned());
    }
    let body = body_object(req)?;
    opt_str(&body, "sessionToken")?.or(header).map(str::to_owned).ok_or_else(|| {
        Error::Unauthorized("missing session token: use Authorization: Bearer <sessionToken> or {\"sessionToken\"}")
            .into()
    })
}

async fn heartbeat(svc: &Service, req: &Request) -> ApiResult {
    body_object(req)?;
    let token = session_token(req)?;
    let r = svc.heartbeat(&token).await?;
    json_ok(json!({
        "sessionId": r.session_id,
        "expiresAt": rfc3339_ms(r.expires_ms),
        "heartbeatIntervalSeconds": r.heartbeat_interval_seconds,
        "resurrected": r.resurrected,
    }))
}

async fn cleanup_session(svc: &Service, req: &Request) -> ApiResult {
    body_object(req)?;
    let token = session_token(req)?;
    let c = svc.cleanup(&token).await?;
    json_ok(match c.reason {
        Some(reason) => json!({"ended": c.ended, "reason": reason.as_str()}),
        None => json!({"ended": c.ended}),
    })
}

// ---- licenses ----

pub(crate) fn license_json(l: &License) -> Value {
    json!({
        "licenseId": l.id,
        "features": l.features.iter().map(|(f, p)| (f.to_string(), json!(p))).collect::<Map<_, _>>(),
        "createdAt": rfc3339_ms(l.created_at_ms),
        "updatedAt": rfc3339_ms(l.updated_at_ms),
    })
}

async fn put_license(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let id = path_ident(params, "licenseId")?;
    caller.check_service()?;
    let body = body_object(req)?;
    let key = opt_str(&body, "key")?.map(str::to_owned);
    let features = match body.get("features") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(name, v)| {
                let path = feature_field(name, None);
                let Value::Object(policy) = v else {
                    return Err(Error::invalid_owned(path.clone(), format!("{path} must be an object")));
                };
                serde_json::from_value::<FeaturePolicyInput>(Value::Object(whole_numbers(policy)))
                    .map(|p| (name.clone(), p))
                    .map_err(|e| Error::invalid_owned(path.clone(), format!("{path}: {e}")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        None | Some(Value::Null) => return Err(Error::invalid("features", "features is required").into()),
        Some(_) => return Err(Error::invalid("features", "features must be an object").into()),
    };
    let written = svc.put_license(id, PutLicense { key, features }).await?;
    let mut out = license_json(&written.license);
    if let Some(key) = written.generated_key {
        out["key"] = key.into();
    }
    Ok(json_response(if written.created { StatusCode::CREATED } else { StatusCode::OK }, out))
}

/// A policy with its integral floats (`90.0`, as some JSON encoders write every number) made
/// integers: JSON does not tell `90.0` from `90`, nor does the document's `integer` (JSON Schema
/// counts a number with no fractional part as an integer), so both are the whole number 90.
/// Fractions and values beyond 2^53 (not exact as floats, and out of every policy bound) stay as
/// given, for the policy's own checks to refuse.
fn whole_numbers(policy: &Map<String, Value>) -> Map<String, Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    policy
        .iter()
        .map(|(k, v)| {
            let whole = match v.as_f64() {
                Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() <= EXACT => Some(Value::from(f as i64)),
                _ => None,
            };
            (k.clone(), whole.unwrap_or_else(|| v.clone()))
        })
        .collect()
}

async fn delete_license(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let id = path_ident(params, "licenseId")?;
    caller.check_service()?;
    let ended = svc.delete_license(id.clone()).await?;
    json_ok(json!({"licenseId": id, "ended": ended}))
}

async fn get_license(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let id = path_ident(params, "licenseId")?;
    caller.check_license(&id)?;
    json_ok(license_json(&svc.get_license(id).await?))
}

async fn health(svc: &Service) -> ApiResult {
    let h = svc.health().await;
    let word = |s: &Option<Vec<String>>| match s {
        None => "down",
        Some(p) if p.is_empty() => "ok",
        Some(_) => "degraded",
    };
    let mut body = json!({
        "status": if h.ok() { "ok" } else { "degraded" },
        "seatStore": word(&h.seat_store),
        "ledger": word(&h.ledger),
    });
    let problems: Vec<&String> = [&h.seat_store, &h.ledger].into_iter().flatten().flatten().collect();
    if !problems.is_empty() {
        body["problems"] = json!(problems);
    }
    if h.ok() {
        json_ok(body)
    } else {
        let mut resp = json_response(StatusCode::SERVICE_UNAVAILABLE, body);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5u64));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_and_decode_parameters() {
        let p = match_template("/api/licenses/{licenseId}", "/api/licenses/ab%40c").unwrap();
        assert_eq!(p["licenseId"], "ab@c");
        assert!(match_template("/api/licenses/{licenseId}", "/api/other/x").is_none());
        // A stage prefix in front does not matter.
        assert!(match_template("/health", "/prod/health").is_some());
        assert!(match_template("/api/licenses/{licenseId}", "/api/licenses/").is_none());
    }

    #[test]
    fn every_route_is_unique_and_literal_routes_win() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "{} twice", a.path);
                assert_ne!(a.operation_id, b.operation_id);
            }
        }
        assert!(literal_segments("/api/licenses/sessions") > literal_segments("/api/licenses/{licenseId}"));
    }

    #[test]
    fn integral_floats_of_a_policy_are_whole_numbers() {
        let policy = json!({"maxSessions": 10.0, "leaseTtlSeconds": -1.0, "heartbeatIntervalSeconds": 2.5,
                            "resurrectWindowSeconds": 1e300, "maxSessionsPerUser": 3, "onLimit": "reject"});
        let Value::Object(policy) = policy else { unreachable!() };
        let out = Value::Object(whole_numbers(&policy));
        assert_eq!(out["maxSessions"], json!(10));
        assert!(out["maxSessions"].is_u64());
        assert!(out["leaseTtlSeconds"].is_i64());
        assert!(out["heartbeatIntervalSeconds"].is_f64(), "a fraction stays, to be refused");
        assert!(out["resurrectWindowSeconds"].is_f64(), "beyond 2^53 stays, to be refused");
        assert_eq!(out["maxSessionsPerUser"], json!(3));
        assert_eq!(out["onLimit"], "reject");
    }

    #[test]
    fn errors_take_the_contract_shape() {
        let resp = ApiError::from(Error::SeatLimitReached {
            scope: crate::domain::LimitScope::License,
            limit: 2,
            active: 2,
            retry_after_seconds: 7,
        })
        .into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        let Body::Text(t) = resp.body() else { panic!("text body") };
        let v: Value = serde_json::from_str(t).unwrap();
        assert_eq!(v["error"]["code"], "seat_limit_reached");
        assert_eq!(v["error"]["message"], "Maximum user limit reached");
        assert_eq!(v["error"]["retryAfterSeconds"], 7);

        let resp = ApiError::from(Error::ledger("SELECT secret FROM x failed")).into_response();
        let Body::Text(t) = resp.body() else { panic!("text body") };
        assert!(!t.contains("SELECT"), "no internals leak: {t}");
    }
}
