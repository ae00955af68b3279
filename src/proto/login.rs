//! Target-side login state machine (RFC 7143 §6.3, §11.12-13).
//!
//! [`TargetLogin`] takes Login Request PDUs one at a time and says what to
//! send back ([`LoginStep`]). It owns the stage machine (Security 0,
//! Operational 1, Full Feature 3), the Continue bit, target lookup, CHAP and
//! (through [`Negotiator`]) the operational keys. No I/O; every input byte is
//! untrusted, so errors become login failures, never panics.
//!
//! Leniency, on purpose: operational keys are accepted (and negotiated) in
//! the security stage too; the identity keys (InitiatorName, TargetName,
//! SessionType, InitiatorAlias) may be repeated in a later request with the
//! same value, because libiscsi does exactly that when it offered CHAP and
//! the target chose None. Any other key repeated within one login fails it.

use std::collections::HashMap;

use super::chap::{self, Challenge};
pub use super::login_failure::LoginFailure;
use super::negotiation::{Negotiator, SessionParams};
use super::pdu::{C_BIT, Opcode, Pdu, T_BIT};
use super::text::{MAX_TEXT_BYTES, TextPairs};

/// CHAP secrets a target (or discovery) requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    /// The name and secret the initiator must prove.
    pub user: String,
    pub secret: String,
    /// For mutual CHAP: the name and secret the target answers with.
    pub mutual: Option<(String, String)>,
}

/// What the directory says about a target named in a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLookup {
    NotFound,
    /// Exists, but the initiator is not in its ACL.
    Forbidden,
    Allowed {
        /// `None`: AuthMethod=None is acceptable; `Some`: CHAP is required.
        chap: Option<ChapSecrets>,
        alias: Option<String>,
        portal_group_tag: u16,
    },
}

/// The registry as login sees it (implemented by src/server).
pub trait LoginDirectory {
    fn lookup_target(&self, target_name: &str, initiator_name: &str) -> TargetLookup;
    /// CHAP required for discovery sessions, if any.
    fn discovery_chap(&self) -> Option<ChapSecrets>;
}

/// The target's offers (MaxRecvDataSegmentLength and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOffer {
    pub max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Allow digests at all ("CRC32C,None" vs "None").
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
}

impl Default for LoginOffer {
    fn default() -> Self {
        LoginOffer {
            max_recv_dsl: 256 * 1024,
            max_burst_length: 16 * 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 16,
            immediate_data: true,
            initial_r2t: false,
            allow_header_digest: true,
            allow_data_digest: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// Everything full feature phase needs from a completed login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for discovery sessions.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// TSIH the initiator sent (0 = new session).
    pub tsih: u16,
    pub cid: u16,
    pub params: SessionParams,
    /// The StatSN to put in the next response after the final login response.
    pub next_stat_sn: u32,
    /// The CmdSN expected next (the login's CmdSN; login requests do not
    /// advance it).
    pub exp_cmd_sn: u32,
    pub portal_group_tag: u16,
}

/// What to do after feeding one login PDU.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this response and wait for the next request.
    Respond(Pdu),
    /// Send this final response (caller fills TSIH) and enter full feature.
    Complete(Box<Pdu>, Box<LoginResult>),
    /// Send this response (it carries the failure's status) and close.
    Fail(Pdu, LoginFailure),
}

/// Login stages (CSG and NSG of byte 1).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// (CSG, NSG) of a Login PDU's flags byte.
pub fn stages(flags: u8) -> (u8, u8) {
    ((flags >> 2) & 3, flags & 3)
}

/// A login taking more requests than this is abandoned (a peer could
/// otherwise keep us negotiating forever).
pub const MAX_LOGIN_PDUS: u32 = 32;
/// Command window granted in login responses (MaxCmdSN = ExpCmdSN + 63).
pub const CMD_WINDOW: u32 = 64;
/// StatSN of the first login response on a connection.
pub const FIRST_STAT_SN: u32 = 1;

/// Keys naming the parties; declarative, answered by nobody.
const IDENTITY_KEYS: &[&str] = &[
    "InitiatorName",
    "InitiatorAlias",
    "TargetName",
    "SessionType",
];
const SECURITY_KEYS: &[&str] = &[
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
];

/// Where authentication stands.
#[derive(Debug, Clone)]
enum Auth {
    /// No AuthMethod chosen yet.
    Undecided,
    /// We answered AuthMethod=CHAP and wait for CHAP_A.
    ChapChosen,
    /// We sent our challenge and wait for CHAP_N/CHAP_R.
    Challenged(Challenge),
    /// Authenticated (or none required).
    Done,
}

/// Header fields fixed by the first request of a login.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    itt: u32,
}

/// What the first request established about the session.
#[derive(Debug, Clone)]
struct Session {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target_name: Option<String>,
    chap: Option<ChapSecrets>,
    portal_group_tag: u16,
}

/// Security keys of one request, pulled out of the pair list.
#[derive(Debug, Default)]
struct SecurityKeys {
    auth_method: Option<String>,
    chap_a: Option<String>,
    chap_i: Option<String>,
    chap_c: Option<String>,
    chap_n: Option<String>,
    chap_r: Option<String>,
}

impl SecurityKeys {
    fn is_empty(&self) -> bool {
        self.auth_method.is_none()
            && self.chap_a.is_none()
            && self.chap_i.is_none()
            && self.chap_c.is_none()
            && self.chap_n.is_none()
            && self.chap_r.is_none()
    }
}

/// A login ended with this failure.
type Failed = LoginFailure;

