use anyhow::Context;
use billing_model::CustomerId;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_control_plane::config::Config;
use tollgate_control_plane::db;
use tollgate_control_plane::startup::{Application, shutdown_signal};
use tollgate_runtime::identity::TokenIssuer;
use tollgate_runtime::logging as telemetry;

/// tollgate's control plane.
#[derive(Debug, Parser)]
#[command(name = "tollgate-control-plane", version)]
struct Cli {
    /// Configuration file (TOML); `TOLLGATE_*` environment variables override it.
    #[arg(long, default_value = "config/demo.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Reconcile Redis usage counters with the ledger once, print the report and exit.
    ReconcileCounters,
    /// Compare Stripe's recent events with the webhook inbox once, apply what was
    /// missing, print how many and exit.
    ReconcileStripe,
    /// Create or update the Stripe products and prices of config/plans.toml (idempotent).
    SyncCatalog,
    /// Print a bearer token for a customer (HS256 with the configured secret).
    Token {
        /// The ticket API's user id.
        #[arg(long)]
        customer: String,
        /// Lifetime of the token in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            telemetry::init(&config.log);
            let app = Application::build(config).await?;
            tracing::info!(api = %app.api_addr(), metrics = %app.metrics_addr(), "control plane listening");
            app.run_until(shutdown_signal()).await
        }
        Command::Migrate => {
            telemetry::init(&config.log);
            let pool = db::connect(&config.control_plane.database_url, 1).await?;
            db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::ReconcileStripe => {
            telemetry::init(&config.log);
            let app = Application::build(one_off(config)).await?;
            let state = app.state();
            let repaired = tollgate_control_plane::jobs::with_lock(
                &state.pool,
                tollgate_control_plane::jobs::STRIPE_SYNC_LOCK,
                || tollgate_control_plane::jobs::stripe_reconciliation::run_once(state),
            )
            .await?;
            let mut applied = 0;
            while tollgate_control_plane::webhooks::apply_next(state).await? {
                applied += 1;
            }
            match repaired {
                Some(n) => println!(
                    "{}",
                    serde_json::json!({ "repaired": n, "applied": applied })
                ),
                None => println!("another replica is reconciling right now"),
            }
            Ok(())
        }
        Command::ReconcileCounters => {
            telemetry::init(&config.log);
            let app = Application::build(one_off(config)).await?;
            let state = app.state();
            let keys = state.publisher.entitlements().keys().clone();
            match tollgate_control_plane::jobs::counters::run_once(
                &state.pool,
                &state.redis,
                &keys,
                &state.metrics,
            )
            .await?
            {
                Some(report) => println!("{}", serde_json::to_string_pretty(&report)?),
                None => println!("another replica is reconciling right now"),
            }
            Ok(())
        }
        Command::SyncCatalog => {
            let settings = config
                .stripe
                .as_ref()
                .context("sync-catalog needs a [stripe] section")?;
            let gateway = tollgate_control_plane::stripe::StripeGateway::new(settings)?;
            let catalog = tollgate_runtime::catalog::load(&config.plans_file)?;
            let report = gateway.sync_catalog(&catalog).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Token {
            customer,
            ttl_seconds,
        } => {
            let customer =
                CustomerId::parse(&customer).map_err(|e| anyhow::anyhow!("--customer: {e}"))?;
            let issuer = TokenIssuer::new(&config.identity)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            println!("{}", issuer.issue(&customer, now, ttl_seconds)?);
            Ok(())
        }
    }
}

/// A one-off command runs beside the service: its listeners take any free port.
fn one_off(mut config: Config) -> Config {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.control_plane.listen = any;
    config.control_plane.metrics_listen = any;
    config
}
