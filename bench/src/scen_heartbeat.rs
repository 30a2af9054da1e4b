//! Item 1: heartbeat throughput and latency through the core service, against raw EVALSHA of the
//! same script with the same keys and arguments on the same kind of connection.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use futures::stream::{self, StreamExt, TryStreamExt};
use seatkeeper_core::domain::{FeaturePolicyInput, Ident};
use seatkeeper_core::seats::SlotKeys;
use seatkeeper_core::service::{CreateSession, PutLicense};
use seatkeeper_core::{token, Service};
use serde_json::json;

use crate::infra::{database, evalsha_usec, ledger_backend, progress, reset_stats, Cpu, RedisServer, Stack};
use crate::load::{closed_loop, warmup_for, Kind};
use crate::raw::{self, Shas};
use crate::report::Row;
use crate::Args;

pub struct Seated {
    pub tokens: Vec<String>,
    /// Per session: (key prefix, session id, token hash), what the raw baseline sends.
    pub raw: Vec<(String, String, Vec<u8>)>,
}

/// A license `license` with one feature `f` of `seats` seats and a lease long enough to outlast the
/// run, and `n` live sessions on it.
pub async fn seat_sessions(svc: &Service, license: &str, key: &str, seats: usize, n: usize) -> Result<Seated> {
    let input: FeaturePolicyInput =
        serde_json::from_value(json!({"maxSessions": seats, "leaseTtlSeconds": 3600, "heartbeatIntervalSeconds": 60}))?;
    svc.put_license(
        Ident::parse("licenseId", license)?,
        PutLicense { key: Some(key.to_owned()), features: BTreeMap::from([("f".to_owned(), input)]) },
    )
    .await?;
    let tokens: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let svc = svc.clone();
            async move {
                let req = CreateSession {
                    user: Ident::parse("userId", &format!("user-{i:07}"))?,
                    feature: Ident::parse("feature", "f")?,
                    device: None,
                    idempotency_key: None,
                    metadata: None,
                    license: None,
                };
                anyhow::Ok(svc.create_session(key, req).await?.token)
            }
        })
        .buffered(32)
        .try_collect()
        .await?;
    let raw = tokens
        .iter()
        .map(|t| {
            let claims = token::parse_session_token(t).expect("the service's own token parses");
            (
                SlotKeys::new(&claims.slot).prefix().to_owned(),
                claims.session_id,
                seatkeeper_core::seats::store_hash(&token::hash_secret(t)),
            )
        })
        .collect();
    Ok(Seated { tokens, raw })
}

pub async fn run(a: &Args, redis: &RedisServer, rows: &mut Vec<Row>) -> Result<()> {
    let backend = ledger_backend(&a.hb_ledger)?;
    redis.flushall().await?;
    let db = database(backend, &a.urls()).await?;
    let stack = Stack::connect(&redis.url, &db).await?;
    let n = a.hb_clients.iter().copied().max().unwrap_or(1);
    progress(format!("heartbeat: seating {n} sessions ({} ledger)", backend.name()));
    let seated = seat_sessions(&stack.svc, "bench-hb", "bench-hb-key-0123456789abcdef", n, n).await?;
    let mut conn = redis.conn().await?;
    let shas = Arc::new(Shas::load(&mut conn).await?);
    let raw_sessions = Arc::new(seated.raw);
    let tokens = Arc::new(seated.tokens);
    let dur = a.duration();
    for &c in &a.hb_clients {
        let cl = if c == 1 { "1 client".to_owned() } else { format!("{c} clients") };
        progress(format!("heartbeat: {c} clients, raw EVALSHA baseline, {:.1}s", dur.as_secs_f64()));
        let (conn2, shas2, rs) = (conn.clone(), shas.clone(), raw_sessions.clone());
        reset_stats(&mut conn).await?;
        let cpu0 = Cpu::now(redis.pid);
        let mut base = closed_loop(c, warmup_for(dur), dur, move |i, _| {
            let (mut conn, shas, rs) = (conn2.clone(), shas2.clone(), rs.clone());
            async move {
                let (p, sid, th) = &rs[i];
                let v = raw::raw_heartbeat(&mut conn, &shas, p, sid, th).await.map_err(|e| e.to_string())?;
                raw::expect_tag(&v, "ok").map(|()| Kind::Ok)
            }
        })
        .await;
        let (cpu1, base_us) = (Cpu::now(redis.pid), evalsha_usec(&mut conn).await?);
        reset_stats(&mut conn).await?;
        progress(format!("heartbeat: {c} clients, core service, {:.1}s", dur.as_secs_f64()));
        let (svc, toks) = (stack.svc.clone(), tokens.clone());
        let mut svc_run = closed_loop(c, warmup_for(dur), dur, move |i, _| {
            let (svc, toks) = (svc.clone(), toks.clone());
            async move { svc.heartbeat(&toks[i]).await.map(|_| Kind::Ok).map_err(|e| format!("{e:?}")) }
        })
        .await;
        let (cpu2, svc_us) = (Cpu::now(redis.pid), evalsha_usec(&mut conn).await?);
        for (what, r) in [("baseline", &base), ("service", &svc_run)] {
            if r.errors > 0 {
                anyhow::bail!("{what} at {c} clients: {} errors, first: {:?}", r.errors, r.first_error);
            }
        }
        let ratio = svc_run.ok_per_sec() / base.ok_per_sec();
        let bname = "raw EVALSHA heartbeat.lua, same keys/args, redis crate";
        rows.push(
            Row::new(
                1,
                format!("heartbeat.c{c}.throughput"),
                format!("heartbeats/s, {cl}"),
                svc_run.ok_per_sec(),
                "/s",
            )
            .baseline(base.ok_per_sec(), bname)
            .target(">= 0.8x baseline", ratio >= 0.8)
            .note(format!(
                "Redis time per EVALSHA {svc_us:.1} us (baseline {base_us:.1} us); service {}; baseline {}",
                cpu1.used_until(&cpu2),
                cpu0.used_until(&cpu1)
            )),
        );
        // Client-side CPU per heartbeat (this process: the clients plus, for the service, its code):
        // steadier than throughput on a machine shared with other work.
        let per_op = |cpu_a: &Cpu, cpu_b: &Cpu, ops: f64| cpu_a.secs(cpu_b, "bench") * 1e6 / ops;
        let svc_ops = (svc_run.ok as f64) * (dur + warmup_for(dur)).as_secs_f64() / dur.as_secs_f64();
        let base_ops = (base.ok as f64) * (dur + warmup_for(dur)).as_secs_f64() / dur.as_secs_f64();
        rows.push(
            Row::new(1, format!("heartbeat.c{c}.cpu"), format!("client-process CPU per heartbeat, {cl}"), per_op(&cpu1, &cpu2, svc_ops), "us")
                .baseline(per_op(&cpu0, &cpu1, base_ops), bname)
                .note("CPU of the benchmark process (load loop + service code, or load loop + redis crate) over the operations it ran"),
        );
        rows.push(
            Row::new(1, format!("heartbeat.c{c}.p50"), format!("p50 latency, {cl}"), svc_run.lat.pct_ms(50.0), "ms")
                .baseline(base.lat.pct_ms(50.0), bname),
        );
        rows.push(
            Row::new(1, format!("heartbeat.c{c}.p99"), format!("p99 latency, {cl}"), svc_run.lat.pct_ms(99.0), "ms")
                .baseline(base.lat.pct_ms(99.0), bname),
        );
    }
    stack.close().await;
    drop(db);
    Ok(())
}
