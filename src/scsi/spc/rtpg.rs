//! REPORT TARGET PORT GROUPS (MAINTENANCE IN A3h, service action 0Ah;
//! SPC-4 §6.37): every target port group with its state, the states it
//! supports and its relative target port, in the length-only format or
//! with the extended header.

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::Sense;

/// IMPLICIT TRANSITION TIME (extended header): transitions here are
/// immediate, so this is only how long an initiator should wait for one
/// (a group configured "transitioning" stays so until the next reload).
pub const IMPLICIT_TRANSITION_SECS: u8 = 10;

pub fn report_target_port_groups(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let extended = match byte(cmd.cdb, 1) >> 5 {
        0b000 => false,
        0b001 => true,
        _ => return Err(Sense::invalid_cdb_field(1, Some(7))),
    };
    let alloc = be(cmd.cdb, 6, 4);
    let body = ctx.server.port_groups.descriptors();
    let mut data = Vec::with_capacity(8 + body.len());
    data.extend_from_slice(&(body.len() as u32).to_be_bytes());
    if extended {
        // FORMAT TYPE 001b, then the implicit transition time.
        data.extend_from_slice(&[0x10, IMPLICIT_TRANSITION_SECS, 0, 0]);
    }
    data.extend_from_slice(&body);
    Ok(data_in(cmd, data, alloc))
}
