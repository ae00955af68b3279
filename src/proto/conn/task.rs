//! SCSI commands: registration on arrival (so Data-Out can flow even while
//! the command waits for its CmdSN turn), data collection through R2Ts,
//! execution, and the response: Data-In with status collapsed into the
//! last PDU when the command succeeded, or a SCSI Response with sense.

use super::{Connection, Delivery, Env, Event, Output, Reply};
use crate::proto::dataout::{R2tRequest, WriteLimits, WriteTransfer};
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::Pdu;
use crate::proto::response::{self, DataInPlan, Residual, reject};
use crate::scsi::{Nexus, OwnedCommand, ScsiResult, Sense, SenseReason, status};
use std::time::Instant;

/// A command's write data, while it waits for its CmdSN turn.
#[derive(Debug)]
pub(super) enum Data {
    /// Nothing to collect (a read, or a write of no bytes).
    None,
    Collecting(WriteTransfer),
    /// Failed in the transport: answered with this, never executed.
    Failed(ScsiResult),
}

/// Where a task is in its life. A task that is done has left the table.
#[derive(Debug)]
pub(super) enum State {
    /// Registered; earlier CmdSNs have not all arrived.
    WaitingCmdSn(Data),
    /// Its turn came; its data has not all arrived.
    AwaitingData(WriteTransfer),
    /// Handed to the device; its result comes through `on_done`.
    Executing,
    /// Aborted while executing: its result is dropped, and TMF responses
    /// wait for it.
    Aborted,
}

#[derive(Debug)]
pub(super) struct Task {
    pub lun_raw: [u8; 8],
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub edtl: u32,
    pub read: bool,
    pub immediate: bool,
    pub state: State,
    /// R2Ts sent, for ExpDataSN in the response.
    pub r2t_count: u32,
    /// Bytes charged to the write-buffer budget (0: none yet).
    pub charged: u32,
    /// Arrival, for the latency histogram.
    pub started: Instant,
    /// Executing, and the driver reported its call hung: a Logout does
    /// not wait for it (the session's end abandons it).
    pub hung: bool,
}

impl Task {
    pub fn is_executing(&self) -> bool {
        matches!(self.state, State::Executing | State::Aborted)
    }

    /// Delivered in CmdSN order but not executing: it holds a window slot.
    pub fn holds_slot(&self) -> bool {
        matches!(self.state, State::AwaitingData(_)) && !self.immediate
    }

    pub fn transfer_mut(&mut self) -> Option<&mut WriteTransfer> {
        match &mut self.state {
            State::WaitingCmdSn(Data::Collecting(t)) | State::AwaitingData(t) => Some(t),
            _ => None,
        }
    }
}

/// A command to run on the device server.
#[derive(Debug)]
pub struct Exec {
    pub itt: u32,
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_len: u32,
    /// Write budget the command holds: an abandoned call keeps it until it
    /// returns (the driver then gives it back, see `stuck_charges`).
    pub charged: u64,
}

impl Exec {
    /// The command for the device server, from the I_T nexus it came on
    /// (its tag is the ITT: task management names tasks by it).
    pub fn into_command(self, nexus: std::sync::Arc<Nexus>) -> OwnedCommand {
        OwnedCommand {
            lun: self.lun,
            cdb: self.cdb,
            data_out: self.data_out,
            expected_len: self.expected_len,
            nexus,
            tag: u64::from(self.itt),
        }
    }
}

/// A command's answer, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub read: bool,
    pub edtl: u32,
    pub status: u8,
    /// Data-In bytes the device produced (before cutting to EDTL).
    pub data_in: usize,
    pub started: Instant,
}

/// How many ended write tasks a connection remembers: Data-Out can only
/// still be on its way for tasks of the current command window.
const ENDED_WRITES: usize = 256;

/// A result for a command that failed in the transport.
fn failed(reason: SenseReason, transfer_len: u32) -> ScsiResult {
    ScsiResult::check_condition(Sense::new(reason), transfer_len)
}

