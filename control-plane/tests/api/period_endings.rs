//! Every billing period's overage is billed, however the period ends (ARCHITECTURE.md
//! invariant 10): a renewal (tested in `lifecycle`), a cancellation at the period end, a
//! cancellation now, a switch to credits. On test clocks against the Stripe stand-in.

use crate::helpers::{TestApp, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc(t: time::OffsetDateTime) -> Value {
    json!(
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    )
}

async fn stored_period(
    app: &TestApp,
    customer: &str,
) -> (time::OffsetDateTime, time::OffsetDateTime) {
    sqlx::query_as(
        "SELECT current_period_start, current_period_end FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A Premium customer on a test clock who used `units` tickets this period.
async fn premium_with_usage(
    app: &TestApp,
    customer: &str,
    units: usize,
) -> (String, time::OffsetDateTime) {
    let clock = app.customer_on_clock(customer, now()).await;
    app.subscribe_via_checkout(customer, "premium").await;
    let (start, end) = stored_period(app, customer).await;
    app.ingest_usage(customer, units, &rfc(start), &rfc(end))
        .await;
    (clock, end)
}

/// [`premium_with_usage`], with the period's start too.
async fn premium_with_usage_in(
    app: &TestApp,
    customer: &str,
    units: usize,
) -> (String, time::OffsetDateTime, time::OffsetDateTime) {
    let clock = app.customer_on_clock(customer, now()).await;
    app.subscribe_via_checkout(customer, "premium").await;
    let (start, end) = stored_period(app, customer).await;
    app.ingest_usage(customer, units, &rfc(start), &rfc(end))
        .await;
    (clock, start, end)
}

/// The customer's overage charge once it exists: (units, amount, Stripe invoice).
async fn charged(app: &TestApp, customer: &str) -> (i64, Decimal, String) {
    app.eventually(
        "the overage charge",
        &format!(
            "SELECT count(*) = 1 AND bool_and(state = 'billed') FROM overage_charges
             WHERE customer_id = '{customer}'"
        ),
    )
    .await;
    sqlx::query_as(
        "SELECT units, amount, stripe_invoice_id FROM overage_charges WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn assert_invoiced(app: &TestApp, invoice: &str, cents: i64) {
    let invoice = app.stripe_get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(invoice["status"], "paid", "{invoice}");
    // The total: a credit balance (unused time of a cancelled period) may pay part of it.
    assert_eq!(invoice["total"], cents, "{invoice}");
    let lines = invoice["lines"]["data"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "only the overage: {lines:?}");
}

#[tokio::test]
async fn cancelling_at_the_period_end_still_bills_the_periods_overage() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (clock, end) = premium_with_usage(&app, "leaver", 120).await;
    let r = app
        .call_as(
            "leaver",
            Method::DELETE,
            "/api/v1/billing/subscriptions",
            None,
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    app.advance(&clock, end.unix_timestamp() + 60).await;
    let (units, amount, invoice) = charged(&app, "leaver").await;
    assert_eq!((units, amount), (20, Decimal::from_str("39.80").unwrap()));
    assert_invoiced(&app, &invoice, 3_980).await;
}

#[tokio::test]
async fn cancelling_now_bills_the_overage_used_so_far_once() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    premium_with_usage(&app, "quitter", 130).await;
    let r = app
        .call_as(
            "quitter",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (units, amount, invoice) = charged(&app, "quitter").await;
    assert_eq!((units, amount), (30, Decimal::from_str("59.70").unwrap()));
    assert_invoiced(&app, &invoice, 5_970).await;
    // The webhooks of the cancellation arrive afterwards and bill nothing more.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM overage_charges WHERE customer_id = 'quitter'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn switching_to_credits_bills_the_fixed_fee_periods_overage() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    premium_with_usage(&app, "switcher", 101).await;
    let r = app
        .call_as(
            "switcher",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (units, amount, invoice) = charged(&app, "switcher").await;
    assert_eq!((units, amount), (1, Decimal::from_str("1.99").unwrap()));
    assert_invoiced(&app, &invoice, 199).await;
}

#[tokio::test]
async fn a_renewal_is_billed_for_its_lines_service_period_not_the_invoice_window() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (clock, end) = premium_with_usage(&app, "window", 125).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    let (units, _, invoice_id) = charged(&app, "window").await;
    assert_eq!(units, 25);
    // The same draft, with an invoice window that is not the service period (Stripe
    // defines period_start/end as the window for pending items): billed all the same.
    let mut draft = app.stripe_get(&format!("/v1/invoices/{invoice_id}")).await;
    let created = draft["created"].clone();
    draft["period_start"] = created.clone();
    draft["period_end"] = created;
    sqlx::query("DELETE FROM overage_charges WHERE customer_id = 'window'")
        .execute(&app.pool)
        .await
        .unwrap();
    let gateway = app.state.stripe.as_ref().unwrap();
    let charge = tollgate_control_plane::overage::bill_renewal_draft(
        &app.pool,
        gateway,
        &app.state.catalog,
        &draft,
    )
    .await
    .unwrap()
    .expect("the ended period is found from the subscription line");
    assert_eq!(charge.units, 25);
}

#[tokio::test]
async fn usage_that_arrives_after_its_period_was_billed_is_trued_up_once() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (clock, start, end) = premium_with_usage_in(&app, "late", 120).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    let (units, _, _) = charged(&app, "late").await;
    assert_eq!(units, 20);
    assert_eq!(
        run_once(&app.state).await.unwrap().parts_billed,
        0,
        "nothing late yet"
    );

    // Five tickets of the ended period reach the ledger late (a spool after an outage).
    app.ingest_usage("late", 5, &rfc(start), &rfc(end)).await;
    let report = run_once(&app.state).await.unwrap();
    assert_eq!(
        (
            report.parts_billed,
            report.units_billed,
            report.cents_billed
        ),
        (1, 5, 995)
    );
    assert_eq!(
        run_once(&app.state).await.unwrap().parts_billed,
        0,
        "billed once"
    );
    let (billed_on, item): (String, String) = sqlx::query_as(
        "SELECT stripe_invoice_id, stripe_invoice_item_id FROM overage_charges
         WHERE customer_id = 'late' AND part = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(billed_on.starts_with("next:sub_"), "{billed_on}");
    let item = app.stripe_get(&format!("/v1/invoiceitems/{item}")).await;
    assert_eq!(item["amount"], 995);
    assert_eq!(item["invoice"], Value::Null, "pending for the next invoice");
}

/// The true-up looks only at periods that can owe something — a pending part, or usage
/// recorded since the last part — and at every period once a day; so its cost follows
/// late usage, not the number of customers.
#[tokio::test]
async fn the_true_up_looks_again_only_at_periods_with_usage_recorded_since_their_last_part() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (clock, start, end) = premium_with_usage_in(&app, "quiet", 120).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    let (units, _, _) = charged(&app, "quiet").await;
    assert_eq!(units, 20);
    let first = run_once(&app.state).await.unwrap();
    assert!(first.full_scan, "the first run looks at everything");
    assert_eq!(first.periods_checked, 1);
    // Within the margin after its part, a period is looked at on every run.
    assert_eq!(run_once(&app.state).await.unwrap().periods_checked, 1);
    // An hour later, nothing recorded since the part: not looked at.
    for statement in [
        "UPDATE overage_charges SET created_at = now() - interval '1 hour'",
        "UPDATE usage_records SET recorded_at = now() - interval '61 minutes'",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let quiet = run_once(&app.state).await.unwrap();
    assert!(!quiet.full_scan);
    assert_eq!(quiet.periods_checked, 0);
    // A late ticket of the period: looked at, and billed.
    app.ingest_usage("quiet", 1, &rfc(start), &rfc(end)).await;
    let late = run_once(&app.state).await.unwrap();
    assert_eq!(
        (late.periods_checked, late.parts_billed, late.cents_billed),
        (1, 1, 199)
    );
    // A day after the last full pass, every period again.
    for statement in [
        "UPDATE overage_charges SET created_at = now() - interval '1 hour'",
        "UPDATE usage_records SET recorded_at = now() - interval '61 minutes'",
        "UPDATE job_cursors SET position = position - 25 * 3600
         WHERE job = 'overage_trueup_full_scan'",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let daily = run_once(&app.state).await.unwrap();
    assert!(daily.full_scan);
    assert_eq!((daily.periods_checked, daily.parts_billed), (1, 0));
    // One customer's pass looks at that customer's periods only, never as the daily one.
    app.ingest_usage("quiet", 1, &rfc(start), &rfc(end)).await;
    let other = tollgate_control_plane::jobs::overage_trueup::run_for_customer(&app.state, "other")
        .await
        .unwrap();
    assert_eq!((other.periods_checked, other.full_scan), (0, false));
    let theirs =
        tollgate_control_plane::jobs::overage_trueup::run_for_customer(&app.state, "quiet")
            .await
            .unwrap();
    assert_eq!((theirs.periods_checked, theirs.parts_billed), (1, 1));
}

#[tokio::test]
async fn a_period_that_ended_within_its_allowance_is_trued_up_when_late_usage_passes_it() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (clock, start, end) = premium_with_usage_in(&app, "edge", 99).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    app.eventually(
        "the period's zero part",
        "SELECT count(*) = 1 FROM overage_charges WHERE customer_id = 'edge' AND units = 0",
    )
    .await;
    app.ingest_usage("edge", 3, &rfc(start), &rfc(end)).await;
    let report = run_once(&app.state).await.unwrap();
    assert_eq!((report.units_billed, report.cents_billed), (2, 398));
}

/// Found by the model-based journeys: tickets of a fixed-fee period that reach the ledger
/// after the customer switched to credits belong to that period. They are trued up as
/// its overage, once, and burn none of the credits (before, they did both: the ledger
/// burned credits for every unit of a customer now on credits, whatever its period).
#[tokio::test]
async fn late_tickets_of_a_fixed_fee_period_after_a_switch_to_credits_burn_no_credits() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (_, start, end) = premium_with_usage_in(&app, "switched-late", 100).await;
    let r = app
        .call_as(
            "switched-late",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let before =
        app.get_as("switched-late", "/api/v1/billing/usage").await["credit_balance"].clone();
    assert_ne!(before, "0.00", "the unused fee became credits");
    // Four tickets of the fixed-fee period, shipped late: first as an older proxy writes
    // them (no billing model: the ledger goes by the period), then as a proxy says it.
    app.ingest_usage("switched-late", 2, &rfc(start), &rfc(end))
        .await;
    app.ingest_usage_admitted_on(
        "switched-late",
        2,
        &rfc(start),
        &rfc(end),
        Some("fixed_fee"),
    )
    .await;
    assert_eq!(
        app.get_as("switched-late", "/api/v1/billing/usage").await["credit_balance"],
        before,
        "no credits burned for them"
    );
    let report = run_once(&app.state).await.unwrap();
    assert_eq!(
        (
            report.parts_billed,
            report.units_billed,
            report.cents_billed
        ),
        (1, 4, 796),
        "trued up as the period's overage"
    );
}

/// The true-up bills the customer's live subscription's next invoice, not a duplicate
/// that was ended at once (newer, but never the customer's).
#[tokio::test]
async fn late_usage_goes_to_the_live_subscription_not_a_newer_duplicate() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("dup-late", now()).await;
    // Two Checkouts opened side by side (two tabs), both paid: the second is ended at
    // once and refunded, and is the newer row.
    let open = |plan: &'static str| {
        json!({"plan": plan, "billing_model": "fixed_fee",
            "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"})
    };
    let first = app.checkout("dup-late", &open("premium")).await;
    let second = app.checkout("dup-late", &open("enterprise")).await;
    app.pay(&first).await;
    app.eventually(
        "the first subscription",
        "SELECT bool_or(status = 'active') FROM subscriptions WHERE customer_id = 'dup-late'",
    )
    .await;
    let live: String = sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions WHERE customer_id = 'dup-late'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (start, end) = stored_period(&app, "dup-late").await;
    app.ingest_usage("dup-late", 100, &rfc(start), &rfc(end))
        .await;
    app.pay(&second).await;
    app.eventually(
        "the duplicate ended",
        "SELECT count(*) = 1 FROM subscriptions
         WHERE customer_id = 'dup-late' AND status = 'canceled'",
    )
    .await;
    app.advance(&clock, end.unix_timestamp() + 2 * 3_600).await;
    app.eventually(
        "the renewed period",
        &format!(
            "SELECT bool_or(current_period_start = to_timestamp({})) FROM subscriptions
             WHERE stripe_subscription_id = '{live}'",
            end.unix_timestamp()
        ),
    )
    .await;
    app.eventually(
        "the ended period's part",
        "SELECT count(*) = 1 AND bool_and(state = 'billed') FROM overage_charges
         WHERE customer_id = 'dup-late'",
    )
    .await;
    app.ingest_usage("dup-late", 3, &rfc(start), &rfc(end))
        .await;
    assert_eq!(run_once(&app.state).await.unwrap().parts_billed, 1);
    let billed_on: String = sqlx::query_scalar(
        "SELECT stripe_invoice_id FROM overage_charges
         WHERE customer_id = 'dup-late' AND kind = 'trueup'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(billed_on, format!("next:{live}"));
}

#[tokio::test]
async fn late_usage_of_a_subscription_that_ended_is_invoiced_on_its_own() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (_, start, end) = premium_with_usage_in(&app, "gone", 110).await;
    let r = app
        .call_as(
            "gone",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success());
    let (units, _, _) = charged(&app, "gone").await;
    assert_eq!(units, 10);
    app.ingest_usage("gone", 4, &rfc(start), &rfc(end)).await;
    let report = run_once(&app.state).await.unwrap();
    assert_eq!((report.units_billed, report.cents_billed), (4, 796));
    let invoice: String = sqlx::query_scalar(
        "SELECT stripe_invoice_id FROM overage_charges WHERE customer_id = 'gone' AND part = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_invoiced(&app, &invoice, 796).await;
}

#[tokio::test]
async fn a_subscription_ended_by_failed_payments_still_bills_its_last_periods_overage() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("dunned", now()).await;
    app.subscribe_via_checkout("dunned", "premium").await;
    let (_, end) = stored_period(&app, "dunned").await;
    let stripe_customer: String =
        sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = 'dunned'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    app.stripe_post(
        &format!("/v1/test_helpers/customers/{stripe_customer}/fail_payments"),
        &[("fail", "true")],
    )
    .await;
    // The renewal fails: the second period runs past due, in grace, on Premium.
    app.advance(&clock, end.unix_timestamp() + 2 * 3600).await;
    app.eventually(
        "the failed renewal",
        "SELECT status = 'past_due' FROM subscriptions
         WHERE customer_id = 'dunned' AND stripe_subscription_id IS NOT NULL",
    )
    .await;
    let (start2, end2) = stored_period(&app, "dunned").await;
    assert_eq!(start2, end);
    app.ingest_usage("dunned", 115, &rfc(start2), &rfc(end2))
        .await;
    // Stripe retries 3, 5 and 7 days later, then cancels the subscription.
    app.advance(&clock, end.unix_timestamp() + 16 * 86_400)
        .await;
    app.eventually(
        "the cancellation after the last retry",
        "SELECT status = 'canceled' FROM subscriptions
         WHERE customer_id = 'dunned' AND stripe_subscription_id IS NOT NULL",
    )
    .await;
    app.eventually(
        "the last period's overage",
        "SELECT count(*) = 1 FROM overage_charges WHERE customer_id = 'dunned' AND units > 0 AND state = 'billed'",
    )
    .await;
    let (units, amount, invoice): (i64, Decimal, String) = sqlx::query_as(
        "SELECT units, amount, stripe_invoice_id FROM overage_charges
         WHERE customer_id = 'dunned' AND units > 0",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((units, amount), (15, Decimal::from_str("29.85").unwrap()));
    let invoice = app.stripe_get(&format!("/v1/invoices/{invoice}")).await;
    // Owed: the card still fails, and Stripe keeps collecting it (automatic collection).
    assert_eq!(invoice["status"], "open", "{invoice}");
    assert_eq!(invoice["amount_due"], 2_985);
}

#[tokio::test]
async fn overage_waiting_for_a_next_invoice_is_invoiced_when_the_subscription_ends() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Within the allowance this period, but an earlier period's overage (a true-up part,
    // a renewal draft reached late) waits for the subscription's next invoice.
    let (_, _) = premium_with_usage(&app, "pending", 40).await;
    let sub: String = sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions WHERE customer_id = 'pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let stripe_customer: String = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM customers WHERE customer_id = 'pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let item = app
        .stripe_post(
            "/v1/invoiceitems",
            &[
                ("customer", stripe_customer.as_str()),
                ("subscription", sub.as_str()),
                ("amount", "995"),
                ("currency", "usd"),
                ("description", "Overage: 5 tickets (late)"),
            ],
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .call_as(
            "pending",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success());
    // The sweep runs once the ending has committed: wait for its invoice to be paid.
    let mut invoice = Value::Null;
    for _ in 0..100 {
        let invoiced = app.stripe_get(&format!("/v1/invoiceitems/{item}")).await;
        if let Some(id) = invoiced["invoice"].as_str() {
            invoice = app.stripe_get(&format!("/v1/invoices/{id}")).await;
            if invoice["status"] == "paid" {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        invoice["status"], "paid",
        "never invoiced and paid: {invoice}"
    );
    assert_eq!(invoice["amount_paid"], 995);
}

/// The sweep of an ended subscription's waiting items is recorded with the ending; one
/// that nothing finished (a crash after the commit, Stripe down through the quick
/// retries) is finished by the true-up job.
#[tokio::test]
async fn a_final_sweep_left_undone_is_finished_by_the_true_up_job() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let (_, _) = premium_with_usage(&app, "unswept", 40).await;
    let (sub, stripe_customer): (String, String) = sqlx::query_as(
        "SELECT s.stripe_subscription_id, c.stripe_customer_id
         FROM subscriptions s JOIN customers c USING (customer_id)
         WHERE s.customer_id = 'unswept'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let r = app
        .call_as(
            "unswept",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success());
    app.eventually(
        "the ending's sweep done",
        "SELECT count(*) = 1 FROM overage_charges
         WHERE customer_id = 'unswept' AND units = 0 AND stripe_invoice_id = 'none'",
    )
    .await;
    // As if the process had died right after the ending committed: the sweep is still
    // to do, and an item of an earlier period waits for an invoice that will not come.
    let item = app
        .stripe_post(
            "/v1/invoiceitems",
            &[
                ("customer", stripe_customer.as_str()),
                ("subscription", sub.as_str()),
                ("amount", "597"),
                ("currency", "usd"),
                ("description", "Overage: 3 tickets (late)"),
            ],
        )
        .await;
    let item = item["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no item: {item}"))
        .to_owned();
    sqlx::query(
        "UPDATE overage_charges SET stripe_invoice_id = 'sweep:' || $1,
             created_at = now() - interval '5 minutes'
         WHERE customer_id = 'unswept' AND units = 0",
    )
    .bind(&sub)
    .execute(&app.pool)
    .await
    .unwrap();
    let report = run_once(&app.state).await.unwrap();
    assert_eq!(report.sweeps_resumed, 1);
    let invoiced = app.stripe_get(&format!("/v1/invoiceitems/{item}")).await;
    let invoice = invoiced["invoice"]
        .as_str()
        .unwrap_or_else(|| panic!("never invoiced: {invoiced}"));
    let invoice = app.stripe_get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(invoice["amount_paid"], 597, "{invoice}");
    let marker: String = sqlx::query_scalar(
        "SELECT stripe_invoice_id FROM overage_charges WHERE customer_id = 'unswept'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(marker, "none");
    assert_eq!(
        run_once(&app.state).await.unwrap().sweeps_resumed,
        0,
        "once"
    );
}

/// Until a row is put in `crash_released`, every write that records an invoice item in
/// `overage_charges` fails: the control plane "dies" after Stripe created the item and
/// before PostgreSQL knew of it. `crash_count` counts the failed writes.
async fn crash_after_stripe_until_released(app: &TestApp) {
    for statement in [
        "CREATE SEQUENCE crash_count",
        "CREATE TABLE crash_released ()",
        "CREATE FUNCTION crash_after_stripe() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.stripe_invoice_item_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM crash_released) THEN
                 PERFORM nextval('crash_count');
                 RAISE EXCEPTION 'injected crash after Stripe';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER crash_after_stripe BEFORE INSERT OR UPDATE ON overage_charges
         FOR EACH ROW EXECUTE FUNCTION crash_after_stripe()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
}

#[tokio::test]
async fn a_crash_between_stripe_and_the_ledger_neither_loses_nor_doubles_overage_as_usage_grows() {
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    crash_after_stripe_until_released(&app).await;
    let (clock, start, end) = premium_with_usage_in(&app, "crash", 120).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    app.eventually(
        "a crash after Stripe added the renewal's overage",
        "SELECT is_called FROM crash_count",
    )
    .await;
    // While the event waits for its retry, five more tickets of the ended period reach
    // the ledger (a proxy's spool). The retry must not send Stripe a different amount
    // under the item's key (Stripe refuses it: the period would never be recorded and
    // its late usage never trued up), nor a new key (a second item).
    app.ingest_usage("crash", 5, &rfc(start), &rfc(end)).await;
    sqlx::query("INSERT INTO crash_released DEFAULT VALUES")
        .execute(&app.pool)
        .await
        .unwrap();
    app.eventually(
        "the renewal's overage recorded",
        "SELECT count(*) = 1 FROM overage_charges
         WHERE customer_id = 'crash' AND state = 'billed' AND units = 20",
    )
    .await;
    let report = run_once(&app.state).await.unwrap();
    assert_eq!((report.units_billed, report.cents_billed), (5, 995));

    // Stripe holds 25 × $1.99 in all, once: 20 on the renewal, 5 for the next invoice.
    let (draft, item): (String, String) = sqlx::query_as(
        "SELECT stripe_invoice_id, stripe_invoice_item_id FROM overage_charges
         WHERE customer_id = 'crash' AND part = 0",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let invoice = app.stripe_get(&format!("/v1/invoices/{draft}")).await;
    let overage: Vec<&Value> = invoice["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["description"]
                .as_str()
                .unwrap_or("")
                .starts_with("Overage")
        })
        .collect();
    assert_eq!(overage.len(), 1, "one overage line: {invoice}");
    assert_eq!(overage[0]["amount"], 3_980);
    assert_eq!(
        app.stripe_get(&format!("/v1/invoiceitems/{item}")).await["amount"],
        3_980
    );
    let stripe_customer = invoice["customer"].as_str().unwrap().to_owned();
    let pending = app
        .stripe_get(&format!(
            "/v1/invoiceitems?customer={stripe_customer}&pending=true"
        ))
        .await;
    let amounts: Vec<&Value> = pending["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["amount"])
        .collect();
    assert_eq!(amounts, [&json!(995)], "{pending}");
    let crashes: i64 = sqlx::query_scalar("SELECT last_value FROM crash_count")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(crashes >= 1);
}

#[tokio::test]
async fn a_final_sweep_finds_the_subscriptions_waiting_item_behind_a_page_of_other_items() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("many-items", "premium").await;
    let stripe_customer = app.stripe_get(&format!("/v1/subscriptions/{sub}")).await["customer"]
        .as_str()
        .unwrap()
        .to_owned();
    // The subscription's own waiting item first (oldest), then more than a page of the
    // customer's other pending items (newest first in Stripe's lists).
    app.stripe_post(
        "/v1/invoiceitems",
        &[
            ("customer", stripe_customer.as_str()),
            ("subscription", sub.as_str()),
            ("amount", "199"),
            ("currency", "usd"),
            ("description", "Overage true-up"),
        ],
    )
    .await;
    for _ in 0..120 {
        app.stripe_post(
            "/v1/invoiceitems",
            &[
                ("customer", stripe_customer.as_str()),
                ("amount", "100"),
                ("currency", "usd"),
                ("description", "Something else"),
            ],
        )
        .await;
    }
    let gateway = app.state.stripe.as_ref().unwrap();
    assert!(
        gateway
            .has_pending_items(&stripe_customer, &sub)
            .await
            .unwrap(),
        "the item on the second page is found"
    );
    assert!(
        !gateway
            .has_pending_items(&stripe_customer, "sub_someone_else")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_part_retried_after_stripe_pruned_its_key_is_found_in_stripe_not_billed_twice() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    crash_after_stripe_until_released(&app).await;
    let (clock, _start, end) = premium_with_usage_in(&app, "day-late", 120).await;
    app.advance(&clock, end.unix_timestamp() + 60).await;
    app.eventually(
        "a crash after Stripe added the renewal's overage",
        "SELECT is_called FROM crash_count",
    )
    .await;
    // The retry comes a day later: Stripe has pruned the item's idempotency key, so the
    // same request would be a new item (the customer billed twice).
    sqlx::query(
        "UPDATE overage_charges SET created_at = now() - interval '25 hours'
         WHERE customer_id = 'day-late' AND state = 'pending'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.stripe_post("/v1/test_helpers/idempotency_keys/expire", &[])
        .await;
    sqlx::query("INSERT INTO crash_released DEFAULT VALUES")
        .execute(&app.pool)
        .await
        .unwrap();
    app.eventually(
        "the renewal's overage recorded",
        "SELECT count(*) = 1 FROM overage_charges
         WHERE customer_id = 'day-late' AND state = 'billed' AND units = 20",
    )
    .await;
    let (draft, item): (String, String) = sqlx::query_as(
        "SELECT stripe_invoice_id, stripe_invoice_item_id FROM overage_charges
         WHERE customer_id = 'day-late' AND part = 0",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let invoice = app.stripe_get(&format!("/v1/invoices/{draft}")).await;
    let overage: Vec<&Value> = invoice["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["description"]
                .as_str()
                .unwrap_or("")
                .starts_with("Overage")
        })
        .collect();
    assert_eq!(overage.len(), 1, "one overage line, not two: {invoice}");
    assert_eq!(overage[0]["amount"], 3_980);
    let customer = invoice["customer"].as_str().unwrap().to_owned();
    let items = app
        .stripe_get(&format!("/v1/invoiceitems?customer={customer}&limit=100"))
        .await;
    let overage_items: Vec<&Value> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["tollgate_period_start"].is_string())
        .collect();
    assert_eq!(overage_items.len(), 1, "{items}");
    assert_eq!(overage_items[0]["id"], item.as_str());
}

#[tokio::test]
async fn a_late_part_that_reaches_stripe_after_its_subscription_ended_is_invoiced_not_left_waiting()
{
    use tollgate_control_plane::jobs::overage_trueup::run_once;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    premium_with_usage(&app, "stranded", 100).await;
    let (start, end) = stored_period(&app, "stranded").await;
    let sub: String = sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions WHERE customer_id = 'stranded'
         AND stripe_subscription_id IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let r = app
        .call_as(
            "stranded",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    app.eventually(
        "the ending's sweep done",
        "SELECT bool_and(stripe_invoice_id = 'none') FROM overage_charges
         WHERE customer_id = 'stranded'",
    )
    .await;
    // Five late tickets, and their part decided while the subscription lived (for its
    // next invoice) but sent only now: Stripe was unreachable in between.
    app.ingest_usage("stranded", 5, &rfc(start), &rfc(end))
        .await;
    sqlx::query(
        "INSERT INTO overage_charges (customer_id, billing_period_start, billing_period_end,
             plan_type, units, unit_rate, amount, state, kind, bill_to, description, part,
             created_at)
         VALUES ('stranded', $1, $2, 'premium', 5, 1.99, 9.95, 'pending', 'trueup',
                 'next:' || $3, 'Overage true-up: 5 tickets at $1.99', 1,
                 now() - interval '5 minutes')",
    )
    .bind(start)
    .bind(end)
    .bind(&sub)
    .execute(&app.pool)
    .await
    .unwrap();
    let report = run_once(&app.state).await.unwrap();
    assert_eq!(report.failures, 0, "{report:?}");
    let (invoice, item): (String, String) = sqlx::query_as(
        "SELECT stripe_invoice_id, stripe_invoice_item_id FROM overage_charges
         WHERE customer_id = 'stranded' AND part = 1 AND state = 'billed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        invoice.starts_with("in_"),
        "swept onto an invoice, not left for a next one: {invoice}"
    );
    let item = app.stripe_get(&format!("/v1/invoiceitems/{item}")).await;
    assert_eq!(item["invoice"], invoice.as_str(), "{item}");
    let invoice = app.stripe_get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(invoice["status"], "paid", "{invoice}");
    assert_eq!(invoice["amount_paid"], 995);
}
