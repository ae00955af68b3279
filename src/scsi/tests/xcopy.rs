//! EXTENDED COPY between LUNs of one device server, RECEIVE COPY RESULTS
//! and the Third-party Copy VPD page.

use super::*;
use crate::scsi::spc::copy_results::{MAX_CSCD_DESCRIPTORS, MAX_DESCRIPTOR_LIST_LENGTH};

const COPY_ABORTED: u8 = 0x0a;

fn two_luns() -> Harness {
    let mk = |n: u8| {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
        Arc::new(LogicalUnit::new(backend, BS, identity(n), false))
    };
    Harness::with_luns(vec![(0, mk(1)), (1, mk(2))])
}

/// Identification CSCD descriptor naming the LUN with NAA `identity(n)`.
pub(super) fn cscd(n: u8) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x01; // binary
    d[5] = 0x03; // LU association, NAA
    d[7] = 16;
    d[8..24].copy_from_slice(&identity(n).naa);
    d[29..32].copy_from_slice(&BS.to_be_bytes()[1..]);
    d
}

pub(super) fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

pub(super) fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
    let c: Vec<u8> = cscds.concat();
    let s: Vec<u8> = segs.concat();
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[1] = usage << 3;
    p[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
    p[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    p.extend_from_slice(&c);
    p.extend_from_slice(&s);
    p
}

pub(super) fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn rcr(sa: u8, list_id: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    c
}

fn xcopy(h: &Harness, p: &[u8]) -> ScsiResult {
    h.exec(0, &xcopy_cdb(p.len()), p, p.len() as u32)
}

#[test]
fn copies_between_two_luns_and_holds_status() {
    let h = two_luns();
    let data = pattern(8 * BS as usize, 9);
    h.good(&write10(100, 8, false), &data, data.len() as u32);
    let p = list(3, 0, &[cscd(1), cscd(2)], &[b2b(0, 1, 8, 100, 7)]);
    let r = xcopy(&h, &p);
    assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
    let r = h.exec(1, &read10(7, 8), &[], data.len() as u32);
    assert_eq!(r.data_in, data);
    // LUN 1 is untouched elsewhere; LUN 0's source is unchanged.
    assert_eq!(h.good(&read10(100, 8), &[], 4096).data_in, data);
    let st = h.good(&rcr(0, 3), &[], 1024).data_in;
    assert_eq!(st[4], 0x01); // completed without errors
    assert_eq!(u16::from_be_bytes([st[5], st[6]]), 1);
    assert_eq!(st[7], 0); // bytes
    assert_eq!(u32::from_be_bytes([st[8], st[9], st[10], st[11]]), 8 * BS);
    // Reported once, then gone.
    h.check(&rcr(0, 3), &[], 1024, INVALID_FIELD);
}

#[test]
fn overlapping_copy_within_one_lun() {
    let h = Harness::with_luns(vec![(0, mem_lu(BLOCKS, false))]);
    let data = pattern(4096 * 2, 3);
    h.good(&write10(0, 16, false), &data, data.len() as u32);
    // Move blocks 0..16 up by 4 on the same LUN (overlap, destination above).
    let p = list(0, 2, &[cscd(1)], &[b2b(0, 0, 16, 0, 4)]);
    assert_eq!(xcopy(&h, &p).status, status::GOOD);
    assert_eq!(h.good(&read10(4, 16), &[], 8192).data_in, data);
}

#[test]
fn descriptor_errors() {
    let h = two_luns();
    let ill = key::ILLEGAL_REQUEST;
    let mut fc = cscd(1);
    fc[0] = 0xe0;
    let r = xcopy(&h, &list(1, 0, &[fc], &[b2b(0, 0, 1, 0, 1)]));
    assert_eq!(r.sense_codes(), Some((ill, 0x26, 0x07)));
    let mut stream = vec![0u8; 20];
    stream[0] = 0x03;
    stream[3] = 0x10;
    let r = xcopy(&h, &list(1, 0, &[cscd(1)], &[stream]));
    assert_eq!(r.sense_codes(), Some((ill, 0x26, 0x09)));
    let many = vec![cscd(1); MAX_CSCD_DESCRIPTORS as usize + 1];
    let r = xcopy(&h, &list(1, 0, &many, &[b2b(0, 0, 1, 0, 1)]));
    assert_eq!(r.sense_codes(), Some((ill, 0x26, 0x06)));
    let segs = vec![b2b(0, 0, 1, 0, 1); 17];
    let r = xcopy(&h, &list(1, 0, &[cscd(1)], &segs));
    assert_eq!(r.sense_codes(), Some((ill, 0x26, 0x08)));
    // Descriptors longer than the maximum descriptor list length.
    let n = MAX_DESCRIPTOR_LIST_LENGTH as usize / 28 + 1;
    let r = xcopy(&h, &list(1, 0, &[cscd(1)], &vec![b2b(0, 0, 1, 0, 1); n]));
    assert_eq!(r.sense_codes(), Some((ill, 0x1a, 0x00)));
    // Truncated parameter list.
    let p = list(1, 0, &[cscd(1)], &[b2b(0, 0, 1, 0, 1)]);
    let r = h.exec(0, &xcopy_cdb(p.len() - 1), &p[..p.len() - 1], 100);
    assert_eq!(r.sense_codes(), Some((ill, 0x1a, 0x00)));
    // Unknown LUN, bad index, past the end: COPY ABORTED.
    let r = xcopy(&h, &list(1, 0, &[cscd(9)], &[b2b(0, 0, 1, 0, 1)]));
    assert_eq!(r.sense_codes(), Some((COPY_ABORTED, 0x0d, 0x02)));
    let r = xcopy(&h, &list(1, 0, &[cscd(1)], &[b2b(0, 1, 1, 0, 1)]));
    assert_eq!(r.sense_codes(), Some((COPY_ABORTED, 0x0d, 0x02)));
    let r = xcopy(&h, &list(4, 0, &[cscd(1)], &[b2b(0, 0, 8, 0, BLOCKS - 1)]));
    assert_eq!(r.sense_codes(), Some((COPY_ABORTED, 0, 0)));
    // The failure is held: COPY STATUS says "completed with errors",
    // FAILED SEGMENT DETAILS carries the sense.
    assert_eq!(h.good(&rcr(0, 4), &[], 1024).data_in[4], 0x02);
    let f = h.good(&rcr(4, 4), &[], 1024).data_in;
    assert_eq!(f[56], status::CHECK_CONDITION);
    assert_eq!((f[60 + 2], f[60 + 12]), (COPY_ABORTED, 0));
    // Empty parameter list: nothing to do.
    assert_eq!(h.exec(0, &xcopy_cdb(0), &[], 0).status, status::GOOD);
    // LIST ID USAGE 01b is reserved.
    let r = xcopy(&h, &list(1, 1, &[cscd(1)], &[b2b(0, 0, 1, 0, 1)]));
    assert_eq!(r.sense_codes(), Some(INVALID_PARAM));
}

#[test]
fn read_only_destination_is_refused() {
    let ro = {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
        Arc::new(LogicalUnit::new(backend, BS, identity(2), true))
    };
    let h = Harness::with_luns(vec![(0, mem_lu(BLOCKS, false)), (1, ro)]);
    let r = xcopy(&h, &list(1, 2, &[cscd(1), cscd(2)], &[b2b(0, 1, 1, 0, 0)]));
    assert_eq!(r.sense_codes(), Some(WRITE_PROTECTED));
}

#[test]
fn operating_parameters_match_vpd_8f() {
    let h = two_luns();
    let op = h.good(&rcr(3, 0), &[], 1024).data_in;
    let avail = u32::from_be_bytes([op[0], op[1], op[2], op[3]]) as usize;
    assert_eq!(avail + 4, op.len());
    assert_eq!(u16::from_be_bytes([op[8], op[9]]), MAX_CSCD_DESCRIPTORS);
    assert_eq!(&op[43..], &[2, 0x02, 0xe4]);
    let v = h.good(&[0x12, 1, 0x8f, 1, 0, 0], &[], 256).data_in;
    assert_eq!(v[1], 0x8f);
    assert_eq!(u16::from_be_bytes([v[2], v[3]]) as usize + 4, v.len());
    // Walk the descriptors to the Parameter Data descriptor (0004h).
    let mut at = 4;
    let mut found = false;
    while at + 4 <= v.len() {
        let kind = u16::from_be_bytes([v[at], v[at + 1]]);
        let len = u16::from_be_bytes([v[at + 2], v[at + 3]]) as usize;
        assert_eq!((len + 4) % 4, 0);
        if kind == 0x0004 {
            assert_eq!(&v[at + 8..at + 16], &op[8..16]);
            found = true;
        }
        at += 4 + len;
    }
    assert!(found);
    assert_eq!(at, v.len());
}
