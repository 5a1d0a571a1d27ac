//! Time: the wall clock, and billing-period arithmetic on Unix seconds (UTC).
//!
//! Monthly periods keep the anchor's day of month, clamped to the month's end
//! (Jan 31 → Feb 28/29 → Mar 31 → Apr 30) and never drift.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

/// Seconds since the Unix epoch, now.
pub fn wall_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A recurring interval as Stripe names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    /// Parses `day|week|month|year`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }

    /// Stripe's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

fn datetime(ts: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Adds `months` calendar months to the month of `from`, on the anchor's day of month
/// (clamped to the month's length) and the anchor's time of day.
fn add_months_anchored(anchor: i64, from: i64, months: i64) -> i64 {
    let anchor_dt = datetime(anchor);
    let from_dt = datetime(from);
    let month_index =
        i64::from(from_dt.year()) * 12 + i64::from(u8::from(from_dt.month())) - 1 + months;
    let year = month_index.div_euclid(12) as i32;
    let month = Month::try_from((month_index.rem_euclid(12) + 1) as u8).unwrap_or(Month::January);
    let day = anchor_dt.day().min(time::util::days_in_month(month, year));
    let date = Date::from_calendar_date(year, month, day).unwrap_or(from_dt.date());
    PrimitiveDateTime::new(date, anchor_dt.time())
        .assume_utc()
        .unix_timestamp()
}

/// The end of the billing period that starts at `start`, for a subscription anchored at `anchor`.
pub fn period_end(anchor: i64, start: i64, interval: Interval, count: u64) -> i64 {
    let count = count.max(1) as i64;
    match interval {
        Interval::Day => start + 86_400 * count,
        Interval::Week => start + 7 * 86_400 * count,
        Interval::Month => add_months_anchored(anchor, start, count),
        Interval::Year => add_months_anchored(anchor, start, 12 * count),
    }
}

/// `15 Jan 2025`, as Stripe writes dates in proration descriptions.
pub fn short_date(ts: i64) -> String {
    let dt = datetime(ts);
    let month = match dt.month() {
        Month::January => "Jan",
        Month::February => "Feb",
        Month::March => "Mar",
        Month::April => "Apr",
        Month::May => "May",
        Month::June => "Jun",
        Month::July => "Jul",
        Month::August => "Aug",
        Month::September => "Sep",
        Month::October => "Oct",
        Month::November => "Nov",
        Month::December => "Dec",
    };
    format!("{} {} {}", dt.day(), month, dt.year())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn ts(dt: OffsetDateTime) -> i64 {
        dt.unix_timestamp()
    }

    #[test]
    fn month_end_anchor_clamps_and_comes_back() {
        let anchor = ts(datetime!(2025-01-31 10:00 UTC));
        let feb = period_end(anchor, anchor, Interval::Month, 1);
        assert_eq!(feb, ts(datetime!(2025-02-28 10:00 UTC)));
        let mar = period_end(anchor, feb, Interval::Month, 1);
        assert_eq!(mar, ts(datetime!(2025-03-31 10:00 UTC)));
        let apr = period_end(anchor, mar, Interval::Month, 1);
        assert_eq!(apr, ts(datetime!(2025-04-30 10:00 UTC)));
        let may = period_end(anchor, apr, Interval::Month, 1);
        assert_eq!(may, ts(datetime!(2025-05-31 10:00 UTC)));
    }

    #[test]
    fn leap_year_february_has_29_days() {
        let anchor = ts(datetime!(2024-01-30 00:00 UTC));
        assert_eq!(
            period_end(anchor, anchor, Interval::Month, 1),
            ts(datetime!(2024-02-29 00:00 UTC))
        );
        let anchor31 = ts(datetime!(2024-01-31 00:00 UTC));
        assert_eq!(
            period_end(anchor31, anchor31, Interval::Month, 1),
            ts(datetime!(2024-02-29 00:00 UTC))
        );
    }

    #[test]
    fn december_rolls_into_next_year() {
        let anchor = ts(datetime!(2025-12-15 08:30:05 UTC));
        assert_eq!(
            period_end(anchor, anchor, Interval::Month, 1),
            ts(datetime!(2026-01-15 08:30:05 UTC))
        );
        assert_eq!(
            period_end(anchor, anchor, Interval::Year, 1),
            ts(datetime!(2026-12-15 08:30:05 UTC))
        );
    }

    #[test]
    fn yearly_leap_day_anchor_clamps() {
        let anchor = ts(datetime!(2024-02-29 00:00 UTC));
        assert_eq!(
            period_end(anchor, anchor, Interval::Year, 1),
            ts(datetime!(2025-02-28 00:00 UTC))
        );
    }

    #[test]
    fn short_dates_read_like_stripe() {
        assert_eq!(
            short_date(ts(datetime!(2025-01-05 12:00 UTC))),
            "5 Jan 2025"
        );
    }
}
