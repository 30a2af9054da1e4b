//! Admin operations: force-cleanup, the two-store debug view, a sweep for one license, stats.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::{now_ms, EndReason, Ident, Slot};
use crate::error::{Error, Result};
use crate::ledger::{peak_overlap, FeatureStats, SessionEnd, SessionRow, SessionSpan, ACTIVE};
use crate::ops::sweep::{SweepReport, SweepScope};
use crate::seats::{EndOutcome, SlotSnapshot};
use crate::service::Service;

/// Most sessions the debug view lists: the live ones always, then the newest ended ones.
const DEBUG_SESSIONS: usize = 100;
/// How far back the debug view and force-cleanup look for a user's sessions in the ledger.
const LOOKBACK_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone)]
pub struct ForceCleanup {
    pub ended: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DebugSession {
    pub session_id: String,
    pub license: String,
    pub device: Option<String>,
    pub status: String,
    pub created_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub in_seat_store: bool,
    pub in_ledger: bool,
}

#[derive(Debug, Clone)]
pub struct DebugLicense {
    pub license: String,
    pub limit: u32,
    /// Live leases in the seat store (the authority).
    pub seat_store_active: u64,
    /// Rows the ledger holds active.
    pub ledger_active: u64,
    /// Both stores hold the same sessions (a lease that ran out and awaits the sweep is no drift).
    pub consistent: bool,
}

#[derive(Debug, Clone)]
pub struct DebugView {
    pub sessions: Vec<DebugSession>,
    /// Sessions over that were left out (the newest are shown).
    pub omitted: u64,
    pub licenses: Vec<DebugLicense>,
}

#[derive(Debug, Clone)]
pub struct FeatureStatsView {
    pub limit: u32,
    pub active: u64,
    pub peak_active: u64,
    /// Mean length of the sessions that started and ended within the window.
    pub average_session_seconds: f64,
    pub stats: FeatureStats,
}

impl Service {
    /// A user's recent ledger rows for a feature, and the slots to look at: the licenses of those
    /// rows, or only `license` when given. A user the ledger has not seen lately is not found.
    async fn user_scope(
        &self,
        user: &Ident,
        feature: &Ident,
        license: Option<&Ident>,
    ) -> Result<(Vec<SessionRow>, Vec<Slot>)> {
        if let Some(l) = license {
            let found =
                self.ledger.license(l).await?.ok_or_else(|| Error::NotFound(format!("license {l} not found")))?;
            if !found.features.contains_key(feature) {
                return Err(Error::NotFound(format!("feature {feature} is not part of license {l}")));
            }
        }
        // History still in an outbox first, so that a session is never shown as drift because
        // the ledger has not taken its start or end yet.
        for entry in self.ledger.slots().await? {
            if entry.slot.feature == *feature && license.is_none_or(|l| *l == entry.slot.license) {
                self.outbox.drain(&entry.slot).await?;
            }
        }
        let mut rows = self.ledger.user_sessions(user, feature, now_ms() - LOOKBACK_MS).await?;
        // Narrowed to one license, nothing of another shows (a license-scoped admin sees its own).
        if let Some(l) = license {
            rows.retain(|r| r.license_id == l.as_str());
        }
        if rows.is_empty() && license.is_none() {
            return Err(Error::NotFound(format!(
                "no sessions of user {user} for feature {feature} in the last 24 hours"
            )));
        }
        let licenses: BTreeSet<&str> = match license {
            Some(l) => BTreeSet::from([l.as_str()]),
            None => rows.iter().map(|r| r.license_id.as_str()).collect(),
        };
        let slots = licenses
            .into_iter()
            .map(|l| Ok(Slot { license: Ident::parse("licenseId", l)?, feature: feature.clone() }))
            .collect::<Result<Vec<_>>>()?;
        Ok((rows, slots))
    }

