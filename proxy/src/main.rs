#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    tollgate_runtime::logging::init(&config.log);
    tracing::info!(
        listen = %config.proxy.listen,
        upstream = %config.proxy.upstream,
        "proxy starting"
    );
    let server = tollgate_proxy::app::build(cli.config, config)?;
    server.run_forever()
}
