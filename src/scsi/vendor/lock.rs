//! CBT write lock: ACQUIRE / RENEW / RELEASE WRITE LOCK (opcode C0h,
//! service actions 03h-05h, `shared/specs/cbt-scsi.md`) and the per-LUN
//! state that holds changes while the lock is held.
//!
//! # States
//!
//! `Open` (changes run), `Acquiring` (the gate is shut, ACQUIRE waits for
//! the changes already running), `Locked` (changes are queued). After the
//! lock ends, a drainer applies the queue in arrival order while the gate
//! stays shut, so later changes queue behind; the gate opens when the queue
//! is empty. Invariant: `gate == (phase != Open || draining)`, changed only
//! under the state mutex.
//!
//! # Why no change slips past ACQUIRE
//!
//! A change on the submit path (`hold.rs`) first adds itself to `active`,
//! then loads `gate` (both SeqCst), and runs only if the gate was open; it
//! leaves `active` after its backend call. ACQUIRE stores `gate = true`,
//! then waits until it sees `active == 0` (and no tracker change in flight).
//! In the single SeqCst order, a change whose load saw the gate open made
//! its increment before that load, hence before ACQUIRE's store, hence
//! before ACQUIRE's reads of `active`: ACQUIRE waits for it. A change whose
//! load comes after the store sees the gate shut and is queued. The
//! drainer counts itself in `active` (under the mutex, when it pops) for
//! the same reason. The tracker's own in-flight count covers changes made
//! outside the submit path (e.g. direct `execute` callers).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cbt::Tracker;
use crate::cbt::wire::LOCK_LEN;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, OwnedCommand, ScsiCommand, ScsiResult, status};

/// Called once with a submitted command's result.
pub type DoneFn = Box<dyn FnOnce(ScsiResult) + Send>;

/// A change waiting for the lock to end.
pub(crate) struct Held {
    pub cmd: OwnedCommand,
    pub done: DoneFn,
}

struct Holder {
    token: u64,
    generation: u64,
    nexus: u64,
    expires: Instant,
}

#[derive(Default)]
enum Phase {
    #[default]
    Open,
    /// ACQUIRE is draining; `cancelled` when its nexus went away meanwhile.
    Acquiring {
        nexus: u64,
        cancelled: bool,
    },
    Locked(Holder),
}

#[derive(Default)]
struct State {
    phase: Phase,
    queue: VecDeque<Held>,
    /// A drainer is applying `queue`.
    draining: bool,
}

/// The per-LUN write lock.
#[derive(Default)]
pub struct CbtLock {
    /// Shut while locked, acquiring or draining: changes must queue.
    gate: AtomicBool,
    /// Changes running on the submit path (see the module docs).
    active: AtomicU64,
    state: Mutex<State>,
    /// Test hook: runs between a change's two steps at the gate.
    #[cfg(test)]
    pub(crate) at_gate: Mutex<Option<Box<dyn Fn() + Send>>>,
}

/// What `hold` did with a change.
pub(crate) enum Hold {
    /// Queued; `start_drain` when the caller must start a drainer.
    Queued { start_drain: bool },
    /// The gate is open after all: run it.
    Open(Held),
}

impl CbtLock {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lease remaining in ms while locked (REPORT TRACKING, WRITE LOCKED).
    pub fn status(&self) -> Option<u32> {
        match &self.state().phase {
            Phase::Locked(h) => {
                let left = h.expires.checked_duration_since(Instant::now())?;
                Some(ms(left).max(1))
            }
            _ => None,
        }
    }

    /// Changes queued behind the lock (for metrics).
    pub fn held_count(&self) -> usize {
        self.state().queue.len()
    }

    /// Fast path of a change: true if it may run now; it must then call
    /// [`leave`](Self::leave) after its backend call.
    pub(crate) fn enter(&self) -> bool {
        self.active.fetch_add(1, SeqCst);
        #[cfg(test)]
        self.test_hook();
        if !self.gate.load(SeqCst) {
            return true;
        }
        self.active.fetch_sub(1, SeqCst);
        false
    }

    #[cfg(test)]
    fn test_hook(&self) {
        if let Some(f) = self.at_gate.lock().unwrap().as_ref() {
            f();
        }
    }

    pub(crate) fn leave(&self) {
        self.active.fetch_sub(1, SeqCst);
    }

