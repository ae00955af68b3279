//! WRITE SAME(10) and WRITE SAME(16) (SBC-4 §5.50, §5.51).

use super::check_range;
use super::limits::MAX_WRITE_SAME_BLOCKS;
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::io_fault;
use crate::scsi::sense::Sense;
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

/// Bytes written per backend call for a non-zero pattern: large enough to
/// stream, small enough not to matter for memory.
const BATCH_BYTES: u64 = 1 << 20;

struct Ws {
    lba: u64,
    blocks: u64,
    anchor: bool,
    unmap: bool,
    /// NDOB (16 only): no data-out, the pattern is zeros.
    ndob: bool,
    len_at: usize,
}

fn parse(cdb: &[u8]) -> Ws {
    let flags = byte(cdb, 1);
    let (lba, blocks, len_at, ndob) = if byte(cdb, 0) == 0x41 {
        (be(cdb, 2, 4), be(cdb, 7, 2), 7, false)
    } else {
        (be(cdb, 2, 8), be(cdb, 10, 4), 10, flags & 0x01 != 0)
    };
    Ws {
        lba,
        blocks,
        anchor: flags & 0x10 != 0,
        unmap: flags & 0x08 != 0,
        ndob,
        len_at,
    }
}

/// What the range ends up holding.
enum Fill<'a> {
    /// Deallocate (the UNMAP bit).
    Deallocate,
    Zeros,
    Pattern(&'a [u8]),
}

pub fn write_same(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let mut ws = parse(cmd.cdb);
    if ws.anchor {
        // ANC_SUP is 0: no anchored state.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    check_range(lu, ws.lba, ws.blocks)?;
    if ws.blocks == 0 {
        // WSNZ is 0: zero blocks means "to the end of the medium".
        ws.blocks = lu.num_blocks() - ws.lba;
    }
    if ws.blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(Sense::invalid_cdb_field(ws.len_at, None));
    }
    let bs = lu.block_bytes();
    let pattern: &[u8] = if ws.ndob {
        &[]
    } else {
        // Exactly one logical block of data-out; anything else is an
        // EDTL that disagrees with the command, not something to guess at.
        if u64::from(cmd.expected_len) != bs || (cmd.data_out.len() as u64) < bs {
            return Ok(super::refuse_short(bs));
        }
        &cmd.data_out[..bs as usize]
    };
    // UNMAP asks for deallocation whatever the block holds: initiators
    // (Linux, ESXi) use it to free space, LIO and tgt deallocate, and
    // libiscsi's UnmapUntilEnd test requires it. LBPRZ=1 then says the
    // range reads as zeros.
    let fill = match (ws.unmap, pattern.iter().all(|&b| b == 0)) {
        (true, _) => Fill::Deallocate,
        (false, true) => Fill::Zeros,
        (false, false) => Fill::Pattern(pattern),
    };
    fill_range(lu, ws.lba, ws.blocks, fill)?;
    let transfer = if ws.ndob { 0 } else { bs as u32 };
    Ok(ScsiResult::good(Vec::new(), transfer))
}

/// Make `[lba, lba + blocks)` hold `fill`, stamping changed-block
/// tracking over the whole range for the duration.
fn fill_range(lu: &LogicalUnit, lba: u64, blocks: u64, fill: Fill) -> Result<(), Sense> {
    let bs = lu.block_bytes();
    let kind = match fill {
        Fill::Pattern(_) => ChangeKind::Write,
        // Both read as zeros afterwards and deallocate where they can.
        Fill::Deallocate | Fill::Zeros => ChangeKind::Unmap,
    };
    let mut change = lu.change_shared(lba, blocks, kind)?;
    let fail = |at: u64, e: std::io::Error| io_fault::write_failure(lu, &e, at, false);
    let done = match fill {
        Fill::Deallocate => lu.backend.unmap(lba * bs, blocks * bs),
        Fill::Zeros => lu.backend.write_zeroes(lba * bs, blocks * bs),
        Fill::Pattern(p) => return write_pattern(lu, lba, blocks, p, &|at, e| fail(at, e)),
    };
    done.map_err(|e| {
        change.failed();
        fail(lba, e)
    })
}

/// Write `block` to every block of the range, a batch of blocks per call.
pub(crate) fn write_pattern(
    lu: &LogicalUnit,
    lba: u64,
    blocks: u64,
    block: &[u8],
    fail: &dyn Fn(u64, std::io::Error) -> Sense,
) -> Result<(), Sense> {
    let bs = lu.block_bytes();
    // Storage that repeats a block itself (RBD) gets one request.
    match lu.backend.write_same(lba * bs, blocks * bs, block) {
        Err(e) if crate::backend::is_not_offloaded(&e) => {}
        done => return done.map_err(|e| fail(lba, e)),
    }
    let per_batch = (BATCH_BYTES / bs).clamp(1, blocks.max(1));
    let buf = block.repeat(per_batch as usize);
    let mut done = 0;
    while done < blocks {
        let n = per_batch.min(blocks - done);
        let at = lba + done;
        lu.backend
            .write_at(at * bs, &buf[..(n * bs) as usize], false)
            .map_err(|e| fail(at, e))?;
        done += n;
    }
    Ok(())
}
