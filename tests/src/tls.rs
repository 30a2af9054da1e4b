//! Redis over TLS with credentials, for the `rediss://` tests: certificates made for the test by
//! the `openssl` CLI (a private CA and a server certificate for 127.0.0.1 and localhost), a
//! `redis-server` that listens on TLS only (`--port 0 --tls-port`) and requires a password and
//! knows an ACL user, or three such masters joined into a Redis Cluster whose bus is TLS too
//! (`--tls-cluster yes`), and `seatkeeper serve` on them with everything it writes kept, so that a
//! test can look for a secret in it.
//!
//! Ports come from `RedisServer::cluster_ports` (random loopback ports below the ephemeral range,
//! held while chosen): never 6379, 5432, 3306 or 5055, the ones `scripts/services.sh` starts its
//! servers on. A port taken between its choice and the server's start fails that server, which the
//! pid check sees; the start is tried again on other ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{seatkeeper_bin, unique, RedisServer, ADMIN_TOKEN};

/// The password of the `default` user (`--requirepass`, and `--masterauth` in a cluster).
pub const DEFAULT_PASSWORD: &str = "dflt-Pw-7f3a9c1e";
/// The ACL user and its password.
pub const ACL_USER: &str = "seatkeeper";
pub const ACL_PASSWORD: &str = "acl-Pw-51d2b8e0";

