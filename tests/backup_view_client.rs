//! The appliance's view method, client side only, against a version-1
//! target behind a proxy that emulates contract version 2 with the write
//! lock: OPEN/RENEW/RELEASE VIEW become ACQUIRE/RENEW/RELEASE WRITE LOCK
//! (same CDB and reply layouts; the proxy adds VIEW LUN), REPORT TRACKING
//! gets the version-2 view fields, AS OF VIEW is dropped (under the lock
//! nothing changes after Gv) and READs of the view LUN go to LUN 0. On
//! request it loses the view: later view READs and AS OF VIEW queries fail
//! with ABORTED COMMAND 55h/03h.
//!
//! So this checks the run's state machine (one pass, reads from the view
//! LUN, renewals, release on every way out, the fallbacks that keep the
//! view's copies) without the target's views; `tests/backup_view.rs` checks
//! the real thing under live writers.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::backup::{self, BackupOptions, BackupSummary, Method, MethodChoice, Repo, ViewPhase};
use gentgt::initiator::{ConnectOptions, Initiator, Session, encode_lun};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, tcp};

const BS: u32 = 512;
/// 8 KiB extents; the 8 MiB LUN has 1024.
const EB: u64 = 16;
const SIZE: u64 = 8 << 20;
const BLOCKS: u64 = SIZE / BS as u64;
const VIEW_LUN: u16 = 9;

/// What the proxy knows and counts.
#[derive(Default)]
struct State {
    view_open: bool,
    view_gen: u64,
    lost: bool,
    /// Lose the view once this many view READs went through.
    lose_after: Option<u64>,
    view_reads: u64,
    opens: u64,
    renews: u64,
    releases: u64,
    acquires: u64,
}

impl State {
    fn lost_now(&mut self) -> bool {
        if self.view_open && self.lose_after.is_some_and(|n| self.view_reads >= n) {
            self.lost = true;
        }
        self.lost
    }
}

/// Replies the proxy patches, by ITT (per connection).
#[derive(Clone, Copy)]
enum Kind {
    Report,
    Open,
    Renew,
    Release,
    /// Sent so the target fails it; the sense becomes 0Bh/55h/03h.
    Lost,
}

type Kinds = Arc<Mutex<HashMap<u32, Kind>>>;

struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let up = TcpStream::connect(upstream).await.unwrap();
                let _ = (up.set_nodelay(true), down.set_nodelay(true));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let kinds: Kinds = Arc::default();
                tokio::spawn(pump(dr, uw, st.clone(), kinds.clone(), true));
                tokio::spawn(pump(ur, dw, st.clone(), kinds, false));
            }
        });
        Proxy { addr, state }
    }
}

/// Forward whole PDUs (no digests), rewriting them on the way.
async fn pump(
    mut from: tcp::OwnedReadHalf,
    mut to: tcp::OwnedWriteHalf,
    st: Arc<Mutex<State>>,
    kinds: Kinds,
    to_target: bool,
) {
    loop {
        let mut pdu = vec![0u8; 48];
        if from.read_exact(&mut pdu).await.is_err() {
            return;
        }
        let dsl = u32::from_be_bytes([0, pdu[5], pdu[6], pdu[7]]) as usize;
        let rest = usize::from(pdu[4]) * 4 + dsl.div_ceil(4) * 4;
        pdu.resize(48 + rest, 0);
        if from.read_exact(&mut pdu[48..]).await.is_err() {
            return;
        }
        {
            let mut st = st.lock().unwrap();
            let mut kinds = kinds.lock().unwrap();
            if to_target {
                command(&mut pdu, &mut st, &mut kinds);
            } else {
                reply(&mut pdu, &mut st, &kinds);
            }
        }
        if to.write_all(&pdu).await.is_err() {
            return;
        }
    }
}

fn itt(pdu: &[u8]) -> u32 {
    u32::from_be_bytes([pdu[16], pdu[17], pdu[18], pdu[19]])
}

