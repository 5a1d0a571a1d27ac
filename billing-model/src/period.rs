//! Monthly billing periods on the subscription anniversary, the way Stripe cuts them.
//!
//! Period `n` starts on the anchor's day of month and time of day, `n` months after
//! the anchor, with the day clamped to the length of that month: an anchor on Jan 31
//! gives Feb 28 (29 in leap years), then Mar 31, then Apr 30. Each start is computed
//! from the anchor, never from the previous period, so the day never drifts.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// One billing period, half-open `[start, end)`, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BillingPeriod {
    start: OffsetDateTime,
    end: OffsetDateTime,
}

/// A period that cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// The requested period lies outside the calendar range `time` supports.
    #[error("billing period lies outside the supported calendar range")]
    OutOfRange,
    /// Given bounds where the start is not before the end.
    #[error("billing period must start before it ends ({start} .. {end})")]
    Empty {
        /// The given start.
        start: OffsetDateTime,
        /// The given end.
        end: OffsetDateTime,
    },
}

impl BillingPeriod {
    /// A period with bounds taken as they are, e.g. Stripe's `current_period_start` /
    /// `current_period_end` of a subscription item.
    pub fn from_bounds(
        start: OffsetDateTime,
        end: OffsetDateTime,
    ) -> Result<BillingPeriod, PeriodError> {
        if start >= end {
            return Err(PeriodError::Empty { start, end });
        }
        Ok(BillingPeriod {
            start: start.to_offset(UtcOffset::UTC),
            end: end.to_offset(UtcOffset::UTC),
        })
    }

    /// The `n`th period after the one starting at `anchor` (`n = 0` starts at the
    /// anchor; `n` may be negative).
    pub fn nth(anchor: OffsetDateTime, n: i64) -> Result<BillingPeriod, PeriodError> {
        let start = period_start(anchor, n)?;
        let end = period_start(anchor, n.checked_add(1).ok_or(PeriodError::OutOfRange)?)?;
        Ok(BillingPeriod { start, end })
    }

    /// The period of `anchor`'s cycle that contains `instant`, which may lie before or
    /// after the anchor.
    pub fn containing(
        anchor: OffsetDateTime,
        instant: OffsetDateTime,
    ) -> Result<BillingPeriod, PeriodError> {
        let anchor_utc = anchor.to_offset(UtcOffset::UTC);
        let instant_utc = instant.to_offset(UtcOffset::UTC);
        let mut n = month_index(instant_utc.date()) - month_index(anchor_utc.date());
        // Period n starts within the instant's month, so the instant belongs to period n
        // or, if it falls before that start, to n - 1. The loop only guards that reasoning.
        loop {
            let period = BillingPeriod::nth(anchor_utc, n)?;
            if instant_utc < period.start {
                n -= 1;
            } else if instant_utc >= period.end {
                n += 1;
            } else {
                return Ok(period);
            }
        }
    }

    /// First instant of the period.
    pub fn start(&self) -> OffsetDateTime {
        self.start
    }

    /// First instant after the period.
    pub fn end(&self) -> OffsetDateTime {
        self.end
    }

    /// Whether `instant` lies in `[start, end)`.
    pub fn contains(&self, instant: OffsetDateTime) -> bool {
        self.start <= instant && instant < self.end
    }

    /// Length of the period in whole seconds (proration is by the second).
    pub fn seconds(&self) -> i64 {
        (self.end - self.start).whole_seconds()
    }

    /// The period that follows this one.
    ///
    /// The anchor's day of month is recovered from this period's bounds. The end falls
    /// on the anchor day, unless that day does not exist in the end's month: then the
    /// end is clamped to the month's last day and the (larger) start day is the anchor
    /// day (Jan 31 → Feb 28 → Mar 31 → Apr 30 continues correctly). A partial period
    /// (a trial, a moved billing anchor: [Jan 20, Feb 3)) is followed by whole months
    /// on its end's day, as Stripe continues it ([Feb 3, Mar 3)).
    pub fn next(&self) -> Result<BillingPeriod, PeriodError> {
        let end_day = self.end.day();
        let clamped =
            end_day == self.end.month().length(self.end.year()) && self.start.day() > end_day;
        let anchor_day = if clamped { self.start.day() } else { end_day };
        let following = month_index(self.end.date())
            .checked_add(1)
            .ok_or(PeriodError::OutOfRange)?;
        Ok(BillingPeriod {
            start: self.end,
            end: start_in_month(following, anchor_day, self.end.time())?,
        })
    }
}

