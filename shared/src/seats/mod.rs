//! The seat store: Redis, the authority on who holds a seat. One Lua script per operation
//! (see `lua/`), called by SHA with a NOSCRIPT fallback; every decision is taken inside the script
//! on the Redis server's clock, and counts are derived from live leases, never stored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind, TlsCertificates, Value};

use crate::domain::{EndReason, FeaturePolicy, LimitScope, Slot};
use crate::error::{Error, Result};

/// The seat store keeps the first 16 bytes of a token's SHA-256 (the ledger keeps all 32): 128 bits
/// are plenty to tell a token from a forgery, and the record of a live session stays small.
pub fn store_hash(token_hash_hex: &str) -> Vec<u8> {
    (0..32.min(token_hash_hex.len()))
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(token_hash_hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The text replies in an `INFO` answer: one server's string, or a cluster's map of them.
fn info_texts(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => out.push(text.clone()),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| info_texts(v, out)),
        Value::Array(items) => items.iter().for_each(|v| info_texts(v, out)),
        _ => {}
    }
}

/// What one server's `INFO memory` says is wrong for a seat store.
fn memory_problems(info: &str) -> Vec<String> {
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(str::trim);
    let mut out = Vec::new();
    if let Some(policy) = field("maxmemory_policy").filter(|p| *p != "noeviction") {
        out.push(format!(
            "Redis evicts keys under memory pressure (maxmemory-policy {policy}): set it to noeviction, or live sessions lose their seats' records"
        ));
    }
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (used, max) = (number("used_memory"), number("maxmemory"));
    if max > 0 && used.saturating_mul(100) >= max.saturating_mul(95) {
        out.push(format!("Redis holds {}% of its maxmemory: writes fail at the bound", used * 100 / max));
    }
    out
}

/// How long an ended session's record stays in Redis: long enough for late heartbeats to learn the
/// reason and for the sweep to copy an end the ledger missed into the ledger.
pub const RECORD_RETENTION_MS: i64 = 3_600_000;

pub mod queue;

/// rustls picks ring, the one provider built in, for Redis and for webhooks; installed
/// explicitly so that another crate turning on a second provider could not leave rustls without
/// a default. Already installed: kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/prelude.lua"), include_str!(concat!("lua/", $file))))
    };
}

struct Scripts {
    create: Script,
    heartbeat: Script,
    end: Script,
    release: Script,
    confirm: Script,
    rebuild: Script,
    policy: Script,
    due: Script,
    expire: Script,
    snapshot: Script,
    record: Script,
    revoke: Script,
    rejections: Script,
    webhooks: Script,
    mark: Script,
}

/// How long a create may take in Redis before the caller gives up on it. The script is sent with
/// this deadline on the Redis server's clock and refuses to run past it, so a create that times out
/// here (and answers 503) never takes a seat later. Kept well inside the response timeout.
const CREATE_BUDGET_MS: i64 = 1_000;
/// How long a replay's `confirm` mark keeps a seat from its create's undo: longer than any create
/// waits for its ledger row.
const KEPT_MS: i64 = 60_000;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis server's clock as seen from here: the offset of its TIME from this process's clock,
/// measured from replies (so off by at most one round trip, which the budget absorbs).
#[derive(Default)]
struct ServerClock {
    known: AtomicBool,
    offset_ms: AtomicI64,
}

impl ServerClock {
    fn observe(&self, server_now_ms: i64) {
        self.offset_ms.store(server_now_ms - crate::domain::now_ms(), Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }
}

/// The connection to the seat store: one Redis server, or a Redis Cluster. Both run the same
/// scripts the same way; every script's keys share the slot's hash tag, so in a cluster each call
/// goes to the one master that owns the slot.
#[derive(Clone)]
enum SeatConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How often a cluster call is sent again when the cluster answered that it did not run it
/// (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY: a slot moving or a failover). An ASK
/// goes at once to the master importing the slot, after ASKING; the others after a short wait, to
/// the owner in the crate's slot map (a MOVED has made it refresh the map).
const CLUSTER_REDIRECTS: u32 = 2;
const CLUSTER_REDIRECT_WAIT: Duration = Duration::from_millis(100);

/// Whether the cluster refused the command without running it, so that sending it again cannot
/// run a script twice. Transport errors are not among these: a script may have run when a
/// connection dropped, and the caller handles that (see `create`).
fn not_run(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    )
}

