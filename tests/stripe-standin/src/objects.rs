//! JSON renderings of the stand-in's objects, each built on Stripe's published fixture for
//! that object (`fixtures/stripe-fixtures.json`, from `resources.<object>`): start from the
//! fixture so every field async-stripe requires is there, then set what the stand-in knows
//! and null the optional parts it does not model.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::state::{
    Charge, CheckoutSession, Customer, Invoice, InvoiceItem, InvoiceLine, LineSource,
    PaymentIntent, PaymentMethod, PortalSession, Price, Product, Refund, Store, Subscription,
    SubscriptionItem, TestClock,
};

/// The API version whose shapes these are: what async-stripe 1.0.0-rc.10 sends as `Stripe-Version`.
pub const API_VERSION: &str = "2026-09-30.endive";

fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/stripe-fixtures.json"))
            .expect("fixtures are valid JSON")
    })
}

/// A fresh copy of the fixture for `object`.
pub fn template(object: &str) -> Value {
    fixtures()["resources"][object].clone()
}

/// Sets many fields at once.
fn set(target: &mut Value, fields: Value) {
    if let (Value::Object(t), Value::Object(f)) = (target, fields) {
        for (k, v) in f {
            t.insert(k, v);
        }
    }
}

/// A Stripe list object.
pub fn list(data: Vec<Value>, url: &str, has_more: bool) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

/// A `{"id", "object", "deleted": true}` answer.
pub fn deleted(id: &str, object: &str) -> Value {
    json!({ "id": id, "object": object, "deleted": true })
}

pub fn customer(c: &Customer) -> Value {
    let mut v = template("customer");
    set(
        &mut v,
        json!({
            "id": c.id,
            "created": c.created,
            "email": c.email,
            "name": c.name,
            "description": c.description,
            "metadata": c.metadata,
            "test_clock": c.test_clock,
            "address": null,
            "discount": null,
            "shipping": null,
            "currency": null,
            "invoice_prefix": c.invoice_prefix,
            "next_invoice_sequence": c.next_invoice_sequence,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": c.default_payment_method,
                "footer": null,
                "rendering_options": null
            },
        }),
    );
    v
}

pub fn product(p: &Product) -> Value {
    let mut v = template("product");
    set(
        &mut v,
        json!({
            "id": p.id,
            "created": p.created,
            "updated": p.updated,
            "name": p.name,
            "description": p.description,
            "active": p.active,
            "metadata": p.metadata,
            "default_price": p.default_price,
            "package_dimensions": null,
            "type": "service",
        }),
    );
    v
}

pub fn price(p: &Price) -> Value {
    let mut v = template("price");
    let recurring = p.recurring.as_ref().map(|r| {
        json!({
            "interval": r.interval.as_str(),
            "interval_count": r.interval_count,
            "meter": null,
            "usage_type": "licensed",
            "trial_period_days": null
        })
    });
    set(
        &mut v,
        json!({
            "id": p.id,
            "created": p.created,
            "product": p.product,
            "currency": p.currency,
            "unit_amount": p.unit_amount,
            "unit_amount_decimal": p.unit_amount_decimal,
            "recurring": recurring,
            "type": if p.recurring.is_some() { "recurring" } else { "one_time" },
            "lookup_key": p.lookup_key,
            "nickname": p.nickname,
            "active": p.active,
            "metadata": p.metadata,
            "custom_unit_amount": null,
            "transform_quantity": null,
        }),
    );
    v
}

/// The legacy `plan` mirror of a recurring price that subscription items still carry.
pub fn plan(p: &Price) -> Value {
    let (interval, count) = p
        .recurring
        .as_ref()
        .map(|r| (r.interval.as_str(), r.interval_count))
        .unwrap_or(("month", 1));
    json!({
        "id": p.id,
        "object": "plan",
        "active": p.active,
        "amount": p.unit_amount,
        "amount_decimal": p.unit_amount_decimal,
        "billing_scheme": "per_unit",
        "created": p.created,
        "currency": p.currency,
        "interval": interval,
        "interval_count": count,
        "livemode": false,
        "metadata": p.metadata,
        "meter": null,
        "nickname": p.nickname,
        "product": p.product,
        "tiers_mode": null,
        "transform_usage": null,
        "trial_period_days": null,
        "usage_type": "licensed"
    })
}

