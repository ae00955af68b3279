//! The backup appliance end to end over real TCP (issue 5): an in-process
//! target with tracking on, a writer that never stops, full and incremental
//! backups, and the LUN's content read under each write lock (through the
//! backup's lock hook) compared byte for byte with each restored image.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::backup::{self, BackupError, BackupOptions, LockHook, LockInfo, Repo};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BS: u32 = 512;
/// 16 blocks (8 KiB) per extent; the 16 MiB LUN has 2048 extents.
const EB: u32 = 16;
const SIZE: u64 = 16 << 20;
const BLOCKS: u64 = SIZE / BS as u64;
const EXTENTS: u64 = BLOCKS / EB as u64;
const WRITER: &str = "iqn.2026-11.dev.gentgt:writer";

fn target() -> TestTarget {
    TestTarget::start(
        &[LunSpec::Memory {
            size: SIZE,
            block_size: BS,
        }],
        TargetOptions {
            cbt_extent_blocks: Some(EB),
            ..Default::default()
        },
    )
}

fn connect_opts(t: &TestTarget, name: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(t.addr, name, Some(&t.name));
    o.timeout = Duration::from_secs(10);
    o
}

async fn login(t: &TestTarget, name: &str) -> Arc<Session> {
    let s = Initiator::connect(&connect_opts(t, name)).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    Arc::new(s)
}

/// The whole LUN, 1 MiB per READ.
async fn read_all(s: &Session) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE as usize);
    let step = 2048u64;
    let mut lba = 0;
    while lba < BLOCKS {
        let n = step.min(BLOCKS - lba) as u32;
        out.extend(s.read16(0, lba, n, BS).await.unwrap());
        lba += u64::from(n);
    }
    out
}

/// Random data into `n` random extents (sometimes only part of one).
async fn scribble(s: &Session, rng: &mut rand::rngs::StdRng, n: usize) {
    for _ in 0..n {
        let e = rng.gen_range(0..EXTENTS);
        let off = rng.gen_range(0..EB as u64);
        let len = rng.gen_range(1..=EB as u64 - off);
        let mut data = vec![0u8; (len * u64::from(BS)) as usize];
        rng.fill(&mut data[..]);
        s.write16(0, e * u64::from(EB) + off, &data, BS, false)
            .await
            .unwrap();
    }
}

/// A writer that keeps writing until stopped; returns how many writes.
fn spawn_writer(s: Arc<Session>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            scribble(&s, &mut rng, 1).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    })
}

/// Lock generation -> the LUN's content read under that lock.
type Seen = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// A hook that reads the whole LUN from its own session while the
/// backup holds the lock (reads go on; every write is held).
fn recording_hook(t: &TestTarget, seen: &Seen) -> LockHook {
    let (opts, seen) = (connect_opts(t, WRITER), seen.clone());
    Arc::new(move |info: LockInfo| {
        let (opts, seen) = (opts.clone(), seen.clone());
        Box::pin(async move {
            let s = Initiator::connect(&opts).await.unwrap();
            let _ = s.test_unit_ready(0).await;
            let data = read_all(&s).await;
            seen.lock().unwrap().insert(info.generation, data);
            let _ = s.logout().await;
        })
    })
}

fn options(t: &TestTarget) -> BackupOptions {
    let mut o = BackupOptions::new(connect_opts(t, INITIATOR), 0);
    o.threshold_extents = 16;
    o.max_passes = 4;
    o.lease_ms = 5_000;
    o.parallel = 8;
    o
}

