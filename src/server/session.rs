//! Full feature phase of one session (one connection: MaxConnections=1).
//!
//! One task owns all session state and both halves of the socket: it
//! reads PDUs itself (a buffered, cancel-safe reader) and selects over
//! them, completed commands, timers and cancellation. Commands that can
//! wait for a device run on the blocking pool and report back through a
//! channel, so a slow disk never stops the session from reading (task
//! management, pings and Data-Out keep flowing); memory-speed ones run
//! right here (see `scsi::inline`).

use super::login::LoggedIn;
use super::poll;
use super::shared::{SessionControl, Shared};
use super::task::Task;
use super::tmf::PendingTmf;
use super::wire::{self, ReadOutcome};
use crate::proto::cmdsn::{Admit, CmdWindow};
use crate::proto::dataout::NO_TTT;
use crate::proto::login::SessionType;
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::{Bhs, Framing, Opcode, Pdu};
use crate::proto::response::{self, SeqNums, reject};
use crate::scsi::{DeviceServer, Nexus, ScsiResult};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

/// A command whose turn in CmdSN order has come.
#[derive(Debug)]
pub(super) enum Delivery {
    /// A SCSI command registered in the task table under this ITT.
    Scsi(u32),
    Nop(Pdu),
    Tmf(Pdu),
    Text(Pdu),
    Logout(Pdu),
    /// A rejected command: its CmdSN is used up, nothing else happens.
    Skip,
}

/// A finished SCSI command, from the blocking pool.
pub(super) struct Done {
    pub itt: u32,
    pub result: ScsiResult,
}

