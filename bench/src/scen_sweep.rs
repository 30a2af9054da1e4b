//! Item 4 (sweep cost) and item 6's Redis bytes per session.
//!
//! Both stores are seeded directly in the layout the scripts and migrations use (pipelined Redis
//! writes, multi-row INSERTs), spread evenly over many licenses of one feature each, then the
//! service's own `svc.sweep(&SweepScope::default())` runs. Three sweeps, one seeding that grows:
//!
//! - A (control): live/10 sessions, live/100 of them due;
//! - B: grown to `live` sessions, live/100 due (1%): same due count as A, ten times the live count;
//! - C: every lease of `live` sessions run out (100% due).
//!
//! B against A tells whether the cost follows the due count or the live count; C against B how it
//! grows with the due count. Redis bytes per session is the growth of `used_memory` over B's seeding,
//! next to the same count of bare sorted-set members (a Redis-only semaphore's whole state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use seatkeeper_core::ops::sweep::{SweepReport, SweepScope};

use crate::infra::{
    command_counts, database, info_field, ledger_backend, pool, progress, reset_stats, Cpu, Database, RedisServer,
    Stack,
};
use crate::raw::{self, Policy, SeedSession};
use crate::report::{fmt_num, Row};
use crate::timed::Snapshot;
use crate::Args;

const TTL_S: u32 = 3600;

struct Cost {
    secs: f64,
    report: SweepReport,
    commands: u64,
    scripts: u64,
    ledger: Snapshot,
    cpu: String,
}

impl Cost {
    fn rows_written(&self) -> u64 {
        ["end_sessions", "record", "write_heartbeats"].iter().map(|m| self.ledger.get(m).2).sum()
    }
    fn rows_read(&self) -> u64 {
        ["slots", "active_sessions", "session", "license"].iter().map(|m| self.ledger.get(m).2).sum()
    }
    fn rows(&self) -> u64 {
        self.rows_written() + self.rows_read()
    }
    fn ledger_calls(&self) -> u64 {
        self.ledger.total_calls()
    }
    fn describe(&self) -> String {
        format!(
            "{:.2} s, expired {}, {} Redis commands ({} script calls), ledger: {} calls, {} rows written, {} rows read, {} slots reconciled",
            self.secs,
            self.report.expired,
            self.commands,
            self.scripts,
            self.ledger_calls(),
            self.rows_written(),
            self.rows_read(),
            self.report.reconciled
        )
    }
}

/// `per` sessions on each license starting at index `k0`, one in `due_every` already run out
/// (`due_every` 0: none).
fn sessions(names: &[String], k0: usize, per: usize, due_every: usize, now: i64) -> Vec<SeedSession> {
    let mut out = Vec::with_capacity(names.len() * per);
    for k in 0..per {
        for (l, name) in names.iter().enumerate() {
            let due = due_every > 0 && k % due_every == 0;
            let expires = if due { now - 600_000 } else { now + i64::from(TTL_S) * 1000 };
            let heartbeat = expires - i64::from(TTL_S) * 1000;
            let n = k0 + k;
            out.push(SeedSession {
                license: name.clone(),
                sid: format!("{l:08x}{n:024x}"),
                user: format!("user-{:07}", (l * 7919 + n) % 10_000_000),
                token_hash: format!("{:016x}{:016x}{:016x}{:016x}", l, n, l ^ 0x5eed, n ^ 0xfeed),
                created: heartbeat - 60_000,
                heartbeat,
                expires,
            });
        }
    }
    out
}

async fn seed(redis: &RedisServer, db: &Database, what: &str, s: &[SeedSession]) -> Result<()> {
    let conn = redis.conn().await?;
    progress(format!("sweep: seeding {} sessions ({what}) into Redis", fmt_num(s.len() as f64)));
    raw::seed_redis_sessions(&conn, s).await?;
    progress(format!("sweep: seeding {} sessions ({what}) into the ledger", fmt_num(s.len() as f64)));
    let pool = pool(&db, 3).await?;
    let total = s.len();
    let mut next_report = 100_000;
    raw::seed_ledger_sessions(&pool, s, |done| {
        if done >= next_report && done < total {
            progress(format!("sweep: ledger rows {} of {}", fmt_num(done as f64), fmt_num(total as f64)));
            next_report += 100_000;
        }
    })
    .await?;
    raw::analyze(&pool, db.backend).await?;
    pool.close().await;
    Ok(())
}

