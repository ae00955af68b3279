//! PDU framing, text keys (with the Text Request exchange and SendTargets)
//! and operational key negotiation.

use super::input::Input;
use crate::proto::chap;
use crate::proto::discovery::{self, TextResponder};
use crate::proto::login::LoginOffer;
use crate::proto::negotiation::{self, Negotiator};
use crate::proto::pdu::{self, BHS_LEN, Bhs, Framing, Opcode, Pdu, PduError};
use crate::proto::text::TextPairs;

/// Segment limits worth distinguishing: tiny, the login default, ours.
const SEGMENT_LIMITS: [u32; 4] = [512, 8192, 262_144, (1 << 24) - 1];

fn framing_of(b: u8) -> Framing {
    Framing {
        header_digest: b & 1 != 0,
        data_digest: b & 2 != 0,
        max_data_segment: SEGMENT_LIMITS[(b >> 4) as usize & 3],
    }
}

/// Byte 0 picks the framing; bit 2 picks the mode. Raw mode decodes the
/// rest as a byte stream of PDUs; built mode assembles one PDU from the
/// input, encodes it (valid digests), flips one byte and decodes, so the
/// digest checks are reached past the CRC.
pub fn pdu(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let framing = framing_of(mode);
    if mode & 4 == 0 {
        decode_stream(inp.rest(), &framing);
        return;
    }
    let mut bhs = Bhs::default();
    bhs.0.copy_from_slice(&pad48(inp.take(BHS_LEN)));
    let ahs_words = (inp.u8() % 8) as usize;
    let mut ahs = inp.take(ahs_words * 4).to_vec();
    ahs.truncate(ahs.len() / 4 * 4);
    let flip = inp.u16() as usize;
    let mut p = Pdu {
        bhs,
        ahs,
        data: inp.rest().to_vec(),
    };
    p.data.truncate(framing.max_data_segment as usize);
    let mut wire = pdu::encode(&p, &framing);
    if flip != 0 && !wire.is_empty() {
        let at = flip % wire.len();
        wire[at] ^= (flip >> 8) as u8 | 1;
    }
    decode_stream(&wire, &framing);
}

fn pad48(b: &[u8]) -> [u8; BHS_LEN] {
    let mut out = [0u8; BHS_LEN];
    out[..b.len()].copy_from_slice(b);
    out
}

/// Decode PDUs off the front of `buf` until it runs out or framing is lost;
/// every PDU that decodes must survive encode → decode unchanged.
fn decode_stream(mut buf: &[u8], framing: &Framing) {
    while !buf.is_empty() {
        match pdu::decode(buf, framing) {
            Ok(Some((p, used))) => {
                assert!(used >= BHS_LEN && used <= buf.len());
                round_trip(&p, used, framing);
                buf = &buf[used..];
            }
            Ok(None) => return,
            Err(PduError::DataDigest) => {
                // Framing survives a data digest error: skip this PDU.
                let bhs = Bhs(pad48(&buf[..BHS_LEN]));
                let used = BHS_LEN + pdu::tail_len(&bhs, framing).expect("length checked once");
                buf = &buf[used..];
            }
            Err(e) => {
                assert!(e.is_fatal());
                return;
            }
        }
    }
}

fn round_trip(p: &Pdu, used: usize, framing: &Framing) {
    let _ = p.full_cdb();
    let _ = (
        p.opcode(),
        p.bhs.lun(),
        p.bhs.isid(),
        format!("{:?}", p.bhs),
    );
    assert_eq!(
        Opcode::from_u8(p.bhs.raw_opcode()).to_u8(),
        p.bhs.raw_opcode()
    );
    let wire = pdu::encode(p, framing);
    assert_eq!(wire.len(), used, "encoded length differs from decoded");
    let (back, n) = pdu::decode(&wire, framing)
        .expect("re-encoded PDU decodes")
        .expect("re-encoded PDU is complete");
    assert_eq!(n, used);
    assert_eq!(&back, p, "PDU changed in a round trip");
}

