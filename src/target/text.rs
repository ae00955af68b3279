//! Text requests in full feature phase: SendTargets (discovery, and a
//! normal session asking about its own target). The exchange itself —
//! requests continued with the C bit, long answers split over several
//! responses — is `proto::discovery::TextResponder`'s; this file only says
//! which targets a session may see.

use super::session::Session;
use crate::proto::discovery;
use crate::proto::login::SessionType;
use crate::proto::pdu::Pdu;
use std::io;
use std::net::SocketAddr;

impl Session {
    pub(super) async fn on_text(&mut self, pdu: Pdu) -> io::Result<()> {
        let targets = self.visible_targets();
        let max = self.params.initiator_max_recv_dsl;
        let kind = self.kind;
        let own = self.target_name.clone();
        let reply = self.text.on_request(&pdu, max, |req| {
            // A normal session asking "SendTargets=All" learns only its
            // own target (RFC 7143 §13.2); "" means the same.
            let mut req = req.clone();
            if kind == SessionType::Normal {
                for (k, v) in req.0.iter_mut() {
                    if k == "SendTargets" && (v.is_empty() || v == "All") {
                        *v = own.clone().unwrap_or_default();
                    }
                }
            }
            discovery::answer_text(&req, &targets)
        });
        self.send(vec![reply]).await
    }

    /// Targets with the address this connection reached us on (a portal
    /// bound to 0.0.0.0 must not be announced as such): all of them in a
    /// discovery session, only its own in a normal one.
    fn visible_targets(&self) -> Vec<(String, Vec<String>)> {
        let tpgt = self.shared.registry.load().portal_group_tag.max(1);
        let portals: Vec<SocketAddr> = match self.local_addr {
            Some(a) => vec![a],
            None => self.shared.portals.clone(),
        };
        let addrs: Vec<String> = portals.iter().map(|a| format!("{a},{tpgt}")).collect();
        self.shared
            .registry
            .load()
            .targets
            .keys()
            .filter(|n| {
                self.kind == SessionType::Discovery || Some(*n) == self.target_name.as_ref()
            })
            .map(|n| (n.clone(), addrs.clone()))
            .collect()
    }
}
