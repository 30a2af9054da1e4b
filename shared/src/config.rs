//! Configuration from the environment, as the contract's table gives it.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::domain::PolicyDefaults;
use crate::error::Error;

/// Ledger connections per process. A Lambda instance serves one request at a time, and every
/// instance holds its own pool, so this stays small; the local runner may want more.
pub const DEFAULT_LEDGER_POOL_SIZE: u32 = 8;

/// Entries a slot's outbox holds at most before creates answer 503 (`SEATKEEPER_OUTBOX_LIMIT`).
pub const DEFAULT_OUTBOX_LIMIT: u64 = 50_000;

/// The Redis URL may carry a password (`rediss://user:password@host:6380`, an ElastiCache AUTH
/// token), and the ledger's URL too: `Debug` shows them through `redact_url`, and the admin token
/// not at all.
#[derive(Clone)]
pub struct Config {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`; several comma-separated URLs select a
    /// Redis Cluster. `user:password@` in it authenticates (AUTH, or a Redis ACL user).
    pub redis_url: String,
    /// A PEM file of the CA certificates to trust for `rediss://` (`SEATKEEPER_REDIS_CA_FILE`)
    /// instead of the system's root certificates: for a Redis whose certificate a private CA signed.
    pub redis_ca_file: Option<PathBuf>,
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
    /// How many entries each (license, feature)'s outbox may hold while the ledger is away
    /// (`SEATKEEPER_OUTBOX_LIMIT`, default 50,000, about 10 MB of Redis per slot): past it new
    /// seats answer 503 until writers have drained it; ends and refusals go on.
    pub outbox_limit: u64,
    /// `SEATKEEPER_WEBHOOK_URL` and `SEATKEEPER_WEBHOOK_SECRET`: where events are POSTed, signed.
    pub webhook: Option<WebhookConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a field added later must be placed here, redacted or not.
        let Config {
            redis_url,
            redis_ca_file,
            ledger_url,
            admin_token,
            admin_iam,
            defaults,
            sweep_interval,
            ledger_pool_size,
            cors_origins,
            license_cache,
            outbox_limit,
            webhook,
        } = self;
        f.debug_struct("Config")
            .field("redis_url", &redact_url(redis_url))
            .field("redis_ca_file", redis_ca_file)
            .field("ledger_url", &redact_url(ledger_url))
            .field("admin_token", &admin_token.as_ref().map(|_| "***"))
            .field("admin_iam", admin_iam)
            .field("defaults", defaults)
            .field("sweep_interval", sweep_interval)
            .field("ledger_pool_size", ledger_pool_size)
            .field("cors_origins", cors_origins)
            .field("license_cache", license_cache)
            .field("outbox_limit", outbox_limit)
            .field("webhook", webhook)
            .finish()
    }
}

/// A store's URL as it may be shown (in a log line, an error, a `Debug`): each password in it
/// replaced by `***`, as in `rediss://user:***@host:6380`. Several comma-separated URLs (a
/// cluster's nodes) are each redacted. A URL without a password is returned as it is.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else { return one.to_owned() };
            // The credentials end at the last `@` before the query: a password written without
            // percent-encoding may hold `/` or `@`. A Unix socket's path has no credentials.
            let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
            let at = match before_query.rfind('@') {
                Some(at) if !rest.starts_with('/') => at,
                _ => return one.to_owned(),
            };
            match rest[..at].split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `SEATKEEPER_WEBHOOK_URL` and `SEATKEEPER_WEBHOOK_SECRET`.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secrets: Vec<WebhookSecret>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl WebhookConfig {
    /// Both set, or neither (no webhooks); one without the other is a mistake worth a refusal.
    pub fn from_parts(url: Option<String>, secret: Option<String>) -> std::result::Result<Option<Self>, String> {
        match (url.filter(|u| !u.trim().is_empty()), secret.filter(|s| !s.trim().is_empty())) {
            (None, None) => Ok(None),
            (Some(_), None) => Err("SEATKEEPER_WEBHOOK_URL is set but SEATKEEPER_WEBHOOK_SECRET is not".into()),
            (None, Some(_)) => Err("SEATKEEPER_WEBHOOK_SECRET is set but SEATKEEPER_WEBHOOK_URL is not".into()),
            (Some(url), Some(secret)) => {
                let url = url.trim().to_owned();
                let parsed = url.parse::<lambda_http::http::Uri>().ok();
                let web = parsed.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
                });
                if !web {
                    return Err(format!(
                        "SEATKEEPER_WEBHOOK_URL must be an http:// or https:// URL with a host, not {:?}",
                        redact_url(&url)
                    ));
                }
                let secrets =
                    WebhookSecret::parse_list(&secret).map_err(|e| format!("SEATKEEPER_WEBHOOK_SECRET: {e}"))?;
                Ok(Some(WebhookConfig { url, secrets }))
            }
        }
    }
}

