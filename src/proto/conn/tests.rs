//! The protocol cases of tests/hostile_pdus.rs that need no socket, on
//! the in-memory pair (timers, logout, budget and task management are in
//! `rules.rs`).

use super::pair::*;
use crate::proto::pdu::{Opcode, Pdu};
use crate::proto::response::reject::*;

const CHECK_CONDITION: u8 = 0x02;

pub(super) fn assert_reject(p: &Pdu, reason: u8, rejected: &Pdu) {
    assert_eq!(p.opcode(), Opcode::Reject, "{:?}", p.bhs);
    assert_eq!(p.bhs.0[2], reason, "Reject reason");
    assert!(p.data.len() >= 48, "Reject without the rejected header");
    assert_eq!(p.data[0] & 0x3f, rejected.bhs.0[0] & 0x3f);
    assert_eq!(&p.data[16..20], &rejected.bhs.0[16..20], "rejected ITT");
}

pub(super) fn assert_check(p: &Pdu, itt: u32, sense: (u8, u8, u8)) {
    assert_eq!(p.opcode(), Opcode::ScsiResponse, "{:?}", p.bhs);
    assert_eq!(p.bhs.itt(), itt);
    assert_eq!(p.bhs.0[3], CHECK_CONDITION, "status");
    // The data segment: a 2-byte length, then fixed-format sense.
    let s = &p.data[2..];
    assert_eq!(
        (s[0] & 0x7f, s[2] & 0x0f, s[12], s[13]),
        (0x70, sense.0, sense.1, sense.2)
    );
}

pub(super) fn assert_good(p: &Pdu, itt: u32) {
    assert_eq!(
        (p.opcode(), p.bhs.itt(), p.bhs.0[3]),
        (Opcode::ScsiResponse, itt, 0)
    );
}

/// A write of `blocks` blocks: its R2T's TTT.
pub(super) fn start_write(t: &mut Pair, itt: u32, blocks: u32) -> u32 {
    t.command(write(itt, 0, blocks));
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.itt()), (Opcode::R2t, itt));
    assert_eq!(r.bhs.desired_data_len(), blocks * BS);
    r.bhs.ttt()
}

#[test]
fn opcodes_not_allowed_in_full_feature_phase_are_rejected() {
    let mut t = Pair::new(config());
    let login = Pdu::new(Opcode::LoginRequest);
    t.raw(login.clone());
    assert_reject(&t.next(), PROTOCOL_ERROR, &login);
    let mut snack = Pdu::new(Opcode::Snack);
    snack.bhs.set_itt(7);
    t.raw(snack.clone());
    assert_reject(&t.next(), SNACK_REJECT, &snack);
    let mut odd = Pdu::default();
    odd.bhs.0[0] = 0x1c; // not an initiator opcode
    t.raw(odd.clone());
    assert_reject(&t.next(), COMMAND_NOT_SUPPORTED, &odd);
    // None of it disturbed the session.
    let itt = t.itt();
    t.command(read(itt, 0, 1));
    assert_eq!(t.next().opcode(), Opcode::DataIn);
    assert_eq!(t.closed, None);
}

#[test]
fn discovery_sessions_reject_scsi_commands() {
    let mut cfg = config();
    cfg.scsi = false;
    cfg.kind = crate::proto::login::SessionType::Discovery;
    let mut t = Pair::new(cfg);
    let p = read(5, 0, 1);
    t.command(p.clone());
    assert_reject(&t.next(), PROTOCOL_ERROR, &p);
    assert!(t.device.is_empty());
}

#[test]
fn cmd_sn_outside_the_window_is_ignored() {
    let mut t = Pair::new(config());
    let (exp, max) = t.conn.window();
    for sn in [
        max.wrapping_add(1),
        exp.wrapping_add(100_000),
        exp.wrapping_sub(3),
    ] {
        let (a, b) = (t.itt(), t.itt());
        let mut r = read(a, 0, 8);
        r.bhs.set_cmd_sn(sn);
        t.raw(r);
        let mut w = write(b, 0, 8);
        w.bhs.set_cmd_sn(sn);
        t.raw(w);
    }
    t.assert_silent();
    assert!(t.device.is_empty(), "an ignored command ran");
    assert!(t.conn.tasks.is_empty(), "an ignored command stayed");
    assert_eq!(t.conn.window().0, exp, "the window moved");
    let itt = t.itt();
    t.command(scsi_cmd(itt, &[0; 16], 0, false, false));
    assert_good(&t.next(), itt);
}

