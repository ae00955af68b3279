//! Client side of the CBT wire contract (`shared/specs/cbt-scsi.md`,
//! version 1): CDB builders, strict reply parsers and `Session` helpers.
//! The CLI (`gentgt cbt`) and the backup client share it.
//!
//! The parsers refuse anything the contract does not allow (wrong length,
//! nonzero reserved bytes, descriptors out of order or outside the
//! generation window): a backup built on a misread reply would silently
//! miss data, so a target that breaks the layout is an error, not a guess.

use super::error::InitiatorError;
use super::session::Session;
use thiserror::Error;

pub const OPCODE: u8 = 0xc0;
pub const VERSION: u8 = 1;
pub const VPD_PAGE: u8 = 0xc0;
pub const REPORT_LEN: usize = 96;
pub const CLOSE_LEN: usize = 32;
pub const LOCK_LEN: usize = 32;
pub const HEADER_LEN: usize = 48;
pub const DESCRIPTOR_LEN: usize = 24;
/// VPD C0h: 4-byte header + 60.
pub const VPD_LEN: usize = 64;
/// STARTING LBA is a 40-bit field.
pub const MAX_START_LBA: u64 = (1 << 40) - 1;

/// Service actions.
pub const SA_REPORT: u8 = 0x00;
pub const SA_CLOSE: u8 = 0x01;
pub const SA_CHANGES: u8 = 0x02;
pub const SA_ACQUIRE: u8 = 0x03;
pub const SA_RENEW: u8 = 0x04;
pub const SA_RELEASE: u8 = 0x05;

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
    #[error("{what}: version {0} is not supported (this client speaks {VERSION})", .got)]
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
}

impl CbtClientError {
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

fn cdb(sa: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = OPCODE;
    c[1] = sa;
    c
}

pub fn report_tracking_cdb() -> [u8; 16] {
    cdb(SA_REPORT)
}

pub fn close_generation_cdb() -> [u8; 16] {
    cdb(SA_CLOSE)
}

pub fn get_changed_extents_cdb(since: u64, start_lba: u64) -> Result<[u8; 16], CbtWireError> {
    if start_lba > MAX_START_LBA {
        return Err(CbtWireError::LbaTooLarge(start_lba));
    }
    let mut c = cdb(SA_CHANGES);
    c[2..10].copy_from_slice(&since.to_be_bytes());
    c[10..15].copy_from_slice(&start_lba.to_be_bytes()[3..]);
    Ok(c)
}

pub fn acquire_cdb(lease_ms: u32, drain_ms: u32) -> [u8; 16] {
    let mut c = cdb(SA_ACQUIRE);
    c[2..6].copy_from_slice(&lease_ms.to_be_bytes());
    c[6..10].copy_from_slice(&drain_ms.to_be_bytes());
    c
}

pub fn renew_cdb(token: u64, lease_ms: u32) -> [u8; 16] {
    let mut c = cdb(SA_RENEW);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c[10..14].copy_from_slice(&lease_ms.to_be_bytes());
    c
}

pub fn release_cdb(token: u64) -> [u8; 16] {
    let mut c = cdb(SA_RELEASE);
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c
}

/// FLAGS of REPORT TRACKING and VPD C0h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingFlags {
    pub tracking_on: bool,
    pub persistent: bool,
    pub write_locked: bool,
    pub recovered: bool,
}

impl TrackingFlags {
    fn parse(what: &'static str, b: u8) -> Result<TrackingFlags, CbtWireError> {
        if b & 0xf0 != 0 {
            return Err(CbtWireError::Layout(format!(
                "{what}: FLAGS {b:#04x} has reserved bits set"
            )));
        }
        Ok(TrackingFlags {
            tracking_on: b & 1 != 0,
            persistent: b & 2 != 0,
            write_locked: b & 4 != 0,
            recovered: b & 8 != 0,
        })
    }
}

