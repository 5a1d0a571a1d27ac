//! The `subscriptions` table: every statement tollgate makes on it, in one place, so the
//! rules its rows follow have one home instead of a copy per caller:
//! - a Stripe subscription's row is written only from a view of Stripe fetched later than
//!   the one it holds ([`store_stripe_state`]);
//! - a customer has at most one credit-model row (no Stripe subscription), restarted by
//!   every switch ([`upsert_credit_row`]);
//! - the row that gives the customer its plan is the newest one that is not incomplete,
//!   a cancelled one only when nothing else is left ([`plan_row`]);
//! - "live" means a status that gives the plan ([`SubscriptionStatus::is_live`]).

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

/// A subscription's status as Stripe names it (the credit-model row uses `active` and
/// `canceled` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    /// Every status, in Stripe's lifecycle order.
    pub const ALL: [SubscriptionStatus; 8] = [
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
        }
    }

    /// The status Stripe (or a stored row) names; `None` for one tollgate does not know.
    pub fn parse(s: &str) -> Option<SubscriptionStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Whether the status gives the customer its plan: active, trialing, or past due
    /// (the grace period decides how long).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Active | SubscriptionStatus::Trialing | SubscriptionStatus::PastDue
        )
    }

    /// Whether a status as Stripe (or a stored row) names it is live; an unknown one is not.
    pub fn names_live(status: &str) -> bool {
        Self::parse(status).is_some_and(Self::is_live)
    }
}

/// The live statuses as SQL binds them (`status = ANY($n)`).
fn live_statuses() -> Vec<&'static str> {
    SubscriptionStatus::ALL
        .into_iter()
        .filter(|s| s.is_live())
        .map(SubscriptionStatus::as_str)
        .collect()
}

/// The row that gives a customer its plan, as the entitlements and the subscription view
/// read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanRow {
    pub plan_type: String,
    pub billing_model: String,
    pub status: String,
    pub current_period_start: Option<OffsetDateTime>,
    pub current_period_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    /// A downgrade that takes effect when the current period ends.
    pub pending_plan_type: Option<String>,
    pub grace_until: Option<OffsetDateTime>,
    pub stripe_subscription_id: Option<String>,
}

impl PlanRow {
    pub fn status(&self) -> Option<SubscriptionStatus> {
        SubscriptionStatus::parse(&self.status)
    }
}

/// A stored Stripe subscription's status, if stored.
pub async fn status_of(
    pool: &PgPool,
    subscription: &str,
) -> Result<Option<SubscriptionStatus>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriptions WHERE stripe_subscription_id = $1")
            .bind(subscription)
            .fetch_optional(pool)
            .await?;
    Ok(status.as_deref().and_then(SubscriptionStatus::parse))
}

/// The customer's plan row: the newest that is not incomplete (an unpaid first Checkout
/// gives nothing), a cancelled one only when nothing else is left.
pub async fn plan_row(
    conn: &mut PgConnection,
    customer: &str,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT plan_type, billing_model, status, current_period_start, current_period_end,
                cancel_at_period_end, pending_plan_type, grace_until, stripe_subscription_id
         FROM subscriptions
         WHERE customer_id = $1 AND status NOT IN ('incomplete', 'incomplete_expired')
         ORDER BY status = 'canceled', created_at DESC
         LIMIT 1",
    )
    .bind(customer)
    .fetch_optional(conn)
    .await
}

/// Serialises, until the transaction ends, every change to the customer's subscriptions
/// and grants that depends on what else the customer holds (a second live subscription, a
/// pack paid while on the fixed fee): concurrent syncs of two of them see each other.
pub async fn lock_customer(conn: &mut PgConnection, customer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('subscription-sync/' || $1, 0))")
        .bind(customer)
        .execute(conn)
        .await?;
    Ok(())
}

/// The customer's live Stripe subscription, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveFixed {
    pub stripe_subscription_id: String,
    pub plan_type: String,
    pub pending_plan_type: Option<String>,
    /// When the stored Stripe state was fetched (ms): the version a change is based on.
    pub stripe_state_at: i64,
}

/// The customer's newest live Stripe subscription, if any.
pub async fn live_fixed(pool: &PgPool, customer: &str) -> Result<Option<LiveFixed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT stripe_subscription_id, plan_type, pending_plan_type, stripe_state_at
         FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
           AND status = ANY($2)
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(customer)
    .bind(live_statuses())
    .fetch_optional(pool)
    .await
}

/// The customer's live Stripe subscriptions stored other than `subscription`.
pub async fn other_live(
    conn: &mut PgConnection,
    customer: &str,
    subscription: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
           AND stripe_subscription_id <> $2
           AND status = ANY($3)",
    )
    .bind(customer)
    .bind(subscription)
    .bind(live_statuses())
    .fetch_all(conn)
    .await
}

/// The customer's `n` newest Stripe subscriptions, live or not (where a saved card may
/// be found).
pub async fn newest_stripe_ids(
    pool: &PgPool,
    customer: &str,
    n: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
         ORDER BY created_at DESC LIMIT $2",
    )
    .bind(customer)
    .bind(n)
    .fetch_all(pool)
    .await
}