/// The target side of one connection's login.
#[derive(Debug)]
pub struct TargetLogin {
    offer: LoginOffer,
    neg: Negotiator,
    ident: Option<Identity>,
    session: Option<Session>,
    /// Current stage, `None` before the first request.
    stage: Option<u8>,
    /// CSG of the latest request, echoed in a failure response.
    last_csg: u8,
    /// Text of a request still being continued (C bit).
    partial: Vec<u8>,
    /// Every key the initiator sent so far, with its first value.
    seen: HashMap<String, String>,
    auth: Auth,
    stat_sn: u32,
    exp_cmd_sn: u32,
    pdus: u32,
    finished: bool,
}

impl TargetLogin {
    pub fn new(offer: LoginOffer) -> TargetLogin {
        TargetLogin {
            neg: Negotiator::new(offer.clone(), true),
            offer,
            ident: None,
            session: None,
            stage: None,
            last_csg: STAGE_SECURITY,
            partial: Vec::new(),
            seen: HashMap::new(),
            auth: Auth::Undecided,
            stat_sn: FIRST_STAT_SN,
            exp_cmd_sn: 0,
            pdus: 0,
            finished: false,
        }
    }

    /// Feed one PDU received during login.
    pub fn on_pdu(&mut self, pdu: &Pdu, dir: &dyn LoginDirectory) -> LoginStep {
        if self.finished {
            return self.fail(LoginFailure::InitiatorError);
        }
        match self.step(pdu, dir) {
            Ok(step) => step,
            Err(st) => {
                // Echo this request's tags even if it was the first one.
                if self.ident.is_none() {
                    self.ident = Some(identity_of(pdu));
                }
                self.fail(st)
            }
        }
    }

    /// A failure response with `status`, ending the login. The caller uses
    /// this for refusals it decides itself, e.g. on `LoginStep::Complete`
    /// with a `LoginResult::tsih` naming no session, send
    /// `fail_with(LoginFailure::SessionDoesNotExist)` instead of the success.
    pub fn fail_with(&mut self, failure: LoginFailure) -> Pdu {
        self.finished = true;
        let mut p = self.response(self.last_csg << 2, Vec::new());
        failure.stamp(&mut p);
        p
    }

    fn fail(&mut self, failure: LoginFailure) -> LoginStep {
        LoginStep::Fail(self.fail_with(failure), failure)
    }

    fn step(&mut self, pdu: &Pdu, dir: &dyn LoginDirectory) -> Result<LoginStep, Failed> {
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(LoginFailure::InitiatorError);
        }
        if pdu.opcode() != Opcode::LoginRequest {
            return Err(LoginFailure::InvalidDuringLogin);
        }
        let (transit, csg, nsg) = self.check_header(pdu)?;

        self.partial.extend_from_slice(&pdu.data);
        if self.partial.len() > MAX_TEXT_BYTES {
            return Err(LoginFailure::InitiatorError);
        }
        if pdu.bhs.flags() & C_BIT != 0 {
            // More text follows: acknowledge with an empty response.
            return Ok(LoginStep::Respond(self.response(csg << 2, Vec::new())));
        }
        let text = std::mem::take(&mut self.partial);
        let pairs = TextPairs::parse(&text).map_err(|_| LoginFailure::InitiatorError)?;
        self.check_repeats(&pairs)?;

        let mut answer = TextPairs::new();
        if self.session.is_none() {
            self.identify(&pairs, csg, dir, &mut answer)?;
        }

        let (security, operational) = split_keys(&pairs);
        if csg == STAGE_SECURITY {
            self.security(&security, &mut answer)?;
        } else if !security.is_empty() {
            return Err(LoginFailure::InitiatorError);
        }
        let negotiated = self
            .neg
            .negotiate(&operational)
            .map_err(|_| LoginFailure::InitiatorError)?;
        answer.0.extend(negotiated.0);
        if csg == STAGE_OPERATIONAL {
            answer.0.extend(self.neg.declare_mrdsl());
        }

