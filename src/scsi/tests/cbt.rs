//! Opcode C0h and VPD page C0h against a memory LUN with a volatile
//! tracker. Replies are decoded with the client's strict parsers (so the
//! two sides of the contract are checked against each other) and, where
//! the layout itself is the point, byte by byte.

use super::*;
use crate::cbt::Tracker;
use crate::initiator::cbt as wire;

/// 8 blocks per extent, so LUN 0 has BLOCKS / 8 = 256 extents.
const EB: u32 = 8;
const ACCESS_DENIED: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x20, 0x02);

fn tracked_lu() -> (Arc<LogicalUnit>, Arc<Tracker>) {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let t = Arc::new(Tracker::volatile(BLOCKS, EB).unwrap());
    let mut lu = LogicalUnit::new(backend, BS, identity(1), false).with_tracker(t.clone());
    lu.cbt.allowed_initiators = vec![nexus(1).initiator_name.to_uppercase()];
    (Arc::new(lu), t)
}

/// LUN 0 tracked, LUN 1 without tracking.
fn harness() -> (Harness, Arc<Tracker>) {
    let (lu, t) = tracked_lu();
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let mut off = LogicalUnit::new(backend, BS, identity(2), false);
    off.cbt.allowed_initiators = vec![nexus(1).initiator_name];
    (Harness::with_luns(vec![(0, lu), (1, Arc::new(off))]), t)
}

fn changes_cdb(since: u64, lba: u64) -> Vec<u8> {
    wire::get_changed_extents_cdb(since, lba).unwrap().to_vec()
}

fn write(h: &Harness, lba: u32, blocks: u16) {
    let data = pattern(blocks as usize * BS as usize, lba as u8);
    h.good(&write10(lba, blocks, false), &data, data.len() as u32);
}

fn changes(h: &Harness, since: u64, lba: u64, alloc: u32) -> wire::ExtentsPage {
    let r = h.good(&changes_cdb(since, lba), &[], alloc);
    wire::parse_changes(&r.data_in, since, lba).unwrap()
}

#[test]
fn report_tracking_layout() {
    let (h, t) = harness();
    let r = h.good(&wire::report_tracking_cdb(), &[], 96);
    let d = &r.data_in;
    assert_eq!((d.len(), r.transfer_len), (96, 96));
    assert_eq!((d[0], d[1]), (2, 0x01)); // version 2, tracking on, volatile
    assert_eq!(&d[4..8], &EB.to_be_bytes());
    assert_eq!(&d[8..12], &BS.to_be_bytes());
    assert_eq!(&d[16..24], &BLOCKS.to_be_bytes());
    assert_eq!(&d[24..40], &t.status().uuid);
    assert_eq!(&d[40..48], &1u64.to_be_bytes());
    assert_eq!(&d[48..56], &[0; 8]); // never recovered
    assert_eq!(&d[56..60], &[0; 4]); // unlocked
    assert_eq!(&d[88..90], &[0xff, 0xff]); // views off: no view LUN
    assert!(
        d[2..4]
            .iter()
            .chain(&d[12..16])
            .chain(&d[60..88])
            .chain(&d[90..])
            .all(|&b| b == 0)
    );
    let rep = wire::parse_report(d).unwrap();
    assert!(rep.flags.tracking_on && !rep.flags.persistent && !rep.flags.recovered);
}

#[test]
fn close_generation_closes_once_even_when_cut() {
    let (h, t) = harness();
    let r = h.good(&wire::close_generation_cdb(), &[], 32);
    let c = wire::parse_close(&r.data_in).unwrap();
    assert_eq!((c.uuid, c.generation), (t.status().uuid, 1));
    assert_eq!(t.open_generation(), 2);
    // A reply cut to 8 bytes: the close still happened, exactly once, and
    // the overflow shows as SPDTL > data sent.
    let r = h.good(&wire::close_generation_cdb(), &[], 8);
    assert_eq!((r.data_in.len(), r.transfer_len), (8, 32));
    assert_eq!(&r.data_in[..], &t.status().uuid[..8]);
    assert_eq!(t.open_generation(), 3);
    // Zero allocation length: still closes.
    let r = h.good(&wire::close_generation_cdb(), &[], 0);
    assert_eq!((r.data_in.len(), r.transfer_len), (0, 32));
    assert_eq!(t.open_generation(), 4);
}

