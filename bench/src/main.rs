//! tollgate's benchmark and failure-drill harness.
//!
//! Starts everything on 127.0.0.1 (its own Redis and PostgreSQL, the ticket-API stand-in,
//! nginx, the control plane, two proxies, the Stripe stand-in), runs bounded loads, and
//! writes `latest.json` and `latest.md` to `--out`. Every figure that depends on the
//! machine is reported next to a baseline measured in the same run.
//!
//!   bash bench/run.sh            # the full run (release binaries), a few minutes
//!   bash bench/run.sh --smoke    # seconds: tiny loads, exactness and one drill (CI)

mod instructions;
mod phases;
mod profile;
mod rate;
mod report;
mod servers;
mod wrk;

use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
struct Cli {
    /// Tiny loads, exactness and one drill (for CI); figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    /// Where latest.json and latest.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Also record a cpu-clock profile (`perf record`) of the measured process on every
    /// saturating row; each row's top functions go to `<out>/profiles/<row>.txt`.
    #[arg(long)]
    profile: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scratch = tollgate_e2e::scratch_dir()?;
    // Our own Redis and PostgreSQL, so drills can kill them; the harness library reads
    // these variables. Set before any thread exists.
    let redis = servers::redis(None)?;
    let postgres = servers::Postgres::start(&scratch)?;
    // SAFETY: no other thread runs yet.
    unsafe {
        std::env::set_var(
            "TOLLGATE_TEST_REDIS",
            format!("redis://127.0.0.1:{}", redis.port),
        );
        std::env::set_var("TOLLGATE_TEST_PG", postgres.admin_url());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let profiles = cli.profile.then(|| cli.out.join("profiles"));
    let report = runtime.block_on(phases::run(profiles, cli.smoke, &scratch, redis, &postgres))?;
    std::fs::create_dir_all(&cli.out)?;
    std::fs::write(
        cli.out.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let table = report.markdown();
    std::fs::write(cli.out.join("latest.md"), &table)?;
    println!("{table}");
    let failed = report.failed_checks();
    if !failed.is_empty() {
        anyhow::bail!("checks failed: {failed:?}");
    }
    Ok(())
}
