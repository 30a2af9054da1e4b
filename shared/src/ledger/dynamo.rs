//! The ledger on DynamoDB: `SEATKEEPER_LEDGER_URL=dynamodb://TABLE?endpoint=URL&region=REGION`.
//!
//! One table, on-demand. `pk`/`sk` are its keys; four overloaded GSIs (projection ALL except
//! `gsi4`) serve every read that is not by key. No read ever scans the table.
//!
//! | item                | pk                 | sk                          | gsi1pk / gsi1sk        | gsi2pk / gsi2sk                      | gsi3pk / gsi3sk                 | gsi4pk / gsi4sk                 |
//! |---------------------|--------------------|-----------------------------|------------------------|--------------------------------------|---------------------------------|---------------------------------|
//! | license             | `L#<license>`      | `LICENSE`                   |                        |                                      |                                 |                                 |
//! | feature (policy)    | `L#<license>`      | `F#<feature>`               | `SLOTS` / `<l>/<f>`    |                                      |                                 |                                 |
//! | key item ²          | `K#<key hash>`     | `KEY`                       |                        |                                      |                                 |                                 |
//! | session             | `S#<session id>`   | `SESSION`                   | `A#<l>/<f>` / `<sid>` ¹ | `U#<user>/<feature>` / `<created>#<sid>` | `LS#<license>` / `<created>#<sid>` | `ACTIVE#<sid[0]>` / `<l>/<f>` ¹ |
//! | event               | `E#<license>`      | `<at>#<kind>#<sid or uuid>` |                        |                                      |                                 |                                 |
//! | admin token         | `L#<license>`      | `T#<token id>`              |                        |                                      |                                 |                                 |
//! | admin token lookup ³ | `AT#<token hash>` | `ADMIN_TOKEN`               |                        |                                      |                                 |                                 |
//!
//! ¹ only while the session is active: an end removes these attributes (sparse indexes).
//! ² the key hash's uniqueness (no two licenses share a key), and a copy of the license as written.
//! ³ written and removed in one transaction with the token's item in its license's partition;
//! holds only the token's SHA-256 hash, never the token.
//! Times in sort keys are milliseconds, zero-padded to 20 digits. Identifiers never contain `/` or
//! `#` (see `Ident`), so the composite keys are unambiguous.
//!
//! - `license`, `put_license`, `delete_license`: one Query of the `L#` partition (consistent).
//! - `license_by_key_hash`: one consistent GetItem of the `K#` item, which holds a copy of the
//!   license and its live features, written in the same transaction as the license.
//! - `session`, `end_sessions`, `write_heartbeats`: by key.
//! - `active_sessions`, `count_active`: gsi1 `A#<slot>` (then a consistent BatchGetItem of the rows).
//! - `slots`: gsi1 `SLOTS`, the one partition that lists every (license, feature), removed ones too
//!   (written only by admin license writes and the sweep, so it stays cold).
//! - `active_slots` (full sweep only): gsi4, 16 partitions by the first hex digit of the session id.
//! - `user_sessions`: gsi2. `stats`, `usage`: the `E#` partition by time, and gsi3 for the
//!   sessions' spans.
//! - `admin_token`: one consistent GetItem of the `AT#` item; `create_admin_token` checks that the
//!   license exists and bumps its `token_writes` in the same transaction, and `delete_license` is
//!   conditional on that counter, so a license is never deleted past a token it has not seen.
//!
//! What must change together is one `TransactWriteItems`: a license, its features and its key's
//! uniqueness item; a new session, its `created` event and the ends it caused; each end and its
//! event. Every end is conditional on the row being `active`, so an end is recorded (and its
//! event written) exactly once, however many sweeps race.
//!
//! History is removed by DynamoDB's TTL on `purge_at` (epoch seconds): ended sessions and events
//! are kept `RETENTION_DAYS` (400 days: longer than the longest stats window, 366 days). Active
//! sessions, licenses and features carry no TTL.
//!
//! Requests in flight from one process are bounded (`SEATKEEPER_LEDGER_POOL_SIZE`, as the SQL
//! ledger bounds its connections); a request waits at most 10 s for its turn.
//!
//! Reads through a GSI are eventually consistent in DynamoDB (typically well under a second):
//! a slot just created may be missed by a sweep that starts at that instant and is seen by the
//! next; `active_sessions` re-reads the rows the index names with a consistent read, so a row
//! just ended is not reported active.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put, ScalarAttributeType, Select,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use crate::domain::{EndReason, FeaturePolicy, Ident, License, OnLimit, Slot};
use crate::error::{Error, Result};
use crate::ledger::{
    AdminTokenRow, FeatureStats, Ledger, PutLicense, SessionEnd, SessionRow, SessionSpan, SlotEntry, UsageHistory,
    ACTIVE,
};

/// How long ended sessions and events are kept before DynamoDB's TTL removes them.
pub const RETENTION_DAYS: i64 = 400;
/// The TTL attribute.
const PURGE_AT: &str = "purge_at";
/// Items of one `TransactWriteItems` (DynamoDB's limit is 100).
const MAX_TRANSACT_ITEMS: usize = 100;
/// Ends per transaction in `end_sessions`: two items each (the row and its event).
const ENDS_PER_TRANSACTION: usize = 10;
/// Attempts of a transaction whose conditions or conflicts changed under it.
const MAX_ATTEMPTS: usize = 8;
/// Pages one query may read before it is treated as a fault (1 MB each).
const MAX_PAGES: usize = 100_000;
/// Shards of gsi4, by the first hex digit of the session id.
const ACTIVE_SHARDS: &str = "0123456789abcdef";

type Item = HashMap<String, AttributeValue>;

#[derive(Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
    /// Requests in flight at once from this process (`SEATKEEPER_LEDGER_POOL_SIZE`), as the SQL
    /// ledger's pool bounds its connections: a burst queues here instead of piling onto the table.
    turns: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How long a request waits for its turn before the ledger counts as unavailable.
const TURN_TIMEOUT: Duration = Duration::from_secs(10);

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A time as a sort-key prefix: fixed width, so that strings sort as numbers.
fn t(ms: i64) -> String {
    format!("{:020}", ms.max(0))
}