impl BillingPeriod {
    /// The period of this period's cycle that contains `instant`: this one, or one of
    /// those after it (an instant before `start` gives this period).
    ///
    /// Rolls with [`BillingPeriod::next`], which recovers the anchor's day of month from
    /// both bounds; rolling from `start` alone would take a clamped start (Feb 28 of a
    /// Jan 31 anchor) for the anchor and shift every later period ([Mar 28, Apr 28)
    /// instead of [Mar 31, Apr 30)).
    pub fn rolled_forward_to(&self, instant: OffsetDateTime) -> Result<BillingPeriod, PeriodError> {
        let mut period = *self;
        while instant >= period.end {
            period = period.next()?;
        }
        Ok(period)
    }
}

/// Months since year 0, for counting months between two dates.
fn month_index(date: Date) -> i64 {
    i64::from(date.year()) * 12 + i64::from(u8::from(date.month())) - 1
}

/// Start of the `n`th period of `anchor`'s cycle, in UTC.
fn period_start(anchor: OffsetDateTime, n: i64) -> Result<OffsetDateTime, PeriodError> {
    let anchor = anchor.to_offset(UtcOffset::UTC);
    let index = month_index(anchor.date())
        .checked_add(n)
        .ok_or(PeriodError::OutOfRange)?;
    start_in_month(index, anchor.day(), anchor.time())
}