/// Where an ASK redirection sends a call: the master importing the slot.
fn ask_target(e: &RedisError) -> Option<(String, u16)> {
    if e.kind() != ErrorKind::Server(ServerErrorKind::Ask) {
        return None;
    }
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// A call sent to the master importing its slot, after ASKING on the same connection. A call
/// whose keys are not all there yet is refused (TRYAGAIN) until the slot is moved.
async fn asking(c: &mut ClusterConnection, cmd: &Cmd, host: String, port: u16) -> redis::RedisResult<Value> {
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").add_command(cmd.clone());
    let route = SingleNodeRoutingInfo::ByAddress { host, port };
    let mut replies = c.route_pipeline(pipe, 1, 1, route).await?;
    replies.pop().ok_or_else(|| RedisError::from((ErrorKind::Client, "no reply after ASKING")))?.extract_error()
}

impl ConnectionLike for SeatConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            SeatConn::Node(c) => c.req_packed_command(cmd),
            SeatConn::Cluster(c) => Box::pin(async move {
                let mut result = c.req_packed_command(cmd).await;
                for _ in 0..CLUSTER_REDIRECTS {
                    let Err(e) = &result else { break };
                    if !not_run(e) {
                        break;
                    }
                    result = match ask_target(e) {
                        Some((host, port)) => asking(c, cmd, host, port).await,
                        None => {
                            tokio::time::sleep(CLUSTER_REDIRECT_WAIT).await;
                            c.req_packed_command(cmd).await
                        }
                    };
                }
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            SeatConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            // Only `slot_size` sends a pipeline: in the middle of its slot's migration (ASK) it
            // fails, and the sweep takes the slot up again next time.
            SeatConn::Cluster(c) => Box::pin(async move {
                let mut attempt = 0;
                loop {
                    match c.req_packed_commands(pipeline, offset, count).await {
                        Err(e) if attempt < CLUSTER_REDIRECTS && not_run(&e) => attempt += 1,
                        done => return done,
                    }
                    tokio::time::sleep(CLUSTER_REDIRECT_WAIT).await;
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SeatConn::Node(c) => c.get_db(),
            SeatConn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a `rediss://` connection trusts: `None` for the system's root certificates (and for a
/// plain `redis://` URL), else the certificates of the CA file. Every URL of a cluster must agree
/// on TLS. Errors name the variables, never the URL (it may hold a password).
fn tls_certificates(urls: &[&str], ca_file: Option<&Path>) -> Result<Option<TlsCertificates>> {
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls > 0 && tls < urls.len() {
        return Err(Error::seat_store(
            "SEATKEEPER_REDIS_URL mixes rediss:// and redis:// nodes: a cluster's nodes all use TLS or none does",
        ));
    }
    if tls == 0 {
        return match ca_file {
            Some(_) => Err(Error::seat_store(format!(
                "{} is set, but SEATKEEPER_REDIS_URL is not a rediss:// URL: the CA file is for TLS",
                crate::config::REDIS_CA_FILE
            ))),
            None => Ok(None),
        };
    }
    install_crypto_provider();
    let Some(path) = ca_file else { return Ok(None) };
    let pem = std::fs::read(path).map_err(|e| {
        Error::seat_store(format!("cannot read {} {}: {e}", crate::config::REDIS_CA_FILE, path.display()))
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(Error::seat_store(format!(
            "{} {} holds no PEM certificate",
            crate::config::REDIS_CA_FILE,
            path.display()
        )));
    }
    Ok(Some(TlsCertificates { client_tls: None, root_cert: Some(pem) }))
}

/// The nodes of a Redis Cluster when `url` names a cluster: several comma-separated
/// `redis://host:port` or `rediss://host:port` URLs (a single seed node is written with a trailing
/// comma). `None` for a single server (`redis://`, `rediss://` or `redis+unix://`).
pub fn cluster_nodes(url: &str) -> Option<Vec<&str>> {
    url.contains(',').then(|| url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect())
}

#[derive(Clone)]
pub struct SeatStore {
    conn: SeatConn,
    scripts: Arc<Scripts>,
    clock: Arc<ServerClock>,
}

/// The keys of one slot; they all share the hash tag `{license/feature}`.
pub struct SlotKeys {
    prefix: String,
}

impl SlotKeys {
    pub fn new(slot: &Slot) -> Self {
        SlotKeys { prefix: format!("sk:{{{}/{}}}:", slot.license, slot.feature) }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }
    pub fn cfg(&self) -> String {
        format!("{}cfg", self.prefix)
    }
    pub fn sessions(&self) -> String {
        format!("{}sessions", self.prefix)
    }
    pub fn idempotency(&self, key: Option<&str>) -> String {
        format!("{}i:{}", self.prefix, key.unwrap_or(""))
    }
    /// The slot's outbox: the stream of session changes the ledger has yet to take.
    pub fn outbox(&self) -> String {
        format!("{}ob", self.prefix)
    }
}

/// One entry of a slot's outbox (see `lua/prelude.lua`), as the scripts wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxEvent {
    /// A session admitted: its ledger row.
    Start {
        session_id: String,
        user: String,
        device: Option<String>,
        token_hash: String,
        idempotency_key: Option<String>,
        metadata: Option<String>,
        created_ms: i64,
        expires_ms: i64,
        /// Seats taken once it was granted, and the limit then (0 in entries from before these
        /// were written: unknown).
        active: u32,
        limit: u32,
    },
    /// A session over.
    End { session_id: String, reason: EndReason, at_ms: i64, last_heartbeat_ms: i64, user: Option<String> },
    /// The first refused create of a minute (one entry per minute at most, whatever the
    /// refusals; they are counted in `rej`): the ledger has nothing to do with it, webhooks do.
    Refused { minute_ms: i64, limit: u32, active: u32, scope: String },
}

impl OutboxEvent {
    fn parse(fields: &std::collections::HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| fields.get(k).cloned().ok_or_else(|| unexpected(&format!("outbox entry without {k}")));
        let opt = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
        let int = |k: &str| get(k)?.parse::<i64>().map_err(|_| unexpected(&format!("outbox entry's {k}")));
        let count = |k: &str| fields.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        Ok(match get("k")?.as_str() {
            "start" => OutboxEvent::Start {
                session_id: get("s")?,
                user: get("u")?,
                device: opt("d"),
                token_hash: get("th")?,
                idempotency_key: opt("ik"),
                metadata: opt("m"),
                created_ms: int("c")?,
                expires_ms: int("e")?,
                active: count("n"),
                limit: count("l"),
            },
            "end" => {
                let r = get("r")?;
                OutboxEvent::End {
                    session_id: get("s")?,
                    reason: EndReason::parse(&r).ok_or_else(|| unexpected(&format!("outbox end reason {r}")))?,
                    at_ms: int("at")?,
                    last_heartbeat_ms: int("hb")?,
                    user: opt("u"),
                }
            }
            "refused" => {
                OutboxEvent::Refused { minute_ms: int("at")?, limit: count("l"), active: count("n"), scope: get("sc")? }
            }
            other => return Err(unexpected(&format!("outbox entry kind {other}"))),
        })
    }
}

/// A session to admit.
pub struct NewSeat<'a> {
    pub session_id: &'a str,
    pub user: &'a str,
    pub device: Option<&'a str>,
    pub token_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// The token's secret sealed for the idempotency record (see `token::seal`): a replay can give
    /// the same token back, and Redis holds nothing usable as a credential.
    pub sealed_secret: &'a [u8; 32],
    /// The license (and so the policy's version) came from a cache: the script answers `Stale`
    /// rather than admit when the slot holds a newer version.
    pub license_cached: bool,
    /// The client's metadata, as JSON, for the session's ledger row.
    pub metadata_json: Option<&'a str>,
    /// How many entries the slot's outbox may hold before creates answer `Backlog`.
    pub outbox_limit: u64,
}

/// A feature policy with the license version it comes from: only a newer one overwrites the
/// policy the seat store holds.
#[derive(Clone, Copy)]
pub struct Versioned<'a> {
    pub policy: &'a FeaturePolicy,
    pub version: i64,
}

#[derive(Debug)]
pub enum CreateOutcome {
    /// `limit` and `heartbeat_interval_seconds` are the policy in force in the seat store.
    Admitted {
        now_ms: i64,
        expires_ms: i64,
        active: u32,
        replaced: Vec<String>,
        evicted: Vec<String>,
        limit: u32,
        heartbeat_interval_seconds: u32,
    },
    Replay {
        session_id: String,
        sealed_secret: [u8; 32],
        created_ms: i64,
        expires_ms: i64,
        device: Option<String>,
        active: u32,
        limit: u32,
        heartbeat_interval_seconds: u32,
    },
    Limit {
        scope: LimitScope,
        limit: u32,
        active: u32,
        retry_after_ms: i64,
        /// The minute's first refusal: it wrote to the outbox.
        first_of_minute: bool,
    },
    IdempotencyConflict,
    /// The slot's outbox is at its bound (the ledger has not taken history for long): no seat.
    Backlog,
    /// The feature is being removed from its license.
    Revoked,
    Rebuild,
    /// The seat's license came from a cache and the slot holds a newer version of it: nothing was
    /// done; read the license again.
    Stale,
}

/// What a policy write found.
#[derive(Debug, PartialEq, Eq)]
pub enum PolicyApplied {
    Applied,
    /// The slot holds no data: the next call rebuilds it with the ledger's policy.
    Absent,
    /// The slot still holds sessions of an earlier removal of this feature.
    RevocationPending,
}

#[derive(Debug)]
pub enum HeartbeatOutcome {
    Renewed { expires_ms: i64, heartbeat_interval_seconds: u32, resurrected: bool },
    Gone(EndReason),
    Unknown,
    Rebuild,
}

#[derive(Debug)]
pub enum EndOutcome {
    Ended { at_ms: i64, last_heartbeat_ms: i64 },
    Over(EndReason),
    Unknown,
    Rebuild,
}

/// A session as the ledger holds it, for a rebuild.
pub struct RebuildSeat {
    pub session_id: String,
    pub user: String,
    pub device: Option<String>,
    pub token_hash: String,
    pub created_ms: i64,
    pub last_heartbeat_ms: i64,
}

/// A lease that ran out longer than the resurrect window ago.
#[derive(Debug, Clone)]
pub struct DueLease {
    pub session_id: String,
    pub expired_ms: i64,
    pub last_heartbeat_ms: i64,
}

/// One lease of a slot as the seat store holds it.
#[derive(Debug, Clone)]
pub struct SeatEntry {
    pub session_id: String,
    pub expires_ms: i64,
    /// From the session record; `None` when the record is gone.
    pub user: Option<String>,
    pub created_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    /// The device the session was created for, if any (and if its record is there).
    pub device: Option<String>,
    /// Restored by a rebuild and not confirmed by a heartbeat since.
    pub provisional: bool,
}

/// A slot's state in the seat store, read in O(1).
#[derive(Debug, Clone, Copy)]
pub struct SlotSize {
    pub initialized: bool,
    pub revoked: bool,
    pub leases: u64,
    /// When the sweep last reconciled the slot member by member (Redis time, ms).
    pub reconciled_ms: Option<i64>,
    /// Ledger writes known to have missed since then.
    pub dirty: Option<i64>,
}

/// What the seat store remembers of one session.
#[derive(Debug, Clone)]
pub enum Record {
    /// It holds a lease entry (live, or run out and not yet swept).
    Leased,
    /// It is over; its record is kept for a while.
    Over { reason: EndReason, ended_ms: Option<i64>, last_heartbeat_ms: Option<i64> },
    /// No trace of it, in a slot that has its data.
    Unknown,
    /// The slot lost its data: nothing about the session is known.
    SlotLost,
}

/// Every lease of a slot, live or run out, with the server's time.
#[derive(Debug)]
pub struct SlotSnapshot {
    pub initialized: bool,
    pub now_ms: i64,
    /// The limit in force in the seat store (0 when the slot holds no policy).
    pub limit: u32,
    pub entries: Vec<SeatEntry>,
}

impl SlotSnapshot {
    pub fn live(&self) -> impl Iterator<Item = &SeatEntry> {
        self.entries.iter().filter(move |e| e.expires_ms > self.now_ms)
    }

    /// Seats taken, as the scripts count them: restored sessions not yet confirmed by a heartbeat
    /// hold at most the seats the confirmed ones leave free.
    pub fn seats_taken(&self) -> u64 {
        let (mut confirmed, mut provisional) = (0u64, 0u64);
        for e in self.live() {
            if e.provisional {
                provisional += 1;
            } else {
                confirmed += 1;
            }
        }
        confirmed + provisional.min(u64::from(self.limit).saturating_sub(confirmed))
    }
}

impl SeatStore {
    /// Connects lazily: the service starts while Redis is down and answers 503 until it is back.
    /// Several comma-separated URLs select a Redis Cluster (see `cluster_nodes`). A `rediss://`
    /// URL connects over TLS, trusting the CA file that `SEATKEEPER_REDIS_CA_FILE` names in the
    /// environment, or else the system's root certificates (`connect_with` is given the file).
    /// `user:password@` in the URL authenticates, on every node of a cluster.
    pub fn connect(url: &str) -> Result<Self> {
        let ca_file = crate::config::redis_ca_file(|k| std::env::var(k).ok());
        Self::connect_with(url, ca_file.as_deref())
    }

    /// `connect`, with the CA file to trust for `rediss://` given (`Config::redis_ca_file`).
    pub fn connect_with(url: &str, ca_file: Option<&Path>) -> Result<Self> {
        let conn = match cluster_nodes(url) {
            Some(nodes) => {
                let tls = tls_certificates(&nodes, ca_file)?;
                SeatConn::Cluster(Self::connect_cluster(&nodes, tls)?)
            }
            None => {
                let client = match tls_certificates(&[url], ca_file)? {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                }
                .map_err(Error::seat_store)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                SeatConn::Node(client.get_connection_manager_lazy(config).map_err(Error::seat_store)?)
            }
        };
        let scripts = Scripts {
            create: script!("create.lua"),
            heartbeat: script!("heartbeat.lua"),
            end: script!("end.lua"),
            release: script!("release.lua"),
            confirm: script!("confirm.lua"),
            rebuild: script!("rebuild.lua"),
            policy: script!("policy.lua"),
            due: script!("due.lua"),
            expire: script!("expire.lua"),
            snapshot: script!("snapshot.lua"),
            record: script!("record.lua"),
            revoke: script!("revoke.lua"),
            rejections: script!("rejections.lua"),
            webhooks: script!("webhooks.lua"),
            mark: script!("mark.lua"),
        };
        Ok(SeatStore { conn, scripts: Arc::new(scripts), clock: Arc::default() })
    }

    /// A cluster connection that connects in the background, like the single node's: until the
    /// cluster answers, calls fail (503) and each failure makes it reconnect from the seed nodes.
    /// The client itself never sends a call again (`retries(0)`): after a dropped connection a
    /// script may have run, so only `SeatConn` repeats the calls the cluster refused unrun.
    fn connect_cluster(nodes: &[&str], tls: Option<TlsCertificates>) -> Result<ClusterConnection> {
        if nodes.is_empty() {
            return Err(Error::seat_store("SEATKEEPER_REDIS_URL names no cluster node"));
        }
        if let Some(unix) = nodes.iter().find(|n| !n.starts_with("redis://") && !n.starts_with("rediss://")) {
            return Err(Error::seat_store(format!(
                "a Redis Cluster node must be a redis:// or rediss://host:port URL, not {:?}",
                unix.split_once("://").map_or(*unix, |(scheme, _)| scheme)
            )));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec());
        if let Some(certs) = tls {
            builder = builder.certs(certs);
        }
        let client = builder
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(0)
            .build()
            .map_err(Error::seat_store)?;
        // The config's timeouts replace the builder's (an unset response timeout would clear it).
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(CONNECTION_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        Ok(client.get_pending_async_connection_with_config(config))
    }

    /// The deadline for a create sent now, on the Redis server's clock.
    /// In a cluster TIME is asked of the master that owns the slot, whose clock the script reads.
    async fn create_deadline(&self, k: &SlotKeys) -> Result<i64> {
        if !self.clock.known.load(Ordering::Relaxed) {
            let time = match &self.conn {
                SeatConn::Node(c) => redis::cmd("TIME").query_async(&mut c.clone()).await,
                SeatConn::Cluster(c) => {
                    let route = Route::with_key(k.leases(), SlotAddr::Master);
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    c.clone()
                        .route_command(redis::cmd("TIME"), routing)
                        .await
                        .and_then(|v| redis::from_redis_value_ref(&v).map_err(RedisError::from))
                }
            };
            let (secs, micros): (i64, i64) = time.map_err(Error::seat_store)?;
            self.clock.observe(secs * 1000 + micros / 1000);
        }
        Ok(crate::domain::now_ms() + self.clock.offset_ms.load(Ordering::Relaxed) + CREATE_BUDGET_MS)
    }

    /// What makes the seat store unsafe to admit with, read from every master's `INFO memory`
    /// (which managed services such as ElastiCache allow, unlike `CONFIG GET`): a policy that
    /// evicts keys (a partly evicted slot ends live sessions and loses caps and takeovers), and
    /// memory at the bound (writes fail). In a cluster `INFO` goes to every master and fails
    /// unless every one answers: a master that is down leaves its slots without an authority.
    pub async fn problems(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let info: Value = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.map_err(Error::seat_store)?;
        let mut texts = Vec::new();
        info_texts(&info, &mut texts);
        Ok(texts
            .iter()
            .flat_map(|t| memory_problems(t))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    async fn run(&self, inv: redis::ScriptInvocation<'_>) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(Error::seat_store)
    }

    /// Admits a session if a seat is free. An error means the caller cannot know whether the
    /// script ran: it gives the seat back with `release` (the script never runs past its deadline).
    pub async fn create(&self, slot: &Slot, policy: Versioned<'_>, seat: &NewSeat<'_>) -> Result<CreateOutcome> {
        let k = SlotKeys::new(slot);
        let mut idem_value = Vec::with_capacity(64 + seat.user.len());
        idem_value.extend_from_slice(seat.session_id.as_bytes());
        idem_value.extend_from_slice(seat.sealed_secret);
        idem_value.extend_from_slice(seat.user.as_bytes());
        let deadline = self.create_deadline(&k).await?;
        let mut inv = self.scripts.create.prepare_invoke();
        inv.key(k.leases())
            .key(k.cfg())
            .key(k.sessions())
            .key(k.idempotency(seat.idempotency_key))
            .arg(k.prefix())
            .arg(seat.session_id)
            .arg(seat.user)
            .arg(seat.device.unwrap_or(""))
            .arg(store_hash(seat.token_hash))
            .arg(seat.idempotency_key.unwrap_or(""))
            .arg(idem_value);
        policy_args(&mut inv, policy);
        inv.arg(RECORD_RETENTION_MS)
            .arg(deadline)
            .arg(if seat.license_cached { "1" } else { "0" })
            .arg(seat.token_hash)
            .arg(seat.metadata_json.unwrap_or(""))
            .arg(seat.outbox_limit);
        let r = Reply(self.run(inv).await?);
        Ok(match r.tag()? {
            "ok" => {
                let now_ms = r.int(1)?;
                self.clock.observe(now_ms);
                CreateOutcome::Admitted {
                    now_ms,
                    expires_ms: r.int(2)?,
                    active: r.int(3)? as u32,
                    replaced: r.ids(4)?,
                    evicted: r.ids(5)?,
                    limit: r.int(6)? as u32,
                    heartbeat_interval_seconds: r.int(7)? as u32,
                }
            }
            "replay" => CreateOutcome::Replay {
                session_id: r.str(1)?,
                sealed_secret: r.bytes(2)?.try_into().map_err(|_| unexpected("sealed secret"))?,
                created_ms: r.int(3)?,
                expires_ms: r.int(4)?,
                device: r.opt_str(5)?,
                active: r.int(6)? as u32,
                limit: r.int(7)? as u32,
                heartbeat_interval_seconds: r.int(8)? as u32,
            },
            "limit" => CreateOutcome::Limit {
                scope: if r.str(1)? == "user" { LimitScope::User } else { LimitScope::License },
                limit: r.int(2)? as u32,
                active: r.int(3)? as u32,
                retry_after_ms: r.int(4)?,
                first_of_minute: r.opt_int(5)? == Some(1),
            },
            "idem_conflict" => CreateOutcome::IdempotencyConflict,
            "backlog" => CreateOutcome::Backlog,
            "revoked" => CreateOutcome::Revoked,
            "rebuild" => CreateOutcome::Rebuild,
            "stale" => CreateOutcome::Stale,
            // The script ran after its deadline and changed nothing; the clock estimate was off.
            "late" => {
                self.clock.known.store(false, Ordering::Relaxed);
                return Err(Error::seat_store("the create reached the seat store after its deadline"));
            }
            other => return Err(unexpected(other)),
        })
    }

    /// One Redis round trip, no SQL: the whole heartbeat.
    pub async fn heartbeat(&self, slot: &Slot, session_id: &str, token_hash: &str) -> Result<HeartbeatOutcome> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(k.leases())
            .key(k.cfg())
            .key(k.sessions())
            .arg(k.prefix())
            .arg(session_id)
            .arg(store_hash(token_hash))
            .arg(RECORD_RETENTION_MS);
        let r = Reply(self.run(inv).await?);
        Ok(match r.tag()? {
            "ok" => HeartbeatOutcome::Renewed {
                expires_ms: r.int(1)?,
                heartbeat_interval_seconds: r.int(2)? as u32,
                resurrected: r.int(3)? == 1,
            },
            "gone" => HeartbeatOutcome::Gone(r.reason(1)?),
            "unknown" => HeartbeatOutcome::Unknown,
            "rebuild" => HeartbeatOutcome::Rebuild,
            other => return Err(unexpected(other)),
        })
    }

    /// Ends a live session. With `token_hash` the caller must hold the session's token.
    pub async fn end(
        &self,
        slot: &Slot,
        session_id: &str,
        token_hash: Option<&str>,
        reason: EndReason,
    ) -> Result<EndOutcome> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.end.prepare_invoke();
        inv.key(k.leases())
            .key(k.cfg())
            .key(k.sessions())
            .arg(k.prefix())
            .arg(session_id)
            .arg(token_hash.map(store_hash).unwrap_or_default())
            .arg(reason.as_str())
            .arg(RECORD_RETENTION_MS);
        let r = Reply(self.run(inv).await?);
        Ok(match r.tag()? {
            "ended" => EndOutcome::Ended { at_ms: r.int(1)?, last_heartbeat_ms: r.int(2)? },
            "over" => EndOutcome::Over(r.reason(1)?),
            "unknown" => EndOutcome::Unknown,
            "rebuild" => EndOutcome::Rebuild,
            other => return Err(unexpected(other)),
        })
    }

    /// Undoes an admission whose outcome is unknown (its reply was lost): frees its seat and takes
    /// its start out of the outbox. `Some(true)` when a seat was taken back, `None` when a replay
    /// of the create has answered for the session already (`confirm`): then nothing changes.
    pub async fn release(&self, slot: &Slot, session_id: &str, idempotency_key: Option<&str>) -> Result<Option<bool>> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(k.leases()).key(k.sessions()).key(k.idempotency(idempotency_key)).arg(k.prefix()).arg(session_id);
        let n = self.run_int(inv).await?;
        Ok((n >= 0).then_some(n == 1))
    }

    /// For a replay: keeps the seat from being given back by the create it repeats (whose reply
    /// may have been lost). False when that create has given it back already.
    pub async fn confirm(&self, slot: &Slot, session_id: &str) -> Result<bool> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.confirm.prepare_invoke();
        inv.key(k.sessions()).arg(k.prefix()).arg(session_id).arg(KEPT_MS);
        Ok(self.run_int(inv).await? == 1)
    }

    /// Restores a slot from the ledger's live sessions; returns how many sessions were restored.
    /// They hold their seats until they confirm by heartbeat, at most `limit` of them.
    pub async fn rebuild(&self, slot: &Slot, policy: Versioned<'_>, seats: &[RebuildSeat]) -> Result<u64> {
        const CHUNK: usize = 500;
        let k = SlotKeys::new(slot);
        let chunks: Vec<&[RebuildSeat]> = if seats.is_empty() { vec![&[]] } else { seats.chunks(CHUNK).collect() };
        let mut restored = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut inv = self.scripts.rebuild.prepare_invoke();
            inv.key(k.leases()).key(k.cfg()).key(k.sessions()).arg(k.prefix()).arg(u8::from(i + 1 == chunks.len()));
            policy_args(&mut inv, policy);
            for s in chunk.iter() {
                inv.arg(&s.session_id)
                    .arg(&s.user)
                    .arg(s.device.as_deref().unwrap_or(""))
                    .arg(store_hash(&s.token_hash))
                    .arg(s.created_ms)
                    .arg(s.last_heartbeat_ms);
            }
            restored += self.run_int(inv).await? as u64;
        }
        Ok(restored)
    }

    /// Applies a changed policy to a slot that is live in the store, unless it holds a newer one.
    pub async fn set_policy(&self, slot: &Slot, policy: Versioned<'_>) -> Result<PolicyApplied> {
        let mut inv = self.scripts.policy.prepare_invoke();
        inv.key(SlotKeys::new(slot).cfg());
        policy_args(&mut inv, policy);
        let mut conn = self.conn.clone();
        let tag: String = inv.invoke_async(&mut conn).await.map_err(Error::seat_store)?;
        Ok(match tag.as_str() {
            "revoked" => PolicyApplied::RevocationPending,
            "absent" => PolicyApplied::Absent,
            _ => PolicyApplied::Applied,
        })
    }

    /// Ends up to `batch` sessions of a slot whose feature was removed (reason `revoked`) and marks
    /// the slot revoked; returns (session id, last heartbeat ms) of those it ended, none once the
    /// slot is empty (its keys are then dropped).
    pub async fn revoke(&self, slot: &Slot, batch: usize) -> Result<Vec<(String, i64)>> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.revoke.prepare_invoke();
        inv.key(k.leases()).key(k.cfg()).key(k.sessions()).arg(k.prefix()).arg(RECORD_RETENTION_MS).arg(batch);
        let r = Reply(self.run(inv).await?);
        (0..r.0.len() / 2).map(|i| Ok((r.str(2 * i)?, r.int(2 * i + 1)?))).collect()
    }

    /// Up to `batch` leases of a slot that ran out longer than its resurrect window ago, oldest first.
    pub async fn due(&self, slot: &Slot, batch: usize) -> Result<Vec<DueLease>> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.due.prepare_invoke();
        inv.key(k.leases()).key(k.cfg()).key(k.sessions()).arg(k.prefix()).arg(batch);
        let r = Reply(self.run(inv).await?);
        (0..r.0.len() / 3)
            .map(|i| {
                Ok(DueLease {
                    session_id: r.str(3 * i)?,
                    expired_ms: r.int(3 * i + 1)?,
                    last_heartbeat_ms: r.int(3 * i + 2)?,
                })
            })
            .collect()
    }

    /// Marks due leases expired (after the ledger has recorded them); returns how many it removed.
    pub async fn expire(&self, slot: &Slot, session_ids: &[String]) -> Result<u64> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.expire.prepare_invoke();
        inv.key(k.leases()).key(k.cfg()).key(k.sessions()).arg(k.prefix()).arg(RECORD_RETENTION_MS).arg(session_ids);
        Ok(self.run_int(inv).await? as u64)
    }

    /// Every lease of a slot with its record: for reconciliation and the admin debug view.
    pub async fn snapshot(&self, slot: &Slot) -> Result<SlotSnapshot> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.snapshot.prepare_invoke();
        inv.key(k.leases()).key(k.cfg()).key(k.sessions()).arg(k.prefix());
        let r = Reply(self.run(inv).await?);
        let entries = (3..r.0.len())
            .step_by(7)
            .map(|i| {
                Ok(SeatEntry {
                    session_id: r.str(i)?,
                    expires_ms: r.int(i + 1)?,
                    user: r.opt_str(i + 2)?,
                    created_ms: r.opt_int(i + 3)?,
                    last_heartbeat_ms: r.opt_int(i + 4)?,
                    device: r.opt_str(i + 5)?,
                    provisional: r.int(i + 6)? == 1,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SlotSnapshot { initialized: r.int(0)? == 1, now_ms: r.int(1)?, limit: r.int(2)? as u32, entries })
    }

    /// Whether the slot is live in the store (its cfg exists), whether it awaits the end of a
    /// feature removal, and how many leases it holds, live or due: O(1) reads for the sweep's
    /// cheap consistency check. In a cluster the crate sends a pipeline whole to the node of its
    /// commands' slot (and refuses one that spans slots); these keys share the slot's hash tag.
    pub async fn slot_size(&self, slot: &Slot) -> Result<SlotSize> {
        let k = SlotKeys::new(slot);
        let mut conn = self.conn.clone();
        let (initialized, revoked, leases, reconciled_ms, dirty): (bool, bool, u64, Option<i64>, Option<i64>) =
            redis::pipe()
                .exists(k.cfg())
                .hexists(k.cfg(), "revoked")
                .zcard(k.leases())
                .hget(k.cfg(), "rec")
                .hget(k.cfg(), "dirty")
                .query_async(&mut conn)
                .await
                .map_err(Error::seat_store)?;
        Ok(SlotSize { initialized, revoked, leases, reconciled_ms, dirty })
    }

    /// What the seat store remembers of a session right now.
    pub async fn record(&self, slot: &Slot, session_id: &str) -> Result<Record> {
        let k = SlotKeys::new(slot);
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(k.cfg()).key(k.sessions()).arg(k.prefix()).arg(session_id);
        let r = Reply(self.run(inv).await?);
        Ok(match r.tag()? {
            "unknown" => Record::Unknown,
            "rebuild" => Record::SlotLost,
            "a" => Record::Leased,
            _ => Record::Over { reason: r.reason(0)?, ended_ms: r.opt_int(1)?, last_heartbeat_ms: r.opt_int(2)? },
        })
    }

    /// Marks a slot for reconciliation at the next sweep: a ledger write is known to have missed.
    pub async fn mark_dirty(&self, slot: &Slot) -> Result<()> {
        let mut inv = self.scripts.mark.prepare_invoke();
        inv.key(SlotKeys::new(slot).cfg()).arg("dirty");
        self.run_int(inv).await.map(drop)
    }

    /// Records a finished reconciliation; `dirty_seen`: the dirty count read when it began.
    pub async fn mark_reconciled(&self, slot: &Slot, dirty_seen: Option<i64>) -> Result<()> {
        let mut inv = self.scripts.mark.prepare_invoke();
        inv.key(SlotKeys::new(slot).cfg()).arg("reconciled").arg(dirty_seen.map(|d| d.to_string()).unwrap_or_default());
        self.run_int(inv).await.map(drop)
    }

    /// Refused creates per minute (minute start ms, count) that the ledger has not taken yet.
    pub async fn rejections(&self, slot: &Slot) -> Result<Vec<(i64, u64)>> {
        let mut inv = self.scripts.rejections.prepare_invoke();
        inv.key(format!("{}rej", SlotKeys::new(slot).prefix())).arg("read");
        let r = Reply(self.run(inv).await?);
        (0..r.0.len() / 2).map(|i| Ok((r.int(2 * i)?, r.int(2 * i + 1)? as u64))).collect()
    }

    /// Takes counts the ledger has recorded off the seat store's.
    pub async fn forget_rejections(&self, slot: &Slot, counts: &[(i64, u64)]) -> Result<()> {
        let mut inv = self.scripts.rejections.prepare_invoke();
        inv.key(format!("{}rej", SlotKeys::new(slot).prefix())).arg("forget");
        for (minute, n) in counts {
            inv.arg(minute).arg(n);
        }
        self.run_int(inv).await.map(drop)
    }

    /// Removes a lease the ledger does not explain (an orphan seat) and its record.
    pub async fn remove_orphan(&self, slot: &Slot, session_id: &str) -> Result<()> {
        self.release(slot, session_id, None).await.map(drop)
    }

    /// The oldest `count` entries of a slot's outbox, with their stream ids.
    pub async fn outbox(&self, slot: &Slot, count: usize) -> Result<Vec<(String, OutboxEvent)>> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(SlotKeys::new(slot).outbox())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(Error::seat_store)?;
        entries
            .into_iter()
            .map(|(id, flat)| {
                let fields: std::collections::HashMap<String, String> =
                    flat.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
                Ok((id, OutboxEvent::parse(&fields)?))
            })
            .collect()
    }

    /// Deletes outbox entries the ledger has committed.
    pub async fn outbox_delete(&self, slot: &Slot, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("XDEL")
            .arg(SlotKeys::new(slot).outbox())
            .arg(ids)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(Error::seat_store)
    }

    /// How many entries a slot's outbox holds.
    pub async fn outbox_len(&self, slot: &Slot) -> Result<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN").arg(SlotKeys::new(slot).outbox()).query_async(&mut conn).await.map_err(Error::seat_store)
    }

    async fn run_int(&self, inv: redis::ScriptInvocation<'_>) -> Result<i64> {
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(Error::seat_store)
    }
}

