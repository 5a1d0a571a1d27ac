//! The entitlement snapshot: everything a proxy needs to admit or refuse a customer's
//! request without asking anyone. The control plane sends it on request and publishes
//! it on Redis pub/sub whenever it changes; its JSON form is the wire format.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::catalog::{BillingModel, Catalog, PlanId};
use crate::customer::CustomerId;
use crate::period::BillingPeriod;

/// Where a customer's subscription stands, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessStatus {
    /// Paid up (or on the free plan).
    Active,
    /// In a trial; treated like `Active`.
    Trialing,
    /// A renewal payment failed and Stripe is still retrying; access continues.
    PastDueInGrace,
    /// Payment failed past the grace period, or the subscription is unpaid: the
    /// customer is held to the free plan's limit until they pay.
    Lapsed,
    /// The subscription ended; held to the free plan's limit like `Lapsed`.
    Canceled,
}

impl AccessStatus {
    /// Whether the customer is paid up enough to use what their plan offers.
    pub fn in_good_standing(self) -> bool {
        matches!(
            self,
            AccessStatus::Active | AccessStatus::Trialing | AccessStatus::PastDueInGrace
        )
    }
}

/// Which counter a hard limit is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterScope {
    /// Units used in the current billing period (`units_used`).
    Period,
    /// Prepaid credit units consumed (`credit_units_used`), across periods.
    Credits,
}

/// Why a request is refused; the `code` of the proxy's JSON refusal body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The plan's included units for this period are used up.
    UsageLimitExceeded,
    /// The prepaid credits are used up.
    CreditsExhausted,
    /// Payment is overdue or the subscription ended; the free limit is used up.
    PaymentRequired,
    /// The chat route is not available to this customer right now.
    ChatDisabled,
}

impl RefusalCode {
    /// The wire name, e.g. `"usage_limit_exceeded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::UsageLimitExceeded => "usage_limit_exceeded",
            RefusalCode::CreditsExhausted => "credits_exhausted",
            RefusalCode::PaymentRequired => "payment_required",
            RefusalCode::ChatDisabled => "chat_disabled",
        }
    }
}

/// How the proxy enforces a customer's allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Enforcement {
    /// Admit without reservation; usage beyond the allowance is invoiced as overage.
    PaidOverage,
    /// At most `limit` units on `counter`; past it, refuse with `code`.
    HardLimit {
        /// The most units that may succeed.
        limit: u64,
        /// The counter compared with `limit`.
        counter: CounterScope,
        /// The refusal code once the limit is reached.
        code: RefusalCode,
    },
}

/// A customer's entitlement at one version, as the proxy caches it.
///
/// Lapsed and canceled customers: the control plane writes the free plan's included
/// units into `included_units` (and keeps `plan` as the plan they were on, so the
/// refusal can say what to pay for). `enforcement` then holds them to that limit on
/// the period counter with `payment_required`; no separate field is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementSnapshot {
    /// Whose entitlement this is.
    pub customer_id: CustomerId,
    /// The plan the customer is (or was last) on.
    pub plan: PlanId,
    /// How the customer pays for the plan.
    pub billing_model: BillingModel,
    /// Payment standing.
    pub status: AccessStatus,
    /// Start of the current billing period (RFC 3339 on the wire).
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    /// End of the current billing period, exclusive (RFC 3339 on the wire).
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    /// Units included in the period (the free plan's for lapsed/canceled customers).
    pub included_units: u64,
    /// Whether the plan invoices usage past `included_units` instead of blocking
    /// (the plan has an overage rate). Carried so the proxy needs no catalog lookup.
    pub overage_allowed: bool,
    /// Units used in the period, as of this snapshot (the live count is in Redis).
    pub units_used: u64,
    /// Credit units ever purchased and not expired (the credit limit).
    pub credit_units_purchased: u64,
    /// Credit units consumed (the credit counter).
    pub credit_units_used: u64,
    /// Whether the chat route is open for this customer (set by the control plane;
    /// an exhausted hard limit closes it too, see [`EntitlementSnapshot::chat_allowed`]).
    pub chat_enabled: bool,
    /// Where a refused customer can upgrade or pay.
    pub upgrade_url: Option<String>,
    /// Version of this customer's entitlement; higher replaces lower.
    pub version: u64,
}

