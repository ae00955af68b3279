//! CBT views through the device server: OPEN / RENEW / RELEASE VIEW, AS
//! OF VIEW, the view LUN (visibility, NOT READY, DATA PROTECT, reads), a
//! lost view, and every change kind keeping old data first.

use super::thin::{sanitize_cdb, unmap, ws16};
use super::xcopy::{b2b, cscd, list, xcopy_cdb};
use super::*;
use crate::cbt::Tracker;
use crate::scsi::lun::ViewSettings;
use std::time::Duration;

const EB: u32 = 8; // blocks per extent: 4 KiB
const VIEW_LUN: u64 = 128;
const NOT_READY: (u8, u8, u8) = (key::NOT_READY, 0x04, 0x00);
const VIEW_LOST: (u8, u8, u8) = (key::ABORTED_COMMAND, 0x55, 0x03);
const EXTENT_BYTES: usize = (EB * BS) as usize;

fn viewed_lu(space: u64) -> (LogicalUnit, Arc<Tracker>) {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let t = Arc::new(Tracker::volatile(BLOCKS, EB).unwrap());
    let mut lu = LogicalUnit::new(backend, BS, identity(1), false).with_tracker(t.clone());
    lu.cbt.allowed_initiators = vec![nexus(1).initiator_name];
    lu.cbt.view = Some(ViewSettings {
        lun: VIEW_LUN,
        space,
        max_lease: Duration::from_secs(300),
        default_lease: Duration::from_secs(60),
        store_dir: std::env::temp_dir(),
    });
    crate::scsi::viewlun::attach(&mut lu);
    (lu, t)
}

/// LUN 0 with views (LUN 128 reads them), LUN 1 a plain LUN; the LUN is
/// filled with a pattern so kept extents hold data.
fn harness(space: u64) -> (Harness, Arc<Tracker>, Vec<u8>) {
    let (lu, t) = viewed_lu(space);
    let h = Harness::with_luns(vec![(0, Arc::new(lu)), (1, mem_lu(BLOCKS, false))]);
    let fill = pattern(BLOCKS as usize * BS as usize, 7);
    h.good(&rw16(0x8a, 0, BLOCKS as u32), &fill, fill.len() as u32);
    (h, t, fill)
}

fn view_cdb(sa: u8, a: u64, b: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0xc0;
    c[1] = sa;
    match sa {
        6 => {
            c[2..6].copy_from_slice(&(a as u32).to_be_bytes());
            c[6..10].copy_from_slice(&b.to_be_bytes());
        }
        _ => {
            c[2..10].copy_from_slice(&a.to_be_bytes());
            c[10..14].copy_from_slice(&b.to_be_bytes());
        }
    }
    c
}

/// (token, generation, lease granted, view LUN) of a view reply.
fn grant(r: &ScsiResult) -> (u64, u64, u32, u16) {
    let d = &r.data_in;
    assert_eq!(d.len(), 32);
    assert!(d[22..].iter().all(|&b| b == 0), "reserved bytes");
    let u64_at = |i: usize| u64::from_be_bytes(d[i..i + 8].try_into().unwrap());
    (
        u64_at(0),
        u64_at(8),
        u32::from_be_bytes(d[16..20].try_into().unwrap()),
        u16::from_be_bytes([d[20], d[21]]),
    )
}

fn open(h: &Harness) -> (u64, u64) {
    let (token, g, _, lun) = grant(&h.good(&view_cdb(6, 0, 0), &[], 32));
    assert_eq!(lun as u64, VIEW_LUN);
    (token, g)
}

fn read_view(h: &Harness, lba: u64, blocks: u32) -> ScsiResult {
    h.exec(VIEW_LUN, &rw16(0x88, lba, blocks), &[], blocks * BS)
}

fn codes(r: &ScsiResult) -> Option<(u8, u8, u8)> {
    assert_eq!(r.status, status::CHECK_CONDITION);
    r.sense_codes()
}

fn as_of_view(since: u64) -> Vec<u8> {
    let mut c = crate::initiator::cbt::get_changed_extents_cdb(since, 0)
        .unwrap()
        .to_vec();
    c[1] |= 0x20;
    c
}

