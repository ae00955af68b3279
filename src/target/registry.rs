//! What the target serves: targets, their LUNs (as a device server), ACLs
//! and CHAP secrets. Built from the configuration, read by login and by
//! sessions.

use crate::proto::login::{ChapSecrets, LoginDirectory, TargetLookup};
use crate::scsi::DeviceServer;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct TargetEntry {
    pub name: String,
    pub alias: Option<String>,
    /// Initiator names allowed to log in; `None` = everyone.
    pub allowed_initiators: Option<Vec<String>>,
    /// CHAP required for this target, if any.
    pub chap: Option<ChapSecrets>,
    pub device: Arc<DeviceServer>,
}

#[derive(Default)]
pub struct Registry {
    pub targets: BTreeMap<String, TargetEntry>,
    pub discovery_chap: Option<ChapSecrets>,
    /// Target portal group tag of every portal (one group for now).
    pub portal_group_tag: u16,
}

impl Registry {
    pub fn target(&self, name: &str) -> Option<&TargetEntry> {
        self.targets.get(name)
    }
}

impl LoginDirectory for Registry {
    fn lookup_target(&self, target_name: &str, initiator_name: &str) -> TargetLookup {
        let Some(t) = self.targets.get(target_name) else {
            return TargetLookup::NotFound;
        };
        if let Some(acl) = &t.allowed_initiators
            && !acl.iter().any(|a| a == initiator_name)
        {
            return TargetLookup::Forbidden;
        }
        TargetLookup::Allowed {
            chap: t.chap.clone(),
            alias: t.alias.clone(),
            portal_group_tag: self.portal_group_tag.max(1),
        }
    }

    fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.discovery_chap.clone()
    }
}
