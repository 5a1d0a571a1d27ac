//! The stand-in's memory: every Stripe object it has created, in plain structs, plus the
//! event log. One `Store` sits behind one mutex; handlers hold the lock for the whole
//! request so each API call is atomic, as Stripe's are.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::clock::{self, Interval};

/// Free-form metadata, ordered for stable JSON.
pub type Metadata = BTreeMap<String, String>;

/// Generates a Stripe-looking id: `prefix_` + 24 alphanumerics.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..24)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}

/// How a customer's payments behave (stand-in only; no card numbers exist here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaymentMode {
    #[default]
    Succeed,
    Fail,
    /// The payment needs customer action (3-D Secure): `invoice.payment_action_required`.
    ActionRequired,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub email: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub test_clock: Option<String>,
    pub default_payment_method: Option<String>,
    pub invoice_prefix: String,
    pub next_invoice_sequence: u64,
    /// Set with `POST /v1/test_helpers/customers/{id}/fail_payments`.
    pub payment_mode: PaymentMode,
    pub deleted: bool,
}

impl Customer {
    /// The payment behaviour: the test-helper flag, or `metadata[standin_fail_payments]`.
    pub fn effective_payment_mode(&self) -> PaymentMode {
        if self.payment_mode != PaymentMode::Succeed {
            return self.payment_mode;
        }
        match self
            .metadata
            .get("standin_fail_payments")
            .map(String::as_str)
        {
            Some("true") => PaymentMode::Fail,
            Some("action_required") => PaymentMode::ActionRequired,
            _ => PaymentMode::Succeed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Product {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub updated: i64,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub metadata: Metadata,
    pub default_price: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Recurring {
    pub interval: Interval,
    pub interval_count: u64,
}

#[derive(Debug, Clone)]
pub struct Price {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub product: String,
    pub currency: String,
    /// Integer minor units; `unit_amount_decimal` rounds half-up into it when only that is given.
    pub unit_amount: i64,
    pub unit_amount_decimal: String,
    pub recurring: Option<Recurring>,
    pub lookup_key: Option<String>,
    pub nickname: Option<String>,
    pub active: bool,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct CheckoutLine {
    pub price: String,
    pub quantity: u64,
}

#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub mode: String,
    pub customer: Option<String>,
    pub customer_email: Option<String>,
    pub line_items: Vec<CheckoutLine>,
    pub success_url: Option<String>,
    pub cancel_url: Option<String>,
    pub client_reference_id: Option<String>,
    pub metadata: Metadata,
    pub subscription_metadata: Metadata,
    pub payment_intent_metadata: Metadata,
    /// `subscription_data[billing_mode][type]` of the subscription Checkout creates.
    pub subscription_billing_mode: BillingMode,
    /// `payment_intent_data[setup_future_usage]` was set: a payment-mode session saves
    /// the card to the customer (otherwise Checkout does not).
    pub save_payment_method: bool,
    pub status: String,
    pub payment_status: String,
    pub subscription: Option<String>,
    pub payment_intent: Option<String>,
    pub invoice: Option<String>,
    pub currency: String,
    pub amount_subtotal: i64,
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct PortalSession {
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub return_url: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct SubscriptionItem {
    pub id: String,
    pub created: i64,
    pub price: String,
    pub quantity: u64,
    pub period_start: i64,
    pub period_end: i64,
    pub metadata: Metadata,
    /// What this item's current period was debited at, as a full-period amount (cents):
    /// flexible billing mode credits unused time from it, classic from the current price.
    pub debited_amount: i64,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub currency: String,
    pub status: String,
    pub items: Vec<SubscriptionItem>,
    pub billing_cycle_anchor: i64,
    pub start_date: i64,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<i64>,
    pub canceled_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    /// `cancellation_details.comment`, as the canceller gave it.
    pub cancellation_comment: Option<String>,
    pub metadata: Metadata,
    pub latest_invoice: Option<String>,
    pub default_payment_method: Option<String>,
    pub test_clock: Option<String>,
    pub billing_mode: BillingMode,
}

/// `billing_mode.type`: `flexible` is the default for new subscriptions since API
/// 2025-09-30; `classic` is what older subscriptions have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BillingMode {
    Classic,
    #[default]
    Flexible,
}

impl BillingMode {
    pub fn parse(value: Option<&str>, param: &str) -> Result<Self, crate::errors::ApiError> {
        match value {
            None | Some("flexible") => Ok(BillingMode::Flexible),
            Some("classic") => Ok(BillingMode::Classic),
            Some(other) => Err(crate::errors::ApiError::invalid(
                param,
                format!(
                    "Invalid billing_mode[type]: must be one of classic or flexible, not {other}"
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Classic => "classic",
            BillingMode::Flexible => "flexible",
        }
    }
}

impl Subscription {
    /// The current period (all items share it: one billing cycle per subscription here).
    pub fn period(&self) -> (i64, i64) {
        self.items
            .first()
            .map(|i| (i.period_start, i.period_end))
            .unwrap_or((self.start_date, self.start_date))
    }

    /// Whether the subscription still bills.
    pub fn is_live(&self) -> bool {
        matches!(
            self.status.as_str(),
            "active" | "past_due" | "trialing" | "incomplete" | "unpaid"
        )
    }
}

/// What an invoice line bills for.
#[derive(Debug, Clone)]
pub enum LineSource {
    /// A subscription item's period charge.
    SubscriptionItem { subscription: String, item: String },
    /// An invoice item (prorations, one-off charges, overage).
    InvoiceItem {
        invoice_item: String,
        subscription: Option<String>,
        subscription_item: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct InvoiceLine {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub period_start: i64,
    pub period_end: i64,
    pub quantity: u64,
    pub price: Option<String>,
    pub proration: bool,
    pub source: LineSource,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Invoice {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub subscription: Option<String>,
    pub currency: String,
    pub status: String,
    pub billing_reason: String,
    pub lines: Vec<InvoiceLine>,
    pub number: Option<String>,
    pub period_start: i64,
    pub period_end: i64,
    pub attempt_count: u64,
    pub attempted: bool,
    pub next_payment_attempt: Option<i64>,
    pub amount_paid: i64,
    pub finalized_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub voided_at: Option<i64>,
    /// Drafts are finalized automatically once the clock passes this time.
    pub automatically_finalizes_at: Option<i64>,
    pub payment_intent: Option<String>,
    pub metadata: Metadata,
    pub test_clock: Option<String>,
    pub auto_advance: bool,
    pub subscription_metadata: Metadata,
    /// The invoice's own `default_payment_method`: charged before the subscription's
    /// and the customer's.
    pub default_payment_method: Option<String>,
}

impl Invoice {
    /// Sum of the lines (the stand-in has no tax or discounts).
    pub fn total(&self) -> i64 {
        self.lines.iter().map(|l| l.amount).sum()
    }

    /// What the customer owes: credits below zero are not charged.
    pub fn amount_due(&self) -> i64 {
        self.total().max(0)
    }
}

#[derive(Debug, Clone)]
pub struct InvoiceItem {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub period_start: i64,
    pub period_end: i64,
    pub proration: bool,
    pub quantity: u64,
    pub price: Option<String>,
    pub subscription: Option<String>,
    pub subscription_item: Option<String>,
    pub invoice: Option<String>,
    pub metadata: Metadata,
    pub test_clock: Option<String>,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct PaymentIntent {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub status: String,
    pub payment_method: Option<String>,
    pub latest_charge: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub failed: bool,
}

#[derive(Debug, Clone)]
pub struct Charge {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub payment_intent: Option<String>,
    pub payment_method: Option<String>,
    pub description: Option<String>,
    pub succeeded: bool,
    pub refunds: Vec<String>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub charge: String,
    pub payment_intent: Option<String>,
    pub reason: Option<String>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct PaymentMethod {
    pub id: String,
    pub created: i64,
    pub customer: Option<String>,
    /// Detached from its customer: for ever unusable (Stripe: "Detachment is permanent
    /// and irreversible").
    pub detached: bool,
}

#[derive(Debug, Clone)]
pub struct TestClock {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub frozen_time: i64,
    pub name: Option<String>,
    pub status: String,
}

/// A stored event: its JSON is fixed when it happens.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub id: String,
    pub created: i64,
    pub kind: String,
    pub json: Value,
}

/// Who caused an event (`event.request`).
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// All objects, by id.
#[derive(Debug, Default)]
pub struct Store {
    pub seq: u64,
    pub customers: HashMap<String, Customer>,
    pub products: HashMap<String, Product>,
    pub prices: HashMap<String, Price>,
    pub checkout_sessions: HashMap<String, CheckoutSession>,
    pub portal_sessions: HashMap<String, PortalSession>,
    pub subscriptions: HashMap<String, Subscription>,
    pub invoices: HashMap<String, Invoice>,
    pub invoice_items: HashMap<String, InvoiceItem>,
    pub payment_intents: HashMap<String, PaymentIntent>,
    pub charges: HashMap<String, Charge>,
    pub refunds: HashMap<String, Refund>,
    pub payment_methods: HashMap<String, PaymentMethod>,
    pub test_clocks: HashMap<String, TestClock>,
    pub events: Vec<Event>,
    /// Events created by the current request, handed to the webhook dispatcher afterwards.
    pub outbox: Vec<Value>,
    /// The request being served, copied into each event's `request`.
    pub current_request: RequestInfo,
    /// Seconds a renewal draft waits before it is finalized (Stripe: about an hour).
    pub draft_finalize_delay: i64,
    /// Whether webhooks are configured (`pending_webhooks` of events).
    pub webhooks_enabled: bool,
}

impl Store {
    /// The next ordering number: lists are newest first by it.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The time a customer lives in: its test clock's frozen time, or the wall clock.
    pub fn now_for_customer(&self, customer: &str) -> i64 {
        self.customers
            .get(customer)
            .and_then(|c| c.test_clock.as_ref())
            .and_then(|clock| self.test_clocks.get(clock))
            .map(|clock| clock.frozen_time)
            .unwrap_or_else(clock::wall_now)
    }

    /// A live customer by id.
    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.get(id).filter(|c| !c.deleted)
    }

    /// The subscriptions of every customer on a clock.
    pub fn subscriptions_on_clock(&self, clock: &str) -> Vec<String> {
        let mut subs: Vec<&Subscription> = self
            .subscriptions
            .values()
            .filter(|s| s.test_clock.as_deref() == Some(clock))
            .collect();
        subs.sort_by_key(|s| s.seq);
        subs.into_iter().map(|s| s.id.clone()).collect()
    }
}
