//! The protocol cases of tests/hostile_pdus.rs that need no socket, and
//! the timer, logout, budget and task-management rules, on the in-memory
//! pair.

use super::pair::*;
use super::{AbortScope, BudgetPool, CloseReason};
use crate::proto::pdu::{Opcode, Pdu};
use crate::proto::response::reject::*;
use std::sync::Arc;
use std::time::Duration;

const CHECK_CONDITION: u8 = 0x02;

fn assert_reject(p: &Pdu, reason: u8, rejected: &Pdu) {
    assert_eq!(p.opcode(), Opcode::Reject, "{:?}", p.bhs);
    assert_eq!(p.bhs.0[2], reason, "Reject reason");
    assert!(p.data.len() >= 48, "Reject without the rejected header");
    assert_eq!(p.data[0] & 0x3f, rejected.bhs.0[0] & 0x3f);
    assert_eq!(&p.data[16..20], &rejected.bhs.0[16..20], "rejected ITT");
}

fn assert_check(p: &Pdu, itt: u32, sense: (u8, u8, u8)) {
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

fn assert_good(p: &Pdu, itt: u32) {
    assert_eq!(
        (p.opcode(), p.bhs.itt(), p.bhs.0[3]),
        (Opcode::ScsiResponse, itt, 0)
    );
}

/// A write of `blocks` blocks: its R2T's TTT.
fn start_write(t: &mut Pair, itt: u32, blocks: u32) -> u32 {
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
    let rsn = t.cmd_sn.wrapping_sub(1);
    t.command(tmf(0x103, 1, 0, 9, rsn));
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.0[2]), (Opcode::TaskMgmtResponse, 0));
    t.raw(data_out(9, ttt, 0, 0, vec![3; 4096]));
    t.assert_silent();
    assert!(!t.device.iter().any(|c| matches!(c, DeviceCall::Execute(9))));
}

#[test]
fn lun_reset_answers_after_executing_commands_finish() {
    let mut t = Pair::new(config());
    t.hold = true;
    t.command(read(5, 0, 1));
    t.command(read(6, 0, 1));
    assert_eq!(t.held.len(), 2);
    t.command(tmf(0x200, 5, 0, 0, 0));
    // Held commands in the device are aborted, then the LUN is reset.
    assert_eq!(
        t.device[2..],
        [
            DeviceCall::Abort(AbortScope {
                lun: Some(0),
                tag: None
            }),
            DeviceCall::LunReset(0)
        ]
    );
    t.assert_silent();
    t.release();
    t.assert_silent();
    t.release();
    // Only the TMF response: the aborted reads are not answered.
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.bhs.0[2]),
        (Opcode::TaskMgmtResponse, 0x200, 0)
    );
    t.assert_silent();
    // Their window slots are free again.
    let (exp, max) = t.conn.window();
    assert_eq!(max.wrapping_sub(exp).wrapping_add(1), 8);
}

#[test]
fn abort_task_waits_for_its_task_but_not_for_others() {
    let mut t = Pair::new(config());
    t.hold = true;
    t.command(read(5, 0, 1));
    t.command(read(6, 0, 1));
    let rsn = t.cmd_sn.wrapping_sub(1);
    t.command(tmf(0x300, 1, 0, 6, rsn));
    assert_eq!(
        t.device.last(),
        Some(&DeviceCall::Abort(AbortScope {
            lun: Some(0),
            tag: Some(6)
        }))
    );
    t.release(); // read 5: answered
    assert_eq!(t.next().bhs.itt(), 5);
    t.assert_silent();
    t.release(); // read 6: aborted
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.itt()), (Opcode::TaskMgmtResponse, 0x300));
    t.assert_silent();
}

#[test]
fn tmf_responses_keep_their_order() {
    let mut t = Pair::new(config());
    t.hold = true;
    t.command(read(5, 0, 1));
    t.command(tmf(0x400, 2, 0, 0, 0)); // ABORT TASK SET waits for read 5
    t.command(tmf(0x401, 8, 0, 0, 0)); // TASK REASSIGN, answered at once…
    t.assert_silent(); // …but not before the earlier TMF
    t.release();
    assert_eq!(t.next().bhs.itt(), 0x400);
    assert_eq!(t.next().bhs.itt(), 0x401);
}

#[test]
fn target_cold_reset_closes_after_answering() {
    let mut t = Pair::new(config());
    t.command(tmf(0x500, 7, 0, 0, 0));
    assert_eq!(t.next().opcode(), Opcode::TaskMgmtResponse);
    assert_eq!(
        t.device,
        [
            DeviceCall::Abort(AbortScope {
                lun: None,
                tag: None
            }),
            DeviceCall::TargetReset
        ]
    );
    assert_eq!(t.closed, Some(CloseReason::ColdReset));
}

#[test]
fn unanswered_nop_in_closes_the_connection() {
    let mut t = Pair::new(config());
    t.advance(Duration::from_secs(29));
    t.assert_silent();
    t.advance(Duration::from_secs(2));
    let ping = t.next();
    assert_eq!(
        (ping.opcode(), ping.bhs.itt()),
        (Opcode::NopIn, 0xffff_ffff)
    );
    t.advance(Duration::from_secs(8));
    assert_eq!(t.closed, None);
    t.advance(Duration::from_secs(2));
    assert_eq!(t.closed, Some(CloseReason::NopTimeout));
}

