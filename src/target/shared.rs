//! State shared by every connection of a running server: the registry, the
//! table of live sessions (for TSIH assignment and session reinstatement),
//! tunables and the shutdown signal.

use super::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    /// Grace given to initiators asked to log out at shutdown.
    pub logout_grace: Duration,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            login_timeout: Duration::from_secs(15),
            nop_interval: Duration::from_secs(30),
            nop_timeout: Duration::from_secs(30),
            cmd_window: 128,
            max_transfer: 32 * 1024 * 1024,
            logout_grace: Duration::from_secs(2),
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
#[derive(Debug)]
pub enum SessionControl {
    /// Abort every task of this LUN silently (PREEMPT AND ABORT by another
    /// initiator: SPC-5 §5.13.11.2.5).
    AbortLun(u64),
}

pub struct Shared {
    pub registry: Arc<Registry>,
    pub settings: TargetSettings,
    pub portals: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    /// Live connection, session and task counts (read-only introspection).
    pub stats: Arc<super::stats::ServerStats>,
    sessions: Mutex<HashMap<u16, SessionEntry>>,
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
            registry,
            settings,
            portals,
            shutdown: CancellationToken::new(),
            stats: Arc::default(),
            sessions: Mutex::new(HashMap::new()),
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
        self.sessions.lock().unwrap().remove(&tsih);
    }

    pub fn session_exists(&self, tsih: u16) -> bool {
        self.sessions.lock().unwrap().contains_key(&tsih)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }
}