#[test]
fn open_renew_release_layout_and_rules() {
    let (h, t, _) = harness(u64::MAX);
    let (token, g) = open(&h);
    assert_eq!(g, 1);
    assert_eq!(t.open_generation(), 2, "OPEN closed the generation");
    // The same nexus again: same view, nothing closed.
    let (again, g2, lease, _) = grant(&h.good(&view_cdb(6, 500, 0), &[], 32));
    assert_eq!((again, g2, lease), (token, g, 500));
    assert_eq!(t.open_generation(), 2);
    // nexus 2 is not a CBT initiator: access denied before anything else.
    let r = h.exec_as(&nexus(2), 0, &view_cdb(6, 0, 0), &[], 32);
    assert_eq!(codes(&r), Some((key::ILLEGAL_REQUEST, 0x20, 0x02)));
    // Lease: 0 → default, longer than the maximum → cut.
    let (_, _, lease, _) = grant(&h.good(&view_cdb(7, token, 0), &[], 32));
    assert_eq!(lease, 60_000);
    let (_, _, lease, _) = grant(&h.good(&view_cdb(7, token, 900_000), &[], 32));
    assert_eq!(lease, 300_000);
    // Wrong tokens.
    h.check(&view_cdb(7, token ^ 1, 0), &[], 32, INVALID_FIELD);
    h.check(&view_cdb(8, token ^ 1, 0), &[], 32, INVALID_FIELD);
    // Reserved bytes and bits.
    let mut bad = view_cdb(6, 0, 0);
    bad[12] = 1;
    h.check(&bad, &[], 32, INVALID_FIELD);
    let mut bad = view_cdb(8, token, 0);
    bad[1] |= 0x40;
    h.check(&bad, &[], 32, INVALID_FIELD);
    // RELEASE: LEASE GRANTED 0, then the token is dead.
    let (tok, gen_, lease, _) = grant(&h.good(&view_cdb(8, token, 0), &[], 32));
    assert_eq!((tok, gen_, lease), (token, g, 0));
    h.check(&view_cdb(8, token, 0), &[], 32, INVALID_FIELD);
    assert!(t.view().is_none());
}

#[test]
fn report_tracking_and_vpd_show_the_view() {
    let (h, _, _) = harness(1 << 30);
    let d = h
        .good(
            &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
            96,
        )
        .data_in;
    assert_eq!(d[0], 2);
    assert_eq!(d[1] & 0x30, 0);
    assert_eq!(&d[80..88], &(1u64 << 30).to_be_bytes());
    assert_eq!(&d[88..90], &(VIEW_LUN as u16).to_be_bytes());
    let (_, g) = open(&h);
    h.good(&write10(0, 1, false), &[1; BS as usize], BS);
    let d = h
        .good(
            &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
            96,
        )
        .data_in;
    assert_eq!(d[1] & 0x30, 0x10, "VIEW OPEN");
    assert_eq!(&d[60..68], &g.to_be_bytes());
    let lease = u32::from_be_bytes(d[68..72].try_into().unwrap());
    assert!(lease > 50_000 && lease <= 60_000);
    assert_eq!(
        &d[72..80],
        &(EXTENT_BYTES as u64).to_be_bytes(),
        "one extent kept"
    );
    // RSOC lists 06h-08h here.
    let r = h.good(
        &[0xa3, 0x0c, 0x02, 0xc0, 0, 0x06, 0, 0, 0, 64, 0, 0],
        &[],
        64,
    );
    // Byte 1 carries the service action, OPEN VIEW (06h) (SPC-4 6.35.3).
    assert_eq!(&r.data_in[4..6], &[0xc0, 0x06]);
}

