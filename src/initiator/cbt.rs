//! Client side of the CBT wire contract (`shared/specs/cbt-scsi.md`,
//! versions 1 and 2): CDB builders, strict reply parsers and `Session`
//! helpers. The CLI (`gentgt cbt`) and the backup client share it. The
//! version-2 views (SAs 06h-08h, AS OF VIEW) live in [`view`].
//!
//! The parsers refuse anything the contract does not allow (wrong length,
//! nonzero reserved bytes, descriptors out of order or outside the
//! generation window): a backup built on a misread reply would silently
//! miss data, so a target that breaks the layout is an error, not a guess.

use super::error::InitiatorError;
use super::session::Session;
use thiserror::Error;

mod view;
pub use view::*;

#[cfg(test)]
mod tests;

pub use crate::cbt::wire::{
    AS_OF_VIEW, CLOSE_LEN, DESCRIPTOR_LEN, HEADER_LEN, LOCK_LEN, MAX_START_LBA, NO_VIEW_LUN,
    OPCODE, REPORT_LEN, VERSION, VERSION_1, VIEW_LEN, VPD_LEN, VPD_PAGE, VPD_PAGE_LEN,
};
use crate::cbt::wire::{DESC_DEALLOCATED, PAGE_COMPLETE, flag, sa};