impl EntitlementSnapshot {
    /// The entitlement of a customer tollgate knows nothing about: the free (default)
    /// plan, active, nothing used, version 0 so any published update replaces it.
    pub fn free_default(
        customer_id: CustomerId,
        catalog: &Catalog,
        period: BillingPeriod,
    ) -> EntitlementSnapshot {
        let free = catalog.free_plan();
        EntitlementSnapshot {
            customer_id,
            plan: free.id().clone(),
            billing_model: BillingModel::FixedFee,
            status: AccessStatus::Active,
            period_start: period.start(),
            period_end: period.end(),
            included_units: u64::from(free.included_units()),
            overage_allowed: !free.blocks_at_limit(),
            units_used: 0,
            credit_units_purchased: 0,
            credit_units_used: 0,
            chat_enabled: true,
            upgrade_url: None,
            version: 0,
        }
    }

    /// How the proxy must enforce this entitlement.
    pub fn enforcement(&self) -> Enforcement {
        if !self.status.in_good_standing() {
            return Enforcement::HardLimit {
                limit: self.included_units,
                counter: CounterScope::Period,
                code: RefusalCode::PaymentRequired,
            };
        }
        match self.billing_model {
            BillingModel::CreditBurndown => Enforcement::HardLimit {
                limit: self.credit_units_purchased,
                counter: CounterScope::Credits,
                code: RefusalCode::CreditsExhausted,
            },
            BillingModel::FixedFee if self.overage_allowed => Enforcement::PaidOverage,
            BillingModel::FixedFee => Enforcement::HardLimit {
                limit: self.included_units,
                counter: CounterScope::Period,
                code: RefusalCode::UsageLimitExceeded,
            },
        }
    }

    /// The snapshot's count on `counter`.
    pub fn used(&self, counter: CounterScope) -> u64 {
        match counter {
            CounterScope::Period => self.units_used,
            CounterScope::Credits => self.credit_units_used,
        }
    }

    /// Units left under a hard limit, as of this snapshot; `None` with paid overage.
    pub fn remaining(&self) -> Option<u64> {
        match self.enforcement() {
            Enforcement::PaidOverage => None,
            Enforcement::HardLimit { limit, counter, .. } => {
                Some(limit.saturating_sub(self.used(counter)))
            }
        }
    }

    /// Whether a hard limit is used up, so requests can be refused from memory.
    pub fn is_exhausted(&self) -> bool {
        self.remaining() == Some(0)
    }

    /// Whether the chat route may be used: the control plane allows it and no hard
    /// limit is used up (a blocked customer has chat disabled too).
    pub fn chat_allowed(&self) -> bool {
        self.chat_enabled && !self.is_exhausted()
    }

    /// The period this snapshot is for.
    pub fn period(&self) -> Result<BillingPeriod, crate::period::PeriodError> {
        BillingPeriod::from_bounds(self.period_start, self.period_end)
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses the JSON wire form, validating ids on the way in.
    pub fn from_json(text: &str) -> Result<EntitlementSnapshot, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// What the control plane publishes on the entitlement channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementUpdate {
    /// The position in the global update sequence ([`crate::RedisKeys::entitlement_seq`]),
    /// assigned by Redis in the same script that publishes. It is also the snapshot's
    /// version: a proxy sets `snapshot.version = seq` on receipt. A gap tells a proxy
    /// it missed messages and must drop what it cannot trust.
    pub seq: u64,
    /// The customer's new entitlement.
    pub snapshot: EntitlementSnapshot,
}

impl EntitlementUpdate {
    /// The JSON wire form.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses the JSON wire form.
    pub fn from_json(text: &str) -> Result<EntitlementUpdate, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn catalog() -> Catalog {
        Catalog::from_toml_str("config/plans.toml", include_str!("../../config/plans.toml"))
            .unwrap()
    }

    fn may() -> BillingPeriod {
        BillingPeriod::nth(datetime!(2024-05-01 00:00:00 UTC), 0).unwrap()
    }

