//! Opaque page tokens: the position to resume from, base64url-encoded so callers treat it as opaque.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::FieldViolation;

const PREFIX: &str = "alp1|";

/// Encodes a resume position (for keyset pagination, the last key returned).
pub fn encode(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{position}"))
}

/// Decodes a token made by [`encode`]; empty means the first page.
pub fn decode(field: &str, token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldViolation::new(field, "is not a token returned by this API");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix(PREFIX).map(|p| Some(p.to_owned())).ok_or_else(invalid)
}

/// The token of the page after `page`: its last key when the page is full, empty otherwise.
pub fn next_token<T>(page: &[T], limit: u32, key: impl Fn(&T) -> String) -> String {
    match page.last() {
        Some(last) if page.len() == limit as usize => encode(&key(last)),
        _ => String::new(),
    }
}

/// A token for offset pagination bound to the query it came from, so it cannot be replayed on
/// another query.
pub fn encode_offset(offset: u64, query_fingerprint: &str) -> String {
    encode(&format!("{offset}|{query_fingerprint}"))
}

pub fn decode_offset(field: &str, token: &str, query_fingerprint: &str) -> Result<u64, FieldViolation> {
    let Some(position) = decode(field, token)? else {
        return Ok(0);
    };
    let (offset, fingerprint) =
        position.split_once('|').ok_or_else(|| FieldViolation::new(field, "is not a token returned by this API"))?;
    if fingerprint != query_fingerprint {
        return Err(FieldViolation::new(field, "belongs to a different query"));
    }
    offset.parse().map_err(|_| FieldViolation::new(field, "is not a token returned by this API"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode("page_token", &encode("item-9")), Ok(Some("item-9".to_owned())));
        assert_eq!(decode("page_token", ""), Ok(None));
        assert!(decode("page_token", "not a token!").is_err());
        assert!(decode("page_token", &URL_SAFE_NO_PAD.encode("other")).is_err());
    }

    #[test]
    fn offset_tokens_are_bound_to_their_query() {
        let token = encode_offset(40, "q=fractions");
        assert_eq!(decode_offset("page_token", &token, "q=fractions"), Ok(40));
        assert!(decode_offset("page_token", &token, "q=decimals").is_err());
    }
}