/// A reply that does not follow the contract, or a request that cannot be
/// expressed in it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CbtWireError {
    #[error("{what}: reply is {got} bytes, the contract says {need}")]
    Length {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{what}: version {0} is not supported (this client speaks {VERSION_1} and {VERSION})", .got)]
    Version { what: &'static str, got: u8 },
    #[error("{what}: reserved byte {at} is {value:#04x}, must be 0")]
    Reserved {
        what: &'static str,
        at: usize,
        value: u8,
    },
    #[error("{0}")]
    Layout(String),
    #[error("STARTING LBA {0} does not fit the 40-bit field")]
    LbaTooLarge(u64),
}

/// Errors of the `Session` helpers: the transport, the SCSI status, or the
/// reply's layout.
#[derive(Debug, Error)]
pub enum CbtClientError {
    #[error(transparent)]
    Initiator(#[from] InitiatorError),
    #[error(transparent)]
    Wire(#[from] CbtWireError),
    /// ABORTED COMMAND, 55h/03h: the open view could not be kept (view
    /// space exhausted). A typed variant so an appliance can release the
    /// view and fall back to the write-lock loop.
    #[error("the view was lost: the target could not keep it (ABORTED COMMAND, 55h/03h)")]
    ViewLost,
}

impl CbtClientError {
    /// True for a lost view (see [`CbtClientError::ViewLost`]).
    pub fn is_view_lost(&self) -> bool {
        match self {
            CbtClientError::ViewLost => true,
            CbtClientError::Initiator(e) => view_lost(e),
            CbtClientError::Wire(_) => false,
        }
    }

    /// (sense key, ASC, ASCQ) when the target answered CHECK CONDITION
    /// (also for `ViewLost`, which is one).
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        match self {
            CbtClientError::Initiator(e) => e.sense_code(),
            CbtClientError::ViewLost => Some(VIEW_LOST_SENSE),
            CbtClientError::Wire(_) => None,
        }
    }

    /// A human-readable description, with sense key and ASC names.
    pub fn describe(&self) -> String {
        match self {
            CbtClientError::Initiator(InitiatorError::ScsiCheck { status, sense }) => {
                describe_status(*status, sense)
            }
            other => other.to_string(),
        }
    }
}

/// Sense of a lost view (ABORTED COMMAND, INSUFFICIENT RESOURCES).
pub const VIEW_LOST_SENSE: (u8, u8, u8) = (0x0b, 0x55, 0x03);

/// True when a command (an AS OF VIEW query, or a READ of the view LUN)
/// failed because the view was lost.
pub fn view_lost(e: &InitiatorError) -> bool {
    e.sense_code() == Some(VIEW_LOST_SENSE)
}

/// The helpers that can meet a lost view (AS OF VIEW queries) report it
/// as [`CbtClientError::ViewLost`]; `cbt_raw` keeps the raw sense.
fn typed_loss(e: CbtClientError) -> CbtClientError {
    if e.is_view_lost() {
        CbtClientError::ViewLost
    } else {
        e
    }
}

fn cdb(action: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = OPCODE;
    c[1] = action;
    c
}

pub fn report_tracking_cdb() -> [u8; 16] {
    cdb(sa::REPORT_TRACKING)
}

pub fn close_generation_cdb() -> [u8; 16] {
    cdb(sa::CLOSE_GENERATION)
}

pub fn get_changed_extents_cdb(since: u64, start_lba: u64) -> Result<[u8; 16], CbtWireError> {
    get_changed_extents_cdb_as_of(since, start_lba, false)
}

/// GET CHANGED EXTENTS; with `as_of_view` (byte 1 bit 5) the reply
/// describes the LUN as the open view holds it (version 2).
pub fn get_changed_extents_cdb_as_of(
    since: u64,
    start_lba: u64,
    as_of_view: bool,
) -> Result<[u8; 16], CbtWireError> {
    if start_lba > MAX_START_LBA {
        return Err(CbtWireError::LbaTooLarge(start_lba));
    }
    let mut c = cdb(sa::GET_CHANGED_EXTENTS);
    if as_of_view {
        c[1] |= AS_OF_VIEW;
    }
    c[2..10].copy_from_slice(&since.to_be_bytes());
    c[10..15].copy_from_slice(&start_lba.to_be_bytes()[3..]);
    Ok(c)
}

pub fn acquire_cdb(lease_ms: u32, drain_ms: u32) -> [u8; 16] {
    let mut c = cdb(sa::ACQUIRE_WRITE_LOCK);
    c[2..6].copy_from_slice(&lease_ms.to_be_bytes());
    c[6..10].copy_from_slice(&drain_ms.to_be_bytes());
    c
}

pub fn renew_cdb(token: u64, lease_ms: u32) -> [u8; 16] {
    let mut c = cdb(sa::RENEW_WRITE_LOCK);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c[10..14].copy_from_slice(&lease_ms.to_be_bytes());
    c
}

pub fn release_cdb(token: u64) -> [u8; 16] {
    let mut c = cdb(sa::RELEASE_WRITE_LOCK);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c
}

/// FLAGS of REPORT TRACKING and VPD C0h. The view bits exist from
/// version 2 on; a version-1 reply must have them clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackingFlags {
    pub tracking_on: bool,
    pub persistent: bool,
    pub write_locked: bool,
    pub recovered: bool,
    pub view_open: bool,
    pub view_lost: bool,
}

impl TrackingFlags {
    fn parse(what: &'static str, version: u8, b: u8) -> Result<TrackingFlags, CbtWireError> {
        let known = if version >= VERSION {
            flag::KNOWN_V2
        } else {
            flag::KNOWN_V1
        };
        if b & !known != 0 {
            return Err(CbtWireError::Layout(format!(
                "{what}: FLAGS {b:#04x} has reserved bits set (version {version})"
            )));
        }
        let on = |f: u8| b & f != 0;
        if on(flag::VIEW_LOST) && !on(flag::VIEW_OPEN) {
            return Err(CbtWireError::Layout(format!(
                "{what}: VIEW LOST without VIEW OPEN"
            )));
        }
        Ok(TrackingFlags {
            tracking_on: on(flag::TRACKING_ON),
            persistent: on(flag::PERSISTENT),
            write_locked: on(flag::WRITE_LOCKED),
            recovered: on(flag::RECOVERED),
            view_open: on(flag::VIEW_OPEN),
            view_lost: on(flag::VIEW_LOST),
        })
    }
}

/// A reply's VERSION: 1 or 2.
fn version(what: &'static str, v: u8) -> Result<u8, CbtWireError> {
    match v {
        VERSION_1 | VERSION => Ok(v),
        got => Err(CbtWireError::Version { what, got }),
    }
}

/// SA 00h REPORT TRACKING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingReport {
    /// VERSION of the reply (1: no views).
    pub version: u8,
    pub flags: TrackingFlags,
    pub extent_blocks: u32,
    pub block_len: u32,
    pub capacity_blocks: u64,
    pub uuid: [u8; 16],
    pub open_generation: u64,
    pub recovery_generation: u64,
    pub lease_remaining_ms: u32,
    /// Bytes 60-89 of a version-2 reply when views are on for the LUN;
    /// `None` when the target is version 1 or views are off.
    pub views: Option<ViewStatus>,
}

