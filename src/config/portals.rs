//! Target portal groups: which `listen` portal has which tag, and the
//! ALUA target port groups they make. Portals no `[[portal_group]]` lists
//! belong to tag 1, active/optimized, so a configuration without groups
//! serves exactly as before.

use super::schema::Config;
use super::validate::Findings;
use crate::scsi::alua::{AccessState, GroupSetting};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The tag of portals no group lists.
pub const DEFAULT_TAG: u16 = 1;

/// Check every `[[portal_group]]` against `listen`.
pub(super) fn check(cfg: &Config, f: &mut Findings) {
    let listen: Vec<SocketAddr> = cfg.listen.iter().filter_map(|a| a.parse().ok()).collect();
    let mut tags = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for g in &cfg.portal_groups {
        let what = format!("portal_group tag {}", g.tag);
        if g.tag == 0 {
            f.errors.push(format!("{what}: tag must be 1..=65535"));
        }
        if !tags.insert(g.tag) {
            f.errors.push(format!("{what} is defined twice"));
        }
        if g.portals.is_empty() {
            f.errors.push(format!("{what}: no portals"));
        }
        for p in &g.portals {
            let Ok(a) = p.parse::<SocketAddr>() else {
                f.errors
                    .push(format!("{what}: portal {p:?} is not IP:PORT"));
                continue;
            };
            match listen.iter().filter(|l| **l == a).count() {
                0 => f.errors.push(format!(
                    "{what}: portal {p:?} is not one of the listen portals"
                )),
                1 => {}
                _ => f
                    .errors
                    .push(format!("{what}: portal {p:?} is listed twice in listen")),
            }
            if !seen.insert(a) {
                f.errors
                    .push(format!("{what}: portal {p:?} is already in another group"));
            }
        }
    }
}

/// Each `listen` portal with its tag, in `listen` order (unparsable
/// entries are left out: validation refuses them).
pub fn portal_tags(cfg: &Config) -> Vec<(SocketAddr, u16)> {
    cfg.listen
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .map(|a| (a, tag_of(cfg, a)))
        .collect()
}

fn tag_of(cfg: &Config, portal: SocketAddr) -> u16 {
    cfg.portal_groups
        .iter()
        .find(|g| g.portals.iter().any(|p| p.parse() == Ok(portal)))
        .map_or(DEFAULT_TAG, |g| g.tag)
}

/// The target port groups: every configured group, and tag 1
/// (active/optimized) when some portal falls into it by default.
pub fn group_settings(cfg: &Config) -> Vec<GroupSetting> {
    let mut v: Vec<GroupSetting> = cfg
        .portal_groups
        .iter()
        .map(|g| GroupSetting {
            id: g.tag,
            state: g.alua_state,
            preferred: g.preferred,
        })
        .collect();
    let default_used = portal_tags(cfg).iter().any(|(_, t)| *t == DEFAULT_TAG);
    if default_used && !v.iter().any(|g| g.id == DEFAULT_TAG) {
        v.push(GroupSetting {
            id: DEFAULT_TAG,
            state: AccessState::ActiveOptimized,
            preferred: false,
        });
    }
    v.sort_by_key(|g| g.id);
    v
}

/// Why a reload from `current` to `next` cannot regroup the portals in
/// place, if it would: tags and memberships are fixed until a restart
/// (initiators have built their paths on them).
pub fn membership_change(current: &Config, next: &Config) -> Option<String> {
    let ids = |c: &Config| group_settings(c).iter().map(|g| g.id).collect::<Vec<_>>();
    let same = portal_tags(current) == portal_tags(next) && ids(current) == ids(next);
    (!same).then(|| {
        "portal groups: tags or portal membership changed; that needs a restart \
         (a reload may change alua_state and preferred only)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    const TARGET: &str = "[[target]]\nname = \"iqn.2026-11.dev.gentgt:t\"\n[[target.lun]]\nid = 0\nbackend = \"memory\"\nsize = \"1MiB\"\n";

    fn cfg(head: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{head}\n{TARGET}"), "t")
    }

    fn errors(head: &str) -> Vec<String> {
        match cfg(head) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn groups_give_tags_and_states() {
        let c = cfg("listen = [\"127.0.0.1:3260\", \"127.0.0.1:3261\", \"127.0.0.1:3262\"]\n\
             [[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3261\"]\nalua_state = \"standby\"\npreferred = true")
        .unwrap();
        let tags: Vec<u16> = portal_tags(&c).iter().map(|(_, t)| *t).collect();
        assert_eq!(tags, [1, 2, 1]);
        let g = group_settings(&c);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].id, g[0].state), (1, AccessState::ActiveOptimized));
        assert_eq!(
            (g[1].id, g[1].state, g[1].preferred),
            (2, AccessState::Standby, true)
        );
        // Without groups: one group, tag 1, as before.
        let c = cfg("").unwrap();
        assert_eq!(group_settings(&c).len(), 1);
        assert_eq!(portal_tags(&c)[0].1, 1);
    }

    #[test]
    fn bad_groups_are_named() {
        let l = "listen = [\"127.0.0.1:3260\", \"127.0.0.1:3261\"]\n";
        let e = errors(&format!(
            "{l}[[portal_group]]\ntag = 0\nportals = [\"127.0.0.1:3260\"]"
        ));
        assert!(e[0].contains("tag must be"), "{e:?}");
        let e = errors(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:9999\"]"
        ));
        assert!(e[0].contains("not one of the listen portals"), "{e:?}");
        let e = errors(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3260\"]\n\
             [[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3261\"]"
        ));
        assert!(e[0].contains("defined twice"), "{e:?}");
        let e = errors(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3260\"]\n\
             [[portal_group]]\ntag = 3\nportals = [\"127.0.0.1:3260\"]"
        ));
        assert!(e[0].contains("already in another group"), "{e:?}");
        let e = errors(&format!("{l}[[portal_group]]\ntag = 2\nportals = []"));
        assert!(e[0].contains("no portals"), "{e:?}");
        let bad = cfg(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3260\"]\nalua_state = \"offline\""
        ));
        assert!(matches!(bad, Err(ConfigError::Parse { .. })), "{bad:?}");
    }

    #[test]
    fn only_states_may_change_on_reload() {
        let l = "listen = [\"127.0.0.1:3260\", \"127.0.0.1:3261\"]\n";
        let a = cfg(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3261\"]"
        ))
        .unwrap();
        let b = cfg(&format!(
            "{l}[[portal_group]]\ntag = 2\nportals = [\"127.0.0.1:3261\"]\nalua_state = \"unavailable\""
        ))
        .unwrap();
        assert_eq!(membership_change(&a, &b), None);
        let c = cfg(&format!(
            "{l}[[portal_group]]\ntag = 3\nportals = [\"127.0.0.1:3261\"]"
        ))
        .unwrap();
        assert!(membership_change(&a, &c).unwrap().contains("restart"));
        let d = cfg(l).unwrap();
        assert!(membership_change(&a, &d).is_some());
    }
}
