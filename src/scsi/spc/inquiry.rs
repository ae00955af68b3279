//! INQUIRY: standard data and the vital product data pages (SPC-5 §6.7,
//! §7.7; SBC-4 §6.6).

use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sbc::{limits, max_transfer_blocks};
use crate::scsi::sense::Sense;
use crate::scsi::vendor::cbt;
use crate::scsi::{LogicalUnit, ScsiCommand};

pub const VENDOR: &[u8; 8] = b"GENTGT  ";
pub const PRODUCT: &[u8; 16] = b"gentgt disk     ";

/// Peripheral device type 0: direct access block device.
const DIRECT_ACCESS: u8 = 0x00;
/// Peripheral qualifier 3 / type 1Fh: no logical unit here.
const NO_LUN: u8 = 0x7f;

/// Version descriptors claimed in standard data: SAM-5, iSCSI, SPC-4,
/// SBC-3 (libiscsi keys its SBC-3 tests on 04C0h).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];

/// Supported VPD pages, ascending (SPC-5 requires the order).
const PAGES: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2];

pub fn inquiry(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let evpd = byte(cmd.cdb, 1) & 0x01 != 0;
    let page = byte(cmd.cdb, 2);
    let alloc = be(cmd.cdb, 3, 2);
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        let pdt = if ctx.lu.is_some() {
            DIRECT_ACCESS
        } else {
            NO_LUN
        };
        let mut d = standard(pdt);
        if ctx.lu.is_some_and(|l| l.removable) {
            d[1] = 0x80; // RMB: the medium can be ejected (START STOP UNIT LOEJ)
        }
        if ctx.server.port_groups.ids().len() > 1 {
            d[6] |= 0x10; // MULTIP: reachable through more than one port
        }
        return Ok(data_in(cmd, d, alloc));
    }
    let lu = ctx.lu()?;
    let body = match page {
        0x00 => supported_pages(lu),
        0x80 => lu.identity.serial.as_bytes().to_vec(),
        0x83 => device_identification(ctx, lu),
        0x86 => extended_inquiry(),
        0x8f => super::copy_results::third_party_copy_vpd(),
        0xb0 => block_limits(lu),
        0xb1 => block_device_characteristics(),
        0xb2 => logical_block_provisioning(lu),
        cbt::VPD_PAGE => cbt::vpd_page(lu).ok_or(Sense::invalid_cdb_field(2, None))?,
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut data = vec![DIRECT_ACCESS, page];
    data.extend_from_slice(&(body.len() as u16).to_be_bytes());
    data.extend_from_slice(&body);
    Ok(data_in(cmd, data, alloc))
}

/// VPD page 00h: the CBT page (highest code, so the list stays ascending)
/// only on LUNs with tracking on.
fn supported_pages(lu: &LogicalUnit) -> Vec<u8> {
    let mut pages = PAGES.to_vec();
    if lu.tracker.is_some() {
        pages.push(cbt::VPD_PAGE);
    }
    pages
}

fn standard(pdt: u8) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = pdt;
    d[1] = 0x00; // not removable (the caller sets RMB for removable LUNs)
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10; // TPGS 01b: implicit ALUA (REPORT TARGET PORT GROUPS)
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(&revision());
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// PRODUCT REVISION LEVEL: the crate version, space padded to 4 bytes.
fn revision() -> [u8; 4] {
    let mut r = *b"    ";
    for (dst, src) in r.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
        *dst = src;
    }
    r
}

/// One designation descriptor (SPC-5 §7.7.6.1).
fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) {
    out.extend_from_slice(&[proto_codeset, piv_assoc_type, 0, value.len() as u8]);
    out.extend_from_slice(value);
}

/// SCSI name string: UTF-8, NUL terminated, padded to a multiple of 4.
fn name_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.truncate(251);
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

const ISCSI: u8 = 0x50; // protocol identifier 5 in the high nibble
const BINARY: u8 = 0x01;
const ASCII: u8 = 0x02;
const UTF8: u8 = 0x03;
const PIV: u8 = 0x80;
const ASSOC_LU: u8 = 0x00;
const ASSOC_PORT: u8 = 0x10;
const ASSOC_TARGET: u8 = 0x20;

