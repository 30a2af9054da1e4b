//! `seatkeeper`: the local runner (`serve`), a one-off sweep (`sweep`) and the admin command line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use reqwest::Method;
use seatkeeper_core::domain::Ident;
use seatkeeper_core::ops::sweep::SweepScope;
use seatkeeper_core::{Config, Service};
use seatkeeper_local::admin::{enc, exit, render, CallError, Client};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(name = "seatkeeper", version, about = "Concurrent-session (seat) limits as leases")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every route over HTTP through the Lambda handlers, and sweep on SEATKEEPER_SWEEP_INTERVAL_SECONDS.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8004")]
        listen: SocketAddr,
    },
    /// Run the sweep once against the configured stores and print its report as JSON.
    Sweep {
        /// Compare every slot member by member, not only where counts differ.
        #[arg(long)]
        full: bool,
        /// Only this license.
        #[arg(long)]
        license: Option<String>,
    },
    /// Apply the ledger's schema migrations (needs DDL rights) and exit.
    Migrate,
    /// Administer a deployment through its API (token from SEATKEEPER_ADMIN_TOKEN).
    Admin(AdminArgs),
    /// Print a shell completion script, e.g. `seatkeeper completions bash > /etc/bash_completion.d/seatkeeper`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Args)]
struct AdminArgs {
    /// The deployment's base URL.
    #[arg(long, env = "SEATKEEPER_API_URL", default_value = "http://127.0.0.1:8004", global = true)]
    api_url: String,
    /// The admin token: the service-wide one, or a license-scoped one for its own license.
    #[arg(long, env = "SEATKEEPER_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: AdminVerb,
}

