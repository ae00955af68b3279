//! The login state machine: several Login Request PDUs split from the
//! input, against a directory with open, CHAP, mutual-CHAP and ACL'd
//! targets (plus discovery CHAP), so every stage and CHAP path is
//! reachable. A fuzzer cannot guess an MD5 response to a random challenge,
//! so the value `CHAP_R=%` is replaced with a real answer computed from
//! the target's last CHAP_I/CHAP_C (with the right or a wrong secret).

use super::input::Input;
use crate::proto::chap::InitiatorChap;
use crate::proto::login::{
    ChapSecrets, LoginDirectory, LoginOffer, LoginStep, TargetLogin, TargetLookup,
};
use crate::proto::pdu::{BHS_LEN, Bhs, Opcode, Pdu};
use crate::proto::text::TextPairs;

pub const OPEN: &str = "iqn.2026-11.dev.gentgt:open";
pub const CHAP: &str = "iqn.2026-11.dev.gentgt:chap";
pub const MUTUAL: &str = "iqn.2026-11.dev.gentgt:mutual";
/// Only `INITIATOR` may log in here.
pub const ACL: &str = "iqn.2026-11.dev.gentgt:acl";
pub const INITIATOR: &str = "iqn.2026-11.dev.gentgt:fuzzer";
pub const USER: &str = "fuzzuser";
pub const SECRET: &str = "fuzz-secret-12";
pub const TARGET_USER: &str = "fuzztarget";
pub const TARGET_SECRET: &str = "target-secret-12";
pub const ISID: [u8; 6] = [0x80, 0, 0, 0, 0x12, 0x34];

struct Dir {
    discovery_chap: bool,
}

fn secrets(mutual: bool) -> ChapSecrets {
    ChapSecrets {
        user: USER.into(),
        secret: SECRET.into(),
        mutual: mutual.then(|| (TARGET_USER.into(), TARGET_SECRET.into())),
    }
}

impl LoginDirectory for Dir {
    fn lookup_target(&self, target_name: &str, initiator_name: &str) -> TargetLookup {
        let chap = match target_name {
            OPEN => None,
            CHAP => Some(secrets(false)),
            MUTUAL => Some(secrets(true)),
            ACL if initiator_name == INITIATOR => None,
            ACL => return TargetLookup::Forbidden,
            _ => return TargetLookup::NotFound,
        };
        TargetLookup::Allowed {
            chap,
            alias: Some("fuzz".into()),
            portal_group_tag: 1,
        }
    }

    fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.discovery_chap.then(|| secrets(false))
    }
}

/// Byte 0: bit 0 discovery CHAP, bit 1 right secret, bit 2 mutual
/// initiator, bits 3-4 the offer. Then PDUs until the input or the login
/// ends.
pub fn login(data: &[u8]) {
    let mut inp = Input::new(data);
    let b = inp.u8();
    let dir = Dir {
        discovery_chap: b & 1 != 0,
    };
    let secret = if b & 2 != 0 { SECRET } else { "wrong-secret" };
    let mutual = (b & 4 != 0).then(|| (TARGET_USER.to_string(), TARGET_SECRET.to_string()));
    let mut ini = InitiatorChap::new(USER, secret, mutual);
    let offer = LoginOffer {
        immediate_data: b & 8 != 0,
        allow_header_digest: b & 16 != 0,
        allow_data_digest: b & 16 != 0,
        ..LoginOffer::default()
    };
    let mut login = TargetLogin::new(offer);
    let mut last = TextPairs::new();
    let mut first_itt = None;
    while !inp.is_empty() {
        let req = next_request(&mut inp, &mut ini, &last);
        let itt = *first_itt.get_or_insert(req.bhs.itt());
        match login.on_pdu(&req, &dir) {
            LoginStep::Respond(p) => {
                check_response(&p, itt);
                assert_eq!(status(&p), 0);
                last = TextPairs::parse(&p.data).expect("our response text parses");
            }
            LoginStep::Complete(p, result) => {
                check_response(&p, itt);
                assert_eq!(status(&p), 0);
                assert!(p.bhs.final_bit(), "final response without T bit");
                let params = &result.params;
                assert!(params.first_burst_length <= params.max_burst_length);
                assert!(!result.initiator_name.is_empty());
                return;
            }
            LoginStep::Fail(p, failure) => {
                assert_eq!(p.opcode(), Opcode::LoginResponse);
                assert_ne!(status(&p) >> 8, 0, "failure with a success status");
                assert_eq!(status(&p), failure.status(), "PDU and failure disagree");
                // The machine is finished: anything more fails too.
                let again = login.on_pdu(&req, &dir);
                assert!(matches!(again, LoginStep::Fail(..)));
                return;
            }
        }
    }
}

fn status(p: &Pdu) -> u16 {
    u16::from_be_bytes([p.bhs.0[36], p.bhs.0[37]])
}

fn check_response(p: &Pdu, itt: u32) {
    assert_eq!(p.opcode(), Opcode::LoginResponse);
    assert_eq!(p.bhs.itt(), itt, "response does not echo the ITT");
    assert_eq!(p.bhs.data_segment_len() as usize, p.data.len());
}

/// One request: kind byte, then either a raw header (any opcode) or a
/// login request with input-chosen flags and a text chunk.
fn next_request(inp: &mut Input, ini: &mut InitiatorChap, last: &TextPairs) -> Pdu {
    let kind = inp.u8();
    if kind & 0xe0 == 0xe0 {
        let mut bhs = Bhs::default();
        let h = inp.take(BHS_LEN);
        bhs.0[..h.len()].copy_from_slice(h);
        let data = inp.chunk().to_vec();
        bhs.set_data_segment_len(data.len() as u32);
        return Pdu {
            bhs,
            ahs: Vec::new(),
            data,
        };
    }
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs.set_immediate(kind & 0x80 == 0);
    p.bhs.set_flags(inp.u8());
    if kind & 0x40 != 0 {
        p.bhs.0[2] = inp.u8(); // version max
        p.bhs.0[3] = inp.u8(); // version min
    }
    p.bhs.set_isid(ISID);
    if kind & 0x10 != 0 {
        p.bhs
            .set_isid([inp.u8(), inp.u8(), 0, 0, inp.u8(), inp.u8()]);
    }
    if kind & 0x08 != 0 {
        p.bhs.set_tsih(inp.u16());
    }
    if kind & 0x04 != 0 {
        p.bhs.set_cid(inp.u16());
    }
    p.bhs
        .set_itt(if kind & 0x02 != 0 { inp.u32() } else { 0x1000 });
    p.bhs
        .set_cmd_sn(if kind & 0x01 != 0 { inp.u32() } else { 1 });
    p.data = substitute_chap(inp.chunk(), ini, last);
    p.bhs.set_data_segment_len(p.data.len() as u32);
    p
}

/// Replace `CHAP_R=%` with the pairs a real initiator would send.
fn substitute_chap(text: &[u8], ini: &mut InitiatorChap, last: &TextPairs) -> Vec<u8> {
    let Ok(pairs) = TextPairs::parse(text) else {
        return text.to_vec();
    };
    if pairs.get("CHAP_R") != Some("%") {
        return text.to_vec();
    }
    let Ok(answer) = ini.respond(last) else {
        return text.to_vec();
    };
    let mut out = TextPairs::new();
    for (k, v) in pairs.iter() {
        if k == "CHAP_R" {
            out.0.extend(answer.0.iter().cloned());
        } else if k != "CHAP_N" {
            out.push(k, v);
        }
    }
    out.encode()
}
