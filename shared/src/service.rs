//! The session service: the contract's operations in domain terms, over the seat store (Redis, the
//! authority on seats) and the ledger (the durable record). No HTTP here.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::domain::{validate_license_key, EndReason, FeaturePolicy, FeaturePolicyInput, Ident, License, Slot};
use crate::error::{Error, Result};
use crate::ledger::{Ledger, SessionEnd, SessionRow, ACTIVE};
use crate::seats::{CreateOutcome, EndOutcome, HeartbeatOutcome, NewSeat, RebuildSeat, SeatStore};
use crate::token;

#[derive(Clone)]
pub struct Service {
    pub(crate) seats: SeatStore,
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) config: Arc<Config>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub seat_store: bool,
    pub ledger: bool,
}

impl Service {
    pub fn new(seats: SeatStore, ledger: Arc<dyn Ledger>, config: Config) -> Self {
        Service { seats, ledger, config: Arc::new(config) }
    }

    /// The service over the stores named by the configuration. Both connect lazily: this fails
    /// only on a malformed URL, never because a store is down, and does not migrate the ledger
    /// (see `migrate`), so a Lambda cold start needs neither the ledger nor DDL rights.
    pub async fn connect(config: Config) -> Result<Self> {
        let seats = SeatStore::connect(&config.redis_url)?;
        let ledger = crate::ledger::SqlLedger::connect_with(&config.ledger_url, config.ledger_pool_size).await?;
        Ok(Service::new(seats, Arc::new(ledger), config))
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

    pub async fn create_session(&self, license_key: &str, req: CreateSession) -> Result<Session> {
        validate_license_key("Authorization", license_key)
            .map_err(|_| Error::Unauthorized("missing or malformed license key"))?;
        let license = self
            .ledger
            .license_by_key_hash(&token::hash_secret(license_key))
            .await?
            .ok_or(Error::Unauthorized("unknown license key"))?;
        tracing::Span::current().record("license", license.id.as_str());
        if req.license.as_ref().is_some_and(|l| *l != license.id) {
            return Err(Error::Forbidden("the license key does not belong to licenseId"));
        }
        let policy = license
            .features
            .get(&req.feature)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("feature {} is not part of this license", req.feature)))?;
        let slot = Slot { license: license.id.clone(), feature: req.feature.clone() };
        let session_id = token::new_session_id();
        let (session_token, token_hash) = token::mint_session_token(&slot, &session_id);
        let seat = NewSeat {
            session_id: &session_id,
            user: req.user.as_str(),
            device: req.device.as_ref().map(Ident::as_str),
            token: &session_token,
            token_hash: &token_hash,
            idempotency_key: req.idempotency_key.as_ref().map(Ident::as_str),
        };
        let mut outcome = self.seats.create(&slot, &policy, &seat).await?;
        if matches!(outcome, CreateOutcome::Rebuild) {
            self.rebuild(&slot).await?;
            outcome = self.seats.create(&slot, &policy, &seat).await?;
        }
        let base = |replay, token: String, session_id: String| Session {
            replay,
            token,
            session_id,
            license: license.id.clone(),
            user: req.user.clone(),
            feature: req.feature.clone(),
            device: req.device.as_ref().map(|d| d.to_string()),
            created_ms: 0,
            expires_ms: 0,
            policy: policy.clone(),
            active: 0,
            replaced_session_id: None,
        };
        match outcome {
            CreateOutcome::Admitted { now_ms, expires_ms, active, replaced, evicted } => {
                let row = SessionRow {
                    session_id: session_id.clone(),
                    license_id: license.id.to_string(),
                    feature: req.feature.to_string(),
                    user_id: req.user.to_string(),
                    device_id: req.device.as_ref().map(|d| d.to_string()),
                    token_hash: token_hash.clone(),
                    idempotency_key: req.idempotency_key.as_ref().map(|k| k.to_string()),
                    metadata: req.metadata.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default()),
                    status: ACTIVE.into(),
                    created_at_ms: now_ms,
                    last_heartbeat_at_ms: now_ms,
                    expires_at_ms: expires_ms,
                    ended_at_ms: None,
                };
                let ends: Vec<SessionEnd> =
                    [(replaced.as_ref(), EndReason::Replaced), (evicted.as_ref(), EndReason::Evicted)]
                        .into_iter()
                        .filter_map(|(sid, reason)| {
                            sid.map(|sid| SessionEnd {
                                session_id: sid.clone(),
                                reason,
                                ended_at_ms: now_ms,
                                last_heartbeat_at_ms: None,
                            })
                        })
                        .collect();
                if let Err(e) = self.ledger.insert_session(&row, &ends).await {
                    // Nothing half-done: the seat goes back before the client hears of the failure.
                    if let Err(release) = self.seats.release(&slot, &session_id, seat.idempotency_key).await {
                        tracing::error!(error = %release, session_id, "could not release a seat after a failed ledger write; its lease runs out on its own");
                    }
                    return Err(e);
                }
                Ok(Session {
                    created_ms: now_ms,
                    expires_ms,
                    active,
                    replaced_session_id: replaced,
                    ..base(false, session_token, session_id)
                })
            }
            CreateOutcome::Replay { session_id, token, created_ms, expires_ms, device, active } => {
                Ok(Session { created_ms, expires_ms, active, device, ..base(true, token, session_id) })
            }
            CreateOutcome::Limit { scope, limit, active, retry_after_ms } => {
                // The refusal is a statistic, not a state change: the client hears 409 without
                // waiting for its commit (a retry storm must not become a commit storm). Under
                // Lambda the write finishes when the instance next runs; one lost on shutdown
                // only undercounts limitRejections.
                let (ledger, user, now) = (self.ledger.clone(), req.user.clone(), crate::domain::now_ms());
                tokio::spawn(async move {
                    if let Err(e) = ledger.record_limit_rejection(&slot, &user, now).await {
                        tracing::warn!(error = %e, "could not record a refused create in the ledger");
                    }
                });
                Err(Error::SeatLimitReached {
                    scope,
                    limit,
                    active,
                    retry_after_seconds: crate::domain::seconds_until(0, retry_after_ms),
                })
            }
            CreateOutcome::IdempotencyConflict => Err(Error::invalid(
                "idempotencyKey",
                "idempotencyKey was already used by another user of this license and feature",
            )),
            CreateOutcome::Rebuild => Err(Error::seat_store("the seat store could not be rebuilt")),
        }
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
            HeartbeatOutcome::Gone(reason) => Err(Error::SessionExpired { reason }),
            HeartbeatOutcome::Unknown | HeartbeatOutcome::Rebuild => {
                Err(match self.ended_in_ledger(&claims.session_id, &token_hash).await {
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
            EndOutcome::Ended { at_ms, last_heartbeat_ms } => {
                self.record_ends(vec![SessionEnd {
                    session_id: sid.clone(),
                    reason: EndReason::Ended,
                    ended_at_ms: at_ms,
                    last_heartbeat_at_ms: Some(last_heartbeat_ms),
                }])
                .await;
                Ok(Cleanup { ended: true, reason: None })
            }
            EndOutcome::Over(reason) => Ok(Cleanup { ended: false, reason: Some(reason) }),
            EndOutcome::Unknown | EndOutcome::Rebuild => match self.ended_in_ledger(sid, &token_hash).await {
                Some(reason) => Ok(Cleanup { ended: false, reason: Some(reason) }),
                None => Err(Error::Unauthorized("unknown session token")),
            },
        }
    }

    /// Records ends in the ledger after the seat store has freed the seats. The seats are free
    /// whatever happens here; an end the ledger misses is copied there by the next sweep.
    pub(crate) async fn record_ends(&self, ends: Vec<SessionEnd>) {
        if let Err(e) = self.ledger.end_sessions(&ends).await {
            tracing::warn!(error = %e, sessions = ends.len(), "ledger missed session ends; the sweep will record them");
        }
    }

    /// For a token the seat store no longer knows: why its session is over, if the ledger knows it.
    async fn ended_in_ledger(&self, session_id: &str, token_hash: &str) -> Option<EndReason> {
        match self.ledger.session(session_id).await {
            Ok(Some(row)) if token::secrets_equal(&row.token_hash, token_hash) => {
                Some(EndReason::parse(&row.status).unwrap_or(EndReason::Expired))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ledger unavailable while looking up an unknown session token");
                None
            }
        }
    }

    /// Restores a slot that lost its data (or never had any) from the ledger's live sessions.
    pub async fn rebuild(&self, slot: &Slot) -> Result<u64> {
        let license = self.ledger.license(&slot.license).await?;
        let Some(policy) = license.and_then(|l| l.features.get(&slot.feature).cloned()) else {
            return Ok(0);
        };
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
        let restored = self.seats.rebuild(slot, &policy, &seats).await?;
        if restored > 0 {
            tracing::warn!(license = %slot.license, feature = %slot.feature, restored, "seat store slot rebuilt from the ledger");
        }
        Ok(restored)
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
        for (feature, policy) in &written.license.features {
            let slot = Slot { license: id.clone(), feature: feature.clone() };
            if let Err(e) = self.seats.set_policy(&slot, policy).await {
                tracing::warn!(error = %e, %feature, "seat store did not take the new policy now; the next create applies it");
            }
        }
        Ok(LicenseWritten { created: written.created, license: written.license, generated_key })
    }

    pub async fn get_license(&self, id: Ident) -> Result<License> {
        tracing::Span::current().record("license", id.as_str());
        self.ledger.license(&id).await?.ok_or_else(|| Error::NotFound(format!("license {id} not found")))
    }

    pub async fn health(&self) -> Health {
        let (seats, ledger) = tokio::join!(self.seats.ping(), self.ledger.ping());
        Health { seat_store: seats.is_ok(), ledger: ledger.is_ok() }
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
