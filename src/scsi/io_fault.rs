//! What a failed backend call answers: the one place that turns an
//! `io::Error` below a LUN into sense data, for every command that reads,
//! writes or flushes the medium.
//!
//! - Out of space (ENOSPC, EDQUOT) on a write: DATA PROTECT, SPACE
//!   ALLOCATION FAILED WRITE PROTECT (07h/27h/07h). The LUN is thin; hosts
//!   pause (ESXi) or retry instead of declaring the disk bad.
//! - Any other write failure: MEDIUM ERROR, WRITE ERROR (03h/0Ch/00h).
//! - A read failure: MEDIUM ERROR, UNRECOVERED READ ERROR (03h/11h/00h).
//!
//! Both carry the first LBA of the failed call in INFORMATION.
//!
//! Sync failures are sticky. Linux reports a failed writeback once: the
//! dirty pages are dropped (or marked clean) and the next fsync succeeds
//! although the data never reached the disk. So once a flush, or the sync
//! of a FUA write, fails on a LUN, every later SYNCHRONIZE CACHE and FUA
//! write of that LUN fails with WRITE ERROR until the LUN is reopened
//! (restart, or a reload that changes its definition): a GOOD would claim
//! durability for data that may be gone.

use super::LogicalUnit;
use super::sense::{Sense, SenseReason};
use crate::backend::{SyncFailed, os_error};
use std::io;
use std::sync::atomic::Ordering;

/// The filesystem or a quota has no room for the write.
pub fn out_of_space(e: &io::Error) -> bool {
    matches!(os_error(e), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// The sense for a failed write-like call (write, unmap, write zeroes) of
/// `lu` starting at `lba`; `synced`: the call also had to make its data
/// durable (FUA, or write-through with the write cache off).
pub fn write_failure(lu: &LogicalUnit, e: &io::Error, lba: u64, synced: bool) -> Sense {
    let backend = lu.backend.describe();
    if out_of_space(e) && !is_sync_failure(e) {
        tracing::warn!(%backend, lba, error = %e, "write failed: out of space");
        return Sense::new(SenseReason::SpaceAllocationFailedWriteProtect).with_information(lba);
    }
    // Out of space is found when the data is placed, before any sync;
    // anything else from a synced call may be the sync itself failing.
    if synced || is_sync_failure(e) {
        sync_lost(lu, e);
    } else {
        tracing::warn!(%backend, lba, error = %e, "write failed");
    }
    Sense::new(SenseReason::WriteError).with_information(lba)
}

/// Flush `lu`'s backend: every flush goes through here (SYNCHRONIZE
/// CACHE, CBT checkpoints, shutdown), so a failure anywhere is sticky and
/// no later flush reports success once one was lost.
pub fn flush(lu: &LogicalUnit) -> io::Result<()> {
    if lu.sync_lost.load(Ordering::Acquire) {
        return Err(io::Error::other("an earlier sync of this LUN failed"));
    }
    lu.backend.flush().inspect_err(|e| sync_lost(lu, e))
}

/// SYNCHRONIZE CACHE: [`flush`], WRITE ERROR when it fails.
pub fn synchronize(lu: &LogicalUnit) -> Result<(), Sense> {
    flush(lu).map_err(|_| Sense::new(SenseReason::WriteError))
}

/// The sense for a failed read of `lu` at `lba`: the view's reasons where
/// a view LUN could not read, UNRECOVERED READ ERROR otherwise.
pub fn read_failure(lu: &LogicalUnit, e: &io::Error, lba: u64) -> Sense {
    if let Some(sense) = super::viewlun::unavailable(e) {
        return sense;
    }
    tracing::warn!(backend = %lu.backend.describe(), lba, error = %e, "read failed");
    Sense::new(SenseReason::UnrecoveredReadError).with_information(lba)
}

/// [`read_failure`] of a read of `blocks` blocks at `lba`, INFORMATION
/// naming the first block that fails when read alone (a failing range is
/// usually one bad spot); the command's LBA when none does (the error did
/// not repeat). The probing costs only on this error path.
pub fn read_failure_in(lu: &LogicalUnit, e: &io::Error, lba: u64, blocks: u64) -> Sense {
    let sense = read_failure(lu, e, lba);
    if sense.reason != SenseReason::UnrecoveredReadError || blocks <= 1 {
        return sense;
    }
    let bs = lu.block_bytes();
    let mut one = vec![0u8; bs as usize];
    let bad = (lba..lba + blocks)
        .find(|&b| lu.backend.read_at(b * bs, &mut one).is_err())
        .unwrap_or(lba);
    sense.with_information(bad)
}

/// Refuse a command that promises durability (SYNCHRONIZE CACHE, a FUA
/// write at `lba`) once a sync of this LUN has failed.
pub fn check_sync_intact(lu: &LogicalUnit, lba: Option<u64>) -> Result<(), Sense> {
    if !lu.sync_lost.load(Ordering::Acquire) {
        return Ok(());
    }
    let sense = Sense::new(SenseReason::WriteError);
    Err(match lba {
        Some(lba) => sense.with_information(lba),
        None => sense,
    })
}

fn is_sync_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SyncFailed>())
}

