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

/// Where the workspace binaries are: `TOLLGATE_BIN_DIR`, else `target/<profile>` of the
/// running binary (a test binary lives in `target/<profile>/deps`, a tool such as the
/// benchmark harness in `target/<profile>` itself).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("own binary path");
    let dir = exe.parent().expect("a binary lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>/deps").to_path_buf()
    } else {
        dir.to_path_buf()
    }
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

/// The harness's own `TOLLGATE_*` variables are not configuration: the binaries reject
/// unknown `TOLLGATE_` keys, so they are removed from a child's environment.
pub fn harness_env_removed(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("TOLLGATE_BIN_DIR")
        .env_remove("TOLLGATE_TEST_PG")
        .env_remove("TOLLGATE_TEST_REDIS")
}

/// A port nobody listens on right now, and never handed out before in this process (the
/// kernel may offer a just-released port again, and tests allocate concurrently).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(Default::default).insert(port) {
            return port;
        }
    }
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
        let child = harness_env_removed(cmd)
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
/// Redis key prefix.
pub fn write_config(
    dir: &Path,
    ports: &Ports,
    database_url: &str,
    key_prefix: &str,
) -> anyhow::Result<PathBuf> {
    write_config_named(
        dir,
        "tollgate.toml",
        "spool",
        ports,
        database_url,
        key_prefix,
        "",
    )
}

/// Like [`write_config`], with the file and spool names and extra `[proxy]` keys.
pub fn write_config_named(
    dir: &Path,
    file: &str,
    spool: &str,
    ports: &Ports,
    database_url: &str,
    key_prefix: &str,
    extra_proxy_keys: &str,
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
drain_seconds = 3
control_plane_url = "http://127.0.0.1:{cp}"
spool_dir = "{spool}"
redis_budget_ms = 500
entitlement_fill_timeout_ms = 2000
{extra_proxy_keys}

[proxy.shipping]
batch_size = 100
max_delay_ms = 100

[[proxy.routes]]
method = "POST"
path = "/api/v1/tickets"
kind = "metered"
usage_type = "ticket_creation"

[[proxy.routes]]
method = "POST"
path = "/api/v1/chat"
kind = "chat"

[control_plane]
listen = "127.0.0.1:{cp}"
metrics_listen = "127.0.0.1:{cp_metrics}"
database_url = "{database_url}"
database_max_connections = 5
upgrade_url = "http://frontend.test/billing/upgrade"

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
        spool = dir.join(spool).display(),
    );
    let path = dir.join(file);
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
    pub control_plane: Option<Process>,
    pub proxy: Option<Process>,
    pub database: TestDatabase,
    pub http: reqwest::Client,
    pub pool: sqlx::PgPool,
}

const STARTUP: Duration = Duration::from_secs(30);

