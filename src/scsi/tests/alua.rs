//! ALUA: INQUIRY's TPGS and VPD 83h per target port.

use super::*;
use crate::scsi::alua::{AccessState, GroupSetting, PortGroups};

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let [hi, lo] = alloc.to_be_bytes();
    [0x12, evpd as u8, page, hi, lo, 0]
}

fn setting(id: u16, state: AccessState) -> GroupSetting {
    GroupSetting {
        id,
        state,
        preferred: false,
    }
}

/// LUN 0 reachable through groups 1 (active/optimized) and 2 (`second`).
pub fn two_groups(second: AccessState) -> (Harness, Arc<PortGroups>) {
    let groups = Arc::new(PortGroups::new(&[
        setting(1, AccessState::ActiveOptimized),
        setting(2, second),
    ]));
    let mut h = Harness::new();
    h.srv = h.srv.with_port_groups(groups.clone());
    (h, groups)
}

pub fn on_port(id: u64, port: u16) -> Nexus {
    Nexus {
        relative_port: port,
        ..nexus(id)
    }
}

/// (designator type, association, value) of every VPD 83h descriptor.
fn designators(d: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut at = 4;
    let mut found = Vec::new();
    while at + 4 <= d.len() {
        let len = d[at + 3] as usize;
        found.push((
            d[at + 1] & 0x0f,
            (d[at + 1] >> 4) & 3,
            d[at + 4..at + 4 + len].to_vec(),
        ));
        at += 4 + len;
    }
    assert_eq!(at, d.len());
    found
}

#[test]
fn inquiry_reports_implicit_alua_and_multiple_ports() {
    let h = Harness::new();
    let d = h.good(&inquiry(false, 0, 96), &[], 96).data_in;
    assert_eq!(d[5] & 0x30, 0x10, "TPGS 01b");
    assert_eq!(d[6] & 0x10, 0, "one port: no MULTIP");
    let (h, _) = two_groups(AccessState::Standby);
    let d = h.good(&inquiry(false, 0, 96), &[], 96).data_in;
    assert_eq!(d[5] & 0x30, 0x10);
    assert_eq!(d[6] & 0x10, 0x10, "MULTIP");
}

#[test]
fn vpd_83_names_the_port_and_its_group() {
    let (h, _) = two_groups(AccessState::ActiveNonOptimized);
    for port in [1u16, 2] {
        let n = on_port(7, port);
        let r = h.exec_as(&n, 0, &inquiry(true, 0x83, 1024), &[], 1024);
        assert_eq!(r.status, status::GOOD);
        let found = designators(&r.data_in);
        let [hi, lo] = port.to_be_bytes();
        let rel = found
            .iter()
            .find(|f| f.0 == 4)
            .expect("relative target port");
        assert_eq!((rel.1, &rel.2[..]), (1, &[0, 0, hi, lo][..]));
        let tpg = found.iter().find(|f| f.0 == 5).expect("target port group");
        assert_eq!((tpg.1, &tpg.2[..]), (1, &[0, 0, hi, lo][..]));
        let name = found.iter().find(|f| f.0 == 8 && f.1 == 1).unwrap();
        let name = String::from_utf8(name.2.clone()).unwrap();
        assert!(name.starts_with(&format!("iqn.2024-01.test:target,t,0x{port:04x}")));
    }
}
