//! Full feature phase of one session (one connection: MaxConnections=1):
//! a driver around `proto::conn::Connection`, which holds every rule.
//!
//! One task owns the connection state machine and both halves of the
//! socket: it reads PDUs itself (a buffered, cancel-safe reader), feeds
//! them in, and does what comes out — writes replies, runs commands,
//! resets devices — and sleeps until the next deadline. Commands that can
//! wait for a device run on the blocking pool and report back through a
//! channel, so a slow disk never stops the session from reading (task
//! management, pings and Data-Out keep flowing); memory-speed ones run
//! right here (see `scsi::inline`). Metrics observe the machine's events.

use super::hung::Ticket;
use super::login::LoggedIn;
use super::poll;
use super::shared::{SessionControl, Shared};
use super::wire::{self, ReadOutcome};
use crate::proto::conn::{CloseReason, Config, Connection, Event, Exec, Output, Reply};
use crate::proto::login::SessionType;
use crate::proto::pdu::Framing;
use crate::scsi::{DeviceServer, Nexus, ScsiResult};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// A finished SCSI command, from the device (inline or the blocking pool).
pub(super) struct Done {
    pub itt: u32,
    pub result: ScsiResult,
}

/// What the state machine asks of the target (`text.rs` answers
/// SendTargets), and what the driver needs to run commands.
pub(super) struct Target {
    pub shared: Arc<Shared>,
    pub kind: SessionType,
    pub target_name: Option<String>,
    pub device: Option<Arc<DeviceServer>>,
    pub nexus: Arc<Nexus>,
    /// The portal this connection came in on (what SendTargets advertises).
    pub local_addr: Option<SocketAddr>,
}

/// The runtime side of a task in the machine's table, from `Started` to
/// `Ended`: the guards that count it, and its call on the pool if any.
struct Guards {
    _in_flight: crate::metrics::InFlight,
    _counted: super::stats::Counted,
    /// Its call on the blocking pool (see `hung.rs`).
    ticket: Option<Arc<Ticket>>,
}