#[test]
fn held_commands_run_in_cmd_sn_order() {
    let mut t = Pair::new(config());
    let (a, b) = (t.itt(), t.itt());
    let mut second = scsi_cmd(b, &[0; 16], 0, false, false);
    second.bhs.set_cmd_sn(t.cmd_sn + 1);
    t.raw(second);
    t.assert_silent();
    t.command(scsi_cmd(a, &[0; 16], 0, false, false));
    t.cmd_sn += 1;
    assert_eq!(t.device, [DeviceCall::Execute(a), DeviceCall::Execute(b)]);
    assert_good(&t.next(), a);
    assert_good(&t.next(), b);
}

#[test]
fn duplicate_itt_is_rejected_and_uses_its_cmd_sn() {
    let mut t = Pair::new(config());
    let itt = t.itt();
    let ttt = start_write(&mut t, itt, 16);
    let dup = read(itt, 0, 1);
    t.command(dup.clone());
    assert_reject(&t.next(), TASK_IN_PROGRESS, &dup);
    t.raw(data_out(itt, ttt, 0, 0, vec![0x5a; 8192]));
    assert_good(&t.next(), itt);
    // The duplicate's CmdSN was used up: the next command is not held.
    let r = t.itt();
    t.command(read(r, 0, 16));
    let d = t.next();
    assert_eq!(d.opcode(), Opcode::DataIn);
    assert!(d.data.iter().all(|&b| b == 0x5a));
}

#[test]
fn data_out_for_unknown_and_ended_tasks() {
    let mut t = Pair::new(config());
    for (itt, ttt) in [(0x7777_0001, 0xffff_ffff), (0x7777_0002, 0x1234)] {
        let d = data_out(itt, ttt, 0, 0, vec![1; 512]);
        t.raw(d.clone());
        assert_reject(&t.next(), INVALID_PDU_FIELD, &d);
    }
    // A write that failed before its data came (EDTL too large, F = 0):
    // the data that follows its response is dropped quietly.
    let itt = t.itt();
    let mut p = write(itt, 0, 8);
    p.bhs.set_expected_data_len(0xffff_fe00);
    p.bhs.set_final(false);
    t.command(p);
    assert_check(&t.next(), itt, (0x05, 0x24, 0x00));
    t.raw(data_out(itt, 0xffff_ffff, 0, 0, vec![2; 4096]));
    t.assert_silent();
    assert!(t.device.is_empty());
}

#[test]
fn data_out_beyond_its_r2t_fails_the_write() {
    let mut t = Pair::new(config());
    let cases: [fn(u32) -> Pdu; 3] = [
        // Past the transfer's end.
        |ttt| data_out(2, ttt, 0, 4096, vec![7; 4096]),
        // More data than the R2T asked for.
        |ttt| data_out(2, ttt, 0, 0, vec![7; 4096 + 512]),
        // A DataSN gap.
        |ttt| data_out(2, ttt, 1, 0, vec![7; 4096]),
    ];
    for bad in cases {
        let ttt = start_write(&mut t, 2, 8);
        let d = bad(ttt);
        t.raw(d.clone());
        assert_reject(&t.next(), PROTOCOL_ERROR, &d);
        assert_check(&t.next(), 2, (0x0b, 0x4b, 0x00));
        // Data that follows is dropped quietly.
        t.raw(data_out(2, ttt, 0, 0, vec![7; 4096]));
        t.assert_silent();
    }
    assert!(t.device.is_empty(), "a failed write ran");
    assert!(t.disk.iter().all(|&b| b == 0));
}

