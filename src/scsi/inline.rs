//! Which commands the transport may run on its own (async) thread instead
//! of handing them to the blocking pool.
//!
//! The hand-off costs two thread wake-ups per command — on a 4 KiB read
//! from RAM that is most of the work. A command qualifies only if nothing
//! on its path can wait for a device: no backend I/O, or I/O on a backend
//! that works at memory speed, bounded in size, and (for writes) no CBT
//! intent record to make durable first. Anything else, including every
//! command that can wait for other commands (CBT CLOSE/ACQUIRE, SYNCHRONIZE
//! CACHE, SANITIZE, XCOPY), keeps going to the pool.

use super::DeviceServer;
use super::sbc::rw;

/// Largest transfer run inline. Larger ones go to the pool even from RAM,
/// where the next read overlaps the previous send. Measured
/// (BENCHMARKS.md): 1 MiB reads inline stalled the session's socket and
/// cost 1.6x the CPU per I/O. 128 KiB reads inline used to fall to
/// ~1.1 GiB/s after a 4 KiB workload; that was the allocator (a fresh
/// zeroed buffer per read, see `buffers`): with recycled buffers
/// they run at 2.8 GiB/s inline against 2.2 through the pool.
const INLINE_MAX_BYTES: u64 = 128 << 10;

impl DeviceServer {
    /// May this command run on the caller's thread without blocking it
    /// for longer than a memory copy?
    pub fn runs_inline(&self, lun: u64, cdb: &[u8]) -> bool {
        let Some(&op) = cdb.first() else {
            return true; // refused at once
        };
        match op {
            // TEST UNIT READY, REQUEST SENSE, INQUIRY, MODE SENSE(6),
            // READ CAPACITY(10), MODE SENSE(10), REPORT LUNS: answered from
            // memory.
            0x00 | 0x03 | 0x12 | 0x1a | 0x25 | 0x5a | 0xa0 => true,
            // SERVICE ACTION IN(16) / READ CAPACITY(16).
            0x9e => cdb.get(1).is_some_and(|b| b & 0x1f == 0x10),
            0x08 | 0x28 | 0xa8 | 0x88 => self.quick_io(lun, cdb, false),
            0x0a | 0x2a | 0xaa | 0x8a => self.quick_io(lun, cdb, true),
            _ => false,
        }
    }

    fn quick_io(&self, lun: u64, cdb: &[u8], write: bool) -> bool {
        let Some(lu) = self.luns.get(&lun) else {
            return true; // LOGICAL UNIT NOT SUPPORTED, at once
        };
        let r = rw::parse(cdb);
        let bytes = r.blocks.saturating_mul(u64::from(lu.block_size));
        if bytes > INLINE_MAX_BYTES {
            return false;
        }
        let offset = r.lba.saturating_mul(u64::from(lu.block_size));
        // Reads of a file whose pages are all cached are memory copies too;
        // writes to a file on disk may wait for dirty-page throttling.
        let fast = match write {
            false => lu.backend.read_is_cached(offset, bytes),
            true => lu.backend.memory_speed(),
        };
        if !fast {
            return false;
        }
        !write
            || lu
                .tracker
                .as_ref()
                .is_none_or(|t| t.change_is_quick(r.lba, r.blocks))
    }
}
