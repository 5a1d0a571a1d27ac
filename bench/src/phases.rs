//! The benchmark's phases, in order: throughput rows, exactness, ingestion, webhooks,
//! entitlement propagation, memory, failure drills.

use crate::report::{Drill, Exactness, Goal, Memory, Propagation, Rate, Report, Row, Webhooks};
use crate::servers::{self, Owned, Postgres};
use crate::wrk::{self, Request};
use anyhow::Context;
use billing_model::CustomerId;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_e2e::{Stack, binary, free_port};
use tollgate_runtime::identity::TokenIssuer;

/// The webhook signing secret the bench configures.
const SECRET: &str = "whsec_bench";

const TICKET: &str = r#"{"title":"printer on fire","body":"benchmark"}"#;

/// Tokens signed in-process with the harness configuration's secret (the `token`
/// subcommand would spawn a process per customer).
struct Tokens(TokenIssuer);

impl Tokens {
    fn new() -> anyhow::Result<Self> {
        let settings: tollgate_runtime::settings::IdentitySettings =
            serde_json::from_value(json!({
                "issuer": "tollgate-test",
                "audience": "ticket-api",
                "hs256_secret": "test-only-hs256-secret-0123456789abcdef",
            }))?;
        Ok(Self(TokenIssuer::new(&settings)?))
    }

    fn token(&self, customer: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        self.0
            .issue(&CustomerId::parse(customer).expect("valid id"), now, 7200)
            .expect("token")
    }
}

fn period() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(29),
    )
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores ({model})")
}

