//! The ledger: the durable history of licenses and sessions, and what the seat store is rebuilt
//! from. This module holds the `Ledger` trait and the rows it speaks; each backend is a room of
//! its own, and nothing outside this folder names one:
//! - [`sql`]: SQLite, PostgreSQL and MySQL/MariaDB through sqlx's `Any` driver with portable SQL;
//! - [`dynamo`] (feature `dynamodb`): DynamoDB, for Lambda.
//!
//! Session history reaches it through the seat store's outbox (`service::outbox`), in batches.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::domain::{EndReason, FeaturePolicy, Ident, License, Slot};
use crate::error::Result;

#[cfg(feature = "dynamodb")]
pub mod dynamo;
#[cfg(feature = "sql")]
pub mod sql;

#[cfg(feature = "sql")]
pub use sql::SqlLedger;

/// A session as the ledger records it. `status` is `active` or an end reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: String,
    pub license_id: String,
    pub feature: String,
    pub user_id: String,
    pub device_id: Option<String>,
    pub token_hash: String,
    pub idempotency_key: Option<String>,
    pub metadata: Option<String>,
    pub status: String,
    pub created_at_ms: i64,
    pub last_heartbeat_at_ms: i64,
    pub expires_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

pub const ACTIVE: &str = "active";

impl SessionRow {
    pub fn slot(&self) -> Option<Slot> {
        Some(Slot {
            license: Ident::parse("licenseId", &self.license_id).ok()?,
            feature: Ident::parse("feature", &self.feature).ok()?,
        })
    }
}

/// The end of a session, to record.
#[derive(Clone, Debug)]
pub struct SessionEnd {
    pub session_id: String,
    pub reason: EndReason,
    pub ended_at_ms: i64,
    /// Written back from the seat store, where heartbeats are kept.
    pub last_heartbeat_at_ms: Option<i64>,
}

/// A new session to record, with the ends it caused (takeover, eviction).
#[derive(Clone, Debug)]
pub struct NewSession {
    pub row: SessionRow,
    pub ends: Vec<SessionEnd>,
}

/// What `put_license` did.
#[derive(Debug)]
pub struct PutLicense {
    pub created: bool,
    pub license: License,
    /// Features the write removed: their slots are to be revoked.
    pub removed: Vec<Ident>,
}

/// A slot the sweep visits. A removed feature's sessions are to be ended (`revoked`) before the
/// slot is forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    pub slot: Slot,
    /// When its feature was taken off the license, if it was.
    pub removed_at_ms: Option<i64>,
}

/// A session's span, for peak concurrency: `end` is when it ended, or `None` while the ledger
/// holds it active (the caller knows its lease better).
#[derive(Clone, Debug)]
pub struct SessionSpan {
    pub session_id: String,
    pub feature: String,
    pub created_ms: i64,
    pub end_ms: Option<i64>,
    pub expires_ms: i64,
}

/// Counters of one feature over a stats window.
#[derive(Debug, Default, Clone)]
pub struct FeatureStats {
    pub created: u64,
    pub ended_by: BTreeMap<&'static str, u64>,
    pub limit_rejections: u64,
    /// The sessions that overlap the window, for peak concurrency.
    pub spans: Vec<SessionSpan>,
}

/// A license-scoped admin token as the ledger keeps it: never the token, only its SHA-256 hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminTokenRow {
    pub token_id: String,
    pub license_id: String,
    pub token_hash: String,
    pub created_at_ms: i64,
}

/// A feature's history over a window, for the usage series: the spans of the sessions that
/// overlap it, and the refused creates per minute (minute start ms, how many) within it.
#[derive(Debug, Default, Clone)]
pub struct UsageHistory {
    pub spans: Vec<SessionSpan>,
    pub rejections: Vec<(i64, u64)>,
}

/// The ledger a URL names: `dynamodb://...`, else an SQL database, each with its cargo feature
/// (`dynamodb`, `sqlite`, `postgres`, `mysql`); a URL whose feature this build lacks is an error
/// that names the feature. Connects lazily: fails only on a malformed URL. `pool_size`:
/// connections, or DynamoDB requests in flight.
#[allow(unreachable_code, unused_variables)] // what is unreachable depends on the features
pub async fn open(url: &str, pool_size: u32) -> Result<std::sync::Arc<dyn Ledger>> {
    if url.starts_with("dynamodb:") {
        #[cfg(feature = "dynamodb")]
        return Ok(std::sync::Arc::new(dynamo::DynamoLedger::connect_with(url, pool_size).await?));
    } else {
        #[cfg(feature = "sql")]
        return Ok(std::sync::Arc::new(SqlLedger::connect_with(url, pool_size).await?));
    }
    Err(crate::error::Error::ledger(missing_feature(url)))
}

