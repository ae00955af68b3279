//! The backup repository's figures for issue 13.
//!
//! cargo bench --bench backup_repo
//!
//! 1. Throughput: a file LUN (random data, then 50 %-compressible data)
//!    served by an in-process target over 127.0.0.1. Each repetition runs,
//!    in this order: a plain sequential read with the same initiator after
//!    dropping the page cache (cold LUN; root only), the same read cached
//!    (`pass::READ_BYTES` READs, 8 in flight: what the backup does) and with 64 KiB
//!    READs, a full backup into a repository on the disk, one on tmpfs
//!    (CPU bound), one on tmpfs with 64 KiB READs (the old read size), and
//!    the disk's `dd conv=fsync` write rate. Medians and ratios are
//!    printed; the stored size is compared with `zstd -1` of the raw
//!    image (if the zstd tool is installed).
//! 2. Storage (library only): full + 10 incrementals changing 1 % of the
//!    extents each; stored bytes against (1 + 10 x 0.01) x full, files per
//!    TiB; then prune --keep-last 3 and gc: unreferenced bytes left and
//!    byte-identical restores of the kept backups.
//!
//! Knobs: BENCH_DIR (target/bench-backup; a real disk, not tmpfs),
//! BENCH_SIZE_MIB (1024), BENCH_STORE_MIB (256), BENCH_SKIP_ISCSI=1,
//! BENCH_REPS (3), BENCH_REPO_DIR (BENCH_DIR; the disk repository),
//! BENCH_TMPFS_DIR (/dev/shm), BENCH_DD_MIB (512),
//! BENCH_RANDOM_LEVEL (1: zstd level of the random-data run, 0 = off),
//! BENCH_SPLIT_CPUS=1 (the target's threads on CPU 1, the initiator and
//! the repository on CPU 0: the backup appliance as a machine of its own,
//! as deployed, instead of target and appliance sharing both cores).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::backup::gc::{GcOptions, gc};
use gentgt::backup::manifest::{LunId, MANIFEST_VERSION, Manifest, Stats};
use gentgt::backup::prune::{Policy, prune};
use gentgt::backup::{self, BackupOptions, CreateOptions, Repo, RepoOptions};
use gentgt::initiator::{ConnectOptions, Initiator};
use rand::{Rng, RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u32 = 512;
const EXTENT: usize = 64 << 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pin the calling thread (and every thread it starts later) to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity only touch the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity to CPU {cpu}"
        );
    }
}

fn split_cpus() -> bool {
    env("BENCH_SPLIT_CPUS", 0) != 0
}

fn mib(b: f64) -> f64 {
    b / 1048576.0
}

/// 64 KiB of data: random, or half random / half zeros per 4 KiB.
fn fill(rng: &mut rand::rngs::StdRng, buf: &mut [u8], compressible: bool) {
    rng.fill_bytes(buf);
    if compressible {
        for block in buf.chunks_mut(4096) {
            block[2048..].fill(0);
        }
    }
}

fn make_image(path: &Path, bytes: u64, compressible: bool) {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        fill(&mut rng, &mut buf, compressible);
        f.write_all(&buf).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let (mut b, mut n) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let (b2, n2) = dir_bytes(&p);
            b += b2;
            n += n2;
        } else {
            b += std::fs::metadata(&p).unwrap().len();
            n += 1;
        }
    }
    (b, n)
}

fn zstd1_size(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("zstd")
        .args(["-1", "-c", "-T1"])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout.len() as u64)
}

async fn seq_read(t: &TestTarget, bytes: u64, read_bytes: usize) -> f64 {
    let s = Arc::new(
        Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(&t.name)))
            .await
            .unwrap(),
    );
    let _ = s.test_unit_ready(0).await;
    let blocks = (read_bytes / BS as usize) as u32;
    let n = bytes / read_bytes as u64;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        while set.len() >= IN_FLIGHT {
            set.join_next().await.unwrap().unwrap();
        }
        let s = s.clone();
        set.spawn(async move {
            s.read16(0, i * u64::from(blocks), blocks, BS)
                .await
                .unwrap()
                .len()
        });
    }
    while set.join_next().await.is_some() {}
    bytes as f64 / t0.elapsed().as_secs_f64()
}

/// READs in flight, the backup's default too.
const IN_FLIGHT: usize = 8;

