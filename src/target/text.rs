//! Text requests in full feature phase: SendTargets (discovery, and a
//! normal session asking about its own target), with long answers split
//! over several Text Responses (RFC 7143 §11.10, §11.11).

use super::session::Session;
use crate::proto::dataout::NO_TTT;
use crate::proto::discovery;
use crate::proto::login::SessionType;
use crate::proto::pdu::Pdu;
use crate::proto::response::{self, reject};
use crate::proto::text::{MAX_TEXT_BYTES, TextPairs};
use std::io;
use std::net::SocketAddr;

/// Continuation of a long text exchange.
#[derive(Default)]
pub(super) struct TextState {
    /// Request bytes gathered from PDUs with the C bit.
    request: Vec<u8>,
    /// Answer bytes not yet sent, and the TTT the initiator continues with.
    answer: Vec<u8>,
    ttt: u32,
}

impl Session {
    pub(super) async fn on_text(&mut self, pdu: Pdu) -> io::Result<()> {
        let itt = pdu.bhs.itt();
        let ttt = pdu.bhs.ttt();
        if ttt != NO_TTT && ttt == self.text.ttt && !self.text.answer.is_empty() {
            // The initiator asks for the rest of a long answer.
            return self.send_text_chunk(itt).await;
        }
        if self.text.request.len() + pdu.data.len() > MAX_TEXT_BYTES {
            self.text = TextState::default();
            return self.reject(reject::PROTOCOL_ERROR, &pdu.bhs).await;
        }
        self.text.request.extend_from_slice(&pdu.data);
        if pdu.bhs.flags() & 0x40 != 0 {
            // C bit: more request text follows; acknowledge with an empty
            // response carrying a TTT to continue under.
            self.text.ttt = self.next_ttt();
            let t = self.text.ttt;
            return self
                .send(vec![response::text_response(itt, t, false, Vec::new())])
                .await;
        }
        let request = std::mem::take(&mut self.text.request);
        let pairs = match TextPairs::parse(&request) {
            Ok(p) => p,
            Err(_) => return self.reject(reject::PROTOCOL_ERROR, &pdu.bhs).await,
        };
        self.text.answer = self.answer_text(&pairs).encode();
        self.send_text_chunk(itt).await
    }

    fn answer_text(&self, pairs: &TextPairs) -> TextPairs {
        let mut out = TextPairs::new();
        for (k, v) in pairs.iter() {
            if k == "SendTargets" {
                let targets = self.visible_targets(v);
                for kv in discovery::send_targets(v, &targets).0 {
                    out.0.push(kv);
                }
            } else {
                out.push(k, "NotUnderstood");
            }
        }
        out
    }

    /// Targets this session may learn about: all of them in a discovery
    /// session, only its own in a normal one (RFC 7143 §13.2 / Appendix C).
    fn visible_targets(&self, request: &str) -> Vec<(String, Vec<String>)> {
        let tpgt = self.shared.registry.portal_group_tag.max(1);
        // Advertise the address this connection reached us on; a portal bound
        // to 0.0.0.0 must not be announced as such.
        let portals: Vec<SocketAddr> = match self.local_addr {
            Some(a) => vec![a],
            None => self.shared.portals.clone(),
        };
        let addrs: Vec<String> = portals.iter().map(|a| format!("{a},{tpgt}")).collect();
        let all = self.shared.registry.targets.keys();
        match self.kind {
            SessionType::Discovery if request == "All" => {
                all.map(|n| (n.clone(), addrs.clone())).collect()
            }
            _ => {
                let want = if request.is_empty() || request == "All" {
                    self.target_name.clone().unwrap_or_default()
                } else {
                    request.to_string()
                };
                all.filter(|n| **n == want)
                    .filter(|n| {
                        self.kind == SessionType::Discovery || Some(*n) == self.target_name.as_ref()
                    })
                    .map(|n| (n.clone(), addrs.clone()))
                    .collect()
            }
        }
    }

    async fn send_text_chunk(&mut self, itt: u32) -> io::Result<()> {
        let max = self.params.initiator_max_recv_dsl.max(512) as usize;
        let n = self.text.answer.len().min(max);
        let chunk: Vec<u8> = self.text.answer.drain(..n).collect();
        let more = !self.text.answer.is_empty();
        let ttt = if more {
            self.text.ttt = self.next_ttt();
            self.text.ttt
        } else {
            self.text.ttt = NO_TTT;
            NO_TTT
        };
        self.send(vec![response::text_response(itt, ttt, more, chunk)])
            .await
    }
}
