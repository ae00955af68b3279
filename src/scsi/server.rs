//! The device server: routes a command to its LUN through the CDB table,
//! after the checks every command shares (LUN exists, unit attention,
//! reserved bits, write protection).

use super::alua::PortGroups;
use super::cdb::{self, Ctx};
use super::pr;
use super::removable;
use super::sense::{Sense, SenseReason};
use super::spc::copy_results::CopyResults;
use super::spc::mode;
use super::ua::UnitAttentions;
use super::vendor::cbt;
use super::{LogicalUnit, Nexus, ScsiCommand, ScsiResult};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

pub struct DeviceServer {
    pub target_name: String,
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
    /// Pending unit attentions per (nexus, LUN).
    pub(crate) ua: UnitAttentions,
    /// Set by the first `submit`: lets a RELEASE (which only has `&self`)
    /// hand held changes to a drainer thread.
    pub(crate) this: OnceLock<Weak<DeviceServer>>,
    /// EXTENDED COPY operations in progress and their held results.
    pub(crate) copies: CopyResults,
    /// When `maintenance` last ran its periodic CBT checkpoints.
    pub(crate) last_checkpoint: Mutex<Instant>,
    /// Live nexuses by port name and the PREEMPT AND ABORT hook.
    pub(crate) pr: pr::ServerPr,
    /// The target port groups (ALUA), shared by every device server.
    pub port_groups: Arc<PortGroups>,
}

impl DeviceServer {
    /// A server for `luns`; each LU's view LUN (if it has one) is served
    /// beside it under its own number.
    pub fn new(target_name: &str, luns: Vec<(u64, Arc<LogicalUnit>)>) -> DeviceServer {
        let views: Vec<_> = luns
            .iter()
            .filter_map(|(_, u)| u.view_unit.clone())
            .collect();
        DeviceServer {
            target_name: target_name.to_string(),
            luns: luns.into_iter().chain(views).collect(),
            ua: UnitAttentions::default(),
            this: OnceLock::new(),
            copies: CopyResults::default(),
            last_checkpoint: Mutex::new(Instant::now()),
            pr: pr::ServerPr::default(),
            port_groups: Arc::default(),
        }
    }

    /// Serve through these target port groups (default: one, tag 1,
    /// active/optimized).
    pub fn with_port_groups(mut self, groups: Arc<PortGroups>) -> DeviceServer {
        self.port_groups = groups;
        self
    }

    /// Execute one command (blocking: may do backend I/O). Safe to call
    /// from many threads at once; no lock is held across backend I/O.
    pub fn execute(&self, cmd: &ScsiCommand) -> ScsiResult {
        match self.dispatch(cmd) {
            Ok(r) => r,
            Err(sense) => {
                tracing::debug!(
                    opcode = cmd.cdb.first().copied().unwrap_or(0),
                    lun = cmd.lun,
                    reason = ?sense.reason,
                    "check condition"
                );
                let mut r = ScsiResult::check_condition(sense, 0);
                // Control mode page D_SENSE: descriptor format sense.
                let lu = self.lu_for(cmd.nexus, cmd.lun);
                if lu.is_some_and(|l| mode::descriptor_sense(l)) {
                    r.sense = Some(sense.to_descriptor());
                }
                r
            }
        }
    }

    /// The LU `nexus` addresses as `lun`: `None` if there is none, or if
    /// it is not visible to that initiator (then it does not exist for it).
    pub fn lu_for(&self, nexus: &Nexus, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns
            .get(&lun)
            .filter(|u| u.visible(&nexus.initiator_name))
    }

    /// The LUN numbers `nexus` sees (REPORT LUNS).
    pub fn visible_luns(&self, nexus: &Nexus) -> Vec<u64> {
        self.luns
            .iter()
            .filter(|(_, u)| u.visible(&nexus.initiator_name))
            .map(|(&id, _)| id)
            .collect()
    }

