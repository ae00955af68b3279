//! Commands stuck in the device, as the driver reports them: task
//! management gives up on them after the abort timeout (`Output::Abandon`,
//! then `on_abandoned`), their write data stays charged until the call
//! returns, and a Logout does not wait for a call reported hung.

use super::super::pair::*;
use super::super::{BudgetPool, CloseReason};
use super::start_write;
use crate::proto::pdu::Opcode;
use crate::scsi::ScsiResult;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// A 4 KiB write (ITT 2) whose execution the device holds.
fn stuck_write(t: &mut Pair) {
    t.hold = true;
    let ttt = start_write(t, 2, 8);
    t.raw(data_out(2, ttt, 0, 0, vec![9; 4096]));
    assert_eq!(t.held.len(), 1);
}

#[test]
fn task_management_abandons_a_stuck_command_after_the_abort_timeout() {
    let pool = Arc::new(BudgetPool::new(1 << 20));
    let mut t = Pair::with_budget(config(), pool.clone());
    stuck_write(&mut t);
    let rsn = t.cmd_sn.wrapping_sub(1);
    t.command(tmf(0x400, 1, 0, 2, rsn));
    t.advance(Duration::from_millis(4900));
    t.assert_silent();
    assert!(!t.device.contains(&DeviceCall::Abandon(2)));
    t.advance(Duration::from_millis(200));
    assert!(t.device.contains(&DeviceCall::Abandon(2)));
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.bhs.0[2]),
        (Opcode::TaskMgmtResponse, 0x400, 0)
    );
    assert!(t.in_table.is_empty(), "the abandoned task stayed");
    // The stuck call still holds the data: it stays charged.
    assert_eq!(pool.used(), 4096);
    assert_eq!(t.conn.stuck_charges().load(SeqCst), 4096);
    // Its slot is free again, and a late result is dropped.
    let (exp, max) = t.conn.window();
    assert_eq!(max.wrapping_sub(exp).wrapping_add(1), 8);
    t.conn.on_done(2, ScsiResult::good(Vec::new(), 4096));
    t.pump();
    t.assert_silent();
    assert_eq!(t.closed, None);
}

#[test]
fn stuck_write_data_counts_against_the_session_budget() {
    let pool = Arc::new(BudgetPool::new(1 << 20));
    let mut cfg = config();
    cfg.write_buffer_per_session = 8192;
    let mut t = Pair::with_budget(cfg, pool.clone());
    stuck_write(&mut t);
    t.command(tmf(0x400, 1, 0, 2, t.cmd_sn.wrapping_sub(1)));
    t.advance(Duration::from_secs(6));
    assert_eq!(t.next().opcode(), Opcode::TaskMgmtResponse);
    // 4 KiB stuck + 8 KiB > 8 KiB: the new write's R2T waits.
    t.hold = false;
    t.command(write(3, 16, 16));
    t.advance(Duration::from_millis(10));
    t.assert_silent();
    // The stuck call returns: the driver gives its charge back.
    t.conn.stuck_charges().fetch_sub(4096, SeqCst);
    crate::proto::conn::WriteBudget::give(&*pool, 4096);
    t.advance(Duration::from_millis(3));
    let r = t.next();
    assert_eq!((r.opcode(), r.bhs.itt()), (Opcode::R2t, 3));
}

#[test]
fn logout_does_not_wait_for_a_hung_call() {
    let mut t = Pair::new(config());
    t.hold = true;
    t.command(read(5, 0, 1));
    t.command(logout(6));
    t.assert_silent(); // waits for the executing read
    t.conn.on_hung(5);
    t.pump();
    let r = t.next();
    assert_eq!(
        (r.opcode(), r.bhs.itt(), r.bhs.0[2]),
        (Opcode::LogoutResponse, 6, 0)
    );
    assert_eq!(t.closed, Some(CloseReason::Logout));
}

#[test]
fn a_victim_that_cannot_be_abandoned_is_asked_for_again_not_spun_on() {
    let mut t = Pair::new(config());
    stuck_write(&mut t);
    t.unabandonable = true;
    t.command(tmf(0x400, 1, 0, 2, t.cmd_sn.wrapping_sub(1)));
    t.advance(Duration::from_millis(5050));
    let asked = |t: &Pair| {
        (t.device.iter())
            .filter(|c| **c == DeviceCall::Abandon(2))
            .count()
    };
    assert_eq!(asked(&t), 1);
    // The next wake-up is a retry period away, not in the past.
    assert!(t.conn.next_deadline() > t.now, "the driver would spin");
    t.advance(Duration::from_millis(40));
    assert_eq!(asked(&t), 1);
    t.advance(Duration::from_millis(20));
    assert_eq!(asked(&t), 2, "asked again after the retry period");
    t.assert_silent(); // the TMF still waits for its victim
    // The call returns after all: the TMF is answered.
    let e = t.held.pop_front().expect("held");
    t.conn.on_done(e.itt, ScsiResult::good(Vec::new(), 4096));
    t.pump();
    let tmf_answer = (t.sent.iter()).find(|p| p.opcode() == Opcode::TaskMgmtResponse);
    assert_eq!(
        tmf_answer.map(|p| (p.bhs.itt(), p.bhs.0[2])),
        Some((0x400, 0))
    );
}
