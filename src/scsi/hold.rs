//! Submitting commands that may be held: while a LUN's CBT write lock is
//! held, its changes wait in a FIFO instead of failing, without blocking
//! the thread that submitted them (transport-agnostic).
//!
//! Contract for the transport:
//! * Call [`DeviceServer::submit`] (on a thread that may block for backend
//!   I/O) instead of `execute`. `done` runs exactly once: before `submit`
//!   returns, or later on a drainer thread, or from `abort_held` with
//!   TASK ABORTED.
//! * A held command still counts as in flight in the session's CmdSN
//!   window (128 commands), which is what bounds held memory per session:
//!   once it is full the target stops opening MaxCmdSN.
//! * ABORT TASK / ABORT TASK SET / CLEAR TASK SET: call `abort_held` for
//!   the commands concerned. LUN and target resets drop the LUN's held
//!   changes themselves (`lun_reset` calls `abort_held`).
//! * At session end, call `abort_held(None, Some(nexus), None)` BEFORE
//!   waiting for the session's commands (held ones would otherwise wait for
//!   a lock this very session may hold), then `nexus_removed`, which also
//!   ends a lock that nexus holds.
//! * Call [`DeviceServer::tick`] every ~100 ms: a lease must end even when
//!   no command arrives.

use super::cdb;
use super::vendor::lock::{DoneFn, Held, Hold};
use super::{DeviceServer, OwnedCommand, ScsiResult, status};
use std::sync::Arc;
use std::time::Instant;

/// Can this CDB change what a READ returns (its table row modifies the
/// medium)? Those are the commands a write lock holds.
pub fn is_change(cdb: &[u8]) -> bool {
    cdb::lookup(cdb).is_ok_and(|d| d.writes)
}

impl DeviceServer {
    /// Run `cmd` now, or hold it while its LUN is write-locked; `done`
    /// receives the result either way (see the module docs).
    pub fn submit(self: &Arc<Self>, cmd: OwnedCommand, done: DoneFn) {
        self.this.get_or_init(|| Arc::downgrade(self));
        // A LUN not mapped for this initiator is not held by its lock
        // either: the command fails at once, as for a missing LUN.
        let lu = match self.lu_for(&cmd.nexus, cmd.lun) {
            Some(lu) if is_change(&cmd.cdb) => Arc::clone(lu),
            _ => {
                let result = self.execute(&cmd.as_command());
                crate::buffers::give(cmd.data_out);
                return done(result);
            }
        };
        let (lun, lock) = (cmd.lun, &lu.cbt_lock);
        let mut held = Held { cmd, done };
        loop {
            if lock.enter() {
                let result = self.execute(&held.cmd.as_command());
                lock.leave();
                crate::buffers::give(held.cmd.data_out);
                return (held.done)(result);
            }
            match lock.hold(held, Instant::now()) {
                Hold::Queued { start_drain } => {
                    if start_drain {
                        self.start_drain(lun);
                    }
                    return;
                }
                // The lock ended between the two checks: try again.
                Hold::Open(h) => held = h,
            }
        }
    }

    /// Expire the leases that ran out (call every ~100 ms).
    pub fn tick(&self) {
        let now = Instant::now();
        for (&lun, lu) in &self.luns {
            if lu.cbt_lock.tick(now) {
                self.start_drain(lun);
            }
            // A view ends by its lease even when nobody asks about it.
            if let Some(t) = &lu.tracker {
                t.expire_view(now);
            }
        }
    }

    /// Drop the held commands matching every given filter and finish them
    /// with TASK ABORTED. Returns how many.
    pub fn abort_held(&self, lun: Option<u64>, nexus_id: Option<u64>, tag: Option<u64>) -> usize {
        let matches = |c: &OwnedCommand| {
            nexus_id.is_none_or(|n| c.nexus.id == n) && tag.is_none_or(|t| c.tag == t)
        };
        let mut n = 0;
        for (&l, lu) in &self.luns {
            if lun.is_some_and(|want| want != l) {
                continue;
            }
            for h in lu.cbt_lock.take_held(matches) {
                n += 1;
                (h.done)(aborted());
            }
        }
        n
    }

    /// End the write locks `nexus_id` holds and drop its held commands.
    pub(crate) fn release_locks_of(&self, nexus_id: u64) {
        self.abort_held(None, Some(nexus_id), None);
        for (&lun, lu) in &self.luns {
            if lu.cbt_lock.nexus_gone(nexus_id) {
                self.start_drain(lun);
            }
        }
    }

    /// Apply `lun`'s held changes in order on a new thread: the command
    /// that ended the lock must not wait for them.
    pub(crate) fn start_drain(&self, lun: u64) {
        match self.this.get().and_then(|w| w.upgrade()) {
            Some(server) => {
                let spawned = std::thread::Builder::new()
                    .name("cbt-drain".into())
                    .spawn(move || server.drain(lun));
                if let Err(e) = spawned {
                    // Changes stay held until the next drain would be
                    // started; never lose them silently.
                    tracing::error!(error = %e, "cannot start the held-change drainer");
                    self.drain(lun);
                }
            }
            // Nothing was ever submitted (so nothing is held) or the server
            // is going away: drain here.
            None => self.drain(lun),
        }
    }

    fn drain(&self, lun: u64) {
        let Some(lu) = self.luns.get(&lun) else {
            return;
        };
        let lock = &lu.cbt_lock;
        while let Some(h) = lock.next_held() {
            let result = self.execute(&h.cmd.as_command());
            lock.leave();
            (h.done)(result);
        }
    }
}

fn aborted() -> ScsiResult {
    ScsiResult {
        status: status::TASK_ABORTED,
        sense: None,
        data_in: Vec::new(),
        transfer_len: 0,
    }
}
