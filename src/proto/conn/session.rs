//! Connection-wide rules: NOP-Out answers and our keep-alive NOP-In with
//! its timeout, Text (SendTargets), Logout once commands have finished,
//! and the logout grace at shutdown.

use super::{CloseReason, Connection, Env};
use crate::proto::dataout::NO_TTT;
use crate::proto::discovery;
use crate::proto::pdu::Pdu;
use crate::proto::response;
use std::time::{Duration, Instant};

/// How often R2Ts held back by the target-wide write budget look again.
pub(super) const BUDGET_RETRY: Duration = Duration::from_millis(2);

impl Connection {
    pub(super) fn on_nop_out(&mut self, pdu: Pdu, env: &dyn Env) {
        if pdu.bhs.itt() == NO_TTT {
            // The answer to our keep-alive (or a ping wanting no answer).
            if self.nop.is_some_and(|(ttt, _)| ttt == pdu.bhs.ttt()) {
                self.nop = None;
            }
            return;
        }
        let bhs = pdu.bhs.clone();
        self.admit(&bhs, super::Delivery::Nop(pdu), env);
    }

    pub(super) fn answer_ping(&mut self, pdu: Pdu) {
        let mut data = pdu.data;
        data.truncate(self.cfg.params.initiator_max_recv_dsl as usize);
        let reply = response::nop_in(pdu.bhs.itt(), NO_TTT, pdu.bhs.lun(), data);
        self.send(vec![reply]);
    }

    pub(super) fn on_text(&mut self, pdu: Pdu, env: &dyn Env) {
        let kind = self.cfg.kind;
        let own = self.cfg.target_name.clone();
        let targets = env.targets(kind, own.as_deref());
        let max = self.cfg.params.initiator_max_recv_dsl;
        let reply = self.text.on_request(&pdu, max, |req| {
            discovery::answer_session_text(req, kind, own.as_deref(), &targets)
        });
        self.send(vec![reply]);
    }

    /// Answer a Logout once no command is executing (their responses go
    /// out first), then end the session.
    pub(super) fn try_logout(&mut self) {
        let Some(req) = &self.logout else {
            return;
        };
        // A call already reported hung is not waited for: the session's
        // end abandons it (bounded by the abort timeout).
        if self.tasks.values().any(|t| t.is_executing() && !t.hung) {
            return;
        }
        let code = match req.bhs.flags() & 0x7f {
            0 => 0,
            1 if req.bhs.cid() == self.cfg.cid => 0,
            1 => 1, // CID not found
            _ => 2, // connection recovery is not supported (ERL 0)
        };
        let resp = response::logout_response(req.bhs.itt(), code);
        self.logout = None;
        self.send(vec![resp]);
        if code == 0 {
            self.close(CloseReason::Logout);
        }
    }

    /// The earliest time `on_timeout` has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut t = match self.nop {
            Some((_, d)) => d,
            None => self.last_rx + self.cfg.nop_interval,
        };
        if let Some(c) = self.closing {
            t = t.min(c);
        }
        if !self.deferred_r2ts.is_empty() {
            t = t.min(self.budget_tried + BUDGET_RETRY);
        }
        if let Some(g) = self.tmf_deadline() {
            t = t.min(g);
        }
        t
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        self.now = now;
        self.give_up_victims(now);
        if !self.deferred_r2ts.is_empty() && now >= self.budget_tried + BUDGET_RETRY {
            self.retry_budget(now);
        }
        if self.closing.is_some_and(|d| now >= d) {
            return self.close(CloseReason::LogoutGrace);
        }
        if let Some((_, deadline)) = self.nop {
            if now >= deadline {
                self.close(CloseReason::NopTimeout);
            }
            return;
        }
        if now >= self.last_rx + self.cfg.nop_interval {
            let ttt = self.next_ttt();
            self.nop = Some((ttt, now + self.cfg.nop_timeout));
            self.send(vec![response::nop_in(NO_TTT, ttt, 0, Vec::new())]);
        }
    }

    /// Shutdown (or a reload that removed the target) asks the initiator
    /// to log out within `grace`; asking again changes nothing.
    pub fn on_shutdown(&mut self, now: Instant, grace: Duration) {
        if self.closed.is_some() || self.closing.is_some() {
            return;
        }
        self.closing = Some(now + grace);
        let secs = grace.as_secs().max(1) as u16;
        self.send(vec![response::async_logout_request(secs)]);
    }

    /// A newer login of the same initiator port replaced this session.
    pub fn on_reinstated(&mut self) {
        self.close(CloseReason::Reinstated);
    }
}
