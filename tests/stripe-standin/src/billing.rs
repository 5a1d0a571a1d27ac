//! What Stripe does to money: invoices (draft → open → paid), payment attempts with payment
//! intents and charges, subscription creation, renewals on a test clock, retries, proration
//! on price changes, and the events each step emits.
//!
//! This is written independently of tollgate's own billing code on purpose: tests that compare
//! tollgate's numbers with the stand-in's only mean something if the two were not derived from
//! one implementation.

use serde_json::{Value, json};

use crate::clock;
use crate::errors::{ApiError, ApiResult};
use crate::objects;
use crate::state::{
    BillingMode, Charge, Invoice, InvoiceItem, InvoiceLine, LineSource, Metadata, PaymentIntent,
    PaymentMode, Store, Subscription, SubscriptionItem, new_id,
};

/// Payment attempts of a renewal invoice: the first plus retries after these delays
/// (Stripe's Smart Retries choose their own times; these are fixed so tests are repeatable).
pub const RETRY_DELAYS: [i64; 3] = [3 * 86_400, 5 * 86_400, 7 * 86_400];

/// An incomplete subscription whose first payment never succeeds expires after 23 hours.
pub const INCOMPLETE_EXPIRY: i64 = 23 * 3600;

/// Records an event whose `data.object` is `object` as it is now, and queues its delivery.
pub fn emit(
    store: &mut Store,
    kind: &str,
    object: Value,
    previous: Option<Value>,
    created: i64,
) -> String {
    let id = new_id("evt");
    let seq = store.next_seq();
    let pending = i64::from(store.webhooks_enabled);
    let json = objects::event(
        &id,
        kind,
        created,
        object,
        previous,
        &store.current_request,
        pending,
    );
    store.outbox.push(json.clone());
    store.events.push(crate::state::Event {
        seq,
        id: id.clone(),
        created,
        kind: kind.to_string(),
        json,
    });
    id
}

fn emit_subscription(
    store: &mut Store,
    kind: &str,
    sub_id: &str,
    previous: Option<Value>,
    at: i64,
) {
    if let Some(sub) = store.subscriptions.get(sub_id) {
        let obj = objects::subscription(store, sub);
        emit(store, kind, obj, previous, at);
    }
}

fn emit_invoice(store: &mut Store, kind: &str, invoice_id: &str, previous: Option<Value>, at: i64) {
    if let Some(inv) = store.invoices.get(invoice_id) {
        let obj = objects::invoice(store, inv);
        emit(store, kind, obj, previous, at);
    }
}

/// `$20.00`, `€5.50`, `12.00 SEK` — for line descriptions.
pub fn format_money(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    let number = format!("{}.{:02}", abs / 100, abs % 100);
    match currency {
        "usd" => format!("{sign}${number}"),
        "eur" => format!("{sign}€{number}"),
        "gbp" => format!("{sign}£{number}"),
        other => format!("{sign}{number} {}", other.to_uppercase()),
    }
}

/// `amount × remaining / total`, rounded half-up to the minor unit (for a negative amount the
/// magnitude is rounded half-up and the sign kept), in integer arithmetic.
pub fn prorate(amount: i64, remaining: i64, total: i64) -> i64 {
    if total <= 0 {
        return 0;
    }
    let remaining = remaining.clamp(0, total);
    let magnitude = i128::from(amount.unsigned_abs() as i64) * i128::from(remaining);
    let total = i128::from(total);
    let rounded = (2 * magnitude + total) / (2 * total);
    let rounded = rounded as i64;
    if amount < 0 { -rounded } else { rounded }
}

fn product_name(store: &Store, price_id: &str) -> String {
    store
        .prices
        .get(price_id)
        .and_then(|p| store.products.get(&p.product))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| price_id.to_string())
}

fn unit_amount(store: &Store, price_id: &str) -> i64 {
    store
        .prices
        .get(price_id)
        .map(|p| p.unit_amount)
        .unwrap_or(0)
}

/// The period charge line of one subscription item, as on a Stripe invoice.
fn item_line(store: &Store, sub: &Subscription, item: &SubscriptionItem) -> InvoiceLine {
    let unit = unit_amount(store, &item.price);
    let interval = store
        .prices
        .get(&item.price)
        .and_then(|p| p.recurring.as_ref())
        .map(|r| r.interval.as_str())
        .unwrap_or("month");
    InvoiceLine {
        id: new_id("il"),
        amount: unit * item.quantity as i64,
        currency: sub.currency.clone(),
        description: Some(format!(
            "{} × {} (at {} / {})",
            item.quantity,
            product_name(store, &item.price),
            format_money(unit, &sub.currency),
            interval
        )),
        period_start: item.period_start,
        period_end: item.period_end,
        quantity: item.quantity,
        price: Some(item.price.clone()),
        proration: false,
        source: LineSource::SubscriptionItem {
            subscription: sub.id.clone(),
            item: item.id.clone(),
        },
        metadata: Metadata::new(),
    }
}