async fn sweep(redis: &RedisServer, db: &Database, what: &str) -> Result<Cost> {
    let stack = Stack::connect(&redis.url, db).await?;
    let mut conn = redis.conn().await?;
    progress(format!("sweep: running svc.sweep ({what})"));
    // Progress on long sweeps, read from the ledger wrapper's counters.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (done, stats, what) = (done.clone(), stack.stats.clone(), what.to_owned());
        tokio::spawn(async move {
            let t = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if t.elapsed() >= Duration::from_secs(5) && t.elapsed().as_millis() % 5000 < 250 {
                    let (_, _, rows) = stats.snapshot().get("record");
                    progress(format!("sweep: {what}: {} sessions recorded expired so far", fmt_num((rows / 2) as f64)));
                }
            }
        })
    };
    reset_stats(&mut conn).await?;
    let cpu0 = Cpu::now(redis.pid);
    let t = Instant::now();
    let report = stack.svc.sweep(&SweepScope::default()).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu0.used_until(&Cpu::now(redis.pid));
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    let report = report?;
    let (commands, scripts) = command_counts(&mut conn).await?;
    let ledger = stack.stats.snapshot();
    stack.close().await;
    if report.failed_slots > 0 {
        bail!("sweep {what}: {} slots failed", report.failed_slots);
    }
    let cost = Cost { secs, report, commands, scripts, ledger, cpu };
    progress(format!("sweep: {what}: {}", cost.describe()));
    Ok(cost)
}