/// SA 00h REPORT TRACKING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingReport {
    pub flags: TrackingFlags,
    pub extent_blocks: u32,
    pub block_len: u32,
    pub capacity_blocks: u64,
    pub uuid: [u8; 16],
    pub open_generation: u64,
    pub recovery_generation: u64,
    pub lease_remaining_ms: u32,
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
    if !(1..=2).contains(&d[0]) {
        return Err(CbtWireError::Version { what: W, got: d[0] });
    }
    let tail = if d[0] == 1 { (60, 96) } else { (90, 96) };
    reserved(W, d, &[(2, 4), (12, 16), tail])?;
    let r = TrackingReport {
        flags: TrackingFlags::parse(W, d[1])?,
        extent_blocks: u32_at(d, 4),
        block_len: u32_at(d, 8),
        capacity_blocks: u64_at(d, 16),
        uuid: uuid_at(d, 24),
        open_generation: u64_at(d, 40),
        recovery_generation: u64_at(d, 48),
        lease_remaining_ms: u32_at(d, 56),
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
    if d[4] & !1 != 0 {
        return Err(CbtWireError::Layout(format!("{W}: FLAGS {:#04x}", d[4])));
    }
    reserved(W, d, &[(5, 8), (40, 48)])?;
    let page = ExtentsPage {
        complete: d[4] & 1 != 0,
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
    if flags & !1 != 0 {
        return Err(CbtWireError::Layout(format!(
            "descriptor FLAGS {flags:#010x} has reserved bits set"
        )));
    }
    Ok(ExtentDescriptor {
        lba: u64_at(x, 0),
        blocks: u32_at(x, 8),
        deallocated: flags & 1 != 0,
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
    if d[1] != VPD_PAGE || u16::from_be_bytes([d[2], d[3]]) as usize != VPD_LEN - 4 {
        return Err(CbtWireError::Layout(format!(
            "{W}: bad header {:02x?}",
            &d[..4]
        )));
    }
    if !(1..=2).contains(&d[4]) {
        return Err(CbtWireError::Version { what: W, got: d[4] });
    }
    reserved(W, d, &[(6, 8), (36, 64)])?;
    Ok(TrackingVpd {
        flags: TrackingFlags::parse(W, d[5])?,
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
        _ => "",
    };
    format!("{key_name} ({key:#x}), ASC/ASCQ {asc:02X}h/{ascq:02X}h {asc_name}")
        .trim_end()
        .to_string()
}

/// Describe a non-GOOD SCSI status with its sense.
pub fn describe_status(status: u8, sense: &[u8]) -> String {
    match status {
        0x18 => "RESERVATION CONFLICT (another session holds the write lock)".into(),
        0x08 => "BUSY".into(),
        0x28 => "TASK SET FULL".into(),
        _ => match super::command::parse_sense(sense) {
            Some((k, a, q)) => format!("CHECK CONDITION: {}", sense_name(k, a, q)),
            None => format!("SCSI status {status:#04x}"),
        },
    }
}

impl Session {
    /// Run one C0h command and require GOOD.
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
        let cdb = get_changed_extents_cdb(since, start_lba)?;
        let alloc = max_descriptors
            .saturating_mul(DESCRIPTOR_LEN as u32)
            .saturating_add(HEADER_LEN as u32);
        let d = self.cbt_raw(lun, &cdb, alloc).await?;
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
        let mut out = Vec::new();
        let mut at = start_lba;
        let mut uuid = None;
        loop {
            let page = self.cbt_changes(lun, since, at, 4096).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_follow_the_layout() {
        let c = get_changed_extents_cdb(0x0102030405060708, 0xaa_bbcc_ddee).unwrap();
        assert_eq!(c[0..2], [0xc0, 0x02]);
        assert_eq!(c[2..10], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c[10..15], [0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        assert_eq!(c[15], 0);
        assert!(get_changed_extents_cdb(0, 1 << 40).is_err());
        let r = renew_cdb(7, 9);
        assert_eq!((r[1], r[9], r[13], r[14]), (4, 7, 9, 0));
        let a = acquire_cdb(1, 2);
        assert_eq!((a[1], a[5], a[9], a[10]), (3, 1, 2, 0));
    }

    fn page(descs: &[(u64, u32, u64)], next: u64, complete: bool) -> Vec<u8> {
        let mut d = vec![0u8; HEADER_LEN];
        d[0..4].copy_from_slice(&((descs.len() * DESCRIPTOR_LEN) as u32).to_be_bytes());
        d[4] = complete as u8;
        d[8..16].copy_from_slice(&5u64.to_be_bytes());
        d[16..24].copy_from_slice(&next.to_be_bytes());
        for &(lba, n, g) in descs {
            d.extend_from_slice(&lba.to_be_bytes());
            d.extend_from_slice(&n.to_be_bytes());
            d.extend_from_slice(&0u32.to_be_bytes());
            d.extend_from_slice(&g.to_be_bytes());
        }
        d
    }

    #[test]
    fn changes_parser_is_strict() {
        let ok = parse_changes(&page(&[(0, 8, 3), (16, 8, 5)], 64, true), 2, 0).unwrap();
        assert_eq!(ok.descriptors.len(), 2);
        // Overlap, generation outside the window, NEXT LBA inside, length.
        assert!(parse_changes(&page(&[(0, 8, 3), (4, 8, 5)], 64, true), 2, 0).is_err());
        assert!(parse_changes(&page(&[(0, 8, 2)], 64, true), 2, 0).is_err());
        assert!(parse_changes(&page(&[(0, 8, 6)], 64, true), 2, 0).is_err());
        assert!(parse_changes(&page(&[(0, 8, 3)], 4, false), 2, 0).is_err());
        assert!(parse_changes(&page(&[(0, 8, 3)], 64, true), 2, 1).is_err());
        let mut cut = page(&[(0, 8, 3)], 64, true);
        cut.pop();
        assert!(matches!(
            parse_changes(&cut, 2, 0),
            Err(CbtWireError::Length { .. })
        ));
        let mut res = page(&[], 64, true);
        res[41] = 1;
        assert!(matches!(
            parse_changes(&res, 2, 0),
            Err(CbtWireError::Reserved { at: 41, .. })
        ));
    }

    #[test]
    fn sense_names_are_readable() {
        let s = describe_status(2, &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x02]);
        assert!(s.contains("ACCESS DENIED"), "{s}");
        assert!(describe_status(0x18, &[]).contains("RESERVATION CONFLICT"));
    }
}
