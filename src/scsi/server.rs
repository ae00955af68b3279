//! The device server: routes a command to its LUN through the CDB table,
//! after the checks every command shares (LUN exists, unit attention,
//! reserved bits, write protection).

use super::cdb::{self, Ctx};
use super::sense::{Sense, SenseReason};
use super::ua::UnitAttentions;
use super::{LogicalUnit, Nexus, ScsiCommand, ScsiResult};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub struct DeviceServer {
    pub target_name: String,
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
    /// Pending unit attentions per (nexus, LUN).
    pub(crate) ua: UnitAttentions,
}

impl DeviceServer {
    pub fn new(target_name: &str, luns: Vec<(u64, Arc<LogicalUnit>)>) -> DeviceServer {
        DeviceServer {
            target_name: target_name.to_string(),
            luns: luns.into_iter().collect(),
            ua: UnitAttentions::default(),
        }
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
                ScsiResult::check_condition(sense, 0)
            }
        }
    }

    fn dispatch(&self, cmd: &ScsiCommand) -> cdb::CmdResult {
        let desc = cdb::lookup(cmd.cdb)?;
        let lu = self.luns.get(&cmd.lun).map(Arc::as_ref);
        if !desc.lun_optional {
            if lu.is_none() {
                return Err(SenseReason::LunNotSupported.into());
            }
            // SBC-4 §4.11: only the lun_optional commands get through
            // while the medium is being sanitized.
            if lu.is_some_and(|l| l.sanitizing.load(Ordering::Acquire)) {
                return Err(SenseReason::SanitizeInProgress.into());
            }
            if let Some(reason) = self.ua.take(cmd.nexus.id, cmd.lun) {
                return Err(reason.into());
            }
        }
        cdb::check_reserved(desc, cmd.cdb)?;
        if desc.writes && lu.is_some_and(|l| l.read_only) {
            return Err(SenseReason::WriteProtected.into());
        }
        let ctx = Ctx {
            server: self,
            lu,
            nexus: cmd.nexus,
            desc,
        };
        (desc.handler)(&ctx, cmd)
    }

    /// A new I_T nexus: it will see a power-on unit attention.
    pub fn nexus_added(&self, nexus: &Nexus) {
        self.ua.add_nexus(
            nexus.id,
            self.luns.keys().copied(),
            SenseReason::PowerOnReset,
        );
    }

    /// The nexus is gone (session ended): forget its per-nexus state.
    pub fn nexus_removed(&self, nexus: &Nexus) {
        self.ua.remove_nexus(nexus.id);
    }

    /// After LOGICAL UNIT RESET: a BUS DEVICE RESET FUNCTION OCCURRED unit
    /// attention for every nexus, the requester included (SAM-5 §6.6; the
    /// libiscsi multipath reset test expects it on every path).
    pub fn lun_reset(&self, lun: u64, _by: &Nexus) {
        if self.luns.contains_key(&lun) {
            self.ua
                .establish_all(lun, SenseReason::BusDeviceReset, true);
        }
    }

    /// After TARGET WARM/COLD RESET: every LUN is reset.
    pub fn target_reset(&self, by: &Nexus) {
        for &lun in self.luns.keys() {
            self.lun_reset(lun, by);
        }
    }

    /// Flush every LUN's backend (shutdown). Tries them all, returns the
    /// first error.
    pub fn flush_all(&self) -> std::io::Result<()> {
        let mut first = Ok(());
        for lu in self.luns.values() {
            if let Err(e) = lu.backend.flush() {
                tracing::warn!(backend = %lu.backend.describe(), error = %e, "flush failed");
                if first.is_ok() {
                    first = Err(e);
                }
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
