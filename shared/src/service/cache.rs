//! A process-wide cache of licenses by key hash: a create's license lookup without SQL.
//!
//! Safe to be stale by construction: a license carries its version, and every `PUT` writes that
//! version into each of its features' slots in the seat store. A create with a cached license
//! that the slot finds older (a new key, policy or removal made through another instance), or
//! that would answer "no such feature" (added, or its license deleted, since), admits nobody and
//! reads the license again. On this instance, license writes clear the cache at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::License;

/// Beyond this many keys the cache starts over (a flood of unknown keys cannot grow it).
const MAX_ENTRIES: usize = 10_000;

pub struct LicenseCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Option<License>)>>,
}

impl LicenseCache {
    /// `ttl` zero: no caching.
    pub fn new(ttl: Duration) -> Self {
        LicenseCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The license of a key hash (`Some(None)`: known to be no key), if looked up within `ttl`.
    pub fn get(&self, key_hash: &str) -> Option<Option<License>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key_hash).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, l)| l.clone())
    }

    /// The license a key hash named when last looked up, however long ago (not a key known to be
    /// unknown): what a create may go on with while the ledger cannot be read, since the seat
    /// store refuses a version older than its own (a key rotated or a feature removed since).
    pub fn last_known(&self, key_hash: &str) -> Option<License> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key_hash).and_then(|(_, l)| l.clone())
    }

    pub fn put(&self, key_hash: &str, license: Option<License>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key_hash.to_owned(), (Instant::now(), license));
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Ident;

    fn license() -> License {
        License {
            id: Ident::parse("l", "lic").unwrap(),
            features: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
        }
    }

    #[test]
    fn entries_live_for_their_ttl_and_clear_on_demand() {
        let c = LicenseCache::new(Duration::from_secs(60));
        assert!(c.get("h").is_none());
        c.put("h", Some(license()));
        c.put("unknown", None);
        assert_eq!(c.get("h").unwrap().unwrap().version, 1);
        assert!(c.get("unknown").unwrap().is_none());
        assert_eq!(c.last_known("h").unwrap().version, 1);
        assert!(c.last_known("unknown").is_none(), "an unknown key stays unknown");
        c.clear();
        assert!(c.get("h").is_none());
    }

    #[test]
    fn an_expired_entry_is_still_the_last_known_license() {
        let c = LicenseCache::new(Duration::from_millis(1));
        c.put("h", Some(license()));
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.get("h").is_none());
        assert_eq!(c.last_known("h").unwrap().version, 1);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = LicenseCache::new(Duration::ZERO);
        c.put("h", Some(license()));
        assert!(c.get("h").is_none());
    }
}
