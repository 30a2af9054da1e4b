//! The webhook queue in Redis (`lua/webhooks.lua`): three keys under one hash tag of their own,
//! so a Redis Cluster keeps them on one slot, apart from every license's.

use super::{Reply, SeatStore};
use crate::error::Result;

const QUEUE: &str = "sk:{webhooks}:q";
const BODIES: &str = "sk:{webhooks}:e";
const ATTEMPTS: &str = "sk:{webhooks}:a";

/// A delivery to add: its event id, when it is due (`None`: now) and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub due_ms: Option<i64>,
    pub body: String,
}

/// A delivery taken for sending, with how many attempts at it failed before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: String,
    pub body: String,
    pub attempts: u32,
}

impl SeatStore {
    fn queue_invoke(&self, op: &str) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.webhooks.prepare_invoke();
        inv.key(QUEUE).key(BODIES).key(ATTEMPTS).arg(op);
        inv
    }

    /// Adds deliveries, each id once while it is queued; answers how many were new.
    pub async fn webhook_add(&self, deliveries: &[Delivery]) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut inv = self.queue_invoke("add");
        for d in deliveries {
            inv.arg(&d.id).arg(d.due_ms.map(|t| t.to_string()).unwrap_or_default()).arg(&d.body);
        }
        self.run_int(inv).await.map(|n| n as u64)
    }

    /// Takes up to `n` due deliveries, hiding each for `lease_ms`.
    pub async fn webhook_claim(&self, n: usize, lease_ms: u64) -> Result<Vec<Claimed>> {
        let mut inv = self.queue_invoke("claim");
        inv.arg(n).arg(lease_ms);
        let r = Reply(self.run(inv).await?);
        (0..r.0.len() / 3)
            .map(|i| Ok(Claimed { id: r.str(3 * i)?, body: r.str(3 * i + 1)?, attempts: r.int(3 * i + 2)? as u32 }))
            .collect()
    }

    /// A delivery is over (sent, or given up on).
    pub async fn webhook_done(&self, id: &str) -> Result<()> {
        let mut inv = self.queue_invoke("done");
        inv.arg(id);
        self.run_int(inv).await.map(drop)
    }

    /// A delivery failed: due again in `delay_ms`, with `body` as it was sent.
    pub async fn webhook_retry(&self, id: &str, delay_ms: u64, body: &str) -> Result<()> {
        let mut inv = self.queue_invoke("retry");
        inv.arg(id).arg(delay_ms).arg(body);
        self.run_int(inv).await.map(drop)
    }

    /// How many deliveries wait, and how long (ms) the most overdue one has been due.
    pub async fn webhook_backlog(&self) -> Result<(u64, u64)> {
        let r = Reply(self.run(self.queue_invoke("len")).await?);
        Ok((r.int(0)? as u64, r.int(1)? as u64))
    }
}
