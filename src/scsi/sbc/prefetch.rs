//! PRE-FETCH (10/16) (SBC-4 §5.10, §5.11).

use super::check_range;
use super::verify::lba_and_len;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::{ScsiCommand, ScsiResult};

/// Only the range is checked. We have no cache of our own that could
/// promise to keep the blocks (the OS page cache may drop them at any
/// time), which is SBC-4's "cache does not have sufficient capacity" case:
/// the status is GOOD, never CONDITION MET, with IMMED 0 or 1 alike. A
/// PREFETCH LENGTH of zero means "to the last block", which the range
/// check already covers (an LBA inside the medium).
pub fn prefetch(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks, _) = lba_and_len(cmd.cdb);
    check_range(lu, lba, blocks)?;
    Ok(ScsiResult::good(Vec::new(), 0))
}