#[test]
fn changed_extents_follow_writes_and_closes() {
    let (h, _) = harness();
    // Nothing changed yet.
    let p = changes(&h, 0, 0, 4096);
    assert!(p.complete && p.descriptors.is_empty());
    assert_eq!(p.next_lba, BLOCKS);
    write(&h, 3, 2); // extent 0
    write(&h, 100, 20); // extents 12..=14
    let g = wire::parse_close(&h.good(&wire::close_generation_cdb(), &[], 32).data_in)
        .unwrap()
        .generation;
    // Everything since tracking began, generation g.
    let p = changes(&h, 0, 0, 4096);
    let got: Vec<_> = p
        .descriptors
        .iter()
        .map(|x| (x.lba, x.blocks, x.generation))
        .collect();
    assert_eq!(got, vec![(0, 8, g), (96, 24, g)]);
    // Since g: nothing (no change in between, guarantee 1's "rare").
    assert!(changes(&h, g, 0, 4096).descriptors.is_empty());
    write(&h, 2040, 8); // the last extent
    let p = changes(&h, g, 0, 4096);
    assert_eq!(p.descriptors.len(), 1);
    assert_eq!((p.descriptors[0].lba, p.descriptors[0].blocks), (2040, 8));
    assert_eq!(p.descriptors[0].generation, g + 1);
    assert_eq!(p.open_generation, g + 1);
    // STARTING LBA inside an extent clips the first descriptor.
    let p = changes(&h, 0, 101, 4096);
    let first = p.descriptors[0];
    assert_eq!((first.lba, first.blocks), (101, 19));
}

#[test]
fn short_allocation_gives_whole_descriptors_and_pages() {
    let (h, _) = harness();
    // Ten separate changed extents: 0, 16, 32, ... (never adjacent).
    for i in 0..10u32 {
        write(&h, i * 16 * EB, 1);
    }
    // Room for two descriptors and 10 spare bytes.
    let alloc = (48 + 2 * 24 + 10) as u32;
    let r = h.good(&changes_cdb(0, 0), &[], alloc);
    assert_eq!((r.data_in.len(), r.transfer_len), (96, 96));
    assert_eq!(&r.data_in[0..4], &48u32.to_be_bytes());
    let p = wire::parse_changes(&r.data_in, 0, 0).unwrap();
    assert!(!p.complete);
    assert_eq!(p.next_lba, 2 * 16 * u64::from(EB)); // the third extent
    // Less than a header: cut, and the residual shows the full 48.
    let r = h.good(&changes_cdb(0, 0), &[], 20);
    assert_eq!((r.data_in.len(), r.transfer_len), (20, 48));
    assert_eq!(&r.data_in[0..4], &[0; 4]);
    // Paging with one descriptor per reply covers exactly the ten extents.
    let mut at = 0;
    let mut seen = Vec::new();
    loop {
        let p = changes(&h, 0, at, 72);
        assert!(p.descriptors.len() <= 1);
        seen.extend(p.descriptors.iter().map(|x| x.lba));
        if p.complete {
            assert_eq!(p.next_lba, BLOCKS);
            break;
        }
        assert!(p.next_lba > at, "paging must progress");
        at = p.next_lba;
    }
    let want: Vec<u64> = (0..10).map(|i| i * 16 * u64::from(EB)).collect();
    assert_eq!(seen, want);
}

