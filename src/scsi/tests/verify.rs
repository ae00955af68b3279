//! VERIFY, WRITE AND VERIFY, ORWRITE, PRE-FETCH, COMPARE AND WRITE and
//! WRITE ATOMIC, including the write-order lock under concurrency.

use super::*;
use crate::cbt::Tracker;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const MISCOMPARE: (u8, u8, u8) = (key::MISCOMPARE, 0x1d, 0);
const BAD_IU: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x0e, 3);
const B: usize = BS as usize;

/// 10-, 12- or 16-byte CDB with LBA and length in the READ/WRITE places.
fn cdb(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = match op >> 5 {
        1 => read10(lba as u32, blocks as u16),
        5 => rw12(op, lba as u32, blocks),
        _ => rw16(op, lba, blocks),
    };
    c[0] = op;
    c[1] = flags;
    c
}

/// COMPARE AND WRITE of `blocks` blocks.
pub(super) fn caw(lba: u64, blocks: u8, flags: u8) -> Vec<u8> {
    let mut c = rw16(0x89, lba, 0);
    c[1] = flags;
    c[13] = blocks;
    c
}

/// INFORMATION field of fixed-format sense (VALID set).
fn information(r: &ScsiResult) -> u32 {
    let s = r.sense.as_ref().expect("sense");
    assert_eq!(s[0] & 0x80, 0x80, "VALID clear");
    u32::from_be_bytes([s[3], s[4], s[5], s[6]])
}

fn read(h: &Harness, lba: u64, blocks: u32) -> Vec<u8> {
    h.good(&rw16(0x88, lba, blocks), &[], blocks * BS).data_in
}

fn write(h: &Harness, lba: u64, data: &[u8]) {
    let blocks = (data.len() / B) as u32;
    h.good(&rw16(0x8a, lba, blocks), data, data.len() as u32);
}

#[test]
fn verify_bytchk_modes_every_size() {
    let h = Harness::new();
    let data = pattern(4 * B, 7);
    write(&h, 20, &data);
    for op in [0x2f, 0xaf, 0x8f] {
        // BYTCHK 00b: medium check only, no data.
        let r = h.good(&cdb(op, 0x00, 20, 4), &[], 0);
        assert_eq!(r.transfer_len, 0);
        // BYTCHK 01b: equal data is GOOD and the transfer is the range.
        let r = h.good(&cdb(op, 0x02, 20, 4), &data, 4 * BS);
        assert_eq!(r.transfer_len, 4 * BS);
        // One byte off: MISCOMPARE at exactly that Data-Out offset.
        for at in [0, 1, 511, 512, 1500, 4 * B - 1] {
            let mut bad = data.clone();
            bad[at] ^= 0x58;
            let r = h.check(&cdb(op, 0x02, 20, 4), &bad, 4 * BS, MISCOMPARE);
            assert_eq!(information(&r), at as u32);
        }
        // DPO is accepted; BYTCHK 10b is reserved; VRPROTECT unsupported.
        h.good(&cdb(op, 0x12, 20, 4), &data, 4 * BS);
        h.check(&cdb(op, 0x04, 20, 4), &data, 4 * BS, INVALID_FIELD);
        for vr in 1..8u8 {
            h.check(
                &cdb(op, vr << 5 | 0x02, 20, 4),
                &data,
                4 * BS,
                INVALID_FIELD,
            );
        }
    }
    // The medium is unchanged by all of it.
    assert_eq!(read(&h, 20, 4), data);
}

#[test]
fn verify_one_block_against_every_block() {
    let h = Harness::new();
    let block = pattern(B, 9);
    let range: Vec<u8> = block.iter().copied().cycle().take(5 * B).collect();
    write(&h, 100, &range);
    let r = h.good(&cdb(0x8f, 0x06, 100, 5), &block, BS);
    assert_eq!(r.transfer_len, BS); // BYTCHK 11b transfers one block
    // Block 3 differs at byte 17: offset into the verified range.
    let mut other = block.clone();
    other[17] ^= 1;
    write(&h, 103, &other);
    let r = h.check(&cdb(0x2f, 0x06, 100, 5), &block, BS, MISCOMPARE);
    assert_eq!(information(&r), 3 * BS + 17);
    // Blocks 100..103 still match.
    h.good(&cdb(0xaf, 0x06, 100, 3), &block, BS);
}

