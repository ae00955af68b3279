//! GET LBA STATUS (SBC-4 §5.7): which blocks are mapped and which are
//! deallocated, from the backend's allocation map.

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, data_in};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand};

const HEADER: u64 = 8;
const DESCRIPTOR: u64 = 16;
/// Bound on the work one command can ask for, whatever its allocation
/// length.
const MAX_DESCRIPTORS: u64 = 4096;

const MAPPED: u8 = 0x0;
const DEALLOCATED: u8 = 0x1;

/// A run of blocks in one provisioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRun {
    pub lba: u64,
    pub blocks: u64,
    pub mapped: bool,
}

pub fn get_lba_status(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let start = be(cmd.cdb, 2, 8);
    let alloc = be(cmd.cdb, 10, 4);
    if start >= lu.num_blocks() {
        return Err(Sense::new(SenseReason::LbaOutOfRange).with_information(start));
    }
    // At least one descriptor is built even for a tiny allocation length:
    // the truncated answer still carries the right header.
    let wanted = (alloc.saturating_sub(HEADER) / DESCRIPTOR).clamp(1, MAX_DESCRIPTORS);
    let runs = block_runs(lu, start, wanted as usize)?;
    let mut d = vec![0u8; HEADER as usize];
    for r in &runs {
        d.extend_from_slice(&r.lba.to_be_bytes());
        // blocks_runs keeps every run within 32 bits.
        d.extend_from_slice(&(r.blocks as u32).to_be_bytes());
        d.push(if r.mapped { MAPPED } else { DEALLOCATED });
        d.extend_from_slice(&[0, 0, 0]);
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(data_in(cmd, d, alloc))
}

/// Up to `max` runs from `start` on. A block is deallocated only when the
/// backend reports all its bytes unallocated; each run is at most
/// u32::MAX blocks (the descriptor's field).
pub fn block_runs(lu: &LogicalUnit, start: u64, max: usize) -> Result<Vec<BlockRun>, Sense> {
    let bs = lu.block_bytes();
    let offset = start * bs;
    let len = (lu.num_blocks() - start) * bs;
    // Sub-block runs vanish when converted, so ask for a few more.
    let byte_runs = lu
        .backend
        .allocation(offset, len, max.saturating_mul(2).saturating_add(2))
        .map_err(|e| crate::scsi::io_fault::read_failure(lu, &e, start))?;
    let mut out = Vec::new();
    let mut pos = offset;
    let mut cursor = start;
    for (n, mapped) in byte_runs {
        let (a, b) = (pos, pos.saturating_add(n).min(offset + len));
        pos = b;
        if mapped {
            continue;
        }
        let (first, end) = (a.div_ceil(bs), b / bs);
        if end > first {
            push(&mut out, cursor, first - cursor, true);
            push(&mut out, first, end - first, false);
            cursor = end;
        }
    }
    let end = pos / bs;
    if end > cursor {
        push(&mut out, cursor, end - cursor, true);
    }
    if out.is_empty() {
        // The map covered less than one block: a block holding any data
        // is mapped.
        push(&mut out, start, 1, true);
    }
    out.truncate(max);
    Ok(out)
}

fn push(out: &mut Vec<BlockRun>, lba: u64, blocks: u64, mapped: bool) {
    let (mut lba, mut blocks) = (lba, blocks);
    while blocks > 0 {
        match out.last_mut() {
            Some(last) if last.mapped == mapped && last.blocks < u64::from(u32::MAX) => {
                let n = blocks.min(u64::from(u32::MAX) - last.blocks);
                last.blocks += n;
                lba += n;
                blocks -= n;
            }
            _ => {
                let n = blocks.min(u64::from(u32::MAX));
                out.push(BlockRun {
                    lba,
                    blocks: n,
                    mapped,
                });
                lba += n;
                blocks -= n;
            }
        }
    }
}
