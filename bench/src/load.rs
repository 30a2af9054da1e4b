//! Closed-loop load: N clients, each sending its next operation as soon as the last one answered,
//! for a warm-up and then a measured window. Latencies are kept whole (no histogram buckets).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an operation came to. `Err` is a failure (it counts as an error, not as throughput).
pub type OpResult = Result<Kind, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ok = 0,
    /// Refused by design (a seat limit), not a failure.
    Refused = 1,
}

#[derive(Default, Debug)]
pub struct Lat {
    nanos: Vec<u64>,
    sorted: bool,
}

impl Lat {
    pub fn push(&mut self, d: Duration) {
        self.nanos.push(d.as_nanos() as u64);
        self.sorted = false;
    }
    pub fn merge(&mut self, other: Lat) {
        self.nanos.extend(other.nanos);
        self.sorted = false;
    }
    /// The `p`th percentile in milliseconds (nearest rank).
    pub fn pct_ms(&mut self, p: f64) -> f64 {
        if self.nanos.is_empty() {
            return f64::NAN;
        }
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.nanos.len() as f64).ceil().max(1.0) as usize;
        self.nanos[rank.min(self.nanos.len()) - 1] as f64 / 1e6
    }
    pub fn mean_ms(&self) -> f64 {
        if self.nanos.is_empty() {
            return f64::NAN;
        }
        self.nanos.iter().sum::<u64>() as f64 / self.nanos.len() as f64 / 1e6
    }
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Operations that started in the measured window and answered `Ok`.
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub secs: f64,
    /// Latency of the measured `Ok` operations.
    pub lat: Lat,
    /// Latency of the measured refused operations.
    pub refused_lat: Lat,
    /// Sum of the latencies of every operation, warm-up included (for time shares).
    pub busy_nanos: u64,
}

impl LoadResult {
    pub fn ok_per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn refused_per_sec(&self) -> f64 {
        self.refused as f64 / self.secs
    }
}

/// Runs `clients` closed loops of `op(client, iteration)` for `warmup + measure`.
pub async fn closed_loop<F, Fut>(clients: usize, warmup: Duration, measure: Duration, op: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = OpResult> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let from = start + warmup;
    let end = from + measure;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let out = op(c, i).await;
                i += 1;
                let d = t0.elapsed();
                r.busy_nanos += d.as_nanos() as u64;
                if t0 < from {
                    continue;
                }
                match out {
                    Ok(Kind::Ok) => {
                        r.ok += 1;
                        r.lat.push(d);
                    }
                    Ok(Kind::Refused) => {
                        r.refused += 1;
                        r.refused_lat.push(d);
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| LoadResult {
            errors: 1,
            first_error: Some(format!("client task panicked: {e}")),
            ..Default::default()
        });
        total.ok += r.ok;
        total.refused += r.refused;
        total.errors += r.errors;
        total.busy_nanos += r.busy_nanos;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.lat.merge(r.lat);
        total.refused_lat.merge(r.refused_lat);
    }
    // Throughput: operations that started in the window, over the window's length.
    total.secs = measure.as_secs_f64();
    total
}

/// Warm-up used before each measured window.
pub fn warmup_for(measure: Duration) -> Duration {
    (measure / 5).clamp(Duration::from_millis(200), Duration::from_secs(1))
}
