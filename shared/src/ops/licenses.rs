//! The operator's views of licenses: every license with its live counts, who holds a license's
//! seats, ending one session, rotating a key. What an operator needs when a customer says
//! "Maximum user limit reached".

use std::collections::{BTreeMap, HashMap};

use crate::domain::{EndReason, FeaturePolicy, Ident, License, Slot};
use crate::error::{Error, Result};
use crate::ledger::{SessionEnd, ACTIVE};
use crate::seats::{EndOutcome, PolicyApplied, Versioned};
use crate::service::Service;
use crate::token;

/// The most licenses one page of the list holds.
pub const MAX_PAGE: usize = 500;

/// A feature's policy with the seats taken now.
#[derive(Debug, Clone)]
pub struct FeatureSeats {
    pub policy: FeaturePolicy,
    /// Seats taken, counted as the admission script counts them.
    pub active: u64,
}

#[derive(Debug, Clone)]
pub struct LicenseSeats {
    pub license: License,
    pub features: BTreeMap<Ident, FeatureSeats>,
}

#[derive(Debug, Clone)]
pub struct LicensePage {
    pub licenses: Vec<LicenseSeats>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

/// A session that holds a lease now.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub session_id: String,
    pub user: String,
    pub feature: Ident,
    pub device: Option<String>,
    pub created_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    pub expires_ms: i64,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Restored by a rebuild and not confirmed by a heartbeat since: it holds a seat only while
    /// the confirmed sessions leave one free.
    pub provisional: bool,
}

#[derive(Debug, Clone)]
pub struct LicenseSessions {
    pub sessions: Vec<LiveSession>,
    /// Per feature listed: its limit and the seats taken, from the same read as the list.
    pub features: BTreeMap<Ident, (u32, u64)>,
    /// The seat store's clock at the read.
    pub now_ms: i64,
}

impl Service {
    async fn license_or_404(&self, id: &Ident) -> Result<License> {
        self.ledger.license(id).await?.ok_or_else(|| Error::NotFound(format!("license {id} not found")))
    }

