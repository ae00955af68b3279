//! The full-feature phase of one connection as a state machine without
//! I/O, in the style of quinn-proto's `Connection`: the driver feeds it
//! what happened (`on_pdu`, `on_done`, `on_timeout`, ...) and takes out
//! what to do (`poll_output`: PDUs to send, commands to execute, device
//! aborts and resets, close) and what to count (`poll_event`). Time is a
//! parameter, so tests drive it with a controlled clock (see `pair`).
//!
//! The rules live in the submodules: `task` (SCSI commands, their data
//! and responses), `budget` (write-buffer charges and deferred R2Ts),
//! `tmf` (task management) and `session` (NOP, Text, Logout, shutdown).

mod budget;
mod session;
mod task;
mod tmf;

#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;

pub use budget::{BudgetPool, WriteBudget};
pub use task::{Answered, Exec};

use crate::proto::cmdsn::CmdWindow;
use crate::proto::discovery::TextResponder;
use crate::proto::login::SessionType;
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::{Bhs, Opcode, Pdu, PduError};
use crate::proto::response::{self, SeqNums, reject};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// What a connection needs to know of its session and target.
#[derive(Debug, Clone)]
pub struct Config {
    pub params: SessionParams,
    pub kind: SessionType,
    pub target_name: Option<String>,
    /// Whether the session has a device server (normal sessions do).
    pub scsi: bool,
    pub cid: u16,
    /// CmdSN and StatSN the full-feature phase starts with.
    pub exp_cmd_sn: u32,
    pub stat_sn: u32,
    pub cmd_window: u32,
    /// Largest write accepted, in bytes.
    pub max_transfer: u32,
    /// Write data this session's tasks may hold at once.
    pub write_buffer_per_session: u64,
    pub nop_interval: Duration,
    pub nop_timeout: Duration,
    /// How long task management waits for an executing command before it
    /// asks the driver to abandon it (`Output::Abandon`).
    pub abort_timeout: Duration,
}

/// Questions the state machine asks of the target while it decides.
pub trait Env {
    /// Whether `lun` is mapped for this session's initiator.
    fn lun_exists(&self, lun: u64) -> bool;
    /// Targets a SendTargets may name, each with its portals.
    fn targets(&self, kind: SessionType, own: Option<&str>) -> Vec<(String, Vec<String>)>;
}

/// PDUs to send, of which the first `spans.len()` take their data segment
/// from `body` (Data-In straight from the command's buffer: no copy).
#[derive(Debug, Default)]
pub struct Reply {
    pub pdus: Vec<Pdu>,
    pub body: Vec<u8>,
    pub spans: Vec<Range<usize>>,
}

impl Reply {
    /// PDUs that carry their own data.
    pub fn plain(pdus: Vec<Pdu>) -> Reply {
        Reply {
            pdus,
            ..Reply::default()
        }
    }
}

/// Why the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Logout,
    /// The initiator did not answer our NOP-In in time.
    NopTimeout,
    /// Shutdown asked it to log out and it did not within the grace.
    LogoutGrace,
    /// TARGET COLD RESET completed.
    ColdReset,
    /// A newer login of the same initiator port took over.
    Reinstated,
    /// Framing was lost: nothing after it can be trusted.
    FramingLost,
}

/// Which commands held by the device (a CBT write lock) to finish as
/// aborted: `lun` None means every LUN, `tag` None every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortScope {
    pub lun: Option<u64>,
    pub tag: Option<u64>,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Write these PDUs (already stamped with sequence numbers).
    Send(Reply),
    /// Run a command; report its result through `on_done`.
    Execute(Exec),
    /// Finish the device's held commands in this scope as aborted.
    Abort(AbortScope),
    LunReset(u64),
    TargetReset,
    /// Task management waited `abort_timeout` for this executing command:
    /// give it up if it can be (then report `on_abandoned`); if it just
    /// finished, its `on_done` is on its way.
    Abandon(u32),
    /// End the connection (after writing what came before).
    Close(CloseReason),
}

/// What metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reject(u8),
    /// A SCSI command entered the task table (in flight until `Ended`).
    Started {
        itt: u32,
        lun: u64,
    },
    /// A SCSI command left the task table, answered, aborted or abandoned.
    Ended {
        itt: u32,
        lun: u64,
    },
    /// A SCSI command was answered.
    Answered(task::Answered),
    Tmf {
        function: u8,
        response: u8,
    },
    DigestError {
        data: bool,
    },
    /// Bytes charged to (positive) or released from the write budget.
    Budget(i64),
}

