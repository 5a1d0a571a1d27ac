//! Overage of the fixed-fee model: units used beyond the plan's included units, billed
//! at the plan's overage rate on the period's invoice.

use crate::catalog::Plan;
use crate::money::{Money, MoneyOverflow};

/// Units used beyond the included ones (0 while within the allowance).
pub fn overage_units(included: u32, used: u64) -> u64 {
    used.saturating_sub(u64::from(included))
}

/// What the overage of a period costs: overage units × rate, exact to the cent
/// (a whole number of units times a whole-cent rate needs no rounding). Plans without
/// an overage rate block at their limit, so their overage costs nothing.
///
/// Fails only when the product does not fit in `i64` cents, which no real usage reaches.
pub fn overage_amount(plan: &Plan, used: u64) -> Result<Money, MoneyOverflow> {
    let Some(rate) = plan.overage_rate() else {
        return Ok(Money::ZERO);
    };
    rate.checked_mul_units(overage_units(plan.included_units(), used))
        .ok_or(MoneyOverflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, PlanId};
    use proptest::prelude::*;

    fn catalog() -> Catalog {
        Catalog::from_toml_str("config/plans.toml", include_str!("../../config/plans.toml"))
            .unwrap()
    }

    fn plan(catalog: &Catalog, id: &str) -> Plan {
        catalog.get(&PlanId::parse(id).unwrap()).unwrap().clone()
    }

    /// A catalog with one paid plan at the given rate and allowance.
    fn plan_with_rate(rate_cents: i64, included: u32) -> Plan {
        let text = format!(
            "default_plan = \"free\"\n\
             [[plans]]\nid = \"free\"\nname = \"Free\"\nmonthly_fee = \"0\"\nincluded_units = 1\nbilling_models = [\"fixed_fee\"]\n\
             [[plans]]\nid = \"paid\"\nname = \"Paid\"\nmonthly_fee = \"10\"\nincluded_units = {included}\n\
             overage_rate = \"{}\"\nbilling_models = [\"fixed_fee\"]\n",
            Money::from_cents(rate_cents)
        );
        plan(&Catalog::from_toml_str("test", &text).unwrap(), "paid")
    }

    #[test]
    fn usage_within_the_allowance_has_no_overage() {
        assert_eq!(overage_units(100, 0), 0);
        assert_eq!(overage_units(100, 100), 0);
        assert_eq!(overage_units(100, 101), 1);
        assert_eq!(overage_units(0, 7), 7);
    }

    #[test]
    fn premium_with_137_units_costs_37_times_1_99() {
        let premium = plan(&catalog(), "premium");
        let amount = overage_amount(&premium, 137).unwrap();
        assert_eq!(amount, Money::parse("73.63").unwrap());
        assert_eq!(amount.to_cents(), 7_363);
    }

    #[test]
    fn enterprise_overage_uses_its_own_rate() {
        let enterprise = plan(&catalog(), "enterprise");
        assert_eq!(
            overage_amount(&enterprise, 401).unwrap(),
            Money::parse("1.25").unwrap()
        );
        assert_eq!(overage_amount(&enterprise, 400).unwrap(), Money::ZERO);
    }

    #[test]
    fn free_plan_never_has_an_overage_charge() {
        let catalog = catalog();
        assert_eq!(
            overage_amount(catalog.free_plan(), 10_000).unwrap(),
            Money::ZERO
        );
    }

    #[test]
    fn absurd_usage_overflows_instead_of_wrapping() {
        let premium = plan(&catalog(), "premium");
        assert_eq!(overage_amount(&premium, u64::MAX), Err(MoneyOverflow));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn amount_is_exactly_units_times_rate(rate in 1i64..100_000, included in 0u32..1_000, used in 0u64..1_000_000) {
            let plan = plan_with_rate(rate, included);
            let units = overage_units(included, used);
            let amount = overage_amount(&plan, used).unwrap();
            prop_assert_eq!(i128::from(amount.to_cents()), i128::from(rate) * i128::from(units));
        }

        #[test]
        fn amount_never_decreases_as_usage_grows(rate in 1i64..100_000, included in 0u32..1_000, used in 0u64..1_000_000, more in 0u64..1_000) {
            let plan = plan_with_rate(rate, included);
            prop_assert!(overage_amount(&plan, used).unwrap() <= overage_amount(&plan, used + more).unwrap());
        }
    }
}