        if transit && self.ready_to_leave(csg)? {
            self.stage = Some(nsg);
            if nsg == STAGE_FULL_FEATURE {
                return Ok(self.complete(csg, answer));
            }
            let flags = T_BIT | (csg << 2) | nsg;
            return Ok(LoginStep::Respond(self.response(flags, answer.encode())));
        }
        Ok(LoginStep::Respond(self.response(csg << 2, answer.encode())))
    }

    /// Opcode-independent header checks; returns (T, CSG, NSG).
    fn check_header(&mut self, pdu: &Pdu) -> Result<(bool, u8, u8), Failed> {
        let flags = pdu.bhs.flags();
        let transit = flags & T_BIT != 0;
        let (csg, nsg) = stages(flags);
        self.last_csg = csg;
        // VersionMin (byte 3) must admit version 0, the only one there is.
        if pdu.bhs.0[3] != 0 || pdu.bhs.0[2] < pdu.bhs.0[3] {
            return Err(LoginFailure::UnsupportedVersion);
        }
        let id = identity_of(pdu);
        match self.ident {
            None => self.ident = Some(id),
            Some(old) => {
                if old.isid != id.isid
                    || old.tsih != id.tsih
                    || old.cid != id.cid
                    || old.itt != id.itt
                {
                    return Err(LoginFailure::InitiatorError);
                }
            }
        }
        self.exp_cmd_sn = pdu.bhs.cmd_sn();
        if transit && flags & C_BIT != 0 {
            return Err(LoginFailure::InitiatorError);
        }
        let expected_ok = match self.stage {
            None => csg == STAGE_SECURITY || csg == STAGE_OPERATIONAL,
            Some(s) => csg == s,
        };
        // A continued text must finish in the stage it started in.
        if !expected_ok || (!self.partial.is_empty() && Some(csg) != self.stage) {
            return Err(LoginFailure::InitiatorError);
        }
        let legal_next = match csg {
            STAGE_SECURITY => nsg == STAGE_OPERATIONAL || nsg == STAGE_FULL_FEATURE,
            _ => nsg == STAGE_FULL_FEATURE,
        };
        if transit && !legal_next {
            return Err(LoginFailure::InitiatorError);
        }
        self.stage = Some(csg);
        Ok((transit, csg, nsg))
    }

    /// Duplicate keys, within one request or across the login.
    fn check_repeats(&mut self, pairs: &TextPairs) -> Result<(), Failed> {
        let mut this_request: Vec<&str> = Vec::new();
        for (k, v) in pairs.iter() {
            if this_request.contains(&k) {
                return Err(LoginFailure::InitiatorError);
            }
            this_request.push(k);
            match self.seen.get(k) {
                Some(old) if IDENTITY_KEYS.contains(&k) && old == v => {}
                Some(_) => return Err(LoginFailure::InitiatorError),
                None => {
                    self.seen.insert(k.to_string(), v.to_string());
                }
            }
        }
        Ok(())
    }

    /// First complete request: who is logging in, to what, and may they.
    fn identify(
        &mut self,
        pairs: &TextPairs,
        csg: u8,
        dir: &dyn LoginDirectory,
        answer: &mut TextPairs,
    ) -> Result<(), Failed> {
        let initiator_name = pairs
            .get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or(LoginFailure::MissingParameter)?
            .to_string();
        let session_type = match pairs.get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginFailure::SessionTypeUnsupported),
        };
        let initiator_alias = pairs.get("InitiatorAlias").map(str::to_string);
        let (target_name, chap, portal_group_tag) = match session_type {
            SessionType::Discovery => (None, dir.discovery_chap(), 0),
            SessionType::Normal => {
                let name = pairs
                    .get("TargetName")
                    .filter(|n| !n.is_empty())
                    .ok_or(LoginFailure::MissingParameter)?;
                match dir.lookup_target(name, &initiator_name) {
                    TargetLookup::NotFound => return Err(LoginFailure::NotFound),
                    TargetLookup::Forbidden => return Err(LoginFailure::AuthorizationFailure),
                    TargetLookup::Allowed {
                        chap,
                        alias,
                        portal_group_tag,
                    } => {
                        // RFC 7143 §13.9: TPGT goes in the response to the
                        // first (complete) request that named the target.
                        answer.push("TargetPortalGroupTag", portal_group_tag.to_string());
                        if let Some(a) = alias {
                            answer.push("TargetAlias", a);
                        }
                        (Some(name.to_string()), chap, portal_group_tag)
                    }
                }
            }
        };
        if csg == STAGE_OPERATIONAL {
            // The initiator skipped the security stage.
            if chap.is_some() {
                return Err(LoginFailure::AuthFailure);
            }
            self.auth = Auth::Done;
        }
        let tsih = self.ident.map_or(0, |i| i.tsih);
        self.neg = Negotiator::new(self.offer.clone(), tsih == 0);
        self.session = Some(Session {
            session_type,
            initiator_name,
            initiator_alias,
            target_name,
            chap,
            portal_group_tag,
        });
        Ok(())
    }

    /// The security-stage keys of one request.
    fn security(&mut self, keys: &SecurityKeys, answer: &mut TextPairs) -> Result<(), Failed> {
        let chap = self.session.as_ref().and_then(|s| s.chap.clone());
        if let Some(methods) = &keys.auth_method {
            if !matches!(self.auth, Auth::Undecided) {
                return Err(LoginFailure::InitiatorError);
            }
            let offered = |m: &str| methods.split(',').any(|x| x == m);
            if chap.is_some() && offered("CHAP") {
                answer.push("AuthMethod", "CHAP");
                self.auth = Auth::ChapChosen;
            } else if chap.is_none() && offered("None") {
                answer.push("AuthMethod", "None");
                self.auth = Auth::Done;
            } else {
                return Err(LoginFailure::AuthFailure);
            }
        }
        if let Some(algs) = &keys.chap_a {
            if !matches!(self.auth, Auth::ChapChosen) {
                return Err(LoginFailure::InitiatorError);
            }
            if !chap::offers_md5(algs) {
                return Err(LoginFailure::AuthFailure);
            }
            let ch = Challenge::random();
            answer.push("CHAP_A", chap::CHAP_MD5);
            answer.0.extend(ch.pairs());
            self.auth = Auth::Challenged(ch);
        }
        let answering = keys.chap_n.is_some() || keys.chap_r.is_some();
        let mutual = keys.chap_i.is_some() || keys.chap_c.is_some();
        if answering || mutual {
            let (Auth::Challenged(ours), Some(secrets)) = (&self.auth, &chap) else {
                return Err(LoginFailure::InitiatorError);
            };
            let (Some(n), Some(r)) = (&keys.chap_n, &keys.chap_r) else {
                return Err(LoginFailure::AuthFailure);
            };
            ours.check(n, r, &secrets.user, &secrets.secret)
                .map_err(|_| LoginFailure::AuthFailure)?;
            if mutual {
                answer.0.extend(mutual_answer(keys, ours, secrets)?);
            }
            self.auth = Auth::Done;
        }
        Ok(())
    }

    /// May we honour the initiator's T bit leaving `csg`?
    fn ready_to_leave(&mut self, csg: u8) -> Result<bool, Failed> {
        if csg != STAGE_SECURITY {
            return Ok(true);
        }
        let chap_required = self.session.as_ref().is_some_and(|s| s.chap.is_some());
        match self.auth {
            Auth::Done => Ok(true),
            Auth::Undecided if chap_required => Err(LoginFailure::AuthFailure),
            Auth::Undecided => {
                self.auth = Auth::Done;
                Ok(true)
            }
            // Mid-CHAP: stay in the security stage (T=0 in our response).
            Auth::ChapChosen | Auth::Challenged(_) => Ok(false),
        }
    }

    fn complete(&mut self, csg: u8, mut answer: TextPairs) -> LoginStep {
        // Declared even when the operational stage was skipped, so the
        // initiator may use our larger segment size.
        answer.0.extend(self.neg.declare_mrdsl());
        let flags = T_BIT | (csg << 2) | STAGE_FULL_FEATURE;
        let pdu = self.response(flags, answer.encode());
        self.finished = true;
        let (Some(session), Some(ident)) = (self.session.clone(), self.ident) else {
            // Unreachable: a request that transits has been identified.
            return self.fail(LoginFailure::TargetError);
        };
        let result = LoginResult {
            session_type: session.session_type,
            initiator_name: session.initiator_name,
            initiator_alias: session.initiator_alias,
            target_name: session.target_name,
            isid: ident.isid,
            tsih: ident.tsih,
            cid: ident.cid,
            params: self.neg.params(),
            next_stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            portal_group_tag: session.portal_group_tag,
        };
        LoginStep::Complete(Box::new(pdu), Box::new(result))
    }

    /// A Login Response with this flags byte and data; consumes a StatSN.
    fn response(&mut self, flags: u8, data: Vec<u8>) -> Pdu {
        let mut p = response_header(self.ident, flags, self.stat_sn, self.exp_cmd_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.bhs.set_data_segment_len(data.len() as u32);
        p.data = data;
        p
    }
}

