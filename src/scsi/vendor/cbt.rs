//! Opcode C0h (CBT) service actions 00h-02h, the checks every C0h command
//! passes first, and the VPD page C0h body. Byte layouts follow
//! `shared/specs/cbt-scsi.md` (wire contract version 2) exactly.
//!
//! Order of checks for C0h (the spec wants the access check before any
//! CDB field): the LUN exists → the initiator is allowed → tracking is on
//! ([`gate`], called by the server before the table lookup) → known service
//! action → reserved bits (the server's usual lookup and mask check) →
//! the handler's own field checks.

use crate::cbt::{CbtError, ChangedPage, Status, Tracker};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::be;
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::server::DeviceServer;
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

use crate::cbt::wire::{
    AS_OF_VIEW, CLOSE_LEN, DESC_DEALLOCATED, DESCRIPTOR_LEN, HEADER_LEN, NO_VIEW_LUN,
    PAGE_COMPLETE, REPORT_LEN, VERSION, VPD_PAGE_LEN, flag, sa,
};
pub use crate::cbt::wire::{OPCODE, VPD_PAGE};

/// Descriptors per GET CHANGED EXTENTS reply at most, whatever the
/// allocation length: bounds the memory one command can make the target
/// allocate (1.5 MiB). The appliance pages on from NEXT LBA.
const MAX_DESCRIPTORS: usize = 1 << 16;

/// Checks made for opcode C0h before the service action or any CDB field
/// is looked at: LUN, access, tracking.
pub fn gate(server: &DeviceServer, cmd: &ScsiCommand) -> Result<(), Sense> {
    let lu = server
        .lu_for(cmd.nexus, cmd.lun)
        .ok_or(Sense::new(SenseReason::LunNotSupported))?;
    if !allowed(lu, &cmd.nexus.initiator_name) {
        return Err(SenseReason::AccessDeniedNoAccessRights.into());
    }
    if lu.tracker.is_none() {
        return Err(SenseReason::InvalidOpcode.into());
    }
    Ok(())
}

/// iSCSI names compare case-insensitively (RFC 7143 normalises to lower
/// case), so an ACL written with capitals still matches.
fn allowed(lu: &LogicalUnit, initiator: &str) -> bool {
    lu.cbt
        .allowed_initiators
        .iter()
        .any(|n| n.eq_ignore_ascii_case(initiator))
}

/// REPORT SUPPORTED OPERATION CODES filter: opcode C0h exists only on LUNs
/// with tracking on, and its view service actions only where views are on.
pub fn listed(lu: Option<&LogicalUnit>, opcode: u8, sa: Option<u16>) -> bool {
    if opcode != OPCODE {
        return true;
    }
    let Some(l) = lu.filter(|l| l.tracker.is_some()) else {
        return false;
    };
    let views = u16::from(sa::OPEN_VIEW)..=u16::from(sa::RELEASE_VIEW);
    let view_sa = sa.is_some_and(|a| views.contains(&a));
    !view_sa || l.cbt.view.is_some()
}

/// Body (after the 4-byte header) of VPD page C0h, or `None` when
/// tracking is off (the page does not exist then).
pub fn vpd_page(lu: &LogicalUnit) -> Option<Vec<u8>> {
    let status = lu.tracker.as_ref()?.status();
    // Offsets below are page offsets minus the 4-byte header.
    let mut d = vec![0u8; VPD_PAGE_LEN];
    d[0] = VERSION;
    d[1] = flags(lu, &status);
    d[4..8].copy_from_slice(&status.extent_blocks.to_be_bytes());
    d[8..24].copy_from_slice(&status.uuid);
    d[24..32].copy_from_slice(&status.open_generation.to_be_bytes());
    Some(d)
}