impl Connection {
    pub(super) fn on_scsi_command(&mut self, now: Instant, pdu: Pdu, env: &dyn Env) {
        let bhs = pdu.bhs.clone();
        if !self.cfg.scsi {
            // Discovery sessions carry no SCSI traffic (RFC 7143 §6.3).
            return self.reject(reject::PROTOCOL_ERROR, &bhs);
        }
        if !bhs.immediate() && !self.window.accepts(bhs.cmd_sn()) {
            // RFC 7143 §3.2.2.1: silently ignored — no task, no R2T.
            return;
        }
        let itt = bhs.itt();
        // A rejected command's CmdSN is used up all the same, or the
        // window would wait for it forever.
        if self.tasks.contains_key(&itt) {
            self.reject(reject::TASK_IN_PROGRESS, &bhs);
            return self.admit(&bhs, Delivery::Skip, env);
        }
        let Some((data, r2ts)) = self.collect_data(&pdu) else {
            self.reject(reject::PROTOCOL_ERROR, &bhs);
            return self.admit(&bhs, Delivery::Skip, env);
        };
        let lun_raw: [u8; 8] = bhs.0[8..16].try_into().expect("8 bytes");
        let lun = crate::scsi::lun::decode_lun(lun_raw);
        self.events.push_back(Event::Started { itt, lun });
        let task = Task {
            lun_raw,
            lun,
            cdb: pdu.full_cdb(),
            edtl: bhs.expected_data_len(),
            read: bhs.flags() & 0x40 != 0,
            immediate: bhs.immediate(),
            state: State::WaitingCmdSn(data),
            r2t_count: r2ts.len() as u32,
            charged: 0,
            started: now,
            hung: false,
        };
        crate::buffers::give(pdu.data);
        self.tasks.insert(itt, task);
        self.send_r2ts(itt, r2ts);
        self.admit(&bhs, Delivery::Scsi(itt), env)
    }

    /// The write data a command announces and its first R2Ts; None for
    /// a command whose immediate data breaks the negotiated rules.
    fn collect_data(&mut self, pdu: &Pdu) -> Option<(Data, Vec<R2tRequest>)> {
        let flags = pdu.bhs.flags();
        let (write, fin) = (flags & 0x20 != 0, flags & 0x80 != 0);
        let edtl = pdu.bhs.expected_data_len();
        let imm = &pdu.data;
        let p = &self.cfg.params;
        let bad_immediate = !imm.is_empty()
            && (!write
                || !p.immediate_data
                || imm.len() as u32 > p.first_burst_length
                || imm.len() as u32 > edtl);
        if bad_immediate {
            return None;
        }
        if write && edtl > self.cfg.max_transfer {
            let f = failed(SenseReason::InvalidFieldInCdb, edtl);
            return Some((Data::Failed(f), Vec::new()));
        }
        if !write || edtl == 0 {
            return Some((Data::None, Vec::new()));
        }
        let limits = write_limits(&self.cfg.params);
        let tags = &mut self.tags;
        let (t, first) = WriteTransfer::new(edtl, imm, fin, limits, &mut || tags.next()).ok()?;
        Some((Data::Collecting(t), first))
    }

    pub(super) fn on_data_out(&mut self, pdu: Pdu) {
        let itt = pdu.bhs.itt();
        let Some(task) = self.tasks.get_mut(&itt) else {
            if self.ended_writes.contains(&itt) {
                // Data the initiator sent before it learnt that the task
                // ended (failed, aborted): drop it.
                return;
            }
            // An ITT this session never had as a write: RFC 7143 §11.17.1
            // "Invalid PDU field" (a Reject never ends a task).
            return self.reject(reject::INVALID_PDU_FIELD, &pdu.bhs);
        };
        let Some(transfer) = task.transfer_mut() else {
            return self.reject(reject::PROTOCOL_ERROR, &pdu.bhs);
        };
        let tags = &mut self.tags;
        let outcome = transfer.on_data_out(&pdu.bhs, &pdu.data, &mut || tags.next());
        let complete = transfer.is_complete();
        match outcome {
            Ok(r2ts) => {
                task.r2t_count += r2ts.len() as u32;
                crate::buffers::give(pdu.data);
                self.send_r2ts(itt, r2ts);
                if complete {
                    self.maybe_execute(itt);
                }
            }
            Err(_) => {
                crate::buffers::give(pdu.data);
                self.reject(reject::PROTOCOL_ERROR, &pdu.bhs);
                self.fail_transfer(itt);
            }
        }
    }

