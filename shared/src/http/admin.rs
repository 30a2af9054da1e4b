//! The admin routes' HTTP mapping: requests to the service's admin operations, and their answers in
//! the contract's JSON.

use std::collections::BTreeMap;

use lambda_http::Request;
use serde_json::{json, Map, Value};

use super::{
    authorize, body_object, json_created, json_ok, license_json, opt_ident, path_ident, query_ident, query_time,
    query_u64, query_u64_in, ApiResult,
};
use crate::domain::{now_ms, rfc3339_ms, EndReason};
use crate::error::Error;
use crate::ops::licenses::MAX_PAGE;
use crate::ops::usage::{MAX_STEP_SECONDS, MIN_STEP_SECONDS};
use crate::service::Service;

pub async fn force_cleanup(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let user = path_ident(params, "userId")?;
    let feature = path_ident(params, "feature")?;
    let license = caller.narrow(query_ident(req, "licenseId", false)?)?;
    let done = svc.force_cleanup(&user, &feature, license.as_ref()).await?;
    json_ok(json!({"userId": user, "feature": feature, "ended": done.ended.len(), "sessionIds": done.ended}))
}

pub async fn debug(svc: &Service, req: &Request) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let user = query_ident(req, "userId", true)?.expect("required");
    let feature = query_ident(req, "feature", true)?.expect("required");
    let license = caller.narrow(query_ident(req, "licenseId", false)?)?;
    let view = svc.debug(&user, &feature, license.as_ref()).await?;
    let time = |t: Option<i64>| t.map(rfc3339_ms);
    json_ok(json!({
        "userId": user,
        "feature": feature,
        "sessions": view.sessions.iter().map(|s| json!({
            "sessionId": s.session_id,
            "licenseId": s.license,
            "deviceId": s.device,
            "status": s.status,
            "createdAt": time(s.created_ms),
            "lastHeartbeatAt": time(s.last_heartbeat_ms),
            "expiresAt": time(s.expires_ms),
            "inSeatStore": s.in_seat_store,
            "inLedger": s.in_ledger,
        })).collect::<Vec<_>>(),
        "omittedSessions": view.omitted,
        "licenses": view.licenses.iter().map(|l| json!({
            "licenseId": l.license,
            "limit": l.limit,
            "active": l.seat_store_active,
            "seatStoreActive": l.seat_store_active,
            "ledgerActive": l.ledger_active,
            "consistent": l.consistent,
        })).collect::<Vec<_>>(),
    }))
}

pub async fn cleanup_sessions(svc: &Service, req: &Request) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let body = body_object(req)?;
    let license = caller
        .narrow(opt_ident(&body, "licenseId")?)?
        .ok_or_else(|| Error::invalid("licenseId", "licenseId is required"))?;
    let user = opt_ident(&body, "userId")?;
    let feature = opt_ident(&body, "feature")?;
    let r = svc.cleanup_license(&license, user, feature).await?;
    json_ok(json!({
        "licenseId": license,
        "expired": r.expired,
        "orphansRemoved": r.orphans_removed(),
        "repaired": r.repaired,
        "orphanSeats": r.orphan_seats,
        "orphanRows": r.orphan_rows,
        "heartbeatsWritten": r.heartbeats_written,
    }))
}

pub async fn session_stats(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_license(&license)?;
    let window = query_u64(req, "windowSeconds", 86_400, 366 * 86_400)?;
    let stats = svc.session_stats(&license, window).await?;
    let features: Map<String, Value> = stats
        .into_iter()
        .map(|(f, v)| {
            let ended = |r: EndReason| v.stats.ended_by.get(r.as_str()).copied().unwrap_or(0);
            (
                f,
                json!({
                    "limit": v.limit,
                    "active": v.active,
                    "peakActive": v.peak_active,
                    "created": v.stats.created,
                    "ended": ended(EndReason::Ended),
                    "expired": ended(EndReason::Expired),
                    "evicted": ended(EndReason::Evicted),
                    "replaced": ended(EndReason::Replaced),
                    "forceEnded": ended(EndReason::ForceEnded),
                    "revoked": ended(EndReason::Revoked),
                    "limitRejections": v.stats.limit_rejections,
                    "averageSessionSeconds": v.average_session_seconds,
                }),
            )
        })
        .collect();
    json_ok(json!({"licenseId": license, "windowSeconds": window, "features": features}))
}

