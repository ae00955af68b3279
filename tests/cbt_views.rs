//! CBT point-in-time views (spec v2, issue 12) end to end: a target built
//! from configuration TOML (so views, the view LUN and its per-initiator
//! visibility are set up exactly as `gentgt serve` sets them up), served
//! in-process on 127.0.0.1:0 and driven over real iSCSI by the project's
//! initiator, qemu-img and libiscsi's tools. The view service actions are
//! sent as raw CDBs (the initiator has no view API yet).
//!
//! The stress tests keep a log of every write (writer id, sequence number
//! and chunk are encoded in the data itself) stamped with a shared logical
//! clock, and check each view read against it: the view of a chunk must be a
//! version submitted before OPEN returned, and no write acknowledged before
//! OPEN was sent may have overwritten it; and every read of the view
//! returns the same bytes.

mod common;

use common::{TestTarget, require_tool, run};
use gentgt::initiator::cbt as wire;
use gentgt::initiator::{ConnectOptions, Initiator, ScsiOutcome, Session};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinHandle;

/// The built-in default CBT initiator (no `cbt_initiators` in the TOML).
const BACKUP: &str = "iqn.2026-11.dev.gentgt:backup";
/// Initiators that may log in and write but not use C0h.
const WRITER: &str = "iqn.2026-11.dev.gentgt:writer";
const TGT: &str = "iqn.2026-11.dev.gentgt:views";
const BS: u32 = 512;
/// The default view LUN of LUN 0 (128 + id).
const VIEW_LUN: u64 = 128;
const EXTENT: u64 = 64 << 10;

const NOT_READY: (u8, u8, u8) = (2, 0x04, 0x00);
const WRITE_PROTECTED: (u8, u8, u8) = (7, 0x27, 0x00);
const INVALID_FIELD: (u8, u8, u8) = (5, 0x24, 0x00);
const VIEW_LOST: (u8, u8, u8) = (0x0b, 0x55, 0x03);
const LUN_NOT_SUPPORTED: (u8, u8, u8) = (5, 0x25, 0x00);
const RESERVATION_CONFLICT: u8 = 0x18;
const CHECK_CONDITION: u8 = 0x02;

const FLAG_VIEW_OPEN: u8 = 0x10;
const FLAG_VIEW_LOST: u8 = 0x20;

// ---------------------------------------------------------------- setup

/// TOML for target TGT: `top` goes before the target (global keys), each
/// of `luns` is the body of one `[[target.lun]]` table.
fn toml(top: &str, luns: &[&str]) -> String {
    let mut s = format!("{top}\n[[target]]\nname = \"{TGT}\"\n");
    for l in luns {
        s.push_str("\n[[target.lun]]\n");
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn memory_lun(id: u64, size: &str, extra: &str) -> String {
    format!("id = {id}\nbackend = \"memory\"\nsize = \"{size}\"\nextent_size = \"64KiB\"\n{extra}")
}

fn file_lun(path: &str, size: &str) -> String {
    format!(
        "id = 0\nbackend = \"file\"\npath = \"{path}\"\nsize = \"{size}\"\nextent_size = \"64KiB\"\n"
    )
}

async fn connect(addr: SocketAddr, initiator: &str, isid: Option<[u8; 6]>) -> Arc<Session> {
    let mut opts = ConnectOptions::new(addr, initiator, Some(TGT));
    opts.timeout = Duration::from_secs(20);
    if let Some(i) = isid {
        opts.isid = i;
    }
    let s = Initiator::connect(&opts).await.unwrap();
    // The power-on unit attention of every LUN this initiator sees.
    for lun in [0, VIEW_LUN] {
        settle(&s, lun).await;
    }
    Arc::new(s)
}

async fn login(t: &TestTarget, initiator: &str) -> Arc<Session> {
    connect(t.addr, initiator, None).await
}

/// TEST UNIT READY until the answer is not a unit attention.
async fn settle(s: &Session, lun: u64) {
    for _ in 0..4 {
        let out = s.scsi(lun, &[0u8; 6], None, 0).await.unwrap();
        if out.sense_code().is_none_or(|(k, _, _)| k != 6) {
            return;
        }
    }
}

async fn logout(s: Arc<Session>) {
    let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("session still shared"));
    tokio::time::timeout(Duration::from_secs(10), s.logout())
        .await
        .expect("logout timed out")
        .unwrap();
}

// ----------------------------------------------------------- raw CDBs

fn open_cdb(lease_ms: u32, drain_ms: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = 0x06;
    c[2..6].copy_from_slice(&lease_ms.to_be_bytes());
    c[6..10].copy_from_slice(&drain_ms.to_be_bytes());
    c
}

fn renew_cdb(token: u64, lease_ms: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = 0x07;
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c[10..14].copy_from_slice(&lease_ms.to_be_bytes());
    c
}

fn release_cdb(token: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = 0x08;
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c
}

/// GET CHANGED EXTENTS with AS OF VIEW.
fn as_of_view_cdb(since: u64, lba: u64) -> [u8; 16] {
    let mut c = wire::get_changed_extents_cdb(since, lba).unwrap();
    c[1] = 0x22;
    c
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

async fn read_raw(s: &Session, lun: u64, lba: u64, blocks: u32) -> ScsiOutcome {
    s.scsi(lun, &rw16(0x88, lba, blocks), None, blocks * BS)
        .await
        .unwrap()
}

async fn write_raw(s: &Session, lun: u64, lba: u64, data: &[u8]) -> ScsiOutcome {
    let blocks = (data.len() / BS as usize) as u32;
    s.scsi(lun, &rw16(0x8a, lba, blocks), Some(data), 0)
        .await
        .unwrap()
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    token: u64,
    generation: u64,
    lease_ms: u32,
    lun: u16,
}

fn parse_grant(d: &[u8]) -> Grant {
    assert_eq!(d.len(), 32, "view reply length");
    assert!(d[22..].iter().all(|&b| b == 0), "reserved bytes: {d:02x?}");
    Grant {
        token: u64_at(d, 0),
        generation: u64_at(d, 8),
        lease_ms: u32_at(d, 16),
        lun: u16::from_be_bytes([d[20], d[21]]),
    }
}

async fn c0(s: &Session, cdb: [u8; 16], alloc: u32) -> ScsiOutcome {
    tokio::time::timeout(Duration::from_secs(20), s.scsi(0, &cdb, None, alloc))
        .await
        .expect("C0h command timed out")
        .unwrap()
}

/// OPEN VIEW (lease, drain), requiring GOOD.
async fn open(s: &Session, lease_ms: u32) -> Grant {
    let out = c0(s, open_cdb(lease_ms, 0), 32).await;
    assert_eq!(out.status, 0, "OPEN VIEW: {:?}", out.sense_code());
    let g = parse_grant(&out.data);
    assert_eq!(u64::from(g.lun), VIEW_LUN);
    g
}

async fn release(s: &Session, token: u64) -> Grant {
    let out = c0(s, release_cdb(token), 32).await;
    assert_eq!(out.status, 0, "RELEASE VIEW: {:?}", out.sense_code());
    let g = parse_grant(&out.data);
    assert_eq!(g.lease_ms, 0, "a RELEASE reply has LEASE GRANTED 0");
    g
}

/// REPORT TRACKING, the version-2 fields.
#[derive(Debug)]
struct Report {
    flags: u8,
    open_generation: u64,
    view_generation: u64,
    view_lease_ms: u32,
    used: u64,
    limit: u64,
    view_lun: u16,
}

async fn report(s: &Session) -> Report {
    let out = c0(s, wire::report_tracking_cdb(), 96).await;
    assert_eq!(out.status, 0, "REPORT TRACKING: {:?}", out.sense_code());
    let d = out.data;
    assert_eq!((d.len(), d[0]), (96, 2), "REPORT TRACKING length / VERSION");
    Report {
        flags: d[1],
        open_generation: u64_at(&d, 40),
        view_generation: u64_at(&d, 60),
        view_lease_ms: u32_at(&d, 68),
        used: u64_at(&d, 72),
        limit: u64_at(&d, 80),
        view_lun: u16::from_be_bytes([d[88], d[89]]),
    }
}

fn check(out: &ScsiOutcome, want: (u8, u8, u8), what: &str) {
    assert_eq!(
        (out.status, out.sense_code()),
        (CHECK_CONDITION, Some(want)),
        "{what}"
    );
}

/// `bytes` of `lun` from 0, read in 1 MiB pieces, four in flight.
async fn read_all(s: &Arc<Session>, lun: u64, bytes: u64) -> Vec<u8> {
    const PIECE: u64 = 1 << 20;
    let pieces = bytes.div_ceil(PIECE);
    let mut tasks = Vec::new();
    for lane in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut p = lane;
            while p < pieces {
                let len = PIECE.min(bytes - p * PIECE);
                let lba = p * PIECE / u64::from(BS);
                let out = read_raw(&s, lun, lba, (len / u64::from(BS)) as u32).await;
                assert_eq!(
                    out.status,
                    0,
                    "READ of LUN {lun} at {lba}: {:?}",
                    out.sense_code()
                );
                assert_eq!(out.data.len() as u64, len);
                got.push((p, out.data));
                p += 4;
            }
            got
        }));
    }
    let mut all = vec![0u8; bytes as usize];
    for t in tasks {
        for (p, d) in t.await.unwrap() {
            let at = (p * PIECE) as usize;
            all[at..at + d.len()].copy_from_slice(&d);
        }
    }
    all
}

