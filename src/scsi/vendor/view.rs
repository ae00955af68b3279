//! CBT views: OPEN / RENEW / RELEASE VIEW (opcode C0h, service actions
//! 06h-08h, `shared/specs/cbt-scsi.md`). The CDB fields and the 32-byte
//! reply live here; the view itself (copy-before-write, the open protocol,
//! leases) is `crate::cbt::views`.

use std::sync::Arc;
use std::time::Duration;

use super::lock::{check_reserved, conflict, ms};
use crate::cbt::wire::VIEW_LEN;
use crate::cbt::{OpenRequest, Tracker, View, ViewError};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, data_in};
use crate::scsi::lun::ViewSettings;
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::viewlun::BackendSource;
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};

/// The LUN's tracker and view settings; views off → the service action is
/// unknown (INVALID FIELD IN CDB, as the spec asks).
fn views_on<'a>(ctx: &Ctx<'a>) -> Result<(&'a LogicalUnit, &'a Tracker, &'a ViewSettings), Sense> {
    let lu = ctx.lu.ok_or(Sense::new(SenseReason::LunNotSupported))?;
    let tracker = lu
        .tracker
        .as_deref()
        .ok_or(Sense::new(SenseReason::InvalidOpcode))?;
    let settings = lu
        .cbt
        .view
        .as_ref()
        .ok_or(Sense::invalid_cdb_field(1, Some(4)))?;
    Ok((lu, tracker, settings))
}

/// Lease for a CDB value: 0 → default, cut to the maximum.
fn lease_for(settings: &ViewSettings, requested_ms: u64) -> Duration {
    let asked = match requested_ms {
        0 => settings.default_lease,
        n => Duration::from_millis(n),
    };
    asked.min(settings.max_lease)
}

fn reply(cmd: &ScsiCommand, v: &View, lease: Duration, view_lun: u64) -> ScsiResult {
    let mut r = vec![0u8; VIEW_LEN];
    r[0..8].copy_from_slice(&v.token.to_be_bytes());
    r[8..16].copy_from_slice(&v.generation.to_be_bytes());
    r[16..20].copy_from_slice(&ms(lease).to_be_bytes());
    r[20..22].copy_from_slice(&(view_lun as u16).to_be_bytes());
    data_in(cmd, r, VIEW_LEN as u64)
}

fn failure(e: ViewError) -> Result<ScsiResult, Sense> {
    match e {
        ViewError::Conflict => Ok(conflict()),
        ViewError::DrainTimeout => Err(SenseReason::LockDrainTimeout.into()),
        ViewError::InvalidToken => Err(Sense::invalid_cdb_field(2, None)),
        other => {
            tracing::error!(error = %other, "view command failed");
            Err(SenseReason::InternalTargetFailure.into())
        }
    }
}

/// The I_T nexus as SAM names it: initiator port (name + ISID) and target
/// port. Not the session: an appliance that reconnects with the same ISID
/// (session reinstatement) is the same nexus and gets its view back.
fn nexus_key(n: &crate::scsi::Nexus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.initiator_port.to_ascii_lowercase().hash(&mut h);
    n.relative_port.hash(&mut h);
    h.finish()
}

/// 06h OPEN VIEW: bytes 2-5 LEASE ms, 6-9 DRAIN TIMEOUT ms.
pub fn open(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 10)?;
    let (lu, tracker, settings) = views_on(ctx)?;
    let lease = lease_for(settings, be(cmd.cdb, 2, 4));
    let drain = match be(cmd.cdb, 6, 4) {
        0 => lu.cbt.default_drain,
        n => Duration::from_millis(n),
    };
    let req = OpenRequest {
        owner: nexus_key(ctx.nexus),
        lease,
        drain,
        limit: settings.space,
        block_len: lu.block_size,
        source: Arc::new(BackendSource(lu.backend.clone())),
        store_dir: settings.store_dir.clone(),
    };
    match tracker.open_view(req) {
        Ok(v) => Ok(reply(cmd, &v, lease, settings.lun)),
        Err(e) => failure(e),
    }
}

/// 07h RENEW VIEW: bytes 2-9 VIEW TOKEN, 10-13 LEASE ms.
pub fn renew(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 14)?;
    let (_, tracker, settings) = views_on(ctx)?;
    let lease = lease_for(settings, be(cmd.cdb, 10, 4));
    match tracker.renew_view(be(cmd.cdb, 2, 8), lease) {
        Ok(v) => Ok(reply(cmd, &v, lease, settings.lun)),
        Err(e) => failure(e),
    }
}

/// 08h RELEASE VIEW: bytes 2-9 VIEW TOKEN; the reply's LEASE GRANTED is 0.
pub fn release(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    check_reserved(cmd.cdb, 10)?;
    let (_, tracker, settings) = views_on(ctx)?;
    let token = be(cmd.cdb, 2, 8);
    let view = tracker.view().filter(|v| v.token == token);
    match (view, tracker.release_view(token)) {
        (Some(v), Ok(_)) => Ok(reply(cmd, &v, Duration::ZERO, settings.lun)),
        (_, Err(e)) => failure(e),
        (None, Ok(_)) => failure(ViewError::InvalidToken),
    }
}