    /// A page of licenses in id order, each with its features' policies and seats taken.
    pub async fn list_licenses(&self, cursor: Option<&str>, limit: usize) -> Result<LicensePage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut ids = self.ledger.license_ids(cursor, limit + 1).await?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        let mut licenses = Vec::with_capacity(ids.len());
        for id in &ids {
            // Deleted between the two reads: the page is one shorter, never wrong.
            let Some(license) = self.ledger.license(id).await? else { continue };
            let mut features = BTreeMap::new();
            for (feature, policy) in &license.features {
                let slot = Slot { license: id.clone(), feature: feature.clone() };
                let active = self.seats.snapshot(&slot).await?.seats_taken();
                features.insert(feature.clone(), FeatureSeats { policy: policy.clone(), active });
            }
            licenses.push(LicenseSeats { license, features });
        }
        let next = if more { ids.last().map(|id| id.to_string()) } else { None };
        Ok(LicensePage { licenses, next })
    }

    /// The live seats of a license (of one feature, when given): the seat store's leases, with the
    /// metadata the ledger keeps. Counts come from the same read as the list.
    pub async fn license_sessions(&self, id: &Ident, feature: Option<&Ident>) -> Result<LicenseSessions> {
        let license = self.license_or_404(id).await?;
        if let Some(f) = feature {
            if !license.features.contains_key(f) {
                return Err(Error::NotFound(format!("feature {f} is not part of license {id}")));
            }
        }
        let mut out = LicenseSessions { sessions: Vec::new(), features: BTreeMap::new(), now_ms: 0 };
        for (name, policy) in license.features.iter().filter(|(f, _)| feature.is_none_or(|want| want == *f)) {
            let slot = Slot { license: id.clone(), feature: name.clone() };
            self.outbox.drain(&slot).await?;
            let snapshot = self.seats.snapshot(&slot).await?;
            out.now_ms = out.now_ms.max(snapshot.now_ms);
            out.features.insert(name.clone(), (policy.max_sessions, snapshot.seats_taken()));
            if snapshot.live().next().is_none() {
                continue;
            }
            let rows: HashMap<String, crate::ledger::SessionRow> =
                self.ledger.active_sessions(&slot).await?.into_iter().map(|r| (r.session_id.clone(), r)).collect();
            for e in snapshot.live() {
                let row = rows.get(&e.session_id);
                out.sessions.push(LiveSession {
                    session_id: e.session_id.clone(),
                    user: e.user.clone().or_else(|| row.map(|r| r.user_id.clone())).unwrap_or_default(),
                    feature: name.clone(),
                    device: e.device.clone().or_else(|| row.and_then(|r| r.device_id.clone())),
                    created_ms: e.created_ms.or(row.map(|r| r.created_at_ms)),
                    last_heartbeat_ms: e.last_heartbeat_ms,
                    expires_ms: e.expires_ms,
                    metadata: row.and_then(|r| r.metadata.as_deref()).and_then(|m| serde_json::from_str(m).ok()),
                    provisional: e.provisional,
                });
            }
        }
        out.sessions
            .sort_by(|a, b| (&a.feature, a.created_ms, &a.session_id).cmp(&(&b.feature, b.created_ms, &b.session_id)));
        Ok(out)
    }

    /// Ends one session of a license (reason `force_ended`), in the seat store and the ledger.
    /// `Ok(None)`: ended now; `Ok(Some(reason))`: it was over already. Unknown to this license: 404.
    pub async fn end_license_session(&self, id: &Ident, session_id: &str) -> Result<Option<EndReason>> {
        let license = self.license_or_404(id).await?;
        let not_found = || Error::NotFound(format!("session {session_id} not found in license {id}"));
        if !token::is_session_id(session_id) {
            return Err(not_found());
        }
        let row = self.ledger.session(session_id).await?;
        // The ledger names the session's feature; the seat store is asked too, for a session whose
        // row the ledger has not written yet.
        let features: Vec<&Ident> = match &row {
            Some(r) if r.license_id != id.as_str() => return Err(not_found()),
            Some(r) => license.features.keys().filter(|f| f.as_str() == r.feature).collect(),
            None => license.features.keys().collect(),
        };
        for feature in features {
            let slot = Slot { license: id.clone(), feature: feature.clone() };
            match self.seats.end(&slot, session_id, None, EndReason::ForceEnded).await? {
                EndOutcome::Ended { .. } => {
                    // The seat is free and its end in the outbox: the ledger (and the webhook that
                    // tells of it) learn it now, or as soon as the ledger takes it.
                    self.outbox.drain_after_change(&slot).await;
                    return Ok(None);
                }
                EndOutcome::Over(reason) => return Ok(Some(reason)),
                EndOutcome::Unknown | EndOutcome::Rebuild => {}
            }
        }
        match row {
            // Active in the ledger with no seat behind it: end the row, so nothing stays stuck.
            Some(r) if r.status == ACTIVE => {
                let end = SessionEnd {
                    session_id: session_id.to_owned(),
                    reason: EndReason::ForceEnded,
                    ended_at_ms: crate::domain::now_ms(),
                    last_heartbeat_at_ms: None,
                };
                self.ledger.end_sessions(&[end]).await?;
                Ok(None)
            }
            Some(r) => Ok(Some(EndReason::parse(&r.status).unwrap_or(EndReason::Expired))),
            None => Err(not_found()),
        }
    }

    /// Gives a license a new key, returned once. The old key stops taking seats at once on every
    /// instance: the license's version grows, and an instance that cached the old key finds its
    /// copy stale at its next create. Live sessions keep their tokens.
    pub async fn rotate_key(&self, id: &Ident) -> Result<String> {
        let license = self.license_or_404(id).await?;
        let key = token::new_license_key();
        let written = self
            .ledger
            .put_license(id, Some(&token::hash_secret(&key)), &license.features, crate::domain::now_ms())
            .await?;
        self.licenses.clear();
        let version = written.license.version;
        for (feature, policy) in &written.license.features {
            let slot = Slot { license: id.clone(), feature: feature.clone() };
            match self.seats.set_policy(&slot, Versioned { policy, version }).await {
                Ok(PolicyApplied::RevocationPending) => {
                    if let Err(e) = self.revoke_slot(&slot).await {
                        tracing::warn!(error = %e, %feature, "a removed feature's sessions are not all ended yet; the sweep ends them");
                    }
                }
                Ok(_) => {}
                // A slot that did not take the new version keeps admitting the old key only
                // through an instance whose cache still holds it, for at most the cache's life.
                Err(e) => tracing::warn!(error = %e, %feature, "seat store did not take the license's new version now"),
            }
        }
        Ok(key)
    }
}
