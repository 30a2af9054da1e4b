//! The session service: the contract's operations in domain terms, over the seat store (Redis, the
//! authority on seats) and the ledger (the durable record). No HTTP here.

use std::collections::BTreeMap;
use std::sync::Arc;

pub mod cache;
pub mod outbox;

use crate::config::Config;
use crate::domain::{validate_license_key, EndReason, FeaturePolicy, FeaturePolicyInput, Ident, License, Slot};
use crate::error::{Error, Result};
use crate::ledger::{Ledger, SessionEnd};
use crate::seats::{
    CreateOutcome, EndOutcome, HeartbeatOutcome, NewSeat, PolicyApplied, RebuildSeat, SeatStore, Versioned,
};
use crate::token;
use cache::LicenseCache;
use outbox::Outbox;

use crate::webhooks::Webhooks;

/// Sessions of a removed feature ended per round trip.
const REVOKE_BATCH: usize = 500;

#[derive(Clone)]
pub struct Service {
    pub(crate) seats: SeatStore,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) config: Arc<Config>,
    /// Moves the history the scripts append to each slot's outbox into the ledger.
    pub(crate) outbox: Outbox,
    /// The webhook sender, when `SEATKEEPER_WEBHOOK_URL` is set.
    webhooks: Option<Webhooks>,
    pub(crate) licenses: Arc<LicenseCache>,
}

/// A create, validated.
#[derive(Debug, Clone)]
pub struct CreateSession {
    pub user: Ident,
    pub feature: Ident,
    pub device: Option<Ident>,
    pub idempotency_key: Option<Ident>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// When given, must name the license of the key (403 otherwise).
    pub license: Option<Ident>,
}

#[derive(Debug, Clone)]
pub struct Session {
    /// `true` when this answers an idempotent retry of an earlier create.
    pub replay: bool,
    pub token: String,
    pub session_id: String,
    pub license: Ident,
    pub user: Ident,
    pub feature: Ident,
    pub device: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub policy: FeaturePolicy,
    pub active: u32,
    pub replaced_session_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Renewed {
    pub session_id: String,
    pub expires_ms: i64,
    pub heartbeat_interval_seconds: u32,
    pub resurrected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub ended: bool,
    pub reason: Option<EndReason>,
}

/// A license write: `key` absent keeps the key, or generates one on creation.
#[derive(Debug, Clone)]
pub struct PutLicense {
    pub key: Option<String>,
    pub features: BTreeMap<String, FeaturePolicyInput>,
}

#[derive(Debug)]
pub struct LicenseWritten {
    pub created: bool,
    pub license: License,
    /// The key, once, when the service generated it.
    pub generated_key: Option<String>,
}

/// Each store's health: `None` when it cannot be reached, else what is wrong with it (nothing
/// when it is well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub seat_store: Option<Vec<String>>,
    pub ledger: Option<Vec<String>>,
}

impl Health {
    pub fn ok(&self) -> bool {
        [&self.seat_store, &self.ledger].iter().all(|s| s.as_ref().is_some_and(Vec::is_empty))
    }
}

impl Service {
    pub fn new(seats: SeatStore, ledger: Arc<dyn Ledger>, config: Config) -> Self {
        Self::with_history_store(seats.clone(), seats, ledger, config)
    }

    /// `new`, with the outbox's drain and the webhooks going through `history`, a seat store
    /// connection of their own: a drain's replies (up to 256 entries) then never hold up the
    /// seat calls pipelined behind them on one connection.
    pub fn with_history_store(seats: SeatStore, history: SeatStore, ledger: Arc<dyn Ledger>, config: Config) -> Self {
        let webhooks = config.webhook.clone().map(|w| Webhooks::new(history.clone(), ledger.clone(), w));
        Service {
            outbox: Outbox::new(history, ledger.clone(), webhooks.clone()),
            webhooks,
            seats,
            licenses: Arc::new(LicenseCache::new(config.license_cache)),
            ledger,
            config: Arc::new(config),
        }
    }