#[test]
fn every_change_kind_keeps_the_old_data() {
    // (name, change) pairs; each runs on a fresh LUN with a view open.
    type Change = fn(&Harness);
    let changes: [(&str, Change); 8] = [
        ("WRITE(10)", |h| {
            h.good(&write10(3, 20, false), &vec![1; 20 * BS as usize], 20 * BS);
        }),
        ("WRITE SAME(16)", |h| {
            h.good(&ws16(3, 40, 0), &[2; BS as usize], BS);
        }),
        ("WRITE SAME(16) UNMAP", |h| {
            h.good(&ws16(3, 40, 0x08), &[0; BS as usize], BS);
        }),
        ("UNMAP", |h| {
            assert_eq!(unmap(h, &[(5, 30), (100, 8)]).status, status::GOOD);
        }),
        ("COMPARE AND WRITE", |h| {
            let mut both = pattern(BLOCKS as usize * BS as usize, 7)[..BS as usize].to_vec();
            both.extend_from_slice(&[9; BS as usize]);
            let r = h.exec(0, &super::verify::caw(0, 1, 0), &both, 2 * BS);
            assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
        }),
        ("SANITIZE BLOCK ERASE", |h| {
            h.good(&sanitize_cdb(2, false, 0), &[], 0);
        }),
        ("WRITE AND VERIFY(16)", |h| {
            h.good(&rw16(0x8e, 9, 3), &vec![4; 3 * BS as usize], 3 * BS);
        }),
        ("EXTENDED COPY into the LUN", |h| {
            // From LUN 1 (identity 3) into LUN 0 (identity 1).
            let p = list(1, 0, &[cscd(3), cscd(1)], &[b2b(0, 1, 16, 0, 8)]);
            let r = h.exec(0, &xcopy_cdb(p.len()), &p, p.len() as u32);
            assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
        }),
    ];
    for (name, change) in changes {
        let (lu, t) = viewed_lu(u64::MAX);
        let mut src = LogicalUnit::new(
            Arc::new(MemoryBackend::new(BLOCKS * BS as u64)),
            BS,
            identity(3),
            false,
        );
        src.cbt.allowed_initiators = vec![];
        let h = Harness::with_luns(vec![(0, Arc::new(lu)), (1, Arc::new(src))]);
        let fill = pattern(BLOCKS as usize * BS as usize, 7);
        h.good(&rw16(0x8a, 0, BLOCKS as u32), &fill, fill.len() as u32);
        let (_, g) = open(&h);
        change(&h);
        let now = h
            .good(&rw16(0x88, 0, BLOCKS as u32), &[], BLOCKS as u32 * BS)
            .data_in;
        assert!(now != fill, "{name}: the change changed nothing");
        let r = read_view(&h, 0, BLOCKS as u32);
        assert_eq!(r.status, status::GOOD, "{name}: {:?}", r.sense_codes());
        assert!(r.data_in == fill, "{name}: the view moved");
        // As of the view nothing changed since the view's generation - 1
        // that was not already listed before (fill was stamped 1 = g).
        let page = h.good(&as_of_view(0), &[], 4096).data_in;
        let n = u32::from_be_bytes(page[0..4].try_into().unwrap()) as usize / 24;
        for i in 0..n {
            let d = &page[48 + 24 * i..72 + 24 * i];
            let gen_ = u64::from_be_bytes(d[16..24].try_into().unwrap());
            assert!(gen_ <= g, "{name}: generation {gen_} after the view's {g}");
        }
        assert!(t.open_generation() > g);
    }
}