pub async fn list_licenses(svc: &Service, req: &Request) -> ApiResult {
    authorize(svc, req).await?.check_service()?;
    let limit = query_u64(req, "limit", 50, MAX_PAGE as u64)? as usize;
    let cursor = query_ident(req, "cursor", false)?;
    let page = svc.list_licenses(cursor.as_ref().map(|c| c.as_str()), limit).await?;
    let licenses: Vec<Value> = page
        .licenses
        .iter()
        .map(|l| {
            let mut out = license_json(&l.license);
            for (feature, seats) in &l.features {
                out["features"][feature.as_str()]["active"] = seats.active.into();
            }
            out
        })
        .collect();
    json_ok(json!({"licenses": licenses, "nextCursor": page.next}))
}

pub async fn license_sessions(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_license(&license)?;
    let feature = query_ident(req, "feature", false)?;
    let view = svc.license_sessions(&license, feature.as_ref()).await?;
    let time = |t: Option<i64>| t.map(rfc3339_ms);
    json_ok(json!({
        "licenseId": license,
        "sessions": view.sessions.iter().map(|s| json!({
            "sessionId": s.session_id,
            "userId": s.user,
            "feature": s.feature,
            "deviceId": s.device,
            "createdAt": time(s.created_ms),
            "lastHeartbeatAt": time(s.last_heartbeat_ms),
            "expiresAt": rfc3339_ms(s.expires_ms),
            "metadata": s.metadata,
            "provisional": s.provisional,
        })).collect::<Vec<_>>(),
        "features": view.features.iter().map(|(f, (limit, active))| {
            (f.to_string(), json!({"limit": limit, "active": active}))
        }).collect::<Map<String, Value>>(),
        "readAt": rfc3339_ms(view.now_ms),
    }))
}

pub async fn end_license_session(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_license(&license)?;
    let session_id = params.get("sessionId").map(String::as_str).unwrap_or("");
    json_ok(match svc.end_license_session(&license, session_id).await? {
        None => json!({"ended": true}),
        Some(reason) => json!({"ended": false, "reason": reason.as_str()}),
    })
}

pub async fn rotate_license_key(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_service()?;
    let key = svc.rotate_key(&license).await?;
    json_ok(json!({"licenseId": license, "key": key}))
}

pub async fn create_admin_token(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_service()?;
    let made = svc.create_admin_token(&license).await?;
    json_created(json!({"licenseId": license, "tokenId": made.token_id, "token": made.token}))
}

pub async fn revoke_admin_token(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_service()?;
    let token_id = params.get("tokenId").map(String::as_str).unwrap_or("");
    svc.revoke_admin_token(&license, token_id).await?;
    json_ok(json!({"revoked": true}))
}

pub async fn license_usage(svc: &Service, req: &Request, params: &BTreeMap<String, String>) -> ApiResult {
    let caller = authorize(svc, req).await?;
    let license = path_ident(params, "licenseId")?;
    caller.check_license(&license)?;
    let feature = query_ident(req, "feature", true)?.expect("required");
    let to = query_time(req, "to")?.unwrap_or_else(now_ms);
    let from = query_time(req, "from")?.unwrap_or(to - 86_400_000);
    let step = query_u64_in(req, "stepSeconds", 3_600, MIN_STEP_SECONDS, MAX_STEP_SECONDS)?;
    let points = svc.usage(&license, &feature, from, to, step).await?;
    json_ok(json!({
        "licenseId": license,
        "feature": feature,
        "from": rfc3339_ms(from),
        "to": rfc3339_ms(to),
        "stepSeconds": step,
        "points": points.iter().map(|p| json!({
            "at": rfc3339_ms(p.at_ms),
            "peakActive": p.peak_active,
            "started": p.started,
            "limitRejections": p.limit_rejections,
        })).collect::<Vec<_>>(),
    }))
}
