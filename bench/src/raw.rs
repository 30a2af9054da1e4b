//! The baselines' raw Redis work (the service's own Lua scripts by EVALSHA through the redis crate,
//! with no service code around them) and the seeding of both stores in exactly the layout the
//! scripts and migrations use.

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use redis::aio::MultiplexedConnection;
use redis::Value;
use seatkeeper_core::seats::RECORD_RETENTION_MS;

use crate::infra::Backend;

/// The scripts as seats.rs builds them: the prelude, then the operation.
pub const PRELUDE: &str = include_str!("../../shared/src/seats/lua/prelude.lua");
pub const CREATE: &str = include_str!("../../shared/src/seats/lua/create.lua");
pub const HEARTBEAT: &str = include_str!("../../shared/src/seats/lua/heartbeat.lua");
pub const END: &str = include_str!("../../shared/src/seats/lua/end.lua");

#[derive(Clone)]
pub struct Shas {
    pub create: String,
    pub heartbeat: String,
    pub end: String,
}

impl Shas {
    /// Loads the three scripts (the same text, hence the same SHA, as the service's).
    pub async fn load(conn: &mut MultiplexedConnection) -> Result<Self> {
        let load = |body: &str| {
            let text = format!("{PRELUDE}{body}");
            let mut c = conn.clone();
            async move { redis::cmd("SCRIPT").arg("LOAD").arg(text).query_async::<String>(&mut c).await }
        };
        Ok(Shas { create: load(CREATE).await?, heartbeat: load(HEARTBEAT).await?, end: load(END).await? })
    }
}