fn price_by_id(store: &Store, id: &str) -> Value {
    store.prices.get(id).map(price).unwrap_or(Value::Null)
}

pub fn subscription_item(store: &Store, sub: &Subscription, item: &SubscriptionItem) -> Value {
    let mut v = template("subscription_item");
    let plan_json = store
        .prices
        .get(&item.price)
        .map(plan)
        .unwrap_or(Value::Null);
    set(
        &mut v,
        json!({
            "id": item.id,
            "created": item.created,
            "metadata": item.metadata,
            "price": price_by_id(store, &item.price),
            "plan": plan_json,
            "quantity": item.quantity,
            "subscription": sub.id,
            "current_period_start": item.period_start,
            "current_period_end": item.period_end,
            "billing_thresholds": null,
            "discounts": [],
            "tax_rates": [],
        }),
    );
    v
}

pub fn subscription(store: &Store, s: &Subscription) -> Value {
    let mut v = template("subscription");
    let flexible = (s.billing_mode == crate::state::BillingMode::Flexible)
        .then(|| json!({ "proration_discounts": "included" }));
    let billing_mode = json!({ "type": s.billing_mode.as_str(), "flexible": flexible });
    let items: Vec<Value> = s
        .items
        .iter()
        .map(|i| subscription_item(store, s, i))
        .collect();
    let items_url = format!("/v1/subscription_items?subscription={}", s.id);
    set(
        &mut v,
        json!({
            "id": s.id,
            "created": s.created,
            "customer": s.customer,
            "currency": s.currency,
            "status": s.status,
            "items": { "object": "list", "data": items, "has_more": false, "total_count": s.items.len(), "url": items_url },
            "billing_cycle_anchor": s.billing_cycle_anchor,
            "billing_cycle_anchor_config": null,
            "start_date": s.start_date,
            "cancel_at_period_end": s.cancel_at_period_end,
            "cancel_at": s.cancel_at,
            "canceled_at": s.canceled_at,
            "ended_at": s.ended_at,
            "cancellation_details": { "comment": s.cancellation_comment, "feedback": null, "reason": s.cancellation_reason },
            "metadata": s.metadata,
            "latest_invoice": s.latest_invoice,
            "default_payment_method": s.default_payment_method,
            "test_clock": s.test_clock,
            "application": null,
            "application_fee_percent": null,
            "next_pending_invoice_item_invoice": null,
            "pause_collection": null,
            "payment_settings": { "payment_method_options": null, "payment_method_types": null, "save_default_payment_method": "off" },
            "pending_invoice_item_interval": null,
            "pending_setup_intent": null,
            "pending_update": null,
            "schedule": null,
            "transfer_data": null,
            "trial_end": null,
            "trial_start": null,
            "billing_thresholds": null,
            "billing_mode": billing_mode,
            "billing_schedules": [],
            "managed_payments": null,
            "discounts": [],
            "default_tax_rates": [],
        }),
    );
    v
}

fn line_parent(line: &InvoiceLine) -> Value {
    match &line.source {
        LineSource::SubscriptionItem { subscription, item } => json!({
            "type": "subscription_item_details",
            "invoice_item_details": null,
            "subscription_item_details": {
                "invoice_item": null,
                "proration": line.proration,
                "proration_details": { "credited_items": null },
                "subscription": subscription,
                "subscription_item": item
            }
        }),
        // an invoice item of a subscription item (a proration) reads as that item's line
        LineSource::InvoiceItem {
            invoice_item,
            subscription: Some(subscription),
            subscription_item: Some(item),
        } => json!({
            "type": "subscription_item_details",
            "invoice_item_details": null,
            "subscription_item_details": {
                "invoice_item": invoice_item,
                "proration": line.proration,
                "proration_details": { "credited_items": null },
                "subscription": subscription,
                "subscription_item": item
            }
        }),
        LineSource::InvoiceItem {
            invoice_item,
            subscription,
            ..
        } => json!({
            "type": "invoice_item_details",
            "subscription_item_details": null,
            "invoice_item_details": {
                "invoice_item": invoice_item,
                "proration": line.proration,
                "proration_details": { "credited_items": null },
                "subscription": subscription
            }
        }),
    }
}

