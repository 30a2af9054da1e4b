//! The SQL ledger: SQLite, PostgreSQL and MySQL/MariaDB through sqlx's `Any` driver with portable
//! SQL, and the schema's migrations.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::{
    AdminTokenRow, FeatureStats, Ledger, NewSession, PutLicense, SessionEnd, SessionRow, SessionSpan, SlotEntry,
    UsageHistory,
};
use crate::domain::{EndReason, FeaturePolicy, Ident, License, OnLimit, Slot};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// Whether this build carries the dialect's driver (its cargo feature).
    pub fn built(self) -> bool {
        match self {
            Dialect::Sqlite => cfg!(feature = "sqlite"),
            Dialect::Postgres => cfg!(feature = "postgres"),
            Dialect::MySql => cfg!(feature = "mysql"),
        }
    }
}

#[derive(Clone)]
pub struct SqlLedger {
    pool: AnyPool,
    dialect: Dialect,
}

impl SqlLedger {
    /// A pool with the default size; see `connect_with`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, crate::config::DEFAULT_LEDGER_POOL_SIZE).await
    }

    /// A lazy pool of at most `pool_size` connections (SQLite: at most 4, one writer at a time
    /// anyway): nothing is connected until a query needs it, so a process starts while the ledger
    /// is down and its queries answer "unavailable" until it is back. Only the URL is checked
    /// here. Does not migrate: call `Ledger::migrate`. SQLite files are created when missing.
    pub async fn connect_with(url: &str, pool_size: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if url.starts_with("sqlite:") {
            let url = if url.contains("mode=") || url.contains(":memory:") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Dialect::Postgres, url.to_owned())
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            (Dialect::MySql, url.replacen("mariadb:", "mysql:", 1))
        } else {
            return Err(Error::ledger(super::missing_feature(url)));
        };
        if !dialect.built() {
            return Err(Error::ledger(super::missing_feature(&url)));
        }
        let options: AnyConnectOptions = url.parse().map_err(db)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { pool_size.min(4) } else { pool_size })
            .acquire_timeout(Duration::from_secs(3))
            // A wait on a lock ends with an error rather than holding a request (and the writer's
            // batch) for as long as another session keeps the lock; SQLite's busy timeout is 5 s.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let bound = match dialect {
                        Dialect::Postgres => "SET lock_timeout = '5s'",
                        Dialect::MySql => "SET SESSION lock_wait_timeout = 5, innodb_lock_wait_timeout = 5",
                        Dialect::Sqlite => return Ok(()),
                    };
                    sqlx::raw_sql(bound).execute(conn).await.map(drop)
                })
            })
            // A commit that failed can leave the driver believing its connection is still inside
            // a transaction (SQLite rolls back by itself on a full disk, so the rollback sqlx then
            // sends fails): every later `BEGIN` on it would fail. Such a connection is closed
            // instead of being handed out again.
            .before_acquire(|conn, _| Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) }))
            .connect_lazy_with(options);
        Ok(SqlLedger { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will write. SQLite takes its write lock up front (BEGIN IMMEDIATE): a
    /// deferred transaction that reads first cannot upgrade to a writer while another connection
    /// writes, and fails at once with "database is locked" instead of waiting its busy timeout.
    async fn begin_write(&self) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            _ => self.pool.begin().await,
        }
    }

    /// Portable SQL uses `?` placeholders; PostgreSQL wants `$1, $2, ...`.
    fn sql(&self, q: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(if self.dialect == Dialect::Postgres {
            let mut out = String::with_capacity(q.len() + 8);
            let mut n = 0;
            for c in q.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            q.to_owned()
        })
    }

    /// SUM of a BIGINT column as a BIGINT (PostgreSQL and MySQL widen sums to NUMERIC/DECIMAL).
    fn int_sum(&self, column: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("SUM({column})::BIGINT"),
            Dialect::MySql => format!("CAST(SUM({column}) AS SIGNED)"),
            Dialect::Sqlite => format!("SUM({column})"),
        }
    }

    /// `?, ?, ?` for `n` values.
    fn placeholders(n: usize) -> String {
        vec!["?"; n].join(", ")
    }

    /// A license and its features in one round trip, by `license_id` or `key_hash`.
    async fn license_where(&self, column: &str, value: &str) -> Result<Option<License>> {
        let q = format!(
            "SELECT l.license_id, l.created_at, l.updated_at, l.version, f.feature, f.max_sessions, \
             f.max_sessions_per_user, f.on_limit, f.lease_ttl_seconds, f.heartbeat_interval_seconds, \
             f.resurrect_window_seconds FROM licenses l LEFT JOIN license_features f \
             ON f.license_id = l.license_id AND f.removed_at IS NULL WHERE l.{column} = ?"
        );
        let rows = sqlx::query(self.sql(&q)).bind(value).fetch_all(&self.pool).await.map_err(db)?;
        let Some(first) = rows.first() else { return Ok(None) };
        let mut features = BTreeMap::new();
        for r in &rows {
            let Some(feature) = r.try_get::<Option<String>, _>("feature").map_err(db)? else {
                continue; // a license with no features
            };
            let int = |c: &str| -> Result<u32> { Ok(r.try_get::<i64, _>(c).map_err(db)? as u32) };
            let on_limit: String = r.try_get("on_limit").map_err(db)?;
            let per_user: Option<i64> = r.try_get("max_sessions_per_user").map_err(db)?;
            features.insert(
                Ident::parse("feature", &feature)?,
                FeaturePolicy {
                    max_sessions: int("max_sessions")?,
                    max_sessions_per_user: per_user.map(|n| n as u32),
                    on_limit: OnLimit::parse(&on_limit).unwrap_or_default(),
                    lease_ttl_seconds: int("lease_ttl_seconds")?,
                    heartbeat_interval_seconds: int("heartbeat_interval_seconds")?,
                    resurrect_window_seconds: int("resurrect_window_seconds")?,
                },
            );
        }
        let id: String = first.try_get("license_id").map_err(db)?;
        Ok(Some(License {
            id: Ident::parse("licenseId", &id)?,
            features,
            created_at_ms: first.try_get("created_at").map_err(db)?,
            updated_at_ms: first.try_get("updated_at").map_err(db)?,
            version: first.try_get("version").map_err(db)?,
        }))
    }

    async fn sessions_where(&self, filter: &str, binds: &[&str]) -> Result<Vec<SessionRow>> {
        let q = format!(
            "SELECT session_id, license_id, feature, user_id, device_id, token_hash, idempotency_key, metadata, \
             status, created_at, last_heartbeat_at, expires_at, ended_at FROM sessions WHERE {filter}"
        );
        let mut query = sqlx::query(self.sql(&q));
        for b in binds {
            query = query.bind(*b);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(session_row).collect::<std::result::Result<_, _>>().map_err(db)
    }

    /// Marks every current feature of a license removed (its sessions are the sweep's to end);
    /// returns those features.
    async fn remove_features(&self, tx: &mut sqlx::AnyConnection, id: &Ident, now_ms: i64) -> Result<Vec<Ident>> {
        let rows =
            sqlx::query(self.sql("SELECT feature FROM license_features WHERE license_id = ? AND removed_at IS NULL"))
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
        let features = rows
            .iter()
            .map(|r| Ident::parse("feature", &r.try_get::<String, _>(0).map_err(db)?))
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(self.sql("UPDATE license_features SET removed_at = ? WHERE license_id = ? AND removed_at IS NULL"))
            .bind(now_ms)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(features)
    }

    /// Ends the given sessions inside an open transaction; returns the ids it changed. Set-based:
    /// per chunk of 200, one SELECT finds (and locks) the rows still active, one UPDATE ends them
    /// all, one INSERT writes their events.
    async fn end_in(&self, tx: &mut sqlx::AnyConnection, ends: &[SessionEnd]) -> Result<Vec<String>> {
        const CHUNK: usize = 200;
        let mut changed = Vec::new();
        // Rows locked in one order by every transaction: two of them rarely wait on each other.
        let mut ends: Vec<&SessionEnd> = ends.iter().collect();
        ends.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        ends.dedup_by(|a, b| a.session_id == b.session_id);
        let lock = if self.dialect == Dialect::Sqlite { "" } else { " FOR UPDATE" };
        for chunk in ends.chunks(CHUNK) {
            let q = format!(
                "SELECT session_id, license_id, feature, user_id FROM sessions \
                 WHERE session_id IN ({}) AND status = 'active' ORDER BY session_id{lock}",
                Self::placeholders(chunk.len())
            );
            let mut select = sqlx::query(self.sql(&q));
            for e in chunk {
                select = select.bind(&e.session_id);
            }
            let rows = select.fetch_all(&mut *tx).await.map_err(db)?;
            if rows.is_empty() {
                continue;
            }
            let by_id: std::collections::HashMap<&str, &SessionEnd> =
                chunk.iter().map(|e| (e.session_id.as_str(), *e)).collect();
            let active: Vec<(String, String, String, String)> = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0).map_err(db)?,
                        r.try_get(1).map_err(db)?,
                        r.try_get(2).map_err(db)?,
                        r.try_get(3).map_err(db)?,
                    ))
                })
                .collect::<Result<_>>()?;
            let whens = |then: &str| vec![format!("WHEN ? THEN {then}"); active.len()].join(" ");
            // last_heartbeat_at first: MySQL evaluates SET left to right with the new values.
            let q = format!(
                "UPDATE sessions SET \
                 last_heartbeat_at = CASE session_id {} END, status = CASE session_id {} END, \
                 ended_at = CASE session_id {} END, expires_at = CASE session_id {} END \
                 WHERE session_id IN ({})",
                whens("(CASE WHEN ? > last_heartbeat_at THEN ? ELSE last_heartbeat_at END)"),
                whens("?"),
                whens("?"),
                whens("?"),
                Self::placeholders(active.len())
            );
            let mut update = sqlx::query(self.sql(&q));
            for (id, ..) in &active {
                let hb = by_id[id.as_str()].last_heartbeat_at_ms.unwrap_or(0);
                update = update.bind(id).bind(hb).bind(hb);
            }
            for (id, ..) in &active {
                update = update.bind(id).bind(by_id[id.as_str()].reason.as_str());
            }
            for _ in 0..2 {
                for (id, ..) in &active {
                    update = update.bind(id).bind(by_id[id.as_str()].ended_at_ms);
                }
            }
            for (id, ..) in &active {
                update = update.bind(id);
            }
            update.execute(&mut *tx).await.map_err(db)?;
            let q = format!(
                "INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) VALUES {}",
                vec![format!("({})", Self::placeholders(6)); active.len()].join(", ")
            );
            let mut insert = sqlx::query(self.sql(&q));
            for (id, license, feature, user) in &active {
                let end = by_id[id.as_str()];
                insert = insert
                    .bind(license)
                    .bind(feature)
                    .bind(id)
                    .bind(user)
                    .bind(end.reason.as_str())
                    .bind(end.ended_at_ms);
            }
            insert.execute(&mut *tx).await.map_err(db)?;
            changed.extend(active.into_iter().map(|(id, ..)| id));
        }
        Ok(changed)
    }
}