/// Child pids of a process (nginx's workers).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(
    profile_dir: Option<std::path::PathBuf>,
    smoke: bool,
    scratch: &Path,
    redis: Owned,
    postgres: &Postgres,
) -> anyhow::Result<Report> {
    let mut report = Report {
        mode: if smoke { "smoke" } else { "full" }.into(),
        machine: machine(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        ..Report::default()
    };
    let mut stack = Stack::start().await.context("starting the stack")?;
    let tokens = Tokens::new()?;
    let (extra_proxy, extra_port) = stack.extra_proxy("second").await?;

    throughput(
        &mut report,
        &stack,
        &tokens,
        scratch,
        smoke,
        behind_the_proxy(&stack, redis.child.id(), postgres),
        profile_dir,
    )
    .await?;
    if !smoke {
        instructions(&mut report, &stack, &tokens, scratch).await?;
    }
    exactness(&mut report, &stack, &tokens, extra_port).await?;
    ingestion(&mut report, &stack, smoke).await?;
    webhooks(&mut report, &mut stack, smoke).await?;
    propagation(&mut report, &stack, &tokens, extra_port, smoke).await?;
    if !smoke {
        memory(&mut report, &stack, &tokens, 100_000).await?;
    }
    drills(
        &mut report,
        &mut stack,
        &tokens,
        extra_port,
        redis,
        postgres,
        smoke,
    )
    .await?;
    drop(extra_proxy);
    Ok(report)
}

/// CPU seconds used so far by each group of processes.
fn cpu_of(groups: &[(String, Vec<u32>)]) -> Vec<f64> {
    groups
        .iter()
        .map(|(_, pids)| pids.iter().map(|p| servers::cpu_seconds(*p)).sum())
        .collect()
}

/// The processes behind the proxy whose CPU each row also reports.
fn behind_the_proxy(stack: &Stack, redis_pid: u32, postgres: &Postgres) -> Vec<(String, Vec<u32>)> {
    vec![
        ("redis".into(), vec![redis_pid]),
        (
            "control plane".into(),
            stack
                .control_plane
                .as_ref()
                .map(|p| vec![p.pid()])
                .unwrap_or_default(),
        ),
        ("postgres".into(), postgres.pids()),
    ]
}

/// How a row's load is generated.
enum Drive {
    /// wrk at saturation: `connections` connections for the row's seconds.
    Saturate,
    /// The open-loop generator at a fixed rate (requests per second).
    Rate(u32),
}

async fn throughput(
    report: &mut Report,
    stack: &Stack,
    tokens: &Tokens,
    scratch: &Path,
    smoke: bool,
    behind: Vec<(String, Vec<u32>)>,
    profile_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let (start, end) = period();
    stack
        .set_subscription("bench-paid", "premium", "fixed_fee", "active", start, end)
        .await?;
    stack
        .set_subscription(
            "bench-hard",
            "premium",
            "credit_burndown",
            "active",
            start,
            end,
        )
        .await?;
    stack
        .grant_credits("bench-hard", 50_000_000, "0.01")
        .await?;
    let paid = tokens.token("bench-paid");
    let hard = tokens.token("bench-hard");
    let nginx = servers::nginx(scratch, stack.ports.upstream)?;
    let nginx_workers = children(nginx.child.id());
    let bare = servers::bare_pingora(stack.ports.upstream, 2)?;
    let via_bare = format!("http://127.0.0.1:{}/api/v1/tickets", bare.port);
    let proxy_pid = stack.proxy.as_ref().map(|p| p.pid()).unwrap_or(0);
    let rate = if smoke { 200 } else { 2_000 };
    let (seconds, connections) = if smoke { (1, 8) } else { (10, 32) };
    let upstream = format!("http://127.0.0.1:{}/api/v1/tickets", stack.ports.upstream);
    let via_nginx = format!("http://127.0.0.1:{}/api/v1/tickets", nginx.port);
    let via_tollgate = stack.proxy_url("/api/v1/tickets");
    let get = |url| Request {
        method: "GET",
        url,
        bearer: None,
        body: None,
    };
    let post = |url, token| Request {
        method: "POST",
        url,
        bearer: Some(token),
        body: Some(TICKET),
    };
    let tollgate = Some(vec![proxy_pid]);
    let rate_name = |what: &str| format!("{what} at {rate} req/s (POST)");
    let rows: Vec<(String, Request<'_>, Option<Vec<u32>>, Drive)> = vec![
        (
            "1 direct (GET)".into(),
            get(&upstream),
            None,
            Drive::Saturate,
        ),
        (
            "2 nginx proxy_pass, 2 workers (GET)".into(),
            get(&via_nginx),
            Some(nginx_workers.clone()),
            Drive::Saturate,
        ),
        (
            "2b bare pingora, 2 threads (GET)".into(),
            get(&via_bare),
            Some(vec![bare.child.id()]),
            Drive::Saturate,
        ),
        (
            "3 tollgate unmetered (GET)".into(),
            get(&via_tollgate),
            tollgate.clone(),
            Drive::Saturate,
        ),
        (
            "1b direct (POST)".into(),
            post(&upstream, &paid),
            None,
            Drive::Saturate,
        ),
        (
            "4 tollgate metered, paid overage (POST)".into(),
            post(&via_tollgate, &paid),
            tollgate.clone(),
            Drive::Saturate,
        ),
        (
            "5 tollgate metered, hard limit (POST)".into(),
            post(&via_tollgate, &hard),
            tollgate.clone(),
            Drive::Saturate,
        ),
        (
            rate_name("6 direct"),
            post(&upstream, &paid),
            None,
            Drive::Rate(rate),
        ),
        (
            rate_name("7 tollgate hard limit"),
            post(&via_tollgate, &hard),
            tollgate.clone(),
            Drive::Rate(rate),
        ),
        (
            rate_name("8 tollgate paid overage"),
            post(&via_tollgate, &paid),
            tollgate.clone(),
            Drive::Rate(rate),
        ),
    ];
    // Warm every path (connections, entitlement caches) before measuring.
    for (_, request, _, _) in &rows {
        let _ = wrk::run(scratch, "warm", request, 1, 4);
    }
    for (name, request, pids, drive) in rows {
        let cpu_before: f64 = pids
            .iter()
            .flatten()
            .map(|p| servers::cpu_seconds(*p))
            .sum();
        let behind_before = cpu_of(&behind);
        // `--profile`: a cpu-clock profile of the measured process while the row runs.
        let profiler = match (&profile_dir, &pids, &drive) {
            (Some(dir), Some(pids), Drive::Saturate) if !pids.is_empty() => {
                crate::profile::start(dir, &name, pids[0], seconds)
            }
            _ => None,
        };
        let load = match drive {
            Drive::Saturate => wrk::run(
                scratch,
                &name.replace(' ', "_"),
                &request,
                seconds,
                connections,
            )?,
            Drive::Rate(rate) => crate::rate::run(&request, rate, seconds).await?,
        };
        let cpu_after: f64 = pids
            .iter()
            .flatten()
            .map(|p| servers::cpu_seconds(*p))
            .sum();
        if let Some(profiler) = profiler {
            profiler.finish();
        }
        let per_request = |cpu: f64| cpu * 1e6 / (load.requests.max(1) as f64);
        let cpu = pids.as_ref().map(|_| per_request(cpu_after - cpu_before));
        let cpu_us_behind = behind
            .iter()
            .zip(behind_before.iter().zip(cpu_of(&behind)))
            .map(|((name, _), (before, after))| (name.clone(), per_request(after - before)))
            .collect();
        report.throughput.push(Row {
            name,
            load,
            added_p99_ms: None,
            cpu_us_per_request: cpu,
            cpu_us_behind,
        });
    }
    let find = |rows: &[Row], prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.load.clone())
            .expect("every row ran")
    };
    let (direct_get, direct_post, direct_rate) = (
        find(&report.throughput, "1 "),
        find(&report.throughput, "1b"),
        find(&report.throughput, "6 "),
    );
    for row in &mut report.throughput {
        let base = if row.name.contains(" req/s ") {
            &direct_rate
        } else if row.name.contains("POST") {
            &direct_post
        } else {
            &direct_get
        };
        if !row.name.starts_with('1') && !row.name.starts_with('6') {
            row.added_p99_ms = Some((row.load.p99_us - base.p99_us) / 1000.0);
        }
    }
    let (nginx_row, bare_row, unmetered, paid_row, hard_row, hard_rate) = (
        find(&report.throughput, "2 "),
        find(&report.throughput, "2b"),
        find(&report.throughput, "3 "),
        find(&report.throughput, "4 "),
        find(&report.throughput, "5 "),
        find(&report.throughput, "7 "),
    );
    let added = |l: &wrk::Load, base: &wrk::Load| (l.p99_us - base.p99_us) / 1000.0;
    let ratio = |a: &wrk::Load, b: &wrk::Load| a.rps / b.rps.max(1e-9);
    let mut goal = |name: &str, target: &str, measured: String, met: bool| {
        report.goals.push(Goal {
            name: name.into(),
            target: target.into(),
            measured,
            met,
        })
    };
    goal(
        "(3) unmetered throughput vs nginx (2)",
        "≥ 1.0×",
        format!("{:.2}×", ratio(&unmetered, &nginx_row)),
        ratio(&unmetered, &nginx_row) >= 1.0,
    );
    goal(
        "(3) unmetered throughput vs bare pingora (2b)",
        "≥ 0.97×",
        format!(
            "{:.2}× (bare pingora itself {:.2}× nginx)",
            ratio(&unmetered, &bare_row),
            ratio(&bare_row, &nginx_row)
        ),
        ratio(&unmetered, &bare_row) >= 0.97,
    );
    goal(
        "(4) paid-overage throughput vs (3)",
        "≥ 0.8×",
        format!("{:.2}×", ratio(&paid_row, &unmetered)),
        ratio(&paid_row, &unmetered) >= 0.8,
    );
    goal(
        "(5) hard-limit throughput vs (3)",
        "≥ 0.7×",
        format!("{:.2}×", ratio(&hard_row, &unmetered)),
        ratio(&hard_row, &unmetered) >= 0.7,
    );
    goal(
        "(7) hard-limit added p99 at a fixed rate",
        "≤ 1 ms",
        format!("{:.2} ms at {rate} req/s", added(&hard_rate, &direct_rate)),
        added(&hard_rate, &direct_rate) <= 1.0,
    );
    drop(bare);
    drop(nginx);
    Ok(())
}

