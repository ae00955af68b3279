//! A logical unit: a backend plus geometry, identity and (optionally) its
//! changed-block tracker.

use super::vendor::lock::CbtLock;
use super::{Sense, SenseReason};
use crate::backend::Backend;
use crate::cbt::{ChangeGuard, ChangeKind, Tracker};
use std::time::Duration;

/// Per-LUN settings of changed-block tracking's vendor command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CbtSettings {
    /// Initiator names allowed to use opcode C0h.
    pub allowed_initiators: Vec<String>,
    /// Longest write-lock lease granted (spec: default 30 s).
    pub max_lease: Duration,
    /// Lease when ACQUIRE/RENEW ask for 0.
    pub default_lease: Duration,
    /// Drain timeout when ACQUIRE asks for 0.
    pub default_drain: Duration,
    /// Point-in-time views (OPEN VIEW and the view LUN); `None`: views off.
    pub view: Option<ViewSettings>,
}

/// Per-LUN settings of CBT views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSettings {
    /// The LUN number that reads the view.
    pub lun: u64,
    /// VIEW SPACE LIMIT in bytes.
    pub space: u64,
    /// Longest view lease granted (spec: default 300 s).
    pub max_lease: Duration,
    /// Lease when OPEN/RENEW ask for 0.
    pub default_lease: Duration,
    /// Where the anonymous store of kept data is created.
    pub store_dir: PathBuf,
}

/// Spec default of the longest view lease.
pub const DEFAULT_MAX_VIEW_LEASE: Duration = Duration::from_secs(300);

/// The initiator the built-in default allows to use CBT.
pub const DEFAULT_CBT_INITIATOR: &str = "iqn.2026-11.dev.gentgt:backup";

