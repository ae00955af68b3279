//! Text requests in full feature phase: SendTargets (discovery, and a
//! normal session asking about its own target). The exchange itself —
//! requests continued with the C bit, long answers split over several
//! responses — is `proto::discovery::TextResponder`'s; this file only says
//! which targets a session may see.

use super::session::Target;
use crate::proto::conn::Env;
use crate::proto::login::SessionType;
use std::net::SocketAddr;

impl Env for Target {
    /// A LUN not mapped for this initiator does not exist for it.
    fn lun_exists(&self, lun: u64) -> bool {
        (self.device.as_ref()).is_some_and(|d| d.lu_for(&self.nexus, lun).is_some())
    }

    fn targets(&self, _: SessionType, _: Option<&str>) -> Vec<(String, Vec<String>)> {
        self.visible_targets()
    }
}

impl Target {
    /// Targets with every portal they are served on (RFC 7143 Appendix C:
    /// SendTargets returns all of a target's addresses, which multipath
    /// hosts rely on to find every path): all targets in a discovery
    /// session, only its own in a normal one.
    fn visible_targets(&self) -> Vec<(String, Vec<String>)> {
        let registry = self.shared.registry.load();
        // Each portal with its own group's tag (RFC 7143 §13.3).
        let addrs: Vec<String> = announced_portals(&self.shared.portals, self.local_addr)
            .iter()
            .map(|&(a, i)| {
                let key = self.shared.portal_keys.get(i).copied().unwrap_or(a);
                format!("{a},{}", registry.tag_of(key))
            })
            .collect();
        registry
            .targets
            .keys()
            .filter(|n| {
                self.kind == SessionType::Discovery || Some(*n) == self.target_name.as_ref()
            })
            .map(|n| (n.clone(), addrs.clone()))
            .collect()
    }
}

/// The addresses to announce for the bound `portals`, as seen from a
/// connection that reached us on `local`. A portal bound to a wildcard
/// (0.0.0.0, [::]) must not be announced as such: it is announced with the
/// address this connection reached (the host answers there on every
/// port), or left out when that address is of a family it cannot serve.
/// Each address comes with the index of the portal it stands for.
fn announced_portals(
    portals: &[SocketAddr],
    local: Option<SocketAddr>,
) -> Vec<(SocketAddr, usize)> {
    let mut out: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, p) in portals.iter().enumerate() {
        let a = match (p.ip().is_unspecified(), local) {
            (false, _) => *p,
            // A [::] socket is dual-stack: it serves IPv4 clients too.
            (true, Some(l)) if p.is_ipv6() || l.is_ipv4() => SocketAddr::new(l.ip(), p.port()),
            (true, _) => continue,
        };
        if !out.iter().any(|(o, _)| *o == a) {
            out.push((a, i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::announced_portals;
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(v: Vec<(SocketAddr, usize)>) -> Vec<SocketAddr> {
        v.into_iter().map(|(a, _)| a).collect()
    }

    #[test]
    fn every_portal_is_announced() {
        let bound = [a("127.0.0.1:3260"), a("10.0.0.5:3261")];
        let got = announced_portals(&bound, Some(a("127.0.0.1:3260")));
        assert_eq!(got, [(bound[0], 0), (bound[1], 1)]);
    }

    #[test]
    fn wildcard_portals_take_the_reached_address() {
        let bound = [a("0.0.0.0:3260"), a("10.0.0.5:3261"), a("[::]:3262")];
        let got = addrs(announced_portals(&bound, Some(a("10.0.0.5:3261"))));
        assert_eq!(
            got,
            [a("10.0.0.5:3260"), a("10.0.0.5:3261"), a("10.0.0.5:3262")]
        );
        // An IPv6 client cannot use an IPv4 wildcard portal.
        let got = announced_portals(&bound, Some(a("[fd00::1]:3262")));
        assert_eq!(got, [(a("10.0.0.5:3261"), 1), (a("[fd00::1]:3262"), 2)]);
        // Without the connection's address, a wildcard says nothing.
        assert_eq!(announced_portals(&bound, None), [(a("10.0.0.5:3261"), 1)]);
    }
}