#[derive(Subcommand)]
enum AdminVerb {
    /// Every license, with each feature's limit and live sessions (a page at a time).
    Licenses {
        /// Licenses per page, 1 to 500.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where to start: the `next cursor` the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Who holds a license's seats: its live sessions (user, device, since, last heartbeat).
    Sessions {
        /// The license (its id).
        license: String,
        /// Only this feature.
        #[arg(long)]
        feature: Option<String>,
    },
    /// End one session of a license (its holder hears 410 force_ended).
    EndSession {
        /// The license (its id).
        license: String,
        /// The session's id, as `sessions` prints it.
        session_id: String,
    },
    /// Give a license a new key, printed once; the old key stops taking seats at once.
    RotateKey {
        /// The license (its id).
        license: String,
    },
    /// End every live session of a user for a feature.
    ForceCleanup {
        /// The user (its id).
        user: String,
        /// The feature.
        feature: String,
        /// Only this license's sessions.
        #[arg(long)]
        license: Option<String>,
    },
    /// Show a user's sessions in the seat store and the ledger side by side.
    Debug {
        /// The user (its id).
        user: String,
        /// The feature.
        feature: String,
    },
    /// Sweep and reconcile one license now.
    CleanupSessions {
        license: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        feature: Option<String>,
    },
    /// Session counters of a license.
    Stats {
        license: String,
        /// Window in seconds.
        #[arg(long, default_value_t = 86_400)]
        window: u64,
    },
    /// Create, update or show a license.
    License {
        #[command(subcommand)]
        verb: LicenseVerb,
    },
    /// Make or revoke a license-scoped admin token (needs the service admin token).
    Token {
        #[command(subcommand)]
        verb: TokenVerb,
    },
    /// A feature's use over time: per step, peak live sessions, sessions started, creates refused.
    Usage {
        /// The license (its id).
        license: String,
        /// The feature (required).
        #[arg(long)]
        feature: String,
        /// Start of the window, an RFC 3339 time such as 2026-01-31T00:00:00Z (default: 24 hours before --to).
        #[arg(long)]
        from: Option<String>,
        /// End of the window, an RFC 3339 time (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Length of one step, in seconds: 60 or more, at most 10,000 steps (default: 3600).
        #[arg(long)]
        step_seconds: Option<u64>,
    },
}

#[derive(Subcommand)]
enum TokenVerb {
    /// Make a token that may act on this license only (read it, its sessions, stats and usage,
    /// end its sessions, debug and sweep it); printed once, never shown again.
    Create {
        /// The license the token is scoped to (its id).
        license: String,
    },
    /// Revoke a token: it stops working at once, on every instance.
    Revoke {
        /// The license the token is scoped to (its id).
        license: String,
        /// The token's id, as `token create` printed it (16 hex digits).
        token_id: String,
    },
}

#[derive(Subcommand)]
enum LicenseVerb {
    /// Create or replace a license: `--feature NAME=MAX_SESSIONS` for each feature.
    Put {
        license: String,
        #[arg(long = "feature", value_name = "NAME=MAX", required_unless_present = "body")]
        features: Vec<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        per_user: Option<u32>,
        #[arg(long, value_parser = ["reject", "evict_idle"])]
        on_limit: Option<String>,
        #[arg(long)]
        lease_ttl: Option<u32>,
        #[arg(long)]
        heartbeat: Option<u32>,
        #[arg(long)]
        resurrect_window: Option<u32>,
        /// The whole request body as JSON, instead of the flags.
        #[arg(long, conflicts_with = "features")]
        body: Option<String>,
    },
    Get {
        license: String,
    },
    /// Remove a license: its key stops working and its sessions end (reason revoked).
    Delete {
        license: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        // Into a buffer first: a closed pipe (`| head`) must not panic inside the generator.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "seatkeeper", &mut script);
        let _ = std::io::stdout().write_all(&script);
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        match cli.command {
            Command::Serve { listen } => serve(listen).await,
            Command::Sweep { full, license } => sweep(full, license).await,
            Command::Migrate => migrate().await,
            Command::Admin(args) => admin(args).await,
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}

async fn service() -> Result<Service, ExitCode> {
    let config = Config::from_env().map_err(|e| {
        eprintln!("seatkeeper: {e}");
        ExitCode::from(exit::USAGE)
    })?;
    Service::connect(config).await.map_err(|e| {
        eprintln!("seatkeeper: {e}: {}", store_detail(&e));
        ExitCode::from(exit::UNAVAILABLE)
    })
}

async fn serve(listen: SocketAddr) -> ExitCode {
    seatkeeper_core::telemetry::init();
    let svc = match service().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("seatkeeper: cannot listen on {listen}: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let limits = match seatkeeper_local::Limits::from_env(svc.config().ledger_pool_size) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("seatkeeper: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    // Requests wait (in the listen backlog) for the first migration attempt, so that none meets a
    // schema half applied; a ledger that is down or slow holds the start back 5 s at most.
    let (first_attempt, attempted) = tokio::sync::oneshot::channel();
    tokio::spawn(migrate_until_done(svc.clone(), first_attempt));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), attempted).await;
    // The address as bound: with port 0 the system picks a free one, and this line is how a
    // supervisor (or a test) learns it. The only line the runner writes on stdout; logs go to stderr.
    let bound = listener.local_addr().unwrap_or(listen);
    // A closed stdout (a supervisor that reads nothing) must not stop the runner: no println!.
    let _ = writeln!(std::io::stdout(), "seatkeeper serving on http://{bound}");
    tracing::info!(
        listen = %bound,
        max_connections = limits.max_connections,
        seat_store = %seatkeeper_core::config::redact_url(&svc.config().redis_url),
        ledger = %seatkeeper_core::config::redact_url(&svc.config().ledger_url),
        // The receiver's origin only: its path or query may hold a token.
        webhooks = %svc.config().webhook.as_ref().map_or("off".to_owned(), |w| {
            seatkeeper_core::config::redact_url(&w.url.split('/').take(3).collect::<Vec<_>>().join("/"))
        }),
        "seatkeeper serving"
    );
    tokio::spawn(seatkeeper_local::sweep_every(svc.clone(), svc.config().sweep_interval));
    tokio::spawn(seatkeeper_local::drain_history_every(svc.clone(), std::time::Duration::from_secs(30)));
    // A Redis that evicts keys can end live sessions: say so at the start (and /health says so).
    let seats = svc.seats().clone();
    tokio::spawn(async move {
        match seats.problems().await {
            Ok(problems) => problems.iter().for_each(|p| tracing::error!(problem = %p, "the seat store is not safe")),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the seat store's memory settings yet; /health reports them")
            }
        }
    });
    // Ctrl-C or SIGTERM (a process manager) stop the runner.
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    match seatkeeper_local::serve_with(svc, listener, limits, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seatkeeper: {e}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

/// The runner migrates at its start. A ledger that is down then does not stop it: it serves
/// (heartbeats need no SQL; what needs the ledger answers 503) and tries again, backing off to
/// every 30 s, until the migrations are applied. `first_attempt` is told when the first try ends.
async fn migrate_until_done(svc: Service, first_attempt: tokio::sync::oneshot::Sender<()>) {
    let mut wait = std::time::Duration::from_secs(1);
    let mut first_attempt = Some(first_attempt);
    loop {
        let migrated = svc.migrate().await;
        if let Some(tx) = first_attempt.take() {
            let _ = tx.send(());
        }
        match migrated {
            Ok(()) => {
                tracing::info!("ledger migrations applied");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, detail = %store_detail(&e), retry_in_s = wait.as_secs(), "ledger migrations could not run");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

async fn migrate() -> ExitCode {
    seatkeeper_core::telemetry::init();
    let svc = match service().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match svc.migrate().await {
        Ok(()) => {
            println!("ledger migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seatkeeper: {e}: {}", store_detail(&e));
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

/// What went wrong inside a store (logged and printed; never sent to a client).
fn store_detail(e: &seatkeeper_core::Error) -> String {
    match e {
        seatkeeper_core::Error::StoreUnavailable { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

async fn sweep(full: bool, license: Option<String>) -> ExitCode {
    seatkeeper_core::telemetry::init();
    let license = match license.map(|l| Ident::parse("--license", &l)).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("seatkeeper: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let svc = match service().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let scope = SweepScope { license, full, ..Default::default() };
    eprintln!(
        "seatkeeper: sweeping the ledger {} against the seat store {}",
        seatkeeper_core::config::redact_url(&svc.config().ledger_url),
        seatkeeper_core::config::redact_url(&svc.config().redis_url)
    );
    match seatkeeper_local::run_sweep(&svc, &scope).await {
        Some(report) => {
            println!("{}", serde_json::to_string(&report).expect("report"));
            if report.failed_slots > 0 {
                ExitCode::from(exit::UNAVAILABLE)
            } else {
                ExitCode::SUCCESS
            }
        }
        None => ExitCode::from(exit::UNAVAILABLE),
    }
}

fn license_body(
    features: &[String],
    key: Option<String>,
    policy: &[(&str, Option<Value>)],
) -> Result<Value, CallError> {
    let mut map = Map::new();
    for f in features {
        let (name, max) = f.split_once('=').ok_or_else(|| CallError {
            code: exit::USAGE,
            message: format!("--feature takes NAME=MAX_SESSIONS, not {f:?}"),
        })?;
        let max: u32 = max.parse().map_err(|_| CallError {
            code: exit::USAGE,
            message: format!("--feature {name}: {max:?} is not a whole number"),
        })?;
        let mut p = Map::new();
        p.insert("maxSessions".into(), max.into());
        for (k, v) in policy {
            if let Some(v) = v {
                p.insert((*k).into(), v.clone());
            }
        }
        map.insert(name.to_owned(), Value::Object(p));
    }
    let mut body = json!({ "features": map });
    if let Some(k) = key {
        body["key"] = k.into();
    }
    Ok(body)
}

async fn admin(args: AdminArgs) -> ExitCode {
    if args.admin_token.as_deref().is_none_or(str::is_empty) {
        eprintln!("seatkeeper: no admin token: set SEATKEEPER_ADMIN_TOKEN or pass --admin-token");
        return ExitCode::from(exit::USAGE);
    }
    let client = Client::new(&args.api_url, args.admin_token.clone());
    let (kind, result) = match args.verb {
        AdminVerb::Licenses { limit, cursor } => {
            let q = cursor.map(|c| format!("&cursor={}", enc(&c))).unwrap_or_default();
            ("licenses", client.call(Method::GET, &format!("/api/licenses?limit={limit}{q}"), None).await)
        }
        AdminVerb::Sessions { license, feature } => {
            let q = feature.map(|f| format!("?feature={}", enc(&f))).unwrap_or_default();
            ("sessions", client.call(Method::GET, &format!("/api/licenses/{}/sessions{q}", enc(&license)), None).await)
        }
        AdminVerb::EndSession { license, session_id } => {
            let path = format!("/api/licenses/{}/sessions/{}", enc(&license), enc(&session_id));
            let result = client.call(Method::DELETE, &path, None).await;
            (
                "session-ended",
                result.map(|mut v| {
                    v["sessionId"] = session_id.into();
                    v
                }),
            )
        }
        AdminVerb::RotateKey { license } => {
            ("key-rotated", client.call(Method::POST, &format!("/api/licenses/{}/key", enc(&license)), None).await)
        }
        AdminVerb::ForceCleanup { user, feature, license } => {
            let q = license.map(|l| format!("?licenseId={}", enc(&l))).unwrap_or_default();
            let path = format!("/api/licenses/sessions/force-cleanup/{}/{}{q}", enc(&user), enc(&feature));
            ("force-cleanup", client.call(Method::DELETE, &path, None).await)
        }
        AdminVerb::Debug { user, feature } => {
            let path = format!("/api/licenses/sessions/debug?userId={}&feature={}", enc(&user), enc(&feature));
            ("debug", client.call(Method::GET, &path, None).await)
        }
        AdminVerb::CleanupSessions { license, user, feature } => {
            let body = json!({"licenseId": license, "userId": user, "feature": feature});
            ("cleanup", client.call(Method::POST, "/api/licenses/cleanup-sessions", Some(body)).await)
        }
        AdminVerb::Stats { license, window } => {
            let path = format!("/api/licenses/{}/session-stats?windowSeconds={window}", enc(&license));
            ("stats", client.call(Method::GET, &path, None).await)
        }
        AdminVerb::Token { verb: TokenVerb::Create { license } } => {
            let path = format!("/api/licenses/{}/admin-tokens", enc(&license));
            ("admin-token", client.call(Method::POST, &path, None).await)
        }
        AdminVerb::Token { verb: TokenVerb::Revoke { license, token_id } } => {
            let path = format!("/api/licenses/{}/admin-tokens/{}", enc(&license), enc(&token_id));
            let result = client.call(Method::DELETE, &path, None).await;
            (
                "admin-token-revoked",
                result.map(|mut v| {
                    v["tokenId"] = token_id.into();
                    v
                }),
            )
        }
        AdminVerb::Usage { license, feature, from, to, step_seconds } => {
            let mut q = format!("feature={}", enc(&feature));
            for (name, value) in [("from", from), ("to", to), ("stepSeconds", step_seconds.map(|s| s.to_string()))] {
                if let Some(v) = value {
                    q.push_str(&format!("&{name}={}", enc(&v)));
                }
            }
            ("usage", client.call(Method::GET, &format!("/api/licenses/{}/usage?{q}", enc(&license)), None).await)
        }
        AdminVerb::License { verb: LicenseVerb::Get { license } } => {
            ("license", client.call(Method::GET, &format!("/api/licenses/{}", enc(&license)), None).await)
        }
        AdminVerb::License { verb: LicenseVerb::Delete { license } } => {
            ("license-deleted", client.call(Method::DELETE, &format!("/api/licenses/{}", enc(&license)), None).await)
        }
        AdminVerb::License {
            verb:
                LicenseVerb::Put {
                    license,
                    features,
                    key,
                    per_user,
                    on_limit,
                    lease_ttl,
                    heartbeat,
                    resurrect_window,
                    body,
                },
        } => {
            let body = match body {
                Some(raw) => serde_json::from_str::<Value>(&raw)
                    .map_err(|e| CallError { code: exit::USAGE, message: format!("--body is not JSON: {e}") }),
                None => license_body(
                    &features,
                    key,
                    &[
                        ("maxSessionsPerUser", per_user.map(Value::from)),
                        ("onLimit", on_limit.map(Value::from)),
                        ("leaseTtlSeconds", lease_ttl.map(Value::from)),
                        ("heartbeatIntervalSeconds", heartbeat.map(Value::from)),
                        ("resurrectWindowSeconds", resurrect_window.map(Value::from)),
                    ],
                ),
            };
            let result = match body {
                Ok(b) => client.call(Method::PUT, &format!("/api/licenses/{}", enc(&license)), Some(b)).await,
                Err(e) => Err(e),
            };
            ("license", result)
        }
    };
    match result {
        Ok(v) => {
            if args.json {
                println!("{v}");
            } else {
                println!("{}", render(kind, &v));
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("seatkeeper: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
