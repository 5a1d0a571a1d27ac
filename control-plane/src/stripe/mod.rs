//! The only place that talks to Stripe, through async-stripe. The same code talks to real
//! Stripe and to the project's stand-in: only `stripe.api_base` and the keys differ.
//!
//! Every mutating call carries an idempotency key derived from what it does, so a
//! retried API call never creates a second customer, session or charge.

mod catalog;

pub use catalog::{CatalogSync, lookup_key, monthly_plan_of};

use crate::config::StripeSettings;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionPaymentIntentData,
    CreateCheckoutSessionSubscriptionData, RetrieveCheckoutSession,
};
use stripe_core::customer::CreateCustomer;
use stripe_product::price::ListPrice;
use stripe_shared::CheckoutSessionMode;
use tokio::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("stripe: {0}")]
    Stripe(#[from] stripe::StripeError),
    #[error("no active Stripe price with lookup key {0}: run `sync-catalog`")]
    MissingPrice(String),
    #[error("stripe answered without {0}")]
    Incomplete(&'static str),
}

impl GatewayError {
    /// Stripe declined the payment (HTTP 402): the customer must fix their card.
    pub fn is_declined(&self) -> bool {
        matches!(
            self,
            GatewayError::Stripe(stripe::StripeError::Stripe(_, 402))
        )
    }

    /// Another request with the same idempotency key is still running (HTTP 409
    /// `idempotency_error`): it will have the answer.
    pub fn is_key_in_use(&self) -> bool {
        matches!(
            self,
            GatewayError::Stripe(stripe::StripeError::Stripe(e, 409))
                if e.type_ == stripe_shared::ApiErrorsType::IdempotencyError
        )
    }

    /// Stripe refused the request as invalid for the object's state (HTTP 400
    /// `invalid_request_error`): nothing was done, so another request may be made
    /// instead. (An `idempotency_error` is not one: its key may have done something.)
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            GatewayError::Stripe(stripe::StripeError::Stripe(e, 400))
                if e.type_ == stripe_shared::ApiErrorsType::InvalidRequestError
        )
    }
}

/// What asking Stripe for a refund did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refunded {
    /// The payment went back now (or a replay of the request that did it).
    Now,
    /// Nothing was left to refund: refunded before, by tollgate under a key Stripe no
    /// longer keeps (24 h), or in the Dashboard.
    Already,
}

/// A price as tollgate uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRef {
    pub id: String,
    pub unit_amount: i64,
}

/// A hosted page the customer is sent to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostedSession {
    pub id: String,
    pub url: String,
}

/// What a Checkout Session sells.
pub enum Purchase<'a> {
    /// A subscription to a plan's monthly price.
    Subscription { price: &'a PriceRef },
    /// `quantity` prepaid credits at the credit price.
    Credits { price: &'a PriceRef, quantity: u64 },
}

pub struct StripeGateway {
    client: stripe::Client,
    /// Prices by lookup key; prices are immutable in Stripe, so caching is safe (a
    /// catalog change makes a new price and moves the lookup key: `forget_prices`).
    prices: RwLock<HashMap<String, PriceRef>>,
    /// Customers created by this deployment join this test clock (tests and demos).
    test_clock: Option<String>,
    /// Stripe API latency by operation (registered with the control plane's metrics).
    pub api_seconds: prometheus::HistogramVec,
}

/// Times a Stripe call into a histogram labelled with the operation.
pub trait Timed: std::future::Future + Sized {
    fn timed(
        self,
        histogram: &prometheus::HistogramVec,
        operation: &'static str,
    ) -> impl std::future::Future<Output = Self::Output> {
        let histogram = histogram.with_label_values(&[operation]);
        async move {
            let started = std::time::Instant::now();
            let out = self.await;
            histogram.observe(started.elapsed().as_secs_f64());
            out
        }
    }
}

impl<F: std::future::Future> Timed for F {}

/// Every operation label of `tollgate_cp_stripe_api_seconds`.
pub const OPERATIONS: &[&str] = &[
    "price",
    "create_customer",
    "checkout",
    "retrieve_checkout",
    "portal",
    "preview_price_change",
    "change_price_now",
    "set_cancel_at_period_end",
    "cancel_now",
    "subscription_item",
    "default_payment_method",
    "create_subscription",
    "set_price_from_next_period",
    "cancel_for_credits",
    "upcoming_invoice",
    "add_invoice_item",
    "create_invoice",
    "finalize_invoice",
    "pay_invoice",
    "retrieve_subscription",
    "retrieve_invoice",
    "list_events",
    "refund",
    "void_invoice",
    "list_invoice_items",
];

/// An idempotency key for `parts`: the same operation on the same inputs gets the same
/// key, so Stripe replays instead of repeating it.
pub fn idempotency(parts: &[&str]) -> RequestStrategy {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let key = format!("tollgate-{}", hex::encode(hash.finalize()));
    match IdempotencyKey::new(&key) {
        Ok(k) => RequestStrategy::Idempotent(k),
        // A 73-character ASCII key is always valid; keep going without one rather than
        // failing the request.
        Err(_) => RequestStrategy::Once,
    }
}

/// The idempotency key of a purchase intent ([`crate::intents`]), used as it is.
pub fn intent_key(key: &str) -> RequestStrategy {
    match IdempotencyKey::new(key) {
        Ok(k) => RequestStrategy::Idempotent(k),
        // Intent keys are short ASCII; keep going without one rather than fail.
        Err(_) => RequestStrategy::Once,
    }
}

/// Where a Checkout Session stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Open,
    /// Paid; in subscription mode, the subscription it created.
    Complete {
        subscription: Option<String>,
    },
    Expired,
}