#[test]
fn verify_range_edges_and_short_data() {
    let h = Harness::new();
    let last = BLOCKS - 1;
    let tail = read(&h, last - 1, 2);
    h.good(&cdb(0x8f, 0x02, last - 1, 2), &tail, 2 * BS);
    h.good(&cdb(0x2f, 0x00, last, 1), &[], 0);
    h.check(&cdb(0x2f, 0x02, last, 2), &tail, 2 * BS, LBA_OOB);
    h.check(&cdb(0x2f, 0x00, BLOCKS, 0), &[], 0, LBA_OOB);
    h.check(&cdb(0x8f, 0x02, u64::MAX, 1), &tail[..B], BS, LBA_OOB);
    h.check(&cdb(0xaf, 0x00, 0x8000_0000, 1), &[], 0, LBA_OOB);
    // Zero blocks inside the medium: nothing to do.
    assert_eq!(h.good(&cdb(0x2f, 0x02, 0, 0), &[], 0).transfer_len, 0);
    // A whole-LUN medium check reads in pieces and succeeds.
    h.good(&cdb(0x8f, 0x00, 0, BLOCKS as u32), &[], 0);
    // A range that wraps is out of range before anything else.
    h.check(&cdb(0x8f, 0x02, 0, u32::MAX), &[], 0, LBA_OOB);
    // Short Data-Out: the whole blocks received are compared, the
    // transfer length is still the CDB's; a torn block refuses the command.
    let data = pattern(3 * B, 1);
    write(&h, 10, &data);
    let r = h.good(&cdb(0x2f, 0x02, 10, 3), &data[..B], 3 * BS);
    assert_eq!(r.transfer_len, 3 * BS);
    let r = h.check(&cdb(0x2f, 0x02, 10, 3), &data[..B + 100], 3 * BS, BAD_IU);
    assert_eq!(r.transfer_len, 3 * BS);
    let mut bad = data[..2 * B].to_vec();
    bad[B + 5] ^= 1;
    let r = h.check(&cdb(0x2f, 0x02, 10, 3), &bad, 3 * BS, MISCOMPARE);
    assert_eq!(information(&r), BS + 5);
}

#[test]
fn write_and_verify_writes_every_size() {
    let h = Harness::new();
    for (i, op) in [0x2e, 0xae, 0x8e].into_iter().enumerate() {
        let data = pattern(3 * B, i as u8 + 40);
        let lba = 50 + 10 * i as u64;
        for flags in [0x00, 0x02, 0x10, 0x12] {
            let r = h.good(&cdb(op, flags, lba, 3), &data, 3 * BS);
            assert_eq!(r.transfer_len, 3 * BS);
        }
        assert_eq!(read(&h, lba, 3), data);
        h.check(&cdb(op, 0x04, lba, 3), &data, 3 * BS, INVALID_FIELD);
        h.check(&cdb(op, 0x06, lba, 3), &data, 3 * BS, INVALID_FIELD);
        for wp in 1..8u8 {
            h.check(&cdb(op, wp << 5, lba, 3), &data, 3 * BS, INVALID_FIELD);
        }
        h.check(
            &cdb(op, 0x02, BLOCKS - 1, 2),
            &data[..2 * B],
            2 * BS,
            LBA_OOB,
        );
        h.good(&cdb(op, 0x00, 0, 0), &[], 0);
        h.check(&cdb(op, 0x00, BLOCKS + 1, 0), &[], 0, LBA_OOB);
    }
}