/// Initiator to target: SCSI Commands of the view LUN and of opcode C0h.
fn command(pdu: &mut [u8], st: &mut State, kinds: &mut HashMap<u32, Kind>) {
    if pdu[0] & 0x3f != 0x01 {
        return;
    }
    let itt = itt(pdu);
    kinds.remove(&itt);
    if pdu[8..16] == encode_lun(u64::from(VIEW_LUN)).to_be_bytes() {
        pdu[8..16].copy_from_slice(&encode_lun(0).to_be_bytes());
        if pdu[32] == 0x88 {
            if st.lost_now() {
                // An LBA past the end: the target fails it, we fix the sense.
                pdu[34..42].copy_from_slice(&(u64::MAX - 4096).to_be_bytes());
                kinds.insert(itt, Kind::Lost);
            } else {
                st.view_reads += 1;
            }
        }
        return;
    }
    if pdu[32] != 0xc0 {
        return;
    }
    let cdb = &mut pdu[32..48];
    let kind = match cdb[1] & 0x1f {
        0 => Some(Kind::Report),
        2 if cdb[1] & 0x20 != 0 => {
            cdb[1] &= !0x20;
            if st.lost_now() {
                cdb[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
                Some(Kind::Lost)
            } else {
                None
            }
        }
        3 => {
            st.acquires += 1;
            None
        }
        6 => {
            st.opens += 1;
            Some(Kind::Open)
        }
        7 => {
            st.renews += 1;
            Some(Kind::Renew)
        }
        8 => {
            st.releases += 1;
            Some(Kind::Release)
        }
        _ => None,
    };
    // 06h/07h/08h have the layouts of 03h/04h/05h.
    if (6..=8).contains(&(cdb[1] & 0x1f)) {
        cdb[1] -= 3;
    }
    if let Some(k) = kind {
        kinds.insert(itt, k);
    }
}

/// Target to initiator: Data-In of the patched commands, and the sense of
/// the ones failed on purpose.
fn reply(pdu: &mut [u8], st: &mut State, kinds: &HashMap<u32, Kind>) {
    let op = pdu[0] & 0x3f;
    let Some(&kind) = kinds.get(&itt(pdu)) else {
        return;
    };
    let at = 48 + usize::from(pdu[4]) * 4;
    let d = &mut pdu[at..];
    match (op, kind) {
        (0x25, Kind::Report) if d.len() >= 96 => report_v2(d, st),
        (0x25, Kind::Open | Kind::Renew | Kind::Release) if d.len() >= 32 => {
            d[20..22].copy_from_slice(&VIEW_LUN.to_be_bytes());
            match kind {
                Kind::Open => {
                    st.view_open = true;
                    st.view_gen = u64::from_be_bytes(d[8..16].try_into().unwrap());
                    st.view_reads = 0;
                }
                Kind::Release => (st.view_open, st.lost) = (false, false),
                _ => {}
            }
        }
        (0x21, Kind::Lost) if d.len() >= 16 => {
            let s = &mut d[2..];
            match s[0] & 0x7f {
                0x70 | 0x71 => (s[2], s[12], s[13]) = (0x0b, 0x55, 0x03),
                _ => (s[1], s[2], s[3]) = (0x0b, 0x55, 0x03),
            }
        }
        _ => {}
    }
}

/// A version-1 REPORT TRACKING made version 2, views on at VIEW_LUN.
fn report_v2(d: &mut [u8], st: &State) {
    d[0] = 2;
    if st.view_open {
        let lease: [u8; 4] = d[56..60].try_into().unwrap();
        d[68..72].copy_from_slice(&lease);
        d[56..60].fill(0);
        d[1] = (d[1] & !0x04) | 0x10 | if st.lost { 0x20 } else { 0 };
        d[60..68].copy_from_slice(&st.view_gen.to_be_bytes());
    }
    d[80..88].copy_from_slice(&(1u64 << 30).to_be_bytes());
    d[88..90].copy_from_slice(&VIEW_LUN.to_be_bytes());
}

fn target() -> TestTarget {
    TestTarget::start(
        &[LunSpec::Memory {
            size: SIZE,
            block_size: BS,
        }],
        TargetOptions {
            cbt_extent_blocks: Some(EB as u32),
            ..Default::default()
        },
    )
}

async fn direct(t: &TestTarget) -> Session {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(&t.name));
    o.timeout = Duration::from_secs(10);
    let s = Initiator::connect(&o).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    s
}

