//! Storage backends: a narrow byte-addressed trait, nothing SCSI about it.
//!
//! Calls are blocking (the target runs them off the async reactor). Offsets
//! and lengths are in bytes; callers have already checked them against
//! `size()`, but implementations must still refuse out-of-range I/O with an
//! error rather than corrupt or panic.

use std::io;

pub mod aligned;
pub mod backup;
mod chunk_cache;
pub mod file;
pub mod memory;
pub mod overlay;
mod rangelock;
pub mod rbd;
mod ring;
pub mod uring;

pub use backup::{BackupBackend, InstantOptions};
pub use file::FileBackend;
pub use memory::MemoryBackend;
pub use rbd::{RbdBackend, RbdOptions};
pub use uring::{UringBackend, UringOptions};

pub trait Backend: Send + Sync {
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `buf` at `offset`; with `fua` the data is durable on return.
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate a byte range; afterwards it reads as zeros.
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Make a byte range read as zeros (may deallocate).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Short description for logs ("file:/path", "memory").
    fn describe(&self) -> String;
    /// Reads and writes finish at memory speed and never wait for a
    /// device (RAM, tmpfs): the transport may run them on its own thread
    /// instead of handing them to the blocking pool.
    fn memory_speed(&self) -> bool {
        false
    }
    /// Would reading `[offset, offset + len)` now be served from memory
    /// (e.g. the whole range is in the page cache)? A hint for choosing a
    /// thread; wrong answers cost speed, never correctness.
    fn read_is_cached(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        self.memory_speed()
    }
    /// Allocation map of `[offset, offset + len)` as consecutive
    /// (length in bytes, mapped) runs from `offset`, adjacent runs of the
    /// same state merged. At most `max_runs` runs: the answer may then
    /// cover less than `len`. Unallocated ranges read as zeros. The
    /// default knows nothing about allocation: everything is mapped.
    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        let _ = (offset, max_runs);
        Ok(vec![(len, true)])
    }
    /// Write `block` repeated over `[offset, offset + len)` in one
    /// operation of the storage itself (RBD's writesame: one request, not
    /// a stream of copies). `len` is a multiple of the block's length.
    /// Default: [`not_offloaded`], the caller writes the copies.
    fn write_same(&self, offset: u64, len: u64, block: &[u8]) -> io::Result<()> {
        let _ = (offset, len, block);
        Err(not_offloaded())
    }
    /// Does [`compare_and_write`](Self::compare_and_write) of `len`
    /// bytes at `offset` run in the storage? Asked first, so that a
    /// device server that compares itself stamps changed-block tracking
    /// only when it writes.
    fn compares_and_writes(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }
    /// Compare `expect` with the bytes at `offset` and only if they are
    /// equal write `new` there, atomically in the storage itself (RBD's
    /// compare-and-write, atomic against every client of the image, other
    /// gateways included). `Ok(Some(n))`: byte `n` of the range differs,
    /// nothing was written. Default: [`not_offloaded`], the device server
    /// compares and writes under its own lock.
    fn compare_and_write(
        &self,
        offset: u64,
        expect: &[u8],
        new: &[u8],
        fua: bool,
    ) -> io::Result<Option<u64>> {
        let _ = (offset, expect, new, fua);
        Err(not_offloaded())
    }
    /// The storage this backend holds and could still get (thin
    /// provisioning resources); `None` where it cannot tell.
    fn space(&self) -> io::Result<Option<SpaceUse>> {
        Ok(None)
    }
}

/// Bytes of storage a thin backend holds and could still allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceUse {
    /// Allocated to the backend now.
    pub allocated: u64,
    /// Still allocatable: the filesystem's free space, capped by what the
    /// backend could ever use (its size less what it holds).
    pub available: u64,
}

/// A write reached the page cache but the sync that had to make it
/// durable failed: what else was dirty may be lost too. Backends that sync
/// separately from writing (FUA as write + fdatasync) tag that failure
/// with [`sync_failed`] so the device server can tell it from the write.
#[derive(Debug, thiserror::Error)]
#[error("sync failed: {0}")]
pub struct SyncFailed(pub io::Error);

/// Tag `e` as the failure of a sync (keeps its kind; [`os_error`] still
/// finds its errno).
pub fn sync_failed(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), SyncFailed(e))
}

/// A backend does not do this operation itself (this time or ever): the
/// caller does it with plain reads and writes. A tag, so that it is never
/// mistaken for a storage error such as EOPNOTSUPP.
#[derive(Debug, thiserror::Error)]
#[error("not offloaded to the backend")]
pub struct NotOffloaded;

pub fn not_offloaded() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, NotOffloaded)
}

/// Is `e` a [`not_offloaded`] answer?
pub fn is_not_offloaded(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotOffloaded>())
}

/// The OS error number of `e`, looking through a [`SyncFailed`] tag.
pub fn os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        let inner = e.get_ref()?.downcast_ref::<SyncFailed>()?;
        inner.0.raw_os_error()
    })
}

/// Refuse I/O past the end of a backend of `size` bytes (callers checked
/// already; a backend must still never act on a bad range).
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "I/O beyond end of backend",
        )),
    }
}

/// Refuse a change to a read-only backend.
pub(crate) fn check_writable(read_only: bool) -> io::Result<()> {
    if read_only {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "backend is read-only",
        ));
    }
    Ok(())
}

/// Append a run to an allocation map, merging it with the previous run
/// when both have the same state.
pub fn push_run(runs: &mut Vec<(u64, bool)>, len: u64, mapped: bool) {
    if len == 0 {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.1 == mapped => last.0 += len,
        _ => runs.push((len, mapped)),
    }
}
