//! Building the registry for a reload from the running one: logical units
//! whose definition did not change are reused as they are (same object:
//! data, reservations, tracker, write lock and sessions survive), and so is
//! the whole device server of a target whose LUNs all stayed.
//!
//! Everything that can fail is tried before anything running is touched:
//! validation, stored identities, file sizes, then opening the new LUNs.
//! The one exception is a LUN whose definition changed while its file
//! stays (or a file moving to another LUN): its old logical unit is closed
//! just before the new one opens on the same file, after all other checks.

use super::build::{Leases, build_lun, chap_secrets, create_dir, preflight, setup_tracking};
use super::schema::{Config, LunConfig};
use super::{ConfigError, portals, validate};
use crate::scsi::{DeviceServer, LogicalUnit};
use crate::server::{Registry, TargetEntry};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Units = BTreeMap<(String, u64), Arc<LogicalUnit>>;

/// Build the registry `next` describes, reusing what `running` (built from
/// `current`) already has. `data_dir` is the running server's.
pub fn rebuild_registry(
    current: &Config,
    running: &Registry,
    next: &Config,
    data_dir: &Path,
) -> Result<Registry, ConfigError> {
    let findings = validate::check(next, data_dir);
    if !findings.errors.is_empty() {
        return Err(ConfigError::Invalid(findings.errors));
    }
    if let Some(why) = portals::membership_change(current, next) {
        return Err(ConfigError::Invalid(vec![why]));
    }
    let stored = preflight(next, data_dir)?;
    let (kept, fresh) = classify(current, running, next);
    // Files still held by an old unit that is not kept.
    let busy: BTreeMap<PathBuf, Arc<LogicalUnit>> = old_files(current, running, data_dir)
        .into_iter()
        .filter(|(_, lu)| !kept.values().any(|k| Arc::ptr_eq(k, lu)))
        .collect();
    for (t, lun) in &fresh {
        if let Some(p) = file_of(lun, data_dir).filter(|p| busy.contains_key(p)) {
            check_no_shrink(t, lun, &p)?;
        }
    }

    create_dir(data_dir)?;
    let mut units = kept;
    let mut later = Vec::new();
    for (t, lun) in &fresh {
        match file_of(lun, data_dir).and_then(|p| busy.get(&p).cloned()) {
            Some(old) => later.push((t, lun, old)),
            None => {
                let unit = open(next, t, lun, data_dir, &stored)?;
                units.insert((t.to_string(), lun.id), unit);
            }
        }
    }
    for (t, lun, old) in later {
        // Same file, new definition: the old unit lets go first.
        if let Err(e) = DeviceServer::new(t, vec![(lun.id, old)]).flush_all() {
            tracing::warn!(target = t, lun = lun.id, error = %e, "closing the old LUN");
        }
        let unit = open(next, t, lun, data_dir, &stored)?;
        units.insert((t.to_string(), lun.id), unit);
    }
    Ok(assemble(running, next, units))
}

/// Applies `$each!(field)` to every top-level setting read only at start
/// (a reload reports a change to it and keeps the running value): the one
/// list both functions below use.
macro_rules! restart_settings {
    ($each:ident) => {
        $each!(listen);
        $each!(data_dir);
        $each!(pid_file);
        $each!(busy_poll_us);
        $each!(login_timeout_ms);
        $each!(nop_interval_ms);
        $each!(nop_timeout_ms);
        $each!(hung_io_timeout_ms);
        $each!(abort_timeout_ms);
        $each!(send_stall_timeout_ms);
    };
}

/// Settings a reload cannot change in place (they need a restart).
pub fn needs_restart(current: &Config, next: &Config) -> Vec<String> {
    let mut v = Vec::new();
    macro_rules! compare {
        ($k:ident) => {
            if current.$k != next.$k {
                v.push(stringify!($k).to_string());
            }
        };
    }
    restart_settings!(compare);
    v
}

/// Put the running values of the restart-only settings back into `next`,
/// so the next reload compares against what is really in effect.
pub fn keep_restart_settings(next: &mut Config, current: &Config) {
    macro_rules! keep {
        ($k:ident) => {
            next.$k = current.$k.clone();
        };
    }
    restart_settings!(keep);
}