/// The invoice line that carries an invoice item.
pub fn line_from_item(ii: &InvoiceItem) -> InvoiceLine {
    InvoiceLine {
        id: new_id("il"),
        amount: ii.amount,
        currency: ii.currency.clone(),
        description: ii.description.clone(),
        period_start: ii.period_start,
        period_end: ii.period_end,
        quantity: ii.quantity,
        price: ii.price.clone(),
        proration: ii.proration,
        source: LineSource::InvoiceItem {
            invoice_item: ii.id.clone(),
            subscription: ii.subscription.clone(),
            subscription_item: ii.subscription_item.clone(),
        },
        metadata: ii.metadata.clone(),
    }
}

/// A new draft invoice; emits `invoice.created`.
#[allow(clippy::too_many_arguments)]
pub fn create_draft(
    store: &mut Store,
    customer: &str,
    subscription: Option<&str>,
    billing_reason: &str,
    currency: &str,
    lines: Vec<InvoiceLine>,
    period: (i64, i64),
    now: i64,
    finalize_after: Option<i64>,
    sweep_pending: bool,
) -> String {
    let id = new_id("in");
    let seq = store.next_seq();
    let test_clock = store
        .customers
        .get(customer)
        .and_then(|c| c.test_clock.clone());
    let subscription_metadata = subscription
        .and_then(|s| store.subscriptions.get(s))
        .map(|s| s.metadata.clone())
        .unwrap_or_default();
    let inv = Invoice {
        seq,
        id: id.clone(),
        created: now,
        customer: customer.to_string(),
        subscription: subscription.map(str::to_string),
        currency: currency.to_string(),
        status: "draft".into(),
        billing_reason: billing_reason.into(),
        lines,
        number: None,
        period_start: period.0,
        period_end: period.1,
        attempt_count: 0,
        attempted: false,
        next_payment_attempt: None,
        amount_paid: 0,
        finalized_at: None,
        paid_at: None,
        voided_at: None,
        automatically_finalizes_at: finalize_after.map(|d| now + d),
        payment_intent: None,
        metadata: Metadata::new(),
        test_clock,
        auto_advance: true,
        subscription_metadata,
        default_payment_method: None,
    };
    store.invoices.insert(id.clone(), inv);
    if sweep_pending {
        sweep_pending_items(store, &id);
    }
    emit_invoice(store, "invoice.created", &id, None, now);
    id
}

/// Moves the customer's pending invoice items (of this subscription, or of none) onto a draft.
pub fn sweep_pending_items(store: &mut Store, invoice_id: &str) {
    sweep_pending_items_where(store, invoice_id, |_| true);
}

/// [`sweep_pending_items`], only the items `take` chooses.
pub fn sweep_pending_items_where(
    store: &mut Store,
    invoice_id: &str,
    take: impl Fn(&InvoiceItem) -> bool,
) {
    let Some(inv) = store.invoices.get(invoice_id) else {
        return;
    };
    let (customer, subscription) = (inv.customer.clone(), inv.subscription.clone());
    let mut pending: Vec<&InvoiceItem> = store
        .invoice_items
        .values()
        .filter(|ii| {
            !ii.deleted
                && ii.invoice.is_none()
                && ii.customer == customer
                && (ii.subscription.is_none() || ii.subscription == subscription)
                && take(ii)
        })
        .collect();
    pending.sort_by_key(|ii| ii.seq);
    let ids: Vec<String> = pending.iter().map(|ii| ii.id.clone()).collect();
    let mut swept = Vec::new();
    for id in ids {
        let ii = store.invoice_items.get_mut(&id).expect("listed above");
        ii.invoice = Some(invoice_id.to_string());
        swept.push(line_from_item(ii));
    }
    // invoice items (prorations, usage) come before the period charges, as on Stripe's invoices
    if let Some(inv) = store.invoices.get_mut(invoice_id) {
        swept.append(&mut inv.lines);
        inv.lines = swept;
    }
}

/// Draft → open (or straight to paid when nothing is due); emits `invoice.finalized`.
pub fn finalize(store: &mut Store, invoice_id: &str, now: i64) -> ApiResult<()> {
    let inv = store
        .invoices
        .get(invoice_id)
        .ok_or_else(|| ApiError::missing_resource("invoice", invoice_id, "invoice"))?;
    if inv.status != "draft" {
        return Err(ApiError::bad_request(
            "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
        ));
    }
    let customer = inv.customer.clone();
    let number = match store.customers.get_mut(&customer) {
        Some(c) => {
            let n = format!("{}-{:04}", c.invoice_prefix, c.next_invoice_sequence);
            c.next_invoice_sequence += 1;
            n
        }
        None => format!("STANDIN-{}", store.seq),
    };
    let inv = store.invoices.get_mut(invoice_id).expect("checked above");
    inv.status = "open".into();
    inv.number = Some(number);
    inv.finalized_at = Some(now);
    inv.automatically_finalizes_at = None;
    let nothing_due = inv.amount_due() == 0;
    emit_invoice(store, "invoice.finalized", invoice_id, None, now);
    if nothing_due {
        mark_paid(store, invoice_id, now);
    }
    Ok(())
}