/// Instructions per request of bare pingora and of tollgate's unmetered and metered
/// paths, each process under callgrind (see [`crate::instructions`]). Skipped, with a
/// note, where valgrind is missing.
async fn instructions(
    report: &mut Report,
    stack: &Stack,
    tokens: &Tokens,
    scratch: &Path,
) -> anyhow::Result<()> {
    use crate::instructions::{available, per_request, wrapper};
    use crate::report::Instructions;
    if !available() {
        eprintln!("valgrind/callgrind_control not found: no instruction counts");
        return Ok(());
    }
    let dir = scratch.join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let under = wrapper(&dir);
    let (warm, requests) = (200, 2_000);
    let (paid, hard) = (tokens.token("bench-paid"), tokens.token("bench-hard"));
    let bare =
        servers::bare_pingora_under(stack.ports.upstream, 2, &under, Duration::from_secs(120))?;
    let via_bare = format!("http://127.0.0.1:{}/api/v1/tickets", bare.port);
    let get = |url| Request {
        method: "GET",
        url,
        bearer: None,
        body: None,
    };
    let bare_post = Request {
        method: "POST",
        url: &via_bare,
        bearer: Some(&paid),
        body: Some(TICKET),
    };
    let mut bare_counts = Vec::new();
    for (name, request) in [
        ("bare pingora, 2 threads (GET)", get(&via_bare)),
        ("bare pingora, 2 threads (POST)", bare_post),
    ] {
        let count = per_request(&dir, bare.child.id(), &request, warm, requests)
            .await
            .with_context(|| format!("{name} under callgrind"))?;
        bare_counts.push(count);
        report.instructions.push(Instructions {
            name: name.into(),
            requests,
            per_request: count,
            vs_bare_pingora: None,
        });
    }
    drop(bare);
    let (mut counted, port) = stack
        .extra_proxy_under("counted", |text| text, &under)
        .await
        .context("a proxy under callgrind")?;
    let via = format!("http://127.0.0.1:{port}/api/v1/tickets");
    let post = |token| Request {
        method: "POST",
        url: &via,
        bearer: Some(token),
        body: Some(TICKET),
    };
    // Each beside bare pingora's count for the same method.
    let rows = [
        ("tollgate unmetered (GET)", get(&via), bare_counts[0]),
        (
            "tollgate metered, paid overage (POST)",
            post(&paid),
            bare_counts[1],
        ),
        (
            "tollgate metered, hard limit (POST)",
            post(&hard),
            bare_counts[1],
        ),
    ];
    for (name, request, bare_count) in rows {
        let count = per_request(&dir, counted.pid(), &request, warm, requests)
            .await
            .with_context(|| format!("{name} under callgrind"))?;
        report.instructions.push(Instructions {
            name: name.into(),
            requests,
            per_request: count,
            vs_bare_pingora: Some(count / bare_count.max(1.0)),
        });
    }
    let _ = counted.terminate(Duration::from_secs(60));
    Ok(())
}

