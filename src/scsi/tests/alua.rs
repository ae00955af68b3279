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

fn rtpg(format: u8, alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [
        0xa3,
        (format << 5) | 0x0a,
        0,
        0,
        0,
        0,
        a[0],
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

#[test]
fn report_target_port_groups_both_formats() {
    let (h, groups) = two_groups(AccessState::Standby);
    let d = h.good(&rtpg(0, 1024), &[], 1024).data_in;
    assert_eq!(d.len(), 4 + 24);
    assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 24);
    // Group 1: active/optimized, every supported state but offline and
    // LBA dependent, one port (relative port 1).
    assert_eq!(&d[4..16], &[0x00, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(&d[16..28], &[0x02, 0x8f, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
    let e = h.good(&rtpg(1, 1024), &[], 1024).data_in;
    assert_eq!(e.len(), 8 + 24);
    assert_eq!(u32::from_be_bytes([e[0], e[1], e[2], e[3]]), 24);
    assert_eq!(
        (e[4], e[5]),
        (0x10, crate::scsi::spc::rtpg::IMPLICIT_TRANSITION_SECS)
    );
    assert_eq!(&e[8..], &d[4..]);
    // The allocation length truncates; a reserved format is refused.
    let r = h.good(&rtpg(1, 6), &[], 1024);
    assert_eq!((r.data_in.len(), r.transfer_len), (6, 6));
    h.check(&rtpg(2, 1024), &[], 1024, INVALID_FIELD);
    // A changed state shows, with STATUS CODE 02h (implicit change).
    groups.apply(&[setting(2, AccessState::ActiveOptimized)]);
    let d = h.good(&rtpg(0, 1024), &[], 1024).data_in;
    assert_eq!((d[16], d[21]), (0x00, 0x02));
}

#[test]
fn rtpg_is_a_supported_operation_code() {
    let h = Harness::new();
    // REPORT SUPPORTED OPERATION CODES, one command: A3h SA 0Ah.
    let cdb = [0xa3, 0x0c, 0x02, 0xa3, 0, 0x0a, 0, 0, 1, 0, 0, 0];
    let d = h.good(&cdb, &[], 256).data_in;
    assert_eq!(d[1] & 0x07, 0x03, "SUPPORT: supported as in the standard");
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 12, "CDB size");
}

const NOT_READY: u8 = key::NOT_READY;

#[test]
fn each_state_refuses_what_spc_says() {
    let tur = [0u8; 6];
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let mode_sense = [0x1a, 0, 0x3f, 0, 255, 0];
    for (state, ascq) in [
        (AccessState::Standby, 0x0b),
        (AccessState::Unavailable, 0x0c),
        (AccessState::Transitioning, 0x0a),
    ] {
        let (h, _) = two_groups(state);
        let n = on_port(9, 2);
        for cdb in [&tur[..], &read[..]] {
            let r = h.exec_as(&n, 0, cdb, &[], 512);
            assert_eq!(
                r.sense_codes(),
                Some((NOT_READY, 0x04, ascq)),
                "{state:?} {cdb:02x?}"
            );
        }
        // Always allowed: INQUIRY, REPORT LUNS, RTPG, REQUEST SENSE.
        for cdb in [
            &inquiry(false, 0, 96)[..],
            &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0][..],
            &rtpg(0, 256)[..],
            &[0x03, 0, 0, 0, 18, 0][..],
        ] {
            let r = h.exec_as(&n, 0, cdb, &[], 256);
            assert_eq!(r.status, status::GOOD, "{state:?} {cdb:02x?}");
        }
        // MODE SENSE only in standby.
        let r = h.exec_as(&n, 0, &mode_sense, &[], 255);
        let want_good = state == AccessState::Standby;
        assert_eq!(r.status == status::GOOD, want_good, "{state:?} MODE SENSE");
        // The other port, active/optimized, serves everything.
        let r = h.exec_as(&on_port(10, 1), 0, &read, &[], 512);
        assert_eq!(r.status, status::GOOD);
    }
    let (h, _) = two_groups(AccessState::ActiveNonOptimized);
    let r = h.exec_as(&on_port(9, 2), 0, &read, &[], 512);
    assert_eq!(r.status, status::GOOD, "active/non-optimized serves I/O");
}

#[test]
fn a_state_change_is_a_unit_attention_on_every_nexus() {
    let (h, groups) = two_groups(AccessState::ActiveNonOptimized);
    let (a, b) = (on_port(1, 1), on_port(2, 2));
    h.srv.nexus_added(&a);
    h.srv.nexus_added(&b);
    for n in [&a, &b] {
        assert_eq!(
            h.exec_as(n, 0, &[0; 6], &[], 0).sense_codes(),
            Some((6, 0x29, 0))
        );
    }
    assert_eq!(groups.apply(&[setting(2, AccessState::Standby)]), [2]);
    h.srv.access_states_changed();
    for n in [&a, &b] {
        let r = h.exec_as(n, 0, &[0; 6], &[], 0);
        assert_eq!(r.sense_codes(), Some((6, 0x2a, 0x06)));
    }
    // Then the standby port answers NOT READY, the other GOOD.
    let r = h.exec_as(&b, 0, &[0; 6], &[], 0);
    assert_eq!(r.sense_codes(), Some((NOT_READY, 0x04, 0x0b)));
    assert_eq!(h.exec_as(&a, 0, &[0; 6], &[], 0).status, status::GOOD);
}