/// The outcome of one attempt to take money.
#[derive(Debug, Clone)]
pub struct PaymentOutcome {
    pub succeeded: bool,
    pub action_required: bool,
    pub payment_intent: Option<String>,
}

/// Charges a customer: a payment intent and (with a payment method) a charge, succeeding or
/// failing per the customer's payment mode. Emits the `charge.*` and `payment_intent.*` events.
#[allow(clippy::too_many_arguments)]
pub fn take_payment(
    store: &mut Store,
    customer_id: &str,
    amount: i64,
    currency: &str,
    description: Option<String>,
    payment_method: Option<String>,
    metadata: Metadata,
    now: i64,
) -> PaymentOutcome {
    let customer = store.customers.get(customer_id);
    let mode = customer
        .map(|c| c.effective_payment_mode())
        .unwrap_or_default();
    let payment_method = payment_method
        .or_else(|| customer.and_then(|c| c.default_payment_method.clone()))
        // A detached method cannot pay: as if there were none.
        .filter(|pm| store.payment_methods.get(pm).is_none_or(|m| !m.detached));
    let pi_id = new_id("pi");
    let seq = store.next_seq();
    let (status, succeeded, action_required) = match (mode, &payment_method) {
        (_, None) => ("requires_payment_method", false, false),
        (PaymentMode::Succeed, Some(_)) => ("succeeded", true, false),
        (PaymentMode::Fail, Some(_)) => ("requires_payment_method", false, false),
        (PaymentMode::ActionRequired, Some(_)) => ("requires_action", false, true),
    };
    let charge_id = if payment_method.is_some() && !action_required {
        let id = new_id("ch");
        let cseq = store.next_seq();
        store.charges.insert(
            id.clone(),
            Charge {
                seq: cseq,
                id: id.clone(),
                created: now,
                amount,
                amount_refunded: 0,
                currency: currency.to_string(),
                customer: Some(customer_id.to_string()),
                payment_intent: Some(pi_id.clone()),
                payment_method: payment_method.clone(),
                description: description.clone(),
                succeeded,
                refunds: Vec::new(),
                metadata: metadata.clone(),
            },
        );
        Some(id)
    } else {
        None
    };
    store.payment_intents.insert(
        pi_id.clone(),
        PaymentIntent {
            seq,
            id: pi_id.clone(),
            created: now,
            amount,
            currency: currency.to_string(),
            customer: Some(customer_id.to_string()),
            status: status.into(),
            payment_method: payment_method.clone(),
            latest_charge: charge_id.clone(),
            description,
            metadata,
            failed: !succeeded && !action_required,
        },
    );
    if let Some(ch) = &charge_id {
        let obj = objects::charge(store, &store.charges[ch]);
        emit(
            store,
            if succeeded {
                "charge.succeeded"
            } else {
                "charge.failed"
            },
            obj,
            None,
            now,
        );
    }
    let pi_obj = objects::payment_intent(&store.payment_intents[&pi_id]);
    let kind = if succeeded {
        "payment_intent.succeeded"
    } else if action_required {
        "payment_intent.requires_action"
    } else {
        "payment_intent.payment_failed"
    };
    emit(store, kind, pi_obj, None, now);
    PaymentOutcome {
        succeeded,
        action_required,
        payment_intent: Some(pi_id),
    }
}

fn mark_paid(store: &mut Store, invoice_id: &str, now: i64) {
    let Some(inv) = store.invoices.get_mut(invoice_id) else {
        return;
    };
    inv.status = "paid".into();
    inv.amount_paid = inv.amount_due();
    inv.paid_at = Some(now);
    inv.next_payment_attempt = None;
    let subscription = inv.subscription.clone();
    emit_invoice(store, "invoice.paid", invoice_id, None, now);
    emit_invoice(store, "invoice.payment_succeeded", invoice_id, None, now);
    if let Some(sub_id) = subscription {
        set_subscription_status(store, &sub_id, "active", now);
    }
}

/// Marks an open invoice paid without taking money (`paid_out_of_band`).
pub fn mark_paid_out_of_band(store: &mut Store, invoice_id: &str, now: i64) {
    mark_paid(store, invoice_id, now);
}

/// Changes a subscription's status, emitting `customer.subscription.updated` when it changes.
pub fn set_subscription_status(store: &mut Store, sub_id: &str, status: &str, now: i64) {
    let Some(sub) = store.subscriptions.get_mut(sub_id) else {
        return;
    };
    if sub.status == status || sub.status == "canceled" || sub.status == "incomplete_expired" {
        return;
    }
    let previous = json!({ "status": sub.status });
    sub.status = status.to_string();
    emit_subscription(
        store,
        "customer.subscription.updated",
        sub_id,
        Some(previous),
        now,
    );
}

