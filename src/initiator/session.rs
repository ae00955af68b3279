//! A logged-in session: one TCP connection, a background reader that
//! routes target PDUs to tasks by ITT, and CmdSN allocation that respects
//! the target's MaxCmdSN window. Several tasks may be in flight at once.

use super::error::{InitiatorError, Result};
use super::login::LoginOutcome;
use super::wire::read_pdu;
use crate::proto::cmdsn::{sn_le, sn_lt};
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::encode;
use crate::proto::{Bhs, Framing, Opcode, Pdu};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

pub(crate) const RESERVED_TAG: u32 = 0xffff_ffff;
/// Unclaimed PDUs kept for `recv_raw`; older ones are dropped.
const RAW_QUEUE_CAP: usize = 256;
const ASYNC_CAP: usize = 256;

/// An Async Message the target sent (RFC 7143 §11.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncEvent {
    /// 0 SCSI event, 1 logout request, 2 connection drop, 3 session drop,
    /// 4 parameter negotiation request, 255 vendor.
    pub event: u8,
    pub vcode: u8,
    pub params: [u16; 3],
    pub lun: u64,
    /// Sense data and iSCSI event data, as sent.
    pub data: Vec<u8>,
}

type TaskMsg = Result<Pdu>;

struct TaskEntry {
    tx: mpsc::UnboundedSender<TaskMsg>,
    cmd_sn: u32,
}

struct State {
    /// The CmdSN the next non-immediate command gets.
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, TaskEntry>,
    raw: VecDeque<Pdu>,
    async_events: Vec<AsyncEvent>,
    closed: bool,
}

pub(crate) struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    state: Mutex<State>,
    /// Signalled when the CmdSN window may have opened or the link closed.
    window: Notify,
    raw_ready: Notify,
    pub(crate) tx_framing: Framing,
    pub(crate) timeout: Duration,
}

/// A task's mailbox; dropping it forgets the ITT.
pub(crate) struct Task<'a> {
    shared: &'a Shared,
    pub(crate) itt: u32,
    rx: mpsc::UnboundedReceiver<TaskMsg>,
}

