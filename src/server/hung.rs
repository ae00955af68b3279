//! Commands stuck in a backend call (see `scsi::hung` for the fence).
//!
//! A hung call holds one blocking-pool thread for as long as it hangs;
//! nothing can take it back. What the session guarantees instead:
//! - it never waits on such a call for anything else: pings, other LUNs
//!   and task management keep flowing (commands report by channel);
//! - a call running longer than `hung_io_timeout` is reported (warn log,
//!   `backend_hung_ios` gauge) and fences its LUN, so new commands to it
//!   fail at once instead of tying up more threads;
//! - task management waits at most `abort_timeout` for an executing
//!   command, then *abandons* it: the LUN is fenced (nothing newer can
//!   reach the medium before the stuck call returns), the TMF answers
//!   FUNCTION COMPLETE, and whatever the call returns later is dropped;
//! - an abandoned write keeps its data charged to the session's write
//!   budget (the buffer is still held by the stuck call), so stuck writes
//!   cannot grow memory: further R2Ts wait for budget;
//! - a session ending (logout, drop, reinstatement, shutdown) waits at
//!   most `abort_timeout` for its executing commands, then abandons them.

use super::session::{Done, Session};
use super::shared::Shared;
use crate::proto::conn::WriteBudget;
use crate::scsi::DeviceServer;
use crate::scsi::vendor::lock::DoneFn;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

const RUNNING: u8 = 0;
/// Ran past the hang timeout; the LUN is fenced for it.
const HUNG: u8 = 1;
/// Given up by its session: the result is dropped on return.
const ABANDONED: u8 = 2;
const DONE: u8 = 3;

/// The state of one command on the blocking pool, shared between the
/// session and the command's completion callback. Exactly one of "the
/// callback finished it" and "the session abandoned it" wins.
pub(super) struct Ticket {
    state: AtomicU8,
    /// `submit` returned without finishing: the command waits in a CBT
    /// write-lock queue (bounded by the lock's lease), not in the backend.
    held: AtomicBool,
    since: Instant,
    /// The device server the call went to: its fence is the one to count
    /// (the session may switch servers at a reload meanwhile).
    device: Arc<DeviceServer>,
    lun: u64,
}

impl Ticket {
    fn state(&self) -> u8 {
        self.state.load(SeqCst)
    }

    /// Give the command up; `false` if it finished already (its `Done`
    /// is on its way). Only the completion changes the state meanwhile,
    /// and only to DONE.
    fn abandon(&self) -> bool {
        let cur = self.state();
        (cur == RUNNING || cur == HUNG)
            && (self.state)
                .compare_exchange(cur, ABANDONED, SeqCst, SeqCst)
                .is_ok()
    }
}

/// What a command's completion needs to undo for a hung or abandoned call.
struct Completion {
    ticket: Arc<Ticket>,
    tx: mpsc::UnboundedSender<Done>,
    itt: u32,
    /// The session's write data held by abandoned calls.
    stuck: Arc<AtomicU64>,
    shared: Arc<Shared>,
    charged: u64,
}

impl Completion {
    fn finish(self, result: crate::scsi::ScsiResult) {
        match self.ticket.state.swap(DONE, SeqCst) {
            ABANDONED => {
                let (device, lun) = (&self.ticket.device, self.ticket.lun);
                device.hung_call_returned(lun);
                self.stuck.fetch_sub(self.charged, SeqCst);
                self.shared.write_budget.give(self.charged);
                warn!(target = %device.target_name, lun, itt = self.itt,
                    secs = self.ticket.since.elapsed().as_secs(),
                    "abandoned backend call returned; its result is dropped");
            }
            prev => {
                if prev == HUNG {
                    self.ticket.device.hung_call_returned(self.ticket.lun);
                }
                let _ = self.tx.send(Done {
                    itt: self.itt,
                    result,
                });
            }
        }
    }
}

