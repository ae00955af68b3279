//! MODE SELECT(6)/(10) (SPC-5 §6.11, §6.12): the pages MODE SENSE reports,
//! in page format, with only the changeable bits (see mode.rs) altered.
//! Nothing can be saved. A change raises MODE PARAMETERS CHANGED for the
//! other I_T nexuses (SPC-5 §5.14).

use super::mode::{self, CACHING, CONTROL, ModeValues};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

pub fn mode_select6(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    select(ctx, cmd, false, be(cmd.cdb, 4, 1) as usize)
}

pub fn mode_select10(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    select(ctx, cmd, true, be(cmd.cdb, 7, 2) as usize)
}

fn select(ctx: &Ctx, cmd: &ScsiCommand, ten: bool, len: usize) -> CmdResult {
    let lu = ctx.lu()?;
    let b1 = byte(cmd.cdb, 1);
    if b1 & 0x10 == 0 {
        // PF 0: vendor-specific parameter format, which we do not have.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    if b1 & 0x01 != 0 {
        // SP 1: no page is saveable.
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    if len == 0 {
        return Ok(ScsiResult::good(Vec::new(), 0));
    }
    let Some(list) = cmd.data_out.get(..len) else {
        return Err(SenseReason::ParameterListLengthError.into());
    };
    let pages_at = header(lu, list, ten)?;
    let changed = {
        let mut cur = lu.mode.lock().unwrap_or_else(|e| e.into_inner());
        let new = apply_pages(list, pages_at, *cur)?;
        let changed = new != *cur;
        *cur = new;
        changed
    };
    if changed {
        ctx.server
            .ua
            .establish_others(cmd.lun, SenseReason::ModeParametersChanged, ctx.nexus.id);
    }
    Ok(ScsiResult::good(Vec::new(), len as u32))
}

/// Check the mode parameter header and block descriptor; returns the
/// offset of the first page.
fn header(lu: &LogicalUnit, list: &[u8], ten: bool) -> Result<usize, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if list.len() < hdr {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let medium_at = if ten { 2 } else { 1 };
    if byte(list, medium_at) != 0 {
        return Err(Sense::invalid_param_field(medium_at, None));
    }
    // MODE DATA LENGTH is reserved and the device-specific parameter's WP
    // and DPOFUA are ignored in MODE SELECT (SBC-4 §6.5.1).
    let (bd_len, long) = if ten {
        (be(list, 6, 2) as usize, byte(list, 4) & 0x01 != 0)
    } else {
        (byte(list, 3) as usize, false)
    };
    let want = match (bd_len, long) {
        (0, _) => return Ok(hdr),
        (8, false) => 8,
        (16, true) => 16,
        _ => return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }, None)),
    };
    if list.len() < hdr + want {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    block_descriptor(lu, &list[hdr..hdr + want], hdr)?;
    Ok(hdr + want)
}

/// The block descriptor may only restate the geometry: capacity and block
/// length cannot be changed here (NUMBER OF BLOCKS 0 means "unchanged").
fn block_descriptor(lu: &LogicalUnit, bd: &[u8], at: usize) -> Result<(), Sense> {
    let (blocks, blocks_len, len_at) = if bd.len() == 16 {
        (be(bd, 0, 8), 8, 12)
    } else {
        (be(bd, 0, 4), 4, 5)
    };
    let cap = lu.num_blocks();
    let cap_field = if blocks_len == 4 {
        cap.min(u32::MAX as u64)
    } else {
        cap
    };
    if blocks != 0 && blocks != cap_field {
        return Err(Sense::invalid_param_field(at, None));
    }
    if bd.len() == 8 && byte(bd, 4) != 0 {
        return Err(Sense::invalid_param_field(at + 4, None)); // density code
    }
    if be(bd, len_at, 3) != u64::from(lu.block_size) {
        return Err(Sense::invalid_param_field(at + len_at, None));
    }
    Ok(())
}

/// Walk the pages and return the mode values they ask for; any bit that
/// differs from the current page outside the changeable mask is refused.
fn apply_pages(list: &[u8], mut at: usize, cur: ModeValues) -> Result<ModeValues, Sense> {
    let mut new = cur;
    while at < list.len() {
        let b0 = byte(list, at);
        if b0 & 0xc0 != 0 {
            // PS is reserved in MODE SELECT; SPF: we have no subpages.
            return Err(Sense::invalid_param_field(
                at,
                Some(if b0 & 0x80 != 0 { 7 } else { 6 }),
            ));
        }
        let code = b0 & 0x3f;
        if !mode::PAGES.contains(&code) {
            return Err(Sense::invalid_param_field(at, None));
        }
        let current = mode::page(code, &cur);
        if byte(list, at + 1) as usize != current.len() - 2 {
            return Err(Sense::invalid_param_field(at + 1, None));
        }
        let Some(page) = list.get(at..at + current.len()) else {
            return Err(SenseReason::ParameterListLengthError.into());
        };
        let mask = mode::changeable(code);
        for i in 2..current.len() {
            let bad = (page[i] ^ current[i]) & !mask[i];
            if bad != 0 {
                let bit = 7 - bad.leading_zeros() as u8;
                return Err(Sense::invalid_param_field(at + i, Some(bit)));
            }
        }
        match code {
            CACHING => new.wce = page[2] & 0x04 != 0,
            CONTROL => {
                new.d_sense = page[2] & 0x04 != 0;
                new.swp = page[4] & 0x08 != 0;
            }
            _ => {}
        }
        at += current.len();
    }
    Ok(new)
}