/// The first element of a script's reply.
pub fn tag(v: &Value) -> String {
    match v {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

pub fn prefix(license: &str, feature: &str) -> String {
    format!("sk:{{{license}/{feature}}}:")
}

/// A slot's policy as the cfg hash holds it.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub limit: u32,
    pub ttl_s: u32,
    pub hb_s: u32,
}

/// EVALSHA of create.lua with the keys and arguments `SeatStore::create` sends for a create with no
/// idempotency key (and no deadline); `device` '' for none, `per_user` 0 for no cap.
#[allow(clippy::too_many_arguments)]
pub async fn raw_create(
    conn: &mut MultiplexedConnection,
    shas: &Shas,
    prefix: &str,
    sid: &str,
    user: &str,
    device: &str,
    token_hash: &[u8],
    p: Policy,
    per_user: u32,
) -> redis::RedisResult<Value> {
    redis::cmd("EVALSHA")
        .arg(&shas.create)
        .arg(4)
        .arg(format!("{prefix}leases"))
        .arg(format!("{prefix}cfg"))
        .arg(format!("{prefix}sessions"))
        .arg(format!("{prefix}i:"))
        .arg(prefix)
        .arg(sid)
        .arg(user)
        .arg(device)
        .arg(token_hash)
        .arg("")
        .arg("")
        .arg(p.limit)
        .arg(per_user)
        .arg(i64::from(p.ttl_s) * 1000)
        .arg(p.hb_s)
        .arg(0)
        .arg("reject")
        .arg(0)
        .arg(RECORD_RETENTION_MS)
        .arg(0)
        .arg("0")
        .arg(token_hash)
        .arg("")
        .arg(OUTBOX_UNBOUNDED)
        .query_async(conn)
        .await
}

/// The outbox bound the raw scripts pass: none, since nothing drains their outbox (a run writes
/// far fewer entries than this).
const OUTBOX_UNBOUNDED: u64 = 1 << 40;

/// EVALSHA of heartbeat.lua as `SeatStore::heartbeat` sends it.
pub async fn raw_heartbeat(
    conn: &mut MultiplexedConnection,
    shas: &Shas,
    prefix: &str,
    sid: &str,
    token_hash: &[u8],
) -> redis::RedisResult<Value> {
    redis::cmd("EVALSHA")
        .arg(&shas.heartbeat)
        .arg(3)
        .arg(format!("{prefix}leases"))
        .arg(format!("{prefix}cfg"))
        .arg(format!("{prefix}sessions"))
        .arg(prefix)
        .arg(sid)
        .arg(token_hash)
        .arg(RECORD_RETENTION_MS)
        .query_async(conn)
        .await
}

/// EVALSHA of end.lua as `SeatStore::end` sends it for a client's cleanup.
pub async fn raw_end(
    conn: &mut MultiplexedConnection,
    shas: &Shas,
    prefix: &str,
    sid: &str,
    token_hash: &[u8],
) -> redis::RedisResult<Value> {
    redis::cmd("EVALSHA")
        .arg(&shas.end)
        .arg(3)
        .arg(format!("{prefix}leases"))
        .arg(format!("{prefix}cfg"))
        .arg(format!("{prefix}sessions"))
        .arg(prefix)
        .arg(sid)
        .arg(token_hash)
        .arg("ended")
        .arg(RECORD_RETENTION_MS)
        .query_async(conn)
        .await
}

// ---- seeding ----

/// License `i` of a seeded set: (license id, license key).
pub fn license_name(tag: &str, i: usize) -> (String, String) {
    (format!("{tag}-{i:06}"), format!("{tag}-key-{i:06}-0123456789abcdef"))
}

/// Inserts `n` licenses with one feature `f` each (multi-row INSERTs into `licenses` and
/// `license_features`) and writes each slot's cfg hash in Redis, as the first create's rebuild would.
pub async fn seed_licenses(
    pool: &sqlx::AnyPool,
    redis: &MultiplexedConnection,
    tag: &str,
    n: usize,
    p: Policy,
) -> Result<Vec<(String, String)>> {
    let now = chrono_now_ms();
    let names: Vec<(String, String)> = (0..n).map(|i| license_name(tag, i)).collect();
    for chunk in names.chunks(1000) {
        let lic: Vec<String> = chunk
            .iter()
            .map(|(id, key)| format!("('{id}', '{}', {now}, {now})", seatkeeper_core::token::hash_secret(key)))
            .collect();
        exec(
            pool,
            format!("INSERT INTO licenses (license_id, key_hash, created_at, updated_at) VALUES {}", lic.join(", ")),
        )
        .await?;
        let feat: Vec<String> = chunk
            .iter()
            .map(|(id, _)| format!("('{id}', 'f', {}, NULL, 'reject', {}, {}, 0)", p.limit, p.ttl_s, p.hb_s))
            .collect();
        exec(
            pool,
            format!(
                "INSERT INTO license_features (license_id, feature, max_sessions, max_sessions_per_user, on_limit, \
                 lease_ttl_seconds, heartbeat_interval_seconds, resurrect_window_seconds) VALUES {}",
                feat.join(", ")
            ),
        )
        .await?;
        let mut pipe = redis::pipe();
        for (id, _) in chunk {
            pipe.cmd("HSET")
                .arg(format!("{}cfg", prefix(id, "f")))
                .arg("limit")
                .arg(p.limit)
                .arg("per_user")
                .arg(0)
                .arg("ttl")
                .arg(i64::from(p.ttl_s) * 1000)
                .arg("hb")
                .arg(p.hb_s)
                .arg("res")
                .arg(0)
                .arg("on_limit")
                .arg("reject")
                .arg("ver")
                .arg(0)
                // The first create rebuilds the slot from the ledger, which marks it reconciled:
                // the sweep's member-by-member pass comes an hour later.
                .arg("rec")
                .arg(now)
                .ignore();
        }
        pipe.query_async::<()>(&mut redis.clone()).await?;
    }
    Ok(names)
}

pub async fn exec(pool: &sqlx::AnyPool, sql: String) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await.context("seeding SQL")?;
    Ok(())
}

pub fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// One seeded session.
#[derive(Clone, Debug)]
pub struct SeedSession {
    pub license: String,
    pub sid: String,
    pub user: String,
    pub token_hash: String,
    pub created: i64,
    pub heartbeat: i64,
    pub expires: i64,
}