pub(super) struct Session {
    pub shared: Arc<Shared>,
    wr: OwnedWriteHalf,
    framing_out: Framing,
    pub params: SessionParams,
    pub kind: SessionType,
    pub target_name: Option<String>,
    pub device: Option<Arc<DeviceServer>>,
    pub nexus: Arc<Nexus>,
    pub cid: u16,
    stat_sn: u32,
    pub window: CmdWindow<Delivery>,
    pub tasks: HashMap<u32, Task>,
    pub ttt_next: u32,
    pub done_tx: mpsc::UnboundedSender<Done>,
    pub pending_tmfs: Vec<PendingTmf>,
    /// Bytes of write data the session's tasks may hold (see `charge`).
    pub write_charged: u64,
    /// Write data still held by this session's abandoned (hung) calls.
    pub stuck_charged: Arc<std::sync::atomic::AtomicU64>,
    /// When to look for calls past the hang timeout (`hung.rs`).
    pub hang_check: Option<Instant>,
    /// R2Ts waiting for write-buffer budget, oldest first.
    pub deferred_r2ts: std::collections::VecDeque<(u32, Vec<crate::proto::dataout::R2tRequest>)>,
    /// Whether polling pays for this session now.
    poll_policy: poll::PollPolicy,
    /// Write tasks that left the table lately (see `Session::note_ended`).
    pub ended_writes: std::collections::VecDeque<u32>,
    /// Our outstanding keep-alive ping: its TTT and answer deadline.
    nop: Option<(u32, Instant)>,
    last_rx: Instant,
    /// A Logout waiting for executing commands to finish.
    logout: Option<Pdu>,
    /// Set once the session should end after the current event.
    pub finished: bool,
    /// Shutdown: the deadline for the initiator to log out.
    closing: Option<Instant>,
    pub text: crate::proto::discovery::TextResponder,
    /// The portal this connection came in on (what SendTargets advertises).
    pub local_addr: Option<SocketAddr>,
    /// This session's metric handles (also its count in the sessions gauge).
    pub metrics: crate::metrics::SessionMetrics,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        wr: OwnedWriteHalf,
        done: &LoggedIn,
        done_tx: mpsc::UnboundedSender<Done>,
    ) -> Session {
        let r = &done.result;
        let params = r.params.clone();
        let registry = shared.registry.load();
        let device = r
            .target_name
            .as_deref()
            .and_then(|t| registry.target(t))
            .map(|t| t.device.clone());
        let nexus = Arc::new(Nexus {
            id: done.nexus_id,
            initiator_port: format!("{},i,0x{}", r.initiator_name, hex::encode(r.isid)),
            initiator_name: r.initiator_name.clone(),
            relative_port: r.portal_group_tag.max(1),
        });
        let window = CmdWindow::new(r.exp_cmd_sn, shared.settings.cmd_window);
        let metrics = crate::metrics::SessionMetrics::new(
            shared.metrics.clone(),
            r.target_name.as_deref().unwrap_or(""),
            r.session_type == SessionType::Discovery,
            device
                .as_ref()
                .map_or(Vec::new(), |d| d.luns.keys().copied().collect()),
        );
        Session {
            framing_out: Framing {
                header_digest: params.header_digest,
                data_digest: params.data_digest,
                max_data_segment: params.initiator_max_recv_dsl,
            },
            params,
            kind: r.session_type,
            target_name: r.target_name.clone(),
            device,
            nexus,
            cid: r.cid,
            stat_sn: r.next_stat_sn,
            window,
            tasks: HashMap::new(),
            ttt_next: 1,
            done_tx,
            pending_tmfs: Vec::new(),
            write_charged: 0,
            stuck_charged: Default::default(),
            hang_check: None,
            deferred_r2ts: Default::default(),
            poll_policy: Default::default(),
            ended_writes: Default::default(),
            nop: None,
            last_rx: Instant::now(),
            logout: None,
            finished: false,
            closing: None,
            text: Default::default(),
            local_addr: None,
            metrics,
            shared,
            wr,
        }
    }

    /// A fresh target transfer tag (never the reserved 0xffffffff).
    pub fn next_ttt(&mut self) -> u32 {
        let t = self.ttt_next;
        self.ttt_next = self.ttt_next.wrapping_add(1);
        if self.ttt_next == NO_TTT {
            self.ttt_next = 1;
        }
        t
    }

    /// Stamp sequence numbers and send. PDUs that carry status advance
    /// StatSN; the rest carry the next StatSN without using it.
    pub async fn send(&mut self, pdus: Vec<Pdu>) -> io::Result<()> {
        if pdus.is_empty() {
            return Ok(());
        }
        self.send_replies(&mut [wire::Reply::plain(pdus)]).await
    }

    /// [`send`](Self::send) for replies whose Data-In segments stay in the
    /// command's buffer.
    pub async fn send_replies(&mut self, replies: &mut [wire::Reply]) -> io::Result<()> {
        for p in replies.iter_mut().flat_map(|r| r.pdus.iter_mut()) {
            let seq = SeqNums {
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            };
            response::stamp(p, seq);
            if response::carries_status(p) {
                self.stat_sn = self.stat_sn.wrapping_add(1);
            }
        }
        if replies.iter().all(|r| r.pdus.is_empty()) {
            return Ok(());
        }
        let stall = self.shared.settings.send_stall_timeout;
        let sent = wire::write_replies(&mut self.wr, replies, &self.framing_out, stall).await;
        for r in replies.iter_mut() {
            crate::buffers::give(std::mem::take(&mut r.body));
        }
        sent
    }

    pub async fn reject(&mut self, reason: u8, bhs: &Bhs) -> io::Result<()> {
        debug!(reason, op = ?bhs.opcode(), "reject");
        self.metrics.reject(reason);
        self.send(vec![response::reject(reason, &bhs.0)]).await
    }

    /// Admit a non-immediate command to the CmdSN window (or deliver an
    /// immediate one at once) and deliver whatever became deliverable.
    pub async fn admit(&mut self, bhs: &Bhs, d: Delivery) -> io::Result<()> {
        if bhs.immediate() {
            return self.deliver(d, true).await;
        }
        let scsi_itt = match d {
            Delivery::Scsi(itt) => Some(itt),
            _ => None,
        };
        match self.window.admit(bhs.cmd_sn(), d) {
            Admit::Deliver(list) => {
                for d in list {
                    self.deliver(d, false).await?;
                }
                Ok(())
            }
            Admit::Held => Ok(()),
            Admit::Dropped => {
                debug!(cmd_sn = bhs.cmd_sn(), "CmdSN outside window: ignored");
                // The command was registered on arrival; an ignored one
                // must not stay in the task table, nor keep any budget
                // (every path out of the table releases it).
                if let Some(itt) = scsi_itt {
                    if let Some(t) = self.tasks.remove(&itt) {
                        self.release(&t);
                    }
                    self.note_ended(itt);
                }
                Ok(())
            }
        }
    }

    async fn deliver(&mut self, d: Delivery, immediate: bool) -> io::Result<()> {
        match d {
            Delivery::Scsi(itt) => return self.deliver_scsi(itt).await,
            Delivery::Nop(p) => self.answer_ping(p).await?,
            Delivery::Tmf(p) => self.on_tmf(p).await?,
            Delivery::Text(p) => self.on_text(p).await?,
            Delivery::Logout(p) => {
                self.logout = Some(p);
                self.try_logout().await?;
            }
            Delivery::Skip => {}
        }
        // Non-SCSI commands complete as soon as they are handled.
        if !immediate {
            self.window.complete();
        }
        Ok(())
    }

    async fn on_pdu(&mut self, pdu: Pdu) -> io::Result<()> {
        self.last_rx = Instant::now();
        let bhs = pdu.bhs.clone();
        match pdu.opcode() {
            Opcode::ScsiCommand => self.on_scsi_command(pdu).await,
            Opcode::DataOut => self.on_data_out(pdu).await,
            Opcode::NopOut => self.on_nop_out(pdu).await,
            Opcode::TaskMgmtRequest => self.admit(&bhs, Delivery::Tmf(pdu)).await,
            Opcode::TextRequest => self.admit(&bhs, Delivery::Text(pdu)).await,
            Opcode::LogoutRequest => self.admit(&bhs, Delivery::Logout(pdu)).await,
            Opcode::Snack => self.reject(reject::SNACK_REJECT, &bhs).await,
            Opcode::LoginRequest => self.reject(reject::PROTOCOL_ERROR, &bhs).await,
            _ => self.reject(reject::COMMAND_NOT_SUPPORTED, &bhs).await,
        }
    }

    async fn on_nop_out(&mut self, pdu: Pdu) -> io::Result<()> {
        if pdu.bhs.itt() == NO_TTT {
            // The answer to our keep-alive (or a ping wanting no answer).
            if self.nop.is_some_and(|(ttt, _)| ttt == pdu.bhs.ttt()) {
                self.nop = None;
            }
            return Ok(());
        }
        let bhs = pdu.bhs.clone();
        self.admit(&bhs, Delivery::Nop(pdu)).await
    }

    async fn answer_ping(&mut self, pdu: Pdu) -> io::Result<()> {
        let mut data = pdu.data;
        data.truncate(self.params.initiator_max_recv_dsl as usize);
        let reply = response::nop_in(pdu.bhs.itt(), NO_TTT, pdu.bhs.lun(), data);
        self.send(vec![reply]).await
    }

    /// Answer a Logout once no command is executing (their responses go
    /// out first), then end the session.
    pub async fn try_logout(&mut self) -> io::Result<()> {
        let Some(req) = &self.logout else {
            return Ok(());
        };
        // A call already reported hung is not waited for: the session's end
        // abandons it (bounded by `abort_timeout`).
        let waits = |t: &Task| t.executing && !t.ticket.as_ref().is_some_and(|k| k.is_hung());
        if self.tasks.values().any(waits) {
            return Ok(());
        }
        let reason = req.bhs.flags() & 0x7f;
        let code = match reason {
            0 => 0,
            1 if req.bhs.cid() == self.cid => 0,
            1 => 1, // CID not found
            _ => 2, // connection recovery is not supported (ERL 0)
        };
        let resp = response::logout_response(req.bhs.itt(), code);
        self.logout = None;
        self.send(vec![resp]).await?;
        if code == 0 {
            self.finished = true;
        }
        Ok(())
    }

    async fn on_timer(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.check_hung(now).await?;
        if let Some(deadline) = self.closing
            && now >= deadline
        {
            info!(tsih = ?self.target_name, "initiator did not log out in time; closing");
            self.finished = true;
            return Ok(());
        }
        if let Some((_, deadline)) = self.nop {
            if now >= deadline {
                warn!(initiator = %self.nexus.initiator_name, "no answer to NOP-In; dropping connection");
                self.finished = true;
            }
            return Ok(());
        }
        if now >= self.last_rx + self.shared.settings.nop_interval {
            let ttt = self.next_ttt();
            self.nop = Some((ttt, now + self.shared.settings.nop_timeout));
            self.send(vec![response::nop_in(NO_TTT, ttt, 0, Vec::new())])
                .await?;
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let mut t = match self.nop {
            Some((_, d)) => d,
            None => self.last_rx + self.shared.settings.nop_interval,
        };
        if let Some(c) = self.closing {
            t = t.min(c);
        }
        if let Some(h) = self.hung_deadline() {
            t = t.min(h);
        }
        t
    }

    /// Shutdown or reinstatement asked us to end.
    async fn on_cancel(&mut self) -> io::Result<()> {
        let asked = self.shared.shutdown.is_cancelled() || self.shared.logout_asked(self.nexus.id);
        if asked && self.closing.is_none() {
            let grace = self.shared.settings.logout_grace;
            self.closing = Some(Instant::now() + grace);
            let secs = grace.as_secs().max(1) as u16;
            self.send(vec![response::async_logout_request(secs)]).await
        } else if !asked {
            info!(initiator = %self.nexus.initiator_port, "session reinstated; closing the old one");
            self.finished = true;
            Ok(())
        } else {
            Ok(())
        }
    }
}

