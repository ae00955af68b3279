//! READ and WRITE (6/10/12/16).

use super::{check_range, max_transfer_blocks};
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::io_fault;
use crate::scsi::sense::Sense;
use crate::scsi::{ScsiCommand, ScsiResult};

/// The fields READ and WRITE share, decoded from any CDB size.
pub(crate) struct Rw {
    pub(crate) lba: u64,
    pub(crate) blocks: u64,
    fua: bool,
    /// Offset of TRANSFER LENGTH in the CDB (for the sense field pointer).
    len_at: usize,
}

pub(crate) fn parse(cdb: &[u8]) -> Rw {
    let fua = byte(cdb, 1) & 0x08 != 0;
    match byte(cdb, 0) {
        // 6-byte: 21-bit LBA, no flags, TRANSFER LENGTH 0 means 256.
        0x08 | 0x0a => Rw {
            lba: be(cdb, 1, 3) & 0x1f_ffff,
            blocks: match byte(cdb, 4) {
                0 => 256,
                n => n as u64,
            },
            fua: false,
            len_at: 4,
        },
        0x28 | 0x2a => Rw {
            lba: be(cdb, 2, 4),
            blocks: be(cdb, 7, 2),
            fua,
            len_at: 7,
        },
        0xa8 | 0xaa => Rw {
            lba: be(cdb, 2, 4),
            blocks: be(cdb, 6, 4),
            fua,
            len_at: 6,
        },
        _ => Rw {
            lba: be(cdb, 2, 8),
            blocks: be(cdb, 10, 4),
            fua,
            len_at: 10,
        },
    }
}

/// Validate the range and the transfer size; `Ok(None)` for a zero-length
/// transfer (nothing to do), else the byte offset and byte count.
fn prepare(ctx: &Ctx, rw: &Rw) -> Result<Option<(u64, u64)>, Sense> {
    let lu = ctx.lu()?;
    check_range(lu, rw.lba, rw.blocks)?;
    if rw.blocks == 0 {
        return Ok(None);
    }
    if rw.blocks > max_transfer_blocks(lu) {
        return Err(Sense::invalid_cdb_field(rw.len_at, None));
    }
    // Both products are bounded by the capacity in bytes: no overflow.
    Ok(Some((
        rw.lba * lu.block_bytes(),
        rw.blocks * lu.block_bytes(),
    )))
}

/// Reads produce at most the initiator's expected length (it may ask for
/// 1 GiB with EDTL 0); the transfer length is still the CDB's, so the
/// transport reports the overflow residual.
pub fn read(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let rw = parse(cmd.cdb);
    let Some((offset, needed)) = prepare(ctx, &rw)? else {
        return Ok(ScsiResult::good(Vec::new(), 0));
    };
    let lu = ctx.lu()?;
    let produce = needed.min(cmd.expected_len as u64) as usize;
    // Recycled: read_at overwrites all of it or fails (and it is dropped).
    let mut buf = crate::buffers::take(produce);
    // Shared with ordinary writes, excluded by COMPARE AND WRITE and the
    // other atomic writers: a read never sees one of them half done.
    let _order = lu.order_shared();
    lu.backend.read_at(offset, &mut buf).map_err(|e| {
        let blocks = (buf.len() as u64).div_ceil(lu.block_bytes());
        io_fault::read_failure_in(lu, &e, rw.lba, blocks)
    })?;
    Ok(ScsiResult::good(buf, needed as u32))
}

/// Writes use the bytes the CDB describes; extra bytes are ignored. With
/// fewer (EDTL below the transfer length) see [`super::arrived`]: whole
/// blocks are written and GOOD, a torn one refuses the command.
pub fn write(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let rw = parse(cmd.cdb);
    let Some((offset, needed)) = prepare(ctx, &rw)? else {
        return Ok(ScsiResult::good(Vec::new(), 0));
    };
    let lu = ctx.lu()?;
    let bs = u64::from(lu.block_size);
    let data = match super::arrived(lu, cmd.data_out, needed) {
        Ok(d) => d,
        Err(refused) => return Ok(refused),
    };
    let have = data.len() as u64;
    if data.is_empty() {
        return Ok(ScsiResult::good(Vec::new(), needed as u32));
    }
    let _change = lu.change_shared(rw.lba, have / bs, ChangeKind::Write)?;
    // WCE 0 (caching mode page): every write is write-through.
    let fua = rw.fua || !crate::scsi::spc::mode::write_cache_enabled(lu);
    if fua {
        io_fault::check_sync_intact(lu, Some(rw.lba))?;
    }
    lu.backend
        .write_at(offset, data, fua)
        .map_err(|e| io_fault::write_failure(lu, &e, rw.lba, fua))?;
    Ok(ScsiResult::good(Vec::new(), needed as u32))
}
