//! Item 2: full session cycles (create, heartbeat, cleanup) through the core service on each ledger,
//! with one license and with many, against the same three scripts by raw EVALSHA with no ledger at
//! all (what a Redis-only semaphore does). The ledger's share of the time comes from the timing
//! wrapper around the ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use seatkeeper_core::domain::Ident;
use seatkeeper_core::service::CreateSession;

use crate::infra::{
    command_counts, database, evalsha_usec, ledger_backend, pool, progress, reset_stats, Backend, Cpu, RedisServer,
    Stack,
};
use crate::load::{closed_loop, warmup_for, Kind, Lat};
use crate::raw::{self, Policy, Shas};
use crate::report::{fmt_int, Row};
use crate::Args;

/// Cycles/s with the ledger against the no-ledger ceiling measured beside it (issue 10): the
/// ledger may cost at most this share of Redis speed (issue 17: 0.9, the outbox keeps it off the seat path).
fn target_ratio(backend: Backend) -> Option<f64> {
    match backend {
        Backend::Postgres => Some(0.9),
        Backend::Sqlite => Some(0.9),
        _ => None,
    }
}

pub async fn run(a: &Args, redis: &RedisServer, rows: &mut Vec<Row>) -> Result<()> {
    for ledger in &a.cycle_ledgers {
        let backend = ledger_backend(ledger)?;
        for &licenses in &a.cycle_licenses {
            one(a, redis, backend, licenses, rows).await?;
        }
    }
    Ok(())
}

