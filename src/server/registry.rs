//! What the target serves: targets, their LUNs (as a device server), ACLs
//! and CHAP secrets, and which portal belongs to which portal group.
//! Built from the configuration, read by login and by sessions.

use crate::proto::login::{ChapSecrets, LoginDirectory, TargetLookup};
use crate::scsi::DeviceServer;
use crate::scsi::alua::{GroupSetting, PortGroups};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// Each configured portal (listen address) with its target portal
    /// group tag; a portal not listed has tag 1.
    pub portal_tags: Vec<(SocketAddr, u16)>,
    /// The ALUA target port groups every device server reports (one
    /// object for the life of the server: a reload pushes states into it).
    pub port_groups: Arc<PortGroups>,
    /// The states and preferences this registry's configuration asks for.
    pub alua: Vec<GroupSetting>,
}

impl Registry {
    pub fn target(&self, name: &str) -> Option<&TargetEntry> {
        self.targets.get(name)
    }

    /// The portal group tag of the portal configured as `portal`.
    pub fn tag_of(&self, portal: SocketAddr) -> u16 {
        self.portal_tags
            .iter()
            .find(|(a, _)| *a == portal)
            .map_or(1, |(_, t)| (*t).max(1))
    }

    /// The registry as a login through a portal of group `tag` sees it.
    pub fn through_portal(&self, tag: u16) -> PortalView<'_> {
        PortalView {
            registry: self,
            tag,
        }
    }
}

/// The registry seen from one portal: login answers with its tag.
pub struct PortalView<'a> {
    registry: &'a Registry,
    tag: u16,
}

impl LoginDirectory for PortalView<'_> {
    fn lookup_target(&self, target_name: &str, initiator_name: &str) -> TargetLookup {
        let Some(t) = self.registry.targets.get(target_name) else {
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
            portal_group_tag: self.tag.max(1),
        }
    }

    fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.registry.discovery_chap.clone()
    }
}
