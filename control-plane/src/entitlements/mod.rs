//! Entitlements: what each customer may do right now, computed from the ledger, served
//! to proxies on a cache miss and published to every proxy when it changes.

mod publisher;

pub use publisher::Publisher;

use billing_model::{
    AccessStatus, BillingModel, BillingPeriod, Catalog, CustomerId, EntitlementSnapshot, Money,
    PlanId, RedisKeys,
};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use time::OffsetDateTime;

/// Why a snapshot could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EntitlementError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("stored state is inconsistent: {0}")]
    Inconsistent(String),
}

/// Computes entitlement snapshots from PostgreSQL.
#[derive(Clone)]
pub struct Entitlements {
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    catalog: Arc<Catalog>,
    keys: RedisKeys,
    upgrade_url: Option<String>,
}

/// The stored subscription fields an entitlement depends on.
type SubscriptionRow = crate::subscription_store::PlanRow;

impl Entitlements {
    pub fn new(
        pool: PgPool,
        redis: redis::aio::ConnectionManager,
        catalog: Arc<Catalog>,
        keys: RedisKeys,
        upgrade_url: Option<String>,
    ) -> Self {
        Self {
            pool,
            redis,
            catalog,
            keys,
            upgrade_url,
        }
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// The customer's entitlement now. A customer seen for the first time is recorded
    /// (their Free periods run monthly from today) and is on the default plan.
    ///
    /// The version is the update sequence read *before* the ledger: an update
    /// published after this read carries a higher sequence and wins in every proxy
    /// cache, so a snapshot computed from older data can never replace it.
    pub async fn snapshot(
        &self,
        customer: &CustomerId,
    ) -> Result<EntitlementSnapshot, EntitlementError> {
        let mut conn = self.pool.acquire().await?;
        self.snapshot_on(&mut conn, customer).await
    }

    /// Records a customer seen for the first time (their Free periods run monthly
    /// from now); nothing for a known one.
    pub(crate) async fn ensure_customer(
        &self,
        customer: &CustomerId,
    ) -> Result<(), EntitlementError> {
        crate::customers::ensure(&self.pool, customer.as_str()).await?;
        Ok(())
    }

    /// [`Entitlements::snapshot`] on one connection (the publisher's, holding the
    /// customer's lock).
    pub(crate) async fn snapshot_on(
        &self,
        conn: &mut PgConnection,
        customer: &CustomerId,
    ) -> Result<EntitlementSnapshot, EntitlementError> {
        let mut redis = self.redis.clone();
        let version: Option<u64> = redis::cmd("GET")
            .arg(self.keys.entitlement_seq())
            .query_async(&mut redis)
            .await?;
        // Two statements: a second statement sees a row a concurrent first sight
        // committed while this one's INSERT waited for it (one statement would not).
        crate::customers::ensure(&mut *conn, customer.as_str()).await?;
        let anchor = crate::customers::free_period_anchor(&mut *conn, customer.as_str()).await?;

        // The anchor comes from the database clock; never compute a period for an
        // instant before it (that would be the period that ended at the anchor).
        let now = OffsetDateTime::now_utc().max(anchor);

        let subscription =
            crate::subscription_store::plan_row(&mut *conn, customer.as_str()).await?;

        let free = self.catalog.free_plan();
        let mut snapshot = match subscription
            .as_ref()
            .and_then(|s| self.paid(customer, s, now))
        {
            Some(paid) => paid,
            None => {
                let period = BillingPeriod::containing(anchor, now)
                    .map_err(|e| EntitlementError::Inconsistent(e.to_string()))?;
                EntitlementSnapshot::free_default(customer.clone(), &self.catalog, period)
            }
        };
        snapshot.version = version.unwrap_or(0);
        snapshot.upgrade_url = self.upgrade_url.clone();

        snapshot.units_used = sqlx::query_scalar!(
            r#"SELECT COALESCE(SUM(quantity), 0)::BIGINT AS "used!"
               FROM usage_records
               WHERE customer_id = $1 AND billing_period_start = $2"#,
            customer.as_str(),
            snapshot.period_start
        )
        .fetch_one(&mut *conn)
        .await?
        .try_into()
        .unwrap_or(0);

        let (purchased, used) = self.credit_units(conn, customer).await?;
        snapshot.credit_units_purchased = purchased;
        snapshot.credit_units_used = used;
        // Chat is a Free-plan privilege that ends with the allowance; paid plans keep it.
        snapshot.chat_enabled = snapshot.plan != *free.id() || !snapshot.is_exhausted();
        Ok(snapshot)
    }

    /// The snapshot of a stored subscription, or `None` when it no longer grants
    /// anything beyond the Free plan (canceled).
    fn paid(
        &self,
        customer: &CustomerId,
        row: &SubscriptionRow,
        now: OffsetDateTime,
    ) -> Option<EntitlementSnapshot> {
        let (start, end) = (row.current_period_start?, row.current_period_end?);
        // A pending downgrade applies from the period end, even before its webhook.
        let plan_type = match &row.pending_plan_type {
            Some(pending) if now >= end => pending,
            _ => &row.plan_type,
        };
        let plan = PlanId::parse(plan_type)
            .ok()
            .and_then(|id| self.catalog.get(&id))?;
        let model = BillingModel::from_name(&row.billing_model)?;
        use crate::subscription_store::SubscriptionStatus as S;
        let status = match row.status()? {
            S::Active => AccessStatus::Active,
            S::Trialing => AccessStatus::Trialing,
            S::PastDue if row.grace_until.is_none_or(|g| g > now) => AccessStatus::PastDueInGrace,
            S::PastDue | S::Unpaid | S::Paused => AccessStatus::Lapsed,
            S::Canceled | S::Incomplete | S::IncompleteExpired => return None,
        };
        // A period that has ended while its renewal webhook is still on the way: the
        // next anniversary period has begun all the same (rolled from both bounds, so a
        // month-end anniversary survives a clamped February).
        let period = BillingPeriod::from_bounds(start, end)
            .ok()?
            .rolled_forward_to(now)
            .ok()?;
        let included = if status.in_good_standing() {
            plan.included_units()
        } else {
            self.catalog.free_plan().included_units()
        };
        Some(EntitlementSnapshot {
            customer_id: customer.clone(),
            plan: plan.id().clone(),
            billing_model: model,
            status,
            period_start: period.start(),
            period_end: period.end(),
            included_units: u64::from(included),
            overage_allowed: !plan.blocks_at_limit(),
            units_used: 0,
            credit_units_purchased: 0,
            credit_units_used: 0,
            chat_enabled: true,
            upgrade_url: None,
            version: 0,
        })
    }

    /// Credit units bought (minus what expired or was revoked) and credit units used,
    /// the two monotonic numbers the proxy enforces credits with. Summed per unit price
    /// first, so a ticket whose price was split across two grants still counts once.
    async fn credit_units(
        &self,
        conn: &mut PgConnection,
        customer: &CustomerId,
    ) -> Result<(u64, u64), EntitlementError> {
        let groups = sqlx::query!(
            r#"SELECT unit_price,
                      SUM(CASE WHEN closed_at IS NULL THEN credit_amount ELSE used_amount END)
                          AS "purchased!",
                      SUM(used_amount) AS "used!"
               FROM billing_credits WHERE customer_id = $1
               GROUP BY unit_price"#,
            customer.as_str()
        )
        .fetch_all(&mut *conn)
        .await?;
        let units = |amount: Decimal, price: Decimal| -> u64 {
            Money::from_decimal_exact(amount)
                .zip(Money::from_decimal_exact(price))
                .map(|(a, p)| billing_model::whole_units(a, p))
                .unwrap_or(0)
        };
        Ok(groups.iter().fold((0, 0), |(bought, used), g| {
            (
                bought + units(g.purchased, g.unit_price),
                used + units(g.used, g.unit_price),
            )
        }))
    }
}