/// Tries to collect an open invoice. On failure: `invoice.payment_failed` (and
/// `invoice.payment_action_required`), the next retry time, and the subscription goes
/// `incomplete` (first invoice) or `past_due` (later ones).
pub fn attempt_collection(store: &mut Store, invoice_id: &str, now: i64) -> ApiResult<bool> {
    let inv = store
        .invoices
        .get(invoice_id)
        .ok_or_else(|| ApiError::missing_resource("invoice", invoice_id, "invoice"))?;
    match inv.status.as_str() {
        "open" => {}
        "paid" => return Err(ApiError::bad_request("Invoice is already paid")),
        other => {
            return Err(ApiError::bad_request(format!(
                "You can only pay an open invoice; this one is {other}."
            )));
        }
    }
    let amount = inv.amount_due() - inv.amount_paid;
    if amount <= 0 {
        mark_paid(store, invoice_id, now);
        return Ok(true);
    }
    let (customer, currency, subscription) = (
        inv.customer.clone(),
        inv.currency.clone(),
        inv.subscription.clone(),
    );
    let number = inv.number.clone().unwrap_or_default();
    // Stripe's order: the invoice's payment method, the subscription's, the customer's.
    let sub_pm = inv.default_payment_method.clone().or_else(|| {
        subscription
            .as_ref()
            .and_then(|s| store.subscriptions.get(s))
            .and_then(|s| s.default_payment_method.clone())
    });
    let outcome = take_payment(
        store,
        &customer,
        amount,
        &currency,
        Some(format!("Invoice {number}")),
        sub_pm,
        Metadata::new(),
        now,
    );
    let inv = store.invoices.get_mut(invoice_id).expect("checked above");
    inv.attempted = true;
    inv.attempt_count += 1;
    inv.payment_intent = outcome.payment_intent.clone();
    if outcome.succeeded {
        mark_paid(store, invoice_id, now);
        return Ok(true);
    }
    let first_invoice = inv.billing_reason == "subscription_create";
    let retry_index = (inv.attempt_count - 1) as usize;
    inv.next_payment_attempt = if first_invoice || outcome.action_required {
        None
    } else {
        RETRY_DELAYS.get(retry_index).map(|d| now + d)
    };
    let retries_exhausted =
        !first_invoice && !outcome.action_required && inv.next_payment_attempt.is_none();
    emit_invoice(store, "invoice.payment_failed", invoice_id, None, now);
    if outcome.action_required {
        emit_invoice(
            store,
            "invoice.payment_action_required",
            invoice_id,
            None,
            now,
        );
    }
    if let Some(sub_id) = subscription {
        if first_invoice {
            set_subscription_status(store, &sub_id, "incomplete", now);
        } else if retries_exhausted {
            // Stripe's default after the last retry: cancel the subscription
            cancel_now(store, &sub_id, now, "payment_failed");
        } else {
            set_subscription_status(store, &sub_id, "past_due", now);
        }
    }
    Ok(false)
}

/// Ends a subscription now; emits `customer.subscription.deleted`.
pub fn cancel_now(store: &mut Store, sub_id: &str, now: i64, reason: &str) {
    let Some(sub) = store.subscriptions.get_mut(sub_id) else {
        return;
    };
    if sub.status == "canceled" {
        return;
    }
    sub.status = "canceled".into();
    sub.ended_at = Some(now);
    if sub.canceled_at.is_none() {
        sub.canceled_at = Some(now);
    }
    sub.cancellation_reason = Some(reason.to_string());
    emit_subscription(store, "customer.subscription.deleted", sub_id, None, now);
}

/// One requested item of a new subscription.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub price: String,
    pub quantity: u64,
    pub metadata: Metadata,
}

/// How a new subscription's first payment is handled (`payment_behavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentBehavior {
    AllowIncomplete,
    ErrorIfIncomplete,
    DefaultIncomplete,
}

/// Checks that every price exists, is active and recurring, and that they agree on currency.
pub fn validate_recurring_prices(
    store: &Store,
    items: &[NewItem],
    param: &str,
) -> ApiResult<String> {
    let mut currency: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let price = store.prices.get(&item.price).ok_or_else(|| {
            ApiError::missing_resource("price", &item.price, &format!("{param}[{i}][price]"))
        })?;
        if price.recurring.is_none() {
            return Err(ApiError::invalid(
                &format!("{param}[{i}][price]"),
                format!(
                    "The price specified ({}) is a one-time price; subscriptions need recurring prices.",
                    price.id
                ),
            ));
        }
        if !price.active {
            return Err(ApiError::invalid(
                &format!("{param}[{i}][price]"),
                format!("The price specified ({}) is inactive.", price.id),
            ));
        }
        match &currency {
            Some(c) if *c != price.currency => {
                return Err(ApiError::invalid(
                    &format!("{param}[{i}][price]"),
                    "All prices on a subscription must have the same currency.",
                ));
            }
            _ => currency = Some(price.currency.clone()),
        }
    }
    currency.ok_or_else(|| ApiError::missing(&format!("{param}[0][price]")))
}

