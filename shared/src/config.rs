//! Configuration from the environment, as the contract's table gives it.

use std::time::Duration;

use crate::domain::PolicyDefaults;
use crate::error::Error;

/// Ledger connections per process. A Lambda instance serves one request at a time, and every
/// instance holds its own pool, so this stays small; the local runner may want more.
pub const DEFAULT_LEDGER_POOL_SIZE: u32 = 8;

#[derive(Clone, Debug)]
pub struct Config {
    pub redis_url: String,
    pub ledger_url: String,
    /// `None`: admin routes answer 401 (unless `admin_iam` lets a verified IAM caller in).
    pub admin_token: Option<String>,
    /// `SEATKEEPER_ADMIN_AUTH=iam` (default `token`): an admin request whose IAM signature the
    /// platform in front (API Gateway's IAM authorizer) has verified needs no admin token. The
    /// local runner never sees such a request, so there it changes nothing.
    pub admin_iam: bool,
    pub defaults: PolicyDefaults,
    pub sweep_interval: Duration,
    pub ledger_pool_size: u32,
    /// Origins allowed to call from a browser (`SEATKEEPER_CORS_ORIGINS`, comma-separated; may
    /// list `chrome-extension://<id>`). Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// How long a license looked up by key is reused without the ledger
    /// (`SEATKEEPER_LICENSE_CACHE_SECONDS`, default 5; 0 turns the cache off).
    pub license_cache: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so that it can be tested without touching the process.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let num = |name: &'static str, default: u32| -> Result<u32, Error> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    Error::invalid(name, format!("{name} must be a whole number of seconds, 1 or more"))
                }),
            }
        };
        Ok(Config {
            redis_url: get("SEATKEEPER_REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            ledger_url: get("SEATKEEPER_LEDGER_URL").unwrap_or_else(|| "sqlite://seatkeeper.db".into()),
            admin_token: get("SEATKEEPER_ADMIN_TOKEN").filter(|t| !t.is_empty()),
            admin_iam: match get("SEATKEEPER_ADMIN_AUTH").as_deref().map(str::trim) {
                None | Some("") | Some("token") => false,
                Some("iam") => true,
                Some(_) => {
                    return Err(Error::invalid("SEATKEEPER_ADMIN_AUTH", "SEATKEEPER_ADMIN_AUTH must be token or iam"))
                }
            },
            defaults: PolicyDefaults {
                lease_ttl_seconds: num("SEATKEEPER_LEASE_TTL_SECONDS", 90)?,
                heartbeat_interval_seconds: num("SEATKEEPER_HEARTBEAT_INTERVAL_SECONDS", 30)?,
            },
            sweep_interval: Duration::from_secs(num("SEATKEEPER_SWEEP_INTERVAL_SECONDS", 900)?.into()),
            ledger_pool_size: num("SEATKEEPER_LEDGER_POOL_SIZE", DEFAULT_LEDGER_POOL_SIZE)?,
            license_cache: match get("SEATKEEPER_LICENSE_CACHE_SECONDS") {
                None => Duration::from_secs(5),
                Some(v) => Duration::from_secs(v.trim().parse::<u64>().map_err(|_| {
                    Error::invalid(
                        "SEATKEEPER_LICENSE_CACHE_SECONDS",
                        "SEATKEEPER_LICENSE_CACHE_SECONDS must be a whole number of seconds, 0 or more",
                    )
                })?),
            },
            cors_origins: get("SEATKEEPER_CORS_ORIGINS")
                .map(|v| {
                    v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect()
                })
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.ledger_url, "sqlite://seatkeeper.db");
        assert_eq!(c.admin_token, None);
        assert!(!c.admin_iam);
        assert_eq!(c.defaults.lease_ttl_seconds, 90);
        assert_eq!(c.defaults.heartbeat_interval_seconds, 30);
        assert_eq!(c.sweep_interval, Duration::from_secs(900));
    }

    #[test]
    fn bad_numbers_are_refused_by_name() {
        for bad in ["0", "-1", "abc", ""] {
            let err = config(&[("SEATKEEPER_LEASE_TTL_SECONDS", bad)]).unwrap_err();
            assert!(err.to_string().contains("SEATKEEPER_LEASE_TTL_SECONDS"));
        }
        let c = config(&[("SEATKEEPER_ADMIN_TOKEN", "t"), ("SEATKEEPER_SWEEP_INTERVAL_SECONDS", "5")]).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("t"));
        assert!(config(&[("SEATKEEPER_ADMIN_AUTH", "iam")]).unwrap().admin_iam);
        assert!(!config(&[("SEATKEEPER_ADMIN_AUTH", "token")]).unwrap().admin_iam);
        assert!(config(&[("SEATKEEPER_ADMIN_AUTH", "IAM ")]).is_err(), "only token or iam");
        assert_eq!(c.sweep_interval, Duration::from_secs(5));
    }
}