/// `requests` concurrent metered requests, each on its own connection, spread over the
/// proxies; returns how many succeeded.
async fn burst(urls: &[String], token: &str, requests: u64) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..requests {
        let url = urls[(i as usize) % urls.len()].clone();
        let token = token.to_owned();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            if let Ok(r) = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(TICKET)
                .send()
                .await
                && r.status().is_success()
            {
                ok.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    ok.load(Ordering::SeqCst)
}

async fn redis_credits_used(stack: &Stack, customer: &str) -> anyhow::Result<i64> {
    let mut redis = stack.redis().await?;
    let key = format!("{}{{{customer}}}:credits_used", stack.key_prefix);
    let v: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
    Ok(v.unwrap_or(0))
}

async fn settled_ledger(stack: &Stack, customer: &str, expected: i64) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stack.ledger_count(customer).await?;
        if n >= expected || Instant::now() > deadline {
            // A little longer, in case more than expected arrives.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return stack.ledger_count(customer).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Units the Redis period counter of a customer holds (whatever its period start).
async fn redis_period_used(stack: &Stack, customer: &str) -> anyhow::Result<i64> {
    let mut redis = stack.redis().await?;
    let pattern = format!("{}{{{customer}}}:used:*", stack.key_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut redis)
        .await?;
    let mut total = 0;
    for key in keys {
        let v: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        total += v.unwrap_or(0);
    }
    Ok(total)
}

async fn exactness(
    report: &mut Report,
    stack: &Stack,
    tokens: &Tokens,
    extra_port: u16,
) -> anyhow::Result<()> {
    let (start, end) = period();
    let (third, third_port) = stack.extra_proxy("third").await?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/api/v1/tickets");
    let two = vec![stack.proxy_url("/api/v1/tickets"), url(extra_port)];
    let three = vec![
        stack.proxy_url("/api/v1/tickets"),
        url(extra_port),
        url(third_port),
    ];
    // (name, customer, limit from credits or the Free plan, requests, proxies)
    let rows = [
        (
            "2 proxies, limit 100",
            "exact-100",
            Some(100u64),
            600u64,
            &two,
        ),
        (
            "2 proxies, credit balance 37",
            "exact-37",
            Some(37),
            500,
            &two,
        ),
        (
            "3 proxies, credit balance 50",
            "exact-3p-50",
            Some(50),
            600,
            &three,
        ),
        (
            "3 proxies, Free limit 10",
            "exact-3p-free",
            None,
            300,
            &three,
        ),
    ];
    for (name, customer, credits, requests, urls) in rows {
        let limit = match credits {
            Some(balance) => {
                stack
                    .set_subscription(customer, "premium", "credit_burndown", "active", start, end)
                    .await?;
                stack
                    .grant_credits(customer, balance as u32, "1.99")
                    .await?;
                balance
            }
            // An unknown customer is on the Free plan.
            None => 10,
        };
        let token = tokens.token(customer);
        let succeeded = burst(urls, &token, requests).await;
        let ledger = settled_ledger(stack, customer, limit as i64).await?;
        let redis = match credits {
            Some(_) => redis_credits_used(stack, customer).await?,
            None => redis_period_used(stack, customer).await?,
        };
        report.exactness.push(Exactness {
            name: name.into(),
            limit,
            requests,
            succeeded,
            ledger,
            redis,
            exact: succeeded == limit && ledger == limit as i64 && redis == limit as i64,
        });
    }
    drop(third);
    slow_clients(report, stack, tokens).await
}

/// Two proxies whose reservations expire after 3 s without renewal; 20 clients trickle
/// their bodies for 8 s (each holding a unit well past the TTL) while 200 normal
/// requests arrive: exactly the balance may succeed.
async fn slow_clients(report: &mut Report, stack: &Stack, tokens: &Tokens) -> anyhow::Result<()> {
    let (start, end) = period();
    let (proxy_a, port_a) = stack
        .extra_proxy_edited("slow-a", tollgate_e2e::short_reservation_ttl)
        .await?;
    let (proxy_b, port_b) = stack
        .extra_proxy_edited("slow-b", tollgate_e2e::short_reservation_ttl)
        .await?;
    let (customer, limit, slow, normal) = ("exact-slow-20", 20u64, 20u64, 200u64);
    stack
        .set_subscription(customer, "premium", "credit_burndown", "active", start, end)
        .await?;
    stack.grant_credits(customer, limit as u32, "1.99").await?;
    let authorization = format!("Bearer {}", tokens.token(customer));
    let ports = [port_a, port_b];
    let mut tasks = Vec::new();
    for i in 0..slow {
        let authorization = authorization.clone();
        let port = ports[i as usize % 2];
        tasks.push(tokio::spawn(async move {
            let headers = [("authorization", authorization.as_str())];
            tollgate_e2e::raw_request(
                port,
                "POST",
                "/api/v1/tickets",
                &headers,
                br#"{"title":"slow"}"#,
                Duration::from_millis(500),
            )
            .await
            .0
        }));
    }
    // Past two TTLs: an unrenewed hold would have expired by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..normal {
        let authorization = authorization.clone();
        let port = ports[i as usize % 2];
        tasks.push(tokio::spawn(async move {
            let headers = [("authorization", authorization.as_str())];
            tollgate_e2e::raw_request(
                port,
                "POST",
                "/api/v1/tickets",
                &headers,
                TICKET.as_bytes(),
                Duration::ZERO,
            )
            .await
            .0
        }));
    }
    let mut succeeded = 0;
    for status in futures_util::future::join_all(tasks).await {
        if status.is_ok_and(|s| (200..300).contains(&s)) {
            succeeded += 1;
        }
    }
    let ledger = settled_ledger(stack, customer, limit as i64).await?;
    let redis = redis_credits_used(stack, customer).await?;
    report.exactness.push(Exactness {
        name: "2 proxies (3 s TTL), 20 slow clients, credit balance 20".into(),
        limit,
        requests: slow + normal,
        succeeded,
        ledger,
        redis,
        exact: succeeded == limit && ledger == limit as i64 && redis == limit as i64,
    });
    drop((proxy_a, proxy_b));
    Ok(())
}

async fn ingestion(report: &mut Report, stack: &Stack, smoke: bool) -> anyhow::Result<()> {
    let total: u64 = if smoke { 5_000 } else { 200_000 };
    let batch = 1_000u64;
    let concurrency = 4;
    let url = stack.control_plane_url("/internal/v1/usage/batch");
    let (start, end) = period();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let bodies: Vec<String> = (0..total / batch)
        .map(|b| {
            let events: Vec<Value> = (0..batch)
                .map(|i| {
                    json!({
                        "event_id": uuid::Uuid::now_v7(),
                        "customer_id": format!("ingest-{}", (b * batch + i) % 1000),
                        "usage_type": "ticket_creation", "quantity": 1,
                        "occurred_at": rfc(start), "period_start": rfc(start), "period_end": rfc(end),
                    })
                })
                .collect();
            json!({ "events": events }).to_string()
        })
        .collect();
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let bodies = bodies.clone();
        let url = url.clone();
        let http = stack.http.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = bodies.lock().unwrap().pop() else {
                    return Ok::<(), anyhow::Error>(());
                };
                let r = http
                    .post(&url)
                    .bearer_auth("test-service-token")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "ingest answered {}", r.status());
            }
        }));
    }
    for t in futures_util::future::join_all(tasks).await {
        t??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = total as f64 / seconds;
    report.goals.push(Goal {
        name: "usage ingestion".into(),
        target: "≥ 50,000 events/s".into(),
        measured: format!("{rate:.0} events/s"),
        met: rate >= 50_000.0,
    });
    report.ingestion = Some(Rate {
        events: total,
        seconds,
        per_second: rate,
    });
    Ok(())
}

