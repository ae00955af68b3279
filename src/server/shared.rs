//! State shared by every connection of a running server: the registry, the
//! table of live sessions (for TSIH assignment and session reinstatement),
//! tunables and the shutdown signal.

use super::Registry;
use crate::scsi::DeviceServer;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Default of [`TargetSettings::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default of [`TargetSettings::busy_poll`], in microseconds.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;

/// Tunables of the transport.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// A login that has not reached full feature phase by then is dropped.
    pub login_timeout: Duration,
    /// Idle time before the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long the initiator has to answer that ping.
    pub nop_timeout: Duration,
    /// Commands one session may have queued or executing (CmdSN window).
    pub cmd_window: u32,
    /// Largest write (Expected Data Transfer Length) accepted, in bytes.
    pub max_transfer: u32,
    /// Write data one session may have solicited (R2Ts sent) and not yet
    /// finished; further R2Ts wait. Bounds memory under many large writes.
    pub write_buffer_per_session: u64,
    /// The same for all sessions together. A session with nothing charged
    /// may always start one write, so no session starves: the worst case is
    /// this plus one write per session.
    pub write_buffer_total: u64,
    /// Grace given to initiators asked to log out at shutdown.
    pub logout_grace: Duration,
    /// Open connections (logged in or logging in) beyond which a new one
    /// gets "out of resources" at login.
    pub max_connections: usize,
    /// How long a session polls its socket after answering before it
    /// sleeps (0: never). Saves a thread wake-up per command at low queue
    /// depth; see `poll.rs`.
    pub busy_poll: Duration,
    /// A backend call running this long is reported hung and fences its
    /// LUN until it returns (see `server::hung`).
    pub hung_io_timeout: Duration,
    /// How long task management (and a session's end) waits for an
    /// executing command before abandoning it as hung.
    pub abort_timeout: Duration,
    /// A send to the initiator that makes no progress this long (a peer
    /// that stopped reading: zero window) ends the connection.
    pub send_stall_timeout: Duration,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            login_timeout: Duration::from_secs(15),
            nop_interval: Duration::from_secs(30),
            nop_timeout: Duration::from_secs(30),
            cmd_window: 128,
            max_transfer: 32 * 1024 * 1024,
            write_buffer_per_session: 16 * 1024 * 1024,
            write_buffer_total: 256 * 1024 * 1024,
            logout_grace: Duration::from_secs(2),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_US),
            hung_io_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(5),
            send_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// A live session as the server table sees it.
pub struct SessionEntry {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub target_name: Option<String>,
    /// Cancelled to end the session (reinstatement, shutdown).
    pub cancel: CancellationToken,
    /// The session's I_T nexus id (device-server side).
    pub nexus_id: u64,
    /// Requests from outside the session (PREEMPT AND ABORT).
    pub control: mpsc::UnboundedSender<SessionControl>,
}

/// Something another part of the target asks a session to do.
pub enum SessionControl {
    /// Abort every task of this LUN silently (PREEMPT AND ABORT by another
    /// initiator: SPC-5 §5.13.11.2.5).
    AbortLun(u64),
    /// The session's target now has this device server (its LUN set
    /// changed at a reload): carry the nexus over to it.
    SwitchDevice(Arc<DeviceServer>),
}

/// The registry currently served; a reload swaps it whole. Readers take a
/// snapshot (`load`) and keep using it for the operation at hand.
pub struct RegistryCell(RwLock<Arc<Registry>>);

impl RegistryCell {
    pub fn new(registry: Arc<Registry>) -> RegistryCell {
        RegistryCell(RwLock::new(registry))
    }

    pub fn load(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Install `next`, returning the registry it replaces.
    pub fn swap(&self, next: Arc<Registry>) -> Arc<Registry> {
        std::mem::replace(
            &mut *self.0.write().unwrap_or_else(|e| e.into_inner()),
            next,
        )
    }
}

pub struct Shared {
    pub registry: RegistryCell,
    pub settings: TargetSettings,
    /// Live value of `settings.max_connections` (a reload may change it).
    pub max_connections: AtomicUsize,
    /// Connections open now, in login or full feature phase.
    pub connections: AtomicUsize,
    /// Connections over the limit still waiting for their refusal.
    pub refusing: AtomicUsize,
    pub portals: Vec<SocketAddr>,
    /// `portals` as configured (same order): the addresses portal groups
    /// name (a bound port 0 or wildcard differs from its configuration).
    pub portal_keys: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    /// Operator metrics (the server replaces this default with its own).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Live connection, session and task counts (read-only introspection).
    pub stats: Arc<super::stats::ServerStats>,
    /// Write data solicited by all sessions together and not yet finished
    /// (see `settings.write_buffer_total`).
    pub write_budget: Arc<crate::proto::conn::BudgetPool>,
    /// Sessions busy polling now (bounded; see `poll.rs`).
    pub(super) pollers: super::poll::PollGate,
    sessions: Mutex<HashMap<u16, SessionEntry>>,
    /// Nexus ids of sessions asked to log out before shutdown (a reload
    /// removed their target or their ACL entry).
    logout_asked: Mutex<HashSet<u64>>,
    next_tsih: Mutex<u16>,
    next_nexus: AtomicU64,
}

impl Shared {
    pub fn new(
        registry: Arc<Registry>,
        settings: TargetSettings,
        portals: Vec<SocketAddr>,
    ) -> Shared {
        Shared {
            write_budget: Arc::new(crate::proto::conn::BudgetPool::new(
                settings.write_buffer_total,
            )),
            pollers: super::poll::PollGate::new(),
            registry: RegistryCell::new(registry),
            max_connections: AtomicUsize::new(settings.max_connections),
            connections: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            settings,
            portal_keys: portals.clone(),
            portals,
            shutdown: CancellationToken::new(),
            metrics: Arc::default(),
            stats: Arc::default(),
            sessions: Mutex::new(HashMap::new()),
            logout_asked: Mutex::new(HashSet::new()),
            next_tsih: Mutex::new(0),
            next_nexus: AtomicU64::new(1),
        }
    }

    pub fn nexus_id(&self) -> u64 {
        self.next_nexus.fetch_add(1, Ordering::Relaxed)
    }

    /// Register a new session, returning its TSIH and cancel token. An
    /// existing session of the same initiator port (name + ISID) is
    /// reinstated: it is told to end, and its TSIH returned so the caller
    /// can wait for them to be gone (RFC 7143 §6.3.5).
    pub fn add_session(
        &self,
        initiator_name: &str,
        isid: [u8; 6],
        target_name: Option<&str>,
        nexus_id: u64,
        control: mpsc::UnboundedSender<SessionControl>,
    ) -> (u16, CancellationToken, Vec<u16>) {
        let mut sessions = self.sessions.lock().unwrap();
        let old: Vec<u16> = sessions
            .iter()
            .filter(|(_, s)| {
                s.initiator_name == initiator_name
                    && s.isid == isid
                    && s.target_name.as_deref() == target_name
            })
            .map(|(tsih, s)| {
                s.cancel.cancel();
                *tsih
            })
            .collect();
        let tsih = {
            let mut next = self.next_tsih.lock().unwrap();
            loop {
                *next = next.wrapping_add(1);
                // TSIH 0 is reserved; skip values still in use.
                if *next != 0 && !sessions.contains_key(&*next) {
                    break *next;
                }
            }
        };
        let cancel = self.shutdown.child_token();
        sessions.insert(
            tsih,
            SessionEntry {
                initiator_name: initiator_name.to_string(),
                isid,
                target_name: target_name.map(str::to_string),
                cancel: cancel.clone(),
                nexus_id,
                control,
            },
        );
        (tsih, cancel, old)
    }

    /// Ask the sessions of these nexuses to abort their tasks for `lun`.
    pub fn abort_for(&self, nexus_ids: &[u64], lun: u64) {
        for s in self.sessions.lock().unwrap().values() {
            if nexus_ids.contains(&s.nexus_id) {
                let _ = s.control.send(SessionControl::AbortLun(lun));
            }
        }
    }

    pub fn remove_session(&self, tsih: u16) {
        if let Some(s) = self.sessions.lock().unwrap().remove(&tsih) {
            self.logout_asked.lock().unwrap().remove(&s.nexus_id);
        }
    }

    /// Was this session asked to log out (rather than reinstated)?
    pub fn logout_asked(&self, nexus_id: u64) -> bool {
        self.logout_asked.lock().unwrap().contains(&nexus_id)
    }

    pub fn session_exists(&self, tsih: u16) -> bool {
        self.sessions.lock().unwrap().contains_key(&tsih)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// End every session for which `pick(initiator, target)` holds (as at
    /// shutdown: the session asks for a logout, then closes). Returns how
    /// many were told to end.
    pub fn end_sessions_where(&self, pick: impl Fn(&str, Option<&str>) -> bool) -> usize {
        let sessions = self.sessions.lock().unwrap();
        let mut n = 0;
        for s in sessions.values() {
            if pick(&s.initiator_name, s.target_name.as_deref()) {
                self.logout_asked.lock().unwrap().insert(s.nexus_id);
                s.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Send `make()` to every session of `target`; returns how many.
    pub fn control_target(&self, target: &str, make: impl Fn() -> SessionControl) -> usize {
        let sessions = self.sessions.lock().unwrap();
        let mut n = 0;
        for s in sessions.values() {
            if s.target_name.as_deref() == Some(target) && s.control.send(make()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Sessions of `target` still in the table.
    pub fn sessions_of(&self, target: &str) -> usize {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .values()
            .filter(|s| s.target_name.as_deref() == Some(target))
            .count()
    }
}
