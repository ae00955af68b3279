//! START STOP UNIT (SBC-4 §5.25) and PREVENT ALLOW MEDIUM REMOVAL (SBC-4
//! §5.13). The unit has no power states: it is always active. A LUN
//! configured `removable` (INQUIRY RMB 1) can eject and load its medium
//! with LOEJ, and PREVENT ALLOW tracks prevention per I_T nexus (state in
//! `scsi::removable`); on a fixed disk LOEJ is refused and prevention
//! holds trivially.

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::byte;
use crate::scsi::sense::Sense;
use crate::scsi::{ScsiCommand, ScsiResult};

/// POWER CONDITION values SBC-4 defines: START_VALID, ACTIVE, IDLE,
/// STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0. The others are
/// reserved (or obsolete, 5h) and refused: SPC-5 §4.3.2 requires reserved
/// code values to be reported as errors.
const POWER_CONDITIONS: [u8; 7] = [0x0, 0x1, 0x2, 0x3, 0x7, 0xa, 0xb];

pub fn start_stop_unit(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
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
    let loej = b4 & 0x02 != 0;
    let start = b4 & 0x01 != 0;
    // SBC-4: with a POWER CONDITION other than START_VALID, START and
    // LOEJ are ignored, so the medium does not move.
    if pc == 0 && loej {
        if !lu.removable {
            // A fixed disk has no medium to load or eject.
            return Err(Sense::invalid_cdb_field(4, Some(1)));
        }
        // IMMED or not: the medium moves at once, so there is nothing to
        // wait for either way.
        lu.medium.load_or_eject(start)?;
    }
    // START/STOP and the power conditions: the unit is always active and
    // ready, so every other accepted request is already satisfied.
    Ok(ScsiResult::good(Vec::new(), 0))
}

pub fn prevent_allow(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    // PREVENT 00b allow, 01b prevent; 1xb are obsolete (medium changers).
    let prevent = byte(cmd.cdb, 4) & 0x03;
    if prevent & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(4, Some(1)));
    }
    // On a fixed disk nothing can be removed, so preventing removal holds
    // trivially and there is no state to keep.
    if lu.removable {
        lu.medium.set_prevent(ctx.nexus.id, prevent == 0x01);
    }
    Ok(ScsiResult::good(Vec::new(), 0))
}