#[test]
fn data_out_offsets_out_of_range() {
    let mut t = Pair::new(config());
    for (offset, len) in [(1u32 << 20, 512usize), (0xffff_fff0, 32), (4096, 8192)] {
        let itt = t.itt();
        let ttt = start_write(&mut t, itt, 16);
        let d = data_out(itt, ttt, 0, offset, vec![0xee; len]);
        t.raw(d.clone());
        // Data phase error: the task ends with ABORTED COMMAND / 4B/00.
        assert_reject(&t.next(), PROTOCOL_ERROR, &d);
        assert_check(&t.next(), itt, (0x0b, 0x4b, 0x00));
        assert!(t.in_table.is_empty(), "a failed write stayed");
    }
    // Nothing was written, and the session goes on.
    assert!(t.device.is_empty(), "a rejected write ran");
    let itt = t.itt();
    t.command(read(itt, 0, 16));
    let d = t.next();
    assert_eq!(d.opcode(), Opcode::DataIn);
    assert!(d.data.iter().all(|&b| b == 0), "a rejected write landed");
}

#[test]
fn data_sn_gap() {
    let mut t = Pair::new(config());
    let itt = t.itt();
    let ttt = start_write(&mut t, itt, 32);
    let mut d0 = data_out(itt, ttt, 0, 0, vec![0x11; 8192]);
    d0.bhs.set_final(false);
    t.raw(d0);
    t.assert_silent();
    // DataSN 2 where 1 is due.
    let d2 = data_out(itt, ttt, 2, 8192, vec![0x22; 8192]);
    t.raw(d2.clone());
    assert_reject(&t.next(), PROTOCOL_ERROR, &d2);
    assert_check(&t.next(), itt, (0x0b, 0x4b, 0x00));
    assert!(t.device.is_empty(), "a failed write ran");
    assert!(t.disk.iter().all(|&b| b == 0), "a failed write landed");
}

#[test]
fn data_out_with_an_unknown_ttt_fails_the_write() {
    let mut t = Pair::new(config());
    let ttt = start_write(&mut t, 2, 8);
    let d = data_out(2, ttt.wrapping_add(99), 0, 0, vec![7; 4096]);
    t.raw(d.clone());
    assert_reject(&t.next(), PROTOCOL_ERROR, &d);
    assert_check(&t.next(), 2, (0x0b, 0x4b, 0x00));
}

#[test]
fn immediate_data_beyond_first_burst_is_rejected() {
    let mut t = Pair::new(config());
    let mut p = write(3, 0, 1024);
    p.data = vec![1; 65536 + 512];
    t.command(p.clone());
    assert_reject(&t.next(), PROTOCOL_ERROR, &p);
    // Its CmdSN is used up.
    t.command(scsi_cmd(4, &[0; 16], 0, false, false));
    assert_good(&t.next(), 4);
}

#[test]
fn task_management_for_unknown_tasks_and_luns() {
    let mut t = Pair::new(config());
    // ABORT TASK of a tag never used, with a CmdSN long done.
    let done_sn = t.cmd_sn.wrapping_sub(1);
    t.command(tmf(0x100, 1, 0, 0x0bad, done_sn));
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.bhs.0[2]),
        (Opcode::TaskMgmtResponse, 0x100, 1)
    );
    // Its CmdSN lies ahead, before the TMF's: received and done.
    let mut p = tmf(0x101, 1, 0, 0x0bad, t.cmd_sn);
    p.bhs.set_cmd_sn(t.cmd_sn + 1);
    t.raw(p);
    assert_eq!(t.next().bhs.0[2], 0, "FUNCTION COMPLETE");
    for (f, lun, want) in [(5, 9, 2), (2, 9, 2), (4, 9, 2), (8, 0, 4), (0x0e, 0, 5)] {
        t.command(tmf(0x102, f, lun, 0, 0));
        assert_eq!(t.next().bhs.0[2], want, "function {f}");
    }
    // ABORT TASK of a write waiting for data: done, no response for it,
    // and its late data is dropped quietly.
    let ttt = start_write(&mut t, 9, 8);
    assert_eq!(t.in_table.len(), 1);
    let rsn = t.cmd_sn.wrapping_sub(1);
    t.command(tmf(0x103, 1, 0, 9, rsn));
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.0[2]), (Opcode::TaskMgmtResponse, 0));
    assert!(t.in_table.is_empty(), "the aborted write stayed");
    t.raw(data_out(9, ttt, 0, 0, vec![3; 4096]));
    t.assert_silent();
    assert!(!t.device.iter().any(|c| matches!(c, DeviceCall::Execute(9))));
}

mod hung;
mod rules;