    fn customer() -> CustomerId {
        CustomerId::parse("cust-1").unwrap()
    }

    fn premium_fixed_fee() -> EntitlementSnapshot {
        EntitlementSnapshot {
            plan: PlanId::parse("premium").unwrap(),
            included_units: 100,
            overage_allowed: true,
            units_used: 120,
            upgrade_url: Some("https://example.com/billing".into()),
            version: 7,
            ..EntitlementSnapshot::free_default(customer(), &catalog(), may())
        }
    }

    #[test]
    fn unknown_customer_gets_the_free_plan_at_version_zero() {
        let snapshot = EntitlementSnapshot::free_default(customer(), &catalog(), may());
        assert_eq!(snapshot.plan.as_str(), "free");
        assert_eq!(snapshot.status, AccessStatus::Active);
        assert_eq!(snapshot.included_units, 10);
        assert!(!snapshot.overage_allowed);
        assert_eq!(snapshot.version, 0);
        assert_eq!(snapshot.period().unwrap(), may());
        assert_eq!(snapshot.remaining(), Some(10));
    }

    #[test]
    fn free_plan_blocks_at_its_included_units() {
        let mut snapshot = EntitlementSnapshot::free_default(customer(), &catalog(), may());
        assert_eq!(
            snapshot.enforcement(),
            Enforcement::HardLimit {
                limit: 10,
                counter: CounterScope::Period,
                code: RefusalCode::UsageLimitExceeded,
            }
        );
        snapshot.units_used = 9;
        assert_eq!(snapshot.remaining(), Some(1));
        assert!(!snapshot.is_exhausted());
        assert!(snapshot.chat_allowed());
        snapshot.units_used = 10;
        assert!(snapshot.is_exhausted());
        assert!(!snapshot.chat_allowed());
        snapshot.units_used = 12;
        assert_eq!(snapshot.remaining(), Some(0));
    }

    #[test]
    fn paid_plan_in_good_standing_has_paid_overage_and_no_remaining() {
        for status in [
            AccessStatus::Active,
            AccessStatus::Trialing,
            AccessStatus::PastDueInGrace,
        ] {
            let snapshot = EntitlementSnapshot {
                status,
                ..premium_fixed_fee()
            };
            assert_eq!(snapshot.enforcement(), Enforcement::PaidOverage);
            assert_eq!(snapshot.remaining(), None);
            assert!(!snapshot.is_exhausted());
        }
    }

    #[test]
    fn credit_burndown_is_limited_by_credits_purchased() {
        let snapshot = EntitlementSnapshot {
            billing_model: BillingModel::CreditBurndown,
            credit_units_purchased: 500,
            credit_units_used: 498,
            ..premium_fixed_fee()
        };
        assert_eq!(
            snapshot.enforcement(),
            Enforcement::HardLimit {
                limit: 500,
                counter: CounterScope::Credits,
                code: RefusalCode::CreditsExhausted,
            }
        );
        assert_eq!(snapshot.remaining(), Some(2));
    }

    #[test]
    fn lapsed_and_canceled_customers_are_held_to_the_free_limit_with_payment_required() {
        for status in [AccessStatus::Lapsed, AccessStatus::Canceled] {
            for billing_model in [BillingModel::FixedFee, BillingModel::CreditBurndown] {
                let snapshot = EntitlementSnapshot {
                    status,
                    billing_model,
                    included_units: 10,
                    units_used: 4,
                    credit_units_purchased: 500,
                    ..premium_fixed_fee()
                };
                assert_eq!(
                    snapshot.enforcement(),
                    Enforcement::HardLimit {
                        limit: 10,
                        counter: CounterScope::Period,
                        code: RefusalCode::PaymentRequired,
                    }
                );
                assert_eq!(snapshot.remaining(), Some(6));
            }
        }
    }

    #[test]
    fn chat_disabled_by_the_control_plane_stays_disabled() {
        let snapshot = EntitlementSnapshot {
            chat_enabled: false,
            ..premium_fixed_fee()
        };
        assert!(!snapshot.chat_allowed());
    }

