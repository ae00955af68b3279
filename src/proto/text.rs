//! Text key=value pairs (RFC 7143 §6): NUL-terminated `key=value` strings in
//! a data segment, possibly spread over several PDUs (the C bit).
//!
//! Parsing is strict about shape and bounded in size, because the peer
//! controls every byte: keys and values have RFC length limits, non-UTF-8 is
//! an error, and the number of pairs is capped.

use thiserror::Error;

/// RFC 7143 §6.1: keys are at most 63 bytes.
pub const MAX_KEY_LEN: usize = 63;
/// RFC 7143 §6.1: values are at most 255 bytes, except those explicitly
/// allowed to be longer (CHAP_C/CHAP_R binary, up to 8192 hex digits).
pub const MAX_VALUE_LEN: usize = 8192 * 2 + 2;
/// A bound on pairs in one text exchange, so a hostile peer cannot make us
/// hold arbitrarily many.
pub const MAX_PAIRS: usize = 256;
/// A bound on the total size of a text exchange spread over several PDUs.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("pair without '=': {0:?}")]
    NoEquals(String),
    #[error("key too long or empty: {0:?}")]
    BadKey(String),
    #[error("value too long for key {0}")]
    ValueTooLong(String),
    #[error("too many keys")]
    TooMany,
    #[error("text exchange too large")]
    TooLarge,
}

/// An ordered list of key=value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    pub fn new() -> TextPairs {
        TextPairs(Vec::new())
    }

    /// Parse a complete text segment (all Continue PDUs already joined).
    pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
        if data.len() > MAX_TEXT_BYTES {
            return Err(TextError::TooLarge);
        }
        let mut pairs = Vec::new();
        for chunk in data.split(|&b| b == 0) {
            if chunk.is_empty() {
                continue; // trailing NUL or padding
            }
            if pairs.len() >= MAX_PAIRS {
                return Err(TextError::TooMany);
            }
            let s = std::str::from_utf8(chunk).map_err(|_| TextError::NotUtf8)?;
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| TextError::NoEquals(truncate(s)))?;
            if k.is_empty() || k.len() > MAX_KEY_LEN {
                return Err(TextError::BadKey(truncate(k)));
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(TextError::ValueTooLong(k.to_string()));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(TextPairs(pairs))
    }

    /// Encode as NUL-terminated pairs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn push(&mut self, k: &str, v: impl Into<String>) {
        self.0.push((k.to_string(), v.into()));
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut p = TextPairs::new();
        p.push("InitiatorName", "iqn.2026-11.dev.x:y");
        p.push("SessionType", "Normal");
        let enc = p.encode();
        assert_eq!(TextPairs::parse(&enc).unwrap(), p);
        assert_eq!(p.get("SessionType"), Some("Normal"));
    }

    #[test]
    fn hostile_input() {
        assert_eq!(
            TextPairs::parse(b"abc\0"),
            Err(TextError::NoEquals("abc".into()))
        );
        assert_eq!(
            TextPairs::parse(&[0xff, b'=', b'1', 0]),
            Err(TextError::NotUtf8)
        );
        let long_key = format!("{}=1\0", "k".repeat(64));
        assert!(matches!(
            TextPairs::parse(long_key.as_bytes()),
            Err(TextError::BadKey(_))
        ));
        let many: Vec<u8> = (0..300)
            .flat_map(|i| format!("X-k{i}=1\0").into_bytes())
            .collect();
        assert_eq!(TextPairs::parse(&many), Err(TextError::TooMany));
        assert_eq!(
            TextPairs::parse(&vec![b'a'; MAX_TEXT_BYTES + 1]),
            Err(TextError::TooLarge)
        );
    }
}
