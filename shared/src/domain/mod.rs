//! Domain types: identifiers, feature policies, session states. Pure logic, no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod error;

use error::Error;

/// An identifier of the contract: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub const MAX_LEN: usize = 128;

    /// Validates `value` as the field called `field` (the name goes into the error message).
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Error> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
        if ok {
            Ok(Ident(value.to_owned()))
        } else {
            Err(Error::invalid(field, format!("{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A license key as the client sends it: 1 to 256 visible ASCII characters.
pub fn validate_license_key(field: &'static str, key: &str) -> Result<(), Error> {
    if !key.is_empty() && key.len() <= 256 && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("{field} must be 1 to 256 visible ASCII characters")))
    }
}

/// What happens when a create finds every seat taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    #[default]
    Reject,
    EvictIdle,
}

impl OnLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Reject => "reject",
            OnLimit::EvictIdle => "evict_idle",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(OnLimit::Reject),
            "evict_idle" => Some(OnLimit::EvictIdle),
            _ => None,
        }
    }
}

/// The policy of one feature of a license, every field resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeaturePolicy {
    pub max_sessions: u32,
    pub max_sessions_per_user: Option<u32>,
    pub on_limit: OnLimit,
    pub lease_ttl_seconds: u32,
    pub heartbeat_interval_seconds: u32,
    pub resurrect_window_seconds: u32,
}

/// A feature policy as a client writes it: optional fields fall back to the service's defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeaturePolicyInput {
    pub max_sessions: Option<serde_json::Value>,
    pub max_sessions_per_user: Option<serde_json::Value>,
    pub on_limit: Option<serde_json::Value>,
    pub lease_ttl_seconds: Option<serde_json::Value>,
    pub heartbeat_interval_seconds: Option<serde_json::Value>,
    pub resurrect_window_seconds: Option<serde_json::Value>,
}

/// Service-wide defaults for fields a feature policy leaves out.
#[derive(Clone, Copy, Debug)]
pub struct PolicyDefaults {
    pub lease_ttl_seconds: u32,
    pub heartbeat_interval_seconds: u32,
}

/// Longest lease or window accepted: one day. Longer leases defeat the point of leasing.
const MAX_SECONDS: u64 = 86_400;
const MAX_SEATS: u64 = 1_000_000;

fn int_field(field: String, value: &Option<serde_json::Value>, min: u64, max: u64) -> Result<Option<u32>, Error> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n as u32)),
            _ => {
                Err(Error::invalid_owned(field.clone(), format!("{field} must be a whole number from {min} to {max}")))
            }
        },
    }
}

/// The path of a feature's policy, or of one of its fields, as errors name it: `features.webrtc`
/// and `features.webrtc.maxSessions` for a name that is a plain identifier, else the bracket form
/// `features["a.b"].maxSessions`, so that a name holding `.` or `:` maps back to its input.
pub fn feature_field(feature: &str, field: Option<&str>) -> String {
    let plain = feature.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && feature.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let base = if plain { format!("features.{feature}") } else { format!("features[\"{feature}\"]") };
    match field {
        Some(f) => format!("{base}.{f}"),
        None => base,
    }
}

impl FeaturePolicyInput {
    /// Resolves the input into a full policy; `feature` names the feature in error messages.
    pub fn resolve(&self, feature: &str, defaults: PolicyDefaults) -> Result<FeaturePolicy, Error> {
        let name = |f: &str| feature_field(feature, Some(f));
        let max_sessions = int_field(name("maxSessions"), &self.max_sessions, 0, MAX_SEATS)?
            .ok_or_else(|| Error::invalid_owned(name("maxSessions"), format!("{} is required", name("maxSessions"))))?;
        let max_sessions_per_user = int_field(name("maxSessionsPerUser"), &self.max_sessions_per_user, 1, MAX_SEATS)?;
        let on_limit = match &self.on_limit {
            None | Some(serde_json::Value::Null) => OnLimit::Reject,
            Some(v) => v.as_str().and_then(OnLimit::parse).ok_or_else(|| {
                Error::invalid_owned(
                    name("onLimit"),
                    format!("{} must be \"reject\" or \"evict_idle\"", name("onLimit")),
                )
            })?,
        };
        let lease_ttl_seconds = int_field(name("leaseTtlSeconds"), &self.lease_ttl_seconds, 1, MAX_SECONDS)?
            .unwrap_or(defaults.lease_ttl_seconds);
        let heartbeat_interval_seconds =
            int_field(name("heartbeatIntervalSeconds"), &self.heartbeat_interval_seconds, 1, MAX_SECONDS)?
                .unwrap_or_else(|| defaults.heartbeat_interval_seconds.min((lease_ttl_seconds / 3).max(1)));
        if heartbeat_interval_seconds > lease_ttl_seconds {
            return Err(Error::invalid_owned(
                name("heartbeatIntervalSeconds"),
                format!("{} must not exceed leaseTtlSeconds", name("heartbeatIntervalSeconds")),
            ));
        }
        let resurrect_window_seconds =
            int_field(name("resurrectWindowSeconds"), &self.resurrect_window_seconds, 0, MAX_SECONDS)?.unwrap_or(0);
        Ok(FeaturePolicy {
            max_sessions,
            max_sessions_per_user,
            on_limit,
            lease_ttl_seconds,
            heartbeat_interval_seconds,
            resurrect_window_seconds,
        })
    }
}

