//! Item 3: contended admission. Many clients fight for few seats: each create that gets a seat
//! renews it once and gives it back; each refused create tries again at once. Live leases are
//! watched three ways: a monitor polling the live count on the Redis clock, the `active` count each
//! admission reports, and afterwards the ledger's own intervals (created..ended, Redis clock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use seatkeeper_core::domain::Ident;
use seatkeeper_core::service::CreateSession;
use seatkeeper_core::Error;
use sqlx::Row as _;

use crate::infra::{database, evalsha_usec, ledger_backend, pool, progress, reset_stats, Cpu, RedisServer, Stack};
use crate::load::{closed_loop, warmup_for, Kind, LoadResult};
use crate::raw::{self, Policy, SeedSession, Shas};
use crate::report::Row;
use crate::Args;

/// Polls the number of live leases of one slot (on the server's clock) until stopped; returns the
/// highest count seen and how many polls it made.
async fn monitor(conn: redis::aio::MultiplexedConnection, leases_key: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let script = redis::Script::new(
        "local t = redis.call('TIME') \
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
         return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')",
    );
    let (mut max, mut polls) = (0u64, 0u64);
    let mut conn = conn;
    while !stop.load(Ordering::Relaxed) {
        let mut inv = script.prepare_invoke();
        inv.key(&leases_key);
        if let Ok(n) = inv.invoke_async::<u64>(&mut conn).await {
            max = max.max(n);
            polls += 1;
        }
        tokio::task::yield_now().await;
    }
    (max, polls)
}