    /// The service over the stores named by the configuration. Both connect lazily: this fails
    /// only on a malformed URL, never because a store is down, and does not migrate the ledger
    /// (see `migrate`), so a Lambda cold start needs neither the ledger nor DDL rights.
    pub async fn connect(config: Config) -> Result<Self> {
        let seats = SeatStore::connect(&config.redis_url)?;
        let history = SeatStore::connect(&config.redis_url)?;
        let ledger = crate::ledger::open(&config.ledger_url, config.ledger_pool_size).await?;
        Ok(Service::with_history_store(seats, history, ledger, config))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn seats(&self) -> &SeatStore {
        &self.seats
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Starts the background writer that moves history from the outbox into the ledger (a
    /// long-lived process; a function calls `flush_history` instead).
    pub fn start_history_writer(&self) {
        self.outbox.start();
    }

    /// Starts the background webhook sender (a long-lived process; on Lambda the scheduled
    /// `webhooks` function calls `send_webhooks`). Nothing without webhooks configured.
    pub fn start_webhook_sender(&self) {
        if let Some(w) = &self.webhooks {
            w.start();
        }
    }

    /// Sends the webhooks that are due; `None` without webhooks configured.
    pub async fn send_webhooks(&self) -> Result<Option<crate::webhooks::SendReport>> {
        match &self.webhooks {
            Some(w) => w.send_due().await.map(Some),
            None => Ok(None),
        }
    }

    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    /// Moves the history of the slots this process changed into the ledger, within `budget`;
    /// whether all of it went (what is left waits in Redis for the next writer or sweep).
    pub async fn flush_history(&self, budget: std::time::Duration) -> bool {
        self.outbox.flush(budget).await
    }

    /// Moves one slot's history into the ledger now; how many entries went.
    pub async fn drain_history(&self, slot: &Slot) -> Result<u64> {
        self.outbox.drain(slot).await
    }

    /// Moves every slot's history into the ledger (a process's start picks up what one that died
    /// left). Returns how many entries went; a slot that fails is left for later.
    pub async fn drain_all_history(&self) -> Result<u64> {
        let mut moved = 0;
        for entry in self.ledger.slots().await? {
            match self.outbox.drain(&entry.slot).await {
                Ok(n) => moved += n,
                Err(e) => {
                    tracing::warn!(error = %e, license = %entry.slot.license, feature = %entry.slot.feature, "history stays in the outbox for now")
                }
            }
        }
        Ok(moved)
    }

    pub async fn create_session(&self, license_key: &str, req: CreateSession) -> Result<Session> {
        validate_license_key("Authorization", license_key)
            .map_err(|_| Error::Unauthorized("missing or malformed license key"))?;
        let key_hash = token::hash_secret(license_key);
        // A cached license may predate a change made through another instance: a feature added
        // (or added back), the license deleted, its key or a policy changed. An attempt with it
        // that would answer "no such feature", or whose slot holds a newer version of the license,
        // admits nobody; the license is then read again and the create made with that.
        if let Some(cached) = self.licenses.get(&key_hash) {
            let license = cached.ok_or(Error::Unauthorized("unknown license key"))?;
            match self.create_for(license_key, license, req.clone(), true).await {
                Ok(Some(session)) => return Ok(session),
                Ok(None) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let license = match self.read_license(&key_hash).await {
            Ok(license) => license.ok_or(Error::Unauthorized("unknown license key"))?,
            // The ledger cannot be read: a license this process read before still takes seats,
            // because the seat store refuses a version older than its own. A login does not
            // depend on the ledger being up.
            Err(e @ Error::StoreUnavailable { .. }) => {
                let Some(known) = self.licenses.last_known(&key_hash) else { return Err(e) };
                return match self.create_for(license_key, known, req, true).await {
                    Ok(Some(session)) => Ok(session),
                    Ok(None) | Err(Error::NotFound(_)) => Err(e),
                    Err(other) => Err(other),
                };
            }
            Err(e) => return Err(e),
        };
        self.create_for(license_key, license, req, false)
            .await?
            .ok_or_else(|| Error::seat_store("the seat store found a license read just now stale"))
    }

    /// A create with the license its key named. `None`: the license came from the cache
    /// (`cached`) and the seat store holds a newer version of it; nothing was done.
    async fn create_for(
        &self,
        license_key: &str,
        license: crate::domain::License,
        req: CreateSession,
        cached: bool,
    ) -> Result<Option<Session>> {
        tracing::Span::current().record("license", license.id.as_str());
        if req.license.as_ref().is_some_and(|l| *l != license.id) {
            return Err(Error::Forbidden("the license key does not belong to licenseId"));
        }
        let not_found = || Error::NotFound(format!("feature {} is not part of this license", req.feature));
        let policy = license.features.get(&req.feature).cloned().ok_or_else(not_found)?;
        let slot = Slot { license: license.id.clone(), feature: req.feature.clone() };
        let session_id = token::new_session_id();
        let minted = token::mint_session_token(&slot, &session_id);
        let idem = req.idempotency_key.as_ref().map(Ident::as_str);
        let sealed = token::seal(&minted.secret, license_key, &slot, idem.unwrap_or(""), &session_id);
        let metadata = req.metadata.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default());
        let seat = NewSeat {
            session_id: &session_id,
            user: req.user.as_str(),
            device: req.device.as_ref().map(Ident::as_str),
            token_hash: &minted.hash,
            idempotency_key: idem,
            sealed_secret: &sealed,
            license_cached: cached,
            metadata_json: metadata.as_deref(),
            outbox_limit: self.config.outbox_limit,
        };
        let versioned = Versioned { policy: &policy, version: license.version };
        let outcome = match self.admit(&slot, versioned, &seat).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The script may have run with its reply lost: take the seat back, so that the
                // 503 the client hears changed nothing. (One that runs late refuses by itself.)
                // A replay of it that has answered for the seat keeps it (`release` leaves it).
                if let Err(release) = self.seats.release(&slot, &session_id, idem).await {
                    tracing::warn!(error = %release, session_id, "could not take back a seat after a failed create; its lease runs out on its own");
                    self.mark_dirty(&slot).await;
                }
                return Err(e);
            }
        };
        // A seat granted, new or replayed: what the client hears. Its history is in the slot's
        // outbox already, written by the same script.
        let (replay, session_id, token, created_ms, expires_ms, device, active, limit, hb, replaced) = match outcome {
            CreateOutcome::Admitted {
                now_ms,
                expires_ms,
                active,
                replaced,
                evicted: _,
                limit,
                heartbeat_interval_seconds,
            } => {
                self.outbox.nudge(&slot);
                let device = req.device.as_ref().map(|d| d.to_string());
                let replaced = replaced.into_iter().next();
                (
                    false,
                    session_id,
                    minted,
                    now_ms,
                    expires_ms,
                    device,
                    active,
                    limit,
                    heartbeat_interval_seconds,
                    replaced,
                )
            }
            CreateOutcome::Replay {
                session_id: replayed,
                sealed_secret,
                created_ms,
                expires_ms,
                device,
                active,
                limit,
                heartbeat_interval_seconds,
            } => {
                let secret = token::seal(&sealed_secret, license_key, &slot, idem.unwrap_or(""), &replayed);
                let token = token::session_token(&slot, &replayed, secret);
                (true, replayed, token, created_ms, expires_ms, device, active, limit, heartbeat_interval_seconds, None)
            }
            // The refusal was counted in the seat store, in the same step (the sweep moves the
            // counts to the ledger): nothing to wait for here. The minute's first one is in the
            // outbox, for webhooks.
            CreateOutcome::Limit { scope, limit, active, retry_after_ms, first_of_minute } => {
                if first_of_minute {
                    self.outbox.nudge(&slot);
                }
                crate::metrics::metrics()
                    .limit_refusals
                    .get_or_create(&crate::metrics::Metrics::feature(slot.feature.as_str()))
                    .inc();
                return Err(Error::SeatLimitReached {
                    scope,
                    limit,
                    active,
                    retry_after_seconds: crate::domain::seconds_until(0, retry_after_ms),
                });
            }
            CreateOutcome::IdempotencyConflict => {
                return Err(Error::invalid(
                    "idempotencyKey",
                    "idempotencyKey was already used by another user of this license and feature",
                ))
            }
            // The ledger has not taken this slot's history for long: no seat whose history
            // could be lost. Retry-After comes with the 503.
            CreateOutcome::Backlog => {
                self.outbox.nudge(&slot);
                return Err(Error::ledger("the ledger is behind on this license's history; try again shortly"));
            }
            CreateOutcome::Revoked => return Err(not_found()),
            CreateOutcome::Stale => return Ok(None),
            CreateOutcome::Rebuild => return Err(Error::seat_store("the seat store could not be rebuilt")),
        };
        // A replay answers for the seat of the create it repeats, whose reply may have been lost:
        // `confirm` keeps that create from giving the seat back from now on, or finds it given back.
        if replay && !self.seats.confirm(&slot, &session_id).await? {
            return Err(Error::seat_store("the create this repeats gave its seat back; try again"));
        }
        let mut policy = policy;
        policy.max_sessions = limit;
        policy.heartbeat_interval_seconds = hb;
        Ok(Some(Session {
            replay,
            token: token.token,
            session_id,
            license: license.id,
            user: req.user,
            feature: req.feature,
            device,
            created_ms,
            expires_ms,
            policy,
            active,
            replaced_session_id: replaced,
        }))
    }

    /// The admission script, once more after rebuilding a slot that lost its data.
    async fn admit(&self, slot: &Slot, policy: Versioned<'_>, seat: &NewSeat<'_>) -> Result<CreateOutcome> {
        let outcome = self.seats.create(slot, policy, seat).await?;
        if !matches!(outcome, CreateOutcome::Rebuild) {
            return Ok(outcome);
        }
        if self.rebuild_slot(slot).await?.is_none() {
            // The license this create read (from the cache) no longer has the feature.
            return Ok(CreateOutcome::Revoked);
        }
        self.seats.create(slot, policy, seat).await
    }

    /// A license by its key's hash from the ledger, kept in the cache for the next creates.
    async fn read_license(&self, key_hash: &str) -> Result<Option<crate::domain::License>> {
        let license = self.ledger.license_by_key_hash(key_hash).await?;
        self.licenses.put(key_hash, license.clone());
        Ok(license)
    }

    pub async fn heartbeat(&self, session_token: &str) -> Result<Renewed> {
        let (claims, token_hash) = parse_token(session_token)?;
        let slot = &claims.slot;
        tracing::Span::current().record("license", slot.license.as_str());
        let mut outcome = self.seats.heartbeat(slot, &claims.session_id, &token_hash).await?;
        if matches!(outcome, HeartbeatOutcome::Rebuild) {
            self.rebuild(slot).await?;
            outcome = self.seats.heartbeat(slot, &claims.session_id, &token_hash).await?;
        }
        match outcome {
            HeartbeatOutcome::Renewed { expires_ms, heartbeat_interval_seconds, resurrected } => {
                Ok(Renewed { session_id: claims.session_id, expires_ms, heartbeat_interval_seconds, resurrected })
            }
            HeartbeatOutcome::Gone(reason) => {
                // The script may have ended it just now (revoked, or a restored session that
                // found no seat): its end is in the outbox.
                self.outbox.nudge(slot);
                Err(Error::SessionExpired { reason })
            }
            HeartbeatOutcome::Unknown | HeartbeatOutcome::Rebuild => {
                Err(match self.ended_in_ledger(&claims.session_id, &token_hash).await? {
                    Some(reason) => Error::SessionExpired { reason },
                    None => Error::Unauthorized("unknown session token"),
                })
            }
        }
    }

    pub async fn cleanup(&self, session_token: &str) -> Result<Cleanup> {
        let (claims, token_hash) = parse_token(session_token)?;
        let slot = &claims.slot;
        tracing::Span::current().record("license", slot.license.as_str());
        let sid = &claims.session_id;
        let mut outcome = self.seats.end(slot, sid, Some(&token_hash), EndReason::Ended).await?;
        if matches!(outcome, EndOutcome::Rebuild) {
            self.rebuild(slot).await?;
            outcome = self.seats.end(slot, sid, Some(&token_hash), EndReason::Ended).await?;
        }
        match outcome {
            EndOutcome::Ended { .. } => {
                self.outbox.nudge(slot);
                Ok(Cleanup { ended: true, reason: None })
            }
            EndOutcome::Over(reason) => Ok(Cleanup { ended: false, reason: Some(reason) }),
            EndOutcome::Unknown | EndOutcome::Rebuild => match self.ended_in_ledger(sid, &token_hash).await? {
                Some(reason) => Ok(Cleanup { ended: false, reason: Some(reason) }),
                None => Err(Error::Unauthorized("unknown session token")),
            },
        }
    }

    /// Asks the next sweep to reconcile a slot: a ledger write is known to have missed.
    pub(crate) async fn mark_dirty(&self, slot: &Slot) {
        if let Err(e) = self.seats.mark_dirty(slot).await {
            tracing::warn!(error = %e, license = %slot.license, feature = %slot.feature, "could not mark a slot for reconciliation; its hourly check will find the drift");
        }
    }

    /// For a token the seat store no longer knows: why its session is over, if the ledger knows it.
    /// A ledger that cannot answer is a 503, never a 401: the token may well be valid.
    async fn ended_in_ledger(&self, session_id: &str, token_hash: &str) -> Result<Option<EndReason>> {
        Ok(match self.ledger.session(session_id).await? {
            Some(row) if token::secrets_equal(&row.token_hash, token_hash) => {
                Some(EndReason::parse(&row.status).unwrap_or(EndReason::Expired))
            }
            _ => None,
        })
    }

    /// Restores a slot that lost its data (or never had any) from the ledger's live sessions.
    pub async fn rebuild(&self, slot: &Slot) -> Result<u64> {
        Ok(self.rebuild_slot(slot).await?.unwrap_or(0))
    }

    /// As `rebuild`; `None` when the license has no such feature (any more).
    async fn rebuild_slot(&self, slot: &Slot) -> Result<Option<u64>> {
        let Some(license) = self.ledger.license(&slot.license).await? else { return Ok(None) };
        let Some(policy) = license.features.get(&slot.feature) else { return Ok(None) };
        // History still in the outbox first: an end not yet in the ledger must not come back.
        self.outbox.drain(slot).await?;
        let seats: Vec<RebuildSeat> = self
            .ledger
            .active_sessions(slot)
            .await?
            .into_iter()
            .map(|r| RebuildSeat {
                session_id: r.session_id,
                user: r.user_id,
                device: r.device_id,
                token_hash: r.token_hash,
                created_ms: r.created_at_ms,
                last_heartbeat_ms: r.last_heartbeat_at_ms,
            })
            .collect();
        let restored = self.seats.rebuild(slot, Versioned { policy, version: license.version }, &seats).await?;
        if restored > 0 {
            tracing::warn!(license = %slot.license, feature = %slot.feature, restored, "seat store slot rebuilt from the ledger");
        }
        Ok(Some(restored))
    }

    pub async fn put_license(&self, id: Ident, input: PutLicense) -> Result<LicenseWritten> {
        tracing::Span::current().record("license", id.as_str());
        if let Some(key) = &input.key {
            validate_license_key("key", key)?;
        }
        let mut features = BTreeMap::new();
        for (name, policy) in &input.features {
            let feature = Ident::parse("features", name).map_err(|_| {
                Error::invalid(
                    "features",
                    format!("feature name {name:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -"),
                )
            })?;
            features.insert(feature, policy.resolve(name, self.config.defaults)?);
        }
        let existing = self.ledger.license(&id).await?;
        let generated_key = match (&existing, &input.key) {
            (None, None) => Some(token::new_license_key()),
            _ => None,
        };
        let key_hash = input.key.as_deref().or(generated_key.as_deref()).map(token::hash_secret);
        let now = crate::domain::now_ms();
        let written = self.ledger.put_license(&id, key_hash.as_deref(), &features, now).await?;
        self.licenses.clear();
        // A removed feature's sessions end now; if a store fails, the sweep finishes the job.
        for feature in &written.removed {
            let slot = Slot { license: id.clone(), feature: feature.clone() };
            if let Err(e) = self.revoke_slot(&slot).await {
                tracing::warn!(error = %e, %feature, "a removed feature's sessions are not all ended yet; the sweep ends them");
            }
        }
        let version = written.license.version;
        for (feature, policy) in &written.license.features {
            let slot = Slot { license: id.clone(), feature: feature.clone() };
            let applied = match self.seats.set_policy(&slot, Versioned { policy, version }).await {
                // Put back before the sweep finished its removal: the old sessions end first.
                Ok(PolicyApplied::RevocationPending) => self.revoke_slot(&slot).await.map(drop),
                other => other.map(drop),
            };
            if let Err(e) = applied {
                tracing::warn!(error = %e, %feature, "seat store did not take the new policy now; the next create applies it");
            }
        }
        Ok(LicenseWritten { created: written.created, license: written.license, generated_key })
    }

    /// Ends every session of a slot whose feature was removed (reason `revoked`), in the seat store
    /// and then the ledger, and drops the slot from the seat store. Returns how many rows it ended.
    pub(crate) async fn revoke_slot(&self, slot: &Slot) -> Result<u64> {
        let mut ended = 0;
        loop {
            let batch = self.seats.revoke(slot, REVOKE_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            ended += batch.len() as u64;
        }
        // Their ends went to the outbox with them.
        self.outbox.drain(slot).await?;
        // Rows whose seat had already gone (or never came): the feature is gone, so are they.
        let at = crate::domain::now_ms();
        let rest: Vec<SessionEnd> = self
            .ledger
            .active_sessions(slot)
            .await?
            .into_iter()
            .map(|r| SessionEnd {
                session_id: r.session_id,
                reason: EndReason::Revoked,
                ended_at_ms: at,
                last_heartbeat_at_ms: None,
            })
            .collect();
        ended += self.ledger.end_sessions(&rest).await?.len() as u64;
        Ok(ended)
    }

    /// Removes a license: its key stops working at once and its sessions end (`revoked`). Returns
    /// how many it ended now; if a store fails halfway, the sweep ends the rest.
    pub async fn delete_license(&self, id: Ident) -> Result<u64> {
        tracing::Span::current().record("license", id.as_str());
        let features = self
            .ledger
            .delete_license(&id, crate::domain::now_ms())
            .await?
            .ok_or_else(|| Error::NotFound(format!("license {id} not found")))?;
        self.licenses.clear();
        let mut ended = 0;
        for feature in features {
            let slot = Slot { license: id.clone(), feature };
            match self.revoke_slot(&slot).await {
                Ok(n) => ended += n,
                Err(e) => {
                    tracing::warn!(error = %e, feature = %slot.feature, "a deleted license's sessions are not all ended yet; the sweep ends them")
                }
            }
        }
        Ok(ended)
    }

    pub async fn get_license(&self, id: Ident) -> Result<License> {
        tracing::Span::current().record("license", id.as_str());
        self.ledger.license(&id).await?.ok_or_else(|| Error::NotFound(format!("license {id} not found")))
    }

    pub async fn health(&self) -> Health {
        let (seats, ledger) = tokio::join!(self.seats.problems(), self.ledger.ping());
        let ledger = ledger.ok().map(|()| {
            self.outbox
                .failing()
                .then(|| {
                    "the ledger refused its last write (see the log); history waits in Redis until it takes one".into()
                })
                .into_iter()
                .collect()
        });
        Health { seat_store: seats.ok(), ledger }
    }

    /// Applies the ledger's migrations (`seatkeeper migrate`, and the local runner at its start).
    pub async fn migrate(&self) -> Result<()> {
        self.ledger.migrate().await
    }
}

fn parse_token(session_token: &str) -> Result<(token::TokenClaims, String)> {
    let claims = token::parse_session_token(session_token).ok_or(Error::Unauthorized("unknown session token"))?;
    Ok((claims, token::hash_secret(session_token)))
}