impl SqlLedger {
    /// New sessions and their ends in one transaction.
    /// A group commit's batch, in one round trip: the ends and the rows go as two JSON parameters,
    /// so the SQL has one shape whatever the batch's size and is prepared once per connection.
    /// PostgreSQL takes it as one statement (one commit); SQLite as four statements in one call,
    /// inside one transaction. Rows to end are locked in id order, as `end_in` does, so that two
    /// writers rarely wait on each other. Returns the ids of the sessions it ended.
    async fn record_batch_json(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> Result<Vec<String>> {
        const POSTGRES: &str = "WITH e AS ( \
               SELECT * FROM json_to_recordset($1::json) AS e(session_id text, reason text, at bigint, hb bigint)), \
             locked AS ( \
               SELECT s.session_id FROM sessions s JOIN e ON e.session_id = s.session_id \
               WHERE s.status = 'active' ORDER BY s.session_id FOR UPDATE OF s), \
             ended AS ( \
               UPDATE sessions s SET last_heartbeat_at = GREATEST(s.last_heartbeat_at, e.hb), status = e.reason, \
                 ended_at = e.at, expires_at = e.at \
               FROM e JOIN locked l ON l.session_id = e.session_id \
               WHERE s.session_id = e.session_id AND s.status = 'active' \
               RETURNING s.license_id, s.feature, s.session_id, s.user_id, e.reason, e.at), \
             ended_events AS ( \
               INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) \
               SELECT * FROM ended), \
             r AS ( \
               SELECT * FROM json_to_recordset($2::json) AS r(session_id text, license_id text, feature text, \
                 user_id text, device_id text, token_hash text, idempotency_key text, metadata text, status text, \
                 created_at bigint, last_heartbeat_at bigint, expires_at bigint, ended_at bigint)), \
             created AS ( \
               INSERT INTO sessions (session_id, license_id, feature, user_id, device_id, token_hash, \
                 idempotency_key, metadata, status, created_at, last_heartbeat_at, expires_at, ended_at) \
               SELECT * FROM r), \
             created_events AS ( \
               INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) \
               SELECT license_id, feature, session_id, user_id, 'created', created_at FROM r) \
             SELECT session_id FROM ended";
        // SQLite has no data-modifying CTEs: the end events are written before the ends.
        const SQLITE: &str = "INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) \
               SELECT s.license_id, s.feature, s.session_id, s.user_id, e.value ->> 'reason', e.value ->> 'at' \
               FROM json_each(?1) e JOIN sessions s ON s.session_id = e.value ->> 'session_id' \
               WHERE s.status = 'active'; \
             UPDATE sessions SET last_heartbeat_at = MAX(last_heartbeat_at, e.hb), status = e.reason, \
               ended_at = e.at, expires_at = e.at \
               FROM (SELECT value ->> 'session_id' AS session_id, value ->> 'reason' AS reason, \
                 value ->> 'at' AS at, value ->> 'hb' AS hb FROM json_each(?1)) AS e \
               WHERE sessions.session_id = e.session_id AND sessions.status = 'active' \
               RETURNING session_id; \
             INSERT INTO sessions (session_id, license_id, feature, user_id, device_id, token_hash, \
               idempotency_key, metadata, status, created_at, last_heartbeat_at, expires_at, ended_at) \
               SELECT value ->> 'session_id', value ->> 'license_id', value ->> 'feature', value ->> 'user_id', \
                 value ->> 'device_id', value ->> 'token_hash', value ->> 'idempotency_key', value ->> 'metadata', \
                 value ->> 'status', value ->> 'created_at', value ->> 'last_heartbeat_at', value ->> 'expires_at', \
                 value ->> 'ended_at' FROM json_each(?2); \
             INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) \
               SELECT value ->> 'license_id', value ->> 'feature', value ->> 'session_id', value ->> 'user_id', \
                 'created', value ->> 'created_at' FROM json_each(?2)";
        let mut all: Vec<&SessionEnd> = sessions.iter().flat_map(|s| s.ends.iter()).chain(ends).collect();
        all.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        all.dedup_by(|a, b| a.session_id == b.session_id);
        let ends = serde_json::Value::Array(
            all.iter()
                .map(|e| {
                    serde_json::json!({
                        "session_id": e.session_id, "reason": e.reason.as_str(), "at": e.ended_at_ms,
                        "hb": e.last_heartbeat_at_ms.unwrap_or(0),
                    })
                })
                .collect(),
        )
        .to_string();
        let rows = serde_json::Value::Array(
            sessions
                .iter()
                .map(|s| {
                    let r = &s.row;
                    serde_json::json!({
                        "session_id": r.session_id, "license_id": r.license_id, "feature": r.feature,
                        "user_id": r.user_id, "device_id": r.device_id, "token_hash": r.token_hash,
                        "idempotency_key": r.idempotency_key, "metadata": r.metadata, "status": r.status,
                        "created_at": r.created_at_ms, "last_heartbeat_at": r.last_heartbeat_at_ms,
                        "expires_at": r.expires_at_ms, "ended_at": r.ended_at_ms,
                    })
                })
                .collect(),
        )
        .to_string();
        let (ends, rows) = (&ends, &rows);
        let ids =
            |rows: Vec<AnyRow>| rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<_, _>>();
        retried(|| async move {
            if self.dialect == Dialect::Postgres {
                let ended = sqlx::query(POSTGRES).bind(ends).bind(rows).fetch_all(&self.pool).await.map_err(db)?;
                return ids(ended).map_err(db);
            }
            let mut tx = self.begin_write().await.map_err(db)?;
            let ended = sqlx::query(SQLITE).bind(ends).bind(rows).fetch_all(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            ids(ended).map_err(db)
        })
        .await
    }

    /// A group commit's batch (or ends alone) in one transaction, the way this dialect writes it
    /// fastest; returns the ids of the sessions it ended.
    async fn write_batch(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> Result<Vec<String>> {
        match self.dialect {
            Dialect::MySql => self.record_batch(sessions, ends).await,
            Dialect::Postgres | Dialect::Sqlite => self.record_batch_json(sessions, ends).await,
        }
    }

    /// A group commit's batch in one transaction, in multi-row statements (MariaDB, which has
    /// no `json_to_recordset` and no UPDATE ... RETURNING): every end (those the creates caused
    /// and the others), then every row.
    async fn record_batch(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> Result<Vec<String>> {
        retried(|| async move {
            let mut tx = self.begin_write().await.map_err(db)?;
            let all: Vec<SessionEnd> =
                sessions.iter().flat_map(|s| s.ends.iter().cloned()).chain(ends.iter().cloned()).collect();
            let ended = self.end_in(&mut tx, &all).await?;
            let rows: Vec<&SessionRow> = sessions.iter().map(|s| &s.row).collect();
            self.insert_rows(&mut tx, &rows).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(ended)
        })
        .await
    }

    /// Session rows and their `created` events, in multi-row statements. The raw error, so that a
    /// caller can tell a row recorded already.
    async fn insert_rows(
        &self,
        tx: &mut sqlx::AnyConnection,
        rows: &[&SessionRow],
    ) -> std::result::Result<(), sqlx::Error> {
        // 13 columns a row: 70 rows stay under SQLite's oldest limit of 999 bound values.
        for chunk in rows.chunks(70) {
            let q = format!(
                "INSERT INTO sessions (session_id, license_id, feature, user_id, device_id, token_hash, idempotency_key, \
                 metadata, status, created_at, last_heartbeat_at, expires_at, ended_at) VALUES {}",
                vec![format!("({})", Self::placeholders(13)); chunk.len()].join(", ")
            );
            let mut insert = sqlx::query(self.sql(&q));
            for r in chunk {
                insert = insert
                    .bind(&r.session_id)
                    .bind(&r.license_id)
                    .bind(&r.feature)
                    .bind(&r.user_id)
                    .bind(&r.device_id)
                    .bind(&r.token_hash)
                    .bind(&r.idempotency_key)
                    .bind(&r.metadata)
                    .bind(&r.status)
                    .bind(r.created_at_ms)
                    .bind(r.last_heartbeat_at_ms)
                    .bind(r.expires_at_ms)
                    .bind(r.ended_at_ms);
            }
            insert.execute(&mut *tx).await?;
            let q = format!(
                "INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at) VALUES {}",
                vec!["(?, ?, ?, ?, 'created', ?)"; chunk.len()].join(", ")
            );
            let mut events = sqlx::query(self.sql(&q));
            for r in chunk {
                events = events
                    .bind(&r.license_id)
                    .bind(&r.feature)
                    .bind(&r.session_id)
                    .bind(&r.user_id)
                    .bind(r.created_at_ms);
            }
            events.execute(&mut *tx).await?;
        }
        Ok(())
    }
}

fn session_row(r: &AnyRow) -> std::result::Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        session_id: r.try_get("session_id")?,
        license_id: r.try_get("license_id")?,
        feature: r.try_get("feature")?,
        user_id: r.try_get("user_id")?,
        device_id: r.try_get("device_id")?,
        token_hash: r.try_get("token_hash")?,
        idempotency_key: r.try_get("idempotency_key")?,
        metadata: r.try_get("metadata")?,
        status: r.try_get("status")?,
        created_at_ms: r.try_get("created_at")?,
        last_heartbeat_at_ms: r.try_get("last_heartbeat_at")?,
        expires_at_ms: r.try_get("expires_at")?,
        ended_at_ms: r.try_get("ended_at")?,
    })
}

/// A (license_id, feature) row as a slot.
fn slot_of(r: &AnyRow) -> Result<Slot> {
    let (l, f): (String, String) = (r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?);
    Ok(Slot { license: Ident::parse("licenseId", &l)?, feature: Ident::parse("feature", &f)? })
}

/// A database error as the service's: transient when concurrent transactions conflicted (a
/// deadlock, a serialization failure, SQLite busy), which a retry of the whole transaction resolves.
fn db(e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("40001" | "40P01" | "1213" | "5" | "517" | "6"))
                || d.message().contains("Deadlock found")
        }
        _ => false,
    };
    Error::StoreUnavailable { store: crate::error::Store::Ledger, detail: e.to_string(), transient }
}

