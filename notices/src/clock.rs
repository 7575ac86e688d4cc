//! Wall-clock time as the outbox stores it: milliseconds since the Unix
//! epoch, which survive a restart (unlike `Instant`) and read the same in
//! every record.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// `2025-01-31T12:00:05Z`: a UTC timestamp for notice texts, to the second.
pub(crate) fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
///
/// Works in 400-year eras (146,097 days each), with years starting on
/// 1 March so that the leap day falls at the end of a year.
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    // Shift the origin to 0000-03-01, which starts an era.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_epoch() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn formats_a_leap_day_and_time_of_day() {
        // 2024-02-29T13:14:15Z: 19,782 days after the epoch plus 47,655 s
        // (19,782 = 54 years of 365 days + 13 leap days + 31 + 28).
        let ms = (19_782 * 86_400 + 13 * 3600 + 14 * 60 + 15) * 1000 + 999;
        assert_eq!(format_utc(ms), "2024-02-29T13:14:15Z");
    }

    #[test]
    fn formats_the_turn_of_a_century_year() {
        // 2000-03-01 is 11,017 days after the epoch (30 years = 10,957 days
        // to 2000-01-01, then 31 + 29).
        assert_eq!(format_utc(11_017 * 86_400 * 1000), "2000-03-01T00:00:00Z");
    }
}