/// Which cargo feature serves a ledger URL's scheme, for the error of a build without it.
pub fn missing_feature(url: &str) -> String {
    let scheme = url.split(':').next().unwrap_or("");
    let feature = match scheme {
        "dynamodb" => "dynamodb",
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "mysql" | "mariadb" => "mysql",
        _ => {
            return format!(
                "unsupported ledger URL scheme {scheme:?}: use sqlite://, postgres://, mysql:// or dynamodb://"
            )
        }
    };
    format!("{scheme}:// ledgers need seatkeeper-core's `{feature}` feature, which this build leaves out")
}

#[async_trait]
pub trait Ledger: Send + Sync {
    async fn ping(&self) -> Result<()>;
    /// Creates or replaces a license with exactly these features, and bumps its version; features
    /// left out are marked removed. `key_hash` is required on creation.
    async fn put_license(
        &self,
        id: &Ident,
        key_hash: Option<&str>,
        features: &BTreeMap<Ident, FeaturePolicy>,
        now_ms: i64,
    ) -> Result<PutLicense>;
    async fn license(&self, id: &Ident) -> Result<Option<License>>;
    /// Up to `limit` license ids after `after`, in the ledger's order of ids: a page of the
    /// operator's list. This default reads the slots (every license with a feature, removed ones
    /// included until the sweep forgets them) and keeps the licenses that still exist; a backend
    /// with a table of licenses reads that instead.
    async fn license_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<Ident>> {
        let ids: std::collections::BTreeSet<Ident> = self.slots().await?.into_iter().map(|e| e.slot.license).collect();
        let mut out = Vec::with_capacity(limit);
        for id in ids.into_iter().filter(|id| after.is_none_or(|a| id.as_str() > a)) {
            if out.len() == limit {
                break;
            }
            if self.license(&id).await?.is_some() {
                out.push(id);
            }
        }
        Ok(out)
    }
    /// Removes a license, and its admin tokens with it: its key stops working at once, its features stay marked removed until the
    /// sweep has ended their sessions. Returns the features it had, or `None` for an unknown license.
    async fn delete_license(&self, id: &Ident, now_ms: i64) -> Result<Option<Vec<Ident>>>;
    async fn license_by_key_hash(&self, key_hash: &str) -> Result<Option<License>>;
    /// Records a new session and, in the same transaction, the ends it caused (takeover, eviction).
    /// A session already recorded is left as it is (a replayed create may write it first).
    async fn insert_session(&self, row: &SessionRow, ends: &[SessionEnd]) -> Result<()>;
    /// Records a batch: new sessions (each as `insert_session`) and ends of
    /// sessions whose seats are already free (as `end_sessions`), in as few transactions as the
    /// backend allows. Returns each new session's result, in order, and the ids `ends` changed.
    /// (A wrapper around a ledger must pass this on, or it writes one row at a time.)
    async fn record(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> (Vec<Result<()>>, Result<Vec<String>>) {
        let mut out = Vec::with_capacity(sessions.len());
        for s in sessions {
            out.push(self.insert_session(&s.row, &s.ends).await);
        }
        let ended = if ends.is_empty() { Ok(Vec::new()) } else { self.end_sessions(ends).await };
        (out, ended)
    }
    /// Records ends of sessions still active in the ledger (the lease's expiry becomes the end
    /// time); returns the ids it changed.
    async fn end_sessions(&self, ends: &[SessionEnd]) -> Result<Vec<String>>;
    async fn session(&self, session_id: &str) -> Result<Option<SessionRow>>;
    async fn active_sessions(&self, slot: &Slot) -> Result<Vec<SessionRow>>;
    /// Records refused creates: (minute start ms, how many refused in that minute).
    async fn record_limit_rejections(&self, slot: &Slot, counts: &[(i64, u64)]) -> Result<()>;
    /// Every (license, feature) pair of every license, removed features included: the slots a
    /// sweep visits.
    async fn slots(&self) -> Result<Vec<SlotEntry>>;
    /// The slots of every active session (a full sweep's check that no slot is out of sight).
    async fn active_slots(&self) -> Result<Vec<Slot>>;
    /// Forgets a removed feature once its sessions are all ended (a feature put back meanwhile stays).
    async fn forget_removed_feature(&self, slot: &Slot) -> Result<()>;
    /// Sessions of a user for a feature that are active or ended since `since_ms`.
    async fn user_sessions(&self, user: &Ident, feature: &Ident, since_ms: i64) -> Result<Vec<SessionRow>>;
    /// Sets heartbeat times of active sessions from the seat store: (session id, last heartbeat, expiry).
    async fn write_heartbeats(&self, beats: &[(String, i64, i64)]) -> Result<u64>;
    /// Counters per feature of a license over `[since_ms, now_ms]`, with the spans of its sessions.
    async fn stats(&self, license: &Ident, since_ms: i64, now_ms: i64) -> Result<BTreeMap<String, FeatureStats>>;
    /// Records a new license-scoped admin token (by its hash), unless the license is gone: `false`
    /// then. A license deleted meanwhile never keeps a token.
    async fn create_admin_token(&self, license: &Ident, token_id: &str, token_hash: &str, now_ms: i64) -> Result<bool>;
    /// The admin token with this hash, read consistently (a revoked token is gone at once).
    async fn admin_token(&self, token_hash: &str) -> Result<Option<AdminTokenRow>>;
    /// Removes one token of a license; `false` when the license has no such token.
    async fn revoke_admin_token(&self, license: &Ident, token_id: &str) -> Result<bool>;
    /// A feature's session spans and refusals over `[from_ms, to_ms)`: the sessions created before
    /// `to_ms` that were active or ended at or after `from_ms`, and the refusal counts of the
    /// minutes that start within the window.
    async fn usage(&self, slot: &Slot, from_ms: i64, to_ms: i64) -> Result<UsageHistory>;
    /// Applies the ledger's schema migrations. Never run implicitly by connecting: `seatkeeper
    /// migrate` and the local runner's start call it, Lambda cold starts do not. A ledger with no
    /// schema of its own has nothing to do; a wrapper should pass the call on.
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }
}

