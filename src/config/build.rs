//! Turn a validated configuration into the registry the target serves.

use super::identity::{self, identity_path};
use super::schema::{
    BackendKind, ChapConfig, Config, IoEngine, LunConfig, TargetConfig, TrackingMode,
};
use super::{ConfigError, backup_lun, portals, rbd_lun, validate};
use crate::backend::{Backend, FileBackend, MemoryBackend, UringOptions, uring};
use crate::cbt::Tracker;
use crate::proto::login::ChapSecrets;
use crate::scsi::alua::PortGroups;
use crate::scsi::lun::{DEFAULT_MAX_VIEW_LEASE, ViewSettings};
use crate::scsi::{DeviceServer, LogicalUnit, LunIdentity};
use crate::server::{Registry, TargetEntry};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Validate `cfg`, then create `data_dir` if missing, open or create every
/// backend and load or create every LUN's identity.
///
/// All checks come first (including reading the stored identities), so
/// an error before the creation phase leaves the disk untouched.
pub fn build_registry(cfg: &Config, data_dir: &Path) -> Result<Registry, ConfigError> {
    let findings = validate::check(cfg, data_dir);
    if !findings.errors.is_empty() {
        return Err(ConfigError::Invalid(findings.errors));
    }
    let stored = preflight(cfg, data_dir)?;

    create_dir(data_dir)?;
    let groups = Arc::new(PortGroups::new(&portals::group_settings(cfg)));
    let mut targets = BTreeMap::new();
    for t in &cfg.targets {
        let mut luns = Vec::new();
        for lun in &t.luns {
            let mut unit = build_lun(&t.name, lun, data_dir, &stored)?;
            setup_tracking(&t.name, lun, data_dir, Leases::of(cfg, t), &mut unit)?;
            luns.push((lun.id, Arc::new(unit)));
        }
        let entry = TargetEntry {
            name: t.name.clone(),
            alias: t.alias.clone(),
            allowed_initiators: t.allow.clone(),
            chap: t.chap.as_ref().map(chap_secrets),
            device: Arc::new(DeviceServer::new(&t.name, luns).with_port_groups(groups.clone())),
        };
        targets.insert(t.name.clone(), entry);
    }
    Ok(Registry {
        targets,
        discovery_chap: cfg
            .discovery
            .as_ref()
            .and_then(|d| d.chap.as_ref())
            .map(chap_secrets),
        portal_tags: portals::portal_tags(cfg),
        port_groups: groups,
        alua: portals::group_settings(cfg),
    })
}

/// Open one LUN's backend and give it its identity.
pub(super) fn build_lun(
    target: &str,
    lun: &LunConfig,
    data_dir: &Path,
    stored: &BTreeMap<(&str, u64), LunIdentity>,
) -> Result<LogicalUnit, ConfigError> {
    let path = lun.path.as_ref().map(|p| data_dir.join(p));
    if let Some(rel) = lun.path.as_ref().filter(|p| p.is_relative()) {
        create_dir(data_dir.join(rel).parent().unwrap_or(data_dir))?;
    }
    let (backend, own_identity) = match lun.backend {
        BackendKind::Backup => (backup_lun::open(target, lun, data_dir)?, None),
        BackendKind::Rbd => {
            let (b, id) = rbd_lun::open(target, lun)?;
            (b, Some(id))
        }
        _ => {
            let b = open_backend(lun, path.as_deref()).map_err(|source| ConfigError::Storage {
                what: format!("target {target:?} LUN {}: cannot open backend", lun.id),
                path: path.clone().unwrap_or_default(),
                source,
            })?;
            (b, None)
        }
    };
    let identity = match own_identity {
        Some(id) => id,
        None => stored_identity(target, lun, path.as_deref(), stored)?,
    };
    let mut unit = LogicalUnit::new(backend, lun.block_size, identity, lun.write_protected())
        .with_removable(lun.removable)
        .with_soft_threshold(lun.soft_threshold);
    unit.visible_to = lun.initiators.clone();
    match path {
        // APTPL reservations live beside the data: "<lun path>.pr".
        Some(p) => {
            let mut prp = p.as_os_str().to_owned();
            prp.push(".pr");
            let prp = PathBuf::from(prp);
            unit.with_pr_state(prp.clone())
                .map_err(|source| ConfigError::Storage {
                    what: format!("target {target:?} LUN {}: persistent reservations", lun.id),
                    path: prp,
                    source,
                })
        }
        None => Ok(unit),
    }
}

/// The identity of a LUN whose storage has none of its own: stored
/// beside a file LUN's data (made on first use), derived for the others.
fn stored_identity(
    target: &str,
    lun: &LunConfig,
    path: Option<&Path>,
    stored: &BTreeMap<(&str, u64), LunIdentity>,
) -> Result<LunIdentity, ConfigError> {
    Ok(match (path, stored.get(&(target, lun.id))) {
        (_, Some(id)) => id.clone(),
        (Some(p), None) => {
            let idp = identity_path(p);
            identity::load_or_create(&idp)
                .map_err(|reason| ConfigError::Identity { path: idp, reason })?
        }
        // Another backup is another disk: its own designators.
        (None, None) => match (&lun.backend, &lun.backup) {
            (BackendKind::Backup, Some(b)) => {
                identity::derived_identity(&format!("{target}/backup/{b}"), lun.id)
            }
            _ => identity::derived_identity(target, lun.id),
        },
    })
}

/// Changed-block tracking for one LUN: settings, then the tracker
/// (persistent ones are opened or recovered from `<path>.cbt/`).
/// The lease maxima that apply to one target's LUNs (target over global).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Leases {
    pub lock_ms: Option<u64>,
    pub view_ms: Option<u64>,
}

