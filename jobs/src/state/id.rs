//! Job ids: unique, sortable by submission time, safe as folder names.
//!
//! An id is the UTC time to the millisecond plus a per-process counter:
//! `20261123-150102-123-0001`. Sorting ids as text sorts jobs by submission, which is what
//! `ls state/jobs` and `status` want. Ids never go backwards within a process, even when the
//! clock stands still (many jobs in one millisecond) or steps back (NTP): the generator keeps
//! the last time it used and moves forward from it.

use crate::error::JobsError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

/// Longest id accepted from outside (generated ids are 24 characters).
const MAX_ID_CHARS: usize = 64;
/// Ids per millisecond before the generator borrows the next millisecond.
const COUNTER_LIMIT: u32 = 9999;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

/// The last (millisecond, counter) handed out in this process.
static LAST_ISSUED: Mutex<IdClock> = Mutex::new(IdClock { ms: 0, counter: 0 });

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdClock {
    ms: u64,
    counter: u32,
}

impl IdClock {
    /// The next (millisecond, counter) given the wall clock reads `now_ms`.
    fn advance(&mut self, now_ms: u64) -> IdClock {
        *self = if now_ms > self.ms {
            IdClock {
                ms: now_ms,
                counter: 1,
            }
        } else if self.counter < COUNTER_LIMIT {
            IdClock {
                ms: self.ms,
                counter: self.counter + 1,
            }
        } else {
            IdClock {
                ms: self.ms + 1,
                counter: 1,
            }
        };
        *self
    }
}

impl JobId {
    /// A fresh id, greater than every id generated before it in this process.
    pub fn generate() -> JobId {
        let now = super::now_ms();
        // A poisoned lock only means another thread panicked while holding two integers;
        // they are still consistent.
        let issued = LAST_ISSUED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .advance(now);
        JobId::compose(issued)
    }

    fn compose(clock: IdClock) -> JobId {
        let seconds = clock.ms / 1000;
        let millis = clock.ms % 1000;
        let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX);
        let of_day = seconds % 86_400;
        let (year, month, day) = civil_date(days);
        JobId(format!(
            "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{millis:03}-{:04}",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            clock.counter
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01, by shifting
/// the year to start in March (so the leap day is the year's last) and counting 400-year eras.
/// Job ids and the notices' timestamps are both dated with it.
pub fn civil_date(days_since_epoch: i64) -> (i64, u32, u32) {
    let shifted = days_since_epoch + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both fit: month is 1..=12 and day 1..=31 by construction.
    (year, month as u32, day as u32)
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = JobsError;

    /// Accepts any id made of letters, digits and `-`: ids become folder names, so nothing
    /// that could name another folder (`/`, `.`, `..`) gets through.
    fn from_str(text: &str) -> Result<JobId, JobsError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_ID_CHARS
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(JobId(text.to_string()))
        } else {
            Err(JobsError::InvalidJobId {
                text: text.chars().take(MAX_ID_CHARS + 8).collect(),
            })
        }
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_time_and_counter() {
        // 1_700_000_000 s after the epoch is 2023-11-14 22:13:20 UTC.
        let id = JobId::compose(IdClock {
            ms: 1_700_000_000_123,
            counter: 7,
        });
        assert_eq!(id.as_str(), "20231114-221320-123-0007");
        let epoch = JobId::compose(IdClock { ms: 0, counter: 1 });
        assert_eq!(epoch.as_str(), "19700101-000000-000-0001");
    }

    #[test]
    fn leap_day_is_dated_correctly() {
        // 2024-02-29 is day 19782 after the epoch.
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(19_783), (2024, 3, 1));
    }

    #[test]
    fn clock_standing_still_or_stepping_back_still_advances() {
        let mut clock = IdClock { ms: 0, counter: 0 };
        let a = JobId::compose(clock.advance(5000));
        let b = JobId::compose(clock.advance(5000));
        let c = JobId::compose(clock.advance(4000));
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn counter_overflow_borrows_next_millisecond() {
        let mut clock = IdClock {
            ms: 5000,
            counter: COUNTER_LIMIT,
        };
        let before = JobId::compose(IdClock {
            ms: 5000,
            counter: COUNTER_LIMIT,
        });
        let after = JobId::compose(clock.advance(5000));
        assert!(before < after, "{before} {after}");
        assert_eq!(clock.ms, 5001);
    }

    #[test]
    fn generated_ids_are_unique_and_sorted() {
        let ids: Vec<JobId> = (0..20_000).map(|_| JobId::generate()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids must strictly increase"
        );
    }

    #[test]
    fn parse_rejects_path_like_text() {
        for bad in ["", "..", "a/b", "a.b", "a b", "ä", &"1".repeat(65)] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
        }
        let id: JobId = "20261123-150102-123-0001"
            .parse()
            .expect("a generated id parses");
        assert_eq!(id.to_string(), "20261123-150102-123-0001");
    }

    #[test]
    fn deserializing_checks_the_id() {
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
        assert!(serde_json::from_str::<JobId>("\"abc-1\"").is_ok());
    }
}