pub(super) struct Session {
    pub target: Target,
    pub conn: Connection,
    wr: OwnedWriteHalf,
    framing_out: Framing,
    done_tx: mpsc::UnboundedSender<Done>,
    tasks: HashMap<u32, Guards>,
    /// When to look for calls past the hang timeout (`hung.rs`).
    pub hang_check: Option<tokio::time::Instant>,
    /// Whether polling pays for this session now.
    poll_policy: poll::PollPolicy,
    /// Set once the machine closed the connection.
    finished: bool,
    /// This session's metric handles (also its count in the sessions gauge).
    metrics: crate::metrics::SessionMetrics,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        wr: OwnedWriteHalf,
        done: &LoggedIn,
        done_tx: mpsc::UnboundedSender<Done>,
        local_addr: Option<SocketAddr>,
    ) -> Session {
        let r = &done.result;
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
        let metrics = crate::metrics::SessionMetrics::new(
            shared.metrics.clone(),
            r.target_name.as_deref().unwrap_or(""),
            r.session_type == SessionType::Discovery,
            device
                .as_ref()
                .map_or(Vec::new(), |d| d.luns.keys().copied().collect()),
        );
        let s = &shared.settings;
        let cfg = Config {
            params: r.params.clone(),
            kind: r.session_type,
            target_name: r.target_name.clone(),
            scsi: device.is_some(),
            cid: r.cid,
            exp_cmd_sn: r.exp_cmd_sn,
            stat_sn: r.next_stat_sn,
            cmd_window: s.cmd_window,
            max_transfer: s.max_transfer,
            write_buffer_per_session: s.write_buffer_per_session,
            nop_interval: s.nop_interval,
            nop_timeout: s.nop_timeout,
            abort_timeout: s.abort_timeout,
        };
        let conn = Connection::new(cfg, shared.write_budget.clone(), Instant::now());
        Session {
            framing_out: Framing {
                header_digest: r.params.header_digest,
                data_digest: r.params.data_digest,
                max_data_segment: r.params.initiator_max_recv_dsl,
            },
            target: Target {
                kind: r.session_type,
                target_name: r.target_name.clone(),
                device,
                nexus,
                local_addr,
                shared,
            },
            conn,
            wr,
            done_tx,
            tasks: HashMap::new(),
            hang_check: None,
            poll_policy: Default::default(),
            finished: false,
            metrics,
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.target.shared
    }

    /// Do what the machine asks, then write its replies in one go (the
    /// batch stops at a close: nothing after it goes out).
    async fn flush(&mut self) -> io::Result<()> {
        let mut replies = Vec::new();
        loop {
            self.observe();
            let Some(o) = self.conn.poll_output() else {
                break;
            };
            match o {
                Output::Send(r) if !self.finished => replies.push(r),
                Output::Send(_) => {}
                Output::Execute(e) => self.execute(e),
                Output::Abort(s) => {
                    if let Some(d) = &self.target.device {
                        d.abort_held(s.lun, Some(self.target.nexus.id), s.tag);
                    }
                }
                Output::LunReset(lun) => {
                    if let Some(d) = &self.target.device {
                        d.lun_reset(lun, &self.target.nexus);
                    }
                }
                Output::TargetReset => {
                    if let Some(d) = &self.target.device {
                        d.target_reset(&self.target.nexus);
                    }
                }
                Output::Abandon(itt) => {
                    if self.abandon(itt) {
                        self.conn.on_abandoned(itt);
                    }
                }
                Output::Close(reason) => self.on_close(reason),
            }
        }
        self.send_replies(&mut replies).await
    }

    /// Metrics (and the per-task guards) follow what the machine reports.
    fn observe(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Reject(reason) => {
                    debug!(reason, "reject");
                    self.metrics.reject(reason);
                }
                Event::Started { itt, lun } => {
                    let g = Guards {
                        _in_flight: self.metrics.command_started(lun),
                        _counted: self.target.shared.stats.task(),
                        ticket: None,
                    };
                    self.tasks.insert(itt, g);
                }
                Event::Ended { itt, .. } => drop(self.tasks.remove(&itt)),
                Event::Answered(a) => (self.metrics).command_done(
                    a.lun, &a.cdb, a.read, a.edtl, a.status, a.data_in, a.started,
                ),
                Event::Tmf { function, response } => {
                    info!(function, response, initiator = %self.target.nexus.initiator_port, "task management");
                    self.metrics.tmf(function, response);
                }
                Event::DigestError { data } => self.metrics.digest_error(data),
                Event::Budget(_) => {}
            }
        }
    }

    fn on_close(&mut self, reason: CloseReason) {
        let who = &self.target.nexus.initiator_port;
        match reason {
            CloseReason::NopTimeout => {
                warn!(initiator = %who, "no answer to NOP-In; dropping connection")
            }
            CloseReason::LogoutGrace => {
                info!(initiator = %who, "initiator did not log out in time; closing")
            }
            CloseReason::Reinstated => {
                info!(initiator = %who, "session reinstated; closing the old one")
            }
            _ => debug!(?reason, "connection closing"),
        }
        self.finished = true;
    }

    /// Write replies; Data-In segments stay in the commands' buffers, which
    /// are recycled once written.
    async fn send_replies(&mut self, replies: &mut [Reply]) -> io::Result<()> {
        if replies.iter().all(|r| r.pdus.is_empty()) {
            return Ok(());
        }
        let stall = self.shared().settings.send_stall_timeout;
        let sent = wire::write_replies(&mut self.wr, replies, &self.framing_out, stall).await;
        for r in replies.iter_mut() {
            crate::buffers::give(std::mem::take(&mut r.body));
        }
        sent
    }

    /// Run a command: right here when it cannot wait for a device, else
    /// on the blocking pool. `submit` runs it now, or holds it (CBT write
    /// lock) and calls back later from the thread that releases it.
    fn execute(&mut self, e: Exec) {
        let Some(device) = self.target.device.clone() else {
            return; // the machine runs SCSI commands in normal sessions only
        };
        let itt = e.itt;
        let charged = e.charged;
        let cmd = e.into_command(self.target.nexus.clone());
        // The hand-off to the pool would cost more than such a command.
        if device.runs_inline(cmd.lun, &cmd.cdb) {
            let tx = self.done_tx.clone();
            let done = move |result| drop(tx.send(Done { itt, result }));
            device.submit(cmd, Box::new(done));
        } else {
            let ticket = self.spawn_pooled(device, itt, cmd, charged);
            if let Some(g) = self.tasks.get_mut(&itt) {
                g.ticket = Some(ticket);
            }
        }
    }

    pub(super) fn done_tx(&self) -> mpsc::UnboundedSender<Done> {
        self.done_tx.clone()
    }

    /// After the session ended: what the machine says is moot, except
    /// that a task that left its table gives its guards back.
    pub(super) fn forget_outputs(&mut self) {
        while self.conn.poll_output().is_some() {}
        while let Some(ev) = self.conn.poll_event() {
            if let Event::Ended { itt, .. } = ev {
                self.tasks.remove(&itt);
            }
        }
    }

    /// Calls on the blocking pool, with their ITTs.
    pub(super) fn tickets(&self) -> impl Iterator<Item = (u32, &Arc<Ticket>)> {
        (self.tasks.iter()).filter_map(|(itt, g)| Some((*itt, g.ticket.as_ref()?)))
    }

    pub(super) fn ticket(&self, itt: u32) -> Option<Arc<Ticket>> {
        self.tasks.get(&itt)?.ticket.clone()
    }

    /// Commands finished: answer them (at most `MAX_BATCH`, bounding the
    /// first one's latency) in one write.
    async fn on_done(
        &mut self,
        first: Done,
        more: &mut mpsc::UnboundedReceiver<Done>,
    ) -> io::Result<()> {
        self.conn.on_done(first.itt, first.result);
        for _ in 1..MAX_BATCH {
            let Ok(d) = more.try_recv() else { break };
            self.conn.on_done(d.itt, d.result);
        }
        self.flush().await
    }

    async fn on_timer(&mut self) -> io::Result<()> {
        let now = tokio::time::Instant::now();
        if self.hang_check.is_some_and(|t| now >= t) {
            self.report_hung(now);
        }
        self.conn.on_timeout(now.into_std());
        self.flush().await
    }

    fn next_deadline(&self) -> tokio::time::Instant {
        let t = tokio::time::Instant::from_std(self.conn.next_deadline());
        self.hang_check.map_or(t, |h| t.min(h))
    }

    /// Shutdown (or a reload) asked for a logout, or a newer login of the
    /// same initiator port reinstated the session.
    async fn on_cancel(&mut self) -> io::Result<()> {
        let shared = self.shared();
        let asked = shared.shutdown.is_cancelled() || shared.logout_asked(self.target.nexus.id);
        if asked {
            let grace = shared.settings.logout_grace;
            self.conn.on_shutdown(Instant::now(), grace);
        } else {
            self.conn.on_reinstated();
        }
        self.flush().await
    }

    /// A request from outside the session.
    async fn on_control(&mut self, c: SessionControl) -> io::Result<()> {
        match c {
            // Another initiator's PREEMPT AND ABORT: abort silently.
            SessionControl::AbortLun(lun) => self.conn.abort_from_outside(lun),
            SessionControl::SwitchDevice(dev) => self.switch_device(dev),
        }
        self.flush().await
    }

    /// One read outcome.
    async fn on_read(&mut self, ev: ReadOutcome) -> io::Result<()> {
        let target = &self.target;
        match ev {
            ReadOutcome::Pdu(p) => self.conn.on_pdu(Instant::now(), p, target),
            ReadOutcome::DataDigest(bhs) => self.conn.on_data_digest(Instant::now(), &bhs, target),
            ReadOutcome::Fatal(bhs, e) => {
                warn!(error = %e, "framing lost; closing connection");
                self.conn.on_framing_lost(&bhs, &e);
                // The Reject is a courtesy: the connection ends either way.
                let _ = self.flush().await;
                return Ok(());
            }
            ReadOutcome::Closed => self.finished = true,
        }
        self.flush().await
    }
}