fn purge_at(ended_ms: i64) -> AttributeValue {
    n(ended_ms / 1000 + RETENTION_DAYS * 86_400)
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn need_s(item: &Item, name: &str) -> Result<String> {
    get_s(item, name).map(str::to_owned).ok_or_else(|| Error::ledger(format!("ledger item without {name}")))
}

fn need_n(item: &Item, name: &str) -> Result<i64> {
    get_n(item, name).ok_or_else(|| Error::ledger(format!("ledger item without {name}")))
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn license_pk(id: &str) -> String {
    format!("L#{id}")
}

fn session_key(id: &str) -> Item {
    key(format!("S#{id}"), "SESSION")
}

fn slot_name(license: &str, feature: &str) -> String {
    format!("{license}/{feature}")
}

/// An SDK error as the ledger's: its code and message, for logs (never shown to clients).
fn sdk_err<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let what = if e.as_service_error().is_some() { "error" } else { "unreachable" };
    Error::ledger(format!("DynamoDB {what}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(&e)))
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> Error {
    Error::ledger(format!("DynamoDB request: {e}"))
}

/// What became of a transaction.
enum Transacted {
    Done,
    /// Cancelled: one reason per item, in order (`None` where the item was not the cause).
    Cancelled(Vec<Option<String>>),
}

fn session_row(item: &Item) -> Result<SessionRow> {
    Ok(SessionRow {
        session_id: need_s(item, "session_id")?,
        license_id: need_s(item, "license_id")?,
        feature: need_s(item, "feature")?,
        user_id: need_s(item, "user_id")?,
        device_id: get_s(item, "device_id").map(str::to_owned),
        token_hash: need_s(item, "token_hash")?,
        idempotency_key: get_s(item, "idempotency_key").map(str::to_owned),
        metadata: get_s(item, "metadata").map(str::to_owned),
        status: need_s(item, "status")?,
        created_at_ms: need_n(item, "created_at")?,
        last_heartbeat_at_ms: need_n(item, "last_heartbeat_at")?,
        expires_at_ms: need_n(item, "expires_at")?,
        ended_at_ms: get_n(item, "ended_at"),
    })
}

fn session_item(row: &SessionRow) -> Item {
    let mut item = session_key(&row.session_id);
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_owned(), v);
    };
    put("session_id", s(&row.session_id));
    put("license_id", s(&row.license_id));
    put("feature", s(&row.feature));
    put("user_id", s(&row.user_id));
    put("token_hash", s(&row.token_hash));
    put("status", s(&row.status));
    put("created_at", n(row.created_at_ms));
    put("last_heartbeat_at", n(row.last_heartbeat_at_ms));
    put("expires_at", n(row.expires_at_ms));
    for (k, v) in
        [("device_id", &row.device_id), ("idempotency_key", &row.idempotency_key), ("metadata", &row.metadata)]
    {
        if let Some(v) = v {
            put(k, s(v));
        }
    }
    let slot = slot_name(&row.license_id, &row.feature);
    let created = format!("{}#{}", t(row.created_at_ms), row.session_id);
    put("gsi2pk", s(format!("U#{}/{}", row.user_id, row.feature)));
    put("gsi2sk", s(created.clone()));
    put("gsi3pk", s(format!("LS#{}", row.license_id)));
    put("gsi3sk", s(created));
    if row.status == ACTIVE {
        put("gsi1pk", s(format!("A#{slot}")));
        put("gsi1sk", s(&row.session_id));
        let shard = row.session_id.chars().next().unwrap_or('0').to_ascii_lowercase();
        put("gsi4pk", s(format!("ACTIVE#{shard}")));
        put("gsi4sk", s(slot));
    } else {
        put(PURGE_AT, purge_at(row.ended_at_ms.unwrap_or(row.created_at_ms)));
    }
    if let Some(e) = row.ended_at_ms {
        put("ended_at", n(e));
    }
    item
}

/// A policy's attributes (a feature item's, and each entry of the key item's `features` map).
fn policy_attrs(p: &FeaturePolicy) -> Item {
    let mut item = Item::from([
        ("max_sessions".to_owned(), n(p.max_sessions.into())),
        ("on_limit".to_owned(), s(p.on_limit.as_str())),
        ("lease_ttl_seconds".to_owned(), n(p.lease_ttl_seconds.into())),
        ("heartbeat_interval_seconds".to_owned(), n(p.heartbeat_interval_seconds.into())),
        ("resurrect_window_seconds".to_owned(), n(p.resurrect_window_seconds.into())),
    ]);
    if let Some(per_user) = p.max_sessions_per_user {
        item.insert("max_sessions_per_user".to_owned(), n(per_user.into()));
    }
    item
}

/// The key item: the key hash's uniqueness, and a copy of the license as written in the same
/// transaction, so that a create finds its license in one consistent GetItem.
fn key_item(key_hash: &str, license: &License) -> Item {
    let mut item = key(format!("K#{key_hash}"), "KEY");
    let features = license
        .features
        .iter()
        .map(|(name, p)| (name.as_str().to_owned(), AttributeValue::M(policy_attrs(p))))
        .collect::<HashMap<_, _>>();
    item.extend([
        ("license_id".to_owned(), s(license.id.as_str())),
        ("created_at".to_owned(), n(license.created_at_ms)),
        ("updated_at".to_owned(), n(license.updated_at_ms)),
        ("version".to_owned(), n(license.version)),
        ("features".to_owned(), AttributeValue::M(features)),
    ]);
    item
}

fn license_of_key_item(item: &Item) -> Result<License> {
    let mut features = BTreeMap::new();
    if let Some(AttributeValue::M(map)) = item.get("features") {
        for (name, p) in map {
            let AttributeValue::M(p) = p else { return Err(Error::ledger("malformed key item")) };
            features.insert(Ident::parse("feature", name)?, policy_of(p)?);
        }
    }
    Ok(License {
        id: Ident::parse("licenseId", &need_s(item, "license_id")?)?,
        features,
        created_at_ms: need_n(item, "created_at")?,
        updated_at_ms: need_n(item, "updated_at")?,
        version: need_n(item, "version")?,
    })
}

fn feature_item(license: &str, feature: &str, p: &FeaturePolicy) -> Item {
    let mut item = key(license_pk(license), &format!("F#{feature}"));
    item.extend(policy_attrs(p));
    item.extend([
        ("license_id".to_owned(), s(license)),
        ("feature".to_owned(), s(feature)),
        ("gsi1pk".to_owned(), s("SLOTS")),
        ("gsi1sk".to_owned(), s(slot_name(license, feature))),
    ]);
    item
}

fn policy_of(item: &Item) -> Result<FeaturePolicy> {
    let int = |name: &str| -> Result<u32> { Ok(need_n(item, name)? as u32) };
    Ok(FeaturePolicy {
        max_sessions: int("max_sessions")?,
        max_sessions_per_user: get_n(item, "max_sessions_per_user").map(|v| v as u32),
        on_limit: OnLimit::parse(&need_s(item, "on_limit")?).unwrap_or_default(),
        lease_ttl_seconds: int("lease_ttl_seconds")?,
        heartbeat_interval_seconds: int("heartbeat_interval_seconds")?,
        resurrect_window_seconds: int("resurrect_window_seconds")?,
    })
}

/// A license's partition as read: the license item (if any), every feature item and every admin
/// token item.
struct Partition {
    license: Option<Item>,
    features: Vec<Item>,
    tokens: Vec<Item>,
}

fn admin_token_row(item: &Item) -> Result<AdminTokenRow> {
    Ok(AdminTokenRow {
        token_id: need_s(item, "token_id")?,
        license_id: need_s(item, "license_id")?,
        token_hash: need_s(item, "token_hash")?,
        created_at_ms: need_n(item, "created_at")?,
    })
}

fn admin_token_lookup_key(token_hash: &str) -> Item {
    key(format!("AT#{token_hash}"), "ADMIN_TOKEN")
}

impl Partition {
    fn live_features(&self) -> impl Iterator<Item = &Item> {
        self.features.iter().filter(|f| !f.contains_key("removed_at"))
    }

    fn license(&self) -> Result<Option<License>> {
        let Some(l) = &self.license else { return Ok(None) };
        let mut features = BTreeMap::new();
        for f in self.live_features() {
            features.insert(Ident::parse("feature", &need_s(f, "feature")?)?, policy_of(f)?);
        }
        Ok(Some(License {
            id: Ident::parse("licenseId", &need_s(l, "license_id")?)?,
            features,
            created_at_ms: need_n(l, "created_at")?,
            updated_at_ms: need_n(l, "updated_at")?,
            version: need_n(l, "version")?,
        }))
    }
}

impl DynamoLedger {
    /// A client for `dynamodb://TABLE[?endpoint=URL][&region=REGION]`. Touches no network: the
    /// region comes from the URL, else `AWS_REGION`/`AWS_DEFAULT_REGION`, else the profile
    /// (never the instance metadata service); credentials are resolved by the SDK's default chain
    /// at the first request. Does not create the table: `Ledger::migrate` does.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, crate::config::DEFAULT_LEDGER_POOL_SIZE).await
    }

    /// `connect`, with at most `in_flight` requests at once.
    pub async fn connect_with(url: &str, in_flight: u32) -> Result<Self> {
        let rest =
            url.strip_prefix("dynamodb://").ok_or_else(|| Error::ledger(format!("not a dynamodb:// URL: {url:?}")))?;
        let (table, query) = rest.split_once('?').unwrap_or((rest, ""));
        let table = table.trim_end_matches('/');
        let valid = (3..=255).contains(&table.len())
            && table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(Error::ledger(format!(
                "dynamodb:// URL needs a table name of 3 to 255 characters of A-Z a-z 0-9 _ - . (got {table:?})"
            )));
        }
        let (mut endpoint, mut region) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) if !v.is_empty() => endpoint = Some(v.to_owned()),
                Some(("region", v)) if !v.is_empty() => region = Some(v.to_owned()),
                _ => {
                    return Err(Error::ledger(format!(
                        "unknown dynamodb:// URL option {pair:?}: use endpoint= and region="
                    )))
                }
            }
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region_chain = match region {
            Some(r) => RegionProviderChain::first_try(aws_config::Region::new(r)),
            None => RegionProviderChain::first_try(aws_config::environment::EnvironmentVariableRegionProvider::new())
                .or_else(aws_config::profile::ProfileFileRegionProvider::new()),
        };
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region_chain)
            .timeout_config(timeouts);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(Error::ledger(
                "no AWS region for the DynamoDB ledger: add ?region= to the URL or set AWS_REGION",
            ));
        }
        Ok(DynamoLedger {
            client: Client::new(&config),
            table: table.to_owned(),
            turns: std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1) as usize)),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// A turn to send one request.
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        match tokio::time::timeout(TURN_TIMEOUT, self.turns.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::ledger("DynamoDB: no request slot free within 10 s")),
        }
    }

    /// Runs a transaction; a cancellation comes back with its reasons, not as an error.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Transacted> {
        if items.is_empty() {
            return Ok(Transacted::Done);
        }
        let _turn = self.turn().await?;
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(Transacted::Done),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Ok(Transacted::Cancelled(
                        c.cancellation_reasons().iter().map(|r: &CancellationReason| r.code().map(str::to_owned)).collect(),
                    ))
                }
                _ => Err(sdk_err(e)),
            },
        }
    }

    fn put(&self, item: Item, condition: Option<&str>) -> Result<TransactWriteItem> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned));
        Ok(TransactWriteItem::builder().put(put.build().map_err(build_err)?).build())
    }

    /// Every item of a query, page by page. `f` sets the key condition and the rest.
    async fn query_all(
        &self,
        f: impl Fn(
            aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        for _ in 0..MAX_PAGES {
            let _turn = self.turn().await?;
            let page = f(self.client.query().table_name(&self.table))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_err)?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
        Err(Error::ledger("DynamoDB query did not end"))
    }

    async fn partition(&self, license: &str) -> Result<Partition> {
        let items = self
            .query_all(|q| {
                q.key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(license_pk(license)))
                    .consistent_read(true)
            })
            .await?;
        let mut p = Partition { license: None, features: Vec::new(), tokens: Vec::new() };
        for item in items {
            match get_s(&item, "sk") {
                Some("LICENSE") => p.license = Some(item),
                Some(sk) if sk.starts_with("F#") => p.features.push(item),
                Some(sk) if sk.starts_with("T#") => p.tokens.push(item),
                _ => {}
            }
        }
        Ok(p)
    }

    /// Session rows by id, read consistently; missing ones are left out.
    async fn sessions_by_id(&self, ids: &[String]) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let keys: Vec<Item> = chunk.iter().map(|id| session_key(id)).collect();
            let mut pending = Some(
                KeysAndAttributes::builder().set_keys(Some(keys)).consistent_read(true).build().map_err(build_err)?,
            );
            for attempt in 0..MAX_PAGES {
                let Some(request) = pending.take() else { break };
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(20 * attempt.min(10) as u64)).await;
                }
                let _turn = self.turn().await?;
                let got =
                    self.client.batch_get_item().request_items(&self.table, request).send().await.map_err(sdk_err)?;
                if let Some(items) = got.responses().and_then(|r| r.get(&self.table)) {
                    out.extend(items.iter().cloned());
                }
                pending =
                    got.unprocessed_keys().and_then(|u| u.get(&self.table)).filter(|k| !k.keys().is_empty()).cloned();
            }
        }
        Ok(out)
    }

    /// The end of one active row and its event: two transaction items. `row` is the row as read.
    fn end_items(&self, row: &Item, end: &SessionEnd) -> Result<[TransactWriteItem; 2]> {
        let license = need_s(row, "license_id")?;
        let feature = need_s(row, "feature")?;
        let user = need_s(row, "user_id")?;
        let old_hb = need_n(row, "last_heartbeat_at")?;
        let hb = end.last_heartbeat_at_ms.unwrap_or(0).max(old_hb);
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(session_key(&end.session_id)))
            .update_expression(
                "SET #st = :reason, ended_at = :at, expires_at = :at, last_heartbeat_at = :hb, #purge = :purge \
                 REMOVE gsi1pk, gsi1sk, gsi4pk, gsi4sk",
            )
            .condition_expression("#st = :active")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#purge", PURGE_AT)
            .expression_attribute_values(":reason", s(end.reason.as_str()))
            .expression_attribute_values(":at", n(end.ended_at_ms))
            .expression_attribute_values(":hb", n(hb))
            .expression_attribute_values(":purge", purge_at(end.ended_at_ms))
            .expression_attribute_values(":active", s(ACTIVE))
            .build()
            .map_err(build_err)?;
        let event = self.event_item(
            &license,
            &feature,
            Some(&end.session_id),
            &user,
            end.reason.as_str(),
            end.ended_at_ms,
            &end.session_id,
        );
        Ok([TransactWriteItem::builder().update(update).build(), self.put(event, None)?])
    }

    #[allow(clippy::too_many_arguments)]
    fn event_item(
        &self,
        license: &str,
        feature: &str,
        session: Option<&str>,
        user: &str,
        kind: &str,
        at_ms: i64,
        unique: &str,
    ) -> Item {
        let mut item = key(format!("E#{license}"), &format!("{}#{kind}#{unique}", t(at_ms)));
        item.extend([
            ("license_id".to_owned(), s(license)),
            ("feature".to_owned(), s(feature)),
            ("user_id".to_owned(), s(user)),
            ("kind".to_owned(), s(kind)),
            ("at".to_owned(), n(at_ms)),
            (PURGE_AT.to_owned(), purge_at(at_ms)),
        ]);
        if let Some(sid) = session {
            item.insert("session_id".to_owned(), s(sid));
        }
        item
    }

    /// Ends with their rows as read now: only the rows still active.
    async fn active_targets<'a>(&self, ends: &'a [SessionEnd]) -> Result<Vec<(&'a SessionEnd, Item)>> {
        let ids: Vec<String> = ends.iter().map(|e| e.session_id.clone()).collect();
        let mut rows: HashMap<String, Item> = HashMap::new();
        for item in self.sessions_by_id(&ids).await? {
            if get_s(&item, "status") == Some(ACTIVE) {
                rows.insert(need_s(&item, "session_id")?, item);
            }
        }
        let mut seen = BTreeSet::new();
        Ok(ends
            .iter()
            .filter(|e| seen.insert(e.session_id.clone()))
            .filter_map(|e| rows.remove(&e.session_id).map(|r| (e, r)))
            .collect())
    }

    /// Ends one chunk of sessions, each with its event, in one transaction; a row another writer
    /// ended meanwhile is left out and the rest tried again.
    async fn end_chunk(&self, ends: &[SessionEnd]) -> Result<Vec<String>> {
        for attempt in 0..MAX_ATTEMPTS {
            let targets = self.active_targets(ends).await?;
            if targets.is_empty() {
                return Ok(Vec::new());
            }
            let mut items = Vec::with_capacity(targets.len() * 2);
            for (end, row) in &targets {
                items.extend(self.end_items(row, end)?);
            }
            match self.transact(items).await? {
                Transacted::Done => return Ok(targets.iter().map(|(e, _)| e.session_id.clone()).collect()),
                Transacted::Cancelled(_) => backoff(attempt).await,
            }
        }
        Err(Error::ledger("DynamoDB: ends kept conflicting with other writers"))
    }

    /// The two items of an admin token, as transaction deletes.
    fn admin_token_deletes(&self, t: &AdminTokenRow) -> Result<[TransactWriteItem; 2]> {
        let own = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(license_pk(&t.license_id), &format!("T#{}", t.token_id))))
            .build()
            .map_err(build_err)?;
        let lookup = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(admin_token_lookup_key(&t.token_hash)))
            .build()
            .map_err(build_err)?;
        Ok([TransactWriteItem::builder().delete(own).build(), TransactWriteItem::builder().delete(lookup).build()])
    }

    /// Removes an admin token's two items together.
    async fn delete_admin_token(&self, t: &AdminTokenRow) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            match self.transact(self.admin_token_deletes(t)?.into()).await? {
                Transacted::Done => return Ok(()),
                Transacted::Cancelled(_) => backoff(attempt).await,
            }
        }
        Err(Error::ledger("DynamoDB: token revocation kept conflicting"))
    }

    async fn query_gsi1(&self, pk: String, count_only: bool) -> Result<(Vec<Item>, u64)> {
        let mut items = Vec::new();
        let mut count = 0u64;
        let mut start: Option<Item> = None;
        for _ in 0..MAX_PAGES {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(pk.clone()))
                .set_exclusive_start_key(start.take());
            if count_only {
                q = q.select(Select::Count);
            }
            let _turn = self.turn().await?;
            let page = q.send().await.map_err(sdk_err)?;
            count += page.count().max(0) as u64;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok((items, count)),
            }
        }
        Err(Error::ledger("DynamoDB query did not end"))
    }

    /// Writes one heartbeat back if the row is active and older; tells whether it did.
    async fn heartbeat_one(&self, sid: &str, hb: i64, exp: i64) -> Result<bool> {
        let _turn = self.turn().await?;
        let done = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(session_key(sid)))
            .update_expression("SET last_heartbeat_at = :hb, expires_at = :exp")
            .condition_expression("#st = :active AND last_heartbeat_at < :hb")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":hb", n(hb))
            .expression_attribute_values(":exp", n(exp))
            .expression_attribute_values(":active", s(ACTIVE))
            .send()
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(sdk_err(e)),
        }
    }

    fn index(name: &str, projection: ProjectionType) -> Result<GlobalSecondaryIndex> {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(format!("{name}pk"))
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build_err)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(format!("{name}sk"))
                    .key_type(KeyType::Range)
                    .build()
                    .map_err(build_err)?,
            )
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .map_err(build_err)
    }

    async fn wait_active(&self) -> Result<()> {
        for _ in 0..600 {
            let d = self.client.describe_table().table_name(&self.table).send().await.map_err(sdk_err)?;
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Error::ledger(format!("DynamoDB table {} did not become active", self.table)))
    }
}