fn pricing(store: &Store, price_id: Option<&str>, unit_amount_decimal: String) -> Value {
    match price_id.and_then(|p| store.prices.get(p)) {
        Some(p) => json!({
            "type": "price_details",
            "price_details": { "price": p.id, "product": p.product },
            "unit_amount_decimal": unit_amount_decimal
        }),
        None => Value::Null,
    }
}

pub fn invoice_line(store: &Store, invoice_id: &str, line: &InvoiceLine) -> Value {
    let mut v = template("line_item");
    let subscription = match &line.source {
        LineSource::SubscriptionItem { subscription, .. } => Some(subscription.clone()),
        LineSource::InvoiceItem { subscription, .. } => subscription.clone(),
    };
    let unit = if line.quantity > 0 {
        line.amount / line.quantity as i64
    } else {
        line.amount
    };
    set(
        &mut v,
        json!({
            "id": line.id,
            "amount": line.amount,
            "subtotal": line.amount,
            "currency": line.currency,
            "description": line.description,
            "discount_amounts": [],
            "discountable": true,
            "discounts": [],
            "invoice": invoice_id,
            "metadata": line.metadata,
            "period": { "start": line.period_start, "end": line.period_end },
            "quantity": line.quantity,
            "quantity_decimal": line.quantity.to_string(),
            "subscription": subscription,
            "parent": line_parent(line),
            "pricing": pricing(store, line.price.as_deref(), unit.to_string()),
            "pretax_credit_amounts": [],
            "taxes": [],
        }),
    );
    v
}

pub fn invoice(store: &Store, inv: &Invoice) -> Value {
    let mut v = template("invoice");
    let lines: Vec<Value> = inv
        .lines
        .iter()
        .map(|l| invoice_line(store, &inv.id, l))
        .collect();
    let customer = store.customers.get(&inv.customer);
    let total = inv.total();
    let due = inv.amount_due();
    let remaining = if inv.status == "paid" || inv.status == "void" {
        0
    } else {
        due - inv.amount_paid
    };
    let parent = inv.subscription.as_ref().map(|s| {
        json!({
            "type": "subscription_details",
            "quote_details": null,
            "subscription_details": { "metadata": inv.subscription_metadata, "subscription": s }
        })
    });
    let is_draft = inv.status == "draft";
    set(
        &mut v,
        json!({
            "id": inv.id,
            "created": inv.created,
            "customer": inv.customer,
            "customer_email": customer.and_then(|c| c.email.clone()),
            "customer_name": customer.and_then(|c| c.name.clone()),
            "customer_address": null,
            "customer_shipping": null,
            "currency": inv.currency,
            "status": inv.status,
            "billing_reason": inv.billing_reason,
            "lines": { "object": "list", "data": lines, "has_more": false, "total_count": inv.lines.len(), "url": format!("/v1/invoices/{}/lines", inv.id) },
            "number": inv.number,
            "period_start": inv.period_start,
            "period_end": inv.period_end,
            "attempt_count": inv.attempt_count,
            "attempted": inv.attempted,
            "next_payment_attempt": inv.next_payment_attempt,
            "amount_due": due,
            "amount_paid": inv.amount_paid,
            "amount_remaining": remaining,
            "amount_overpaid": 0,
            "amount_shipping": 0,
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "total": total,
            "total_excluding_tax": total,
            "starting_balance": 0,
            "ending_balance": if is_draft { Value::Null } else { json!(0) },
            "auto_advance": inv.auto_advance,
            "automatically_finalizes_at": if is_draft { json!(inv.automatically_finalizes_at) } else { Value::Null },
            "status_transitions": {
                "finalized_at": inv.finalized_at,
                "marked_uncollectible_at": null,
                "paid_at": inv.paid_at,
                "voided_at": inv.voided_at
            },
            "effective_at": inv.finalized_at,
            "due_date": null,
            "metadata": inv.metadata,
            "test_clock": inv.test_clock,
            "account_name": "Stripe stand-in",
            "default_payment_method": inv.default_payment_method,
            "from_invoice": null,
            "hosted_invoice_url": if is_draft { Value::Null } else { json!(format!("https://invoice.stripe.standin/i/{}", inv.id)) },
            "invoice_pdf": if is_draft { Value::Null } else { json!(format!("https://invoice.stripe.standin/i/{}/pdf", inv.id)) },
            "last_finalization_error": null,
            "parent": parent,
            "payment_settings": { "default_mandate": null, "payment_method_options": null, "payment_method_types": null },
            "rendering": null,
            "shipping_cost": null,
            "shipping_details": null,
            "total_discount_amounts": [],
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": inv.created,
        }),
    );
    v
}

