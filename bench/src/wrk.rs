//! Load from wrk (Debian's package), with a Lua script that sets the request and prints
//! the latency distribution as one JSON line.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

/// One wrk run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub errors: u64,
    /// Responses that were not 2xx or 3xx (wrk's `errors.status`).
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// What to send.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub bearer: Option<&'a str>,
    pub body: Option<&'a str>,
}

pub fn run(
    dir: &Path,
    name: &str,
    request: &Request<'_>,
    seconds: u64,
    connections: u32,
) -> anyhow::Result<Load> {
    let mut headers = String::new();
    if let Some(token) = request.bearer {
        headers.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ));
    }
    if request.body.is_some() {
        headers.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    let body = request
        .body
        .map(|b| format!("wrk.body = {b:?}\n"))
        .unwrap_or_default();
    let script = format!(
        r#"wrk.method = "{method}"
{headers}{body}
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    "WRKJSON {{\"requests\":%d,\"seconds\":%f,\"errors\":%d,\"non_2xx\":%d,\"p50_us\":%f,\"p99_us\":%f,\"p999_us\":%f}}\n",
    summary.requests, summary.duration / 1e6, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#,
        method = request.method,
    );
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, script)?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&path)
        .arg(request.url)
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("WRKJSON ")) else {
        bail!(
            "wrk printed no result: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    #[derive(Deserialize)]
    struct Raw {
        requests: u64,
        seconds: f64,
        errors: u64,
        non_2xx: u64,
        p50_us: f64,
        p99_us: f64,
        p999_us: f64,
    }
    let raw: Raw = serde_json::from_str(line)?;
    Ok(Load {
        requests: raw.requests,
        seconds: raw.seconds,
        rps: raw.requests as f64 / raw.seconds.max(1e-9),
        errors: raw.errors,
        non_2xx: raw.non_2xx,
        p50_us: raw.p50_us,
        p99_us: raw.p99_us,
        p999_us: raw.p999_us,
    })
}
