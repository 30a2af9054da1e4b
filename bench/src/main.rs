//! `seatkeeper-bench`: the benchmarks of issue 4, each against a baseline measured beside it in the
//! same run. Prints a table and, last, one JSON line. Targets are reported as pass or MISS and never
//! fail the run; only an error (a store unreachable, an operation that failed) makes it exit non-zero.
//!
//! It starts its own `redis-server` on a free loopback port and its own databases, and stops and
//! drops all of them before it exits (also on Ctrl-C). See docs/BENCHMARKS.md.

mod children;
mod infra;
mod load;
mod raw;
mod report;
mod scen_admission;
mod scen_cycle;
mod scen_function;
mod scen_heartbeat;
mod scen_http;
mod scen_sweep;
mod timed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::infra::{progress, DbUrls, RedisServer};
use crate::report::Row;

#[derive(Parser)]
#[command(
    name = "seatkeeper-bench",
    version,
    about = "seatkeeper benchmarks against side-by-side baselines (docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Internal {
    #[command(hide = true, name = "internal-runner")]
    Runner {
        #[arg(long)]
        listen: SocketAddr,
    },
    #[command(hide = true, name = "internal-static")]
    Static {
        #[arg(long)]
        listen: SocketAddr,
    },
    #[command(hide = true, name = "internal-function")]
    Function,
}

pub const SCENARIOS: [&str; 6] = ["heartbeat", "cycle", "admission", "sweep", "http", "function"];

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Small sizes and 1 s windows, for CI: finishes in well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (heartbeat, cycle, admission, sweep, http, function).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Length of each measured window in seconds (default 5, quick 1); HTTP runs twice as long.
    #[arg(long)]
    pub duration_secs: Option<f64>,

    /// Item 1: concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,50,1000")]
    pub hb_clients: Vec<usize>,
    #[arg(long, default_value = "postgres")]
    pub hb_ledger: String,

    /// Item 2: ledgers to cycle sessions on.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub cycle_ledgers: Vec<String>,
    /// Item 2: license counts.
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    pub cycle_licenses: Vec<usize>,
    /// Item 2: concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub cycle_clients: usize,

    /// Item 3: clients fighting for the seats.
    #[arg(long, default_value_t = 1000)]
    pub admission_clients: usize,
    #[arg(long, default_value_t = 100)]
    pub admission_seats: usize,
    #[arg(long, default_value = "postgres")]
    pub admission_ledger: String,

    /// Item 4: live sessions at full size (default 1,000,000; quick 5,000).
    #[arg(long)]
    pub sweep_live: Option<usize>,
    /// Item 4: licenses the sessions are spread over (default 1,000; quick 50).
    #[arg(long)]
    pub sweep_licenses: Option<usize>,
    #[arg(long, default_value = "postgres")]
    pub sweep_ledger: String,

    /// Item 5: concurrent HTTP connections.
    #[arg(long, default_value_t = 1000)]
    pub http_connections: usize,
    /// Item 5: wrk threads (1: the load tool takes at most one of the two cores).
    #[arg(long, default_value_t = 1)]
    pub http_threads: usize,
    /// Item 5: load tool: auto (wrk if installed), wrk or builtin.
    #[arg(long, default_value = "auto")]
    pub http_tool: String,
    /// Items 5 and 6: the ledger behind the runner and the function.
    #[arg(long, default_value = "postgres")]
    pub http_ledger: String,

    /// Item 6: back-to-back invocations of the function (default 20,000; quick 1,000).
    #[arg(long)]
    pub function_invocations: Option<usize>,
    /// Item 6: the heartbeat function binary (default: `heartbeat` beside this binary, else this binary).
    #[arg(long)]
    pub function_bin: Option<PathBuf>,

    /// The service's ledger pool size (default: the service's default, SEATKEEPER_LEDGER_POOL_SIZE's).
    #[arg(long)]
    pub ledger_pool_size: Option<u32>,

    /// Where throwaway PostgreSQL databases are created (else SEATKEEPER_TEST_POSTGRES_URL, else
    /// postgres://postgres:postgres@127.0.0.1:5432/postgres).
    #[arg(long, env = "SEATKEEPER_BENCH_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Where throwaway MariaDB/MySQL databases are created (else SEATKEEPER_TEST_MYSQL_URL, else
    /// mysql://seatkeeper:seatkeeper@127.0.0.1:3306/test).
    #[arg(long, env = "SEATKEEPER_BENCH_MYSQL_URL")]
    pub mysql_url: Option<String>,
}

