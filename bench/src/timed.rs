//! A ledger wrapper that times every call and counts the rows it asks for, so a benchmark can say
//! how much of an operation's time was spent in the ledger and how many rows a sweep touched,
//! without changing the service: `Service::new` takes any `Ledger`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use seatkeeper_core::domain::{FeaturePolicy, Ident, License, Slot};
use seatkeeper_core::ledger::{
    AdminTokenRow, FeatureStats, Ledger, NewSession, PutLicense, SessionEnd, SessionRow, SlotEntry, SqlLedger,
    UsageHistory,
};
use seatkeeper_core::Result;

pub const METHODS: [&str; 14] = [
    "ping",
    "put_license",
    "license",
    "license_by_key_hash",
    "insert_session",
    "end_sessions",
    "session",
    "active_sessions",
    "record_limit_rejections",
    "slots",
    "user_sessions",
    "write_heartbeats",
    "stats",
    "record",
];

#[derive(Default)]
pub struct MethodStats {
    pub calls: AtomicU64,
    pub nanos: AtomicU64,
    /// Rows the call wrote or read, as far as its answer tells (see each method).
    pub rows: AtomicU64,
}

#[derive(Default)]
pub struct LedgerStats {
    pub methods: [MethodStats; METHODS.len()],
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub calls: [u64; METHODS.len()],
    pub nanos: [u64; METHODS.len()],
    pub rows: [u64; METHODS.len()],
}

impl LedgerStats {
    fn add(&self, m: usize, started: Instant, rows: u64) {
        let s = &self.methods[m];
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        s.rows.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, m) in self.methods.iter().enumerate() {
            s.calls[i] = m.calls.load(Ordering::Relaxed);
            s.nanos[i] = m.nanos.load(Ordering::Relaxed);
            s.rows[i] = m.rows.load(Ordering::Relaxed);
        }
        s
    }
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = Snapshot::default();
        for i in 0..METHODS.len() {
            d.calls[i] = self.calls[i] - earlier.calls[i];
            d.nanos[i] = self.nanos[i] - earlier.nanos[i];
            d.rows[i] = self.rows[i] - earlier.rows[i];
        }
        d
    }
    pub fn total_nanos(&self) -> u64 {
        self.nanos.iter().sum()
    }
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().sum()
    }
    pub fn get(&self, name: &str) -> (u64, u64, u64) {
        let i = METHODS.iter().position(|m| *m == name).expect("known method");
        (self.calls[i], self.nanos[i], self.rows[i])
    }
}

pub struct TimedLedger {
    pub inner: SqlLedger,
    pub stats: std::sync::Arc<LedgerStats>,
}