impl TrackingReport {
    /// The LUN can open views (version 2 and views on).
    pub fn views_supported(&self) -> bool {
        self.views.is_some()
    }
}

/// SA 01h CLOSE GENERATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedGeneration {
    pub uuid: [u8; 16],
    pub generation: u64,
}

/// One GET CHANGED EXTENTS descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentDescriptor {
    pub lba: u64,
    pub blocks: u32,
    pub deallocated: bool,
    pub generation: u64,
}

/// One GET CHANGED EXTENTS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentsPage {
    pub complete: bool,
    pub open_generation: u64,
    pub next_lba: u64,
    pub uuid: [u8; 16],
    pub descriptors: Vec<ExtentDescriptor>,
}

/// SA 03h/04h/05h reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGrant {
    pub token: u64,
    pub generation: u64,
    pub lease_ms: u32,
}

/// INQUIRY VPD page C0h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingVpd {
    /// VERSION (1: the target has no views).
    pub version: u8,
    pub flags: TrackingFlags,
    pub extent_blocks: u32,
    pub uuid: [u8; 16],
    pub open_generation: u64,
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&d[at..at + 4]);
    u32::from_be_bytes(b)
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

fn uuid_at(d: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[at..at + 16]);
    u
}

fn exact(what: &'static str, d: &[u8], need: usize) -> Result<(), CbtWireError> {
    if d.len() != need {
        return Err(CbtWireError::Length {
            what,
            need,
            got: d.len(),
        });
    }
    Ok(())
}

/// Every byte in the `[start, end)` ranges of `d` must be zero.
fn reserved(what: &'static str, d: &[u8], ranges: &[(usize, usize)]) -> Result<(), CbtWireError> {
    for r in ranges {
        if let Some(at) = (r.0..r.1).find(|&i| d[i] != 0) {
            return Err(CbtWireError::Reserved {
                what,
                at,
                value: d[at],
            });
        }
    }
    Ok(())
}

pub fn parse_report(d: &[u8]) -> Result<TrackingReport, CbtWireError> {
    const W: &str = "REPORT TRACKING";
    exact(W, d, REPORT_LEN)?;
    let v = version(W, d[0])?;
    // Version 1 reserved everything from byte 60 on.
    let tail = if v == VERSION_1 { 60 } else { 90 };
    reserved(W, d, &[(2, 4), (12, 16), (tail, 96)])?;
    let flags = TrackingFlags::parse(W, v, d[1])?;
    let r = TrackingReport {
        version: v,
        flags,
        extent_blocks: u32_at(d, 4),
        block_len: u32_at(d, 8),
        capacity_blocks: u64_at(d, 16),
        uuid: uuid_at(d, 24),
        open_generation: u64_at(d, 40),
        recovery_generation: u64_at(d, 48),
        lease_remaining_ms: u32_at(d, 56),
        views: match v {
            VERSION_1 => None,
            _ => parse_view_status(d, &flags, u64_at(d, 40))?,
        },
    };
    if !r.extent_blocks.is_power_of_two() || r.open_generation == 0 {
        return Err(CbtWireError::Layout(format!(
            "{W}: extent size {} / open generation {} impossible",
            r.extent_blocks, r.open_generation
        )));
    }
    if r.recovery_generation > r.open_generation {
        return Err(CbtWireError::Layout(format!(
            "{W}: recovery generation {} above open generation {}",
            r.recovery_generation, r.open_generation
        )));
    }
    Ok(r)
}

