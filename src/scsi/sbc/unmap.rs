//! UNMAP (SBC-4 §5.32): deallocate the ranges of a parameter list.

use super::limits::{MAX_UNMAP_DESCRIPTORS, MAX_UNMAP_LBA_COUNT};
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

const HEADER: usize = 8;
const DESCRIPTOR: usize = 16;

/// One range to deallocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lba: u64,
    pub blocks: u64,
}

pub fn unmap(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    if byte(cmd.cdb, 1) & 0x01 != 0 {
        // ANCHOR: the anchored state is not supported (ANC_SUP 0).
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let param_len = be(cmd.cdb, 7, 2) as usize;
    let ranges = parse(lu, cmd.data_out, param_len)?;
    for r in ranges.iter().filter(|r| r.blocks > 0) {
        deallocate(lu, *r)?;
    }
    Ok(ScsiResult::good(Vec::new(), param_len as u32))
}

/// Validate the whole parameter list before anything is deallocated, so a
/// bad descriptor late in the list leaves the medium untouched.
pub fn parse(lu: &LogicalUnit, data_out: &[u8], param_len: usize) -> Result<Vec<Range>, Sense> {
    if param_len == 0 {
        // Not an error (SBC-4): nothing to do.
        return Ok(Vec::new());
    }
    if param_len < HEADER || data_out.len() < HEADER {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    // What the initiator really sent of the list it announced.
    let list = &data_out[..param_len.min(data_out.len())];
    let bd_len = be(list, 2, 2) as usize;
    if bd_len > list.len() - HEADER {
        // The list announces descriptors it does not contain.
        return Err(SenseReason::ParameterListLengthError.into());
    }
    // A trailing partial descriptor is ignored (SBC-4 §5.32.2).
    let count = bd_len / DESCRIPTOR;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let cap = lu.num_blocks();
    let mut total: u64 = 0;
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = HEADER + i * DESCRIPTOR;
        let r = Range {
            lba: be(list, at, 8),
            blocks: be(list, at + 8, 4),
        };
        // LBA + blocks may equal the capacity (0 blocks at the end is fine).
        if r.lba.checked_add(r.blocks).is_none_or(|end| end > cap) {
            return Err(Sense::new(SenseReason::LbaOutOfRange).with_information(r.lba));
        }
        total += r.blocks; // at most 256 × 2^32: no overflow
        if total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(Sense::invalid_param_field(at + 8, None));
        }
        ranges.push(r);
    }
    Ok(ranges)
}

/// Punch one range, stamping changed-block tracking around the backend
/// call.
pub fn deallocate(lu: &LogicalUnit, r: Range) -> Result<(), Sense> {
    let bs = lu.block_bytes();
    let mut change = lu.change_shared(r.lba, r.blocks, ChangeKind::Unmap)?;
    lu.backend.unmap(r.lba * bs, r.blocks * bs).map_err(|e| {
        change.failed();
        crate::scsi::io_fault::write_failure(lu, &e, r.lba, false)
    })
}
