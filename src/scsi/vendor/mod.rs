//! Vendor-specific commands: changed-block tracking (opcode C0h), per
//! `shared/specs/cbt-scsi.md`.

pub mod cbt;
pub mod lock;
pub mod view;
