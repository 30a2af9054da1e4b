//! The console, `GET /admin`: a page, its script and its stylesheet, built into the binary (no CDN,
//! no build step). The page holds no data of its own: it calls the operator routes with the token
//! the operator types in, which it keeps in memory only. Served under a strict
//! Content-Security-Policy: nothing inline, nothing from another origin, no framing.

use lambda_http::http::{header, HeaderValue};
use lambda_http::{Body, Response};

use super::ApiError;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// What the console's page may load and do: its own script, style and API calls, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's answer for `path` (`/admin` and what is under it; an unknown asset is the
/// contract's `404`), with the same security headers on every answer.
pub fn console(path: &str) -> Response<Body> {
    let asset = match path.trim_end_matches('/') {
        "/admin" | "/admin/index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "/admin/console.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/admin/console.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    };
    let mut resp = match asset {
        Some((text, kind)) => {
            let mut r = Response::new(Body::Text(text.to_owned()));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            r
        }
        None => ApiError::not_found(format!("no console page {path}")).into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether a request path is the console's.
pub fn is_console(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::StatusCode;

    #[test]
    fn pages_carry_a_strict_policy_and_nothing_inline() {
        let page = console("/admin");
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
        // Nothing the policy would block: no inline script or style, no other origin.
        for bad in ["<script>", "style=", "onclick=", "http://", "https://"] {
            assert!(!INDEX.contains(bad), "index.html holds {bad}");
        }
        assert!(!SCRIPT.contains("innerHTML"), "values are shown as text, never parsed as HTML");
        assert!(!SCRIPT.contains("localStorage") && !SCRIPT.contains("sessionStorage"), "the token is kept in memory");
        let missing = console("/admin/nope.js");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
