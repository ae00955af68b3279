//! Encoding and decoding of the CBT wire contract, versions 1 and 2.

use super::view::live_grant;
use super::*;

#[test]
fn cdbs_follow_the_layout() {
    let c = get_changed_extents_cdb(0x0102030405060708, 0xaa_bbcc_ddee).unwrap();
    assert_eq!(c[0..2], [0xc0, 0x02]);
    assert_eq!(c[2..10], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(c[10..15], [0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    assert_eq!(c[15], 0);
    assert!(get_changed_extents_cdb(0, 1 << 40).is_err());
    let r = renew_cdb(7, 9);
    assert_eq!((r[1], r[9], r[13], r[14]), (4, 7, 9, 0));
    let a = acquire_cdb(1, 2);
    assert_eq!((a[1], a[5], a[9], a[10]), (3, 1, 2, 0));
}

fn page(descs: &[(u64, u32, u64)], next: u64, complete: bool) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN];
    d[0..4].copy_from_slice(&((descs.len() * DESCRIPTOR_LEN) as u32).to_be_bytes());
    d[4] = complete as u8;
    d[8..16].copy_from_slice(&5u64.to_be_bytes());
    d[16..24].copy_from_slice(&next.to_be_bytes());
    for &(lba, n, g) in descs {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&g.to_be_bytes());
    }
    d
}

#[test]
fn changes_parser_is_strict() {
    let ok = parse_changes(&page(&[(0, 8, 3), (16, 8, 5)], 64, true), 2, 0).unwrap();
    assert_eq!(ok.descriptors.len(), 2);
    // Overlap, generation outside the window, NEXT LBA inside, length.
    assert!(parse_changes(&page(&[(0, 8, 3), (4, 8, 5)], 64, true), 2, 0).is_err());
    assert!(parse_changes(&page(&[(0, 8, 2)], 64, true), 2, 0).is_err());
    assert!(parse_changes(&page(&[(0, 8, 6)], 64, true), 2, 0).is_err());
    assert!(parse_changes(&page(&[(0, 8, 3)], 4, false), 2, 0).is_err());
    assert!(parse_changes(&page(&[(0, 8, 3)], 64, true), 2, 1).is_err());
    let mut cut = page(&[(0, 8, 3)], 64, true);
    cut.pop();
    assert!(matches!(
        parse_changes(&cut, 2, 0),
        Err(CbtWireError::Length { .. })
    ));
    let mut res = page(&[], 64, true);
    res[41] = 1;
    assert!(matches!(
        parse_changes(&res, 2, 0),
        Err(CbtWireError::Reserved { at: 41, .. })
    ));
}

#[test]
fn sense_names_are_readable() {
    let s = describe_status(2, &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x02]);
    assert!(s.contains("ACCESS DENIED"), "{s}");
    assert!(describe_status(0x18, &[]).contains("RESERVATION CONFLICT"));
}

/// A valid REPORT TRACKING reply of `version`; views on with LUN 130 in
/// version 2, no view open.
fn report(version: u8) -> Vec<u8> {
    let mut d = vec![0u8; REPORT_LEN];
    d[0] = version;
    d[1] = 1;
    d[4..8].copy_from_slice(&128u32.to_be_bytes());
    d[8..12].copy_from_slice(&512u32.to_be_bytes());
    d[16..24].copy_from_slice(&4096u64.to_be_bytes());
    d[40..48].copy_from_slice(&9u64.to_be_bytes());
    if version == 2 {
        d[80..88].copy_from_slice(&(1u64 << 20).to_be_bytes());
        d[88..90].copy_from_slice(&130u16.to_be_bytes());
    }
    d
}

fn views_off(mut d: Vec<u8>) -> Vec<u8> {
    d[80..88].fill(0);
    d[88..90].copy_from_slice(&NO_VIEW_LUN.to_be_bytes());
    d
}

