//! US dollar amounts with exactly two decimal places.
//!
//! Stripe bills USD in integer cents, so every amount tollgate computes must land on
//! a whole cent. `Money` holds a `Decimal` rescaled to two places whose cent value
//! always fits in an `i64` (Stripe's minor units), so `to_cents` can never fail.

use std::fmt;
use std::ops::{Add, Neg, Sub};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of US dollars, exactly two decimal places, possibly negative (credits,
/// proration lines). Serialized as a JSON string such as `"199.00"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a text is not a valid amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is empty.
    #[error("money must not be empty")]
    Empty,
    /// The text is not a plain decimal number such as `199`, `199.00` or `-1.99`.
    #[error("`{0}` is not a decimal amount like \"199.00\"")]
    Malformed(String),
    /// More precision than a cent.
    #[error("`{0}` has more than 2 decimal places")]
    TooManyDecimals(String),
    /// Too large to be expressed in Stripe's integer minor units.
    #[error("`{0}` is too large to bill in integer cents")]
    OutOfRange(String),
}

/// An arithmetic result left the range `Money` can represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount exceeds the range that can be billed in integer cents")]
pub struct MoneyOverflow;

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(Decimal::from_parts(0, 0, 0, false, 2));

    /// Parses `"199"`, `"199.5"`, `"199.00"` or `"-1.99"`. Rejects more than two
    /// decimal places, exponents, separators, signs other than a leading `-`, and
    /// surrounding whitespace: config and wire formats must say exactly one thing.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || !fraction.is_none_or(all_digits) {
            return Err(MoneyError::Malformed(text.to_owned()));
        }
        if fraction.is_some_and(|f| f.len() > 2) {
            return Err(MoneyError::TooManyDecimals(text.to_owned()));
        }
        let value = Decimal::from_str(text).map_err(|_| MoneyError::OutOfRange(text.to_owned()))?;
        Money::from_decimal_exact(value).ok_or_else(|| MoneyError::OutOfRange(text.to_owned()))
    }

    /// An amount given in cents, Stripe's minor unit for USD.
    pub fn from_cents(cents: i64) -> Money {
        Money(Decimal::new(cents, 2)).normalized()
    }

    /// The amount in cents, as Stripe's `unit_amount` / `amount` fields expect.
    pub fn to_cents(self) -> i64 {
        // The constructor guarantees scale 2 and an i64-sized mantissa.
        i64::try_from(self.0.mantissa()).unwrap_or(if self.0.is_sign_negative() {
            i64::MIN
        } else {
            i64::MAX
        })
    }

    /// The amount as a `Decimal` (always scale 2).
    pub fn as_decimal(self) -> Decimal {
        self.0
    }

    /// `value` as money, if it has at most two significant decimal places and fits in
    /// `i64` cents.
    pub fn from_decimal_exact(value: Decimal) -> Option<Money> {
        let mut scaled = value.normalize();
        if scaled.scale() > 2 {
            return None;
        }
        scaled.rescale(2);
        if scaled.scale() != 2 || i64::try_from(scaled.mantissa()).is_err() {
            return None;
        }
        Some(Money(scaled).normalized())
    }

    /// True for credits and negative proration lines.
    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    /// True for exactly zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `self + other`, or `None` when the sum no longer fits in `i64` cents.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.to_cents()
            .checked_add(other.to_cents())
            .map(Money::from_cents)
    }

    /// `self - other`, or `None` when the difference no longer fits in `i64` cents.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.to_cents()
            .checked_sub(other.to_cents())
            .map(Money::from_cents)
    }

    /// `self × units` (a price times a count), or `None` on overflow.
    pub fn checked_mul_units(self, units: u64) -> Option<Money> {
        let cents = i128::from(self.to_cents()).checked_mul(i128::from(units))?;
        i64::try_from(cents).ok().map(Money::from_cents)
    }

    // Decimal keeps a sign bit on zero; "-0.00" must never reach an invoice or a log.
    fn normalized(mut self) -> Money {
        if self.0.is_zero() {
            self.0.set_sign_positive(true);
        }
        self
    }
}

/// Rounds to the cent, halves away from zero (so 0.005 → 0.01 and −0.005 → −0.01).
///
/// Amounts outside the billable range saturate at the largest representable cent
/// value; callers only pass products of billable amounts and fractions ≤ 1.
pub fn round_half_up_to_cents(value: Decimal) -> Money {
    let rounded = value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    Money::from_decimal_exact(rounded).unwrap_or_else(|| {
        if rounded.is_sign_negative() {
            Money::from_cents(i64::MIN)
        } else {
            Money::from_cents(i64::MAX)
        }
    })
}

impl Add for Money {
    type Output = Money;

    /// # Panics
    /// When the sum leaves the `i64` cent range, like integer overflow; use
    /// [`Money::checked_add`] for amounts that are not known to be small.
    fn add(self, other: Money) -> Money {
        match self.checked_add(other) {
            Some(sum) => sum,
            None => panic!("money overflow: {self} + {other}"),
        }
    }
}

impl Sub for Money {
    type Output = Money;

    /// # Panics
    /// When the difference leaves the `i64` cent range; see [`Money::checked_sub`].
    fn sub(self, other: Money) -> Money {
        match self.checked_sub(other) {
            Some(difference) => difference,
            None => panic!("money overflow: {self} - {other}"),
        }
    }
}

impl Neg for Money {
    type Output = Money;