/// Random data into `n` random extents.
async fn scribble(s: &Session, seed: u64, n: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let e = rng.gen_range(0..BLOCKS / EB);
        let mut data = vec![0u8; (EB * u64::from(BS)) as usize];
        rng.fill(&mut data[..]);
        s.write16(0, e * EB, &data, BS, false).await.unwrap();
    }
}

async fn read_all(s: &Session) -> Vec<u8> {
    let mut out = Vec::new();
    for lba in (0..BLOCKS).step_by(2048) {
        out.extend(s.read16(0, lba, 2048, BS).await.unwrap());
    }
    out
}

fn options(p: &Proxy, phases: &Arc<Mutex<Vec<ViewPhase>>>) -> BackupOptions {
    let mut c = ConnectOptions::new(p.addr, INITIATOR, Some(common::TARGET));
    c.timeout = Duration::from_secs(10);
    let mut o = BackupOptions::new(c, 0);
    o.view_lease_ms = 3_000;
    // One extent per READ: the proxy counts view READs as extents (reads
    // of the view, losing it after N). Multi-extent READs from a view
    // are checked against the real target in tests/backup_view.rs.
    o.max_read_bytes = (EB * u64::from(BS)) as u32;
    let phases = phases.clone();
    o.view_hook = Some(Arc::new(move |ph| {
        phases.lock().unwrap().push(ph);
        Box::pin(async {})
    }));
    o
}

