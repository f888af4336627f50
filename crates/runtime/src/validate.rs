//! Field checks shared by the services; each returns a [`FieldViolation`] naming the field.

use crate::error::FieldViolation;

pub const MAX_ID_LEN: usize = 128;

/// Ids are caller-chosen: 1-128 characters of ASCII letters, digits, '.', '_', ':', '-'.
pub fn id(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(FieldViolation::new(field, format!("must be at most {MAX_ID_LEN} characters")));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(FieldViolation::new(field, "may contain only letters, digits, '.', '_', ':' and '-'"));
    }
    Ok(())
}

/// An id that may be left empty (a filter).
pub fn optional_id(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() { Ok(()) } else { id(field, value) }
}

/// Free text of at most `max` characters, without control characters other than newlines and tabs.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.chars().count() > max {
        return Err(FieldViolation::new(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(FieldViolation::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Like [`text`], and not blank.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.trim().is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    text(field, value, max)
}

/// A list of 1..=max entries.
pub fn count<T>(field: &str, values: &[T], max: usize) -> Result<(), FieldViolation> {
    if values.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if values.len() > max {
        return Err(FieldViolation::new(field, format!("must have at most {max} entries, got {}", values.len())));
    }
    Ok(())
}

/// A batch of 1..=max ids, each checked.
pub fn ids(field: &str, values: &[String], max: usize) -> Result<(), FieldViolation> {
    count(field, values, max)?;
    for (i, value) in values.iter().enumerate() {
        id(field, value).map_err(|v| v.entry(i))?;
    }
    Ok(())
}

/// A page size: 0 means the default, negative or above `max` is an error.
pub fn page_size(field: &str, value: i32, default: u32, max: u32) -> Result<u32, FieldViolation> {
    match value {
        0 => Ok(default),
        v if v < 0 => Err(FieldViolation::new(field, "must not be negative")),
        v if v.unsigned_abs() > max => Err(FieldViolation::new(field, format!("must be at most {max}"))),
        v => Ok(v.unsigned_abs()),
    }
}

/// A finite number within [min, max].
pub fn range(field: &str, value: f64, min: f64, max: f64) -> Result<(), FieldViolation> {
    if !value.is_finite() || value < min || value > max {
        return Err(FieldViolation::new(field, format!("must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_alphabet() {
        assert!(id("learner_id", "learner-42:a_b.c").is_ok());
        assert_eq!(id("learner_id", "").map_err(|e| e.to_string()), Err("learner_id: is required".into()));
        assert!(id("learner_id", "has space").is_err());
        assert!(id("learner_id", "é").is_err());
        assert!(id("learner_id", &"x".repeat(129)).is_err());
        assert!(id("learner_id", &"x".repeat(128)).is_ok());
    }

    #[test]
    fn page_sizes_default_and_bound() {
        assert_eq!(page_size("page_size", 0, 100, 1000), Ok(100));
        assert_eq!(page_size("page_size", 5, 100, 1000), Ok(5));
        assert!(page_size("page_size", -1, 100, 1000).is_err());
        assert!(page_size("page_size", 1001, 100, 1000).is_err());
    }

    #[test]
    fn text_rejects_control_characters_and_overlength() {
        assert!(text("prompt", "a\nb", 10).is_ok());
        assert!(text("prompt", "a\u{0}b", 10).is_err());
        assert!(text("prompt", "abcdef", 5).is_err());
        assert!(required_text("title", "  ", 5).is_err());
    }

    #[test]
    fn ranges_reject_nan() {
        assert!(range("difficulty", f64::NAN, -6.0, 6.0).is_err());
        assert!(range("difficulty", 6.5, -6.0, 6.0).is_err());
        assert!(range("difficulty", 0.0, -6.0, 6.0).is_ok());
    }
}
