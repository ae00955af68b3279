//! The backup appliance over point-in-time views (issue 12) against a real
//! `gentgt serve`: a file LUN with views on, several writer sessions doing
//! 4 KiB random writes at QD16 through a full and an incremental backup.
//! Each backup must take one pass over the view, read each changed extent
//! once, never take the write lock, and restore to exactly the LUN as it
//! was at OPEN VIEW (captured through the view hook with the writers
//! paused). Then the fallbacks: views off, and a view lost because the
//! view space is tiny; both must end as lock backups equal to the LUN at
//! lock time.
//!
//! The server is configured by TOML (`views`, `view_lun`, `view_space`),
//! so this file depends on the target's configuration keys only.

mod common;

use common::ServeProcess;
use gentgt::backup::{
    self, BackupOptions, BackupSummary, LockHook, LockInfo, Method, MethodChoice, Repo, ViewHook,
    ViewPhase,
};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

const TARGET: &str = "iqn.2026-11.dev.gentgt:views";
/// The default CBT initiator: the only one allowed C0h and the view LUN.
const BACKUP: &str = "iqn.2026-11.dev.gentgt:backup";
const WRITER: &str = "iqn.2026-11.dev.gentgt:writer";
const BS: u32 = 512;
/// 64 KiB extents.
const EB: u64 = 128;
const VIEW_LUN: u16 = 7;
const SOON: Duration = Duration::from_secs(10);

/// LUN 0 of `size_mib`, 64 KiB extents, tracking on (the file default),
/// plus `lun_keys` (the view settings under test).
fn config(size_mib: u64, lun_keys: &str) -> String {
    format!(
        r#"listen = ["127.0.0.1:0"]

[[target]]
name = "{TARGET}"

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "{size_mib}MiB"
block_size = {BS}
extent_size = "64KiB"
{lun_keys}
"#
    )
}

/// The one place that builds the server: easy to adapt if the target's
/// keys change.
fn start_server(dir: &Path, size_mib: u64, lun_keys: &str) -> ServeProcess {
    ServeProcess::start_in(dir, &config(size_mib, lun_keys))
}

fn connect_opts(addr: SocketAddr, name: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(addr, name, Some(TARGET));
    o.timeout = SOON;
    o
}

async fn login(addr: SocketAddr, name: &str) -> Arc<Session> {
    let s = Initiator::connect(&connect_opts(addr, name)).await.unwrap();
    let _ = s.test_unit_ready(0).await; // the power-on unit attention
    Arc::new(s)
}

/// All of LUN 0, 1 MiB per READ.
async fn read_all(s: &Session, blocks: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((blocks * u64::from(BS)) as usize);
    let mut lba = 0;
    while lba < blocks {
        let n = 2048.min(blocks - lba) as u32;
        out.extend(s.read16(0, lba, n, BS).await.unwrap());
        lba += u64::from(n);
    }
    out
}

