//! SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10), kept beside persistent
//! reservations with the SPC-5 §5.14.3 exceptions (CRH=1): RESERVE
//! conflicts while any persistent registration exists, RELEASE is a no-op
//! then. The reservation belongs to one I_T nexus (by session id) and ends
//! with it, with a LUN or target reset, or with a restart.

use super::{conflict_result, read, write};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

pub fn reserve(ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let mut st = write(lu);
    let pr_active = !st.registrations.is_empty() || st.reservation.is_some();
    match st.spc2_holder {
        _ if pr_active => Ok(conflict_result(0)),
        Some(h) if h != ctx.nexus.id => Ok(conflict_result(0)),
        _ => {
            st.spc2_holder = Some(ctx.nexus.id);
            Ok(ScsiResult::good(Vec::new(), 0))
        }
    }
}

/// Releasing a reservation one does not hold (or none) succeeds and does
/// nothing (SPC-2 §7.17).
pub fn release(ctx: &Ctx, _cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let mut st = write(lu);
    if st.spc2_holder == Some(ctx.nexus.id) {
        st.spc2_holder = None;
    }
    Ok(ScsiResult::good(Vec::new(), 0))
}

/// LUN reset, target reset: the SPC-2 reservation ends (persistent
/// reservations do not).
pub fn reset(lu: &LogicalUnit) {
    if read(lu).spc2_holder.is_some() {
        write(lu).spc2_holder = None;
    }
}

/// The nexus is gone (logout, connection loss): its SPC-2 reservation
/// ends. Persistent registrations stay.
pub fn nexus_lost(lu: &LogicalUnit, nexus_id: u64) {
    if read(lu).spc2_holder == Some(nexus_id) {
        let mut st = write(lu);
        if st.spc2_holder == Some(nexus_id) {
            st.spc2_holder = None;
        }
    }
}
