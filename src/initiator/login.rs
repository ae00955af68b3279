//! Initiator login as a pure state machine (RFC 7143 §6.3, §11.12-13):
//! `start` gives the first Login Request, `on_response` turns each Login
//! Response into the next request or the finished login. No I/O here.

use super::ConnectOptions;
use super::error::{InitiatorError, Result};
use super::negotiate::{Negotiator, offers};
use crate::proto::chap::{ChapError, InitiatorChap};
use crate::proto::negotiation::SessionParams;
use crate::proto::text::TextPairs;
use crate::proto::{Opcode, Pdu};
use std::collections::HashMap;

const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;
const T_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;
/// Bound on login round trips, so a target cannot keep us talking forever.
const MAX_ROUNDS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sent AuthMethod=CHAP,None; waiting for the target's choice.
    AuthMethod,
    /// Sent CHAP_A; waiting for CHAP_I / CHAP_C.
    ChapChallenge,
    /// Sent CHAP_N / CHAP_R (and our challenge); waiting to transit.
    ChapResponse,
    /// Security is settled; asking (again) to move to operational.
    SecurityTransit,
    Operational,
}

/// What a finished login hands to the session.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub params: SessionParams,
    pub tsih: u16,
    /// StatSN of the final Login Response.
    pub stat_sn: u32,
    /// The CmdSN for the first command (login requests do not advance it).
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Keys the target declared (TargetAlias, TargetPortalGroupTag, ...).
    pub declared: HashMap<String, String>,
}

#[derive(Debug)]
pub(crate) enum LoginNext {
    Send(Pdu),
    Done(Box<LoginOutcome>),
}

pub(crate) struct LoginDriver {
    opts: ConnectOptions,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    tsih: u16,
    phase: Phase,
    /// Text of a response split over several PDUs (C bit).
    partial: Vec<u8>,
    neg: Negotiator,
    /// Our side of CHAP, when we have credentials.
    chap: Option<InitiatorChap>,
    rounds: u32,
}

fn auth_failed(e: ChapError) -> InitiatorError {
    InitiatorError::AuthFailed(format!("CHAP: {e}"))
}

fn stages(flags: u8) -> (u8, u8) {
    ((flags >> 2) & 3, flags & 3)
}

impl LoginDriver {
    pub(crate) fn new(opts: &ConnectOptions, initial_cmd_sn: u32) -> LoginDriver {
        LoginDriver {
            opts: opts.clone(),
            itt: 0,
            cmd_sn: initial_cmd_sn,
            exp_stat_sn: 0,
            tsih: 0,
            phase: Phase::AuthMethod,
            partial: Vec::new(),
            neg: Negotiator::new(offers(opts)),
            chap: opts
                .chap
                .as_ref()
                .map(|(user, secret)| InitiatorChap::new(user, secret, opts.mutual_chap.clone())),
            rounds: 0,
        }
    }