/// Remember that data this LUN acknowledged may not be on the medium.
fn sync_lost(lu: &LogicalUnit, e: &io::Error) {
    if !lu.sync_lost.swap(true, Ordering::AcqRel) {
        tracing::error!(
            backend = %lu.backend.describe(),
            error = %e,
            "sync failed: acknowledged writes may be lost; SYNCHRONIZE CACHE and \
             FUA writes now fail until the LUN is reopened"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{MemoryBackend, sync_failed};
    use crate::scsi::LunIdentity;
    use std::sync::Arc;

    fn lu() -> LogicalUnit {
        let id = LunIdentity {
            serial: "S".into(),
            naa: [0x60; 16],
        };
        LogicalUnit::new(Arc::new(MemoryBackend::new(1 << 20)), 512, id, false)
    }

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn out_of_space_is_data_protect_and_not_sticky() {
        let lu = lu();
        for n in [libc::ENOSPC, libc::EDQUOT] {
            let s = write_failure(&lu, &errno(n), 9, true);
            assert_eq!(s.reason.codes(), (0x07, 0x27, 0x07));
            assert_eq!(s.information, Some(9));
        }
        assert!(check_sync_intact(&lu, None).is_ok());
    }

    #[test]
    fn eio_is_write_error_and_sticky_only_when_synced() {
        let lu = lu();
        let s = write_failure(&lu, &errno(libc::EIO), 3, false);
        assert_eq!(s.reason.codes(), (0x03, 0x0c, 0x00));
        assert_eq!(s.information, Some(3));
        assert!(check_sync_intact(&lu, None).is_ok());
        write_failure(&lu, &errno(libc::EIO), 3, true);
        let refused = check_sync_intact(&lu, Some(5)).unwrap_err();
        assert_eq!(refused.reason, SenseReason::WriteError);
        assert_eq!(refused.information, Some(5));
    }

    #[test]
    fn a_failed_sync_is_sticky_even_when_out_of_space() {
        let lu = lu();
        let e = sync_failed(errno(libc::ENOSPC));
        assert!(out_of_space(&e));
        let s = write_failure(&lu, &e, 1, true);
        assert_eq!(s.reason, SenseReason::WriteError);
        assert!(check_sync_intact(&lu, None).is_err());
    }

    #[test]
    fn flush_failure_is_sticky_and_read_failure_names_the_lba() {
        let lu = lu();
        assert!(synchronize(&lu).is_ok());
        sync_lost(&lu, &errno(libc::EIO));
        let s = synchronize(&lu).unwrap_err();
        assert_eq!(s.reason.codes(), (0x03, 0x0c, 0x00));
        assert!(flush(&lu).is_err(), "checkpoints and shutdown see it too");
        assert!(check_sync_intact(&lu, None).is_err());
        let r = read_failure(&lu, &errno(libc::EIO), 77);
        assert_eq!(r.reason.codes(), (0x03, 0x11, 0x00));
        assert_eq!(r.information, Some(77));
    }
}