#[test]
fn answered_nop_in_keeps_the_connection() {
    let mut t = Pair::new(config());
    t.advance(Duration::from_secs(31));
    let ttt = t.next().bhs.ttt();
    // An answer with another TTT does not count.
    t.raw(nop_out(0xffff_ffff, ttt + 1));
    t.advance(Duration::from_secs(11));
    assert_eq!(t.closed, Some(CloseReason::NopTimeout));

    let mut t = Pair::new(config());
    t.advance(Duration::from_secs(31));
    let ttt = t.next().bhs.ttt();
    t.raw(nop_out(0xffff_ffff, ttt));
    t.advance(Duration::from_secs(20));
    assert_eq!(t.closed, None);
    t.assert_silent();
}

#[test]
fn pings_are_answered_with_their_data() {
    let mut t = Pair::new(config());
    let mut p = nop_out(0x42, 0xffff_ffff);
    p.data = vec![9; 10_000];
    t.command(p);
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.data.len()),
        (Opcode::NopIn, 0x42, 8192)
    );
}

#[test]
fn logout_waits_for_executing_commands() {
    let mut t = Pair::new(config());
    t.hold = true;
    t.command(read(5, 0, 1));
    t.command(logout(6));
    t.assert_silent();
    assert_eq!(t.closed, None);
    t.release();
    assert_eq!(t.next().bhs.itt(), 5);
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.bhs.0[2]),
        (Opcode::LogoutResponse, 6, 0)
    );
    assert_eq!(t.closed, Some(CloseReason::Logout));
}

#[test]
fn logout_in_the_middle_of_a_transfer() {
    let mut t = Pair::new(config());
    start_write(&mut t, 2, 8);
    let mut d = data_out(2, 1, 0, 0, vec![5; 512]);
    d.bhs.set_final(false);
    t.raw(d);
    t.command(logout(3));
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.0[2]), (Opcode::LogoutResponse, 0));
    assert_eq!(t.closed, Some(CloseReason::Logout));
    assert!(t.device.is_empty(), "a half-sent write ran");
}

#[test]
fn shutdown_grace_then_close() {
    let mut t = Pair::new(config());
    t.conn.on_shutdown(t.now, Duration::from_secs(2));
    t.pump();
    let m = t.next();
    assert_eq!((m.opcode(), m.bhs.0[36]), (Opcode::AsyncMessage, 1));
    t.advance(Duration::from_millis(1900));
    assert_eq!(t.closed, None);
    t.advance(Duration::from_millis(200));
    assert_eq!(t.closed, Some(CloseReason::LogoutGrace));
    // Logging out within the grace is a normal logout.
    let mut t = Pair::new(config());
    t.conn.on_shutdown(t.now, Duration::from_secs(2));
    t.pump();
    t.next();
    t.command(logout(3));
    assert_eq!(t.next().opcode(), Opcode::LogoutResponse);
    assert_eq!(t.closed, Some(CloseReason::Logout));
}

#[test]
fn writes_beyond_the_session_budget_wait_for_earlier_ones() {
    let mut cfg = config();
    cfg.write_buffer_per_session = 8192;
    let mut t = Pair::new(cfg);
    let ttt = start_write(&mut t, 2, 16);
    t.command(write(3, 16, 16));
    t.assert_silent(); // no R2T: the budget is used up
    t.advance(Duration::from_millis(50));
    t.assert_silent(); // retries find it still used
    t.raw(data_out(2, ttt, 0, 0, vec![1; 8192]));
    assert_good(&t.next(), 2);
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.itt()), (Opcode::R2t, 3));
}

#[test]
fn the_target_wide_budget_is_shared_and_retried() {
    let pool = Arc::new(BudgetPool::new(20_000));
    let mut a = Pair::with_budget(config(), pool.clone());
    let mut b = Pair::with_budget(config(), pool.clone());
    // A session's first write always fits, however large.
    let ttt_a = start_write(&mut a, 2, 32);
    start_write(&mut b, 2, 32);
    assert_eq!(pool.used(), 32_768);
    assert!(pool.used() > 20_000, "first writes go over the cap");
    // A second write of b waits for the pool, not for b alone.
    b.command(write(3, 32, 1));
    b.assert_silent();
    a.raw(data_out(2, ttt_a, 0, 0, vec![1; 8192]));
    a.raw(data_out(2, ttt_a, 1, 8192, vec![1; 8192]));
    assert_good(&a.next(), 2);
    assert_eq!(pool.used(), 16_384);
    b.assert_silent();
    b.advance(Duration::from_millis(3));
    assert_eq!(
        b.next().opcode(),
        Opcode::R2t,
        "retried once the pool had room"
    );
}

#[test]
fn data_digest_error_fails_the_write() {
    let mut t = Pair::new(config());
    let ttt = start_write(&mut t, 2, 8);
    let d = data_out(2, ttt, 0, 0, vec![7; 4096]);
    t.conn.on_data_digest(&d.bhs, &t.env);
    t.pump();
    assert_reject(&t.next(), DATA_DIGEST, &d);
    assert_check(&t.next(), 2, (0x0b, 0x4b, 0x00));
}

#[test]
fn framing_lost_rejects_and_closes() {
    let mut t = Pair::new(config());
    let p = read(2, 0, 1);
    t.conn
        .on_framing_lost(&p.bhs, &crate::proto::PduError::BadAhs);
    t.pump();
    assert_reject(&t.next(), PROTOCOL_ERROR, &p);
    assert_eq!(t.closed, Some(CloseReason::FramingLost));
    t.command(read(3, 0, 1));
    t.assert_silent();
}
