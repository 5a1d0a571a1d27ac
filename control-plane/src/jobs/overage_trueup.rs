//! Overage true-up: usage that reached the ledger after its period was billed (requests
//! in flight across the period end, a proxy's usage log shipped late after an outage) is
//! billed too, never dropped (ARCHITECTURE.md invariant 10).
//!
//! Every billed period has its parts in `overage_charges` (a zero part when it ended
//! within its allowance). This job compares, for periods that ended in the last
//! [`LOOKBACK_DAYS`], the overage the ledger holds now with what the parts billed, and
//! bills the difference as the next part: on the subscription's next invoice while it
//! lives, else on an invoice of its own, charged at once. Each part is recorded before
//! it is billed and has its own idempotency key ([`crate::overage::part`]), so reruns
//! and crashes bill it once; a part any path left pending is billed here first.

use crate::overage::part::{self, BillTo, Kind, Part, PeriodState, lock_period};
use crate::state::AppState;
use billing_model::{PlanId, overage_units};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

/// How far back ended periods are trued up (beyond it, late usage is a reconciliation
/// matter for people, not a charge a customer would expect).
pub const LOOKBACK_DAYS: i64 = 60;

/// A period is looked at on every run for this long after its last part was decided,
/// then only when usage is recorded for it after that part. A record is stamped when its
/// ingest transaction begins and seen when it commits, so one stamped just before a part
/// may become visible just after it; the ledger bounds that transaction
/// ([`crate::ledger::INGEST_TIMEOUT`]) far below this margin. Pending parts are always
/// looked at, and once a day every period is ([`FULL_SCAN_EVERY`]).
pub const RECORDED_MARGIN: time::Duration = time::Duration::minutes(10);

/// How often a run looks at every period of the lookback, whatever was recorded: the
/// safety net under [`RECORDED_MARGIN`].
pub const FULL_SCAN_EVERY: time::Duration = time::Duration::hours(24);

const FULL_SCAN_CURSOR: &str = "overage_trueup_full_scan";

/// What one run billed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrueUpReport {
    pub periods_checked: u64,
    pub parts_billed: u64,
    pub units_billed: u64,
    pub cents_billed: i64,
    /// Periods whose true-up failed this run (retried next run).
    pub failures: u64,
    /// Final sweeps of ended subscriptions finished for an ending that left them undone.
    pub sweeps_resumed: u64,
    /// Whether this run looked at every period of the lookback (once a day), not only
    /// those with a pending part or usage recorded since their last part.
    pub full_scan: bool,
}

struct BilledPeriod {
    customer_id: String,
    billing_period_start: OffsetDateTime,
    billing_period_end: OffsetDateTime,
    plan_type: String,
    last_part: i32,
}

/// One pass over recently ended periods (call under the job's advisory lock).
pub async fn run_once(state: &AppState) -> anyhow::Result<TrueUpReport> {
    run(state, None).await
}

/// [`run_once`] for one customer's periods only (the same rules; for a customer whose
/// late usage is known to have arrived, without a pass over everyone's).
pub async fn run_for_customer(state: &AppState, customer: &str) -> anyhow::Result<TrueUpReport> {
    run(state, Some(customer)).await
}