async fn backoff(attempt: usize) {
    let ms = 10u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(ms + rand::random::<u64>() % ms)).await;
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn ping(&self) -> Result<()> {
        let _turn = self.turn().await?;
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key("PING".to_owned(), "PING")))
            .send()
            .await
            .map_err(sdk_err)
            .map(drop)
    }

    async fn put_license(
        &self,
        id: &Ident,
        key_hash: Option<&str>,
        features: &BTreeMap<Ident, FeaturePolicy>,
        now_ms: i64,
    ) -> Result<PutLicense> {
        if features.len() + 3 > MAX_TRANSACT_ITEMS {
            return Err(Error::invalid(
                "features",
                format!("at most {} features per license on the DynamoDB ledger", MAX_TRANSACT_ITEMS - 3),
            ));
        }
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.partition(id.as_str()).await?;
            let old_hash = current.license.as_ref().map(|l| need_s(l, "key_hash")).transpose()?;
            let created = current.license.is_none();
            let new_hash = match (key_hash, &old_hash) {
                (Some(k), _) => k.to_owned(),
                (None, Some(old)) => old.clone(),
                (None, None) => return Err(Error::invalid("key", "key is required")),
            };
            let mut items = Vec::new();
            // The license, conditional on what was read.
            let mut license = key(license_pk(id.as_str()), "LICENSE");
            license.extend([
                ("license_id".to_owned(), s(id.as_str())),
                ("key_hash".to_owned(), s(&new_hash)),
                ("updated_at".to_owned(), n(now_ms)),
            ]);
            let (created_at, version) = match &current.license {
                // As in the SQL ledgers: a new license's version starts at its creation time.
                None => (now_ms, now_ms),
                Some(old) => (need_n(old, "created_at")?, need_n(old, "version")? + 1),
            };
            let written = License {
                id: id.clone(),
                features: features.clone(),
                created_at_ms: created_at,
                updated_at_ms: now_ms,
                version,
            };
            let condition = match &current.license {
                None => {
                    license.insert("created_at".to_owned(), n(now_ms));
                    license.insert("version".to_owned(), n(now_ms));
                    self.put(license, Some("attribute_not_exists(pk)"))?
                }
                Some(old) => {
                    let version = need_n(old, "version")?;
                    license.insert("created_at".to_owned(), n(need_n(old, "created_at")?));
                    license.insert("version".to_owned(), n(version + 1));
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(license))
                        .condition_expression("version = :v")
                        .expression_attribute_values(":v", n(version))
                        .build()
                        .map_err(build_err)?;
                    TransactWriteItem::builder().put(put).build()
                }
            };
            items.push(condition);
            // The key item, with the license as written: its hash must be free or already ours.
            let key_index = items.len();
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(key_item(&new_hash, &written)))
                .condition_expression("attribute_not_exists(pk) OR license_id = :id")
                .expression_attribute_values(":id", s(id.as_str()))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(put).build());
            if let Some(old) = old_hash.as_deref().filter(|old| *old != new_hash) {
                {
                    let del = Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(format!("K#{old}"), "KEY")))
                        .build()
                        .map_err(build_err)?;
                    items.push(TransactWriteItem::builder().delete(del).build());
                }
            }
            // Features left out are marked removed; the ones given are written afresh.
            let mut removed = Vec::new();
            for f in current.live_features() {
                let name = Ident::parse("feature", &need_s(f, "feature")?)?;
                if features.contains_key(&name) {
                    continue;
                }
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(license_pk(id.as_str()), &format!("F#{name}"))))
                    .update_expression("SET removed_at = :now")
                    .condition_expression("attribute_exists(pk) AND attribute_not_exists(removed_at)")
                    .expression_attribute_values(":now", n(now_ms))
                    .build()
                    .map_err(build_err)?;
                items.push(TransactWriteItem::builder().update(update).build());
                removed.push(name);
            }
            for (name, policy) in features {
                items.push(self.put(feature_item(id.as_str(), name.as_str(), policy), None)?);
            }
            match self.transact(items).await? {
                Transacted::Done => {
                    let license =
                        self.license(id).await?.ok_or_else(|| Error::ledger("license vanished after write"))?;
                    return Ok(PutLicense { created, license, removed });
                }
                Transacted::Cancelled(reasons) => {
                    let failed = |i: usize| reasons.get(i).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed");
                    if failed(key_index) {
                        return Err(Error::invalid("key", "key is already in use by another license"));
                    }
                    // Another write to this license came between: read again.
                    backoff(attempt).await;
                }
            }
        }
        Err(Error::ledger("DynamoDB: license writes kept conflicting"))
    }

    async fn license(&self, id: &Ident) -> Result<Option<License>> {
        self.partition(id.as_str()).await?.license()
    }

    async fn delete_license(&self, id: &Ident, now_ms: i64) -> Result<Option<Vec<Ident>>> {
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.partition(id.as_str()).await?;
            let Some(license) = &current.license else { return Ok(None) };
            if current.live_features().count() + 2 > MAX_TRANSACT_ITEMS {
                return Err(Error::ledger("license has more features than one DynamoDB transaction holds"));
            }
            // Tokens go with the license, in its transaction while they fit; the ones beyond are
            // revoked first (a token made meanwhile changes `token_writes`: the delete reads again).
            let room = MAX_TRANSACT_ITEMS - 2 - current.live_features().count();
            if current.tokens.len() * 2 > room {
                for t in &current.tokens[room / 2..] {
                    self.delete_admin_token(&admin_token_row(t)?).await?;
                }
                continue;
            }
            let del = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(license_pk(id.as_str()), "LICENSE")))
                .condition_expression("version = :v AND (attribute_not_exists(token_writes) OR token_writes = :tw)")
                .expression_attribute_values(":v", n(need_n(license, "version")?))
                .expression_attribute_values(":tw", n(get_n(license, "token_writes").unwrap_or(0)))
                .build()
                .map_err(build_err)?;
            let mut items = vec![TransactWriteItem::builder().delete(del).build()];
            for t in &current.tokens {
                items.extend(self.admin_token_deletes(&admin_token_row(t)?)?);
            }
            let del_key = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(format!("K#{}", need_s(license, "key_hash")?), "KEY")))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().delete(del_key).build());
            let mut features = Vec::new();
            for f in current.live_features() {
                let name = Ident::parse("feature", &need_s(f, "feature")?)?;
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(license_pk(id.as_str()), &format!("F#{name}"))))
                    .update_expression("SET removed_at = :now")
                    .condition_expression("attribute_exists(pk) AND attribute_not_exists(removed_at)")
                    .expression_attribute_values(":now", n(now_ms))
                    .build()
                    .map_err(build_err)?;
                items.push(TransactWriteItem::builder().update(update).build());
                features.push(name);
            }
            match self.transact(items).await? {
                Transacted::Done => return Ok(Some(features)),
                Transacted::Cancelled(_) => backoff(attempt).await,
            }
        }
        Err(Error::ledger("DynamoDB: license deletion kept conflicting"))
    }

    async fn license_by_key_hash(&self, key_hash: &str) -> Result<Option<License>> {
        let _turn = self.turn().await?;
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("K#{key_hash}"), "KEY")))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        // The key item holds the license as its last write left it (they change in one transaction).
        got.item().map(license_of_key_item).transpose()
    }

    async fn insert_session(&self, row: &SessionRow, ends: &[SessionEnd]) -> Result<()> {
        if ends.len() * 2 + 2 > MAX_TRANSACT_ITEMS {
            return Err(Error::ledger("a create ended more sessions than one DynamoDB transaction holds"));
        }
        for attempt in 0..MAX_ATTEMPTS {
            let targets = self.active_targets(ends).await?;
            let mut items = vec![
                self.put(session_item(row), Some("attribute_not_exists(pk)"))?,
                self.put(
                    self.event_item(
                        &row.license_id,
                        &row.feature,
                        Some(&row.session_id),
                        &row.user_id,
                        "created",
                        row.created_at_ms,
                        &row.session_id,
                    ),
                    None,
                )?,
            ];
            for (end, target) in &targets {
                items.extend(self.end_items(target, end)?);
            }
            match self.transact(items).await? {
                Transacted::Done => return Ok(()),
                Transacted::Cancelled(reasons) => {
                    if reasons.first().and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed") {
                        // Recorded already: by the create itself, or by a replay of it.
                        return Ok(());
                    }
                    // An end raced another writer (or the transaction conflicted): again.
                    backoff(attempt).await;
                }
            }
        }
        Err(Error::ledger("DynamoDB: session insert kept conflicting"))
    }

    async fn end_sessions(&self, ends: &[SessionEnd]) -> Result<Vec<String>> {
        // A group commit's batch gathers many requests' ends; a transaction takes an item once.
        let mut seen = std::collections::HashSet::new();
        let ends: Vec<SessionEnd> = ends.iter().filter(|e| seen.insert(&e.session_id)).cloned().collect();
        let mut changed = Vec::new();
        for chunk in ends.chunks(ENDS_PER_TRANSACTION) {
            changed.extend(self.end_chunk(chunk).await?);
        }
        Ok(changed)
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRow>> {
        let _turn = self.turn().await?;
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(session_key(session_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        got.item().map(session_row).transpose()
    }

    async fn active_sessions(&self, slot: &Slot) -> Result<Vec<SessionRow>> {
        let (listed, _) =
            self.query_gsi1(format!("A#{}", slot_name(slot.license.as_str(), slot.feature.as_str())), false).await?;
        let ids: Vec<String> = listed.iter().filter_map(|i| get_s(i, "session_id").map(str::to_owned)).collect();
        let mut rows: Vec<SessionRow> = self
            .sessions_by_id(&ids)
            .await?
            .iter()
            .map(session_row)
            .filter(|r| r.as_ref().map_or(true, |r| r.status == ACTIVE))
            .collect::<Result<_>>()?;
        rows.sort_by(|a, b| (a.created_at_ms, &a.session_id).cmp(&(b.created_at_ms, &b.session_id)));
        Ok(rows)
    }

    async fn record_limit_rejections(&self, slot: &Slot, counts: &[(i64, u64)]) -> Result<()> {
        // One event item per minute that had refusals, carrying how many (the seat store counted
        // them; the sweep moves them here).
        for (minute, refused) in counts {
            let unique = crate::token::new_session_id();
            let mut item = self.event_item(
                slot.license.as_str(),
                slot.feature.as_str(),
                None,
                "",
                "limit_rejected",
                *minute,
                &unique,
            );
            item.insert("count".to_owned(), n(*refused as i64));
            let _turn = self.turn().await?;
            self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(sdk_err)?;
        }
        Ok(())
    }

    async fn slots(&self) -> Result<Vec<SlotEntry>> {
        let (items, _) = self.query_gsi1("SLOTS".to_owned(), false).await?;
        let mut out = items
            .iter()
            .map(|i| {
                Ok(SlotEntry {
                    slot: Slot {
                        license: Ident::parse("licenseId", &need_s(i, "license_id")?)?,
                        feature: Ident::parse("feature", &need_s(i, "feature")?)?,
                    },
                    removed_at_ms: get_n(i, "removed_at"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.slot.license.as_str(), a.slot.feature.as_str()).cmp(&(b.slot.license.as_str(), b.slot.feature.as_str()))
        });
        Ok(out)
    }

    async fn active_slots(&self) -> Result<Vec<Slot>> {
        let mut names = BTreeSet::new();
        for shard in ACTIVE_SHARDS.chars() {
            let items = self
                .query_all(|q| {
                    q.index_name("gsi4")
                        .key_condition_expression("gsi4pk = :pk")
                        .expression_attribute_values(":pk", s(format!("ACTIVE#{shard}")))
                })
                .await?;
            names.extend(items.iter().filter_map(|i| get_s(i, "gsi4sk").map(str::to_owned)));
        }
        names
            .iter()
            .map(|name| {
                let (l, f) = name.split_once('/').ok_or_else(|| Error::ledger("malformed gsi4sk"))?;
                Ok(Slot { license: Ident::parse("licenseId", l)?, feature: Ident::parse("feature", f)? })
            })
            .collect()
    }

    async fn forget_removed_feature(&self, slot: &Slot) -> Result<()> {
        let _turn = self.turn().await?;
        let done = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(license_pk(slot.license.as_str()), &format!("F#{}", slot.feature))))
            .condition_expression("attribute_exists(removed_at)")
            .send()
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn user_sessions(&self, user: &Ident, feature: &Ident, since_ms: i64) -> Result<Vec<SessionRow>> {
        let items = self
            .query_all(|q| {
                q.index_name("gsi2")
                    .key_condition_expression("gsi2pk = :pk")
                    .filter_expression("#st = :active OR ended_at >= :since")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":pk", s(format!("U#{user}/{feature}")))
                    .expression_attribute_values(":active", s(ACTIVE))
                    .expression_attribute_values(":since", n(since_ms))
            })
            .await?;
        items.iter().map(session_row).collect()
    }

    async fn write_heartbeats(&self, beats: &[(String, i64, i64)]) -> Result<u64> {
        let mut n = 0;
        for chunk in beats.chunks(8) {
            let done =
                futures::future::join_all(chunk.iter().map(|(sid, hb, exp)| self.heartbeat_one(sid, *hb, *exp))).await;
            for d in done {
                n += u64::from(d?);
            }
        }
        Ok(n)
    }

    async fn stats(&self, license: &Ident, since_ms: i64, now_ms: i64) -> Result<BTreeMap<String, FeatureStats>> {
        let mut out: BTreeMap<String, FeatureStats> = BTreeMap::new();
        let events = self
            .query_all(|q| {
                q.key_condition_expression("pk = :pk AND sk >= :since")
                    .expression_attribute_values(":pk", s(format!("E#{license}")))
                    .expression_attribute_values(":since", s(t(since_ms)))
                    .projection_expression("feature, kind, #c")
                    .expression_attribute_names("#c", "count")
            })
            .await?;
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for e in &events {
            // An event item may stand for several events (refusals are counted per minute).
            let n = e.get("count").and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1);
            *counts.entry((need_s(e, "feature")?, need_s(e, "kind")?)).or_default() += n;
        }
        for ((feature, kind), count) in counts {
            let s = out.entry(feature).or_default();
            match kind.as_str() {
                "created" => s.created = count,
                "limit_rejected" => s.limit_rejections = count,
                other => {
                    if let Some(reason) = EndReason::parse(other) {
                        s.ended_by.insert(reason.as_str(), count);
                    }
                }
            }
        }
        // Created at or before now (the sort key's `#` sorts after every digit of the time),
        // active or ended within the window.
        let sessions = self
            .query_all(|q| {
                q.index_name("gsi3")
                    .key_condition_expression("gsi3pk = :pk AND gsi3sk < :until")
                    .filter_expression("#st = :active OR ended_at >= :since")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":pk", s(format!("LS#{license}")))
                    .expression_attribute_values(":until", s(format!("{}$", t(now_ms))))
                    .expression_attribute_values(":active", s(ACTIVE))
                    .expression_attribute_values(":since", n(since_ms))
            })
            .await?;
        for item in &sessions {
            let row = session_row(item)?;
            let span = SessionSpan {
                session_id: row.session_id,
                feature: row.feature.clone(),
                created_ms: row.created_at_ms,
                end_ms: row.ended_at_ms,
                expires_ms: row.expires_at_ms,
            };
            out.entry(row.feature).or_default().spans.push(span);
        }
        Ok(out)
    }

    async fn create_admin_token(&self, license: &Ident, token_id: &str, token_hash: &str, now_ms: i64) -> Result<bool> {
        let row = AdminTokenRow {
            token_id: token_id.to_owned(),
            license_id: license.to_string(),
            token_hash: token_hash.to_owned(),
            created_at_ms: now_ms,
        };
        let attrs = [
            ("token_id".to_owned(), s(token_id)),
            ("license_id".to_owned(), s(license.as_str())),
            ("token_hash".to_owned(), s(token_hash)),
            ("created_at".to_owned(), n(now_ms)),
        ];
        let mut own = key(license_pk(license.as_str()), &format!("T#{token_id}"));
        own.extend(attrs.clone());
        let mut lookup = admin_token_lookup_key(token_hash);
        lookup.extend(attrs);
        // The license must exist, and learns of the token: a deletion that has not seen it fails.
        let bump = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(license_pk(license.as_str()), "LICENSE")))
            .update_expression("SET token_writes = if_not_exists(token_writes, :zero) + :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(build_err)?;
        for attempt in 0..MAX_ATTEMPTS {
            let items = vec![
                TransactWriteItem::builder().update(bump.clone()).build(),
                self.put(own.clone(), Some("attribute_not_exists(pk)"))?,
                self.put(lookup.clone(), Some("attribute_not_exists(pk)"))?,
            ];
            match self.transact(items).await? {
                Transacted::Done => return Ok(true),
                Transacted::Cancelled(reasons) => {
                    if reasons.first().and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed") {
                        return Ok(false);
                    }
                    if reasons.iter().skip(1).any(|r| r.as_deref() == Some("ConditionalCheckFailed")) {
                        return Err(Error::ledger(format!("admin token {} exists already", row.token_id)));
                    }
                    backoff(attempt).await;
                }
            }
        }
        Err(Error::ledger("DynamoDB: token creation kept conflicting"))
    }

    async fn admin_token(&self, token_hash: &str) -> Result<Option<AdminTokenRow>> {
        let _turn = self.turn().await?;
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(admin_token_lookup_key(token_hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        got.item().map(admin_token_row).transpose()
    }

    async fn revoke_admin_token(&self, license: &Ident, token_id: &str) -> Result<bool> {
        let got = {
            let _turn = self.turn().await?;
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(license_pk(license.as_str()), &format!("T#{token_id}"))))
                .consistent_read(true)
                .send()
                .await
                .map_err(sdk_err)?
        };
        let Some(item) = got.item() else { return Ok(false) };
        self.delete_admin_token(&admin_token_row(item)?).await?;
        Ok(true)
    }

    async fn usage(&self, slot: &Slot, from_ms: i64, to_ms: i64) -> Result<UsageHistory> {
        let license = slot.license.as_str();
        // Created before `to_ms` (`<created>#<sid>` sorts after `<created>`), active or ended since `from_ms`.
        let sessions = self
            .query_all(|q| {
                q.index_name("gsi3")
                    .key_condition_expression("gsi3pk = :pk AND gsi3sk < :until")
                    .filter_expression("feature = :f AND (#st = :active OR ended_at >= :since)")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":pk", s(format!("LS#{license}")))
                    .expression_attribute_values(":until", s(t(to_ms)))
                    .expression_attribute_values(":f", s(slot.feature.as_str()))
                    .expression_attribute_values(":active", s(ACTIVE))
                    .expression_attribute_values(":since", n(from_ms))
            })
            .await?;
        let spans = sessions
            .iter()
            .map(|item| {
                let row = session_row(item)?;
                Ok(SessionSpan {
                    session_id: row.session_id,
                    feature: row.feature,
                    created_ms: row.created_at_ms,
                    end_ms: row.ended_at_ms,
                    expires_ms: row.expires_at_ms,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Events at or after `from_ms` and before `to_ms`: `~` sorts after every `<at>#...` tail.
        let events = self
            .query_all(|q| {
                q.key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                    .filter_expression("feature = :f AND kind = :k")
                    .expression_attribute_values(":pk", s(format!("E#{license}")))
                    .expression_attribute_values(":from", s(t(from_ms)))
                    .expression_attribute_values(":to", s(format!("{}~", t(to_ms - 1))))
                    .expression_attribute_values(":f", s(slot.feature.as_str()))
                    .expression_attribute_values(":k", s("limit_rejected"))
            })
            .await?;
        let rejections = events
            .iter()
            .map(|e| Ok((need_n(e, "at")?, get_n(e, "count").unwrap_or(1).max(0) as u64)))
            .collect::<Result<Vec<_>>>()?;
        Ok(UsageHistory { spans, rejections })
    }

    /// Creates the table with its indexes when missing, waits until it is active, and turns TTL
    /// on. A table that exists is left as it is (its indexes are checked).
    async fn migrate(&self) -> Result<()> {
        let described = self.client.describe_table().table_name(&self.table).send().await;
        match described {
            Ok(d) => {
                let names: BTreeSet<&str> = d
                    .table()
                    .map(|t| t.global_secondary_indexes().iter().filter_map(|g| g.index_name()).collect())
                    .unwrap_or_default();
                for gsi in ["gsi1", "gsi2", "gsi3", "gsi4"] {
                    if !names.contains(gsi) {
                        return Err(Error::ledger(format!(
                            "DynamoDB table {} exists without index {gsi}: it is not a seatkeeper ledger",
                            self.table
                        )));
                    }
                }
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                let attr = |name: &str| {
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(build_err)
                };
                let mut create = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("pk")
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(build_err)?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("sk")
                            .key_type(KeyType::Range)
                            .build()
                            .map_err(build_err)?,
                    )
                    .attribute_definitions(attr("pk")?)
                    .attribute_definitions(attr("sk")?);
                for gsi in ["gsi1", "gsi2", "gsi3", "gsi4"] {
                    create = create
                        .attribute_definitions(attr(&format!("{gsi}pk"))?)
                        .attribute_definitions(attr(&format!("{gsi}sk"))?)
                        .global_secondary_indexes(Self::index(
                            gsi,
                            if gsi == "gsi4" { ProjectionType::KeysOnly } else { ProjectionType::All },
                        )?);
                }
                match create.send().await {
                    Ok(_) => {}
                    // Another process created it meanwhile.
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
                    Err(e) => return Err(sdk_err(e)),
                }
            }
            Err(e) => return Err(sdk_err(e)),
        }
        self.wait_active().await?;
        let ttl = self.client.describe_time_to_live().table_name(&self.table).send().await.map_err(sdk_err)?;
        let status = ttl.time_to_live_description().and_then(|d| d.time_to_live_status());
        if !matches!(status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)) {
            let spec =
                TimeToLiveSpecification::builder().attribute_name(PURGE_AT).enabled(true).build().map_err(build_err)?;
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(sdk_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_checked_without_the_network() {
        let l =
            DynamoLedger::connect("dynamodb://seatkeeper?endpoint=http://127.0.0.1:1&region=us-east-1").await.unwrap();
        assert_eq!(l.table(), "seatkeeper");
        for bad in ["dynamodb://", "dynamodb://ab", "dynamodb://a/b?region=x", "dynamodb://table?colour=red"] {
            assert!(DynamoLedger::connect(bad).await.is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn times_sort_as_text() {
        assert!(t(9) < t(10));
        assert!(t(99_999) < t(100_000));
        // A sort key of a session created at `now` is below the `now$` bound and above `now`.
        let sk = format!("{}#abc", t(5));
        assert!(sk.as_str() < format!("{}$", t(5)).as_str() && sk > t(5));
    }

    #[test]
    fn sessions_leave_the_active_indexes_when_they_end() {
        let mut row = SessionRow {
            session_id: "ab12".into(),
            license_id: "lic".into(),
            feature: "f".into(),
            user_id: "u".into(),
            device_id: None,
            token_hash: "h".into(),
            idempotency_key: None,
            metadata: Some("{}".into()),
            status: ACTIVE.into(),
            created_at_ms: 1_000,
            last_heartbeat_at_ms: 1_000,
            expires_at_ms: 91_000,
            ended_at_ms: None,
        };
        let item = session_item(&row);
        assert_eq!(get_s(&item, "gsi1pk"), Some("A#lic/f"));
        assert_eq!(get_s(&item, "gsi4pk"), Some("ACTIVE#a"));
        assert!(!item.contains_key(PURGE_AT));
        assert_eq!(session_row(&item).unwrap(), row);
        row.status = "ended".into();
        row.ended_at_ms = Some(2_000);
        let item = session_item(&row);
        assert!(!item.contains_key("gsi1pk") && !item.contains_key("gsi4pk"));
        assert_eq!(get_n(&item, PURGE_AT), Some(2 + RETENTION_DAYS * 86_400));
        assert_eq!(session_row(&item).unwrap(), row);
    }
}