async fn one(a: &Args, redis: &RedisServer, backend: Backend, licenses: usize, rows: &mut Vec<Row>) -> Result<()> {
    let clients = a.cycle_clients;
    let dur = a.duration();
    redis.flushall().await?;
    let db = database(backend, &a.urls()).await?;
    let stack = Stack::connect(&redis.url, &db).await?;
    let conn = redis.conn().await?;
    let policy = Policy { limit: 1_000_000, ttl_s: 90, hb_s: 30 };
    progress(format!("cycle: {} ledger, seeding {licenses} licenses", backend.name()));
    let seed_pool = pool(&db, 2).await?;
    let lics = Arc::new(raw::seed_licenses(&seed_pool, &conn, "bench-cy", licenses, policy).await?);
    seed_pool.close().await;
    let shas = Arc::new(Shas::load(&mut conn.clone()).await?);
    let label = format!("{}, {} license{}", backend.name(), fmt_int(licenses), if licenses == 1 { "" } else { "s" });
    let id = format!("cycle.{}.l{licenses}", backend.name());

    // Baseline: the same three scripts, no ledger, no service code.
    progress(format!("cycle: {label}: raw scripts baseline, {clients} clients, {:.1}s", dur.as_secs_f64()));
    let counter = Arc::new(AtomicU64::new(0));
    let mut rc = conn.clone();
    reset_stats(&mut rc).await?;
    let cpu0 = Cpu::now(redis.pid);
    let (c2, s2, l2, n2) = (conn.clone(), shas.clone(), lics.clone(), counter.clone());
    // Each create's own latency, warm-up included, in both loops: the create script alone
    // against a create through the service.
    let base_creates = Arc::new(Mutex::new(Lat::default()));
    let bc = base_creates.clone();
    let base = closed_loop(clients, warmup_for(dur), dur, move |c, k| {
        let (mut conn, shas, lics, bc) = (c2.clone(), s2.clone(), l2.clone(), bc.clone());
        let n = n2.fetch_add(1, Ordering::Relaxed);
        async move {
            let (license, _) = &lics[pick(c, k, lics.len())];
            let p = raw::prefix(license, "f");
            let sid = format!("{:016x}{:016x}", 0xbe7c_u64, n);
            let th = format!("{n:064x}");
            let user = format!("user-{c:07}");
            let e = |e: redis::RedisError| e.to_string();
            let t = Instant::now();
            let created = raw::raw_create(&mut conn, &shas, &p, &sid, &user, "", th.as_bytes(), policy, 0).await;
            bc.lock().expect("latencies").push(t.elapsed());
            raw::expect_tag(&created.map_err(e)?, "ok")?;
            raw::expect_tag(&raw::raw_heartbeat(&mut conn, &shas, &p, &sid, th.as_bytes()).await.map_err(e)?, "ok")?;
            raw::expect_tag(&raw::raw_end(&mut conn, &shas, &p, &sid, th.as_bytes()).await.map_err(e)?, "ended")?;
            Ok(Kind::Ok)
        }
    })
    .await;

    // The raw scripts' history went to the outbox with nobody to drain it (no ledger, no
    // service): dropped, so that the service starts with empty outboxes as it would.
    for (license, _) in lics.iter() {
        redis::cmd("DEL").arg(format!("{}ob", raw::prefix(license, "f"))).query_async::<()>(&mut rc).await?;
    }

    // The service: license key to session to renewal to logout.
    progress(format!("cycle: {label}: core service, {clients} clients, {:.1}s", dur.as_secs_f64()));
    let (cpu1, base_us) = (Cpu::now(redis.pid), evalsha_usec(&mut rc).await?);
    reset_stats(&mut rc).await?;
    let before = stack.stats.snapshot();
    let (svc, l2) = (stack.svc.clone(), lics.clone());
    let cycles_done = Arc::new(AtomicU64::new(0));
    let done2 = cycles_done.clone();
    let svc_creates = Arc::new(Mutex::new(Lat::default()));
    let sc = svc_creates.clone();
    let mut run = closed_loop(clients, warmup_for(dur), dur, move |c, k| {
        let (svc, lics, done_count, sc) = (svc.clone(), l2.clone(), done2.clone(), sc.clone());
        async move {
            let (_, key) = &lics[pick(c, k, lics.len())];
            let e = |e: seatkeeper_core::Error| format!("{e:?}");
            let req = CreateSession {
                user: Ident::parse("userId", &format!("user-{c:07}")).map_err(e)?,
                feature: Ident::parse("feature", "f").map_err(e)?,
                device: None,
                idempotency_key: None,
                metadata: None,
                license: None,
            };
            let t = Instant::now();
            let s = svc.create_session(key, req).await;
            sc.lock().expect("latencies").push(t.elapsed());
            let s = s.map_err(e)?;
            svc.heartbeat(&s.token).await.map_err(e)?;
            let done = svc.cleanup(&s.token).await.map_err(e)?;
            if !done.ended {
                return Err(format!("cleanup did not end the session: {done:?}"));
            }
            done_count.fetch_add(1, Ordering::Relaxed);
            Ok(Kind::Ok)
        }
    })
    .await;
    // What the run left in the outbox is part of its cost: the writer's last rounds, awaited.
    stack.svc.drain_all_history().await.map_err(|e| anyhow::anyhow!("draining the outbox: {e:?}"))?;
    let ledger = stack.stats.snapshot().since(&before);
    let (cpu2, svc_us) = (Cpu::now(redis.pid), evalsha_usec(&mut rc).await?);
    let ours_redis_us = cpu1.secs(&cpu2, "redis") * 1e6 / cycles_done.load(Ordering::Relaxed).max(1) as f64;
    let wall = (dur + warmup_for(dur)).as_secs_f64();
    let pool = if backend == Backend::Sqlite {
        crate::infra::ledger_pool_size().min(4)
    } else {
        crate::infra::ledger_pool_size()
    };
    for (what, r) in [("baseline", &base), ("service", &run)] {
        if r.errors > 0 {
            anyhow::bail!("cycle {label} {what}: {} errors, first: {:?}", r.errors, r.first_error);
        }
    }
    let mut base = base;
    // Cycles the ledger saw, warm-up included like the ledger time: each writes, in the group
    // commit's batches, a session row and its event, then its end and that event (4 rows).
    // Cycles the ledger saw, warm-up included like the ledger time: each session's row and its
    // event come in a drained batch's `record`, its end in the batch's `end_sessions`.
    let cycles_all = (ledger.get("record").2 / 2).max(1) as f64;
    let share = ledger.total_nanos() as f64 / run.busy_nanos as f64;
    let ledger_ms_per_cycle = ledger.total_nanos() as f64 / cycles_all / 1e6;
    let per_call = |m: &str| {
        let (calls, nanos, _) = ledger.get(m);
        format!("{m} {:.2} ms", nanos as f64 / calls.max(1) as f64 / 1e6)
    };
    let breakdown = format!(
        "per call: {}, {} (a group-commit batch); {:.2} ledger calls per cycle",
        per_call("license_by_key_hash"),
        format!("{}, {}", per_call("record"), per_call("end_sessions")),
        ledger.total_calls() as f64 / cycles_all
    );
    let bname = "raw EVALSHA create+heartbeat+end, no ledger";
    let mut tput = Row::new(
        2,
        format!("{id}.throughput"),
        format!("cycles/s, {label}, {clients} clients"),
        run.ok_per_sec(),
        "/s",
    )
    .baseline(base.ok_per_sec(), bname);
    if let Some(t) = target_ratio(backend) {
        tput = tput.target(format!(">= {t}x the ceiling"), run.ok_per_sec() >= t * base.ok_per_sec());
    }
    tput = tput.note(format!(
        "Redis time per EVALSHA {svc_us:.1} us (baseline {base_us:.1} us); service {}; baseline {}",
        cpu1.used_until(&cpu2),
        cpu0.used_until(&cpu1)
    ));
    rows.push(tput);
    rows.push(
        Row::new(2, format!("{id}.p50"), format!("cycle p50, {label}"), run.lat.pct_ms(50.0), "ms")
            .baseline(base.lat.pct_ms(50.0), bname),
    );
    rows.push(
        Row::new(2, format!("{id}.p99"), format!("cycle p99, {label}"), run.lat.pct_ms(99.0), "ms")
            .baseline(base.lat.pct_ms(99.0), bname),
    );
    let (svc_p50, base_p50) =
        (svc_creates.lock().expect("latencies").pct_ms(50.0), base_creates.lock().expect("latencies").pct_ms(50.0));
    rows.push(
        Row::new(2, format!("{id}.create_p50"), format!("create p50 in the cycle, {label}"), svc_p50, "ms")
            .baseline(base_p50, "the create script alone, raw EVALSHA")
            .target("<= 1.2x the script", svc_p50 <= 1.2 * base_p50),
    );
    rows.push(
        Row::new(2, format!("{id}.ledger_ms"), format!("ledger time per cycle, {label}"), ledger_ms_per_cycle, "ms")
            .baseline(base.lat.mean_ms(), "whole raw cycle (mean)")
            .note(format!(
                "ledger share of service cycle time: {:.0}%; {breakdown}; ledger calls in flight on average {:.1} for a pool of {pool} (above it: waiting for a connection)",
                share * 100.0,
                ledger.total_nanos() as f64 / 1e9 / wall
            )),
    );
    progress(format!(
        "cycle: {label}: {:.0}/s vs baseline {:.0}/s, ledger {:.0}% of cycle time",
        run.ok_per_sec(),
        base.ok_per_sec(),
        share * 100.0
    ));
    // Beside the PostgreSQL figure, the peer that keeps no history, on the same Redis and clients.
    if backend == Backend::Postgres
        && licenses == 1
        && (!a.quick || std::env::var_os("SEATKEEPER_BENCH_PEER").is_some())
    {
        if let Some((peer, peer_redis_us)) = peer_cycles(redis, clients, dur.as_secs_f64()).await? {
            rows.push(
                Row::new(
                    2,
                    format!("{id}.vs_peer"),
                    format!("cycles/s, {label}, against redis-semaphore"),
                    run.ok_per_sec(),
                    "/s",
                )
                .baseline(peer, "redis-semaphore 5.8.0 acquire+refresh+release, no history, same Redis, same clients")
                .target(">= 0.55x the peer", run.ok_per_sec() >= 0.55 * peer),
            );
            rows.push(
                Row::new(
                    2,
                    format!("{id}.redis_cpu_vs_peer"),
                    format!("Redis CPU per cycle, {label}, outbox and its drain included"),
                    ours_redis_us,
                    "us",
                )
                .baseline(peer_redis_us, "redis-semaphore's Redis CPU per acquire+refresh+release")
                .target("<= 2.5x the peer", ours_redis_us <= 2.5 * peer_redis_us)
                .note(
                    "the redis-server process's user+system time over the whole run, warm-up included, per cycle run",
                ),
            );
            rows.push(
                Row::new(
                    2,
                    format!("{id}.ceiling_vs_peer"),
                    format!("cycles/s, raw scripts, no ledger, against redis-semaphore"),
                    base.ok_per_sec(),
                    "/s",
                )
                .baseline(peer, "redis-semaphore 5.8.0 acquire+refresh+release, same Redis, same clients")
                .target(">= 0.6x the peer", base.ok_per_sec() >= 0.6 * peer),
            );
        }
    }
    stack.close().await;
    drop(db);
    Ok(())
}