async fn run(state: &AppState, only: Option<&str>) -> anyhow::Result<TrueUpReport> {
    let mut report = TrueUpReport::default();
    let Some(gateway) = state.stripe.as_ref() else {
        return Ok(report);
    };
    // Each period costs a transaction and a lock, so a run looks only at periods that
    // can owe something: a part still pending, or usage recorded since the last part
    // (every billed period of the last 60 days, for every customer, on every run, grows
    // with the customer base). A full pass once a day catches anything else.
    let last_full: Option<i64> =
        sqlx::query_scalar("SELECT position FROM job_cursors WHERE job = $1")
            .bind(FULL_SCAN_CURSOR)
            .fetch_optional(&state.pool)
            .await?;
    let now = OffsetDateTime::now_utc();
    // A pass over one customer is not the daily pass over everyone.
    let full =
        only.is_none() && last_full.is_none_or(|t| t <= (now - FULL_SCAN_EVERY).unix_timestamp());
    let periods: Vec<(String, OffsetDateTime, OffsetDateTime, String, i32)> = sqlx::query_as(
        "SELECT o.customer_id, o.billing_period_start, o.billing_period_end,
                (array_agg(o.plan_type ORDER BY o.part))[1], MAX(o.part)
         FROM overage_charges o
         WHERE o.billing_period_end > now() - make_interval(days => $1)
           AND ($4::text IS NULL OR o.customer_id = $4)
         GROUP BY o.customer_id, o.billing_period_start, o.billing_period_end
         HAVING $3
             OR bool_or(o.state = 'pending')
             OR MAX(o.created_at) > now() - make_interval(secs => $2)
             OR EXISTS (SELECT 1 FROM usage_records u
                        WHERE u.customer_id = o.customer_id
                          AND u.billing_period_start = o.billing_period_start
                          AND u.recorded_at > MAX(o.created_at))",
    )
    .bind(i32::try_from(LOOKBACK_DAYS).unwrap_or(60))
    .bind(RECORDED_MARGIN.as_seconds_f64())
    .bind(full)
    .bind(only)
    .fetch_all(&state.pool)
    .await?;
    report.full_scan = full;
    for (customer_id, billing_period_start, billing_period_end, plan_type, last_part) in periods {
        report.periods_checked += 1;
        let period = BilledPeriod {
            customer_id,
            billing_period_start,
            billing_period_end,
            plan_type,
            last_part,
        };
        // One period's failure (Stripe refusing, a customer gone) must not stop the
        // others; it is retried on the next run.
        match true_up(state, gateway, &period).await {
            Ok(Some((units, cents))) => {
                report.parts_billed += 1;
                report.units_billed += units;
                report.cents_billed += cents;
            }
            Ok(None) => {}
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, customer = %period.customer_id,
                    period_start = %period.billing_period_start, "overage true-up failed; will retry");
            }
        }
    }
    resume_sweeps(state, gateway, &mut report).await?;
    if full && report.failures == 0 {
        sqlx::query(
            "INSERT INTO job_cursors (job, position) VALUES ($1, $2)
             ON CONFLICT (job) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        )
        .bind(FULL_SCAN_CURSOR)
        .bind(now.unix_timestamp())
        .execute(&state.pool)
        .await?;
    }
    if report.parts_billed > 0 {
        tracing::info!(
            parts = report.parts_billed,
            units = report.units_billed,
            cents = report.cents_billed,
            "late usage trued up"
        );
    }
    Ok(report)
}

/// Sweeps of ended subscriptions' waiting items that an ending decided and nothing
/// finished (a crash after the commit, Stripe down through the quick retries).
async fn resume_sweeps(
    state: &AppState,
    gateway: &crate::stripe::StripeGateway,
    report: &mut TrueUpReport,
) -> anyhow::Result<()> {
    let left: Vec<(String, OffsetDateTime, String, Option<String>)> = sqlx::query_as(
        "SELECT o.customer_id, o.billing_period_start, o.stripe_invoice_id, c.stripe_customer_id
         FROM overage_charges o JOIN customers c USING (customer_id)
         WHERE o.stripe_invoice_id LIKE 'sweep:%'
           AND o.created_at < now() - make_interval(secs => $1)
         ORDER BY o.created_at LIMIT 100",
    )
    .bind(part::STALE_AFTER.as_seconds_f64())
    .fetch_all(&state.pool)
    .await?;
    for (customer, period_start, marker, stripe_customer) in left {
        let subscription = marker
            .strip_prefix(crate::overage::SWEEP_PREFIX)
            .unwrap_or_default();
        let Some(stripe_customer) = stripe_customer else {
            continue;
        };
        if let Err(e) = crate::overage::sweep_ended(
            &state.pool,
            gateway,
            &customer,
            &stripe_customer,
            subscription,
            period_start,
        )
        .await
        {
            report.failures += 1;
            tracing::warn!(error = %e, customer = %customer, "final sweep failed; will retry");
        } else {
            report.sweeps_resumed += 1;
        }
    }
    Ok(())
}