/// Creates a subscription and its first invoice, then collects it.
/// Emits `customer.subscription.created`, the invoice and payment events, and the status change.
#[allow(clippy::too_many_arguments)]
pub fn create_subscription(
    store: &mut Store,
    customer_id: &str,
    items: Vec<NewItem>,
    metadata: Metadata,
    default_payment_method: Option<String>,
    behavior: PaymentBehavior,
    billing_mode: BillingMode,
    now: i64,
) -> ApiResult<String> {
    let customer = store
        .customer(customer_id)
        .ok_or_else(|| ApiError::missing_resource("customer", customer_id, "customer"))?;
    let currency = validate_recurring_prices(store, &items, "items")?;
    let has_pm = default_payment_method.is_some() || customer.default_payment_method.is_some();
    if behavior == PaymentBehavior::ErrorIfIncomplete {
        if !has_pm {
            return Err(ApiError::no_payment_method());
        }
        if customer.effective_payment_mode() != PaymentMode::Succeed {
            return Err(ApiError::card_declined());
        }
    }
    let test_clock = customer.test_clock.clone();
    let sub_id = new_id("sub");
    let seq = store.next_seq();
    let sub_items: Vec<SubscriptionItem> = items
        .iter()
        .map(|i| {
            let recurring = store.prices[&i.price]
                .recurring
                .clone()
                .expect("validated recurring");
            SubscriptionItem {
                id: new_id("si"),
                created: now,
                price: i.price.clone(),
                quantity: i.quantity,
                period_start: now,
                period_end: clock::period_end(
                    now,
                    now,
                    recurring.interval,
                    recurring.interval_count,
                ),
                metadata: i.metadata.clone(),
                debited_amount: unit_amount(store, &i.price) * i.quantity as i64,
            }
        })
        .collect();
    let sub = Subscription {
        seq,
        id: sub_id.clone(),
        created: now,
        customer: customer_id.to_string(),
        currency: currency.clone(),
        status: "incomplete".into(),
        items: sub_items,
        billing_cycle_anchor: now,
        start_date: now,
        cancel_at_period_end: false,
        cancel_at: None,
        canceled_at: None,
        ended_at: None,
        cancellation_reason: None,
        cancellation_comment: None,
        metadata,
        latest_invoice: None,
        default_payment_method,
        test_clock,
        billing_mode,
    };
    let lines: Vec<InvoiceLine> = sub
        .items
        .iter()
        .map(|i| item_line(store, &sub, i))
        .collect();
    let period = sub.period();
    store.subscriptions.insert(sub_id.clone(), sub);
    emit_subscription(store, "customer.subscription.created", &sub_id, None, now);
    let invoice_id = create_draft(
        store,
        customer_id,
        Some(&sub_id),
        "subscription_create",
        &currency,
        lines,
        (period.0, period.0),
        now,
        None,
        false,
    );
    if let Some(sub) = store.subscriptions.get_mut(&sub_id) {
        sub.latest_invoice = Some(invoice_id.clone());
    }
    finalize(store, &invoice_id, now)?;
    if behavior != PaymentBehavior::DefaultIncomplete
        && store.invoices[&invoice_id].status == "open"
    {
        attempt_collection(store, &invoice_id, now)?;
    }
    Ok(sub_id)
}

/// One requested change to a subscription's items (`items[i][...]`).
#[derive(Debug, Clone, Default)]
pub struct ItemChange {
    pub id: Option<String>,
    pub price: Option<String>,
    pub quantity: Option<u64>,
    pub deleted: bool,
    pub metadata: Option<Metadata>,
}

/// A proration the change produces: one line per side of a changed item.
#[derive(Debug, Clone)]
pub struct Proration {
    pub description: String,
    pub amount: i64,
    pub price: String,
    pub quantity: u64,
    pub subscription_item: String,
    pub period: (i64, i64),
}

