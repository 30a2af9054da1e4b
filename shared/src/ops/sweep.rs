//! The sweep: records leases that ran out as `expired` in the ledger, removes orphans both ways,
//! rebuilds slots that lost their data, ends the sessions of removed features, and writes
//! heartbeat times back to the ledger.
//!
//! Cost follows what is due: each slot's leases are indexed by expiry in Redis, so the expiry pass
//! reads only due leases. Reconciliation reads a slot member by member only when asked for a full
//! pass (the admin route and `seatkeeper sweep --full`), when the service marked the slot dirty (a
//! ledger write it knows missed), or once an hour per slot for what nobody saw (a process killed
//! between the two stores). Every step is idempotent (expiries go through the slot's outbox, like
//! every other end), so two sweeps at once, or one killed halfway, leave what the next run
//! finishes.
//!
//! Housekeeping never ends a live session: creates, heartbeats and ends run beside it, so the two
//! reads it compares are never one instant. It acts on a difference only once the store that
//! decides has confirmed it at the moment of acting: a seat goes only if the ledger has recorded
//! its end, or has had no row for it for longer than any create takes to write one; a ledger row
//! ends only if the seat store, asked again, has no lease for it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::domain::{EndReason, Ident, Slot};
use crate::error::Result;
use crate::ledger::{SessionEnd, SlotEntry, ACTIVE};
use crate::seats::{EndOutcome, Record};
use crate::service::Service;

/// Due leases handled per round trip.
const BATCH: usize = 500;
/// How often the scheduled sweep reconciles each slot member by member.
const RECONCILE_EVERY_MS: i64 = 3_600_000;
/// Slots swept at once: their Redis round trips overlap the ledger's commits.
const SLOTS_AT_ONCE: usize = 32;
/// Of those, how many compare members or revoke at once: these read the ledger on pool
/// connections, which requests need too (SQLite's pool has 4, the others 8 by default).
const LEDGER_WORK_AT_ONCE: usize = 2;
/// A seat younger than this may still have its ledger row in flight (its start in an outbox
/// batch being committed); likewise a removed feature's slot is forgotten only this
/// long after its removal, once no create that read the old license can still write a row.
const ORPHAN_GRACE_MS: i64 = 30_000;

/// What to sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepScope {
    pub license: Option<Ident>,
    pub feature: Option<Ident>,
    /// Reconcile only this user's sessions.
    pub user: Option<Ident>,
    /// Compare every slot member by member, not only where counts differ.
    pub full: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub slots: u64,
    /// Leases that ran out, now recorded as expired in the ledger.
    pub expired: u64,
    /// Seats with no ledger row, removed from the seat store.
    pub orphan_seats: u64,
    /// Active ledger rows with no seat and no record of an end, ended in the ledger.
    pub orphan_rows: u64,
    /// Drift mended from the other store: ends the ledger missed, seats the ledger had ended,
    /// sessions restored into a slot that lost its data.
    pub repaired: u64,
    pub heartbeats_written: u64,
    /// Slots compared member by member (asked for, marked dirty, or due for their hourly check).
    pub reconciled: u64,
    /// Slots that could not be swept this time (a store failed); the next run takes them up.
    pub failed_slots: u64,
    pub duration_ms: u64,
}

impl SweepReport {
    fn add(mut self, other: &SweepReport) -> SweepReport {
        self.slots += other.slots;
        self.expired += other.expired;
        self.orphan_seats += other.orphan_seats;
        self.orphan_rows += other.orphan_rows;
        self.repaired += other.repaired;
        self.heartbeats_written += other.heartbeats_written;
        self.reconciled += other.reconciled;
        self.failed_slots += other.failed_slots;
        self
    }

    pub fn orphans_removed(&self) -> u64 {
        self.orphan_seats + self.orphan_rows
    }

    /// One CloudWatch Embedded Metric Format line: metrics from a log line, no agent needed.
    pub fn emf_line(&self, now_ms: i64) -> String {
        crate::metrics::emf_line(
            now_ms,
            &[],
            &[
                ("Expired", "Count", self.expired.into()),
                ("OrphansRemoved", "Count", self.orphans_removed().into()),
                ("Repaired", "Count", self.repaired.into()),
                ("FailedSlots", "Count", self.failed_slots.into()),
                ("SweepDuration", "Milliseconds", self.duration_ms.into()),
            ],
        )
    }
}