/// Bills what the period's ledger usage adds to its parts, or first a part an earlier
/// attempt left pending; `(units, cents)` billed.
async fn true_up(
    state: &AppState,
    gateway: &crate::stripe::StripeGateway,
    period: &BilledPeriod,
) -> anyhow::Result<Option<(u64, i64)>> {
    let mut tx = state.pool.begin().await?;
    // The same lock as the renewal and final paths: one decider per period at a time.
    let part = match lock_period(&mut tx, &period.customer_id, period.billing_period_start).await? {
        PeriodState::Unbilled => return Ok(None),
        PeriodState::Pending(part) => {
            // Its attempt may still be running; once it is old, nothing is.
            if part.decided_at > OffsetDateTime::now_utc() - part::STALE_AFTER {
                return Ok(None);
            }
            *part
        }
        PeriodState::Billed { units, last_part } => {
            match next_part(state, &mut tx, period, units, last_part).await? {
                Some(part) => {
                    part::record_pending(&mut tx, &part).await?;
                    part
                }
                None => return Ok(None),
            }
        }
    };
    tx.commit().await?;
    let stripe_customer = crate::customers::stripe_customer_of(&state.pool, &part.customer).await?;
    let Some(stripe_customer) = stripe_customer else {
        anyhow::bail!("the customer has no Stripe customer");
    };
    if part::bill(&state.pool, gateway, &stripe_customer, &part)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    state.metrics.overage_billed(part.units, part.amount);
    Ok(Some((part.units, part.amount.to_cents())))
}

/// The part that bills what the ledger holds beyond the `billed` units; `None` when
/// nothing is due.
async fn next_part(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    period: &BilledPeriod,
    billed: u64,
    last_part: i32,
) -> anyhow::Result<Option<Part>> {
    let Some(plan) = PlanId::parse(&period.plan_type)
        .ok()
        .and_then(|p| state.catalog.get(&p))
    else {
        return Ok(None);
    };
    let Some(rate) = plan.overage_rate() else {
        return Ok(None);
    };
    let used =
        crate::overage::period_usage(tx, &period.customer_id, period.billing_period_start).await?;
    let due = overage_units(plan.included_units(), used);
    if due <= billed {
        return Ok(None);
    }
    let units = due - billed;
    let amount = rate
        .checked_mul_units(units)
        .ok_or_else(|| anyhow::anyhow!("true-up amount overflows"))?;
    let latest = crate::subscription_store::newest_fixed(tx, &period.customer_id).await?;
    // A next invoice only comes for a subscription that lives on past its period; else
    // an invoice of its own, paid with the last subscription's card.
    let bill_to = match latest {
        Some(sub) if sub.renews() => BillTo::NextInvoice(sub.stripe_subscription_id),
        Some(sub) => BillTo::OwnInvoice(Some(sub.stripe_subscription_id)),
        None => BillTo::OwnInvoice(None),
    };
    Ok(Some(Part {
        customer: period.customer_id.clone(),
        period_start: period.billing_period_start,
        period_end: period.billing_period_end,
        part: last_part.max(period.last_part) + 1,
        kind: Kind::TrueUp,
        plan: plan.id().to_string(),
        units,
        rate,
        amount,
        bill_to,
        description: format!(
            "Late usage: {units} tickets × ${rate} of the period that began {}",
            period.billing_period_start.date()
        ),
        decided_at: OffsetDateTime::now_utc(),
    }))
}