/// The items after a change and the prorations it causes at time `t`. Pure: the store is not
/// changed, so previews and real updates share this and give the same numbers.
pub fn plan_item_changes(
    store: &Store,
    sub: &Subscription,
    changes: &[ItemChange],
    t: i64,
) -> ApiResult<(Vec<SubscriptionItem>, Vec<Proration>)> {
    let mut items = sub.items.clone();
    let mut prorations = Vec::new();
    let (start, end) = sub.period();
    let total = end - start;
    let remaining = end - t;
    let date = clock::short_date(t);
    for (i, change) in changes.iter().enumerate() {
        if let Some(price) = &change.price {
            let p = store.prices.get(price).ok_or_else(|| {
                ApiError::missing_resource("price", price, &format!("items[{i}][price]"))
            })?;
            if p.recurring.is_none() {
                return Err(ApiError::invalid(
                    &format!("items[{i}][price]"),
                    "Subscriptions need recurring prices.",
                ));
            }
            if p.currency != sub.currency {
                return Err(ApiError::invalid(
                    &format!("items[{i}][price]"),
                    "All prices on a subscription must have the same currency.",
                ));
            }
        }
        match &change.id {
            Some(id) => {
                let idx = items.iter().position(|it| &it.id == id).ok_or_else(|| {
                    ApiError::missing_resource("subscription_item", id, &format!("items[{i}][id]"))
                })?;
                let old = items[idx].clone();
                if change.deleted {
                    let credit = -prorate(credit_base(store, sub, &old), remaining, total);
                    prorations.push(Proration {
                        description: format!(
                            "Unused time on {} after {date}",
                            describe(store, &old.price, old.quantity)
                        ),
                        amount: credit,
                        price: old.price.clone(),
                        quantity: old.quantity,
                        subscription_item: old.id.clone(),
                        period: (t, end),
                    });
                    items.remove(idx);
                    continue;
                }
                let new_price = change.price.clone().unwrap_or_else(|| old.price.clone());
                let new_quantity = change.quantity.unwrap_or(old.quantity);
                if let Some(m) = &change.metadata {
                    crate::form::merge_metadata(&mut items[idx].metadata, m.clone());
                }
                if new_price == old.price && new_quantity == old.quantity {
                    continue;
                }
                let new_amount = unit_amount(store, &new_price) * new_quantity as i64;
                prorations.push(Proration {
                    description: format!(
                        "Unused time on {} after {date}",
                        describe(store, &old.price, old.quantity)
                    ),
                    amount: -prorate(credit_base(store, sub, &old), remaining, total),
                    price: old.price.clone(),
                    quantity: old.quantity,
                    subscription_item: old.id.clone(),
                    period: (t, end),
                });
                prorations.push(Proration {
                    description: format!(
                        "Remaining time on {} after {date}",
                        describe(store, &new_price, new_quantity)
                    ),
                    amount: prorate(new_amount, remaining, total),
                    price: new_price.clone(),
                    quantity: new_quantity,
                    subscription_item: old.id.clone(),
                    period: (t, end),
                });
                items[idx].price = new_price;
                items[idx].quantity = new_quantity;
                // The remaining time is debited at the new price (a caller that does not
                // prorate keeps the old debit: `keep_debits`).
                items[idx].debited_amount = new_amount;
            }
            None => {
                let price = change
                    .price
                    .clone()
                    .ok_or_else(|| ApiError::missing(&format!("items[{i}][price]")))?;
                let quantity = change.quantity.unwrap_or(1);
                let item = SubscriptionItem {
                    id: new_id("si"),
                    created: t,
                    price: price.clone(),
                    quantity,
                    period_start: start,
                    period_end: end,
                    metadata: change.metadata.clone().unwrap_or_default(),
                    debited_amount: unit_amount(store, &price) * quantity as i64,
                };
                prorations.push(Proration {
                    description: format!(
                        "Remaining time on {} after {date}",
                        describe(store, &price, quantity)
                    ),
                    amount: prorate(
                        unit_amount(store, &price) * quantity as i64,
                        remaining,
                        total,
                    ),
                    price,
                    quantity,
                    subscription_item: item.id.clone(),
                    period: (t, end),
                });
                items.push(item);
            }
        }
    }
    Ok((items, prorations))
}

/// The full-period amount a credit for `item`'s unused time is computed from: what was
/// debited for it this period in flexible billing mode, its current price in classic
/// (Stripe's "billing mode" guide: flexible credits from what was actually billed).
pub fn credit_base(store: &Store, sub: &Subscription, item: &SubscriptionItem) -> i64 {
    match sub.billing_mode {
        BillingMode::Flexible => item.debited_amount,
        BillingMode::Classic => unit_amount(store, &item.price) * item.quantity as i64,
    }
}

/// A change made without prorations debits nothing: the items keep what their period
/// was debited at.
pub fn keep_debits(before: &[SubscriptionItem], after: &mut [SubscriptionItem]) {
    for item in after {
        if let Some(old) = before.iter().find(|o| o.id == item.id) {
            item.debited_amount = old.debited_amount;
        }
    }
}

fn describe(store: &Store, price: &str, quantity: u64) -> String {
    let name = product_name(store, price);
    if quantity == 1 {
        name
    } else {
        format!("{quantity} × {name}")
    }
}

/// Creates the invoice items for prorations (pending, or on `invoice`); emits `invoiceitem.created`.
pub fn proration_items(
    store: &mut Store,
    sub: &Subscription,
    prorations: &[Proration],
    invoice: Option<&str>,
    now: i64,
) -> Vec<String> {
    let mut ids = Vec::new();
    for p in prorations {
        let id = new_id("ii");
        let seq = store.next_seq();
        let ii = InvoiceItem {
            seq,
            id: id.clone(),
            created: now,
            customer: sub.customer.clone(),
            amount: p.amount,
            currency: sub.currency.clone(),
            description: Some(p.description.clone()),
            period_start: p.period.0,
            period_end: p.period.1,
            proration: true,
            quantity: p.quantity,
            price: Some(p.price.clone()),
            subscription: Some(sub.id.clone()),
            subscription_item: Some(p.subscription_item.clone()),
            invoice: invoice.map(str::to_string),
            metadata: Metadata::new(),
            test_clock: sub.test_clock.clone(),
            deleted: false,
        };
        store.invoice_items.insert(id.clone(), ii);
        let obj = objects::invoice_item(store, &store.invoice_items[&id]);
        emit(store, "invoiceitem.created", obj, None, now);
        ids.push(id);
    }
    ids
}