async fn webhooks(report: &mut Report, stack: &mut Stack, smoke: bool) -> anyhow::Result<()> {
    const KEY: &str = "sk_test_bench";
    let port = free_port();
    let mut standin = tollgate_e2e::Process::spawn(
        "stripe-standin",
        std::process::Command::new(binary("stripe-standin")?).args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            KEY,
        ]),
        &stack.dir,
    )?;
    let base = format!("http://127.0.0.1:{port}");
    // Listening before anything talks to it (sync-catalog below connects at once).
    tollgate_e2e::wait_until_healthy(
        &stack.http,
        &format!("{base}/health"),
        &mut standin,
        Duration::from_secs(30),
    )
    .await?;
    let mut config = std::fs::read_to_string(&stack.config)?;
    config.push_str(&format!(
        "\n[stripe]\napi_base = \"{base}\"\nsecret_key = \"{KEY}\"\nwebhook_secrets = [\"{SECRET}\"]\n"
    ));
    std::fs::write(&stack.config, config)?;
    stack.kill_control_plane();
    stack.start_control_plane().await?;
    let out = tollgate_e2e::harness_env_removed(&mut std::process::Command::new(binary(
        "tollgate-control-plane",
    )?))
    .arg("--config")
    .arg(&stack.config)
    .arg("sync-catalog")
    .current_dir(tollgate_e2e::workspace_root())
    .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sync-catalog: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = &stack.http;
    let stripe = |path: &str, form: Vec<(String, String)>| {
        let url = format!("{base}{path}");
        async move {
            let r = http.post(url).bearer_auth(KEY).form(&form).send().await?;
            anyhow::ensure!(r.status().is_success(), "stand-in answered {}", r.status());
            Ok::<Value, anyhow::Error>(r.json().await?)
        }
    };
    let price: Value = http
        .get(format!(
            "{base}/v1/prices?lookup_keys[]=tollgate_premium_monthly"
        ))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    let price = price["data"][0]["id"]
        .as_str()
        .context("premium price")?
        .to_owned();
    let mut subscriptions = Vec::new();
    // Enough subscriptions for a burst with one event per object.
    let distinct = if smoke { 20 } else { 1_000 };
    for i in 0..distinct {
        let customer = format!("hook-{i}");
        let c = stripe(
            "/v1/customers",
            vec![
                ("metadata[tollgate_customer_id]".into(), customer.clone()),
                (
                    "invoice_settings[default_payment_method]".into(),
                    "pm_card_visa".into(),
                ),
            ],
        )
        .await?;
        let cid = c["id"].as_str().unwrap().to_owned();
        sqlx::query("INSERT INTO customers (customer_id, stripe_customer_id) VALUES ($1, $2)")
            .bind(&customer)
            .bind(&cid)
            .execute(&stack.pool)
            .await?;
        let s = stripe(
            "/v1/subscriptions",
            vec![
                ("customer".into(), cid),
                ("items[0][price]".into(), price.clone()),
                ("metadata[tollgate_customer_id]".into(), customer),
            ],
        )
        .await?;
        subscriptions.push(s["id"].as_str().unwrap().to_owned());
    }
    // Two shapes: many events per subscription (what coalescing collapses) and one per
    // subscription (every event its own re-fetch).
    let (total, spread) = if smoke { (200, 20) } else { (5_000, 20) };
    let repeated = webhook_burst(
        stack,
        &subscriptions[..spread],
        total,
        "a",
        &format!("{total} events over {spread} subscriptions"),
    )
    .await?;
    // Sixteen senders share the events: a multiple of 16.
    let each = subscriptions.len() / 16 * 16;
    let one_each = webhook_burst(
        stack,
        &subscriptions,
        each,
        "b",
        &format!("{each} events, one per subscription"),
    )
    .await?;
    let slowest = repeated.applied_per_second.min(one_each.applied_per_second);
    let apply_p99 = repeated.apply_p99_ms.max(one_each.apply_p99_ms);
    report.goals.push(Goal {
        name: "webhooks applied".into(),
        target: "≥ 2,000 events/s, p99 < 20 ms".into(),
        measured: format!(
            "{:.0} events/s ({}; queued end to end p99 {:.0} ms), {:.0} events/s ({}; {:.0} ms); apply p99 ≤ {apply_p99:.0} ms",
            repeated.applied_per_second,
            repeated.shape,
            repeated.end_to_end_p99_ms,
            one_each.applied_per_second,
            one_each.shape,
            one_each.end_to_end_p99_ms,
        ),
        met: slowest >= 2000.0 && apply_p99 < 20.0,
    });
    report.webhooks = vec![repeated, one_each];
    drop(standin);
    Ok(())
}