/// Write back and drop the page cache (root only); false if not allowed.
fn drop_caches() -> bool {
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The disk's durable sequential write rate: `dd bs=1M conv=fsync` of
/// `mib` MiB of zeros into `dir`, timed here (dd's own figure is in MB).
fn dd_rate(dir: &Path, mib: u64) -> f64 {
    let f = dir.join("dd-rate.tmp");
    let t0 = Instant::now();
    let ok = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", f.display()))
        .args([
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
            "status=none",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&f);
    if ok { (mib << 20) as f64 / secs } else { 0.0 }
}

/// CPU seconds this process used so far (all threads: the in-process
/// target, the initiator and the repository's writers).
fn cpu_secs() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One full backup into a new repository under `dir`: (MiB/s over the
/// whole run, commit included; stored bytes; files). The repository is
/// removed afterwards.
async fn backup_once(
    t: &TestTarget,
    dir: &Path,
    size: u64,
    level: i32,
    read_bytes: u32,
) -> (f64, u64, usize) {
    let root = dir.join(format!("gentgt-bench-repo-{level}-{read_bytes}"));
    let _ = std::fs::remove_dir_all(&root);
    let create = CreateOptions {
        zstd_level: level,
        ..Default::default()
    };
    let o = RepoOptions {
        lock: Some(backup::lock::LockMode::Exclusive),
        command: "bench".into(),
        create: Some(create),
        ..Default::default()
    };
    let repo = Arc::new(Repo::open_with(&root, &o).unwrap());
    let mut opts = BackupOptions::new(ConnectOptions::new(t.addr, INITIATOR, Some(&t.name)), 0);
    opts.connect.timeout = Duration::from_secs(60);
    opts.max_read_bytes = read_bytes;
    let t0 = Instant::now();
    backup::backup(repo.clone(), &opts).await.unwrap();
    let rate = size as f64 / t0.elapsed().as_secs_f64();
    drop(repo);
    let (stored, files) = dir_bytes(&root);
    let _ = std::fs::remove_dir_all(&root);
    (rate, stored, files)
}

/// Where the throughput runs put things.
struct Dirs {
    lun: PathBuf,
    disk_repo: PathBuf,
    tmpfs_repo: PathBuf,
}

/// Every figure of one data kind, `reps` times interleaved (so load
/// changes hit all of them alike), then medians and ratios.
async fn throughput(d: &Dirs, size: u64, compressible: bool, level: i32, reps: usize) {
    let img = d.lun.join(if compressible {
        "lun-half.img"
    } else {
        "lun-random.img"
    });
    if std::fs::metadata(&img).map(|m| m.len()).ok() != Some(size) {
        make_image(&img, size, compressible);
    }
    if split_cpus() {
        // The target's runtime and blocking threads start from its own
        // thread, so they inherit CPU 1; then this thread goes back.
        pin(1);
    }
    let t = TestTarget::start(
        &[LunSpec::File {
            path: &img,
            size,
            block_size: BS,
        }],
        TargetOptions {
            cbt_extent_blocks: Some((EXTENT / BS as usize) as u32),
            ..Default::default()
        },
    );
    if split_cpus() {
        pin(0);
    }
    let sweep = env("BENCH_READ_SWEEP", 0);
    if sweep != 0 {
        // READ size against the plain read's rate (1) or the tmpfs
        // backup's (2), interleaved.
        let sizes = [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20];
        let mut r: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
        for _ in 0..reps {
            for (k, &b) in sizes.iter().enumerate() {
                r[k].push(if sweep == 1 {
                    seq_read(&t, size, b).await
                } else {
                    backup_once(&t, &d.tmpfs_repo, size, level, b as u32)
                        .await
                        .0
                });
            }
        }
        for (k, b) in sizes.iter().enumerate() {
            let what = if sweep == 1 {
                "plain read"
            } else {
                "backup to tmpfs"
            };
            let runs: Vec<u64> = r[k].iter().map(|x| mib(*x) as u64).collect();
            println!(
                "{what}, {} KiB READs: median {:.0} MiB/s {runs:?}",
                b >> 10,
                mib(median(r[k].clone()))
            );
        }
        return;
    }
    let big = gentgt::backup::pass::READ_BYTES;
    let dd_mib = env("BENCH_DD_MIB", 512);
    let mut f: [Vec<f64>; 7] = Default::default();
    // CPU seconds per GiB of the cached read and of the tmpfs backup.
    let mut cpu: [Vec<f64>; 2] = Default::default();
    let per_gib = |c0: f64| (cpu_secs() - c0) * (1u64 << 30) as f64 / size as f64;
    let mut stored = (0, 0);
    for _ in 0..reps {
        if drop_caches() {
            f[0].push(seq_read(&t, size, big as usize).await);
        }
        let c0 = cpu_secs();
        f[1].push(seq_read(&t, size, big as usize).await);
        cpu[0].push(per_gib(c0));
        f[2].push(seq_read(&t, size, EXTENT).await);
        let (r, b, n) = backup_once(&t, &d.disk_repo, size, level, big).await;
        f[3].push(r);
        stored = (b, n);
        let c0 = cpu_secs();
        f[4].push(backup_once(&t, &d.tmpfs_repo, size, level, big).await.0);
        cpu[1].push(per_gib(c0));
        f[5].push(
            backup_once(&t, &d.tmpfs_repo, size, level, EXTENT as u32)
                .await
                .0,
        );
        f[6].push(dd_rate(&d.disk_repo, dd_mib));
    }
    let [cpu_read, cpu_backup] = cpu.map(median);
    let m: Vec<f64> = f.into_iter().map(median).collect();
    let [cold, read, read64, disk, tmpfs, tmpfs64, dd] = m[..] else {
        unreachable!()
    };
    let kind = if compressible {
        "50%-compressible"
    } else {
        "random"
    };
    let z = zstd1_size(&img);
    // What the disk must take durably per byte of LUN: stored / size.
    let disk_bound = dd * size as f64 / stored.0.max(1) as f64;
    let bound = read.min(disk_bound);
    println!(
        "{kind} data, {} MiB LUN, zstd level {level}, medians of {reps}: \
         plain read {:.0} MiB/s cached ({} KiB READs; {:.0} with 64 KiB READs), {:.0} cold; \
         disk write (dd conv=fsync) {:.0} MiB/s",
        size >> 20,
        mib(read),
        big >> 10,
        mib(read64),
        mib(cold),
        mib(dd),
    );
    println!(
        "  backup to disk {:.0} MiB/s = {:.0} % of the cached read, {:.0} % of the cold read; {:.0} % of min(read, disk write x LUN/stored = {:.0} MiB/s)",
        mib(disk),
        100.0 * disk / read,
        100.0 * disk / cold,
        100.0 * disk / bound,
        mib(disk_bound),
    );
    println!(
        "  backup to tmpfs {:.0} MiB/s = {:.0} % of the cached read; with 64 KiB READs (the old size) {:.0} MiB/s = {:.0} %",
        mib(tmpfs),
        100.0 * tmpfs / read,
        mib(tmpfs64),
        100.0 * tmpfs64 / read,
    );
    println!(
        "  CPU per GiB (process, all threads): plain read {cpu_read:.2} s, backup to tmpfs {cpu_backup:.2} s \
         = {:.2} x the read's (where both are CPU bound, backup/read <= {:.0} %)",
        cpu_backup / cpu_read,
        100.0 * cpu_read / cpu_backup
    );
    println!(
        "  stored {:.1} MiB in {} files{}",
        mib(stored.0 as f64),
        stored.1,
        z.map(|z| format!(
            ", zstd -1 of the image {:.1} MiB ({:+.1} %)",
            mib(z as f64),
            100.0 * (stored.0 as f64 / z as f64 - 1.0)
        ))
        .unwrap_or_default(),
    );
}

fn lun(extents: u64) -> LunId {
    LunId {
        naa: "60000000000000000000000000000001".into(),
        uuid: "bench".into(),
        capacity_blocks: extents * (EXTENT as u64 / u64::from(BS)),
        block_size: BS,
        extent_blocks: (EXTENT / BS as usize) as u32,
    }
}

fn commit(repo: &Repo, g: u64, extents: Vec<backup::ExtentRef>, n: u64) -> String {
    let id = format!("b{g:02}");
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.clone(),
        parent: (g > 0).then(|| format!("b{:02}", g - 1)),
        created_ms: 1_700_000_000_000 + g,
        lun: lun(n),
        lock_generation: g + 1,
        extents,
        stats: Stats::default(),
    };
    repo.commit(&m).unwrap();
    id
}

fn storage(dir: &Path, bytes: u64) {
    let root = dir.join("repo-storage");
    let _ = std::fs::remove_dir_all(&root);
    let repo = Repo::open(&root).unwrap();
    let n = bytes / EXTENT as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut img: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut d = vec![0u8; EXTENT];
            fill(&mut rng, &mut d, true);
            d
        })
        .collect();
    let mut refs: Vec<_> = img.iter().map(|d| repo.put_extent(d).unwrap()).collect();
    commit(&repo, 0, refs.clone(), n);
    let (full, full_packs) = dir_bytes(&root.join("packs"));
    println!(
        "full backup of {} MiB of unique data: {full_packs} pack files = {:.0} per TiB of unique data (bar 100,000), plus 2 files per backup",
        bytes >> 20,
        full_packs as f64 * (1u64 << 40) as f64 / bytes as f64
    );
    let mut kept: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for g in 1..=10 {
        for _ in 0..n / 100 {
            let i = rng.gen_range(0..n as usize);
            fill(&mut rng, &mut img[i], true);
            refs[i] = repo.put_extent(&img[i]).unwrap();
        }
        let id = commit(&repo, g, refs.clone(), n);
        if g >= 8 {
            kept.push((id, img.clone()));
        }
    }
    let (total, files) = dir_bytes(&root);
    let bar = 1.1 * full as f64 * 1.05;
    println!(
        "full + 10 incrementals of 1 % ({} MiB LUN, 50%-compressible): full stored {:.1} MiB, all {:.1} MiB = {:.3} x full (bar {:.3} x); {files} files",
        bytes >> 20,
        mib(full as f64),
        mib(total as f64),
        total as f64 / full as f64,
        bar / full as f64,
    );
    let p = prune(
        &repo,
        &Policy {
            keep_last: 3,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let t0 = Instant::now();
    let r = gc(
        &repo,
        &GcOptions {
            grace_secs: 0,
            ..Default::default()
        },
    )
    .unwrap();
    println!(
        "prune removed {}, gc in {:.2} s: {:.1} -> {:.1} MiB, {} packs repacked, {} deleted; unreferenced left {:.2} % (bar 5 %)",
        p.removed,
        t0.elapsed().as_secs_f64(),
        mib(r.bytes_before as f64),
        mib(r.bytes_after as f64),
        r.packs_repacked,
        r.packs_deleted,
        100.0 * r.unreferenced_bytes_after as f64 / r.bytes_after.max(1) as f64,
    );
    let out = dir.join("restored.img");
    for (id, want) in &kept {
        backup::restore_to_file(&repo, id, &out).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == want.concat(),
            "backup {id} does not restore byte-identical"
        );
    }
    println!(
        "kept backups {:?} restore byte-identical",
        kept.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    drop(repo);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&out);
}

/// put_extent alone (no iSCSI), from `threads` threads: what the
/// repository can take in.
fn put_only(dir: &Path, bytes: u64, threads: usize, level: i32) {
    let root = dir.join("repo-put");
    let _ = std::fs::remove_dir_all(&root);
    let create = CreateOptions {
        zstd_level: level,
        ..Default::default()
    };
    let o = RepoOptions {
        create: Some(create),
        ..Default::default()
    };
    let repo = Arc::new(Repo::open_with(&root, &o).unwrap());
    let per = bytes / EXTENT as u64 / threads as u64;
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads as u64)
        .map(|t| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut d = vec![0u8; EXTENT];
                for _ in 0..per {
                    fill(&mut rng, &mut d, level != 0);
                    repo.put_extent(&d).unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    repo.flush().unwrap();
    let rate = (per * threads as u64 * EXTENT as u64) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "put_extent only, {threads} threads, zstd {level}: {:.0} MiB/s (data generation included)",
        mib(rate)
    );
    drop(repo);
    let _ = std::fs::remove_dir_all(&root);
}

fn main() {
    let dir = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/bench-backup"));
    std::fs::create_dir_all(&dir).unwrap();
    let size = env("BENCH_SIZE_MIB", 1024) << 20;
    if let Ok(d) = std::env::var("BENCH_PUT_ONLY") {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = vec![0u8; EXTENT];
        let n = size / EXTENT as u64;
        let t0 = Instant::now();
        for _ in 0..n {
            fill(&mut rng, &mut buf, false);
        }
        let gen_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(blake3::hash(&buf));
        }
        let h = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(zstd::bulk::compress(&buf, 1).unwrap());
        }
        let z = t0.elapsed().as_secs_f64();
        println!(
            "one core: data generation {:.0} MiB/s, blake3 {:.0} MiB/s, zstd -1 of random {:.0} MiB/s",
            mib(size as f64 / gen_s),
            mib(size as f64 / h),
            mib(size as f64 / z)
        );
        for (t, l) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            put_only(Path::new(&d), size, t, l);
        }
        return;
    }
    if env("BENCH_SKIP_ISCSI", 0) == 0 {
        if split_cpus() {
            pin(0);
            println!("split CPUs: target on CPU 1, initiator and repository on CPU 0");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = |var: &str, default: &Path| {
            std::env::var(var)
                .map(PathBuf::from)
                .unwrap_or_else(|_| default.to_path_buf())
        };
        let d = Dirs {
            lun: dir.clone(),
            disk_repo: path("BENCH_REPO_DIR", &dir),
            tmpfs_repo: path("BENCH_TMPFS_DIR", Path::new("/dev/shm")),
        };
        let reps = env("BENCH_REPS", 3) as usize;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average before: {}", load.trim());
        let random_level = env("BENCH_RANDOM_LEVEL", 1) as i32;
        rt.block_on(throughput(&d, size, false, random_level, reps));
        rt.block_on(throughput(&d, size, true, 1, reps));
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average after: {}", load.trim());
    }
    storage(&dir, env("BENCH_STORE_MIB", 256) << 20);
}
