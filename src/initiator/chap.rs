//! CHAP-MD5 pieces the initiator needs (RFC 1994 / RFC 7143 §12.1.3).
//!
//! TEMPORARY: `chap_md5` duplicates what `proto::chap` will offer; the lead
//! should switch callers to `proto::chap` once it lands. The value codec
//! (hex `0x` / base64 `0b`) lives here too for the same reason.

use md5::{Digest, Md5};

/// TEMPORARY (switch to proto::chap): MD5(id || secret || challenge).
pub(crate) fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    let out = h.finalize();
    let mut r = [0u8; 16];
    r.copy_from_slice(&out);
    r
}

/// Encode binary as an RFC 7143 hex constant.
pub(crate) fn encode_binary(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// Decode an RFC 7143 binary value: `0x` hex or `0b` base64.
pub(crate) fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // An odd number of digits has an implied leading zero.
        let padded = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        return hex::decode(padded).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return decode_base64(b);
    }
    None
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc1321_vector() {
        // With id byte 'a' and empty secret/challenge this is MD5("a").
        assert_eq!(
            hex::encode(chap_md5(b'a', b"", b"")),
            "0cc175b9c0f1b6a831c399e269772661"
        );
        // Concatenation order matters: MD5("abc").
        assert_eq!(
            hex::encode(chap_md5(b'a', b"b", b"c")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0x102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(encode_binary(&[0xab, 1]), "0xab01");
    }
}