/// Run full feature phase until logout, error or cancellation.
pub async fn run(
    shared: Arc<Shared>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    done: LoggedIn,
    local: Option<SocketAddr>,
) {
    let _counted = shared.stats.session();
    let mut done = done;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut s = Session::new(shared.clone(), wr, &done, done_tx);
    let mut control = std::mem::replace(&mut done.control, mpsc::unbounded_channel().1);
    s.local_addr = local;
    let framing_in = Framing {
        header_digest: s.params.header_digest,
        data_digest: s.params.data_digest,
        max_data_segment: s.params.target_max_recv_dsl,
    };
    let mut reader = wire::PduReader::new(rd, framing_in);
    if let (Some(dev), SessionType::Normal) = (&s.device, s.kind) {
        dev.nexus_added(&s.nexus);
    }
    let cancel = done.cancel.clone();
    let result = session_loop(&mut s, &mut reader, &mut done_rx, &mut control, &cancel).await;
    match result {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            warn!(initiator = %s.nexus.initiator_port, error = %e, "send stalled; connection dropped")
        }
        Err(e) => debug!(error = %e, "session ended by I/O error"),
        Ok(()) => {}
    }
    if let Some(dev) = &s.device {
        // Changes held by a CBT write lock would otherwise keep this
        // session waiting for itself (it may be the lock's holder).
        dev.abort_held(None, Some(s.nexus.id), None);
    }
    s.drain(&mut done_rx).await;
    if let (Some(dev), SessionType::Normal) = (&s.device, s.kind) {
        dev.nexus_removed(&s.nexus);
    }
    shared.remove_session(done.tsih);
    info!(initiator = %s.nexus.initiator_port, tsih = done.tsih, "session closed");
}

