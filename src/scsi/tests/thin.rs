//! Thin provisioning and medium-wide commands: UNMAP, WRITE SAME, GET LBA
//! STATUS, SANITIZE, READ DEFECT DATA, and what VPD/READ CAPACITY(16)
//! advertise about them.

use super::*;
use crate::backend::FileBackend;
use crate::cbt::Tracker;
use crate::scsi::sbc::limits;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

const PLLE: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x1a, 0);
const INVALID_PARAM: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x26, 0);
const SANITIZING: (u8, u8, u8) = (key::NOT_READY, 0x04, 0x1b);

/// A harness over a memory LUN whose backend the test keeps a handle to.
fn mem_harness(blocks: u64) -> (Harness, Arc<MemoryBackend>) {
    let mem = Arc::new(MemoryBackend::new(blocks * BS as u64));
    let backend: Arc<dyn Backend> = mem.clone();
    let lu = Arc::new(LogicalUnit::new(backend, BS, identity(1), false));
    (Harness::with_luns(vec![(0, lu)]), mem)
}

pub(super) fn unmap_cdb(param_len: u16) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&param_len.to_be_bytes());
    c.push(0);
    c
}

pub(super) fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let bd = (ranges.len() * 16) as u16;
    let mut d = (bd + 6).to_be_bytes().to_vec();
    d.extend_from_slice(&bd.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for (lba, n) in ranges {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

pub(super) fn unmap(h: &Harness, ranges: &[(u64, u32)]) -> ScsiResult {
    let d = unmap_list(ranges);
    h.exec(0, &unmap_cdb(d.len() as u16), &d, d.len() as u32)
}

fn ws10(lba: u32, blocks: u16, unmap: bool) -> Vec<u8> {
    let mut c = vec![0x41, if unmap { 0x08 } else { 0 }];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

pub(super) fn ws16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut c = rw16(0x93, lba, blocks);
    c[1] = flags;
    c
}

fn lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x12];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// GET LBA STATUS descriptors as (lba, blocks, provisioning status).
fn statuses(h: &Harness, lba: u64, alloc: u32) -> Vec<(u64, u32, u8)> {
    let d = h.good(&lba_status(lba, alloc), &[], alloc).data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!((len - 4) % 16, 0);
    d[8..]
        .chunks_exact(16)
        .map(|x| {
            let lba = u64::from_be_bytes(x[..8].try_into().unwrap());
            let n = u32::from_be_bytes(x[8..12].try_into().unwrap());
            (lba, n, x[12] & 0x0f)
        })
        .collect()
}

fn read_blocks(h: &Harness, lba: u64, blocks: u32) -> Vec<u8> {
    let len = blocks * BS;
    h.good(&rw16(0x88, lba, blocks), &[], len).data_in
}

fn write_blocks(h: &Harness, lba: u64, data: &[u8]) {
    let blocks = (data.len() / BS as usize) as u32;
    h.good(&rw16(0x8a, lba, blocks), data, data.len() as u32);
}

pub(super) fn sanitize_cdb(sa: u8, immed: bool, param_len: u16) -> Vec<u8> {
    let mut c = vec![0x48, sa | if immed { 0x80 } else { 0 }, 0, 0, 0, 0, 0];
    c.extend_from_slice(&param_len.to_be_bytes());
    c.push(0);
    c
}

fn overwrite_params(first: u8, pattern: &[u8]) -> Vec<u8> {
    let mut d = vec![first, 0];
    d.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    d.extend_from_slice(pattern);
    d
}

#[test]
fn advertised_provisioning_is_consistent() {
    let h = Harness::new();
    let inq = |p: u8| h.good(&[0x12, 1, p, 0, 255, 0], &[], 255).data_in;
    let bl = inq(0xb0);
    let be32 = |d: &[u8], at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
    assert_eq!(bl[4] & 1, 0, "WSNZ 0");
    assert_eq!(bl[5], limits::MAX_COMPARE_AND_WRITE_BLOCKS);
    assert_eq!(be32(&bl, 20), limits::MAX_UNMAP_LBA_COUNT);
    assert_eq!(be32(&bl, 24), limits::MAX_UNMAP_DESCRIPTORS);
    assert_eq!(be32(&bl, 28), 4096 / BS);
    assert_eq!(bl[32], 0x80, "UGAVALID, alignment 0");
    let ws = u64::from_be_bytes(bl[36..44].try_into().unwrap());
    assert_eq!(ws, limits::MAX_WRITE_SAME_BLOCKS);
    assert_eq!(be32(&bl, 44), be32(&bl, 8), "atomic = max transfer");
    assert_eq!(be32(&bl, 48), limits::ATOMIC_ALIGNMENT);
    assert_eq!(be32(&bl, 52), limits::ATOMIC_GRANULARITY);
    let lbp = inq(0xb2);
    assert_eq!(&lbp[4..8], &[0, 0xe4, 0x02, 0]);
    assert_eq!(inq(0xb1)[7] >> 6, 1, "WABEREQ 01b");
    let mut rc = vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let d = h.good(&rc, &[], 32).data_in;
    assert_eq!(d[13] & 0x0f, 3, "8 logical blocks per 4 KiB physical block");
    assert_eq!(d[14] & 0xc0, 0xc0, "LBPME, LBPRZ");
    rc[13] = 14;
    assert_eq!(h.good(&rc, &[], 14).data_in, d[..14].to_vec());
}

#[test]
fn unmap_deallocates_and_reads_zeros() {
    // 4 MiB: four memory chunks, so whole chunks can be freed.
    let (h, mem) = mem_harness(8192);
    let data = pattern(8192 * BS as usize, 7);
    write_blocks(&h, 0, &data[..4096 * BS as usize]);
    write_blocks(&h, 4096, &data[4096 * BS as usize..]);
    assert_eq!(mem.allocated_bytes(), 4 << 20);
    let r = unmap(&h, &[(10, 5), (2048, 2048), (8191, 1)]);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(mem.allocated_bytes(), 3 << 20, "chunk 1 freed");
    let back = read_blocks(&h, 0, 8192);
    let bs = BS as usize;
    for b in 0..8192usize {
        let zero = (10..15).contains(&b) || (2048..4096).contains(&b) || b == 8191;
        let blk = &back[b * bs..(b + 1) * bs];
        if zero {
            assert!(blk.iter().all(|&x| x == 0), "block {b}");
        } else {
            assert_eq!(blk, &data[b * bs..(b + 1) * bs], "block {b}");
        }
    }
    assert_eq!(r.transfer_len, unmap_list(&[(0, 0); 3]).len() as u32);
}

#[test]
fn unmap_parameter_list_checks() {
    let (h, _) = mem_harness(BLOCKS);
    let ok = |r: ScsiResult| assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
    // No parameter list at all, empty list, zero blocks at the end.
    ok(h.exec(0, &unmap_cdb(0), &[], 0));
    ok(unmap(&h, &[]));
    ok(unmap(&h, &[(BLOCKS, 0), (5, 0)]));
    h.check(&unmap_cdb(4), &[0; 4], 4, PLLE);
    // Header announces two descriptors, the list carries one.
    let mut d = unmap_list(&[(0, 1), (1, 1)]);
    d.truncate(24);
    h.check(&unmap_cdb(24), &d, 24, PLLE);
    // The CDB announces more than the initiator sent.
    let d = unmap_list(&[(0, 1)]);
    h.check(&unmap_cdb(24), &d[..16], 16, PLLE);
    // A trailing partial descriptor is ignored.
    let mut d = unmap_list(&[(0, 1)]);
    d[3] += 8;
    d.extend_from_slice(&[0xff; 8]);
    ok(h.exec(0, &unmap_cdb(d.len() as u16), &d, d.len() as u32));
    let many: Vec<(u64, u32)> = (0..=limits::MAX_UNMAP_DESCRIPTORS as u64)
        .map(|i| (i, 1))
        .collect();
    let d = unmap_list(&many);
    h.check(
        &unmap_cdb(d.len() as u16),
        &d,
        d.len() as u32,
        INVALID_PARAM,
    );
    ok(unmap(&h, &many[..limits::MAX_UNMAP_DESCRIPTORS as usize]));
    let big = Harness::with_luns(vec![(0, mem_lu(4 << 20, false))]);
    let over = limits::MAX_UNMAP_LBA_COUNT;
    let d = unmap_list(&[(0, over), (over as u64, 1)]);
    big.check(
        &unmap_cdb(d.len() as u16),
        &d,
        d.len() as u32,
        INVALID_PARAM,
    );
    // Range checks, including overflow of LBA + count.
    for r in [
        (BLOCKS - 1, 2),
        (BLOCKS + 1, 0),
        (u64::MAX, 2),
        (u64::MAX - 1, u32::MAX),
    ] {
        let d = unmap_list(&[r]);
        h.check(&unmap_cdb(d.len() as u16), &d, d.len() as u32, LBA_OOB);
    }
    let mut anchor = unmap_cdb(24);
    anchor[1] = 1;
    h.check(&anchor, &unmap_list(&[(0, 1)]), 24, INVALID_FIELD);
}

#[test]
fn unmap_validates_everything_before_changing_anything() {
    let (h, _) = mem_harness(BLOCKS);
    let data = pattern(BS as usize, 3);
    write_blocks(&h, 0, &data);
    let d = unmap_list(&[(0, 1), (BLOCKS, 1)]);
    h.check(&unmap_cdb(d.len() as u16), &d, d.len() as u32, LBA_OOB);
    assert_eq!(read_blocks(&h, 0, 1), data);
}

#[test]
fn unmap_on_a_file_frees_space_and_shows_in_lba_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let blocks = 16384u64; // 8 MiB
    let backend = Arc::new(FileBackend::open(&path, blocks * BS as u64, true, false).unwrap());
    let lu = Arc::new(LogicalUnit::new(backend, BS, identity(2), false));
    let h = Harness::with_luns(vec![(0, lu)]);
    let data = pattern(4096 * BS as usize, 9);
    for lba in (0..blocks).step_by(4096) {
        write_blocks(&h, lba, &data);
    }
    h.good(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(statuses(&h, 0, 1024), vec![(0, blocks as u32, 0)]);
    let before = std::fs::metadata(&path).unwrap().blocks();
    let r = unmap(&h, &[(4096, 8192)]);
    assert_eq!(r.status, status::GOOD);
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        after * 512 <= before * 512 - (4 << 20),
        "{before} -> {after}"
    );
    assert_eq!(
        statuses(&h, 0, 1024),
        vec![(0, 4096, 0), (4096, 8192, 1), (12288, 4096, 0)]
    );
    // From inside the hole, and one descriptor only.
    assert_eq!(statuses(&h, 5000, 24), vec![(5000, 7288, 1)]);
    assert!(read_blocks(&h, 4096, 8192).iter().all(|&b| b == 0));
}