fn flags(lu: &LogicalUnit, status: &Status) -> u8 {
    let locked = lu.cbt_lock.status().is_some();
    let view = lu.tracker.as_ref().and_then(|t| t.view());
    let mut f = status.flags() | if locked { flag::WRITE_LOCKED } else { 0 };
    if let Some(v) = view {
        f |= flag::VIEW_OPEN | if v.lost() { flag::VIEW_LOST } else { 0 };
    }
    f
}

/// The LUN's tracker; [`gate`] already refused LUNs without one.
fn tracker<'a>(ctx: &Ctx<'a>) -> Result<(&'a LogicalUnit, &'a Tracker), Sense> {
    let lu = ctx.lu.ok_or(Sense::new(SenseReason::LunNotSupported))?;
    let t = lu
        .tracker
        .as_deref()
        .ok_or(Sense::new(SenseReason::InvalidOpcode))?;
    Ok((lu, t))
}

/// The reply under the allocation length (the expected data-in length):
/// cut to it, with the full length as SPDTL so the transport reports the
/// overflow residual.
fn reply(cmd: &ScsiCommand, mut data: Vec<u8>) -> ScsiResult {
    let full = u32::try_from(data.len()).unwrap_or(u32::MAX);
    data.truncate(cmd.expected_len as usize);
    ScsiResult::good(data, full)
}

/// Tracker failures other than a bad field: tracking metadata could not be
/// written, or the LUN is shutting down. Nothing was handed out.
fn failure(e: CbtError) -> Sense {
    tracing::error!(error = %e, "changed-block tracking command failed");
    Sense::new(SenseReason::InternalTargetFailure)
}

/// SA 00h REPORT TRACKING: 96-byte reply.
pub fn report_tracking(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let (lu, t) = tracker(ctx)?;
    let status = t.status();
    let mut d = vec![0u8; REPORT_LEN];
    d[0] = VERSION;
    d[1] = flags(lu, &status);
    d[4..8].copy_from_slice(&status.extent_blocks.to_be_bytes());
    d[8..12].copy_from_slice(&lu.block_size.to_be_bytes());
    d[16..24].copy_from_slice(&status.capacity_blocks.to_be_bytes());
    d[24..40].copy_from_slice(&status.uuid);
    d[40..48].copy_from_slice(&status.open_generation.to_be_bytes());
    d[48..56].copy_from_slice(&status.recovery_generation.to_be_bytes());
    let lease = lu.cbt_lock.status().unwrap_or(0);
    d[56..60].copy_from_slice(&lease.to_be_bytes());
    view_fields(lu, t, &mut d);
    Ok(reply(cmd, d))
}

/// REPORT TRACKING bytes 60-89: the view's generation, lease, space and
/// the view LUN (FFFFh and limit 0 when views are off).
fn view_fields(lu: &LogicalUnit, t: &Tracker, d: &mut [u8]) {
    let Some(settings) = &lu.cbt.view else {
        d[88..90].copy_from_slice(&NO_VIEW_LUN.to_be_bytes());
        return;
    };
    if let Some(v) = t.view() {
        let lease = v.lease_left(std::time::Instant::now()).as_millis();
        d[60..68].copy_from_slice(&v.generation.to_be_bytes());
        d[68..72].copy_from_slice(&u32::try_from(lease).unwrap_or(u32::MAX).to_be_bytes());
        d[72..80].copy_from_slice(&v.used().to_be_bytes());
    }
    d[80..88].copy_from_slice(&settings.space.to_be_bytes());
    d[88..90].copy_from_slice(&(settings.lun as u16).to_be_bytes());
}

/// SA 01h CLOSE GENERATION: closes whatever the allocation length (the
/// reply may be cut, the close happened once), 32-byte reply.
pub fn close_generation(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let (_, t) = tracker(ctx)?;
    let g = t.close().map_err(failure)?;
    let mut d = vec![0u8; CLOSE_LEN];
    d[0..16].copy_from_slice(&t.status().uuid);
    d[16..24].copy_from_slice(&g.to_be_bytes());
    Ok(reply(cmd, d))
}