/// The `payments` list of an invoice (an includable field: rendered on `expand[]=payments`).
pub fn invoice_payments(inv: &Invoice) -> Value {
    let data: Vec<Value> = inv
        .payment_intent
        .iter()
        .map(|pi| {
            json!({
                "id": format!("inpay_{}", &inv.id[3..]),
                "object": "invoice_payment",
                "amount_paid": if inv.status == "paid" { json!(inv.amount_paid) } else { Value::Null },
                "amount_requested": inv.amount_due(),
                "created": inv.finalized_at.unwrap_or(inv.created),
                "currency": inv.currency,
                "invoice": inv.id,
                "is_default": true,
                "livemode": false,
                "payment": { "type": "payment_intent", "payment_intent": pi },
                "status": if inv.status == "paid" { "paid" } else { "open" },
                "status_transitions": { "canceled_at": null, "paid_at": inv.paid_at }
            })
        })
        .collect();
    list(
        data,
        &format!("/v1/invoice_payments?invoice={}", inv.id),
        false,
    )
}

pub fn invoice_item(store: &Store, ii: &InvoiceItem) -> Value {
    let mut v = template("invoiceitem");
    let parent = ii.subscription.as_ref().map(|s| {
        json!({
            "type": "subscription_details",
            "subscription_details": { "subscription": s, "subscription_item": ii.subscription_item }
        })
    });
    let unit = if ii.quantity > 0 {
        ii.amount / ii.quantity as i64
    } else {
        ii.amount
    };
    set(
        &mut v,
        json!({
            "id": ii.id,
            "amount": ii.amount,
            "net_amount": ii.amount,
            "currency": ii.currency,
            "customer": ii.customer,
            "date": ii.created,
            "description": ii.description,
            "discountable": true,
            "discounts": [],
            "invoice": ii.invoice,
            "metadata": ii.metadata,
            "period": { "start": ii.period_start, "end": ii.period_end },
            "proration": ii.proration,
            "quantity": ii.quantity,
            "quantity_decimal": ii.quantity.to_string(),
            "tax_rates": [],
            "test_clock": ii.test_clock,
            "parent": parent,
            "pricing": pricing(store, ii.price.as_deref(), unit.to_string()),
        }),
    );
    v
}