pub fn parse_close(d: &[u8]) -> Result<ClosedGeneration, CbtWireError> {
    const W: &str = "CLOSE GENERATION";
    exact(W, d, CLOSE_LEN)?;
    reserved(W, d, &[(24, 32)])?;
    let generation = u64_at(d, 16);
    if generation == 0 {
        return Err(CbtWireError::Layout(format!("{W}: generation 0")));
    }
    Ok(ClosedGeneration {
        uuid: uuid_at(d, 0),
        generation,
    })
}

/// Parse a GET CHANGED EXTENTS reply to a query `(since, start_lba)` and
/// check every rule the contract states about it.
pub fn parse_changes(d: &[u8], since: u64, start_lba: u64) -> Result<ExtentsPage, CbtWireError> {
    const W: &str = "GET CHANGED EXTENTS";
    if d.len() < HEADER_LEN {
        return Err(CbtWireError::Length {
            what: W,
            need: HEADER_LEN,
            got: d.len(),
        });
    }
    let desc_len = u32_at(d, 0) as usize;
    exact(W, d, HEADER_LEN.saturating_add(desc_len))?;
    if !desc_len.is_multiple_of(DESCRIPTOR_LEN) {
        return Err(CbtWireError::Layout(format!(
            "{W}: DESCRIPTOR LENGTH {desc_len} is not a multiple of {DESCRIPTOR_LEN}"
        )));
    }
    if d[4] & !PAGE_COMPLETE != 0 {
        return Err(CbtWireError::Layout(format!("{W}: FLAGS {:#04x}", d[4])));
    }
    reserved(W, d, &[(5, 8), (40, 48)])?;
    let page = ExtentsPage {
        complete: d[4] & PAGE_COMPLETE != 0,
        open_generation: u64_at(d, 8),
        next_lba: u64_at(d, 16),
        uuid: uuid_at(d, 24),
        descriptors: d[HEADER_LEN..]
            .chunks_exact(DESCRIPTOR_LEN)
            .map(parse_descriptor)
            .collect::<Result<_, _>>()?,
    };
    check_page(&page, since, start_lba)?;
    Ok(page)
}

fn parse_descriptor(x: &[u8]) -> Result<ExtentDescriptor, CbtWireError> {
    let flags = u32_at(x, 12);
    if flags & !DESC_DEALLOCATED != 0 {
        return Err(CbtWireError::Layout(format!(
            "descriptor FLAGS {flags:#010x} has reserved bits set"
        )));
    }
    Ok(ExtentDescriptor {
        lba: u64_at(x, 0),
        blocks: u32_at(x, 8),
        deallocated: flags & DESC_DEALLOCATED != 0,
        generation: u64_at(x, 16),
    })
}

fn check_page(p: &ExtentsPage, since: u64, start_lba: u64) -> Result<(), CbtWireError> {
    let bad = |why: String| Err(CbtWireError::Layout(format!("GET CHANGED EXTENTS: {why}")));
    if p.open_generation <= since {
        return bad(format!(
            "open generation {} not above SINCE {since}",
            p.open_generation
        ));
    }
    let mut at = start_lba;
    for x in &p.descriptors {
        if x.blocks == 0 || x.lba < at {
            return bad(format!(
                "descriptor at {} overlaps or is out of order",
                x.lba
            ));
        }
        if x.generation <= since || x.generation > p.open_generation {
            return bad(format!(
                "descriptor generation {} outside ({since}, {}]",
                x.generation, p.open_generation
            ));
        }
        at = x.lba + u64::from(x.blocks);
    }
    if p.next_lba < at || (p.descriptors.is_empty() && p.next_lba < start_lba) {
        return bad(format!("NEXT LBA {} inside the listed range", p.next_lba));
    }
    Ok(())
}

