//! Operational parameter negotiation (RFC 7143 §6.2, §13), table driven.
//!
//! `KEYS` describes every login/text key the RFC defines; the [`Negotiator`]
//! answers an initiator's operational offers from a [`LoginOffer`] and keeps
//! the resulting [`SessionParams`]. Keys that belong to the login machinery
//! (names, AuthMethod, CHAP_*) are answered by `login.rs`, not here.
//!
//! We never start a negotiation ourselves (no target-initiated offers): a key
//! the initiator never mentions keeps its RFC default, which is what
//! `SessionParams::default()` holds. Offering our own values would need the
//! initiator's answer in a later request, and libiscsi (our main client)
//! re-sends every key it knows in each operational request, so the extra
//! round trip buys nothing and risks a duplicate-key dispute.

use super::login::LoginOffer;
use super::text::TextPairs;
use thiserror::Error;

/// The values a login negotiated, as both sides use them in full feature
/// phase. Names follow the RFC keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the *initiator* declared: the largest data segment we may send it.
    pub initiator_max_recv_dsl: u32,
    /// What *we* declared: the largest data segment the initiator may send us.
    pub target_max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for SessionParams {
    /// RFC 7143 defaults (what applies when a key is never negotiated).
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_dsl: 8192,
            target_max_recv_dsl: 8192,
            max_burst_length: 262144,
            first_burst_length: 65536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// How the two sides' values combine (RFC 7143 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Comma-separated preference list; the responder picks one.
    List,
    /// Boolean, result is the AND of both values.
    And,
    /// Boolean, result is the OR of both values.
    Or,
    /// Numeric, result is the smaller value.
    Min,
    /// Numeric, result is the larger value.
    Max,
    /// Each side states its own value; nothing to agree on.
    Declarative,
}

/// Whether a key binds the whole session or one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Session,
    Connection,
}

/// Who may originate a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Initiator,
    Target,
    Both,
}

/// When a key may be sent (RFC 7143 §13 "Use").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Leading connection's login only.
    LeadingOnly,
    /// Any login, never in full feature phase.
    InitializeOnly,
    /// Full feature phase only (Text requests).
    FullFeatureOnly,
    /// Login and full feature phase.
    All,
}

/// Legal values of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Numeric(u64, u64),
    Boolean,
    /// A list drawn from these values.
    Values(&'static [&'static str]),
    /// Free text (names, addresses, CHAP binaries); checked elsewhere.
    Text,
}

/// One row of the RFC key table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    pub name: &'static str,
    pub kind: KeyKind,
    pub scope: Scope,
    pub sender: Sender,
    pub usage: Usage,
    /// RFC default, "" where the RFC gives none.
    pub default: &'static str,
    pub range: Range,
}

const MAX_24: u64 = (1 << 24) - 1;
const DIGESTS: &[&str] = &["CRC32C", "None"];

const fn key(
    name: &'static str,
    kind: KeyKind,
    scope: Scope,
    sender: Sender,
    usage: Usage,
    default: &'static str,
    range: Range,
) -> KeyDef {
    KeyDef {
        name,
        kind,
        scope,
        sender,
        usage,
        default,
        range,
    }
}

use KeyKind as K;
use Range as R;
use Scope::{Connection as CO, Session as SW};
use Sender::{Both, Initiator as Ini, Target as Tgt};
use Usage::{All, FullFeatureOnly as Ffpo, InitializeOnly as Io, LeadingOnly as Lo};