impl Task<'_> {
    /// The next PDU for this task, under the session timeout.
    pub(crate) async fn next(&mut self) -> Result<Pdu> {
        match tokio::time::timeout(self.shared.timeout, self.rx.recv()).await {
            Err(_) => Err(InitiatorError::Timeout),
            Ok(None) => Err(InitiatorError::ConnectionClosed),
            Ok(Some(m)) => m,
        }
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        self.shared.lock().tasks.remove(&self.itt);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the session: take the data anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn new_task(&self) -> Task<'_> {
        let (tx, rx) = mpsc::unbounded_channel();
        let itt = self.alloc_itt_with(Some(tx));
        Task {
            shared: self,
            itt,
            rx,
        }
    }

    /// A free ITT; registered as a task when `tx` is given.
    fn alloc_itt_with(&self, tx: Option<mpsc::UnboundedSender<TaskMsg>>) -> u32 {
        let mut st = self.lock();
        let mut itt = st.next_itt;
        while itt == RESERVED_TAG || st.tasks.contains_key(&itt) {
            itt = itt.wrapping_add(1);
        }
        st.next_itt = itt.wrapping_add(1);
        if let Some(tx) = tx {
            let cmd_sn = st.cmd_sn;
            st.tasks.insert(itt, TaskEntry { tx, cmd_sn });
        }
        itt
    }

    /// CmdSN the target recorded for a task still in flight.
    pub(crate) fn task_cmd_sn(&self, itt: u32) -> Option<u32> {
        self.lock().tasks.get(&itt).map(|t| t.cmd_sn)
    }

    /// Send a command PDU, filling CmdSN and ExpStatSN. Non-immediate
    /// commands take the next CmdSN and wait while the window is closed.
    /// The CmdSN is taken under the writer lock so commands hit the wire
    /// in CmdSN order.
    pub(crate) async fn send_command(&self, itt: Option<u32>, mut pdu: Pdu) -> Result<u32> {
        let immediate = pdu.bhs.immediate();
        loop {
            let opened = self.window.notified();
            let open = {
                let st = self.lock();
                if st.closed {
                    return Err(InitiatorError::ConnectionClosed);
                }
                immediate || sn_le(st.cmd_sn, st.max_cmd_sn)
            };
            if !open {
                tokio::time::timeout(self.timeout, opened)
                    .await
                    .map_err(|_| InitiatorError::Timeout)?;
                continue;
            }
            let mut w = self.lock_writer().await?;
            let sn = {
                let mut st = self.lock();
                if !immediate && !sn_le(st.cmd_sn, st.max_cmd_sn) {
                    continue; // closed again while we waited for the writer
                }
                let sn = st.cmd_sn;
                if !immediate {
                    st.cmd_sn = sn.wrapping_add(1);
                }
                if let Some(t) = itt.and_then(|i| st.tasks.get_mut(&i)) {
                    t.cmd_sn = sn;
                }
                pdu.bhs.set_cmd_sn(sn);
                pdu.bhs.set_exp_stat_sn(st.exp_stat_sn);
                sn
            };
            self.write_locked(&mut w, &pdu).await?;
            return Ok(sn);
        }
    }

    /// Send a PDU that carries ExpStatSN but no CmdSN (Data-Out).
    pub(crate) async fn send_data(&self, mut pdu: Pdu) -> Result<()> {
        let mut w = self.lock_writer().await?;
        pdu.bhs.set_exp_stat_sn(self.lock().exp_stat_sn);
        self.write_locked(&mut w, &pdu).await
    }

    /// Send bytes exactly as given.
    pub(crate) async fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.lock_writer().await?;
        self.write_bytes(&mut w, bytes).await
    }

    async fn lock_writer(&self) -> Result<tokio::sync::MutexGuard<'_, OwnedWriteHalf>> {
        tokio::time::timeout(self.timeout, self.writer.lock())
            .await
            .map_err(|_| InitiatorError::Timeout)
    }

    async fn write_locked(&self, w: &mut OwnedWriteHalf, pdu: &Pdu) -> Result<()> {
        self.write_bytes(w, &encode(pdu, &self.tx_framing)).await
    }

    async fn write_bytes(&self, w: &mut OwnedWriteHalf, bytes: &[u8]) -> Result<()> {
        let r = match tokio::time::timeout(self.timeout, w.write_all(bytes)).await {
            Err(_) => Err(InitiatorError::Timeout),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(())) => Ok(()),
        };
        if r.is_err() {
            // A partial write leaves the stream out of frame: give up on it.
            self.close();
        }
        r
    }

    pub(crate) async fn shutdown_writer(&self) {
        if let Ok(mut w) = self.lock_writer().await {
            let _ = w.shutdown().await;
        }
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.tasks.clear(); // dropping the senders wakes every task
        drop(st);
        self.window.notify_waiters();
        self.raw_ready.notify_waiters();
    }

    /// Track ExpCmdSN/MaxCmdSN and StatSN from a target PDU.
    fn note_sequence_numbers(&self, b: &Bhs) {
        let carries_status = match b.opcode() {
            Opcode::ScsiResponse
            | Opcode::TaskMgmtResponse
            | Opcode::TextResponse
            | Opcode::LogoutResponse
            | Opcode::AsyncMessage
            | Opcode::Reject => true,
            Opcode::DataIn => b.flags() & 0x01 != 0,
            Opcode::NopIn => b.itt() != RESERVED_TAG,
            Opcode::R2t => false,
            _ => return,
        };
        let mut st = self.lock();
        if carries_status && sn_le(st.exp_stat_sn, b.stat_sn()) {
            st.exp_stat_sn = b.stat_sn().wrapping_add(1);
        }
        let (exp, max) = (b.exp_cmd_sn(), b.max_cmd_sn());
        // RFC 7143 §4.2.2.1: a window with MaxCmdSN < ExpCmdSN - 1 is bogus.
        if sn_lt(max, exp.wrapping_sub(1)) {
            return;
        }
        let mut moved = false;
        if sn_lt(st.max_cmd_sn, max) {
            st.max_cmd_sn = max;
            moved = true;
        }
        if sn_lt(st.exp_cmd_sn, exp) {
            st.exp_cmd_sn = exp;
        }
        drop(st);
        if moved {
            self.window.notify_waiters();
        }
    }

    /// Deliver to the task with this ITT; unclaimed PDUs go to the raw queue.
    /// A PDU carried by `msg` that no task takes goes there itself (so
    /// Data-In is never copied on its way: issue 13); `raw` is kept for
    /// messages that carry an error instead.
    fn route(&self, itt: u32, msg: TaskMsg, raw: Option<Pdu>) {
        let mut st = self.lock();
        let unclaimed = match st.tasks.get(&itt) {
            Some(t) => match t.tx.send(msg) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            None => msg,
        };
        if let Some(p) = unclaimed.ok().or(raw) {
            if st.raw.len() >= RAW_QUEUE_CAP {
                st.raw.pop_front();
            }
            st.raw.push_back(p);
            drop(st);
            self.raw_ready.notify_waiters();
        }
    }
}