// ------------------------------------------------------ the write load

/// Every write is one 4 KiB chunk: 256 copies of (version, chunk ^ MAGIC).
const CHUNK: u64 = 4096;
const MAGIC: u64 = 0x5649_4557_5445_5354;
/// The version of the pattern the LUN is filled with before the target
/// starts.
const INITIAL: u64 = 0;

fn chunk_data(version: u64, chunk: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(CHUNK as usize);
    for _ in 0..CHUNK / 16 {
        d.extend_from_slice(&version.to_be_bytes());
        d.extend_from_slice(&(chunk ^ MAGIC).to_be_bytes());
    }
    d
}

/// The version a chunk holds, or why it is not a whole chunk of ours.
fn decode(d: &[u8], chunk: u64) -> Result<u64, String> {
    let v = u64_at(d, 0);
    if d.chunks_exact(16).any(|r| r != &d[..16]) {
        return Err("torn or mixed chunk".into());
    }
    if u64_at(d, 8) != chunk ^ MAGIC {
        return Err(format!("data of chunk {}", u64_at(d, 8) ^ MAGIC));
    }
    Ok(v)
}

/// A LUN file holding the INITIAL version in every chunk.
fn prefill(path: &Path, bytes: u64) {
    let mut d = Vec::with_capacity(bytes as usize);
    for c in 0..bytes / CHUNK {
        d.extend_from_slice(&chunk_data(INITIAL, c));
    }
    std::fs::write(path, d).unwrap();
}

/// One acknowledged write, stamped with the shared logical clock.
#[derive(Debug, Clone, Copy)]
struct Rec {
    chunk: u64,
    version: u64,
    /// Clock before the command was sent / after its GOOD arrived.
    submit: u64,
    ack: u64,
}

/// `writers` sessions, `qd` writes in flight each, 4 KiB at random chunks,
/// until stopped; a test-side gate pauses them (waiting for their
/// in-flight writes).
struct Load {
    stop: Arc<AtomicBool>,
    gate: Arc<RwLock<()>>,
    clock: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<Rec>>>,
    sessions: Vec<Arc<Session>>,
    done: Arc<AtomicU64>,
}