#[test]
fn write_and_verify_short_data_writes_whole_blocks() {
    let h = Harness::new();
    write(&h, 0, &vec![b'a'; 2 * B]);
    // EDTL one block for a two-block command: only block 0 changes.
    let r = h.good(&cdb(0x2e, 0x02, 0, 2), &vec![b'b'; B], BS);
    assert_eq!(r.transfer_len, 2 * BS);
    let back = read(&h, 0, 2);
    assert!(back[..B].iter().all(|&b| b == b'b'));
    assert!(back[B..].iter().all(|&b| b == b'a'));
    // Less than a block: refused (it used to be GOOD with nothing
    // written), nothing written.
    h.check(&cdb(0x8e, 0x00, 1, 1), &[b'c'; 200], 200, BAD_IU);
    assert_eq!(read(&h, 1, 1), vec![b'a'; B]);
    // More than needed: the extra bytes are ignored.
    h.good(&cdb(0xae, 0x02, 1, 1), &vec![b'd'; 3 * B], 3 * BS);
    assert_eq!(read(&h, 0, 3)[B..2 * B], vec![b'd'; B][..]);
}

#[test]
fn read_only_lun_refuses_every_writer() {
    let h = Harness::with_luns(vec![(0, mem_lu(BLOCKS, true))]);
    let one = vec![0u8; B];
    let two = vec![0u8; 2 * B];
    h.check(&cdb(0x2e, 0, 0, 1), &one, BS, WRITE_PROTECTED);
    h.check(&cdb(0x8b, 0, 0, 1), &one, BS, WRITE_PROTECTED);
    h.check(&cdb(0x9c, 0, 0, 1), &one, BS, WRITE_PROTECTED);
    h.check(&caw(0, 1, 0), &two, 2 * BS, WRITE_PROTECTED);
    // Reading commands still work.
    h.good(&cdb(0x2f, 0x02, 0, 1), &one, BS);
    h.good(&cdb(0x34, 0, 0, 1), &[], 0);
}

#[test]
fn orwrite_ors_into_the_medium() {
    let h = Harness::new();
    write(&h, 7, &vec![0x0f; 2 * B]);
    h.good(&cdb(0x8b, 0x00, 7, 2), &vec![0x30; 2 * B], 2 * BS);
    assert_eq!(read(&h, 7, 2), vec![0x3f; 2 * B]);
    h.good(&cdb(0x8b, 0x18, 7, 2), &vec![0xc0; 2 * B], 2 * BS);
    assert_eq!(read(&h, 7, 2), vec![0xff; 2 * B]);
    // Short data: only the first block is ORed; a torn one refuses all.
    write(&h, 7, &vec![0; 2 * B]);
    h.check(
        &cdb(0x8b, 0, 7, 2),
        &vec![0x01; B + 9],
        B as u32 + 9,
        BAD_IU,
    );
    assert_eq!(read(&h, 7, 2), vec![0; 2 * B]);
    let r = h.good(&cdb(0x8b, 0, 7, 2), &vec![0x01; B], BS);
    assert_eq!(r.transfer_len, 2 * BS);
    let back = read(&h, 7, 2);
    assert!(back[..B].iter().all(|&b| b == 1) && back[B..].iter().all(|&b| b == 0));
    h.good(&cdb(0x8b, 0, 0, 0), &[], 0);
    h.check(
        &cdb(0x8b, 0, BLOCKS - 1, 2),
        &vec![0; 2 * B],
        2 * BS,
        LBA_OOB,
    );
    h.check(&cdb(0x8b, 0, 1 << 63, 0), &[], 0, LBA_OOB);
    h.check(&cdb(0x8b, 0x20, 0, 1), &vec![0; B], BS, INVALID_FIELD);
}

#[test]
fn prefetch_checks_the_range_only() {
    let h = Harness::new();
    for op in [0x34u8, 0x90] {
        for flags in [0x00, 0x02] {
            let r = h.good(&cdb(op, flags, 0, 256), &[], 0);
            assert_eq!(r.status, status::GOOD); // never CONDITION MET
            h.good(&cdb(op, flags, BLOCKS - 1, 1), &[], 0);
        }
        // Length 0 means "to the end": fine inside the medium.
        h.good(&cdb(op, 0, 5, 0), &[], 0);
        h.check(&cdb(op, 0, BLOCKS, 0), &[], 0, LBA_OOB);
        h.check(&cdb(op, 0, BLOCKS - 1, 2), &[], 0, LBA_OOB);
        h.check(&cdb(op, 0x01, 0, 1), &[], 0, INVALID_FIELD);
    }
    h.check(&cdb(0x90, 0, u64::MAX, 1), &[], 0, LBA_OOB);
}