/// Writer sessions, each with `qd` tasks doing 4 KiB random writes to the
/// first `span` blocks of the LUN. Every
/// write holds a read guard of `gate`, so taking the write side pauses
/// them all and waits for the writes in flight.
struct Writers {
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(addr: SocketAddr, sessions: usize, qd: usize, span: u64) -> Writers {
        let w = Writers {
            gate: Arc::default(),
            stop: Arc::default(),
            writes: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for n in 0..sessions {
            let s = login(addr, WRITER).await;
            for q in 0..qd {
                let (s, gate) = (s.clone(), w.gate.clone());
                let (stop, writes) = (w.stop.clone(), w.writes.clone());
                let seed = (n * 1000 + q) as u64;
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let mut data = vec![0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        let lba = rng.gen_range(0..span / 8) * 8;
                        rng.fill(&mut data[..]);
                        let _g = gate.read().await;
                        s.write16(0, lba, &data, BS, false).await.unwrap();
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Writers { tasks, ..w }
    }

    /// Stop; a writer that failed a write fails the test here.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.writes.load(Ordering::Relaxed)
    }
}

/// What the view hook saw, per VIEW GENERATION.
#[derive(Default)]
struct Seen {
    /// The LUN read with the writers paused, just before OPEN.
    pending: Option<Vec<u8>>,
    at_open: HashMap<u64, Vec<u8>>,
    /// Extents listed AS OF VIEW since `parent`, per view generation.
    changed: HashMap<u64, BTreeSet<u64>>,
    parent: Option<u64>,
    paused: Option<OwnedRwLockWriteGuard<()>>,
}

/// A hook that pauses the writers before OPEN and reads the LUN (no write
/// in flight, so the view must equal it), resumes them once the view is
/// open, and lists what the view holds as changed since the parent.
fn capture_hook(addr: SocketAddr, w: &Writers, seen: &Arc<Mutex<Seen>>, blocks: u64) -> ViewHook {
    let (gate, seen) = (w.gate.clone(), seen.clone());
    Arc::new(move |phase: ViewPhase| {
        let (gate, seen) = (gate.clone(), seen.clone());
        Box::pin(async move {
            match phase {
                ViewPhase::BeforeOpen => {
                    let g = gate.write_owned().await;
                    let s = login(addr, BACKUP).await;
                    let data = read_all(&s, blocks).await;
                    let mut seen = seen.lock().unwrap();
                    seen.pending = Some(data);
                    seen.paused = Some(g);
                }
                ViewPhase::Opened { generation, .. } => {
                    let parent = {
                        let mut seen = seen.lock().unwrap();
                        let data = seen.pending.take().unwrap();
                        seen.at_open.insert(generation, data);
                        seen.paused = None; // the writers go on
                        seen.parent
                    };
                    if let Some(p) = parent {
                        let s = login(addr, BACKUP).await;
                        let list = s.cbt_all_changes_as_of(0, p, 0, true).await.unwrap();
                        let set = list
                            .iter()
                            .flat_map(|x| (x.lba / EB)..(x.lba + u64::from(x.blocks)).div_ceil(EB))
                            .collect();
                        seen.lock().unwrap().changed.insert(generation, set);
                    }
                }
                ViewPhase::Listed { .. } => {}
                ViewPhase::NotOpened => seen.lock().unwrap().paused = None,
            }
        })
    })
}

/// Lock generation -> the LUN read under that lock (writes held).
type AtLock = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

fn lock_hook(addr: SocketAddr, at_lock: &AtLock, blocks: u64) -> LockHook {
    let at_lock = at_lock.clone();
    Arc::new(move |info: LockInfo| {
        let at_lock = at_lock.clone();
        Box::pin(async move {
            let s = login(addr, WRITER).await;
            let data = read_all(&s, blocks).await;
            at_lock.lock().unwrap().insert(info.generation, data);
        })
    })
}

/// Poll REPORT TRACKING until stopped; true if it ever said WRITE LOCKED.
fn lock_watch(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let s = login(addr, BACKUP).await;
        let mut locked = false;
        while !stop.load(Ordering::Relaxed) {
            locked |= s.cbt_report(0).await.unwrap().flags.write_locked;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        locked
    })
}

fn options(addr: SocketAddr) -> BackupOptions {
    let mut o = BackupOptions::new(connect_opts(addr, BACKUP), 0);
    o.threshold_extents = 16;
    o.max_passes = 3;
    o.lease_ms = 5_000;
    o.view_lease_ms = 30_000;
    o.parallel = 8;
    o
}

fn assert_restores_to(repo: &Repo, s: &BackupSummary, want: &[u8], dir: &Path) {
    let out = dir.join(format!("restore-{}", s.id));
    backup::restore_to_file(repo, &s.id, &out).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), want.len());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "backup {} ({:?}): restored image differs at byte {at}",
            s.id, s.method
        );
    }
    std::fs::remove_file(out).unwrap();
}

