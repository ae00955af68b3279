//! Operational key negotiation, initiator side (RFC 7143 §6.2, §13).
//!
//! We offer every key in one go, then fold the target's answers into
//! `SessionParams` with each key's rule (min, max, AND, OR, list choice,
//! declaration). Keys the target raises on its own get an answer computed
//! with the same rules. Pure: tested from canned responses.

use super::ConnectOptions;
use super::error::{InitiatorError, Result};
use crate::proto::negotiation::{
    KeyDef, KeyKind, Range, Sender, SessionParams, lookup, parse_bool, parse_number, yes_no,
};
use crate::proto::text::TextPairs;
use std::collections::HashMap;

/// How the initiator treats a key the target sends in the operational
/// stage: from the key's row in `proto::negotiation::KEYS`.
fn rule(key: &str) -> Option<&'static KeyDef> {
    let def = lookup(key)?;
    let negotiated = match def.kind {
        // A declaration the target may make (its alias, tag, MRDSL...).
        KeyKind::Declarative => def.sender != Sender::Initiator,
        // HeaderDigest, DataDigest, TaskReporting...: pick from a list.
        KeyKind::List => matches!(def.range, Range::Values(_)),
        // Min/Max/And/Or with a value we can combine (not the marker
        // intervals, which are ranges).
        _ => matches!(def.range, Range::Numeric(..) | Range::Boolean),
    };
    negotiated.then_some(def)
}

fn digest_offer(want: bool) -> &'static str {
    if want { "CRC32C,None" } else { "None" }
}

/// Our operational offer, in the order we send it.
pub(crate) fn offers(opts: &ConnectOptions) -> TextPairs {
    let mut p = TextPairs::new();
    p.push("HeaderDigest", digest_offer(opts.header_digest));
    p.push("DataDigest", digest_offer(opts.data_digest));
    p.push("MaxRecvDataSegmentLength", opts.max_recv_dsl.to_string());
    if opts.target_name.is_some() {
        // Irrelevant in discovery sessions (RFC 7143 §13), so only sent here.
        p.push("ImmediateData", yes_no(opts.immediate_data));
        p.push("InitialR2T", yes_no(opts.initial_r2t));
        p.push("MaxBurstLength", opts.max_burst.to_string());
        p.push(
            "FirstBurstLength",
            opts.first_burst.min(opts.max_burst).to_string(),
        );
        p.push("MaxOutstandingR2T", "1");
        p.push("MaxConnections", "1");
        p.push("DataPDUInOrder", "Yes");
        p.push("DataSequenceInOrder", "Yes");
    }
    p.push("ErrorRecoveryLevel", "0");
    p.push("DefaultTime2Wait", "2");
    p.push("DefaultTime2Retain", "20");
    p.push("IFMarker", "No");
    p.push("OFMarker", "No");
    p
}

/// Accumulates the operational exchange and computes the result.
#[derive(Debug, Clone)]
pub(crate) struct Negotiator {
    offered: TextPairs,
    /// Key -> agreed value (from the target's answer or our reply to it).
    agreed: HashMap<String, String>,
    /// The target's own declarations (MaxRecvDataSegmentLength, alias...).
    declared: HashMap<String, String>,
}

fn is_special(v: &str) -> bool {
    matches!(v, "Reject" | "Irrelevant" | "NotUnderstood")
}

fn parse_num(key: &str, v: &str) -> Result<u64> {
    parse_number(v).ok_or_else(|| InitiatorError::Protocol(format!("bad number {key}={v}")))
}

fn parse_flag(key: &str, v: &str) -> Result<bool> {
    parse_bool(v).ok_or_else(|| InitiatorError::Protocol(format!("bad boolean {key}={v}")))
}

/// Combine our value and theirs by the key's kind; returns the agreed value.
fn combine(def: &KeyDef, ours: &str, theirs: &str) -> Result<String> {
    let key = def.name;
    let value = match (def.kind, def.range) {
        (KeyKind::List, _) => {
            let allowed: Vec<&str> = ours.split(',').collect();
            // When the target offers a list we pick our first acceptable one.
            theirs
                .split(',')
                .find(|c| allowed.contains(c))
                .map(str::to_string)
        }
        (_, Range::Boolean) => def
            .combine_bool(parse_flag(key, ours)?, parse_flag(key, theirs)?)
            .map(|b| yes_no(b).to_string()),
        (_, Range::Numeric(..)) => def
            .combine_number(parse_num(key, ours)?, parse_num(key, theirs)?)
            .map(|n| n.to_string()),
        _ => None,
    };
    value.ok_or_else(|| InitiatorError::Protocol(format!("{key}={theirs} not among our {ours}")))
}

