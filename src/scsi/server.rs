//! The device server: routes a command to its LUN through the CDB table.
//! SKELETON — interface fixed.

use super::{LogicalUnit, Nexus, ScsiCommand, ScsiResult};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct DeviceServer {
    pub target_name: String,
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
}

impl DeviceServer {
    pub fn new(target_name: &str, luns: Vec<(u64, Arc<LogicalUnit>)>) -> DeviceServer {
        DeviceServer {
            target_name: target_name.to_string(),
            luns: luns.into_iter().collect(),
        }
    }
    /// Execute one command (blocking: may do backend I/O).
    pub fn execute(&self, _cmd: &ScsiCommand) -> ScsiResult {
        unimplemented!()
    }
    /// A new I_T nexus: it will see a power-on unit attention.
    pub fn nexus_added(&self, _nexus: &Nexus) {}
    /// The nexus is gone (session ended): forget its per-nexus state.
    pub fn nexus_removed(&self, _nexus: &Nexus) {}
    /// After LOGICAL UNIT RESET: unit attention for every other nexus.
    pub fn lun_reset(&self, _lun: u64, _by: &Nexus) {}
    /// After TARGET WARM/COLD RESET.
    pub fn target_reset(&self, _by: &Nexus) {}
    /// Flush every LUN's backend (shutdown).
    pub fn flush_all(&self) -> std::io::Result<()> {
        Ok(())
    }
}
