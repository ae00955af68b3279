//! Task-management ordering, NOP-In timeout, logout and its grace, the
//! write budget, digests and Text, on the in-memory pair.

use super::super::pair::*;
use super::super::{AbortScope, BudgetPool, CloseReason};
use super::{assert_check, assert_good, assert_reject, start_write};
use crate::proto::pdu::{Opcode, Pdu};
use crate::proto::response::reject::*;
use std::sync::Arc;
use std::time::Duration;

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
fn a_connection_that_goes_mid_write_gives_the_pool_back() {
    let pool = Arc::new(BudgetPool::new(1 << 20));
    let mut a = Pair::with_budget(config(), pool.clone());
    start_write(&mut a, 2, 32);
    start_write(&mut a, 3, 16);
    assert_eq!(pool.used(), 24_576);
    drop(a); // the initiator never sends the data
    assert_eq!(pool.used(), 0);
}

#[test]
fn data_digest_error_fails_the_write() {
    let mut t = Pair::new(config());
    let ttt = start_write(&mut t, 2, 8);
    let d = data_out(2, ttt, 0, 0, vec![7; 4096]);
    t.conn.on_data_digest(t.now, &d.bhs, &t.env);
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

#[test]
fn send_targets_in_a_normal_session_names_only_its_target() {
    let mut t = Pair::new(config());
    let mut p = Pdu::new(Opcode::TextRequest);
    p.bhs.set_final(true);
    p.bhs.set_itt(0x600);
    p.bhs.set_ttt(0xffff_ffff);
    p.data = b"SendTargets=All\0".to_vec();
    t.command(p);
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.itt()), (Opcode::TextResponse, 0x600));
    let text = String::from_utf8(r.data).unwrap();
    assert!(text.contains("TargetName=iqn.test:t"), "{text}");
    assert!(text.contains("TargetAddress=127.0.0.1:3260,1"), "{text}");
}

#[test]
fn aborting_a_command_held_for_its_cmd_sn_frees_its_slot() {
    let mut t = Pair::new(config());
    // A command ahead of a gap: held, with its R2T already out.
    let mut w = write(7, 0, 8);
    w.bhs.set_cmd_sn(t.cmd_sn + 1);
    t.raw(w);
    assert_eq!(t.next().opcode(), Opcode::R2t);
    t.command(tmf(0x700, 1, 0, 7, t.cmd_sn + 1));
    assert_eq!(t.next().bhs.0[2], 0, "FUNCTION COMPLETE");
    assert!(t.conn.tasks.is_empty());
    // The gap closes: the aborted command's turn passes without running.
    t.command(scsi_cmd(8, &[0; 16], 0, false, false));
    t.cmd_sn += 1;
    assert_good(&t.next(), 8);
    let held = AbortScope {
        lun: Some(0),
        tag: Some(7),
    };
    assert_eq!(t.device, [DeviceCall::Abort(held), DeviceCall::Execute(8)]);
    let (exp, max) = t.conn.window();
    assert_eq!(exp, t.cmd_sn);
    assert_eq!(max.wrapping_sub(exp).wrapping_add(1), 8, "every slot free");
}
