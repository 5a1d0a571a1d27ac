//! An open-loop load generator: requests at a fixed rate, whatever the server does, so
//! added latency is measured below saturation (wrk measures at saturation only).
//! Latency counts from when a request was *due*, not when it was sent, so a stall that
//! delays the sender shows up in the figures (no coordinated omission).

use crate::wrk::{Load, Request};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Requests in flight at most; a rate the server cannot hold shows up as errors.
const MAX_IN_FLIGHT: usize = 512;

pub async fn run(request: &Request<'_>, rate: u32, seconds: u64) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(10))
        .build()?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
    let url = request.url.to_owned();
    let bearer = request.bearer.map(str::to_owned);
    let body = request.body.map(str::to_owned);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let total = u64::from(rate) * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Too many in flight: counted as an error, never queued (queueing would hide
            // the stall).
            tasks.push(tokio::spawn(async { (None, false) }));
            continue;
        };
        let mut builder = client.request(method.clone(), &url);
        if let Some(token) = &bearer {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = &body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.clone());
        }
        tasks.push(tokio::spawn(async move {
            let answer = builder.send().await;
            let ok = match answer {
                Ok(r) => {
                    let ok = r.status().is_success();
                    let _ = r.bytes().await;
                    Some(ok)
                }
                Err(_) => None,
            };
            drop(permit);
            (ok.map(|_| due.elapsed()), ok.unwrap_or(false))
        }));
    }
    let mut latencies_us = Vec::with_capacity(total as usize);
    let (mut errors, mut non_2xx) = (0u64, 0u64);
    for task in tasks {
        match task.await? {
            (Some(latency), ok) => {
                latencies_us.push(latency.as_secs_f64() * 1e6);
                if !ok {
                    non_2xx += 1;
                }
            }
            (None, _) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_us.sort_by(f64::total_cmp);
    let pick = |p: f64| crate::phases::percentile(&latencies_us, p);
    Ok(Load {
        requests: total,
        seconds: elapsed,
        rps: total as f64 / elapsed.max(1e-9),
        errors,
        non_2xx,
        p50_us: pick(50.0),
        p99_us: pick(99.0),
        p999_us: pick(99.9),
    })
}