/// The header of every Login Response the target sends, the machine's and
/// the runtime's refusals alike: the request's tags echoed, this StatSN,
/// and the CmdSN window opening at `exp_cmd_sn`.
pub(crate) fn response_header(
    ident: Option<Identity>,
    flags: u8,
    stat_sn: u32,
    exp_cmd_sn: u32,
) -> Pdu {
    let mut p = Pdu::new(Opcode::LoginResponse);
    p.bhs.set_flags(flags);
    // VersionMax and VersionActive (bytes 2, 3) stay 0.
    if let Some(id) = ident {
        p.bhs.set_isid(id.isid);
        p.bhs.set_tsih(id.tsih);
        p.bhs.set_itt(id.itt);
    }
    p.bhs.set_stat_sn(stat_sn);
    p.bhs.set_exp_cmd_sn(exp_cmd_sn);
    p.bhs
        .set_max_cmd_sn(exp_cmd_sn.wrapping_add(CMD_WINDOW - 1));
    p
}

pub(crate) fn identity_of(pdu: &Pdu) -> Identity {
    Identity {
        isid: pdu.bhs.isid(),
        tsih: pdu.bhs.tsih(),
        cid: pdu.bhs.cid(),
        itt: pdu.bhs.itt(),
    }
}

/// Separate security keys from the rest; identity keys are dropped (login
/// handled them and they need no answer).
fn split_keys(pairs: &TextPairs) -> (SecurityKeys, Vec<(String, String)>) {
    let mut sec = SecurityKeys::default();
    let mut rest = Vec::new();
    for (k, v) in pairs.iter() {
        let slot = match k {
            "AuthMethod" => &mut sec.auth_method,
            "CHAP_A" => &mut sec.chap_a,
            "CHAP_I" => &mut sec.chap_i,
            "CHAP_C" => &mut sec.chap_c,
            "CHAP_N" => &mut sec.chap_n,
            "CHAP_R" => &mut sec.chap_r,
            _ if IDENTITY_KEYS.contains(&k) => continue,
            _ => {
                rest.push((k.to_string(), v.to_string()));
                continue;
            }
        };
        debug_assert!(SECURITY_KEYS.contains(&k));
        *slot = Some(v.to_string());
    }
    (sec, rest)
}

