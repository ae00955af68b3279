//! The SCSI device server (SPC-5 / SBC-4). It knows nothing of iSCSI: a
//! command arrives as a CDB plus the data the initiator sent, and leaves as
//! a status, sense and data-in bytes. The transport computes residuals from
//! `ScsiResult::transfer_len` and its own Expected Data Transfer Length.

pub mod alua;
pub mod cdb;
mod data;
mod hold;
pub mod hung;
mod inline;
pub mod io_fault;
pub mod lun;
pub mod lun_field;
mod maintenance;
pub mod pr;
mod reconfig;
pub mod removable;
mod sbc;
pub mod sense;
pub mod server;
pub mod space;
mod spc;
#[cfg(test)]
mod tests;
mod ua;
pub mod vendor;
pub mod viewlun;

pub use hold::is_change;
pub use lun::{LogicalUnit, LunIdentity};
pub use sense::{Sense, SenseReason};
pub use server::DeviceServer;
pub use vendor::lock::DoneFn;

/// SCSI status byte values (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// An I_T nexus: one initiator port talking to this target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Stable id for the life of the session (unit attentions, reservations).
    pub id: u64,
    /// SCSI initiator port name, e.g. "iqn.1994-05.com.example:host,i,0x400001370000".
    pub initiator_port: String,
    /// The initiator's iSCSI name alone (ACLs, CBT access).
    pub initiator_name: String,
    /// Relative target port identifier (VPD 83h).
    pub relative_port: u16,
}

/// Direction of a command's data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    In,
    Out,
}

/// One command as the transport hands it over.
#[derive(Debug)]
pub struct ScsiCommand<'a> {
    pub lun: u64,
    pub cdb: &'a [u8],
    /// Data-Out bytes the initiator sent (at most its Expected Data Transfer
    /// Length); empty for commands without data-out.
    pub data_out: &'a [u8],
    /// The initiator's Expected Data Transfer Length: data-in beyond it is
    /// not produced.
    pub expected_len: u32,
    pub nexus: &'a Nexus,
}

/// A command that owns its buffers, for [`DeviceServer::submit`]: it may be
/// held (CBT write lock) and executed later on another thread.
#[derive(Debug, Clone)]
pub struct OwnedCommand {
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_len: u32,
    pub nexus: std::sync::Arc<Nexus>,
    /// The transport's task tag (iSCSI ITT), for [`DeviceServer::abort_held`].
    pub tag: u64,
}

impl OwnedCommand {
    pub fn as_command(&self) -> ScsiCommand<'_> {
        ScsiCommand {
            lun: self.lun,
            cdb: &self.cdb,
            data_out: &self.data_out,
            expected_len: self.expected_len,
            nexus: &self.nexus,
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: u8,
    /// Fixed-format sense data (18 bytes) when status is CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data-in, at most `expected_len` bytes.
    pub data_in: Vec<u8>,
    /// Bytes the command itself calls for (SPDTL): data-in the device server
    /// had to send (before cutting to `expected_len`), or data-out the CDB
    /// asks for. The transport compares it with EDTL for the residual.
    pub transfer_len: u32,
}

impl ScsiResult {
    pub fn good(data_in: Vec<u8>, transfer_len: u32) -> ScsiResult {
        ScsiResult {
            status: status::GOOD,
            sense: None,
            data_in,
            transfer_len,
        }
    }
}
