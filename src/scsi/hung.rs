//! Hung backend calls: the fence of a logical unit.
//!
//! A backend call that never returns (an NFS mount gone, a dead disk) can
//! neither be stopped nor waited for. The transport decides when a call
//! counts as hung (it ran past the hang timeout, or task management gave
//! up waiting for it) and tells the LU here. While any call of the LU is
//! hung the LU is *fenced*: every command that needs the medium fails at
//! once with NOT READY (`SenseReason::BackendHung`) instead of piling more
//! threads onto the stuck device. That is also what makes it safe to
//! answer an ABORT TASK for a stuck WRITE with FUNCTION COMPLETE: nothing
//! newer can reach the medium until the stuck call has returned, so it can
//! never land after a write acknowledged later. When the last hung call
//! returns the fence lifts and every I_T nexus sees NOT READY TO READY
//! CHANGE on the LUN.

use super::DeviceServer;
use super::sense::SenseReason;
use std::sync::atomic::{AtomicU32, Ordering};

/// Backend calls of one LU known to hang (see the module docs).
#[derive(Debug, Default)]
pub struct Fence {
    hung: AtomicU32,
}

impl Fence {
    /// Are commands that need the medium refused now?
    pub fn fenced(&self) -> bool {
        self.hung.load(Ordering::Acquire) > 0
    }

    /// Calls of the LU hung now (the `backend_hung_ios` gauge).
    pub fn hung_calls(&self) -> u32 {
        self.hung.load(Ordering::Acquire)
    }
}

impl DeviceServer {
    /// A call on `lun` is hung: fence the LUN until it returns.
    pub fn call_hung(&self, lun: u64) {
        if let Some(lu) = self.luns.get(&lun) {
            lu.hung.hung.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A call earlier reported by [`call_hung`](Self::call_hung) returned.
    /// The last one lifts the fence; `true` then.
    pub fn hung_call_returned(&self, lun: u64) -> bool {
        let Some(lu) = self.luns.get(&lun) else {
            return false;
        };
        let before = lu.hung.hung.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more hung calls returned than reported");
        if before != 1 {
            return false;
        }
        // Initiators that saw NOT READY learn that the LU is back (and that
        // a command aborted meanwhile may have reached the medium after all).
        self.ua
            .establish_all(lun, SenseReason::NotReadyToReady, false);
        tracing::warn!(target = %self.target_name, lun, "hung backend call returned; LUN unfenced");
        true
    }
}