    /// Slow path: queue the change unless the gate opened meanwhile.
    pub(crate) fn hold(&self, held: Held, now: Instant) -> Hold {
        let mut st = self.state();
        let start_drain = self.expire(&mut st, now);
        if !self.gate.load(SeqCst) {
            return Hold::Open(held);
        }
        st.queue.push_back(held);
        Hold::Queued { start_drain }
    }

    /// Next change for the drainer, counted in `active`; `None` stops it
    /// (queue empty → gate opens; a new lock → the rest stays held).
    pub(crate) fn next_held(&self) -> Option<Held> {
        let mut st = self.state();
        if !matches!(st.phase, Phase::Open) {
            st.draining = false;
            return None;
        }
        match st.queue.pop_front() {
            Some(h) => {
                self.active.fetch_add(1, SeqCst);
                Some(h)
            }
            None => {
                st.draining = false;
                self.gate.store(false, SeqCst);
                None
            }
        }
    }

    /// Remove the held changes matching `pred`, in order.
    pub(crate) fn take_held(&self, pred: impl Fn(&OwnedCommand) -> bool) -> Vec<Held> {
        let mut st = self.state();
        let (out, keep): (Vec<_>, Vec<_>) = st.queue.drain(..).partition(|h| pred(&h.cmd));
        st.queue = keep.into();
        out
    }

    /// Lease expiry (tick, lazy checks). True: start a drainer.
    pub(crate) fn tick(&self, now: Instant) -> bool {
        self.expire(&mut self.state(), now)
    }

    /// The nexus is gone: end its lock (true: start a drainer) or cancel
    /// its ACQUIRE in progress.
    pub(crate) fn nexus_gone(&self, nexus_id: u64) -> bool {
        let mut st = self.state();
        match &mut st.phase {
            Phase::Locked(h) if h.nexus == nexus_id => self.open(&mut st),
            Phase::Acquiring { nexus, cancelled } if *nexus == nexus_id => {
                *cancelled = true;
                false
            }
            _ => false,
        }
    }

    fn expire(&self, st: &mut State, now: Instant) -> bool {
        match &st.phase {
            Phase::Locked(h) if h.expires <= now => self.open(st),
            _ => false,
        }
    }

    /// End the lock (or a failed ACQUIRE). True when the queue is non-empty
    /// and no drainer runs: the caller must start one.
    fn open(&self, st: &mut State) -> bool {
        st.phase = Phase::Open;
        if st.draining {
            return false;
        }
        if st.queue.is_empty() {
            self.gate.store(false, SeqCst);
            return false;
        }
        st.draining = true;
        true
    }

