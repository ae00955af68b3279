//! LOG SENSE (SPC-5 §6.8): the Supported Log Pages page (00h) and the
//! Logical Block Provisioning page (0Ch, SBC-4 §6.4.6). Only current
//! cumulative values exist (nothing is saved, nothing can be reset).

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::Sense;

const SUPPORTED_PAGES: u8 = 0x00;
const LOGICAL_BLOCK_PROVISIONING: u8 = 0x0c;

/// PAGE CONTROL 01b: current cumulative values (the only kind kept).
const PC_CUMULATIVE: u8 = 0x01;

pub fn log_sense(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let pc = byte(cmd.cdb, 2) >> 6;
    let page = byte(cmd.cdb, 2) & 0x3f;
    let subpage = byte(cmd.cdb, 3);
    let pointer = be(cmd.cdb, 5, 2);
    let alloc = be(cmd.cdb, 7, 2);
    if pc != PC_CUMULATIVE {
        return Err(Sense::invalid_cdb_field(2, Some(6)));
    }
    if subpage != 0 {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let params = match page {
        // No parameters: PARAMETER POINTER must be 0.
        SUPPORTED_PAGES if pointer == 0 => vec![SUPPORTED_PAGES, LOGICAL_BLOCK_PROVISIONING],
        LOGICAL_BLOCK_PROVISIONING => {
            from_pointer(&crate::scsi::space::log_page_params(lu), pointer)
        }
        SUPPORTED_PAGES => return Err(Sense::invalid_cdb_field(5, None)),
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    let mut d = vec![page, 0];
    d.extend_from_slice(&(params.len() as u16).to_be_bytes());
    d.extend_from_slice(&params);
    Ok(data_in(cmd, d, alloc))
}

/// The parameters (code, control, length, value...) whose code is at
/// least `pointer`, in order.
fn from_pointer(params: &[u8], pointer: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= params.len() {
        let len = 4 + params[at + 3] as usize;
        if be(params, at, 2) >= pointer {
            out.extend_from_slice(&params[at..(at + len).min(params.len())]);
        }
        at += len;
    }
    out
}