/// limit, per_user, ttl ms, hb s, res ms, on_limit, version: as `apply_policy` in the prelude reads them.
fn policy_args(inv: &mut redis::ScriptInvocation<'_>, v: Versioned<'_>) {
    let p = v.policy;
    inv.arg(p.max_sessions)
        .arg(p.max_sessions_per_user.unwrap_or(0))
        .arg(i64::from(p.lease_ttl_seconds) * 1000)
        .arg(p.heartbeat_interval_seconds)
        .arg(i64::from(p.resurrect_window_seconds) * 1000)
        .arg(p.on_limit.as_str())
        .arg(v.version);
}

fn unexpected(tag: &str) -> Error {
    Error::seat_store(format!("unexpected script reply {tag:?}"))
}

/// A script's array reply, read by position.
struct Reply(Vec<Value>);

impl Reply {
    fn get(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| Error::seat_store(format!("script reply too short at {i}")))
    }
    fn tag(&self) -> Result<&str> {
        match self.get(0)? {
            Value::BulkString(b) => std::str::from_utf8(b).map_err(Error::seat_store),
            Value::SimpleString(s) => Ok(s),
            other => Err(Error::seat_store(format!("unexpected script reply {other:?}"))),
        }
    }
    fn str(&self, i: usize) -> Result<String> {
        redis::from_redis_value_ref(self.get(i)?).map_err(Error::seat_store)
    }
    fn opt_str(&self, i: usize) -> Result<Option<String>> {
        Ok(match self.get(i)? {
            Value::Nil => None,
            v => Some(redis::from_redis_value_ref::<String>(v).map_err(Error::seat_store)?).filter(|s| !s.is_empty()),
        })
    }
    /// Comma-separated session ids ('' none).
    fn ids(&self, i: usize) -> Result<Vec<String>> {
        Ok(self.opt_str(i)?.map(|s| s.split(',').map(str::to_owned).collect()).unwrap_or_default())
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        redis::from_redis_value_ref(self.get(i)?).map_err(Error::seat_store)
    }
    fn int(&self, i: usize) -> Result<i64> {
        redis::from_redis_value_ref(self.get(i)?).map_err(Error::seat_store)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i)? {
            Value::Nil => Ok(None),
            Value::BulkString(b) if b.is_empty() => Ok(None),
            v => redis::from_redis_value_ref(v).map(Some).map_err(Error::seat_store),
        }
    }
    fn reason(&self, i: usize) -> Result<EndReason> {
        let s = self.str(i)?;
        EndReason::parse(&s).ok_or_else(|| Error::seat_store(format!("unknown end reason {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evicting_or_full_redis_is_named() {
        let well = "# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n";
        assert!(memory_problems(well).is_empty());
        let lru = "used_memory:10\r\nmaxmemory:100\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(memory_problems(lru).len(), 1);
        assert!(memory_problems(lru)[0].contains("allkeys-lru"));
        let full = "used_memory:96\r\nmaxmemory:100\r\nmaxmemory_policy:noeviction\r\n";
        assert!(memory_problems(full)[0].contains("96%"));
    }

    #[test]
    fn several_urls_select_a_cluster() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379"), None);
        assert_eq!(cluster_nodes("redis+unix:///tmp/redis.sock"), None);
        assert_eq!(
            cluster_nodes("redis://10.0.0.1:7000, redis://10.0.0.2:7001,redis://10.0.0.3:7002"),
            Some(vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7001", "redis://10.0.0.3:7002"])
        );
        assert_eq!(cluster_nodes("redis://cluster-endpoint:6379,"), Some(vec!["redis://cluster-endpoint:6379"]));
    }

    #[test]
    fn a_cluster_node_is_a_tcp_url() {
        let err = |url: &str| SeatStore::connect(url).err().map(|e| e.to_string());
        assert!(err("redis+unix:///tmp/a.sock,redis://127.0.0.1:7000").is_some());
        assert!(err(",").is_some(), "no node at all");
    }

    /// On a runtime: a connection, lazy as it is, spawns its task.
    #[tokio::test]
    async fn tls_settings_are_checked_without_showing_the_password() {
        let dir = std::env::temp_dir().join(format!("sk-ca-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (no_cert, ca) = (dir.join("empty.pem"), dir.join("ca.pem"));
        std::fs::write(&no_cert, "not a certificate\n").unwrap();
        let err = |url: &str, ca: Option<&Path>| SeatStore::connect_with(url, ca).err().map(|e| e.to_string());
        let url = "rediss://alice:pw-s3cret@127.0.0.1:1";
        for (what, url, ca) in [
            ("a CA file for a plain URL", "redis://alice:pw-s3cret@127.0.0.1:1", Some(no_cert.as_path())),
            ("a CA file that is missing", url, Some(ca.as_path())),
            ("a CA file without a certificate", url, Some(no_cert.as_path())),
            ("a cluster half on TLS", "rediss://alice:pw-s3cret@127.0.0.1:1,redis://alice:pw-s3cret@127.0.0.1:2", None),
        ] {
            let e = err(url, ca).unwrap_or_else(|| panic!("{what} is refused"));
            assert!(!e.contains("pw-s3cret"), "{what}: {e}");
        }
        // Lazy: no server needed to build the connections, with the system's roots or a CA file.
        assert_eq!(err(url, None), None);
        assert_eq!(err("rediss://:tok@127.0.0.1:1,rediss://:tok@127.0.0.1:2", None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