/// Sends `total` signed `customer.subscription.updated` events, spread round-robin over
/// `subscriptions`, from 16 senders, and waits until all are applied.
async fn webhook_burst(
    stack: &Stack,
    subscriptions: &[String],
    total: usize,
    tag: &str,
    shape: &str,
) -> anyhow::Result<Webhooks> {
    let url = stack.control_plane_url("/api/v1/webhooks/stripe");
    let http = &stack.http;
    let pattern = format!("evt_bench_{tag}_%");
    let subscriptions = subscriptions.to_vec();
    let started = Instant::now();
    let receive = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let mut tasks = Vec::new();
    let per_task = total / 16;
    for t in 0..16 {
        let (url, http, subs, receive, tag) = (
            url.clone(),
            http.clone(),
            subscriptions.clone(),
            receive.clone(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = t * per_task + i;
                let body = json!({
                    "id": format!("evt_bench_{tag}_{n}_{}", uuid::Uuid::new_v4().simple()),
                    "object": "event", "type": "customer.subscription.updated",
                    "created": time::OffsetDateTime::now_utc().unix_timestamp(),
                    "api_version": "2026-09-30.endive", "livemode": false, "pending_webhooks": 1,
                    "request": { "id": null, "idempotency_key": null },
                    "data": { "object": { "id": subs[n % subs.len()], "object": "subscription" } },
                })
                .to_string();
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let sig =
                    tollgate_control_plane::webhooks::signature::sign(body.as_bytes(), SECRET, now);
                let sent = Instant::now();
                let r = http
                    .post(&url)
                    .header("stripe-signature", sig)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "webhook answered {}", r.status());
                receive
                    .lock()
                    .unwrap()
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in futures_util::future::join_all(tasks).await {
        t??;
    }
    let sent = (per_task * 16) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM stripe_events WHERE event_id LIKE $1 AND applied_at IS NOT NULL",
        )
        .bind(&pattern)
        .fetch_one(&stack.pool)
        .await?;
        if applied >= sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let end_to_end_p99: f64 = sqlx::query_scalar(
        "SELECT COALESCE(percentile_cont(0.99) WITHIN GROUP
                (ORDER BY extract(epoch FROM applied_at - received_at)), 0)::float8 * 1000
         FROM stripe_events WHERE event_id LIKE $1",
    )
    .bind(&pattern)
    .fetch_one(&stack.pool)
    .await?;
    let mut receive = receive.lock().unwrap().clone();
    receive.sort_by(f64::total_cmp);
    let per_second = sent as f64 / seconds;
    let metrics = stack
        .http
        .get(format!(
            "http://127.0.0.1:{}/metrics",
            stack.ports.control_plane_metrics
        ))
        .send()
        .await?
        .text()
        .await?;
    let apply_p99 = histogram_p99_ms(&metrics, "tollgate_cp_stripe_webhook_apply_seconds");
    Ok(Webhooks {
        shape: shape.into(),
        events: sent as u64,
        applied_per_second: per_second,
        receive_p99_ms: percentile(&receive, 99.0),
        apply_p99_ms: apply_p99,
        end_to_end_p99_ms: end_to_end_p99,
    })
}

