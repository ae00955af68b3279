//! MODE SENSE(6)/(10) (SPC-5 §6.13, §6.14). No page is changeable: MODE
//! SELECT is not supported, so the changeable mask is all zeros and the
//! current values equal the defaults.

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;

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
    let pages = pages(&req)?;
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
    let pages = pages(&req)?;
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

fn device_specific(lu: &LogicalUnit) -> u8 {
    DPOFUA | if lu.read_only { WP } else { 0 }
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

fn pages(req: &Request) -> Result<Vec<u8>, Sense> {
    let list: &[u8] = match req.page {
        ALL_PAGES => &[CACHING, CONTROL, INFO_EXCEPTIONS],
        CACHING => &[CACHING],
        CONTROL => &[CONTROL],
        INFO_EXCEPTIONS => &[INFO_EXCEPTIONS],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    let mut out = Vec::new();
    for &p in list {
        let mut page = page(p);
        if req.pc == PageControl::Changeable {
            // Nothing can be changed: keep the header, zero the values.
            page[2..].fill(0);
        }
        out.extend_from_slice(&page);
    }
    Ok(out)
}

/// One mode page with its two-byte header (PS 0, SPF 0).
fn page(code: u8) -> Vec<u8> {
    let len = if code == CACHING { 20 } else { 12 };
    let mut p = vec![0u8; len];
    p[0] = code;
    p[1] = (len - 2) as u8;
    match code {
        // WCE: completed writes may sit in the host page cache until
        // SYNCHRONIZE CACHE (or FUA) makes them durable.
        CACHING => p[2] = 0x04,
        CONTROL => {
            // TST 0, D_SENSE 0 (fixed format sense), GLTSD 0, SWP 0.
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
        }
        INFO_EXCEPTIONS => p[2] = 0x08, // DEXCPT: no exception reporting
        _ => {}
    }
    p
}