/// The instant in month `index` (see [`month_index`]) on `day`, clamped to the month's
/// length, at `time_of_day` UTC.
fn start_in_month(
    index: i64,
    day: u8,
    time_of_day: time::Time,
) -> Result<OffsetDateTime, PeriodError> {
    let year = i32::try_from(index.div_euclid(12)).map_err(|_| PeriodError::OutOfRange)?;
    let month_number =
        u8::try_from(index.rem_euclid(12) + 1).map_err(|_| PeriodError::OutOfRange)?;
    let month = Month::try_from(month_number).map_err(|_| PeriodError::OutOfRange)?;
    let date = Date::from_calendar_date(year, month, day.min(month.length(year)))
        .map_err(|_| PeriodError::OutOfRange)?;
    Ok(PrimitiveDateTime::new(date, time_of_day).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn period_zero_starts_at_the_anchor_and_lasts_a_month() {
        let period = BillingPeriod::nth(datetime!(2024-03-15 10:30:00 UTC), 0).unwrap();
        assert_eq!(period.start(), datetime!(2024-03-15 10:30:00 UTC));
        assert_eq!(period.end(), datetime!(2024-04-15 10:30:00 UTC));
        assert_eq!(period.seconds(), 31 * 86_400);
    }

    #[test]
    fn anchor_on_jan_31_clamps_to_feb_28_in_common_year() {
        let anchor = datetime!(2023-01-31 12:00:00 UTC);
        let starts: Vec<_> = (0..4)
            .map(|n| BillingPeriod::nth(anchor, n).unwrap().start())
            .collect();
        assert_eq!(
            starts,
            [
                datetime!(2023-01-31 12:00:00 UTC),
                datetime!(2023-02-28 12:00:00 UTC),
                datetime!(2023-03-31 12:00:00 UTC),
                datetime!(2023-04-30 12:00:00 UTC),
            ]
        );
    }

    #[test]
    fn anchor_on_jan_31_clamps_to_feb_29_in_leap_year() {
        let period = BillingPeriod::nth(datetime!(2024-01-31 00:00:00 UTC), 1).unwrap();
        assert_eq!(period.start(), datetime!(2024-02-29 00:00:00 UTC));
        assert_eq!(period.end(), datetime!(2024-03-31 00:00:00 UTC));
    }

    #[test]
    fn clamped_day_never_drifts_a_year_later() {
        let anchor = datetime!(2023-01-31 08:00:00 UTC);
        assert_eq!(
            BillingPeriod::nth(anchor, 12).unwrap().start(),
            datetime!(2024-01-31 08:00:00 UTC)
        );
        assert_eq!(
            BillingPeriod::nth(anchor, 7).unwrap().start(),
            datetime!(2023-08-31 08:00:00 UTC)
        );
    }

    #[test]
    fn negative_n_goes_back_before_the_anchor() {
        let anchor = datetime!(2024-03-31 06:00:00 UTC);
        let period = BillingPeriod::nth(anchor, -1).unwrap();
        assert_eq!(period.start(), datetime!(2024-02-29 06:00:00 UTC));
        assert_eq!(period.end(), anchor);
        assert_eq!(
            BillingPeriod::nth(anchor, -3).unwrap().start(),
            datetime!(2023-12-31 06:00:00 UTC)
        );
    }

    #[test]
    fn anchor_with_an_offset_is_taken_in_utc() {
        let anchor = datetime!(2024-03-01 01:00:00 +02:00);
        let period = BillingPeriod::nth(anchor, 0).unwrap();
        assert_eq!(period.start(), datetime!(2024-02-29 23:00:00 UTC));
        assert_eq!(period.start().offset(), UtcOffset::UTC);
        assert_eq!(period.end(), datetime!(2024-03-29 23:00:00 UTC));
    }

    #[test]
    fn containing_finds_the_period_of_an_instant() {
        let anchor = datetime!(2024-01-31 12:00:00 UTC);
        let period = BillingPeriod::containing(anchor, datetime!(2024-03-31 11:59:59 UTC)).unwrap();
        assert_eq!(period.start(), datetime!(2024-02-29 12:00:00 UTC));
        let period = BillingPeriod::containing(anchor, datetime!(2024-03-31 12:00:00 UTC)).unwrap();
        assert_eq!(period.start(), datetime!(2024-03-31 12:00:00 UTC));
        let period = BillingPeriod::containing(anchor, datetime!(2023-12-01 00:00:00 UTC)).unwrap();
        assert_eq!(period.start(), datetime!(2023-11-30 12:00:00 UTC));
        assert_eq!(period.end(), datetime!(2023-12-31 12:00:00 UTC));
    }

    #[test]
    fn contains_is_half_open() {
        let period = BillingPeriod::nth(datetime!(2024-05-10 00:00:00 UTC), 0).unwrap();
        assert!(period.contains(period.start()));
        assert!(!period.contains(period.end()));
        assert!(period.contains(period.end() - time::Duration::nanoseconds(1)));
    }

    #[test]
    fn next_walks_through_clamped_february() {
        let january = BillingPeriod::nth(datetime!(2023-01-31 09:00:00 UTC), 0).unwrap();
        let february = january.next().unwrap();
        assert_eq!(february.start(), datetime!(2023-02-28 09:00:00 UTC));
        assert_eq!(february.end(), datetime!(2023-03-31 09:00:00 UTC));
        let march = february.next().unwrap();
        assert_eq!(march.end(), datetime!(2023-04-30 09:00:00 UTC));
    }

    #[test]
    fn from_bounds_rejects_empty_periods() {
        let at = datetime!(2024-01-01 00:00:00 UTC);
        assert!(matches!(
            BillingPeriod::from_bounds(at, at),
            Err(PeriodError::Empty { .. })
        ));
        assert!(BillingPeriod::from_bounds(at, at + time::Duration::DAY).is_ok());
    }

    #[test]
    fn periods_beyond_the_calendar_are_errors_not_panics() {
        let anchor = datetime!(2024-01-31 00:00:00 UTC);
        assert_eq!(
            BillingPeriod::nth(anchor, i64::MAX),
            Err(PeriodError::OutOfRange)
        );
        assert_eq!(
            BillingPeriod::nth(anchor, 200_000),
            Err(PeriodError::OutOfRange)
        );
    }

    fn instant(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    // 1971-01-01 .. 2100-01-01
    const ANCHORS: std::ops::Range<i64> = 31_536_000..4_102_444_800;

    proptest! {
        #[test]
        fn containing_contains_the_instant(anchor in ANCHORS, at in 0i64..4_200_000_000) {
            let period = BillingPeriod::containing(instant(anchor), instant(at)).unwrap();
            prop_assert!(period.contains(instant(at)));
        }

        #[test]
        fn consecutive_periods_abut_and_last_28_to_31_days(anchor in ANCHORS, n in -60i64..60) {
            let this = BillingPeriod::nth(instant(anchor), n).unwrap();
            let following = BillingPeriod::nth(instant(anchor), n + 1).unwrap();
            prop_assert_eq!(this.end(), following.start());
            prop_assert!((28 * 86_400..=31 * 86_400).contains(&this.seconds()));
        }

        #[test]
        fn start_keeps_anchor_day_clamped_and_time_of_day(anchor in ANCHORS, n in -60i64..60) {
            let anchor = instant(anchor);
            let start = BillingPeriod::nth(anchor, n).unwrap().start();
            let month_length = start.month().length(start.year());
            prop_assert_eq!(start.day(), anchor.day().min(month_length));
            prop_assert_eq!(start.time(), anchor.time());
        }

        #[test]
        fn next_agrees_with_nth(anchor in ANCHORS, n in -24i64..24) {
            let anchor = instant(anchor);
            let period = BillingPeriod::nth(anchor, n).unwrap();
            prop_assert_eq!(period.next().unwrap(), BillingPeriod::nth(anchor, n + 1).unwrap());
        }
    }

    #[test]
    fn rolling_forward_keeps_a_month_end_anchor() {
        // Anchor Jan 31: the stored period is the clamped February one.
        let february = BillingPeriod::nth(datetime!(2023-01-31 08:00:00 UTC), 1).unwrap();
        assert_eq!(february.start(), datetime!(2023-02-28 08:00:00 UTC));
        let april_1 = datetime!(2023-04-01 00:00:00 UTC);
        let rolled = february.rolled_forward_to(april_1).unwrap();
        assert_eq!(rolled.start(), datetime!(2023-03-31 08:00:00 UTC));
        assert_eq!(rolled.end(), datetime!(2023-04-30 08:00:00 UTC));
        // Several periods at once, and the same answer as counting from the anchor.
        let later = datetime!(2023-09-15 00:00:00 UTC);
        assert_eq!(
            february.rolled_forward_to(later).unwrap(),
            BillingPeriod::containing(datetime!(2023-01-31 08:00:00 UTC), later).unwrap()
        );
        // An instant inside (or before) the period keeps it.
        assert_eq!(
            february.rolled_forward_to(february.start()).unwrap(),
            february
        );
    }

    proptest::proptest! {
        #[test]
        fn rolling_forward_agrees_with_the_anchor(
            anchor_s in 946_684_800i64..4_000_000_000,
            skip in 0i64..40,
            offset_s in 0i64..5_000_000_000,
        ) {
            let anchor = OffsetDateTime::from_unix_timestamp(anchor_s).unwrap();
            let stored = BillingPeriod::nth(anchor, skip).unwrap();
            let instant = stored.start() + time::Duration::seconds(offset_s % (400 * 86_400));
            proptest::prop_assert_eq!(
                stored.rolled_forward_to(instant).unwrap(),
                BillingPeriod::containing(anchor, instant).unwrap()
            );
        }
    }

    #[test]
    fn a_partial_period_is_followed_by_whole_months_on_its_end_day() {
        let partial = BillingPeriod::from_bounds(
            datetime!(2024-01-20 09:00 UTC),
            datetime!(2024-02-03 09:00 UTC),
        )
        .unwrap();
        let next = partial.next().unwrap();
        assert_eq!(next.start(), datetime!(2024-02-03 09:00 UTC));
        assert_eq!(next.end(), datetime!(2024-03-03 09:00 UTC));
        // A partial period ending on a month's last day anchors there too.
        let partial = BillingPeriod::from_bounds(
            datetime!(2024-04-10 00:00 UTC),
            datetime!(2024-04-30 00:00 UTC),
        )
        .unwrap();
        assert_eq!(
            partial.next().unwrap().end(),
            datetime!(2024-05-30 00:00 UTC)
        );
    }
}