/// The customer's newest Stripe subscription, live or not.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NewestFixed {
    pub stripe_subscription_id: String,
    pub status: String,
    pub cancel_at_period_end: bool,
}

impl NewestFixed {
    /// Whether a next invoice will come: it lives on past its current period.
    pub fn renews(&self) -> bool {
        !self.cancel_at_period_end && SubscriptionStatus::names_live(&self.status)
    }
}

/// The customer's current Stripe subscription: the newest live one, else the newest (a
/// duplicate ended at once is newer than the one that stays, but never the customer's).
pub async fn newest_fixed(
    conn: &mut PgConnection,
    customer: &str,
) -> Result<Option<NewestFixed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT stripe_subscription_id, status, cancel_at_period_end FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
         ORDER BY status = ANY($2) DESC, created_at DESC LIMIT 1",
    )
    .bind(customer)
    .bind(live_statuses())
    .fetch_optional(conn)
    .await
}

/// Whose subscription it is, if stored.
pub async fn customer_of(
    conn: &mut PgConnection,
    subscription: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM subscriptions WHERE stripe_subscription_id = $1")
        .bind(subscription)
        .fetch_optional(conn)
        .await
}

/// What a cancellation request answers, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Cancellation {
    pub status: String,
    pub cancel_at_period_end: bool,
    pub current_period_end: Option<OffsetDateTime>,
}

pub async fn cancellation(
    pool: &PgPool,
    subscription: &str,
) -> Result<Option<Cancellation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, cancel_at_period_end, current_period_end FROM subscriptions
         WHERE stripe_subscription_id = $1",
    )
    .bind(subscription)
    .fetch_optional(pool)
    .await
}

/// The stored plan and status of a Stripe subscription before a sync.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Before {
    pub plan_type: String,
    pub status: String,
}

pub async fn before_sync(
    conn: &mut PgConnection,
    subscription: &str,
) -> Result<Option<Before>, sqlx::Error> {
    sqlx::query_as("SELECT plan_type, status FROM subscriptions WHERE stripe_subscription_id = $1")
        .bind(subscription)
        .fetch_optional(conn)
        .await
}

/// A Stripe subscription as Stripe holds it, fetched at `fetched_at` (ms).
#[derive(Debug, Clone)]
pub struct StripeState<'a> {
    pub customer: &'a str,
    pub subscription: &'a str,
    pub stripe_customer: &'a str,
    pub plan: &'a str,
    pub pending_plan: Option<&'a str>,
    pub status: &'a str,
    pub period_start: Option<OffsetDateTime>,
    pub period_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    pub fetched_at: i64,
}

/// What storing a Stripe state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The row is new.
    Created,
    /// The row now holds this state.
    Updated,
    /// The row holds a state fetched later; this one was older and is dropped.
    Older,
}

/// Stores a Stripe subscription's state unless the row holds one fetched later (two
/// syncs, a webhook's and an API call's, may finish in either order).
pub async fn store_stripe_state(
    conn: &mut PgConnection,
    s: &StripeState<'_>,
) -> Result<Stored, sqlx::Error> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO subscriptions (customer_id, stripe_subscription_id, stripe_customer_id,
             plan_type, billing_model, status, current_period_start, current_period_end,
             cancel_at_period_end, stripe_state_at, pending_plan_type)
         VALUES ($1, $2, $3, $4, 'fixed_fee', $5, $6, $7, $8, $9, $10)
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET
             plan_type = EXCLUDED.plan_type,
             pending_plan_type = EXCLUDED.pending_plan_type,
             status = EXCLUDED.status,
             current_period_start = EXCLUDED.current_period_start,
             current_period_end = EXCLUDED.current_period_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end,
             stripe_state_at = EXCLUDED.stripe_state_at,
             updated_at = now()
         WHERE subscriptions.stripe_state_at <= EXCLUDED.stripe_state_at
         RETURNING (xmax = 0)",
    )
    .bind(s.customer)
    .bind(s.subscription)
    .bind(s.stripe_customer)
    .bind(s.plan)
    .bind(s.status)
    .bind(s.period_start)
    .bind(s.period_end)
    .bind(s.cancel_at_period_end)
    .bind(s.fetched_at)
    .bind(s.pending_plan)
    .fetch_optional(conn)
    .await?;
    Ok(match inserted {
        Some(true) => Stored::Created,
        Some(false) => Stored::Updated,
        None => Stored::Older,
    })
}

/// How many Stripe subscriptions the customer has had (this one included).
pub async fn stripe_subscriptions_of(
    conn: &mut PgConnection,
    customer: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL",
    )
    .bind(customer)
    .fetch_one(conn)
    .await
}

/// The credit-model row stops being the customer's plan once a Stripe subscription
/// stored after it lives.
pub async fn end_credit_row_before(
    conn: &mut PgConnection,
    customer: &str,
    subscription: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE subscriptions SET status = 'canceled', updated_at = now()
         WHERE customer_id = $1 AND stripe_subscription_id IS NULL AND status <> 'canceled'
           AND created_at < (SELECT created_at FROM subscriptions WHERE stripe_subscription_id = $2)",
    )
    .bind(customer)
    .bind(subscription)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The customer's credit-model row, on `plan`, active: a new row, or the one row the