/// What we would have offered for a key the target raised first: our
/// offer, else the RFC default.
fn our_preference(def: &KeyDef, opts_offer: &TextPairs) -> Option<String> {
    let v = opts_offer.get(def.name).unwrap_or(def.default);
    (!v.is_empty()).then(|| v.to_string())
}

impl Negotiator {
    pub(crate) fn new(offered: TextPairs) -> Negotiator {
        Negotiator {
            offered,
            agreed: HashMap::new(),
            declared: HashMap::new(),
        }
    }

    pub(crate) fn offered(&self) -> &TextPairs {
        &self.offered
    }

    /// Fold in one (joined) login response; returns the keys we must send
    /// back (answers to keys the target raised itself).
    pub(crate) fn absorb(&mut self, resp: &TextPairs) -> Result<TextPairs> {
        let mut reply = TextPairs::new();
        for (k, v) in resp.iter() {
            match rule(k) {
                Some(def) if def.kind == KeyKind::Declarative => {
                    self.declared.insert(k.to_string(), v.to_string());
                }
                Some(def) => {
                    let we_offered = self.offered.get(k).is_some();
                    if is_special(v) {
                        // The RFC default stays in force for this key.
                        self.agreed.remove(k);
                        continue;
                    }
                    let Some(ours) = our_preference(def, &self.offered) else {
                        reply.push(k, "Irrelevant");
                        continue;
                    };
                    let value = combine(def, &ours, v)?;
                    if !we_offered && !self.agreed.contains_key(k) {
                        reply.push(k, value.clone());
                    }
                    self.agreed.insert(k.to_string(), value);
                }
                None if is_special(v) => {}
                None => reply.push(k, "NotUnderstood"),
            }
        }
        Ok(reply)
    }

    /// Keep the declarations of a security-stage response (the target
    /// sends TargetPortalGroupTag in its first answer, RFC 7143 §13.9).
    pub(crate) fn note_declarations(&mut self, resp: &TextPairs) {
        for (k, v) in resp.iter() {
            if rule(k).is_some_and(|d| d.kind == KeyKind::Declarative) {
                self.declared.insert(k.to_string(), v.to_string());
            }
        }
    }

    /// The target's declarations (TargetAlias, TargetPortalGroupTag, ...).
    pub(crate) fn declared(&self) -> &HashMap<String, String> {
        &self.declared
    }

