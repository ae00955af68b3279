//! CHAP (RFC 1994) with MD5 for iSCSI login (RFC 7143 §12.1.3).
//!
//! The response is MD5(identifier || secret || challenge). Binary values
//! travel as "0x" hex or "0b" base64 (RFC 7143 §6.1); we send hex and accept
//! both. Comparisons of responses are constant time, challenges come from the
//! OS CSPRNG, and a challenge equal to one we issued is refused (a peer that
//! reflects our own challenge back would otherwise get us to compute its
//! answer for it).

use super::text::TextPairs;
use md5::{Digest, Md5};
use rand::RngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// CHAP_A value for MD5.
pub const CHAP_MD5: &str = "5";
/// Length of the challenges we issue, in bytes.
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept from a peer, in bytes (RFC 7143 §12.1.3
/// bounds binary values; 1024 bytes is plenty and bounds our work).
pub const MAX_CHALLENGE_LEN: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChapError {
    #[error("no supported CHAP algorithm offered")]
    NoAlgorithm,
    #[error("malformed CHAP value for {0}")]
    Malformed(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("peer reflected our own challenge")]
    Reflected,
    #[error("CHAP name mismatch")]
    WrongName,
    #[error("CHAP response does not verify")]
    BadResponse,
    #[error("empty CHAP secret")]
    EmptySecret,
}

/// MD5(id || secret || challenge).
pub fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// True when `response` is the right answer; constant time in the bytes.
pub fn verify(id: u8, secret: &[u8], challenge: &[u8], response: &[u8]) -> bool {
    let want = chap_md5(id, secret, challenge);
    // Length is public (always 16 for MD5); the contents are not.
    response.len() == want.len() && bool::from(want.ct_eq(response))
}

/// Encode as an RFC 7143 hex binary value ("0x...").
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Decode an RFC 7143 binary value: "0x"/"0X" hex or "0b"/"0B" base64.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, body) = (v.get(..2)?, v.get(2..)?);
    match prefix {
        "0x" | "0X" => {
            if body.is_empty() {
                return None;
            }
            // An odd digit count has an implied leading zero.
            if body.len() % 2 == 1 {
                hex::decode(format!("0{body}")).ok()
            } else {
                hex::decode(body).ok()
            }
        }
        "0b" | "0B" => decode_base64(body),
        _ => None,
    }
}

/// Strict RFC 4648 base64 with padding.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let quads = b.len() / 4;
    for (i, q) in b.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Parse CHAP_I: a number 0..=255 (decimal or hex).
pub fn parse_id(v: &str) -> Option<u8> {
    super::negotiation::parse_number(v).and_then(|n| u8::try_from(n).ok())
}

/// True when the CHAP_A list offers MD5.
pub fn offers_md5(chap_a: &str) -> bool {
    chap_a.split(',').any(|a| a == CHAP_MD5)
}

/// A challenge we issued: identifier and random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub id: u8,
    pub bytes: Vec<u8>,
}

impl Challenge {
    /// A fresh challenge from the OS CSPRNG.
    pub fn random() -> Challenge {
        let mut bytes = vec![0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut bytes);
        let mut id = [0u8; 1];
        OsRng.fill_bytes(&mut id);
        Challenge { id: id[0], bytes }
    }

    /// CHAP_I and CHAP_C pairs for this challenge.
    pub fn pairs(&self) -> [(String, String); 2] {
        [
            ("CHAP_I".into(), self.id.to_string()),
            ("CHAP_C".into(), encode_hex(&self.bytes)),
        ]
    }

    /// Check a peer's CHAP_N/CHAP_R against this challenge.
    pub fn check(
        &self,
        chap_n: &str,
        chap_r: &str,
        user: &str,
        secret: &str,
    ) -> Result<(), ChapError> {
        if secret.is_empty() {
            return Err(ChapError::EmptySecret);
        }
        let resp = decode_binary(chap_r).ok_or(ChapError::Malformed("CHAP_R"))?;
        let name_ok = bool::from(chap_n.as_bytes().ct_eq(user.as_bytes()));
        let resp_ok = verify(self.id, secret.as_bytes(), &self.bytes, &resp);
        match (name_ok, resp_ok) {
            (false, _) => Err(ChapError::WrongName),
            (true, false) => Err(ChapError::BadResponse),
            (true, true) => Ok(()),
        }
    }
}

/// Parse a peer's CHAP_I/CHAP_C into the identifier and challenge bytes,
/// refusing a reflection of `ours` and oversized challenges.
pub fn parse_challenge(
    chap_i: &str,
    chap_c: &str,
    ours: Option<&Challenge>,
) -> Result<(u8, Vec<u8>), ChapError> {
    let id = parse_id(chap_i).ok_or(ChapError::Malformed("CHAP_I"))?;
    let c = decode_binary(chap_c).ok_or(ChapError::Malformed("CHAP_C"))?;
    if c.is_empty() || c.len() > MAX_CHALLENGE_LEN {
        return Err(ChapError::Malformed("CHAP_C"));
    }
    if ours.is_some_and(|o| bool::from(o.bytes.ct_eq(&c))) {
        return Err(ChapError::Reflected);
    }
    Ok((id, c))
}

/// The initiator's half of CHAP: answer a target's challenge and, for mutual
/// CHAP, challenge the target and check its answer.
#[derive(Debug, Clone)]
pub struct InitiatorChap {
    pub user: String,
    pub secret: String,
    /// (target's name, target's secret) for mutual CHAP.
    pub mutual: Option<(String, String)>,
    sent: Option<Challenge>,
}

impl InitiatorChap {
    pub fn new(user: &str, secret: &str, mutual: Option<(String, String)>) -> InitiatorChap {
        InitiatorChap {
            user: user.into(),
            secret: secret.into(),
            mutual,
            sent: None,
        }
    }

