//! Changed-block tracking (CBT) for one LUN: the model and guarantees of
//! `shared/specs/cbt-scsi.md`, as a pure library with file persistence.
//!
//! Files: `map.rs` (generation store), `tracker.rs` (write path, close,
//! drain, grow), `query.rs` (GET CHANGED EXTENTS), `persist.rs` (on-disk
//! formats), `intent.rs` (intent log, high-water mark), `recovery.rs`
//! (open, recovery, checkpoint, shutdown).
//!
//! # Design
//!
//! * **Generations.** Each extent holds the open generation `O` of its latest
//!   change (0 = unchanged since tracking began). They live in a lazily grown
//!   radix tree of 64-extent chunks ([`map`]): no lock on lookup, memory only
//!   for what was written (~8.4 bytes per extent when dense), and every update
//!   is a monotonic `fetch_max`, so racing changes never lower a generation.
//!   Interior nodes and chunks keep their maximum so a query skips subtrees
//!   that hold nothing newer than `since`: query time follows what changed.
//!
//! * **Close is linearisable with writes (guarantee 2).** A change stamps its
//!   extents *before* the data is written and stays registered as "in
//!   flight" until its [`ChangeGuard`] drops. Registration is against a
//!   *phase* counter with two parity slots: a writer bumps `inflight[p & 1]`
//!   then re-checks that the phase is still `p` (else it retries), and only
//!   then reads `O`. `close` (serialised by a mutex) stores `O + 1`, bumps the
//!   phase, and waits until the old slot drains. In the SeqCst total order a
//!   writer that read the old `O` registered before the phase bump, so close
//!   waits for it; a writer that registers later reads the new `O`. A close
//!   with nothing in flight is a few atomics and a mutex.
//!
//! * **Crash safety (guarantee 3).** Three files in the LUN's directory:
//!   `meta` (UUID, extent size, capacity, generation high-water mark `H`,
//!   clean marker), `snapshot` (all generations at the last checkpoint) and
//!   `intent.<epoch>` write-ahead logs of coarse *regions* (1024 extents).
//!   `O` never passes `H`, and `H` is persisted ahead of use, so a restart can
//!   pick `R = H + 1`, larger than anything handed out. Before the first
//!   change to a region in the current intent epoch, the region id is
//!   appended to the log and fsynced (concurrent first touches share one
//!   fsync: group commit); later changes to that region cost one load. A
//!   checkpoint starts a new epoch (new log), drains the changes of the old
//!   epoch through the same phase mechanism, writes the snapshot atomically,
//!   then deletes old logs. Recovery stamps every extent of every logged
//!   region with `R`. Every file carries a CRC32C; unreadable metadata is the
//!   only case that makes a new UUID.
//!
//! * **Deallocated hint.** A parallel bitmap per chunk. Data writes clear the
//!   bits at begin and at end; an unmap sets them at end only if no data
//!   write touched the chunk since the unmap began (per-chunk write counter),
//!   so the hint is set only when true (false negatives are allowed).

mod intent;
mod map;
mod persist;
mod query;
mod recovery;
mod store;
mod tracker;
pub mod view;
mod views;
pub mod wire;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod stress_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;

pub use store::ViewStore;
pub use tracker::{ChangeGuard, Tracker};
pub use view::{View, ViewSource, ViewUnavailable};
pub use views::{OpenRequest, ViewError};

use std::time::Duration;

/// Default extent size in bytes (spec: 64 KiB worth of blocks).
pub const DEFAULT_EXTENT_BYTES: u64 = 64 * 1024;

/// Extent size in blocks for a block length, per the spec's default.
pub fn default_extent_blocks(block_len: u32) -> u32 {
    (DEFAULT_EXTENT_BYTES / u64::from(block_len.max(1)))
        .max(1)
        .next_power_of_two() as u32
}

/// What kind of change a write-path command makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Data may be anywhere in the range afterwards.
    Write,
    /// The range is deallocated and reads as zeros afterwards.
    Unmap,
}

/// One GET CHANGED EXTENTS descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub lba: u64,
    pub blocks: u64,
    /// The latest change unmapped the whole run (a hint).
    pub deallocated: bool,
    /// Largest generation in the run.
    pub generation: u64,
}

/// One page of GET CHANGED EXTENTS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedPage {
    pub descriptors: Vec<Descriptor>,
    /// First block not covered by this page.
    pub next_lba: u64,
    /// The page reaches the end of the LUN.
    pub complete: bool,
    /// Open generation when the page was built.
    pub open_generation: u64,
}

/// REPORT TRACKING contents owned by the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub uuid: [u8; 16],
    pub extent_blocks: u32,
    pub capacity_blocks: u64,
    pub open_generation: u64,
    /// Generation stamped by the latest recovery (0 if never).
    pub recovery_generation: u64,
    pub tracking_on: bool,
    pub persistent: bool,
    /// This run started after an unclean stop.
    pub recovered: bool,
}

impl Status {
    /// FLAGS byte of REPORT TRACKING / VPD C0h, without WRITE LOCKED (bit2),
    /// which belongs to the write-lock layer.
    pub fn flags(&self) -> u8 {
        let bit = |on: bool, f: u8| if on { f } else { 0 };
        bit(self.tracking_on, wire::flag::TRACKING_ON)
            | bit(self.persistent, wire::flag::PERSISTENT)
            | bit(self.recovered, wire::flag::RECOVERED)
    }
}

/// Errors, by how far the damage reaches.
#[derive(Debug, thiserror::Error)]
pub enum CbtError {
    /// A query field is out of range: the SCSI layer answers ILLEGAL
    /// REQUEST, INVALID FIELD IN CDB. Nothing happened.
    #[error("invalid query field: {0}")]
    InvalidField(&'static str),
    /// The change lies beyond the capacity: a caller bug, nothing happened.
    #[error("range {lba}+{blocks} beyond capacity {capacity}")]
    OutOfRange {
        lba: u64,
        blocks: u64,
        capacity: u64,
    },
    /// The tracker was shut down; no change may start.
    #[error("tracker is shut down")]
    ShutDown,
    /// Growing past what the map can address.
    #[error("capacity {0} blocks cannot be tracked")]
    TooLarge(u64),
    /// Tracking metadata could not be written: the change must not proceed
    /// (it would not be crash safe). The LUN's data is untouched.
    #[error("tracking metadata I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// `wait_idle` gave up: changes were still in flight.
#[derive(Debug, thiserror::Error)]
#[error("changes still in flight after {0:?}")]
pub struct DrainTimeout(pub Duration);