/// Runs a write transaction again when it lost a conflict with a concurrent one (up to 5 tries,
/// a few milliseconds apart, jittered so that the two do not meet again).
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        match attempt().await {
            // Only conflicts that resolve at once: a busy SQLite that made its attempt wait out
            // its busy timeout is not tried again (the caller hears it is unavailable).
            Err(e) if e.is_transient() && tries < 4 && started.elapsed() < Duration::from_secs(1) => {
                tries += 1;
                let pause = 2u64.pow(tries) + rand::random_range(0..5u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            other => return other,
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Ledger for SqlLedger {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db).map(drop)
    }

    async fn put_license(
        &self,
        id: &Ident,
        key_hash: Option<&str>,
        features: &BTreeMap<Ident, FeaturePolicy>,
        now_ms: i64,
    ) -> Result<PutLicense> {
        retried(|| async move {
            let mut tx = self.begin_write().await.map_err(db)?;
            let exists = sqlx::query(self.sql("SELECT created_at FROM licenses WHERE license_id = ?"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .is_some();
            let write = if exists {
                sqlx::query(self.sql(
                    "UPDATE licenses SET key_hash = COALESCE(?, key_hash), updated_at = ?, version = version + 1 \
                     WHERE license_id = ?",
                ))
                .bind(key_hash)
                .bind(now_ms)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
            } else {
                let key_hash = key_hash.ok_or_else(|| Error::invalid("key", "key is required"))?;
                // A new license's version starts at its creation time, so that one deleted and
                // made again under its id is newer than anything the old one left in a cache.
                sqlx::query(self.sql(
                    "INSERT INTO licenses (license_id, key_hash, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?)",
                ))
                .bind(id.as_str())
                .bind(key_hash)
                .bind(now_ms)
                .bind(now_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
            };
            match write {
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::invalid("key", "key is already in use by another license"));
                }
                other => other.map_err(db)?,
            };
            // Features left out stay, marked removed, until the sweep has ended their sessions.
            let removed: Vec<Ident> = self
                .remove_features(&mut tx, id, now_ms)
                .await?
                .into_iter()
                .filter(|f| !features.contains_key(f))
                .collect();
            for (feature, p) in features {
                sqlx::query(self.sql("DELETE FROM license_features WHERE license_id = ? AND feature = ?"))
                    .bind(id.as_str())
                    .bind(feature.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query(self.sql(&format!(
                    "INSERT INTO license_features (license_id, feature, max_sessions, max_sessions_per_user, on_limit, \
                     lease_ttl_seconds, heartbeat_interval_seconds, resurrect_window_seconds) VALUES ({})",
                    Self::placeholders(8)
                )))
                .bind(id.as_str())
                .bind(feature.as_str())
                .bind(i64::from(p.max_sessions))
                .bind(p.max_sessions_per_user.map(i64::from))
                .bind(p.on_limit.as_str())
                .bind(i64::from(p.lease_ttl_seconds))
                .bind(i64::from(p.heartbeat_interval_seconds))
                .bind(i64::from(p.resurrect_window_seconds))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            let license = self.license(id).await?.ok_or_else(|| Error::ledger("license vanished after write"))?;
            Ok(PutLicense { created: !exists, license, removed })
        })
        .await
    }

    async fn license(&self, id: &Ident) -> Result<Option<License>> {
        self.license_where("license_id", id.as_str()).await
    }

    async fn license_by_key_hash(&self, key_hash: &str) -> Result<Option<License>> {
        self.license_where("key_hash", key_hash).await
    }

    async fn license_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<Ident>> {
        let rows = retried(|| async move {
            sqlx::query(self.sql("SELECT license_id FROM licenses WHERE license_id > ? ORDER BY license_id LIMIT ?"))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db)
        })
        .await?;
        rows.iter().map(|r| Ident::parse("licenseId", &r.try_get::<String, _>(0).map_err(db)?)).collect()
    }

    async fn delete_license(&self, id: &Ident, now_ms: i64) -> Result<Option<Vec<Ident>>> {
        retried(|| async move {
            let mut tx = self.begin_write().await.map_err(db)?;
            let deleted = sqlx::query(self.sql("DELETE FROM licenses WHERE license_id = ?"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
            if deleted == 0 {
                return Ok(None);
            }
            // The license row's lock (or SQLite's write lock) orders this after any token insert
            // that saw the license, so none outlives it.
            sqlx::query(self.sql("DELETE FROM admin_tokens WHERE license_id = ?"))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            let features = self.remove_features(&mut tx, id, now_ms).await?;
            tx.commit().await.map_err(db)?;
            Ok(Some(features))
        })
        .await
    }

    async fn insert_session(&self, row: &SessionRow, ends: &[SessionEnd]) -> Result<()> {
        retried(|| async move {
            let mut tx = self.begin_write().await.map_err(db)?;
            self.end_in(&mut tx, ends).await?;
            match self.insert_rows(&mut tx, &[row]).await {
                // Recorded already: by the create itself, or by a replay of it.
                Err(e) if is_unique_violation(&e) => return Ok(()),
                other => other.map_err(db)?,
            }
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn record(&self, sessions: &[NewSession], ends: &[SessionEnd]) -> (Vec<Result<()>>, Result<Vec<String>>) {
        match self.write_batch(sessions, ends).await {
            // The ids changed include those the creates' own ends changed; the caller asked
            // about `ends`.
            Ok(changed) => {
                let asked: std::collections::HashSet<&str> = ends.iter().map(|e| e.session_id.as_str()).collect();
                let changed = changed.into_iter().filter(|id| asked.contains(id.as_str())).collect();
                (sessions.iter().map(|_| Ok(())).collect(), Ok(changed))
            }
            // One row the batch could not take (recorded already, or refused) fails the whole
            // transaction: the ends then go together, and each row alone, with its own answer.
            Err(e) => {
                tracing::debug!(error = %e, rows = sessions.len(), ends = ends.len(), "batched ledger write failed; writing its parts apart");
                let ended = if ends.is_empty() { Ok(Vec::new()) } else { self.end_sessions(ends).await };
                let mut out = Vec::with_capacity(sessions.len());
                for s in sessions {
                    out.push(self.insert_session(&s.row, &s.ends).await);
                }
                (out, ended)
            }
        }
    }

    async fn end_sessions(&self, ends: &[SessionEnd]) -> Result<Vec<String>> {
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        self.write_batch(&[], ends).await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRow>> {
        Ok(self.sessions_where("session_id = ?", &[session_id]).await?.pop())
    }

    async fn active_sessions(&self, slot: &Slot) -> Result<Vec<SessionRow>> {
        self.sessions_where(
            "license_id = ? AND feature = ? AND status = 'active'",
            &[slot.license.as_str(), slot.feature.as_str()],
        )
        .await
    }

    async fn record_limit_rejections(&self, slot: &Slot, counts: &[(i64, u64)]) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let q = format!(
            "INSERT INTO session_events (license_id, feature, session_id, user_id, kind, at, count) VALUES {}",
            vec!["(?, ?, NULL, '', 'limit_rejected', ?, ?)"; counts.len()].join(", ")
        );
        let mut insert = sqlx::query(self.sql(&q));
        for (at, n) in counts {
            insert = insert.bind(slot.license.as_str()).bind(slot.feature.as_str()).bind(*at).bind(*n as i64);
        }
        insert.execute(&self.pool).await.map_err(db).map(drop)
    }

    async fn slots(&self) -> Result<Vec<SlotEntry>> {
        let rows =
            sqlx::query("SELECT license_id, feature, removed_at FROM license_features ORDER BY license_id, feature")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.iter().map(|r| Ok(SlotEntry { slot: slot_of(r)?, removed_at_ms: r.try_get(2).map_err(db)? })).collect()
    }

    async fn active_slots(&self) -> Result<Vec<Slot>> {
        let rows = sqlx::query("SELECT DISTINCT license_id, feature FROM sessions WHERE status = 'active'")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(slot_of).collect()
    }

    async fn forget_removed_feature(&self, slot: &Slot) -> Result<()> {
        sqlx::query(
            self.sql("DELETE FROM license_features WHERE license_id = ? AND feature = ? AND removed_at IS NOT NULL"),
        )
        .bind(slot.license.as_str())
        .bind(slot.feature.as_str())
        .execute(&self.pool)
        .await
        .map_err(db)
        .map(drop)
    }

    async fn user_sessions(&self, user: &Ident, feature: &Ident, since_ms: i64) -> Result<Vec<SessionRow>> {
        let q = format!(
            "user_id = ? AND feature = ? AND (status = 'active' OR ended_at >= {since_ms}) ORDER BY created_at"
        );
        self.sessions_where(&q, &[user.as_str(), feature.as_str()]).await
    }

    async fn write_heartbeats(&self, beats: &[(String, i64, i64)]) -> Result<u64> {
        retried(|| async move {
            if beats.is_empty() {
                return Ok(0);
            }
            let mut tx = self.begin_write().await.map_err(db)?;
            let mut n = 0;
            for (sid, hb, exp) in beats {
                n += sqlx::query(self.sql(
                    "UPDATE sessions SET last_heartbeat_at = ?, expires_at = ? \
                     WHERE session_id = ? AND status = 'active' AND last_heartbeat_at < ?",
                ))
                .bind(hb)
                .bind(exp)
                .bind(sid)
                .bind(hb)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
            }
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
        .await
    }

    async fn stats(&self, license: &Ident, since_ms: i64, now_ms: i64) -> Result<BTreeMap<String, FeatureStats>> {
        let mut out: BTreeMap<String, FeatureStats> = BTreeMap::new();
        // Counters from the event log.
        let rows = sqlx::query(self.sql(&format!(
            "SELECT feature, kind, {} AS n FROM session_events WHERE license_id = ? AND at >= ? GROUP BY feature, kind",
            self.int_sum("count")
        )))
        .bind(license.as_str())
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for r in rows {
            let feature: String = r.try_get(0).map_err(db)?;
            let kind: String = r.try_get(1).map_err(db)?;
            let n: i64 = r.try_get(2).map_err(db)?;
            let s = out.entry(feature).or_default();
            match kind.as_str() {
                "created" => s.created = n as u64,
                "limit_rejected" => s.limit_rejections = n as u64,
                other => {
                    if let Some(reason) = EndReason::parse(other) {
                        s.ended_by.insert(reason.as_str(), n as u64);
                    }
                }
            }
        }
        // The sessions that overlap the window, for their peak and average length (the caller's,
        // with the seat store's leases: a lease can run out before the sweep records it).
        let rows = sqlx::query(self.sql(
            "SELECT feature, created_at, ended_at, expires_at, session_id FROM sessions \
             WHERE license_id = ? AND (status = 'active' OR ended_at >= ?) AND created_at <= ?",
        ))
        .bind(license.as_str())
        .bind(since_ms)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for r in rows {
            let feature: String = r.try_get(0).map_err(db)?;
            let span = SessionSpan {
                created_ms: r.try_get(1).map_err(db)?,
                end_ms: r.try_get(2).map_err(db)?,
                expires_ms: r.try_get(3).map_err(db)?,
                session_id: r.try_get(4).map_err(db)?,
                feature: feature.clone(),
            };
            out.entry(feature).or_default().spans.push(span);
        }
        Ok(out)
    }

    async fn create_admin_token(&self, license: &Ident, token_id: &str, token_hash: &str, now_ms: i64) -> Result<bool> {
        retried(|| async move {
            let mut tx = self.begin_write().await.map_err(db)?;
            // Locks the license row: a deletion waits for this insert and then removes the token too.
            let lock = if self.dialect == Dialect::Sqlite { "" } else { " FOR UPDATE" };
            let exists = sqlx::query(self.sql(&format!("SELECT license_id FROM licenses WHERE license_id = ?{lock}")))
                .bind(license.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .is_some();
            if !exists {
                return Ok(false);
            }
            sqlx::query(
                self.sql("INSERT INTO admin_tokens (token_id, license_id, token_hash, created_at) VALUES (?, ?, ?, ?)"),
            )
            .bind(token_id)
            .bind(license.as_str())
            .bind(token_hash)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(true)
        })
        .await
    }

    async fn admin_token(&self, token_hash: &str) -> Result<Option<AdminTokenRow>> {
        let row = sqlx::query(
            self.sql("SELECT token_id, license_id, token_hash, created_at FROM admin_tokens WHERE token_hash = ?"),
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(AdminTokenRow {
                token_id: r.try_get(0).map_err(db)?,
                license_id: r.try_get(1).map_err(db)?,
                token_hash: r.try_get(2).map_err(db)?,
                created_at_ms: r.try_get(3).map_err(db)?,
            })
        })
        .transpose()
    }

    async fn revoke_admin_token(&self, license: &Ident, token_id: &str) -> Result<bool> {
        let done = sqlx::query(self.sql("DELETE FROM admin_tokens WHERE license_id = ? AND token_id = ?"))
            .bind(license.as_str())
            .bind(token_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn usage(&self, slot: &Slot, from_ms: i64, to_ms: i64) -> Result<UsageHistory> {
        let rows = sqlx::query(self.sql(
            "SELECT session_id, created_at, ended_at, expires_at FROM sessions \
             WHERE license_id = ? AND feature = ? AND created_at < ? AND (status = 'active' OR ended_at >= ?)",
        ))
        .bind(slot.license.as_str())
        .bind(slot.feature.as_str())
        .bind(to_ms)
        .bind(from_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let spans = rows
            .iter()
            .map(|r| {
                Ok(SessionSpan {
                    session_id: r.try_get(0).map_err(db)?,
                    feature: slot.feature.to_string(),
                    created_ms: r.try_get(1).map_err(db)?,
                    end_ms: r.try_get(2).map_err(db)?,
                    expires_ms: r.try_get(3).map_err(db)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(self.sql(
            "SELECT at, count FROM session_events \
             WHERE license_id = ? AND at >= ? AND at < ? AND feature = ? AND kind = 'limit_rejected'",
        ))
        .bind(slot.license.as_str())
        .bind(from_ms)
        .bind(to_ms)
        .bind(slot.feature.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let rejections = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0).map_err(db)?, r.try_get::<i64, _>(1).map_err(db)?.max(0) as u64)))
            .collect::<Result<Vec<_>>>()?;
        Ok(UsageHistory { spans, rejections })
    }

    async fn migrate(&self) -> Result<()> {
        if self.dialect == Dialect::Sqlite {
            // WAL lets readers run beside the writer; the setting persists in the file.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&self.pool).await.map_err(db)?;
        }
        migrator(self.dialect).run(&self.pool).await.map_err(Error::ledger)
    }
}

/// The ledger's migrations. The first schema is one template, rendered per dialect (column types,
/// engines and identity columns differ); a later change is portable SQL, in one file for all
/// three, or a template too when it makes a table (MySQL's engine and collation). A shipped migration never changes: sqlx refuses a database whose applied migration's
/// checksum differs, and `shipped_migrations_never_change` holds each rendering to what shipped.
fn migrator(dialect: Dialect) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use sqlx::{AssertSqlSafe, SqlSafeStr};
    let steps = [
        (1, "init", init_schema(dialect)),
        (
            2,
            "policy version feature removal",
            include_str!("../../migrations/0002_policy_version_feature_removal.sql").into(),
        ),
        (3, "event counts", include_str!("../../migrations/0003_event_counts.sql").into()),
        (4, "admin tokens", render(include_str!("../../migrations/0004_admin_tokens.sql.tmpl"), dialect)),
    ];
    Migrator::with_migrations(
        steps
            .into_iter()
            .map(|(version, description, sql): (i64, &str, String)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The first schema in a dialect: `0001_init.sql.tmpl` with its four placeholders filled.
fn init_schema(dialect: Dialect) -> String {
    render(include_str!("../../migrations/0001_init.sql.tmpl"), dialect)
}

/// A migration template in a dialect.
fn render(template: &str, dialect: Dialect) -> String {
    let (note, table_options, unicode_text, identity) = match dialect {
        Dialect::Sqlite => ("", "", "", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        Dialect::Postgres => ("", "", "", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
        Dialect::MySql => (
            "-- MySQL/MariaDB: identifiers are ASCII and compared case-sensitively (ascii_bin).\n",
            " ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin",
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        ),
    };
    template
        .replace("{dialect_note}", note)
        .replace("{table_options}", table_options)
        .replace("{unicode_text}", unicode_text)
        .replace("{identity}", identity)
}

#[cfg(test)]
mod tests {
    use super::{migrator, Dialect};

    /// Databases in the field carry these checksums (SHA-384 of each file as shipped): a changed
    /// file would stop every one of them from migrating.
    #[test]
    fn shipped_migrations_never_change() {
        let later = [
            "369b92e1fd9b813c143739b45a1805e825b6f0856e1b2bcd1eec71e2dc3153f446b693798c357a3e29d45170651ac53f",
            "48875f44ffeba9b821d977f1d9a13baef177c241b2c7b51eb7a113ad515defb09169cafe1eea39e1e209c21cccc2acd5",
        ];
        // 0004 (admin tokens) is rendered per dialect, as the first schema is.
        for (dialect, init, tokens) in [
            (
                Dialect::Sqlite,
                "81d7a86a0e7f0a0265410bfbb81f487206555107ea0d127cc78615d792dcb6a5d4a6cce25209eb0905a277d85d60c6bd",
                "4ab6cfea9e7d60e7f54e59c47b3147527ba42d3abee0a8c981190e01d9d98463ef6b438b831fde7da97e979829ecd7bd",
            ),
            (
                Dialect::Postgres,
                "ba36fc96db47b3f53a9871cd5544083438e3624ad0ac98b5d81110124fb57e65b118ad2f41a81735a97e1069cb9e97f7",
                "4ab6cfea9e7d60e7f54e59c47b3147527ba42d3abee0a8c981190e01d9d98463ef6b438b831fde7da97e979829ecd7bd",
            ),
            (
                Dialect::MySql,
                "d665569ca90f1f6ff0776d2a5c54d1379a66e0ab6d65cf637ad00926ee4d1c2c4ecc825e5f14cff2a1a23c4eaa1ef004",
                "cbf21c8396f9422189f3879438f7b15c8dfdd83c74b98071a4a9a189f80fc910eab0980fd7724cad48ede4814bbb987c",
            ),
        ] {
            let m = migrator(dialect);
            let got: Vec<(i64, String)> =
                m.iter().map(|m| (m.version, m.checksum.iter().map(|b| format!("{b:02x}")).collect())).collect();
            let want: Vec<(i64, String)> = [init]
                .iter()
                .chain(&later)
                .chain([&tokens])
                .enumerate()
                .map(|(i, c)| (i as i64 + 1, (*c).to_owned()))
                .collect();
            assert_eq!(got, want, "{dialect:?}");
        }
    }
}
