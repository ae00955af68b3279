//! The backup appliance: incremental-forever backups of a live LUN over
//! iSCSI, driven by changed-block tracking (`shared/specs/cbt-scsi.md`,
//! "The appliance's loop"), kept in a content-addressed repository.
//!
//! - [`repo`]: the repository (format 2): [`pack`]s of chunks, the
//!   [`index`], sealed manifests, atomic appearance of a backup; its
//!   [`format`], [`crypto`] (optional encryption) and [`lock`].
//! - [`prune`] / [`gc`]: retention and reclaiming space; [`upgrade`]
//!   converts a format-1 repository.
//! - [`manifest`]: what one backup records.
//! - [`run`] / [`pass`]: the loop (close, copy, converge, lock, copy, release).
//! - [`view`]: the version-2 way: one pass over a point-in-time view, and
//!   the fallback to the loop above.
//! - [`restore`] (files, devices), [`restore_lun`] (iSCSI): fast full
//!   restores, resumable; [`verify`]: reading the repository back.

pub mod crypto;
mod fetch;
pub mod format;
pub mod fsio;
pub mod gc;
pub mod index;
pub mod lock;
pub mod manifest;
mod merge;
pub mod pack;
pub mod pass;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod restore_lun;
pub mod rollback;
pub mod run;
pub mod upgrade;
pub mod verify;
pub mod view;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_repo;

use crate::initiator::InitiatorError;
use crate::initiator::cbt::CbtClientError;
use std::path::PathBuf;
use thiserror::Error;

pub use manifest::{ExtentRef, LunId, Manifest, Method, Stats};
pub use repo::{CreateOptions, Repo, RepoOptions};
pub use restore::{RestoreOptions, RestoreReport, restore_to_file, restore_to_path};
pub use restore_lun::restore_lun;
pub use rollback::{RollbackOptions, RollbackReport, rollback};
pub use run::{BackupOptions, BackupSummary, LockHook, LockInfo, backup};
pub use verify::{VerifyOptions, VerifyReport, verify, verify_with};
pub use view::{MethodChoice, ViewHook, ViewPhase};

/// Errors of the appliance, by reach: one file of the repository (`Io`,
/// `Json`), the connection (`Initiator`/`Cbt` when fatal: reconnect), or
/// the whole run (`Interrupted`, `UuidChanged`, `Invalid`).
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}", .0.describe())]
    Cbt(#[from] CbtClientError),
    #[error("{0}")]
    Initiator(#[from] InitiatorError),
    #[error("{0}")]
    Invalid(String),
    #[error("backup {0} not found in the repository")]
    NotFound(String),
    #[error("the tracking UUID changed during the backup; run again for a full pass")]
    UuidChanged,
    #[error("interrupted")]
    Interrupted,
    /// Something stored failed its check: damaged, truncated, or written
    /// with another key.
    #[error("{what}: {why}")]
    Corrupt { what: String, why: String },
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("{0}")]
    Locked(String),
    #[error(
        "{0} is a format-1 repository (one file per chunk); convert it with `gentgt repo-upgrade --repo DIR`"
    )]
    OldFormat(PathBuf),
    /// The view ended before the copy from it was proven complete (lost:
    /// view space exhausted; lease ran out; target restarted; another
    /// appliance holds one). The run falls back to the lock method unless
    /// `--method view` forced it.
    #[error("the point-in-time view ended: {0}")]
    ViewGone(String),
}

impl BackupError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io { path, source }
    }

    /// True when the connection is gone and a reconnect may help.
    pub fn connection_lost(&self) -> bool {
        match self {
            BackupError::Initiator(e) | BackupError::Cbt(CbtClientError::Initiator(e)) => {
                e.is_fatal()
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, BackupError>;