impl StripeGateway {
    pub fn new(settings: &StripeSettings) -> Result<Self, GatewayError> {
        let client = stripe::ClientBuilder::new(settings.secret_key.expose_secret())
            .url(settings.api_base.clone())
            .build()?;
        Ok(Self {
            client,
            prices: RwLock::new(HashMap::new()),
            test_clock: settings.test_clock.clone(),
            api_seconds: prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "stripe_api_seconds",
                    "Stripe API call latency by operation",
                )
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["operation"],
            )
            .map_err(|_| GatewayError::Incomplete("metrics"))?,
        })
    }

    /// The active price with `key`.
    pub async fn price(&self, key: &str) -> Result<PriceRef, GatewayError> {
        if let Some(p) = self.prices.read().await.get(key) {
            return Ok(p.clone());
        }
        let list = ListPrice::new()
            .lookup_keys(vec![key.to_owned()])
            .active(true)
            .send(&self.client)
            .timed(&self.api_seconds, "price")
            .await?;
        let price = list
            .data
            .into_iter()
            .find(|p| p.lookup_key.as_deref() == Some(key))
            .ok_or_else(|| GatewayError::MissingPrice(key.to_owned()))?;
        let price = PriceRef {
            id: price.id.as_str().to_owned(),
            unit_amount: price
                .unit_amount
                .ok_or(GatewayError::Incomplete("unit_amount"))?,
        };
        self.prices
            .write()
            .await
            .insert(key.to_owned(), price.clone());
        Ok(price)
    }

    pub async fn forget_prices(&self) {
        self.prices.write().await.clear();
    }

    /// Creates the Stripe customer for a ticket-API user (once: the key is the user id).
    pub async fn create_customer(&self, customer_id: &str) -> Result<String, GatewayError> {
        let mut request = CreateCustomer::new()
            .description(format!("tollgate customer {customer_id}"))
            .metadata(HashMap::from([(
                "tollgate_customer_id".to_owned(),
                customer_id.to_owned(),
            )]));
        if let Some(clock) = &self.test_clock {
            request = request.test_clock(clock.as_str());
        }
        let customer = request
            .customize()
            .request_strategy(idempotency(&["customer", customer_id]))
            .send(&self.client)
            .timed(&self.api_seconds, "create_customer")
            .await?;
        Ok(customer.id.as_str().to_owned())
    }

    /// A Checkout Session under the purchase intent's idempotency key.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkout(
        &self,
        stripe_customer: &str,
        customer_id: &str,
        purchase: Purchase<'_>,
        metadata: HashMap<String, String>,
        success_url: &str,
        cancel_url: &str,
        idempotency_key: &str,
    ) -> Result<HostedSession, GatewayError> {
        let (mode, price, quantity) = match purchase {
            Purchase::Subscription { price } => (CheckoutSessionMode::Subscription, price, 1),
            Purchase::Credits { price, quantity } => {
                (CheckoutSessionMode::Payment, price, quantity)
            }
        };
        let mut request = CreateCheckoutSession::new()
            .mode(mode.clone())
            .customer(stripe_customer)
            .client_reference_id(customer_id)
            .line_items(vec![CreateCheckoutSessionLineItems {
                price: Some(price.id.clone()),
                quantity: Some(quantity),
                ..CreateCheckoutSessionLineItems::new()
            }])
            .success_url(success_url)
            .cancel_url(cancel_url)
            .metadata(metadata.clone());
        request = match mode {
            CheckoutSessionMode::Subscription => {
                use stripe_checkout::checkout_session::{
                    CreateCheckoutSessionSubscriptionDataBillingMode as Mode,
                    CreateCheckoutSessionSubscriptionDataBillingModeFlexible as Flexible,
                    CreateCheckoutSessionSubscriptionDataBillingModeFlexibleProrationDiscounts as Discounts,
                    CreateCheckoutSessionSubscriptionDataBillingModeType as ModeType,
                };
                request.subscription_data(CreateCheckoutSessionSubscriptionData {
                    metadata: Some(metadata),
                    // Named, not left to the account's API version: see `create_subscription`.
                    billing_mode: Some(Mode {
                        flexible: Some(Flexible {
                            proration_discounts: Some(Discounts::Included),
                        }),
                        type_: ModeType::Flexible,
                    }),
                    ..CreateCheckoutSessionSubscriptionData::new()
                })
            }
            _ => request.payment_intent_data(CreateCheckoutSessionPaymentIntentData {
                metadata: Some(metadata),
                ..CreateCheckoutSessionPaymentIntentData::new()
            }),
        };
        let session = request
            .customize()
            .request_strategy(intent_key(idempotency_key))
            .send(&self.client)
            .timed(&self.api_seconds, "checkout")
            .await?;
        Ok(HostedSession {
            id: session.id.as_str().to_owned(),
            url: session.url.ok_or(GatewayError::Incomplete("url"))?,
        })
    }

    /// Where a Checkout Session stands now (a replayed create answers it as it was),
    /// with its hosted page while it is open.
    pub async fn checkout_session_state(
        &self,
        id: &str,
    ) -> Result<(SessionState, Option<HostedSession>), GatewayError> {
        use stripe_shared::CheckoutSessionStatus;
        let session = RetrieveCheckoutSession::new(id)
            .send(&self.client)
            .timed(&self.api_seconds, "retrieve_checkout")
            .await?;
        let state = match session.status {
            Some(CheckoutSessionStatus::Complete) => SessionState::Complete {
                subscription: session
                    .subscription
                    .as_ref()
                    .map(|s| s.id().as_str().to_owned()),
            },
            Some(CheckoutSessionStatus::Expired) => SessionState::Expired,
            _ => SessionState::Open,
        };
        let hosted = session.url.map(|url| HostedSession {
            id: session.id.as_str().to_owned(),
            url,
        });
        Ok((state, hosted))
    }

    /// The payment intent that paid a Checkout Session, as Stripe holds it now (a
    /// webhook's copy of the session may predate it).
    pub async fn checkout_payment_intent(&self, id: &str) -> Result<Option<String>, GatewayError> {
        let session = RetrieveCheckoutSession::new(id)
            .send(&self.client)
            .timed(&self.api_seconds, "retrieve_checkout")
            .await?;
        Ok(session
            .payment_intent
            .as_ref()
            .map(|pi| pi.id().as_str().to_owned()))
    }

    /// A Customer Portal session.
    pub async fn portal(
        &self,
        stripe_customer: &str,
        return_url: &str,
    ) -> Result<HostedSession, GatewayError> {
        let session = CreateBillingPortalSession::new()
            .customer(stripe_customer)
            .return_url(return_url)
            .send(&self.client)
            .timed(&self.api_seconds, "portal")
            .await?;
        Ok(HostedSession {
            id: session.id.as_str().to_owned(),
            url: session.url,
        })
    }
}

