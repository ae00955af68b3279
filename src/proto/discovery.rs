//! SendTargets (RFC 7143 §13.12, Appendix C) and the Text Request/Response
//! exchange that carries it (§11.10, §11.11), including splitting a long
//! answer over several Text Responses with the C bit and a Target Transfer
//! Tag the initiator echoes to fetch the next part. No I/O.

use super::login::SessionType;
use super::pdu::{Opcode, Pdu};
use super::text::{MAX_TEXT_BYTES, TextPairs};

/// The reserved Target Transfer Tag: "no continuation".
pub const RESERVED_TTT: u32 = 0xffff_ffff;
use super::pdu::{C_BIT, F_BIT};
/// Smallest segment we split into, whatever the initiator declared (the
/// RFC minimum for MaxRecvDataSegmentLength).
const MIN_SEGMENT: usize = 512;

/// Answer `SendTargets=<request>`. `targets` lists (name, addresses) with
/// addresses as "ip:port,tpgt". "All" lists every target; an iSCSI name
/// lists that target (nothing if unknown); "" lists `targets` as given (the
/// caller passes just the session's own target). Anything else ("Alle")
/// selects nothing, like an unknown name: an empty answer. Not
/// "SendTargets=Reject": clients accept only TargetName/TargetAddress in a
/// SendTargets answer, and libiscsi and open-iscsi drop the connection
/// (and with it the session's I/O) over any other key.
pub fn send_targets(request: &str, targets: &[(String, Vec<String>)]) -> TextPairs {
    let mut out = TextPairs::new();
    let selected: Vec<&(String, Vec<String>)> = match request {
        "All" | "" => targets.iter().collect(),
        name if is_iscsi_name(name) => targets.iter().filter(|(n, _)| n == name).collect(),
        _ => Vec::new(),
    };
    for (name, addrs) in selected {
        out.push("TargetName", name.clone());
        for a in addrs {
            out.push("TargetAddress", a.clone());
        }
    }
    out
}

/// Answer a full-feature-phase Text Request: SendTargets is served, every
/// other key is refused (we do not renegotiate after login).
pub fn answer_text(request: &TextPairs, targets: &[(String, Vec<String>)]) -> TextPairs {
    let mut out = TextPairs::new();
    for (k, v) in request.iter() {
        if k == "SendTargets" {
            out.0.extend(send_targets(v, targets).0);
        } else if super::negotiation::lookup(k).is_some() {
            out.push(k, "Reject");
        } else {
            out.push(k, "NotUnderstood");
        }
    }
    out
}

/// `answer_text` for a session of `kind` whose own target is `own`: a
/// normal session asking "SendTargets=All" (or "") learns only its own
/// target (RFC 7143 §13.2).
pub fn answer_session_text(
    request: &TextPairs,
    kind: SessionType,
    own: Option<&str>,
    targets: &[(String, Vec<String>)],
) -> TextPairs {
    let mut req = request.clone();
    if kind == SessionType::Normal {
        for (k, v) in req.0.iter_mut() {
            if k == "SendTargets" && (v.is_empty() || v == "All") {
                *v = own.unwrap_or_default().to_string();
            }
        }
    }
    answer_text(&req, targets)
}

/// iSCSI names carry a type prefix (RFC 7143 §4.2.7.3).
fn is_iscsi_name(s: &str) -> bool {
    ["iqn.", "eui.", "naa."].iter().any(|p| s.starts_with(p))
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// The initiator is sending a request in several PDUs (C bit).
    Receiving { itt: u32, ttt: u32, text: Vec<u8> },
    /// We are sending an answer in several PDUs; `rest` is still to go.
    Sending { itt: u32, ttt: u32, rest: Vec<u8> },
}

/// One connection's Text exchange state.
#[derive(Debug, Default)]
pub struct TextResponder {
    state: State,
    last_ttt: u32,
}

impl TextResponder {
    pub fn new() -> TextResponder {
        TextResponder::default()
    }

    /// Handle one Text Request. `answer` computes the reply to a complete
    /// request; `max_segment` is the initiator's MaxRecvDataSegmentLength.
    /// The returned Text Response lacks StatSN/ExpCmdSN/MaxCmdSN, which the
    /// caller fills.
    pub fn on_request(
        &mut self,
        req: &Pdu,
        max_segment: u32,
        answer: impl FnOnce(&TextPairs) -> TextPairs,
    ) -> Pdu {
        let itt = req.bhs.itt();
        let ttt = req.bhs.ttt();
        let max = (max_segment as usize).max(MIN_SEGMENT);
        let mut text = match std::mem::take(&mut self.state) {
            // A fresh request (TTT reserved) resets any exchange in flight.
            _ if ttt == RESERVED_TTT => Vec::new(),
            State::Receiving {
                itt: i,
                ttt: t,
                text,
            } if i == itt && t == ttt => text,
            State::Sending {
                itt: i,
                ttt: t,
                rest,
            } if i == itt && t == ttt => {
                return self.send(itt, rest, max);
            }
            // A continuation of nothing we know: end the exchange.
            _ => return response(itt, F_BIT, RESERVED_TTT, Vec::new()),
        };
        text.extend_from_slice(&req.data);
        if text.len() > MAX_TEXT_BYTES {
            return response(itt, F_BIT, RESERVED_TTT, Vec::new());
        }
        if req.bhs.flags() & C_BIT != 0 {
            let ttt = self.new_ttt();
            self.state = State::Receiving { itt, ttt, text };
            return response(itt, 0, ttt, Vec::new());
        }
        let reply = match TextPairs::parse(&text) {
            Ok(pairs) => answer(&pairs).encode(),
            Err(_) => Vec::new(),
        };
        self.send(itt, reply, max)
    }

