//! Task management (RFC 7143 §11.5, SAM-5 §7). Aborted commands get no
//! response; commands already on the blocking pool cannot be stopped, so
//! the TMF response waits until they have finished — once it is sent, no
//! aborted command can still change the medium. A command still running
//! after `abort_timeout` is abandoned as hung instead: its LUN is fenced
//! until the call returns, which keeps that promise (see `hung.rs`).

use super::session::Session;
use crate::proto::cmdsn::sn_lt;
use crate::proto::pdu::Pdu;
use crate::proto::response::{self, tmf_response as code};
use std::collections::HashSet;
use std::io;
use tracing::info;

/// Task management functions (RFC 7143 §11.5.1).
mod function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LUN_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

pub(super) struct PendingTmf {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
    /// When its executing victims are given up as hung (`hung.rs`).
    give_up: tokio::time::Instant,
}

impl PendingTmf {
    pub(super) fn waiting(&self) -> &HashSet<u32> {
        &self.waiting
    }

    /// The instant its victims are abandoned, while it still waits.
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        (!self.waiting.is_empty()).then_some(self.give_up)
    }

    pub(super) fn expired(&self, now: tokio::time::Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

impl Session {
    pub(super) async fn on_tmf(&mut self, pdu: Pdu) -> io::Result<()> {
        let f = pdu.bhs.flags() & 0x7f;
        let lun = crate::scsi::lun::decode_lun(pdu.bhs.0[8..16].try_into().unwrap());
        let itt = pdu.bhs.itt();
        // A LUN not mapped for this initiator does not exist for it.
        let lun_exists = self
            .device
            .as_ref()
            .is_some_and(|d| d.lu_for(&self.nexus, lun).is_some());
        info!(function = f, lun, initiator = %self.nexus.initiator_port, "task management");
        if let Some(d) = &self.device {
            // Commands held by a CBT write lock are finished as aborted
            // (the done callback reports them like any executing task).
            let (l, tag) = match f {
                function::ABORT_TASK => (Some(lun), Some(u64::from(pdu.bhs.ref_task_tag()))),
                function::ABORT_TASK_SET | function::CLEAR_TASK_SET | function::LUN_RESET => {
                    (Some(lun), None)
                }
                function::TARGET_WARM_RESET | function::TARGET_COLD_RESET => (None, None),
                _ => (Some(u64::MAX), None),
            };
            if l != Some(u64::MAX) {
                d.abort_held(l, Some(self.nexus.id), tag);
            }
        }
        let (resp, victims) = match f {
            function::ABORT_TASK => self.abort_one(&pdu, lun),
            function::ABORT_TASK_SET | function::CLEAR_TASK_SET if lun_exists => (
                code::FUNCTION_COMPLETE,
                self.abort_where(|_, t| t.lun == lun),
            ),
            function::LUN_RESET if lun_exists => {
                let v = self.abort_where(|_, t| t.lun == lun);
                if let Some(d) = &self.device {
                    d.lun_reset(lun, &self.nexus);
                }
                (code::FUNCTION_COMPLETE, v)
            }
            function::ABORT_TASK_SET | function::CLEAR_TASK_SET | function::LUN_RESET => {
                (code::LUN_DOES_NOT_EXIST, HashSet::new())
            }
            function::TARGET_WARM_RESET | function::TARGET_COLD_RESET => {
                let v = self.abort_where(|_, _| true);
                if let Some(d) = &self.device {
                    d.target_reset(&self.nexus);
                }
                (code::FUNCTION_COMPLETE, v)
            }
            function::TASK_REASSIGN => (code::REASSIGNMENT_NOT_SUPPORTED, HashSet::new()),
            _ => (code::NOT_SUPPORTED, HashSet::new()),
        };
        self.metrics.tmf(f, resp);
        let pending = PendingTmf {
            itt,
            response: resp,
            waiting: victims,
            close_after: f == function::TARGET_COLD_RESET && resp == code::FUNCTION_COMPLETE,
            give_up: tokio::time::Instant::now() + self.shared.settings.abort_timeout,
        };
        self.pending_tmfs.push(pending);
        self.flush_tmfs().await
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

    /// Abort every task matching `pred`. Tasks not yet executing are removed
    /// now; executing ones are marked and returned, to be waited for.
    fn abort_where(&mut self, pred: impl Fn(u32, &super::task::Task) -> bool) -> HashSet<u32> {
        let mut executing = HashSet::new();
        let mut removed = Vec::new();
        for (itt, t) in self.tasks.iter_mut() {
            if !pred(*itt, t) {
                continue;
            }
            t.aborted = true;
            if t.executing {
                executing.insert(*itt);
            } else {
                removed.push((*itt, t.delivered && !t.immediate));
            }
        }
        for (itt, holds_slot) in removed {
            if let Some(t) = self.tasks.remove(&itt) {
                self.release(&t);
            }
            self.note_ended(itt);
            if holds_slot {
                self.window.complete();
            }
        }
        executing
    }

    /// A request from outside the session (another initiator's PREEMPT AND
    /// ABORT): abort this LUN's tasks without responses.
    pub(super) fn on_control(&mut self, c: super::shared::SessionControl) {
        match c {
            super::shared::SessionControl::AbortLun(lun) => {
                if let Some(d) = &self.device {
                    d.abort_held(Some(lun), Some(self.nexus.id), None);
                }
                self.abort_where(|_, t| t.lun == lun);
            }
            super::shared::SessionControl::SwitchDevice(dev) => self.switch_device(dev),
        }
    }

    /// An aborted task finished on the blocking pool.
    pub(super) async fn task_gone(&mut self, itt: u32) -> io::Result<()> {
        for p in &mut self.pending_tmfs {
            p.waiting.remove(&itt);
        }
        self.flush_tmfs().await
    }

    /// Send TMF responses whose aborted tasks have all finished, in order.
    async fn flush_tmfs(&mut self) -> io::Result<()> {
        while self
            .pending_tmfs
            .first()
            .is_some_and(|p| p.waiting.is_empty())
        {
            let p = self.pending_tmfs.remove(0);
            self.send(vec![response::tmf_response(p.itt, p.response)])
                .await?;
            if p.close_after {
                self.finished = true;
            }
        }
        Ok(())
    }
}
