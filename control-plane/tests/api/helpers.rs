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
    /// The Stripe stand-in this app talks to, when spawned with one.
    pub stripe: Option<stripe_standin::Running>,
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
    spawn_app_with(None).await
}

/// The app with a fresh Stripe stand-in behind it (catalog not synced yet).
pub async fn spawn_app_with_stripe() -> TestApp {
    let standin = stripe_standin::spawn(stripe_standin::Config {
        api_key: Some(STRIPE_KEY.to_owned()),
        ..stripe_standin::Config::default()
    })
    .await
    .expect("stripe stand-in starts");
    spawn_app_with(Some(standin)).await
}

pub const STRIPE_KEY: &str = "sk_test_tollgate_tests";
pub const WEBHOOK_SECRET: &str = "whsec_standin";

/// The app and a Stripe stand-in that delivers its signed events to the app's webhook
/// endpoint (the app's port is chosen first so the stand-in can be told where to send).
pub async fn spawn_app_with_stripe_webhooks() -> TestApp {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    spawn_app_with_stripe_webhooks_and(|_| {}).await
}

/// [`spawn_app_with_stripe_webhooks`] with the configuration adjusted by `edit`.
pub async fn spawn_app_with_stripe_webhooks_and(edit: impl Fn(&mut Config)) -> TestApp {
    // The app's port is chosen before the app binds it (the stand-in must know where to
    // deliver), so another test may take it meanwhile: try again on a fresh port.
    for attempt in 1.. {
        let port = tollgate_e2e::free_port();
        let standin = stripe_standin::spawn(stripe_standin::Config {
            api_key: Some(STRIPE_KEY.to_owned()),
            webhook_url: Some(format!("http://127.0.0.1:{port}/api/v1/webhooks/stripe")),
            webhook_secret: WEBHOOK_SECRET.to_owned(),
            webhook_retry_base: std::time::Duration::from_millis(100),
            ..stripe_standin::Config::default()
        })
        .await
        .expect("stripe stand-in starts");
        match try_spawn_app_on(Some(standin), Some(port), &edit).await {
            Ok(app) => return app,
            Err(e) if attempt < 5 && format!("{e:#}").contains("Address already in use") => {
                continue;
            }
            Err(e) => panic!("application builds: {e:?}"),
        }
    }
    unreachable!("the loop returns or panics")
}

async fn spawn_app_with(stripe: Option<stripe_standin::Running>) -> TestApp {
    spawn_app_on(stripe, None, |_| {}).await
}

/// The app without Stripe, with the configuration adjusted by `edit`.
pub async fn spawn_app_and(edit: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(None, None, edit).await
}

async fn spawn_app_on(
    stripe: Option<stripe_standin::Running>,
    port: Option<u16>,
    edit: impl FnOnce(&mut Config),
) -> TestApp {
    try_spawn_app_on(stripe, port, edit)
        .await
        .expect("application builds")
}

async fn try_spawn_app_on(
    stripe: Option<stripe_standin::Running>,
    port: Option<u16>,
    edit: impl FnOnce(&mut Config),
) -> anyhow::Result<TestApp> {
    let database = TestDatabase::create().await.expect("test database");
    let mut config = test_config(&database.url);
    if let Some(port) = port {
        config.control_plane.listen = format!("127.0.0.1:{port}").parse().unwrap();
    }
    config.stripe = stripe
        .as_ref()
        .map(|s| tollgate_control_plane::config::StripeSettings {
            api_base: s.url.clone(),
            secret_key: STRIPE_KEY.to_owned().into(),
            webhook_secrets: vec![WEBHOOK_SECRET.to_owned().into()],
            webhook_tolerance_seconds: 300,
            test_clock: None,
        });
    edit(&mut config);
    let service_token = config.internal.service_token.expose_secret().to_owned();
    let app = Application::build(config).await?;
    let address = format!("http://{}", app.api_addr());
    let metrics_address = format!("http://{}", app.metrics_addr());
    let pool = app.state().pool.clone();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    Ok(TestApp {
        address,
        metrics_address,
        http: reqwest::Client::new(),
        pool,
        service_token,
        state,
        stripe,
        _shutdown: tx,
        _database: database,
    })
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
        tollgate_runtime::identity::TokenIssuer::new(&settings)
            .unwrap()
            .issue(
                &billing_model::CustomerId::parse(customer).unwrap(),
                now,
                600,
            )
            .unwrap()
    }
}

