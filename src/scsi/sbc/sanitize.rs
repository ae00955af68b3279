//! SANITIZE (SBC-4 §5.30): OVERWRITE, BLOCK ERASE and CRYPTOGRAPHIC ERASE
//! over the whole medium. EXIT FAILURE MODE (no persistent failure mode)
//! has no table row, so it is refused with INVALID FIELD IN CDB and REPORT
//! SUPPORTED OPERATION CODES does not list it.
//!
//! CRYPTOGRAPHIC ERASE: the medium is not encrypted, so there is no key to
//! change. What the command promises the initiator is that the previous
//! data can no longer be read back; we keep that promise by deallocating
//! every block, exactly as BLOCK ERASE does (reads return zeros, LBPRZ;
//! the backend punches holes or zero-fills). It is no stronger than that:
//! a file backend's old data may survive on the host's physical storage
//! (README, "Current limits").

use super::writesame::write_pattern;
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const OVERWRITE: u8 = 0x01;
pub const BLOCK_ERASE: u8 = 0x02;
pub const CRYPTO_ERASE: u8 = 0x03;

/// A validated sanitize operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Overwrite {
        /// One logical block of the initialization pattern.
        block: Vec<u8>,
        passes: u8,
        invert: bool,
    },
    BlockErase,
    /// Carried out as a BLOCK ERASE (see the module comment).
    CryptoErase,
}

pub fn sanitize(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let immed = byte(cmd.cdb, 1) & 0x80 != 0;
    let param_len = be(cmd.cdb, 7, 2) as usize;
    let op = match byte(cmd.cdb, 1) & 0x1f {
        OVERWRITE => parse_overwrite(lu, cmd.data_out, param_len)?,
        BLOCK_ERASE if param_len != 0 => return Err(Sense::invalid_cdb_field(7, None)),
        BLOCK_ERASE => Op::BlockErase,
        CRYPTO_ERASE if param_len != 0 => return Err(Sense::invalid_cdb_field(7, None)),
        CRYPTO_ERASE => Op::CryptoErase,
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    let busy = Busy::claim(&lu.sanitizing)?;
    let done = ScsiResult::good(Vec::new(), param_len as u32);
    if !immed {
        run(lu, &op)?;
        drop(busy);
        return Ok(done);
    }
    // IMMED: answer now, sanitize in the background; the flag keeps every
    // other command out until it is done.
    let Some(owned) = ctx.server.luns.get(&cmd.lun).cloned() else {
        return Err(SenseReason::LunNotSupported.into());
    };
    std::mem::forget(busy);
    std::thread::spawn(move || {
        let _busy = OwnedBusy(owned.clone());
        if let Err(s) = run(&owned, &op) {
            tracing::error!(reason = ?s.reason, "background sanitize failed");
        }
    });
    Ok(done)
}

/// The OVERWRITE parameter list (SBC-4 table 105).
pub fn parse_overwrite(lu: &LogicalUnit, data: &[u8], param_len: usize) -> Result<Op, Sense> {
    let bs = lu.block_bytes() as usize;
    if param_len < 5 || param_len > bs + 4 {
        return Err(Sense::invalid_cdb_field(7, None));
    }
    let p = data
        .get(..param_len)
        .ok_or(Sense::new(SenseReason::ParameterListLengthError))?;
    let invert = p[0] & 0x80 != 0;
    if p[0] & 0x60 != 0 {
        // TEST: no test modes.
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let passes = p[0] & 0x1f;
    if passes == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    let pattern_len = be(p, 2, 2) as usize;
    if pattern_len == 0 || pattern_len != param_len - 4 {
        return Err(Sense::invalid_param_field(2, None));
    }
    // A pattern shorter than a block repeats to fill it.
    let block = p[4..].iter().copied().cycle().take(bs).collect();
    Ok(Op::Overwrite {
        block,
        passes,
        invert,
    })
}

/// Sanitize the whole medium. Changed-block tracking sees one change over
/// every block.
pub fn run(lu: &LogicalUnit, op: &Op) -> Result<(), Sense> {
    let blocks = lu.num_blocks();
    let bytes = blocks * lu.block_bytes();
    let failed = |e: std::io::Error| {
        tracing::warn!(backend = %lu.backend.describe(), error = %e, "sanitize failed");
        Sense::new(SenseReason::SanitizeFailed)
    };
    match op {
        // No key to destroy: deallocating every block makes the old data
        // unreadable through this target, which is the erase's contract.
        Op::BlockErase | Op::CryptoErase => {
            let _change = lu.change_shared(0, blocks, ChangeKind::Unmap)?;
            lu.backend.unmap(0, bytes).map_err(failed)
        }
        Op::Overwrite {
            block,
            passes,
            invert,
        } => {
            let inverted: Vec<u8> = block.iter().map(|b| !b).collect();
            let last = pass_pattern(block, &inverted, *passes - 1, *invert);
            let kind = if last.iter().all(|&b| b == 0) {
                ChangeKind::Unmap
            } else {
                ChangeKind::Write
            };
            let _change = lu.change_shared(0, blocks, kind)?;
            for pass in 0..*passes {
                let p = pass_pattern(block, &inverted, pass, *invert);
                if p.iter().all(|&b| b == 0) {
                    // Fast for any size: a hole reads as the pattern.
                    lu.backend.write_zeroes(0, bytes).map_err(failed)?;
                } else {
                    write_pattern(lu, 0, blocks, p, &|_, e| failed(e))?;
                }
            }
            Ok(())
        }
    }
}

/// With INVERT the pattern is inverted between consecutive passes.
fn pass_pattern<'a>(block: &'a [u8], inverted: &'a [u8], pass: u8, invert: bool) -> &'a [u8] {
    if invert && pass % 2 == 1 {
        inverted
    } else {
        block
    }
}

/// Holds the LUN's sanitizing flag; only one sanitize at a time.
struct Busy<'a>(&'a AtomicBool);

impl<'a> Busy<'a> {
    fn claim(flag: &'a AtomicBool) -> Result<Busy<'a>, Sense> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Busy(flag))
            .map_err(|_| SenseReason::SanitizeInProgress.into())
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The flag, held by the background thread of an IMMED sanitize.
struct OwnedBusy(Arc<LogicalUnit>);

impl Drop for OwnedBusy {
    fn drop(&mut self) {
        self.0.sanitizing.store(false, Ordering::Release);
    }
}
