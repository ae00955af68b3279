//! VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16), plus the medium
//! helpers the data-comparing commands share (range read, compare, the
//! MISCOMPARE sense, a guarded write).

use super::{check_range, max_transfer_blocks};
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::io_fault;
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

/// Reads of a long medium verification go in pieces of this many bytes,
/// so a VERIFY of the whole LUN never allocates the whole LUN.
const CHUNK_BYTES: u64 = 1 << 20;

/// LBA, block count and the offset of the length field, for the 10-, 12-
/// and 16-byte layouts shared by VERIFY, WRITE AND VERIFY and PRE-FETCH.
pub(super) fn lba_and_len(cdb: &[u8]) -> (u64, u64, usize) {
    match byte(cdb, 0) >> 5 {
        1 => (be(cdb, 2, 4), be(cdb, 7, 2), 7),
        5 => (be(cdb, 2, 4), be(cdb, 6, 4), 6),
        _ => (be(cdb, 2, 8), be(cdb, 10, 4), 10),
    }
}

/// Read `blocks` blocks at `lba` into one buffer (callers bound `blocks`).
pub(super) fn read_blocks(lu: &LogicalUnit, lba: u64, blocks: u64) -> Result<Vec<u8>, Sense> {
    let mut buf = vec![0u8; (blocks * lu.block_bytes()) as usize];
    lu.backend
        .read_at(lba * lu.block_bytes(), &mut buf)
        .map_err(|e| io_fault::read_failure_in(lu, &e, lba, blocks))?;
    Ok(buf)
}

/// Write whole blocks at `lba`, stamping changed-block tracking first. The
/// caller holds the LUN's write-order lock.
pub(super) fn write_blocks(
    lu: &LogicalUnit,
    lba: u64,
    data: &[u8],
    fua: bool,
) -> Result<(), Sense> {
    let blocks = data.len() as u64 / lu.block_bytes().max(1);
    if fua {
        io_fault::check_sync_intact(lu, Some(lba))?;
    }
    let _change = lu.begin_change(lba, blocks, ChangeKind::Write)?;
    lu.backend
        .write_at(lba * lu.block_bytes(), data, fua)
        .map_err(|e| io_fault::write_failure(lu, &e, lba, fua))
}

/// Offset of the first byte where `a` and `b` differ.
pub(super) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// MISCOMPARE DURING VERIFY OPERATION; INFORMATION is the offset of the
/// first differing byte (SBC-4 §5.3, §5.31).
pub(super) fn miscompare(offset: u64) -> Sense {
    Sense::new(SenseReason::Miscompare).with_information(offset)
}

/// BYTCHK (byte 1, bits 2:1).
fn bytchk(cdb: &[u8]) -> u8 {
    (byte(cdb, 1) >> 1) & 0x03
}

/// Check the range and, when the command carries that much data, the
/// transfer limit. Returns the LUN.
fn prepare<'a>(
    ctx: &'a Ctx,
    lba: u64,
    blocks: u64,
    len_at: usize,
    data: bool,
) -> Result<&'a LogicalUnit, Sense> {
    let lu = ctx.lu()?;
    check_range(lu, lba, blocks)?;
    if data && blocks > max_transfer_blocks(lu) {
        return Err(Sense::invalid_cdb_field(len_at, None));
    }
    Ok(lu)
}

/// For a command whose Data-Out is the blocks to write: the LUN and the
/// byte count the CDB asks for, after the range and transfer checks.
pub(super) fn write_range<'a>(
    ctx: &'a Ctx,
    lba: u64,
    blocks: u64,
    len_at: usize,
) -> Result<(&'a LogicalUnit, u64), Sense> {
    let lu = prepare(ctx, lba, blocks, len_at, true)?;
    Ok((lu, blocks * lu.block_bytes()))
}

