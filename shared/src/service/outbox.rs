//! History through the outbox. Every script that changes a session appends the change to its
//! slot's stream in the same atomic step (see `seats/lua/prelude.lua`), so a seat never waits on
//! the ledger; this module moves those entries into the ledger and deletes what committed.
//!
//! Applying is idempotent, so any number of writers may drain one slot at once, and a writer
//! killed between the commit and the delete only makes the next one repeat harmless work: a start
//! recorded already is left as it is, an end changes only a row still active. Within a slot the
//! stream keeps the scripts' order, so a session's start is always applied before its end.
//!
//! Who drains: a long-lived process (the local runner) runs `start`'s background writer, woken
//! by the slots its requests touched, retrying with a short back-off while the ledger is away; a
//! Lambda function drains the slots of its own request within a small budget before it returns
//! (`flush`); the sweep drains every slot it visits; the views that read history drain first.
//!
//! The same drain feeds webhooks: the changes operators are told of are queued for delivery
//! (see `crate::webhooks`) between the ledger's commit and the entries' deletion.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::Slot;
use crate::error::Result;
use crate::ledger::{Ledger, NewSession, SessionEnd, SessionRow, ACTIVE};
use crate::seats::{OutboxEvent, SeatStore};
use crate::webhooks::Webhooks;

/// Entries read and committed per round.
const BATCH: usize = 256;
/// The background writer's back-off while the ledger fails, from the first to the longest: short
/// enough that history catches up within about a second of the ledger coming back.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    seats: SeatStore,
    ledger: Arc<dyn Ledger>,
    /// Where the changes operators are told of go, when webhooks are configured.
    webhooks: Option<Webhooks>,
    /// Slots with entries this process wrote and has not drained yet.
    pending: Mutex<HashSet<Slot>>,
    wake: Notify,
    /// One drain per slot at a time in this process: two would only repeat each other's work
    /// (and, on DynamoDB, make their transactions conflict).
    draining: Mutex<HashMap<Slot, Arc<tokio::sync::Mutex<()>>>>,
    started: AtomicBool,
    /// Whether the latest commit failed (for `/health`: a ledger that answers reads but refuses
    /// writes, such as a full disk, is not well).
    failing: AtomicBool,
}