async fn session_loop(
    s: &mut Session,
    reader: &mut wire::PduReader<OwnedReadHalf>,
    done_rx: &mut mpsc::UnboundedReceiver<Done>,
    control: &mut mpsc::UnboundedReceiver<SessionControl>,
    cancel: &tokio_util::sync::CancellationToken,
) -> io::Result<()> {
    let mut cancel_seen = false;
    while !s.finished {
        // Handle what already arrived, a burst at a time, so the commands
        // of a burst run before their responses go out in one write.
        // `more`: the batch ended at its cap, not on an empty buffer.
        let mut more = true;
        for _ in 0..MAX_PDU_BATCH {
            let Some(ev) = reader.next() else {
                more = false;
                break;
            };
            if !s.on_read(ev).await? {
                return Ok(());
            }
            if s.finished {
                break;
            }
        }
        if s.finished {
            break;
        }
        if !s.deferred_r2ts.is_empty() {
            s.serve_deferred().await?;
        }
        if !more && !s.finished {
            more = s.poll_briefly(reader, done_rx).await?;
            if s.finished {
                break;
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                s.on_cancel().await?;
            }
            Some(d) = done_rx.recv() => s.on_done(d, done_rx).await?,
            Some(c) = control.recv() => s.on_control(c),
            // Only wait for the socket when nothing is buffered already.
            _ = std::future::ready(()), if more => {}
            r = reader.fill(), if !more => {
                if !r.unwrap_or(false) {
                    return Ok(()); // closed, or reset
                }
            }
            _ = sleep_until(s.next_deadline()) => s.on_timer().await?,
            // R2Ts waiting for other sessions to free write budget: retry.
            _ = tokio::time::sleep(BUDGET_RETRY), if !s.deferred_r2ts.is_empty() => {}
        }
    }
    Ok(())
}