pub async fn run(a: &Args, redis: &RedisServer, rows: &mut Vec<Row>) -> Result<()> {
    let backend = ledger_backend(&a.sweep_ledger)?;
    let (live, nlic) = (a.sweep_live.unwrap_or(1_000_000), a.sweep_licenses.unwrap_or(1_000));
    if nlic == 0 || live % (100 * nlic) != 0 {
        bail!("--sweep-live ({live}) must be a multiple of 100 x --sweep-licenses ({nlic})");
    }
    let per = live / nlic;
    redis.flushall().await?;
    let db = database(backend, &a.urls()).await?;
    // Migrations first (the service's own), then the licenses.
    Stack::connect(&redis.url, &db).await?.close().await;
    let conn = redis.conn().await?;
    let seed_pool = pool(&db, 2).await?;
    let lics =
        raw::seed_licenses(&seed_pool, &conn, "bench-sw", nlic, Policy { limit: 1_000_000, ttl_s: TTL_S, hb_s: 60 })
            .await?;
    seed_pool.close().await;
    let names: Vec<String> = lics.into_iter().map(|(id, _)| id).collect();
    let now = raw::chrono_now_ms();

    // A: the control.
    let a_sessions = sessions(&names, 0, per / 10, 10, now);
    let a_count = a_sessions.len();
    seed(redis, &db, "A: control", &a_sessions).await?;
    drop(a_sessions);
    let cost_a =
        sweep(redis, &db, &format!("A: {} live, {} due", fmt_num(a_count as f64), fmt_num((live / 100) as f64)))
            .await?;

    // B: ten times the live sessions, the same due count; Redis memory measured over its seeding.
    let b_per = per * 91 / 100;
    let b_sessions = sessions(&names, per / 10, b_per, 91, now);
    let b_count = b_sessions.len();
    let mut rc = redis.conn().await?;
    let mem_before = info_field(&mut rc, "memory", "used_memory").await?;
    progress(format!("sweep: seeding {} sessions (B) into Redis", fmt_num(b_count as f64)));
    raw::seed_redis_sessions(&conn, &b_sessions).await?;
    let mem_after = info_field(&mut rc, "memory", "used_memory").await?;
    let per_session = (mem_after - mem_before) / b_count as f64;
    progress(format!("sweep: seeding {} sessions (B) into the ledger", fmt_num(b_count as f64)));
    let pool = pool(&db, 3).await?;
    let mut next_report = 100_000;
    raw::seed_ledger_sessions(&pool, &b_sessions, |done| {
        if done >= next_report && done < b_count {
            progress(format!("sweep: ledger rows {} of {}", fmt_num(done as f64), fmt_num(b_count as f64)));
            next_report += 100_000;
        }
    })
    .await?;
    raw::analyze(&pool, backend).await?;
    pool.close().await;
    let b_sids: Vec<(String, String)> = b_sessions.iter().map(|s| (s.license.clone(), s.sid.clone())).collect();
    drop(b_sessions);
    let in_zsets = a_count - a_count / 10 + b_count;
    let cost_b =
        sweep(redis, &db, &format!("B: {} live, {} due (1%)", fmt_num(in_zsets as f64), fmt_num((live / 100) as f64)))
            .await?;

    // C: back to `live` sessions, then every lease run out.
    let c_sessions = sessions(&names, per / 10 + b_per, per / 100, 0, now);
    seed(redis, &db, "C: top-up", &c_sessions).await?;
    drop(c_sessions);
    let rescored = raw::expire_all(&conn, &names, 600_000).await?;
    let cost_c = sweep(redis, &db, &format!("C: {} live, all due (100%)", fmt_num(rescored as f64))).await?;

    for (what, c, want) in
        [("A", &cost_a, (live / 100) as u64), ("B", &cost_b, (live / 100) as u64), ("C", &cost_c, rescored)]
    {
        if c.report.expired != want {
            bail!("sweep {what} recorded {} expired, expected {want}", c.report.expired);
        }
    }

    // The bare semaphore: the same number of members in sorted sets of their own, nothing else,
    // measured as the growth of used_memory like the sessions were.
    let m0 = info_field(&mut rc, "memory", "used_memory").await?;
    for chunk in b_sids.chunks(5000) {
        let mut pipe = redis::pipe();
        for (l, sid) in chunk {
            pipe.cmd("ZADD").arg(format!("sem:{{{l}}}")).arg(now + 3_600_000).arg(sid).ignore();
        }
        pipe.query_async::<()>(&mut rc).await?;
    }
    let m1 = info_field(&mut rc, "memory", "used_memory").await?;
    let bare = (m1 - m0) / b_sids.len() as f64;
    redis.flushall().await?;

    let note_slots =
        format!("{} sessions over {} licenses (one feature each)", fmt_num(live as f64), fmt_num(nlic as f64));
    let a_name = format!("control A: same due count, {} live", fmt_num(a_count as f64));
    rows.push(
        Row::new(
            4,
            "sweep.due1.time",
            format!("sweep, {} live, 1% due: time", fmt_num(in_zsets as f64)),
            cost_b.secs,
            "s",
        )
        .baseline(cost_a.secs, &a_name)
        .target("< 1 s", cost_b.secs < 1.0)
        .note(format!("{note_slots}; ratio near 1 = cost follows the due count; {}", cost_b.cpu)),
    );
    rows.push(
        Row::new(
            4,
            "sweep.due1.redis_commands",
            "sweep 1% due: Redis commands (incl. inside scripts)",
            cost_b.commands as f64,
            "",
        )
        .baseline(cost_a.commands as f64, &a_name)
        .note(format!("{} script calls vs {}", cost_b.scripts, cost_a.scripts)),
    );
    rows.push(
        Row::new(4, "sweep.due1.ledger_rows", "sweep 1% due: ledger rows touched", cost_b.rows() as f64, "")
            .baseline(cost_a.rows() as f64, &a_name)
            .note(format!(
                "written {} (session updates + events), read {}; {} slots reconciled member by member; {} ledger calls",
                cost_b.rows_written(),
                cost_b.rows_read(),
                cost_b.report.reconciled,
                cost_b.ledger_calls()
            )),
    );
    let b_name = "sweep B (1% due)";
    rows.push(
        Row::new(
            4,
            "sweep.due100.time",
            format!("sweep, {} live, 100% due: time", fmt_num(rescored as f64)),
            cost_c.secs,
            "s",
        )
        .baseline(cost_b.secs, b_name)
        .target("< 20 s", cost_c.secs < 20.0)
        .note(format!(
            "{:.0} us per expired session vs {:.0} us at 1%; {}",
            cost_c.secs * 1e6 / cost_c.report.expired.max(1) as f64,
            cost_b.secs * 1e6 / cost_b.report.expired.max(1) as f64,
            cost_c.cpu
        )),
    );
    rows.push(
        Row::new(4, "sweep.due100.redis_commands", "sweep 100% due: Redis commands", cost_c.commands as f64, "")
            .baseline(cost_b.commands as f64, b_name)
            .note(format!("{} script calls", cost_c.scripts)),
    );
    rows.push(
        Row::new(4, "sweep.due100.ledger_rows", "sweep 100% due: ledger rows touched", cost_c.rows() as f64, "")
            .baseline(cost_b.rows() as f64, b_name)
            .note(format!(
                "written {}, read {}; {} ledger calls",
                cost_c.rows_written(),
                cost_c.rows_read(),
                cost_c.ledger_calls()
            )),
    );
    let zset_note = if per * 91 / 100 > 128 {
        ""
    } else {
        " (few sessions per slot: small sorted sets use the compact listpack encoding; run the full size for a representative figure)"
    };
    rows.push(
        Row::new(6, "memory.redis_bytes_per_session", "Redis bytes per live session", per_session, "B")
            .baseline(bare, "a bare sorted-set member (Redis-only semaphore state)")
            .target("< 200 B", per_session < 200.0)
            .note(format!(
                "used_memory grew {} bytes over {} seeded sessions; a field of the slot's sessions hash (msgpack user, device, 16-byte token hash, created, heartbeat) + a lease entry{zset_note}",
                fmt_num(mem_after - mem_before),
                fmt_num(b_count as f64)
            )),
    );
    drop(db);
    Ok(())
}