async fn assert_no_view_open(addr: SocketAddr) {
    let r = login(addr, BACKUP).await.cbt_report(0).await.unwrap();
    assert!(!r.flags.view_open, "the backup left its view open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_backups_under_heavy_writers_are_one_pass_and_point_in_time() {
    const MIB: u64 = 64;
    let blocks = (MIB << 20) / u64::from(BS);
    let dir = tempfile::tempdir().unwrap();
    let srv = start_server(
        dir.path(),
        MIB,
        &format!("views = true\nview_lun = {VIEW_LUN}\nview_space = \"{MIB}MiB\""),
    );
    let addr = srv.addr;
    let r = login(addr, BACKUP).await.cbt_report(0).await.unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.views.expect("views on").view_lun, VIEW_LUN);

    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    // A hot quarter of the LUN: the incremental must read only that.
    let writers = Writers::start(addr, 3, 16, blocks / 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut opts = options(addr);
    opts.method = MethodChoice::View;
    opts.view_hook = Some(capture_hook(addr, &writers, &seen, blocks));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watch = lock_watch(addr, stop_watch.clone());

    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    println!("full: {:?}", full.stats);
    assert_eq!(full.method, Method::View, "{:?}", full.fallback_reason);
    assert!(full.stats.full && full.stats.passes == 1);
    assert_eq!(full.stats.lock_held_ms, 0);
    assert_no_view_open(addr).await;

    // Let the writers dirty part of the LUN, then the incremental.
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.lock().unwrap().parent = Some(full.generation);
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    println!("incremental: {:?}", inc.stats);
    assert_eq!(inc.method, Method::View, "{:?}", inc.fallback_reason);
    assert!(!inc.stats.full && inc.stats.passes == 1);
    assert_eq!(inc.parent.as_deref(), Some(full.id.as_str()));
    assert_eq!(inc.stats.lock_held_ms, 0);
    assert_no_view_open(addr).await;

    let writes = writers.stop().await;
    stop_watch.store(true, Ordering::Relaxed);
    assert!(!watch.await.unwrap(), "the write lock was taken");
    assert!(writes > 1000, "the writers wrote only {writes} times");

    let seen = seen.lock().unwrap();
    let changed = &seen.changed[&inc.generation];
    let changed_bytes = changed.len() as u64 * EB * u64::from(BS);
    println!(
        "incremental read {} bytes for {} changed extents ({changed_bytes} bytes)",
        inc.stats.bytes_read,
        changed.len()
    );
    assert!(!changed.is_empty() && changed.iter().all(|&e| e < blocks / EB / 4));
    assert_eq!(inc.stats.extents_copied, changed.len() as u64);
    assert!(inc.stats.bytes_read as f64 <= 1.05 * changed_bytes as f64);
    for s in [&full, &inc] {
        assert_restores_to(&repo, s, &seen.at_open[&s.generation], dir.path());
    }
    assert!(backup::verify(&repo).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_off_falls_back_to_the_lock() {
    const MIB: u64 = 16;
    let blocks = (MIB << 20) / u64::from(BS);
    let dir = tempfile::tempdir().unwrap();
    let srv = start_server(dir.path(), MIB, "views = false");
    let addr = srv.addr;
    let r = login(addr, BACKUP).await.cbt_report(0).await.unwrap();
    assert!(!r.views_supported());

    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let mut forced = options(addr);
    forced.method = MethodChoice::View;
    let e = backup::backup(repo.clone(), &forced).await.unwrap_err();
    assert!(e.to_string().contains("views are off"), "{e}");

    let writers = Writers::start(addr, 1, 4, blocks).await;
    let at_lock: AtLock = Arc::default();
    let mut opts = options(addr);
    opts.lock_hook = Some(lock_hook(addr, &at_lock, blocks));
    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    writers.stop().await;
    for s in [&full, &inc] {
        assert_eq!(s.method, Method::Lock);
        assert!(s.fallback_reason.as_deref().unwrap().contains("off"));
        assert_restores_to(
            &repo,
            s,
            &at_lock.lock().unwrap()[&s.generation],
            dir.path(),
        );
    }
    assert!(backup::verify(&repo).unwrap().ok());
}

/// Resume the writers once the view's list is known and wait until the
/// target reports the view lost: the copy from the view then fails and
/// the run must fall back, keeping the view's list.
fn lose_view_hook(addr: SocketAddr, w: &Writers) -> ViewHook {
    let paused: Arc<Mutex<Option<OwnedRwLockWriteGuard<()>>>> = Arc::default();
    let gate = w.gate.clone();
    Arc::new(move |phase: ViewPhase| {
        let (gate, paused) = (gate.clone(), paused.clone());
        Box::pin(async move {
            match phase {
                // No writes until the list is taken (a lost view lists nothing).
                ViewPhase::BeforeOpen => *paused.lock().unwrap() = Some(gate.write_owned().await),
                ViewPhase::Listed { .. } => {
                    *paused.lock().unwrap() = None;
                    let s = login(addr, BACKUP).await;
                    let until = Instant::now() + SOON;
                    while !s.cbt_report(0).await.unwrap().flags.view_lost {
                        assert!(Instant::now() < until, "the view was never lost");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                ViewPhase::NotOpened => *paused.lock().unwrap() = None,
                ViewPhase::Opened { .. } => {}
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_view_falls_back_to_the_lock_and_stays_exact() {
    const MIB: u64 = 16;
    let blocks = (MIB << 20) / u64::from(BS);
    let dir = tempfile::tempdir().unwrap();
    // Room for 256 kept 4 KiB pieces: the writers exceed it in milliseconds.
    let srv = start_server(
        dir.path(),
        MIB,
        &format!("views = true\nview_lun = {VIEW_LUN}\nview_space = \"1MiB\""),
    );
    let addr = srv.addr;
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    // Data everywhere first: the view keeps 4 KiB pieces and a piece that
    // held only zeros costs no view space, so overwriting an empty LUN
    // would never lose the view.
    let filler = login(addr, BACKUP).await;
    for lba in (0..blocks).step_by(2048) {
        filler
            .write16(0, lba, &vec![0x5a; 2048 * BS as usize], BS, false)
            .await
            .unwrap();
    }
    let writers = Writers::start(addr, 2, 16, blocks).await;
    let at_lock: AtLock = Arc::default();
    let mut opts = options(addr);
    opts.lock_hook = Some(lock_hook(addr, &at_lock, blocks));
    opts.view_hook = Some(lose_view_hook(addr, &writers));

    // Full (the view pass had every extent to do) and incremental (the
    // view's list of changes was taken, then the view was lost).
    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    writers.stop().await;
    for s in [&full, &inc] {
        println!("{}: {:?}", s.id, s.stats);
        assert_eq!(s.method, Method::Lock);
        let why = s.fallback_reason.as_deref().unwrap();
        assert!(why.contains("lost"), "{why}");
        assert_restores_to(
            &repo,
            s,
            &at_lock.lock().unwrap()[&s.generation],
            dir.path(),
        );
    }
    assert!(!inc.stats.full);
    assert_no_view_open(addr).await;
    assert!(backup::verify(&repo).unwrap().ok());

    // Forced, a lost view is an error, and the view is released.
    let w2 = Writers::start(addr, 2, 16, blocks).await;
    let mut forced = options(addr);
    forced.method = MethodChoice::View;
    forced.view_hook = Some(lose_view_hook(addr, &w2));
    let e = backup::backup(repo.clone(), &forced).await.unwrap_err();
    w2.stop().await;
    assert!(matches!(e, backup::BackupError::ViewGone(_)), "{e}");
    assert_no_view_open(addr).await;
}

/// A TCP relay in front of the server that cuts every connection once
/// `cut_after` bytes went from the server to the client (once).
async fn cutting_relay(upstream: SocketAddr, cut_after: u64) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let _ = (up.set_nodelay(true), down.set_nodelay(true));
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let (sent, c2) = (sent.clone(), conns.clone());
            let a = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut dr, &mut uw).await;
            });
            let b = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 || dw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                    if before < cut_after && before + n as u64 >= cut_after {
                        for h in c2.lock().unwrap().drain(..) {
                            h.abort();
                        }
                        return;
                    }
                }
            });
            conns
                .lock()
                .unwrap()
                .extend([a.abort_handle(), b.abort_handle()]);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_outlives_a_dropped_connection() {
    const MIB: u64 = 32;
    let blocks = (MIB << 20) / u64::from(BS);
    let dir = tempfile::tempdir().unwrap();
    // Default view LUN and view space.
    let srv = start_server(dir.path(), MIB, "");
    let addr = srv.addr;
    let w = login(addr, WRITER).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for lba in (0..blocks).step_by(2048) {
        let mut data = vec![0u8; 2048 * BS as usize];
        rng.fill(&mut data[..]);
        w.write16(0, lba, &data, BS, false).await.unwrap();
    }
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let writers = Writers::start(addr, 1, 8, blocks).await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut opts = options(cutting_relay(addr, 8 << 20).await);
    opts.parallel = 2;
    opts.view_hook = Some(capture_hook(addr, &writers, &seen, blocks));
    let s = backup::backup(repo.clone(), &opts).await.unwrap();
    writers.stop().await;
    println!("{:?}", s.stats);
    assert_eq!(s.method, Method::View, "{:?}", s.fallback_reason);
    assert!(
        s.stats.reconnects >= 1 && s.stats.passes == 1,
        "{:?}",
        s.stats
    );
    assert_eq!(s.stats.bytes_read, MIB << 20, "each extent read once");
    let want = seen.lock().unwrap().at_open.remove(&s.generation).unwrap();
    assert_restores_to(&repo, &s, &want, dir.path());
    assert_no_view_open(addr).await;
}