    /// Its data can no longer arrive correctly (a bad Data-Out, or one a
    /// data digest error lost): at ERL 0 the task fails with a data phase
    /// error — now if its turn has come, else when it comes.
    pub(super) fn fail_transfer(&mut self, itt: u32) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        let f = failed(SenseReason::DataPhaseError, t.edtl);
        match t.state {
            State::WaitingCmdSn(_) => t.state = State::WaitingCmdSn(Data::Failed(f)),
            State::AwaitingData(_) => {
                t.state = State::Executing;
                self.on_done(itt, f);
            }
            State::Executing | State::Aborted => {}
        }
    }

    /// Its CmdSN turn came.
    pub(super) fn deliver_scsi(&mut self, itt: u32) {
        let task = match self.tasks.get_mut(&itt) {
            Some(t) if matches!(t.state, State::WaitingCmdSn(_)) => t,
            // Aborted while waiting for its turn: its slot is free again.
            _ => return self.window.complete(),
        };
        let State::WaitingCmdSn(data) = std::mem::replace(&mut task.state, State::Executing) else {
            unreachable!("matched above");
        };
        match data {
            Data::None => self.execute(itt, Vec::new()),
            Data::Failed(f) => self.on_done(itt, f),
            Data::Collecting(t) => {
                task.state = State::AwaitingData(t);
                self.maybe_execute(itt);
            }
        }
    }

    /// Start a delivered command once all its data is here.
    fn maybe_execute(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if !matches!(&task.state, State::AwaitingData(t) if t.is_complete()) {
            return;
        }
        let State::AwaitingData(t) = std::mem::replace(&mut task.state, State::Executing) else {
            unreachable!("matched above");
        };
        self.execute(itt, t.into_buffer());
    }

    fn execute(&mut self, itt: u32, data_out: Vec<u8>) {
        let task = self.tasks.get_mut(&itt).expect("task to execute");
        task.state = State::Executing;
        self.out.push_back(Output::Execute(Exec {
            itt,
            lun: task.lun,
            cdb: task.cdb.clone(),
            data_out,
            expected_len: task.edtl,
            charged: u64::from(task.charged),
        }));
    }

    /// A command finished: answer it (unless aborted), free its slot and
    /// budget, and let a waiting TMF or Logout go.
    pub fn on_done(&mut self, itt: u32, result: ScsiResult) {
        let executing = self.tasks.get(&itt).is_some_and(|t| t.is_executing());
        if !executing {
            return;
        }
        let task = self.remove_task(itt);
        if !task.immediate {
            self.window.complete();
        }
        if matches!(task.state, State::Aborted) {
            self.task_gone(itt);
        } else {
            let (status, data_in) = (result.status, result.data_in.len());
            let reply = build_response(itt, &task, result, &self.cfg.params);
            // The task is done with: its CDB moves into the event.
            self.events.push_back(Event::Answered(Answered {
                lun: task.lun,
                cdb: task.cdb,
                read: task.read,
                edtl: task.edtl,
                status,
                data_in,
                started: task.started,
            }));
            self.out.push_back(Output::Send(reply));
        }
        if self.closed.is_none() {
            self.try_logout();
        }
    }

    /// Take a task out of the table: its budget goes back, and Data-Out
    /// still on its way for a write is dropped quietly from now on.
    pub(super) fn remove_task(&mut self, itt: u32) -> Task {
        let task = self.tasks.remove(&itt).expect("task in the table");
        self.release(&task);
        if !task.read && task.edtl > 0 || !task.is_executing() {
            self.note_ended(itt);
        }
        self.events.push_back(Event::Ended { itt, lun: task.lun });
        task
    }

    /// The driver found this executing command's call hung (its LUN is
    /// fenced now): a Logout no longer waits for it.
    pub fn on_hung(&mut self, itt: u32) {
        if let Some(t) = self.tasks.get_mut(&itt).filter(|t| t.is_executing()) {
            t.hung = true;
            if self.closed.is_none() {
                self.try_logout();
            }
        }
    }

    /// The driver gave an executing command up (task management waited
    /// too long, or the session ends): it leaves the table unanswered and
    /// its result, should one come, is dropped. Its write data stays
    /// charged (the stuck call still holds the buffer) until the driver
    /// sees the call return.
    pub fn on_abandoned(&mut self, itt: u32) {
        if !self.tasks.get(&itt).is_some_and(|t| t.is_executing()) {
            return;
        }
        let task = self.tasks.remove(&itt).expect("checked above");
        let charged = u64::from(task.charged);
        self.write_charged -= charged;
        self.stuck
            .fetch_add(charged, std::sync::atomic::Ordering::SeqCst);
        if !task.read && task.edtl > 0 {
            self.note_ended(itt);
        }
        self.events.push_back(Event::Ended { itt, lun: task.lun });
        if !task.immediate {
            self.window.complete();
        }
        self.task_gone(itt);
        if self.closed.is_none() {
            self.try_logout();
        }
    }

    /// Write data held by abandoned calls (see `on_abandoned`): the driver
    /// subtracts an abandoned call's `Exec::charged` when it returns.
    pub fn stuck_charges(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.stuck.clone()
    }

    /// Remember that a write task left the table, so Data-Out still on its
    /// way for it is dropped quietly rather than rejected (libiscsi, for
    /// one, drops the connection on a Reject it cannot match).
    fn note_ended(&mut self, itt: u32) {
        if self.ended_writes.len() >= ENDED_WRITES {
            self.ended_writes.pop_front();
        }
        self.ended_writes.push_back(itt);
    }
}