#[test]
fn report_version_1_has_no_views() {
    let r = parse_report(&report(1)).unwrap();
    assert_eq!(r.version, 1);
    assert!(!r.views_supported());
    // Version 1 reserves the view flags and bytes 60-95.
    let mut d = report(1);
    d[1] |= 0x10;
    assert!(parse_report(&d).is_err());
    let mut d = report(1);
    d[89] = 1;
    assert!(matches!(
        parse_report(&d),
        Err(CbtWireError::Reserved { at: 89, .. })
    ));
    let mut d = report(1);
    d[0] = 3;
    assert!(matches!(
        parse_report(&d),
        Err(CbtWireError::Version { got: 3, .. })
    ));
}

#[test]
fn report_version_2_view_fields() {
    let r = parse_report(&report(2)).unwrap();
    let v = r.views.unwrap();
    assert_eq!((v.view_lun, v.space_limit, v.generation), (130, 1 << 20, 0));
    assert!(!r.flags.view_open);

    let mut d = report(2);
    d[1] |= 0x30; // VIEW OPEN + VIEW LOST
    d[60..68].copy_from_slice(&7u64.to_be_bytes());
    d[68..72].copy_from_slice(&1234u32.to_be_bytes());
    d[72..80].copy_from_slice(&65536u64.to_be_bytes());
    let r = parse_report(&d).unwrap();
    assert!(r.flags.view_open && r.flags.view_lost);
    let v = r.views.unwrap();
    assert_eq!(
        (v.generation, v.lease_remaining_ms, v.space_used),
        (7, 1234, 65536)
    );

    let off = parse_report(&views_off(report(2))).unwrap();
    assert_eq!(off.version, 2);
    assert!(!off.views_supported());
}

#[test]
fn report_version_2_inconsistent_views_are_refused() {
    let bad = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = report(2);
        f(&mut d);
        parse_report(&d).unwrap_err()
    };
    // VIEW LOST without VIEW OPEN.
    bad(&|d| d[1] |= 0x20);
    // Reserved flag bits and bytes 90-95.
    bad(&|d| d[1] |= 0x40);
    assert!(matches!(
        bad(&|d| d[95] = 1),
        CbtWireError::Reserved { at: 95, .. }
    ));
    // Views off on one field only.
    bad(&|d| d[80..88].fill(0));
    bad(&|d| d[88..90].fill(0xff));
    // A view open whose generation is 0 or not below the open generation.
    bad(&|d| d[1] |= 0x10);
    bad(&|d| {
        d[1] |= 0x10;
        d[60..68].copy_from_slice(&9u64.to_be_bytes());
    });
    // A generation or lease with no view open.
    bad(&|d| d[67] = 3);
    bad(&|d| d[71] = 3);
    // A view open on a LUN with views off.
    let mut d = views_off(report(2));
    d[1] |= 0x10;
    d[67] = 3;
    assert!(parse_report(&d).is_err());
    // Length.
    assert!(matches!(
        parse_report(&report(2)[..90]),
        Err(CbtWireError::Length { .. })
    ));
}

fn vpd(version: u8, flags: u8) -> Vec<u8> {
    let mut d = vec![0u8; VPD_LEN];
    d[1] = VPD_PAGE;
    d[3] = VPD_PAGE_LEN as u8;
    d[4] = version;
    d[5] = flags;
    d[8..12].copy_from_slice(&128u32.to_be_bytes());
    d[28..36].copy_from_slice(&4u64.to_be_bytes());
    d
}

#[test]
fn vpd_carries_the_version() {
    assert_eq!(parse_vpd(&vpd(1, 1)).unwrap().version, 1);
    let v = parse_vpd(&vpd(2, 0x11)).unwrap();
    assert_eq!(v.version, 2);
    assert!(v.flags.view_open);
    assert!(parse_vpd(&vpd(1, 0x11)).is_err());
    assert!(parse_vpd(&vpd(3, 1)).is_err());
    assert!(parse_vpd(&vpd(2, 1)[..63]).is_err());
}