pub fn checkout_session(cs: &CheckoutSession) -> Value {
    let mut v = template("checkout.session");
    let complete = cs.status == "complete";
    set(
        &mut v,
        json!({
            "id": cs.id,
            "created": cs.created,
            "expires_at": cs.created + 86_400,
            "mode": cs.mode,
            "customer": cs.customer,
            "customer_email": cs.customer_email,
            "customer_creation": if cs.customer.is_none() || complete { json!("always") } else { Value::Null },
            "customer_details": if complete {
                json!({ "address": null, "email": cs.customer_email, "name": null, "phone": null, "tax_exempt": "none", "tax_ids": [], "business_name": null, "individual_name": null })
            } else { Value::Null },
            "success_url": cs.success_url,
            "cancel_url": cs.cancel_url,
            "client_reference_id": cs.client_reference_id,
            "metadata": cs.metadata,
            "status": cs.status,
            "payment_status": cs.payment_status,
            "subscription": cs.subscription,
            "payment_intent": cs.payment_intent,
            "invoice": cs.invoice,
            "currency": cs.currency,
            "amount_subtotal": cs.amount_subtotal,
            "amount_total": cs.amount_subtotal,
            "url": if complete { Value::Null } else { json!(cs.url) },
            "after_expiration": null,
            "allow_promotion_codes": null,
            "automatic_tax": { "enabled": false, "liability": null, "status": null, "provider": null },
            "billing_address_collection": null,
            "client_secret": null,
            "consent": null,
            "consent_collection": null,
            "custom_fields": [],
            "custom_text": { "after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null },
            "invoice_creation": null,
            "locale": null,
            "payment_link": null,
            "payment_method_collection": "always",
            "payment_method_configuration_details": null,
            "payment_method_options": null,
            "payment_method_types": ["card"],
            "phone_number_collection": { "enabled": false },
            "recovered_from": null,
            "saved_payment_method_options": null,
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "submit_type": null,
            "total_details": { "amount_discount": 0, "amount_shipping": 0, "amount_tax": 0 },
            // Since API 2026-03-25: `hosted_page` (was `hosted`), `embedded_page`, `elements`.
            "ui_mode": "hosted_page",
            "adaptive_pricing": null,
            "discounts": null,
            "collected_information": null,
            "permissions": null,
            "wallet_options": null,
            "origin_context": null,
            "currency_conversion": null,
            "integration_identifier": null,
            "managed_payments": null,
        }),
    );
    v
}

pub fn portal_session(p: &PortalSession) -> Value {
    let mut v = template("billing_portal.session");
    set(
        &mut v,
        json!({
            "id": p.id,
            "created": p.created,
            "customer": p.customer,
            "return_url": p.return_url,
            "url": p.url,
            "configuration": "bpc_standin_default",
            "flow": null,
            "livemode": false,
            "locale": null,
            "on_behalf_of": null,
        }),
    );
    v
}

pub fn payment_intent(pi: &PaymentIntent) -> Value {
    let mut v = template("payment_intent");
    let error = if pi.failed {
        json!({
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
            "charge": pi.latest_charge,
        })
    } else {
        Value::Null
    };
    set(
        &mut v,
        json!({
            "id": pi.id,
            "created": pi.created,
            "amount": pi.amount,
            "amount_capturable": 0,
            "amount_received": if pi.status == "succeeded" { pi.amount } else { 0 },
            "amount_details": null,
            "automatic_payment_methods": null,
            "canceled_at": null,
            "client_secret": format!("{}_secret_standin", pi.id),
            "currency": pi.currency,
            "customer": pi.customer,
            "description": pi.description,
            "last_payment_error": error,
            "latest_charge": pi.latest_charge,
            "metadata": pi.metadata,
            "next_action": null,
            "payment_method": pi.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": null,
            "processing": null,
            "shipping": null,
            "status": pi.status,
            "transfer_data": null,
            "source": null,
            "excluded_payment_method_types": null,
            "managed_payments": null,
        }),
    );
    v
}

pub fn refund(r: &Refund) -> Value {
    let mut v = template("refund");
    set(
        &mut v,
        json!({
            "id": r.id,
            "created": r.created,
            "amount": r.amount,
            "currency": r.currency,
            "charge": r.charge,
            "payment_intent": r.payment_intent,
            "reason": r.reason,
            "metadata": r.metadata,
            "status": "succeeded",
            "destination_details": null,
        }),
    );
    v
}

pub fn charge(store: &Store, c: &Charge) -> Value {
    let mut v = template("charge");
    let refunds: Vec<Value> = c
        .refunds
        .iter()
        .filter_map(|r| store.refunds.get(r))
        .map(refund)
        .collect();
    let outcome = if c.succeeded {
        json!({ "advice_code": null, "network_advice_code": null, "network_decline_code": null, "network_status": "approved_by_network", "reason": null, "risk_level": "normal", "seller_message": "Payment complete.", "type": "authorized" })
    } else {
        json!({ "advice_code": "try_again_later", "network_advice_code": null, "network_decline_code": null, "network_status": "declined_by_network", "reason": "generic_decline", "risk_level": "normal", "seller_message": "The bank did not return any further details with this decline.", "type": "issuer_declined" })
    };
    set(
        &mut v,
        json!({
            "id": c.id,
            "created": c.created,
            "amount": c.amount,
            "amount_captured": if c.succeeded { c.amount } else { 0 },
            "amount_refunded": c.amount_refunded,
            "balance_transaction": null,
            "captured": c.succeeded,
            "currency": c.currency,
            "customer": c.customer,
            "description": c.description,
            "failure_code": if c.succeeded { Value::Null } else { json!("card_declined") },
            "failure_message": if c.succeeded { Value::Null } else { json!("Your card was declined.") },
            "fraud_details": {},
            "metadata": c.metadata,
            "outcome": outcome,
            "paid": c.succeeded,
            "payment_intent": c.payment_intent,
            "payment_method": c.payment_method,
            "receipt_url": null,
            "refunded": c.amount_refunded >= c.amount && c.amount > 0,
            "refunds": list(refunds, &format!("/v1/charges/{}/refunds", c.id), false),
            "review": null,
            "shipping": null,
            "source": null,
            "source_transfer": null,
            "status": if c.succeeded { "succeeded" } else { "failed" },
            "transfer_data": null,
        }),
    );
    v
}

pub fn payment_method(pm: &PaymentMethod) -> Value {
    let mut v = template("payment_method");
    set(
        &mut v,
        json!({ "id": pm.id, "created": pm.created, "customer": pm.customer, "metadata": {} }),
    );
    v
}

pub fn test_clock(c: &TestClock) -> Value {
    let mut v = template("test_helpers.test_clock");
    set(
        &mut v,
        json!({
            "id": c.id,
            "created": c.created,
            "deletes_after": c.created + 30 * 86_400,
            "frozen_time": c.frozen_time,
            "name": c.name,
            "status": c.status,
            "status_details": {},
        }),
    );
    v
}

/// Any object by its id, picked by the id's prefix (for `expand[]`).
pub fn by_id(store: &Store, id: &str) -> Option<Value> {
    let prefix = id.split('_').next().unwrap_or("");
    match prefix {
        "cus" => store.customers.get(id).map(customer),
        "prod" => store.products.get(id).map(product),
        "price" => store.prices.get(id).map(price),
        "sub" => store.subscriptions.get(id).map(|s| subscription(store, s)),
        "in" => store.invoices.get(id).map(|i| invoice(store, i)),
        "ii" => store.invoice_items.get(id).map(|i| invoice_item(store, i)),
        "pi" => store.payment_intents.get(id).map(payment_intent),
        "ch" => store.charges.get(id).map(|c| charge(store, c)),
        "re" => store.refunds.get(id).map(refund),
        "pm" => store.payment_methods.get(id).map(payment_method),
        "clock" => store.test_clocks.get(id).map(test_clock),
        "cs" => store.checkout_sessions.get(id).map(checkout_session),
        _ => None,
    }
}

/// Applies `expand[]` paths (`latest_invoice`, `data.customer`, `items.data.price.product`):
/// each id string met at a path is replaced by its object; paths naming fields that are
/// already objects (such as `data.items`) are accepted and change nothing.
pub fn expand(store: &Store, value: &mut Value, paths: &[String]) {
    for path in paths {
        let segments: Vec<&str> = path.split('.').collect();
        expand_path(store, value, &segments);
    }
}

fn expand_path(store: &Store, value: &mut Value, segments: &[&str]) {
    let Some((head, rest)) = segments.split_first() else {
        return;
    };
    match value {
        Value::Array(items) => {
            for item in items {
                expand_path(store, item, segments);
            }
        }
        Value::Object(map) => {
            if *head == "payments"
                && rest.is_empty()
                && map.get("object") == Some(&json!("invoice"))
            {
                if let Some(inv) = map
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| store.invoices.get(id))
                {
                    map.insert("payments".into(), invoice_payments(inv));
                }
                return;
            }
            let Some(field) = map.get_mut(*head) else {
                return;
            };
            if let Value::String(id) = field
                && let Some(obj) = by_id(store, id)
            {
                *field = obj;
            }
            if !rest.is_empty() {
                expand_path(store, field, rest);
            }
        }
        _ => {}
    }
}

/// An `event` object.
pub fn event(
    id: &str,
    kind: &str,
    created: i64,
    object: Value,
    previous: Option<Value>,
    request: &crate::state::RequestInfo,
    pending_webhooks: i64,
) -> Value {
    let mut data = json!({ "object": object });
    if let Some(prev) = previous {
        data["previous_attributes"] = prev;
    }
    let mut v = template("event");
    set(
        &mut v,
        json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": pending_webhooks,
            "request": { "id": request.id, "idempotency_key": request.idempotency_key },
            "type": kind,
        }),
    );
    v
}
