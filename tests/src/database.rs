//! Databases of their own for each test (and each benchmark scenario): a temp SQLite file, a
//! database created on a PostgreSQL or MySQL/MariaDB server, or a table on moto, DynamoDB's
//! emulator; each removed when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::{unique, Backend};

// ---- moto, DynamoDB's emulator ----

/// The endpoint of the moto server the DynamoDB tests share: `SEATKEEPER_TEST_DYNAMODB_URL`, or
/// one started for this test binary. Also gives the process the dummy credentials moto takes and
/// turns the SDK's instance-metadata lookups off (nothing may leave loopback).
fn moto_endpoint() -> String {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ] {
                if std::env::var_os(k).is_none() {
                    std::env::set_var(k, v);
                }
            }
            if let Some(url) = std::env::var("SEATKEEPER_TEST_DYNAMODB_URL").ok().filter(|u| !u.is_empty()) {
                return url.trim_end_matches('/').to_owned();
            }
            start_moto()
        })
        .clone()
}

/// moto's server run with one thread: its threaded server (`moto_server`) deep-copies a table
/// for each item of a `TransactWriteItems` while other threads write that table, and fails
/// now and then with a 500 ("dictionary changed size during iteration") under concurrent writes.
/// DynamoDB serializes conflicting writes itself; one thread gives moto the same footing.
const MOTO_SINGLE_THREADED: &str = "import sys; from werkzeug.serving import run_simple; \
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app; \
    run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)";

/// Starts moto (see `MOTO_SINGLE_THREADED`) on a free loopback port under a shell that kills it
/// when this process's end of its stdin closes (the test binary exited, however it exited) or
/// when the shell itself is signalled.
fn start_moto() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = format!("python3 -c \"$0\" {port} & pid=$!; trap 'kill $pid 2>/dev/null' EXIT INT TERM HUP; read _");
    let child = std::process::Command::new("sh")
        .args(["-c", &script, MOTO_SINGLE_THREADED])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts moto");
    // Kept for the life of the process: its stdin is the pipe that keeps moto up.
    std::mem::forget(child);
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return format!("http://127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "moto_server did not answer on 127.0.0.1:{port} within 15 s: install it with \
         `pip install 'moto[server]'` or point SEATKEEPER_TEST_DYNAMODB_URL at a running one \
         (scripts/services.sh: ensure_moto)"
    );
}

// ---- databases ----

/// A database of its own for one test.
pub struct Database {
    pub backend: Backend,
    /// The URL the test itself uses (never cut by the proxy).
    pub url: String,
    admin_url: Option<String>,
    name: String,
    dir: Option<PathBuf>,
    /// DynamoDB tests take turns on the one moto server (see `MOTO_TURNS`).
    _turn: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// moto is one Python process serving every table: a test's burst (200 creates at once) would
/// stretch the requests of another running beside it past its 1 s leases. DynamoDB tests of a
/// test binary therefore run one at a time (SQL tests run beside them as before).
static MOTO_TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl Database {
    /// A database of its own for one test: on the server named by `SEATKEEPER_TEST_POSTGRES_URL` or
    /// `SEATKEEPER_TEST_MYSQL_URL` for the SQL servers, a temp file for SQLite, a table on moto.
    pub async fn create(backend: Backend) -> Self {
        let env = match backend {
            Backend::Postgres => Some(("SEATKEEPER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")),
            Backend::MySql => Some(("SEATKEEPER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")),
            Backend::Sqlite | Backend::Dynamo => None,
        };
        let server = env.map(|(var, default)| std::env::var(var).unwrap_or_else(|_| default.to_owned()));
        Self::create_on(backend, server.as_deref())
            .await
            .unwrap_or_else(|e| panic!("{e}{}", env.map(|(var, _)| format!(" (set {var})")).unwrap_or_default()))
    }

    /// A database of its own on the SQL server at `server_url` (a URL with a path; the new
    /// database takes the path's place), a temp SQLite file, or a table on moto. `server_url` is
    /// needed for PostgreSQL and MySQL only.
    pub async fn create_on(backend: Backend, server_url: Option<&str>) -> Result<Self, String> {
        let name = unique("sk_");
        Ok(match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("sk-ledger-"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir {}: {e}", dir.display()))?;
                let url = format!("sqlite://{}", dir.join("ledger.db").display());
                Database { backend, url, admin_url: None, name, dir: Some(dir), _turn: None }
            }
            Backend::Postgres | Backend::MySql => {
                let admin_url = server_url.ok_or_else(|| format!("no {} server URL given", backend.name()))?;
                let (head, _) = admin_url.rsplit_once('/').ok_or_else(|| format!("{admin_url}: a URL with a path"))?;
                sqlx::any::install_default_drivers();
                let pool = sqlx::AnyPool::connect(admin_url)
                    .await
                    .map_err(|e| format!("cannot reach {} at {admin_url}: {e}", backend.name()))?;
                let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await;
                pool.close().await;
                created.map_err(|e| format!("CREATE DATABASE {name} on {admin_url}: {e}"))?;
                Database {
                    backend,
                    url: format!("{head}/{name}"),
                    admin_url: Some(admin_url.to_owned()),
                    name,
                    dir: None,
                    _turn: None,
                }
            }
            Backend::Dynamo => {
                let turn = MOTO_TURNS.acquire().await.expect("the semaphore is never closed");
                let endpoint = moto_endpoint();
                let url = format!("dynamodb://{name}?endpoint={endpoint}&region=us-east-1");
                Database { backend, url, admin_url: None, name, dir: None, _turn: Some(turn) }
            }
        })
    }

    /// The test's own client of its DynamoDB ledger (never cut by a proxy).
    pub async fn dynamo(&self) -> seatkeeper_core::ledger::dynamo::DynamoLedger {
        assert_eq!(self.backend, Backend::Dynamo);
        seatkeeper_core::ledger::dynamo::DynamoLedger::connect(&self.url).await.expect("DynamoDB ledger URL")
    }

    /// An SQL pool on the test's database (SQL backends only).
    pub async fn pool(&self) -> sqlx::AnyPool {
        assert_ne!(self.backend, Backend::Dynamo, "no SQL on DynamoDB: list this scenario as sql_only");
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.url).await.expect("test database pool")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.backend == Backend::Dynamo {
            let url = self.url.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(l) = seatkeeper_core::ledger::dynamo::DynamoLedger::connect(&url).await {
                        let _ = l.client().delete_table().table_name(l.table()).send().await;
                    }
                });
            })
            .join();
        }
        let Some(admin_url) = self.admin_url.clone() else { return };
        let sql = match self.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::AnyPool::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}