#[test]
fn since_and_start_lba_bounds() {
    let (h, t) = harness();
    let open = t.open_generation();
    let r = h.check(&changes_cdb(open, 0), &[], 4096, INVALID_FIELD);
    assert_eq!(&r.sense.unwrap()[15..18], &[0xc0, 0, 2]);
    h.check(&changes_cdb(u64::MAX, 0), &[], 4096, INVALID_FIELD);
    let r = h.check(&changes_cdb(0, BLOCKS), &[], 4096, INVALID_FIELD);
    assert_eq!(&r.sense.unwrap()[15..18], &[0xc0, 0, 10]);
    h.good(&changes_cdb(open - 1, BLOCKS - 1), &[], 4096);
}

#[test]
fn access_denied_before_anything_else() {
    let (mut h, t) = harness();
    h.nexus = nexus(2);
    let mut bad_reserved = wire::close_generation_cdb();
    bad_reserved[7] = 1;
    let mut bad_sa = wire::report_tracking_cdb();
    bad_sa[1] = 0x1f;
    for cdb in [
        wire::report_tracking_cdb(),
        wire::close_generation_cdb(),
        bad_reserved,
        bad_sa,
        wire::get_changed_extents_cdb(u64::MAX, 0).unwrap(),
    ] {
        h.check(&cdb, &[], 96, ACCESS_DENIED);
        // Also on the LUN without tracking.
        let r = h.exec(1, &cdb, &[], 96);
        assert_eq!(r.sense_codes(), Some(ACCESS_DENIED));
    }
    assert_eq!(t.open_generation(), 1, "a denied CLOSE closed nothing");
    // Discovery stays visible to everyone: VPD C0h and RSOC.
    h.good(&[0x12, 1, 0xc0, 0, 64, 0], &[], 64);
}

#[test]
fn tracking_off_is_an_unknown_opcode() {
    let (h, _) = harness();
    for cdb in [wire::report_tracking_cdb(), wire::close_generation_cdb()] {
        let r = h.exec(1, &cdb, &[], 96);
        assert_eq!(r.sense_codes(), Some(INVALID_OPCODE));
    }
    // Neither VPD C0h nor C0h in RSOC on that LUN.
    let r = h.exec(1, &[0x12, 1, 0, 0, 255, 0], &[], 255);
    assert!(!r.data_in[4..].contains(&0xc0));
    let r = h.exec(1, &[0x12, 1, 0xc0, 0, 64, 0], &[], 64);
    assert_eq!(r.sense_codes(), Some(INVALID_FIELD));
    let r = h.exec(1, &rsoc_all(), &[], 8192);
    assert!(rsoc_entries(&r.data_in).iter().all(|&(op, _)| op != 0xc0));
    let r = h.exec(1, &rsoc_one(2, 0xc0, 1), &[], 64);
    assert_eq!(&r.data_in[..2], &[0, 1]); // not supported
}

#[test]
fn reserved_fields_and_unknown_service_action() {
    let (h, t) = harness();
    // Byte 1 bits 7-5, each reserved CDB byte of CLOSE, and CONTROL.
    let mut cdbs = Vec::new();
    for (at, v) in [(1, 0x20), (1, 0x80), (2, 1), (9, 0x10), (14, 1), (15, 0x04)] {
        let mut c = wire::close_generation_cdb();
        c[at] |= v;
        cdbs.push(c);
    }
    for c in &cdbs {
        h.check(c, &[], 32, INVALID_FIELD);
    }
    assert_eq!(t.open_generation(), 1, "nothing happened");
    // Reserved bytes of the other service actions.
    let mut c = changes_cdb(0, 0);
    c[15] = 1;
    h.check(&c, &[], 4096, INVALID_FIELD);
    let mut c = wire::release_cdb(1).to_vec();
    c[12] = 1;
    h.check(&c, &[], 32, INVALID_FIELD);
    let mut c = wire::acquire_cdb(0, 0).to_vec();
    c[10] = 1;
    h.check(&c, &[], 32, INVALID_FIELD);
    // Unknown service actions.
    for sa in [0x06, 0x10, 0x1f] {
        let mut c = wire::report_tracking_cdb();
        c[1] = sa;
        let r = h.check(&c, &[], 96, INVALID_FIELD);
        assert_eq!(&r.sense.unwrap()[15..18], &[0xc8 | 4, 0, 1]);
    }
}