/// Our CHAP_N/CHAP_R for the initiator's mutual-CHAP challenge.
fn mutual_answer(
    keys: &SecurityKeys,
    ours: &Challenge,
    secrets: &ChapSecrets,
) -> Result<[(String, String); 2], Failed> {
    let (Some(i), Some(c)) = (&keys.chap_i, &keys.chap_c) else {
        return Err(LoginFailure::AuthFailure);
    };
    let Some((name, secret)) = &secrets.mutual else {
        // The initiator wants us to authenticate, but we have no secret.
        return Err(LoginFailure::AuthFailure);
    };
    let (id, challenge) =
        chap::parse_challenge(i, c, Some(ours)).map_err(|_| LoginFailure::AuthFailure)?;
    let r = chap::chap_md5(id, secret.as_bytes(), &challenge);
    Ok([
        ("CHAP_N".into(), name.clone()),
        ("CHAP_R".into(), chap::encode_hex(&r)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::chap::{InitiatorChap, chap_md5, encode_hex};
    use proptest::prelude::*;

    const TARGET: &str = "iqn.2026-11.dev.gentgt:disk1";
    const INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
    const ISID: [u8; 6] = [0x80, 0, 0x12, 0x34, 0, 0];
    const ITT: u32 = 0x1234_5678;
    const CMD_SN: u32 = 0xdead_0001;

    /// A directory with one target whose CHAP policy the test picks.
    struct Dir {
        chap: Option<ChapSecrets>,
        discovery_chap: Option<ChapSecrets>,
    }

    impl LoginDirectory for Dir {
        fn lookup_target(&self, target: &str, initiator: &str) -> TargetLookup {
            if target != TARGET {
                return TargetLookup::NotFound;
            }
            if initiator.contains("intruder") {
                return TargetLookup::Forbidden;
            }
            TargetLookup::Allowed {
                chap: self.chap.clone(),
                alias: Some("disk one".into()),
                portal_group_tag: 7,
            }
        }
        fn discovery_chap(&self) -> Option<ChapSecrets> {
            self.discovery_chap.clone()
        }
    }

    fn open_dir() -> Dir {
        Dir {
            chap: None,
            discovery_chap: None,
        }
    }

    fn secrets(mutual: bool) -> ChapSecrets {
        ChapSecrets {
            user: "alice".into(),
            secret: "alice-secret".into(),
            mutual: mutual.then(|| ("target-name".into(), "target-secret".into())),
        }
    }

    fn chap_dir(mutual: bool) -> Dir {
        Dir {
            chap: Some(secrets(mutual)),
            discovery_chap: None,
        }
    }

    /// A login request as libiscsi builds it: I bit, flags, ISID, ITT, CmdSN.
    fn req(transit: bool, csg: u8, nsg: u8, pairs: &[(&str, &str)]) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.bhs.set_immediate(true);
        let t = if transit { T_BIT } else { 0 };
        p.bhs
            .set_flags(t | (csg << 2) | if transit { nsg } else { 0 });
        p.bhs.set_isid(ISID);
        p.bhs.set_itt(ITT);
        p.bhs.set_cmd_sn(CMD_SN);
        let mut text = TextPairs::new();
        for (k, v) in pairs {
            text.push(k, *v);
        }
        p.data = text.encode();
        p
    }

    fn respond(step: LoginStep) -> (Pdu, TextPairs) {
        match step {
            LoginStep::Respond(p) => {
                assert_eq!(LoginFailure::of_response(&p), None);
                let t = TextPairs::parse(&p.data).unwrap();
                (p, t)
            }
            other => panic!("expected Respond, got {other:?}"),
        }
    }

    fn complete(step: LoginStep) -> (Pdu, TextPairs, LoginResult) {
        match step {
            LoginStep::Complete(p, r) => {
                assert_eq!(LoginFailure::of_response(&p), None);
                let t = TextPairs::parse(&p.data).unwrap();
                (*p, t, *r)
            }
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    fn failed(step: LoginStep) -> LoginFailure {
        match step {
            LoginStep::Fail(p, f) => {
                assert_eq!(p.opcode(), Opcode::LoginResponse);
                assert_eq!(p.bhs.flags() & T_BIT, 0);
                assert_eq!(LoginFailure::of_response(&p), Some(f));
                f
            }
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    fn first_keys() -> Vec<(&'static str, &'static str)> {
        vec![
            ("InitiatorName", INITIATOR),
            ("InitiatorAlias", "test-host"),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
        ]
    }

    /// libiscsi's operational keys, in its order.
    fn op_keys() -> Vec<(&'static str, &'static str)> {
        vec![
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
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
        ]
    }

    fn check_response_header(p: &Pdu, stat_sn: u32) {
        assert_eq!(p.opcode(), Opcode::LoginResponse);
        assert_eq!((p.bhs.0[2], p.bhs.0[3]), (0, 0), "version max/active");
        assert_eq!(p.bhs.isid(), ISID);
        assert_eq!(p.bhs.itt(), ITT);
        assert_eq!(p.bhs.stat_sn(), stat_sn);
        assert_eq!(p.bhs.exp_cmd_sn(), CMD_SN);
        assert_eq!(p.bhs.max_cmd_sn(), CMD_SN.wrapping_add(CMD_WINDOW - 1));
    }

    #[test]
    fn no_auth_single_pdu_login_like_libiscsi() {
        let mut l = TargetLogin::new(LoginOffer::default());
        let mut keys = first_keys();
        keys.extend(op_keys());
        let (p, t, r) = complete(l.on_pdu(&req(true, 1, 3, &keys), &open_dir()));
        check_response_header(&p, FIRST_STAT_SN);
        assert_eq!(p.bhs.flags(), T_BIT | (1 << 2) | 3);
        assert_eq!(t.get("TargetPortalGroupTag"), Some("7"));
        assert_eq!(t.get("TargetAlias"), Some("disk one"));
        assert_eq!(t.get("HeaderDigest"), Some("None"));
        assert_eq!(t.get("InitialR2T"), Some("Yes"));
        assert_eq!(t.get("MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(
            t.get("InitiatorName"),
            None,
            "declaratives are not answered"
        );
        assert_eq!(r.session_type, SessionType::Normal);
        assert_eq!(r.initiator_name, INITIATOR);
        assert_eq!(r.initiator_alias.as_deref(), Some("test-host"));
        assert_eq!(r.target_name.as_deref(), Some(TARGET));
        assert_eq!((r.isid, r.tsih, r.cid), (ISID, 0, 0));
        assert_eq!(r.portal_group_tag, 7);
        assert_eq!(r.next_stat_sn, FIRST_STAT_SN + 1);
        assert_eq!(r.exp_cmd_sn, CMD_SN);
        assert_eq!(r.params.initiator_max_recv_dsl, 262144);
        assert_eq!(
            r.params.target_max_recv_dsl,
            LoginOffer::default().max_recv_dsl
        );
        assert!(r.params.initial_r2t && r.params.immediate_data);
        assert_eq!(r.params.default_time2retain, 0);
        // The caller may still turn the success into a refusal.
        let f = l.fail_with(LoginFailure::SessionDoesNotExist);
        assert_eq!(
            LoginFailure::of_response(&f),
            Some(LoginFailure::SessionDoesNotExist)
        );
        assert_eq!(f.bhs.flags(), 1 << 2);
        assert_eq!(f.bhs.itt(), ITT);
        // Anything after completion is refused.
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &[]), &open_dir())),
            LoginFailure::InitiatorError
        );
    }

    #[test]
    fn security_stage_with_auth_none_then_operational() {
        // libiscsi with a CHAP user against a target that needs none: it
        // repeats its identity keys in the operational request.
        let mut l = TargetLogin::new(LoginOffer::default());
        let mut keys = first_keys();
        keys.push(("AuthMethod", "CHAP,None"));
        let (p, t) = respond(l.on_pdu(&req(true, 0, 1, &keys), &open_dir()));
        assert_eq!(p.bhs.flags(), T_BIT | 1);
        assert_eq!(t.get("AuthMethod"), Some("None"));
        assert_eq!(t.get("TargetPortalGroupTag"), Some("7"));
        let mut keys = first_keys();
        keys.extend(op_keys());
        let (p, t, r) = complete(l.on_pdu(&req(true, 1, 3, &keys), &open_dir()));
        check_response_header(&p, FIRST_STAT_SN + 1);
        assert_eq!(
            t.get("TargetPortalGroupTag"),
            None,
            "only in the first response"
        );
        assert_eq!(t.get("MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(r.next_stat_sn, FIRST_STAT_SN + 2);
    }

    /// Drive libiscsi's CHAP flow; returns the final step.
    fn chap_login(dir: &Dir, ini: &mut InitiatorChap, tamper: bool) -> LoginStep {
        let mut l = TargetLogin::new(LoginOffer::default());
        let mut keys = first_keys();
        keys.push(("AuthMethod", "CHAP,None"));
        let (p, t) = respond(l.on_pdu(&req(true, 0, 1, &keys), dir));
        assert_eq!(p.bhs.flags() & T_BIT, 0, "CHAP not done: no transit");
        assert_eq!(t.get("AuthMethod"), Some("CHAP"));

        let (_, t) = respond(l.on_pdu(&req(false, 0, 1, &[("CHAP_A", "5,6,7,8")]), dir));
        assert_eq!(t.get("CHAP_A"), Some("5"));
        let mut answer = ini.respond(&t).unwrap();
        if tamper {
            let r = chap::decode_binary(answer.get("CHAP_R").unwrap()).unwrap();
            let mut r = r.clone();
            r[0] ^= 1;
            answer.0[1].1 = encode_hex(&r);
        }
        let pairs: Vec<(&str, &str)> = answer.iter().collect();
        let step = l.on_pdu(&req(true, 0, 1, &pairs), dir);
        let LoginStep::Respond(p) = step else {
            return step;
        };
        assert_eq!(p.bhs.flags(), T_BIT | 1);
        let t = TextPairs::parse(&p.data).unwrap();
        ini.verify_target(&t).unwrap();
        if ini.mutual.is_some() {
            assert_eq!(t.get("CHAP_N"), Some("target-name"));
        }
        l.on_pdu(&req(true, 1, 3, &op_keys()), dir)
    }

    #[test]
    fn one_way_chap_login() {
        let mut ini = InitiatorChap::new("alice", "alice-secret", None);
        let (_, _, r) = complete(chap_login(&chap_dir(false), &mut ini, false));
        assert_eq!(r.target_name.as_deref(), Some(TARGET));
        assert_eq!(r.next_stat_sn, FIRST_STAT_SN + 4);
    }

    #[test]
    fn mutual_chap_login() {
        let mutual = Some(("target-name".to_string(), "target-secret".to_string()));
        let mut ini = InitiatorChap::new("alice", "alice-secret", mutual);
        complete(chap_login(&chap_dir(true), &mut ini, false));
    }

    #[test]
    fn mutual_chap_without_target_secret_fails() {
        let mutual = Some(("target-name".to_string(), "target-secret".to_string()));
        let mut ini = InitiatorChap::new("alice", "alice-secret", mutual);
        assert_eq!(
            failed(chap_login(&chap_dir(false), &mut ini, false)),
            LoginFailure::AuthFailure
        );
    }

    #[test]
    fn wrong_chap_response_or_secret_fails() {
        let mut ini = InitiatorChap::new("alice", "alice-secret", None);
        assert_eq!(
            failed(chap_login(&chap_dir(false), &mut ini, true)),
            LoginFailure::AuthFailure
        );
        let mut ini = InitiatorChap::new("alice", "guess", None);
        assert_eq!(
            failed(chap_login(&chap_dir(false), &mut ini, false)),
            LoginFailure::AuthFailure
        );
        let mut ini = InitiatorChap::new("mallory", "alice-secret", None);
        assert_eq!(
            failed(chap_login(&chap_dir(false), &mut ini, false)),
            LoginFailure::AuthFailure
        );
    }

    #[test]
    fn base64_chap_response_accepted_oversized_refused() {
        for (extra, ok) in [("", true), ("b3ZlcnNpemUK", false)] {
            let dir = chap_dir(false);
            let mut l = TargetLogin::new(LoginOffer::default());
            let mut keys = first_keys();
            keys.push(("AuthMethod", "CHAP"));
            respond(l.on_pdu(&req(false, 0, 1, &keys), &dir));
            let (_, t) = respond(l.on_pdu(&req(false, 0, 1, &[("CHAP_A", "5")]), &dir));
            let id = chap::parse_id(t.get("CHAP_I").unwrap()).unwrap();
            let c = chap::decode_binary(t.get("CHAP_C").unwrap()).unwrap();
            let r = chap_md5(id, b"alice-secret", &c);
            let b64 = format!("0b{extra}{}", base64(&r));
            let step = l.on_pdu(
                &req(true, 0, 1, &[("CHAP_N", "alice"), ("CHAP_R", &b64)]),
                &dir,
            );
            if ok {
                respond(step);
            } else {
                assert_eq!(failed(step), LoginFailure::AuthFailure);
            }
        }
    }

    /// Test-only base64 encoder, to feed the target "0b" values.
    fn base64(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn bad_chap_algorithms_fail() {
        for algs in ["56", "", "6,7"] {
            let dir = chap_dir(false);
            let mut l = TargetLogin::new(LoginOffer::default());
            let mut keys = first_keys();
            keys.push(("AuthMethod", "CHAP,None"));
            respond(l.on_pdu(&req(true, 0, 1, &keys), &dir));
            let step = l.on_pdu(&req(false, 0, 1, &[("CHAP_A", algs)]), &dir);
            assert_eq!(failed(step), LoginFailure::AuthFailure, "{algs:?}");
        }
    }

    #[test]
    fn chap_required_but_skipped_or_not_offered() {
        let dir = chap_dir(false);
        let mut keys = first_keys();
        keys.extend(op_keys());
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &dir)),
            LoginFailure::AuthFailure
        );

        let mut keys = first_keys();
        keys.push(("AuthMethod", "None"));
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 0, 1, &keys), &dir)),
            LoginFailure::AuthFailure
        );

        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 0, 1, &first_keys()), &dir)),
            LoginFailure::AuthFailure
        );
    }

    #[test]
    fn lookup_failures() {
        let mut keys = first_keys();
        keys[2].1 = "iqn.2026-11.dev.gentgt:nope";
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &open_dir())),
            LoginFailure::NotFound
        );

        let mut keys = first_keys();
        keys[0].1 = "iqn.2026-11.evil:intruder";
        let mut l = TargetLogin::new(LoginOffer::default());
        let step = l.on_pdu(&req(true, 1, 3, &keys), &open_dir());
        assert_eq!(failed(step), LoginFailure::AuthorizationFailure);

        let mut l = TargetLogin::new(LoginOffer::default());
        let step = l.on_pdu(&req(true, 1, 3, &[("TargetName", TARGET)]), &open_dir());
        assert_eq!(failed(step), LoginFailure::MissingParameter);

        let mut l = TargetLogin::new(LoginOffer::default());
        let step = l.on_pdu(
            &req(true, 1, 3, &[("InitiatorName", INITIATOR)]),
            &open_dir(),
        );
        assert_eq!(failed(step), LoginFailure::MissingParameter);

        let mut keys = first_keys();
        keys[3].1 = "Bogus";
        let mut l = TargetLogin::new(LoginOffer::default());
        let step = l.on_pdu(&req(true, 1, 3, &keys), &open_dir());
        assert_eq!(failed(step), LoginFailure::SessionTypeUnsupported);
    }

    #[test]
    fn discovery_session_uses_discovery_chap() {
        let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
        let mut l = TargetLogin::new(LoginOffer::default());
        let (_, t, r) = complete(l.on_pdu(&req(true, 1, 3, &keys), &open_dir()));
        assert_eq!(r.session_type, SessionType::Discovery);
        assert_eq!(r.target_name, None);
        assert_eq!(t.get("TargetPortalGroupTag"), None);
        // Nothing negotiated: RFC defaults, plus our declared segment size.
        let want = SessionParams {
            target_max_recv_dsl: LoginOffer::default().max_recv_dsl,
            ..SessionParams::default()
        };
        assert_eq!(r.params, want);

        let dir = Dir {
            chap: None,
            discovery_chap: Some(secrets(false)),
        };
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &dir)),
            LoginFailure::AuthFailure
        );
    }

    #[test]
    fn duplicate_keys_fail() {
        let mut keys = first_keys();
        keys.push(("MaxBurstLength", "512"));
        keys.push(("MaxBurstLength", "1024"));
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &open_dir())),
            LoginFailure::InitiatorError
        );

        // Across requests: an operational key, or a changed identity key.
        let mut keys = first_keys();
        keys.push(("MaxBurstLength", "512"));
        let mut l = TargetLogin::new(LoginOffer::default());
        respond(l.on_pdu(&req(false, 1, 3, &keys), &open_dir()));
        let step = l.on_pdu(&req(true, 1, 3, &[("MaxBurstLength", "512")]), &open_dir());
        assert_eq!(failed(step), LoginFailure::InitiatorError);

        let mut l = TargetLogin::new(LoginOffer::default());
        respond(l.on_pdu(&req(false, 1, 3, &first_keys()), &open_dir()));
        let step = l.on_pdu(&req(true, 1, 3, &[("TargetName", "iqn.x:y")]), &open_dir());
        assert_eq!(failed(step), LoginFailure::InitiatorError);
    }

    #[test]
    fn garbage_text_fails_without_panic() {
        for data in [&b"\xff\xfe=\x01\0"[..], b"NoEqualsHere\0", b"=v\0"] {
            let mut p = req(true, 1, 3, &[]);
            p.data = data.to_vec();
            let mut l = TargetLogin::new(LoginOffer::default());
            assert_eq!(
                failed(l.on_pdu(&p, &open_dir())),
                LoginFailure::InitiatorError
            );
        }
    }

    #[test]
    fn header_violations() {
        let ok = {
            let mut k = first_keys();
            k.extend(op_keys());
            k
        };
        // Unsupported version.
        let mut p = req(true, 1, 3, &ok);
        p.bhs.0[2] = 2;
        p.bhs.0[3] = 1;
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&p, &open_dir())),
            LoginFailure::UnsupportedVersion
        );
        // T and C together; CSG 3; NSG backwards.
        for flags in [
            T_BIT | C_BIT | (1 << 2) | 3,
            3 << 2,
            T_BIT | (1 << 2) | 1,
            T_BIT | 2,
        ] {
            let mut p = req(true, 1, 3, &ok);
            p.bhs.set_flags(flags);
            let mut l = TargetLogin::new(LoginOffer::default());
            assert_eq!(
                failed(l.on_pdu(&p, &open_dir())),
                LoginFailure::InitiatorError,
                "{flags:#x}"
            );
        }
        // A non-login opcode.
        let mut p = req(true, 1, 3, &ok);
        p.bhs.0[0] = Opcode::TextRequest.to_u8();
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&p, &open_dir())),
            LoginFailure::InvalidDuringLogin
        );
        // ITT or ISID changed mid-login; stage going backwards.
        for change in 0..3 {
            let mut l = TargetLogin::new(LoginOffer::default());
            let mut keys = first_keys();
            keys.push(("AuthMethod", "None"));
            respond(l.on_pdu(&req(true, 0, 1, &keys), &open_dir()));
            let mut p = req(true, 1, 3, &op_keys());
            match change {
                0 => p.bhs.set_itt(ITT + 1),
                1 => p.bhs.set_isid([1, 2, 3, 4, 5, 6]),
                _ => p.bhs.set_flags(T_BIT | 1),
            }
            assert_eq!(
                failed(l.on_pdu(&p, &open_dir())),
                LoginFailure::InitiatorError
            );
        }
        // Security keys in the operational stage.
        let mut keys = ok.clone();
        keys.push(("AuthMethod", "None"));
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &open_dir())),
            LoginFailure::InitiatorError
        );
        // Target-only keys from the initiator.
        let mut keys = ok;
        keys.push(("TargetAddress", "10.0.0.1:3260,1"));
        let mut l = TargetLogin::new(LoginOffer::default());
        assert_eq!(
            failed(l.on_pdu(&req(true, 1, 3, &keys), &open_dir())),
            LoginFailure::InitiatorError
        );
    }

    #[test]
    fn continue_bit_joins_text() {
        let mut keys = first_keys();
        keys.extend(op_keys());
        let whole = req(true, 1, 3, &keys).data;
        let mut l = TargetLogin::new(LoginOffer::default());
        let chunks: Vec<&[u8]> = whole.chunks(40).collect();
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            let mut p = req(last, 1, 3, &[]);
            if !last {
                p.bhs.set_flags(C_BIT | (1 << 2));
            }
            p.data = c.to_vec();
            let step = l.on_pdu(&p, &open_dir());
            if last {
                let (p, t, r) = complete(step);
                assert_eq!(p.bhs.stat_sn(), FIRST_STAT_SN + i as u32);
                assert_eq!(t.get("TargetPortalGroupTag"), Some("7"));
                assert_eq!(r.params.initiator_max_recv_dsl, 262144);
            } else {
                let (p, t) = respond(step);
                assert!(t.is_empty());
                assert_eq!(p.bhs.flags(), 1 << 2);
            }
        }
    }

    #[test]
    fn digest_and_reject_answers_in_login() {
        let mut keys = first_keys();
        keys.extend([
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C"),
            ("MaxBurstLength", "lots"),
            ("X-com.example.thing", "1"),
        ]);
        let mut l = TargetLogin::new(LoginOffer::default());
        let (_, t, r) = complete(l.on_pdu(&req(true, 1, 3, &keys), &open_dir()));
        assert_eq!(t.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(t.get("DataDigest"), Some("CRC32C"));
        assert_eq!(t.get("MaxBurstLength"), Some("Reject"));
        assert_eq!(t.get("X-com.example.thing"), Some("NotUnderstood"));
        assert!(r.params.header_digest && r.params.data_digest);
        assert_eq!(
            r.params.max_burst_length,
            SessionParams::default().max_burst_length
        );
    }

    #[test]
    fn login_is_bounded() {
        let mut l = TargetLogin::new(LoginOffer::default());
        respond(l.on_pdu(&req(false, 1, 3, &first_keys()), &open_dir()));
        let mut last = None;
        for _ in 0..MAX_LOGIN_PDUS {
            match l.on_pdu(&req(false, 1, 3, &[]), &open_dir()) {
                LoginStep::Respond(_) => {}
                other => {
                    last = Some(failed(other));
                    break;
                }
            }
        }
        assert_eq!(last, Some(LoginFailure::InitiatorError));
    }

    proptest! {
        #[test]
        fn random_pdus_never_panic(
            pdus in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 48),
                 proptest::collection::vec(any::<u8>(), 0..300)),
                1..6),
            flip in any::<bool>(),
        ) {
            let dir = if flip { chap_dir(true) } else { open_dir() };
            let mut l = TargetLogin::new(LoginOffer::default());
            for (hdr, data) in pdus {
                let mut p = Pdu::new(Opcode::LoginRequest);
                p.bhs.0.copy_from_slice(&hdr);
                if flip {
                    // Keep it a login so the deeper paths get exercised.
                    p.bhs.0[0] = 0x43;
                    p.bhs.0[3] = 0;
                }
                p.data = data;
                let _ = l.on_pdu(&p, &dir);
            }
        }

        #[test]
        fn random_text_in_valid_login_never_panics(
            text in proptest::collection::vec(
                ("[A-Za-z_#-]{1,12}", "[ -~]{0,20}"), 0..12),
            csg in 0u8..2,
        ) {
            let mut keys: Vec<(&str, &str)> = first_keys();
            let owned: Vec<(String, String)> = text;
            keys.extend(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut l = TargetLogin::new(LoginOffer::default());
            let _ = l.on_pdu(&req(true, csg, 3, &keys), &chap_dir(false));
            let _ = l.on_pdu(&req(true, csg, 3, &keys), &open_dir());
        }
    }
}
