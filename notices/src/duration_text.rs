//! Durations written the way people write them in config files: "24h",
//! "90m", "1d 12h", "1500ms", or a bare number of seconds.
//!
//! A dozen lines of parsing do not justify a dependency; the accepted units
//! are exactly those listed in [`parse`].

use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses "1d 12h", "90m", "30s", "1500ms" (units may be combined, spaces
/// between parts are optional). Units: `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration; write e.g. \"24h\" or \"90m\"".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large in {text:?}"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "missing unit after {value} in {text:?}; use ms, s, m, h or d"
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
                ))
            }
        };
        let part = value
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("duration too large: {text:?}"))?;
        total += Duration::from_millis(part);
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

/// Writes a duration in the largest unit that divides it exactly, so a
/// config printed back reads "24h" rather than "86400000ms".
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in units {
        if millis >= size && millis % size == 0 {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// serde `serialize_with`.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// serde `deserialize_with`: text as in [`parse`], or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as \"24h\" or a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(secs)
            .map_err(|err| E::custom(format!("bad duration {secs}: {err}")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_units() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("1d 12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_missing_and_unknown_units() {
        assert!(parse("90").expect_err("no unit").contains("missing unit"));
        assert!(parse("3w")
            .expect_err("weeks are not a unit")
            .contains("\"w\""));
        assert!(parse("").is_err());
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(86_400)), "1d");
        assert_eq!(format(Duration::from_secs(5_400)), "90m");
        assert_eq!(format(Duration::from_millis(1_500)), "1500ms");
    }

    #[test]
    fn formatted_text_parses_back_to_the_same_duration() {
        for millis in [1, 999, 1_000, 61_000, 3_600_000, 90_061_000] {
            let duration = Duration::from_millis(millis);
            assert_eq!(parse(&format(duration)), Ok(duration), "{millis} ms");
        }
    }
}