/// The reader task: every PDU from the target passes through here.
async fn reader_loop(shared: Arc<Shared>, mut rd: OwnedReadHalf, framing: Framing) {
    loop {
        match read_pdu(&mut rd, &framing).await {
            Ok(Ok(pdu)) => dispatch(&shared, pdu),
            Ok(Err((bhs, e))) => {
                // Data digest error: only this PDU (and its task) is lost.
                shared.note_sequence_numbers(&bhs);
                shared.route(bhs.itt(), Err(e.into()), None);
            }
            Err(e) => {
                tracing::debug!("initiator reader stops: {e}");
                break;
            }
        }
    }
    shared.close();
}

fn dispatch(shared: &Arc<Shared>, pdu: Pdu) {
    shared.note_sequence_numbers(&pdu.bhs);
    let itt = pdu.bhs.itt();
    match pdu.opcode() {
        Opcode::NopIn if itt == RESERVED_TAG => {
            if pdu.bhs.ttt() != RESERVED_TAG {
                let s = shared.clone();
                tokio::spawn(async move { s.answer_ping(pdu).await });
            }
        }
        Opcode::AsyncMessage => {
            let b = &pdu.bhs;
            let ev = AsyncEvent {
                event: b.0[36],
                vcode: b.0[37],
                params: [b.u16_at(38), b.u16_at(40), b.u16_at(42)],
                lun: b.lun(),
                data: pdu.data.clone(),
            };
            let mut st = shared.lock();
            if st.async_events.len() < ASYNC_CAP {
                st.async_events.push(ev);
            }
        }
        Opcode::Reject => {
            // The data segment holds the rejected PDU's header.
            let reason = pdu.bhs.0[2];
            let rejected_itt = pdu
                .data
                .get(16..20)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(RESERVED_TAG);
            shared.route(
                rejected_itt,
                Err(InitiatorError::Rejected { reason }),
                Some(pdu),
            );
        }
        _ => shared.route(itt, Ok(pdu), None),
    }
}

impl Shared {
    /// Answer a target's NOP-In ping (keep-alive) with a NOP-Out.
    async fn answer_ping(&self, ping: Pdu) {
        let mut p = Pdu::new(Opcode::NopOut);
        p.bhs.set_immediate(true);
        p.bhs.set_final(true);
        p.bhs.set_lun(ping.bhs.lun());
        p.bhs.set_itt(RESERVED_TAG);
        p.bhs.set_ttt(ping.bhs.ttt());
        let max = self.tx_framing.max_data_segment as usize;
        p.data = ping.data[..ping.data.len().min(max)].to_vec();
        if let Err(e) = self.send_command(None, p).await {
            tracing::debug!("NOP-Out answer failed: {e}");
        }
    }
}