    #[test]
    fn wire_format_uses_snake_case_and_rfc3339() {
        let json = premium_fixed_fee().to_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["customer_id"], "cust-1");
        assert_eq!(value["plan"], "premium");
        assert_eq!(value["billing_model"], "fixed_fee");
        assert_eq!(value["status"], "active");
        assert_eq!(value["period_start"], "2024-05-01T00:00:00Z");
        assert_eq!(value["period_end"], "2024-06-01T00:00:00Z");
        assert_eq!(value["units_used"], 120);
        assert_eq!(value["version"], 7);
        assert_eq!(
            serde_json::to_value(AccessStatus::PastDueInGrace).unwrap(),
            "past_due_in_grace"
        );
        for code in [
            RefusalCode::UsageLimitExceeded,
            RefusalCode::CreditsExhausted,
            RefusalCode::PaymentRequired,
            RefusalCode::ChatDisabled,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn wire_format_rejects_an_invalid_customer_id() {
        let json = premium_fixed_fee()
            .to_json()
            .unwrap()
            .replace("cust-1", "cust {1}");
        assert!(EntitlementSnapshot::from_json(&json).is_err());
    }

    #[test]
    fn update_carries_seq_and_snapshot() {
        let update = EntitlementUpdate {
            seq: 42,
            snapshot: premium_fixed_fee(),
        };
        let json = update.to_json().unwrap();
        assert!(json.starts_with("{\"seq\":42,\"snapshot\":{"));
        assert_eq!(EntitlementUpdate::from_json(&json).unwrap(), update);
    }

    fn arb_status() -> impl Strategy<Value = AccessStatus> {
        prop_oneof![
            Just(AccessStatus::Active),
            Just(AccessStatus::Trialing),
            Just(AccessStatus::PastDueInGrace),
            Just(AccessStatus::Lapsed),
            Just(AccessStatus::Canceled),
        ]
    }

    fn arb_instant() -> impl Strategy<Value = OffsetDateTime> {
        (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(seconds, nanos)| {
            OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                + time::Duration::nanoseconds(i64::from(nanos))
        })
    }

    fn arb_snapshot() -> impl Strategy<Value = EntitlementSnapshot> {
        (
            ("[A-Za-z0-9._:@-]{1,40}", "[a-z0-9_-]{1,32}", any::<bool>()),
            (arb_status(), arb_instant(), arb_instant()),
            (any::<u64>(), any::<bool>(), any::<u64>()),
            (any::<u64>(), any::<u64>(), any::<bool>()),
            (proptest::option::of("[ -~]{0,40}"), any::<u64>()),
        )
            .prop_map(
                |(
                    (customer, plan, credits),
                    (status, period_start, period_end),
                    (included_units, overage_allowed, units_used),
                    (credit_units_purchased, credit_units_used, chat_enabled),
                    (upgrade_url, version),
                )| EntitlementSnapshot {
                    customer_id: CustomerId::parse(&customer).unwrap(),
                    plan: PlanId::parse(&plan).unwrap(),
                    billing_model: if credits {
                        BillingModel::CreditBurndown
                    } else {
                        BillingModel::FixedFee
                    },
                    status,
                    period_start,
                    period_end,
                    included_units,
                    overage_allowed,
                    units_used,
                    credit_units_purchased,
                    credit_units_used,
                    chat_enabled,
                    upgrade_url,
                    version,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn snapshot_survives_a_json_round_trip(snapshot in arb_snapshot(), seq in any::<u64>()) {
            let json = snapshot.to_json().unwrap();
            prop_assert_eq!(&EntitlementSnapshot::from_json(&json).unwrap(), &snapshot);
            let update = EntitlementUpdate { seq, snapshot };
            prop_assert_eq!(EntitlementUpdate::from_json(&update.to_json().unwrap()).unwrap(), update);
        }

        #[test]
        fn remaining_is_none_exactly_for_paid_overage(snapshot in arb_snapshot()) {
            let paid = snapshot.enforcement() == Enforcement::PaidOverage;
            prop_assert_eq!(snapshot.remaining().is_none(), paid);
            prop_assert_eq!(paid, snapshot.status.in_good_standing()
                && snapshot.billing_model == BillingModel::FixedFee
                && snapshot.overage_allowed);
        }
    }
}