/// The two proration lines Stripe invoices for an immediate price change, in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProrationPreview {
    pub unused_old_cents: i64,
    pub remaining_new_cents: i64,
    /// What the change itself costs (the proration lines).
    pub prorations_cents: i64,
    /// What the change's invoice charges (pending items and balance included).
    pub total_cents: i64,
}

impl StripeGateway {
    /// What changing `item` of `subscription` to `price` at `proration_date` invoices now.
    pub async fn preview_price_change(
        &self,
        subscription: &str,
        item: &str,
        price: &str,
        proration_date: i64,
    ) -> Result<ProrationPreview, GatewayError> {
        use stripe_billing::invoice::{
            CreatePreviewInvoice, CreatePreviewInvoiceSubscriptionDetails,
            CreatePreviewInvoiceSubscriptionDetailsItems,
            CreatePreviewInvoiceSubscriptionDetailsProrationBehavior,
        };
        let preview = CreatePreviewInvoice::new()
            .subscription(subscription)
            .subscription_details(CreatePreviewInvoiceSubscriptionDetails {
                items: Some(vec![CreatePreviewInvoiceSubscriptionDetailsItems {
                    id: Some(item.to_owned()),
                    price: Some(price.to_owned()),
                    ..CreatePreviewInvoiceSubscriptionDetailsItems::new()
                }]),
                proration_date: Some(proration_date),
                proration_behavior: Some(
                    CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::AlwaysInvoice,
                ),
                ..CreatePreviewInvoiceSubscriptionDetails::new()
            })
            .send(&self.client)
            .timed(&self.api_seconds, "preview_price_change")
            .await?;
        // The proration lines alone say what the change costs; a preview also shows
        // pending invoice items (an overage true-up waiting for the next invoice) and
        // applies the customer's balance, which the change's invoice then also carries:
        // `total_cents` is what is charged, `prorations_cents` what the change costs.
        let (mut unused, mut remaining) = (0, 0);
        for line in proration_lines(&preview) {
            if line.amount < 0 {
                unused += line.amount;
            } else {
                remaining += line.amount;
            }
        }
        Ok(ProrationPreview {
            unused_old_cents: unused,
            remaining_new_cents: remaining,
            prorations_cents: unused + remaining,
            total_cents: preview.amount_due,
        })
    }

    /// What Stripe credits for the unused time of `subscription` if it ended now (its
    /// test clock's now on a clock), in cents (positive): the proration lines of a
    /// cancel-now preview. In flexible billing mode Stripe computes them from what was
    /// debited for the period (a negotiated price or an earlier mid-period change
    /// included; a discount too, as tollgate's subscriptions include discounts in
    /// proration amounts), so this is what the customer paid for and has not used, not
    /// the list fee's share. No `proration_date`: Stripe accepts one only with item or
    /// trial changes. Pending proration items already on the subscription would be
    /// counted too; tollgate leaves none (upgrades invoice at once, downgrades do not
    /// prorate).
    pub async fn unused_time_credit(&self, subscription: &str) -> Result<i64, GatewayError> {
        use stripe_billing::invoice::{
            CreatePreviewInvoice, CreatePreviewInvoiceSubscriptionDetails,
            CreatePreviewInvoiceSubscriptionDetailsProrationBehavior,
        };
        let preview = CreatePreviewInvoice::new()
            .subscription(subscription)
            .subscription_details(CreatePreviewInvoiceSubscriptionDetails {
                cancel_now: Some(true),
                proration_behavior: Some(
                    CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::CreateProrations,
                ),
                ..CreatePreviewInvoiceSubscriptionDetails::new()
            })
            .send(&self.client)
            .timed(&self.api_seconds, "unused_time_credit")
            .await?;
        let credited: i64 = proration_lines(&preview)
            .map(|line| line.amount)
            .filter(|amount| *amount < 0)
            .sum();
        Ok(-credited)
    }