/// Every RFC 7143 login/text key (§12 security keys, §13 operational keys),
/// plus the RFC 7144/7145 keys initiators actually send.
#[rustfmt::skip]
pub const KEYS: &[KeyDef] = &[
    key("AuthMethod", K::List, CO, Both, Io, "None",
        R::Values(&["KRB5", "SRP", "SPKM1", "SPKM2", "CHAP", "None"])),
    key("CHAP_A", K::List, CO, Both, Io, "", R::Text),
    key("CHAP_I", K::Declarative, CO, Both, Io, "", R::Numeric(0, 255)),
    key("CHAP_C", K::Declarative, CO, Both, Io, "", R::Text),
    key("CHAP_N", K::Declarative, CO, Both, Io, "", R::Text),
    key("CHAP_R", K::Declarative, CO, Both, Io, "", R::Text),
    key("HeaderDigest", K::List, CO, Both, Io, "None", R::Values(DIGESTS)),
    key("DataDigest", K::List, CO, Both, Io, "None", R::Values(DIGESTS)),
    key("MaxConnections", K::Min, SW, Both, Lo, "1", R::Numeric(1, 65535)),
    key("SendTargets", K::Declarative, SW, Ini, Ffpo, "", R::Text),
    key("TargetName", K::Declarative, SW, Both, Io, "", R::Text),
    key("InitiatorName", K::Declarative, SW, Ini, Io, "", R::Text),
    key("TargetAlias", K::Declarative, SW, Tgt, All, "", R::Text),
    key("InitiatorAlias", K::Declarative, SW, Ini, All, "", R::Text),
    key("TargetAddress", K::Declarative, SW, Tgt, All, "", R::Text),
    key("TargetPortalGroupTag", K::Declarative, SW, Tgt, Io, "", R::Numeric(0, 65535)),
    key("InitialR2T", K::Or, SW, Both, Lo, "Yes", R::Boolean),
    key("ImmediateData", K::And, SW, Both, Lo, "Yes", R::Boolean),
    key("MaxRecvDataSegmentLength", K::Declarative, CO, Both, All, "8192",
        R::Numeric(512, MAX_24)),
    key("MaxBurstLength", K::Min, SW, Both, Lo, "262144", R::Numeric(512, MAX_24)),
    key("FirstBurstLength", K::Min, SW, Both, Lo, "65536", R::Numeric(512, MAX_24)),
    key("DefaultTime2Wait", K::Max, SW, Both, Lo, "2", R::Numeric(0, 3600)),
    key("DefaultTime2Retain", K::Min, SW, Both, Lo, "20", R::Numeric(0, 3600)),
    key("MaxOutstandingR2T", K::Min, SW, Both, Lo, "1", R::Numeric(1, 65535)),
    key("DataPDUInOrder", K::Or, SW, Both, Lo, "Yes", R::Boolean),
    key("DataSequenceInOrder", K::Or, SW, Both, Lo, "Yes", R::Boolean),
    key("ErrorRecoveryLevel", K::Min, SW, Both, Lo, "0", R::Numeric(0, 2)),
    key("SessionType", K::Declarative, SW, Ini, Lo, "Normal",
        R::Values(&["Discovery", "Normal"])),
    // Markers are obsolete in RFC 7143 (§13.25) but RFC 3720 initiators
    // still offer them; answering "No" keeps both generations happy.
    key("IFMarker", K::And, CO, Both, Io, "No", R::Boolean),
    key("OFMarker", K::And, CO, Both, Io, "No", R::Boolean),
    // Really a range negotiation ("1~65535"); we only ever say Irrelevant.
    key("OFMarkInt", K::Min, CO, Both, Io, "2048", R::Text),
    key("IFMarkInt", K::Min, CO, Both, Io, "2048", R::Text),
    key("TaskReporting", K::List, SW, Both, Lo, "RFC3720",
        R::Values(&["RFC3720", "ResponseFence", "FastAbort"])),
    key("iSCSIProtocolLevel", K::Min, SW, Both, Lo, "1", R::Numeric(0, 31)),
    key("RDMAExtensions", K::And, SW, Both, Lo, "No", R::Boolean),
];

