//! MODE SELECT round trips and refusals, VPD 86h, START STOP UNIT.

use super::*;

const INVALID_PARAM_FIELD: (u8, u8, u8) = INVALID_PARAM;
const MODE_CHANGED: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x2a, 0x01);

fn sense6(pc: u8, page: u8) -> Vec<u8> {
    vec![0x1a, 0x08, (pc << 6) | page, 0, 255, 0]
}

/// The page as MODE SENSE(6) returns it (DBD set, so right after the header).
fn get_page(h: &Harness, pc: u8, page: u8) -> Vec<u8> {
    let d = h.good(&sense6(pc, page), &[], 255).data_in;
    d[4..].to_vec()
}

fn select6(h: &Harness, page: &[u8]) -> ScsiResult {
    let mut p = vec![0u8; 4];
    p.extend_from_slice(page);
    h.exec(0, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p, p.len() as u32)
}

#[test]
fn changeable_masks() {
    let h = Harness::new();
    assert_eq!(get_page(&h, 1, 0x08)[2], 0x04); // WCE
    let c = get_page(&h, 1, 0x0a);
    assert_eq!((c[2], c[4]), (0x04, 0x08)); // D_SENSE, SWP
    assert!(get_page(&h, 1, 0x1c)[2..].iter().all(|&b| b == 0));
}

#[test]
fn swp_round_trip_and_write_protect() {
    let h = Harness::new();
    let other = nexus(2);
    h.srv.nexus_added(&other);
    let mut ctl = get_page(&h, 0, 0x0a);
    ctl[4] |= 0x08;
    assert_eq!(select6(&h, &ctl).status, status::GOOD);
    assert_eq!(get_page(&h, 0, 0x0a)[4] & 0x08, 0x08);
    // Defaults are unchanged; WP shows in the device-specific parameter.
    assert_eq!(get_page(&h, 2, 0x0a)[4] & 0x08, 0);
    assert_eq!(h.good(&sense6(0, 0x0a), &[], 255).data_in[2] & 0x80, 0x80);
    let data = vec![0u8; 512];
    h.check(
        &write10(0, 1, false),
        &data,
        512,
        (key::DATA_PROTECT, 0x27, 0x02),
    );
    h.good(&read10(0, 1), &[], 512);
    // The other nexus hears about it (after its power-on condition).
    let tur = |n: &Nexus| {
        h.srv
            .execute(&ScsiCommand {
                lun: 0,
                cdb: &[0; 16],
                data_out: &[],
                expected_len: 0,
                nexus: n,
            })
            .sense_codes()
    };
    assert_eq!(tur(&other), Some(POWER_ON));
    assert_eq!(tur(&other), Some(MODE_CHANGED));
    assert_eq!(tur(&h.nexus), None);
    ctl[4] &= !0x08;
    assert_eq!(select6(&h, &ctl).status, status::GOOD);
    h.good(&write10(0, 1, false), &data, 512);
}

#[test]
fn d_sense_switches_sense_format() {
    let h = Harness::new();
    let mut ctl = get_page(&h, 0, 0x0a);
    ctl[2] |= 0x04;
    assert_eq!(select6(&h, &ctl).status, status::GOOD);
    let r = h.exec(0, &read10(u32::MAX, 1), &[], 512);
    let s = r.sense.unwrap();
    assert_eq!((s[0], s[1], s[2]), (0x72, key::ILLEGAL_REQUEST, 0x21));
    // LUN reset restores the defaults.
    h.srv.lun_reset(0, &h.nexus);
    assert_eq!(get_page(&h, 0, 0x0a)[2] & 0x04, 0);
}

#[test]
fn refusals() {
    let h = Harness::new();
    let ctl = get_page(&h, 0, 0x0a);
    // A non-changeable field altered (QUEUE ALGORITHM MODIFIER).
    let mut bad = ctl.clone();
    bad[3] = 0x00;
    let r = select6(&h, &bad);
    assert_eq!(r.sense_codes(), Some(INVALID_PARAM_FIELD));
    assert_eq!(&r.sense.unwrap()[15..18], &[0x80 | 0x08 | 4, 0, 7]);
    // Wrong page length.
    let mut bad = ctl.clone();
    bad[1] = 9;
    assert_eq!(select6(&h, &bad).sense_codes(), Some(INVALID_PARAM_FIELD));
    // Unknown page, PS set.
    assert_eq!(
        select6(&h, &[0x19, 2, 0, 0]).sense_codes(),
        Some(INVALID_PARAM_FIELD)
    );
    let mut ps = ctl.clone();
    ps[0] |= 0x80;
    assert_eq!(select6(&h, &ps).sense_codes(), Some(INVALID_PARAM_FIELD));
    // Truncated page.
    let r = select6(&h, &ctl[..8]);
    assert_eq!(r.sense_codes(), Some((key::ILLEGAL_REQUEST, 0x1a, 0)));
    // PF 0 and SP 1.
    let p = [0u8; 4];
    h.check(&[0x15, 0x00, 0, 0, 4, 0], &p, 4, INVALID_FIELD);
    h.check(&[0x15, 0x11, 0, 0, 4, 0], &p, 4, INVALID_FIELD);
    // A block descriptor may restate the geometry but not change it.
    let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
    let sel = [0x15, 0x10, 0, 0, 12, 0];
    h.good(&sel, &p, 12);
    p[10] = 0x10;
    h.check(&sel, &p, 12, INVALID_PARAM_FIELD);
    // MODE SELECT(10) with the caching page: WCE off and back on.
    let mut cache = get_page(&h, 0, 0x08);
    cache[2] = 0;
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&cache);
    h.good(
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0],
        &p,
        p.len() as u32,
    );
    assert_eq!(get_page(&h, 0, 0x08)[2], 0);
}

#[test]
fn extended_inquiry_vpd() {
    let h = Harness::new();
    let v = h.good(&[0x12, 1, 0x86, 0, 255, 0], &[], 255).data_in;
    assert_eq!((v[1], v[3], v.len()), (0x86, 0x3c, 64));
    assert_eq!(v[5], 0x01); // SIMPSUP only
    let pages = h.good(&[0x12, 1, 0, 0, 255, 0], &[], 255).data_in;
    assert!(pages[4..].windows(2).all(|w| w[0] < w[1]));
    assert!(pages[4..].contains(&0x86) && pages[4..].contains(&0x8f));
}

#[test]
fn start_stop_unit_fields() {
    let h = Harness::new();
    h.good(&[0x1b, 0, 0, 0, 0x01, 0], &[], 0);
    h.good(&[0x1b, 1, 0, 0, 0x00, 0], &[], 0);
    h.good(&[0x1b, 0, 0, 0, 0x30, 0], &[], 0); // STANDBY
    h.check(&[0x1b, 0, 0, 0, 0x02, 0], &[], 0, INVALID_FIELD); // LOEJ
    h.check(&[0x1b, 0, 0, 0, 0x40, 0], &[], 0, INVALID_FIELD); // reserved PC
    h.check(&[0x1b, 0, 0, 2, 0x10, 0], &[], 0, INVALID_FIELD); // modifier
    h.good(&[0x1e, 0, 0, 0, 1, 0], &[], 0);
    h.check(&[0x1e, 0, 0, 0, 2, 0], &[], 0, INVALID_FIELD);
}