/// The full-feature phase of one connection.
pub struct Connection {
    cfg: Config,
    budget: Arc<dyn WriteBudget>,
    stat_sn: u32,
    window: CmdWindow<Delivery>,
    tasks: HashMap<u32, task::Task>,
    tags: Tags,
    pending_tmfs: Vec<tmf::PendingTmf>,
    write_charged: u64,
    /// Write data still held by this connection's abandoned calls: it
    /// counts against the budget until the driver sees the call return
    /// (and gives it back to the pool and here).
    stuck: Arc<AtomicU64>,
    /// R2Ts waiting for write-buffer budget, oldest first.
    deferred_r2ts: VecDeque<(u32, Vec<crate::proto::dataout::R2tRequest>)>,
    budget_tried: Instant,
    /// Write tasks that left the table lately (see `note_ended`).
    ended_writes: VecDeque<u32>,
    /// Our outstanding keep-alive ping: its TTT and answer deadline.
    nop: Option<(u32, Instant)>,
    last_rx: Instant,
    /// A Logout waiting for executing commands to finish.
    logout: Option<Pdu>,
    /// Shutdown: the deadline for the initiator to log out.
    closing: Option<Instant>,
    closed: Option<CloseReason>,
    /// The time of the latest event fed in (for deadlines set meanwhile).
    now: Instant,
    text: TextResponder,
    out: VecDeque<Output>,
    events: VecDeque<Event>,
}

/// Target transfer tags: R2Ts and keep-alive pings share the counter, so
/// their tags differ; never the reserved 0xffffffff.
#[derive(Debug)]
struct Tags(u32);

impl Tags {
    fn next(&mut self) -> u32 {
        let t = self.0;
        self.0 = self.0.wrapping_add(1);
        if self.0 == crate::proto::dataout::NO_TTT {
            self.0 = 1;
        }
        t
    }
}

/// A command whose turn in CmdSN order has come.
#[derive(Debug)]
enum Delivery {
    /// A SCSI command registered in the task table under this ITT.
    Scsi(u32),
    Nop(Pdu),
    Tmf(Pdu),
    Text(Pdu),
    Logout(Pdu),
    /// A rejected command: its CmdSN is used up, nothing else happens.
    Skip,
}

