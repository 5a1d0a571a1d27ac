use secrecy::ExposeSecret;
use std::path::Path;
use tollgate_control_plane::config::Config;
use tollgate_control_plane::startup::Application;
use tollgate_e2e::{TestDatabase, workspace_root};

/// A running control plane on ephemeral ports with its own database.
pub struct TestApp {
    pub address: String,
    pub metrics_address: String,
    pub http: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub service_token: String,
    pub state: tollgate_control_plane::http::AppState,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _database: TestDatabase,
}

/// The demo configuration with this test's ports, database and key prefix.
pub fn test_config(database_url: &str) -> Config {
    let root = workspace_root();
    let mut config = Config::load(&root.join("config/demo.toml")).expect("demo config loads");
    config.plans_file = root.join("config/plans.toml");
    config.control_plane.listen = "127.0.0.1:0".parse().unwrap();
    config.control_plane.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.control_plane.database_url = database_url.to_owned().into();
    config.control_plane.database_max_connections = 5;
    config.redis.url = tollgate_e2e::redis_url().into();
    config.redis.key_prefix = format!("tg:test:{}:", uuid::Uuid::new_v4().simple());
    config
}

pub async fn spawn_app() -> TestApp {
    let database = TestDatabase::create().await.expect("test database");
    let config = test_config(&database.url);
    let service_token = config.internal.service_token.expose_secret().to_owned();
    let app = Application::build(config)
        .await
        .expect("application builds");
    let address = format!("http://{}", app.api_addr());
    let metrics_address = format!("http://{}", app.metrics_addr());
    let pool = app.state().pool.clone();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        address,
        metrics_address,
        http: reqwest::Client::new(),
        pool,
        service_token,
        state,
        _shutdown: tx,
        _database: database,
    }
}

/// A database with the schema applied and nothing else running.
pub async fn migrated_database() -> (TestDatabase, sqlx::PgPool) {
    let database = TestDatabase::create().await.expect("test database");
    let pool = sqlx::PgPool::connect(&database.url).await.expect("connect");
    tollgate_control_plane::db::migrate(&pool)
        .await
        .expect("migrations apply on an empty database");
    (database, pool)
}

pub fn repo_file(rel: &str) -> std::path::PathBuf {
    workspace_root().join(Path::new(rel))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A customer's bearer token, signed with the demo configuration's secret.
    pub fn customer_token(&self, customer: &str) -> String {
        let settings = test_config("postgres://unused").identity;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        billing_model::identity::TokenIssuer::new(&settings)
            .unwrap()
            .issue(
                &billing_model::CustomerId::parse(customer).unwrap(),
                now,
                600,
            )
            .unwrap()
    }
}