#[test]
fn get_lba_status_answers() {
    let (h, _) = mem_harness(8192);
    // A fresh memory LUN is all deallocated.
    assert_eq!(statuses(&h, 0, 1024), vec![(0, 8192, 1)]);
    write_blocks(&h, 3000, &pattern(BS as usize, 1));
    // Memory maps whole 1 MiB chunks (2048 blocks).
    assert_eq!(
        statuses(&h, 0, 1024),
        vec![(0, 2048, 1), (2048, 2048, 0), (4096, 4096, 1)]
    );
    assert_eq!(statuses(&h, 3000, 1024)[0], (3000, 1096, 0));
    assert_eq!(statuses(&h, 8191, 1024), vec![(8191, 1, 1)]);
    // The allocation length limits the descriptors; the header says how
    // much was built.
    let d = h.good(&lba_status(0, 24), &[], 24).data_in;
    assert_eq!(d.len(), 24);
    assert_eq!(&d[..4], &20u32.to_be_bytes());
    let r = h.good(&lba_status(0, 10), &[], 10);
    assert_eq!(r.data_in.len(), 10);
    let r = h.good(&lba_status(0, 0), &[], 0);
    assert!(r.data_in.is_empty());
    for lba in [8192, 8193, 1 << 63, u64::MAX] {
        h.check(&lba_status(lba, 24), &[], 24, LBA_OOB);
    }
}

