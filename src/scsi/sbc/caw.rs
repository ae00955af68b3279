//! COMPARE AND WRITE (SBC-4 §5.3): compare N blocks with the first half
//! of the Data-Out and, only if they are equal, write the second half —
//! atomically against every other write to the LUN, from any session.

use super::check_range;
use super::limits::MAX_COMPARE_AND_WRITE_BLOCKS;
use super::verify::{first_difference, miscompare, read_blocks, write_blocks};
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::io_fault;
use crate::scsi::sense::Sense;
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

/// Offset of NUMBER OF LOGICAL BLOCKS in the CDB.
const NUM_BLOCKS_AT: usize = 13;

pub fn compare_and_write(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let lba = be(cmd.cdb, 2, 8);
    let blocks = u64::from(byte(cmd.cdb, NUM_BLOCKS_AT));
    let fua = byte(cmd.cdb, 1) & 0x08 != 0;
    check_range(lu, lba, blocks)?;
    if blocks > u64::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Err(Sense::invalid_cdb_field(NUM_BLOCKS_AT, None));
    }
    let half = blocks * lu.block_bytes();
    // The Data-Out must be exactly verify data + write data: with any
    // other size the initiator and we disagree about what to compare.
    if cmd.data_out.len() as u64 != 2 * half {
        return Err(Sense::invalid_cdb_field(NUM_BLOCKS_AT, None));
    }
    if blocks == 0 {
        // SBC-4: nothing compared, nothing written, not an error.
        return Ok(ScsiResult::good(Vec::new(), 0));
    }
    let (expect, new) = cmd.data_out.split_at(half as usize);
    let _order = lu.order_exclusive();
    if let Some(done) = offloaded(lu, lba, expect, new, fua)? {
        return done;
    }
    let medium = read_blocks(lu, lba, blocks)?;
    if let Some(at) = first_difference(expect, &medium) {
        return Err(miscompare(at as u64));
    }
    write_blocks(lu, lba, new, fua)?;
    Ok(ScsiResult::good(Vec::new(), (2 * half) as u32))
}

/// COMPARE AND WRITE done by storage that several targets share (RBD):
/// only there is it atomic against the other targets' writes. `None`:
/// the backend does not do it (this range), compare here.
fn offloaded(
    lu: &LogicalUnit,
    lba: u64,
    expect: &[u8],
    new: &[u8],
    fua: bool,
) -> Result<Option<CmdResult>, Sense> {
    let (bs, len) = (lu.block_bytes(), new.len() as u64);
    if !lu.backend.compares_and_writes(lba * bs, len) {
        return Ok(None);
    }
    let blocks = len / bs.max(1);
    if fua {
        io_fault::check_sync_intact(lu, Some(lba))?;
    }
    // Logged before the backend may write; a miscompare then over-reports
    // the range as changed, which tracking allows (never under-report).
    let _change = lu.begin_change(lba, blocks, ChangeKind::Write)?;
    match lu.backend.compare_and_write(lba * bs, expect, new, fua) {
        Err(e) if crate::backend::is_not_offloaded(&e) => Ok(None),
        Err(e) => Err(io_fault::write_failure(lu, &e, lba, fua)),
        Ok(Some(at)) => Ok(Some(Err(miscompare(at)))),
        Ok(None) => Ok(Some(Ok(ScsiResult::good(Vec::new(), 2 * new.len() as u32)))),
    }
}