fn write_limits(p: &SessionParams) -> WriteLimits {
    WriteLimits {
        initial_r2t: p.initial_r2t,
        first_burst: p.first_burst_length,
        max_burst: p.max_burst_length,
        max_outstanding_r2t: p.max_outstanding_r2t,
    }
}

/// Data-In (status collapsed into the last PDU when there is no sense) or
/// a SCSI Response, with residuals against the initiator's EDTL. The read
/// data stays in its buffer; the Data-In PDUs point into it.
fn build_response(itt: u32, task: &Task, result: ScsiResult, params: &SessionParams) -> Reply {
    let residual = Residual::compute(task.edtl, result.transfer_len);
    let mut data = result.data_in;
    data.truncate(task.edtl as usize);
    if !task.read || data.is_empty() {
        return Reply::plain(vec![response::scsi_response(
            itt,
            result.status,
            result.sense.as_deref(),
            residual,
            task.r2t_count,
        )]);
    }
    let collapse = result.sense.is_none() && result.status == status::GOOD;
    let plan = DataInPlan {
        itt,
        lun: task.lun_raw,
        max_segment: params.initiator_max_recv_dsl,
        max_burst: params.max_burst_length,
        status: collapse.then_some((result.status, residual)),
    };
    let (mut pdus, spans) = response::data_in_headers(data.len(), &plan);
    if !collapse {
        let n = pdus.len() as u32;
        pdus.push(response::scsi_response(
            itt,
            result.status,
            result.sense.as_deref(),
            residual,
            n,
        ));
    }
    Reply {
        pdus,
        body: data,
        spans,
    }
}