pub async fn run(a: &Args, redis: &RedisServer, rows: &mut Vec<Row>) -> Result<()> {
    let backend = ledger_backend(&a.admission_ledger)?;
    let (clients, seats) = (a.admission_clients, a.admission_seats);
    let dur = a.duration();
    redis.flushall().await?;
    let db = database(backend, &a.urls()).await?;
    let stack = Stack::connect(&redis.url, &db).await?;
    let conn = redis.conn().await?;
    let policy = Policy { limit: seats as u32, ttl_s: 90, hb_s: 30 };
    let seed_pool = pool(&db, 2).await?;
    let lics = raw::seed_licenses(&seed_pool, &conn, "bench-adm", 1, policy).await?;
    let (license, key) = lics[0].clone();
    let prefix = raw::prefix(&license, "f");
    let leases_key = format!("{prefix}leases");
    let shas = Arc::new(Shas::load(&mut conn.clone()).await?);

    // Baseline: the same scripts by raw EVALSHA, no ledger.
    progress(format!(
        "admission: raw scripts baseline, {clients} clients for {seats} seats, {:.1}s",
        dur.as_secs_f64()
    ));
    let mut rc = conn.clone();
    reset_stats(&mut rc).await?;
    let cpu0 = Cpu::now(redis.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let mon = tokio::spawn(monitor(redis.conn().await?, leases_key.clone(), stop.clone()));
    let counter = Arc::new(AtomicU64::new(0));
    let max_active_raw = Arc::new(AtomicU64::new(0));
    let (c2, s2, p2, n2, m2) = (conn.clone(), shas.clone(), prefix.clone(), counter.clone(), max_active_raw.clone());
    let base = closed_loop(clients, warmup_for(dur), dur, move |c, _| {
        let (mut conn, shas, p, m) = (c2.clone(), s2.clone(), p2.clone(), m2.clone());
        let n = n2.fetch_add(1, Ordering::Relaxed);
        async move {
            let sid = format!("{:016x}{:016x}", 0xad31_u64, n);
            let th = format!("{n:064x}");
            let user = format!("user-{c:07}");
            let e = |e: redis::RedisError| e.to_string();
            let v =
                raw::raw_create(&mut conn, &shas, &p, &sid, &user, "", th.as_bytes(), policy, 0).await.map_err(e)?;
            match raw::tag(&v).as_str() {
                "ok" => {
                    if let redis::Value::Array(items) = &v {
                        if let Some(redis::Value::Int(active)) = items.get(3) {
                            m.fetch_max(*active as u64, Ordering::Relaxed);
                        }
                    }
                    raw::expect_tag(
                        &raw::raw_heartbeat(&mut conn, &shas, &p, &sid, th.as_bytes()).await.map_err(e)?,
                        "ok",
                    )?;
                    raw::expect_tag(
                        &raw::raw_end(&mut conn, &shas, &p, &sid, th.as_bytes()).await.map_err(e)?,
                        "ended",
                    )?;
                    Ok(Kind::Ok)
                }
                "limit" => Ok(Kind::Refused),
                other => Err(format!("create answered {other}")),
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (max_live_raw, _) = mon.await?;
    let (cpu1, base_us) = (Cpu::now(redis.pid), evalsha_usec(&mut rc).await?);
    reset_stats(&mut rc).await?;

    // The service.
    progress(format!("admission: core service, {clients} clients for {seats} seats, {:.1}s", dur.as_secs_f64()));
    let stop = Arc::new(AtomicBool::new(false));
    let mon = tokio::spawn(monitor(redis.conn().await?, leases_key.clone(), stop.clone()));
    let max_active = Arc::new(AtomicU64::new(0));
    let (svc, m2, k2) = (stack.svc.clone(), max_active.clone(), key.clone());
    let run = closed_loop(clients, warmup_for(dur), dur, move |c, _| {
        let (svc, m, key) = (svc.clone(), m2.clone(), k2.clone());
        async move {
            let e = |e: Error| format!("{e:?}");
            let req = CreateSession {
                user: Ident::parse("userId", &format!("user-{c:07}")).map_err(e)?,
                feature: Ident::parse("feature", "f").map_err(e)?,
                device: None,
                idempotency_key: None,
                metadata: None,
                license: None,
            };
            match svc.create_session(&key, req).await {
                Ok(s) => {
                    m.fetch_max(u64::from(s.active), Ordering::Relaxed);
                    svc.heartbeat(&s.token).await.map_err(e)?;
                    let done = svc.cleanup(&s.token).await.map_err(e)?;
                    if !done.ended {
                        return Err(format!("cleanup did not end the session: {done:?}"));
                    }
                    Ok(Kind::Ok)
                }
                Err(Error::SeatLimitReached { .. }) => Ok(Kind::Refused),
                Err(other) => Err(e(other)),
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (max_live, polls) = mon.await?;
    let (cpu2, svc_us) = (Cpu::now(redis.pid), evalsha_usec(&mut rc).await?);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The ledger's view: the most sessions whose [created, ended) overlap, on the Redis clock.
    let pool = pool(&db, 1).await?;
    let rs = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT created_at, ended_at, expires_at FROM sessions WHERE license_id = '{license}'"
    )))
    .fetch_all(&pool)
    .await?;
    let intervals: Vec<(i64, i64)> = rs
        .iter()
        .map(|r| {
            let c: i64 = r.try_get(0).unwrap_or(0);
            let e: Option<i64> = r.try_get(1).unwrap_or(None);
            let x: i64 = r.try_get(2).unwrap_or(0);
            (c, e.unwrap_or(x))
        })
        .collect();
    pool.close().await;
    let ledger_peak = seatkeeper_core::ledger::peak_overlap(&intervals, 0);

    for (what, r) in [("baseline", &base), ("service", &run)] {
        check_errors(what, r)?;
    }
    let bname = "raw EVALSHA create(+heartbeat+end when admitted), no ledger";
    rows.push(
        Row::new(
            3,
            "admission.admitted",
            format!("admitted/s, {clients} clients, {seats} seats"),
            run.ok_per_sec(),
            "/s",
        )
        .baseline(base.ok_per_sec(), bname)
        .note("an admitted client renews once and ends its session, then tries again"),
    );
    rows.push(
        Row::new(3, "admission.refused", "refused/s (409 seat_limit_reached)", run.refused_per_sec(), "/s")
            .baseline(base.refused_per_sec(), bname)
            .note(format!(
                "a refused client tries again at once; Redis time per EVALSHA {svc_us:.1} us (baseline {base_us:.1} us); service {}; baseline {}",
                cpu1.used_until(&cpu2),
                cpu0.used_until(&cpu1)
            )),
    );
    let mut refused_lat = run.refused_lat;
    let mut base_refused_lat = base.refused_lat;
    rows.push(
        Row::new(3, "admission.refused_p50", "refused create p50", refused_lat.pct_ms(50.0), "ms")
            .baseline(base_refused_lat.pct_ms(50.0), bname)
            .target("<= 2x the script alone", refused_lat.pct_ms(50.0) <= 2.0 * base_refused_lat.pct_ms(50.0)),
    );
    let observed = max_live.max(max_active.load(Ordering::Relaxed)).max(ledger_peak);
    rows.push(
        Row::new(3, "admission.max_live", "max live leases ever observed", observed as f64, "")
            .baseline(seats as f64, "the limit")
            .target("= limit, never more", observed == seats as u64)
            .note(format!(
                "monitor {max_live} over {polls} polls, max `active` at admission {}, ledger peak overlap {ledger_peak}; raw baseline: monitor {max_live_raw}, max active {}",
                max_active.load(Ordering::Relaxed),
                max_active_raw.load(Ordering::Relaxed)
            )),
    );
    stack.close().await;
    drop(db);
    create_cost(redis, &shas, rows).await?;
    Ok(())
}

/// create.lua's own Redis time on a create with a device and a per-user cap (the takeover and cap
/// checks), refused by a full slot: on a slot of 10 live leases and on one of 10,000. The user index
/// and lease counts make it the same; a script that read the slot's live set would grow 1,000x.
async fn create_cost(redis: &RedisServer, shas: &Shas, rows: &mut Vec<Row>) -> Result<()> {
    let (small_n, big_n) = (10usize, 10_000usize);
    let conn = redis.conn().await?;
    let usec = async {
        let mut out = Vec::new();
        for (name, n) in [("bench-full-small", small_n), ("bench-full-big", big_n)] {
            let now = raw::chrono_now_ms();
            let mut pipe = redis::pipe();
            let p = raw::prefix(name, "f");
            pipe.cmd("HSET")
                .arg(format!("{p}cfg"))
                .arg("limit")
                .arg(n)
                .arg("per_user")
                .arg(0)
                .arg("ttl")
                .arg(90_000)
                .arg("hb")
                .arg(30)
                .arg("res")
                .arg(0)
                .ignore();
            pipe.query_async::<()>(&mut conn.clone()).await?;
            let sessions: Vec<SeedSession> = (0..n)
                .map(|i| SeedSession {
                    license: name.to_owned(),
                    sid: format!("{:032x}", i),
                    user: format!("user-{i:07}"),
                    token_hash: format!("{i:064x}"),
                    created: now,
                    heartbeat: now,
                    expires: now + 600_000,
                })
                .collect();
            raw::seed_redis_sessions(&conn, &sessions).await?;
            let mut c = conn.clone();
            reset_stats(&mut c).await?;
            let policy = Policy { limit: n as u32, ttl_s: 90, hb_s: 30 };
            for k in 0..200u64 {
                let v = raw::raw_create(
                    &mut c,
                    shas,
                    &p,
                    &format!("{:032x}", u128::MAX - u128::from(k)),
                    "user-0000001",
                    "device-x",
                    b"th",
                    policy,
                    2,
                )
                .await?;
                if raw::tag(&v) != "limit" {
                    anyhow::bail!("a create on a full slot answered {}", raw::tag(&v));
                }
            }
            out.push(evalsha_usec(&mut c).await?);
        }
        anyhow::Ok(out)
    }
    .await?;
    let (small, big) = (usec[0], usec[1]);
    rows.push(
        Row::new(3, "admission.create_cost_big_slot", format!("create.lua Redis time with deviceId and per-user cap, refused, slot of {} live seats", crate::report::fmt_int(big_n)), big, "us")
            .baseline(small, format!("the same on a slot of {small_n} live seats"))
            .note("takeover and the per-user cap read one user's sessions (the slot's user index); counts come from ZCOUNT: the cost is flat in slot size"),
    );
    Ok(())
}

fn check_errors(what: &str, r: &LoadResult) -> Result<()> {
    if r.errors > 0 {
        anyhow::bail!("admission {what}: {} errors, first: {:?}", r.errors, r.first_error);
    }
    Ok(())
}