pub fn parse_lock(d: &[u8]) -> Result<LockGrant, CbtWireError> {
    const W: &str = "WRITE LOCK";
    exact(W, d, LOCK_LEN)?;
    reserved(W, d, &[(20, 32)])?;
    Ok(LockGrant {
        token: u64_at(d, 0),
        generation: u64_at(d, 8),
        lease_ms: u32_at(d, 16),
    })
}

/// Parse a whole VPD page C0h (with its 4-byte header).
pub fn parse_vpd(d: &[u8]) -> Result<TrackingVpd, CbtWireError> {
    const W: &str = "VPD page C0h";
    exact(W, d, VPD_LEN)?;
    if d[1] != VPD_PAGE || u16::from_be_bytes([d[2], d[3]]) as usize != VPD_PAGE_LEN {
        return Err(CbtWireError::Layout(format!(
            "{W}: bad header {:02x?}",
            &d[..4]
        )));
    }
    let v = version(W, d[4])?;
    reserved(W, d, &[(6, 8), (36, VPD_LEN)])?;
    Ok(TrackingVpd {
        version: v,
        flags: TrackingFlags::parse(W, v, d[5])?,
        extent_blocks: u32_at(d, 8),
        uuid: uuid_at(d, 12),
        open_generation: u64_at(d, 28),
    })
}

/// Names of the sense conditions the CBT commands report.
pub fn sense_name(key: u8, asc: u8, ascq: u8) -> String {
    let key_name = match key {
        0x0 => "NO SENSE",
        0x2 => "NOT READY",
        0x3 => "MEDIUM ERROR",
        0x4 => "HARDWARE ERROR",
        0x5 => "ILLEGAL REQUEST",
        0x6 => "UNIT ATTENTION",
        0x7 => "DATA PROTECT",
        0xb => "ABORTED COMMAND",
        _ => "sense key",
    };
    let asc_name = match (asc, ascq) {
        (0x20, 0x00) => "INVALID COMMAND OPERATION CODE (tracking off for this LUN?)",
        (0x20, 0x02) => "ACCESS DENIED - NO ACCESS RIGHTS (initiator not allowed to use CBT)",
        (0x24, 0x00) => "INVALID FIELD IN CDB",
        (0x25, 0x00) => "LOGICAL UNIT NOT SUPPORTED",
        (0x29, _) => "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
        (0x44, 0x00) => "INTERNAL TARGET FAILURE",
        (0x04, 0x00) => "LOGICAL UNIT NOT READY (no open view?)",
        (0x27, 0x00) => "WRITE PROTECTED",
        (0x55, 0x03) => "INSUFFICIENT RESOURCES (the view was lost)",
        _ => "",
    };
    format!("{key_name} ({key:#x}), ASC/ASCQ {asc:02X}h/{ascq:02X}h {asc_name}")
        .trim_end()
        .to_string()
}

/// Describe a non-GOOD SCSI status with its sense.
pub fn describe_status(status: u8, sense: &[u8]) -> String {
    match status {
        0x18 => "RESERVATION CONFLICT (another session holds the write lock or the view)".into(),
        0x08 => "BUSY".into(),
        0x28 => "TASK SET FULL".into(),
        _ => match super::command::parse_sense(sense) {
            Some((k, a, q)) => format!("CHECK CONDITION: {}", sense_name(k, a, q)),
            None => format!("SCSI status {status:#04x}"),
        },
    }
}

impl Session {
    /// Run one C0h command and require GOOD (the raw status and sense in
    /// the error: tests check them byte for byte).
    pub async fn cbt_raw(
        &self,
        lun: u64,
        cdb: &[u8],
        alloc: u32,
    ) -> Result<Vec<u8>, CbtClientError> {
        Ok(self.scsi(lun, cdb, None, alloc).await?.good()?.data)
    }

    pub async fn cbt_report(&self, lun: u64) -> Result<TrackingReport, CbtClientError> {
        let d = self
            .cbt_raw(lun, &report_tracking_cdb(), REPORT_LEN as u32)
            .await?;
        Ok(parse_report(&d)?)
    }

