//! Reservations: SPC-5 persistent reservations (PERSISTENT RESERVE IN/OUT)
//! and SPC-2 RESERVE/RELEASE, with the per-command conflict rules.
//!
//! Every CDB table row carries a [`PrClass`] saying how the command fares
//! under a reservation it does not hold; the server checks it before the
//! handler and answers RESERVATION CONFLICT (a status, no sense data).
//!
//! PREEMPT AND ABORT has to abort the preempted nexuses' tasks, which
//! only the transport can do: it calls the hook installed with
//! [`DeviceServer::set_abort_hook`].

pub mod persist;
pub mod prin;
pub mod prout;
pub mod reserve6;
pub mod state;

use super::sense::SenseReason;
use super::server::DeviceServer;
use super::{LogicalUnit, Nexus, ScsiResult, status};
use state::PrState;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How a command behaves for an I_T nexus without access under a
/// reservation (SPC-5 table 68 "SPC commands that are allowed in the
/// presence of various reservations", SBC-4 table 13).
#[derive(Debug, Clone, Copy)]
pub enum PrClass {
    /// Never conflicts, not even with an SPC-2 reservation (INQUIRY,
    /// REPORT LUNS, REQUEST SENSE).
    Exempt,
    /// Allowed under every persistent reservation type; conflicts with an
    /// SPC-2 reservation held by another nexus.
    Allowed,
    /// Allowed under the Write Exclusive types, conflicts under the
    /// Exclusive Access types.
    Read,
    /// Conflicts under every type.
    Write,
    /// The handler applies its own rules (PRIN, PROUT, RESERVE, RELEASE).
    Own,
    /// Depends on CDB fields (START STOP UNIT, PREVENT ALLOW).
    Cond(fn(&[u8]) -> PrClass),
}

/// The class of a table row. Rows not named here get the conservative
/// class for their `writes` flag, so new rows need no edit.
pub const fn classify(opcode: u8, sa: Option<u16>, writes: bool) -> PrClass {
    use PrClass::*;
    match (opcode, sa) {
        (0x03 | 0x12 | 0xa0, _) => Exempt,
        // TEST UNIT READY, READ CAPACITY(10), LOG SENSE, READ CAPACITY(16),
        // REPORT TARGET PORT GROUPS / SUPPORTED OPCODES / TMFs /
        // TIMESTAMP, READ MEDIA SERIAL NUMBER.
        (0x00 | 0x25 | 0x4d, _) => Allowed,
        (0x9e, Some(0x10)) => Allowed,
        (0xa3, Some(0x0a | 0x0c | 0x0d | 0x0f)) => Allowed,
        (0xab, Some(0x01)) => Allowed,
        (0x16 | 0x17 | 0x56 | 0x57 | 0x5e | 0x5f, _) => Own,
        (0x1b, _) => Cond(start_stop_class),
        (0x1e, _) => Cond(prevent_class),
        // MODE SENSE, RECEIVE DIAGNOSTIC RESULTS, READ BUFFER, READ
        // DEFECT DATA, VERIFY, READ ATTRIBUTE, RECEIVE COPY RESULTS.
        (0x1a | 0x5a | 0x1c | 0x3c | 0x37 | 0xb7 | 0x2f | 0x8f | 0xaf | 0x8c | 0x84, _) => Read,
        // Not data writes, but SPC/SBC list them as conflicting: MODE
        // SELECT, LOG SELECT, SYNCHRONIZE CACHE, SEND DIAGNOSTIC, WRITE
        // BUFFER, FORMAT UNIT, SANITIZE, EXTENDED COPY.
        (0x15 | 0x55 | 0x4c | 0x35 | 0x91 | 0x1d | 0x3b | 0x04 | 0x48 | 0x83, _) => Write,
        _ if writes => Write,
        _ => Read,
    }
}

/// START STOP UNIT with START=1 and POWER CONDITION=0 is allowed.
fn start_stop_class(cdb: &[u8]) -> PrClass {
    let b4 = cdb.get(4).copied().unwrap_or(0);
    if b4 & 0xf0 == 0 && b4 & 0x01 != 0 {
        PrClass::Allowed
    } else {
        PrClass::Write
    }
}

/// PREVENT ALLOW MEDIUM REMOVAL with PREVENT=0 is allowed.
fn prevent_class(cdb: &[u8]) -> PrClass {
    if cdb.get(4).copied().unwrap_or(0) & 0x03 == 0 {
        PrClass::Allowed
    } else {
        PrClass::Write
    }
}

