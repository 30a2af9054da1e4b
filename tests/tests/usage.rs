//! A feature's usage over time over HTTP, on every ledger: one point per step with zeros where
//! nothing happened, sessions started, the peak live at once, and refused creates, from the
//! ledger (and the seat store's refusals the sweep has not moved yet); bad windows are 400.

use reqwest::Method;
use seatkeeper_tests::seatkeeper_core::domain::{now_ms, rfc3339_ms};
use seatkeeper_tests::seatkeeper_core::ops::sweep::SweepScope;
use seatkeeper_tests::{ledger_tests, Backend, TestApp};
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;

fn n(p: &Value, k: &str) -> u64 {
    p[k].as_u64().unwrap_or_else(|| panic!("{k} in {p}"))
}

async fn usage_counts_starts_peaks_and_refusals_per_step(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, key) = app.simple_license(json!({"maxSessions": 2})).await;
    // Steps of a minute, aligned to the minutes the seat store counts refusals in; two before
    // anything happened.
    let from = now_ms() / MINUTE * MINUTE - 2 * MINUTE;
    let body = |user: &str| json!({"userId": user, "feature": "f"});
    let a = app.create_ok(&key, "u1").await;
    app.create_ok(&key, "u2").await;
    for user in ["u3", "u4", "u5"] {
        app.create(&key, body(user)).await.expect_error(409, "seat_limit_reached");
    }
    assert_eq!(app.cleanup(a["sessionToken"].as_str().unwrap()).await.status, 200);
    app.create_ok(&key, "u6").await; // takes the freed seat: three started, never more than two live
    let to = now_ms() + 1;
    let path = |from: i64, to: i64| {
        format!(
            "/api/licenses/{license}/usage?feature=f&from={}&to={}&stepSeconds=60",
            rfc3339_ms(from),
            rfc3339_ms(to)
        )
    };
    let check = |r: &seatkeeper_tests::Resp| {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            (&r.body["licenseId"], &r.body["feature"], &r.body["stepSeconds"]),
            (&json!(license), &json!("f"), &json!(60))
        );
        let points = r.body["points"].as_array().unwrap().clone();
        assert_eq!(points.len() as i64, (to - from + MINUTE - 1) / MINUTE, "one point per step: {r:?}");
        for (i, p) in points.iter().enumerate() {
            assert_eq!(p["at"], rfc3339_ms(from + i as i64 * MINUTE), "each step's start: {p}");
        }
        for p in &points[..2] {
            assert_eq!((n(p, "peakActive"), n(p, "started"), n(p, "limitRejections")), (0, 0, 0), "before: {p}");
        }
        let total = |k: &str| points.iter().map(|p| n(p, k)).sum::<u64>();
        assert_eq!(total("started"), 3, "{points:?}");
        assert_eq!(total("limitRejections"), 3, "{points:?}");
        assert_eq!(points.iter().map(|p| n(p, "peakActive")).max(), Some(2), "never more than the limit: {points:?}");
        assert!(n(points.last().unwrap(), "peakActive") >= 1, "two sessions still live at the end: {points:?}");
    };
    check(&app.admin(Method::GET, &path(from, to), None).await);
    // Once the sweep has moved the refusals to the ledger, the same counts (not twice).
    app.svc.sweep(&SweepScope::default()).await.expect("sweep");
    check(&app.admin(Method::GET, &path(from, to), None).await);

    // A window that ends before anything happened is all zeros.
    let early = app.admin(Method::GET, &path(from - 10 * MINUTE, from), None).await;
    let points = early.body["points"].as_array().unwrap();
    assert_eq!(points.len(), 10, "{early:?}");
    assert!(points.iter().all(|p| n(p, "peakActive") + n(p, "started") + n(p, "limitRejections") == 0), "{early:?}");

    // Defaults: the last 24 hours to now, in steps of an hour.
    let default = app.admin(Method::GET, &format!("/api/licenses/{license}/usage?feature=f"), None).await;
    assert_eq!(default.status, 200, "{default:?}");
    assert_eq!(default.body["stepSeconds"], 3600);
    let points = default.body["points"].as_array().unwrap();
    assert_eq!(points.len(), 24, "{default:?}");
    assert_eq!(points.iter().map(|p| n(p, "started")).sum::<u64>(), 3, "{default:?}");
    let last = points[23]["at"].as_str().unwrap();
    assert!(last.ends_with('Z') && last.as_bytes()[19] == b'.' && last.len() == 24, "RFC 3339 UTC with ms: {last}");
}

async fn bad_usage_queries_are_refused(b: Backend) {
    let app = TestApp::start(b).await;
    let (license, _key) = app.simple_license(json!({"maxSessions": 2})).await;
    let base = format!("/api/licenses/{license}/usage");
    for (query, field, says) in [
        ("", "feature", "feature"),
        ("?feature=bad%20name", "feature", "feature"),
        ("?feature=f&stepSeconds=59", "stepSeconds", "60"),
        ("?feature=f&stepSeconds=x", "stepSeconds", "stepSeconds"),
        ("?feature=f&stepSeconds=0", "stepSeconds", "stepSeconds"),
        ("?feature=f&from=yesterday", "from", "RFC 3339"),
        ("?feature=f&to=2026-13-01T00:00:00Z", "to", "RFC 3339"),
        ("?feature=f&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from", "before"),
        ("?feature=f&from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from", "before"),
        ("?feature=f&from=2026-01-01T00:00:00Z&to=2026-01-31T00:00:00Z&stepSeconds=60", "stepSeconds", "10000"),
    ] {
        let r = app.admin(Method::GET, &format!("{base}{query}"), None).await;
        let err = r.expect_error(400, "invalid_request");
        assert_eq!(err["field"], field, "{query}: {r:?}");
        assert!(err["message"].as_str().unwrap().contains(says), "{query}: {r:?}");
    }
    // Exactly 10,000 points is allowed.
    let ok = app
        .admin(
            Method::GET,
            &format!("{base}?feature=f&from=2026-01-01T00:00:00Z&to=2026-01-07T22:40:00Z&stepSeconds=60"),
            None,
        )
        .await;
    assert_eq!((ok.status, ok.body["points"].as_array().map(Vec::len)), (200, Some(10_000)), "{:?}", ok.status);
    app.admin(Method::GET, &format!("{base}?feature=nope"), None).await.expect_error(404, "not_found");
    app.admin(Method::GET, "/api/licenses/no-such-license/usage?feature=f", None).await.expect_error(404, "not_found");
    app.request(Method::GET, &format!("{base}?feature=f"), None, None).await.expect_error(401, "unauthorized");
}

ledger_tests!(usage_counts_starts_peaks_and_refusals_per_step, bad_usage_queries_are_refused);