#[test]
fn view_lun_states_and_visibility() {
    let (h, _, fill) = harness(u64::MAX);
    // Without a view: NOT READY for TUR and reads, INQUIRY/READ CAPACITY work.
    let tur = h.exec(VIEW_LUN, &[0; 6], &[], 0);
    assert_eq!(codes(&tur), Some(NOT_READY));
    assert_eq!(codes(&read_view(&h, 0, 1)), Some(NOT_READY));
    let inq = h.exec(VIEW_LUN, &[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!((inq.status, inq.data_in[0]), (status::GOOD, 0x00));
    let cap = h.exec(VIEW_LUN, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(cap.status, status::GOOD);
    assert_eq!(&cap.data_in[..4], &((BLOCKS - 1) as u32).to_be_bytes());
    // Writes: DATA PROTECT with or without a view.
    let w = h.exec(VIEW_LUN, &write10(0, 1, false), &[0; BS as usize], BS);
    assert_eq!(codes(&w), Some(WRITE_PROTECTED));
    let (token, _) = open(&h);
    let w = h.exec(VIEW_LUN, &write10(0, 1, false), &[0; BS as usize], BS);
    assert_eq!(codes(&w), Some(WRITE_PROTECTED));
    assert_eq!(h.exec(VIEW_LUN, &[0; 6], &[], 0).status, status::GOOD);
    let r = read_view(&h, 0, BLOCKS as u32);
    assert!(r.data_in == fill);
    // REPORT LUNS: the CBT initiator sees 0, 1 and 128; others 0 and 1.
    let luns = |n: u64| {
        let report = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let d = h.exec_as(&nexus(n), 0, &report, &[], 256).data_in;
        let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / 8;
        (0..n).map(|i| d[9 + 8 * i]).collect::<Vec<u8>>()
    };
    assert_eq!(luns(1), vec![0, 1, 128]);
    assert_eq!(luns(2), vec![0, 1]);
    let r = h.exec_as(&nexus(2), VIEW_LUN, &rw16(0x88, 0, 1), &[], BS);
    assert_eq!(codes(&r), Some(LUN_NOT_SUPPORTED));
    h.good(&view_cdb(8, token, 0), &[], 32);
    assert_eq!(codes(&read_view(&h, 0, 1)), Some(NOT_READY));
}

#[test]
fn a_lost_view_fails_reads_and_queries_but_never_a_change() {
    // Room for two extents: the third distinct extent loses the view.
    let (h, t, fill) = harness(2 * EXTENT_BYTES as u64);
    let (token, g) = open(&h);
    for x in 0..3u32 {
        h.good(&write10(x * EB, 1, false), &[0xaa; BS as usize], BS);
    }
    let r = h.good(&rw16(0x88, 0, 3 * EB), &[], 3 * EB * BS).data_in;
    for x in 0..3usize {
        assert_eq!(r[x * EXTENT_BYTES], 0xaa, "the change landed");
        assert!(
            r[x * EXTENT_BYTES + BS as usize..(x + 1) * EXTENT_BYTES]
                == fill[x * EXTENT_BYTES + BS as usize..(x + 1) * EXTENT_BYTES]
        );
    }
    assert_eq!(codes(&read_view(&h, 0, 1)), Some(VIEW_LOST));
    assert_eq!(
        codes(&h.exec(0, &as_of_view(0), &[], 4096)),
        Some(VIEW_LOST)
    );
    // Lost is reported before the generation check (SINCE >= VIEW GEN).
    assert_eq!(
        codes(&h.exec(0, &as_of_view(g + 5), &[], 4096)),
        Some(VIEW_LOST)
    );
    let d = h
        .good(
            &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
            96,
        )
        .data_in;
    assert_eq!(d[1] & 0x30, 0x30, "VIEW OPEN and VIEW LOST");
    assert_eq!(t.views_lost(), 1);
    // RENEW and RELEASE work on a lost view.
    h.good(&view_cdb(7, token, 0), &[], 32);
    h.good(&view_cdb(8, token, 0), &[], 32);
    let (_, g2) = open(&h);
    assert!(g2 > g);
    assert_eq!(read_view(&h, 0, 1).status, status::GOOD);
}

#[test]
fn as_of_view_lists_generations_at_the_open() {
    let (h, t, _) = harness(u64::MAX);
    let g0 = t.close().unwrap(); // the fill is stamped g0
    h.good(&write10(8 * EB, 1, false), &[1; BS as usize], BS); // stamped g0+1
    let (_, gv) = open(&h);
    assert_eq!(gv, g0 + 1);
    // After the open: a change to extent 0 and to extent 8.
    h.good(&write10(0, 1, false), &[2; BS as usize], BS);
    h.good(&write10(8 * EB, 1, false), &[2; BS as usize], BS);
    // SINCE g0, as of the view: extent 8 only, with generation gv.
    let page = h.good(&as_of_view(g0), &[], 4096).data_in;
    assert_eq!(&page[0..4], &24u32.to_be_bytes());
    assert_eq!(page[4] & 1, 1, "COMPLETE");
    let d = &page[48..72];
    assert_eq!(&d[0..8], &u64::from(8 * EB).to_be_bytes());
    assert_eq!(&d[16..24], &gv.to_be_bytes());
    // The live query lists extent 0 too.
    let live = h
        .good(
            &crate::initiator::cbt::get_changed_extents_cdb(g0, 0).unwrap(),
            &[],
            4096,
        )
        .data_in;
    assert_eq!(&live[0..4], &48u32.to_be_bytes());
    // SINCE >= VIEW GENERATION, and views-off LUNs.
    h.check(&as_of_view(gv), &[], 4096, INVALID_FIELD);
}

#[test]
fn views_off_treats_the_view_service_actions_as_unknown() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let t = Arc::new(Tracker::volatile(BLOCKS, EB).unwrap());
    let mut lu = LogicalUnit::new(backend, BS, identity(1), false).with_tracker(t);
    lu.cbt.allowed_initiators = vec![nexus(1).initiator_name];
    let h = Harness::with_luns(vec![(0, Arc::new(lu))]);
    for sa in [6u8, 7, 8] {
        h.check(&view_cdb(sa, 0, 0), &[], 32, INVALID_FIELD);
    }
    h.check(&as_of_view(0), &[], 4096, INVALID_FIELD);
    assert_eq!(codes(&read_view(&h, 0, 1)), Some(LUN_NOT_SUPPORTED));
}

#[test]
fn a_view_ends_with_its_lease_not_with_the_session() {
    let (h, t, _) = harness(u64::MAX);
    let (token, _) = open(&h);
    h.srv.nexus_removed(&h.nexus);
    assert!(
        t.view().is_some(),
        "the opener's session ended; the view stays"
    );
    h.good(&view_cdb(7, token, 1), &[], 32); // 1 ms lease
    std::thread::sleep(Duration::from_millis(5));
    h.srv.tick();
    assert!(t.view().is_none());
    assert_eq!(codes(&read_view(&h, 0, 1)), Some(NOT_READY));
    h.check(&view_cdb(7, token, 0), &[], 32, INVALID_FIELD);
}

#[test]
fn extended_copy_cannot_reach_a_view_lun_the_sender_does_not_see() {
    let (h, _, _) = harness(u64::MAX);
    open(&h);
    let mut view_naa = identity(1).naa;
    view_naa[15] ^= 0x80;
    let mut from_view = cscd(1);
    from_view[8..24].copy_from_slice(&view_naa);
    // LUN 1 is identity(1) too in this harness (mem_lu): copy into LUN 0
    // from the view, as a nexus that is not a CBT initiator.
    let p = list(2, 0, &[from_view, cscd(1)], &[b2b(0, 1, 8, 0, 0)]);
    let r = h.exec_as(&nexus(2), 0, &xcopy_cdb(p.len()), &p, p.len() as u32);
    assert_eq!(codes(&r), Some((key::COPY_ABORTED, 0x0d, 0x02)));
}

/// The view belongs to the I_T nexus (initiator port = name + ISID), not
/// the session: the same port after a reconnect gets the same view; the
/// same initiator with another ISID is another nexus.
#[test]
fn the_view_belongs_to_the_i_t_nexus() {
    let (h, t, _) = harness(u64::MAX);
    let (token, g) = open(&h);
    let as_nexus = |id: u64, isid: &str| {
        let mut nx = nexus(1);
        nx.id = id;
        nx.initiator_port = format!("{},i,{isid}", nx.initiator_name);
        h.exec_as(&nx, 0, &view_cdb(6, 0, 0), &[], 32)
    };
    let again = as_nexus(99, "0x1"); // nexus(1)'s port, a new session
    assert_eq!(again.status, status::GOOD);
    assert_eq!(grant(&again).0, token);
    let other = as_nexus(98, "0x2");
    assert_eq!(other.status, status::RESERVATION_CONFLICT);
    assert_eq!(t.open_generation(), g + 1, "neither closed a generation");
}