    fn dispatch(&self, cmd: &ScsiCommand) -> cdb::CmdResult {
        if cmd.cdb.first() == Some(&cbt::OPCODE) {
            // CBT: access and tracking are checked before any CDB field.
            cbt::gate(self, cmd)?;
        }
        let desc = cdb::lookup(cmd.cdb)?;
        let lu = self.lu_for(cmd.nexus, cmd.lun).map(Arc::as_ref);
        if !desc.lun_optional {
            if lu.is_none() {
                return Err(SenseReason::LunNotSupported.into());
            }
            // SBC-4 §4.11: only the lun_optional commands get through
            // while the medium is being sanitized.
            if lu.is_some_and(|l| l.sanitizing.load(Ordering::Acquire)) {
                return Err(SenseReason::SanitizeInProgress.into());
            }
            // A fenced LUN answers at once rather than queue behind a
            // hung backend call (see `hung.rs`).
            if lu.is_some_and(|l| l.hung.fenced()) {
                return Err(SenseReason::BackendHung.into());
            }
            if let Some(reason) = self.ua.take(cmd.nexus.id, cmd.lun) {
                return Err(reason.into());
            }
            // ALUA: what the state of this nexus's target port refuses.
            let state = self.port_groups.state(cmd.nexus.relative_port);
            if let Some(reason) = state.refusal(desc) {
                return Err(reason.into());
            }
        }
        cdb::check_reserved(desc, cmd.cdb)?;
        if lu.is_some_and(|l| !l.medium.present()) && removable::needs_medium(desc.opcode) {
            return Err(SenseReason::MediumNotPresent.into());
        }
        if lu.is_some_and(|l| pr::conflicts(l, cmd.nexus, desc.pr, cmd.cdb)) {
            return Ok(pr::conflict_result(0));
        }
        if desc.writes && lu.is_some_and(|l| l.read_only) {
            return Err(SenseReason::WriteProtected.into());
        }
        if desc.writes && lu.is_some_and(mode::software_write_protected) {
            return Err(SenseReason::SoftwareWriteProtected.into());
        }
        if let Some(sense) = lu.and_then(|l| super::viewlun::not_ready(l, cmd.cdb)) {
            return Err(sense);
        }
        let ctx = Ctx {
            server: self,
            lu,
            nexus: cmd.nexus,
            desc,
        };
        let result = (desc.handler)(&ctx, cmd);
        if let Some(lu) = lu.filter(|_| desc.writes) {
            self.check_soft_threshold(lu, cmd.lun);
        }
        result
    }

    /// After a command that may have allocated or freed space (whether it
    /// succeeded or not): the thin provisioning soft threshold unit
    /// attention, once for every I_T nexus, when usage has just crossed it.
    fn check_soft_threshold(&self, lu: &LogicalUnit, lun: u64) {
        if lu.space.crossed(lu.backend.as_ref()) {
            self.ua
                .establish_all(lun, SenseReason::SoftThresholdReached, false);
        }
    }

    /// A new I_T nexus: it will see a power-on unit attention.
    pub fn nexus_added(&self, nexus: &Nexus) {
        self.pr.nexus_added(nexus);
        // Only the LUNs mapped for it: the others do not exist for it.
        self.ua.add_nexus(
            nexus.id,
            self.visible_luns(nexus).into_iter(),
            SenseReason::PowerOnReset,
        );
    }

    /// The nexus is gone (session ended): forget its per-nexus state.
    /// Also ends a CBT write lock it holds and drops its held changes
    /// (see `hold.rs`: the transport aborts them before waiting).
    pub fn nexus_removed(&self, nexus: &Nexus) {
        self.ua.remove_nexus(nexus.id);
        self.release_locks_of(nexus.id);
        self.copies.nexus_removed(nexus.id);
        self.pr.nexus_removed(nexus.id);
        // SPC-2 reservations end with the nexus; persistent
        // registrations do not.
        for lu in self.luns.values() {
            pr::reserve6::nexus_lost(lu, nexus.id);
            lu.medium.nexus_lost(nexus.id);
        }
    }

    /// After LOGICAL UNIT RESET: a BUS DEVICE RESET FUNCTION OCCURRED unit
    /// attention for every nexus, the requester included (SAM-5 §6.6; the
    /// libiscsi multipath reset test expects it on every path).
    pub fn lun_reset(&self, lun: u64, _by: &Nexus) {
        if let Some(lu) = self.luns.get(&lun) {
            // Mode parameters return to their defaults (nothing is saved).
            *lu.mode.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
            pr::reserve6::reset(lu);
            // Medium removal prevention ends with a reset (SPC-5 §6.15).
            lu.medium.reset();
            self.ua
                .establish_all(lun, SenseReason::BusDeviceReset, true);
            // The reset aborts every task of the LUN, held changes too.
            self.abort_held(Some(lun), None, None);
        }
    }

    /// A target port group's access state changed: ASYMMETRIC ACCESS
    /// STATE CHANGED for every I_T nexus on every LUN (all LUNs are
    /// reachable through every group).
    pub fn access_states_changed(&self) {
        for &lun in self.luns.keys() {
            self.ua
                .establish_all(lun, SenseReason::AsymmetricAccessStateChanged, false);
        }
    }

    /// After TARGET WARM/COLD RESET: every LUN is reset.
    pub fn target_reset(&self, by: &Nexus) {
        for &lun in self.luns.keys() {
            self.lun_reset(lun, by);
        }
    }

    /// Flush every LUN's backend, then shut its CBT tracker down cleanly
    /// (shutdown: no change is accepted afterwards). Tries them all,
    /// returns the first error.
    pub fn flush_all(&self) -> std::io::Result<()> {
        let mut first = Ok(());
        for (&id, lu) in &self.luns {
            if let Err(e) = super::io_fault::flush(lu) {
                tracing::warn!(backend = %lu.backend.describe(), error = %e, "flush failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
            if let Err(e) = DeviceServer::shutdown_tracker(id, lu)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Take the pending unit attention for (nexus, lun), if any: REQUEST
    /// SENSE reports it as its parameter data.
    pub(crate) fn take_unit_attention(&self, nexus: &Nexus, lun: u64) -> Option<Sense> {
        self.ua.take(nexus.id, lun).map(Sense::new)
    }
}