impl Session {
    /// Before sleeping, poll the socket and the completions for a moment
    /// (`poll.rs`); `true` when bytes are waiting in the reader.
    async fn poll_briefly(
        &mut self,
        reader: &mut wire::PduReader<OwnedReadHalf>,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
    ) -> io::Result<bool> {
        let budget = self.shared.settings.busy_poll;
        // A command on the blocking pool may need this very CPU (a target
        // pinned to one core): polling would only delay its completion.
        if budget.is_zero()
            || self.tasks.values().any(|t| t.pooled)
            || !self.poll_policy.should_poll()
        {
            return Ok(false);
        }
        // The rest of a PDU already begun says nothing about how densely
        // commands come.
        let between_pdus = reader.buffered() == 0;
        match poll::busy_poll(reader, done_rx, budget, &self.shared.pollers).await? {
            poll::Polled::Bytes(waited) => {
                if between_pdus {
                    self.poll_policy.bytes_after(waited);
                }
                Ok(true)
            }
            poll::Polled::Closed => {
                self.finished = true;
                Ok(false)
            }
            poll::Polled::Done(d) => {
                self.on_done(d, done_rx).await?;
                Ok(true)
            }
            poll::Polled::Nothing => Ok(false),
        }
    }
}

/// How often R2Ts held back by the target-wide write budget look again.
const BUDGET_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// PDUs handled before completions get their turn.
const MAX_PDU_BATCH: usize = 32;

impl Session {
    /// One read outcome; `false` when the connection is done.
    async fn on_read(&mut self, ev: ReadOutcome) -> io::Result<bool> {
        match ev {
            ReadOutcome::Pdu(p) => self.on_pdu(p).await?,
            ReadOutcome::DataDigest(bhs) => {
                self.metrics.digest_error(true);
                self.on_data_digest_error(&bhs).await?
            }
            ReadOutcome::Fatal(bhs, e) => {
                warn!(error = %e, "framing lost; closing connection");
                if matches!(e, crate::proto::PduError::HeaderDigest) {
                    self.metrics.digest_error(false);
                }
                let reason = match e {
                    crate::proto::PduError::HeaderDigest => None,
                    _ => Some(reject::PROTOCOL_ERROR),
                };
                if let Some(r) = reason {
                    let _ = self.reject(r, &bhs).await;
                }
                return Ok(false);
            }
            ReadOutcome::Closed => return Ok(false),
        }
        Ok(true)
    }
}
