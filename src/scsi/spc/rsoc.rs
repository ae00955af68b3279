//! REPORT SUPPORTED OPERATION CODES (SPC-5 §6.35), generated from the
//! command table.

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, CommandDesc, Ctx, TABLE, has_service_actions};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::Sense;
use crate::scsi::vendor::cbt;

/// SUPPORT field values for the one-command format.
const NOT_SUPPORTED: u8 = 0x01;
const SUPPORTED: u8 = 0x03;

pub fn report_supported_opcodes(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let rctd = byte(cmd.cdb, 2) & 0x80 != 0;
    let options = byte(cmd.cdb, 2) & 0x07;
    let opcode = byte(cmd.cdb, 3);
    let sa = be(cmd.cdb, 4, 2) as u16;
    let alloc = be(cmd.cdb, 6, 4);
    let data = match options {
        0 => all_commands(ctx, rctd),
        // One opcode that must not have service actions.
        1 if has_service_actions(opcode) => return Err(Sense::invalid_cdb_field(2, Some(2))),
        1 => one_command(find(ctx, opcode, None), rctd),
        // Opcode plus service action; the opcode must have service actions.
        2 if !has_service_actions(opcode) && known(opcode) => {
            return Err(Sense::invalid_cdb_field(2, Some(2)));
        }
        2 => one_command(find(ctx, opcode, Some(sa)), rctd),
        // SPC-5: opcode, with the service action when it has them.
        3 => {
            let sa = has_service_actions(opcode).then_some(sa);
            one_command(find(ctx, opcode, sa), rctd)
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    };
    Ok(data_in(cmd, data, alloc))
}

fn known(opcode: u8) -> bool {
    TABLE.iter().any(|d| d.opcode == opcode)
}

/// Only the commands this LUN offers (CBT's C0h needs tracking on).
fn rows<'a>(ctx: &'a Ctx) -> impl Iterator<Item = &'static CommandDesc> + 'a {
    TABLE
        .iter()
        .filter(|d| cbt::listed(ctx.lu, d.opcode, d.service_action))
}

fn find(ctx: &Ctx, opcode: u8, sa: Option<u16>) -> Option<&'static CommandDesc> {
    rows(ctx).find(|d| d.opcode == opcode && d.service_action == sa)
}

/// Command timeouts descriptor: length 0Ah, timeouts not specified (0).
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t
}

fn all_commands(ctx: &Ctx, rctd: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for d in rows(ctx) {
        body.push(d.opcode);
        body.push(0);
        body.extend_from_slice(&d.service_action.unwrap_or(0).to_be_bytes());
        body.push(0);
        let mut flags = 0;
        if rctd {
            flags |= 0x02; // CTDP
        }
        if d.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        body.push(flags);
        body.extend_from_slice(&(d.cdb_len as u16).to_be_bytes());
        if rctd {
            body.extend_from_slice(&timeouts());
        }
    }
    let mut data = (body.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(&body);
    data
}

/// CDB USAGE DATA (SPC-4 6.35.3): the usage mask, except that the
/// SERVICE ACTION field (byte 1, bits 4-0) holds the service action code
/// itself; the mask in the table covers that field with 1Fh, which is what
/// the CDB check needs.
fn usage_data(d: &CommandDesc) -> Vec<u8> {
    let mut u = d.usage_mask[..d.cdb_len].to_vec();
    if let Some(sa) = d.service_action {
        u[1] = (u[1] & !0x1f) | (sa as u8 & 0x1f);
    }
    u
}

fn one_command(desc: Option<&CommandDesc>, rctd: bool) -> Vec<u8> {
    let Some(d) = desc else {
        return vec![0, NOT_SUPPORTED, 0, 0];
    };
    let mut data = vec![0, SUPPORTED | if rctd { 0x80 } else { 0 }];
    data.extend_from_slice(&(d.cdb_len as u16).to_be_bytes());
    data.extend_from_slice(&usage_data(d));
    if rctd {
        data.extend_from_slice(&timeouts());
    }
    data
}
