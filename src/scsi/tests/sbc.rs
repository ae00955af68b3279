use super::*;
use crate::backend::FileBackend;
use std::io;

/// A backend that is only big: reads zeros, refuses writes.
struct Huge(u64);

impl Backend for Huge {
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(io::Error::other("no"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn unmap(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0
    }
    fn describe(&self) -> String {
        "huge".into()
    }
}

fn rc16(alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn read_capacity() {
    let h = Harness::new();
    let d = h.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8).data_in;
    assert_eq!(&d[..4], &((BLOCKS - 1) as u32).to_be_bytes());
    assert_eq!(&d[4..], &BS.to_be_bytes());
    h.check(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 8, INVALID_FIELD);
    h.good(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], 8);
    let d = h.good(&rc16(32), &[], 32).data_in;
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(&d[8..12], &BS.to_be_bytes());
    // No PI; 4 KiB physical blocks (LBPPBE 3); LBPME and LBPRZ.
    assert_eq!(&d[12..16], &[0, 3, 0xc0, 0]);
    assert!(d[16..].iter().all(|&b| b == 0));
    for alloc in 0..16 {
        let r = h.good(&rc16(alloc), &[], alloc);
        assert_eq!(r.data_in, d[..alloc as usize].to_vec());
    }
}

#[test]
fn read_capacity_of_a_huge_lun() {
    let blocks = (1u64 << 32) + 10;
    let lu = LogicalUnit::new(Arc::new(Huge(blocks * BS as u64)), BS, identity(2), false);
    let h = Harness::with_luns(vec![(0, Arc::new(lu))]);
    let d = h.good(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8).data_in;
    assert_eq!(&d[..4], &[0xff; 4]);
    let d = h.good(&rc16(32), &[], 32).data_in;
    assert_eq!(&d[..8], &(blocks - 1).to_be_bytes());
    // The last block is readable with READ(16), one past is not.
    h.good(&rw16(0x88, blocks - 1, 1), &[], 512);
    h.check(&rw16(0x88, blocks, 1), &[], 512, LBA_OOB);
    // Short block descriptor saturates.
    let d = h.good(&[0x1a, 0, 0x08, 0, 255, 0], &[], 255).data_in;
    assert_eq!(&d[4..8], &[0xff; 4]);
}

#[test]
fn write_then_read_every_cdb_size() {
    let h = Harness::new();
    let data = pattern(4 * BS as usize, 3);
    h.good(&write10(10, 4, false), &data, data.len() as u32);
    let r = h.good(&read10(10, 4), &[], data.len() as u32);
    assert_eq!(r.data_in, data);
    assert_eq!(r.transfer_len as usize, data.len());
    assert_eq!(h.good(&rw12(0xa8, 10, 4), &[], 2048).data_in, data);
    assert_eq!(h.good(&rw16(0x88, 10, 4), &[], 2048).data_in, data);
    assert_eq!(h.good(&rw6(0x08, 10, 4), &[], 2048).data_in, data);
    let d2 = pattern(2 * BS as usize, 9);
    h.good(&rw16(0x8a, 100, 2), &d2, 1024);
    h.good(&rw12(0xaa, 102, 2), &d2, 1024);
    h.good(&rw6(0x0a, 104, 2), &d2, 1024);
    let r = h.good(&read10(100, 6), &[], 3072).data_in;
    assert_eq!(r, [d2.clone(), d2.clone(), d2].concat());
}

#[test]
fn read6_zero_means_256_blocks() {
    let h = Harness::new();
    let r = h.good(&rw6(0x08, 0, 0), &[], 256 * BS);
    assert_eq!(r.data_in.len(), 256 * BS as usize);
    let data = pattern(256 * BS as usize, 1);
    h.good(&rw6(0x0a, 0, 0), &data, data.len() as u32);
    assert_eq!(h.good(&read10(0, 256), &[], 256 * BS).data_in, data);
}

#[test]
fn range_edges() {
    let h = Harness::new();
    let last = (BLOCKS - 1) as u32;
    h.good(&read10(last, 1), &[], BS);
    h.check(&read10(last, 2), &[], 2 * BS, LBA_OOB);
    h.check(&read10(last + 1, 1), &[], BS, LBA_OOB);
    h.good(&write10(last, 1, false), &[7; BS as usize], BS);
    h.check(
        &write10(last, 2, false),
        &[7; 2 * BS as usize],
        2 * BS,
        LBA_OOB,
    );
    // Zero blocks: GOOD inside the medium, out of range past it.
    let r = h.good(&read10(0, 0), &[], 0);
    assert_eq!((r.data_in.len(), r.transfer_len), (0, 0));
    h.check(&read10(last + 2, 0), &[], 0, LBA_OOB);
    h.check(&read10(u32::MAX, 0), &[], 0, LBA_OOB);
    // No overflow near the top of the LBA space.
    for lba in [u64::MAX, u64::MAX - 1, 1 << 63, 1 << 55] {
        for n in [1, 2, 256, u32::MAX] {
            h.check(&rw16(0x88, lba, n), &[], 512, LBA_OOB);
            h.check(&rw16(0x8a, lba, n), &[0; 512], 512, LBA_OOB);
        }
    }
    h.check(&rw6(0x08, 0x1f_ffff, 1), &[], 512, LBA_OOB);
    // A sense INFORMATION field names the offending LBA.
    let s = h
        .check(&read10(last + 1, 1), &[], BS, LBA_OOB)
        .sense
        .unwrap();
    assert_eq!(s[0], 0xf0);
    assert_eq!(&s[3..7], &(last + 1).to_be_bytes());
}

#[test]
fn read_residuals() {
    let h = Harness::new();
    // EDTL 0 for a one-block read: nothing sent, SPDTL still 512.
    let r = h.good(&read10(0, 1), &[], 0);
    assert_eq!((r.data_in.len(), r.transfer_len), (0, 512));
    let r = h.good(&read10(0, 1), &[], 10000);
    assert_eq!((r.data_in.len(), r.transfer_len), (512, 512));
    let r = h.good(&read10(0, 1), &[], 200);
    assert_eq!((r.data_in.len(), r.transfer_len), (200, 512));
    let r = h.good(&read10(0, 2), &[], 512);
    assert_eq!((r.data_in.len(), r.transfer_len), (512, 1024));
    // Data-out sent with a READ is ignored.
    h.good(&read10(0, 1), &[0xa6; 512], 512);
}

#[test]
fn write_residuals() {
    let h = Harness::new();
    h.good(&write10(0, 2, false), &[b'a'; 1024], 1024);
    // Less data than the CDB asks for: only the whole blocks that came.
    let r = h.good(&write10(0, 2, false), &[b'b'; 512], 512);
    assert_eq!(r.transfer_len, 1024);
    let d = h.good(&read10(0, 2), &[], 1024).data_in;
    assert_eq!(&d[..512], &[b'b'; 512][..]);
    assert_eq!(&d[512..], &[b'a'; 512][..]);
    // A torn block is refused, not silently dropped (short_data.rs).
    let bad_iu = (key::ILLEGAL_REQUEST, 0x0e, 3);
    let r = h.check(&write10(1, 1, false), &[b'x'; 200], 200, bad_iu);
    assert_eq!(r.transfer_len, 512);
    // EDTL 0: nothing arrived, nothing written, GOOD with the whole
    // length as overflow residual (libiscsi 1.19 requires GOOD here).
    let r = h.good(&write10(1, 1, false), &[], 0);
    assert_eq!(r.transfer_len, 512);
    assert_eq!(h.good(&read10(1, 1), &[], 512).data_in, vec![b'a'; 512]);
    // More data than needed: the first `needed` bytes are written.
    let r = h.good(&write10(0, 1, false), &[b'c'; 1024], 1024);
    assert_eq!(r.transfer_len, 512);
    let d = h.good(&read10(0, 2), &[], 1024).data_in;
    assert_eq!(&d[..512], &[b'c'; 512][..]);
    assert_eq!(&d[512..], &[b'a'; 512][..]);
    // Zero-block write transfers nothing.
    let r = h.good(&write10(0, 0, false), &[], 0);
    assert_eq!(r.transfer_len, 0);
}

#[test]
fn protection_and_flag_bits() {
    let h = Harness::new();
    for p in 1..8u8 {
        let mut c = read10(0, 1);
        c[1] = p << 5;
        h.check(&c, &[], 512, INVALID_FIELD);
        let mut c = write10(0, 1, false);
        c[1] = p << 5;
        h.check(&c, &[0; 512], 512, INVALID_FIELD);
    }
    // DPO, FUA and FUA_NV are accepted.
    for flags in [0x10u8, 0x08, 0x0a, 0x02, 0x1a] {
        let mut c = write10(0, 1, false);
        c[1] = flags;
        h.good(&c, &[1; 512], 512);
        let mut c = read10(0, 1);
        c[1] = flags;
        h.good(&c, &[], 512);
    }
    // Group number is accepted, the reserved bits above it are not.
    let mut c = read10(0, 1);
    c[6] = 0x3f;
    h.good(&c, &[], 512);
    c[6] = 0x40;
    h.check(&c, &[], 512, INVALID_FIELD);
}

#[test]
fn transfer_length_limit() {
    let h = Harness::with_luns(vec![(0, mem_lu(1 << 16, false))]);
    let max = (crate::scsi::sbc::MAX_TRANSFER_BYTES / BS as u64) as u32;
    let r = h.good(&rw16(0x88, 0, max), &[], 0);
    assert_eq!(r.transfer_len as u64, crate::scsi::sbc::MAX_TRANSFER_BYTES);
    h.check(&rw16(0x88, 0, max + 1), &[], 0, INVALID_FIELD);
}

#[test]
fn read_only_lun() {
    let lu = mem_lu(BLOCKS, true);
    lu.backend.write_at(0, &[5; 512], false).unwrap();
    let h = Harness::with_luns(vec![(0, lu)]);
    for cdb in [
        write10(0, 1, false),
        rw12(0xaa, 0, 1),
        rw16(0x8a, 0, 1),
        rw6(0x0a, 0, 1),
    ] {
        h.check(&cdb, &[0; 512], 512, WRITE_PROTECTED);
    }
    assert_eq!(h.good(&read10(0, 1), &[], 512).data_in, vec![5; 512]);
    h.good(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
}

#[test]
fn synchronize_cache() {
    let h = Harness::new();
    h.good(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    h.good(&[0x35, 0x02, 0, 0, 0, 1, 0, 0, 1, 0], &[], 0); // IMMED
    h.good(&[0x35, 0x04, 0, 0, 0, 0, 0, 0, 1, 0], &[], 0); // obsolete SYNC_NV
    let mut c = rw16(0x91, BLOCKS - 1, 1);
    h.good(&c, &[], 0);
    c = rw16(0x91, BLOCKS, 0);
    h.check(&c, &[], 0, LBA_OOB);
    c = rw16(0x91, u64::MAX, 2);
    h.check(&c, &[], 0, LBA_OOB);
}

fn file_harness(path: &std::path::Path) -> Harness {
    let b = FileBackend::open(path, BLOCKS * BS as u64, true, false).unwrap();
    let lu = LogicalUnit::new(Arc::new(b), BS, identity(3), false);
    Harness::with_luns(vec![(0, Arc::new(lu))])
}

#[test]
fn file_backend_fua_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.img");
    let data = pattern(8 * BS as usize, 77);
    {
        let h = file_harness(&path);
        h.good(&write10(40, 8, true), &data, data.len() as u32);
        h.good(&write10(BLOCKS as u32 - 1, 1, false), &data[..512], 512);
        h.good(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    }
    let h = file_harness(&path);
    assert_eq!(h.good(&read10(40, 8), &[], 4096).data_in, data);
    assert_eq!(
        h.good(&read10(BLOCKS as u32 - 1, 1), &[], 512).data_in,
        &data[..512]
    );
    assert_eq!(h.good(&read10(0, 1), &[], 512).data_in, vec![0; 512]);
}

#[test]
fn concurrent_commands() {
    let h = Arc::new(Harness::new());
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let h = h.clone();
            s.spawn(move || {
                for i in 0..50u32 {
                    let lba = t as u32 * 100 + i;
                    let d = pattern(512, t ^ i as u8);
                    h.good(&write10(lba, 1, false), &d, 512);
                    assert_eq!(h.good(&read10(lba, 1), &[], 512).data_in, d);
                }
            });
        }
    });
}
