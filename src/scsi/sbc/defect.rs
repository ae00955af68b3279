//! READ DEFECT DATA(10) and (12) (SBC-4 §5.19, §5.20). A virtual medium
//! has no defects: both lists are valid and empty, in the format asked
//! for.

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::Sense;

/// DEFECT LIST FORMAT 111b is reserved.
const RESERVED_FORMAT: u8 = 0x07;

pub fn read_defect_data(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    ctx.lu()?;
    let ten = byte(cmd.cdb, 0) == 0x37;
    let flags_at = if ten { 2 } else { 1 };
    let flags = byte(cmd.cdb, flags_at);
    let format = flags & 0x07;
    if format == RESERVED_FORMAT {
        return Err(Sense::invalid_cdb_field(flags_at, Some(0)));
    }
    // PLISTV/GLISTV echo REQ_PLIST/REQ_GLIST: the requested lists are
    // valid (and empty); the format is the one requested.
    let b1 = flags & 0x1f;
    let (data, alloc) = if ten {
        // 4-byte header: DEFECT LIST LENGTH (2 bytes) = 0.
        (vec![0, b1, 0, 0], be(cmd.cdb, 7, 2))
    } else {
        // 8-byte header: GENERATION CODE 0, DEFECT LIST LENGTH (4 bytes) = 0.
        (vec![0, b1, 0, 0, 0, 0, 0, 0], be(cmd.cdb, 6, 4))
    };
    Ok(data_in(cmd, data, alloc))
}