    pub async fn cbt_close(&self, lun: u64) -> Result<ClosedGeneration, CbtClientError> {
        let d = self
            .cbt_raw(lun, &close_generation_cdb(), CLOSE_LEN as u32)
            .await?;
        Ok(parse_close(&d)?)
    }

    /// One page, with room for `max_descriptors` descriptors.
    pub async fn cbt_changes(
        &self,
        lun: u64,
        since: u64,
        start_lba: u64,
        max_descriptors: u32,
    ) -> Result<ExtentsPage, CbtClientError> {
        self.cbt_changes_as_of(lun, since, start_lba, max_descriptors, false)
            .await
    }

    /// [`Session::cbt_changes`], with AS OF VIEW when `as_of_view`.
    pub async fn cbt_changes_as_of(
        &self,
        lun: u64,
        since: u64,
        start_lba: u64,
        max_descriptors: u32,
        as_of_view: bool,
    ) -> Result<ExtentsPage, CbtClientError> {
        let cdb = get_changed_extents_cdb_as_of(since, start_lba, as_of_view)?;
        let alloc = max_descriptors
            .saturating_mul(DESCRIPTOR_LEN as u32)
            .saturating_add(HEADER_LEN as u32);
        let d = self.cbt_raw(lun, &cdb, alloc).await.map_err(typed_loss)?;
        Ok(parse_changes(&d, since, start_lba)?)
    }

    /// Every changed extent since `since` from `start_lba`, paging until
    /// COMPLETE. Fails if the tracking UUID changes between pages.
    pub async fn cbt_all_changes(
        &self,
        lun: u64,
        since: u64,
        start_lba: u64,
    ) -> Result<Vec<ExtentDescriptor>, CbtClientError> {
        self.cbt_all_changes_as_of(lun, since, start_lba, false)
            .await
    }

    /// [`Session::cbt_all_changes`], with AS OF VIEW when `as_of_view`.
    pub async fn cbt_all_changes_as_of(
        &self,
        lun: u64,
        since: u64,
        start_lba: u64,
        as_of_view: bool,
    ) -> Result<Vec<ExtentDescriptor>, CbtClientError> {
        let mut out = Vec::new();
        let mut at = start_lba;
        let mut uuid = None;
        loop {
            let page = self
                .cbt_changes_as_of(lun, since, at, 4096, as_of_view)
                .await?;
            if *uuid.get_or_insert(page.uuid) != page.uuid {
                return Err(
                    CbtWireError::Layout("tracking UUID changed while paging".into()).into(),
                );
            }
            out.extend_from_slice(&page.descriptors);
            if page.complete {
                return Ok(out);
            }
            if page.next_lba <= at {
                return Err(CbtWireError::Layout(format!(
                    "NEXT LBA {} does not progress",
                    page.next_lba
                ))
                .into());
            }
            at = page.next_lba;
        }
    }

    pub async fn cbt_acquire(
        &self,
        lun: u64,
        lease_ms: u32,
        drain_ms: u32,
    ) -> Result<LockGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &acquire_cdb(lease_ms, drain_ms), LOCK_LEN as u32)
            .await?;
        Ok(parse_lock(&d)?)
    }

    pub async fn cbt_renew(
        &self,
        lun: u64,
        token: u64,
        lease_ms: u32,
    ) -> Result<LockGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &renew_cdb(token, lease_ms), LOCK_LEN as u32)
            .await?;
        Ok(parse_lock(&d)?)
    }

    pub async fn cbt_release(&self, lun: u64, token: u64) -> Result<LockGrant, CbtClientError> {
        let d = self
            .cbt_raw(lun, &release_cdb(token), LOCK_LEN as u32)
            .await?;
        Ok(parse_lock(&d)?)
    }

    pub async fn cbt_vpd(&self, lun: u64) -> Result<TrackingVpd, CbtClientError> {
        let d = self.inquiry_vpd(lun, VPD_PAGE).await?;
        Ok(parse_vpd(&d)?)
    }
}