impl Load {
    async fn start(t: &TestTarget, writers: u64, qd: u64, chunks: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(RwLock::new(()));
        let clock = Arc::new(AtomicU64::new(1));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut sessions = Vec::new();
        for w in 0..writers {
            let s = login(t, &format!("{WRITER}-{w}")).await;
            let seq = Arc::new(AtomicU64::new(1));
            for q in 0..qd {
                let (s, stop, gate, clock, seq, done) = (
                    s.clone(),
                    stop.clone(),
                    gate.clone(),
                    clock.clone(),
                    seq.clone(),
                    done.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w << 32 | q).wrapping_mul(0x2545_f491);
                    let mut recs = Vec::new();
                    while !stop.load(SeqCst) {
                        let _g = gate.read().await;
                        if stop.load(SeqCst) {
                            break;
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let chunk = x % chunks;
                        let version = (w + 1) << 40 | seq.fetch_add(1, SeqCst);
                        let data = chunk_data(version, chunk);
                        let lba = chunk * CHUNK / u64::from(BS);
                        let submit = clock.fetch_add(1, SeqCst);
                        let out = write_raw(&s, 0, lba, &data).await;
                        let ack = clock.fetch_add(1, SeqCst);
                        assert_eq!(out.status, 0, "writer {w}: {:?}", out.sense_code());
                        recs.push(Rec {
                            chunk,
                            version,
                            submit,
                            ack,
                        });
                        done.fetch_add(1, SeqCst);
                    }
                    recs
                }));
            }
            sessions.push(s);
        }
        Load {
            stop,
            gate,
            clock,
            tasks,
            sessions,
            done,
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst)
    }

    /// Hold every writer once its in-flight writes are acknowledged.
    async fn pause(&self) -> OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Wait (bounded) until `n` more writes were acknowledged.
    async fn wait_writes(&self, n: u64) {
        let want = self.done.load(SeqCst) + n;
        let until = Instant::now() + Duration::from_secs(20);
        while self.done.load(SeqCst) < want {
            assert!(Instant::now() < until, "writers stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> Vec<Rec> {
        self.stop.store(true, SeqCst);
        let mut recs = Vec::new();
        for t in self.tasks {
            recs.extend(
                tokio::time::timeout(Duration::from_secs(20), t)
                    .await
                    .expect("a writer did not stop")
                    .unwrap(),
            );
        }
        for s in self.sessions {
            logout(s).await;
        }
        recs
    }
}

/// Check a view read against the write log (see the module docs).
fn check_view(view: &[u8], recs: &[Rec], open_sent: u64, open_returned: u64) {
    let chunks = view.len() as u64 / CHUNK;
    let bad = view_problems(view, recs, open_sent, open_returned);
    assert!(
        bad.is_empty(),
        "{} of {chunks} chunks of the view are not the LUN at the open:\n{}",
        bad.len(),
        bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Why chunks of `view` cannot be the LUN at the open, one line each.
fn view_problems(view: &[u8], recs: &[Rec], open_sent: u64, open_returned: u64) -> Vec<String> {
    let chunks = view.len() as u64 / CHUNK;
    // Per chunk: the latest submit among writes acknowledged before OPEN
    // was sent; the view's version must have been acknowledged after it.
    let mut floor: Vec<Option<u64>> = vec![None; chunks as usize];
    let mut by_version = HashMap::new();
    for r in recs {
        if r.ack < open_sent {
            let f = &mut floor[r.chunk as usize];
            *f = Some(f.map_or(r.submit, |f: u64| f.max(r.submit)));
        }
        by_version.insert(r.version, *r);
    }
    let mut bad = Vec::new();
    for c in 0..chunks {
        let d = &view[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize];
        let v = match decode(d, c) {
            Ok(v) => v,
            Err(e) => {
                bad.push(format!("chunk {c}: {e}"));
                continue;
            }
        };
        let f = floor[c as usize];
        if v == INITIAL {
            if let Some(f) = f {
                bad.push(format!(
                    "chunk {c}: the initial fill, but a write submitted at {f} was acknowledged before OPEN was sent ({open_sent})"
                ));
            }
            continue;
        }
        let Some(r) = by_version.get(&v) else {
            bad.push(format!("chunk {c}: version {v:#x} that no writer wrote"));
            continue;
        };
        if r.chunk != c {
            bad.push(format!(
                "chunk {c}: version {v:#x} written to chunk {}",
                r.chunk
            ));
        } else if r.submit >= open_returned {
            bad.push(format!(
                "chunk {c}: version {v:#x} submitted at {} after OPEN returned ({open_returned})",
                r.submit
            ));
        } else if f.is_some_and(|f| r.ack <= f) {
            bad.push(format!(
                "chunk {c}: version {v:#x} (acked {}) older than a write submitted at {} and acknowledged before OPEN was sent ({open_sent})",
                r.ack,
                f.unwrap()
            ));
        }
    }
    bad
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match (0..a.len() / CHUNK as usize).find(|&c| {
        a[c * CHUNK as usize..(c + 1) * CHUNK as usize]
            != b[c * CHUNK as usize..(c + 1) * CHUNK as usize]
    }) {
        None => "no chunk differs".into(),
        Some(c) => {
            let piece =
                |d: &[u8]| decode(&d[c * CHUNK as usize..(c + 1) * CHUNK as usize], c as u64);
            format!("chunk {c}: {:?} vs {:?}", piece(a), piece(b))
        }
    }
}

// ------------------------------------------------- (a) point in time

const STRESS_SIZE: u64 = 64 << 20;

fn stress_target(dir: &Path) -> TestTarget {
    prefill(&dir.join("lun0.img"), STRESS_SIZE);
    TestTarget::from_toml(&toml("", &[&file_lun("lun0.img", "64MiB")]), dir, false)
}

/// Four writer sessions at QD16 the whole time; OPEN while they run; three
/// whole-view reads at different moments, each checked against the write
/// log, all byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_is_point_in_time_under_writers() {
    point_in_time(STRESS_SIZE, "64MiB", 3, 3, 1000).await;
}

/// The same on a 1 MiB LUN (16 extents, 256 chunks): nearly every view read
/// races first writes to the pieces it reads, and first writes race each
/// other on the same piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_is_point_in_time_on_a_hot_small_lun() {
    point_in_time(1 << 20, "1MiB", 8, 6, 100).await;
}

/// `views` views one after another, each opened with 64 writes in flight
/// and read `reads` times, `gap` writes apart, while the writers go on.
async fn point_in_time(size: u64, size_key: &str, views: u64, reads_per: u64, gap: u64) {
    let dir = tempfile::tempdir().unwrap();
    prefill(&dir.path().join("lun0.img"), size);
    let t = TestTarget::from_toml(
        &toml("", &[&file_lun("lun0.img", size_key)]),
        dir.path(),
        false,
    );
    let b = login(&t, BACKUP).await;
    let chunks = size / CHUNK;
    let load = Load::start(&t, 4, 16, chunks).await;
    load.wait_writes(2000).await;

    let mut rounds = Vec::new();
    for _ in 0..views {
        let open_sent = load.tick();
        let g = open(&b, 60_000).await;
        let open_returned = load.tick();
        let at_open = load.done.load(SeqCst);
        let mut reads = Vec::new();
        for _ in 0..reads_per {
            load.wait_writes(gap).await;
            reads.push(read_all(&b, VIEW_LUN, size).await);
        }
        let r = report(&b).await;
        assert_eq!(r.flags & (FLAG_VIEW_OPEN | FLAG_VIEW_LOST), FLAG_VIEW_OPEN);
        assert_eq!(r.view_generation, g.generation);
        release(&b, g.token).await;
        let after = load.done.load(SeqCst) - at_open;
        assert!(
            after >= gap * reads_per,
            "only {after} writes after the open: the test proved little"
        );
        rounds.push((open_sent, open_returned, reads, after));
    }
    let now = read_all(&b, 0, size).await;
    let recs = load.finish().await;
    for (round, (open_sent, open_returned, reads, after)) in rounds.iter().enumerate() {
        for (i, v) in reads.iter().enumerate() {
            check_view(v, &recs, *open_sent, *open_returned);
            assert!(
                v == &reads[0],
                "view {round}: read {i} differs from read 0: {}",
                first_difference(v, &reads[0])
            );
        }
        // The LUN itself moved on: the view is not just the current data.
        let moved = (0..chunks)
            .filter(|&c| {
                let r = (c * CHUNK) as usize..((c + 1) * CHUNK) as usize;
                now[r.clone()] != reads[0][r]
            })
            .count();
        eprintln!(
            "view {round}: {after} writes after its open; {moved} chunks of the LUN differ from it now"
        );
        assert!(
            moved as u64 > chunks / 8,
            "only {moved} chunks changed after the open"
        );
        // The checker itself: the LUN's current data is not that view.
        assert!(!view_problems(&now, &recs, *open_sent, *open_returned).is_empty());
    }
    eprintln!("{} writes logged", recs.len());
    logout(b).await;
}

/// Writers paused (their in-flight writes acknowledged), the whole LUN
/// captured, OPEN, writers resumed: every view read equals the capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_equals_capture_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let t = stress_target(dir.path());
    let b = login(&t, BACKUP).await;
    let load = Load::start(&t, 4, 16, STRESS_SIZE / CHUNK).await;
    load.wait_writes(2000).await;
    let paused = load.pause().await;
    let capture = read_all(&b, 0, STRESS_SIZE).await;
    let g = open(&b, 60_000).await;
    drop(paused);
    for i in 0..2 {
        load.wait_writes(2000).await;
        let v = read_all(&b, VIEW_LUN, STRESS_SIZE).await;
        assert!(
            v == capture,
            "view read {i} differs from the capture at open: {}",
            first_difference(&v, &capture)
        );
    }
    let r = report(&b).await;
    assert!(
        r.used > 0 && r.used <= STRESS_SIZE,
        "VIEW SPACE USED {}",
        r.used
    );
    release(&b, g.token).await;
    load.finish().await;
    logout(b).await;
}

