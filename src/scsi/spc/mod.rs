//! SPC-5 primary commands shared by every device type.

pub mod copy_results;
pub mod inquiry;
pub mod log;
pub mod mode;
pub mod modeselect;
pub mod rsoc;
pub mod rtpg;
pub mod startstop;
pub mod xcopy;

use super::cdb::{CmdResult, Ctx};
use super::data::{be, byte, data_in};
use super::lun::encode_lun;
use super::sense::{Sense, SenseReason};
use super::{ScsiCommand, ScsiResult};

/// TEST UNIT READY: the LUN exists and has no pending unit attention (both
/// checked by the server), and the medium is always present.
pub fn test_unit_ready(_ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    Ok(ScsiResult::good(Vec::new(), 0))
}

/// REQUEST SENSE: report (and clear) the oldest pending unit attention as
/// parameter data, else NO SENSE. For a LUN that does not exist the data
/// says LOGICAL UNIT NOT SUPPORTED (SPC-5 §6.39), still with GOOD status.
pub fn request_sense(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let descriptor = byte(cmd.cdb, 1) & 0x01 != 0;
    let alloc = byte(cmd.cdb, 4) as u64;
    let sense = match ctx.lu {
        None => Sense::new(SenseReason::LunNotSupported),
        Some(_) => ctx
            .server
            .take_unit_attention(ctx.nexus, cmd.lun)
            .unwrap_or(Sense::new(SenseReason::NoSense)),
    };
    let data = if descriptor {
        sense.to_descriptor()
    } else {
        sense.to_fixed()
    };
    Ok(data_in(cmd, data, alloc))
}

/// REPORT LUNS (SPC-5 §6.33).
pub fn report_luns(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let select = byte(cmd.cdb, 2);
    let alloc = be(cmd.cdb, 6, 4);
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    let luns: Vec<u64> = match select {
        // All logical units / all including well-known ones (we have none).
        0x00 | 0x02 => ctx.server.visible_luns(ctx.nexus),
        // Well-known logical units only.
        0x01 => Vec::new(),
        _ => return Err(Sense::invalid_cdb_field(2, Some(7))),
    };
    let mut data = Vec::with_capacity(8 + 8 * luns.len());
    data.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for lun in luns {
        data.extend_from_slice(&encode_lun(lun));
    }
    Ok(data_in(cmd, data, alloc))
}