async fn propagation(
    report: &mut Report,
    stack: &Stack,
    tokens: &Tokens,
    extra_port: u16,
    smoke: bool,
) -> anyhow::Result<()> {
    let (start, end) = period();
    let trials = if smoke { 3 } else { 30 };
    let urls = [
        stack.proxy_url("/api/v1/tickets"),
        format!("http://127.0.0.1:{extra_port}/api/v1/tickets"),
    ];
    let mut times = Vec::new();
    for t in 0..trials {
        let customer = format!("prop-{t}");
        stack
            .set_subscription(
                &customer,
                "premium",
                "credit_burndown",
                "active",
                start,
                end,
            )
            .await?;
        let token = tokens.token(&customer);
        // Both proxies know the customer (no credits: refused) before the change.
        for url in &urls {
            let r = stack
                .http
                .post(url)
                .bearer_auth(&token)
                .body(TICKET)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 402, "expected a refusal, got {}", r.status());
        }
        stack.grant_credits(&customer, 1000, "1.99").await?;
        let changed = Instant::now();
        stack.publish(&customer).await?;
        let waits = urls.iter().map(|url| {
            let (http, token, url) = (stack.http.clone(), token.clone(), url.clone());
            async move {
                loop {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .body(TICKET)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        return changed.elapsed().as_secs_f64() * 1000.0;
                    }
                    if changed.elapsed() > Duration::from_secs(10) {
                        return f64::INFINITY;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        let both = futures_util::future::join_all(waits).await;
        times.push(both.into_iter().fold(0.0, f64::max));
    }
    times.sort_by(f64::total_cmp);
    let p99 = percentile(&times, 99.0);
    report.goals.push(Goal {
        name: "entitlement propagation to every proxy".into(),
        target: "p99 ≤ 100 ms".into(),
        measured: format!("p99 {p99:.1} ms"),
        met: p99 <= 100.0,
    });
    report.propagation = Some(Propagation {
        trials,
        p50_ms: percentile(&times, 50.0),
        p99_ms: p99,
        max_ms: times.last().copied().unwrap_or(0.0),
    });
    Ok(())
}

async fn memory(
    report: &mut Report,
    stack: &Stack,
    tokens: &Tokens,
    customers: u64,
) -> anyhow::Result<()> {
    let pid = stack.proxy.as_ref().map(|p| p.pid()).context("proxy")?;
    let before = servers::rss_mib(pid);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (next, http, url) = (
            next.clone(),
            stack.http.clone(),
            stack.proxy_url("/api/v1/tickets"),
        );
        let issuer = Tokens::new()?;
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= customers {
                    return;
                }
                let token = issuer.token(&format!("mem-{n}"));
                let _ = http.post(&url).bearer_auth(token).body(TICKET).send().await;
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    let _ = tokens;
    let after = servers::rss_mib(pid);
    report.goals.push(Goal {
        name: "proxy RSS with 100,000 cached customers".into(),
        target: "≤ 64 MiB".into(),
        measured: format!("{after:.1} MiB"),
        met: after <= 64.0,
    });
    report.memory = Some(Memory {
        cached_customers: customers,
        rss_mib_before: before,
        rss_mib_after: after,
    });
    Ok(())
}

/// Load on credit customers with small balances while something breaks; counts what the
/// clients saw.
struct LoadGen {
    stop: Arc<AtomicBool>,
    ok: Arc<Vec<AtomicU64>>,
    refused: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// (restart instant, first success after it)
    recovery: Arc<std::sync::Mutex<(Option<Instant>, Option<Instant>)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadGen {
    fn start(urls: Vec<String>, tokens: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<Vec<AtomicU64>> = Arc::new(tokens.iter().map(|_| AtomicU64::new(0)).collect());
        let refused = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let recovery = Arc::new(std::sync::Mutex::new((None, None)));
        let tokens = Arc::new(tokens);
        let mut tasks = Vec::new();
        for w in 0..16usize {
            let (stop, ok, refused, errors, recovery, tokens, urls) = (
                stop.clone(),
                ok.clone(),
                refused.clone(),
                errors.clone(),
                recovery.clone(),
                tokens.clone(),
                urls.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    i += 7;
                    let c = i % tokens.len();
                    let url = &urls[i % urls.len()];
                    match http
                        .post(url)
                        .bearer_auth(&tokens[c])
                        .body(TICKET)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            ok[c].fetch_add(1, Ordering::SeqCst);
                            let mut r = recovery.lock().unwrap();
                            if r.0.is_some() && r.1.is_none() {
                                r.1 = Some(Instant::now());
                            }
                        }
                        Ok(r) if r.status().is_client_error() => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            // An exhausted customer: do not spin on refusals.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
        Self {
            stop,
            ok,
            refused,
            errors,
            recovery,
            tasks,
        }
    }

    async fn finish(self) -> (Vec<u64>, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        futures_util::future::join_all(self.tasks).await;
        (
            self.ok.iter().map(|c| c.load(Ordering::SeqCst)).collect(),
            self.refused.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
        )
    }
}

async fn drills(
    report: &mut Report,
    stack: &mut Stack,
    tokens: &Tokens,
    extra_port: u16,
    mut redis: Owned,
    postgres: &Postgres,
    smoke: bool,
) -> anyhow::Result<()> {
    let names: Vec<&str> = if smoke {
        vec!["SIGKILL one proxy"]
    } else {
        vec![
            "SIGKILL one proxy",
            "kill and restart the control plane",
            "kill and restart Redis",
            "restart PostgreSQL",
        ]
    };
    let (start, end) = period();
    let urls = vec![
        stack.proxy_url("/api/v1/tickets"),
        format!("http://127.0.0.1:{extra_port}/api/v1/tickets"),
    ];
    let balance = if smoke { 1_000u64 } else { 5_000 };
    for (d, name) in names.into_iter().enumerate() {
        let customers: Vec<String> = (0..10).map(|i| format!("drill{d}-{i}")).collect();
        for c in &customers {
            stack
                .set_subscription(c, "premium", "credit_burndown", "active", start, end)
                .await?;
            stack.grant_credits(c, balance as u32, "1.99").await?;
        }
        let toks: Vec<String> = customers.iter().map(|c| tokens.token(c)).collect();
        let load = LoadGen::start(urls.clone(), toks);
        tokio::time::sleep(Duration::from_millis(if smoke { 500 } else { 2000 })).await;
        let restarted = match name {
            "SIGKILL one proxy" => {
                stack.proxy = None; // SIGKILL
                tokio::time::sleep(Duration::from_secs(1)).await;
                stack.start_proxy().await?;
                Instant::now()
            }
            "kill and restart the control plane" => {
                stack.kill_control_plane();
                tokio::time::sleep(Duration::from_secs(2)).await;
                stack.start_control_plane().await?;
                Instant::now()
            }
            "kill and restart Redis" => {
                let port = redis.port;
                drop(redis);
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis = servers::redis(Some(port))?;
                Instant::now()
            }
            _ => {
                postgres.restart()?;
                Instant::now()
            }
        };
        load.recovery.lock().unwrap().0 = Some(restarted);
        tokio::time::sleep(Duration::from_millis(if smoke { 1000 } else { 3000 })).await;
        let recovery_ms = load
            .recovery
            .lock()
            .unwrap()
            .1
            .map(|t| t.saturating_duration_since(restarted).as_secs_f64() * 1000.0);
        let (ok, refused, errors) = load.finish().await;
        let mut client = 0u64;
        let mut ledger = 0i64;
        let mut lost = 0i64;
        let mut unanswered = 0i64;
        let mut over = 0i64;
        for (c, seen) in customers.iter().zip(&ok) {
            let stored = settled_ledger(stack, c, *seen as i64).await?;
            client += seen;
            ledger += stored;
            lost += (*seen as i64 - stored).max(0);
            unanswered += (stored - *seen as i64).max(0);
            over += (*seen as i64 - balance as i64).max(0);
        }
        report.drills.push(Drill {
            name: name.into(),
            client_2xx: client,
            ledger,
            lost,
            billed_unanswered: unanswered,
            over_limit: over,
            recovery_ms,
            refused_during: refused,
            errors_during: errors,
        });
    }
    drop(redis);
    Ok(())
}

/// The upper bound (ms) of the bucket holding a histogram's 99th percentile.
fn histogram_p99_ms(metrics: &str, name: &str) -> f64 {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(le, _)| le * 1000.0)
        .unwrap_or(0.0)
}