    /// Ends every session of a user for a feature that still holds or may regain a seat, in the
    /// seat store and the ledger both.
    pub async fn force_cleanup(&self, user: &Ident, feature: &Ident, license: Option<&Ident>) -> Result<ForceCleanup> {
        let (rows, slots) = self.user_scope(user, feature, license).await?;
        let mut ended = Vec::new();
        let mut ends = Vec::new();
        for slot in slots {
            let snapshot = self.seats.snapshot(&slot).await?;
            let mut seen = BTreeSet::new();
            // Leases that ran out but could still be revived end too: nothing the admin ended comes back.
            for entry in snapshot.entries.iter().filter(|e| e.user.as_deref() == Some(user.as_str())) {
                seen.insert(entry.session_id.clone());
                if let EndOutcome::Ended { .. } =
                    self.seats.end(&slot, &entry.session_id, None, EndReason::ForceEnded).await?
                {
                    ended.push(entry.session_id.clone());
                }
            }
            // Their ends are in the outbox: into the ledger (and the webhooks' queue) now, or as
            // soon as the ledger takes them.
            self.outbox.drain_after_change(&slot).await;
            // Rows the ledger still holds active without a live seat end too: nothing stays stuck.
            let stuck = rows.iter().filter(|r| {
                r.status == ACTIVE && r.license_id == slot.license.as_str() && !seen.contains(&r.session_id)
            });
            ends.extend(stuck.map(|row| SessionEnd {
                session_id: row.session_id.clone(),
                reason: EndReason::ForceEnded,
                ended_at_ms: snapshot.now_ms,
                last_heartbeat_at_ms: None,
            }));
        }
        // The stuck rows' ends, which no seat store script wrote.
        for sid in self.ledger.end_sessions(&ends).await? {
            if !ended.contains(&sid) {
                ended.push(sid);
            }
        }
        Ok(ForceCleanup { ended })
    }

    /// Both stores side by side for one user and feature (in one license, when given), drift flagged.
    pub async fn debug(&self, user: &Ident, feature: &Ident, license: Option<&Ident>) -> Result<DebugView> {
        let (rows, slots) = self.user_scope(user, feature, license).await?;
        let mut sessions: BTreeMap<String, DebugSession> = rows
            .iter()
            .map(|r| {
                (
                    r.session_id.clone(),
                    DebugSession {
                        session_id: r.session_id.clone(),
                        license: r.license_id.clone(),
                        device: r.device_id.clone(),
                        status: r.status.clone(),
                        created_ms: Some(r.created_at_ms),
                        last_heartbeat_ms: Some(r.last_heartbeat_at_ms),
                        expires_ms: Some(r.expires_at_ms),
                        in_seat_store: false,
                        in_ledger: true,
                    },
                )
            })
            .collect();
        let mut licenses = Vec::new();
        for slot in slots {
            let snapshot = self.seats.snapshot(&slot).await?;
            for e in snapshot.entries.iter().filter(|e| e.user.as_deref() == Some(user.as_str())) {
                let live = e.expires_ms > snapshot.now_ms;
                let s = sessions.entry(e.session_id.clone()).or_insert_with(|| DebugSession {
                    session_id: e.session_id.clone(),
                    license: slot.license.to_string(),
                    device: e.device.clone(),
                    status: String::new(),
                    created_ms: e.created_ms,
                    last_heartbeat_ms: None,
                    expires_ms: None,
                    in_seat_store: false,
                    in_ledger: false,
                });
                // The seat store is the authority on the lease: show its times.
                s.in_seat_store = true;
                s.last_heartbeat_ms = e.last_heartbeat_ms.or(s.last_heartbeat_ms);
                s.expires_ms = Some(e.expires_ms);
                s.status = if live { ACTIVE.into() } else { EndReason::Expired.as_str().into() };
            }
            let ledger_active = self.ledger.active_sessions(&slot).await?;
            let store_ids: BTreeSet<&str> = snapshot.entries.iter().map(|e| e.session_id.as_str()).collect();
            let ledger_ids: BTreeSet<&str> = ledger_active.iter().map(|r| r.session_id.as_str()).collect();
            let limit = self
                .ledger
                .license(&slot.license)
                .await?
                .and_then(|l| l.features.get(&slot.feature).map(|p| p.max_sessions))
                .unwrap_or(0);
            licenses.push(DebugLicense {
                license: slot.license.to_string(),
                limit,
                seat_store_active: snapshot.seats_taken(),
                ledger_active: ledger_active.len() as u64,
                consistent: snapshot.initialized && store_ids == ledger_ids,
            });
        }
        // Every session that holds or may hold a seat, then the newest of those that are over,
        // up to `DEBUG_SESSIONS`: a user who made thousands of sessions today gets a page, not all.
        let (mut shown, mut over): (Vec<DebugSession>, Vec<DebugSession>) =
            sessions.into_values().partition(|s| s.in_seat_store || s.status == ACTIVE);
        over.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
        let room = DEBUG_SESSIONS.saturating_sub(shown.len());
        let omitted = over.len().saturating_sub(room) as u64;
        shown.extend(over.into_iter().take(room));
        shown.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(DebugView { sessions: shown, omitted, licenses })
    }