/// Whether this `redis-server` was built with TLS. One without answers "Bad directive" to
/// `tls-port`; one with it refuses to start listening nowhere (`--port 0 --tls-port 0`).
pub async fn redis_has_tls() -> Result<(), String> {
    let out = tokio::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .map_err(|_| "redis-server did not answer the TLS probe".to_owned())?
        .map_err(|e| format!("redis-server cannot run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("Bad directive") {
        return Err(format!("redis-server is built without TLS (it refuses tls-port): {}", text.trim()));
    }
    Ok(())
}

/// A private CA, and a certificate it signed for 127.0.0.1 and localhost (server and client use:
/// a cluster's nodes present it to each other on the bus).
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI must be installed (it makes the test's certificates)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(unique("sk-tls-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=seatkeeper test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Certs { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key"), dir }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One TLS `redis-server`, or a three-master TLS cluster, with a password and an ACL user; killed
/// on drop.
pub struct TlsRedis {
    children: Vec<tokio::process::Child>,
    dir: PathBuf,
    pub ports: Vec<u16>,
    pub certs: Arc<Certs>,
}

const MASTERS: usize = 3;

impl TlsRedis {
    /// One server on a TLS port.
    pub async fn single() -> Self {
        Self::start(1).await
    }

    /// Three masters joined into a cluster, bus on TLS.
    pub async fn cluster() -> Self {
        Self::start(MASTERS).await
    }

    pub fn is_cluster(&self) -> bool {
        self.ports.len() > 1
    }

    /// `SEATKEEPER_REDIS_URL` with these credentials (`user` `None`: the default user): one URL,
    /// or every master's joined by commas.
    pub fn url(&self, user: Option<&str>, password: &str) -> String {
        self.ports
            .iter()
            .map(|p| format!("rediss://{}:{password}@127.0.0.1:{p}", user.unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn start(n: usize) -> Self {
        let certs = Arc::new(Certs::generate());
        for _ in 0..4 {
            let ports = RedisServer::cluster_ports().await;
            if let Some(server) = Self::try_at(n, &ports, certs.clone()).await {
                return server;
            }
        }
        panic!("no TLS Redis ({n} node(s)) came up on free loopback ports after 4 attempts");
    }

    /// `redis-cli` over TLS to one node, as the default user.
    fn cli(&self, port: u16) -> tokio::process::Command {
        cli(&self.certs, port)
    }

    async fn try_at(n: usize, ports: &[u16], certs: Arc<Certs>) -> Option<Self> {
        let dir = std::env::temp_dir().join(unique("sk-tls-redis-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut children = Vec::new();
        for i in 0..n {
            let (port, bus) = (ports[i].to_string(), ports[MASTERS + i].to_string());
            let mut cmd = tokio::process::Command::new("redis-server");
            cmd.args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca)
                .args(["--tls-auth-clients", "no", "--requirepass", DEFAULT_PASSWORD])
                .args(["--user", ACL_USER, "on", &format!(">{ACL_PASSWORD}"), "~*", "&*", "+@all"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir);
            if n > 1 {
                cmd.args(["--cluster-enabled", "yes", "--tls-cluster", "yes", "--cluster-port", &bus])
                    .args(["--cluster-config-file", &format!("nodes-{i}.conf"), "--cluster-node-timeout", "5000"])
                    .args(["--masterauth", DEFAULT_PASSWORD]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server must be installed (see README: the test command installs it)");
            children.push(child);
        }
        let mut server = TlsRedis { children, dir, ports: ports[..n].to_vec(), certs };
        for i in 0..n {
            if !server.wait_for_own_server(i).await {
                return None; // dropped: the children are killed, the directory removed
            }
        }
        if n > 1 {
            let mut create = server.cli(server.ports[0]);
            create
                .arg("--cluster")
                .arg("create")
                .args(server.ports.iter().map(|p| format!("127.0.0.1:{p}")))
                .arg("--cluster-yes");
            let out = create.output().await.expect("redis-cli must be installed with redis-server");
            assert!(out.status.success(), "redis-cli --tls --cluster create: {out:?}");
            server.wait_cluster_ok().await;
        }
        Some(server)
    }

    /// Waits (bounded) until node `i` answers over TLS as its own child process (a port can be
    /// taken by another server between its choice and this one's start; this one then exits).
    async fn wait_for_own_server(&mut self, i: usize) -> bool {
        let Some(pid) = self.children[i].id() else { return false };
        for _ in 0..200 {
            if !matches!(self.children[i].try_wait(), Ok(None)) {
                return false;
            }
            let out = self.cli(self.ports[i]).args(["INFO", "server"]).output().await;
            if let Ok(out) = out {
                let info = String::from_utf8_lossy(&out.stdout);
                if let Some(answered) =
                    info.lines().find_map(|l| l.trim().strip_prefix("process_id:")?.parse::<u32>().ok())
                {
                    return answered == pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn wait_cluster_ok(&self) {
        let want_nodes = format!("cluster_known_nodes:{}", self.ports.len());
        for _ in 0..400 {
            let mut ok = true;
            for p in &self.ports {
                let out = self.cli(*p).args(["CLUSTER", "INFO"]).output().await.expect("redis-cli");
                let info = String::from_utf8_lossy(&out.stdout);
                ok &= info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == want_nodes);
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the TLS cluster on {:?} did not reach cluster_state:ok", self.ports);
    }

    /// Keys stored on all the nodes (to see that the runner's writes reached them).
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for p in &self.ports {
            let out = self.cli(*p).args(["--raw", "KEYS", "sk:*"]).output().await.expect("redis-cli");
            keys.extend(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
        keys
    }
}

fn cli(certs: &Certs, port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"])
        .arg(&certs.ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--user", "default", "--pass", DEFAULT_PASSWORD])
        .arg("--no-auth-warning")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `seatkeeper serve` on a TLS Redis, everything it writes on stdout and stderr kept; killed on
/// drop.
pub struct TlsRunner {
    pub child: tokio::process::Child,
    pub base: String,
    stdout: Arc<Mutex<String>>,
    stderr_log: PathBuf,
    pub http: reqwest::Client,
}

impl TlsRunner {
    /// Starts it with this Redis URL and CA file (`None`: none set, the system's roots), a debug
    /// log, and waits until it answers HTTP.
    pub async fn start(redis_url: &str, ca_file: Option<&Path>, ledger_url: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let stderr_log = std::env::temp_dir().join(unique("sk-tls-runner-"));
        let mut command = tokio::process::Command::new(seatkeeper_bin());
        command
            .env("SEATKEEPER_REDIS_URL", redis_url)
            .env("SEATKEEPER_LEDGER_URL", ledger_url)
            .env("SEATKEEPER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SEATKEEPER_SWEEP_INTERVAL_SECONDS", "3600")
            // Every level, the Redis crate's own log included: a secret must not appear in any.
            .env("RUST_LOG", "debug")
            .env_remove("SEATKEEPER_REDIS_CA_FILE");
        if let Some(ca) = ca_file {
            command.env("SEATKEEPER_REDIS_CA_FILE", ca);
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("runner log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn seatkeeper serve");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        let log = || std::fs::read_to_string(&stderr_log).unwrap_or_default();
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => panic!("seatkeeper serve did not start serving ({other:?}): {}", log()),
        };
        let base = line
            .strip_prefix("seatkeeper serving on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let stdout = Arc::new(Mutex::new(format!("{line}\n")));
        let kept = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                kept.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
        for _ in 0..200 {
            if http.get(format!("{base}/health")).send().await.is_ok() {
                return TlsRunner { child, base, stdout, stderr_log, http };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("seatkeeper serve did not come up on {base}: {}", log());
    }

    /// What it wrote: stdout, then stderr.
    pub fn output(&self) -> String {
        let out = self.stdout.lock().unwrap().clone();
        out + &std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for TlsRunner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}