#[test]
fn write_same_writes_the_pattern() {
    let (h, _) = mem_harness(8192);
    let block = pattern(BS as usize, 42);
    // More blocks than one internal batch (2048 blocks of 512 bytes).
    h.good(&ws16(100, 5000, 0), &block, BS);
    let back = read_blocks(&h, 99, 5002);
    assert!(back[..BS as usize].iter().all(|&b| b == 0));
    for blk in back[BS as usize..].chunks(BS as usize).take(5000) {
        assert_eq!(blk, &block[..]);
    }
    assert!(back[5001 * BS as usize..].iter().all(|&b| b == 0));
    h.good(&ws10(7, 3, false), &block, BS);
    assert_eq!(read_blocks(&h, 7, 3), block.repeat(3));
    // UNMAP deallocates whatever the block holds (LBPRZ: reads zeros).
    h.good(&ws10(20, 2, true), &block, BS);
    assert!(read_blocks(&h, 20, 2).iter().all(|&b| b == 0));
}

#[test]
fn write_same_zeros_unmap_and_ndob_deallocate() {
    let (h, mem) = mem_harness(8192);
    let ones = vec![0xffu8; BS as usize];
    h.good(&ws16(0, 8192, 0), &ones, BS);
    assert_eq!(mem.allocated_bytes(), 4 << 20);
    h.good(&ws16(0, 2048, 0x08), &[0; BS as usize], BS);
    assert_eq!(mem.allocated_bytes(), 3 << 20);
    // NDOB: no data-out, zeros; with UNMAP it deallocates.
    let r = h.good(&ws16(2048, 2048, 0x09), &[], 0);
    assert_eq!(r.transfer_len, 0);
    assert_eq!(mem.allocated_bytes(), 2 << 20);
    // Zero blocks means "to the end of the medium".
    h.good(&ws16(8000, 0, 0x01), &[], 0);
    assert!(
        read_blocks(&h, 7999, 193)[BS as usize..]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(read_blocks(&h, 7999, 1), ones);
    assert_eq!(statuses(&h, 0, 64)[0], (0, 4096, 1));
}

#[test]
fn write_same_refuses_bad_commands() {
    let (h, _) = mem_harness(BLOCKS);
    let block = vec![1u8; BS as usize];
    h.check(&ws10(BLOCKS as u32 - 1, 2, false), &block, BS, LBA_OOB);
    h.check(&ws10(BLOCKS as u32, 0, false), &block, BS, LBA_OOB);
    h.check(&ws16(u64::MAX, 2, 0), &block, BS, LBA_OOB);
    let mut anchor = ws10(0, 1, true);
    anchor[1] |= 0x10;
    h.check(&anchor, &[0; BS as usize], BS, INVALID_FIELD);
    let mut wrprotect = ws10(0, 1, false);
    wrprotect[1] |= 0x20;
    h.check(&wrprotect, &block, BS, INVALID_FIELD);
    // One block of data-out, no more, no less: an EDTL that disagrees
    // with the command is 0Eh/03h (see short_data.rs).
    let bad_iu = (key::ILLEGAL_REQUEST, 0x0e, 3);
    h.check(&ws10(0, 1, true), &block[..256], 256, bad_iu);
    h.check(&ws10(0, 1, true), &block.repeat(2), 2 * BS, bad_iu);
    let big = Harness::with_luns(vec![(0, mem_lu(1 << 20, false))]);
    let max = limits::MAX_WRITE_SAME_BLOCKS as u32;
    big.check(&ws16(0, max + 1, 0), &block, BS, INVALID_FIELD);
    big.check(&ws16(0, 0, 0), &block, BS, INVALID_FIELD); // to the end: too long
    big.good(&ws16((1 << 20) - u64::from(max), 0, 0), &block, BS);
    let ro = Harness::with_luns(vec![(0, mem_lu(BLOCKS, true))]);
    ro.check(&ws10(0, 1, false), &block, BS, WRITE_PROTECTED);
}

#[test]
fn write_same_and_unmap_stamp_changed_blocks() {
    let mem: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let tracker = Arc::new(Tracker::volatile(BLOCKS, 8).unwrap());
    let lu = LogicalUnit::new(mem, BS, identity(1), false).with_tracker(tracker.clone());
    let h = Harness::with_luns(vec![(0, Arc::new(lu))]);
    h.good(&ws10(64, 16, false), &[5; BS as usize], BS);
    assert_eq!(unmap(&h, &[(256, 8)]).status, status::GOOD);
    let page = tracker.changed_extents(0, 0, 16).unwrap();
    let got: Vec<_> = page
        .descriptors
        .iter()
        .map(|d| (d.lba, d.blocks, d.deallocated))
        .collect();
    assert_eq!(got, vec![(64, 16, false), (256, 8, true)]);
    h.good(&sanitize_cdb(2, false, 0), &[], 0);
    let page = tracker.changed_extents(0, 0, 16).unwrap();
    let d = page.descriptors[0];
    assert_eq!((d.lba, d.blocks), (0, BLOCKS));
}

#[test]
fn sanitize_overwrite_with_invert() {
    let (h, _) = mem_harness(BLOCKS);
    write_blocks(&h, 0, &pattern(BS as usize, 1));
    // Two passes with INVERT: the last pass writes the inverted pattern,
    // repeated to fill each block.
    let p = overwrite_params(0x80 | 2, &[0x0f, 0xf1, 0x22]);
    h.good(&sanitize_cdb(1, false, p.len() as u16), &p, p.len() as u32);
    let want: Vec<u8> = [0xf0, 0x0e, 0xdd]
        .iter()
        .copied()
        .cycle()
        .take(BS as usize)
        .collect();
    for lba in [0, BLOCKS - 1] {
        assert_eq!(read_blocks(&h, lba, 1), want);
    }
    // A zero pattern deallocates.
    let p = overwrite_params(1, &[0; 4]);
    h.good(&sanitize_cdb(1, false, 8), &p, 8);
    assert_eq!(statuses(&h, 0, 64), vec![(0, BLOCKS as u32, 1)]);
}

#[test]
fn sanitize_overwrite_parameter_checks() {
    let (h, _) = mem_harness(BLOCKS);
    let good = overwrite_params(1, &[0xaa; BS as usize]);
    for len in 0..5u16 {
        h.check(
            &sanitize_cdb(1, false, len),
            &good,
            u32::from(len),
            INVALID_FIELD,
        );
    }
    let long = [good.clone(), vec![0]].concat();
    h.check(
        &sanitize_cdb(1, false, BS as u16 + 5),
        &long,
        BS + 5,
        INVALID_FIELD,
    );
    for (first, plen) in [
        (0u8, BS as u16),
        (1, 0),
        (1, BS as u16 + 4),
        (1, 7),
        (0x21, BS as u16),
    ] {
        let mut p = good.clone();
        p[0] = first;
        p[2..4].copy_from_slice(&plen.to_be_bytes());
        h.check(
            &sanitize_cdb(1, false, p.len() as u16),
            &p,
            p.len() as u32,
            INVALID_PARAM,
        );
    }
    h.check(&sanitize_cdb(1, false, 20), &good[..10], 10, PLLE);
    h.check(&sanitize_cdb(2, false, 8), &[0; 8], 8, INVALID_FIELD);
    for sa in [0u8, 4, 0x1f] {
        h.check(&sanitize_cdb(sa, false, 0), &[], 0, INVALID_FIELD);
    }
    let mut reserved = sanitize_cdb(2, false, 0);
    reserved[1] |= 0x40;
    h.check(&reserved, &[], 0, INVALID_FIELD);
    let ro = Harness::with_luns(vec![(0, mem_lu(BLOCKS, true))]);
    ro.check(&sanitize_cdb(2, false, 0), &[], 0, WRITE_PROTECTED);
}

#[test]
fn block_erase_deallocates_everything() {
    let (h, mem) = mem_harness(8192);
    h.good(&ws16(0, 8192, 0), &[0x61; BS as usize], BS);
    h.good(&sanitize_cdb(2, false, 0), &[], 0);
    assert_eq!(mem.allocated_bytes(), 0);
    assert!(read_blocks(&h, 0, 8192).iter().all(|&b| b == 0));
    assert_eq!(statuses(&h, 0, 256), vec![(0, 8192, 1)]);
}

#[test]
fn commands_wait_out_a_sanitize() {
    let (h, _) = mem_harness(BLOCKS);
    let lu = h.srv.luns[&0].clone();
    lu.sanitizing.store(true, Ordering::SeqCst);
    h.check(&[0; 6], &[], 0, SANITIZING);
    h.check(&read10(0, 1), &[], BS, SANITIZING);
    h.check(&sanitize_cdb(2, false, 0), &[], 0, SANITIZING);
    h.good(&[0x12, 0, 0, 0, 36, 0], &[], 36);
    h.good(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    lu.sanitizing.store(false, Ordering::SeqCst);
    h.good(&[0; 6], &[], 0);
}

#[test]
fn immediate_sanitize_runs_in_the_background() {
    let (h, _) = mem_harness(8192);
    let p = overwrite_params(1, &[0x5a]);
    h.good(&sanitize_cdb(1, true, 5), &p, 5);
    let start = std::time::Instant::now();
    while h.exec(0, &[0; 6], &[], 0).status != status::GOOD {
        assert!(start.elapsed().as_secs() < 30, "sanitize never finished");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(read_blocks(&h, 8191, 1), vec![0x5a; BS as usize]);
}

#[test]
fn read_defect_data_is_empty() {
    let h = Harness::new();
    // (10): PLIST and GLIST requested, long block format.
    let d = h
        .good(&[0x37, 0, 0x1b, 0, 0, 0, 0, 0, 32, 0], &[], 32)
        .data_in;
    assert_eq!(d, vec![0, 0x1b, 0, 0]);
    let d = h
        .good(&[0x37, 0, 0x04, 0, 0, 0, 0, 0, 2, 0], &[], 2)
        .data_in;
    assert_eq!(d, vec![0, 0x04]);
    h.check(
        &[0x37, 0, 0x07, 0, 0, 0, 0, 0, 32, 0],
        &[],
        32,
        INVALID_FIELD,
    );
    h.check(
        &[0x37, 0x01, 0, 0, 0, 0, 0, 0, 32, 0],
        &[],
        32,
        INVALID_FIELD,
    );
    // (12): flags in byte 1, 8-byte header.
    let cdb = [0xb7, 0x08, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let d = h.good(&cdb, &[], 32).data_in;
    assert_eq!(d, vec![0, 0x08, 0, 0, 0, 0, 0, 0]);
    let mut cdb = cdb;
    cdb[1] = 0x0f;
    h.check(&cdb, &[], 32, INVALID_FIELD);
}

#[test]
fn log_sense_provisioning_page() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileBackend::open(&dir.path().join("t.img"), 2048 * BS as u64, true, false);
    let lu = LogicalUnit::new(Arc::new(file.unwrap()), BS, identity(1), false)
        .with_soft_threshold(Some(70));
    let h = Harness::with_luns(vec![(0, Arc::new(lu))]);
    let _ = h.exec(0, &[0; 6], &[], 0); // power-on unit attention
    let log = |page: u8, pointer: u16| {
        let mut c = vec![0x4d, 0, 0x40 | page, 0, 0];
        c.extend_from_slice(&pointer.to_be_bytes());
        c.extend_from_slice(&[0x01, 0x00, 0]);
        c
    };
    // Supported pages: 00h and 0Ch.
    assert_eq!(
        h.good(&log(0, 0), &[], 256).data_in,
        vec![0, 0, 0, 2, 0, 0x0c]
    );
    // Nothing allocated yet: used 0, available the whole LUN (2048 blocks
    // in 2^1-block units), formats binary with SCOPE 10b/01b.
    let d = h.good(&log(0x0c, 0), &[], 256).data_in;
    assert_eq!(&d[0..4], &[0x0c, 0, 0, 24]);
    assert_eq!(&d[4..16], &[0, 1, 0x03, 8, 0, 0, 0x04, 0, 0, 0, 0, 0b10]);
    assert_eq!(&d[16..28], &[0, 2, 0x03, 8, 0, 0, 0, 0, 0, 0, 0, 0b01]);
    // PARAMETER POINTER skips parameters below it.
    let d = h.good(&log(0x0c, 2), &[], 256).data_in;
    assert_eq!((d[3], d[5]), (12, 2));
    assert_eq!(&inq_of(&h, 0xb2)[4..8], &[1, 0xe4, 0x02, 70]);
    // Unknown page, other page controls, subpages: INVALID FIELD IN CDB.
    h.check(&log(0x0d, 0), &[], 256, INVALID_FIELD);
    let mut c = log(0x0c, 0);
    c[2] = 0x0c; // PC 00b: threshold values
    h.check(&c, &[], 256, INVALID_FIELD);
    c[2] = 0x4c;
    c[3] = 1;
    h.check(&c, &[], 256, INVALID_FIELD);
}

fn inq_of(h: &Harness, page: u8) -> Vec<u8> {
    h.good(&[0x12, 1, page, 0, 255, 0], &[], 255).data_in
}
