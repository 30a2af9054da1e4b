//! What the benchmarks run on: a private `redis-server` (never the shared one), a throwaway database
//! per scenario, child processes that are always stopped, and progress lines on stderr.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use seatkeeper_core::domain::PolicyDefaults;
use seatkeeper_core::ledger::{Ledger, SqlLedger};
use seatkeeper_core::seats::SeatStore;
use seatkeeper_core::{Config, Service};

use seatkeeper_tests::unique;

use crate::timed::{LedgerStats, TimedLedger};

static STARTED: OnceLock<Instant> = OnceLock::new();

/// A progress line on stderr, stamped with the time since the run began.
pub fn progress(msg: impl AsRef<str>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:7.1}s] {}", msg.as_ref());
}

pub fn start_clock() {
    STARTED.get_or_init(Instant::now);
}

// ---- Redis ----

/// A private `redis-server` on a free loopback port, killed and its directory removed on drop.
/// FLUSHALL, CONFIG RESETSTAT and INFO are ours to use on it: nothing else talks to it.
pub struct RedisServer {
    child: Option<tokio::process::Child>,
    pub pid: u32,
    dir: PathBuf,
    pub url: String,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique("sk-bench-redis-"));
        std::fs::create_dir_all(&dir)?;
        // A free port: bind, read it, release it, hand it to redis-server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxclients", "20000", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server must be installed (apt-get install redis-server)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let pid = child.id().unwrap_or(0);
        let server = RedisServer { child: Some(child), pid, dir, url, port };
        let client = redis::Client::open(server.url.as_str())?;
        for _ in 0..400 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return Ok(server);
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("redis-server did not come up on port {port}")
    }

    /// A multiplexed connection whose requests time out after 60 s (the crate's default, 500 ms,
    /// is shorter than a FLUSHALL of a million keys).
    pub async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(redis::Client::open(self.url.as_str())?.get_multiplexed_async_connection_with_config(&config).await?)
    }

    pub async fn flushall(&self) -> Result<()> {
        let mut c = self.conn().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut c).await?;
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of `INFO <section>` as a number.
pub async fn info_field(conn: &mut redis::aio::MultiplexedConnection, section: &str, field: &str) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO {section} has no {field}"))
}

/// Commands Redis executed since the last CONFIG RESETSTAT: (all commands, of them script calls).
/// Commands run inside scripts count, each one.
pub async fn command_counts(conn: &mut redis::aio::MultiplexedConnection) -> Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    let (mut all, mut scripts) = (0, 0);
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else { continue };
        let (name, stats) = rest.split_once(':').unwrap_or((rest, ""));
        let calls: u64 =
            stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        // The reads of these statistics themselves are not the work being measured.
        if matches!(name, "info" | "config|resetstat") {
            continue;
        }
        all += calls;
        if matches!(name, "evalsha" | "eval") {
            scripts += calls;
        }
    }
    Ok((all, scripts))
}

/// Redis's own CPU time per EVALSHA since the last CONFIG RESETSTAT, in microseconds.
pub async fn evalsha_usec(conn: &mut redis::aio::MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN))
}

pub async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(conn).await?;
    Ok(())
}

// ---- databases ----

/// The test harness's throwaway databases: one per scenario, dropped (or its file removed) on drop.
pub use seatkeeper_tests::{Backend, Database};

/// The ledger named on the command line (`sqlite`, `postgres`, `mysql`).
pub fn ledger_backend(name: &str) -> Result<Backend> {
    match name.parse().map_err(anyhow::Error::msg)? {
        Backend::Dynamo => bail!("the benchmarks run on the SQL ledgers: use sqlite, postgres or mysql"),
        b => Ok(b),
    }
}

/// Where the throwaway databases are created.
#[derive(Clone, Debug)]
pub struct DbUrls {
    pub postgres: String,
    pub mysql: String,
}

/// A database of its own for one scenario, on the server its backend's URL names.
pub async fn database(backend: Backend, urls: &DbUrls) -> Result<Database> {
    let server = match backend {
        Backend::Postgres => Some(urls.postgres.as_str()),
        Backend::MySql => Some(urls.mysql.as_str()),
        Backend::Sqlite | Backend::Dynamo => None,
    };
    Database::create_on(backend, server).await.map_err(anyhow::Error::msg)
}

/// A pool of `max` connections of its own on the database (for seeding and direct reads).
pub async fn pool(db: &Database, max: u32) -> Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    Ok(sqlx::any::AnyPoolOptions::new().max_connections(max).connect(&db.url).await?)
}

// ---- the service under test ----

static POOL_SIZE: OnceLock<u32> = OnceLock::new();

/// The ledger pool size the service runs with (`--ledger-pool-size`, default the service's own).
pub fn ledger_pool_size() -> u32 {
    *POOL_SIZE.get_or_init(|| seatkeeper_core::config::DEFAULT_LEDGER_POOL_SIZE)
}

pub fn set_ledger_pool_size(n: u32) {
    let _ = POOL_SIZE.set(n);
}

/// The core service on real stores, its ledger wrapped to time every call.
pub struct Stack {
    pub svc: Service,
    pub ledger: SqlLedger,
    pub stats: Arc<LedgerStats>,
}