fn device_identification(ctx: &Ctx, lu: &LogicalUnit) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA 6 (IEEE registered extended), the logical unit's stable name.
    designator(&mut d, BINARY, ASSOC_LU | 0x03, &lu.identity.naa);
    // T10 vendor ID: vendor + serial.
    let mut t10 = VENDOR.to_vec();
    t10.extend_from_slice(lu.identity.serial.as_bytes());
    t10.truncate(255);
    designator(&mut d, ASCII, ASSOC_LU | 0x01, &t10);
    // Relative target port identifier.
    let mut rel = vec![0, 0];
    rel.extend_from_slice(&ctx.nexus.relative_port.to_be_bytes());
    designator(&mut d, ISCSI | BINARY, PIV | ASSOC_PORT | 0x04, &rel);
    // Target port group: the port's own (see scsi::alua).
    designator(&mut d, ISCSI | BINARY, PIV | ASSOC_PORT | 0x05, &rel);
    // SCSI name strings: the target port, then the target device.
    let port = format!(
        "{},t,0x{:04x}",
        ctx.server.target_name, ctx.nexus.relative_port
    );
    designator(
        &mut d,
        ISCSI | UTF8,
        PIV | ASSOC_PORT | 0x08,
        &name_string(&port),
    );
    let target = name_string(&ctx.server.target_name);
    designator(&mut d, ISCSI | UTF8, PIV | ASSOC_TARGET | 0x08, &target);
    d
}

/// Extended INQUIRY Data (SPC-4 §7.8.7). No protection information.
/// Task attributes are not looked at, so every task is SIMPLE (SIMPSUP 1;
/// ORDSUP and HEADSUP 0). V_SUP 1: writes may sit in the host page cache
/// (WCE) until SYNCHRONIZE CACHE; NV_SUP 0: no non-volatile cache.
fn extended_inquiry() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[1] = 0x01; // SIMPSUP
    d[2] = 0x01; // V_SUP
    d
}

fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    // Offsets below are page offsets minus the 4-byte header.
    let granularity = (4096 / lu.block_size.max(1)).max(1) as u16;
    d[2..4].copy_from_slice(&granularity.to_be_bytes());
    let max = u32::try_from(max_transfer_blocks(lu)).unwrap_or(u32::MAX);
    d[4..8].copy_from_slice(&max.to_be_bytes());
    // WSNZ stays 0: WRITE SAME with 0 blocks means "to the end".
    d[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS;
    d[16..20].copy_from_slice(&limits::MAX_UNMAP_LBA_COUNT.to_be_bytes());
    d[20..24].copy_from_slice(&limits::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    let per_physical = limits::blocks_per_physical(lu.block_size);
    d[24..28].copy_from_slice(&per_physical.to_be_bytes());
    d[28] = 0x80; // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    d[32..40].copy_from_slice(&limits::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    d[40..44].copy_from_slice(&max.to_be_bytes()); // MAXIMUM ATOMIC TRANSFER LENGTH
    d[44..48].copy_from_slice(&limits::ATOMIC_ALIGNMENT.to_be_bytes());
    d[48..52].copy_from_slice(&limits::ATOMIC_GRANULARITY.to_be_bytes());
    d
}

fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
    // WABEREQ 01b / WACEREQ 01b: reads after SANITIZE BLOCK ERASE and
    // CRYPTOGRAPHIC ERASE succeed (with zeros).
    d[3] = 0x40 | 0x10;
    d
}

/// Logical block provisioning: UNMAP, WRITE SAME(16) and WRITE SAME(10)
/// with UNMAP deallocate (LBPU, LBPWS, LBPWS10); deallocated blocks read
/// zeros (LBPRZ 001b); no anchored state (ANC_SUP 0); thin provisioned.
/// THRESHOLD EXPONENT gives the unit of the resource counts of the
/// Logical Block Provisioning log page; THRESHOLD PERCENTAGE is the
/// configured soft threshold (0: none).
fn logical_block_provisioning(lu: &LogicalUnit) -> Vec<u8> {
    let exponent = crate::scsi::space::threshold_exponent(lu);
    let percent = lu.space.threshold().unwrap_or(0);
    vec![exponent, 0x80 | 0x40 | 0x20 | 0x04, 0x02, percent]
}
