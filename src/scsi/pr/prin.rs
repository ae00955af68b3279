//! PERSISTENT RESERVE IN (5Eh): READ KEYS, READ RESERVATION, REPORT
//! CAPABILITIES, READ FULL STATUS (SPC-5 §6.16).

use super::state::{PrState, Registration};
use super::{conflict_result, read};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::{LogicalUnit, ScsiCommand};

/// iSCSI protocol identifier with TransportID FORMAT CODE 01b (the
/// initiator port name with its ISID).
const ISCSI_TRANSPORT_ID_FORMAT1: u8 = 0x40 | 0x05;

pub fn prin(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let alloc = be(cmd.cdb, 7, 2);
    let st = read(lu).clone();
    // SPC-2 §5.5.1: while a RESERVE is in effect every PERSISTENT
    // RESERVE command conflicts, whoever sends it.
    if st.spc2_holder.is_some() {
        return Ok(conflict_result(0));
    }
    let data = match byte(cmd.cdb, 1) & 0x1f {
        0 => read_keys(&st),
        1 => read_reservation(&st),
        2 => report_capabilities(lu, &st),
        // The table has rows for service actions 0..=3 only.
        _ => read_full_status(&st),
    };
    Ok(data_in(cmd, data, alloc))
}

fn header(st: &PrState, additional: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + additional);
    d.extend_from_slice(&st.generation.to_be_bytes());
    d.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    d
}

fn read_keys(st: &PrState) -> Vec<u8> {
    let mut d = header(st, 8 * st.registrations.len());
    for r in &st.registrations {
        d.extend_from_slice(&r.key.to_be_bytes());
    }
    d
}

fn read_reservation(st: &PrState) -> Vec<u8> {
    let Some(r) = &st.reservation else {
        return header(st, 0);
    };
    let mut d = header(st, 16);
    d.extend_from_slice(&st.reservation_key().to_be_bytes());
    d.extend_from_slice(&[0; 4]); // obsolete
    d.push(0);
    d.push(r.kind.code()); // SCOPE 0h (LU) in the high nibble
    d.extend_from_slice(&[0; 2]);
    d
}

fn report_capabilities(lu: &LogicalUnit, st: &PrState) -> Vec<u8> {
    let ptpl_c = lu.pr_path.is_some();
    let mut d = vec![0u8; 8];
    d[1] = 8; // LENGTH
    // CRH (RESERVE/RELEASE follow SPC-5 §5.14.3), ATP_C; SIP_C stays 0:
    // SPEC_I_PT is refused.
    d[2] = 0x10 | 0x04 | ptpl_c as u8;
    // TMV; ALLOW COMMANDS 011b: TEST UNIT READY passes every type, and
    // MODE SENSE, READ BUFFER, RECEIVE DIAGNOSTIC RESULTS, REPORT
    // SUPPORTED OPERATION CODES and the like pass Write Exclusive;
    // PTPL_A.
    d[3] = 0x80 | (0b011 << 4) | (ptpl_c && st.aptpl) as u8;
    // Type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    d[5] = 0x01;
    d
}

/// TransportID format 1: "iqn...,i,0x<isid>" NUL-terminated, padded to a
/// multiple of four, at least 20 bytes after the header (SPC-5 §7.6.4.6).
fn transport_id(r: &Registration) -> Vec<u8> {
    let mut name = r.port.as_bytes().to_vec();
    name.push(0);
    let len = name.len().div_ceil(4).max(5) * 4;
    name.resize(len, 0);
    let mut t = vec![ISCSI_TRANSPORT_ID_FORMAT1, 0];
    t.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

fn read_full_status(st: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &st.registrations {
        let holds = st
            .reservation
            .as_ref()
            .is_some_and(|res| match &res.holder {
                None => true,
                Some((p, rp)) => r.is(p, *rp),
            });
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.push(((r.all_tg_pt as u8) << 1) | holds as u8);
        body.push(match (&st.reservation, holds) {
            (Some(res), true) => res.kind.code(),
            _ => 0,
        });
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&r.rel_port.to_be_bytes());
        let tid = transport_id(r);
        body.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&tid);
    }
    let mut d = header(st, body.len());
    d.extend_from_slice(&body);
    d
}
