//! The UTC days and months spend budgets count in.

use crate::backend::Period;
use time::{Date, Month, OffsetDateTime};

const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since the epoch) and month (`year * 12 + month - 1`) of `unix_ms`.
pub fn day_and_month(unix_ms: i64) -> (u32, u32) {
    let days = unix_ms.div_euclid(DAY_MS);
    let month = date(unix_ms).map_or(0, |d| {
        u32::try_from(i64::from(d.year()) * 12 + i64::from(u8::from(d.month())) - 1).unwrap_or(0)
    });
    (u32::try_from(days).unwrap_or(0), month)
}

/// The first Unix ms of the UTC day and of the UTC month containing `unix_ms` (to seed
/// budgets from the ledger).
pub fn period_starts(unix_ms: i64) -> (i64, i64) {
    let day = unix_ms.div_euclid(DAY_MS) * DAY_MS;
    let month = date(unix_ms)
        .and_then(|d| d.replace_day(1).ok())
        .map_or(day, start_ms);
    (day, month)
}

pub(super) fn until_period_end(period: Period, unix_ms: i64) -> u64 {
    let next_day = (unix_ms.div_euclid(DAY_MS) + 1) * DAY_MS;
    let end_ms = match period {
        Period::Day => next_day,
        Period::Month => date(unix_ms)
            .and_then(|d| {
                let (y, m) = match d.month() {
                    Month::December => (d.year() + 1, Month::January),
                    m => (d.year(), m.next()),
                };
                Date::from_calendar_date(y, m, 1).ok()
            })
            .map_or(next_day, start_ms),
    };
    u64::try_from((end_ms - unix_ms).max(0) / 1000).unwrap_or(0)
}

/// The UTC date of `unix_ms`; `None` outside the years `time` holds (±9999), which no clock
/// reads.
fn date(unix_ms: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .map(OffsetDateTime::date)
}

/// The first Unix ms of the UTC day `d`.
fn start_ms(d: Date) -> i64 {
    d.midnight().assume_utc().unix_timestamp() * 1000
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Unix ms of a UTC time, written out by hand below from the calendar.
    const H: i64 = 3_600_000;

    #[test]
    fn days_and_months_of_known_dates() {
        // 1970-01-01 is day 0 of month 1970*12.
        assert_eq!(day_and_month(0), (0, 1970 * 12));
        // 2024-02-29 12:00 (a leap day): day 19782, February.
        assert_eq!(
            day_and_month(19_782 * DAY_MS + 12 * H),
            (19_782, 2024 * 12 + 1)
        );
        // 2025-12-31 23:59:59.999 and the next millisecond, 2026-01-01.
        assert_eq!(day_and_month(20_454 * DAY_MS - 1), (20_453, 2025 * 12 + 11));
        assert_eq!(day_and_month(20_454 * DAY_MS), (20_454, 2026 * 12));
        // Before 1970 the day is 0 (it does not fit a u32), the month still counts.
        assert_eq!(day_and_month(-1), (0, 1969 * 12 + 11));
    }

    #[test]
    fn period_starts_of_known_dates() {
        // 2024-03-01 is day 19783; 2024-02-01 is day 19754.
        assert_eq!(
            period_starts(19_782 * DAY_MS + 12 * H),
            (19_782 * DAY_MS, 19_754 * DAY_MS)
        );
        assert_eq!(
            period_starts(19_783 * DAY_MS),
            (19_783 * DAY_MS, 19_783 * DAY_MS)
        );
        // 1969-12-31 18:00 starts on day -1, its month on 1969-12-01 (day -31).
        assert_eq!(period_starts(-6 * H), (-DAY_MS, -31 * DAY_MS));
        assert_eq!(period_starts(0), (0, 0));
    }

    #[test]
    fn time_left_in_known_periods() {
        // 2024-02-29 12:00: half a day, and the same to the end of February.
        let leap_noon = 19_782 * DAY_MS + 12 * H;
        assert_eq!(until_period_end(Period::Day, leap_noon), 43_200);
        assert_eq!(until_period_end(Period::Month, leap_noon), 43_200);
        // 2025-12-31 23:59:59.999: the year rolls over in the last millisecond (rounded down).
        let last = 20_454 * DAY_MS - 1;
        assert_eq!(until_period_end(Period::Day, last), 0);
        assert_eq!(until_period_end(Period::Month, last), 0);
        // 2026-01-01 00:00: a whole day, a whole January.
        let jan = 20_454 * DAY_MS;
        assert_eq!(until_period_end(Period::Day, jan), 86_400);
        assert_eq!(until_period_end(Period::Month, jan), 31 * 86_400);
        // 1969-12-31 18:00: six hours of the day and of December.
        assert_eq!(until_period_end(Period::Day, -6 * H), 6 * 3600);
        assert_eq!(until_period_end(Period::Month, -6 * H), 6 * 3600);
    }
}
