//! The run's figures, as JSON and as the markdown table the README shows.

use crate::wrk::Load;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub machine: String,
    pub started_at: String,
    pub throughput: Vec<Row>,
    /// Instructions per request under callgrind (full runs, where valgrind is present).
    pub instructions: Vec<Instructions>,
    pub goals: Vec<Goal>,
    pub exactness: Vec<Exactness>,
    pub ingestion: Option<Rate>,
    pub webhooks: Vec<Webhooks>,
    pub propagation: Option<Propagation>,
    pub memory: Option<Memory>,
    pub drills: Vec<Drill>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub load: Load,
    /// p99 minus the direct baseline's p99 (same method), in ms.
    pub added_p99_ms: Option<f64>,
    /// CPU time of the proxy process (tollgate, bare pingora or nginx) per request, µs.
    pub cpu_us_per_request: Option<f64>,
    /// CPU time per request of the processes behind it (Redis, the control plane,
    /// PostgreSQL), µs, measured over the same row.
    pub cpu_us_behind: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Instructions {
    pub name: String,
    /// Requests counted (after a warm-up), one at a time on one connection.
    pub requests: u32,
    pub per_request: f64,
    /// This row's count over bare pingora's for the same method.
    pub vs_bare_pingora: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Exactness {
    pub name: String,
    pub limit: u64,
    pub requests: u64,
    pub succeeded: u64,
    pub ledger: i64,
    pub redis: i64,
    pub exact: bool,
}

#[derive(Debug, Serialize)]
pub struct Rate {
    pub events: u64,
    pub seconds: f64,
    pub per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct Webhooks {
    /// How the events were spread over subscriptions.
    pub shape: String,
    pub events: u64,
    pub applied_per_second: f64,
    pub receive_p99_ms: f64,
    /// Applying one event (re-fetch from Stripe + transaction), from the control plane's
    /// histogram: the upper bound of the bucket holding the 99th percentile.
    pub apply_p99_ms: f64,
    /// Receipt to applied, including the time queued behind earlier events.
    pub end_to_end_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Propagation {
    pub trials: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub cached_customers: u64,
    pub rss_mib_before: f64,
    pub rss_mib_after: f64,
}

#[derive(Debug, Serialize)]
pub struct Drill {
    pub name: String,
    pub client_2xx: u64,
    pub ledger: i64,
    /// 2xx responses the clients saw with no ledger record (must be 0).
    pub lost: i64,
    /// Ledger records without a 2xx at the client: the upstream created the ticket but the
    /// response died with the killed process (billed; at most the requests in flight).
    pub billed_unanswered: i64,
    /// Units admitted beyond the customers' balances (what the failure policy allowed).
    pub over_limit: i64,
    /// From the restart until the first success.
    pub recovery_ms: Option<f64>,
    pub refused_during: u64,
    pub errors_during: u64,
}

impl Report {
    /// Checks that must hold in every mode (exactness, nothing lost); goals on speed are
    /// reported, not enforced (the machine is shared and noisy).
    pub fn failed_checks(&self) -> Vec<String> {
        let mut failed: Vec<String> = self
            .exactness
            .iter()
            .filter(|e| !e.exact)
            .map(|e| format!("exactness: {}", e.name))
            .collect();
        failed.extend(
            self.drills
                .iter()
                .filter(|d| d.lost != 0 || d.billed_unanswered < 0 || d.billed_unanswered > 16)
                .map(|d| format!("drill lost or over-counted usage: {}", d.name)),
        );
        failed
    }

    pub fn markdown(&self) -> String {
        let mut md = format!(
            "Benchmark ({}) on {}, {}.\n\n",
            self.mode, self.machine, self.started_at
        );
        md.push_str(
            "| row | req/s | p50 ms | p99 ms | p99.9 ms | added p99 ms | CPU µs/req | Redis / CP / PG µs/req | non-2xx |\n",
        );
        md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for r in &self.throughput {
            let behind = if r.cpu_us_behind.is_empty() {
                "—".to_owned()
            } else {
                r.cpu_us_behind
                    .iter()
                    .map(|(_, us)| format!("{us:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            md.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                r.name,
                r.load.rps,
                r.load.p50_us / 1000.0,
                r.load.p99_us / 1000.0,
                r.load.p999_us / 1000.0,
                r.added_p99_ms
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "—".into()),
                r.cpu_us_per_request
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "—".into()),
                behind,
                r.load.non_2xx + r.load.errors,
            ));
        }
        if !self.instructions.is_empty() {
            md.push_str("\n| instructions per request (callgrind, every thread of the process) | requests | instructions | vs bare pingora |\n| --- | ---: | ---: | ---: |\n");
            for i in &self.instructions {
                md.push_str(&format!(
                    "| {} | {} | {:.0} | {} |\n",
                    i.name,
                    i.requests,
                    i.per_request,
                    i.vs_bare_pingora
                        .map(|v| format!("{v:.2}×"))
                        .unwrap_or_else(|| "—".into())
                ));
            }
        }
        md.push_str("\n| goal | target | measured | met |\n| --- | --- | --- | --- |\n");
        for g in &self.goals {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                g.name,
                g.target,
                g.measured,
                if g.met { "yes" } else { "**no**" }
            ));
        }
        md.push_str("\n| exactness | limit | requests | 2xx | ledger | Redis | exact |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for e in &self.exactness {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                e.name, e.limit, e.requests, e.succeeded, e.ledger, e.redis, e.exact
            ));
        }
        if !self.drills.is_empty() {
            md.push_str("\n| drill | client 2xx | ledger | lost | billed, response lost in the crash | over limit | refused | errors | recovery ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for d in &self.drills {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    d.name,
                    d.client_2xx,
                    d.ledger,
                    d.lost,
                    d.billed_unanswered,
                    d.over_limit,
                    d.refused_during,
                    d.errors_during,
                    d.recovery_ms
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or_else(|| "—".into())
                ));
            }
        }
        md
    }
}
