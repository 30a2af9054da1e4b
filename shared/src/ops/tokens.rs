//! License-scoped admin tokens and who an admin caller is. A token is made by the service admin,
//! shown once, stored only as its SHA-256 hash, and looked up in the ledger on every request
//! (never cached): a revoked token is refused at once by every process.

use crate::domain::{now_ms, Ident};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::token;

/// Who an admin request comes from. Every admin handler asks this one value what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The service-wide admin: `SEATKEEPER_ADMIN_TOKEN`, or an IAM principal API Gateway verified.
    Service,
    /// A license-scoped admin token: this license only, and not its policies, key or tokens.
    License(Ident),
}

const FOREIGN: &str = "this admin token is scoped to another license";
const SERVICE_ONLY: &str = "a license-scoped admin token may not do this: it needs the service admin token";

impl Caller {
    /// May read and operate on `license` (its sessions, stats, usage, sweeps).
    pub fn check_license(&self, license: &Ident) -> Result<()> {
        match self {
            Caller::License(own) if own != license => Err(Error::Forbidden(FOREIGN)),
            _ => Ok(()),
        }
    }

    /// Only the service admin may (policies, deletion, keys, tokens, the list of every license).
    pub fn check_service(&self) -> Result<()> {
        match self {
            Caller::Service => Ok(()),
            Caller::License(_) => Err(Error::Forbidden(SERVICE_ONLY)),
        }
    }

    /// The license an operation that optionally names one acts on: the one given, checked; for a
    /// scoped token that gives none, its own.
    pub fn narrow(&self, given: Option<Ident>) -> Result<Option<Ident>> {
        match (self, given) {
            (Caller::Service, given) => Ok(given),
            (Caller::License(own), Some(l)) if &l != own => Err(Error::Forbidden(FOREIGN)),
            (Caller::License(own), _) => Ok(Some(own.clone())),
        }
    }
}

/// A token just made: shown once, never stored.
#[derive(Debug, Clone)]
pub struct NewAdminToken {
    pub token_id: String,
    pub token: String,
}

/// What a license-scoped token looks like (`sat_` ...): nothing else is looked up in the ledger.
pub fn looks_like_admin_token(bearer: &str) -> bool {
    bearer.starts_with("sat_") && bearer.len() <= 256
}

impl Service {
    /// The license a scoped admin token acts for, or `None` for a token that is unknown (never
    /// made, revoked, or its license deleted).
    pub async fn scoped_admin(&self, bearer: &str) -> Result<Option<Ident>> {
        if !looks_like_admin_token(bearer) {
            return Ok(None);
        }
        match self.ledger.admin_token(&token::hash_secret(bearer)).await? {
            Some(row) => Ok(Some(Ident::parse("licenseId", &row.license_id)?)),
            None => Ok(None),
        }
    }

    /// Makes a token scoped to `license`; unknown license: 404.
    pub async fn create_admin_token(&self, license: &Ident) -> Result<NewAdminToken> {
        let (token_id, token) = token::new_admin_token();
        let made = self.ledger.create_admin_token(license, &token_id, &token::hash_secret(&token), now_ms()).await?;
        if !made {
            return Err(Error::NotFound(format!("license {license} not found")));
        }
        Ok(NewAdminToken { token_id, token })
    }

    /// Revokes one of a license's tokens; unknown license or token: 404.
    pub async fn revoke_admin_token(&self, license: &Ident, token_id: &str) -> Result<()> {
        let not_found = || Error::NotFound(format!("admin token {token_id} not found in license {license}"));
        if !token::is_admin_token_id(token_id) {
            return Err(not_found());
        }
        if self.ledger.license(license).await?.is_none() {
            return Err(Error::NotFound(format!("license {license} not found")));
        }
        if !self.ledger.revoke_admin_token(license, token_id).await? {
            return Err(not_found());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Ident {
        Ident::parse("licenseId", s).unwrap()
    }

    #[test]
    fn a_scoped_caller_acts_on_its_own_license_only() {
        let (a, b) = (id("a"), id("b"));
        let scoped = Caller::License(a.clone());
        assert!(scoped.check_license(&a).is_ok());
        assert!(matches!(scoped.check_license(&b), Err(Error::Forbidden(_))));
        assert!(matches!(scoped.check_service(), Err(Error::Forbidden(_))));
        assert_eq!(scoped.narrow(None).unwrap(), Some(a.clone()));
        assert_eq!(scoped.narrow(Some(a.clone())).unwrap(), Some(a.clone()));
        assert!(matches!(scoped.narrow(Some(b.clone())), Err(Error::Forbidden(_))));
        assert!(Caller::Service.check_license(&b).is_ok() && Caller::Service.check_service().is_ok());
        assert_eq!(Caller::Service.narrow(None).unwrap(), None);
        assert_eq!(Caller::Service.narrow(Some(b.clone())).unwrap(), Some(b));
    }

    #[test]
    fn only_token_shaped_bearers_are_looked_up() {
        assert!(looks_like_admin_token(&token::new_admin_token().1));
        assert!(!looks_like_admin_token("sk_licensekey"));
        assert!(!looks_like_admin_token(&format!("sat_{}", "x".repeat(300))));
    }
}
