//! Operational key negotiation, initiator side (RFC 7143 §6.2, §13).
//!
//! We offer every key in one go, then fold the target's answers into
//! `SessionParams` with each key's rule (min, max, AND, OR, list choice,
//! declaration). Keys the target raises on its own get an answer computed
//! with the same rules. Pure: tested from canned responses.

use super::ConnectOptions;
use super::error::{InitiatorError, Result};
use crate::proto::negotiation::SessionParams;
use crate::proto::text::TextPairs;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// A list; the responder picks one (HeaderDigest, DataDigest).
    Digest,
    /// Each side states its own value; no answer is expected.
    Declarative,
    And,
    Or,
    Min,
    Max,
}

fn rule(key: &str) -> Option<Rule> {
    Some(match key {
        "HeaderDigest" | "DataDigest" => Rule::Digest,
        "MaxRecvDataSegmentLength" | "TargetAlias" | "TargetPortalGroupTag" | "TargetAddress" => {
            Rule::Declarative
        }
        "ImmediateData" | "IFMarker" | "OFMarker" => Rule::And,
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => Rule::Or,
        "MaxBurstLength" | "FirstBurstLength" | "MaxOutstandingR2T" | "ErrorRecoveryLevel"
        | "MaxConnections" | "DefaultTime2Retain" => Rule::Min,
        "DefaultTime2Wait" => Rule::Max,
        _ => return None,
    })
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
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
    v.parse::<u64>()
        .map_err(|_| InitiatorError::Protocol(format!("bad number {key}={v}")))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(InitiatorError::Protocol(format!("bad boolean {key}={v}"))),
    }
}

/// Combine our value and theirs under `rule`; returns the agreed value.
fn combine(rule: Rule, key: &str, ours: &str, theirs: &str) -> Result<String> {
    Ok(match rule {
        Rule::Digest => {
            let allowed: Vec<&str> = ours.split(',').collect();
            // When the target offers a list we pick our first acceptable one.
            let pick = theirs.split(',').find(|c| allowed.contains(c));
            match pick {
                Some(c) => c.to_string(),
                None => {
                    return Err(InitiatorError::Protocol(format!(
                        "{key}={theirs} not among our {ours}"
                    )));
                }
            }
        }
        Rule::And => yes_no(parse_bool(key, ours)? && parse_bool(key, theirs)?).into(),
        Rule::Or => yes_no(parse_bool(key, ours)? || parse_bool(key, theirs)?).into(),
        Rule::Min => parse_num(key, ours)?
            .min(parse_num(key, theirs)?)
            .to_string(),
        Rule::Max => parse_num(key, ours)?
            .max(parse_num(key, theirs)?)
            .to_string(),
        Rule::Declarative => theirs.to_string(),
    })
}

/// What we would have offered for a key the target raised first.
fn our_preference(key: &str, opts_offer: &TextPairs) -> Option<String> {
    if let Some(v) = opts_offer.get(key) {
        return Some(v.to_string());
    }
    Some(
        match key {
            // RFC 7143 defaults for keys we did not offer.
            "HeaderDigest" | "DataDigest" => "None",
            "MaxOutstandingR2T" | "MaxConnections" => "1",
            "ErrorRecoveryLevel" => "0",
            "InitialR2T" | "ImmediateData" => "Yes",
            "DataPDUInOrder" | "DataSequenceInOrder" => "Yes",
            "IFMarker" | "OFMarker" => "No",
            "MaxBurstLength" => "262144",
            "FirstBurstLength" => "65536",
            "DefaultTime2Wait" => "2",
            "DefaultTime2Retain" => "20",
            _ => return None,
        }
        .to_string(),
    )
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
                Some(Rule::Declarative) => {
                    self.declared.insert(k.to_string(), v.to_string());
                }
                Some(r) => {
                    let we_offered = self.offered.get(k).is_some();
                    if is_special(v) {
                        // The RFC default stays in force for this key.
                        self.agreed.remove(k);
                        continue;
                    }
                    let Some(ours) = our_preference(k, &self.offered) else {
                        reply.push(k, "Irrelevant");
                        continue;
                    };
                    let value = combine(r, k, &ours, v)?;
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
            if matches!(rule(k), Some(Rule::Declarative)) {
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
                Some(v) => parse_bool(k, v),
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
