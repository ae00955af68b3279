//! Full-restore throughput for issue 14.
//!
//! cargo bench --bench restore
//!
//! A repository holding one backup of BENCH_SIZE_MIB (1024) of random
//! data (the worst case: nothing compresses, no zero extents to skip),
//! 64 KiB extents; a file LUN of that size served by an in-process target
//! over 127.0.0.1. Per round, in the same run and with the same
//! initiator: a plain sequential write of the LUN (1 MiB WRITE(16)s, 16
//! in flight, from memory) and `restore_lun` (16 runs in flight, 1 MiB
//! WRITEs, every chunk read from its pack and checked); a plain
//! sequential write of a file (1 MiB pwrites, one fsync at the end) and
//! `restore_to_path` to a file. Odd rounds run the plain write first,
//! even rounds the restore first, so neither always finds the page cache
//! and the writeback of the other; an uncounted plain write first
//! allocates the whole LUN file, so every counted write overwrites; each
//! counted phase starts after a sync(2).
//! Printed: each run's MiB/s, the medians, the ratio of the medians and
//! the median of the per-round ratios (the bar is 0.80), and the load
//! average before and after.
//!
//! Knobs: BENCH_DIR (target/bench-restore; a real disk, not tmpfs),
//! BENCH_SIZE_MIB (1024), BENCH_ROUNDS (5), BENCH_PARALLEL (32, the default),
//! BENCH_WRITE_KIB (1024).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{LunSpec, TargetOptions, TestTarget};
use gentgt::backup::manifest::{LunId, MANIFEST_VERSION, Manifest, Stats};
use gentgt::backup::{self, CreateOptions, Repo, RepoOptions, RestoreOptions};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{RngCore, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const BS: u32 = 512;
const EXTENT: usize = 64 << 10;
const INITIATOR: &str = "iqn.2026-11.dev.gentgt:bench";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mibps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1048576.0 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One backup "b1" of `size` random bytes.
fn make_repo(root: &Path, size: u64) -> Repo {
    let o = RepoOptions {
        lock: Some(backup::lock::LockMode::Exclusive),
        command: "bench".into(),
        create: Some(CreateOptions::default()),
        ..Default::default()
    };
    let repo = Repo::open_with(root, &o).unwrap();
    let n = size / EXTENT as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut buf = vec![0u8; EXTENT];
    let extents = (0..n)
        .map(|_| {
            rng.fill_bytes(&mut buf);
            repo.put_extent(&buf).unwrap()
        })
        .collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: "b1".into(),
        parent: None,
        created_ms: 1_700_000_000_000,
        lun: LunId {
            naa: "60000000000000000000000000000014".into(),
            uuid: "bench".into(),
            capacity_blocks: size / u64::from(BS),
            block_size: BS,
            extent_blocks: (EXTENT / BS as usize) as u32,
        },
        lock_generation: 1,
        extents,
        stats: Stats::default(),
    };
    repo.commit(&m).unwrap();
    repo
}

async fn login(t: &TestTarget) -> Arc<Session> {
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(&t.name)))
        .await
        .unwrap();
    let _ = s.test_unit_ready(0).await;
    Arc::new(s)
}

/// Sequential WRITE(16)s of `write` bytes, `qd` in flight, from memory.
async fn plain_lun_write(t: &TestTarget, size: u64, write: usize, qd: usize) -> f64 {
    let s = login(t).await;
    let mut data = vec![0u8; write];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
    let data = Arc::new(data);
    let blocks = (write / BS as usize) as u64;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..size / write as u64 {
        while set.len() >= qd {
            set.join_next().await.unwrap().unwrap();
        }
        let (s, d) = (s.clone(), data.clone());
        set.spawn(async move { s.write16(0, i * blocks, &d, BS, false).await.unwrap() });
    }
    while set.join_next().await.is_some() {}
    s.sync_cache(0).await.unwrap();
    mibps(size, t0.elapsed().as_secs_f64())
}

fn plain_file_write(path: &Path, size: u64, write: usize) -> f64 {
    let _ = std::fs::remove_file(path);
    let mut data = vec![0u8; write];
    rand::rngs::StdRng::seed_from_u64(2).fill_bytes(&mut data);
    let t0 = Instant::now();
    let f = std::fs::File::create(path).unwrap();
    for i in 0..size / write as u64 {
        f.write_all_at(&data, i * write as u64).unwrap();
    }
    f.sync_all().unwrap();
    mibps(size, t0.elapsed().as_secs_f64())
}

