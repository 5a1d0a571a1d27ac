use billing_model::settings::LogFormat;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::path::PathBuf;
use tollgate_proxy::admin::AdminApp;
use tollgate_proxy::config::Config;
use tollgate_proxy::service::TollgateProxy;

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

    let conf = ServerConf {
        threads: config.proxy.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.proxy.drain_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        TollgateProxy::new(config.proxy.upstream),
    );
    proxy.add_tcp(&config.proxy.listen.to_string());

    let mut admin = pingora::services::listening::Service::new("admin".to_owned(), AdminApp);
    admin.add_tcp(&config.proxy.metrics_listen.to_string());

    server.add_service(proxy);
    server.add_service(admin);
    tracing::info!(listen = %config.proxy.listen, upstream = %config.proxy.upstream, "proxy starting");
    server.run_forever()
}