/// SA 02h GET CHANGED EXTENTS: a 48-byte header and as many whole 24-byte
/// descriptors as fit the allocation length.
pub fn get_changed_extents(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let (lu, t) = tracker(ctx)?;
    if cmd.cdb[1] & AS_OF_VIEW != 0 {
        return changed_as_of_view(lu, t, cmd);
    }
    let since = be(cmd.cdb, 2, 8);
    let start_lba = be(cmd.cdb, 10, 5);
    // Both bounds only grow, so checking them here cannot refuse a query
    // the tracker would accept a moment later.
    if since >= t.open_generation() {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    if start_lba >= t.capacity_blocks() {
        return Err(Sense::invalid_cdb_field(10, None));
    }
    let room = (cmd.expected_len as usize).saturating_sub(HEADER_LEN) / DESCRIPTOR_LEN;
    let page = t
        .changed_extents(since, start_lba, room.min(MAX_DESCRIPTORS))
        .map_err(|e| match e {
            CbtError::InvalidField(_) => Sense::invalid_cdb_field(2, None),
            other => failure(other),
        })?;
    Ok(reply(cmd, encode_page(&page, &t.status().uuid)))
}

/// GET CHANGED EXTENTS AS OF VIEW. Order of checks (spec): views off →
/// unknown field; no view → invalid field; a lost view → ABORTED COMMAND
/// before anything that depends on its generation; then the fields.
fn changed_as_of_view(lu: &LogicalUnit, t: &Tracker, cmd: &ScsiCommand) -> CmdResult {
    if lu.cbt.view.is_none() {
        return Err(Sense::invalid_cdb_field(1, Some(5)));
    }
    let view = t.view().ok_or(Sense::invalid_cdb_field(1, Some(5)))?;
    if view.lost() {
        return Err(SenseReason::ViewLost.into());
    }
    let since = be(cmd.cdb, 2, 8);
    let start_lba = be(cmd.cdb, 10, 5);
    if since >= view.generation {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    if start_lba >= view.capacity_blocks {
        return Err(Sense::invalid_cdb_field(10, None));
    }
    let room = (cmd.expected_len as usize).saturating_sub(HEADER_LEN) / DESCRIPTOR_LEN;
    let page = t
        .view_changed_extents(&view, since, start_lba, room.min(MAX_DESCRIPTORS))
        .map_err(|e| match e {
            CbtError::InvalidField(_) => Sense::invalid_cdb_field(2, None),
            other => failure(other),
        })?;
    // Lost while the page was built: its generations may be incomplete.
    if view.lost() {
        return Err(SenseReason::ViewLost.into());
    }
    Ok(reply(cmd, encode_page(&page, &t.status().uuid)))
}

fn encode_page(page: &ChangedPage, uuid: &[u8; 16]) -> Vec<u8> {
    let n = page.descriptors.len();
    let mut d = vec![0u8; HEADER_LEN];
    let desc_len = u32::try_from(n * DESCRIPTOR_LEN).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&desc_len.to_be_bytes());
    d[4] = if page.complete { PAGE_COMPLETE } else { 0 };
    d[8..16].copy_from_slice(&page.open_generation.to_be_bytes());
    d[16..24].copy_from_slice(&page.next_lba.to_be_bytes());
    d[24..40].copy_from_slice(uuid);
    d.reserve(n * DESCRIPTOR_LEN);
    for x in &page.descriptors {
        d.extend_from_slice(&x.lba.to_be_bytes());
        // The tracker splits runs so NUMBER OF BLOCKS fits its u32 field.
        let blocks = u32::try_from(x.blocks).unwrap_or(u32::MAX);
        d.extend_from_slice(&blocks.to_be_bytes());
        let flags = if x.deallocated { DESC_DEALLOCATED } else { 0 };
        d.extend_from_slice(&flags.to_be_bytes());
        d.extend_from_slice(&x.generation.to_be_bytes());
    }
    d
}