impl Session {
    /// Hand a command to the blocking pool under a ticket. `charged`: the
    /// write budget it holds (kept charged if the call is abandoned).
    pub(super) fn spawn_pooled(
        &mut self,
        device: Arc<DeviceServer>,
        itt: u32,
        cmd: crate::scsi::OwnedCommand,
        charged: u64,
    ) -> Arc<Ticket> {
        let ticket = Arc::new(Ticket {
            state: AtomicU8::new(RUNNING),
            held: AtomicBool::new(false),
            since: Instant::now(),
            device: device.clone(),
            lun: cmd.lun,
        });
        let c = Completion {
            ticket: ticket.clone(),
            tx: self.done_tx(),
            itt,
            stuck: self.conn.stuck_charges(),
            shared: self.target.shared.clone(),
            charged,
        };
        let done: DoneFn = Box::new(move |result| c.finish(result));
        if self.hang_check.is_none() {
            self.hang_check = Some(Instant::now() + self.hang_period());
        }
        let t = ticket.clone();
        tokio::task::spawn_blocking(move || {
            device.submit(cmd, done);
            t.held.store(true, SeqCst);
        });
        ticket
    }

    fn hang_period(&self) -> Duration {
        (self.target.shared.settings.hung_io_timeout / 4).max(Duration::from_millis(10))
    }

    /// Give an executing command's call up (see the module docs); `false`
    /// if it finished meanwhile (its `Done` is on its way) or runs inline.
    /// The caller tells the state machine (`on_abandoned`).
    pub(super) fn abandon(&mut self, itt: u32) -> bool {
        let Some(ticket) = self.ticket(itt) else {
            return false;
        };
        // A call reported hung has its fence count already.
        let taken = match ticket.state() {
            HUNG => ticket.abandon(),
            _ => fence_then(&ticket, || ticket.abandon()),
        };
        if taken {
            let t = &self.target;
            warn!(target = ?t.target_name, lun = ticket.lun, itt,
                initiator = %t.nexus.initiator_port,
                "command stuck in the backend abandoned; LUN fenced until it returns");
        }
        taken
    }

    /// Report calls past the hang timeout: they fence their LUN, and a
    /// Logout no longer waits for them.
    pub(super) fn report_hung(&mut self, now: Instant) {
        let limit = self.target.shared.settings.hung_io_timeout;
        let overdue: Vec<(u32, Arc<Ticket>)> = (self.tickets())
            .filter(|(_, k)| {
                k.state() == RUNNING && !k.held.load(SeqCst) && now.duration_since(k.since) >= limit
            })
            .map(|(itt, k)| (itt, k.clone()))
            .collect();
        for (itt, ticket) in overdue {
            let mark = || {
                (ticket.state)
                    .compare_exchange(RUNNING, HUNG, SeqCst, SeqCst)
                    .is_ok()
            };
            if fence_then(&ticket, mark) {
                let t = &self.target;
                warn!(target = ?t.target_name, lun = ticket.lun, itt,
                    secs = now.duration_since(ticket.since).as_secs(),
                    initiator = %t.nexus.initiator_port,
                    "backend call hung; LUN fenced (new commands get NOT READY) until it returns");
                self.conn.on_hung(itt);
            }
        }
        let running = self.tickets().next().is_some();
        self.hang_check = running.then(|| now + self.hang_period());
    }

    /// The session is ending: wait for executing commands (their results
    /// are dropped), at most `abort_timeout`, then abandon the rest.
    pub(super) async fn drain(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        let deadline = Instant::now() + self.target.shared.settings.abort_timeout;
        while self.conn.executing() > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(d)) => self.conn.on_done(d.itt, d.result),
                Ok(None) => break,
                Err(_) => {
                    let stuck = self.conn.executing_tasks();
                    let gone: Vec<u32> =
                        stuck.iter().copied().filter(|&i| self.abandon(i)).collect();
                    for &itt in &gone {
                        self.conn.on_abandoned(itt);
                    }
                    if gone.len() == stuck.len() {
                        break;
                    }
                    // The others finished meanwhile: their Done is queued.
                }
            }
            self.forget_outputs();
        }
    }
}

/// Fence the ticket's LUN for one more hung call, then run `mark` (which
/// moves the ticket into HUNG or ABANDONED); undo the fence if `mark` did
/// not take it (the call finished just then: a needless NOT READY TO READY
/// CHANGE at worst). The fence goes up *before* the state changes, so the
/// completion, once it sees the new state, always finds its count there
/// (the other order could lift a fence another hung call still needs).
fn fence_then(ticket: &Ticket, mark: impl FnOnce() -> bool) -> bool {
    ticket.device.call_hung(ticket.lun);
    let counted = mark();
    if !counted {
        ticket.device.hung_call_returned(ticket.lun);
    }
    counted
}