/// The largest number of intervals `[start, end)` that overlap at one instant at or after `from`.
pub fn peak_overlap(intervals: &[(i64, i64)], from: i64) -> u64 {
    let mut points: Vec<(i64, i64)> = Vec::with_capacity(intervals.len() * 2);
    for &(start, end) in intervals {
        if end > from && end > start {
            points.push((start.max(from), 1));
            points.push((end, -1));
        }
    }
    // Ends sort before starts at the same instant: a seat handed over is not two seats.
    points.sort_by_key(|&(t, d)| (t, d));
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in points {
        cur += d;
        peak = peak.max(cur);
    }
    peak as u64
}

#[cfg(test)]
mod tests {
    /// A build without a backend's feature refuses its URLs with an error naming the feature; a
    /// build with it opens them (lazily: nothing is connected here).
    #[test]
    fn a_url_whose_driver_is_left_out_names_its_feature() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cases = [
            ("sqlite::memory:", "sqlite", cfg!(feature = "sqlite")),
            ("postgres://u:p@127.0.0.1:1/db", "postgres", cfg!(feature = "postgres")),
            ("mariadb://u:p@127.0.0.1:1/db", "mysql", cfg!(feature = "mysql")),
            ("dynamodb://t?region=us-east-1&endpoint=http://127.0.0.1:1", "dynamodb", cfg!(feature = "dynamodb")),
        ];
        for (url, feature, built) in cases {
            if built && feature == "dynamodb" {
                continue; // opening reads the AWS environment; the DynamoDB tests cover it
            }
            match rt.block_on(super::open(url, 1)) {
                Ok(_) => assert!(built, "{url} opened without the `{feature}` feature"),
                Err(e) => {
                    assert!(!built, "{url}: {e}");
                    assert!(format!("{e:?}").contains(&format!("`{feature}` feature")), "{url}: {e:?}");
                }
            }
        }
        let err = rt.block_on(super::open("redis://x", 1)).err().expect("not a ledger");
        assert!(format!("{err:?}").contains("unsupported ledger URL scheme"), "{err:?}");
    }

    use super::peak_overlap;

    #[test]
    fn peak_counts_overlaps_within_the_window() {
        assert_eq!(peak_overlap(&[], 0), 0);
        assert_eq!(peak_overlap(&[(0, 10), (5, 15), (12, 20)], 0), 2);
        // A handover at the same instant is one seat, not two.
        assert_eq!(peak_overlap(&[(0, 10), (10, 20)], 0), 1);
        // Sessions that ended before the window do not count.
        assert_eq!(peak_overlap(&[(0, 10), (5, 15)], 12), 1);
    }
}