impl Outbox {
    pub fn new(seats: SeatStore, ledger: Arc<dyn Ledger>, webhooks: Option<Webhooks>) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                seats,
                ledger,
                webhooks,
                pending: Mutex::default(),
                wake: Notify::new(),
                draining: Mutex::default(),
                started: AtomicBool::new(false),
                failing: AtomicBool::new(false),
            }),
        }
    }

    /// Whether the latest commit failed.
    pub fn failing(&self) -> bool {
        self.inner.failing.load(Ordering::Relaxed)
    }

    /// A script wrote to this slot's outbox: drain it soon.
    pub fn nudge(&self, slot: &Slot) {
        self.inner.pending.lock().expect("outbox pending set").insert(slot.clone());
        self.inner.wake.notify_one();
    }

    /// Moves a slot's outbox into the ledger until it is empty; returns how many entries went.
    pub async fn drain(&self, slot: &Slot) -> Result<u64> {
        let turn = {
            let mut draining = self.inner.draining.lock().expect("outbox drain locks");
            if draining.len() > 10_000 {
                draining.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            draining.entry(slot.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
        let mut moved = 0;
        loop {
            let batch = self.inner.seats.outbox(slot, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let applied = self.apply(slot, &batch).await;
            self.inner.failing.store(applied.is_err(), Ordering::Relaxed);
            applied?;
            // Queued before the entries go: a writer killed in between queues them again, and
            // their ids keep them one delivery each while they wait.
            if let Some(webhooks) = &self.inner.webhooks {
                if self.inner.seats.webhook_add(&crate::webhooks::deliveries_of(slot, &batch)).await? > 0 {
                    webhooks.nudge();
                }
            }
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            self.inner.seats.outbox_delete(slot, &ids).await?;
            moved += ids.len() as u64;
            if ids.len() < BATCH {
                break;
            }
        }
        Ok(moved)
    }

    /// Commits one batch: the starts first (each row once, however often applied), then the ends.
    async fn apply(&self, slot: &Slot, batch: &[(String, OutboxEvent)]) -> Result<()> {
        let mut sessions = Vec::new();
        let mut ends = Vec::new();
        for (_, event) in batch {
            match event.clone() {
                OutboxEvent::Start {
                    session_id,
                    user,
                    device,
                    token_hash,
                    idempotency_key,
                    metadata,
                    created_ms,
                    expires_ms,
                    ..
                } => sessions.push(NewSession {
                    row: SessionRow {
                        session_id,
                        license_id: slot.license.to_string(),
                        feature: slot.feature.to_string(),
                        user_id: user,
                        device_id: device,
                        token_hash,
                        idempotency_key,
                        metadata,
                        status: ACTIVE.into(),
                        created_at_ms: created_ms,
                        last_heartbeat_at_ms: created_ms,
                        expires_at_ms: expires_ms,
                        ended_at_ms: None,
                    },
                    ends: Vec::new(),
                }),
                OutboxEvent::End { session_id, reason, at_ms, last_heartbeat_ms, .. } => ends.push(SessionEnd {
                    session_id,
                    reason,
                    ended_at_ms: at_ms,
                    last_heartbeat_at_ms: Some(last_heartbeat_ms),
                }),
                // Counted in the seat store already; only webhooks read it.
                OutboxEvent::Refused { .. } => {}
            }
        }
        if !sessions.is_empty() {
            let (inserted, _) = self.inner.ledger.record(&sessions, &[]).await;
            inserted.into_iter().collect::<Result<Vec<()>>>()?;
        }
        if !ends.is_empty() {
            self.inner.ledger.end_sessions(&ends).await?;
        }
        let m = crate::metrics::metrics();
        m.sessions_started
            .get_or_create(&crate::metrics::Metrics::feature(slot.feature.as_str()))
            .inc_by(sessions.len() as u64);
        for end in &ends {
            let labels =
                crate::metrics::EndLabels { feature: slot.feature.to_string(), reason: end.reason.as_str().to_owned() };
            m.sessions_ended.get_or_create(&labels).inc();
        }
        m.outbox_entries_drained.inc_by(batch.len() as u64);
        Ok(())
    }

    /// After a change that has been made (a seat freed): moves the slot's history now if the
    /// ledger takes it, else leaves it to the writers. Never an error: the change is done and its
    /// history safe in Redis, so the caller must not answer as if nothing happened.
    pub async fn drain_after_change(&self, slot: &Slot) {
        if let Err(e) = self.drain(slot).await {
            tracing::warn!(error = %e, license = %slot.license, feature = %slot.feature, "history waits in the outbox for the ledger");
            self.nudge(slot);
        }
    }

    /// Drains the slots this process wrote to, within `budget` (a function before it returns).
    /// What is left (the ledger away, or the budget spent) stays in Redis for the next request,
    /// writer or sweep; returns whether everything went.
    pub async fn flush(&self, budget: Duration) -> bool {
        let slots: Vec<Slot> = self.inner.pending.lock().expect("outbox pending set").drain().collect();
        if slots.is_empty() {
            return true;
        }
        let drained = tokio::time::timeout(budget, async {
            let mut all = true;
            for slot in &slots {
                if let Err(e) = self.drain(slot).await {
                    tracing::warn!(error = %e, license = %slot.license, feature = %slot.feature, "history stays in the outbox for now");
                    all = false;
                }
            }
            all
        })
        .await;
        drained.unwrap_or(false)
    }

    /// Starts the background writer of a long-lived process (once; later calls do nothing).
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let outbox = self.clone();
        tokio::spawn(async move { outbox.run().await });
    }

    async fn run(self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let slots: Vec<Slot> = self.inner.pending.lock().expect("outbox pending set").drain().collect();
            if slots.is_empty() {
                self.inner.wake.notified().await;
                continue;
            }
            let mut failed = false;
            for slot in slots {
                if let Err(e) = self.drain(&slot).await {
                    tracing::warn!(error = %e, license = %slot.license, feature = %slot.feature, "history waits in the outbox; retrying");
                    self.inner.pending.lock().expect("outbox pending set").insert(slot);
                    failed = true;
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            } else {
                backoff = BACKOFF_FIRST;
            }
        }
    }
}