/// One signing key, decoded from its `whsec_<base64>` form.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64 key>`: the prefix is required, the key must decode to 24 to 64 bytes
    /// (the specification's range).
    pub fn parse(s: &str) -> Result<WebhookSecret, String> {
        let b64 = s.trim().strip_prefix("whsec_").ok_or("a webhook secret has the form whsec_<base64 key>")?;
        let key = STANDARD.decode(b64).map_err(|_| "the part after whsec_ is not base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("a webhook key holds 24 to 64 bytes; this one holds {}", key.len()));
        }
        Ok(WebhookSecret(key))
    }

    /// Parses a space- or comma-separated list of secrets (the first signs alone once the
    /// others are dropped from the setting).
    pub fn parse_list(s: &str) -> Result<Vec<WebhookSecret>, String> {
        let list: Vec<WebhookSecret> =
            s.split([' ', ',']).filter(|p| !p.is_empty()).map(WebhookSecret::parse).collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err("no webhook secret given".into());
        }
        Ok(list)
    }

    /// The HMAC key.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
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
            redis_ca_file: redis_ca_file(&get),
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
            outbox_limit: match get("SEATKEEPER_OUTBOX_LIMIT") {
                None => DEFAULT_OUTBOX_LIMIT,
                Some(v) => v.trim().parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    Error::invalid(
                        "SEATKEEPER_OUTBOX_LIMIT",
                        "SEATKEEPER_OUTBOX_LIMIT must be a whole number, 1 or more",
                    )
                })?,
            },
            license_cache: match get("SEATKEEPER_LICENSE_CACHE_SECONDS") {
                None => Duration::from_secs(5),
                Some(v) => Duration::from_secs(v.trim().parse::<u64>().map_err(|_| {
                    Error::invalid(
                        "SEATKEEPER_LICENSE_CACHE_SECONDS",
                        "SEATKEEPER_LICENSE_CACHE_SECONDS must be a whole number of seconds, 0 or more",
                    )
                })?),
            },
            webhook: WebhookConfig::from_parts(get("SEATKEEPER_WEBHOOK_URL"), get("SEATKEEPER_WEBHOOK_SECRET"))
                .map_err(|m| Error::invalid("SEATKEEPER_WEBHOOK_URL", m))?,
            cors_origins: get("SEATKEEPER_CORS_ORIGINS")
                .map(|v| {
                    v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// `SEATKEEPER_REDIS_CA_FILE` as read through `get`; unset or empty: `None` (the system's roots).
pub fn redis_ca_file(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    get(REDIS_CA_FILE).filter(|v| !v.trim().is_empty()).map(|v| PathBuf::from(v.trim()))
}

/// The name of the variable that names a CA file for `rediss://`.
pub const REDIS_CA_FILE: &str = "SEATKEEPER_REDIS_CA_FILE";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn both_settings_or_neither() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        assert!(WebhookConfig::from_parts(None, None).unwrap().is_none());
        assert!(WebhookConfig::from_parts(Some("http://x".into()), None).unwrap_err().contains("SECRET"));
        assert!(WebhookConfig::from_parts(None, Some(secret.clone())).unwrap_err().contains("URL"));
        assert!(WebhookConfig::from_parts(Some("ftp://x".into()), Some(secret.clone())).unwrap_err().contains("http"));
        let c = WebhookConfig::from_parts(Some("https://hooks.example/x".into()), Some(secret)).unwrap().unwrap();
        assert!(!format!("{c:?}").contains("MfKQ"), "no secret in Debug");
    }

    #[test]
    fn malformed_webhook_secrets_are_refused_with_a_reason() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(WebhookSecret::parse("whsec_!!!").unwrap_err().contains("base64"));
        assert!(WebhookSecret::parse("whsec_AAAA").unwrap_err().contains("24 to 64"));
        let two = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(WebhookSecret::parse_list(two).unwrap().len(), 2);
        assert!(WebhookSecret::parse_list("  ").is_err());
        assert_eq!(
            format!("{:?}", WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()),
            "WebhookSecret(***)"
        );
        assert!(config(&[("SEATKEEPER_WEBHOOK_URL", "http://x")]).is_err(), "a URL without a secret");
        let secret = ("SEATKEEPER_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        for bad in ["http://exa mple.com/", "https://", "hooks.example.com/x", "ftp://hooks.example.com/"] {
            assert!(config(&[("SEATKEEPER_WEBHOOK_URL", bad), secret]).is_err(), "{bad} taken");
        }
        assert!(config(&[("SEATKEEPER_WEBHOOK_URL", "https://hooks.example.com/seatkeeper?k=1"), secret])
            .unwrap()
            .webhook
            .is_some());
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.redis_ca_file, None);
        assert_eq!(c.ledger_url, "sqlite://seatkeeper.db");
        assert_eq!(c.admin_token, None);
        assert!(!c.admin_iam);
        assert_eq!(c.defaults.lease_ttl_seconds, 90);
        assert_eq!(c.defaults.heartbeat_interval_seconds, 30);
        assert_eq!(c.sweep_interval, Duration::from_secs(900));
        assert_eq!(c.outbox_limit, DEFAULT_OUTBOX_LIMIT);
        assert_eq!(config(&[("SEATKEEPER_OUTBOX_LIMIT", "10")]).unwrap().outbox_limit, 10);
        assert!(config(&[("SEATKEEPER_OUTBOX_LIMIT", "0")]).is_err());
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

    #[test]
    fn a_ca_file_is_named_or_absent() {
        let c = config(&[("SEATKEEPER_REDIS_CA_FILE", " /etc/redis/ca.pem ")]).unwrap();
        assert_eq!(c.redis_ca_file, Some(PathBuf::from("/etc/redis/ca.pem")));
        assert_eq!(config(&[("SEATKEEPER_REDIS_CA_FILE", "")]).unwrap().redis_ca_file, None);
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        let cases = [
            ("rediss://user:s3cret@host:6380", "rediss://user:***@host:6380"),
            (
                "rediss://:tok%40en@master.example.cache.amazonaws.com:6379/0",
                "rediss://:***@master.example.cache.amazonaws.com:6379/0",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://user@host:6379", "redis://user@host:6379"),
            ("redis+unix:///tmp/redis.sock", "redis+unix:///tmp/redis.sock"),
            ("postgres://app:p@ss@db:5432/sk", "postgres://app:***@db:5432/sk"),
            ("rediss://u:a/b@host:6380", "rediss://u:***@host:6380"),
            ("rediss://a:pw@h1:7000,rediss://a:pw@h2:7001", "rediss://a:***@h1:7000,rediss://a:***@h2:7001"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
        let c = config(&[
            ("SEATKEEPER_REDIS_URL", "rediss://alice:s3cret-pw@h:6380"),
            ("SEATKEEPER_LEDGER_URL", "postgres://app:db-pw@db/sk"),
            ("SEATKEEPER_ADMIN_TOKEN", "admin-tok"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["s3cret-pw", "db-pw", "admin-tok"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("rediss://alice:***@h:6380"), "{shown}");
    }
}