impl Stack {
    /// The stack on fresh ports; tried again on other ports if one was taken between
    /// choosing it and binding it (something else on the machine may bind any port).
    pub async fn start() -> anyhow::Result<Self> {
        for attempt in 1.. {
            match Self::try_start().await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    continue;
                }
                result => return result,
            }
        }
        unreachable!("the loop returns")
    }

    async fn try_start() -> anyhow::Result<Self> {
        let ports = Ports::fresh();
        let dir = scratch_dir()?;
        let database = TestDatabase::create().await?;
        let key_prefix = format!("tg:test:{}:", uuid::Uuid::new_v4().simple());
        let config = write_config_named(
            &dir,
            "tollgate.toml",
            "spool",
            &ports,
            &database.url,
            &key_prefix,
            "",
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut upstream = Process::spawn(
            "ticket-api-standin",
            Command::new(binary("ticket-api-standin")?)
                .args(["--listen", &format!("127.0.0.1:{}", ports.upstream)]),
            &dir,
        )?;
        wait_until_healthy(
            &http,
            &format!("http://127.0.0.1:{}/health", ports.upstream),
            &mut upstream,
            STARTUP,
        )
        .await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect_lazy(&database.url)?;
        let mut stack = Self {
            ports,
            config,
            dir,
            key_prefix,
            upstream,
            control_plane: None,
            proxy: None,
            database,
            http,
            pool,
        };
        stack.start_control_plane().await?;
        stack.proxy = Some(
            stack
                .spawn_proxy(
                    &stack.config.clone(),
                    stack.ports.proxy_admin,
                    stack.ports.proxy,
                )
                .await?,
        );
        Ok(stack)
    }

    /// Starts (or restarts) the control plane on its port.
    pub async fn start_control_plane(&mut self) -> anyhow::Result<()> {
        let mut cp = Process::spawn(
            "tollgate-control-plane",
            Command::new(binary("tollgate-control-plane")?)
                .arg("--config")
                .arg(&self.config),
            &self.dir,
        )?;
        wait_until_healthy(
            &self.http,
            &format!("http://127.0.0.1:{}/health/ready", self.ports.control_plane),
            &mut cp,
            STARTUP,
        )
        .await?;
        self.control_plane = Some(cp);
        Ok(())
    }

    /// Kills the control plane (SIGKILL).
    pub fn kill_control_plane(&mut self) {
        self.control_plane = None;
    }

    /// Starts (or restarts) the main proxy.
    pub async fn start_proxy(&mut self) -> anyhow::Result<()> {
        let config = self.config.clone();
        self.proxy = Some(
            self.spawn_proxy(&config, self.ports.proxy_admin, self.ports.proxy)
                .await?,
        );
        Ok(())
    }

    async fn spawn_proxy(
        &self,
        config: &Path,
        admin_port: u16,
        traffic_port: u16,
    ) -> anyhow::Result<Process> {
        self.spawn_proxy_under(config, admin_port, traffic_port, &[])
            .await
    }

    /// Starts a proxy, run by `wrapper` (e.g. valgrind) when it is not empty.
    async fn spawn_proxy_under(
        &self,
        config: &Path,
        admin_port: u16,
        traffic_port: u16,
        wrapper: &[String],
    ) -> anyhow::Result<Process> {
        let name = format!("tollgate-proxy-{admin_port}");
        let binary = binary("tollgate-proxy")?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut proxy = Process::spawn(&name, command.arg("--config").arg(config), &self.dir)?;
        // A wrapped proxy (an instruction counter) starts many times slower.
        let startup = if wrapper.is_empty() {
            STARTUP
        } else {
            STARTUP * 4
        };
        wait_until_healthy(
            &self.http,
            &format!("http://127.0.0.1:{admin_port}/health/ready"),
            &mut proxy,
            startup,
        )
        .await?;
        // Ready on the admin port does not mean the traffic listener is bound yet.
        let deadline = Instant::now() + startup;
        while tokio::net::TcpStream::connect(("127.0.0.1", traffic_port))
            .await
            .is_err()
        {
            if !proxy.is_running() || Instant::now() > deadline {
                bail!("{name} never listened on {traffic_port}:\n{}", proxy.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(proxy)
    }

    /// A second proxy replica sharing this stack's Redis, control plane and upstream,
    /// with its own ports and spool. Returns it with its traffic port.
    pub async fn extra_proxy(&self, name: &str) -> anyhow::Result<(Process, u16)> {
        self.extra_proxy_with_redis(name, &redis_url()).await
    }

    /// Like [`Stack::extra_proxy`], pointed at another Redis (e.g. one that is down).
    pub async fn extra_proxy_with_redis(
        &self,
        name: &str,
        redis: &str,
    ) -> anyhow::Result<(Process, u16)> {
        let redis = redis.to_owned();
        self.extra_proxy_edited(name, move |text| text.replace(&redis_url(), &redis))
            .await
    }

    /// Like [`Stack::extra_proxy`], with its configuration text edited by `edit`.
    pub async fn extra_proxy_edited(
        &self,
        name: &str,
        edit: impl FnOnce(String) -> String,
    ) -> anyhow::Result<(Process, u16)> {
        self.extra_proxy_under(name, edit, &[]).await
    }

    /// Like [`Stack::extra_proxy_edited`], the proxy run by `wrapper` (a program and its
    /// arguments, given the proxy's command line after them).
    pub async fn extra_proxy_under(
        &self,
        name: &str,
        edit: impl FnOnce(String) -> String,
        wrapper: &[String],
    ) -> anyhow::Result<(Process, u16)> {
        let mut ports = self.ports;
        ports.proxy = free_port();
        ports.proxy_admin = free_port();
        let config = write_config_named(
            &self.dir,
            &format!("{name}.toml"),
            &format!("spool-{name}"),
            &ports,
            &self.database.url,
            &self.key_prefix,
            "",
        )?;
        let text = edit(std::fs::read_to_string(&config)?);
        std::fs::write(&config, text)?;
        let process = self
            .spawn_proxy_under(&config, ports.proxy_admin, ports.proxy, wrapper)
            .await?;
        Ok((process, ports.proxy))
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
        let out = harness_env_removed(&mut Command::new(binary("tollgate-control-plane")?))
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

    /// `POST /api/v1/tickets` through the main proxy.
    pub async fn create_ticket(&self, token: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.proxy_url("/api/v1/tickets"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "title": "printer on fire" }))
            .send()
            .await?)
    }

    /// Creates tickets until one answers `want` (a change is propagating), up to 2 s;
    /// returns the last status seen.
    pub async fn ticket_status_eventually(&self, token: &str, want: u16) -> anyhow::Result<u16> {
        let mut status = 0;
        for _ in 0..100 {
            status = self.create_ticket(token).await?.status().as_u16();
            if status == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(status)
    }

    /// Asks the control plane to recompute and publish a customer's entitlement.
    pub async fn publish(&self, customer: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .post(self.control_plane_url(&format!("/internal/v1/entitlements/{customer}/publish")))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("publish answered {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// Usage records the ledger holds for a customer.
    pub async fn ledger_count(&self, customer: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(quantity), 0)::BIGINT FROM usage_records WHERE customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Waits until the ledger holds `expected` units for `customer` (shipping is
    /// asynchronous), then checks it stays there briefly (no late duplicates).
    pub async fn wait_for_ledger(&self, customer: &str, expected: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.ledger_count(customer).await?;
            if n == expected {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let again = self.ledger_count(customer).await?;
                if again != expected {
                    bail!("ledger for {customer} moved from {expected} to {again}");
                }
                return Ok(());
            }
            if n > expected {
                bail!("ledger for {customer} holds {n}, more than {expected}");
            }
            if Instant::now() > deadline {
                bail!("ledger for {customer} holds {n}, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts a customer on a paid plan directly in the ledger (the billing API that does
    /// this through Stripe is tested on its own).
    pub async fn set_subscription(
        &self,
        customer: &str,
        plan: &str,
        model: &str,
        status: &str,
        period_start: time::OffsetDateTime,
        period_end: time::OffsetDateTime,
    ) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO customers (customer_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(customer)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO subscriptions (customer_id, stripe_subscription_id, stripe_customer_id,
                 plan_type, billing_model, status, current_period_start, current_period_end)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(customer)
        .bind(format!("sub_test_{}", uuid::Uuid::new_v4().simple()))
        .bind(format!("cus_test_{customer}"))
        .bind(plan)
        .bind(model)
        .bind(status)
        .bind(period_start)
        .bind(period_end)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Grants `units` prepaid credits at `unit_price` to a customer.
    pub async fn grant_credits(
        &self,
        customer: &str,
        units: u32,
        unit_price: &str,
    ) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO customers (customer_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(customer)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO billing_credits (customer_id, credit_amount, unit_price)
             VALUES ($1, $2::numeric * $3::numeric, $3::numeric)",
        )
        .bind(customer)
        .bind(i64::from(units))
        .bind(unit_price)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A Redis connection for inspecting counters.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// The ticket API stand-in's counts of what reached it.
    pub async fn upstream_stats(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!(
                "http://127.0.0.1:{}/_standin/stats",
                self.ports.upstream
            ))
            .send()
            .await?
            .json()
            .await?)
    }

    /// One sample from the main proxy's `/metrics`, summed over label sets that contain
    /// every one of `labels` (e.g. `outcome="refused_from_memory"`).
    pub async fn proxy_metric(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!(
                "http://127.0.0.1:{}/metrics",
                self.ports.proxy_admin
            ))
            .send()
            .await?
            .text()
            .await?;
        Ok(metric_sum(&text, name, labels))
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_part) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| label_part.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The token the test configuration gives the internal endpoints.
pub const SERVICE_TOKEN: &str = "test-service-token";

/// A token signed with a secret this deployment does not know.
pub fn foreign_token(customer: &str) -> anyhow::Result<String> {
    issue(customer, "someone-elses-secret-0123456789abcdefgh", 0, 600)
}

/// A correctly signed token that expired an hour ago.
pub fn expired_token(customer: &str) -> anyhow::Result<String> {
    issue(
        customer,
        "test-only-hs256-secret-0123456789abcdef",
        3600 + 600,
        600,
    )
}

fn issue(customer: &str, secret: &str, age: u64, ttl: u64) -> anyhow::Result<String> {
    use tollgate_runtime::identity::TokenIssuer;
    use tollgate_runtime::settings::IdentitySettings;
    let settings = IdentitySettings {
        issuer: "tollgate-test".into(),
        audience: "ticket-api".into(),
        hs256_secret: Some(secret.to_owned().into()),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_seconds: 300,
        jwks_min_refresh_seconds: 10,
        leeway_seconds: 0,
        trusted_header: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(TokenIssuer::new(&settings)?.issue(
        &billing_model::CustomerId::parse(customer)?,
        now - age,
        ttl,
    )?)
}

/// A throwaway P-256 key made for tests only (the same one tollgate-runtime's unit tests use).
pub const ES256_TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcuSDofCSi7pqDc3W
UMVDbwlIW7l+AiApwggaM5ik2FuhRANCAAQleUKSlRFHaaqFCe98uBQkTc96Tb5M
84rQYE/UWz1NLaRs6x6anqoEeEhCk0XHphGrhaRRtXtyaejmsyBJ3Zjl
-----END PRIVATE KEY-----";

/// The JWKS (public part) of [`ES256_TEST_KEY`], with key id `k1`.
pub fn es256_jwks() -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};
    let key = EncodingKey::from_ec_pem(ES256_TEST_KEY.as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
    jwk.common.key_id = Some("k1".into());
    Ok(serde_json::json!({ "keys": [jwk] }).to_string())
}

/// An ES256 token for `customer` signed with [`ES256_TEST_KEY`].
pub fn es256_token(customer: &str) -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({
        "sub": customer, "iss": "tollgate-test", "aud": "ticket-api",
        "iat": now, "exp": now + 600,
    });
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(ES256_TEST_KEY.as_bytes())?,
    )?)
}

/// Sends a raw HTTP/1.1 request, so the path reaches the server exactly as written,
/// with the body sent one byte every `gap` (a slow client) or at once (`gap` zero), and
/// returns the status (0 when no answer came) and the response body.
pub async fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    gap: Duration,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    if gap.is_zero() {
        let _ = stream.write_all(body).await;
    } else {
        for byte in body {
            tokio::time::sleep(gap).await;
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Extra `[proxy]` keys for a proxy whose reservations expire after 3 s without
/// renewal (slow-client tests and the bench's slow-client row).
pub fn short_reservation_ttl(config: String) -> String {
    config.replace(
        "drain_seconds = 3",
        "drain_seconds = 3\nreservation_ttl_seconds = 3\nupstream_timeout_seconds = 10",
    )
}
