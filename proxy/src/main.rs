#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use billing_model::settings::LogFormat;
use clap::Parser;
use std::path::PathBuf;
use tollgate_proxy::config::Config;

/// tollgate's reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "tollgate-proxy", version)]
struct Cli {
    /// Configuration file (TOML); `TOLLGATE_*` environment variables override it.
    #[arg(long, default_value = "config/demo.toml")]
    config: PathBuf,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // pingora logs through `log`; tracing-subscriber's default features bridge it.
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    init_logging(&config);
    tracing::info!(
        listen = %config.proxy.listen,
        upstream = %config.proxy.upstream,
        "proxy starting"
    );
    let server = tollgate_proxy::app::build(cli.config, config)?;
    server.run_forever()
}
