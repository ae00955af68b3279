//! The full-feature connection state machine, over a real loopback socket
//! to an in-process server. Each input: a login with good keys (variants
//! from byte 0), then PDUs built from the input (opcode templates with
//! fuzzed flags, ITT, CmdSN, lengths and data; or a raw header), then an
//! immediate NOP-Out ping. The target must answer the ping or close the
//! connection, never send a malformed PDU, never panic; if it closed, a
//! fresh connection must still log in and run TEST UNIT READY.

use super::input::Input;
use super::pdus::{self, PING_ITT, RESERVED};
use super::session_wire as wire;

use crate::proto::pdu::{Opcode, Pdu};
use std::net::Shutdown;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use wire::LoginChoice;

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
        let mut sns = pdus::Numbers {
            cmd_sn: conn.cmd_sn,
            exp_stat_sn: conn.exp_stat_sn,
        };
        let (p, corrupt) = pdus::build(&mut inp, &mut sns, seen.r2t, kind);
        conn.cmd_sn = sns.cmd_sn;
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
