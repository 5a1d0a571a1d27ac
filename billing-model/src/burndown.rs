//! Credit burndown: spending prepaid credit grants, soonest-expiring first.
//!
//! Grants that expire first are consumed first so a customer loses as little as
//! possible to expiry; grants without an expiry are kept for last.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::money::Money;

/// A prepaid credit grant (one purchased pack, a promotion, a refund credit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditGrant {
    /// The grant's id in the ledger.
    pub id: Uuid,
    /// What is left of the grant; zero or negative grants are never drawn from.
    pub remaining: Money,
    /// When the grant stops being usable (exclusive: at `expires_at` it is expired).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When the grant was made; breaks ties between grants expiring together.
    #[serde(with = "time::serde::rfc3339")]
    pub granted_at: OffsetDateTime,
}

impl CreditGrant {
    /// Whether the grant can be drawn from at `now`.
    pub fn is_usable(&self, now: OffsetDateTime) -> bool {
        !self.remaining.is_negative()
            && !self.remaining.is_zero()
            && self.expires_at.is_none_or(|expiry| expiry > now)
    }
}

/// An amount taken from one grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduction {
    /// The grant drawn from.
    pub grant_id: Uuid,
    /// How much was taken from it (positive).
    pub amount: Money,
}

/// Why credits could not be deducted. Nothing is deducted in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeductError {
    /// The usable grants hold less than the amount asked for.
    #[error("insufficient credits: {available} available, {requested} requested")]
    InsufficientCredits {
        /// Sum of the usable grants.
        available: Money,
        /// The amount asked for.
        requested: Money,
    },
    /// A negative amount, which would add credit instead of spending it.
    #[error("cannot deduct a negative amount ({0})")]
    NegativeAmount(Money),
}