/// Completions answered in one write at most.
const MAX_BATCH: usize = 64;

/// PDUs handled before completions get their turn.
const MAX_PDU_BATCH: usize = 32;

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
    let mut s = Session::new(shared.clone(), wr, &done, done_tx, local);
    let mut control = std::mem::replace(&mut done.control, mpsc::unbounded_channel().1);
    let params = &done.result.params;
    let framing_in = Framing {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        max_data_segment: params.target_max_recv_dsl,
    };
    let mut reader = wire::PduReader::new(rd, framing_in);
    let t = &s.target;
    if let (Some(dev), SessionType::Normal) = (&t.device, t.kind) {
        dev.nexus_added(&t.nexus);
    }
    let cancel = done.cancel.clone();
    let result = session_loop(&mut s, &mut reader, &mut done_rx, &mut control, &cancel).await;
    let port = s.target.nexus.initiator_port.clone();
    match result {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            warn!(initiator = %port, error = %e, "send stalled; connection dropped")
        }
        Err(e) => debug!(error = %e, "session ended by I/O error"),
        Ok(()) => {}
    }
    if let Some(dev) = &s.target.device {
        // Changes held by a CBT write lock would otherwise keep this
        // session waiting for itself (it may be the lock's holder).
        dev.abort_held(None, Some(s.target.nexus.id), None);
    }
    s.drain(&mut done_rx).await;
    let t = &s.target;
    if let (Some(dev), SessionType::Normal) = (&t.device, t.kind) {
        dev.nexus_removed(&t.nexus);
    }
    shared.remove_session(done.tsih);
    info!(initiator = %port, tsih = done.tsih, "session closed");
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
            s.on_read(ev).await?;
            if s.finished {
                return Ok(());
            }
        }
        if s.conn.budget_waiting() {
            s.conn.retry_budget(Instant::now());
            s.flush().await?;
        }
        if !more && !s.finished {
            more = s.poll_briefly(reader, done_rx).await?;
        }
        if s.finished {
            break;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                s.on_cancel().await?;
            }
            Some(d) = done_rx.recv() => s.on_done(d, done_rx).await?,
            Some(c) = control.recv() => s.on_control(c).await?,
            // Only wait for the socket when nothing is buffered already.
            _ = std::future::ready(()), if more => {}
            r = reader.fill(), if !more => {
                if !r.unwrap_or(false) {
                    return Ok(()); // closed, or reset
                }
            }
            // Pings, logout grace, task management giving up, write
            // budget retries (the machine's) and hung calls (ours).
            _ = tokio::time::sleep_until(s.next_deadline()) => s.on_timer().await?,
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
        let budget = self.shared().settings.busy_poll;
        // A command on the blocking pool may need this very CPU (a target
        // pinned to one core): polling would only delay its completion.
        if budget.is_zero() || self.tickets().next().is_some() || !self.poll_policy.should_poll() {
            return Ok(false);
        }
        // The rest of a PDU already begun says nothing about how densely
        // commands come.
        let between_pdus = reader.buffered() == 0;
        let shared = self.target.shared.clone();
        match poll::busy_poll(reader, done_rx, budget, &shared.pollers).await? {
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