    /// Changes `item` to `price` now, invoicing the proration at once; returns the id of
    /// the invoice Stripe raised.
    pub async fn change_price_now(
        &self,
        subscription: &str,
        item: &str,
        price: &str,
        proration_date: i64,
    ) -> Result<Option<String>, GatewayError> {
        use stripe_billing::subscription::{
            UpdateSubscription, UpdateSubscriptionItems, UpdateSubscriptionProrationBehavior,
        };
        let updated = UpdateSubscription::new(subscription)
            .items(vec![UpdateSubscriptionItems {
                id: Some(item.to_owned()),
                price: Some(price.to_owned()),
                ..UpdateSubscriptionItems::new()
            }])
            .proration_behavior(UpdateSubscriptionProrationBehavior::AlwaysInvoice)
            .proration_date(proration_date)
            .customize()
            .request_strategy(idempotency(&[
                "change_price",
                subscription,
                price,
                &proration_date.to_string(),
            ]))
            .send(&self.client)
            .timed(&self.api_seconds, "change_price_now")
            .await?;
        Ok(updated
            .latest_invoice
            .and_then(|i| i.id().as_ref().map(|id| id.as_str().to_owned())))
    }

    /// Sets or clears cancellation at the period end.
    pub async fn set_cancel_at_period_end(
        &self,
        subscription: &str,
        cancel: bool,
        version: i64,
    ) -> Result<(), GatewayError> {
        use stripe_billing::subscription::UpdateSubscription;
        UpdateSubscription::new(subscription)
            .cancel_at_period_end(cancel)
            .customize()
            .request_strategy(idempotency(&[
                "cancel_at_period_end",
                subscription,
                if cancel { "1" } else { "0" },
                &version.to_string(),
            ]))
            .send(&self.client)
            .timed(&self.api_seconds, "set_cancel_at_period_end")
            .await?;
        Ok(())
    }

    /// Cancels at once (access ends now; Stripe sends customer.subscription.deleted).
    pub async fn cancel_now(&self, subscription: &str) -> Result<(), GatewayError> {
        use stripe_billing::subscription::CancelSubscription;
        CancelSubscription::new(subscription)
            .customize()
            .request_strategy(idempotency(&["cancel", subscription]))
            .send(&self.client)
            .timed(&self.api_seconds, "cancel_now")
            .await?;
        Ok(())
    }

    /// The subscription's first item, its period, and the subscription's own time.
    pub async fn subscription_item(
        &self,
        subscription: &str,
    ) -> Result<SubscriptionItem, GatewayError> {
        use stripe_billing::subscription::RetrieveSubscription;
        let sub = RetrieveSubscription::new(subscription)
            .expand(["test_clock".to_owned()])
            .send(&self.client)
            .timed(&self.api_seconds, "subscription_item")
            .await?;
        let item = sub
            .items
            .data
            .first()
            .ok_or(GatewayError::Incomplete("subscription items"))?;
        // A subscription on a test clock lives at the clock's time (Stripe prorates and
        // renews it there), so a change made "now" is made at that time; everywhere else
        // Stripe's time is the wall clock.
        let now = match &sub.test_clock {
            Some(stripe_types::Expandable::Object(clock)) => clock.frozen_time,
            Some(stripe_types::Expandable::Id(_)) => {
                return Err(GatewayError::Incomplete("expanded test clock"));
            }
            None => time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        Ok(SubscriptionItem {
            id: item.id.as_str().to_owned(),
            period_start: item.current_period_start,
            period_end: item.current_period_end,
            unit_amount_cents: item.price.unit_amount.unwrap_or(0),
            now,
        })
    }
}

/// A preview's proration lines: what a change itself costs or credits. A preview also
/// shows pending invoice items (an overage true-up waiting for the next invoice) and the
/// renewal, which are not the change's.
fn proration_lines(
    preview: &stripe_shared::Invoice,
) -> impl Iterator<Item = &stripe_shared::InvoiceLineItem> {
    preview.lines.data.iter().filter(|line| {
        line.parent
            .as_ref()
            .and_then(|p| p.subscription_item_details.as_ref())
            .is_some_and(|d| d.proration)
    })
}

/// A subscription's (first) item as a price change needs it.
#[derive(Debug, Clone)]
pub struct SubscriptionItem {
    pub id: String,
    pub period_start: i64,
    pub period_end: i64,
    /// The item's price now, in cents.
    pub unit_amount_cents: i64,
    /// The subscription's time (its test clock's, else the wall clock), unix seconds.
    pub now: i64,
}

impl SubscriptionItem {
    /// The instant a change made now takes effect at, within the current period.
    pub fn change_instant(&self) -> i64 {
        self.now.clamp(self.period_start, self.period_end)
    }
}

/// Subscription metadata that records a downgrade waiting for the period end: Stripe
/// already bills the lower price from the next renewal, and access stays on the plan
/// named here until the instant recorded with it. Kept in Stripe (not only in
/// PostgreSQL) so a re-fetch or a reconciliation derives the same state.
pub const DOWNGRADE_FROM: &str = "tollgate_downgrade_from";
pub const DOWNGRADE_AT: &str = "tollgate_downgrade_at";

/// The plan a pending downgrade keeps access on for the period ending at `period_end`
/// (the downgrade recorded in the subscription's metadata takes effect after it).
pub fn downgraded_from(metadata: &HashMap<String, String>, period_end: i64) -> Option<&str> {
    let at: i64 = metadata.get(DOWNGRADE_AT)?.parse().ok()?;
    (period_end <= at)
        .then(|| metadata.get(DOWNGRADE_FROM).map(String::as_str))
        .flatten()
}

impl StripeGateway {
    /// The customer's default payment method (`invoice_settings`, set through the Portal
    /// or the API; Checkout leaves it alone and puts its card on the subscription), if any.
    pub async fn default_payment_method(
        &self,
        stripe_customer: &str,
    ) -> Result<Option<String>, GatewayError> {
        use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};
        let customer = RetrieveCustomer::new(stripe_customer)
            .send(&self.client)
            .timed(&self.api_seconds, "default_payment_method")
            .await?;
        let RetrieveCustomerReturned::Customer(customer) = customer else {
            return Ok(None);
        };
        Ok(customer
            .invoice_settings
            .and_then(|s| s.default_payment_method)
            .map(|pm| pm.id().as_str().to_owned()))
    }

