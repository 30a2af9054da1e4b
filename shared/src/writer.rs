//! Group commit: the ledger writes of concurrent requests share transactions.
//!
//! A create's row must be committed before the client hears 201, but it need not be committed
//! alone: one writer task takes every row waiting at that moment and records them in one
//! transaction (`Ledger::record`), then answers each create. Under load a commit serves many
//! creates; alone, a create pays what it paid before. Ends of sessions (logouts, the sweep's
//! expiries) ride the same batches; the seat is already free in the seat store by then, so a
//! failed end write only delays the ledger: the sweep copies the end there from the seat store's
//! record of it.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::ledger::{Ledger, NewSession, SessionEnd};

/// Most rows one transaction takes.
const MAX_BATCH: usize = 256;

enum Job {
    Insert(Box<NewSession>, oneshot::Sender<Result<()>>),
    End(Vec<SessionEnd>, oneshot::Sender<Result<usize>>),
}

/// The handle requests write through; the writer task starts with the first write.
#[derive(Clone)]
pub struct Writer {
    ledger: Arc<dyn Ledger>,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
}

impl Writer {
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        Writer { ledger, queue: Arc::new(OnceLock::new()) }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.ledger.clone(), rx));
            tx
        })
    }

    /// Records a new session and the ends it caused; returns once they are committed.
    pub async fn insert(&self, session: NewSession) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue()
            .send(Job::Insert(Box::new(session), tx))
            .map_err(|_| Error::ledger("the ledger writer stopped"))?;
        rx.await.map_err(|_| Error::ledger("the ledger writer stopped"))?
    }

    /// Records ends of sessions whose seats are already free; returns once they are committed,
    /// with how many of them the ledger still held active (the others were recorded already).
    pub async fn end(&self, ends: Vec<SessionEnd>) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.queue().send(Job::End(ends, tx)).map_err(|_| Error::ledger("the ledger writer stopped"))?;
        rx.await.map_err(|_| Error::ledger("the ledger writer stopped"))?
    }
}

/// The writer task: one batch at a time, each as large as what is waiting.
async fn run(ledger: Arc<dyn Ledger>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let (mut inserts, mut insert_waiters) = (Vec::new(), Vec::new());
        let (mut ends, mut end_waiters) = (Vec::new(), Vec::new());
        for job in buf.drain(..) {
            match job {
                Job::Insert(s, tx) => {
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
        let (results, ended) = ledger.record(&inserts, &ends).await;
        for (result, tx) in results.into_iter().zip(insert_waiters) {
            let _ = tx.send(result);
        }
        let changed: std::collections::HashSet<String> =
            ended.as_ref().map(|c| c.iter().cloned().collect()).unwrap_or_default();
        for (mine, tx) in end_waiters {
            let count = || ends[mine].iter().filter(|e| changed.contains(&e.session_id)).count();
            let _ = tx.send(ended.as_ref().map(|_| count()).map_err(Clone::clone));
        }
    }
}