/// The license a client uses for its `k`th cycle: spread over all of them.
fn pick(client: usize, k: u64, n: usize) -> usize {
    ((client as u64).wrapping_mul(7919).wrapping_add(k.wrapping_mul(104_729)) % n as u64) as usize
}

/// The peer (npm `redis-semaphore` 5.8.0, `../shared/peers/redis-semaphore`): acquire, one refresh,
/// release, no history at all, on the same Redis with the same number of clients. `None` when its
/// folder or Node.js is not there. Copied to a temporary folder first: `npm ci` writes beside it.
async fn peer_cycles(redis: &RedisServer, clients: usize, secs: f64) -> Result<Option<(f64, f64)>> {
    let dir = std::env::var_os("SEATKEEPER_PEER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/redis-semaphore"));
    if !dir.join("bench.js").exists() || which("node").is_none() || which("npm").is_none() {
        progress(format!("cycle: no peer at {} (or no node/npm): its row is left out", dir.display()));
        return Ok(None);
    }
    let work = std::env::temp_dir().join(format!("sk-peer-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    for f in ["bench.js", "package.json", "package-lock.json"] {
        std::fs::copy(dir.join(f), work.join(f))?;
    }
    let npm = tokio::process::Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund"])
        .current_dir(&work)
        .status()
        .await?;
    anyhow::ensure!(npm.success(), "npm ci for the peer failed");
    let mut conn = redis.conn().await?;
    reset_stats(&mut conn).await?;
    let cpu0 = Cpu::now(redis.pid);
    let out = tokio::process::Command::new("node")
        .arg("bench.js")
        .args(["--port", &redis.port.to_string(), "--keys", "1", "--limit", "1000000"])
        .args(["--clients", &clients.to_string(), "--duration", &format!("{}", secs.ceil() as u64), "--warmup", "1"])
        .current_dir(&work)
        .output()
        .await?;
    let cpu1 = Cpu::now(redis.pid);
    // Each of its cycles is two script calls (acquire, refresh), warm-up included like the CPU.
    let (_, scripts) = command_counts(&mut conn).await?;
    let _ = std::fs::remove_dir_all(&work);
    anyhow::ensure!(out.status.success(), "the peer bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT_JSON "))
        .ok_or_else(|| anyhow::anyhow!("the peer printed no RESULT_JSON line"))?;
    let v: serde_json::Value = serde_json::from_str(json)?;
    let granted = v["grantedPerS"].as_f64().or_else(|| v["grantedPerS"].as_str().and_then(|s| s.parse().ok()));
    let redis_us = cpu0.secs(&cpu1, "redis") * 1e6 / (scripts / 2).max(1) as f64;
    Ok(granted.map(|g| (g, redis_us)))
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}