impl Default for CbtSettings {
    fn default() -> Self {
        CbtSettings {
            allowed_initiators: vec![DEFAULT_CBT_INITIATOR.to_string()],
            max_lease: Duration::from_secs(30),
            default_lease: Duration::from_secs(30),
            default_drain: Duration::from_secs(10),
            view: None,
        }
    }
}
use super::spc::mode::ModeValues;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Identity that must never change across restarts (stored beside the data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunIdentity {
    /// Unit serial number (VPD 80h), printable ASCII, at most 20 bytes.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (NAA 6), 16 bytes (VPD 83h).
    pub naa: [u8; 16],
}

pub struct LogicalUnit {
    pub backend: Arc<dyn Backend>,
    pub block_size: u32,
    pub identity: LunIdentity,
    pub read_only: bool,
    /// Changed-block tracking, when on for this LUN.
    pub tracker: Option<Arc<Tracker>>,
    pub cbt: CbtSettings,
    /// CBT write lock and the changes it holds.
    pub cbt_lock: CbtLock,
    /// Current values of the changeable mode parameters (MODE SELECT).
    pub mode: Mutex<ModeValues>,
    /// Orders medium changes: every command that changes the medium holds
    /// it shared across its backend call; COMPARE AND WRITE, WRITE ATOMIC,
    /// ORWRITE and WRITE AND VERIFY hold it exclusive across their
    /// read-modify-write, so no other write lands in the middle (from any
    /// session). Take it *before* `begin_change`.
    pub write_order: RwLock<()>,
    /// Where persistent reservations are kept when APTPL is set; `None`:
    /// APTPL is refused (REPORT CAPABILITIES says PTPL_C=0).
    pub pr_path: Option<PathBuf>,
    /// Reservation state (persistent and SPC-2).
    pub(crate) pr: super::pr::LunPr,
    /// A SANITIZE is running: every command but INQUIRY, REPORT LUNS and
    /// REQUEST SENSE gets NOT READY, SANITIZE IN PROGRESS.
    pub sanitizing: AtomicBool,
    /// INQUIRY RMB=1: START STOP UNIT with LOEJ ejects and loads the
    /// medium, PREVENT ALLOW MEDIUM REMOVAL can forbid that.
    pub removable: bool,
    /// Loaded or ejected, and which nexuses prevent removal (only ever
    /// changes on a removable LUN).
    pub medium: super::removable::Medium,
    /// This LU is a CBT view LUN reading that tracker's view.
    pub view_of: Option<Arc<Tracker>>,
    /// Initiators that see this LU (REPORT LUNS, commands); `None`: all.
    /// Others get LOGICAL UNIT NOT SUPPORTED, as for a LUN that does not
    /// exist.
    pub visible_to: Option<Vec<String>>,
    /// The view LUN of this LU (number, unit), served beside it.
    pub view_unit: Option<(u64, Arc<LogicalUnit>)>,
    /// A flush or a FUA write's sync failed: acknowledged data may be
    /// lost, so no later sync may report success ([`super::io_fault`]).
    /// Only reopening the LUN clears it.
    pub sync_lost: AtomicBool,
    /// Thin provisioning soft threshold ([`super::space`]).
    pub space: super::space::SpaceWatch,
    /// Backend calls known to hang; while any does, the LUN is fenced.
    pub hung: super::hung::Fence,
}

impl LogicalUnit {
    pub fn new(
        backend: Arc<dyn Backend>,
        block_size: u32,
        identity: LunIdentity,
        read_only: bool,
    ) -> LogicalUnit {
        LogicalUnit {
            backend,
            block_size,
            identity,
            read_only,
            tracker: None,
            cbt: CbtSettings::default(),
            cbt_lock: CbtLock::default(),
            mode: Mutex::new(ModeValues::default()),
            write_order: RwLock::new(()),
            pr_path: None,
            pr: Default::default(),
            sanitizing: AtomicBool::new(false),
            removable: false,
            medium: Default::default(),
            view_of: None,
            visible_to: None,
            view_unit: None,
            sync_lost: AtomicBool::new(false),
            space: Default::default(),
            hung: Default::default(),
        }
    }

    /// Does `initiator` see this LU? iSCSI names compare case-insensitively.
    pub fn visible(&self, initiator: &str) -> bool {
        self.visible_to
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n.eq_ignore_ascii_case(initiator)))
    }

    /// Keep APTPL persistent reservations in `path`, restoring what an
    /// earlier run left there.
    pub fn with_pr_state(mut self, path: PathBuf) -> std::io::Result<LogicalUnit> {
        if let Some(st) = super::pr::persist::load(&path)? {
            self.pr = super::pr::LunPr::new(st);
        }
        self.pr_path = Some(path);
        Ok(self)
    }

    /// Make the medium removable (INQUIRY RMB=1, eject/load, prevention).
    pub fn with_removable(mut self, removable: bool) -> LogicalUnit {
        self.removable = removable;
        self
    }

    /// Raise THIN PROVISIONING SOFT THRESHOLD REACHED when this percent
    /// of the LUN's mapping resources is in use.
    pub fn with_soft_threshold(mut self, percent: Option<u8>) -> LogicalUnit {
        self.space = super::space::SpaceWatch::new(percent);
        self
    }

    pub fn with_tracker(mut self, tracker: Arc<Tracker>) -> LogicalUnit {
        self.tracker = Some(tracker);
        self
    }

    /// What an ordinary medium change holds across its backend call: the
    /// write order shared, then the CBT stamp. The one entry point for
    /// every writer that is not itself exclusive (COMPARE AND WRITE and
    /// friends take `order_exclusive` and then `begin_change`).
    pub fn change_shared(
        &self,
        lba: u64,
        blocks: u64,
        kind: ChangeKind,
    ) -> Result<MediumChange<'_>, Sense> {
        let order = self.order_shared();
        let change = self.begin_change(lba, blocks, kind)?;
        Ok(MediumChange {
            change,
            _order: order,
        })
    }

    /// Shared hold of [`LogicalUnit::write_order`] for an ordinary write.
    /// A panic elsewhere cannot corrupt `()`, so poisoning is ignored.
    pub fn order_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.write_order.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive hold of [`LogicalUnit::write_order`] for a command that
    /// must be atomic against every other write to the LUN.
    pub fn order_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.write_order.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every command that can change what a READ returns calls this
    /// *before* touching the backend and keeps the guard until the backend
    /// call has returned (CBT guarantee 2: the extent is stamped with the
    /// open generation before the data lands, and CLOSE waits for it).
    /// Without tracking it costs nothing.
    pub fn begin_change(
        &self,
        lba: u64,
        blocks: u64,
        kind: ChangeKind,
    ) -> Result<Option<ChangeGuard<&Tracker>>, Sense> {
        let Some(t) = &self.tracker else {
            return Ok(None);
        };
        if blocks == 0 {
            return Ok(None);
        }
        t.begin_change(lba, blocks, kind).map(Some).map_err(|e| {
            // The intent could not be made durable: refusing the write is
            // the only way not to under-report it later.
            tracing::error!(error = %e, "changed-block tracking refused a change");
            let reason = match &e {
                // No room for the intent log: a space condition like the
                // data's own, that clears when space returns.
                crate::cbt::CbtError::Io(io) if super::io_fault::out_of_space(io) => {
                    SenseReason::SpaceAllocationFailedWriteProtect
                }
                _ => SenseReason::WriteError,
            };
            Sense::new(reason).with_information(lba)
        })
    }
}

/// Held across one ordinary medium change (see
/// [`LogicalUnit::change_shared`]). Fields drop in order: the change ends
/// (CBT in-flight count) before the write order is released.
pub struct MediumChange<'a> {
    change: Option<ChangeGuard<&'a Tracker>>,
    _order: RwLockReadGuard<'a, ()>,
}

impl MediumChange<'_> {
    /// The backend call failed (see [`ChangeGuard::failed`]).
    pub fn failed(&mut self) {
        if let Some(c) = &mut self.change {
            c.failed();
        }
    }
}

/// The LUN field of a LUN number ([`crate::scsi::lun_field::encode`]; numbers
/// past the single-level range are not configurable).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    crate::scsi::lun_field::encode(lun)
        .unwrap_or(0)
        .to_be_bytes()
}

/// The LUN number of a LUN field; forms other than single level map to
/// `u64::MAX` (no such LUN).
pub fn decode_lun(raw: [u8; 8]) -> u64 {
    crate::scsi::lun_field::decode(u64::from_be_bytes(raw)).unwrap_or(u64::MAX)
}

impl LogicalUnit {
    /// Capacity in logical blocks (a partial trailing block is unusable).
    pub fn num_blocks(&self) -> u64 {
        self.backend
            .size()
            .checked_div(self.block_size as u64)
            .unwrap_or(0)
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_size as u64
    }
}