    fn request(&self, csg: u8, nsg: u8, transit: bool, text: &TextPairs) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginRequest).with_data(text.encode());
        p.bhs.set_immediate(true);
        let nsg = if transit { nsg } else { 0 };
        p.bhs
            .set_flags((csg << 2) | nsg | if transit { T_BIT } else { 0 });
        p.bhs.set_isid(self.opts.isid);
        p.bhs.set_tsih(self.tsih);
        p.bhs.set_itt(self.itt);
        p.bhs.set_cid(0);
        p.bhs.set_cmd_sn(self.cmd_sn);
        p.bhs.set_exp_stat_sn(self.exp_stat_sn);
        p
    }

    /// The first Login Request.
    pub(crate) fn start(&mut self) -> Pdu {
        let mut t = TextPairs::new();
        t.push("InitiatorName", self.opts.initiator_name.clone());
        match &self.opts.target_name {
            Some(name) => {
                t.push("SessionType", "Normal");
                t.push("TargetName", name.clone());
            }
            None => t.push("SessionType", "Discovery"),
        }
        if self.chap.is_some() {
            t.push("AuthMethod", "CHAP,None");
            self.phase = Phase::AuthMethod;
            self.request(SECURITY, OPERATIONAL, false, &t)
        } else {
            t.push("AuthMethod", "None");
            self.phase = Phase::SecurityTransit;
            self.request(SECURITY, OPERATIONAL, true, &t)
        }
    }

    /// Feed one Login Response; get the next request or the result.
    pub(crate) fn on_response(&mut self, resp: &Pdu) -> Result<LoginNext> {
        if resp.opcode() != Opcode::LoginResponse {
            return Err(InitiatorError::Protocol(format!(
                "expected Login Response, got {:?}",
                resp.opcode()
            )));
        }
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(InitiatorError::Protocol("login does not converge".into()));
        }
        let class = resp.bhs.0[36];
        if class != 0 {
            return Err(InitiatorError::LoginFailed {
                class,
                detail: resp.bhs.0[37],
            });
        }
        self.exp_stat_sn = resp.bhs.stat_sn().wrapping_add(1);
        self.tsih = resp.bhs.tsih();
        let flags = resp.bhs.flags();
        let (csg, nsg) = stages(flags);
        let transit = flags & T_BIT != 0;
        let current = self.current_stage();
        if csg != current {
            return Err(InitiatorError::Protocol(format!(
                "login response in stage {csg}, we are in {current}"
            )));
        }
        if self.partial.len() + resp.data.len() > crate::proto::text::MAX_TEXT_BYTES {
            return Err(InitiatorError::Protocol("login text too large".into()));
        }
        self.partial.extend_from_slice(&resp.data);
        if flags & C_BIT != 0 {
            // More text follows; ask for it with an empty request.
            return Ok(LoginNext::Send(self.request(
                current,
                0,
                false,
                &TextPairs::new(),
            )));
        }
        let text = TextPairs::parse(&std::mem::take(&mut self.partial))?;
        if self.phase != Phase::Operational {
            self.neg.note_declarations(&text);
        }
        match self.phase {
            Phase::AuthMethod => self.on_auth_method(&text, transit, nsg),
            Phase::ChapChallenge => self.on_chap_challenge(&text),
            Phase::ChapResponse => self.on_chap_response(&text, transit, nsg),
            Phase::SecurityTransit => self.on_security_transit(&text, transit, nsg),
            Phase::Operational => self.on_operational(&text, transit, nsg, resp),
        }
    }

    fn current_stage(&self) -> u8 {
        match self.phase {
            Phase::Operational => OPERATIONAL,
            _ => SECURITY,
        }
    }

    fn on_auth_method(&mut self, t: &TextPairs, transit: bool, nsg: u8) -> Result<LoginNext> {
        match t.get("AuthMethod") {
            Some("CHAP") => {
                let out = self.chap()?.algorithms();
                self.phase = Phase::ChapChallenge;
                Ok(LoginNext::Send(self.request(SECURITY, 0, false, &out)))
            }
            Some("None") if self.opts.mutual_chap.is_some() => Err(InitiatorError::AuthFailed(
                "target declined CHAP but mutual CHAP is required".into(),
            )),
            Some("None") => {
                self.phase = Phase::SecurityTransit;
                self.on_security_transit(&TextPairs::new(), transit, nsg)
            }
            other => Err(InitiatorError::AuthFailed(format!(
                "target answered AuthMethod={other:?}"
            ))),
        }
    }

    fn chap(&mut self) -> Result<&mut InitiatorChap> {
        self.chap
            .as_mut()
            .ok_or_else(|| InitiatorError::AuthFailed("no CHAP credentials".into()))
    }

    /// The target's CHAP_A/CHAP_I/CHAP_C: answer, and challenge it back
    /// for mutual CHAP.
    fn on_chap_challenge(&mut self, t: &TextPairs) -> Result<LoginNext> {
        let out = self.chap()?.respond(t).map_err(auth_failed)?;
        self.phase = Phase::ChapResponse;
        Ok(LoginNext::Send(self.request(
            SECURITY,
            OPERATIONAL,
            true,
            &out,
        )))
    }

    /// For mutual CHAP, the target's CHAP_N/CHAP_R must answer ours.
    fn on_chap_response(&mut self, t: &TextPairs, transit: bool, nsg: u8) -> Result<LoginNext> {
        self.chap()?.verify_target(t).map_err(auth_failed)?;
        self.phase = Phase::SecurityTransit;
        self.on_security_transit(&TextPairs::new(), transit, nsg)
    }

    fn on_security_transit(&mut self, t: &TextPairs, transit: bool, nsg: u8) -> Result<LoginNext> {
        if let Some(m) = t.get("AuthMethod")
            && m != "None"
        {
            return Err(InitiatorError::AuthFailed(format!(
                "target wants AuthMethod={m}"
            )));
        }
        if !transit {
            // The target is not ready to leave security; ask again.
            return Ok(LoginNext::Send(self.request(
                SECURITY,
                OPERATIONAL,
                true,
                &TextPairs::new(),
            )));
        }
        if nsg != OPERATIONAL {
            return Err(InitiatorError::Protocol(format!(
                "target moved security -> stage {nsg}"
            )));
        }
        self.phase = Phase::Operational;
        let offer = self.neg.offered().clone();
        Ok(LoginNext::Send(self.request(
            OPERATIONAL,
            FULL_FEATURE,
            true,
            &offer,
        )))
    }

    fn on_operational(
        &mut self,
        t: &TextPairs,
        transit: bool,
        nsg: u8,
        resp: &Pdu,
    ) -> Result<LoginNext> {
        let reply = self.neg.absorb(t)?;
        // A final response ends the login; keys raised in it cannot be
        // answered any more, so their computed values simply apply.
        if transit && nsg == FULL_FEATURE {
            return Ok(LoginNext::Done(Box::new(LoginOutcome {
                params: self.neg.params()?,
                tsih: self.tsih,
                stat_sn: resp.bhs.stat_sn(),
                cmd_sn: self.cmd_sn,
                exp_cmd_sn: resp.bhs.exp_cmd_sn(),
                max_cmd_sn: resp.bhs.max_cmd_sn(),
                declared: self.neg.declared().clone(),
            })));
        }
        if transit && nsg != FULL_FEATURE {
            return Err(InitiatorError::Protocol(format!(
                "target moved operational -> stage {nsg}"
            )));
        }
        Ok(LoginNext::Send(self.request(
            OPERATIONAL,
            FULL_FEATURE,
            true,
            &reply,
        )))
    }
}