/// The lines a renewal of `sub` would bill for the period after the current one.
pub fn renewal_lines(store: &Store, sub: &Subscription) -> (Vec<InvoiceLine>, (i64, i64)) {
    let mut next = sub.clone();
    for item in &mut next.items {
        let recurring = store
            .prices
            .get(&item.price)
            .and_then(|p| p.recurring.clone());
        let (interval, count) = recurring
            .map(|r| (r.interval, r.interval_count))
            .unwrap_or((clock::Interval::Month, 1));
        item.period_start = item.period_end;
        item.period_end =
            clock::period_end(sub.billing_cycle_anchor, item.period_start, interval, count);
    }
    let lines = next
        .items
        .iter()
        .map(|i| item_line(store, &next, i))
        .collect();
    (lines, next.period())
}

/// Crosses a period end: ends a subscription set to cancel, or starts the next period with a
/// draft renewal invoice (`subscription_cycle`) that sweeps in pending invoice items.
pub fn renew(store: &mut Store, sub_id: &str, at: i64) {
    let Some(sub) = store.subscriptions.get(sub_id).cloned() else {
        return;
    };
    let (_, end) = sub.period();
    if sub.cancel_at_period_end || sub.cancel_at.is_some_and(|c| c <= end) {
        cancel_now(store, sub_id, end, "cancellation_requested");
        return;
    }
    let previous_items = objects::subscription(store, &sub)["items"].clone();
    let (lines, period) = renewal_lines(store, &sub);
    // The renewal debits every item at its current price.
    let debits: Vec<i64> = sub
        .items
        .iter()
        .map(|i| unit_amount(store, &i.price) * i.quantity as i64)
        .collect();
    if let Some(s) = store.subscriptions.get_mut(sub_id) {
        for (item, debit) in s.items.iter_mut().zip(debits) {
            item.period_start = period.0;
            item.period_end = period.1;
            item.debited_amount = debit;
        }
    }
    let delay = store.draft_finalize_delay;
    let invoice_id = create_draft(
        store,
        &sub.customer,
        Some(sub_id),
        "subscription_cycle",
        &sub.currency,
        lines,
        (sub.period().0, period.0),
        at,
        Some(delay),
        true,
    );
    let previous_latest = sub.latest_invoice.clone();
    if let Some(s) = store.subscriptions.get_mut(sub_id) {
        s.latest_invoice = Some(invoice_id.clone());
    }
    emit_subscription(
        store,
        "customer.subscription.updated",
        sub_id,
        Some(json!({ "items": previous_items, "latest_invoice": previous_latest })),
        at,
    );
    if delay <= 0 {
        finalize_and_collect(store, &invoice_id, at);
    }
}

/// Finalizes a draft and tries to collect it (what Stripe does about an hour after a renewal).
pub fn finalize_and_collect(store: &mut Store, invoice_id: &str, now: i64) {
    if finalize(store, invoice_id, now).is_ok()
        && store
            .invoices
            .get(invoice_id)
            .is_some_and(|i| i.status == "open")
    {
        let _ = attempt_collection(store, invoice_id, now);
    }
}

/// What is due on a clock next: the earliest time at or before `until`.
fn next_due(store: &Store, clock_id: &str, after: Option<i64>, until: i64) -> Option<i64> {
    let on_clock = |c: &Option<String>| c.as_deref() == Some(clock_id);
    let renewals = store
        .subscriptions
        .values()
        .filter(|s| {
            on_clock(&s.test_clock)
                && matches!(s.status.as_str(), "active" | "past_due" | "trialing")
        })
        .map(|s| s.period().1);
    let scheduled_cancels = store
        .subscriptions
        .values()
        .filter(|s| on_clock(&s.test_clock) && s.is_live())
        .filter_map(|s| s.cancel_at);
    let expiries = store
        .subscriptions
        .values()
        .filter(|s| on_clock(&s.test_clock) && s.status == "incomplete")
        .map(|s| s.created + INCOMPLETE_EXPIRY);
    let drafts = store
        .invoices
        .values()
        .filter(|i| on_clock(&i.test_clock) && i.status == "draft")
        .filter_map(|i| i.automatically_finalizes_at);
    let retries = store
        .invoices
        .values()
        .filter(|i| on_clock(&i.test_clock) && i.status == "open")
        .filter_map(|i| i.next_payment_attempt);
    renewals
        .chain(scheduled_cancels)
        .chain(expiries)
        .chain(drafts)
        .chain(retries)
        .filter(|t| *t <= until && after.is_none_or(|a| *t > a))
        .min()
}

