//! SBC-4 block commands.

pub mod atomic;
pub mod caw;
pub mod defect;
pub mod lbastatus;
pub mod orwrite;
pub mod prefetch;
pub mod rw;
pub mod sanitize;
pub mod unmap;
pub mod verify;
pub mod writesame;

use super::cdb::{CmdResult, Ctx};
use super::data::{be, byte, data_in};
use super::sense::{Sense, SenseReason};
use super::{LogicalUnit, ScsiCommand, ScsiResult};

/// Largest single transfer we accept (reported in the Block Limits VPD
/// page). Bounds the buffer one command can make us allocate.
pub mod limits;

pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;

/// The Data-Out a command that writes or compares blocks acts on: the
/// first min(arrived, CDB length) bytes. A GOOD status must mean all of
/// them are where the initiator was told they are, so they must be whole
/// blocks: with a torn one (EDTL 200 for a 512-byte block, or one block
/// and a half) the answer is `Err` — CHECK CONDITION, ILLEGAL REQUEST,
/// INVALID FIELD IN COMMAND INFORMATION UNIT (FCP-4 option b, which
/// libiscsi's residual tests accept), nothing written. Whole blocks short
/// of the CDB's length are used as far as they go and GOOD (FCP-4 option
/// a, what libiscsi 1.19 checks); the overflow residual tells the
/// initiator how much was not. Either way SPDTL is the CDB's `needed`.
pub(crate) fn arrived<'a>(
    lu: &LogicalUnit,
    data_out: &'a [u8],
    needed: u64,
) -> Result<&'a [u8], ScsiResult> {
    let have = (data_out.len() as u64).min(needed);
    if !have.is_multiple_of(lu.block_bytes().max(1)) {
        return Err(refuse_short(needed));
    }
    Ok(&data_out[..have as usize])
}

/// The refusal of a command whose Data-Out cannot be used as sent: 0Eh/03h
/// with SPDTL `needed`, so the residual still reflects the CDB.
pub(crate) fn refuse_short(needed: u64) -> ScsiResult {
    let sense = Sense::new(SenseReason::InvalidFieldInInformationUnit);
    ScsiResult::check_condition(sense, needed as u32)
}

pub fn max_transfer_blocks(lu: &LogicalUnit) -> u64 {
    MAX_TRANSFER_BYTES / lu.block_size.max(1) as u64
}

/// Check `[lba, lba + blocks)` against the capacity without overflow. An
/// LBA past the last block is out of range even for a zero-length request.
pub fn check_range(lu: &LogicalUnit, lba: u64, blocks: u64) -> Result<(), Sense> {
    let cap = lu.num_blocks();
    match lba.checked_add(blocks) {
        Some(end) if lba < cap && end <= cap => Ok(()),
        _ => Err(Sense::new(SenseReason::LbaOutOfRange).with_information(lba)),
    }
}

/// READ CAPACITY(10): the last LBA, or FFFFFFFFh when it does not fit.
pub fn read_capacity10(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let pmi = byte(cmd.cdb, 8) & 0x01 != 0;
    if !pmi && be(cmd.cdb, 2, 4) != 0 {
        // SBC-3: LOGICAL BLOCK ADDRESS must be zero when PMI is zero.
        return Err(Sense::invalid_cdb_field(2, None));
    }
    let last = lu.num_blocks().saturating_sub(1);
    let mut d = u32::try_from(last)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    d.extend_from_slice(&lu.block_size.to_be_bytes());
    Ok(data_in(cmd, d, 8))
}

/// READ CAPACITY(16): no protection; thin provisioned (LBPME 1) with
/// unmapped blocks reading zeros (LBPRZ 1: file holes and freed memory
/// chunks both do); 4 KiB physical blocks.
pub fn read_capacity16(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let alloc = be(cmd.cdb, 10, 4);
    let pmi = byte(cmd.cdb, 14) & 0x01 != 0;
    if !pmi && be(cmd.cdb, 2, 8) != 0 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.num_blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&lu.block_size.to_be_bytes());
    d[13] = limits::lbppbe(lu.block_size);
    d[14] = 0x80 | 0x40; // LBPME, LBPRZ; lowest aligned LBA 0
    Ok(data_in(cmd, d, alloc))
}

/// SYNCHRONIZE CACHE(10)/(16): flush the whole backend (a range flush
/// would be no cheaper with fdatasync). IMMED is honoured by simply
/// completing after the flush, which is allowed.
pub fn synchronize_cache(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = if byte(cmd.cdb, 0) == 0x35 {
        (be(cmd.cdb, 2, 4), be(cmd.cdb, 7, 2))
    } else {
        (be(cmd.cdb, 2, 8), be(cmd.cdb, 10, 4))
    };
    // NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
    check_range(lu, lba, blocks)?;
    super::io_fault::synchronize(lu)?;
    Ok(ScsiResult::good(Vec::new(), 0))
}
