//! Harness for tollgate's end-to-end tests: runs the real binaries (built by cargo in the
//! same target directory) against real PostgreSQL and Redis on 127.0.0.1, each test with
//! its own database, its own Redis key prefix and its own ports.

use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>` of the running test binary: cargo puts every workspace binary there.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins` first (the README's test command does)",
            path.display()
        );
    }
    Ok(path)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// PostgreSQL server URL for creating per-test databases (`TOLLGATE_TEST_PG`).
pub fn postgres_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Redis URL for tests (`TOLLGATE_TEST_REDIS`).
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh, empty database, dropped when the handle is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        use sqlx::Connection;
        let name = format!("tg_test_{}", uuid::Uuid::new_v4().simple());
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .context("connecting to PostgreSQL: is it running on 127.0.0.1:5432?")?;
        // `name` is generated above from a UUID, never from input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a short-lived one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// A child process that is killed when dropped; its output goes to a log file that a
/// failing test prints.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers 2xx, or fails after `timeout` naming the process whose
/// log explains why.
pub async fn wait_until_healthy(
    client: &reqwest::Client,
    url: &str,
    process: &mut Process,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if !process.is_running() {
            bail!(
                "{} exited before {url} answered:\n{}",
                process.name,
                process.logs()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer within {timeout:?}:\n{}",
                process.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports of one running stack.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub proxy: u16,
    pub proxy_admin: u16,
    pub control_plane: u16,
    pub control_plane_metrics: u16,
    pub upstream: u16,
}

impl Ports {
    pub fn fresh() -> Self {
        Self {
            proxy: free_port(),
            proxy_admin: free_port(),
            control_plane: free_port(),
            control_plane_metrics: free_port(),
            upstream: free_port(),
        }
    }
}

/// Writes a configuration file for one isolated stack: its own ports, database and
/// Redis key prefix. `extra` is appended (TOML) for test-specific sections.
pub fn write_config(
    dir: &Path,
    ports: &Ports,
    database_url: &str,
    key_prefix: &str,
) -> anyhow::Result<PathBuf> {
    let plans = workspace_root().join("config/plans.toml");
    let text = format!(
        r#"plans_file = "{plans}"

[identity]
issuer = "tollgate-test"
audience = "ticket-api"
hs256_secret = "test-only-hs256-secret-0123456789abcdef"
leeway_seconds = 0

[redis]
url = "{redis}"
key_prefix = "{key_prefix}"

[internal]
service_token = "test-service-token"

[proxy]
listen = "127.0.0.1:{proxy}"
metrics_listen = "127.0.0.1:{proxy_admin}"
upstream = "127.0.0.1:{upstream}"
threads = 1
drain_seconds = 5

[control_plane]
listen = "127.0.0.1:{cp}"
metrics_listen = "127.0.0.1:{cp_metrics}"
database_url = "{database_url}"
database_max_connections = 5

[log]
level = "info"
format = "json"
"#,
        plans = plans.display(),
        redis = redis_url(),
        proxy = ports.proxy,
        proxy_admin = ports.proxy_admin,
        upstream = ports.upstream,
        cp = ports.control_plane,
        cp_metrics = ports.control_plane_metrics,
    );
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A per-test scratch directory under the system temp dir.
pub fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tollgate-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The whole system on fresh ports: ticket API stand-in, control plane, proxy.
pub struct Stack {
    pub ports: Ports,
    pub config: PathBuf,
    pub dir: PathBuf,
    pub key_prefix: String,
    pub upstream: Process,
    pub control_plane: Process,
    pub proxy: Process,
    pub database: TestDatabase,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        let ports = Ports::fresh();
        let dir = scratch_dir()?;
        let database = TestDatabase::create().await?;
        let key_prefix = format!("tg:test:{}:", uuid::Uuid::new_v4().simple());
        let config = write_config(&dir, &ports, &database.url, &key_prefix)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;

        let mut upstream = Process::spawn(
            "ticket-api-standin",
            Command::new(binary("ticket-api-standin")?)
                .args(["--listen", &format!("127.0.0.1:{}", ports.upstream)]),
            &dir,
        )?;
        let mut control_plane = Process::spawn(
            "tollgate-control-plane",
            Command::new(binary("tollgate-control-plane")?)
                .arg("--config")
                .arg(&config),
            &dir,
        )?;
        let mut proxy = Process::spawn(
            "tollgate-proxy",
            Command::new(binary("tollgate-proxy")?)
                .arg("--config")
                .arg(&config),
            &dir,
        )?;
        let wait = Duration::from_secs(30);
        wait_until_healthy(
            &http,
            &format!("http://127.0.0.1:{}/health", ports.upstream),
            &mut upstream,
            wait,
        )
        .await?;
        wait_until_healthy(
            &http,
            &format!("http://127.0.0.1:{}/health/ready", ports.control_plane),
            &mut control_plane,
            wait,
        )
        .await?;
        wait_until_healthy(
            &http,
            &format!("http://127.0.0.1:{}/health/ready", ports.proxy_admin),
            &mut proxy,
            wait,
        )
        .await?;
        Ok(Self {
            ports,
            config,
            dir,
            key_prefix,
            upstream,
            control_plane,
            proxy,
            database,
            http,
        })
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.proxy)
    }

    pub fn control_plane_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.control_plane)
    }

    /// A bearer token for `customer`, from the control plane's `token` subcommand (the
    /// same way the demo gets one).
    pub fn token(&self, customer: &str) -> anyhow::Result<String> {
        let out = Command::new(binary("tollgate-control-plane")?)
            .arg("--config")
            .arg(&self.config)
            .args(["token", "--customer", customer])
            .current_dir(workspace_root())
            .output()?;
        if !out.status.success() {
            bail!("token failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}
