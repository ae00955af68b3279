//! Version 2 of the CBT contract: point-in-time views. OPEN / RENEW /
//! RELEASE VIEW (SAs 06h-08h), the view fields of REPORT TRACKING
//! (bytes 60-89), and the `Session` helpers the appliance uses.
//!
//! A view is read through its own LUN (VIEW LUN in the replies), with
//! ordinary READs; only the control path is here.

use super::{
    CbtClientError, CbtWireError, NO_VIEW_LUN, TrackingFlags, VIEW_LEN, cdb, exact, reserved,
    u32_at, u64_at,
};
use crate::cbt::wire::sa;
use crate::initiator::session::Session;

/// The view fields of a version-2 REPORT TRACKING for a LUN with views on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewStatus {
    /// VIEW GENERATION of the open view (0 if none).
    pub generation: u64,
    /// 0 if no view is open.
    pub lease_remaining_ms: u32,
    /// Bytes of old data kept for the view.
    pub space_used: u64,
    /// VIEW SPACE LIMIT: past it the view is lost.
    pub space_limit: u64,
    /// The LUN number that reads the view.
    pub view_lun: u16,
}

/// Reply of SAs 06h/07h/08h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewGrant {
    pub token: u64,
    /// VIEW GENERATION `Gv`: the view LUN reads the LUN as it was when
    /// this generation closed.
    pub generation: u64,
    /// LEASE GRANTED (0 in a RELEASE reply).
    pub lease_ms: u32,
    pub view_lun: u16,
}

pub fn open_view_cdb(lease_ms: u32, drain_ms: u32) -> [u8; 16] {
    let mut c = cdb(sa::OPEN_VIEW);
    c[2..6].copy_from_slice(&lease_ms.to_be_bytes());
    c[6..10].copy_from_slice(&drain_ms.to_be_bytes());
    c
}

pub fn renew_view_cdb(token: u64, lease_ms: u32) -> [u8; 16] {
    let mut c = cdb(sa::RENEW_VIEW);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c[10..14].copy_from_slice(&lease_ms.to_be_bytes());
    c
}

pub fn release_view_cdb(token: u64) -> [u8; 16] {
    let mut c = cdb(sa::RELEASE_VIEW);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c
}

/// Bytes 60-89 of a version-2 REPORT TRACKING: `None` when views are off
/// (VIEW LUN FFFFh, which the contract ties to VIEW SPACE LIMIT 0 and no
/// view). Inconsistent combinations are layout errors: an appliance must
/// not guess whether it may open a view.
pub(super) fn parse_view_status(
    d: &[u8],
    flags: &TrackingFlags,
    open_generation: u64,
) -> Result<Option<ViewStatus>, CbtWireError> {
    let bad = |why: String| Err(CbtWireError::Layout(format!("REPORT TRACKING: {why}")));
    let v = ViewStatus {
        generation: u64_at(d, 60),
        lease_remaining_ms: u32_at(d, 68),
        space_used: u64_at(d, 72),
        space_limit: u64_at(d, 80),
        view_lun: u16::from_be_bytes([d[88], d[89]]),
    };
    let off = v.view_lun == NO_VIEW_LUN;
    if off != (v.space_limit == 0) {
        return bad(format!(
            "VIEW LUN {:#06x} with VIEW SPACE LIMIT {}",
            v.view_lun, v.space_limit
        ));
    }
    if off {
        if flags.view_open || v.generation != 0 {
            return bad("a view is open on a LUN with views off".into());
        }
        return Ok(None);
    }
    let open = flags.view_open;
    if open && (v.generation == 0 || v.generation >= open_generation) {
        return bad(format!(
            "VIEW GENERATION {} not below the open generation {open_generation}",
            v.generation
        ));
    }
    if !open && (v.generation != 0 || v.lease_remaining_ms != 0) {
        return bad("view generation or lease without an open view".into());
    }
    Ok(Some(v))
}

/// Parse a 32-byte OPEN/RENEW/RELEASE VIEW reply.
pub fn parse_view(d: &[u8]) -> Result<ViewGrant, CbtWireError> {
    const W: &str = "VIEW";
    exact(W, d, VIEW_LEN)?;
    reserved(W, d, &[(22, 32)])?;
    Ok(ViewGrant {
        token: u64_at(d, 0),
        generation: u64_at(d, 8),
        lease_ms: u32_at(d, 16),
        view_lun: u16::from_be_bytes([d[20], d[21]]),
    })
}

/// An OPEN or RENEW reply must name a real view: a generation that was
/// closed and a view LUN.
pub(super) fn live_grant(g: ViewGrant) -> Result<ViewGrant, CbtWireError> {
    if g.generation == 0 || g.view_lun == NO_VIEW_LUN {
        return Err(CbtWireError::Layout(format!(
            "VIEW: generation {} / view LUN {:#06x} impossible for an open view",
            g.generation, g.view_lun
        )));
    }
    Ok(g)
}

impl Session {
    /// OPEN VIEW on `lun` (0 = the target's default lease / drain).
    pub async fn cbt_open_view(
        &self,
        lun: u64,
        lease_ms: u32,
        drain_ms: u32,
    ) -> Result<ViewGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &open_view_cdb(lease_ms, drain_ms), VIEW_LEN as u32)
            .await?;
        Ok(live_grant(parse_view(&d)?)?)
    }

    pub async fn cbt_renew_view(
        &self,
        lun: u64,
        token: u64,
        lease_ms: u32,
    ) -> Result<ViewGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &renew_view_cdb(token, lease_ms), VIEW_LEN as u32)
            .await?;
        Ok(live_grant(parse_view(&d)?)?)
    }

    pub async fn cbt_release_view(
        &self,
        lun: u64,
        token: u64,
    ) -> Result<ViewGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &release_view_cdb(token), VIEW_LEN as u32)
            .await?;
        Ok(parse_view(&d)?)
    }
}