impl Service {
    /// Runs one sweep over the slots in `scope`. A slot whose store fails is counted and skipped.
    pub async fn sweep(&self, scope: &SweepScope) -> Result<SweepReport> {
        let started = Instant::now();
        let mut slots = self.ledger.slots().await?;
        if scope.full {
            // Sessions of a slot no license names any more (a license removed some other way):
            // nothing active is ever out of the sweep's sight.
            let known: HashSet<Slot> = slots.iter().map(|e| e.slot.clone()).collect();
            let lost = self.ledger.active_slots().await?.into_iter().filter(|s| !known.contains(s));
            slots.extend(lost.map(|slot| SlotEntry { slot, removed_at_ms: Some(0) }).collect::<Vec<_>>());
        }
        let mut in_scope = slots
            .iter()
            .filter(|e| {
                scope.license.as_ref().is_none_or(|l| *l == e.slot.license)
                    && scope.feature.as_ref().is_none_or(|f| *f == e.slot.feature)
            })
            .collect::<Vec<_>>()
            .into_iter();
        // The work is a chain of round trips per slot: several slots at a time keep both stores
        // busy without taking more ledger connections than the pool can spare.
        let ledger_work = Semaphore::new(LEDGER_WORK_AT_ONCE);
        let mut running = FuturesUnordered::new();
        for slot in in_scope.by_ref().take(SLOTS_AT_ONCE) {
            running.push(self.sweep_one(slot, scope, &ledger_work));
        }
        let mut report = SweepReport::default();
        while let Some(done) = running.next().await {
            report = report.add(&done);
            if let Some(slot) = in_scope.next() {
                running.push(self.sweep_one(slot, scope, &ledger_work));
            }
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let m = crate::metrics::metrics();
        m.sweeps.inc();
        m.sweep_expired.inc_by(report.expired);
        m.sweep_orphans_removed.inc_by(report.orphan_seats + report.orphan_rows);
        m.sweep_repaired.inc_by(report.repaired);
        m.sweep_failed_slots.inc_by(report.failed_slots);
        Ok(report)
    }

    /// One slot's sweep, its failure counted rather than raised.
    async fn sweep_one(&self, entry: &SlotEntry, scope: &SweepScope, ledger_work: &Semaphore) -> SweepReport {
        let slot = &entry.slot;
        let mut r = SweepReport { slots: 1, ..Default::default() };
        let swept = match entry.removed_at_ms {
            Some(removed_at) => {
                let _turn = ledger_work.acquire().await;
                self.sweep_removed(slot, removed_at, &mut r).await
            }
            None => self.sweep_slot(slot, scope, ledger_work, &mut r).await,
        };
        if let Err(e) = swept {
            r.failed_slots += 1;
            tracing::warn!(license = %slot.license, feature = %slot.feature, error = %e, "slot not swept");
        }
        r
    }

    async fn sweep_slot(
        &self,
        slot: &Slot,
        scope: &SweepScope,
        ledger_work: &Semaphore,
        report: &mut SweepReport,
    ) -> Result<()> {
        self.move_rejections(slot).await?;
        // 1. Leases that ran out end in the seat store, their ends going to the outbox in the
        //    same step; then the outbox goes to the ledger, so that what follows compares two
        //    stores that agree on everything but what happens meanwhile.
        loop {
            let due = self.seats.due(slot, BATCH).await?;
            if due.is_empty() {
                break;
            }
            let ids: Vec<String> = due.iter().map(|d| d.session_id.clone()).collect();
            report.expired += self.seats.expire(slot, &ids).await?;
            if due.len() < BATCH {
                break;
            }
        }
        self.outbox.drain(slot).await?;

        // 2. Reconciliation: a slot that lost its data is rebuilt; otherwise two counts decide
        //    whether the slot needs reading member by member.
        let size = self.seats.slot_size(slot).await?;
        let needs_ledger = !size.initialized || size.revoked || scope.full || size.dirty.is_some();
        let stale = size.reconciled_ms.is_none_or(|t| crate::domain::now_ms() - t > RECONCILE_EVERY_MS);
        if !needs_ledger && !stale {
            return Ok(());
        }
        let _turn = ledger_work.acquire().await;
        if !size.initialized {
            report.repaired += self.rebuild(slot).await?;
            return Ok(());
        }
        if size.revoked {
            // The feature was removed and put back before its sessions were all ended.
            report.repaired += self.revoke_slot(slot).await?;
            return Ok(());
        }
        // Member by member only when asked (cleanup-sessions, --full), when a ledger write is known
        // to have missed, or once an hour per slot (what no one saw: a process that died between
        // the two stores): the scheduled sweep's cost follows what is due, not what is live.
        let snapshot = self.seats.snapshot(slot).await?;
        let rows = self.ledger.active_sessions(slot).await?;
        let for_user = |u: Option<&str>| scope.user.as_ref().is_none_or(|want| Some(want.as_str()) == u);
        let in_ledger: HashMap<&str, &crate::ledger::SessionRow> =
            rows.iter().map(|r| (r.session_id.as_str(), r)).collect();
        let in_store: HashSet<&str> = snapshot.entries.iter().map(|e| e.session_id.as_str()).collect();

        // Seats the ledger did not hold active when it was read. Its row may have been written
        // since (a create in flight): only the ledger's own answer now decides.
        for entry in snapshot.entries.iter().filter(|e| !in_ledger.contains_key(e.session_id.as_str())) {
            if !for_user(entry.user.as_deref()) {
                continue;
            }
            match self.ledger.session(&entry.session_id).await? {
                Some(row) if row.status == ACTIVE => {}
                Some(row) => {
                    let reason = EndReason::parse(&row.status).unwrap_or(EndReason::Expired);
                    // Expiry, eviction and takeover are the seat store's own decisions: a live
                    // lease there says it never took them, and the ledger's end is one that landed
                    // after its create had given the seat back (a commit whose answer was lost).
                    // The session is alive; housekeeping never ends it.
                    if entry.expires_ms > snapshot.now_ms
                        && matches!(reason, EndReason::Expired | EndReason::Evicted | EndReason::Replaced)
                    {
                        tracing::warn!(license = %slot.license, feature = %slot.feature, session_id = entry.session_id, reason = reason.as_str(), "the ledger ended a session whose lease is live; the seat stands");
                        continue;
                    }
                    // The ledger recorded an end the seat store missed (an admin's or a client's,
                    // or a removal): end the seat the same way.
                    if let EndOutcome::Ended { .. } = self.seats.end(slot, &entry.session_id, None, reason).await? {
                        report.repaired += 1;
                    }
                }
                None if entry.created_ms.is_none_or(|c| snapshot.now_ms - c > ORPHAN_GRACE_MS) => {
                    // Its start may have reached the outbox after the drain above.
                    self.outbox.drain(slot).await?;
                    if self.ledger.session(&entry.session_id).await?.is_some() {
                        continue;
                    }
                    self.seats.remove_orphan(slot, &entry.session_id).await?;
                    report.orphan_seats += 1;
                    tracing::warn!(license = %slot.license, feature = %slot.feature, session_id = entry.session_id, "removed a seat with no ledger row");
                }
                None => {}
            }
        }

        // Active ledger rows with no seat when the store was read. The seat may have been admitted
        // since: only the seat store's own answer now decides. Copy the end it knows; end the row
        // only when the store has no trace of the session at all.
        let mut ends = Vec::new();
        let mut orphans = HashSet::new();
        for row in rows.iter().filter(|r| !in_store.contains(r.session_id.as_str()) && for_user(Some(&r.user_id))) {
            match self.seats.record(slot, &row.session_id).await? {
                Record::Leased | Record::SlotLost => {}
                Record::Over { reason, ended_ms, last_heartbeat_ms } => ends.push(SessionEnd {
                    session_id: row.session_id.clone(),
                    reason,
                    ended_at_ms: ended_ms.unwrap_or(snapshot.now_ms),
                    last_heartbeat_at_ms: last_heartbeat_ms,
                }),
                Record::Unknown => {
                    orphans.insert(row.session_id.clone());
                    ends.push(SessionEnd {
                        session_id: row.session_id.clone(),
                        reason: EndReason::Expired,
                        ended_at_ms: snapshot.now_ms,
                        last_heartbeat_at_ms: None,
                    });
                }
            }
        }
        for sid in self.ledger.end_sessions(&ends).await? {
            if orphans.contains(&sid) {
                report.orphan_rows += 1;
                tracing::warn!(license = %slot.license, feature = %slot.feature, session_id = sid, "ended an active ledger row with no seat");
            } else {
                report.repaired += 1;
            }
        }

        // Heartbeat times back to the ledger, in one batch.
        let beats: Vec<(String, i64, i64)> = snapshot
            .entries
            .iter()
            .filter_map(|e| {
                let row = in_ledger.get(e.session_id.as_str())?;
                let hb = e.last_heartbeat_ms?;
                (hb > row.last_heartbeat_at_ms).then(|| (e.session_id.clone(), hb, e.expires_ms))
            })
            .collect();
        report.heartbeats_written += self.ledger.write_heartbeats(&beats).await?;
        if scope.user.is_none() {
            self.seats.mark_reconciled(slot, size.dirty).await?;
        }
        report.reconciled += 1;
        Ok(())
    }

    /// Refused creates counted in the seat store go to the ledger (then off the seat store's count:
    /// a sweep killed in between counts them twice, never loses them).
    async fn move_rejections(&self, slot: &Slot) -> Result<()> {
        let counts = self.seats.rejections(slot).await?;
        if !counts.is_empty() {
            self.ledger.record_limit_rejections(slot, &counts).await?;
            self.seats.forget_rejections(slot, &counts).await?;
        }
        Ok(())
    }

    /// A slot whose feature was removed: its sessions end (`revoked`), and once no create that
    /// read the old license can still add one, the slot is forgotten.
    async fn sweep_removed(&self, slot: &Slot, removed_at_ms: i64, report: &mut SweepReport) -> Result<()> {
        self.move_rejections(slot).await?;
        report.repaired += self.revoke_slot(slot).await?;
        if crate::domain::now_ms() - removed_at_ms > ORPHAN_GRACE_MS {
            self.ledger.forget_removed_feature(slot).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_names_each_metric() {
        let r = SweepReport {
            expired: 3,
            orphan_seats: 1,
            orphan_rows: 2,
            repaired: 4,
            duration_ms: 9,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.emf_line(1)).unwrap();
        assert_eq!(v["Expired"], 3);
        assert_eq!(v["OrphansRemoved"], 3);
        assert_eq!(v["Repaired"], 4);
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &names {
            assert!(v.get(*name).is_some(), "{name} has a value");
        }
    }
}