#[test]
fn vpd_c0_layout_and_listing() {
    let (h, t) = harness();
    t.close().unwrap();
    let r = h.good(&[0x12, 1, 0x00, 0, 255, 0], &[], 255);
    let pages = &r.data_in[4..];
    assert_eq!(pages.last(), Some(&0xc0));
    assert!(pages.windows(2).all(|w| w[0] < w[1]), "ascending");
    let r = h.good(&[0x12, 1, 0xc0, 0, 255, 0], &[], 255);
    let d = &r.data_in;
    assert_eq!(d.len(), 64);
    assert_eq!(&d[0..4], &[0x00, 0xc0, 0x00, 60]);
    assert_eq!((d[4], d[5]), (2, 0x01));
    assert_eq!(&d[6..8], &[0, 0]);
    assert_eq!(&d[8..12], &EB.to_be_bytes());
    assert_eq!(&d[12..28], &t.status().uuid);
    assert_eq!(&d[28..36], &2u64.to_be_bytes()); // live value after a close
    assert!(d[36..].iter().all(|&b| b == 0));
    let v = wire::parse_vpd(d).unwrap();
    assert_eq!(v.open_generation, 2);
}

/// The two lengths of the contract's VPD page: the target sends VPD_LEN
/// bytes with VPD_PAGE_LEN (the bytes after the header) in PAGE LENGTH.
#[test]
fn vpd_c0_lengths_follow_the_contract() {
    use crate::cbt::wire::{VPD_LEN, VPD_PAGE_LEN};
    let (h, _) = harness();
    let r = h.good(&[0x12, 1, 0xc0, 0, 255, 0], &[], 255);
    assert_eq!(r.data_in.len(), VPD_LEN);
    let page_len = u16::from_be_bytes([r.data_in[2], r.data_in[3]]);
    assert_eq!(usize::from(page_len), VPD_PAGE_LEN);
}

fn rsoc_all() -> Vec<u8> {
    vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0]
}

fn rsoc_one(options: u8, op: u8, sa: u16) -> Vec<u8> {
    let s = sa.to_be_bytes();
    vec![0xa3, 0x0c, options, op, s[0], s[1], 0, 0, 0, 64, 0, 0]
}

/// (opcode, service action) of each all-commands descriptor.
fn rsoc_entries(d: &[u8]) -> Vec<(u8, u16)> {
    d[4..]
        .chunks_exact(8)
        .map(|e| (e[0], u16::from_be_bytes([e[2], e[3]])))
        .collect()
}

#[test]
fn rsoc_lists_every_service_action() {
    let (h, _) = harness();
    let r = h.good(&rsoc_all(), &[], 8192);
    let c0: Vec<u16> = rsoc_entries(&r.data_in)
        .into_iter()
        .filter(|&(op, _)| op == 0xc0)
        .map(|(_, sa)| sa)
        .collect();
    // Views are off on this LUN: 06h-08h are not listed.
    assert_eq!(c0, vec![0, 1, 2, 3, 4, 5]);
    // One command: GET CHANGED EXTENTS usage data marks bytes 2-14.
    let r = h.good(&rsoc_one(2, 0xc0, 2), &[], 64);
    assert_eq!(&r.data_in[..4], &[0, 3, 0, 16]);
    let usage = &r.data_in[4..20];
    // Byte 1: the service action (SPC-4 6.35.3: the SERVICE ACTION field
    // holds the code, 02h, not the mask 1Fh) and AS OF VIEW (bit 5).
    assert_eq!((usage[0], usage[1]), (0xc0, 0x22));
    assert!(usage[2..15].iter().all(|&b| b == 0xff));
    assert_eq!(usage[15], 0);
}
