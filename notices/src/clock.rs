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
    let days = i64::try_from(days).unwrap_or(i64::MAX);
    let (year, month, day) = jobs::state::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
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