/// Split `next`'s LUNs into those reused from `running` and those to open.
fn classify<'a>(
    current: &Config,
    running: &Registry,
    next: &'a Config,
) -> (Units, Vec<(&'a str, &'a LunConfig)>) {
    let mut kept = Units::new();
    let mut fresh = Vec::new();
    for t in &next.targets {
        let old_t = current.targets.iter().find(|o| o.name == t.name);
        let leases = Leases::of(next, t);
        for lun in &t.luns {
            let same = old_t.is_some_and(|o| {
                Leases::of(current, o) == leases && o.luns.iter().any(|l| l == lun)
            });
            let unit = running
                .target(&t.name)
                .and_then(|e| e.device.luns.get(&lun.id));
            match unit {
                Some(u) if same => {
                    kept.insert((t.name.clone(), lun.id), u.clone());
                }
                _ => fresh.push((t.name.as_str(), lun)),
            }
        }
    }
    (kept, fresh)
}

/// Every file the running configuration serves, with its unit.
fn old_files(
    current: &Config,
    running: &Registry,
    data_dir: &Path,
) -> Vec<(PathBuf, Arc<LogicalUnit>)> {
    let mut v = Vec::new();
    for t in &current.targets {
        for lun in &t.luns {
            let unit = running
                .target(&t.name)
                .and_then(|e| e.device.luns.get(&lun.id));
            if let (Some(p), Some(u)) = (file_of(lun, data_dir), unit) {
                v.push((p, u.clone()));
            }
        }
    }
    v
}

fn file_of(lun: &LunConfig, data_dir: &Path) -> Option<PathBuf> {
    lun.path.as_ref().map(|p| data_dir.join(p))
}

/// Opening would refuse to truncate; find out before closing the old unit.
fn check_no_shrink(target: &str, lun: &LunConfig, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > lun.size_bytes() => Err(ConfigError::Storage {
            what: format!("target {target:?} LUN {}: shrinking", lun.id),
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file holds {} bytes, more than the new size", m.len()),
            ),
        }),
        _ => Ok(()),
    }
}

fn open(
    cfg: &Config,
    target: &str,
    lun: &LunConfig,
    data_dir: &Path,
    stored: &BTreeMap<(&str, u64), crate::scsi::LunIdentity>,
) -> Result<Arc<LogicalUnit>, ConfigError> {
    let mut unit = build_lun(target, lun, data_dir, stored)?;
    let leases = match cfg.targets.iter().find(|t| t.name == target) {
        Some(t) => Leases::of(cfg, t),
        None => Leases {
            lock_ms: cfg.max_lock_lease_ms,
            view_ms: cfg.max_view_lease_ms,
        },
    };
    setup_tracking(target, lun, data_dir, leases, &mut unit)?;
    Ok(Arc::new(unit))
}

/// The new registry; a target whose units are all the running ones, under
/// the same LUN numbers, keeps its device server.
fn assemble(running: &Registry, next: &Config, mut units: Units) -> Registry {
    let mut targets = BTreeMap::new();
    for t in &next.targets {
        let luns: Vec<(u64, Arc<LogicalUnit>)> = t
            .luns
            .iter()
            .filter_map(|l| units.remove(&(t.name.clone(), l.id)).map(|u| (l.id, u)))
            .collect();
        let device = match running.target(&t.name) {
            Some(old) if same_units(&old.device, &luns) => old.device.clone(),
            _ => Arc::new(
                DeviceServer::new(&t.name, luns).with_port_groups(running.port_groups.clone()),
            ),
        };
        let entry = TargetEntry {
            name: t.name.clone(),
            alias: t.alias.clone(),
            allowed_initiators: t.allow.clone(),
            chap: t.chap.as_ref().map(chap_secrets),
            device,
        };
        targets.insert(t.name.clone(), entry);
    }
    Registry {
        targets,
        discovery_chap: next
            .discovery
            .as_ref()
            .and_then(|d| d.chap.as_ref())
            .map(chap_secrets),
        portal_tags: portals::portal_tags(next),
        // The running groups: a reload pushes the new states into them.
        port_groups: running.port_groups.clone(),
        alua: portals::group_settings(next),
    }
}

/// View LUNs come with their source units, so only sources are compared.
fn same_units(device: &DeviceServer, luns: &[(u64, Arc<LogicalUnit>)]) -> bool {
    let sources = device.luns.values().filter(|u| u.view_of.is_none());
    sources.count() == luns.len()
        && luns
            .iter()
            .all(|(id, u)| device.luns.get(id).is_some_and(|d| Arc::ptr_eq(d, u)))
}