impl KeyDef {
    /// Two numeric values combined by this key's kind: the smaller (Min),
    /// the larger (Max), or the sender's (Declarative). `None` for a key
    /// that is not numeric.
    pub fn combine_number(&self, ours: u64, theirs: u64) -> Option<u64> {
        match (self.kind, self.range) {
            (KeyKind::Min, Range::Numeric(..)) => Some(ours.min(theirs)),
            (KeyKind::Max, Range::Numeric(..)) => Some(ours.max(theirs)),
            (KeyKind::Declarative, Range::Numeric(..)) => Some(theirs),
            _ => None,
        }
    }

    /// Two boolean values combined by this key's kind (And, Or).
    pub fn combine_bool(&self, ours: bool, theirs: bool) -> Option<bool> {
        match (self.kind, self.range) {
            (KeyKind::And, Range::Boolean) => Some(ours && theirs),
            (KeyKind::Or, Range::Boolean) => Some(ours || theirs),
            _ => None,
        }
    }

    /// The RFC default of a numeric key.
    pub fn default_number(&self) -> Option<u64> {
        parse_number(self.default)
    }

    /// The RFC default of a boolean key.
    pub fn default_bool(&self) -> Option<bool> {
        parse_bool(self.default)
    }
}

/// The table row for `name` (keys are case-sensitive, RFC 7143 §6.1).
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// A negotiation the initiator broke badly enough to end the login with
/// status 0x0200 (initiator error).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error("key {0} may not be sent by the initiator")]
    NotInitiatorKey(String),
    #[error("key {0} is not allowed now")]
    WrongPhase(String),
}

/// Parse an RFC 7143 §6.1 numerical value: decimal or 0x-hex.
pub fn parse_number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) if !h.is_empty() && h.len() <= 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(h, 16).ok()
        }
        Some(_) => None,
        None if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse().ok()
        }
        None => None,
    }
}

/// Parse an RFC 7143 boolean ("Yes" / "No").
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// An RFC 7143 boolean value.
pub fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

/// Answers operational keys and accumulates the session's parameters.
#[derive(Debug, Clone)]
pub struct Negotiator {
    offer: LoginOffer,
    params: SessionParams,
    /// False for a connection joining an existing session: leading-only
    /// keys are then a protocol error.
    leading: bool,
    declared_mrdsl: bool,
}

impl Negotiator {
    pub fn new(offer: LoginOffer, leading: bool) -> Negotiator {
        Negotiator {
            offer,
            params: SessionParams::default(),
            leading,
            declared_mrdsl: false,
        }
    }

    /// Answer one request's operational pairs (login's own keys already
    /// removed). Answers follow request order.
    pub fn negotiate(&mut self, pairs: &[(String, String)]) -> Result<TextPairs, NegotiationError> {
        // FirstBurstLength may not exceed MaxBurstLength; settle the latter
        // first when both arrive together, whatever their order.
        let max_burst = pairs.iter().find(|(k, _)| k == "MaxBurstLength");
        if let Some(n) = max_burst.and_then(|(_, v)| self.checked_number("MaxBurstLength", v)) {
            self.params.max_burst_length = n.min(self.offer.max_burst_length);
        }
        let mut out = TextPairs::new();
        for (k, v) in pairs {
            if let Some(answer) = self.answer(k, v)? {
                out.push(k, answer);
            }
        }
        Ok(out)
    }

    /// If we have not yet declared our MaxRecvDataSegmentLength, the pair
    /// that does (and record it as in force).
    pub fn declare_mrdsl(&mut self) -> Option<(String, String)> {
        if self.declared_mrdsl {
            return None;
        }
        self.declared_mrdsl = true;
        self.params.target_max_recv_dsl = self.offer.max_recv_dsl;
        Some((
            "MaxRecvDataSegmentLength".to_string(),
            self.offer.max_recv_dsl.to_string(),
        ))
    }

    /// The parameters in force, with the RFC's cross-key rule applied.
    pub fn params(&self) -> SessionParams {
        let mut p = self.params.clone();
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        p
    }