/// VERIFY: BYTCHK 00b reads the range (medium verification), 01b compares
/// the Data-Out with it, 11b compares one Data-Out block with every block
/// of the range; 10b is reserved. VRPROTECT is not in the usage mask (no
/// protection information), DPO is accepted and means nothing here.
pub fn verify(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let (lba, blocks, len_at) = lba_and_len(cmd.cdb);
    let mode = bytchk(cmd.cdb);
    if mode == 0b10 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    let lu = prepare(ctx, lba, blocks, len_at, mode == 0b01)?;
    if blocks == 0 {
        return Ok(ScsiResult::good(Vec::new(), 0));
    }
    let bs = lu.block_bytes();
    match mode {
        0b00 => {
            medium_check(lu, lba, blocks)?;
            Ok(ScsiResult::good(Vec::new(), 0))
        }
        0b01 => {
            let needed = blocks * bs;
            let data = match super::arrived(lu, cmd.data_out, needed) {
                Ok(d) => d,
                Err(refused) => return Ok(refused),
            };
            let medium = read_blocks(lu, lba, data.len() as u64 / bs)?;
            if let Some(at) = first_difference(data, &medium) {
                return Err(miscompare(at as u64));
            }
            Ok(ScsiResult::good(Vec::new(), needed as u32))
        }
        _ => {
            // The one block every block is compared with must be there.
            let one = match super::arrived(lu, cmd.data_out, bs) {
                Ok(d) if !d.is_empty() => d,
                _ => return Ok(super::refuse_short(bs)),
            };
            compare_each_block(lu, lba, blocks, one)?;
            Ok(ScsiResult::good(Vec::new(), bs as u32))
        }
    }
}

/// Ranges of at most [`CHUNK_BYTES`] covering `[lba, lba + blocks)`.
fn chunks(lu: &LogicalUnit, lba: u64, blocks: u64) -> impl Iterator<Item = (u64, u64)> {
    let step = (CHUNK_BYTES / lu.block_bytes().max(1)).max(1);
    let end = lba + blocks;
    (lba..end)
        .step_by(step as usize)
        .map(move |at| (at, step.min(end - at)))
}

/// Read the whole range; an unreadable block is the error.
fn medium_check(lu: &LogicalUnit, lba: u64, blocks: u64) -> Result<(), Sense> {
    for (at, n) in chunks(lu, lba, blocks) {
        read_blocks(lu, at, n)?;
    }
    Ok(())
}

/// BYTCHK 11b. INFORMATION is the offset into the verified range (block
/// index × block size + byte), as if the one block had been sent for
/// every block.
fn compare_each_block(lu: &LogicalUnit, lba: u64, blocks: u64, one: &[u8]) -> Result<(), Sense> {
    let bs = lu.block_bytes();
    for (at, n) in chunks(lu, lba, blocks) {
        let medium = read_blocks(lu, at, n)?;
        for (i, block) in medium.chunks(bs as usize).enumerate() {
            if let Some(b) = first_difference(one, block) {
                let index = at - lba + i as u64;
                return Err(miscompare(index * bs + b as u64));
            }
        }
    }
    Ok(())
}

/// WRITE AND VERIFY: write the Data-Out, then read it back and compare.
/// BYTCHK 01b asks for the compare; for 00b (medium verification) the
/// read is the verification, and comparing too costs nothing. Short
/// Data-Out is handled exactly like WRITE's (`super::arrived`). The write-order lock is held
/// exclusive from the write to the compare so a concurrent write to the
/// same blocks cannot produce a false MISCOMPARE.
pub fn write_and_verify(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let (lba, blocks, len_at) = lba_and_len(cmd.cdb);
    if bytchk(cmd.cdb) > 0b01 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    let (lu, needed) = write_range(ctx, lba, blocks, len_at)?;
    let data = match super::arrived(lu, cmd.data_out, needed) {
        Ok(d) => d,
        Err(refused) => return Ok(refused),
    };
    if data.is_empty() {
        return Ok(ScsiResult::good(Vec::new(), needed as u32));
    }
    let _order = lu.order_exclusive();
    // The verification is of the medium: the data must be on it first.
    write_blocks(lu, lba, data, true)?;
    let back = read_blocks(lu, lba, data.len() as u64 / lu.block_bytes())?;
    if let Some(at) = first_difference(data, &back) {
        return Err(miscompare(at as u64));
    }
    Ok(ScsiResult::good(Vec::new(), needed as u32))
}
