//! SCSI commands in a session: registration on arrival (so Data-Out can
//! flow even while the command waits for its CmdSN turn), data collection
//! through R2Ts, execution on the blocking pool, and the response: Data-In
//! with status collapsed into the last PDU when the command succeeded, or a
//! SCSI Response with sense.

use super::session::{Delivery, Done, Session};
use super::wire::Reply;
use crate::proto::dataout::{R2tRequest, WriteLimits, WriteTransfer};
use crate::proto::pdu::Pdu;
use crate::proto::response::{self, DataInPlan, Residual, reject};
use crate::scsi::{OwnedCommand, ScsiResult, Sense, SenseReason, status};
use std::io;
use std::sync::atomic::Ordering::SeqCst;
use tracing::debug;

pub(super) struct Task {
    pub lun_raw: [u8; 8],
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub edtl: u32,
    pub read: bool,
    pub immediate: bool,
    pub transfer: Option<WriteTransfer>,
    pub delivered: bool,
    pub executing: bool,
    /// Executing on the blocking pool (its completion arrives by channel).
    pub pooled: bool,
    /// Aborted by task management: finish silently.
    pub aborted: bool,
    /// Failed before execution (bad Data-Out): answer with this instead.
    pub failure: Option<ScsiResult>,
    /// R2Ts sent, for ExpDataSN in the response.
    pub r2t_count: u32,
    /// Bytes charged to the session's write-buffer budget (0: none yet).
    pub charged: u32,
    /// Arrival, for the latency histogram.
    pub started: std::time::Instant,
    /// Counts the command in the LUN's in-flight gauge until dropped.
    pub _in_flight: crate::metrics::InFlight,
    /// Keeps the server's task count while the task is in the table.
    pub _counted: super::stats::Counted,
    /// Its call on the blocking pool (see `hung.rs`).
    pub ticket: Option<std::sync::Arc<super::hung::Ticket>>,
}

impl Session {
    pub(super) async fn on_scsi_command(&mut self, pdu: Pdu) -> io::Result<()> {
        let bhs = pdu.bhs.clone();
        if self.device.is_none() {
            // Discovery sessions carry no SCSI traffic (RFC 7143 §6.3).
            return self.reject(reject::PROTOCOL_ERROR, &bhs).await;
        }
        if !bhs.immediate() && !self.window.accepts(bhs.cmd_sn()) {
            // RFC 7143 §3.2.2.1: silently ignored — no task, no R2T.
            debug!(
                cmd_sn = bhs.cmd_sn(),
                "SCSI command outside the CmdSN window ignored"
            );
            return Ok(());
        }
        let itt = bhs.itt();
        if self.tasks.contains_key(&itt) {
            // Its CmdSN is used up all the same, or the window would wait
            // for it forever.
            self.reject(reject::TASK_IN_PROGRESS, &bhs).await?;
            return self.admit(&bhs, Delivery::Skip).await;
        }
        let flags = bhs.flags();
        let (read, write, fin) = (flags & 0x40 != 0, flags & 0x20 != 0, flags & 0x80 != 0);
        let edtl = bhs.expected_data_len();
        let imm = &pdu.data;
        let bad_immediate = !imm.is_empty()
            && (!write
                || !self.params.immediate_data
                || imm.len() as u32 > self.params.first_burst_length
                || imm.len() as u32 > edtl);
        if bad_immediate {
            self.reject(reject::PROTOCOL_ERROR, &bhs).await?;
            return self.admit(&bhs, Delivery::Skip).await;
        }
        let lun = crate::scsi::lun::decode_lun(bhs.0[8..16].try_into().unwrap());
        let in_flight = self.metrics.command_started(lun);
        let mut task = Task {
            lun_raw: bhs.0[8..16].try_into().unwrap(),
            lun: crate::scsi::lun::decode_lun(bhs.0[8..16].try_into().unwrap()),
            cdb: pdu.full_cdb(),
            edtl,
            read,
            immediate: bhs.immediate(),
            transfer: None,
            delivered: false,
            executing: false,
            pooled: false,
            aborted: false,
            failure: None,
            r2t_count: 0,
            charged: 0,
            started: std::time::Instant::now(),
            _in_flight: in_flight,
            _counted: self.shared.stats.task(),
            ticket: None,
        };
        let mut r2ts = Vec::new();
        if write && edtl > self.shared.settings.max_transfer {
            task.failure = Some(failed(SenseReason::InvalidFieldInCdb, edtl));
        } else if write && edtl > 0 {
            let limits = WriteLimits {
                initial_r2t: self.params.initial_r2t,
                first_burst: self.params.first_burst_length,
                max_burst: self.params.max_burst_length,
                max_outstanding_r2t: self.params.max_outstanding_r2t,
            };
            let mut ttt = || self.ttt_next_raw();
            match WriteTransfer::new(edtl, imm, fin, limits, &mut ttt) {
                Ok((t, first)) => {
                    task.transfer = Some(t);
                    r2ts = first;
                }
                Err(_) => {
                    self.reject(reject::PROTOCOL_ERROR, &bhs).await?;
                    return self.admit(&bhs, Delivery::Skip).await;
                }
            }
        }
        crate::buffers::give(pdu.data);
        task.r2t_count = r2ts.len() as u32;
        let lun_raw = task.lun_raw;
        self.tasks.insert(itt, task);
        self.send_r2ts(itt, lun_raw, r2ts).await?;
        self.admit(&bhs, Delivery::Scsi(itt)).await
    }

