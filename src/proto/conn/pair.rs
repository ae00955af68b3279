//! An in-memory initiator ↔ target pair with a controlled clock, in the
//! spirit of quinn-proto's test `Pair`: the target is a [`Connection`],
//! the initiator side numbers its commands and checks every PDU the
//! target sends (StatSN in order, sequence numbers stamped), and a small
//! memory disk executes commands — at once, or held until released.

use super::{BudgetPool, CloseReason, Config, Connection, Env, Event, Exec, Output, WriteBudget};
use crate::proto::login::SessionType;
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::{Opcode, Pdu};
use crate::proto::response::carries_status;
use crate::scsi::{ScsiResult, status};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BS: u32 = 512;
const DISK_BLOCKS: usize = 256;

/// What the target asked of its device, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCall {
    Execute(u32),
    Abort(super::AbortScope),
    LunReset(u64),
    TargetReset,
    Abandon(u32),
}

pub struct Luns(pub HashSet<u64>);

impl Env for Luns {
    fn lun_exists(&self, lun: u64) -> bool {
        self.0.contains(&lun)
    }
    fn targets(&self, _: SessionType, own: Option<&str>) -> Vec<(String, Vec<String>)> {
        let own = own.unwrap_or("iqn.test:t").to_string();
        vec![(own, vec!["127.0.0.1:3260,1".into()])]
    }
}

pub struct Pair {
    pub conn: Connection,
    pub now: Instant,
    pub env: Luns,
    pub disk: Vec<u8>,
    /// Hold executions instead of running them (see `release`).
    pub hold: bool,
    pub held: VecDeque<Exec>,
    /// Held executions cannot be given up (the driver's `abandon` fails
    /// for commands run inline or held by a CBT write lock).
    pub unabandonable: bool,
    pub device: Vec<DeviceCall>,
    /// PDUs the target sent, oldest first (Data-In with its data).
    pub sent: VecDeque<Pdu>,
    pub closed: Option<CloseReason>,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// Tasks the events say are in the table (`Started` minus `Ended`):
    /// what the runtime's per-task guards and gauges follow.
    pub in_table: HashSet<u32>,
    next_itt: u32,
}

pub fn config() -> Config {
    Config {
        params: SessionParams {
            initiator_max_recv_dsl: 8192,
            target_max_recv_dsl: 8192,
            ..SessionParams::default()
        },
        kind: SessionType::Normal,
        target_name: Some("iqn.test:t".into()),
        scsi: true,
        cid: 0,
        exp_cmd_sn: 1,
        stat_sn: 100,
        cmd_window: 8,
        max_transfer: 1 << 20,
        write_buffer_per_session: 1 << 20,
        nop_interval: Duration::from_secs(30),
        nop_timeout: Duration::from_secs(10),
        abort_timeout: Duration::from_secs(5),
    }
}

impl Pair {
    pub fn new(cfg: Config) -> Pair {
        Pair::with_budget(cfg, Arc::new(BudgetPool::new(u64::MAX / 2)))
    }

    pub fn with_budget(cfg: Config, budget: Arc<dyn WriteBudget>) -> Pair {
        let now = Instant::now();
        let (cmd_sn, exp_stat_sn) = (cfg.exp_cmd_sn, cfg.stat_sn);
        Pair {
            conn: Connection::new(cfg, budget, now),
            now,
            env: Luns([0].into_iter().collect()),
            disk: vec![0; DISK_BLOCKS * BS as usize],
            hold: false,
            held: VecDeque::new(),
            unabandonable: false,
            device: Vec::new(),
            sent: VecDeque::new(),
            closed: None,
            cmd_sn,
            exp_stat_sn,
            in_table: HashSet::new(),
            next_itt: 1,
        }
    }

    pub fn itt(&mut self) -> u32 {
        self.next_itt += 1;
        self.next_itt
    }