    /// The sweep and a full reconciliation for one license, now.
    pub async fn cleanup_license(
        &self,
        license: &Ident,
        user: Option<Ident>,
        feature: Option<Ident>,
    ) -> Result<SweepReport> {
        let l = self
            .ledger
            .license(license)
            .await?
            .ok_or_else(|| Error::NotFound(format!("license {license} not found")))?;
        if let Some(f) = &feature {
            if !l.features.contains_key(f) {
                return Err(Error::NotFound(format!("feature {f} is not part of license {license}")));
            }
        }
        let report = self.sweep(&SweepScope { license: Some(license.clone()), feature, user, full: true }).await?;
        if report.failed_slots > 0 {
            return Err(Error::seat_store("some slots could not be swept"));
        }
        Ok(report)
    }

    /// Per-feature counters of a license over the last `window_seconds`.
    pub async fn session_stats(
        &self,
        license: &Ident,
        window_seconds: u64,
    ) -> Result<BTreeMap<String, FeatureStatsView>> {
        let l = self
            .ledger
            .license(license)
            .await?
            .ok_or_else(|| Error::NotFound(format!("license {license} not found")))?;
        for feature in l.features.keys() {
            self.outbox.drain(&Slot { license: license.clone(), feature: feature.clone() }).await?;
        }
        let now = now_ms();
        let mut stats = self.ledger.stats(license, now - window_seconds as i64 * 1000, now).await?;
        let mut out = BTreeMap::new();
        let since = now - window_seconds as i64 * 1000;
        for (feature, policy) in &l.features {
            let slot = Slot { license: license.clone(), feature: feature.clone() };
            let snapshot = self.seats.snapshot(&slot).await?;
            let active = snapshot.seats_taken();
            let mut s = stats.remove(feature.as_str()).unwrap_or_default();
            // Refusals the sweep has not moved to the ledger yet.
            s.limit_rejections += self
                .seats
                .rejections(&slot)
                .await?
                .iter()
                .filter(|(minute, _)| minute + 60_000 > since)
                .map(|(_, n)| n)
                .sum::<u64>();
            let spans = lived_spans(&s.spans, &snapshot, now);
            // The window's peak is at least what is live now.
            let peak_active = peak_overlap(&spans, since).max(active);
            let finished: Vec<i64> = s
                .spans
                .iter()
                .filter_map(|sp| {
                    sp.end_ms.filter(|e| sp.created_ms >= since && *e >= sp.created_ms).map(|e| e - sp.created_ms)
                })
                .collect();
            let average_session_seconds = if finished.is_empty() {
                0.0
            } else {
                finished.iter().sum::<i64>() as f64 / finished.len() as f64 / 1000.0
            };
            let view =
                FeatureStatsView { limit: policy.max_sessions, active, peak_active, average_session_seconds, stats: s };
            out.insert(feature.to_string(), view);
        }
        Ok(out)
    }
}

/// When each session was live, as (start, end) ms up to `now`. A session the ledger still holds
/// active lasted until its lease ran out, which the seat store knows (the ledger learns it only
/// at the next sweep).
pub(crate) fn lived_spans(spans: &[SessionSpan], snapshot: &SlotSnapshot, now: i64) -> Vec<(i64, i64)> {
    let lease: HashMap<&str, i64> = snapshot.entries.iter().map(|e| (e.session_id.as_str(), e.expires_ms)).collect();
    spans
        .iter()
        .map(|sp| {
            let end = sp.end_ms.unwrap_or_else(|| lease.get(sp.session_id.as_str()).copied().unwrap_or(sp.expires_ms));
            (sp.created_ms, end.min(now))
        })
        .collect()
}
