//! Task management (RFC 7143 §11.5, SAM-5 §7). Aborted commands get no
//! response; commands the device already executes cannot be stopped, so
//! the TMF response waits until they have finished — once it is sent, no
//! aborted command can still change the medium.

use super::task::State;
use super::{AbortScope, CloseReason, Connection, Env, Event, Output};
use crate::proto::cmdsn::sn_lt;
use crate::proto::pdu::Pdu;
use crate::proto::response::{self, tmf_response as code};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Task management functions (RFC 7143 §11.5.1).
pub(super) mod function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LUN_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// How often task management asks again for victims the driver could
/// not abandon.
const GIVE_UP_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(super) struct PendingTmf {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
    /// When its executing victims are given up (`Output::Abandon`).
    give_up: Instant,
}

impl PendingTmf {
    /// The instant its victims are abandoned, while it still waits.
    fn deadline(&self) -> Option<Instant> {
        (!self.waiting.is_empty()).then_some(self.give_up)
    }
}

/// Which held commands a function finishes in the device, if any.
fn held_scope(f: u8, lun: u64, ref_task: u32) -> Option<AbortScope> {
    use function::*;
    let (lun, tag) = match f {
        ABORT_TASK => (Some(lun), Some(u64::from(ref_task))),
        ABORT_TASK_SET | CLEAR_TASK_SET | LUN_RESET => (Some(lun), None),
        TARGET_WARM_RESET | TARGET_COLD_RESET => (None, None),
        _ => return None,
    };
    Some(AbortScope { lun, tag })
}

impl Connection {
    pub(super) fn on_tmf(&mut self, pdu: Pdu, env: &dyn Env) {
        use function::*;
        let f = pdu.bhs.flags() & 0x7f;
        let lun = crate::scsi::lun::decode_lun(pdu.bhs.0[8..16].try_into().expect("8 bytes"));
        // A LUN not mapped for this initiator does not exist for it.
        let lun_exists = self.cfg.scsi && env.lun_exists(lun);
        if self.cfg.scsi
            && let Some(scope) = held_scope(f, lun, pdu.bhs.ref_task_tag())
        {
            // Commands held by a CBT write lock are finished as aborted
            // (their results come through `on_done` like any other).
            self.out.push_back(Output::Abort(scope));
        }
        let (resp, victims) = match f {
            ABORT_TASK => self.abort_one(&pdu, lun),
            ABORT_TASK_SET | CLEAR_TASK_SET if lun_exists => {
                (code::FUNCTION_COMPLETE, self.abort_lun(lun))
            }
            LUN_RESET if lun_exists => {
                let v = self.abort_lun(lun);
                self.out.push_back(Output::LunReset(lun));
                (code::FUNCTION_COMPLETE, v)
            }
            ABORT_TASK_SET | CLEAR_TASK_SET | LUN_RESET => {
                (code::LUN_DOES_NOT_EXIST, HashSet::new())
            }
            TARGET_WARM_RESET | TARGET_COLD_RESET => {
                let v = self.abort_where(|_, _| true);
                if self.cfg.scsi {
                    self.out.push_back(Output::TargetReset);
                }
                (code::FUNCTION_COMPLETE, v)
            }
            TASK_REASSIGN => (code::REASSIGNMENT_NOT_SUPPORTED, HashSet::new()),
            _ => (code::NOT_SUPPORTED, HashSet::new()),
        };
        self.events.push_back(Event::Tmf {
            function: f,
            response: resp,
        });
        self.pending_tmfs.push(PendingTmf {
            itt: pdu.bhs.itt(),
            response: resp,
            waiting: victims,
            close_after: f == TARGET_COLD_RESET && resp == code::FUNCTION_COMPLETE,
            give_up: self.now + self.cfg.abort_timeout,
        });
        self.flush_tmfs();
    }

