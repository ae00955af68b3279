//! START STOP UNIT (SBC-4 §5.25) and PREVENT ALLOW MEDIUM REMOVAL (SBC-4
//! §5.13) for a disk whose medium is not removable (INQUIRY RMB 0) and
//! that has no power states: the requests are checked and then have
//! nothing to do.

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::byte;
use crate::scsi::sense::Sense;
use crate::scsi::{ScsiCommand, ScsiResult};

/// POWER CONDITION values SBC-4 defines: START_VALID, ACTIVE, IDLE,
/// STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0.
const POWER_CONDITIONS: [u8; 7] = [0x0, 0x1, 0x2, 0x3, 0x7, 0xa, 0xb];

pub fn start_stop_unit(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    ctx.lu()?;
    let b4 = byte(cmd.cdb, 4);
    let pc = b4 >> 4;
    let modifier = byte(cmd.cdb, 3) & 0x0f;
    if !POWER_CONDITIONS.contains(&pc) {
        return Err(Sense::invalid_cdb_field(4, Some(7)));
    }
    // Modifiers exist for IDLE (a..c) and STANDBY (y) only.
    let max_modifier = match pc {
        0x2 => 3,
        0x3 => 1,
        _ => 0,
    };
    if modifier > max_modifier {
        return Err(Sense::invalid_cdb_field(3, Some(3)));
    }
    if pc == 0 && b4 & 0x02 != 0 {
        // LOEJ: there is no medium to load or eject.
        return Err(Sense::invalid_cdb_field(4, Some(1)));
    }
    // START/STOP and the power conditions: the unit is always active and
    // ready, so every accepted request is already satisfied.
    Ok(ScsiResult::good(Vec::new(), 0))
}

pub fn prevent_allow(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    ctx.lu()?;
    // PREVENT 00b allow, 01b prevent; 1xb are obsolete (medium changers).
    if byte(cmd.cdb, 4) & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(4, Some(1)));
    }
    // Nothing can be removed, so preventing removal holds trivially.
    Ok(ScsiResult::good(Vec::new(), 0))
}
