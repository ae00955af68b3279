//! The full-feature connection state machine, over a real loopback socket
//! to an in-process server. Each input: a login with good keys (variants
//! from byte 0), then PDUs built from the input (opcode templates with
//! fuzzed flags, ITT, CmdSN, lengths and data; or a raw header), then an
//! immediate NOP-Out ping. The target must answer the ping or close the
//! connection, never send a malformed PDU, never panic; if it closed, a
//! fresh connection must still log in and run TEST UNIT READY.

use super::input::Input;
use super::session_wire as wire;

use crate::proto::pdu::{BHS_LEN, Opcode, Pdu};
use crate::scsi::cdb::TABLE;
use std::net::Shutdown;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use wire::{Conn, LoginChoice};

/// ITT of the final ping; inputs only use small ITTs.
const PING_ITT: u32 = 0x7fff_fff0;
const RESERVED: u32 = 0xffff_ffff;

/// What we know of the target's replies while sending.
#[derive(Default)]
struct Seen {
    /// (ITT, TTT, offset, length) of the latest R2T.
    r2t: Option<(u32, u32, u32, u32)>,
    closed: bool,
    ping_answered: bool,
}

impl Seen {
    fn note(&mut self, p: &Pdu, mrdsl: u32) {
        assert!(p.data.len() <= mrdsl as usize, "segment beyond our MRDSL");
        match p.opcode() {
            Opcode::R2t => {
                let b = &p.bhs;
                self.r2t = Some((b.itt(), b.ttt(), b.buffer_offset(), b.desired_data_len()));
            }
            Opcode::NopIn if p.bhs.itt() == PING_ITT => self.ping_answered = true,
            _ => {}
        }
    }

    fn drain(&mut self, rx: &Receiver<Pdu>, mrdsl: u32) {
        loop {
            match rx.try_recv() {
                Ok(p) => self.note(&p, mrdsl),
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Wait until `until` holds, the connection closes or patience ends.
    fn wait(&mut self, rx: &Receiver<Pdu>, mrdsl: u32, limit: Duration, until: fn(&Seen) -> bool) {
        let end = Instant::now() + limit;
        while !until(self) && !self.closed {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => self.note(&p, mrdsl),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }
}

pub fn session(data: &[u8]) {
    let mut inp = Input::new(data);
    let choice = LoginChoice(inp.u8());
    let Some(mut conn) = wire::login(choice) else {
        panic!("good login refused: {choice:?}");
    };
    let mrdsl = choice.mrdsl();
    let rx = wire::spawn_reader(&conn, mrdsl);
    let mut seen = Seen::default();
    let mut steps = 0;
    while !inp.is_empty() && !seen.closed && steps < 64 {
        steps += 1;
        let kind = inp.u8();
        if kind & 0x0f == 0x0f {
            // Wait for an R2T to answer (solicited Data-Out).
            seen.wait(&rx, mrdsl, Duration::from_millis(20), |s| s.r2t.is_some());
        }
        let (p, corrupt) = build(&mut inp, &mut conn, &seen, kind);
        if conn.send(&p, corrupt).is_err() {
            seen.closed = true;
        }
        seen.drain(&rx, mrdsl);
    }
    if !seen.closed {
        let mut ping = Pdu::new(Opcode::NopOut);
        ping.bhs.set_immediate(true);
        ping.bhs.set_final(true);
        ping.bhs.set_itt(PING_ITT);
        ping.bhs.set_ttt(RESERVED);
        ping.bhs.set_cmd_sn(conn.cmd_sn);
        ping.bhs.set_exp_stat_sn(conn.exp_stat_sn);
        if conn.send(&ping, false).is_err() {
            seen.closed = true;
        }
        seen.wait(&rx, mrdsl, wire::PATIENCE, |s| s.ping_answered);
        assert!(
            seen.ping_answered || seen.closed,
            "target neither answered the ping nor closed within {:?}",
            wire::PATIENCE
        );
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    assert!(!wire::server_panicked(), "a server thread panicked");
    if seen.closed {
        wire::check_healthy();
    }
}

/// One PDU from the input: low nibble of `kind` picks the template, the
/// high bits tweak CmdSN and the I bit.
fn build(inp: &mut Input, conn: &mut Conn, seen: &Seen, kind: u8) -> (Pdu, bool) {
    let mut p = match kind & 0x0f {
        0..=3 => scsi_command(inp, conn),
        4 | 5 | 0x0f => data_out(inp, seen),
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

fn scsi_command(inp: &mut Input, _conn: &Conn) -> Pdu {
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

fn data_out(inp: &mut Input, seen: &Seen) -> Pdu {
    let mut p = Pdu::new(Opcode::DataOut);
    let flags = inp.u8();
    p.bhs.set_flags(flags & 0x80);
    match seen.r2t {
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