#[test]
fn compare_and_write_writes_only_on_match() {
    let h = Harness::new();
    for n in [1u8, 2, 17, 255] {
        let lba = BLOCKS - u64::from(n);
        let len = n as usize * B;
        write(&h, lba, &vec![b'A'; len]);
        let mut out = vec![b'A'; len];
        out.extend(pattern(len, n));
        let r = h.good(&caw(lba, n, 0), &out, 2 * len as u32);
        assert_eq!(r.transfer_len, 2 * len as u32);
        assert_eq!(read(&h, lba, n as u32), out[len..]);
    }
    // Miscompare: INFORMATION is the offset of the first differing byte in
    // the compare data, and nothing is written.
    write(&h, 0, &vec![b'A'; 4 * B]);
    for at in [0usize, 5, B, 4 * B - 27] {
        let mut out = vec![b'A'; 4 * B];
        out[at] = b'C';
        out.extend(vec![b'B'; 4 * B]);
        let r = h.check(&caw(0, 4, 0x08), &out, 8 * BS, MISCOMPARE);
        assert_eq!(information(&r), at as u32);
        assert_eq!(read(&h, 0, 4), vec![b'A'; 4 * B]);
    }
}

#[test]
fn compare_and_write_field_checks() {
    let h = Harness::new();
    let two = vec![0u8; 2 * B];
    // Data-Out must be exactly 2 × N blocks.
    h.check(&caw(0, 1, 0), &vec![0u8; 4 * B], 4 * BS, INVALID_FIELD);
    h.check(&caw(0, 3, 0), &vec![0u8; 4 * B], 4 * BS, INVALID_FIELD);
    h.check(&caw(0, 1, 0), &two[..B], BS, INVALID_FIELD);
    h.check(&caw(0, 0, 0), &two, 2 * BS, INVALID_FIELD);
    // Zero blocks: nothing compared or written, not an error.
    h.good(&caw(0, 0, 0), &[], 0);
    h.check(&caw(BLOCKS, 0, 0), &[], 0, LBA_OOB);
    h.check(&caw(BLOCKS - 1, 2, 0), &vec![0u8; 4 * B], 4 * BS, LBA_OOB);
    // DPO/FUA accepted, WRPROTECT and reserved bytes not.
    h.good(&caw(0, 1, 0x18), &two, 2 * BS);
    h.check(&caw(0, 1, 0x20), &two, 2 * BS, INVALID_FIELD);
    let mut c = caw(0, 1, 0);
    c[12] = 1;
    h.check(&c, &two, 2 * BS, INVALID_FIELD);
}

#[test]
fn write_atomic_all_or_nothing() {
    let h = Harness::new();
    let data = pattern(8 * B, 77);
    let mut c = rw16(0x9c, 30, 0);
    c[12..14].copy_from_slice(&8u16.to_be_bytes());
    let r = h.good(&c, &data, 8 * BS);
    assert_eq!(r.transfer_len, 8 * BS);
    assert_eq!(read(&h, 30, 8), data);
    // Short Data-Out: refused, nothing written.
    let other = pattern(8 * B, 1);
    let r = h.check(&c, &other[..7 * B], 7 * BS, BAD_IU);
    assert_eq!(r.transfer_len, 8 * BS);
    assert_eq!(read(&h, 30, 8), data);
    // Zero blocks, range, ATOMIC BOUNDARY, WRPROTECT.
    h.good(&rw16(0x9c, 0, 0), &[], 0);
    h.check(&rw16(0x9c, BLOCKS + 1, 0), &[], 0, LBA_OOB);
    let mut c = rw16(0x9c, BLOCKS - 1, 0);
    c[13] = 2;
    h.check(&c, &data[..2 * B], 2 * BS, LBA_OOB);
    let mut c = rw16(0x9c, 0, 0);
    c[13] = 1;
    c[11] = 1; // ATOMIC BOUNDARY
    h.check(&c, &data[..B], BS, INVALID_FIELD);
    c[11] = 0;
    c[1] = 0x40;
    h.check(&c, &data[..B], BS, INVALID_FIELD);
    c[1] = 0x18;
    h.good(&c, &data[..B], BS);
}