/// The order grants are consumed in: earliest expiry first, no expiry last, then
/// oldest grant first, then by id so the order is total and repeatable.
pub fn consumption_order(a: &CreditGrant, b: &CreditGrant) -> Ordering {
    let expiry = match (a.expires_at, b.expires_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    expiry
        .then(a.granted_at.cmp(&b.granted_at))
        .then(a.id.cmp(&b.id))
}

/// Takes `amount` from the usable grants in [`consumption_order`], all or nothing.
///
/// Expired grants (`expires_at <= now`) and empty ones are skipped; no grant is taken
/// below zero. A zero amount deducts nothing.
pub fn deduct_fifo(
    grants: &[CreditGrant],
    amount: Money,
    now: OffsetDateTime,
) -> Result<Vec<Deduction>, DeductError> {
    if amount.is_negative() {
        return Err(DeductError::NegativeAmount(amount));
    }
    let available = balance(grants, now);
    if available < amount {
        return Err(DeductError::InsufficientCredits {
            available,
            requested: amount,
        });
    }
    let mut usable: Vec<&CreditGrant> = grants.iter().filter(|g| g.is_usable(now)).collect();
    usable.sort_by(|a, b| consumption_order(a, b));

    let mut left = amount.to_cents();
    let mut deductions = Vec::new();
    for grant in usable {
        if left == 0 {
            break;
        }
        let take = grant.remaining.to_cents().min(left);
        deductions.push(Deduction {
            grant_id: grant.id,
            amount: Money::from_cents(take),
        });
        left -= take;
    }
    Ok(deductions)
}

/// The sum of the usable grants at `now`.
///
/// Saturates at the largest amount `Money` holds, far beyond any real balance.
pub fn balance(grants: &[CreditGrant], now: OffsetDateTime) -> Money {
    let cents: i128 = grants
        .iter()
        .filter(|grant| grant.is_usable(now))
        .map(|grant| i128::from(grant.remaining.to_cents()))
        .sum();
    Money::from_cents(i64::try_from(cents).unwrap_or(i64::MAX))
}

/// How many whole units (tickets) a balance pays for at `unit_price`, rounded down:
/// the proxy admits whole tickets only. Zero for a non-positive price or balance.
pub fn whole_units(balance: Money, unit_price: Money) -> u64 {
    let (balance, price) = (balance.to_cents(), unit_price.to_cents());
    if balance <= 0 || price <= 0 {
        return 0;
    }
    u64::try_from(balance / price).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-06-15 12:00:00 UTC);

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn grant(n: u128, remaining: &str, expires_in_days: Option<i64>) -> CreditGrant {
        CreditGrant {
            id: Uuid::from_u128(n),
            remaining: money(remaining),
            expires_at: expires_in_days.map(|days| NOW + Duration::days(days)),
            granted_at: NOW - Duration::days(30) + Duration::hours(n as i64),
        }
    }

    fn taken(deductions: &[Deduction]) -> Vec<(u128, Money)> {
        deductions
            .iter()
            .map(|d| (d.grant_id.as_u128(), d.amount))
            .collect()
    }

    #[test]
    fn earliest_expiry_is_consumed_first_and_no_expiry_last() {
        let grants = [
            grant(1, "10.00", None),
            grant(2, "10.00", Some(30)),
            grant(3, "10.00", Some(5)),
        ];
        let deductions = deduct_fifo(&grants, money("15.00"), NOW).unwrap();
        assert_eq!(
            taken(&deductions),
            [(3, money("10.00")), (2, money("5.00"))]
        );
        let deductions = deduct_fifo(&grants, money("30.00"), NOW).unwrap();
        assert_eq!(
            taken(&deductions),
            [(3, money("10")), (2, money("10")), (1, money("10"))]
        );
    }

    #[test]
    fn expired_and_empty_grants_are_skipped() {
        let mut expired_now = grant(1, "50.00", None);
        expired_now.expires_at = Some(NOW);
        let grants = [
            expired_now,
            grant(2, "50.00", Some(-1)),
            grant(3, "0.00", Some(1)),
            grant(4, "-2.00", Some(1)),
            grant(5, "7.00", Some(2)),
        ];
        assert_eq!(balance(&grants, NOW), money("7.00"));
        let deductions = deduct_fifo(&grants, money("7.00"), NOW).unwrap();
        assert_eq!(taken(&deductions), [(5, money("7.00"))]);
    }

    #[test]
    fn grants_expiring_together_go_oldest_first_then_by_id() {
        let mut older = grant(9, "1.00", Some(3));
        older.granted_at = NOW - Duration::days(90);
        let mut same_time_low_id = grant(2, "1.00", Some(3));
        same_time_low_id.granted_at = NOW - Duration::days(10);
        let mut same_time_high_id = grant(5, "1.00", Some(3));
        same_time_high_id.granted_at = NOW - Duration::days(10);
        let grants = [same_time_high_id, same_time_low_id, older];
        let deductions = deduct_fifo(&grants, money("3.00"), NOW).unwrap();
        let order: Vec<u128> = taken(&deductions).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, [9, 2, 5]);
    }

    #[test]
    fn insufficient_credits_deduct_nothing_and_say_how_much_is_there() {
        let grants = [grant(1, "3.00", Some(1)), grant(2, "4.00", None)];
        assert_eq!(
            deduct_fifo(&grants, money("7.01"), NOW),
            Err(DeductError::InsufficientCredits {
                available: money("7.00"),
                requested: money("7.01"),
            })
        );
        assert!(deduct_fifo(&grants, money("7.00"), NOW).is_ok());
    }

    #[test]
    fn zero_amount_deducts_nothing_and_negative_is_refused() {
        let grants = [grant(1, "3.00", None)];
        assert_eq!(deduct_fifo(&grants, Money::ZERO, NOW), Ok(vec![]));
        assert_eq!(
            deduct_fifo(&grants, money("-1"), NOW),
            Err(DeductError::NegativeAmount(money("-1")))
        );
    }

    #[test]
    fn whole_units_round_down() {
        assert_eq!(whole_units(money("199.00"), money("1.99")), 100);
        assert_eq!(whole_units(money("198.99"), money("1.99")), 99);
        assert_eq!(whole_units(money("1.98"), money("1.99")), 0);
        assert_eq!(whole_units(money("-5"), money("1.99")), 0);
        assert_eq!(whole_units(money("5"), Money::ZERO), 0);
    }

    fn arb_grant() -> impl Strategy<Value = CreditGrant> {
        (
            any::<u128>(),
            -100i64..10_000,
            proptest::option::of(-10i64..10),
            -100i64..0,
        )
            .prop_map(|(id, cents, expiry_days, granted_days)| CreditGrant {
                id: Uuid::from_u128(id),
                remaining: Money::from_cents(cents),
                expires_at: expiry_days.map(|days| NOW + Duration::days(days)),
                granted_at: NOW + Duration::days(granted_days),
            })
    }

    proptest! {
        #[test]
        fn deductions_sum_to_the_amount_in_expiry_order_or_fail_whole(
            grants in proptest::collection::vec(arb_grant(), 0..8),
            amount in 0i64..40_000,
        ) {
            let amount = Money::from_cents(amount);
            let available = balance(&grants, NOW);
            match deduct_fifo(&grants, amount, NOW) {
                Err(DeductError::InsufficientCredits { available: reported, requested }) => {
                    prop_assert!(available < amount);
                    prop_assert_eq!(reported, available);
                    prop_assert_eq!(requested, amount);
                }
                Err(other) => prop_assert!(false, "unexpected {other}"),
                Ok(deductions) => {
                    prop_assert!(available >= amount);
                    let total: i64 = deductions.iter().map(|d| d.amount.to_cents()).sum();
                    prop_assert_eq!(total, amount.to_cents());
                    let drawn: Vec<&CreditGrant> = deductions
                        .iter()
                        .map(|d| grants.iter().find(|g| g.id == d.grant_id).unwrap())
                        .collect();
                    for (deduction, grant) in deductions.iter().zip(&drawn) {
                        prop_assert!(grant.is_usable(NOW));
                        prop_assert!(!deduction.amount.is_negative() && !deduction.amount.is_zero());
                        prop_assert!(deduction.amount <= grant.remaining, "grant would go negative");
                    }
                    for pair in drawn.windows(2) {
                        prop_assert_ne!(consumption_order(pair[0], pair[1]), Ordering::Greater);
                    }
                    // Every usable grant consumed before the last one drawn is used up.
                    if let Some(last) = drawn.last() {
                        for grant in grants.iter().filter(|g| g.is_usable(NOW)) {
                            if consumption_order(grant, last) == Ordering::Less {
                                let took = deductions.iter().find(|d| d.grant_id == grant.id).map(|d| d.amount);
                                prop_assert_eq!(took, Some(grant.remaining));
                            }
                        }
                    }
                }
            }
        }
    }
}