    /// Tags handed to R2Ts; kept distinct from keep-alive TTTs by sharing
    /// one counter.
    fn ttt_next_raw(&mut self) -> u32 {
        self.next_ttt()
    }

    /// Send a write's R2Ts — unless the session's write buffers are full:
    /// then they wait (in order) until earlier writes have finished, so a
    /// session never holds more than its budget of solicited data however
    /// many large writes it queues.
    async fn send_r2ts(&mut self, itt: u32, lun: [u8; 8], r2ts: Vec<R2tRequest>) -> io::Result<()> {
        if r2ts.is_empty() {
            return Ok(());
        }
        if !self.deferred_r2ts.is_empty() || !self.charge(itt) {
            self.deferred_r2ts.push_back((itt, r2ts));
            return Ok(());
        }
        let pdus = r2ts.iter().map(|r| response::r2t(itt, lun, r)).collect();
        self.send(pdus).await
    }

    /// Charge a write's whole transfer to the budget (once). The first
    /// write always fits, however large, so a big one cannot stall.
    fn charge(&mut self, itt: u32) -> bool {
        let settings = &self.shared.settings;
        let (cap, total_cap) = (
            settings.write_buffer_per_session,
            settings.write_buffer_total,
        );
        // Write data held by abandoned (stuck) calls still counts.
        let used = self.write_charged + self.stuck_charged.load(SeqCst);
        let Some(task) = self.tasks.get_mut(&itt) else {
            return false;
        };
        if task.charged > 0 {
            return true;
        }
        let need = u64::from(task.edtl.max(1));
        if used > 0 && used + need > cap {
            return false;
        }
        let total = &self.shared.write_charged;
        let fits = total.fetch_update(SeqCst, SeqCst, |t| {
            (used == 0 || t + need <= total_cap).then_some(t + need)
        });
        if fits.is_err() {
            return false;
        }
        task.charged = need as u32;
        if let Some(t) = task.transfer.as_mut() {
            t.reserve_all();
        }
        self.write_charged += need;
        true
    }

    /// A task left the table: give its buffer budget back.
    pub(super) fn release(&mut self, task: &Task) {
        let n = u64::from(task.charged);
        self.write_charged -= n;
        self.shared.write_charged.fetch_sub(n, SeqCst);
    }