impl PrClass {
    fn resolve(self, cdb: &[u8]) -> PrClass {
        match self {
            PrClass::Cond(f) => f(cdb),
            c => c,
        }
    }
}

/// Would this command conflict with a reservation on `lu`?
pub fn conflicts(lu: &LogicalUnit, nexus: &Nexus, class: PrClass, cdb: &[u8]) -> bool {
    let class = class.resolve(cdb);
    if matches!(class, PrClass::Exempt | PrClass::Own) {
        return false;
    }
    let st = read(lu);
    if st.spc2_holder.is_some_and(|h| h != nexus.id) {
        return true;
    }
    let Some(r) = &st.reservation else {
        return false;
    };
    if st.has_access(nexus) {
        return false;
    }
    match class {
        PrClass::Read => !r.kind.write_exclusive_family(),
        PrClass::Write => true,
        _ => false,
    }
}

/// RESERVATION CONFLICT: a status without sense data.
pub fn conflict_result(transfer_len: u32) -> ScsiResult {
    ScsiResult {
        status: status::RESERVATION_CONFLICT,
        sense: None,
        data_in: Vec::new(),
        transfer_len,
    }
}

/// The reservation state a LUN carries.
#[derive(Default)]
pub struct LunPr(RwLock<PrState>);

impl LunPr {
    pub fn new(st: PrState) -> LunPr {
        LunPr(RwLock::new(st))
    }

    /// A copy of the current state (tests, status reports).
    pub fn snapshot(&self) -> PrState {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// A poisoned lock only means a command panicked mid-way; every update
// replaces the state whole, so it is still consistent.
pub(crate) fn read(lu: &LogicalUnit) -> RwLockReadGuard<'_, PrState> {
    lu.pr.0.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write(lu: &LogicalUnit) -> RwLockWriteGuard<'_, PrState> {
    lu.pr.0.write().unwrap_or_else(|e| e.into_inner())
}

/// Called by PREEMPT AND ABORT with the ids of the preempted I_T nexuses
/// and the LUN: the transport aborts their tasks for that LUN.
pub type AbortHook = Box<dyn Fn(&[u64], u64) + Send + Sync>;

/// Device-server-wide reservation bookkeeping: which nexus ids are live
/// for which initiator port (unit attentions and aborts go to nexus ids,
/// registrations are kept by port name), and the abort hook.
#[derive(Default)]
pub struct ServerPr {
    live: Mutex<HashMap<u64, (String, u16)>>,
    abort_hook: RwLock<Option<AbortHook>>,
}

impl ServerPr {
    pub fn nexus_added(&self, n: &Nexus) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.insert(n.id, (n.initiator_port.clone(), n.relative_port));
    }

    pub fn nexus_removed(&self, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&id);
    }

    /// Live nexus ids of the I_T nexus (port, relative port).
    pub fn ids_of(&self, port: &str, rel_port: u16) -> Vec<u64> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .filter(|(_, (p, rp))| p == port && *rp == rel_port)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn set_abort_hook(&self, hook: AbortHook) {
        *self.abort_hook.write().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn abort(&self, ids: &[u64], lun: u64) {
        if ids.is_empty() {
            return;
        }
        if let Some(h) = self
            .abort_hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h(ids, lun);
        }
    }
}

/// What a PROUT did to I_T nexuses other than the issuer.
#[derive(Debug, Default)]
pub struct Effects {
    /// Unit attentions to establish, per (port, relative port).
    pub notify: Vec<(String, u16, SenseReason)>,
    /// I_T nexuses whose tasks PREEMPT AND ABORT aborts.
    pub abort: Vec<(String, u16)>,
}

impl DeviceServer {
    /// Install the PREEMPT AND ABORT hook (the target wires it to its
    /// sessions). Without one, preempted nexuses lose their registrations
    /// but their queued tasks run on.
    pub fn set_abort_hook(&self, hook: AbortHook) {
        self.pr.set_abort_hook(hook);
    }

    /// Establish the unit attentions and aborts a PROUT caused on `lun`,
    /// never towards the issuing nexus itself.
    pub(crate) fn apply_effects(&self, fx: &Effects, lun: u64, issuer: &Nexus) {
        for (port, rp, reason) in &fx.notify {
            for id in self.pr.ids_of(port, *rp) {
                if id != issuer.id {
                    self.ua.establish(id, lun, *reason);
                }
            }
        }
        let ids: Vec<u64> = fx
            .abort
            .iter()
            .flat_map(|(p, rp)| self.pr.ids_of(p, *rp))
            .filter(|&id| id != issuer.id)
            .collect();
        self.pr.abort(&ids, lun);
    }
}
