//! Asymmetric logical unit access (SPC-4 §5.16): target port groups and
//! their access states, shared by every device server of the process.
//!
//! An iSCSI SCSI target port is the target name plus a target portal
//! group tag, so each portal group is one target port and one target port
//! group: the group's id, its tag and its relative target port identifier
//! are the same number. Every logical unit is reachable through every
//! group. States change only implicitly (configuration reload): TPGS is
//! 01b and SET TARGET PORT GROUPS is not supported.

use super::cdb::CommandDesc;
use super::sense::SenseReason;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A target port group's primary access state (SPC-4 table 307 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AccessState {
    #[default]
    #[serde(rename = "active/optimized")]
    ActiveOptimized,
    #[serde(rename = "active/non-optimized")]
    ActiveNonOptimized,
    #[serde(rename = "standby")]
    Standby,
    #[serde(rename = "unavailable")]
    Unavailable,
    #[serde(rename = "transitioning")]
    Transitioning,
}

/// SUPPORTED STATES bits of an RTPG descriptor: T_SUP, U_SUP, S_SUP,
/// AN_SUP, AO_SUP (no offline, no LBA dependent).
pub const SUPPORTED_STATES: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;

/// RTPG STATUS CODE: the state was altered by implicit ALUA behavior.
const STATUS_IMPLICIT_CHANGE: u8 = 0x02;

impl AccessState {
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Transitioning => 0xf,
        }
    }

    fn from_code(code: u8) -> AccessState {
        match code {
            0x1 => AccessState::ActiveNonOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0xf => AccessState::Transitioning,
            _ => AccessState::ActiveOptimized,
        }
    }

    /// The sense a command gets through a port in this state, or `None`
    /// when the state lets it run (SPC-4 §5.16.2.4.4, §5.16.2.4.5,
    /// §5.16.2.6: the commands each state must still process; of those
    /// lists gentgt implements INQUIRY, REPORT LUNS, REPORT TARGET PORT
    /// GROUPS, REQUEST SENSE, and in standby also MODE SENSE/SELECT and
    /// PERSISTENT RESERVE IN/OUT).
    pub fn refusal(self, desc: &CommandDesc) -> Option<SenseReason> {
        let always = matches!(desc.opcode, 0x03 | 0x12 | 0xa0)
            || (desc.opcode, desc.service_action) == (0xa3, Some(RTPG_SA));
        let (reason, standby_also) = match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => (
                SenseReason::PortInStandby,
                matches!(desc.opcode, 0x15 | 0x1a | 0x55 | 0x5a | 0x5e | 0x5f),
            ),
            AccessState::Unavailable => (SenseReason::PortUnavailable, false),
            AccessState::Transitioning => (SenseReason::AccessStateTransition, false),
        };
        (!always && !standby_also).then_some(reason)
    }
}

/// MAINTENANCE IN service action REPORT TARGET PORT GROUPS.
pub const RTPG_SA: u16 = 0x0a;

/// What the configuration says about one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSetting {
    pub id: u16,
    pub state: AccessState,
    pub preferred: bool,
}

struct PortGroup {
    id: u16,
    state: AtomicU8,
    preferred: AtomicBool,
    /// RTPG STATUS CODE.
    status: AtomicU8,
}

/// Every target port group, sorted by id. Membership is fixed for the
/// life of the process; states change with [`PortGroups::apply`].
pub struct PortGroups {
    groups: Vec<PortGroup>,
}

impl Default for PortGroups {
    /// One group, tag 1, active/optimized: a target without portal groups.
    fn default() -> PortGroups {
        PortGroups::new(&[GroupSetting {
            id: 1,
            state: AccessState::ActiveOptimized,
            preferred: false,
        }])
    }
}

impl PortGroups {
    pub fn new(settings: &[GroupSetting]) -> PortGroups {
        let mut groups: Vec<PortGroup> = settings
            .iter()
            .map(|s| PortGroup {
                id: s.id,
                state: AtomicU8::new(s.state.code()),
                preferred: AtomicBool::new(s.preferred),
                status: AtomicU8::new(0),
            })
            .collect();
        groups.sort_by_key(|g| g.id);
        groups.dedup_by_key(|g| g.id);
        PortGroups { groups }
    }

    /// The group ids, ascending.
    pub fn ids(&self) -> Vec<u16> {
        self.groups.iter().map(|g| g.id).collect()
    }

    /// The state of the group a relative target port belongs to (its id
    /// is the port's); a port of no known group is active/optimized.
    pub fn state(&self, port: u16) -> AccessState {
        self.groups
            .iter()
            .find(|g| g.id == port)
            .map_or(AccessState::ActiveOptimized, |g| {
                AccessState::from_code(g.state.load(Ordering::Acquire))
            })
    }

    /// Set the configured states and preferences; the ids of the groups
    /// that changed (each then reports STATUS CODE 02h, implicit change).
    /// Ids this set does not have are ignored (membership is fixed).
    pub fn apply(&self, settings: &[GroupSetting]) -> Vec<u16> {
        let mut changed = Vec::new();
        for s in settings {
            let Some(g) = self.groups.iter().find(|g| g.id == s.id) else {
                continue;
            };
            let old_state = g.state.swap(s.state.code(), Ordering::AcqRel);
            let old_pref = g.preferred.swap(s.preferred, Ordering::AcqRel);
            if old_state != s.state.code() || old_pref != s.preferred {
                g.status.store(STATUS_IMPLICIT_CHANGE, Ordering::Release);
                changed.push(s.id);
            }
        }
        changed
    }

    /// REPORT TARGET PORT GROUPS descriptors (SPC-4 §6.37): one per group,
    /// each with its one relative target port.
    pub fn descriptors(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 * self.groups.len());
        for g in &self.groups {
            let pref = if g.preferred.load(Ordering::Acquire) {
                0x80
            } else {
                0
            };
            let [hi, lo] = g.id.to_be_bytes();
            out.extend_from_slice(&[
                pref | g.state.load(Ordering::Acquire),
                SUPPORTED_STATES,
                hi,
                lo,
                0,
                g.status.load(Ordering::Acquire),
                0,
                1, // TARGET PORT COUNT
                0,
                0,
                hi,
                lo, // RELATIVE TARGET PORT IDENTIFIER
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(id: u16, state: AccessState) -> GroupSetting {
        GroupSetting {
            id,
            state,
            preferred: false,
        }
    }

    #[test]
    fn states_change_and_report_their_status() {
        let g = PortGroups::new(&[
            setting(2, AccessState::Standby),
            setting(1, AccessState::ActiveOptimized),
        ]);
        assert_eq!(g.ids(), [1, 2]);
        assert_eq!(g.state(2), AccessState::Standby);
        assert_eq!(g.state(9), AccessState::ActiveOptimized);
        let d = g.descriptors();
        assert_eq!(d.len(), 24);
        assert_eq!(&d[..12], &[0x00, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(&d[12..14], &[0x02, 0x8f]);
        let changed = g.apply(&[
            setting(1, AccessState::ActiveOptimized),
            GroupSetting {
                id: 2,
                state: AccessState::Transitioning,
                preferred: true,
            },
            setting(7, AccessState::Unavailable),
        ]);
        assert_eq!(changed, [2]);
        let d = g.descriptors();
        assert_eq!((d[0], d[5]), (0x00, 0x00));
        assert_eq!((d[12], d[17]), (0x80 | 0x0f, STATUS_IMPLICIT_CHANGE));
        assert!(
            g.apply(&[setting(1, AccessState::ActiveOptimized)])
                .is_empty()
        );
    }
}
