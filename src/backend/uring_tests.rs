//! UringBackend against a model, in every mode: buffered, O_DIRECT with
//! the filesystem's own alignment, and O_DIRECT forced to 4096-byte
//! alignment so 512-byte I/O takes the read-modify-write path.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::os::unix::fs::MetadataExt;

/// Temporary directory on the worktree's filesystem: /tmp may be tmpfs,
/// which says nothing about O_DIRECT on a real disk.
fn disk_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/uring-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn is_tmpfs(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

fn modes() -> Vec<(&'static str, UringOptions)> {
    vec![
        ("buffered", UringOptions::default()),
        (
            "direct",
            UringOptions {
                direct: true,
                ..Default::default()
            },
        ),
        (
            "direct-4k-small-chunks",
            UringOptions {
                direct: true,
                chunk: 8192,
                min_align: 4096,
            },
        ),
    ]
}

fn open(dir: &Path, size: u64, opts: &UringOptions) -> UringBackend {
    UringBackend::open(&dir.join("d"), size, true, false, opts).unwrap()
}

#[test]
fn direct_really_bypasses_the_cache_on_a_disk() {
    let dir = disk_dir();
    let b = open(dir.path(), 1 << 20, &modes()[1].1);
    if !is_tmpfs(dir.path()) {
        assert!(b.is_direct(), "O_DIRECT refused on {:?}", dir.path());
        assert!(b.alignment() >= 512);
        assert!(b.describe().contains("O_DIRECT"), "{}", b.describe());
    }
    let forced = open(dir.path(), 1 << 20, &modes()[2].1);
    if forced.is_direct() {
        assert_eq!(forced.alignment(), 4096);
    }
}

#[test]
fn random_ranges_match_a_model_in_every_mode() {
    for (name, opts) in modes() {
        let dir = disk_dir();
        let size = 2 << 20;
        let b = open(dir.path(), size, &opts);
        let mut model = vec![0u8; size as usize];
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..300 {
            // Byte-granular offsets and lengths, up to 300 KiB (several
            // chunks), some aligned.
            let len = match round % 3 {
                0 => rng.gen_range(1..4096),
                1 => 4096 * rng.gen_range(1..8),
                _ => rng.gen_range(1..300 << 10),
            };
            let mut off = rng.gen_range(0..size - len as u64);
            if round % 2 == 0 {
                off -= off % 4096;
            }
            let (o, l) = (off as usize, len);
            if rng.gen_bool(0.6) {
                let mut data = vec![0u8; l];
                rng.fill(&mut data[..]);
                b.write_at(off, &data, rng.gen_bool(0.2)).unwrap();
                model[o..o + l].copy_from_slice(&data);
            } else {
                let mut got = vec![0xeeu8; l];
                b.read_at(off, &mut got).unwrap();
                assert!(got == model[o..o + l], "{name}: round {round} {off}+{len}");
            }
        }
        b.flush().unwrap();
        let mut all = vec![0u8; size as usize];
        b.read_at(0, &mut all).unwrap();
        assert!(all == model, "{name}: final image differs");
        drop(b);
        // The same bytes through the buffered backend after "restart".
        let plain = FileBackend::open_existing(&dir.path().join("d"), true).unwrap();
        let mut again = vec![0u8; size as usize];
        plain.read_at(0, &mut again).unwrap();
        assert!(again == model, "{name}: buffered reopen differs");
    }
}

#[test]
fn page_aligned_buffers_go_straight_to_disk() {
    for (name, opts) in modes() {
        let dir = disk_dir();
        let b = open(dir.path(), 1 << 20, &opts);
        let mut src = crate::backend::aligned::AlignedBuf::new(256 << 10);
        src.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (i % 251) as u8);
        b.write_at(64 << 10, src.as_slice(), true).unwrap();
        let mut dst = crate::backend::aligned::AlignedBuf::new(256 << 10);
        b.read_at(64 << 10, dst.as_mut_slice()).unwrap();
        assert!(dst.as_slice() == src.as_slice(), "{name}");
        assert!(
            b.pool.idle() == 0,
            "{name}: aligned I/O used bounce buffers"
        );
    }
}