fn assert_restores_to(repo: &Repo, id: &str, want: &[u8], dir: &std::path::Path) {
    let out = dir.join(format!("restore-{id}"));
    backup::restore_to_file(repo, id, &out).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), want.len());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("backup {id}: restored image differs from the LUN at lock time at byte {at}");
    }
    std::fs::remove_file(out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_under_a_live_writer_equal_the_lun_at_lock_time() {
    let t = target();
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = login(&t, WRITER).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    scribble(&w, &mut rng, 400).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(w.clone(), stop.clone());
    let seen: Seen = Arc::default();
    let mut opts = options(&t);
    opts.lock_hook = Some(recording_hook(&t, &seen));

    let mut ids: Vec<String> = Vec::new();
    for round in 0..4 {
        let s = backup::backup(repo.clone(), &opts).await.unwrap();
        println!(
            "round {round}: {} full={} passes={} read={} lock held {} ms gen {}",
            s.id,
            s.stats.full,
            s.stats.passes,
            s.stats.bytes_read,
            s.stats.lock_held_ms,
            s.lock_generation
        );
        assert_eq!(s.stats.full, round == 0, "{:?}", s.full_reason);
        assert_eq!(s.parent.as_ref(), ids.last());
        ids.push(s.id);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 20, "the writer wrote only {writes} times");

    let seen = seen.lock().unwrap();
    for id in &ids {
        let m = repo.load(id).unwrap();
        let want = seen
            .get(&m.lock_generation)
            .expect("hook ran under the lock");
        assert_restores_to(&repo, id, want, dir.path());
    }
    let r = backup::verify(&repo).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.backups, 4);
}