    /// The CHAP_A offer to send after the target chose AuthMethod=CHAP.
    pub fn algorithms(&self) -> TextPairs {
        let mut p = TextPairs::new();
        p.push("CHAP_A", CHAP_MD5);
        p
    }

    /// From the target's CHAP_A/CHAP_I/CHAP_C, the pairs to send: CHAP_N,
    /// CHAP_R and, for mutual CHAP, our CHAP_I/CHAP_C.
    pub fn respond(&mut self, target: &TextPairs) -> Result<TextPairs, ChapError> {
        let a = target.get("CHAP_A").ok_or(ChapError::Missing("CHAP_A"))?;
        if a != CHAP_MD5 {
            return Err(ChapError::NoAlgorithm);
        }
        let i = target.get("CHAP_I").ok_or(ChapError::Missing("CHAP_I"))?;
        let c = target.get("CHAP_C").ok_or(ChapError::Missing("CHAP_C"))?;
        let (id, challenge) = parse_challenge(i, c, None)?;
        if self.secret.is_empty() {
            return Err(ChapError::EmptySecret);
        }
        let mut out = TextPairs::new();
        out.push("CHAP_N", self.user.clone());
        let r = chap_md5(id, self.secret.as_bytes(), &challenge);
        out.push("CHAP_R", encode_hex(&r));
        if self.mutual.is_some() {
            let mut ours = Challenge::random();
            // Never send the target its own challenge back.
            while ours.bytes == challenge {
                ours = Challenge::random();
            }
            out.0.extend(ours.pairs());
            self.sent = Some(ours);
        }
        Ok(out)
    }

    /// For mutual CHAP, check the target's CHAP_N/CHAP_R (in the response
    /// that ends the security stage). Without mutual CHAP there is nothing
    /// to check.
    pub fn verify_target(&self, target: &TextPairs) -> Result<(), ChapError> {
        let (Some((name, secret)), Some(sent)) = (&self.mutual, &self.sent) else {
            return Ok(());
        };
        let n = target.get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
        let r = target.get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?;
        sent.check(n, r, name, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vectors() {
        // id 'a', secret "b", challenge "c": MD5("abc") from RFC 1321.
        assert_eq!(
            hex::encode(chap_md5(b'a', b"b", b"c")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        // Computed independently (Python hashlib) for id 0x42, "secret",
        // challenge 00..0f.
        let c: Vec<u8> = (0..16).collect();
        assert_eq!(
            hex::encode(chap_md5(0x42, b"secret", &c)),
            "31984ca702a9b5c2aacce591012c4352"
        );
        let r = chap_md5(0x42, b"secret", &c);
        assert!(verify(0x42, b"secret", &c, &r));
        assert!(!verify(0x43, b"secret", &c, &r));
        assert!(!verify(0x42, b"secret", &c, &r[..15]));
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0Xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0BAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        for bad in [
            "", "0", "0x", "0xzz", "0b", "0bAQ", "0bAQ=A", "0b====", "abcd", "0b!!!!",
        ] {
            assert_eq!(decode_binary(bad), None, "{bad}");
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_binary(&encode_hex(&bytes)), Some(bytes));
    }

    #[test]
    fn challenge_check_and_reflection() {
        let ch = Challenge::random();
        assert_eq!(ch.bytes.len(), CHALLENGE_LEN);
        let r = encode_hex(&chap_md5(ch.id, b"pw", &ch.bytes));
        assert_eq!(ch.check("alice", &r, "alice", "pw"), Ok(()));
        assert_eq!(
            ch.check("bob", &r, "alice", "pw"),
            Err(ChapError::WrongName)
        );
        assert_eq!(
            ch.check("alice", &r, "alice", "pX"),
            Err(ChapError::BadResponse)
        );
        assert_eq!(
            ch.check("alice", "0xzz", "alice", "pw"),
            Err(ChapError::Malformed("CHAP_R"))
        );
        let [(_, i), (_, c)] = ch.pairs();
        assert_eq!(
            parse_challenge(&i, &c, Some(&ch)),
            Err(ChapError::Reflected)
        );
        assert!(parse_challenge(&i, &c, None).is_ok());
        assert!(parse_challenge("256", &c, None).is_err());
    }

    #[test]
    fn initiator_side_mutual_roundtrip() {
        let target_ch = Challenge::random();
        let mut from_target = TextPairs::new();
        from_target.push("CHAP_A", "5");
        from_target.0.extend(target_ch.pairs());
        let mut ini = InitiatorChap::new("alice", "pw", Some(("tgt".into(), "tpw".into())));
        let out = ini.respond(&from_target).unwrap();
        assert_eq!(out.get("CHAP_N"), Some("alice"));
        assert_eq!(
            target_ch.check("alice", out.get("CHAP_R").unwrap(), "alice", "pw"),
            Ok(())
        );
        // The target answers our challenge.
        let (id, c) = parse_challenge(
            out.get("CHAP_I").unwrap(),
            out.get("CHAP_C").unwrap(),
            Some(&target_ch),
        )
        .unwrap();
        let mut answer = TextPairs::new();
        answer.push("CHAP_N", "tgt");
        answer.push("CHAP_R", encode_hex(&chap_md5(id, b"tpw", &c)));
        assert_eq!(ini.verify_target(&answer), Ok(()));
        answer.0[1].1 = encode_hex(&chap_md5(id, b"wrong", &c));
        assert_eq!(ini.verify_target(&answer), Err(ChapError::BadResponse));
        from_target.0[0].1 = "7".into();
        assert_eq!(ini.respond(&from_target), Err(ChapError::NoAlgorithm));
    }
}
