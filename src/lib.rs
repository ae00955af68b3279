//! gentgt: a user-space iSCSI target that knows what changed.

pub mod backend;
pub mod backup;
pub mod buffers;
pub mod cbt;
pub mod config;
pub mod durable;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod initiator;
pub mod metrics;
pub mod proto;
pub mod scsi;
pub mod server;
