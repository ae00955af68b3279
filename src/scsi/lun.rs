//! A logical unit: a backend plus geometry, identity and (optionally) its
//! changed-block tracker.

use super::{Sense, SenseReason};
use crate::backend::Backend;
use crate::cbt::{ChangeGuard, ChangeKind, Tracker};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Identity that must never change across restarts (stored beside the data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunIdentity {
    /// Unit serial number (VPD 80h), printable ASCII, at most 20 bytes.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (NAA 6), 16 bytes (VPD 83h).
    pub naa: [u8; 16],
}

pub struct LogicalUnit {
    pub backend: Arc<dyn Backend>,
    pub block_size: u32,
    pub identity: LunIdentity,
    pub read_only: bool,
    /// Changed-block tracking, when on for this LUN.
    pub tracker: Option<Arc<Tracker>>,
    /// A SANITIZE is running: every command but INQUIRY, REPORT LUNS and
    /// REQUEST SENSE gets NOT READY, SANITIZE IN PROGRESS.
    pub sanitizing: AtomicBool,
}

impl LogicalUnit {
    pub fn new(
        backend: Arc<dyn Backend>,
        block_size: u32,
        identity: LunIdentity,
        read_only: bool,
    ) -> LogicalUnit {
        LogicalUnit {
            backend,
            block_size,
            identity,
            read_only,
            tracker: None,
            sanitizing: AtomicBool::new(false),
        }
    }

    pub fn with_tracker(mut self, tracker: Arc<Tracker>) -> LogicalUnit {
        self.tracker = Some(tracker);
        self
    }

    /// Every command that can change what a READ returns calls this
    /// *before* touching the backend and keeps the guard until the backend
    /// call has returned (CBT guarantee 2: the extent is stamped with the
    /// open generation before the data lands, and CLOSE waits for it).
    /// Without tracking it costs nothing.
    pub fn begin_change(
        &self,
        lba: u64,
        blocks: u64,
        kind: ChangeKind,
    ) -> Result<Option<ChangeGuard<&Tracker>>, Sense> {
        let Some(t) = &self.tracker else {
            return Ok(None);
        };
        if blocks == 0 {
            return Ok(None);
        }
        t.begin_change(lba, blocks, kind).map(Some).map_err(|e| {
            // The intent could not be made durable: refusing the write is
            // the only way not to under-report it later.
            tracing::error!(error = %e, "changed-block tracking refused a change");
            Sense::new(SenseReason::WriteError).with_information(lba)
        })
    }
}

/// SAM-5 single-level LUN encoding (peripheral or flat addressing).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        b[1] = lun as u8;
    }
    b
}

/// Inverse of [`encode_lun`] for single-level LUNs; other forms map to
/// `u64::MAX` (no such LUN).
pub fn decode_lun(raw: [u8; 8]) -> u64 {
    if raw[2..].iter().any(|&b| b != 0) {
        return u64::MAX;
    }
    match raw[0] >> 6 {
        0 if raw[0] == 0 => raw[1] as u64,
        1 => (((raw[0] & 0x3f) as u64) << 8) | raw[1] as u64,
        _ => u64::MAX,
    }
}

impl LogicalUnit {
    /// Capacity in logical blocks (a partial trailing block is unusable).
    pub fn num_blocks(&self) -> u64 {
        self.backend
            .size()
            .checked_div(self.block_size as u64)
            .unwrap_or(0)
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_size as u64
    }
}
