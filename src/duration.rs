//! Durations as people write them in flags and config files: `250ms`, `30s`, `5m`, `12h`,
//! `90d`, `2w`, or a bare number of seconds. One parser for every command.

use std::time::Duration;

/// Parses a duration; the error says what was expected.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected = || format!("expected a duration like 500ms, 30s, 5m, 24h or 90d, got {text:?}");
    let n: f64 = number.parse().map_err(|_| expected())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "w" => n * 604_800.0,
        _ => return Err(expected()),
    };
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(expected());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration that must be more than zero (timeouts, intervals).
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("a duration must be positive, got {text:?}")),
        d => Ok(d),
    }
}

/// The same parser, as a calendar span for arithmetic on timestamps (`--since 24h`).
pub(crate) fn parse_span(text: &str) -> Result<chrono::Duration, String> {
    let d = parse_duration(text)?;
    chrono::Duration::from_std(d).map_err(|_| format!("duration out of range: {text:?}"))
}

/// Durations in config files as `"90s"`, `"5m"`, `"250ms"`, `"1h"` or a number of seconds
/// (`#[serde(with = "crate::duration::text")]`).
pub(crate) mod text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            // `try_`: a finite number can still be too large for a Duration (1e300).
            Raw::Secs(s) => Duration::try_from_secs_f64(s)
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {s}"))),
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "5 parsecs", "-3s", "m", "1e400"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("expected a duration"), "{bad}: {e}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_span("1.5d").unwrap(),
            chrono::Duration::hours(36),
            "retention and review take the fractions collect takes"
        );
    }

    /// Found by fuzzing: a finite number too large for a Duration panicked in the config parser.
    #[test]
    fn config_numbers_too_large_or_negative_are_errors() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(with = "super::text")]
            #[allow(dead_code)]
            d: Duration,
        }
        for bad in [r#"{"d": 1e300}"#, r#"{"d": -1}"#] {
            let e = serde_json::from_str::<C>(bad).err().unwrap();
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<C>(r#"{"d": 1.5}"#).is_ok());
    }
}