pub fn config(redis_url: &str, ledger_url: &str, ledger_pool_size: u32) -> Config {
    Config {
        redis_url: redis_url.to_owned(),
        ledger_url: ledger_url.to_owned(),
        admin_token: None,
        defaults: PolicyDefaults { lease_ttl_seconds: 90, heartbeat_interval_seconds: 30 },
        sweep_interval: Duration::from_secs(900),
        ledger_pool_size,
        ..Config::from_lookup(|_| None).expect("default configuration")
    }
}

impl Stack {
    /// What `Service::connect` does, with the ledger behind a timing wrapper.
    pub async fn connect(redis_url: &str, db: &Database) -> Result<Self> {
        let cfg = config(redis_url, &db.url, ledger_pool_size());
        let seats = SeatStore::connect(&cfg.redis_url).map_err(|e| anyhow::anyhow!("seat store: {e:?}"))?;
        let ledger = SqlLedger::connect_with(&cfg.ledger_url, cfg.ledger_pool_size)
            .await
            .map_err(|e| anyhow::anyhow!("ledger: {e:?}"))?;
        ledger.migrate().await.map_err(|e| anyhow::anyhow!("ledger migrations: {e:?}"))?;
        let stats = Arc::new(LedgerStats::default());
        let timed = TimedLedger { inner: ledger.clone(), stats: stats.clone() };
        let history = SeatStore::connect(&cfg.redis_url).map_err(|e| anyhow::anyhow!("seat store: {e:?}"))?;
        let svc = Service::with_history_store(seats, history, Arc::new(timed), cfg);
        // As the runner does: history leaves the outbox in the background.
        svc.start_history_writer();
        Ok(Stack { svc, ledger, stats })
    }

    pub async fn close(self) {
        self.ledger.pool().close().await;
    }
}

// ---- processes ----

/// Resident memory of a process: (current VmRSS, peak VmHWM), in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A child process that is killed when dropped, whatever happened.
pub struct ChildGuard {
    pub child: tokio::process::Child,
    pub what: &'static str,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub async fn stop(mut self) {
        // SIGTERM first is not needed: the children hold nothing that must be flushed.
        let _ = self.child.kill().await;
        progress(format!("stopped {}", self.what));
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: &str, child: &mut ChildGuard) -> Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            bail!("{} exited early: {status}", child.what);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{} did not listen on {addr}", child.what)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---- where the CPU went ----

/// CPU time by process group, from /proc: this process, our redis-server, the database servers,
/// wrk, our child processes, and the whole machine (so "other" is whatever else ran meanwhile).
#[derive(Clone, Debug)]
pub struct Cpu {
    at: Instant,
    machine: u64,
    groups: std::collections::BTreeMap<&'static str, u64>,
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl Cpu {
    pub fn now(redis_pid: u32) -> Cpu {
        let me = std::process::id();
        let mut groups = std::collections::BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
                let comm = &stat[open + 1..close];
                let f: Vec<&str> = stat[close + 2..].split(' ').collect();
                // After the comm: state, ppid, ..., utime is field 14 and stime 15 of the whole line.
                let (Some(ppid), Some(ut), Some(st)) = (f.get(1), f.get(11), f.get(12)) else { continue };
                let ticks = ut.parse::<u64>().unwrap_or(0) + st.parse::<u64>().unwrap_or(0);
                let group = if pid == me {
                    "bench"
                } else if pid == redis_pid {
                    "redis"
                } else if comm.starts_with("postgres") {
                    "postgres"
                } else if comm.starts_with("mariadbd") || comm.starts_with("mysqld") {
                    "mariadb"
                } else if comm == "wrk" {
                    "wrk"
                } else if ppid.parse::<u32>().ok() == Some(me) {
                    "server"
                } else {
                    continue;
                };
                *groups.entry(group).or_insert(0) += ticks;
            }
        }
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let l = s.lines().next()?.to_owned();
                let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal
                Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0))
            })
            .unwrap_or(0);
        Cpu { at: Instant::now(), machine, groups }
    }

    /// Seconds of CPU that `group` used between `self` and `later`.
    pub fn secs(&self, later: &Cpu, group: &str) -> f64 {
        let d = later.groups.get(group).unwrap_or(&0).saturating_sub(*self.groups.get(group).unwrap_or(&0));
        d as f64 / TICKS
    }

    /// Cores used by each group between `self` and `later`, e.g. "postgres 1.21, bench 0.52, ...".
    pub fn used_until(&self, later: &Cpu) -> String {
        let secs = (later.at - self.at).as_secs_f64().max(1e-3);
        let mut parts: Vec<(String, f64)> = Vec::new();
        let mut known = 0u64;
        for (g, t) in &later.groups {
            let d = t.saturating_sub(*self.groups.get(g).unwrap_or(&0));
            known += d;
            if d > 0 {
                parts.push((g.to_string(), d as f64 / TICKS / secs));
            }
        }
        let machine = later.machine.saturating_sub(self.machine);
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut s: Vec<String> = parts.iter().map(|(g, c)| format!("{g} {c:.2}")).collect();
        s.push(format!("other {:.2}", machine.saturating_sub(known) as f64 / TICKS / secs));
        format!("CPU, cores busy of {cores}: {} (machine {:.2})", s.join(", "), machine as f64 / TICKS / secs)
    }
}