#[async_trait]
impl Ledger for TimedLedger {
    async fn ping(&self) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.ping().await;
        self.stats.add(0, t, 0);
        r
    }

    async fn put_license(
        &self,
        id: &Ident,
        key_hash: Option<&str>,
        features: &BTreeMap<Ident, FeaturePolicy>,
        now_ms: i64,
    ) -> Result<PutLicense> {
        let t = Instant::now();
        let r = self.inner.put_license(id, key_hash, features, now_ms).await;
        self.stats.add(1, t, 1 + features.len() as u64);
        r
    }

    async fn license(&self, id: &Ident) -> Result<Option<License>> {
        let t = Instant::now();
        let r = self.inner.license(id).await;
        let rows = r.as_ref().ok().and_then(|l| l.as_ref()).map_or(0, |l| 1 + l.features.len() as u64);
        self.stats.add(2, t, rows);
        r
    }

    async fn license_by_key_hash(&self, key_hash: &str) -> Result<Option<License>> {
        let t = Instant::now();
        let r = self.inner.license_by_key_hash(key_hash).await;
        let rows = r.as_ref().ok().and_then(|l| l.as_ref()).map_or(0, |l| 1 + l.features.len() as u64);
        self.stats.add(3, t, rows);
        r
    }

    /// Rows: the session row, its `created` event, and per end its update and event.
    async fn insert_session(&self, row: &SessionRow, ends: &[SessionEnd]) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.insert_session(row, ends).await;
        self.stats.add(4, t, 1);
        r
    }

    /// The group commit's batches (the creates' rows, the logouts' and the sweep's ends), timed
    /// as one call each.
    async fn record(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> (Vec<Result<()>>, Result<Vec<String>>) {
        let t = Instant::now();
        let r = self.inner.record(sessions, ends).await;
        // Per session recorded and per session ended: its row and its event.
        let ended = r.1.as_ref().map_or(0, Vec::len);
        self.stats.add(13, t, 2 * (sessions.len() + ended) as u64);
        r
    }

    /// Rows: per session changed, its update and its event.
    async fn end_sessions(&self, ends: &[SessionEnd]) -> Result<Vec<String>> {
        let t = Instant::now();
        let r = self.inner.end_sessions(ends).await;
        let rows = r.as_ref().map_or(0, |c| 2 * c.len() as u64);
        self.stats.add(5, t, rows);
        r
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRow>> {
        let t = Instant::now();
        let r = self.inner.session(session_id).await;
        let rows = r.as_ref().ok().and_then(|s| s.as_ref()).map_or(0, |_| 1);
        self.stats.add(6, t, rows);
        r
    }

    async fn active_sessions(&self, slot: &Slot) -> Result<Vec<SessionRow>> {
        let t = Instant::now();
        let r = self.inner.active_sessions(slot).await;
        let rows = r.as_ref().map_or(0, |v| v.len() as u64);
        self.stats.add(7, t, rows);
        r
    }

    /// Rows: the index entries counted (the answer).
    async fn record_limit_rejections(&self, slot: &Slot, counts: &[(i64, u64)]) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.record_limit_rejections(slot, counts).await;
        self.stats.add(8, t, counts.len() as u64);
        r
    }

    async fn slots(&self) -> Result<Vec<SlotEntry>> {
        let t = Instant::now();
        let r = self.inner.slots().await;
        let rows = r.as_ref().map_or(0, |v| v.len() as u64);
        self.stats.add(9, t, rows);
        r
    }

    async fn active_slots(&self) -> Result<Vec<Slot>> {
        self.inner.active_slots().await
    }

    async fn forget_removed_feature(&self, slot: &Slot) -> Result<()> {
        self.inner.forget_removed_feature(slot).await
    }

    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn delete_license(&self, id: &Ident, now_ms: i64) -> Result<Option<Vec<Ident>>> {
        self.inner.delete_license(id, now_ms).await
    }

    async fn create_admin_token(&self, license: &Ident, token_id: &str, token_hash: &str, now_ms: i64) -> Result<bool> {
        self.inner.create_admin_token(license, token_id, token_hash, now_ms).await
    }

    async fn admin_token(&self, token_hash: &str) -> Result<Option<AdminTokenRow>> {
        self.inner.admin_token(token_hash).await
    }

    async fn revoke_admin_token(&self, license: &Ident, token_id: &str) -> Result<bool> {
        self.inner.revoke_admin_token(license, token_id).await
    }

    async fn usage(&self, slot: &Slot, from_ms: i64, to_ms: i64) -> Result<UsageHistory> {
        self.inner.usage(slot, from_ms, to_ms).await
    }

    async fn user_sessions(&self, user: &Ident, feature: &Ident, since_ms: i64) -> Result<Vec<SessionRow>> {
        let t = Instant::now();
        let r = self.inner.user_sessions(user, feature, since_ms).await;
        let rows = r.as_ref().map_or(0, |v| v.len() as u64);
        self.stats.add(10, t, rows);
        r
    }

    async fn write_heartbeats(&self, beats: &[(String, i64, i64)]) -> Result<u64> {
        let t = Instant::now();
        let r = self.inner.write_heartbeats(beats).await;
        let rows = *r.as_ref().unwrap_or(&0);
        self.stats.add(11, t, rows);
        r
    }

    async fn stats(&self, license: &Ident, since_ms: i64, now_ms: i64) -> Result<BTreeMap<String, FeatureStats>> {
        let t = Instant::now();
        let r = self.inner.stats(license, since_ms, now_ms).await;
        self.stats.add(12, t, 0);
        r
    }
}
