//! MODE SENSE(6)/(10) (SPC-5 §6.13, §6.14) and the per-LUN mode values
//! MODE SELECT may change. Changeable: caching WCE, control D_SENSE and
//! SWP. Nothing is saveable (PS 0), so current values start from the
//! defaults at every start of the target.

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand};

pub const CACHING: u8 = 0x08;
pub const CONTROL: u8 = 0x0a;
pub const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;
/// The pages we have, in the order MODE SENSE returns them.
pub const PAGES: [u8; 3] = [CACHING, CONTROL, INFO_EXCEPTIONS];

/// Current values of the changeable mode parameters of one LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeValues {
    /// Caching page WCE: writes may complete before they are durable.
    pub wce: bool,
    /// Control page D_SENSE: report sense in descriptor format.
    pub d_sense: bool,
    /// Control page SWP: the medium is write protected by software.
    pub swp: bool,
}

impl Default for ModeValues {
    fn default() -> ModeValues {
        ModeValues {
            wce: true,
            d_sense: false,
            swp: false,
        }
    }
}

pub fn current(lu: &LogicalUnit) -> ModeValues {
    *lu.mode.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn software_write_protected(lu: &LogicalUnit) -> bool {
    current(lu).swp
}

pub fn write_cache_enabled(lu: &LogicalUnit) -> bool {
    current(lu).wce
}

pub fn descriptor_sense(lu: &LogicalUnit) -> bool {
    current(lu).d_sense
}

/// Device-specific parameter (SBC-4 §6.5.1): WP and DPOFUA.
const WP: u8 = 0x80;
const DPOFUA: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

struct Request {
    pc: PageControl,
    page: u8,
    dbd: bool,
    llbaa: bool,
    alloc: u64,
}

pub fn mode_sense6(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let req = parse(cmd.cdb, false, byte(cmd.cdb, 4) as u64)?;
    let lu = ctx.lu()?;
    let pages = pages(lu, &req)?;
    let bd = block_descriptor(lu, &req, false);
    let total = 4 + bd.len() + pages.len();
    let mut d = Vec::with_capacity(total);
    // MODE DATA LENGTH excludes itself; at most 255 by construction.
    d.push((total - 1).min(255) as u8);
    d.push(0); // medium type
    d.push(device_specific(lu));
    d.push(bd.len() as u8);
    d.extend_from_slice(&bd);
    d.extend_from_slice(&pages);
    Ok(data_in(cmd, d, req.alloc))
}

pub fn mode_sense10(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let req = parse(cmd.cdb, true, be(cmd.cdb, 7, 2))?;
    let lu = ctx.lu()?;
    let pages = pages(lu, &req)?;
    let bd = block_descriptor(lu, &req, req.llbaa);
    let total = 8 + bd.len() + pages.len();
    let mut d = Vec::with_capacity(total);
    d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
    d.push(0); // medium type
    d.push(device_specific(lu));
    d.push(if bd.len() == 16 { 0x01 } else { 0x00 }); // LONGLBA
    d.push(0);
    d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    d.extend_from_slice(&bd);
    d.extend_from_slice(&pages);
    Ok(data_in(cmd, d, req.alloc))
}

fn parse(cdb: &[u8], ten: bool, alloc: u64) -> Result<Request, Sense> {
    let b1 = byte(cdb, 1);
    let pc = match byte(cdb, 2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(SenseReason::SavingParametersNotSupported.into()),
    };
    let page = byte(cdb, 2) & 0x3f;
    // We have no subpages: only 00h, and FFh ("all subpages") with 3Fh.
    let subpage = byte(cdb, 3);
    if subpage != 0 && !(subpage == 0xff && page == ALL_PAGES) {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    Ok(Request {
        pc,
        page,
        dbd: b1 & 0x08 != 0,
        llbaa: ten && b1 & 0x10 != 0,
        alloc,
    })
}

/// WP is set for a read-only LUN and while SWP is on (SBC-4 §6.5.1).
fn device_specific(lu: &LogicalUnit) -> u8 {
    let wp = lu.read_only || software_write_protected(lu);
    DPOFUA | if wp { WP } else { 0 }
}

fn block_descriptor(lu: &LogicalUnit, req: &Request, long: bool) -> Vec<u8> {
    if req.dbd {
        return Vec::new();
    }
    let blocks = lu.num_blocks();
    let bs = lu.block_size;
    if long {
        let mut d = blocks.to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&bs.to_be_bytes());
        d
    } else {
        let n = u32::try_from(blocks).unwrap_or(u32::MAX);
        let mut d = n.to_be_bytes().to_vec();
        d.push(0); // density code
        d.extend_from_slice(&bs.to_be_bytes()[1..4]);
        d
    }
}

fn pages(lu: &LogicalUnit, req: &Request) -> Result<Vec<u8>, Sense> {
    let list: Vec<u8> = match req.page {
        ALL_PAGES => PAGES.to_vec(),
        p if PAGES.contains(&p) => vec![p],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    let values = current(lu);
    let mut out = Vec::new();
    for p in list {
        let page = match req.pc {
            PageControl::Current => page(p, &values),
            PageControl::Default => page(p, &ModeValues::default()),
            PageControl::Changeable => changeable(p),
        };
        out.extend_from_slice(&page);
    }
    Ok(out)
}

/// One mode page with its two-byte header (PS 0, SPF 0).
pub fn page(code: u8, v: &ModeValues) -> Vec<u8> {
    let mut p = blank(code);
    match code {
        // WCE: completed writes may sit in the host page cache until
        // SYNCHRONIZE CACHE (or FUA) makes them durable.
        CACHING => p[2] = if v.wce { 0x04 } else { 0 },
        CONTROL => {
            // TST 0, GLTSD 0.
            p[2] = if v.d_sense { 0x04 } else { 0 };
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted
            p[4] = if v.swp { 0x08 } else { 0 };
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
        }
        INFO_EXCEPTIONS => p[2] = 0x08, // DEXCPT: no exception reporting
        _ => {}
    }
    p
}

/// The changeable mask of a page: ones where MODE SELECT may change a bit.
pub fn changeable(code: u8) -> Vec<u8> {
    let mut p = blank(code);
    match code {
        CACHING => p[2] = 0x04,
        CONTROL => {
            p[2] = 0x04;
            p[4] = 0x08;
        }
        _ => {}
    }
    p
}

/// A page of zeros with its header.
fn blank(code: u8) -> Vec<u8> {
    let len = if code == CACHING { 20 } else { 12 };
    let mut p = vec![0u8; len];
    p[0] = code;
    p[1] = (len - 2) as u8;
    p
}