    /// Send the R2Ts that waited for buffer budget, oldest first.
    pub(super) async fn serve_deferred(&mut self) -> io::Result<()> {
        while let Some(&(itt, _)) = self.deferred_r2ts.front() {
            let alive = self.tasks.get(&itt).is_some_and(|t| !t.aborted);
            if alive && !self.charge(itt) {
                break;
            }
            let (_, r2ts) = self.deferred_r2ts.pop_front().expect("front exists");
            if let Some(task) = self.tasks.get(&itt).filter(|_| alive) {
                let lun = task.lun_raw;
                let pdus = r2ts.iter().map(|r| response::r2t(itt, lun, r)).collect();
                self.send(pdus).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn on_data_out(&mut self, pdu: Pdu) -> io::Result<()> {
        let itt = pdu.bhs.itt();
        let Some(task) = self.tasks.get(&itt) else {
            if self.ended_writes.contains(&itt) {
                // Data the initiator sent before it learnt that the task
                // ended (failed, aborted): drop it.
                debug!(itt, "Data-Out for an ended task ignored");
                return Ok(());
            }
            // An ITT this session never had as a write: RFC 7143 §11.17.1
            // "Invalid PDU field" (a Reject never ends a task).
            return self.reject(reject::INVALID_PDU_FIELD, &pdu.bhs).await;
        };
        if task.transfer.is_none() {
            return self.reject(reject::PROTOCOL_ERROR, &pdu.bhs).await;
        }
        let mut transfer = self.tasks.get_mut(&itt).unwrap().transfer.take().unwrap();
        let mut ttt = || self.ttt_next_raw();
        let outcome = transfer.on_data_out(&pdu.bhs, &pdu.data, &mut ttt);
        crate::buffers::give(pdu.data);
        let task = self.tasks.get_mut(&itt).unwrap();
        let lun_raw = task.lun_raw;
        match outcome {
            Ok(r2ts) => {
                let complete = transfer.is_complete();
                task.transfer = Some(transfer);
                task.r2t_count += r2ts.len() as u32;
                self.send_r2ts(itt, lun_raw, r2ts).await?;
                if complete {
                    self.maybe_execute(itt);
                }
                Ok(())
            }
            Err(e) => {
                debug!(itt, error = %e, "bad Data-Out; failing the task");
                task.failure = Some(failed(SenseReason::DataPhaseError, task.edtl));
                self.reject(reject::PROTOCOL_ERROR, &pdu.bhs).await?;
                self.maybe_execute(itt);
                Ok(())
            }
        }
    }

    /// A data digest error: the PDU is lost. For a Data-Out the task can
    /// no longer complete correctly at ERL 0, so it fails.
    pub(super) async fn on_data_digest_error(&mut self, bhs: &crate::proto::Bhs) -> io::Result<()> {
        self.reject(reject::DATA_DIGEST, bhs).await?;
        match bhs.opcode() {
            crate::proto::Opcode::DataOut => {
                let itt = bhs.itt();
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.failure = Some(failed(SenseReason::DataPhaseError, t.edtl));
                    t.transfer = None;
                    self.maybe_execute(itt);
                }
                Ok(())
            }
            crate::proto::Opcode::ScsiCommand => self.admit(bhs, Delivery::Skip).await,
            _ => Ok(()),
        }
    }

    pub(super) async fn deliver_scsi(&mut self, itt: u32) -> io::Result<()> {
        match self.tasks.get_mut(&itt) {
            Some(t) if !t.delivered => t.delivered = true,
            // Aborted while waiting for its turn: its slot is free again.
            _ => {
                self.window.complete();
                return Ok(());
            }
        }
        self.maybe_execute(itt);
        Ok(())
    }

    /// Start the command if it is its turn and all its data is here.
    pub(super) fn maybe_execute(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if !task.delivered || task.executing {
            return;
        }
        if let Some(result) = task.failure.take() {
            task.executing = true;
            let _ = self.done_tx.send(Done { itt, result });
            return;
        }
        if task.transfer.as_ref().is_some_and(|t| !t.is_complete()) {
            return;
        }
        task.executing = true;
        let data_out = task
            .transfer
            .take()
            .map(|t| t.into_buffer())
            .unwrap_or_default();
        let cmd = OwnedCommand {
            lun: task.lun,
            cdb: task.cdb.clone(),
            data_out,
            expected_len: task.edtl,
            nexus: self.nexus.clone(),
            tag: u64::from(itt),
        };
        let device = self.device.clone().expect("SCSI task in a normal session");
        // submit() runs the command now, or holds it (CBT write lock) and
        // calls back later from the thread that releases it. Commands that
        // cannot wait for a device run right here: the hand-off to the
        // blocking pool would cost more than the command.
        if device.runs_inline(cmd.lun, &cmd.cdb) {
            let tx = self.done_tx.clone();
            device.submit(
                cmd,
                Box::new(move |result| {
                    let _ = tx.send(Done { itt, result });
                }),
            );
        } else {
            self.spawn_pooled(itt, cmd);
        }
    }

    /// A command finished: answer it, and every other one that finished
    /// meanwhile, in one write.
    pub(super) async fn on_done(
        &mut self,
        first: Done,
        more: &mut tokio::sync::mpsc::UnboundedReceiver<Done>,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut batched = 0;
        while let Some(done) = next.take() {
            if let Some(task) = self.tasks.remove(&done.itt) {
                self.release(&task);
                if !task.read && task.edtl > 0 {
                    self.note_ended(done.itt);
                }
                if !task.immediate {
                    self.window.complete();
                }
                if task.aborted {
                    // TMF responses follow the responses already built.
                    self.send_replies(&mut std::mem::take(&mut out)).await?;
                    self.task_gone(done.itt).await?;
                } else {
                    (self.metrics).command_done(
                        task.lun,
                        &task.cdb,
                        task.read,
                        task.edtl,
                        &done.result,
                        task.started,
                    );
                    out.push(build_response(done.itt, &task, done.result, &self.params));
                }
            }
            batched += 1;
            if batched < MAX_BATCH {
                next = more.try_recv().ok();
            }
        }
        self.send_replies(&mut out).await?;
        self.try_logout().await
    }
}

/// Completions answered in one write at most (bounds the latency of the
/// first one).
const MAX_BATCH: usize = 64;
/// How many ended write tasks a session remembers: Data-Out can only
/// still be on its way for tasks of the current command window.
const ENDED_WRITES: usize = 256;

impl Session {
    /// Remember that a write task left the table, so Data-Out still on its
    /// way for it is dropped quietly rather than rejected (libiscsi, for
    /// one, drops the connection on a Reject it cannot match).
    pub(super) fn note_ended(&mut self, itt: u32) {
        if self.ended_writes.len() >= ENDED_WRITES {
            self.ended_writes.pop_front();
        }
        self.ended_writes.push_back(itt);
    }
}

/// A result for a command that failed in the transport.
fn failed(reason: SenseReason, transfer_len: u32) -> ScsiResult {
    ScsiResult::check_condition(Sense::new(reason), transfer_len)
}

/// Data-In (status collapsed into the last PDU when there is no sense) or
/// a SCSI Response, with residuals against the initiator's EDTL. The read
/// data stays in its buffer; the Data-In PDUs point into it.
fn build_response(
    itt: u32,
    task: &Task,
    result: ScsiResult,
    params: &crate::proto::negotiation::SessionParams,
) -> Reply {
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