#[test]
fn view_cdbs_follow_the_layout() {
    let o = open_view_cdb(0x01020304, 0x0a0b0c0d);
    assert_eq!(o[0..2], [0xc0, 0x06]);
    assert_eq!(o[2..10], [1, 2, 3, 4, 0xa, 0xb, 0xc, 0xd]);
    assert!(o[10..].iter().all(|&b| b == 0));
    let r = renew_view_cdb(0x1122334455667788, 0x99aabbcc);
    assert_eq!(r[1], 0x07);
    assert_eq!(r[2..10], 0x1122334455667788u64.to_be_bytes());
    assert_eq!(r[10..14], [0x99, 0xaa, 0xbb, 0xcc]);
    assert_eq!((r[14], r[15]), (0, 0));
    let x = release_view_cdb(5);
    assert_eq!((x[1], x[9]), (0x08, 5));
    assert!(x[10..].iter().all(|&b| b == 0));
    let a = get_changed_extents_cdb_as_of(3, 8, true).unwrap();
    assert_eq!(a[1], 0x22);
    assert_eq!(a[2..15], get_changed_extents_cdb(3, 8).unwrap()[2..15]);
    assert_eq!(get_changed_extents_cdb_as_of(3, 8, false).unwrap()[1], 0x02);
    assert!(get_changed_extents_cdb_as_of(0, 1 << 40, true).is_err());
}

fn grant(token: u64, generation: u64, lease: u32, lun: u16) -> Vec<u8> {
    let mut d = vec![0u8; VIEW_LEN];
    d[0..8].copy_from_slice(&token.to_be_bytes());
    d[8..16].copy_from_slice(&generation.to_be_bytes());
    d[16..20].copy_from_slice(&lease.to_be_bytes());
    d[20..22].copy_from_slice(&lun.to_be_bytes());
    d
}

#[test]
fn view_reply_is_parsed_strictly() {
    let g = parse_view(&grant(42, 7, 300_000, 128)).unwrap();
    assert_eq!(
        g,
        ViewGrant {
            token: 42,
            generation: 7,
            lease_ms: 300_000,
            view_lun: 128
        }
    );
    assert!(matches!(
        parse_view(&grant(1, 1, 1, 1)[..31]),
        Err(CbtWireError::Length { got: 31, .. })
    ));
    let mut long = grant(1, 1, 1, 1);
    long.push(0);
    assert!(parse_view(&long).is_err());
    let mut r = grant(1, 1, 1, 1);
    r[22] = 1;
    assert!(matches!(
        parse_view(&r),
        Err(CbtWireError::Reserved { at: 22, .. })
    ));
    // An open grant needs a generation and a view LUN.
    assert!(live_grant(parse_view(&grant(1, 0, 1, 1)).unwrap()).is_err());
    assert!(live_grant(parse_view(&grant(1, 1, 1, NO_VIEW_LUN)).unwrap()).is_err());
}

#[test]
fn a_lost_view_is_recognised() {
    let sense = |k: u8, a: u8, q: u8| {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = k;
        s[7] = 10;
        s[12] = a;
        s[13] = q;
        s
    };
    let lost = InitiatorError::ScsiCheck {
        status: 2,
        sense: sense(0x0b, 0x55, 0x03),
    };
    assert!(view_lost(&lost));
    assert!(CbtClientError::from(lost).is_view_lost());
    assert!(CbtClientError::ViewLost.is_view_lost());
    let other = InitiatorError::ScsiCheck {
        status: 2,
        sense: sense(0x0b, 0x55, 0x00),
    };
    assert!(!view_lost(&other));
    assert!(describe_status(2, &sense(0x0b, 0x55, 0x03)).contains("view was lost"));
    assert!(describe_status(2, &sense(0x02, 0x04, 0x00)).contains("NOT READY"));
}