    /// Send a command the way an initiator does: the next CmdSN (used up
    /// unless immediate) and the ExpStatSN it has seen.
    pub fn command(&mut self, mut p: Pdu) {
        p.bhs.set_cmd_sn(self.cmd_sn);
        if !p.bhs.immediate() {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.raw(p);
    }

    /// Send a PDU exactly as it is.
    pub fn raw(&mut self, mut p: Pdu) {
        p.bhs.set_exp_stat_sn(self.exp_stat_sn);
        p.bhs.set_data_segment_len(p.data.len() as u32);
        self.conn.on_pdu(self.now, p, &self.env);
        self.pump();
    }

    /// Let time pass, firing the connection's timer when it is due.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.conn.closed().is_none() && self.conn.next_deadline() <= end {
            self.now = self.now.max(self.conn.next_deadline());
            self.conn.on_timeout(self.now);
            self.pump();
        }
        self.now = end;
    }

    /// Finish the oldest held execution.
    pub fn release(&mut self) {
        let e = self.held.pop_front().expect("an execution is held");
        let r = self.run(&e);
        self.conn.on_done(e.itt, r);
        self.pump();
    }

    /// Do what the connection asks, until it asks nothing more.
    pub fn pump(&mut self) {
        loop {
            // As the runtime's loop does on every turn.
            if self.conn.budget_waiting() {
                self.conn.retry_budget(self.now);
            }
            let Some(o) = self.conn.poll_output() else {
                break;
            };
            match o {
                Output::Send(r) => self.receive(r),
                Output::Execute(e) => {
                    self.device.push(DeviceCall::Execute(e.itt));
                    if self.hold {
                        self.held.push_back(e);
                    } else {
                        let r = self.run(&e);
                        self.conn.on_done(e.itt, r);
                    }
                }
                Output::Abort(s) => self.device.push(DeviceCall::Abort(s)),
                Output::LunReset(l) => self.device.push(DeviceCall::LunReset(l)),
                Output::TargetReset => self.device.push(DeviceCall::TargetReset),
                // A held execution is a stuck call: give it up.
                Output::Abandon(itt) => {
                    self.device.push(DeviceCall::Abandon(itt));
                    let pos = self.held.iter().position(|e| e.itt == itt);
                    if let Some(i) = pos.filter(|_| !self.unabandonable) {
                        self.held.remove(i);
                        self.conn.on_abandoned(itt);
                    }
                }
                Output::Close(r) => {
                    assert!(self.closed.is_none(), "closed twice");
                    self.closed = Some(r);
                }
            }
        }
        self.observe();
    }

    /// Follow the events as the runtime's metrics do, and check that they
    /// account for exactly the tasks in the table.
    fn observe(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Started { itt, .. } => {
                    assert!(self.in_table.insert(itt), "task {itt} started twice")
                }
                Event::Ended { itt, .. } => {
                    assert!(self.in_table.remove(&itt), "task {itt} ended twice")
                }
                _ => {}
            }
        }
        let table: HashSet<u32> = self.conn.tasks.keys().copied().collect();
        assert_eq!(self.in_table, table, "events and task table disagree");
    }

    /// The initiator's checks on every PDU: sent before any close, StatSN
    /// in order, a window that never shrinks below ExpCmdSN - 1.
    fn receive(&mut self, r: super::Reply) {
        assert!(self.closed.is_none(), "PDU sent after Close");
        for (i, mut p) in r.pdus.into_iter().enumerate() {
            if let Some(span) = r.spans.get(i) {
                p.data = r.body[span.clone()].to_vec();
            }
            assert!(p.data.len() <= 8192, "segment beyond MaxRecvDSL");
            if carries_status(&p) {
                assert_eq!(p.bhs.stat_sn(), self.exp_stat_sn, "StatSN out of order");
                self.exp_stat_sn = self.exp_stat_sn.wrapping_add(1);
            }
            let (exp, max) = (p.bhs.exp_cmd_sn(), p.bhs.max_cmd_sn());
            assert!(
                max.wrapping_sub(exp).wrapping_add(1) < 0x8000_0000,
                "window"
            );
            self.sent.push_back(p);
        }
    }

    /// A memory disk: TEST UNIT READY, READ (16), WRITE (16).
    fn run(&mut self, e: &Exec) -> ScsiResult {
        let good = |data_in: Vec<u8>, n: u32| ScsiResult {
            status: status::GOOD,
            sense: None,
            data_in,
            transfer_len: n,
        };
        let lba = u64::from_be_bytes(e.cdb[2..10].try_into().unwrap_or([0; 8])) as usize;
        let blocks = e
            .cdb
            .get(10..14)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
        let (at, len) = (lba * BS as usize, (blocks * BS) as usize);
        match e.cdb[0] {
            0x88 => good(self.disk[at..at + len].to_vec(), len as u32),
            0x8a => {
                self.disk[at..at + e.data_out.len()].copy_from_slice(&e.data_out);
                good(Vec::new(), len as u32)
            }
            _ => good(Vec::new(), 0),
        }
    }

    pub fn next(&mut self) -> Pdu {
        self.sent.pop_front().expect("the target sent nothing")
    }

    pub fn assert_silent(&self) {
        assert!(self.sent.is_empty(), "unexpected {:?}", self.sent.front());
    }
}

/// SCSI command PDU builders, as an initiator sends them.
pub fn scsi_cmd(itt: u32, cdb: &[u8], edtl: u32, read: bool, write: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    let flags = 0x81 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 };
    p.bhs.set_flags(flags);
    p.bhs.set_itt(itt);
    p.bhs.set_expected_data_len(edtl);
    p.bhs.set_cdb(cdb);
    p
}

pub fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn write(itt: u32, lba: u64, blocks: u32) -> Pdu {
    scsi_cmd(itt, &rw16(0x8a, lba, blocks), blocks * BS, false, true)
}

pub fn read(itt: u32, lba: u64, blocks: u32) -> Pdu {
    scsi_cmd(itt, &rw16(0x88, lba, blocks), blocks * BS, true, false)
}

pub fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: Vec<u8>) -> Pdu {
    let mut p = Pdu::new(Opcode::DataOut).with_data(data);
    p.bhs.set_final(true);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p.bhs.set_data_sn(data_sn);
    p.bhs.set_buffer_offset(offset);
    p
}

/// A task management request: `function`, LUN, referenced task and CmdSN.
pub fn tmf(itt: u32, function: u8, lun: u64, ref_itt: u32, ref_cmd_sn: u32) -> Pdu {
    let mut p = Pdu::new(Opcode::TaskMgmtRequest);
    p.bhs.set_immediate(true);
    p.bhs.set_flags(0x80 | function);
    p.bhs.set_itt(itt);
    p.bhs.set_lun(lun << 48);
    p.bhs.set_ref_task_tag(ref_itt);
    p.bhs.set_ref_cmd_sn(ref_cmd_sn);
    p
}

pub fn nop_out(itt: u32, ttt: u32) -> Pdu {
    let mut p = Pdu::new(Opcode::NopOut);
    p.bhs.set_final(true);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p
}

pub fn logout(itt: u32) -> Pdu {
    let mut p = Pdu::new(Opcode::LogoutRequest);
    p.bhs.set_flags(0x80);
    p.bhs.set_itt(itt);
    p
}
