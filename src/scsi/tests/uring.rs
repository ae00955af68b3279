//! The device server over the io_uring backend (O_DIRECT, 4096-byte
//! alignment forced so 512-byte blocks take the read-modify-write path),
//! run side by side with a memory LUN: a random sequence of reads,
//! writes, WRITE SAME, UNMAP and SYNCHRONIZE CACHE must give the same
//! status, sense and data on both.

use super::*;
use crate::backend::{UringBackend, UringOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn uring_lu(path: &std::path::Path) -> Arc<LogicalUnit> {
    let opts = UringOptions {
        direct: true,
        chunk: 16 << 10,
        min_align: 4096,
    };
    let b = UringBackend::open(path, BLOCKS * BS as u64, true, false, &opts).unwrap();
    Arc::new(LogicalUnit::new(Arc::new(b), BS, identity(2), false))
}

fn unmap_param(lba: u64, blocks: u32) -> Vec<u8> {
    let mut d = 22u16.to_be_bytes().to_vec();
    d.extend_from_slice(&16u16.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    d.extend_from_slice(&lba.to_be_bytes());
    d.extend_from_slice(&blocks.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    d
}

/// One random command: (cdb, data-out, expected length).
fn random_command(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>, u32) {
    // Mostly in range; sometimes past the end to compare the errors too.
    let blocks = rng.gen_range(1..=64u32);
    let lba = rng.gen_range(0..BLOCKS + 8);
    let len = blocks * BS;
    let mut data = vec![0u8; len as usize];
    rng.fill(&mut data[..]);
    match rng.gen_range(0..7) {
        0 | 1 => {
            let mut c = rw16(0x8a, lba, blocks);
            c[1] = if rng.gen_bool(0.3) { 0x08 } else { 0 }; // FUA
            (c, data, len)
        }
        2 => (write10(lba as u32, blocks as u16, false), data, len),
        3 => (rw16(0x88, lba, blocks), vec![], len),
        4 => {
            // WRITE SAME (16), UNMAP bit sometimes: one block of pattern.
            let mut c = rw16(0x93, lba, blocks);
            c[1] = if rng.gen_bool(0.5) { 0x08 } else { 0 };
            let one = if rng.gen_bool(0.5) {
                vec![0; BS as usize]
            } else {
                data[..BS as usize].to_vec()
            };
            (c, one, BS)
        }
        5 => {
            let d = unmap_param(lba, blocks);
            let c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, d.len() as u8, 0];
            let n = d.len() as u32;
            (c, d, n)
        }
        _ => (vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![], 0),
    }
}

#[test]
fn uring_direct_lun_behaves_like_a_memory_lun() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/uring-tests");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let mem = Harness::new();
    let uring = Harness::with_luns(vec![(0, uring_lu(&dir.path().join("lun")))]);
    let mut rng = StdRng::seed_from_u64(42);
    let mut good = 0;
    for i in 0..400 {
        let (cdb, out, expected) = random_command(&mut rng);
        let a = mem.exec(0, &cdb, &out, expected);
        let b = uring.exec(0, &cdb, &out, expected);
        assert_eq!(a.status, b.status, "command {i}: {cdb:02x?}");
        assert_eq!(a.sense, b.sense, "command {i}: {cdb:02x?}");
        assert!(
            a.data_in == b.data_in,
            "command {i}: {cdb:02x?} data differs"
        );
        good += usize::from(a.status == status::GOOD);
    }
    // Most commands were in range and did something.
    assert!(good > 300, "{good} of 400 GOOD");
    // The whole disk, in one READ (16) each.
    let all = rw16(0x88, 0, BLOCKS as u32);
    let len = (BLOCKS * BS as u64) as u32;
    assert!(mem.good(&all, &[], len).data_in == uring.good(&all, &[], len).data_in);
}