    /// Wait until no change runs (submit path and tracker), at most
    /// `timeout`. The gate must already be shut.
    fn wait_drained(&self, tracker: &Tracker, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        while self.active.load(SeqCst) != 0 {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
        tracker.wait_idle(timeout.saturating_sub(start.elapsed()))
    }
}

pub(crate) fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Lease for a CDB value: 0 → default, cut to the maximum.
fn lease_for(lu: &LogicalUnit, requested_ms: u64) -> Duration {
    let asked = match requested_ms {
        0 => lu.cbt.default_lease,
        n => Duration::from_millis(n),
    };
    asked.min(lu.cbt.max_lease)
}

fn reply(cmd: &ScsiCommand, token: u64, generation: u64, lease: Duration) -> ScsiResult {
    let mut r = vec![0u8; LOCK_LEN];
    r[0..8].copy_from_slice(&token.to_be_bytes());
    r[8..16].copy_from_slice(&generation.to_be_bytes());
    r[16..20].copy_from_slice(&ms(lease).to_be_bytes());
    data_in(cmd, r, LOCK_LEN as u64)
}

/// Reserved CDB bytes `from..15` and the top bits of byte 1 must be zero
/// (the table's usage mask checks them too; this keeps the handlers safe
/// whatever row calls them).
pub(crate) fn check_reserved(cdb: &[u8], from: usize) -> Result<(), Sense> {
    if byte(cdb, 1) & 0xe0 != 0 {
        return Err(Sense::invalid_cdb_field(
            1,
            Some(7 - (byte(cdb, 1).leading_zeros() as u8)),
        ));
    }
    match (from..16).find(|&i| byte(cdb, i) != 0) {
        Some(i) => Err(Sense::invalid_cdb_field(i, None)),
        None => Ok(()),
    }
}

fn tracker(lu: &LogicalUnit) -> Result<&Tracker, Sense> {
    lu.tracker
        .as_deref()
        .ok_or(Sense::new(SenseReason::InvalidOpcode))
}

fn new_token() -> u64 {
    loop {
        let t: u64 = rand::random();
        if t != 0 {
            return t;
        }
    }
}

/// 03h ACQUIRE WRITE LOCK.
pub fn acquire(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 10)?;
    let lu = ctx.lu()?;
    let tracker = tracker(lu)?;
    let lease = lease_for(lu, be(cmd.cdb, 2, 4));
    let drain = match be(cmd.cdb, 6, 4) {
        0 => lu.cbt.default_drain,
        n => Duration::from_millis(n),
    };
    let lock = &lu.cbt_lock;
    {
        let mut st = lock.state();
        if lock.expire(&mut st, Instant::now()) {
            // The expired lock's queue stays held under the new one: no
            // drainer is needed (none was started).
            st.draining = false;
        }
        match &mut st.phase {
            Phase::Locked(h) if h.nexus == ctx.nexus.id => {
                h.expires = Instant::now() + lease;
                return Ok(reply(cmd, h.token, h.generation, lease));
            }
            Phase::Locked(_) | Phase::Acquiring { .. } => return Ok(conflict()),
            Phase::Open => {
                st.phase = Phase::Acquiring {
                    nexus: ctx.nexus.id,
                    cancelled: false,
                };
                // A running drainer stops at its next pop; what it has not
                // applied stays held under the new lock, in order.
                lock.gate.store(true, SeqCst);
            }
        }
    }
    let closed = if lock.wait_drained(tracker, drain) {
        tracker.close().map_err(|e| {
            tracing::error!(error = %e, "write lock: closing the generation failed");
            Sense::new(SenseReason::InternalTargetFailure)
        })
    } else {
        Err(Sense::new(SenseReason::LockDrainTimeout))
    };
    let mut st = lock.state();
    let cancelled = matches!(
        st.phase,
        Phase::Acquiring {
            cancelled: true,
            ..
        }
    );
    match closed {
        Ok(generation) if !cancelled => {
            let token = new_token();
            st.phase = Phase::Locked(Holder {
                token,
                generation,
                nexus: ctx.nexus.id,
                expires: Instant::now() + lease,
            });
            Ok(reply(cmd, token, generation, lease))
        }
        other => {
            if lock.open(&mut st) {
                drop(st);
                ctx.server.start_drain(cmd.lun);
            }
            // A cancelled ACQUIRE has no session left to answer: no lock.
            other.map(|_| conflict())
        }
    }
}

pub(crate) fn conflict() -> ScsiResult {
    ScsiResult {
        status: status::RESERVATION_CONFLICT,
        sense: None,
        data_in: Vec::new(),
        transfer_len: 0,
    }
}

/// Lazy lease expiry, so an expired token is refused even between ticks.
fn expire_now(ctx: &Ctx, cmd: &ScsiCommand, lock: &CbtLock, now: Instant) {
    if lock.tick(now) {
        ctx.server.start_drain(cmd.lun);
    }
}

/// 04h RENEW WRITE LOCK.
pub fn renew(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 14)?;
    let lu = ctx.lu()?;
    tracker(lu)?;
    let token = be(cmd.cdb, 2, 8);
    let lease = lease_for(lu, be(cmd.cdb, 10, 4));
    let lock = &lu.cbt_lock;
    let now = Instant::now();
    expire_now(ctx, cmd, lock, now);
    let mut st = lock.state();
    match &mut st.phase {
        Phase::Locked(h) if h.token == token => {
            h.expires = now + lease;
            Ok(reply(cmd, h.token, h.generation, lease))
        }
        _ => Err(Sense::invalid_cdb_field(2, None)),
    }
}

/// 05h RELEASE WRITE LOCK: held changes apply on a drainer thread.
pub fn release(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 10)?;
    let lu = ctx.lu()?;
    tracker(lu)?;
    let token = be(cmd.cdb, 2, 8);
    let lock = &lu.cbt_lock;
    expire_now(ctx, cmd, lock, Instant::now());
    let mut st = lock.state();
    let generation = match &st.phase {
        Phase::Locked(h) if h.token == token => h.generation,
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let start = lock.open(&mut st);
    drop(st);
    if start {
        ctx.server.start_drain(cmd.lun);
    }
    Ok(reply(cmd, token, generation, Duration::ZERO))
}
