//! Storage backends: a narrow byte-addressed trait, nothing SCSI about it.
//!
//! Calls are blocking (the target runs them off the async reactor). Offsets
//! and lengths are in bytes; callers have already checked them against
//! `size()`, but implementations must still refuse out-of-range I/O with an
//! error rather than corrupt or panic.

use std::io;

pub mod file;
pub mod memory;

pub use file::FileBackend;
pub use memory::MemoryBackend;

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
}
