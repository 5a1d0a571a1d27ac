//! Servers the harness owns, so drills can kill and restart them without touching the
//! machine's own: a Redis, a PostgreSQL cluster, nginx as the baseline proxy.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_e2e::free_port;

/// A child stopped on drop: SIGKILL, or SIGTERM first when `graceful` (nginx's master
/// must stop its workers itself, or they outlive it).
pub struct Owned {
    pub child: Child,
    pub port: u16,
    graceful: bool,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.graceful {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// A Redis of our own (nothing on disk).
pub fn redis(port: Option<u16>) -> anyhow::Result<Owned> {
    let port = port.unwrap_or_else(free_port);
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    wait_for_port(port, Duration::from_secs(10))?;
    Ok(Owned {
        child,
        port,
        graceful: false,
    })
}

/// A PostgreSQL cluster of our own (trust auth, loopback), restartable for drills.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .context("PostgreSQL is not installed under /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().context("no initdb found")
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Postgres {
    pub fn start(scratch: &Path) -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        let dir = scratch.join("pg");
        std::fs::create_dir_all(&dir)?;
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let _ = Command::new("chmod").args(["755"]).arg(scratch).status();
        let port = free_port();
        let ok = pg_command(&bin, "initdb")
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("initdb failed");
        }
        let pg = Self { dir, port, bin };
        pg.ctl("start")?;
        Ok(pg)
    }

    fn ctl(&self, action: &str) -> anyhow::Result<()> {
        let ok = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-o",
                &format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    self.port,
                    self.dir.display()
                ),
                "-l",
            ])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", action])
            .stdout(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("pg_ctl {action} failed");
        }
        Ok(())
    }

    pub fn restart(&self) -> anyhow::Result<()> {
        self.ctl("restart")
    }

    /// The postmaster and its children (backends, background workers) right now.
    pub fn pids(&self) -> Vec<u32> {
        let Some(main) = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        pids.extend(crate::phases::children(main));
        pids
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A bare pingora proxy (`bare-pingora`, built with the workspace): the same pingora and
/// allocator as tollgate's proxy with nothing but `upstream_peer`, on `threads` threads.
pub fn bare_pingora(upstream: u16, threads: usize) -> anyhow::Result<Owned> {
    bare_pingora_under(upstream, threads, &[], Duration::from_secs(10))
}

/// [`bare_pingora`] run by `wrapper` (e.g. valgrind) when it is not empty.
pub fn bare_pingora_under(
    upstream: u16,
    threads: usize,
    wrapper: &[String],
    startup: Duration,
) -> anyhow::Result<Owned> {
    let port = free_port();
    let binary = tollgate_e2e::binary("bare-pingora")?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let child = command
        .args([
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{upstream}"),
            threads.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bare-pingora")?;
    wait_for_port(port, startup)?;
    Ok(Owned {
        child,
        port,
        graceful: false,
    })
}

/// nginx as the baseline reverse proxy: two workers (as many as the proxy's threads),
/// keepalive to the upstream.
pub fn nginx(scratch: &Path, upstream: u16) -> anyhow::Result<Owned> {
    let port = free_port();
    let dir = scratch.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        r#"worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream ticket_api {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://ticket_api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install -y nginx)")?;
    wait_for_port(port, Duration::from_secs(10))?;
    Ok(Owned {
        child,
        port,
        graceful: true,
    })
}

/// CPU seconds (user + system) a process and its threads have used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 here).
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