impl Connection {
    pub fn new(cfg: Config, budget: Arc<dyn WriteBudget>, now: Instant) -> Connection {
        Connection {
            stat_sn: cfg.stat_sn,
            window: CmdWindow::new(cfg.exp_cmd_sn, cfg.cmd_window),
            cfg,
            budget,
            tasks: HashMap::new(),
            tags: Tags(1),
            pending_tmfs: Vec::new(),
            write_charged: 0,
            stuck: Arc::default(),
            deferred_r2ts: VecDeque::new(),
            budget_tried: now,
            ended_writes: VecDeque::new(),
            nop: None,
            last_rx: now,
            logout: None,
            closing: None,
            closed: None,
            now,
            text: TextResponder::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The next thing to do. Sends are stamped here, so every PDU carries
    /// the window as it is when the driver takes it.
    pub fn poll_output(&mut self) -> Option<Output> {
        let mut o = self.out.pop_front()?;
        if let Output::Send(r) = &mut o {
            self.stamp(r);
        }
        Some(o)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Once set, nothing more is accepted.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Commands the device still executes (the driver waits for them
    /// before letting the nexus go).
    pub fn executing(&self) -> usize {
        self.tasks.values().filter(|t| t.is_executing()).count()
    }

    /// The ITTs of the commands the device still executes.
    pub fn executing_tasks(&self) -> Vec<u32> {
        let running = self.tasks.iter().filter(|(_, t)| t.is_executing());
        running.map(|(itt, _)| *itt).collect()
    }

    /// ExpCmdSN and the MaxCmdSN last advertised.
    pub fn window(&mut self) -> (u32, u32) {
        (self.window.exp_cmd_sn(), self.window.max_cmd_sn())
    }

    fn stamp(&mut self, r: &mut Reply) {
        for p in r.pdus.iter_mut() {
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
    }

    fn send(&mut self, pdus: Vec<Pdu>) {
        if !pdus.is_empty() {
            self.out.push_back(Output::Send(Reply::plain(pdus)));
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.out.push_back(Output::Close(reason));
        }
    }

    fn reject(&mut self, reason: u8, bhs: &Bhs) {
        self.events.push_back(Event::Reject(reason));
        self.send(vec![response::reject(reason, &bhs.0)]);
    }

    /// A fresh target transfer tag.
    fn next_ttt(&mut self) -> u32 {
        self.tags.next()
    }

    /// One PDU from the initiator.
    pub fn on_pdu(&mut self, now: Instant, pdu: Pdu, env: &dyn Env) {
        if self.closed.is_some() {
            return;
        }
        self.last_rx = now;
        self.now = now;
        let bhs = pdu.bhs.clone();
        match pdu.opcode() {
            Opcode::ScsiCommand => self.on_scsi_command(now, pdu, env),
            Opcode::DataOut => self.on_data_out(pdu),
            Opcode::NopOut => self.on_nop_out(pdu, env),
            Opcode::TaskMgmtRequest => self.admit(&bhs, Delivery::Tmf(pdu), env),
            Opcode::TextRequest => self.admit(&bhs, Delivery::Text(pdu), env),
            Opcode::LogoutRequest => self.admit(&bhs, Delivery::Logout(pdu), env),
            Opcode::Snack => self.reject(reject::SNACK_REJECT, &bhs),
            Opcode::LoginRequest => self.reject(reject::PROTOCOL_ERROR, &bhs),
            _ => self.reject(reject::COMMAND_NOT_SUPPORTED, &bhs),
        }
    }

    /// A PDU whose header the reader trusted but whose data digest failed.
    pub fn on_data_digest(&mut self, now: Instant, bhs: &Bhs, env: &dyn Env) {
        if self.closed.is_some() {
            return;
        }
        self.now = now;
        self.events.push_back(Event::DigestError { data: true });
        self.reject(reject::DATA_DIGEST, bhs);
        match bhs.opcode() {
            Opcode::DataOut => self.fail_transfer(bhs.itt()),
            Opcode::ScsiCommand => self.admit(bhs, Delivery::Skip, env),
            _ => {}
        }
    }

    /// The reader lost framing on this header: Reject it (unless the
    /// header itself is garbage) and close.
    pub fn on_framing_lost(&mut self, bhs: &Bhs, e: &PduError) {
        if self.closed.is_some() {
            return;
        }
        if matches!(e, PduError::HeaderDigest) {
            self.events.push_back(Event::DigestError { data: false });
        } else {
            self.reject(reject::PROTOCOL_ERROR, bhs);
        }
        self.close(CloseReason::FramingLost);
    }

    /// Admit a non-immediate command to the CmdSN window (or deliver an
    /// immediate one at once) and deliver whatever became deliverable.
    fn admit(&mut self, bhs: &Bhs, d: Delivery, env: &dyn Env) {
        use crate::proto::cmdsn::Admit;
        if bhs.immediate() {
            return self.deliver(d, true, env);
        }
        let scsi_itt = match d {
            Delivery::Scsi(itt) => Some(itt),
            _ => None,
        };
        match self.window.admit(bhs.cmd_sn(), d) {
            Admit::Deliver(list) => {
                for d in list {
                    self.deliver(d, false, env);
                }
            }
            Admit::Held => {}
            // The command was registered on arrival; an ignored one must
            // not stay in the task table.
            Admit::Dropped => {
                if let Some(itt) = scsi_itt {
                    self.drop_task(itt);
                }
            }
        }
    }

    fn deliver(&mut self, d: Delivery, immediate: bool, env: &dyn Env) {
        match d {
            Delivery::Scsi(itt) => return self.deliver_scsi(itt),
            Delivery::Nop(p) => self.answer_ping(p),
            Delivery::Tmf(p) => self.on_tmf(p, env),
            Delivery::Text(p) => self.on_text(p, env),
            Delivery::Logout(p) => {
                self.logout = Some(p);
                self.try_logout();
            }
            Delivery::Skip => {}
        }
        // Non-SCSI commands complete as soon as they are handled.
        if !immediate {
            self.window.complete();
        }
    }
}
