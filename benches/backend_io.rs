//! Backend I/O throughput through the `Backend` API directly (no iSCSI):
//! the buffered FileBackend against UringBackend, buffered and O_DIRECT.
//!
//! cargo bench --bench backend_io
//! Knobs (environment): BENCH_DIR (default target/bench-io, keep it on a
//! real disk, not tmpfs), BENCH_SIZE_MB (256), BENCH_SECS per run (1),
//! BENCH_RUNS (3, the median is printed), BENCH_THREADS (4: calls in
//! parallel, as the target's blocking pool makes them).
//!
//! Write runs end with a flush inside the timed part, so buffered writes
//! pay for reaching the disk as O_DIRECT ones do.

use gentgt::backend::{Backend, FileBackend, UringBackend, UringOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Case {
    name: &'static str,
    block: usize,
    random: bool,
    write: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "4K rand read",
        block: 4096,
        random: true,
        write: false,
    },
    Case {
        name: "4K rand write",
        block: 4096,
        random: true,
        write: true,
    },
    Case {
        name: "1M seq read",
        block: 1 << 20,
        random: false,
        write: false,
    },
    Case {
        name: "1M seq write",
        block: 1 << 20,
        random: false,
        write: true,
    },
];

fn open(kind: &str, path: &Path, size: u64) -> Arc<dyn Backend> {
    let uring = |direct| {
        let opts = UringOptions {
            direct,
            ..Default::default()
        };
        let b = UringBackend::open(path, size, true, false, &opts).expect("io_uring backend");
        assert_eq!(
            b.is_direct(),
            direct,
            "O_DIRECT refused on {}",
            path.display()
        );
        Arc::new(b) as Arc<dyn Backend>
    };
    match kind {
        "file" => Arc::new(FileBackend::open(path, size, true, false).unwrap()),
        "uring" => uring(false),
        _ => uring(true),
    }
}

/// One timed run: bytes per second.
fn run(b: &Arc<dyn Backend>, case: &Case, threads: u64, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let blocks = b.size() / case.block as u64;
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (b, stop, bytes) = (b.clone(), stop.clone(), bytes.clone());
            let (block, random, write) = (case.block, case.random, case.write);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t);
                let mut buf = vec![0xa5u8; block];
                // Sequential: each thread walks its own share of the file.
                let share = blocks / threads;
                let mut next = t * share;
                while !stop.load(Ordering::Relaxed) {
                    let blk = if random {
                        rng.gen_range(0..blocks)
                    } else {
                        next = if next + 1 >= (t + 1) * share {
                            t * share
                        } else {
                            next + 1
                        };
                        next
                    };
                    let off = blk * block as u64;
                    if write {
                        b.write_at(off, &buf, false).unwrap();
                    } else {
                        b.read_at(off, &mut buf).unwrap();
                    }
                    bytes.fetch_add(block as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    if case.write {
        b.flush().unwrap();
    }
    bytes.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-io"));
    std::fs::create_dir_all(&dir).unwrap();
    let size = env("BENCH_SIZE_MB", 256) << 20;
    let (secs, runs, threads) = (
        env("BENCH_SECS", 1),
        env("BENCH_RUNS", 3),
        env("BENCH_THREADS", 4),
    );
    let path = dir.join("bench.img");
    let _ = std::fs::remove_file(&path);
    {
        // Fill the file so reads find allocated blocks on the disk.
        let b = FileBackend::open(&path, size, true, false).unwrap();
        let chunk = vec![0x5au8; 4 << 20];
        for off in (0..size).step_by(chunk.len()) {
            b.write_at(off, &chunk, false).unwrap();
        }
        b.flush().unwrap();
    }
    println!(
        "backend_io: {} MiB file in {}, {threads} threads, {runs} × {secs} s runs, medians",
        size >> 20,
        dir.display()
    );
    println!(
        "{:<14} {:>18} {:>18} {:>18}",
        "case", "file (pread)", "uring", "uring+O_DIRECT"
    );
    for case in &CASES {
        let mut row = format!("{:<14}", case.name);
        for kind in ["file", "uring", "direct"] {
            let b = open(kind, &path, size);
            let rate = median((0..runs).map(|_| run(&b, case, threads, secs)).collect());
            let cell = if case.block == 4096 {
                format!("{:.1} k IOPS", rate / 4096.0 / 1000.0)
            } else {
                format!("{:.0} MiB/s", rate / f64::from(1 << 20))
            };
            row += &format!(" {cell:>18}");
        }
        println!("{row}");
    }
    let _ = std::fs::remove_file(&path);
}