/// CPU seconds this process used so far (user + system: target,
/// initiator and restore are all in it).
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Run `f` (after a sync(2), so it starts with nothing dirty in the page
/// cache and no writeback or deferred discard of an earlier phase to wait
/// for), returning its MiB/s and recording the CPU seconds it took.
fn timed(cpu: &mut Vec<f64>, f: impl FnOnce() -> f64) -> f64 {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    let c0 = cpu_secs();
    let v = f();
    cpu.push(cpu_secs() - c0);
    v
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg).
fn load_average() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-restore".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let size = env("BENCH_SIZE_MIB", 1024) << 20;
    let rounds = env("BENCH_ROUNDS", 5) as usize;
    let o = RestoreOptions {
        parallel: env("BENCH_PARALLEL", backup::restore::DEFAULT_PARALLEL as u64) as usize,
        max_write_bytes: (env("BENCH_WRITE_KIB", 1024) as usize) << 10,
        ..Default::default()
    };
    let t0 = Instant::now();
    let repo = Arc::new(make_repo(&dir.join("repo"), size));
    println!(
        "repository: {} MiB of random data in {:.1} s",
        size >> 20,
        t0.elapsed().as_secs_f64()
    );
    let lun = dir.join("lun.img");
    let t = TestTarget::start(
        &[LunSpec::File {
            path: &lun,
            size,
            block_size: BS,
        }],
        TargetOptions::default(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = ConnectOptions::new(t.addr, INITIATOR, Some(&t.name));
    let out = dir.join("restored.img");
    println!("load average before: {}", load_average());
    rt.block_on(plain_lun_write(&t, size, o.max_write_bytes, o.parallel));
    let (mut pl, mut rl, mut pf, mut rf) = (vec![], vec![], vec![], vec![]);
    let (mut cpl, mut crl, mut cpf, mut crf) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let plain_first = round % 2 == 1;
        let lun_restore = || {
            let r = rt
                .block_on(backup::restore_lun(repo.clone(), "b1", &c, 0, &o))
                .unwrap();
            assert_eq!(r.written_bytes, size);
            mibps(size, r.seconds)
        };
        let lun_plain = || rt.block_on(plain_lun_write(&t, size, o.max_write_bytes, o.parallel));
        let file_restore = || {
            let _ = std::fs::remove_file(&out);
            let r = backup::restore_to_path(&repo, "b1", &out, &o).unwrap();
            assert_eq!(r.written_bytes, size);
            let _ = std::fs::remove_file(&out);
            mibps(size, r.seconds)
        };
        let file_plain = || {
            let v = plain_file_write(&out, size, o.max_write_bytes);
            let _ = std::fs::remove_file(&out);
            v
        };
        if plain_first {
            pl.push(timed(&mut cpl, lun_plain));
            rl.push(timed(&mut crl, lun_restore));
            pf.push(timed(&mut cpf, file_plain));
            rf.push(timed(&mut crf, file_restore));
        } else {
            rl.push(timed(&mut crl, lun_restore));
            pl.push(timed(&mut cpl, lun_plain));
            rf.push(timed(&mut crf, file_restore));
            pf.push(timed(&mut cpf, file_plain));
        }
        println!(
            "round {round}: LUN plain {:.0} MiB/s, restore {:.0} MiB/s ({:.0} %); file plain {:.0} MiB/s, restore {:.0} MiB/s ({:.0} %)",
            pl[round - 1],
            rl[round - 1],
            100.0 * rl[round - 1] / pl[round - 1],
            pf[round - 1],
            rf[round - 1],
            100.0 * rf[round - 1] / pf[round - 1],
        );
    }
    let ratios = |r: &[f64], p: &[f64]| {
        let mut v: Vec<f64> = r.iter().zip(p).map(|(r, p)| r / p).collect();
        median(&mut v)
    };
    let (lr, fr) = (ratios(&rl, &pl), ratios(&rf, &pf));
    let (pl, rl, pf, rf) = (
        median(&mut pl),
        median(&mut rl),
        median(&mut pf),
        median(&mut rf),
    );
    println!(
        "{} MiB, {} in flight, {} KiB WRITEs, medians of {rounds}: to a LUN {:.0} vs plain {:.0} MiB/s = {:.2} (median of round ratios {lr:.2}); to a file {:.0} vs plain {:.0} MiB/s = {:.2} (median of round ratios {fr:.2}); bar 0.80",
        size >> 20,
        o.parallel,
        o.max_write_bytes >> 10,
        rl,
        pl,
        rl / pl,
        rf,
        pf,
        rf / pf
    );
    let gib = size as f64 / f64::from(1u32 << 30);
    let (cp, cr) = (median(&mut cpl) / gib, median(&mut crl) / gib);
    let (cfp, cfr) = (median(&mut cpf) / gib, median(&mut crf) / gib);
    println!(
        "CPU s per GiB (the whole process: target + initiator + restore), medians: LUN plain {cp:.2}, restore {cr:.2} ({:.2}x); file plain {cfp:.2}, restore {cfr:.2} ({:.2}x)",
        cr / cp,
        cfr / cfp
    );
    println!("load average after: {}", load_average());
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