impl TestApp {
    /// GET from the Stripe stand-in's API (for assertions on what tollgate created).
    pub async fn stripe_get(&self, path: &str) -> serde_json::Value {
        let base = &self.stripe.as_ref().expect("spawned with a stand-in").url;
        self.http
            .get(format!("{base}{path}"))
            .bearer_auth(STRIPE_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn sync_catalog(&self) -> tollgate_control_plane::stripe::CatalogSync {
        self.state
            .stripe
            .as_ref()
            .unwrap()
            .sync_catalog(&self.state.catalog)
            .await
            .unwrap()
    }

    pub async fn post_json(
        &self,
        path: &str,
        customer: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(self.customer_token(customer))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

impl TestApp {
    /// POST a form to the Stripe stand-in (its test helpers).
    pub async fn stripe_post(&self, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let base = &self.stripe.as_ref().expect("spawned with a stand-in").url;
        let r = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(STRIPE_KEY)
            .form(form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Waits until `query` (one bool column) is true, or fails after 10 s.
    pub async fn eventually(&self, what: &str, query: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ok: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
                .fetch_optional(&self.pool)
                .await
                .unwrap()
                .flatten();
            if ok == Some(true) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` to the webhook endpoint with the given Stripe-Signature header.
    pub async fn deliver(&self, body: &str, signature: Option<String>) -> reqwest::Response {
        let mut r = self
            .http
            .post(self.url("/api/v1/webhooks/stripe"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(sig) = signature {
            r = r.header("stripe-signature", sig);
        }
        r.send().await.unwrap()
    }
}

impl TestApp {
    /// The customer's entitlement snapshot, as a proxy would fetch it.
    pub async fn snapshot(&self, customer: &str) -> serde_json::Value {
        self.http
            .get(self.url(&format!("/internal/v1/entitlements/{customer}")))
            .bearer_auth(&self.service_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET `path` with `customer`'s token; the JSON body.
    pub async fn get_as(&self, customer: &str, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .bearer_auth(self.customer_token(customer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST /api/v1/billing/checkout` as `customer`; returns the session id.
    pub async fn checkout(&self, customer: &str, body: &serde_json::Value) -> String {
        let r = self
            .post_json("/api/v1/billing/checkout", customer, body)
            .await;
        let status = r.status();
        let answer: serde_json::Value = r.json().await.unwrap_or_default();
        answer["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a checkout session id, not {status} {answer}"))
            .to_owned()
    }

    /// Plays the customer paying for `session` on the stand-in.
    pub async fn pay(&self, session: &str) {
        self.stripe_post(
            &format!("/v1/test_helpers/checkout/sessions/{session}/complete"),
            &[],
        )
        .await;
    }
}

impl TestApp {
    /// A Stripe customer for `customer` living on a new test clock frozen at `frozen`
    /// (unix seconds), recorded as theirs before any checkout; returns the clock id.
    pub async fn customer_on_clock(&self, customer: &str, frozen: i64) -> String {
        let clock = self
            .stripe_post(
                "/v1/test_helpers/test_clocks",
                &[("frozen_time", &frozen.to_string())],
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let stripe_customer = self
            .stripe_post(
                "/v1/customers",
                &[
                    ("test_clock", clock.as_str()),
                    ("metadata[tollgate_customer_id]", customer),
                ],
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        sqlx::query("INSERT INTO customers (customer_id, stripe_customer_id) VALUES ($1, $2)")
            .bind(customer)
            .bind(&stripe_customer)
            .execute(&self.pool)
            .await
            .unwrap();
        clock
    }

    /// Moves a test clock to `to` (unix seconds); renewals, retries and finalizations
    /// happen on the way.
    pub async fn advance(&self, clock: &str, to: i64) {
        self.stripe_post(
            &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
            &[("frozen_time", &to.to_string())],
        )
        .await;
    }

    /// Subscribes `customer` to `plan` through Checkout and waits until it is stored;
    /// returns the Stripe subscription id.
    pub async fn subscribe_via_checkout(&self, customer: &str, plan: &str) -> String {
        let session = self
            .checkout(
                customer,
                &serde_json::json!({"plan": plan, "billing_model": "fixed_fee",
                    "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
            )
            .await;
        self.pay(&session).await;
        self.eventually(
            "the subscription",
            &format!(
                "SELECT bool_or(status = 'active') FROM subscriptions WHERE customer_id = '{customer}'"
            ),
        )
        .await;
        self.stripe_get(&format!("/v1/checkout/sessions/{session}"))
            .await["subscription"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends `method path` with `customer`'s token and an optional JSON body.
    pub async fn call_as(
        &self,
        customer: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.customer_token(customer));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }
}

impl TestApp {
    /// Stores `units` one-ticket usage events of `customer` for the period starting at
    /// `start` (RFC 3339 strings, as the snapshot gives them).
    pub async fn ingest_usage(
        &self,
        customer: &str,
        units: usize,
        start: &serde_json::Value,
        end: &serde_json::Value,
    ) {
        self.ingest_usage_admitted_on(customer, units, start, end, None)
            .await
    }

    /// [`Self::ingest_usage`], the events saying which billing model admitted them (as a
    /// proxy's do), e.g. `Some("fixed_fee")`.
    pub async fn ingest_usage_admitted_on(
        &self,
        customer: &str,
        units: usize,
        start: &serde_json::Value,
        end: &serde_json::Value,
        billing_model: Option<&str>,
    ) {
        let events: Vec<serde_json::Value> = (0..units)
            .map(|_| {
                let mut e = serde_json::json!({
                    "event_id": uuid::Uuid::now_v7(), "customer_id": customer,
                    "usage_type": "ticket_creation", "quantity": 1,
                    "occurred_at": start, "period_start": start, "period_end": end,
                });
                if let Some(model) = billing_model {
                    e["billing_model"] = serde_json::json!(model);
                }
                e
            })
            .collect();
        let r = self
            .http
            .post(self.url("/internal/v1/usage/batch"))
            .bearer_auth(&self.service_token)
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "usage batch");
    }
}
