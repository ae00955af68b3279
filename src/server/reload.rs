//! Applying a new registry to a running server (SIGHUP, `gentgt reload`).
//!
//! The caller builds the new [`Registry`] first (reusing the logical units
//! whose definition did not change, and the whole device server of a
//! target whose LUN set did not change), so everything that can fail has
//! failed before anything here runs. Then, at once:
//! * the registry is swapped: new logins see the new targets, ACLs, CHAP;
//! * sessions of removed targets, and of initiators an ACL no longer
//!   allows, are asked to log out and closed (as at shutdown);
//! * sessions of a target whose LUN set changed move to its new device
//!   server and see REPORTED LUNS DATA HAS CHANGED;
//! * once nobody uses them any more, the logical units that left are
//!   flushed and their trackers closed.

use super::registry::{Registry, TargetEntry};
use super::session::Session;
use super::shared::{SessionControl, Shared};
use crate::proto::login::SessionType;
use crate::scsi::{DeviceServer, LogicalUnit};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{info, warn};

/// What a reload changed, for the log and for `gentgt reload`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub targets_added: Vec<String>,
    pub targets_removed: Vec<String>,
    /// Targets whose LUN set (or a LUN's definition) changed.
    pub luns_changed: Vec<String>,
    pub acl_changed: Vec<String>,
    /// CHAP changes apply to the next logins only.
    pub chap_changed: Vec<String>,
    /// Sessions told to end (target removed, initiator no longer allowed).
    pub sessions_ended: usize,
    /// Sessions moved to a new device server (LUN set changed).
    pub sessions_moved: usize,
    /// Portal group tags whose ALUA state (or preference) changed.
    pub alua_changed: Vec<u16>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        write!(
            f,
            "targets added: {}; removed: {}; LUNs changed: {}; ACL changed: {}; \
             CHAP changed: {}; sessions ended: {}, moved: {}",
            list(&self.targets_added),
            list(&self.targets_removed),
            list(&self.luns_changed),
            list(&self.acl_changed),
            list(&self.chap_changed),
            self.sessions_ended,
            self.sessions_moved
        )?;
        if !self.alua_changed.is_empty() {
            let tags: Vec<String> = self.alua_changed.iter().map(u16::to_string).collect();
            write!(f, "; ALUA state changed: portal groups {}", tags.join(" "))?;
        }
        Ok(())
    }
}

/// Logical units to close once the device server that held them is no
/// longer used by any session or command.
pub(super) struct Retired {
    device: Arc<DeviceServer>,
    units: Vec<(u64, Arc<LogicalUnit>)>,
}

/// PREEMPT AND ABORT by one session reaches the preempted sessions.
pub(super) fn wire_abort_hook(shared: &Arc<Shared>, device: &DeviceServer) {
    let weak = Arc::downgrade(shared);
    device.set_abort_hook(Box::new(move |nexus_ids, lun| {
        if let Some(s) = weak.upgrade() {
            s.abort_for(nexus_ids, lun);
        }
    }));
}