/// Every writing command stamps changed-block tracking (COMPARE AND WRITE
/// only when it wrote); VERIFY and PRE-FETCH never do.
#[test]
fn changed_block_tracking_stamps() {
    let tracker = Arc::new(Tracker::volatile(BLOCKS, 8).unwrap());
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let lu = LogicalUnit::new(backend, BS, identity(1), false).with_tracker(tracker.clone());
    let h = Harness::with_luns(vec![(0, Arc::new(lu))]);
    // Extents of 8 blocks; the writes below leave gaps so they don't merge.
    let changed = |t: &Tracker| -> Vec<u64> {
        let page = t.changed_extents(0, 0, 1000).unwrap();
        page.descriptors.iter().map(|d| d.lba).collect()
    };
    let zeros = vec![0u8; 2 * B];
    h.good(&cdb(0x8f, 0x02, 0, 1), &zeros[..B], BS);
    h.good(&cdb(0x34, 0x00, 0, 8), &[], 0);
    h.check(
        &caw(8, 1, 0),
        &[vec![1u8; B], vec![2u8; B]].concat(),
        2 * BS,
        MISCOMPARE,
    );
    assert!(changed(&tracker).is_empty());
    h.good(&caw(8, 1, 0), &zeros, 2 * BS);
    assert_eq!(changed(&tracker), vec![8]);
    h.good(&cdb(0x2e, 0x02, 24, 1), &zeros[..B], BS);
    h.good(&cdb(0x8b, 0x00, 40, 1), &zeros[..B], BS);
    let mut c = rw16(0x9c, 56, 0);
    c[13] = 1;
    h.good(&c, &zeros[..B], BS);
    assert_eq!(changed(&tracker), vec![8, 24, 40, 56]);
}

/// A memory backend whose writes and reads go one block at a time with a
/// short sleep in between, so an unordered concurrent write tears visibly.
struct SlowBackend(MemoryBackend);

impl Backend for SlowBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, chunk) in buf.chunks_mut(B).enumerate() {
            self.0.read_at(offset + (i * B) as u64, chunk)?;
            thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        for (i, chunk) in buf.chunks(B).enumerate() {
            self.0.write_at(offset + (i * B) as u64, chunk, fua)?;
            thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.unmap(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_zeroes(offset, len)
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

/// COMPARE AND WRITE flips 8 blocks between two patterns while another
/// thread hammers WRITEs of whole patterns onto the same blocks. The CAW's
/// compare reads the medium under the exclusive write-order lock, so it
/// must always see one whole pattern: a MISCOMPARE is reported at offset
/// 0, never inside the range (which would be a half-landed WRITE). Without
/// the lock the slow backend makes that torn view show up at once.
#[test]
fn compare_and_write_is_atomic_against_writes() {
    const N: usize = 8;
    let backend: Arc<dyn Backend> = Arc::new(SlowBackend(MemoryBackend::new(64 * BS as u64)));
    let lu = Arc::new(LogicalUnit::new(backend, BS, identity(1), false));
    let h = Arc::new(Harness::with_luns(vec![(0, lu)]));
    let pat = [vec![0xaa_u8; N * B], vec![0x55_u8; N * B]];
    write(&h, 0, &pat[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, stop, pat) = (h.clone(), stop.clone(), pat.clone());
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                write(&h, 0, &pat[i % 2]);
                i += 1;
            }
            i
        })
    };
    let (mut wrote, mut missed) = (0, 0);
    for i in 0..600 {
        let (old, new) = (&pat[i % 2], &pat[(i + 1) % 2]);
        let out = [old.as_slice(), new.as_slice()].concat();
        let r = h.exec(0, &caw(0, N as u8, 0), &out, out.len() as u32);
        if r.status == status::GOOD {
            wrote += 1;
            continue;
        }
        assert_eq!(r.sense_codes(), Some(MISCOMPARE));
        assert_eq!(information(&r), 0, "CAW saw a torn mix of patterns");
        missed += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        writes > 0 && wrote > 0 && missed > 0,
        "{writes} {wrote} {missed}"
    );
    // Whatever happened last, the blocks hold one whole pattern.
    let end = read(&h, 0, N as u32);
    assert!(end == pat[0] || end == pat[1]);
}
