//! Times as stored (Unix milliseconds) and as sent (protobuf Timestamp / Duration).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use crate::error::FieldViolation;

/// 0001-01-01 and 9999-12-31, the range google.protobuf.Timestamp allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

pub fn timestamp(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn optional_timestamp(millis: Option<i64>) -> Option<Timestamp> {
    millis.map(timestamp)
}

/// Milliseconds since the epoch of a caller's timestamp, checked against the protobuf range.
pub fn millis(field: &str, ts: &Timestamp) -> Result<i64, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(FieldViolation::new(field, "must be between 0001-01-01 and 9999-12-31"));
    }
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldViolation::new(field, "nanos must be in [0, 999999999]"));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000))
}

/// Milliseconds of a timestamp this system produced itself (no range check needed).
pub fn timestamp_millis(ts: &Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000))
}

pub fn duration(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds of a caller's duration, which must not be negative.
pub fn duration_millis(field: &str, d: &prost_types::Duration) -> Result<i64, FieldViolation> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldViolation::new(field, "must be a non-negative duration"));
    }
    d.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
        .ok_or_else(|| FieldViolation::new(field, "is too long"))
}

/// Parses `250us`, `250ms`, `2s`, `5m`, `1h` (or a bare number of seconds) for flags and env.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 250ms, 2s, 5m"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration unit {other:?}: use us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_millis() {
        for ms in [0, 1, 999, 1_000, -1, -1_001, 1_700_000_000_123] {
            assert_eq!(millis("t", &timestamp(ms)).ok(), Some(ms), "{ms}");
        }
    }

    #[test]
    fn out_of_range_timestamps_name_the_field() {
        let err = millis("answer_time", &Timestamp { seconds: MAX_SECONDS + 1, nanos: 0 });
        assert_eq!(err.map_err(|e| e.field), Err("answer_time".to_owned()));
        assert!(millis("t", &Timestamp { seconds: 0, nanos: -1 }).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn negative_durations_are_rejected() {
        let d = prost_types::Duration { seconds: -1, nanos: 0 };
        assert!(duration_millis("response_time", &d).is_err());
        let d = prost_types::Duration { seconds: 1, nanos: 500_000_000 };
        assert_eq!(duration_millis("response_time", &d), Ok(1500));
    }
}