/// Swap in `next` and act on the differences (see the module docs).
pub(super) fn apply(
    shared: &Arc<Shared>,
    next: Arc<Registry>,
    max_connections: Option<usize>,
) -> (ReloadSummary, Vec<Retired>) {
    for t in next.targets.values() {
        wire_abort_hook(shared, &t.device);
    }
    if let Some(max) = max_connections {
        shared.max_connections.store(max, Ordering::Relaxed);
    }
    let old = shared.registry.swap(next.clone());
    let mut sum = ReloadSummary::default();
    let mut retired = Vec::new();
    for (name, was) in &old.targets {
        let Some(now) = next.targets.get(name) else {
            sum.targets_removed.push(name.clone());
            sum.sessions_ended += shared.end_sessions_where(|_, t| t == Some(name.as_str()));
            retired.push(Retired {
                device: was.device.clone(),
                units: was
                    .device
                    .luns
                    .iter()
                    .map(|(&id, lu)| (id, lu.clone()))
                    .collect(),
            });
            continue;
        };
        if !Arc::ptr_eq(&was.device, &now.device) {
            sum.luns_changed.push(name.clone());
            let dev = now.device.clone();
            sum.sessions_moved +=
                shared.control_target(name, || SessionControl::SwitchDevice(dev.clone()));
            retired.push(Retired {
                device: was.device.clone(),
                units: departed(&was.device, &now.device),
            });
        }
        if was.allowed_initiators != now.allowed_initiators {
            sum.acl_changed.push(name.clone());
            sum.sessions_ended += shared
                .end_sessions_where(|init, t| t == Some(name.as_str()) && !allowed(now, init));
        }
        if was.chap != now.chap {
            sum.chap_changed.push(name.clone());
        }
    }
    sum.alua_changed = push_access_states(&next);
    sum.targets_added = next
        .targets
        .keys()
        .filter(|n| !old.targets.contains_key(*n))
        .cloned()
        .collect();
    (sum, retired)
}

/// Set the states `next` asks for; when any changed, every nexus of every
/// target sees ASYMMETRIC ACCESS STATE CHANGED (SPC-4 §5.16.2.7).
fn push_access_states(next: &Registry) -> Vec<u16> {
    let changed = next.port_groups.apply(&next.alua);
    if !changed.is_empty() {
        for t in next.targets.values() {
            t.device.access_states_changed();
        }
    }
    changed
}

fn allowed(t: &TargetEntry, initiator: &str) -> bool {
    t.allowed_initiators
        .as_ref()
        .is_none_or(|acl| acl.iter().any(|a| a == initiator))
}

/// Units of `old` that `new` does not hold (by identity, not LUN number).
fn departed(old: &DeviceServer, new: &DeviceServer) -> Vec<(u64, Arc<LogicalUnit>)> {
    old.luns
        .iter()
        .filter(|(_, lu)| !new.luns.values().any(|n| Arc::ptr_eq(n, lu)))
        .map(|(&id, lu)| (id, lu.clone()))
        .collect()
}

impl Retired {
    /// Wait (bounded) until only we hold the old device server, then flush
    /// the departed units and close their trackers.
    pub(super) async fn close(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while Arc::strong_count(&self.device) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A unit redefined on the same file was closed by the rebuild
        // already, and its successor tracks in the same directory: closing
        // its tracker again would overwrite the successor's state.
        let units: Vec<_> = self
            .units
            .into_iter()
            .filter(|(_, lu)| {
                !lu.tracker
                    .as_ref()
                    .is_some_and(|t| t.shut.load(Ordering::SeqCst))
            })
            .collect();
        if units.is_empty() {
            return;
        }
        let name = self.device.target_name.clone();
        let ids: Vec<u64> = units.iter().map(|(id, _)| *id).collect();
        let flushed =
            tokio::task::spawn_blocking(move || DeviceServer::new("retired", units).flush_all())
                .await;
        match flushed {
            Ok(Ok(())) => info!(target = %name, luns = ?ids, "removed LUNs flushed and closed"),
            Ok(Err(e)) => {
                warn!(target = %name, luns = ?ids, error = %e, "flushing removed LUNs failed")
            }
            Err(e) => warn!(target = %name, error = %e, "flushing removed LUNs panicked"),
        }
    }
}

impl Session {
    /// The session's target has a new device server (its LUN set changed):
    /// carry this nexus over; commands already running finish on the old.
    pub(super) fn switch_device(&mut self, next: Arc<DeviceServer>) {
        let t = &mut self.target;
        let Some(old) = t.device.take() else {
            return;
        };
        if !Arc::ptr_eq(&old, &next) && t.kind == SessionType::Normal {
            next.adopt_nexus(&t.nexus, &old);
        }
        t.device = Some(next);
    }
}