    /// Whether `payment_method` is still attached to `stripe_customer` (a card removed
    /// in the Customer Portal is detached for good and can pay nothing: Stripe answers 404
    /// for it here, where using it would be a 400).
    pub async fn customer_has_payment_method(
        &self,
        stripe_customer: &str,
        payment_method: &str,
    ) -> Result<bool, GatewayError> {
        use stripe_core::customer::RetrievePaymentMethodCustomer;
        match RetrievePaymentMethodCustomer::new(stripe_customer, payment_method)
            .send(&self.client)
            .timed(&self.api_seconds, "customer_payment_method")
            .await
        {
            Ok(_) => Ok(true),
            Err(stripe::StripeError::Stripe(_, 404)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Subscribes a customer with a saved card (`payment_method`: the customer's default or
    /// the card an earlier subscription was paid with); the first invoice is charged at
    /// once and a decline fails the call (nothing is left behind). Runs under the purchase
    /// intent's idempotency key.
    ///
    /// The billing mode is named (`flexible`, Stripe's default for new subscriptions since
    /// API 2025-09-30) rather than left to the account's API version: flexible credits a
    /// change from what was actually debited, which is what tollgate's own proration
    /// check and its downgrade-at-period-end (a price move without proration) assume.
    pub async fn create_subscription(
        &self,
        stripe_customer: &str,
        price: &PriceRef,
        payment_method: Option<&str>,
        metadata: HashMap<String, String>,
        idempotency_key: &str,
    ) -> Result<String, GatewayError> {
        use stripe_billing::subscription::{
            CreateSubscription, CreateSubscriptionBillingMode,
            CreateSubscriptionBillingModeFlexible,
            CreateSubscriptionBillingModeFlexibleProrationDiscounts,
            CreateSubscriptionBillingModeType, CreateSubscriptionItems,
            CreateSubscriptionPaymentBehavior,
        };
        let mut request = CreateSubscription::new();
        if let Some(pm) = payment_method {
            request = request.default_payment_method(pm);
        }
        let sub = request
            .customer(stripe_customer)
            // Flexible with discounts included in proration amounts: a proration line's
            // `amount` is then what is debited or credited (see `unused_time_credit`).
            .billing_mode(CreateSubscriptionBillingMode {
                flexible: Some(CreateSubscriptionBillingModeFlexible {
                    proration_discounts: Some(
                        CreateSubscriptionBillingModeFlexibleProrationDiscounts::Included,
                    ),
                }),
                type_: CreateSubscriptionBillingModeType::Flexible,
            })
            .items(vec![CreateSubscriptionItems {
                price: Some(price.id.clone()),
                quantity: Some(1),
                ..CreateSubscriptionItems::new()
            }])
            .metadata(metadata)
            .payment_behavior(CreateSubscriptionPaymentBehavior::ErrorIfIncomplete)
            .customize()
            .request_strategy(intent_key(idempotency_key))
            .send(&self.client)
            .timed(&self.api_seconds, "create_subscription")
            .await?;
        Ok(sub.id.as_str().to_owned())
    }

    /// Moves `item` to `price` without proration and records (or, with `None`, clears)
    /// the plan whose access lasts until the period end. `version` is the stored state
    /// the request was based on: a retry replays, the same change asked again later
    /// (after an undo) is a new request.
    pub async fn set_price_from_next_period(
        &self,
        subscription: &str,
        item: &str,
        price: &str,
        access: Option<(&str, i64)>,
        version: i64,
    ) -> Result<(), GatewayError> {
        use stripe_billing::subscription::{
            UpdateSubscription, UpdateSubscriptionItems, UpdateSubscriptionProrationBehavior,
        };
        // Stripe removes a metadata key set to the empty string.
        let (from, at) = access
            .map(|(plan, at)| (plan.to_owned(), at.to_string()))
            .unwrap_or_default();
        UpdateSubscription::new(subscription)
            .items(vec![UpdateSubscriptionItems {
                id: Some(item.to_owned()),
                price: Some(price.to_owned()),
                ..UpdateSubscriptionItems::new()
            }])
            .proration_behavior(UpdateSubscriptionProrationBehavior::None)
            .metadata(HashMap::from([
                (DOWNGRADE_FROM.to_owned(), from.clone()),
                (DOWNGRADE_AT.to_owned(), at.clone()),
            ]))
            .customize()
            .request_strategy(idempotency(&[
                "price_from_next_period",
                subscription,
                price,
                &from,
                &at,
                &version.to_string(),
            ]))
            .send(&self.client)
            .timed(&self.api_seconds, "set_price_from_next_period")
            .await?;
        Ok(())
    }

    /// Ends the subscription now without proration, invoicing pending prorations at once
    /// (used when the customer leaves fixed fee for prepaid credits: tollgate credits the
    /// unused time itself, see `switch_model`).
    pub async fn cancel_now_invoicing_pending(
        &self,
        subscription: &str,
    ) -> Result<(), GatewayError> {
        use stripe_billing::subscription::{
            CancelSubscription, CancelSubscriptionCancellationDetails,
        };
        let mut details = CancelSubscriptionCancellationDetails::new();
        // Whoever stores this cancellation completes the switch (crate::switches).
        details.comment = Some(crate::switches::CANCEL_COMMENT.to_owned());
        CancelSubscription::new(subscription)
            .prorate(false)
            .invoice_now(true)
            .cancellation_details(details)
            .customize()
            .request_strategy(idempotency(&["cancel_for_credits", subscription]))
            .send(&self.client)
            .timed(&self.api_seconds, "cancel_for_credits")
            .await?;
        Ok(())
    }
}

impl StripeGateway {
    /// What the subscription's next invoice will charge (cents) and when, as Stripe
    /// previews it (pending invoice items included; overage is added at renewal).
    pub async fn upcoming_invoice(&self, subscription: &str) -> Result<(i64, i64), GatewayError> {
        use stripe_billing::invoice::CreatePreviewInvoice;
        let preview = CreatePreviewInvoice::new()
            .subscription(subscription)
            .send(&self.client)
            .timed(&self.api_seconds, "upcoming_invoice")
            .await?;
        let at = preview
            .next_payment_attempt
            .or(preview.due_date)
            .unwrap_or(preview.period_end);
        Ok((preview.amount_due, at))
    }
}

impl StripeGateway {
    /// Adds a one-off charge to a draft invoice, or — with [`ItemTarget::NextInvoice`] —
    /// leaves it pending for the subscription's next invoice. The key names the charge
    /// (customer and usage period), so a rerun after a crash gets Stripe's replay, never a
    /// second item.
    pub async fn add_invoice_item(
        &self,
        stripe_customer: &str,
        target: ItemTarget<'_>,
        amount_cents: i64,
        description: &str,
        metadata: HashMap<String, String>,
        key_parts: &[&str],
    ) -> Result<String, GatewayError> {
        use stripe_billing::invoice_item::CreateInvoiceItem;
        let mut parts = vec!["invoice_item", stripe_customer];
        parts.extend_from_slice(key_parts);
        let mut request = CreateInvoiceItem::new().customer(stripe_customer);
        request = match target {
            ItemTarget::Draft(invoice) => request.invoice(invoice),
            ItemTarget::NextInvoice(subscription) => {
                parts.push("next_invoice");
                request.subscription(subscription)
            }
        };
        let item = request
            .amount(amount_cents)
            .currency(stripe_types::Currency::USD)
            .description(description)
            .metadata(metadata)
            .customize()
            .request_strategy(idempotency(&parts))
            .send(&self.client)
            .timed(&self.api_seconds, "add_invoice_item")
            .await?;
        Ok(item.id.as_str().to_owned())
    }
}

/// An invoice item found in Stripe, and the invoice it is on (none while pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundItem {
    pub id: String,
    pub invoice: Option<String>,
}

impl StripeGateway {
    /// The customer's invoice item created since `since` (unix seconds) whose metadata
    /// holds every pair of `metadata`, if there is one: how a request made under a key
    /// Stripe has pruned (24 h) is found instead of made again. Reads every page.
    pub async fn find_invoice_item(
        &self,
        stripe_customer: &str,
        since: i64,
        metadata: &HashMap<String, String>,
    ) -> Result<Option<FoundItem>, GatewayError> {
        let found = self
            .first_invoice_item(stripe_customer, Some(since), false, |item| {
                item.metadata.as_ref().is_some_and(|m| {
                    metadata
                        .iter()
                        .all(|(k, v)| m.get(k).is_some_and(|have| have == v))
                })
            })
            .await?;
        Ok(found.map(|item| FoundItem {
            id: item.id.as_str().to_owned(),
            invoice: item
                .invoice
                .as_ref()
                .and_then(|i| i.id().as_ref().map(|id| id.as_str().to_owned())),
        }))
    }

    /// The first of the customer's invoice items (only pending ones when `pending`,
    /// created since `since` when given) that `matches`, reading every page: a customer
    /// may have more items than one page holds, and the one looked for may be on any.
    async fn first_invoice_item(
        &self,
        stripe_customer: &str,
        since: Option<i64>,
        pending: bool,
        matches: impl Fn(&stripe_billing::InvoiceItem) -> bool,
    ) -> Result<Option<stripe_billing::InvoiceItem>, GatewayError> {
        use stripe_billing::invoice_item::ListInvoiceItem;
        let mut after: Option<String> = None;
        loop {
            let mut request = ListInvoiceItem::new().customer(stripe_customer).limit(100);
            if pending {
                request = request.pending(true);
            }
            if let Some(since) = since {
                request = request.created(stripe_types::RangeQueryTs::gte(since));
            }
            if let Some(a) = after.as_deref() {
                request = request.starting_after(a);
            }
            let mut page = request
                .send(&self.client)
                .timed(&self.api_seconds, "list_invoice_items")
                .await?;
            let next = page
                .data
                .last()
                .filter(|_| page.has_more)
                .map(|last| last.id.as_str().to_owned());
            if let Some(at) = page.data.iter().position(&matches) {
                return Ok(Some(page.data.swap_remove(at)));
            }
            match next {
                Some(last) => after = Some(last),
                None => return Ok(None),
            }
        }
    }
}

/// Where a one-off charge goes.
#[derive(Debug, Clone, Copy)]
pub enum ItemTarget<'a> {
    /// This draft invoice.
    Draft(&'a str),
    /// The subscription's next invoice (the draft was finalized before we got to it).
    NextInvoice(&'a str),
}

impl StripeGateway {
    /// A draft invoice of its own for the customer, charged to `payment_method` when
    /// given (a Checkout subscription keeps its card on the subscription, not the
    /// customer). Used to bill what a subscription that has ended still owes. With
    /// `sweep` (the ended subscription), the subscription's pending items — overage
    /// waiting for a next invoice that will never come — join it; otherwise only the
    /// items added to it later.
    pub async fn open_standalone_invoice(
        &self,
        stripe_customer: &str,
        payment_method: Option<&str>,
        sweep: Option<&str>,
        description: &str,
        metadata: HashMap<String, String>,
        key_parts: &[&str],
    ) -> Result<String, GatewayError> {
        use stripe_billing::invoice::{CreateInvoice, CreateInvoicePendingInvoiceItemsBehavior};
        let mut parts = vec!["standalone_invoice", stripe_customer];
        parts.extend_from_slice(key_parts);
        let mut request = CreateInvoice::new()
            .customer(stripe_customer)
            .auto_advance(false)
            .collection_method(stripe_shared::InvoiceCollectionMethod::ChargeAutomatically)
            .description(description)
            .metadata(metadata);
        request = match sweep {
            Some(subscription) => request
                .subscription(subscription)
                .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Include),
            None => request
                .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Exclude),
        };
        if let Some(pm) = payment_method {
            request = request.default_payment_method(pm);
        }
        let invoice = request
            .customize()
            .request_strategy(idempotency(&parts))
            .send(&self.client)
            .timed(&self.api_seconds, "create_invoice")
            .await?;
        invoice
            .id
            .map(|id| id.as_str().to_owned())
            .ok_or(GatewayError::Incomplete("invoice id"))
    }

    /// Finalizes a draft (with automatic collection on, so Stripe retries and dunns a
    /// declined charge like any invoice) and charges it now unless finalizing settled it
    /// (a credit balance paid it). A charge that fails is not an error: the invoice stays
    /// open, owed, for Stripe's retries. Returns the status.
    pub async fn finalize_and_pay(
        &self,
        invoice: &str,
        key_parts: &[&str],
    ) -> Result<Option<String>, GatewayError> {
        use stripe_billing::invoice::{FinalizeInvoiceInvoice, PayInvoice};
        let mut parts = vec!["finalize", invoice];
        parts.extend_from_slice(key_parts);
        if self.invoice_status(invoice).await?.as_deref() == Some("draft") {
            FinalizeInvoiceInvoice::new(invoice)
                .auto_advance(true)
                .customize()
                .request_strategy(idempotency(&parts))
                .send(&self.client)
                .timed(&self.api_seconds, "finalize_invoice")
                .await?;
        }
        let status = self.invoice_status(invoice).await?;
        if status.as_deref() != Some("open") {
            return Ok(status);
        }
        parts[0] = "pay";
        let paid = PayInvoice::new(invoice)
            .off_session(true)
            .customize()
            .request_strategy(idempotency(&parts))
            .send(&self.client)
            .timed(&self.api_seconds, "pay_invoice")
            .await;
        match paid {
            Ok(i) => Ok(i.status.map(|s| s.as_str().to_owned())),
            Err(e) => {
                tracing::warn!(error = %e, invoice, "charging the invoice failed; it stays open for Stripe's retries");
                self.invoice_status(invoice).await
            }
        }
    }

    /// A subscription as Stripe holds it now.
    pub async fn retrieve_subscription(
        &self,
        subscription: &str,
    ) -> Result<stripe_shared::Subscription, GatewayError> {
        use stripe_billing::subscription::RetrieveSubscription;
        Ok(RetrieveSubscription::new(subscription)
            .send(&self.client)
            .timed(&self.api_seconds, "retrieve_subscription")
            .await?)
    }

    /// An invoice as Stripe holds it now.
    pub async fn retrieve_invoice(
        &self,
        invoice: &str,
    ) -> Result<stripe_shared::Invoice, GatewayError> {
        use stripe_billing::invoice::RetrieveInvoice;
        Ok(RetrieveInvoice::new(invoice)
            .send(&self.client)
            .timed(&self.api_seconds, "retrieve_invoice")
            .await?)
    }

    /// One page (up to 100, newest first) of the events of `types` created since `since`,
    /// after the event `after`.
    pub async fn list_events(
        &self,
        since: i64,
        types: &[&str],
        after: Option<&str>,
    ) -> Result<stripe_types::List<stripe_shared::Event>, GatewayError> {
        use stripe_core::event::ListEvent;
        let mut request = ListEvent::new()
            .created(stripe_types::RangeQueryTs::gte(since))
            .types(types.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
            .limit(100);
        if let Some(a) = after {
            request = request.starting_after(a);
        }
        Ok(request
            .send(&self.client)
            .timed(&self.api_seconds, "list_events")
            .await?)
    }

    /// A subscription's own payment method (set by Checkout), if any.
    pub async fn subscription_payment_method(
        &self,
        subscription: &str,
    ) -> Result<Option<String>, GatewayError> {
        let sub = self.retrieve_subscription(subscription).await?;
        Ok(sub
            .default_payment_method
            .as_ref()
            .map(|pm| pm.id().as_str().to_owned()))
    }

    /// An invoice's status now (`draft`, `open`, `paid`, ...).
    pub async fn invoice_status(&self, invoice: &str) -> Result<Option<String>, GatewayError> {
        let invoice = self.retrieve_invoice(invoice).await?;
        Ok(invoice.status.map(|s| s.as_str().to_owned()))
    }
}

/// Why tollgate gives a payment back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    /// A second subscription the customer paid for while the first was live.
    DuplicateSubscription,
    /// A credit pack paid for after the customer moved to fixed fee (credits would not
    /// count there).
    CreditsOnFixedFee,
}

impl RefundReason {
    pub const ALL: [RefundReason; 2] = [
        RefundReason::DuplicateSubscription,
        RefundReason::CreditsOnFixedFee,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::DuplicateSubscription => "duplicate_subscription",
            RefundReason::CreditsOnFixedFee => "credits_on_fixed_fee",
        }
    }
}

impl StripeGateway {
    /// Refunds a payment in full, once (the key names the payment). A payment with
    /// nothing left to refund is done, not an error to retry for ever: Stripe answers
    /// `charge_already_refunded` once the key's 24 h are over, or after a Dashboard refund.
    pub async fn refund_payment(
        &self,
        payment_intent: &str,
        reason: RefundReason,
    ) -> Result<Refunded, GatewayError> {
        use stripe_core::refund::{CreateRefund, CreateRefundReason};
        let mut request =
            CreateRefund::new()
                .payment_intent(payment_intent)
                .metadata(HashMap::from([(
                    "tollgate_reason".to_owned(),
                    reason.as_str().to_owned(),
                )]));
        if reason == RefundReason::DuplicateSubscription {
            request = request.reason(CreateRefundReason::Duplicate);
        }
        let sent = request
            .customize()
            .request_strategy(idempotency(&["refund", payment_intent]))
            .send(&self.client)
            .timed(&self.api_seconds, "refund")
            .await;
        match sent {
            Ok(_) => Ok(Refunded::Now),
            Err(stripe::StripeError::Stripe(e, 400))
                if e.code == Some(stripe_shared::ApiErrorsCode::ChargeAlreadyRefunded) =>
            {
                Ok(Refunded::Already)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a subscription that duplicates the customer's live one: its paid invoice
    /// refunded in full (an unpaid one voided), then the subscription cancelled now
    /// without proration (nothing of it was used: access comes from the first). The money
    /// goes back *before* the cancel: a failure in between leaves the subscription live,
    /// so the retried sync finds it a duplicate again and replays both steps (each under
    /// its own key); the other order could cancel and never refund. Returns the
    /// subscription as it ends and how many payments went back now.
    pub async fn end_duplicate_subscription(
        &self,
        subscription: &str,
        latest_invoice: Option<&str>,
    ) -> Result<(stripe_shared::Subscription, u64), GatewayError> {
        let mut refunded = 0;
        use stripe_billing::invoice::{RetrieveInvoice, VoidInvoiceInvoice};
        use stripe_billing::subscription::CancelSubscription;
        if let Some(invoice_id) = latest_invoice {
            let invoice = RetrieveInvoice::new(invoice_id)
                .expand(vec!["payments".to_owned()])
                .send(&self.client)
                .timed(&self.api_seconds, "retrieve_invoice")
                .await?;
            match invoice.status.as_ref().map(|s| s.as_str()) {
                Some("paid") => {
                    let paid = invoice
                        .payments
                        .iter()
                        .flat_map(|list| list.data.iter())
                        .filter(|p| p.status == "paid")
                        .filter_map(|p| p.payment.payment_intent.as_ref());
                    for intent in paid {
                        let outcome = self
                            .refund_payment(
                                intent.id().as_str(),
                                RefundReason::DuplicateSubscription,
                            )
                            .await?;
                        refunded += u64::from(outcome == Refunded::Now);
                    }
                }
                Some("open") => {
                    VoidInvoiceInvoice::new(invoice_id)
                        .customize()
                        .request_strategy(idempotency(&["void", invoice_id]))
                        .send(&self.client)
                        .timed(&self.api_seconds, "void_invoice")
                        .await?;
                }
                _ => {}
            }
        }
        let ended = CancelSubscription::new(subscription)
            .prorate(false)
            .invoice_now(false)
            .customize()
            .request_strategy(idempotency(&["cancel_duplicate", subscription]))
            .send(&self.client)
            .timed(&self.api_seconds, "cancel_now")
            .await?;
        Ok((ended, refunded))
    }

    /// Whether a subscription is live in Stripe now (the stored row may be stale).
    pub async fn subscription_is_live(&self, subscription: &str) -> Result<bool, GatewayError> {
        let sub = self.retrieve_subscription(subscription).await?;
        Ok(crate::subscription_store::SubscriptionStatus::names_live(
            sub.status.as_str(),
        ))
    }

    /// Whether the subscription's latest invoice is paid: its current period was paid
    /// for (a renewal's draft, or a renewal whose payment failed, is not).
    pub async fn latest_invoice_paid(&self, subscription: &str) -> Result<bool, GatewayError> {
        let sub = self.retrieve_subscription(subscription).await?;
        let Some(invoice) = sub
            .latest_invoice
            .as_ref()
            .and_then(|i| i.id().as_ref().map(|id| id.as_str().to_owned()))
        else {
            return Ok(false);
        };
        Ok(self.invoice_status(&invoice).await?.as_deref() == Some("paid"))
    }
}

impl StripeGateway {
    /// Whether one-off items of `subscription` are waiting for its next invoice (overage
    /// a late worker or a true-up put there): when the subscription ends, no next invoice
    /// comes, so its final invoice must sweep them.
    pub async fn has_pending_items(
        &self,
        stripe_customer: &str,
        subscription: &str,
    ) -> Result<bool, GatewayError> {
        let found = self
            .first_invoice_item(stripe_customer, None, true, |item| {
                item.parent
                    .as_ref()
                    .and_then(|p| p.subscription_details.as_ref())
                    .is_some_and(|d| d.subscription == subscription)
            })
            .await?;
        Ok(found.is_some())
    }
}
