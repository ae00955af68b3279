//! ORWRITE (16) (SBC-4 §5.9): OR the Data-Out into the medium, as one
//! read-modify-write that no other write can interleave with.

use super::verify::{read_blocks, write_blocks, write_range};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::{ScsiCommand, ScsiResult};

/// Short Data-Out is handled like WRITE's (`super::arrived`): whole blocks
/// received are ORed in and GOOD, a torn one refuses the command.
pub fn orwrite(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lba = be(cmd.cdb, 2, 8);
    let blocks = be(cmd.cdb, 10, 4);
    let fua = byte(cmd.cdb, 1) & 0x08 != 0;
    let (lu, needed) = write_range(ctx, lba, blocks, 10)?;
    let data = match super::arrived(lu, cmd.data_out, needed) {
        Ok(d) => d,
        Err(refused) => return Ok(refused),
    };
    if data.is_empty() {
        return Ok(ScsiResult::good(Vec::new(), needed as u32));
    }
    let _order = lu.order_exclusive();
    let mut medium = read_blocks(lu, lba, data.len() as u64 / lu.block_bytes())?;
    for (m, d) in medium.iter_mut().zip(data) {
        *m |= d;
    }
    write_blocks(lu, lba, &medium, fua)?;
    Ok(ScsiResult::good(Vec::new(), needed as u32))
}