    /// ABORT TASK: the referenced task, or the RFC 7143 §11.5.1 answer for
    /// one we do not have.
    fn abort_one(&mut self, pdu: &Pdu, lun: u64) -> (u8, HashSet<u32>) {
        let rtt = pdu.bhs.ref_task_tag();
        if self.tasks.get(&rtt).is_some_and(|t| t.lun == lun) {
            return (
                code::FUNCTION_COMPLETE,
                self.abort_where(|itt, _| itt == rtt),
            );
        }
        // Not here: if its CmdSN was never received (it lies ahead of
        // ExpCmdSN, before this TMF), consider it received and done;
        // otherwise it completed already or never existed.
        let ref_cmd_sn = pdu.bhs.ref_cmd_sn();
        if !sn_lt(ref_cmd_sn, self.window.exp_cmd_sn()) && sn_lt(ref_cmd_sn, pdu.bhs.cmd_sn()) {
            (code::FUNCTION_COMPLETE, HashSet::new())
        } else {
            (code::TASK_DOES_NOT_EXIST, HashSet::new())
        }
    }

    fn abort_lun(&mut self, lun: u64) -> HashSet<u32> {
        self.abort_where(|_, t| t.lun == lun)
    }

    /// Abort every task matching `pred`. Tasks not yet executing leave the
    /// table now; executing ones are marked and returned, to be waited for.
    fn abort_where(&mut self, pred: impl Fn(u32, &super::task::Task) -> bool) -> HashSet<u32> {
        let mut executing = HashSet::new();
        let mut removed = Vec::new();
        for (itt, t) in self.tasks.iter_mut() {
            if !pred(*itt, t) {
                continue;
            }
            if t.is_executing() {
                t.state = State::Aborted;
                executing.insert(*itt);
            } else {
                removed.push((*itt, t.holds_slot()));
            }
        }
        for (itt, holds_slot) in removed {
            self.remove_task(itt);
            if holds_slot {
                self.window.complete();
            }
        }
        executing
    }

    /// A request from outside the session (another initiator's PREEMPT AND
    /// ABORT): abort this LUN's tasks without responses.
    pub fn abort_from_outside(&mut self, lun: u64) {
        if self.cfg.scsi {
            self.out.push_back(Output::Abort(AbortScope {
                lun: Some(lun),
                tag: None,
            }));
        }
        self.abort_lun(lun);
    }

    /// The earliest instant a TMF gives up on its victims.
    pub(super) fn tmf_deadline(&self) -> Option<Instant> {
        self.pending_tmfs.iter().filter_map(|p| p.deadline()).min()
    }

    /// Ask the driver to abandon the victims TMFs have waited for too long
    /// (asked again on every timeout until they are gone).
    pub(super) fn give_up_victims(&mut self, now: Instant) {
        let mut itts = Vec::new();
        for p in &mut self.pending_tmfs {
            if p.deadline().is_some_and(|d| now >= d) {
                itts.extend(p.waiting.iter().copied());
                // Asked again later, not on every turn: a victim the
                // driver cannot give up (run inline, or held by a CBT
                // write lock) would keep the deadline in the past and
                // the driver spinning until it finished.
                p.give_up = now + GIVE_UP_RETRY;
            }
        }
        itts.sort_unstable();
        itts.dedup();
        for itt in itts {
            self.out.push_back(Output::Abandon(itt));
        }
    }

    /// An aborted task finished.
    pub(super) fn task_gone(&mut self, itt: u32) {
        for p in &mut self.pending_tmfs {
            p.waiting.remove(&itt);
        }
        self.flush_tmfs();
    }

    /// Send TMF responses whose aborted tasks have all finished, in order.
    fn flush_tmfs(&mut self) {
        while self
            .pending_tmfs
            .first()
            .is_some_and(|p| p.waiting.is_empty())
        {
            let p = self.pending_tmfs.remove(0);
            self.send(vec![response::tmf_response(p.itt, p.response)]);
            if p.close_after {
                self.close(CloseReason::ColdReset);
            }
        }
    }

    /// An ignored command (its CmdSN a duplicate of one held) must not stay
    /// in the task table.
    pub(super) fn drop_task(&mut self, itt: u32) {
        if self.tasks.contains_key(&itt) {
            self.remove_task(itt);
        }
    }
}
