//! Test harness for the black-box suite: every test gets its own real Redis (a `redis-server` on a
//! private Unix socket, so FLUSHALL and INFO commandstats see only that test) and its own real
//! database on the chosen ledger backend, and talks to the local runner over real HTTP.
//! With `SEATKEEPER_TEST_REDIS=cluster` that Redis is a private three-master Redis Cluster on
//! loopback ports instead (see `RedisServer`, and `RedisConn` for how a test's own commands reach
//! every master).
//!
//! Backends: SQLite (a temp file), PostgreSQL (`SEATKEEPER_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and MySQL/MariaDB (`SEATKEEPER_TEST_MYSQL_URL`,
//! default `mysql://root@127.0.0.1:3306/test`). A database is created per test and dropped after.
//!
//! DynamoDB runs on moto's server (`pip install 'moto[server]'`): the one at
//! `SEATKEEPER_TEST_DYNAMODB_URL` (an endpoint such as `http://127.0.0.1:5055`, as
//! `scripts/services.sh`'s `ensure_moto` starts it), or else one that the harness starts once per
//! test binary on a free loopback port and that stops when the binary exits. Each test gets a
//! table of its own, deleted after.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use seatkeeper_core::domain::PolicyDefaults;
use seatkeeper_core::{Config, Service};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod database;
pub mod tls;
pub use database::Database;

pub use seatkeeper_core;

pub const ADMIN_TOKEN: &str = "test-admin-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
    Dynamo,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mariadb",
            Backend::Dynamo => "dynamodb",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" | "pg" => Backend::Postgres,
            "mysql" | "mariadb" => Backend::MySql,
            "dynamodb" | "dynamo" => Backend::Dynamo,
            other => return Err(format!("unknown ledger {other:?}: use sqlite, postgres, mysql or dynamodb")),
        })
    }
}

/// Generates one `#[tokio::test]` per ledger backend for each scenario `async fn name(Backend)`.
/// Scenarios listed after `; sql_only:` reach into the database with SQL of their own (a trigger,
/// a renamed table, a row changed by hand): they run on the three SQL backends and not on
/// DynamoDB. Say why next to each such list.
#[macro_export]
macro_rules! ledger_tests {
    ($($name:ident),* $(,)? $(; sql_only: $($sql:ident),* $(,)?)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { $crate::bounded(super::$name($crate::Backend::Sqlite)).await } )*
            $($( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $sql() { $crate::bounded(super::$sql($crate::Backend::Sqlite)).await } )*)?
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { $crate::bounded(super::$name($crate::Backend::Postgres)).await } )*
            $($( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $sql() { $crate::bounded(super::$sql($crate::Backend::Postgres)).await } )*)?
        }
        mod mysql {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { $crate::bounded(super::$name($crate::Backend::MySql)).await } )*
            $($( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $sql() { $crate::bounded(super::$sql($crate::Backend::MySql)).await } )*)?
        }
        mod dynamo {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { $crate::bounded(super::$name($crate::Backend::Dynamo)).await } )*
        }
    };
}

/// Runs a scenario, failing it after 10 minutes instead of letting it hang the suite: a hang then
/// names its test, and what it held (a moto turn, servers) is dropped for the tests after it.
pub async fn bounded(scenario: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(600), scenario).await.is_err() {
        panic!("the scenario did not finish within 10 minutes");
    }
}

/// A name no other test of any run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

// ---- Redis ----

