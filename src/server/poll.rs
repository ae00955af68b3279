//! Busy polling: after answering, a session watches its socket for a
//! short while instead of going to sleep at once.
//!
//! Why: on a virtual machine a sleeping vCPU costs tens of microseconds
//! to wake (measured here: a do-nothing request/response over loopback
//! takes 63 µs when the answering side sleeps in read(2), 20 µs when it
//! polls). At queue depth 1 that wake-up is most of a 4 KiB read's
//! latency. Polling is bounded: a time budget per wait
//! (`TargetSettings::busy_poll`, 0 = never); a cap on how many sessions
//! poll at once (one per two cores, so pollers cannot crowd out work); a
//! yield to the runtime every few microseconds, so other sessions on the
//! same thread keep running, and to the kernel between looks, so other
//! threads on the same CPU do; and no polling at all while the session has
//! a command on the blocking pool (on a one-core target, polling would
//! hold off the very thread it waits for).

use super::session::Done;
use super::wire::PduReader;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc::UnboundedReceiver;

/// What ended a poll.
pub(super) enum Polled {
    /// Bytes arrived after this long and are in the reader's buffer.
    Bytes(Duration),
    /// The peer closed the connection.
    Closed,
    /// A command finished on another thread.
    Done(Done),
    /// The budget ran out (or no polling slot was free): go to sleep.
    Nothing,
}

/// How many sessions may poll at the same moment.
pub(super) struct PollGate {
    busy: AtomicUsize,
    max: usize,
}

impl PollGate {
    pub(super) fn new() -> PollGate {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PollGate {
            busy: AtomicUsize::new(0),
            max: (cores / 2).max(1),
        }
    }

    fn enter(&self) -> Option<PollSlot<'_>> {
        let mut now = self.busy.load(Ordering::Relaxed);
        loop {
            if now >= self.max {
                return None;
            }
            match self
                .busy
                .compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(PollSlot(self)),
                Err(seen) => now = seen,
            }
        }
    }
}

struct PollSlot<'a>(&'a PollGate);

impl Drop for PollSlot<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a session polls. Polling pays when commands come one at a time
/// (queue depth 1): the next one arrives a round trip after the answer,
/// and a sleep costs a wake-up per command. At depth the next PDU is
/// usually there within a few microseconds; polling then picks PDUs up one
/// by one instead of in bursts, and measured as extra CPU per I/O (4K
/// writes at QD32: 11-16 µs against 10-12 µs without it). So a poll that
/// ends with bytes sooner than `DENSE` switches polling off for the next
/// `DENSE_SKIP` waits, after which it probes again.
#[derive(Default)]
pub(super) struct PollPolicy {
    skip: u32,
}

const DENSE: Duration = Duration::from_micros(10);
const DENSE_SKIP: u32 = 32;

impl PollPolicy {
    /// Poll before this wait?
    pub(super) fn should_poll(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// A poll saw bytes after `waited`.
    pub(super) fn bytes_after(&mut self, waited: Duration) {
        if waited < DENSE {
            self.skip = DENSE_SKIP;
        }
    }
}

/// Time between yields to the runtime while polling.
const YIELD_EVERY: Duration = Duration::from_micros(8);

/// Watch the socket and the completion channel for up to `budget`.
pub(super) async fn busy_poll(
    reader: &mut PduReader<OwnedReadHalf>,
    done_rx: &mut UnboundedReceiver<Done>,
    budget: Duration,
    gate: &PollGate,
) -> io::Result<Polled> {
    let Some(_slot) = gate.enter() else {
        return Ok(Polled::Nothing);
    };
    let start = Instant::now();
    let mut last_yield = start;
    loop {
        match reader.try_fill()? {
            Some(true) => return Ok(Polled::Bytes(start.elapsed())),
            Some(false) => return Ok(Polled::Closed),
            None => {}
        }
        if let Ok(d) = done_rx.try_recv() {
            return Ok(Polled::Done(d));
        }
        let now = Instant::now();
        if now.duration_since(start) >= budget {
            return Ok(Polled::Nothing);
        }
        if now.duration_since(last_yield) >= YIELD_EVERY {
            tokio::task::yield_now().await;
            last_yield = Instant::now();
        } else {
            // Let any other thread waiting for this CPU run first (a
            // target pinned to one core has its runtime and pool there).
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_traffic_pauses_polling_then_probes_again() {
        let mut p = PollPolicy::default();
        assert!(p.should_poll());
        p.bytes_after(Duration::from_micros(25));
        assert!(p.should_poll(), "a depth-1 round trip keeps polling");
        p.bytes_after(Duration::from_micros(2));
        for _ in 0..DENSE_SKIP {
            assert!(!p.should_poll());
        }
        assert!(p.should_poll(), "probes again");
    }

    #[test]
    fn gate_admits_at_most_its_cap() {
        let gate = PollGate {
            busy: AtomicUsize::new(0),
            max: 2,
        };
        let a = gate.enter();
        let b = gate.enter();
        assert!(a.is_some() && b.is_some());
        assert!(gate.enter().is_none());
        drop(a);
        assert!(gate.enter().is_some());
    }
}
