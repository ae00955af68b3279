//! STUB — stands in for the CBT write lock (service actions 03h-05h) that
//! another helper writes in parallel. The lead replaces this whole file
//! with theirs when merging. Every service action answers INVALID FIELD IN
//! CDB and the lock is never held.

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::sense::Sense;

/// STUB: the per-LUN write lock state.
#[derive(Debug, Default)]
pub struct CbtLock {}

impl CbtLock {
    /// STUB: lease remaining in ms when locked; never locked here.
    pub fn status(&self) -> Option<u32> {
        None
    }
}

/// STUB: ACQUIRE WRITE LOCK (SA 03h).
pub fn acquire(_ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    Err(Sense::invalid_cdb_field(1, Some(4)))
}

/// STUB: RENEW WRITE LOCK (SA 04h).
pub fn renew(_ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    Err(Sense::invalid_cdb_field(1, Some(4)))
}

/// STUB: RELEASE WRITE LOCK (SA 05h).
pub fn release(_ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    Err(Sense::invalid_cdb_field(1, Some(4)))
}