/// Packs seeded sessions into the seat store the way create.lua does: the record in the slot's
/// `sessions` hash (MessagePack, by Redis's own cmsgpack), the lease in its sorted set and the id
/// in its user index.
const SEED: &str = "for i = 1, #ARGV, 7 do \
  redis.call('HSET', ARGV[i] .. 'sessions', ARGV[i + 1], \
    cmsgpack.pack({ARGV[i + 2], '', ARGV[i + 3], tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])})) \
  redis.call('ZADD', ARGV[i] .. 'leases', ARGV[i + 6], ARGV[i + 1]) \
  redis.call('HSET', ARGV[i] .. 'u', ARGV[i + 2], (redis.call('HGET', ARGV[i] .. 'u', ARGV[i + 2]) or '') .. ARGV[i + 1]) \
end \
return 1";

/// Writes sessions into Redis exactly as create.lua lays them out, 500 a script call, four calls in
/// flight.
pub async fn seed_redis_sessions(redis: &MultiplexedConnection, sessions: &[SeedSession]) -> Result<()> {
    stream::iter(sessions.chunks(500))
        .map(|chunk| {
            let mut c = redis.clone();
            async move {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SEED).arg(0);
                for s in chunk {
                    cmd.arg(prefix(&s.license, "f"))
                        .arg(&s.sid)
                        .arg(&s.user)
                        .arg(seatkeeper_core::seats::store_hash(&s.token_hash))
                        .arg(s.created)
                        .arg(s.heartbeat)
                        .arg(s.expires);
                }
                cmd.query_async::<i64>(&mut c).await
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<i64>>()
        .await?;
    Ok(())
}

/// Writes the same sessions into the ledger's `sessions` table, 1,000 rows a statement.
pub async fn seed_ledger_sessions(
    pool: &sqlx::AnyPool,
    sessions: &[SeedSession],
    mut on_chunk: impl FnMut(usize),
) -> Result<()> {
    let mut done = 0;
    let mut stream = stream::iter(sessions.chunks(1000))
        .map(|chunk| {
            let values: Vec<String> = chunk
                .iter()
                .map(|s| {
                    format!(
                        "('{}', '{}', 'f', '{}', NULL, '{}', NULL, NULL, 'active', {}, {}, {}, NULL)",
                        s.sid, s.license, s.user, s.token_hash, s.created, s.heartbeat, s.expires
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO sessions (session_id, license_id, feature, user_id, device_id, token_hash, idempotency_key, \
                 metadata, status, created_at, last_heartbeat_at, expires_at, ended_at) VALUES {}",
                values.join(", ")
            );
            let n = chunk.len();
            async move { exec(pool, sql).await.map(|()| n) }
        })
        .buffer_unordered(3);
    while let Some(n) = stream.next().await {
        done += n?;
        on_chunk(done);
    }
    Ok(())
}

/// Brings the planner's statistics up to date after a bulk load, as autovacuum would in time.
pub async fn analyze(pool: &sqlx::AnyPool, backend: Backend) -> Result<()> {
    match backend {
        Backend::Postgres => exec(pool, "VACUUM ANALYZE".into()).await,
        Backend::Sqlite => exec(pool, "ANALYZE".into()).await,
        Backend::MySql => exec(pool, "ANALYZE TABLE sessions, license_features, licenses".into()).await,
        Backend::Dynamo => bail!("no SQL on DynamoDB"),
    }
}

/// Sets every lease of the given slots to have run out `ago_ms` before now (the 100%-due case).
pub async fn expire_all(redis: &MultiplexedConnection, licenses: &[String], ago_ms: i64) -> Result<u64> {
    let script = redis::Script::new(
        "local t = redis.call('TIME') \
         local past = tonumber(t[1]) * 1000 - tonumber(ARGV[1]) \
         local m = redis.call('ZRANGE', KEYS[1], 0, -1) \
         for i = 1, #m do redis.call('ZADD', KEYS[1], 'XX', string.format('%d', past), m[i]) end \
         return #m",
    );
    let counts: Vec<u64> = stream::iter(licenses)
        .map(|l| {
            let mut c = redis.clone();
            let mut inv = script.prepare_invoke();
            inv.key(format!("{}leases", prefix(l, "f"))).arg(ago_ms);
            async move { inv.invoke_async::<u64>(&mut c).await }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(counts.iter().sum())
}

pub fn expect_tag(v: &Value, want: &str) -> Result<(), String> {
    let t = tag(v);
    if t == want {
        Ok(())
    } else {
        Err(format!("script answered {t:?}, expected {want:?}"))
    }
}