fn assert_restores_to(repo: &Repo, s: &BackupSummary, want: &[u8], dir: &std::path::Path) {
    let out = dir.join(&s.id);
    backup::restore_to_file(repo, &s.id, &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == want, "{} differs", s.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_backup_is_one_pass_from_the_view_lun_and_released() {
    let t = target();
    let p = Proxy::start(t.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = direct(&t).await;
    scribble(&w, 1, 300).await;
    let phases = Arc::default();
    let opts = options(&p, &phases);

    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    assert_eq!(full.method, Method::View, "{:?}", full.fallback_reason);
    assert_eq!(
        (full.stats.passes, full.stats.extents_copied),
        (1, BLOCKS / EB)
    );
    assert_restores_to(&repo, &full, &read_all(&w).await, dir.path());
    {
        let ph = phases.lock().unwrap();
        assert_eq!(ph.len(), 3, "{ph:?}");
        assert_eq!(ph[0], ViewPhase::BeforeOpen);
        assert!(
            matches!(ph[1], ViewPhase::Opened { view_lun: VIEW_LUN, generation, .. }
            if generation == full.generation)
        );
        assert_eq!(
            ph[2],
            ViewPhase::Listed {
                extents: BLOCKS / EB
            }
        );
    }

    scribble(&w, 2, 40).await;
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    assert_eq!(inc.method, Method::View);
    assert!(!inc.stats.full && inc.stats.passes == 1);
    assert!(inc.stats.extents_copied <= 40 && inc.stats.extents_copied > 0);
    assert_eq!(
        inc.stats.bytes_read,
        inc.stats.extents_copied * EB * u64::from(BS)
    );
    assert_restores_to(&repo, &inc, &read_all(&w).await, dir.path());
    let st = p.state.lock().unwrap();
    // Each backup: one OPEN, at least the closing RENEW, one RELEASE; every
    // extent read from the view LUN; no write lock of its own.
    assert_eq!((st.opens, st.releases, st.acquires), (2, 2, 0));
    assert!(st.renews >= 2);
    assert!(!st.view_open);
    assert_eq!(
        st.view_reads, inc.stats.extents_copied,
        "reads of the last view"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_view_is_released_and_the_lock_loop_finishes_exactly() {
    let t = target();
    let p = Proxy::start(t.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let w = direct(&t).await;
    scribble(&w, 3, 300).await;
    let phases = Arc::default();
    let mut opts = options(&p, &phases);
    opts.parallel = 2;

    // Lost in the middle of the full copy.
    p.state.lock().unwrap().lose_after = Some(100);
    let full = backup::backup(repo.clone(), &opts).await.unwrap();
    println!("full: {:?} {:?}", full.fallback_reason, full.stats);
    assert_eq!(full.method, Method::Lock);
    assert!(full.fallback_reason.as_deref().unwrap().contains("lost"));
    assert_restores_to(&repo, &full, &read_all(&w).await, dir.path());

    // Lost in the middle of an incremental's copy (its list was taken).
    scribble(&w, 4, 300).await;
    let inc = backup::backup(repo.clone(), &opts).await.unwrap();
    println!("inc: {:?} {:?}", inc.fallback_reason, inc.stats);
    assert_eq!(inc.method, Method::Lock);
    assert!(!inc.stats.full);
    assert_restores_to(&repo, &inc, &read_all(&w).await, dir.path());

    // Lost before its list could be taken.
    p.state.lock().unwrap().lose_after = Some(0);
    scribble(&w, 5, 50).await;
    let inc2 = backup::backup(repo.clone(), &opts).await.unwrap();
    println!("inc2: {:?} {:?}", inc2.fallback_reason, inc2.stats);
    assert_eq!(inc2.method, Method::Lock);
    assert_restores_to(&repo, &inc2, &read_all(&w).await, dir.path());

    // Forced: an error, and still released.
    opts.method = MethodChoice::View;
    let e = backup::backup(repo.clone(), &opts).await.unwrap_err();
    assert!(matches!(e, backup::BackupError::ViewGone(_)), "{e}");
    let st = p.state.lock().unwrap();
    assert_eq!((st.opens, st.releases), (4, 4));
    assert!(!st.view_open);
    assert!(st.acquires >= 3, "the fallbacks took the write lock");
    drop(st);
    assert!(backup::verify(&repo).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_view_backup_releases_the_view() {
    let t = target();
    let p = Proxy::start(t.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let phases = Arc::default();
    let mut opts = options(&p, &phases);
    opts.parallel = 1;
    let (cancel, st) = (opts.cancel.clone(), p.state.clone());
    let canceller = tokio::spawn(async move {
        while st.lock().unwrap().view_reads < 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cancel.cancel();
    });
    let r = backup::backup(repo.clone(), &opts).await;
    canceller.await.unwrap();
    assert!(matches!(r, Err(backup::BackupError::Interrupted)), "{r:?}");
    let st = p.state.lock().unwrap();
    assert_eq!((st.opens, st.releases), (1, 1));
    assert!(repo.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_view_backup_still_releases_the_view() {
    let t = target();
    let p = Proxy::start(t.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repo::open(&dir.path().join("repo")).unwrap());
    let phases = Arc::default();
    let mut opts = options(&p, &phases);
    // The caller gives up on the whole run while it holds the view.
    let listed = Arc::new(tokio::sync::Notify::new());
    let l2 = listed.clone();
    opts.view_hook = Some(Arc::new(move |ph| {
        let l2 = l2.clone();
        Box::pin(async move {
            if let ViewPhase::Listed { .. } = ph {
                l2.notify_one();
                std::future::pending::<()>().await;
            }
        })
    }));
    tokio::select! {
        r = backup::backup(repo.clone(), &opts) => panic!("finished: {r:?}"),
        _ = listed.notified() => {}
    }
    let until = std::time::Instant::now() + Duration::from_secs(5);
    // Counted when the command passes, closed when its reply does.
    while p.state.lock().unwrap().view_open {
        assert!(std::time::Instant::now() < until, "no RELEASE VIEW");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(p.state.lock().unwrap().releases, 1);
}
