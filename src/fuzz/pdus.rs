//! PDUs built from fuzz input, for the session targets over loopback
//! (`session`) and in memory (`session_sm`): opcode templates with fuzzed
//! flags, ITT, CmdSN, lengths and data, or a raw header.

use super::input::Input;
use crate::proto::pdu::{BHS_LEN, Opcode, Pdu};
use crate::scsi::cdb::TABLE;

/// ITT of the final ping; inputs only use small ITTs.
pub const PING_ITT: u32 = 0x7fff_fff0;
pub const RESERVED: u32 = 0xffff_ffff;

/// (ITT, TTT, offset, length) of the latest R2T the target sent.
pub type R2t = (u32, u32, u32, u32);

/// The initiator's sequence numbers.
pub struct Numbers {
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// One PDU from the input: low nibble of `kind` picks the template, the
/// high bits tweak CmdSN and the I bit.
pub fn build(inp: &mut Input, conn: &mut Numbers, r2t: Option<R2t>, kind: u8) -> (Pdu, bool) {
    let mut p = match kind & 0x0f {
        0..=3 => scsi_command(inp),
        4 | 5 | 0x0f => data_out(inp, r2t),
        6 => nop_out(inp),
        7 => tmf(inp),
        8 => text(inp),
        9 => logout(inp),
        10 => snack(inp),
        11 => Pdu::new(Opcode::LoginRequest).with_data(inp.chunk().to_vec()),
        _ => raw(inp),
    };
    let raw_header = kind & 0x0f == 12 || kind & 0x0f == 13 || kind & 0x0f == 14;
    if !raw_header {
        p.bhs.set_immediate(kind & 0x40 != 0);
        p.bhs.set_exp_stat_sn(conn.exp_stat_sn);
        let immediate = p.bhs.immediate() || p.opcode() == Opcode::DataOut;
        if p.opcode() != Opcode::DataOut {
            // CmdSN: in order, or off by a small fuzzed amount.
            let sn = if kind & 0x20 != 0 {
                conn.cmd_sn.wrapping_add(inp.u8() as i8 as u32)
            } else {
                conn.cmd_sn
            };
            p.bhs.set_cmd_sn(sn);
            if !immediate && kind & 0x20 == 0 {
                conn.cmd_sn = conn.cmd_sn.wrapping_add(1);
            }
        }
    }
    p.bhs.set_data_segment_len(p.data.len() as u32);
    (p, kind & 0x80 != 0)
}

fn itt(inp: &mut Input) -> u32 {
    u32::from(inp.u8() & 0x0f)
}

fn scsi_command(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    let row = &TABLE[inp.u8() as usize % TABLE.len()];
    let flags = inp.u8();
    // F, R, W, ATTR from the input; F usually set.
    p.bhs
        .set_flags((flags & 0x67) | if flags & 0x18 != 0x18 { 0x80 } else { 0 });
    p.bhs.set_itt(itt(inp));
    p.bhs.set_lun(u64::from(flags >> 7) << 48);
    let mut cdb = [0u8; 16];
    let body = inp.take(15);
    cdb[1..1 + body.len()].copy_from_slice(body);
    cdb[0] = row.opcode;
    if let Some(sa) = row.service_action {
        cdb[1] = (cdb[1] & 0xe0) | sa as u8;
    }
    for (c, m) in cdb.iter_mut().zip(row.usage_mask) {
        *c &= m;
    }
    p.bhs.set_cdb(&cdb);
    let edtl = if flags & 0x08 != 0 {
        inp.u32()
    } else {
        u32::from(inp.u16())
    };
    p.bhs.set_expected_data_len(edtl);
    p.data = inp.chunk().to_vec();
    p
}

fn data_out(inp: &mut Input, r2t: Option<R2t>) -> Pdu {
    let mut p = Pdu::new(Opcode::DataOut);
    let flags = inp.u8();
    p.bhs.set_flags(flags & 0x80);
    match r2t {
        Some((i, ttt, off, len)) if flags & 1 == 0 => {
            p.bhs.set_itt(i);
            p.bhs.set_ttt(ttt);
            p.bhs.set_buffer_offset(off);
            p.data = vec![flags; (len as usize).min(4096)];
            p.bhs.set_final(true);
        }
        _ => {
            p.bhs.set_itt(itt(inp));
            p.bhs
                .set_ttt(if flags & 2 != 0 { inp.u32() } else { RESERVED });
            p.bhs.set_buffer_offset(u32::from(inp.u16()));
            p.data = inp.chunk().to_vec();
        }
    }
    p.bhs.set_data_sn(u32::from(flags >> 4 & 3));
    p
}

fn nop_out(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::NopOut);
    p.bhs.set_final(true);
    let f = inp.u8();
    p.bhs.set_itt(if f & 1 != 0 { RESERVED } else { itt(inp) });
    p.bhs.set_ttt(if f & 2 != 0 { inp.u32() } else { RESERVED });
    p.data = inp.chunk().to_vec();
    p
}

fn tmf(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::TaskMgmtRequest);
    p.bhs.set_flags(0x80 | (inp.u8() & 0x7f));
    p.bhs.set_itt(itt(inp) | 0x100);
    p.bhs.set_ref_task_tag(itt(inp));
    p.bhs.set_lun(u64::from(inp.u8() & 3) << 48);
    p.bhs.set_ref_cmd_sn(inp.u32());
    p
}

fn text(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::TextRequest);
    let f = inp.u8();
    p.bhs.set_flags(f & 0xc0);
    p.bhs.set_itt(itt(inp));
    p.bhs.set_ttt(if f & 1 != 0 { inp.u32() } else { RESERVED });
    p.data = inp.chunk().to_vec();
    p
}

fn logout(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::LogoutRequest);
    p.bhs.set_flags(0x80 | (inp.u8() & 0x7f));
    p.bhs.set_itt(itt(inp));
    p.bhs.set_cid(inp.u16() & 1);
    p
}

fn snack(inp: &mut Input) -> Pdu {
    let mut p = Pdu::new(Opcode::Snack);
    p.bhs.set_flags(0x80 | (inp.u8() & 0x0f));
    p.bhs.set_itt(itt(inp));
    p.bhs.set_buffer_offset(inp.u32());
    p.bhs.set_residual_count(inp.u32());
    p
}

/// A raw header (any opcode, any field) with a correctly framed data
/// segment; the AHS length byte is cleared so framing holds.
fn raw(inp: &mut Input) -> Pdu {
    let mut p = Pdu::default();
    let h = inp.take(BHS_LEN);
    p.bhs.0[..h.len()].copy_from_slice(h);
    p.bhs.0[4] = 0;
    p.data = inp.chunk().to_vec();
    p
}