// ----------------------------------------- (b) bad input and states

/// A 4 MiB memory LUN (and its data directory, for identities).
fn small_target(top: &str, extra: &str) -> (TestTarget, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml(top, &[&memory_lun(0, "4MiB", extra)]);
    (TestTarget::from_toml(&cfg, dir.path(), false), dir)
}

fn pattern(byte: u8, bytes: u64) -> Vec<u8> {
    vec![byte; bytes as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_lun_not_ready_and_write_protected() {
    let (t, _dir) = small_target("", "");
    let b = login(&t, BACKUP).await;
    let r = report(&b).await;
    assert_eq!(r.flags & (FLAG_VIEW_OPEN | FLAG_VIEW_LOST), 0);
    assert_eq!(
        (u64::from(r.view_lun), r.limit, r.used, r.view_generation),
        (VIEW_LUN, 4 << 20, 0, 0)
    );
    // Without a view: NOT READY for what reads the medium; INQUIRY and
    // READ CAPACITY work; writes are DATA PROTECT.
    check(
        &b.scsi(VIEW_LUN, &[0u8; 6], None, 0).await.unwrap(),
        NOT_READY,
        "TEST UNIT READY without a view",
    );
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        NOT_READY,
        "READ without a view",
    );
    // VERIFY (16), PRE-FETCH (16), GET LBA STATUS read the medium too.
    let mut gls = [0u8; 16];
    gls[0] = 0x9e;
    gls[1] = 0x12;
    gls[10..14].copy_from_slice(&64u32.to_be_bytes());
    for (cdb, alloc, what) in [
        (rw16(0x8f, 0, 8), 0, "VERIFY (16)"),
        (rw16(0x90, 0, 8), 0, "PRE-FETCH (16)"),
        (gls, 64, "GET LBA STATUS"),
    ] {
        let out = b.scsi(VIEW_LUN, &cdb, None, alloc).await.unwrap();
        check(&out, NOT_READY, &format!("{what} without a view"));
    }
    // What does not read the medium works: MODE SENSE (6), REQUEST SENSE,
    // REPORT SUPPORTED OPERATION CODES.
    for (cdb, alloc, what) in [
        (vec![0x1a, 0, 0x3f, 0, 255, 0], 255, "MODE SENSE (6)"),
        (vec![0x03, 0, 0, 0, 252, 0], 252, "REQUEST SENSE"),
        (
            vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
            4096,
            "REPORT SUPPORTED OPERATION CODES",
        ),
    ] {
        let out = b.scsi(VIEW_LUN, &cdb, None, alloc).await.unwrap();
        assert_eq!(
            out.status,
            0,
            "{what} without a view: {:?}",
            out.sense_code()
        );
    }
    assert_eq!(b.inquiry(VIEW_LUN).await.unwrap()[0] & 0x1f, 0);
    assert_eq!(
        b.read_capacity16(VIEW_LUN).await.unwrap(),
        b.read_capacity16(0).await.unwrap()
    );
    let data = pattern(0x11, 64 << 10);
    check(
        &write_raw(&b, VIEW_LUN, 0, &data).await,
        WRITE_PROTECTED,
        "WRITE to the view LUN without a view",
    );
    assert_eq!(write_raw(&b, 0, 0, &data).await.status, 0);

    let g = open(&b, 30_000).await;
    let r = report(&b).await;
    assert_eq!(r.flags & (FLAG_VIEW_OPEN | FLAG_VIEW_LOST), FLAG_VIEW_OPEN);
    assert_eq!(r.view_generation, g.generation);
    assert_eq!(r.open_generation, g.generation + 1);
    assert!(r.view_lease_ms > 0 && r.view_lease_ms <= 30_000);
    check(
        &write_raw(&b, VIEW_LUN, 0, &data).await,
        WRITE_PROTECTED,
        "WRITE to the view LUN with a view",
    );
    // The LUN changes; the view does not.
    assert_eq!(
        write_raw(&b, 0, 0, &pattern(0x22, 64 << 10)).await.status,
        0
    );
    let v = read_raw(&b, VIEW_LUN, 0, 128).await;
    assert_eq!(v.status, 0);
    assert!(
        v.data.iter().all(|&x| x == 0x11),
        "view shows a later write"
    );
    assert_eq!(r.used, 0);
    assert_eq!(report(&b).await.used, 64 << 10);
    assert_eq!(
        b.scsi(VIEW_LUN, &[0u8; 6], None, 0).await.unwrap().status,
        0
    );
    let out = b.scsi(VIEW_LUN, &rw16(0x8f, 0, 8), None, 0).await.unwrap();
    assert_eq!(out.status, 0, "VERIFY with a view: {:?}", out.sense_code());
    // AS OF VIEW lists what changed up to the open, not after it.
    let out = c0(&b, as_of_view_cdb(0, 0), 4096).await;
    assert_eq!(out.status, 0, "{:?}", out.sense_code());
    let p = wire::parse_changes(&out.data, 0, 0).unwrap();
    assert_eq!(p.descriptors.len(), 1, "{p:?}");
    assert!(p.descriptors[0].generation <= g.generation);

    release(&b, g.token).await;
    assert_eq!(report(&b).await.flags & FLAG_VIEW_OPEN, 0);
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        NOT_READY,
        "READ after RELEASE",
    );
    logout(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_tokens_and_fields() {
    let (t, _dir) = small_target("", "");
    let a = login(&t, BACKUP).await;
    let b = login(&t, BACKUP).await;
    // AS OF VIEW without a view; a reserved byte in OPEN: nothing opens.
    check(
        &c0(&a, as_of_view_cdb(0, 0), 4096).await,
        INVALID_FIELD,
        "AS OF VIEW without a view",
    );
    let mut bad = open_cdb(1000, 0);
    bad[14] = 1;
    check(
        &c0(&a, bad, 32).await,
        INVALID_FIELD,
        "OPEN with a reserved byte",
    );
    assert_eq!(report(&a).await.flags & FLAG_VIEW_OPEN, 0);

    let g = open(&a, 30_000).await;
    let before = report(&a).await.open_generation;
    let out = c0(&b, open_cdb(30_000, 0), 32).await;
    assert_eq!(
        out.status, RESERVATION_CONFLICT,
        "OPEN from a second session while the first holds the view"
    );
    assert_eq!(
        report(&a).await.open_generation,
        before,
        "a generation closed"
    );
    // The opener again: same view, nothing closed.
    assert_eq!(open(&a, 30_000).await.token, g.token);
    assert_eq!(open(&a, 30_000).await.generation, g.generation);
    assert_eq!(report(&a).await.open_generation, before);
    // Wrong tokens; the right one from the other session works.
    let wrong = g.token ^ 0x5a5a;
    check(
        &c0(&b, renew_cdb(wrong, 1000), 32).await,
        INVALID_FIELD,
        "RENEW, wrong token",
    );
    check(
        &c0(&b, release_cdb(wrong), 32).await,
        INVALID_FIELD,
        "RELEASE, wrong token",
    );
    let out = c0(&b, renew_cdb(g.token, 20_000), 32).await;
    assert_eq!(out.status, 0, "{:?}", out.sense_code());
    let r = parse_grant(&out.data);
    assert_eq!(
        (r.token, r.generation, r.lease_ms),
        (g.token, g.generation, 20_000)
    );
    // AS OF VIEW with SINCE >= VIEW GENERATION.
    check(
        &c0(&a, as_of_view_cdb(g.generation, 0), 4096).await,
        INVALID_FIELD,
        "AS OF VIEW since the view generation",
    );
    release(&b, g.token).await;
    check(
        &c0(&a, renew_cdb(g.token, 1000), 32).await,
        INVALID_FIELD,
        "RENEW after RELEASE",
    );
    check(
        &c0(&a, release_cdb(g.token), 32).await,
        INVALID_FIELD,
        "RELEASE twice",
    );
    // Free again: the other session may open now.
    let g2 = open(&b, 1000).await;
    assert!(g2.generation > g.generation && g2.token != g.token);
    release(&b, g2.token).await;
    logout(a).await;
    logout(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_view_aborts_reads_and_keeps_writes() {
    let (t, _dir) = small_target("", "view_space = \"128KiB\"");
    let b = login(&t, BACKUP).await;
    // Three extents of non-zero data before the open (zeros are not kept).
    for x in 0..3u64 {
        let lba = x * EXTENT / u64::from(BS);
        assert_eq!(
            write_raw(&b, 0, lba, &pattern(0x30 + x as u8, EXTENT))
                .await
                .status,
            0
        );
    }
    let g = open(&b, 30_000).await;
    assert_eq!(report(&b).await.limit, 128 << 10);
    // Whole extents: 192 KiB of old data to keep, whatever piece size the
    // target keeps (the spec lets it keep extents or finer pieces).
    for x in 0..3u64 {
        let lba = x * EXTENT / u64::from(BS);
        let out = write_raw(&b, 0, lba, &pattern(0x40 + x as u8, EXTENT)).await;
        assert_eq!(
            out.status,
            0,
            "write {x} while the view is lost: {:?}",
            out.sense_code()
        );
    }
    let r = report(&b).await;
    assert_eq!(
        r.flags & (FLAG_VIEW_OPEN | FLAG_VIEW_LOST),
        FLAG_VIEW_OPEN | FLAG_VIEW_LOST,
        "{r:?}"
    );
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        VIEW_LOST,
        "READ of a lost view",
    );
    check(
        &read_raw(&b, VIEW_LUN, 4 * EXTENT / u64::from(BS), 8).await,
        VIEW_LOST,
        "READ of a lost view, an extent never touched",
    );
    check(
        &c0(&b, as_of_view_cdb(0, 0), 4096).await,
        VIEW_LOST,
        "AS OF VIEW, lost",
    );
    // Lost is reported before the check on SINCE.
    check(
        &c0(&b, as_of_view_cdb(g.generation, 0), 4096).await,
        VIEW_LOST,
        "AS OF VIEW, lost, SINCE = VIEW GENERATION",
    );
    // The writes are all there.
    for x in 0..3u64 {
        let lba = x * EXTENT / u64::from(BS);
        let d = b
            .read16(0, lba, (EXTENT / u64::from(BS)) as u32, BS)
            .await
            .unwrap();
        let want = pattern(0x40 + x as u8, EXTENT);
        assert!(d == want, "extent {x} does not hold what was written");
    }
    // RENEW and RELEASE work on a lost view.
    let out = c0(&b, renew_cdb(g.token, 5000), 32).await;
    assert_eq!(
        out.status,
        0,
        "RENEW of a lost view: {:?}",
        out.sense_code()
    );
    release(&b, g.token).await;
    assert_eq!(
        report(&b).await.flags & (FLAG_VIEW_OPEN | FLAG_VIEW_LOST),
        0
    );
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        NOT_READY,
        "READ after release",
    );
    logout(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_ends_the_view() {
    let (t, _dir) = small_target("max_view_lease_ms = 500", "");
    let b = login(&t, BACKUP).await;
    let g = open(&b, 60_000).await;
    assert_eq!(g.lease_ms, 500, "LEASE GRANTED is cut to the maximum");
    let r = report(&b).await;
    assert!(r.view_lease_ms > 0 && r.view_lease_ms <= 500, "{r:?}");
    assert_eq!(read_raw(&b, VIEW_LUN, 0, 8).await.status, 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    check(
        &b.scsi(VIEW_LUN, &[0u8; 6], None, 0).await.unwrap(),
        NOT_READY,
        "TEST UNIT READY after the lease ran out",
    );
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        NOT_READY,
        "READ after the lease ran out",
    );
    let r = report(&b).await;
    assert_eq!(r.flags & FLAG_VIEW_OPEN, 0, "{r:?}");
    assert_eq!((r.view_generation, r.view_lease_ms), (0, 0));
    check(
        &c0(&b, renew_cdb(g.token, 100), 32).await,
        INVALID_FIELD,
        "RENEW, expired",
    );
    // Lease 0: the default, at most the maximum.
    let g2 = open(&b, 0).await;
    assert!(g2.lease_ms > 0 && g2.lease_ms <= 500, "{g2:?}");
    release(&b, g2.token).await;
    logout(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_lun_hidden_from_other_initiators() {
    let (t, _dir) = small_target("", "");
    let b = login(&t, BACKUP).await;
    let w = login(&t, WRITER).await;
    assert_eq!(b.report_luns().await.unwrap(), vec![0, VIEW_LUN]);
    assert_eq!(w.report_luns().await.unwrap(), vec![0]);
    let g = open(&b, 30_000).await;
    assert_eq!(w.report_luns().await.unwrap(), vec![0]);
    // For the writer LUN 128 is a LUN that does not exist, like LUN 77.
    for lun in [VIEW_LUN, 77] {
        check(
            &read_raw(&w, lun, 0, 8).await,
            LUN_NOT_SUPPORTED,
            "READ, invisible LUN",
        );
        check(
            &w.scsi(lun, &[0u8; 6], None, 0).await.unwrap(),
            LUN_NOT_SUPPORTED,
            "TEST UNIT READY, invisible LUN",
        );
        check(
            &write_raw(&w, lun, 0, &pattern(1, 4096)).await,
            LUN_NOT_SUPPORTED,
            "WRITE, invisible LUN",
        );
    }
    let inq = |lun| {
        let w = w.clone();
        async move {
            let mut cdb = [0u8; 6];
            cdb[0] = 0x12;
            cdb[4] = 96;
            w.scsi(lun, &cdb, None, 96).await.unwrap()
        }
    };
    let (hidden, absent) = (inq(VIEW_LUN).await, inq(77).await);
    assert_eq!((hidden.status, hidden.data), (absent.status, absent.data));
    release(&b, g.token).await;
    logout(w).await;
    logout(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_survives_the_openers_logout() {
    let (t, _dir) = small_target("", "");
    let a = login(&t, BACKUP).await;
    assert_eq!(write_raw(&a, 0, 0, &pattern(0x51, EXTENT)).await.status, 0);
    let g = open(&a, 30_000).await;
    logout(a).await;
    let w = login(&t, WRITER).await;
    assert_eq!(write_raw(&w, 0, 0, &pattern(0x52, EXTENT)).await.status, 0);
    logout(w).await;
    let c = login(&t, BACKUP).await;
    let v = read_raw(&c, VIEW_LUN, 0, (EXTENT / u64::from(BS)) as u32).await;
    assert_eq!(
        v.status,
        0,
        "view read after the opener's logout: {:?}",
        v.sense_code()
    );
    assert!(v.data.iter().all(|&x| x == 0x51));
    let out = c0(&c, renew_cdb(g.token, 10_000), 32).await;
    assert_eq!(
        out.status,
        0,
        "RENEW after reconnecting: {:?}",
        out.sense_code()
    );
    assert_eq!(parse_grant(&out.data).generation, g.generation);
    // Another nexus, also after the opener's session ended.
    assert_eq!(
        c0(&c, open_cdb(1000, 0), 32).await.status,
        RESERVATION_CONFLICT
    );
    release(&c, g.token).await;
    logout(c).await;
}

/// Every kind of change the view LUN must not see, each on its own
/// extents (two of them spanning extent boundaries at odd offsets), then a
/// SANITIZE of the whole LUN: the view still reads the capture taken at
/// the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_kind_keeps_the_old_data() {
    const SIZE: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::from_toml(
        &toml("", &[&file_lun("lun0.img", "4MiB")]),
        dir.path(),
        false,
    );
    let b = login(&t, BACKUP).await;
    let blocks = SIZE / u64::from(BS);
    let mut fill = Vec::with_capacity(SIZE as usize);
    for lba in 0..blocks {
        let mut blk = vec![(lba as u8) ^ 0xa5; BS as usize];
        blk[..8].copy_from_slice(&lba.to_be_bytes());
        fill.extend_from_slice(&blk);
    }
    for (i, piece) in fill.chunks(1 << 20).enumerate() {
        let lba = (i << 20) as u64 / u64::from(BS);
        assert_eq!(write_raw(&b, 0, lba, piece).await.status, 0);
    }
    let capture = read_all(&b, 0, SIZE).await;
    assert!(capture == fill);
    let g = open(&b, 30_000).await;
    let eb = EXTENT / u64::from(BS);
    let good = |out: ScsiOutcome, what: &str| {
        assert_eq!(out.status, 0, "{what}: {:?}", out.sense_code());
    };
    let mut cdb10 = [0u8; 10];
    // WRITE (10), across an extent boundary at an odd offset.
    cdb10[0] = 0x2a;
    cdb10[2..6].copy_from_slice(&((eb - 3) as u32).to_be_bytes());
    cdb10[7..9].copy_from_slice(&130u16.to_be_bytes());
    good(
        b.scsi(0, &cdb10, Some(&pattern(0x01, 130 * u64::from(BS))), 0)
            .await
            .unwrap(),
        "WRITE (10)",
    );
    // WRITE AND VERIFY (16).
    good(
        b.scsi(
            0,
            &rw16(0x8e, 3 * eb + 5, 9),
            Some(&pattern(0x02, 9 * u64::from(BS))),
            0,
        )
        .await
        .unwrap(),
        "WRITE AND VERIFY (16)",
    );
    // WRITE SAME (16) with data, across two extents.
    let mut ws = rw16(0x93, 5 * eb - 7, 40);
    good(
        b.scsi(0, &ws, Some(&pattern(0x03, u64::from(BS))), 0)
            .await
            .unwrap(),
        "WRITE SAME (16)",
    );
    // WRITE SAME (16) with UNMAP, a whole extent.
    ws = rw16(0x93, 7 * eb, eb as u32);
    ws[1] = 0x08;
    good(
        b.scsi(0, &ws, Some(&vec![0u8; BS as usize]), 0)
            .await
            .unwrap(),
        "WRITE SAME (16) UNMAP",
    );
    // UNMAP, one and a half extents.
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&(9 * eb).to_be_bytes());
    list[16..20].copy_from_slice(&((eb + eb / 2) as u32).to_be_bytes());
    let mut unmap = [0u8; 10];
    unmap[0] = 0x42;
    unmap[7..9].copy_from_slice(&24u16.to_be_bytes());
    good(b.scsi(0, &unmap, Some(&list), 0).await.unwrap(), "UNMAP");
    // COMPARE AND WRITE of one block: compare with what is there.
    let lba = 12 * eb + 1;
    let at = (lba * u64::from(BS)) as usize;
    let mut caw_data = fill[at..at + BS as usize].to_vec();
    caw_data.extend_from_slice(&pattern(0x04, u64::from(BS)));
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&lba.to_be_bytes());
    caw[13] = 1;
    good(
        b.scsi(0, &caw, Some(&caw_data), 0).await.unwrap(),
        "COMPARE AND WRITE",
    );
    // ORWRITE (16).
    good(
        b.scsi(
            0,
            &rw16(0x8b, 14 * eb + 2, 4),
            Some(&pattern(0x40, 4 * u64::from(BS))),
            0,
        )
        .await
        .unwrap(),
        "ORWRITE (16)",
    );
    let now = read_all(&b, 0, SIZE).await;
    let changed = (0..blocks as usize)
        .filter(|&i| {
            now[i * BS as usize..(i + 1) * BS as usize]
                != capture[i * BS as usize..(i + 1) * BS as usize]
        })
        .count();
    assert!(
        changed >= 130 + 9 + 40 + 128 + 192 + 1 + 4,
        "only {changed} blocks changed"
    );
    // And SANITIZE (BLOCK ERASE): every block of the LUN changes at once.
    let mut sanitize = [0u8; 10];
    sanitize[0] = 0x48;
    sanitize[1] = 0x02;
    good(b.scsi(0, &sanitize, None, 0).await.unwrap(), "SANITIZE");
    settle(&b, 0).await;
    let erased = read_all(&b, 0, SIZE).await;
    assert!(erased.iter().all(|&x| x == 0), "SANITIZE left data");
    let view = read_all(&b, VIEW_LUN, SIZE).await;
    let differ: Vec<u64> = (0..blocks)
        .filter(|&i| {
            let r = (i * u64::from(BS)) as usize..((i + 1) * u64::from(BS)) as usize;
            view[r.clone()] != capture[r]
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} blocks of the view are not the capture at open, first {:?}",
        differ.len(),
        &differ[..differ.len().min(16)]
    );
    // AS OF VIEW lists the fill (made before the open), not these changes.
    let out = c0(&b, as_of_view_cdb(0, 0), 1 << 16).await;
    assert_eq!(out.status, 0, "{:?}", out.sense_code());
    let p = wire::parse_changes(&out.data, 0, 0).unwrap();
    assert!(p.complete && p.descriptors.iter().all(|d| d.generation <= g.generation));
    release(&b, g.token).await;
    logout(b).await;
}

/// `views = false`: the LUN behaves as on a version-1 target as far as
/// views go: no view LUN, SAs 06h-08h and AS OF VIEW unknown, VIEW LUN
/// FFFFh and VIEW SPACE LIMIT 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_off_means_no_view_lun_and_unknown_service_actions() {
    let (t, _dir) = small_target("", "views = false");
    let b = login(&t, BACKUP).await;
    assert_eq!(b.report_luns().await.unwrap(), vec![0]);
    let r = report(&b).await;
    assert_eq!(
        (r.view_lun, r.limit, r.flags & FLAG_VIEW_OPEN),
        (0xffff, 0, 0)
    );
    check(
        &c0(&b, open_cdb(1000, 0), 32).await,
        INVALID_FIELD,
        "OPEN, views off",
    );
    check(
        &c0(&b, renew_cdb(1, 1000), 32).await,
        INVALID_FIELD,
        "RENEW, views off",
    );
    check(
        &c0(&b, release_cdb(1), 32).await,
        INVALID_FIELD,
        "RELEASE, views off",
    );
    check(
        &c0(&b, as_of_view_cdb(0, 0), 4096).await,
        INVALID_FIELD,
        "AS OF VIEW, views off",
    );
    check(
        &read_raw(&b, VIEW_LUN, 0, 8).await,
        LUN_NOT_SUPPORTED,
        "READ of LUN 128, views off",
    );
    // Version-1 service actions still work.
    let out = c0(&b, wire::close_generation_cdb(), 32).await;
    assert_eq!(out.status, 0, "{:?}", out.sense_code());
    logout(b).await;
}

// ------------------------------------------------------------ metrics

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn series(page: &HashMap<String, f64>, name: &str, lun: u64) -> f64 {
    let key = format!("gentgt_{name}{{target=\"{TGT}\",lun=\"{lun}\"}}");
    match page.get(&key) {
        Some(v) => *v,
        None => panic!("no series {key} in {page:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_metrics_over_http() {
    let cfg = toml(
        "",
        &[
            &memory_lun(0, "4MiB", ""),
            &memory_lun(1, "4MiB", "view_space = \"128KiB\""),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::from_toml(&cfg, dir.path(), true);
    let admin = t.admin_addr.unwrap();
    let b = login(&t, BACKUP).await;
    settle(&b, 1).await;
    settle(&b, 129).await;
    let m = |p: &HashMap<String, f64>, lun| {
        [
            series(p, "cbt_view_open", lun),
            series(p, "cbt_view_kept_bytes", lun),
            series(p, "cbt_view_space_limit_bytes", lun),
            series(p, "cbt_views_lost_total", lun),
        ]
    };
    let p = scrape(admin).await;
    assert_eq!(m(&p, 0), [0.0, 0.0, 4194304.0, 0.0]);
    assert_eq!(m(&p, 1), [0.0, 0.0, 131072.0, 0.0]);
    // View LUNs are not tracked LUNs: no CBT series of their own.
    assert!(
        !p.keys()
            .any(|k| k.starts_with("gentgt_cbt_") && k.contains("lun=\"128\""))
    );

    // LUN 0: non-zero old data everywhere, a view, N distinct extents
    // written (twice each): N extents kept.
    for x in 0..64u64 {
        let lba = x * EXTENT / u64::from(BS);
        assert_eq!(
            write_raw(&b, 0, lba, &pattern(0x61, EXTENT)).await.status,
            0
        );
    }
    let g = open(&b, 30_000).await;
    // Whole extents, so the count is the same whether the target keeps
    // extents or finer pieces; the second round finds them kept already.
    const N: u64 = 5;
    for round in 0..2u8 {
        for i in 0..N {
            let lba = (i * 7 + 1) * EXTENT / u64::from(BS);
            let data = pattern(0x62 + round, EXTENT);
            assert_eq!(write_raw(&b, 0, lba, &data).await.status, 0);
        }
    }
    let p = scrape(admin).await;
    assert_eq!(m(&p, 0), [1.0, (N * EXTENT) as f64, 4194304.0, 0.0]);
    assert_eq!(report(&b).await.used, N * EXTENT);
    release(&b, g.token).await;
    let p = scrape(admin).await;
    assert_eq!(m(&p, 0), [0.0, 0.0, 4194304.0, 0.0]);

    // LUN 1: 128 KiB of view space, three extents of old data changed.
    for x in 0..3u64 {
        let lba = x * EXTENT / u64::from(BS);
        assert_eq!(
            write_raw(&b, 1, lba, &pattern(0x71, EXTENT)).await.status,
            0
        );
    }
    let out = b.scsi(1, &open_cdb(30_000, 0), None, 32).await.unwrap();
    assert_eq!(out.status, 0, "{:?}", out.sense_code());
    let g1 = parse_grant(&out.data);
    assert_eq!(g1.lun, 129);
    for x in 0..3u64 {
        let lba = x * EXTENT / u64::from(BS);
        assert_eq!(
            write_raw(&b, 1, lba, &pattern(0x72, EXTENT)).await.status,
            0
        );
    }
    let p = scrape(admin).await;
    assert_eq!(series(&p, "cbt_views_lost_total", 1), 1.0);
    assert_eq!(
        series(&p, "cbt_view_open", 1),
        1.0,
        "a lost view stays open"
    );
    assert_eq!(series(&p, "cbt_views_lost_total", 0), 0.0);
    let out = b.scsi(1, &release_cdb(g1.token), None, 32).await.unwrap();
    assert_eq!(out.status, 0);
    let p = scrape(admin).await;
    assert_eq!(m(&p, 1), [0.0, 0.0, 131072.0, 1.0]);
    logout(b).await;
}

// ------------------------------------------------- (c) ordinary tools

/// qemu-img copies the view LUN (initiator name = the CBT initiator) while
/// writers change the LUN: the copy equals the LUN captured at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_reads_the_view_lun() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let t = stress_target(dir.path());
    let b = login(&t, BACKUP).await;
    let load = Load::start(&t, 2, 16, STRESS_SIZE / CHUNK).await;
    load.wait_writes(1000).await;
    let paused = load.pause().await;
    let capture = read_all(&b, 0, STRESS_SIZE).await;
    let g = open(&b, 120_000).await;
    drop(paused);
    let out = dir.path().join("view.raw");
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={},target={TGT},lun={VIEW_LUN},initiator-name={BACKUP}",
        t.addr
    );
    let before = load.done.load(SeqCst);
    let (ok, stdout, stderr) = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            run(
                Command::new("qemu-img")
                    .args(["convert", "-O", "raw", "--image-opts"])
                    .arg(&opts)
                    .arg(&out),
                120,
            )
        })
        .await
        .unwrap()
    };
    let during = load.done.load(SeqCst) - before;
    load.finish().await;
    assert!(
        ok,
        "qemu-img convert of the view LUN failed: {stdout}\n{stderr}"
    );
    assert!(during > 100, "only {during} writes while qemu-img copied");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, STRESS_SIZE);
    assert!(
        got == capture,
        "qemu-img's copy of the view differs from the capture at open: {}",
        first_difference(&got, &capture)
    );
    release(&b, g.token).await;
    logout(b).await;
}

/// iscsi-ls lists LUN 128 for the CBT initiator, and not for others.
/// With `-s` it also sends TEST UNIT READY to every LUN, which the view
/// LUN answers NOT READY without a view (spec): then iscsi-ls stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_ls_lists_the_view_lun_for_cbt_initiators_only() {
    require_tool("iscsi-ls");
    let (t, _dir) = small_target("", "");
    let portal = format!("iscsi://{}", t.addr);
    // Without -s iscsi-ls lists no LUNs at all.
    let ls = |name: &'static str| {
        let portal = portal.clone();
        tokio::task::spawn_blocking(move || {
            run(
                Command::new("iscsi-ls")
                    .args(["-i", name, "-s"])
                    .arg(&portal),
                30,
            )
        })
    };
    let (ok, out, err) = ls(BACKUP).await.unwrap();
    assert!(
        !ok && out.contains("Lun:0 ") && format!("{out}{err}").contains("NOT READY"),
        "iscsi-ls -s without a view: {out}\n{err}"
    );
    let b = login(&t, BACKUP).await;
    let g = open(&b, 60_000).await;
    let (ok, out, err) = ls(BACKUP).await.unwrap();
    assert!(ok, "iscsi-ls -s with a view failed: {out}\n{err}");
    assert!(out.contains("Lun:0 "), "LUN 0 missing: {out}");
    assert!(
        out.contains("Lun:128 ") && out.matches("Size:3M").count() == 2,
        "view LUN (with the LUN's size) missing for {BACKUP}: {out}"
    );
    let (ok, out, err) = ls(WRITER).await.unwrap();
    assert!(ok, "iscsi-ls failed: {out}\n{err}");
    assert!(out.contains("Lun:0 "), "LUN 0 missing: {out}");
    assert!(
        !out.contains("Lun:128"),
        "view LUN listed for {WRITER}: {out}"
    );
    release(&b, g.token).await;
    logout(b).await;
}