/// Whether the suite runs against Redis Cluster: `SEATKEEPER_TEST_REDIS=cluster` makes every
/// `RedisServer::start()` a private three-master cluster on loopback ports instead of one server
/// on a Unix socket.
pub fn cluster_mode() -> bool {
    std::env::var("SEATKEEPER_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// A private Redis for one test, killed on drop: one `redis-server` on a Unix socket, or (in
/// cluster mode, see `cluster_mode`) three masters on loopback ports joined into one cluster.
pub struct RedisServer {
    _children: Vec<tokio::process::Child>,
    dir: PathBuf,
    /// What `SEATKEEPER_REDIS_URL` is set to: the socket's URL, or every master's URL joined by
    /// commas (the cluster form).
    pub url: String,
    /// Each master's own URL (the one server's URL when not a cluster).
    pub masters: Vec<String>,
}

const CLUSTER_MASTERS: usize = 3;

/// Loopback ports nothing listens on, for servers that must be told their port (cluster nodes):
/// held while chosen, so that they differ. They are drawn at random below the system's ephemeral
/// range, where no `bind(0)` (a runner's listener, moto's) and no outgoing connection takes a port
/// between its choice and the server's start; two tests drawing the same one is caught by the
/// server's pid (`wait_for_own_server`).
async fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(20_000));
    let mut held = Vec::new();
    while held.len() < n {
        let port = low + (uuid::Uuid::new_v4().as_u128() % u128::from(high - low)) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn wait_for_ping(url: &str) -> bool {
    let client = redis::Client::open(url).expect("redis url");
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Waits (bounded) until `url` answers as `child` itself. A port chosen free can be taken before
/// the server binds it (by another test's server, chosen the same way at the same moment): the
/// child then exits, and whatever answers there is not it.
async fn wait_for_own_server(url: &str, child: &mut tokio::process::Child) -> bool {
    let client = redis::Client::open(url).expect("redis url");
    let Some(pid) = child.id() else { return false };
    for _ in 0..200 {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await {
                let answered = info.lines().find_map(|l| l.trim().strip_prefix("process_id:")?.parse::<u32>().ok());
                return answered == Some(pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

fn spawn_redis(args: &[&str], dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(args)
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (see README: the test command installs it)")
}

impl RedisServer {
    /// One server, or a cluster in cluster mode.
    pub async fn start() -> Self {
        if cluster_mode() {
            Self::start_cluster().await
        } else {
            Self::start_single().await
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.masters.len() > 1
    }

    /// A private `redis-server` on a Unix socket.
    pub async fn start_single() -> Self {
        let dir = std::env::temp_dir().join(unique("sk-redis-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("redis.sock");
        let child = spawn_redis(&["--port", "0", "--unixsocket", socket.to_str().expect("utf-8 temp path")], &dir);
        let url = format!("redis+unix://{}", socket.display());
        if wait_for_ping(&url).await {
            return RedisServer { _children: vec![child], dir, masters: vec![url.clone()], url };
        }
        panic!("redis-server did not come up on {}", socket.display());
    }

    /// A private Redis Cluster: three masters (no replicas) on free loopback ports, their cluster
    /// bus on free ports too, joined by `redis-cli --cluster create`. Returns once every master
    /// reports `cluster_state:ok` and knows all three.
    pub async fn start_cluster() -> Self {
        // A port taken between choosing it and the server binding it fails that server: try again
        // with new ports (a few times at most).
        for _ in 0..4 {
            let ports = free_ports(2 * CLUSTER_MASTERS).await;
            if let Some(server) = Self::try_cluster_at(&ports).await {
                return server;
            }
        }
        panic!("no Redis Cluster came up on free loopback ports after 4 attempts");
    }

    /// Three loopback ports for masters and three for their cluster bus, free now: for a cluster
    /// started later (`start_cluster_at`), e.g. after a service that is to find it down.
    pub async fn cluster_ports() -> Vec<u16> {
        free_ports(2 * CLUSTER_MASTERS).await
    }

    /// The `SEATKEEPER_REDIS_URL` of a cluster on these ports (`cluster_ports`).
    pub fn cluster_url(ports: &[u16]) -> String {
        ports[..CLUSTER_MASTERS].iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// A cluster on these ports (from `cluster_ports`): masters on the first three, bus on the rest.
    pub async fn start_cluster_at(ports: &[u16]) -> Self {
        Self::try_cluster_at(ports).await.unwrap_or_else(|| panic!("no Redis Cluster came up on ports {ports:?}"))
    }

    async fn try_cluster_at(ports: &[u16]) -> Option<Self> {
        assert_eq!(ports.len(), 2 * CLUSTER_MASTERS, "a port for each master and each bus");
        let dir = std::env::temp_dir().join(unique("sk-cluster-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut children = Vec::new();
        for i in 0..CLUSTER_MASTERS {
            let (port, bus) = (ports[i].to_string(), ports[CLUSTER_MASTERS + i].to_string());
            let conf = format!("nodes-{i}.conf");
            children.push(spawn_redis(
                &[
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "5000",
                ],
                &dir,
            ));
        }
        let masters: Vec<String> = Self::cluster_url(ports).split(',').map(str::to_owned).collect();
        let mut server = RedisServer { _children: children, dir, url: masters.join(","), masters };
        for (m, child) in server.masters.iter().zip(server._children.iter_mut()) {
            if !wait_for_own_server(m, child).await {
                return None; // dropped: the children are killed, the directory removed
            }
        }
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports[..CLUSTER_MASTERS].iter().map(|p| format!("127.0.0.1:{p}")))
            .arg("--cluster-yes")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .expect("redis-cli must be installed with redis-server");
        if !created.status.success() {
            eprintln!("redis-cli --cluster create failed, trying other ports: {created:?}");
            return None;
        }
        server.wait_cluster_ok().await;
        Some(server)
    }

    /// Waits (bounded) until every master sees a healthy cluster of all the masters.
    async fn wait_cluster_ok(&self) {
        let want_nodes = format!("cluster_known_nodes:{}", self.masters.len());
        for _ in 0..400 {
            let mut ok = true;
            for mut c in self.master_conns().await {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap_or_default();
                ok &= info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == want_nodes);
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the cluster {} did not reach cluster_state:ok", self.url);
    }

    /// A connection to every master, in the order of `masters`.
    pub async fn master_conns(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut out = Vec::new();
        for url in &self.masters {
            let c = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await;
            out.push(c.unwrap_or_else(|e| panic!("redis connection to {url}: {e}")));
        }
        out
    }

    /// A connection for the test's own commands (see `RedisConn`).
    pub async fn conn(&self) -> RedisConn {
        if !self.is_cluster() {
            return RedisConn::Node(self.master_conns().await.remove(0));
        }
        let cluster = redis::cluster::ClusterClient::new(self.masters.clone())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection");
        RedisConn::Cluster { cluster, masters: self.master_conns().await }
    }

    /// Every key on every master, by master (one entry when not a cluster).
    pub async fn keys_by_master(&self, pattern: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for mut c in self.master_conns().await {
            out.push(redis::cmd("KEYS").arg(pattern).query_async(&mut c).await.expect("KEYS on a master"));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test's connection to its Redis. On one server, a plain connection. On a cluster, commands
/// with keys go to their slot's master (through the crate's cluster client), and the commands
/// that are about a whole server go to every master and their replies are combined, so that a
/// test reads the cluster as it would read one server:
/// - FLUSHALL, FLUSHDB, CONFIG ..., SCRIPT ...: run on every master, the first reply (all must
///   succeed);
/// - KEYS: every master's keys; DBSIZE: the sum;
/// - INFO: one report whose counters are the sums over the masters (`total_commands_processed`,
///   each `cmdstat_*` field), and whose other fields are the first master's.
#[derive(Clone)]
pub enum RedisConn {
    Node(redis::aio::MultiplexedConnection),
    Cluster { cluster: redis::cluster_async::ClusterConnection, masters: Vec<redis::aio::MultiplexedConnection> },
}

#[derive(Clone, Copy)]
enum EveryMaster {
    FirstReply,
    Keys,
    Sum,
    Info,
}

fn every_master(cmd: &redis::Cmd) -> Option<EveryMaster> {
    let name = match cmd.args_iter().next()? {
        redis::Arg::Simple(b) => String::from_utf8_lossy(b).to_ascii_uppercase(),
        _ => return None,
    };
    Some(match name.as_str() {
        "FLUSHALL" | "FLUSHDB" | "CONFIG" | "SCRIPT" => EveryMaster::FirstReply,
        "KEYS" => EveryMaster::Keys,
        "DBSIZE" => EveryMaster::Sum,
        "INFO" => EveryMaster::Info,
        _ => return None,
    })
}

/// INFO reports merged: a field whose value is a number, or a list of `name=number`, is summed
/// over the reports; any other field keeps its first value. Lines keep the first report's order.
fn merge_info(reports: &[String]) -> String {
    fn sum_fields(a: &str, b: &str) -> Option<String> {
        if let (Ok(x), Ok(y)) = (a.parse::<i64>(), b.parse::<i64>()) {
            return Some((x + y).to_string());
        }
        let parse = |s: &str| -> Option<Vec<(String, String)>> {
            s.split(',').map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
        };
        let (xa, xb) = (parse(a)?, parse(b)?);
        let merged = xa
            .iter()
            .map(|(k, v)| {
                let other = xb.iter().find(|(kb, _)| kb == k).map(|(_, v)| v.as_str());
                match (v.parse::<i64>(), other.map(str::parse::<i64>)) {
                    (Ok(x), Some(Ok(y))) => format!("{k}={}", x + y),
                    _ => format!("{k}={v}"),
                }
            })
            .collect::<Vec<_>>();
        Some(merged.join(","))
    }
    let mut order: Vec<String> = Vec::new();
    let mut fields: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for report in reports {
        for line in report.lines() {
            let Some((k, v)) = line.split_once(':') else {
                if !order.iter().any(|o| o == line) && !fields.contains_key(line) {
                    order.push(line.to_owned());
                }
                continue;
            };
            match fields.get_mut(k) {
                Some(old) => {
                    if let Some(sum) = sum_fields(old, v) {
                        *old = sum;
                    }
                }
                None => {
                    fields.insert(k.to_owned(), v.to_owned());
                    order.push(k.to_owned());
                }
            }
        }
    }
    order
        .iter()
        .map(|k| match fields.get(k) {
            Some(v) => format!("{k}:{v}"),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Cluster { cluster, masters } => match every_master(cmd) {
                None => cluster.req_packed_command(cmd),
                Some(how) => Box::pin(async move {
                    let mut replies = Vec::new();
                    for m in masters.iter_mut() {
                        replies.push(m.req_packed_command(cmd).await?);
                    }
                    Ok(match how {
                        EveryMaster::FirstReply => replies.swap_remove(0),
                        EveryMaster::Keys => redis::Value::Array(
                            replies
                                .into_iter()
                                .flat_map(|r| match r {
                                    redis::Value::Array(keys) => keys,
                                    other => vec![other],
                                })
                                .collect(),
                        ),
                        EveryMaster::Sum => {
                            let mut total = 0;
                            for r in &replies {
                                total += redis::from_redis_value_ref::<i64>(r).map_err(redis::RedisError::from)?;
                            }
                            redis::Value::Int(total)
                        }
                        EveryMaster::Info => {
                            let mut reports = Vec::new();
                            for r in &replies {
                                reports
                                    .push(redis::from_redis_value_ref::<String>(r).map_err(redis::RedisError::from)?);
                            }
                            redis::Value::BulkString(merge_info(&reports).into_bytes())
                        }
                    })
                }),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster { cluster, .. } => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

// ---- a TCP proxy that can cut the ledger off ----

/// Forwards connections to the database; `cut` drops every connection and refuses new ones,
/// as a database that went down would; `restore` lets them through again.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (d, g) = (down.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, down, generation, task }
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a database URL (of its endpoint, for DynamoDB).
fn host_port(url: &str) -> String {
    if let Some((_, endpoint)) = url.split_once("endpoint=") {
        let endpoint = endpoint.split('&').next().unwrap_or(endpoint);
        return host_port(endpoint);
    }
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority).to_owned()
}

// ---- the app under test ----

/// A seat as the service would ask the seat store for one, for tests that call the store
/// directly: no device, idempotency key, cache or metadata, and room in the outbox.
pub fn direct_seat<'a>(session_id: &'a str, user: &'a str, token_hash: &'a str) -> seatkeeper_core::seats::NewSeat<'a> {
    seatkeeper_core::seats::NewSeat {
        session_id,
        user,
        device: None,
        token_hash,
        idempotency_key: None,
        sealed_secret: &[0; 32],
        license_cached: false,
        metadata_json: None,
        outbox_limit: 1_000,
    }
}

/// The answers to creates sent while a store stalls: each must be a `201` or a
/// `503 store_unavailable`, nothing else. Returns how many of each: (admitted, refused).
pub async fn admitted_or_unavailable(creates: Vec<tokio::task::JoinHandle<Resp>>) -> (u64, u64) {
    let (mut admitted, mut refused) = (0, 0);
    for c in creates {
        let r = c.await.expect("create task");
        match r.status {
            201 => admitted += 1,
            503 => {
                r.expect_error(503, "store_unavailable");
                refused += 1;
            }
            _ => panic!("unexpected answer {r:?}"),
        }
    }
    (admitted, refused)
}

/// A response: status, JSON body (Null when none) and headers.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the contract's error shape and code; returns the error object.
    pub fn expect_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "expected {status} {code}, got {self:?}");
        let err = &self.body["error"];
        assert_eq!(err["code"], code, "{self:?}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "error has a message: {self:?}");
        err
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Put a cuttable proxy between the service and the database (PostgreSQL, MySQL, DynamoDB).
    pub proxy: bool,
    pub admin_token: Option<String>,
    /// `SEATKEEPER_CORS_ORIGINS`, parsed.
    pub cors_origins: Vec<String>,
    /// `SEATKEEPER_ADMIN_AUTH=iam`.
    pub admin_iam: bool,
    /// `SEATKEEPER_OUTBOX_LIMIT`; `None`: the default.
    pub outbox_limit: Option<u64>,
    /// `SEATKEEPER_WEBHOOK_URL` and `SEATKEEPER_WEBHOOK_SECRET`.
    pub webhook: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy: false,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            cors_origins: Vec::new(),
            admin_iam: false,
            outbox_limit: None,
            webhook: None,
        }
    }
}

pub struct TestApp {
    server: JoinHandle<std::io::Result<()>>,
    pub base: String,
    pub http: reqwest::Client,
    /// The service the runner serves (the same stores), for sweeps and direct store access.
    pub svc: Service,
    pub proxy: Option<Proxy>,
    pub redis: RedisServer,
    pub db: Database,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, opts: Options) -> Self {
        Self::start_on(RedisServer::start().await, backend, opts).await
    }

    /// On this Redis (e.g. a cluster whatever the mode: `RedisServer::start_cluster`).
    pub async fn start_on(redis: RedisServer, backend: Backend, opts: Options) -> Self {
        let db = Database::create(backend).await;
        let proxy = if opts.proxy {
            assert_ne!(backend, Backend::Sqlite, "SQLite is a file: there is no connection to cut");
            Some(Proxy::start(host_port(&db.url)).await)
        } else {
            None
        };
        let ledger_url = match &proxy {
            Some(p) => db.url.replacen(&host_port(&db.url), &format!("127.0.0.1:{}", p.port), 1),
            None => db.url.clone(),
        };
        let config = Config {
            redis_url: redis.url.clone(),
            ledger_url,
            admin_token: opts.admin_token.clone(),
            defaults: PolicyDefaults { lease_ttl_seconds: 90, heartbeat_interval_seconds: 30 },
            sweep_interval: Duration::from_secs(3600),
            ledger_pool_size: seatkeeper_core::config::DEFAULT_LEDGER_POOL_SIZE,
            ..Config::from_lookup(|_| None).expect("default configuration")
        };
        let config = Config {
            cors_origins: opts.cors_origins.clone(),
            admin_iam: opts.admin_iam,
            outbox_limit: opts.outbox_limit.unwrap_or(config.outbox_limit),
            webhook: opts.webhook.as_ref().map(|(url, secret)| {
                seatkeeper_core::config::WebhookConfig::from_parts(Some(url.clone()), Some(secret.clone()))
                    .expect("test webhook settings")
                    .expect("both set")
            }),
            ..config
        };
        let svc = Service::connect(config).await.expect("service connects to its stores");
        svc.migrate().await.expect("ledger migrations apply");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(seatkeeper_local::serve(svc.clone(), listener, std::future::pending()));
        // The runner closes a connection idle for 10 s (its header timeout); a client that kept
        // one longer could send on it as it closes. Slow rounds (200 creates on moto) leave
        // connections idle that long.
        let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build().expect("HTTP client");
        TestApp { server, base, http, svc, proxy, redis, db }
    }

    pub async fn request(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        Self::read(req.send().await.expect("request reaches the runner")).await
    }

    /// Sends a raw body (for malformed JSON and oversized bodies).
    pub async fn raw(&self, method: Method, path: &str, bearer: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        Self::read(req.send().await.expect("request reaches the runner")).await
    }

    async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { status, body, headers }
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.request(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Creates a license with a fresh id and these features; returns (licenseId, key).
    pub async fn license(&self, features: Value) -> (String, String) {
        let id = unique("lic-");
        let r = self.admin(Method::PUT, &format!("/api/licenses/{id}"), Some(json!({ "features": features }))).await;
        assert_eq!(r.status, 201, "license created: {r:?}");
        (id, r.body["key"].as_str().expect("generated key").to_owned())
    }

    /// A license with one feature `f` of this policy.
    pub async fn simple_license(&self, policy: Value) -> (String, String) {
        self.license(json!({ "f": policy })).await
    }

    pub async fn create(&self, key: &str, body: Value) -> Resp {
        self.request(Method::POST, "/api/licenses/sessions", Some(key), Some(body)).await
    }

    /// Creates a session for `user` on feature `f`; asserts 201 and returns the body.
    pub async fn create_ok(&self, key: &str, user: &str) -> Value {
        let r = self.create(key, json!({"userId": user, "feature": "f"})).await;
        assert_eq!(r.status, 201, "create for {user}: {r:?}");
        r.body
    }

    pub async fn heartbeat(&self, token: &str) -> Resp {
        self.request(Method::POST, "/api/licenses/sessions/heartbeat", Some(token), None).await
    }

    pub async fn cleanup(&self, token: &str) -> Resp {
        self.request(Method::POST, "/api/licenses/sessions/cleanup", Some(token), None).await
    }

    pub async fn redis_conn(&self) -> RedisConn {
        self.redis.conn().await
    }

    /// The Redis key of a slot: `sk:{license/feature}:<suffix>`.
    pub fn seat_key(license: &str, feature: &str, suffix: &str) -> String {
        format!("sk:{{{license}/{feature}}}:{suffix}")
    }

    /// A live session's record in the seat store, read by hand: (user, device, created ms, last
    /// heartbeat ms). `None` when the slot's `sessions` hash has no such session.
    pub async fn seat_record(&self, license: &str, feature: &str, sid: &str) -> Option<(String, String, i64, i64)> {
        const READ: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
            if not v then return {} end \
            local r = cmsgpack.unpack(v) \
            return {r[1], r[2], string.format('%d', r[4]), string.format('%d', r[5])}";
        let mut c = self.redis_conn().await;
        let r: Vec<String> = redis::cmd("EVAL")
            .arg(READ)
            .arg(1)
            .arg(Self::seat_key(license, feature, "sessions"))
            .arg(sid)
            .query_async(&mut c)
            .await
            .unwrap();
        match r.as_slice() {
            [u, d, c, h] => Some((u.clone(), d.clone(), c.parse().unwrap(), h.parse().unwrap())),
            _ => None,
        }
    }

    /// Moves a live session's creation time back by `ms`, by hand (to age a seat past a grace).
    pub async fn age_seat(&self, license: &str, feature: &str, sid: &str, ms: i64) {
        const AGE: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
            if not v then return 0 end \
            local r = cmsgpack.unpack(v) \
            r[4] = r[4] - tonumber(ARGV[2]) \
            redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(r)) \
            return 1";
        let mut c = self.redis_conn().await;
        let done: i64 = redis::cmd("EVAL")
            .arg(AGE)
            .arg(1)
            .arg(Self::seat_key(license, feature, "sessions"))
            .arg(sid)
            .arg(ms)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(done, 1, "session {sid} has a record to age");
    }

    /// Removes a session's lease and record from the seat store by hand, as a lost write would.
    pub async fn drop_seat(&self, license: &str, feature: &str, sid: &str) {
        let mut c = self.redis_conn().await;
        let (lease, record): (i64, i64) = redis::pipe()
            .cmd("ZREM")
            .arg(Self::seat_key(license, feature, "leases"))
            .arg(sid)
            .cmd("HDEL")
            .arg(Self::seat_key(license, feature, "sessions"))
            .arg(sid)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!((lease, record), (1, 1), "session {sid} had a lease and a record");
    }

    /// Leases of a slot that are live by the Redis server's clock.
    pub async fn live_leases(&self, license: &str, feature: &str) -> u64 {
        let mut c = self.redis_conn().await;
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        let now_ms = secs * 1000 + micros / 1000;
        redis::cmd("ZCOUNT")
            .arg(format!("sk:{{{license}/{feature}}}:leases"))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut c)
            .await
            .unwrap()
    }

    /// All leases of a slot in Redis, live or due.
    pub async fn all_leases(&self, license: &str, feature: &str) -> u64 {
        let mut c = self.redis_conn().await;
        redis::cmd("ZCARD").arg(format!("sk:{{{license}/{feature}}}:leases")).query_async(&mut c).await.unwrap()
    }

    /// The session ids holding a lease in a slot, live or due.
    pub async fn lease_ids(&self, license: &str, feature: &str) -> Vec<String> {
        let mut c = self.redis_conn().await;
        redis::cmd("ZRANGE")
            .arg(Self::seat_key(license, feature, "leases"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    /// Moves a session's lease expiry to `ago_ms` before the Redis server's now, by hand: a lease
    /// that ran out and has not been swept.
    pub async fn lapse_seat(&self, license: &str, feature: &str, sid: &str, ago_ms: i64) {
        const LAPSE: &str = "local t = redis.call('TIME') \
            local past = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2]) \
            return redis.call('ZADD', KEYS[1], 'XX', 'CH', string.format('%d', past), ARGV[1])";
        let mut c = self.redis_conn().await;
        let changed: i64 = redis::cmd("EVAL")
            .arg(LAPSE)
            .arg(1)
            .arg(Self::seat_key(license, feature, "leases"))
            .arg(sid)
            .arg(ago_ms)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(changed, 1, "session {sid} had a lease to lapse");
    }

    /// Makes the ledger refuse new session rows (a trigger that raises), or accept them again:
    /// a real database failing a create's write, after the license was read.
    pub async fn fail_session_inserts(&self, fail: bool) {
        assert_ne!(self.db.backend, Backend::Dynamo, "SQL triggers only: list this scenario as sql_only");
        let pool = self.db.pool().await;
        let statements: &[&str] = match (self.db.backend, fail) {
            (Backend::Sqlite, true) => {
                &["CREATE TRIGGER sk_fail BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'injected fault'); END"]
            }
            (Backend::Sqlite, false) => &["DROP TRIGGER sk_fail"],
            (Backend::Postgres, true) => &[
                "CREATE FUNCTION sk_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER sk_fail BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION sk_fail()",
            ],
            (Backend::Postgres, false) => &["DROP TRIGGER sk_fail ON sessions", "DROP FUNCTION sk_fail()"],
            (Backend::MySql, true) => &["CREATE TRIGGER sk_fail BEFORE INSERT ON sessions FOR EACH ROW \
                 SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected fault'"],
            (Backend::MySql, false) => &["DROP TRIGGER sk_fail"],
            (Backend::Dynamo, _) => unreachable!(),
        };
        for q in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*q)).execute(&pool).await.expect("fault trigger");
        }
        pool.close().await;
    }

    /// Moves every slot's outbox into the ledger now, so that what the requests so far wrote is
    /// in the ledger (draining is idempotent: the runner's own writer may be at it too).
    pub async fn history(&self) {
        self.svc.drain_all_history().await.expect("the outbox drains into the ledger");
    }

    /// A ledger session row's status, straight from the database once the outbox is drained.
    pub async fn ledger_status(&self, session_id: &str) -> Option<String> {
        self.history().await;
        self.svc.ledger().session(session_id).await.expect("ledger read").map(|r| r.status)
    }
}

// ---- the runner as a process of its own ----

/// The `seatkeeper` binary the workspace builds, next to the test executable, and newer than the
/// runner's source (a stale binary would test old code).
pub fn seatkeeper_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = dir.join(format!("seatkeeper{}", std::env::consts::EXE_SUFFIX));
    let build = "build it first: `cargo build -p seatkeeper-local --bin seatkeeper` (or `cargo build --workspace`)";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {build}", bin.display()));
    for src in ["../local/src/main.rs", "../local/src/lib.rs", "../shared/src/seats/mod.rs"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
        let changed = std::fs::metadata(&path).and_then(|m| m.modified()).expect("runner source");
        assert!(built >= changed, "{} is older than {}: {build}", bin.display(), path.display());
    }
    bin
}

/// `seatkeeper serve` as a child process on the given stores, killed on drop.
pub struct RunnerProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

/// Starts `seatkeeper serve` with `--listen 127.0.0.1:0` (arguments before it: `command` is the
/// binary, or a shell that execs it with `"$@"`): the system picks a free port, so runners of
/// tests running beside each other never meet on one, and the runner prints the address it bound
/// on stdout. Returns the child and its base URL; panics, with `what` the runner logged, if it
/// exits before serving.
pub async fn spawn_runner(
    mut command: tokio::process::Command,
    log: Option<&std::path::Path>,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn seatkeeper serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    let logged = || log.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
    let line = match first {
        Ok(Ok(Some(line))) => line,
        other => panic!("seatkeeper serve did not start serving ({other:?}): {}", logged()),
    };
    let base = line.strip_prefix("seatkeeper serving on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    // Nothing else is written there, but a reader is kept so that a write could never fail.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base.to_owned())
}

impl RunnerProcess {
    /// Starts it and waits until it answers HTTP.
    pub async fn start(redis_url: &str, ledger_url: &str) -> Self {
        Self::start_with(redis_url, ledger_url, &[]).await
    }

    /// Starts it with more environment variables.
    pub async fn start_with(redis_url: &str, ledger_url: &str, env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(seatkeeper_bin());
        command.envs(env.iter().copied());
        command
            .env("SEATKEEPER_REDIS_URL", redis_url)
            .env("SEATKEEPER_LEDGER_URL", ledger_url)
            .env("SEATKEEPER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null());
        let (child, base) = spawn_runner(command, None).await;
        for _ in 0..200 {
            if reqwest::get(format!("{base}/health")).await.is_ok() {
                return RunnerProcess { child, base };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("seatkeeper serve did not come up on {base}");
    }

    /// SIGKILL: the process dies wherever it is, with no chance to finish or undo anything.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill seatkeeper serve");
    }
}

impl TestApp {
    /// Holds the ledger's `sessions` table locked for writing on a connection of its own, so that
    /// the service's ledger step waits; `unlock_sessions` lets it go.
    pub async fn lock_sessions(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.db.url).await.expect("lock connection");
        let statements: &[&str] = match self.db.backend {
            Backend::Sqlite => &["BEGIN IMMEDIATE"],
            Backend::Postgres => &["BEGIN", "LOCK TABLE sessions IN EXCLUSIVE MODE"],
            Backend::MySql => &["LOCK TABLES sessions WRITE"],
            Backend::Dynamo => panic!("SQL tables only: list this scenario as sql_only"),
        };
        for q in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*q)).execute(&mut conn).await.expect("lock sessions");
        }
        conn
    }

    pub async fn unlock_sessions(&self, mut conn: sqlx::AnyConnection) {
        let q = match self.db.backend {
            Backend::MySql => "UNLOCK TABLES",
            _ => "ROLLBACK",
        };
        sqlx::raw_sql(q).execute(&mut conn).await.expect("unlock sessions");
    }
}
