//! `stripe-standin`: a stateful Stripe stand-in for tests.
//!
//! ```text
//! stripe-standin --listen 127.0.0.1:12111 \
//!   --webhook-url http://127.0.0.1:8081/api/v1/webhooks/stripe --webhook-secret whsec_... \
//!   [--api-key sk_test_...] [--draft-finalize-delay 3600]
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "stripe-standin",
    about = "A stateful Stripe stand-in speaking Stripe's HTTP API shapes"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "STRIPE_STANDIN_LISTEN", default_value = "127.0.0.1:12111")]
    listen: SocketAddr,
    /// Where to POST events; without it nothing is delivered.
    #[arg(long, env = "STRIPE_STANDIN_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Endpoint secret webhooks are signed with.
    #[arg(
        long,
        env = "STRIPE_STANDIN_WEBHOOK_SECRET",
        default_value = "whsec_standin"
    )]
    webhook_secret: String,
    /// When given, requests must carry `Authorization: Bearer <key>`.
    #[arg(long, env = "STRIPE_STANDIN_API_KEY")]
    api_key: Option<String>,
    /// Seconds of simulated time between a renewal's `invoice.created` and its finalization.
    #[arg(long, default_value_t = 3600)]
    draft_finalize_delay: i64,
    /// Delivery attempts per event.
    #[arg(long, default_value_t = 8)]
    webhook_max_attempts: u32,
    /// First retry delay in milliseconds (doubles per attempt, capped at 10 s).
    #[arg(long, default_value_t = 500)]
    webhook_retry_base_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = stripe_standin::Config {
        listen: cli.listen,
        webhook_url: cli.webhook_url,
        webhook_secret: cli.webhook_secret,
        api_key: cli.api_key,
        draft_finalize_delay: cli.draft_finalize_delay,
        webhook_max_attempts: cli.webhook_max_attempts,
        webhook_retry_base: Duration::from_millis(cli.webhook_retry_base_ms),
        webhook_max_backoff: Duration::from_secs(10),
    };
    let running = stripe_standin::spawn(config).await?;
    tracing::info!(url = %running.url, "stripe stand-in listening");
    tokio::select! {
        _ = running.task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