/// A license as the ledger keeps it (its key only as a hash).
#[derive(Clone, Debug)]
pub struct License {
    pub id: Ident,
    pub features: BTreeMap<Ident, FeaturePolicy>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Grows with every write of the license: the seat store keeps the newest policy it was given.
    pub version: i64,
}

/// Why a session is over. The strings are the contract's `reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    Expired,
    Ended,
    Evicted,
    Replaced,
    ForceEnded,
    /// Its feature or license was removed.
    Revoked,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::Expired,
        EndReason::Ended,
        EndReason::Evicted,
        EndReason::Replaced,
        EndReason::ForceEnded,
        EndReason::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Ended => "ended",
            EndReason::Evicted => "evicted",
            EndReason::Replaced => "replaced",
            EndReason::ForceEnded => "force_ended",
            EndReason::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Which limit a refused create ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    License,
    User,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::License => "license",
            LimitScope::User => "user",
        }
    }
}

/// The (license, feature) pair that one set of seats belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub license: Ident,
    pub feature: Ident,
}

/// This process's clock in Unix milliseconds: for ledger bookkeeping (stats windows, refused
/// creates), never for lease decisions, which the Redis server's clock takes.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC string with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whole seconds from `now_ms` until `until_ms`, rounded up, at least 1.
pub fn seconds_until(now_ms: i64, until_ms: i64) -> u64 {
    let ms = (until_ms - now_ms).max(1) as u64;
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: serde_json::Value) -> FeaturePolicyInput {
        serde_json::from_value(v).unwrap()
    }

    const DEFAULTS: PolicyDefaults = PolicyDefaults { lease_ttl_seconds: 90, heartbeat_interval_seconds: 30 };

    #[test]
    fn identifiers_accept_the_contract_alphabet_only() {
        assert!(Ident::parse("userId", "a.B_9:x@y-z").is_ok());
        assert!(Ident::parse("userId", &"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "é", "{x}", &"a".repeat(129)] {
            let err = Ident::parse("userId", bad).unwrap_err();
            assert!(err.to_string().contains("userId"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn license_keys_are_visible_ascii() {
        assert!(validate_license_key("key", "abc!~").is_ok());
        assert!(validate_license_key("key", "").is_err());
        assert!(validate_license_key("key", "a b").is_err());
        assert!(validate_license_key("key", &"k".repeat(257)).is_err());
    }

    #[test]
    fn policy_defaults_fill_missing_fields() {
        let p = input(json!({"maxSessions": 3})).resolve("f", DEFAULTS).unwrap();
        assert_eq!(p.max_sessions, 3);
        assert_eq!(p.lease_ttl_seconds, 90);
        assert_eq!(p.heartbeat_interval_seconds, 30);
        assert_eq!(p.on_limit, OnLimit::Reject);
        assert_eq!(p.max_sessions_per_user, None);
        assert_eq!(p.resurrect_window_seconds, 0);
    }

    #[test]
    fn short_leases_get_a_heartbeat_that_fits() {
        let p = input(json!({"maxSessions": 1, "leaseTtlSeconds": 2})).resolve("f", DEFAULTS).unwrap();
        assert_eq!(p.heartbeat_interval_seconds, 1);
        let p = input(json!({"maxSessions": 1, "leaseTtlSeconds": 1})).resolve("f", DEFAULTS).unwrap();
        assert_eq!(p.heartbeat_interval_seconds, 1);
    }

    #[test]
    fn policy_errors_name_the_field() {
        let cases = [
            (json!({}), "features.f.maxSessions"),
            (json!({"maxSessions": -1}), "features.f.maxSessions"),
            (json!({"maxSessions": "3"}), "features.f.maxSessions"),
            (json!({"maxSessions": 1, "onLimit": "kick"}), "features.f.onLimit"),
            (json!({"maxSessions": 1, "leaseTtlSeconds": 0}), "features.f.leaseTtlSeconds"),
            (json!({"maxSessions": 1, "maxSessionsPerUser": 0}), "features.f.maxSessionsPerUser"),
            (
                json!({"maxSessions": 1, "leaseTtlSeconds": 10, "heartbeatIntervalSeconds": 11}),
                "features.f.heartbeatIntervalSeconds",
            ),
        ];
        for (v, field) in cases {
            let err = input(v.clone()).resolve("f", DEFAULTS).unwrap_err();
            assert!(err.to_string().contains(field), "{v}: {err}");
        }
    }

    #[test]
    fn a_feature_name_that_is_not_a_plain_identifier_is_bracketed() {
        assert_eq!(super::feature_field("webrtc_ext2", Some("maxSessions")), "features.webrtc_ext2.maxSessions");
        assert_eq!(super::feature_field(":", Some("maxSessions")), "features[\":\"].maxSessions");
        assert_eq!(super::feature_field("a.b", None), "features[\"a.b\"]");
        assert_eq!(super::feature_field("2fa", None), "features[\"2fa\"]");
        let err = input(json!({"maxSessions": -1})).resolve("a.b", DEFAULTS).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest { field: Some(f), .. } if f == "features[\"a.b\"].maxSessions"),
            "{err:?}"
        );
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(seconds_until(0, 1), 1);
        assert_eq!(seconds_until(0, 1000), 1);
        assert_eq!(seconds_until(0, 1001), 2);
        assert_eq!(seconds_until(5, 0), 1);
    }

    #[test]
    fn end_reasons_round_trip() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(EndReason::parse("active"), None);
    }
}
