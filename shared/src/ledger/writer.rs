//! Group commit: the ledger writes of concurrent requests share transactions.
//!
//! A create's row must be committed before the client hears 201, but it need not be committed
//! alone: one writer task takes every row waiting at that moment and records them in one
//! transaction (`Ledger::record`), then answers each create. Under load a commit serves many
//! creates; alone, a create pays what it paid before. Ends of sessions (logouts, the sweep's
//! expiries) ride the same batches; the seat is already free in the seat store by then, so a
//! failed end write only delays the ledger: the sweep copies the end there from the seat store's
//! record of it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::ledger::{Ledger, NewSession, SessionEnd};

/// Most rows one transaction takes: a batch closes at the job that reaches it (a sweep's job
/// brings up to 500 ends), so that a create never waits behind one huge transaction.
const MAX_BATCH_ROWS: usize = 2_048;

/// A create's row waits in the queue (`QUEUED`) until the writer takes it into a batch (`TAKEN`),
/// or its create stops waiting for a batch (`ABANDONED`). Whichever comes first wins: a row is
/// never written once its create has answered 503, and a create whose row is being written waits
/// for that write's outcome, so that what it answers is what the ledger holds.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

enum Job {
    Insert(Box<NewSession>, Arc<AtomicU8>, oneshot::Sender<Result<()>>),
    End(Vec<SessionEnd>, oneshot::Sender<Result<usize>>),
}

/// The handle requests write through; the writer task starts with the first write.
#[derive(Clone)]
pub struct Writer {
    ledger: Arc<dyn Ledger>,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
    /// Whether the latest batch failed (for `/health`: a ledger that answers reads but refuses
    /// writes, such as a full disk, is not well).
    failing: Arc<AtomicBool>,
}

impl Writer {
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        Writer { ledger, queue: Arc::new(OnceLock::new()), failing: Arc::default() }
    }

    /// Whether the latest batch failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.ledger.clone(), rx, self.failing.clone()));
            tx
        })
    }

    /// Records a new session and the ends it caused; returns once they are committed. Fails if no
    /// batch has taken the row within `queue_timeout` (the row is then never written); once a
    /// batch has taken it, waits for that batch's outcome (the ledger's own lock and statement
    /// timeouts bound it).
    pub async fn insert(&self, session: NewSession, queue_timeout: Duration) -> Result<()> {
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        self.queue()
            .send(Job::Insert(Box::new(session), state.clone(), tx))
            .map_err(|_| Error::ledger("the ledger writer stopped"))?;
        let stopped = |_| Error::ledger("the ledger writer stopped");
        match tokio::time::timeout(queue_timeout, &mut rx).await {
            Ok(outcome) => outcome.map_err(stopped)?,
            Err(_) if state.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() => {
                Err(Error::ledger("the ledger write timed out"))
            }
            Err(_) => rx.await.map_err(stopped)?,
        }
    }

    /// Records ends of sessions whose seats are already free; returns once they are committed,
    /// with how many of them the ledger still held active (the others were recorded already).
    pub async fn end(&self, ends: Vec<SessionEnd>) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.queue().send(Job::End(ends, tx)).map_err(|_| Error::ledger("the ledger writer stopped"))?;
        rx.await.map_err(|_| Error::ledger("the ledger writer stopped"))?
    }
}

impl Job {
    fn rows(&self) -> usize {
        match self {
            Job::Insert(s, _, _) => 1 + s.ends.len(),
            Job::End(e, _) => e.len(),
        }
    }
}

/// The writer task: one batch at a time, each as large as what is waiting (up to
/// `MAX_BATCH_ROWS`).
async fn run(ledger: Arc<dyn Ledger>, mut rx: mpsc::UnboundedReceiver<Job>, failing: Arc<AtomicBool>) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows();
        buf.push(first);
        while rows < MAX_BATCH_ROWS {
            let Ok(job) = rx.try_recv() else { break };
            rows += job.rows();
            buf.push(job);
        }
        let (mut inserts, mut insert_waiters) = (Vec::new(), Vec::new());
        let (mut ends, mut end_waiters) = (Vec::new(), Vec::new());
        for job in buf.drain(..) {
            match job {
                // Its create stopped waiting (timed out): it answered 503 and gave the seat back,
                // so its row must not be written now.
                Job::Insert(_, state, _)
                    if state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_err() => {}
                Job::Insert(s, _, tx) => {
                    inserts.push(*s);
                    insert_waiters.push(tx);
                }
                Job::End(e, tx) => {
                    let start = ends.len();
                    ends.extend(e);
                    end_waiters.push((start..ends.len(), tx));
                }
            }
        }
        // A panic in one batch fails that batch's callers, not every later write of the process.
        let batch = std::panic::AssertUnwindSafe(ledger.record(&inserts, &ends)).catch_unwind().await;
        let (results, ended) = batch.unwrap_or_else(|_| {
            tracing::error!(rows = inserts.len(), ends = ends.len(), "a ledger batch panicked");
            let failed = || Error::ledger("the ledger write failed");
            (inserts.iter().map(|_| Err(failed())).collect(), Err(failed()))
        });
        failing.store(ended.is_err() || results.iter().any(Result::is_err), Ordering::Relaxed);
        for (result, tx) in results.into_iter().zip(insert_waiters) {
            let _ = tx.send(result);
        }
        match ended {
            Ok(changed) => {
                let ranges = end_waiters.iter().map(|(r, _)| r.clone());
                for (count, (_, tx)) in credit(&ends, ranges, changed).into_iter().zip(end_waiters) {
                    let _ = tx.send(Ok(count));
                }
            }
            Err(e) => {
                for (_, tx) in end_waiters {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// How many of the sessions the ledger ended each waiter is credited with: a session two waiters
/// asked to end in one batch (two sweeps, or a logout beside an expiry) was ended once, and is
/// counted for the first of them only.
fn credit(
    ends: &[SessionEnd],
    waiters: impl Iterator<Item = std::ops::Range<usize>>,
    changed: Vec<String>,
) -> Vec<usize> {
    let mut unclaimed: std::collections::HashSet<String> = changed.into_iter().collect();
    waiters.map(|mine| ends[mine].iter().filter(|e| unclaimed.remove(&e.session_id)).count()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EndReason;

    fn end(id: &str) -> SessionEnd {
        SessionEnd { session_id: id.into(), reason: EndReason::Expired, ended_at_ms: 1, last_heartbeat_at_ms: None }
    }

    #[test]
    fn a_session_ended_once_is_credited_once() {
        // Two sweeps asked to end a, b and b, c; a logout asked for c and d; the ledger ended a,
        // b and c once each (d was over already).
        let ends = vec![end("a"), end("b"), end("b"), end("c"), end("c"), end("d")];
        let changed = vec!["a".into(), "b".into(), "c".into()];
        assert_eq!(credit(&ends, [0..2, 2..4, 4..6].into_iter(), changed), vec![2, 1, 0]);
    }

    #[test]
    fn one_waiter_asking_twice_is_credited_once() {
        let ends = vec![end("a"), end("a")];
        assert_eq!(credit(&ends, [0..2].into_iter(), vec!["a".into()]), vec![1]);
    }

    #[test]
    fn nothing_changed_credits_no_one() {
        let ends = vec![end("a"), end("b")];
        assert_eq!(credit(&ends, [0..1, 1..2].into_iter(), Vec::new()), vec![0, 0]);
    }
}