impl Args {
    pub fn urls(&self) -> DbUrls {
        DbUrls {
            postgres: self.postgres_url.clone().unwrap_or_default(),
            mysql: self.mysql_url.clone().unwrap_or_default(),
        }
    }
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs.unwrap_or(if self.quick { 1.0 } else { 5.0 }))
    }
    pub fn function_invocations(&self) -> usize {
        self.function_invocations.unwrap_or(if self.quick { 1_000 } else { 20_000 })
    }
    fn resolve(mut self) -> Self {
        self.sweep_live.get_or_insert(if self.quick { 5_000 } else { 1_000_000 });
        self.sweep_licenses.get_or_insert(if self.quick { 50 } else { 1_000 });
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if self.postgres_url.is_none() {
            self.postgres_url = Some(
                env("SEATKEEPER_TEST_POSTGRES_URL")
                    .unwrap_or_else(|| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into()),
            );
        }
        if self.mysql_url.is_none() {
            self.mysql_url = Some(
                env("SEATKEEPER_TEST_MYSQL_URL")
                    .unwrap_or_else(|| "mysql://seatkeeper:seatkeeper@127.0.0.1:3306/test".into()),
            );
        }
        if let Some(n) = self.ledger_pool_size {
            infra::set_ledger_pool_size(n.max(1));
        }
        self
    }
    fn wants(&self, s: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == s)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::Runner { listen }) => return children::runner(listen),
        Some(Internal::Static { listen }) => return children::static_server(listen),
        Some(Internal::Function) => return children::function(),
        None => {}
    }
    let args = cli.args.resolve();
    if let Some(bad) = args.only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        eprintln!("seatkeeper-bench: unknown scenario {bad:?}; known: {}", SCENARIOS.join(", "));
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        tokio::select! {
            code = bench(args) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("seatkeeper-bench: interrupted; stopping the processes and dropping the databases it started");
                ExitCode::from(130)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    code
}

async fn bench(a: Args) -> ExitCode {
    infra::start_clock();
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    if profile == "debug" {
        progress("WARNING: a debug build; figures are meaningless (cargo build --release -p seatkeeper-bench)");
    }
    progress(format!(
        "seatkeeper-bench: {} mode, {cores} cores, {profile} build",
        if a.quick { "quick" } else { "full" }
    ));
    let redis = match RedisServer::start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("seatkeeper-bench: {e:#}");
            return ExitCode::from(1);
        }
    };
    progress(format!("private redis-server on 127.0.0.1:{}", redis.port));
    let mut rows: Vec<Row> = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for s in SCENARIOS {
        if !a.wants(s) {
            continue;
        }
        let t = Instant::now();
        progress(format!("== {s}"));
        let r = match s {
            "heartbeat" => scen_heartbeat::run(&a, &redis, &mut rows).await,
            "cycle" => scen_cycle::run(&a, &redis, &mut rows).await,
            "admission" => scen_admission::run(&a, &redis, &mut rows).await,
            "sweep" => scen_sweep::run(&a, &redis, &mut rows).await,
            "http" => scen_http::run(&a, &redis, &mut rows).await,
            "function" => scen_function::run(&a, &redis, &mut rows).await,
            _ => unreachable!(),
        };
        match r {
            Ok(()) => progress(format!("== {s} done in {:.1}s", t.elapsed().as_secs_f64())),
            Err(e) => {
                progress(format!("== {s} FAILED: {e:#}"));
                errors.push((s.to_owned(), format!("{e:#}")));
            }
        }
    }
    redis.stop().await;
    rows.sort_by_key(|r| r.item);
    let total = started.elapsed().as_secs_f64();
    println!(
        "seatkeeper-bench ({} mode, {cores} cores, {profile} build, {total:.0} s)",
        if a.quick { "quick" } else { "full" }
    );
    print!("{}", report::table(&rows, &errors));
    let misses = rows.iter().filter(|r| r.target.as_ref().is_some_and(|t| !t.pass)).count();
    let json = serde_json::json!({
        "bench": "seatkeeper",
        "mode": if a.quick { "quick" } else { "full" },
        "cores": cores,
        "profile": profile,
        "seconds": (total * 10.0).round() / 10.0,
        "misses": misses,
        "errors": errors.iter().map(|(s, e)| serde_json::json!({"scenario": s, "error": e})).collect::<Vec<_>>(),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    println!("{json}");
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