    /// The session parameters as negotiated so far (RFC defaults elsewhere).
    pub(crate) fn params(&self) -> Result<SessionParams> {
        let mut p = SessionParams::default();
        let num = |k: &str, d: u32| -> Result<u32> {
            match self.agreed.get(k) {
                Some(v) => Ok(parse_num(k, v)?.min(u32::MAX as u64) as u32),
                None => Ok(d),
            }
        };
        let flag = |k: &str, d: bool| -> Result<bool> {
            match self.agreed.get(k) {
                Some(v) => parse_flag(k, v),
                None => Ok(d),
            }
        };
        p.header_digest = self
            .agreed
            .get("HeaderDigest")
            .is_some_and(|v| v == "CRC32C");
        p.data_digest = self.agreed.get("DataDigest").is_some_and(|v| v == "CRC32C");
        p.max_connections = num("MaxConnections", p.max_connections)?;
        p.initial_r2t = flag("InitialR2T", p.initial_r2t)?;
        p.immediate_data = flag("ImmediateData", p.immediate_data)?;
        p.max_burst_length = num("MaxBurstLength", p.max_burst_length)?;
        p.first_burst_length =
            num("FirstBurstLength", p.first_burst_length)?.min(p.max_burst_length);
        p.default_time2wait = num("DefaultTime2Wait", p.default_time2wait)?;
        p.default_time2retain = num("DefaultTime2Retain", p.default_time2retain)?;
        p.max_outstanding_r2t = num("MaxOutstandingR2T", p.max_outstanding_r2t)?;
        p.data_pdu_in_order = flag("DataPDUInOrder", p.data_pdu_in_order)?;
        p.data_sequence_in_order = flag("DataSequenceInOrder", p.data_sequence_in_order)?;
        p.error_recovery_level = num("ErrorRecoveryLevel", p.error_recovery_level)?;
        if let Some(v) = self.offered.get("MaxRecvDataSegmentLength") {
            p.initiator_max_recv_dsl = parse_num("MaxRecvDataSegmentLength", v)? as u32;
        }
        if let Some(v) = self.declared.get("MaxRecvDataSegmentLength") {
            let n = parse_num("MaxRecvDataSegmentLength", v)?;
            if !(512..=0xff_ffff).contains(&n) {
                return Err(InitiatorError::Protocol(format!(
                    "target MaxRecvDataSegmentLength={n} out of range"
                )));
            }
            p.target_max_recv_dsl = n as u32;
        }
        if p.max_burst_length < 512 || p.first_burst_length < 512 {
            return Err(InitiatorError::Protocol("burst length below 512".into()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::login::LoginOffer;
    use crate::proto::negotiation::{KEYS, Negotiator as TargetNegotiator};

    /// Values to offer for a key: its bounds, a middle value, its default.
    fn samples(def: &KeyDef) -> Vec<String> {
        match def.range {
            Range::Numeric(lo, hi) => [lo, hi, lo + (hi - lo) / 2]
                .iter()
                .map(u64::to_string)
                .chain(std::iter::once(def.default.to_string()))
                .collect(),
            _ => vec!["Yes".into(), "No".into()],
        }
    }

    /// For every key combined by min/max/and/or, the initiator offers a
    /// value, the target answers it, and the initiator's agreed value is
    /// the target's: both roles apply the same result function.
    #[test]
    fn both_roles_agree_on_every_combined_key() {
        let combined = |d: &&KeyDef| {
            matches!(
                d.kind,
                KeyKind::Min | KeyKind::Max | KeyKind::And | KeyKind::Or
            ) && rule(d.name).is_some()
        };
        let mut keys = 0;
        for def in KEYS.iter().filter(combined) {
            keys += 1;
            for x in samples(def) {
                let mut target = TargetNegotiator::new(LoginOffer::default(), true);
                let answer = target.negotiate(&[(def.name.into(), x.clone())]).unwrap();
                let theirs = answer.get(def.name).unwrap().to_string();
                let mut offered = TextPairs::new();
                offered.push(def.name, x.clone());
                let mut ini = Negotiator::new(offered);
                let reply = ini.absorb(&answer).unwrap();
                assert!(reply.is_empty(), "{}={x}", def.name);
                let agreed = ini.agreed.get(def.name).cloned();
                assert_eq!(agreed, Some(theirs), "{}={x}", def.name);
            }
        }
        // MaxConnections, InitialR2T, ImmediateData, MaxBurstLength,
        // FirstBurstLength, DefaultTime2Wait, DefaultTime2Retain,
        // MaxOutstandingR2T, DataPDUInOrder, DataSequenceInOrder,
        // ErrorRecoveryLevel, IFMarker, OFMarker, iSCSIProtocolLevel,
        // RDMAExtensions.
        assert_eq!(keys, 15);
    }

    /// The result functions themselves, from the table's kind column.
    #[test]
    fn kinds_combine_as_the_rfc_says() {
        let def = |k| lookup(k).unwrap();
        assert_eq!(def("MaxBurstLength").combine_number(512, 4096), Some(512));
        assert_eq!(def("DefaultTime2Wait").combine_number(2, 7), Some(7));
        assert_eq!(def("ImmediateData").combine_bool(true, false), Some(false));
        assert_eq!(def("InitialR2T").combine_bool(false, true), Some(true));
        assert_eq!(
            def("MaxRecvDataSegmentLength").combine_number(8192, 512),
            Some(512)
        );
        assert_eq!(def("InitialR2T").combine_number(1, 2), None);
        assert_eq!(def("MaxBurstLength").combine_bool(true, true), None);
        assert_eq!(
            combine(def("DataDigest"), "CRC32C,None", "None").unwrap(),
            "None"
        );
        assert!(combine(def("HeaderDigest"), "None", "CRC32C").is_err());
        assert_eq!(
            combine(def("DefaultTime2Retain"), "20", "0x5").unwrap(),
            "5"
        );
    }

    /// Keys of the RFC the initiator used to call NotUnderstood when the
    /// target raised them: answered by their rule now.
    #[test]
    fn target_raised_rfc_keys_get_answers() {
        let mut ini = Negotiator::new(TextPairs::new());
        let mut t = TextPairs::new();
        t.push("RDMAExtensions", "Yes");
        t.push("iSCSIProtocolLevel", "2");
        let reply = ini.absorb(&t).unwrap();
        assert_eq!(reply.get("RDMAExtensions"), Some("No"));
        assert_eq!(reply.get("iSCSIProtocolLevel"), Some("1"));
    }
}
