//! Instructions per request, counted by valgrind's callgrind: the figure that a shared,
//! noisy machine does not move (the same binary and requests give the same count
//! whatever else runs; this VM has no hardware counters for `perf stat`).
//!
//! Each process (bare pingora, tollgate) is started under callgrind; after a warm-up its
//! counters are zeroed (`callgrind_control --zero`), a fixed number of requests is sent
//! one after another on one keep-alive connection, and the counters are dumped. The
//! count covers every thread of the process (workers, background tasks, timers), so a
//! proxy's off-path work — commits, lease upkeep, usage shipping — is in it; timers that
//! tick with wall time rather than with requests add a little, the same for every row.

use crate::wrk::Request;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The command line that runs a process under callgrind, its dumps in `dir`.
pub fn wrapper(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
        // Counts only: no per-instruction or jump detail (faster, smaller dumps).
        "--dump-instr=no".into(),
        "--collect-jumps=no".into(),
    ]
}

/// Whether valgrind is here to count with.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("callgrind_control")
            .arg("--version")
            .output()
            .is_ok()
}

/// Sends `warm` requests, zeroes the counters of `pid`, sends `requests` more one after
/// another, dumps, and returns the instructions counted per request.
pub async fn per_request(
    dir: &Path,
    pid: u32,
    request: &Request<'_>,
    warm: u32,
    requests: u32,
) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?;
    send(&client, request, warm).await?;
    control(pid, "--zero")?;
    send(&client, request, requests).await?;
    let before = dumps(dir, pid)?;
    control(pid, "--dump")?;
    // The dump is written by the process itself, shortly after the request.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let file = loop {
        if let Some(new) = dumps(dir, pid)?.into_iter().find(|f| !before.contains(f)) {
            break new;
        }
        if std::time::Instant::now() > deadline {
            bail!("callgrind wrote no dump for {pid}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = total_instructions(&file).await?;
    Ok(total as f64 / f64::from(requests.max(1)))
}

async fn send(client: &reqwest::Client, request: &Request<'_>, n: u32) -> anyhow::Result<()> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
    for _ in 0..n {
        let mut builder = client.request(method.clone(), request.url);
        if let Some(token) = request.bearer {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = request.body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let answer = builder.send().await?;
        let status = answer.status();
        let _ = answer.bytes().await?;
        if !status.is_success() {
            bail!("{} {} answered {status}", request.method, request.url);
        }
    }
    Ok(())
}

fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .output()
        .context("callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {what} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The dump files of `pid` in `dir` (the final one and the numbered ones).
fn dumps(dir: &Path, pid: u32) -> anyhow::Result<Vec<PathBuf>> {
    let stem = format!("callgrind.out.{pid}");
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem))
        })
        .collect())
}

/// The `summary:` (or `totals:`) of a dump: instructions executed (Ir). A dump being
/// written is read again until it has its summary.
async fn total_instructions(file: &Path) -> anyhow::Result<u64> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(total) = total {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no summary in {}", file.display())
}
