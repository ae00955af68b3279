//! WRITE ATOMIC (16) (SBC-4 §5.48): all of the blocks are written or none,
//! with the Block Limits VPD atomic limits (alignment and granularity from
//! `limits`, maximum = the maximum transfer length). ATOMIC BOUNDARY is
//! not in the usage mask: we advertise no boundary support, so a nonzero
//! boundary is refused by the reserved-bit check.

use super::limits::{ATOMIC_ALIGNMENT, ATOMIC_GRANULARITY};
use super::verify::{write_blocks, write_range};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::Sense;
use crate::scsi::{ScsiCommand, ScsiResult};

const LBA_AT: usize = 2;
const LEN_AT: usize = 12;

pub fn write_atomic16(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lba = be(cmd.cdb, LBA_AT, 8);
    let blocks = be(cmd.cdb, LEN_AT, 2);
    let fua = byte(cmd.cdb, 1) & 0x08 != 0;
    let (lu, needed) = write_range(ctx, lba, blocks, LEN_AT)?;
    if blocks == 0 {
        return Ok(ScsiResult::good(Vec::new(), 0));
    }
    if !lba.is_multiple_of(u64::from(ATOMIC_ALIGNMENT.max(1))) {
        return Err(Sense::invalid_cdb_field(LBA_AT, None));
    }
    if !blocks.is_multiple_of(u64::from(ATOMIC_GRANULARITY.max(1))) {
        return Err(Sense::invalid_cdb_field(LEN_AT, None));
    }
    // Unlike WRITE, a short Data-Out cannot be written as far as it goes:
    // that would be a partial atomic write. Nothing is written.
    if (cmd.data_out.len() as u64) < needed {
        return Ok(super::refuse_short(needed));
    }
    let data = &cmd.data_out[..needed as usize];
    let _order = lu.order_exclusive();
    write_blocks(lu, lba, data, fua)?;
    Ok(ScsiResult::good(Vec::new(), needed as u32))
}