/// Moves a test clock forward to `target`, running everything that falls due on the way in
/// time order: renewals, subscription ends, draft finalization and payment retries.
pub fn advance_clock(store: &mut Store, clock_id: &str, target: i64) {
    // everything due at one instant is handled in one pass, so each pass moves strictly forward
    let mut processed: Option<i64> = None;
    while let Some(t) = next_due(store, clock_id, processed, target) {
        processed = Some(t);
        if let Some(c) = store.test_clocks.get_mut(clock_id) {
            c.frozen_time = c.frozen_time.max(t);
        }
        let sub_ids = store.subscriptions_on_clock(clock_id);
        for sub_id in &sub_ids {
            // `cancel_at` inside a period ends it there; at the period end `renew` ends it
            let cancel_due = store.subscriptions.get(sub_id).is_some_and(|s| {
                let renews_now = matches!(s.status.as_str(), "active" | "past_due" | "trialing")
                    && s.period().1 == t;
                s.is_live() && s.cancel_at == Some(t) && !renews_now
            });
            if cancel_due {
                cancel_now(store, sub_id, t, "cancellation_requested");
            }
            let due = store.subscriptions.get(sub_id).is_some_and(|s| {
                matches!(s.status.as_str(), "active" | "past_due" | "trialing") && s.period().1 == t
            });
            if due {
                renew(store, sub_id, t);
            }
            let expired = store
                .subscriptions
                .get(sub_id)
                .is_some_and(|s| s.status == "incomplete" && s.created + INCOMPLETE_EXPIRY == t);
            if expired {
                let previous = json!({ "status": "incomplete" });
                if let Some(s) = store.subscriptions.get_mut(sub_id) {
                    s.status = "incomplete_expired".into();
                    s.ended_at = Some(t);
                }
                emit_subscription(
                    store,
                    "customer.subscription.deleted",
                    sub_id,
                    Some(previous),
                    t,
                );
            }
        }
        let mut drafts: Vec<(u64, String)> = store
            .invoices
            .values()
            .filter(|i| {
                i.test_clock.as_deref() == Some(clock_id)
                    && i.status == "draft"
                    && i.automatically_finalizes_at == Some(t)
            })
            .map(|i| (i.seq, i.id.clone()))
            .collect();
        drafts.sort();
        for (_, id) in drafts {
            finalize_and_collect(store, &id, t);
        }
        let mut retries: Vec<(u64, String)> = store
            .invoices
            .values()
            .filter(|i| {
                i.test_clock.as_deref() == Some(clock_id)
                    && i.status == "open"
                    && i.next_payment_attempt == Some(t)
            })
            .map(|i| (i.seq, i.id.clone()))
            .collect();
        retries.sort();
        for (_, id) in retries {
            let _ = attempt_collection(store, &id, t);
        }
    }
    if let Some(c) = store.test_clocks.get_mut(clock_id) {
        c.frozen_time = c.frozen_time.max(target);
        c.status = "ready".into();
    }
}

/// Finalizes (and collects) every draft on a clock now, whatever its scheduled time.
pub fn finalize_drafts_on_clock(store: &mut Store, clock_id: &str) -> Vec<String> {
    let now = store
        .test_clocks
        .get(clock_id)
        .map(|c| c.frozen_time)
        .unwrap_or_else(clock::wall_now);
    let mut drafts: Vec<(u64, String)> = store
        .invoices
        .values()
        .filter(|i| i.test_clock.as_deref() == Some(clock_id) && i.status == "draft")
        .map(|i| (i.seq, i.id.clone()))
        .collect();
    drafts.sort();
    let ids: Vec<String> = drafts.into_iter().map(|(_, id)| id).collect();
    for id in &ids {
        finalize_and_collect(store, id, now);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_period_of_ten_dollars_is_five() {
        assert_eq!(prorate(1000, 50, 100), 500);
        assert_eq!(prorate(-1000, 50, 100), -500);
    }

    #[test]
    fn proration_rounds_half_up_on_the_cent() {
        // 1000 × 1/3 = 333.33 → 333; 1000 × 2/3 = 666.67 → 667; 5 × 1/2 = 2.5 → 3
        assert_eq!(prorate(1000, 1, 3), 333);
        assert_eq!(prorate(1000, 2, 3), 667);
        assert_eq!(prorate(5, 1, 2), 3);
        assert_eq!(prorate(-5, 1, 2), -3);
    }

    #[test]
    fn proration_is_clamped_to_the_period() {
        assert_eq!(prorate(1000, -10, 100), 0);
        assert_eq!(prorate(1000, 500, 100), 1000);
        assert_eq!(prorate(1000, 10, 0), 0);
    }

    #[test]
    fn proration_by_the_second_over_a_month() {
        // 31-day month, 10 days + 1 second left, $20.00
        let total = 31 * 86_400;
        let remaining = 10 * 86_400 + 1;
        // 2000 × 864001 / 2678400 = 645.16...
        assert_eq!(prorate(2000, remaining, total), 645);
    }

    #[test]
    fn money_formats_like_stripe_descriptions() {
        assert_eq!(format_money(2000, "usd"), "$20.00");
        assert_eq!(format_money(5, "eur"), "€0.05");
        assert_eq!(format_money(-150, "sek"), "-1.50 SEK");
    }
}