/// The target must show the lock gone and accept writes again.
async fn assert_unlocked_soon(t: &TestTarget, within: Duration) {
    let s = login(t, INITIATOR).await;
    let deadline = Instant::now() + within;
    loop {
        let r = s.cbt_report(0).await.unwrap();
        if !r.flags.write_locked {
            break;
        }
        assert!(Instant::now() < deadline, "lock still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = tokio::time::timeout(
        Duration::from_secs(5),
        s.write16(0, 0, &vec![9u8; BS as usize], BS, false),
    )
    .await;
    assert!(matches!(w, Ok(Ok(()))), "write after the lock ended: {w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_runs_leave_a_valid_chain_and_no_lock() {
    let t = target();
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = login(&t, WRITER).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    scribble(&w, &mut rng, 300).await;
    let mut opts = options(&t);
    opts.lease_ms = 1_500;

    // 1. Ctrl-C (the cancel token) in the middle of the full pass.
    opts.parallel = 1;
    let (cancel, r2) = (opts.cancel.clone(), repo.clone());
    // Cancel once some (not all) extents are stored: mid-pass for sure.
    let canceller = tokio::spawn(async move {
        while r2.chunk_files().unwrap().len() < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cancel.cancel();
    });
    let r = backup::backup(repo.clone(), &opts).await;
    canceller.await.unwrap();
    assert!(matches!(r, Err(BackupError::Interrupted)), "{r:?}");
    assert!(repo.list().unwrap().is_empty());
    // The chunks written so far sit in an open pack nothing indexes.
    let v = backup::verify(&repo).unwrap();
    assert!(v.ok() && v.temp_files > 0, "{v:?}");
    assert!(repo.chunk_files().unwrap().len() >= 20);

    // 2. The client dies while it holds the lock: drop the run's future
    //    from inside the hook's wait.
    let mut opts = options(&t);
    opts.lease_ms = 1_500;
    let locked = Arc::new(tokio::sync::Notify::new());
    let l2 = locked.clone();
    opts.lock_hook = Some(Arc::new(move |_| {
        let l2 = l2.clone();
        Box::pin(async move {
            l2.notify_one();
            std::future::pending::<()>().await;
        })
    }));
    tokio::select! {
        r = backup::backup(repo.clone(), &opts) => panic!("finished: {r:?}"),
        _ = locked.notified() => {}
    }
    assert!(repo.list().unwrap().is_empty());
    assert_unlocked_soon(&t, Duration::from_millis(1_500 + 3_000)).await;
    assert!(backup::verify(&repo).unwrap().ok());

    // 3. The next runs succeed, with the writer going, and are right.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(w.clone(), stop.clone());
    let seen: Seen = Arc::default();
    let mut opts = options(&t);
    opts.lock_hook = Some(recording_hook(&t, &seen));
    let a = backup::backup(repo.clone(), &opts).await.unwrap();
    let b = backup::backup(repo.clone(), &opts).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(a.stats.full && !b.stats.full);
    assert_eq!(b.parent.as_deref(), Some(a.id.as_str()));
    let seen = seen.lock().unwrap();
    for s in [&a, &b] {
        assert_restores_to(&repo, &s.id, &seen[&s.lock_generation], dir.path());
    }
    assert!(backup::verify(&repo).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_reads_about_what_changed() {
    let t = target();
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = login(&t, WRITER).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Fill the whole LUN with data so the full backup stores every extent.
    let mut lba = 0;
    while lba < BLOCKS {
        let mut data = vec![0u8; 2048 * BS as usize];
        rng.fill(&mut data[..]);
        w.write16(0, lba, &data, BS, false).await.unwrap();
        lba += 2048;
    }

    // Plain sequential read with the same initiator, one extent per READ.
    let plain = login(&t, INITIATOR).await;
    let t0 = Instant::now();
    for e in 0..EXTENTS {
        plain.read16(0, e * u64::from(EB), EB, BS).await.unwrap();
    }
    let seq = SIZE as f64 / t0.elapsed().as_secs_f64();

    let opts = options(&t);
    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    let full_rate = full.throughput_bytes_per_s;

    // Change 1 % of the extents.
    let changed = (EXTENTS / 100) as usize;
    for _ in 0..changed {
        let e = rng.gen_range(0..EXTENTS);
        let mut data = vec![0u8; (EB * BS) as usize];
        rng.fill(&mut data[..]);
        w.write16(0, e * u64::from(EB), &data, BS, false)
            .await
            .unwrap();
    }
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    println!(
        "incremental after changing {changed} of {EXTENTS} extents: read {} of {} bytes, ratio {:.2} %",
        inc.stats.bytes_read,
        inc.logical_bytes,
        inc.read_ratio * 100.0
    );
    println!(
        "full backup {:.1} MiB/s (parallel {}), plain sequential read {:.1} MiB/s, {:.0} %",
        full_rate / 1048576.0,
        opts.parallel,
        seq / 1048576.0,
        100.0 * full_rate / seq
    );
    assert!(!inc.stats.full);
    assert!(inc.read_ratio < 0.05, "read ratio {}", inc.read_ratio);
    assert!(inc.stats.bytes_read >= changed as u64 * u64::from(EB * BS) / 2);
    let want = read_all(&plain).await;
    assert_restores_to(&repo, &inc.id, &want, dir.path());
}

/// A TCP proxy in front of the target whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c2 = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                let h = tokio::spawn(async move {
                    let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    // Without these, Nagle and delayed ACKs stall every reply.
                    let _ = (up.set_nodelay(true), down.set_nodelay(true));
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                c2.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { addr, conns }
    }

    /// Drop every connection (both sides see the socket close).
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_retried_after_reconnecting() {
    let t = target();
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = login(&t, WRITER).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    scribble(&w, &mut rng, 600).await;
    let proxy = Proxy::start(t.addr).await;
    let seen: Seen = Arc::default();
    let mut opts = options(&t);
    opts.connect.addr = proxy.addr;
    opts.parallel = 2;
    opts.lock_hook = Some(recording_hook(&t, &seen));
    let r2 = repo.clone();
    let cutter = async {
        while r2.chunk_files().unwrap().len() < 100 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        proxy.cut();
    };
    let (s, ()) = tokio::join!(backup::backup(repo.clone(), &opts), cutter);
    let s = s.unwrap();
    assert!(s.stats.full && s.stats.reconnects >= 1, "{:?}", s.stats);
    let seen = seen.lock().unwrap();
    assert_restores_to(&repo, &s.id, &seen[&s.lock_generation], dir.path());
    assert!(backup::verify(&repo).unwrap().ok());
}