    /// # Panics
    /// Only for the single value `i64::MIN` cents, which has no positive counterpart.
    fn neg(self) -> Money {
        match self.to_cents().checked_neg() {
            Some(cents) => Money::from_cents(cents),
            None => panic!("money overflow: -({self})"),
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({})", self.0)
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Money, MoneyError> {
        Money::parse(text)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        struct MoneyVisitor;

        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string with at most 2 decimal places, like \"199.00\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Money, E> {
                Money::parse(text).map_err(E::custom)
            }
        }

        // Numbers are refused on purpose: a JSON float would smuggle binary rounding in.
        deserializer.deserialize_str(MoneyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    #[test]
    fn parse_accepts_whole_dollars_and_cents() {
        assert_eq!(money("199").to_cents(), 19_900);
        assert_eq!(money("199.00").to_cents(), 19_900);
        assert_eq!(money("1.99").to_cents(), 199);
        assert_eq!(money("0.5").to_cents(), 50);
        assert_eq!(money("-1.99").to_cents(), -199);
    }

    #[test]
    fn display_always_shows_two_decimal_places() {
        assert_eq!(money("199").to_string(), "199.00");
        assert_eq!(money("0.5").to_string(), "0.50");
        assert_eq!(money("-5").to_string(), "-5.00");
        assert_eq!(Money::ZERO.to_string(), "0.00");
        assert_eq!(Money::from_cents(7).to_string(), "0.07");
    }

    #[test]
    fn negative_zero_is_printed_as_zero() {
        assert_eq!(money("-0.00").to_string(), "0.00");
        assert_eq!((-Money::ZERO).to_string(), "0.00");
        assert!(!money("-0").is_negative());
    }

    #[test]
    fn parse_rejects_more_than_two_decimal_places() {
        assert_eq!(
            Money::parse("1.999"),
            Err(MoneyError::TooManyDecimals("1.999".into()))
        );
        assert!(matches!(
            Money::parse("1.000"),
            Err(MoneyError::TooManyDecimals(_))
        ));
    }

    #[test]
    fn parse_rejects_garbage() {
        for text in [
            "abc", "1.2.3", "1,00", " 1", "1 ", "+1", "1e3", ".5", "1.", "--1", "1_000", "$1", "-",
            "NaN",
        ] {
            assert!(
                matches!(Money::parse(text), Err(MoneyError::Malformed(_))),
                "{text:?} should be malformed"
            );
        }
        assert_eq!(Money::parse(""), Err(MoneyError::Empty));
    }

    #[test]
    fn parse_rejects_amounts_beyond_i64_cents() {
        assert!(matches!(
            Money::parse("92233720368547758.08"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert_eq!(money("92233720368547758.07").to_cents(), i64::MAX);
        assert!(matches!(
            Money::parse("99999999999999999999999999999999"),
            Err(MoneyError::OutOfRange(_))
        ));
    }

    #[test]
    fn arithmetic_stays_exact() {
        assert_eq!(money("0.10") + money("0.20"), money("0.30"));
        assert_eq!(money("10.00") - money("12.50"), money("-2.50"));
        assert_eq!(-money("3.00"), money("-3.00"));
        assert!((money("1") - money("2")).is_negative());
        assert_eq!(money("1.99").checked_mul_units(37), Some(money("73.63")));
        assert_eq!(money("1.99").checked_mul_units(u64::MAX), None);
        assert_eq!(Money::from_cents(i64::MAX).checked_add(money("0.01")), None);
    }

    #[test]
    fn rounding_to_cents_sends_halves_away_from_zero() {
        assert_eq!(round_half_up_to_cents(dec!(0.005)), money("0.01"));
        assert_eq!(round_half_up_to_cents(dec!(0.0049)), money("0.00"));
        assert_eq!(round_half_up_to_cents(dec!(-0.005)), money("-0.01"));
        assert_eq!(round_half_up_to_cents(dec!(2.675)), money("2.68"));
        assert_eq!(round_half_up_to_cents(dec!(7)).to_string(), "7.00");
    }

    #[test]
    fn serializes_as_a_json_string() {
        assert_eq!(serde_json::to_string(&money("199")).unwrap(), "\"199.00\"");
        let parsed: Money = serde_json::from_str("\"1.99\"").unwrap();
        assert_eq!(parsed, money("1.99"));
    }

    #[test]
    fn deserializing_refuses_json_numbers_and_bad_strings() {
        assert!(serde_json::from_str::<Money>("1.99").is_err());
        assert!(serde_json::from_str::<Money>("199").is_err());
        assert!(serde_json::from_str::<Money>("\"1.999\"").is_err());
    }

    #[test]
    fn amounts_with_equal_value_are_equal_whatever_their_spelling() {
        assert_eq!(money("5"), money("5.00"));
        assert_eq!(
            Money::from_decimal_exact(dec!(5.000)),
            Some(Money::from_cents(500))
        );
        assert_eq!(Money::from_decimal_exact(dec!(5.001)), None);
    }

    proptest! {
        #[test]
        fn cents_round_trip_through_text(cents in any::<i64>()) {
            let amount = Money::from_cents(cents);
            prop_assert_eq!(amount.to_cents(), cents);
            prop_assert_eq!(Money::parse(&amount.to_string()), Ok(amount));
        }

        #[test]
        fn addition_matches_integer_cents(a in -1_000_000_000i64..1_000_000_000, b in -1_000_000_000i64..1_000_000_000) {
            prop_assert_eq!((Money::from_cents(a) + Money::from_cents(b)).to_cents(), a + b);
            prop_assert_eq!((Money::from_cents(a) - Money::from_cents(b)).to_cents(), a - b);
        }
    }
}