    /// Send the next at most `max` bytes of `data`, keeping the rest.
    fn send(&mut self, itt: u32, mut data: Vec<u8>, max: usize) -> Pdu {
        if data.len() <= max {
            return response(itt, F_BIT, RESERVED_TTT, data);
        }
        let rest = data.split_off(max);
        let ttt = self.new_ttt();
        self.state = State::Sending { itt, ttt, rest };
        response(itt, C_BIT, ttt, data)
    }

    fn new_ttt(&mut self) -> u32 {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == RESERVED_TTT {
            self.last_ttt = 1;
        }
        self.last_ttt
    }
}

fn response(itt: u32, flags: u8, ttt: u32, data: Vec<u8>) -> Pdu {
    let mut p = Pdu::new(Opcode::TextResponse);
    p.bhs.set_flags(flags);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p.bhs.set_data_segment_len(data.len() as u32);
    p.data = data;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<(String, Vec<String>)> {
        vec![
            (
                "iqn.2026-11.dev.gentgt:a".into(),
                vec!["10.0.0.1:3260,1".into(), "[::1]:3260,1".into()],
            ),
            (
                "iqn.2026-11.dev.gentgt:b".into(),
                vec!["10.0.0.1:3260,1".into()],
            ),
        ]
    }

    #[test]
    fn send_targets_selection() {
        let t = targets();
        let all = send_targets("All", &t);
        assert_eq!(all.0.len(), 5);
        assert_eq!(all.0[0], ("TargetName".into(), t[0].0.clone()));
        assert_eq!(all.0[2].1, "[::1]:3260,1");
        let one = send_targets("iqn.2026-11.dev.gentgt:b", &t);
        assert_eq!(one.get("TargetName"), Some("iqn.2026-11.dev.gentgt:b"));
        assert_eq!(one.0.len(), 2);
        assert!(send_targets("iqn.2026-11.dev.gentgt:zzz", &t).is_empty());
        assert_eq!(send_targets("", &t[..1]).0.len(), 3);
        for bad in ["Alle", "A", "aLL"] {
            assert!(send_targets(bad, &t).is_empty(), "{bad}");
        }
    }

    #[test]
    fn answer_text_refuses_other_keys() {
        // The keys libiscsi's sendtargets tests probe with.
        let req = TextPairs::parse(b"SendTargetsPlease=All\0sENDtARGETS=aLL\0MaxBurstLength=512\0")
            .unwrap();
        let out = answer_text(&req, &targets());
        assert_eq!(out.get("SendTargetsPlease"), Some("NotUnderstood"));
        assert_eq!(out.get("sENDtARGETS"), Some("NotUnderstood"));
        assert_eq!(out.get("MaxBurstLength"), Some("Reject"));
    }

    fn text_req(itt: u32, ttt: u32, flags: u8, data: &[u8]) -> Pdu {
        let mut p = Pdu::new(Opcode::TextRequest);
        p.bhs.set_flags(flags);
        p.bhs.set_itt(itt);
        p.bhs.set_ttt(ttt);
        p.data = data.to_vec();
        p
    }

    #[test]
    fn long_answer_is_split_and_continued() {
        let many: Vec<(String, Vec<String>)> = (0..40)
            .map(|i| {
                (
                    format!("iqn.2026-11.dev.gentgt:disk{i:03}"),
                    vec![format!("10.0.0.{i}:3260,1")],
                )
            })
            .collect();
        let want = send_targets("All", &many).encode();
        assert!(want.len() > 2 * 512);
        let mut r = TextResponder::new();
        let mut got = Vec::new();
        let mut p = r.on_request(
            &text_req(7, RESERVED_TTT, F_BIT, b"SendTargets=All\0"),
            512,
            |q| answer_text(q, &many),
        );
        let mut rounds = 0;
        while p.bhs.flags() & C_BIT != 0 {
            assert_eq!(p.bhs.flags() & F_BIT, 0);
            assert!(p.data.len() <= 512);
            assert_ne!(p.bhs.ttt(), RESERVED_TTT);
            got.extend_from_slice(&p.data);
            let next = text_req(7, p.bhs.ttt(), F_BIT, b"");
            p = r.on_request(&next, 512, |_| panic!("no new answer mid-exchange"));
            rounds += 1;
            assert!(rounds < 100);
        }
        assert_eq!(p.bhs.flags(), F_BIT);
        assert_eq!(p.bhs.ttt(), RESERVED_TTT);
        assert_eq!(p.bhs.itt(), 7);
        got.extend_from_slice(&p.data);
        assert_eq!(got, want);
        // A stale continuation ends quietly.
        let stale = r.on_request(&text_req(7, 1, F_BIT, b""), 512, |_| TextPairs::new());
        assert_eq!((stale.bhs.flags(), stale.data.len()), (F_BIT, 0));
    }

    #[test]
    fn continued_request_is_joined() {
        let mut r = TextResponder::new();
        let first = r.on_request(&text_req(3, RESERVED_TTT, C_BIT, b"SendTar"), 8192, |_| {
            panic!("request not complete yet")
        });
        assert_eq!(first.bhs.flags(), 0);
        assert!(first.data.is_empty());
        let t = targets();
        let last = r.on_request(
            &text_req(3, first.bhs.ttt(), F_BIT, b"gets=All\0"),
            8192,
            |q| answer_text(q, &t),
        );
        assert_eq!(last.bhs.flags(), F_BIT);
        assert_eq!(
            TextPairs::parse(&last.data).unwrap(),
            send_targets("All", &t)
        );
    }
}