    fn checked_number(&self, name: &str, v: &str) -> Option<u32> {
        let Some(Range::Numeric(lo, hi)) = lookup(name).map(|d| d.range) else {
            return None;
        };
        parse_number(v)
            .filter(|n| (lo..=hi).contains(n))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// The answer value for one key, `None` when none is due.
    fn answer(&mut self, k: &str, v: &str) -> Result<Option<String>, NegotiationError> {
        if k.starts_with("X-") || k.starts_with("X#") {
            return Ok(Some("NotUnderstood".into()));
        }
        let Some(def) = lookup(k) else {
            return Ok(Some("NotUnderstood".into()));
        };
        if def.sender == Sender::Target {
            return Err(NegotiationError::NotInitiatorKey(k.into()));
        }
        if def.usage == Usage::FullFeatureOnly || (def.usage == Usage::LeadingOnly && !self.leading)
        {
            return Err(NegotiationError::WrongPhase(k.into()));
        }
        let answer = match def.range {
            Range::Numeric(..) => self.numeric(def, v).map(|n| n.to_string()),
            Range::Boolean => self.boolean(def, v).map(|b| yes_no(b).to_string()),
            Range::Values(_) => self.list(def, v),
            Range::Text => self.text(def, v),
        };
        if def.kind == KeyKind::Declarative && answer.is_some() {
            // A valid declaration needs no reply (RFC 7143 §6.2).
            return Ok(None);
        }
        Ok(Some(answer.unwrap_or_else(|| "Reject".into())))
    }

    /// A numeric key: the initiator's value combined with ours by the
    /// key's kind (a declaration is taken as it is), then recorded.
    fn numeric(&mut self, def: &KeyDef, v: &str) -> Option<u32> {
        let n = self.checked_number(def.name, v)?;
        let ours = u64::from(self.our_number(def));
        let result = u32::try_from(def.combine_number(ours, u64::from(n))?).ok()?;
        let p = &mut self.params;
        match def.name {
            "MaxRecvDataSegmentLength" => p.initiator_max_recv_dsl = result,
            "MaxConnections" => p.max_connections = result,
            "MaxBurstLength" => p.max_burst_length = result,
            "FirstBurstLength" => p.first_burst_length = result,
            "DefaultTime2Wait" => p.default_time2wait = result,
            "DefaultTime2Retain" => p.default_time2retain = result,
            "MaxOutstandingR2T" => p.max_outstanding_r2t = result,
            "ErrorRecoveryLevel" => p.error_recovery_level = result,
            _ => {}
        }
        Some(result)
    }

    /// Our value for a numeric key: the offer where it sets one, else the
    /// RFC default (we support no more: one connection, ERL 0, level 1).
    fn our_number(&self, def: &KeyDef) -> u32 {
        let o = &self.offer;
        match def.name {
            "MaxBurstLength" => o.max_burst_length,
            "FirstBurstLength" => o.first_burst_length.min(self.params.max_burst_length),
            "MaxOutstandingR2T" => o.max_outstanding_r2t.max(1),
            _ => def
                .default_number()
                .and_then(|d| u32::try_from(d).ok())
                .unwrap_or(0),
        }
    }

    /// A boolean key: combined with ours by the key's kind, then recorded.
    fn boolean(&mut self, def: &KeyDef, v: &str) -> Option<bool> {
        let ours = match def.name {
            "InitialR2T" => self.offer.initial_r2t,
            "ImmediateData" => self.offer.immediate_data,
            // In-order data (OR with the default Yes): the data path then
            // never has to reassemble out-of-order PDUs or sequences.
            // Markers and RDMAExtensions: AND with the default No.
            _ => def.default_bool()?,
        };
        let result = def.combine_bool(ours, parse_bool(v)?)?;
        let p = &mut self.params;
        match def.name {
            "InitialR2T" => p.initial_r2t = result,
            "ImmediateData" => p.immediate_data = result,
            "DataPDUInOrder" => p.data_pdu_in_order = result,
            "DataSequenceInOrder" => p.data_sequence_in_order = result,
            _ => {}
        }
        Some(result)
    }

    fn list(&mut self, def: &KeyDef, v: &str) -> Option<String> {
        let supported: &[&str] = match def.name {
            "HeaderDigest" if self.offer.allow_header_digest => &["CRC32C", "None"],
            "DataDigest" if self.offer.allow_data_digest => &["CRC32C", "None"],
            "HeaderDigest" | "DataDigest" => &["None"],
            "TaskReporting" => &["RFC3720"],
            // SessionType and AuthMethod are login's; a valid value passes.
            _ => return valid_list(def, v).then(|| v.to_string()),
        };
        let pick = v.split(',').find(|c| supported.contains(c))?;
        match def.name {
            "HeaderDigest" => self.params.header_digest = pick == "CRC32C",
            "DataDigest" => self.params.data_digest = pick == "CRC32C",
            _ => {}
        }
        Some(pick.to_string())
    }

    fn text(&mut self, def: &KeyDef, v: &str) -> Option<String> {
        match def.name {
            // Markers are always off, so their intervals do not matter.
            "OFMarkInt" | "IFMarkInt" => Some("Irrelevant".into()),
            _ => (!v.is_empty()).then(|| v.to_string()),
        }
    }
}

fn valid_list(def: &KeyDef, v: &str) -> bool {
    match def.range {
        Range::Values(allowed) => v.split(',').all(|c| allowed.contains(&c)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn neg() -> Negotiator {
        Negotiator::new(LoginOffer::default(), true)
    }

    #[test]
    fn table_is_unique_and_has_defaults_in_range() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(KEYS[i + 1..].iter().all(|o| o.name != k.name), "{}", k.name);
            if let (Range::Numeric(lo, hi), false) = (k.range, k.default.is_empty()) {
                let d = parse_number(k.default).unwrap();
                assert!((lo..=hi).contains(&d), "{}", k.name);
            }
        }
        let d = SessionParams::default();
        assert_eq!(
            lookup("MaxBurstLength").unwrap().default,
            d.max_burst_length.to_string()
        );
        assert_eq!(
            lookup("FirstBurstLength").unwrap().default,
            d.first_burst_length.to_string()
        );
    }

    #[test]
    fn libiscsi_operational_offer() {
        let mut n = neg();
        let req = pairs(&[
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
            ("MaxConnections", "1"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ]);
        let out = n.negotiate(&req).unwrap();
        assert_eq!(out.get("HeaderDigest"), Some("None"));
        assert_eq!(out.get("InitialR2T"), Some("No"));
        assert_eq!(out.get("ImmediateData"), Some("Yes"));
        assert_eq!(out.get("MaxBurstLength"), Some("262144"));
        assert_eq!(out.get("FirstBurstLength"), Some("262144"));
        assert_eq!(out.get("DefaultTime2Retain"), Some("0"));
        assert_eq!(out.get("IFMarker"), Some("No"));
        assert_eq!(
            out.get("MaxRecvDataSegmentLength"),
            None,
            "declaration needs no answer"
        );
        let p = n.params();
        assert!(!p.initial_r2t && p.immediate_data && !p.header_digest);
        assert_eq!(p.initiator_max_recv_dsl, 262144);
        assert_eq!(p.target_max_recv_dsl, 8192, "not yet declared");
        assert_eq!(n.declare_mrdsl().unwrap().1, "262144");
        assert_eq!(n.declare_mrdsl(), None);
        assert_eq!(n.params().target_max_recv_dsl, 262144);
    }

    #[test]
    fn digest_choice_follows_initiator_order_and_our_policy() {
        let mut n = neg();
        let out = n
            .negotiate(&pairs(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "CRC32C"),
            ]))
            .unwrap();
        assert_eq!(out.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(out.get("DataDigest"), Some("CRC32C"));
        assert!(n.params().header_digest && n.params().data_digest);

        let offer = LoginOffer {
            allow_header_digest: false,
            ..LoginOffer::default()
        };
        let mut n = Negotiator::new(offer, true);
        let out = n
            .negotiate(&pairs(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "Foo"),
            ]))
            .unwrap();
        assert_eq!(out.get("HeaderDigest"), Some("None"));
        assert_eq!(out.get("DataDigest"), Some("Reject"));
        assert!(!n.params().header_digest);
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut n = neg();
        let out = n
            .negotiate(&pairs(&[
                ("MaxBurstLength", "abc"),
                ("FirstBurstLength", "100"),
                ("MaxConnections", "0"),
                ("InitialR2T", "yes"),
                ("ErrorRecoveryLevel", "3"),
                ("MaxRecvDataSegmentLength", "16777216"),
                ("DefaultTime2Wait", "99999999999999999999999"),
            ]))
            .unwrap();
        for (_, v) in out.iter() {
            assert_eq!(v, "Reject");
        }
        assert_eq!(out.0.len(), 7);
        assert_eq!(n.params(), SessionParams::default());
        assert_eq!(parse_number("0x+5"), None);
        assert_eq!(parse_number("+5"), None);
        assert_eq!(parse_number("0x1F"), Some(31));
    }

    #[test]
    fn results_follow_rfc_functions() {
        let mut n = neg();
        let out = n
            .negotiate(&pairs(&[
                ("FirstBurstLength", "0x100000"),
                ("MaxBurstLength", "65536"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "3600"),
                ("MaxOutstandingR2T", "64"),
                ("ErrorRecoveryLevel", "2"),
                ("MaxConnections", "8"),
                ("ImmediateData", "No"),
                ("DataPDUInOrder", "No"),
            ]))
            .unwrap();
        assert_eq!(
            out.get("FirstBurstLength"),
            Some("65536"),
            "capped by MaxBurst"
        );
        assert_eq!(out.get("MaxBurstLength"), Some("65536"));
        assert_eq!(out.get("DefaultTime2Wait"), Some("2"));
        assert_eq!(out.get("DefaultTime2Retain"), Some("20"));
        assert_eq!(out.get("MaxOutstandingR2T"), Some("16"));
        assert_eq!(out.get("ErrorRecoveryLevel"), Some("0"));
        assert_eq!(out.get("MaxConnections"), Some("1"));
        assert_eq!(out.get("ImmediateData"), Some("No"));
        assert_eq!(out.get("DataPDUInOrder"), Some("Yes"));
        let p = n.params();
        assert_eq!((p.first_burst_length, p.max_burst_length), (65536, 65536));
        assert!(!p.immediate_data && p.data_pdu_in_order);
    }

    #[test]
    fn unknown_and_forbidden_keys() {
        let mut n = neg();
        let out = n
            .negotiate(&pairs(&[
                ("X-com.example.foo", "1"),
                ("X#bar", "1"),
                ("Bogus", "1"),
                ("OFMarkInt", "2048"),
            ]))
            .unwrap();
        assert_eq!(out.get("X-com.example.foo"), Some("NotUnderstood"));
        assert_eq!(out.get("X#bar"), Some("NotUnderstood"));
        assert_eq!(out.get("Bogus"), Some("NotUnderstood"));
        assert_eq!(out.get("OFMarkInt"), Some("Irrelevant"));
        for k in ["TargetAlias", "TargetAddress", "TargetPortalGroupTag"] {
            assert!(matches!(
                neg().negotiate(&pairs(&[(k, "x")])),
                Err(NegotiationError::NotInitiatorKey(_))
            ));
        }
        assert!(neg().negotiate(&pairs(&[("SendTargets", "All")])).is_err());
        let mut joining = Negotiator::new(LoginOffer::default(), false);
        assert!(
            joining
                .negotiate(&pairs(&[("MaxBurstLength", "512")]))
                .is_err()
        );
        assert!(
            joining
                .negotiate(&pairs(&[("HeaderDigest", "None")]))
                .is_ok()
        );
    }
}