#[test]
fn unmap_and_write_zeroes_punch_holes() {
    for (name, opts) in modes() {
        let dir = disk_dir();
        let p = dir.path().join("d");
        let b = open(dir.path(), 4 << 20, &opts);
        assert_eq!(b.allocation(0, 4 << 20, 8).unwrap(), vec![(4 << 20, false)]);
        b.write_at(0, &vec![0xabu8; 4 << 20], false).unwrap();
        b.flush().unwrap();
        let before = std::fs::metadata(&p).unwrap().blocks();
        b.unmap(1 << 20, 1 << 20).unwrap();
        b.write_zeroes(3 << 20, 512 * 3).unwrap();
        let mut buf = vec![1u8; 4 << 20];
        b.read_at(0, &mut buf).unwrap();
        let zero = |r: std::ops::Range<usize>| buf[r].iter().all(|&x| x == 0);
        assert!(zero((1 << 20)..(2 << 20)), "{name}");
        assert!(zero((3 << 20)..(3 << 20) + 1536), "{name}");
        assert!(buf[..1 << 20].iter().all(|&x| x == 0xab), "{name}");
        assert!(buf[2 << 20..3 << 20].iter().all(|&x| x == 0xab), "{name}");
        assert!(buf[(3 << 20) + 1536..].iter().all(|&x| x == 0xab), "{name}");
        assert!(std::fs::metadata(&p).unwrap().blocks() < before, "{name}");
        let runs = b.allocation(0, 4 << 20, 8).unwrap();
        assert_eq!(runs[0], (1 << 20, true), "{name}: {runs:?}");
        assert_eq!(runs[1], (1 << 20, false), "{name}: {runs:?}");
        // Writing into the hole maps it again and reads back.
        b.write_at((1 << 20) + 100, b"back", false).unwrap();
        let mut four = [0u8; 6];
        b.read_at((1 << 20) + 99, &mut four).unwrap();
        assert_eq!(&four, b"\0back\0", "{name}");
    }
}

#[test]
fn limits_and_read_only() {
    let dir = disk_dir();
    let p = dir.path().join("d");
    for (name, opts) in modes() {
        let b = UringBackend::open(&p, 8192, true, false, &opts).unwrap();
        let mut buf = [0u8; 8];
        assert!(b.read_at(8190, &mut buf).is_err(), "{name}");
        assert!(b.write_at(u64::MAX, &buf, false).is_err(), "{name}");
        assert!(b.unmap(8000, 500).is_err(), "{name}");
        b.write_at(8184, b"lastbyte", true).unwrap();
        b.read_at(0, &mut []).unwrap();
        drop(b);
        let ro = UringBackend::open(&p, 8192, false, true, &opts).unwrap();
        ro.read_at(8184, &mut buf).unwrap();
        assert_eq!(&buf, b"lastbyte", "{name}");
        let e = ro.write_at(0, b"x", false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{name}");
        ro.flush().unwrap();
        // Never truncates, like FileBackend.
        assert!(UringBackend::open(&p, 4096, false, false, &opts).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
    }
}

/// Threads write 512-byte-granular ranges inside their own 1536-byte
/// units, which share 4 KiB blocks with other threads' units: without
/// the range lock, read-modify-write would put back stale neighbours.
/// Reads of large random ranges (through bounce buffers) check the
/// reader's own units while others write around them.
#[test]
fn concurrent_writers_sharing_blocks_lose_nothing() {
    const UNIT: u64 = 1536;
    const THREADS: u64 = 6;
    for (name, opts) in modes() {
        let dir = disk_dir();
        let size = 1 << 20;
        let b = Arc::new(open(dir.path(), size, &opts));
        let units = size / UNIT;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(t);
                    let mut mine = vec![0u8; size as usize];
                    for _ in 0..250 {
                        if rng.gen_bool(0.7) {
                            let u = rng.gen_range(0..units / THREADS) * THREADS + t;
                            let first = rng.gen_range(0..3u64);
                            let n = rng.gen_range(1..=3 - first);
                            let off = u * UNIT + first * 512;
                            let data: Vec<u8> = (0..n * 512).map(|_| rng.r#gen()).collect();
                            b.write_at(off, &data, rng.gen_bool(0.1)).unwrap();
                            let o = off as usize;
                            mine[o..o + data.len()].copy_from_slice(&data);
                        } else {
                            let off = rng.gen_range(0..size / 512 - 128) * 512;
                            let len = rng.gen_range(1..=128) * 512;
                            let mut got = vec![0u8; len as usize];
                            b.read_at(off, &mut got).unwrap();
                            for (i, byte) in got.iter().enumerate() {
                                let at = off + i as u64;
                                if (at / UNIT) % THREADS == t {
                                    assert_eq!(*byte, mine[at as usize], "thread {t} at {at}");
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut model = vec![0u8; size as usize];
        for (t, w) in workers.into_iter().enumerate() {
            let mine = w.join().unwrap();
            for (i, byte) in mine.iter().enumerate() {
                if (i as u64 / UNIT) % THREADS == t as u64 {
                    model[i] = *byte;
                }
            }
        }
        let mut all = vec![0u8; size as usize];
        b.read_at(0, &mut all).unwrap();
        let bad = all.iter().zip(&model).position(|(a, m)| a != m);
        assert_eq!(bad, None, "{name}: first difference");
    }
}
