//! The UTC days and months spend budgets count in.

use crate::backend::Period;

/// The UTC day (days since the epoch) and month (`year * 12 + month - 1`) of `unix_ms`.
pub fn day_and_month(unix_ms: i64) -> (u32, u32) {
    let days = unix_ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    (
        u32::try_from(days).unwrap_or(0),
        u32::try_from(y * 12 + i64::from(m) - 1).unwrap_or(0),
    )
}

/// The first Unix ms of the UTC day and of the UTC month containing `unix_ms` (to seed
/// budgets from the ledger).
pub fn period_starts(unix_ms: i64) -> (i64, i64) {
    let days = unix_ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    (days * 86_400_000, days_from_civil(y, m, 1) * 86_400_000)
}

pub(super) fn until_period_end(period: Period, unix_ms: i64) -> u64 {
    let days = unix_ms.div_euclid(86_400_000);
    let end_ms = match period {
        Period::Day => (days + 1) * 86_400_000,
        Period::Month => {
            let (y, m, _) = civil_from_days(days);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(ny, nm, 1) * 86_400_000
        }
    };
    u64::try_from((end_ms - unix_ms).max(0) / 1000).unwrap_or(0)
}

/// Howard Hinnant's civil-from-days: (year, month 1-12, day 1-31) of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