fn targets() -> Vec<(String, Vec<String>)> {
    vec![
        (
            "iqn.2026-11.dev.gentgt:fuzz".into(),
            vec!["127.0.0.1:3260,1".into(), "[::1]:3260,1".into()],
        ),
        ("iqn.2026-11.dev.gentgt:other".into(), vec![]),
    ]
}

/// Text parsing round trip, the value decoders, SendTargets answers, and
/// the Text Request exchange (C bit, TTT continuation) fed a sequence of
/// requests. Byte 0 picks the mode.
pub fn text_keys(data: &[u8]) {
    let mut inp = Input::new(data);
    if inp.u8() & 1 == 0 {
        parse_text(inp.rest());
        return;
    }
    let max_segment = inp.u16() as u32;
    let mut responder = TextResponder::new();
    let mut last_ttt = discovery::RESERVED_TTT;
    while !inp.is_empty() {
        let flags = inp.u8();
        let mut req = Pdu::new(Opcode::TextRequest);
        req.bhs.set_flags(flags & 0xc0);
        req.bhs.set_itt(u32::from(inp.u8() & 3));
        // Echo the last TTT, reset, or send garbage.
        req.bhs.set_ttt(match flags & 3 {
            0 => last_ttt,
            1 => discovery::RESERVED_TTT,
            _ => inp.u32(),
        });
        req.data = inp.chunk().to_vec();
        let t = targets();
        let resp = responder.on_request(&req, max_segment, |p| discovery::answer_text(p, &t));
        assert_eq!(resp.opcode(), Opcode::TextResponse);
        assert_eq!(resp.bhs.itt(), req.bhs.itt());
        assert!(resp.data.len() <= (max_segment as usize).max(512));
        assert_eq!(resp.bhs.data_segment_len() as usize, resp.data.len());
        last_ttt = resp.bhs.ttt();
    }
}

fn parse_text(data: &[u8]) {
    let Ok(pairs) = TextPairs::parse(data) else {
        return;
    };
    let again = TextPairs::parse(&pairs.encode()).expect("encoded text parses");
    assert_eq!(again, pairs, "text changed in a round trip");
    for (k, v) in pairs.iter() {
        let _ = (negotiation::lookup(k), negotiation::parse_number(v));
        if let Some(b) = chap::decode_binary(v) {
            assert!(b.len() <= v.len());
        }
        let _ = (chap::parse_id(v), chap::offers_md5(v));
    }
    let answer = discovery::answer_text(&pairs, &targets());
    assert!(TextPairs::parse(&answer.encode()).is_ok());
}

/// Operational negotiation over several rounds (each a length-prefixed
/// text chunk), leading or not, with the offer varied by the first byte.
/// The parameters in force must stay inside the RFC ranges and our offer.
pub fn negotiation(data: &[u8]) {
    let mut inp = Input::new(data);
    let b = inp.u8();
    let offer = LoginOffer {
        immediate_data: b & 1 != 0,
        initial_r2t: b & 2 != 0,
        allow_header_digest: b & 4 != 0,
        allow_data_digest: b & 8 != 0,
        ..LoginOffer::default()
    };
    let mut neg = Negotiator::new(offer.clone(), b & 0x10 == 0);
    while !inp.is_empty() {
        let Ok(pairs) = TextPairs::parse(inp.chunk()) else {
            continue;
        };
        let Ok(answer) = neg.negotiate(&pairs.0) else {
            return; // a negotiation error fails the login: done
        };
        for (k, _) in answer.iter() {
            assert!(pairs.get(k).is_some(), "answered {k}, which was not asked");
        }
        if inp.u8() & 1 == 1 {
            let _ = neg.declare_mrdsl();
        }
        check_params(&neg, &offer);
    }
}

fn check_params(neg: &Negotiator, offer: &LoginOffer) {
    let p = neg.params();
    assert!(p.first_burst_length <= p.max_burst_length);
    assert!(p.max_burst_length <= offer.max_burst_length.max(262_144));
    assert!((512..1 << 24).contains(&p.initiator_max_recv_dsl));
    assert!(p.max_connections >= 1 && p.max_outstanding_r2t >= 1);
    assert!(!p.header_digest || offer.allow_header_digest);
    assert!(!p.data_digest || offer.allow_data_digest);
}