impl Leases {
    pub(super) fn of(cfg: &Config, t: &TargetConfig) -> Leases {
        Leases {
            lock_ms: t.max_lock_lease_ms.or(cfg.max_lock_lease_ms),
            view_ms: t.max_view_lease_ms.or(cfg.max_view_lease_ms),
        }
    }
}

pub(super) fn setup_tracking(
    target: &str,
    lun: &LunConfig,
    data_dir: &Path,
    leases: Leases,
    unit: &mut LogicalUnit,
) -> Result<(), ConfigError> {
    if let Some(names) = &lun.cbt_initiators {
        unit.cbt.allowed_initiators = names.clone();
    }
    if let Some(ms) = leases.lock_ms {
        unit.cbt.max_lease = Duration::from_millis(ms);
        unit.cbt.default_lease = unit.cbt.default_lease.min(unit.cbt.max_lease);
    }
    let capacity = unit.backend.size() / u64::from(lun.block_size);
    // Validation made it a power of two that fits a u32.
    let extent_blocks =
        u32::try_from(lun.extent_bytes() / u64::from(lun.block_size)).unwrap_or(u32::MAX);
    let (tracker, dir) = match (lun.tracking_mode(), &lun.path) {
        (TrackingMode::Off, _) => return Ok(()),
        (TrackingMode::Persistent, Some(p)) => {
            let dir = tracking_dir(&data_dir.join(p));
            // After a kill -9 the last run's writes may sit in the page
            // cache only, covered by intent logs that opening the tracker
            // checkpoints away: make them durable first, or a later power
            // cut reverts extents no log lists any more (under-report).
            let opened = unit
                .backend
                .flush()
                .map_err(crate::cbt::CbtError::Io)
                .and_then(|()| Tracker::open(&dir, capacity, extent_blocks));
            (opened, dir)
        }
        _ => (Tracker::volatile(capacity, extent_blocks), PathBuf::new()),
    };
    let tracker = tracker.map_err(|e| ConfigError::Storage {
        what: format!(
            "target {target:?} LUN {}: cannot start changed-block tracking",
            lun.id
        ),
        path: dir.clone(),
        source: io::Error::other(e),
    })?;
    unit.tracker = Some(Arc::new(tracker));
    if lun.views_on() {
        let bytes = unit.backend.size();
        unit.cbt.view = Some(view_settings(lun, bytes, &dir, leases.view_ms));
        crate::scsi::viewlun::attach(unit);
    }
    Ok(())
}

/// Views of a tracked LUN: kept data goes beside the CBT state (same
/// filesystem as the LUN's data), or to the temporary directory for LUNs
/// without one.
fn view_settings(
    lun: &LunConfig,
    lun_bytes: u64,
    cbt_dir: &Path,
    max_ms: Option<u64>,
) -> ViewSettings {
    let max_lease = max_ms.map_or(DEFAULT_MAX_VIEW_LEASE, Duration::from_millis);
    let store_dir = match cbt_dir.as_os_str().is_empty() {
        true => std::env::temp_dir(),
        false => cbt_dir.to_path_buf(),
    };
    ViewSettings {
        lun: lun.view_lun_id(),
        space: lun.view_space_bytes(lun_bytes),
        max_lease,
        default_lease: max_lease,
        store_dir,
    }
}

/// `<data path>.cbt`: the tracking directory beside the LUN's data, like
/// the identity file (keep both with the data).
pub fn tracking_dir(data_path: &Path) -> PathBuf {
    let mut s = data_path.as_os_str().to_owned();
    s.push(".cbt");
    PathBuf::from(s)
}

/// Identities already stored, keyed by (target, LUN); read-only files must
/// already exist (we would not create an empty disk nobody can write).
pub(super) fn preflight<'a>(
    cfg: &'a Config,
    data_dir: &Path,
) -> Result<BTreeMap<(&'a str, u64), LunIdentity>, ConfigError> {
    let mut stored = BTreeMap::new();
    for t in &cfg.targets {
        for lun in &t.luns {
            let Some(path) = lun.path.as_ref().map(|p| data_dir.join(p)) else {
                continue;
            };
            if lun.read_only && !path.exists() {
                return Err(ConfigError::Storage {
                    what: format!("target {:?} LUN {}: read-only file", t.name, lun.id),
                    path,
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "does not exist (gentgt never creates a read-only LUN's file)",
                    ),
                });
            }
            let idp = identity_path(&path);
            match identity::load(&idp) {
                Ok(Some(id)) => {
                    stored.insert((t.name.as_str(), lun.id), id);
                }
                Ok(None) => {}
                Err(reason) => return Err(ConfigError::Identity { path: idp, reason }),
            }
        }
    }
    Ok(stored)
}

/// The data directory, and subdirectories named by relative LUN paths.
pub(super) fn create_dir(dir: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Storage {
        what: "cannot create directory".into(),
        path: dir.to_path_buf(),
        source,
    })
}

/// The one place that names the backend constructors.
fn open_backend(lun: &LunConfig, path: Option<&Path>) -> io::Result<Arc<dyn Backend>> {
    let size = lun.size_bytes();
    Ok(match path {
        Some(p) if lun.io == IoEngine::Uring => {
            let opts = UringOptions {
                direct: lun.direct,
                ..Default::default()
            };
            uring::open_file(p, size, !lun.read_only, lun.read_only, &opts)?
        }
        Some(p) => Arc::new(FileBackend::open(p, size, !lun.read_only, lun.read_only)?),
        None => Arc::new(MemoryBackend::new(size)),
    })
}

pub(super) fn chap_secrets(c: &ChapConfig) -> ChapSecrets {
    ChapSecrets {
        user: c.user.clone(),
        secret: c.secret.clone(),
        mutual: c.mutual_user.clone().zip(c.mutual_secret.clone()),
    }
}