/// A logged-in iSCSI session.
pub struct Session {
    pub(crate) shared: Arc<Shared>,
    reader: JoinHandle<()>,
    params: SessionParams,
    tsih: u16,
    declared: HashMap<String, String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Session {
    pub(crate) fn start(
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        outcome: LoginOutcome,
        timeout: Duration,
    ) -> Session {
        let p = &outcome.params;
        let tx_framing = Framing {
            header_digest: p.header_digest,
            data_digest: p.data_digest,
            max_data_segment: p.target_max_recv_dsl,
        };
        // We receive what we declared: the target must respect our limit.
        let rx_framing = Framing {
            max_data_segment: p.initiator_max_recv_dsl,
            ..tx_framing
        };
        let st = State {
            cmd_sn: outcome.cmd_sn,
            exp_cmd_sn: outcome.exp_cmd_sn,
            max_cmd_sn: outcome.max_cmd_sn,
            exp_stat_sn: outcome.stat_sn.wrapping_add(1),
            next_itt: 1,
            tasks: HashMap::new(),
            raw: VecDeque::new(),
            async_events: Vec::new(),
            closed: false,
        };
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(wr),
            state: Mutex::new(st),
            window: Notify::new(),
            raw_ready: Notify::new(),
            tx_framing,
            timeout,
        });
        let reader = tokio::spawn(reader_loop(shared.clone(), rd, rx_framing));
        Session {
            shared,
            reader,
            params: outcome.params,
            tsih: outcome.tsih,
            declared: outcome.declared,
        }
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The TSIH the target assigned.
    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    /// A key the target declared at login (TargetAlias, ...).
    pub fn target_declared(&self, key: &str) -> Option<&str> {
        self.declared.get(key).map(String::as_str)
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Async Messages received so far (drained).
    pub fn take_async_events(&self) -> Vec<AsyncEvent> {
        std::mem::take(&mut self.shared.lock().async_events)
    }

    /// (next CmdSN, ExpCmdSN, MaxCmdSN, ExpStatSN) as we track them.
    pub fn sequence_numbers(&self) -> (u32, u32, u32, u32) {
        let st = self.shared.lock();
        (st.cmd_sn, st.exp_cmd_sn, st.max_cmd_sn, st.exp_stat_sn)
    }

    /// A fresh ITT not used by any task, for hand-built PDUs.
    pub fn alloc_itt(&self) -> u32 {
        self.shared.alloc_itt_with(None)
    }

    /// Send a hand-built PDU exactly as given (tests; no SN filling).
    pub async fn send_raw_pdu(&self, pdu: &Pdu) -> Result<()> {
        self.shared
            .send_bytes(&encode(pdu, &self.shared.tx_framing))
            .await
    }

    /// Send a hand-built command with CmdSN and ExpStatSN filled in
    /// (a fresh CmdSN unless its I bit is set); returns the CmdSN used.
    pub async fn send_raw_command(&self, pdu: Pdu) -> Result<u32> {
        self.shared.send_command(None, pdu).await
    }

    /// Send raw bytes (e.g. a PDU with a broken digest).
    pub async fn send_raw_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.shared.send_bytes(bytes).await
    }

    /// The next PDU no task claimed (replies to raw PDUs, stray Rejects),
    /// waiting up to the session timeout.
    pub async fn recv_raw(&self) -> Result<Pdu> {
        self.recv_raw_within(self.shared.timeout).await
    }

    pub async fn recv_raw_within(&self, limit: Duration) -> Result<Pdu> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ready = self.shared.raw_ready.notified();
            {
                let mut st = self.shared.lock();
                if let Some(p) = st.raw.pop_front() {
                    return Ok(p);
                }
                if st.closed {
                    return Err(InitiatorError::ConnectionClosed);
                }
            }
            tokio::time::timeout_at(deadline, ready)
                .await
                .map_err(|_| InitiatorError::Timeout)?;
        }
    }
}
