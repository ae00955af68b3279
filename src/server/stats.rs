//! Live counts of what the server holds: open connections (login phase
//! included), sessions in full feature phase, and SCSI tasks registered in
//! session task tables. Read-only from outside; tests use them to check
//! that every attack and every dropped connection gives its state back.
//!
//! Each count is kept by a guard that adds one when created and removes
//! it when dropped, so no path that forgets an entry (error returns,
//! aborted sessions, panics unwinding) can leave the count high while
//! the entry itself is gone, and a leaked entry keeps it high.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicUsize,
    sessions: AtomicUsize,
    tasks: AtomicUsize,
}

/// A snapshot of the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub connections: usize,
    pub sessions: usize,
    pub tasks: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Session,
    Task,
}

/// Holds one unit of a count while alive.
#[derive(Debug)]
pub struct Counted {
    stats: Arc<ServerStats>,
    kind: Kind,
}

impl ServerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            tasks: self.tasks.load(Ordering::Relaxed),
        }
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Connection => &self.connections,
            Kind::Session => &self.sessions,
            Kind::Task => &self.tasks,
        }
    }

    fn count(self: &Arc<Self>, kind: Kind) -> Counted {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Counted {
            stats: self.clone(),
            kind,
        }
    }

    pub(super) fn connection(self: &Arc<Self>) -> Counted {
        self.count(Kind::Connection)
    }

    pub(super) fn session(self: &Arc<Self>) -> Counted {
        self.count(Kind::Session)
    }

    pub(super) fn task(self: &Arc<Self>) -> Counted {
        self.count(Kind::Task)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
