use super::*;
use crate::scsi::cdb::TABLE;

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, evpd as u8, page, a[0], a[1], 0]
}

#[test]
fn test_unit_ready_and_unknown_opcode() {
    let h = Harness::new();
    let r = h.good(&[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.transfer_len, 0);
    h.check(&[0xff], &[], 0, INVALID_OPCODE);
    h.check(&[0x02], &[], 0, INVALID_OPCODE);
    // A known opcode with an unknown service action.
    let r = h.check(&[0x9e, 0x1f], &[], 64, INVALID_FIELD);
    assert_eq!(&r.sense.unwrap()[15..18], &[0xc8 | 4, 0, 1]);
}

#[test]
fn reserved_bits_and_control_byte() {
    let h = Harness::new();
    h.check(&[0, 0x01, 0, 0, 0, 0], &[], 0, INVALID_FIELD);
    h.check(&[0, 0, 0, 0, 0, 0x04], &[], 0, INVALID_FIELD); // NACA
    h.check(&[0, 0, 0, 0, 0, 0x01], &[], 0, INVALID_FIELD); // LINK
    // INQUIRY with the obsolete CMDDT bit.
    h.check(&[0x12, 0x02, 0, 0, 36, 0], &[], 36, INVALID_FIELD);
    // A CDB shorter than its opcode needs is refused, not indexed.
    let r = h.srv.execute(&ScsiCommand {
        lun: 0,
        cdb: &[0x28, 0, 0],
        data_out: &[],
        expected_len: 512,
        nexus: &h.nexus,
    });
    assert_eq!(r.sense_codes(), Some(INVALID_FIELD));
}

#[test]
fn unit_attention_once_after_nexus_added() {
    let h = Harness::new();
    h.srv.nexus_added(&h.nexus);
    // INQUIRY, REPORT LUNS do not report (or clear) the condition.
    h.good(&inquiry(false, 0, 96), &[], 96);
    h.good(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    h.check(&[0; 6], &[], 0, POWER_ON);
    h.good(&[0; 6], &[], 0);
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let h = Harness::new();
    h.srv.nexus_added(&h.nexus);
    let r = h.good(&[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!(r.data_in.len(), 18);
    assert_eq!(r.data_in[0], 0x70);
    assert_eq!((r.data_in[2], r.data_in[12], r.data_in[13]), POWER_ON);
    // Now cleared: NO SENSE, and TEST UNIT READY passes.
    let r = h.good(&[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!((r.data_in[2], r.data_in[12], r.data_in[13]), (0, 0, 0));
    h.good(&[0; 6], &[], 0);
    // Descriptor format on request.
    let r = h.good(&[0x03, 1, 0, 0, 252, 0], &[], 252);
    assert_eq!(r.data_in, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    // Allocation length honoured.
    let r = h.good(&[0x03, 0, 0, 0, 8, 0], &[], 252);
    assert_eq!((r.data_in.len(), r.transfer_len), (8, 8));
}

#[test]
fn lun_reset_reaches_every_nexus() {
    let h = Harness::new();
    let other = nexus(2);
    h.srv.nexus_added(&h.nexus);
    h.srv.nexus_added(&other);
    h.check(&[0; 6], &[], 0, POWER_ON);
    h.srv.lun_reset(0, &h.nexus);
    // The reset supersedes the other nexus's pending power-on condition.
    let tur = |n: &Nexus| {
        h.srv.execute(&ScsiCommand {
            lun: 0,
            cdb: &[0; 16],
            data_out: &[],
            expected_len: 0,
            nexus: n,
        })
    };
    assert_eq!(tur(&h.nexus).sense_codes(), Some(BUS_DEVICE_RESET));
    assert_eq!(tur(&other).sense_codes(), Some(BUS_DEVICE_RESET));
    assert_eq!(tur(&other).status, status::GOOD);
    h.srv.target_reset(&other);
    h.srv.nexus_removed(&other);
    assert_eq!(tur(&other).status, status::GOOD);
    assert_eq!(tur(&h.nexus).sense_codes(), Some(BUS_DEVICE_RESET));
}

#[test]
fn inquiry_standard_data() {
    let h = Harness::new();
    let r = h.good(&inquiry(false, 0, 255), &[], 255);
    let d = &r.data_in;
    assert!(d.len() >= 36);
    assert_eq!(r.transfer_len as usize, d.len());
    assert_eq!(d[0], 0x00);
    assert_eq!(d[2], 0x06);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(d[3] & 0xc0, 0); // AERC, TRMTSK
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"GENTGT  ");
    assert!(d[8..36].iter().all(|&c| (0x20..0x7f).contains(&c)));
    let descriptors: Vec<u16> = (0..8)
        .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
        .collect();
    assert!(descriptors.contains(&0x04c0) && descriptors.contains(&0x0460));
    // Every allocation length works and truncates.
    for alloc in 5..300u16 {
        let r = h.good(&inquiry(false, 0, alloc), &[], alloc as u32);
        assert_eq!(r.data_in.len(), (alloc as usize).min(d.len()));
        assert_eq!(&r.data_in[..], &d[..r.data_in.len()]);
    }
    // EDTL below the allocation length: only EDTL bytes, SPDTL stays.
    let r = h.good(&inquiry(false, 0, 255), &[], 10);
    assert_eq!((r.data_in.len(), r.transfer_len as usize), (10, d.len()));
    h.check(&inquiry(false, 1, 255), &[], 255, INVALID_FIELD);
}

#[test]
fn inquiry_vpd_pages() {
    let h = Harness::new();
    let r = h.good(&inquiry(true, 0, 255), &[], 255);
    let pages = r.data_in[4..].to_vec();
    assert_eq!(
        u16::from_be_bytes([r.data_in[2], r.data_in[3]]) as usize,
        pages.len()
    );
    assert!(pages.windows(2).all(|w| w[0] < w[1]));
    for &p in &[0x80, 0x83, 0xb0, 0xb1, 0xb2] {
        assert!(pages.contains(&p));
    }
    for &p in &pages {
        let r = h.good(&inquiry(true, p, 255), &[], 255);
        assert_eq!(r.data_in[1], p);
        let len = u16::from_be_bytes([r.data_in[2], r.data_in[3]]) as usize;
        assert_eq!(len + 4, r.data_in.len(), "page {p:02x}");
    }
    h.check(&inquiry(true, 0x99, 255), &[], 255, INVALID_FIELD);
    let serial = h.good(&inquiry(true, 0x80, 255), &[], 255);
    assert_eq!(&serial.data_in[4..], b"SER0001");
    let bl = h.good(&inquiry(true, 0xb0, 255), &[], 255).data_in;
    assert_eq!(bl[3], 0x3c);
    let max = u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]);
    assert_eq!(max as u64, crate::scsi::sbc::MAX_TRANSFER_BYTES / BS as u64);
    assert_ne!(&bl[20..28], &[0; 8]); // unmap limits (details: tests/thin.rs)
    let bdc = h.good(&inquiry(true, 0xb1, 255), &[], 255).data_in;
    assert_eq!(u16::from_be_bytes([bdc[4], bdc[5]]), 1);
    let lbp = h.good(&inquiry(true, 0xb2, 255), &[], 255).data_in;
    assert_eq!(lbp[5] & 0xe0, 0xe0); // LBPU, LBPWS, LBPWS10
}

#[test]
fn inquiry_device_identification() {
    let h = Harness::new();
    let d = h.good(&inquiry(true, 0x83, 1024), &[], 1024).data_in;
    let mut at = 4;
    let mut found = Vec::new();
    while at + 4 <= d.len() {
        let len = d[at + 3] as usize;
        let value = &d[at + 4..at + 4 + len];
        found.push((d[at] & 0x0f, d[at + 1] & 0x3f, value.to_vec()));
        at += 4 + len;
    }
    assert_eq!(at, d.len());
    let naa = found.iter().find(|f| f.1 == 0x03).unwrap();
    assert_eq!(naa.2, identity(1).naa.to_vec());
    let rel = found.iter().find(|f| f.1 == 0x14).unwrap();
    assert_eq!(rel.2, vec![0, 0, 0, 1]);
    let port = found.iter().find(|f| f.1 == 0x18).unwrap();
    assert_eq!(port.0, 3);
    assert_eq!(port.2.len() % 4, 0);
    let name = String::from_utf8(port.2.clone()).unwrap();
    assert_eq!(
        name.trim_end_matches('\0'),
        "iqn.2024-01.test:target,t,0x0001"
    );
}

#[test]
fn missing_lun() {
    let h = Harness::new();
    let r = h.exec(7, &inquiry(false, 0, 96), &[], 96);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.data_in[0], 0x7f);
    assert_eq!(
        h.exec(7, &[0; 6], &[], 0).sense_codes(),
        Some(LUN_NOT_SUPPORTED)
    );
    assert_eq!(
        h.exec(7, &read10(0, 1), &[], 512).sense_codes(),
        Some(LUN_NOT_SUPPORTED)
    );
    let r = h.exec(7, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    assert_eq!(r.status, status::GOOD);
    let r = h.exec(7, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(r.status, status::GOOD);
    assert_eq!((r.data_in[2], r.data_in[12]), (key::ILLEGAL_REQUEST, 0x25));
}

#[test]
fn report_luns() {
    let h = Harness::with_luns(vec![
        (0, mem_lu(8, false)),
        (5, mem_lu(8, false)),
        (300, mem_lu(8, false)),
    ]);
    let rl = |sel: u8, alloc: u32| {
        let a = alloc.to_be_bytes();
        vec![0xa0, 0, sel, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
    };
    let d = h.good(&rl(0, 256), &[], 256).data_in;
    assert_eq!(&d[..4], &24u32.to_be_bytes());
    assert_eq!(&d[8..16], &crate::scsi::lun::encode_lun(0));
    assert_eq!(&d[16..24], &[0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[24..32], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    assert_eq!(h.good(&rl(2, 256), &[], 256).data_in, d);
    assert_eq!(h.good(&rl(1, 256), &[], 256).data_in, vec![0; 8]);
    let r = h.good(&rl(0, 16), &[], 256);
    assert_eq!((r.data_in.len(), r.transfer_len), (16, 16));
    assert_eq!(&r.data_in[..4], &24u32.to_be_bytes());
    h.check(&rl(0, 15), &[], 256, INVALID_FIELD);
    h.check(&rl(7, 256), &[], 256, INVALID_FIELD);
}

fn mode_sense6(dbd: bool, pc: u8, page: u8, alloc: u8) -> Vec<u8> {
    vec![
        0x1a,
        if dbd { 0x08 } else { 0 },
        (pc << 6) | page,
        0,
        alloc,
        0,
    ]
}

/// Walk mode pages after the header and block descriptors.
fn page_codes(mut d: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while d.len() >= 2 {
        let len = d[1] as usize + 2;
        out.push((d[0] & 0x3f, len));
        d = &d[len.min(d.len())..];
    }
    out
}

#[test]
fn mode_sense6_pages() {
    let h = Harness::new();
    let d = h.good(&mode_sense6(false, 0, 0x3f, 255), &[], 255).data_in;
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10); // DPOFUA, not write protected
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &(BLOCKS as u32).to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    assert_eq!(
        page_codes(&d[12..]),
        vec![(0x08, 20), (0x0a, 12), (0x1c, 12)]
    );
    assert_eq!(d[14] & 0x04, 0x04); // WCE
    // Control page alone equals the one in all pages.
    let c = h.good(&mode_sense6(true, 0, 0x0a, 255), &[], 255).data_in;
    assert_eq!(c[3], 0);
    assert_eq!(&c[4..], &d[32..44]);
    assert_eq!(c[6] & 0x04, 0); // D_SENSE clear: fixed sense
    // Changeable values: only WCE in the caching page.
    let ch = h.good(&mode_sense6(true, 1, 0x08, 255), &[], 255).data_in;
    assert_eq!(&ch[4..7], &[0x08, 18, 0x04]);
    assert!(ch[7..].iter().all(|&b| b == 0));
    h.good(&mode_sense6(true, 2, 0x3f, 255), &[], 255);
    h.check(
        &mode_sense6(true, 3, 0x3f, 255),
        &[],
        255,
        (key::ILLEGAL_REQUEST, 0x39, 0),
    );
    h.check(&mode_sense6(true, 0, 0x19, 255), &[], 255, INVALID_FIELD);
    h.check(&[0x1a, 0, 0x3f, 0x01, 255, 0], &[], 255, INVALID_FIELD);
    h.good(&[0x1a, 0, 0x3f, 0xff, 255, 0], &[], 255);
    let r = h.good(&mode_sense6(false, 0, 0x3f, 4), &[], 4);
    assert_eq!((r.data_in.len(), r.transfer_len), (4, 4));
}

#[test]
fn mode_sense10_and_write_protect_bit() {
    let h = Harness::with_luns(vec![(0, mem_lu(BLOCKS, true))]);
    let d = h
        .good(&[0x5a, 0x10, 0x3f, 0, 0, 0, 0, 1, 0, 0], &[], 256)
        .data_in;
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
    assert_eq!(d[3], 0x90); // WP | DPOFUA
    assert_eq!(d[4] & 1, 1); // LONGLBA
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
    assert_eq!(&d[8..16], &BLOCKS.to_be_bytes());
    assert_eq!(&d[20..24], &BS.to_be_bytes());
    assert_eq!(page_codes(&d[24..]).len(), 3);
    let d = h
        .good(&[0x5a, 0, 0x08, 0, 0, 0, 0, 1, 0, 0], &[], 256)
        .data_in;
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
    let d = h
        .good(&[0x5a, 0x08, 0x08, 0, 0, 0, 0, 1, 0, 0], &[], 256)
        .data_in;
    assert_eq!(d.len(), 8 + 20);
}

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16) -> Vec<u8> {
    let s = sa.to_be_bytes();
    vec![
        0xa3,
        0x0c,
        options | if rctd { 0x80 } else { 0 },
        opcode,
        s[0],
        s[1],
        0,
        0,
        0xff,
        0xff,
        0,
        0,
    ]
}

#[test]
fn report_supported_opcodes_all() {
    let h = Harness::new();
    let d = h.good(&rsoc(false, 0, 0, 0), &[], 65535).data_in;
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
        d.len() - 4
    );
    // The Harness LUN has no CBT tracker, so opcode C0h is not listed.
    let rows: Vec<_> = TABLE.iter().filter(|d| d.opcode != 0xc0).collect();
    assert_eq!(d.len(), 4 + 8 * rows.len());
    for (desc, row) in d[4..].chunks(8).zip(rows.iter()) {
        assert_eq!(desc[0], row.opcode);
        assert_eq!(desc[5] & 0x01 != 0, row.service_action.is_some());
        if desc[5] & 0x01 == 0 {
            assert_eq!(&desc[2..4], &[0, 0]);
        }
        assert_eq!(u16::from_be_bytes([desc[6], desc[7]]) as usize, row.cdb_len);
    }
    let d = h.good(&rsoc(true, 0, 0, 0), &[], 65535).data_in;
    assert_eq!(d.len(), 4 + 20 * rows.len());
    for desc in d[4..].chunks(20) {
        assert_eq!(desc[5] & 0x02, 0x02);
        assert_eq!(&desc[8..10], &[0, 0x0a]);
    }
}

#[test]
fn report_supported_opcodes_one() {
    let h = Harness::new();
    let d = h.good(&rsoc(false, 1, 0x28, 0), &[], 65535).data_in;
    assert_eq!(d[1] & 0x07, 3);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
    assert_eq!(d[4], 0x28);
    assert_eq!(d[5] & 0x18, 0x18); // DPO and FUA are honoured
    assert_eq!(d[5] & 0xe0, 0); // no RDPROTECT
    h.check(&rsoc(false, 1, 0x9e, 0x10), &[], 65535, INVALID_FIELD);
    let d = h.good(&rsoc(true, 2, 0x9e, 0x10), &[], 65535).data_in;
    assert_eq!(d[1], 0x83);
    assert_eq!(d.len(), 4 + 16 + 12);
    // SPC-4 6.35.3: byte 1 of CDB USAGE DATA holds the service action.
    assert_eq!(&d[4..6], &[0x9e, 0x10]);
    h.check(&rsoc(false, 2, 0x28, 0), &[], 65535, INVALID_FIELD);
    let d = h.good(&rsoc(false, 1, 0xc7, 0), &[], 65535).data_in;
    assert_eq!(d, vec![0, 1, 0, 0]);
    h.check(&rsoc(false, 6, 0, 0), &[], 65535, INVALID_FIELD);
}

/// SPC-4 6.35.3: the CDB USAGE DATA of a command with a service action
/// carries the service action code in the SERVICE ACTION field (byte 1,
/// bits 4-0), the other bits of that byte being the usage mask; with
/// reporting options 010b and 011b alike.
#[test]
fn rsoc_usage_data_carries_the_service_action() {
    let h = Harness::new();
    for d in TABLE.iter().filter(|d| d.service_action.is_some()) {
        if d.opcode == 0xc0 {
            continue; // CBT rows are listed only with tracking on (cbt.rs)
        }
        let sa = d.service_action.unwrap();
        for options in [2, 3] {
            let r = h.good(&rsoc(false, options, d.opcode, sa), &[], 65535);
            let usage = &r.data_in[4..];
            assert_eq!(usage[0], d.opcode, "{}", d.name);
            assert_eq!(usage[1] & 0x1f, sa as u8, "{} option {options}", d.name);
            assert_eq!(usage[1] & 0xe0, d.usage_mask[1] & 0xe0, "{}", d.name);
        }
    }
    let r = h.good(&rsoc(false, 2, 0xa3, 0x0c), &[], 65535);
    assert_eq!(&r.data_in[4..7], &[0xa3, 0x0c, 0x87]);
    // SANITIZE CRYPTOGRAPHIC ERASE: IMMED and AUSE stay in the mask.
    let r = h.good(&rsoc(false, 2, 0x48, 0x03), &[], 65535);
    assert_eq!(r.data_in[5], 0xa3);
}

#[test]
fn start_stop_and_prevent_allow() {
    let h = Harness::new();
    h.good(&[0x1b, 0, 0, 0, 0x01, 0], &[], 0);
    h.good(&[0x1b, 1, 0, 0, 0x00, 0], &[], 0);
    h.good(&[0x1e, 0, 0, 0, 1, 0], &[], 0);
    h.good(&[0x1e, 0, 0, 0, 0, 0], &[], 0);
    h.good(&[0; 6], &[], 0);
    h.check(&[0x1b, 0, 0, 0, 0x08, 0], &[], 0, INVALID_FIELD);
}