/// customer has. `restart` begins it anew (created now, a new period) as a billing-model
/// switch does, and so does coming back to a row that was cancelled (a new stay on
/// credits: its start is when credits began to pay, see `ledger::burn_credits`);
/// otherwise its period and creation are kept.
pub async fn upsert_credit_row(
    conn: &mut PgConnection,
    customer: &str,
    plan: &str,
    restart: bool,
    period: (OffsetDateTime, OffsetDateTime),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO subscriptions (customer_id, plan_type, billing_model, status,
             current_period_start, current_period_end)
         VALUES ($1, $2, 'credit_burndown', 'active', $3, $4)
         ON CONFLICT (customer_id) WHERE stripe_subscription_id IS NULL DO UPDATE
         SET plan_type = EXCLUDED.plan_type, status = 'active', updated_at = now(),
             created_at = CASE WHEN $5 OR subscriptions.status = 'canceled' THEN now()
                               ELSE subscriptions.created_at END,
             current_period_start = CASE WHEN $5 OR subscriptions.status = 'canceled'
                                         THEN EXCLUDED.current_period_start
                                         ELSE subscriptions.current_period_start END,
             current_period_end = CASE WHEN $5 OR subscriptions.status = 'canceled'
                                       THEN EXCLUDED.current_period_end
                                       ELSE subscriptions.current_period_end END",
    )
    .bind(customer)
    .bind(plan)
    .bind(period.0)
    .bind(period.1)
    .bind(restart)
    .execute(conn)
    .await?;
    Ok(())
}

/// When a Stripe subscription's row was created (grants bought before it expire when it
/// begins).
pub async fn created_at(
    conn: &mut PgConnection,
    subscription: &str,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar("SELECT created_at FROM subscriptions WHERE stripe_subscription_id = $1")
        .bind(subscription)
        .fetch_optional(conn)
        .await
}

/// Customers among `customers` whose plan row is on credits, with the instant they
/// entered the credit model (the start of the row's first period).
pub async fn on_credits_among(
    conn: &mut PgConnection,
    customers: &[String],
) -> Result<Vec<(String, Option<OffsetDateTime>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (customer_id) customer_id, current_period_start
         FROM subscriptions
         WHERE customer_id = ANY($1) AND billing_model = 'credit_burndown'
           AND status NOT IN ('incomplete', 'incomplete_expired', 'canceled')
         ORDER BY customer_id, created_at DESC",
    )
    .bind(customers)
    .fetch_all(conn)
    .await
}

/// A payment went through: no failed attempts, no grace. `true` when there was dunning
/// to clear.
pub async fn clear_dunning(
    conn: &mut PgConnection,
    subscription: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE subscriptions SET payment_failed_attempts = 0, next_payment_attempt = NULL,
             grace_until = NULL, updated_at = now()
         WHERE stripe_subscription_id = $1
           AND (grace_until IS NOT NULL OR payment_failed_attempts > 0)",
    )
    .bind(subscription)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// A failed payment attempt: the attempts so far, Stripe's next attempt, and the grace
/// period's end (never moved later by a later failure).
pub async fn record_failed_payment(
    conn: &mut PgConnection,
    subscription: &str,
    attempts: i32,
    next_attempt: Option<OffsetDateTime>,
    grace_until: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE subscriptions SET
             payment_failed_attempts = GREATEST(payment_failed_attempts, $2),
             next_payment_attempt = $3,
             grace_until = LEAST(COALESCE(grace_until, $4), $4),
             updated_at = now()
         WHERE stripe_subscription_id = $1",
    )
    .bind(subscription)
    .bind(attempts)
    .bind(next_attempt)
    .bind(grace_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Past-due subscriptions whose grace ended in `(since, until]`: (customer, subscription).
pub async fn graces_ended(
    pool: &PgPool,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT customer_id, stripe_subscription_id FROM subscriptions
         WHERE status = 'past_due' AND grace_until > $1 AND grace_until <= $2",
    )
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await
}

/// Rows not cancelled, counted by plan, model and status (business metrics).
pub async fn count_by_plan(
    pool: &PgPool,
) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT plan_type, billing_model, status, COUNT(*)
         FROM subscriptions WHERE status <> 'canceled'
         GROUP BY plan_type, billing_model, status",
    )
    .fetch_all(pool)
    .await
}

/// Units used in current periods, by the plan of each customer's newest row not
/// cancelled (`free_plan` for customers without one).
pub async fn usage_this_period_by_plan(
    pool: &PgPool,
    free_plan: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(s.plan_type, $1), SUM(u.quantity)::BIGINT
         FROM usage_records u
         LEFT JOIN LATERAL (
             SELECT plan_type FROM subscriptions s
             WHERE s.customer_id = u.customer_id AND s.status <> 'canceled'
             ORDER BY s.created_at DESC LIMIT 1
         ) s ON true
         WHERE u.billing_period_end > now()
         GROUP BY 1",
    )
    .bind(free_plan)
    .fetch_all(pool)
    .await
}
