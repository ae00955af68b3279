//! Faults the target must ride out without a restart, over real iSCSI on
//! loopback, each with a bystander session verifying I/O on another LUN
//! throughout:
//! - hung storage: LUN 0's backend blocks in its calls (a memory backend
//!   whose reads and writes wait on a gate the test holds: a dead disk);
//! - faults in the network, through a TCP proxy the test controls: a peer
//!   that stops reading (zero window) during Data-In, a peer that goes
//!   silent without a FIN (half-open), a reset in the middle of an R2T.
//!
//! The sense and behaviour asserted here are listed in README's "Faults"
//! section.

mod common;

use common::*;
use gentgt::backend::{Backend, MemoryBackend};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::proto::pdu::{Opcode, Pdu};
use gentgt::server::TargetSettings;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const BS: u32 = 512;
/// Bound on answers that must come (generous: a loaded CI machine).
const SOON: Duration = Duration::from_secs(10);
/// Long enough for an answer that is not coming to have come.
const QUIET: Duration = Duration::from_millis(400);
const HUNG_LUN: u64 = 0;
const BYSTANDER_LUN: u64 = 1;
const NOT_READY_HUNG: (u8, u8, u8) = (0x02, 0x04, 0x00);
const NOT_READY_TO_READY: (u8, u8, u8) = (0x06, 0x28, 0x00);
const ABORT_TASK: u8 = 1;
const LUN_RESET: u8 = 5;

// ---------------------------------------------------------------- a hung disk

/// A memory backend whose calls block while the gate is shut.
struct Gate {
    inner: MemoryBackend,
    state: Mutex<(bool, usize)>, // (shut, calls waiting)
    cv: Condvar,
}

impl Gate {
    fn new(size: u64) -> Arc<Gate> {
        Arc::new(Gate {
            inner: MemoryBackend::new(size),
            state: Mutex::new((false, 0)),
            cv: Condvar::new(),
        })
    }

    fn shut(&self) {
        self.state.lock().unwrap().0 = true;
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.cv.notify_all();
    }

    fn waiting(&self) -> usize {
        self.state.lock().unwrap().1
    }

    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        while g.0 {
            g = self.cv.wait(g).unwrap();
        }
        g.1 -= 1;
    }
}

impl Backend for Gate {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pass();
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.pass();
        self.inner.write_at(offset, buf, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.pass();
        self.inner.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.pass();
        self.inner.unmap(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.pass();
        self.inner.write_zeroes(offset, len)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

/// Opens the gate when dropped, so a failing test does not leave the
/// target's shutdown waiting on a blocked thread.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn settings() -> TargetSettings {
    TargetSettings {
        hung_io_timeout: Duration::from_secs(1),
        abort_timeout: Duration::from_millis(500),
        send_stall_timeout: Duration::from_secs(1),
        nop_interval: Duration::from_millis(500),
        nop_timeout: Duration::from_millis(500),
        ..TargetSettings::default()
    }
}

/// LUN 0 behind `gate`, LUN 1 (the bystander's) in memory.
fn target(gate: &Arc<Gate>, settings: TargetSettings, cbt: bool) -> TestTarget {
    TestTarget::start(
        &[
            LunSpec::Backend {
                backend: gate.clone(),
                block_size: BS,
            },
            LunSpec::Memory {
                size: 4 << 20,
                block_size: BS,
            },
        ],
        TargetOptions {
            settings: Some(settings),
            admin: true,
            cbt_extent_blocks: cbt.then_some(8),
            ..TargetOptions::default()
        },
    )
}

async fn login_at(addr: SocketAddr, initiator: &str) -> Session {
    let mut o = ConnectOptions::new(addr, initiator, Some(TARGET));
    o.timeout = SOON;
    let s = Initiator::connect(&o).await.unwrap();
    for lun in [HUNG_LUN, BYSTANDER_LUN] {
        let _ = s.test_unit_ready(lun).await; // power-on unit attention
    }
    s
}

async fn login(t: &TestTarget) -> Session {
    login_at(t.addr, INITIATOR).await
}

// ----------------------------------------------------------------- bystander

/// A session of its own writing and reading back LUN 1 in a loop; any
/// error or wrong byte fails the test.
struct Bystander {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl Bystander {
    async fn start(t: &TestTarget) -> Bystander {
        let s = login_at(t.addr, "iqn.2026-11.dev.gentgt:bystander").await;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (st, r) = (stop.clone(), rounds.clone());
        let handle = tokio::spawn(async move {
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed) {
                n += 1;
                let blocks = 1 + (n % 32) as usize;
                let lba = 6000 + (n % 8) * 32;
                let data: Vec<u8> = (0..blocks * BS as usize)
                    .map(|i| (i as u64 ^ n) as u8)
                    .collect();
                let w = tokio::time::timeout(SOON, s.write16(BYSTANDER_LUN, lba, &data, BS, false));
                w.await.expect("bystander write timed out").unwrap();
                let back =
                    tokio::time::timeout(SOON, s.read16(BYSTANDER_LUN, lba, blocks as u32, BS))
                        .await
                        .expect("bystander read timed out")
                        .unwrap();
                assert!(back == data, "bystander read back wrong data");
                r.fetch_add(1, Ordering::Relaxed);
            }
            s.logout().await.unwrap();
        });
        Bystander {
            stop,
            rounds,
            handle,
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Wait for a few more verified rounds than `since` (the bystander
    /// works *now*, while the fault is on).
    async fn progresses(&self, since: u64) {
        let t0 = Instant::now();
        while self.rounds() < since + 3 {
            assert!(t0.elapsed() < SOON, "bystander stalled");
            assert!(!self.handle.is_finished(), "bystander failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) {
        self.progresses(self.rounds()).await;
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("bystander failed");
    }
}

// ------------------------------------------------------------------- helpers

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn scsi_cmd(s: &Session, lun: u64, cdb: &[u8], edtl: u32, read: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.bhs.set_flags(0x81 | if read { 0x40 } else { 0x20 }); // F, SIMPLE
    p.bhs.set_expected_data_len(edtl);
    p.bhs.set_cdb(cdb);
    p.bhs.set_lun(gentgt::initiator::encode_lun(lun));
    p.bhs.set_itt(s.alloc_itt());
    p
}

async fn recv(s: &Session) -> Pdu {
    raw::recv(s, SOON).await
}

async fn expect_r2t(s: &Session, itt: u32) -> Pdu {
    raw::expect_r2t(s, itt, SOON).await
}

/// A WRITE (16) of `data` at `lba` through an R2T, sent raw: its ITT.
async fn raw_write(s: &Session, lun: u64, lba: u64, data: &[u8]) -> u32 {
    let blocks = data.len() as u32 / BS;
    let p = scsi_cmd(s, lun, &rw16(0x8a, lba, blocks), data.len() as u32, false);
    let itt = p.bhs.itt();
    s.send_raw_command(p).await.unwrap();
    let r2t = expect_r2t(s, itt).await;
    assert_eq!(r2t.bhs.desired_data_len(), data.len() as u32);
    let d = raw::data_out(itt, r2t.bhs.ttt(), 0, 0, data.to_vec(), true);
    s.send_raw_pdu(&d).await.unwrap();
    itt
}

async fn assert_silent(s: &Session) {
    if let Ok(p) = s.recv_raw_within(QUIET).await {
        panic!("unexpected answer {:?} itt {:x}", p.opcode(), p.bhs.itt());
    }
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < SOON, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sense of a command that must fail.
fn sense_of<T: std::fmt::Debug>(r: gentgt::initiator::Result<T>) -> (u8, u8, u8) {
    r.expect_err("command should have failed")
        .sense_code()
        .expect("no sense data")
}

/// TEST UNIT READY until GOOD, returning the unit attentions seen.
async fn ready(s: &Session, lun: u64) -> Vec<(u8, u8, u8)> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        match s.test_unit_ready(lun).await {
            Ok(()) => return seen,
            Err(e) => seen.push(e.sense_code().expect("TUR failed without sense")),
        }
        assert!(t0.elapsed() < SOON, "LUN never ready again: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `gentgt_backend_hung_ios` of LUN 0 as scraped now.
async fn hung_gauge(t: &TestTarget) -> f64 {
    let mut c = TcpStream::connect(t.admin_addr.unwrap()).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).await.unwrap();
    let series = format!("gentgt_backend_hung_ios{{target=\"{TARGET}\",lun=\"0\"}} ");
    let line = raw.lines().find_map(|l| l.strip_prefix(series.as_str()));
    line.unwrap_or_else(|| panic!("no {series} in:\n{raw}"))
        .parse()
        .unwrap()
}

fn sessions(t: &TestTarget) -> usize {
    t.stats.snapshot().sessions
}

// --------------------------------------------------------------- hung storage

/// A WRITE stuck in the backend: the session keeps answering pings and
/// other LUNs; ABORT TASK answers in bounded time; the LUN is fenced (NOT
/// READY) and the metric names it; when the call returns, its result is
/// dropped, the LUN comes back with a unit attention, and a newer write is
/// never overtaken by the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_write_stuck_in_the_backend() {
    let gate = Gate::new(4 << 20);
    let t = target(&gate, settings(), false);
    let _open = OpenOnDrop(gate.clone());
    let by = Bystander::start(&t).await;
    let s = login(&t).await;
    let old = vec![0x11u8; 8 * BS as usize];
    s.write16(HUNG_LUN, 0, &old, BS, false).await.unwrap();

    gate.shut();
    let r0 = by.rounds();
    let itt = raw_write(&s, HUNG_LUN, 0, &vec![0x22u8; 8 * BS as usize]).await;
    until("the write to reach the backend", || gate.waiting() == 1).await;
    // The session is not waiting on it: pings and the other LUN work.
    s.nop().await.unwrap();
    let other = vec![0x33u8; 4 * BS as usize];
    s.write16(BYSTANDER_LUN, 100, &other, BS, false)
        .await
        .unwrap();
    assert_eq!(s.read16(BYSTANDER_LUN, 100, 4, BS).await.unwrap(), other);
    by.progresses(r0).await;

    let answer = tokio::time::timeout(SOON, s.task_mgmt(ABORT_TASK, HUNG_LUN, itt));
    assert_eq!(answer.await.expect("ABORT TASK hung").unwrap(), 0);
    // Fenced: commands that need the medium fail at once; INQUIRY works.
    assert_eq!(sense_of(s.read16(HUNG_LUN, 0, 8, BS).await), NOT_READY_HUNG);
    assert_eq!(sense_of(s.test_unit_ready(HUNG_LUN).await), NOT_READY_HUNG);
    s.inquiry(HUNG_LUN).await.unwrap();
    assert_eq!(hung_gauge(&t).await, 1.0);
    assert_eq!(gate.waiting(), 1, "fenced commands reached the backend");
    by.progresses(by.rounds()).await;

    gate.open();
    // The aborted write's response never comes.
    assert_silent(&s).await;
    let uas = ready(&s, HUNG_LUN).await;
    assert!(uas.contains(&NOT_READY_TO_READY), "{uas:?}");
    assert_eq!(hung_gauge(&t).await, 0.0);
    // A newer write lands after the stuck one, never under it.
    let newer = vec![0x44u8; 8 * BS as usize];
    s.write16(HUNG_LUN, 0, &newer, BS, false).await.unwrap();
    assert_eq!(s.read16(HUNG_LUN, 0, 8, BS).await.unwrap(), newer);
    s.logout().await.unwrap();
    by.finish().await;
}

/// LUN RESET with a READ stuck in the backend answers in bounded time; a
/// call past `hung_io_timeout` fences the LUN even without task
/// management; and a session with a hung call logs out, and the same
/// initiator logs in again, while the call is still stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lun_reset_logout_and_relogin_with_a_hung_read() {
    let gate = Gate::new(4 << 20);
    let t = target(&gate, settings(), false);
    let _open = OpenOnDrop(gate.clone());
    let by = Bystander::start(&t).await;
    let s = login(&t).await;

    gate.shut();
    let p = scsi_cmd(&s, HUNG_LUN, &rw16(0x88, 0, 8), 8 * BS, true);
    s.send_raw_command(p).await.unwrap();
    until("the read to reach the backend", || gate.waiting() == 1).await;
    let answer = tokio::time::timeout(SOON, s.task_mgmt(LUN_RESET, HUNG_LUN, 0));
    assert_eq!(answer.await.expect("LUN RESET hung").unwrap(), 0);
    assert_eq!(sense_of(s.test_unit_ready(HUNG_LUN).await), NOT_READY_HUNG);

    // A second stuck read, past hung_io_timeout with no TMF: reported.
    let p = scsi_cmd(&s, HUNG_LUN, &rw16(0x88, 8, 8), 8 * BS, true);
    let r0 = by.rounds();
    gate.open();
    until("the fence to lift", || gate.waiting() == 0).await;
    let _ = ready(&s, HUNG_LUN).await;
    gate.shut();
    s.send_raw_command(p).await.unwrap();
    until("the read to reach the backend", || gate.waiting() == 1).await;
    let t0 = Instant::now();
    while hung_gauge(&t).await != 1.0 {
        assert!(t0.elapsed() < SOON, "hung call never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    by.progresses(r0).await;
    // Logout does not wait for the hung call; neither does a new login.
    tokio::time::timeout(SOON, s.logout())
        .await
        .expect("logout hung")
        .unwrap();
    until("the session to end", || sessions(&t) == 1).await;
    let again = tokio::time::timeout(SOON, login(&t))
        .await
        .expect("login hung");
    assert_eq!(
        sense_of(again.test_unit_ready(HUNG_LUN).await),
        NOT_READY_HUNG
    );
    assert_eq!(
        again.read16(BYSTANDER_LUN, 0, 1, BS).await.unwrap().len(),
        512
    );

    gate.open();
    let uas = ready(&again, HUNG_LUN).await;
    assert!(uas.contains(&NOT_READY_TO_READY), "{uas:?}");
    again.logout().await.unwrap();
    by.finish().await;
}

/// The data of an abandoned write stays charged to the session's write
/// budget while the call is stuck: the next write's R2T waits (memory does
/// not grow with stuck writes) and comes once the call returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_writes_keep_their_buffer_budget() {
    let gate = Gate::new(4 << 20);
    let budget = 64 << 10;
    let cfg = TargetSettings {
        write_buffer_per_session: budget,
        ..settings()
    };
    let t = target(&gate, cfg, false);
    let _open = OpenOnDrop(gate.clone());
    let by = Bystander::start(&t).await;
    let s = login(&t).await;

    gate.shut();
    let stuck = raw_write(&s, HUNG_LUN, 0, &vec![0x55u8; budget as usize]).await;
    until("the write to reach the backend", || gate.waiting() == 1).await;
    assert_eq!(s.task_mgmt(ABORT_TASK, HUNG_LUN, stuck).await.unwrap(), 0);
    // A write to the healthy LUN: no R2T while the stuck data is held.
    let p = scsi_cmd(&s, BYSTANDER_LUN, &rw16(0x8a, 200, 8), 8 * BS, false);
    let itt = p.bhs.itt();
    s.send_raw_command(p).await.unwrap();
    assert_silent(&s).await;
    by.progresses(by.rounds()).await;

    gate.open();
    let r2t = expect_r2t(&s, itt).await;
    let data = vec![0x66u8; 8 * BS as usize];
    s.send_raw_pdu(&raw::data_out(itt, r2t.bhs.ttt(), 0, 0, data.clone(), true))
        .await
        .unwrap();
    let resp = recv(&s).await;
    assert_eq!(resp.opcode(), Opcode::ScsiResponse);
    assert_eq!((resp.bhs.itt(), resp.bhs.0[3]), (itt, 0), "write not GOOD");
    assert_eq!(s.read16(BYSTANDER_LUN, 200, 8, BS).await.unwrap(), data);
    s.logout().await.unwrap();
    by.finish().await;
}

// ------------------------------------------------------ faults in the network

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Forward,
    /// Nothing is read from the target any more (its sends meet a zero
    /// window); the initiator's bytes still go through.
    StopReading,
    /// Nothing moves either way and nothing is closed (half-open).
    Silent,
    /// The target side is closed with SO_LINGER 0: a TCP reset.
    Reset,
}

/// A TCP proxy for one connection between an initiator and the target,
/// whose target side has a tiny receive buffer.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            let (client, _) = l.accept().await.unwrap();
            let sock = TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let up = sock.connect(target).await.unwrap();
            // Linger 0: closing sends a reset (and never blocks).
            #[allow(deprecated)]
            up.set_linger(Some(Duration::ZERO)).unwrap();
            let ((ur, uw), (cr, cw)) = (up.into_split(), client.into_split());
            let mut reset = rx.clone();
            tokio::select! {
                _ = pump(cr, uw, rx.clone(), true) => {}
                _ = pump(ur, cw, rx, false) => {}
                _ = reset.wait_for(|m| *m == Mode::Reset) => {}
            }
            // Both sockets dropped here: the target's gets a reset.
        });
        Proxy { addr, mode }
    }

    fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

fn flows(m: Mode, to_target: bool) -> bool {
    match m {
        Mode::Forward => true,
        Mode::StopReading => to_target,
        Mode::Silent | Mode::Reset => false,
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    to_target: bool,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        if mode.wait_for(|m| flows(*m, to_target)).await.is_err() {
            return;
        }
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = mode.changed() => {}
        }
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// An initiator that queues 64 MiB of READs and stops reading: the target
/// holds at most the data of the commands it took (its session stops
/// reading commands while its send is stuck), and drops the connection
/// once its send made no progress for `send_stall_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_that_stops_reading_during_data_in() {
    let gate = Gate::new(4 << 20);
    let t = target(&gate, settings(), false);
    let by = Bystander::start(&t).await;
    let proxy = Proxy::start(t.addr).await;
    let s = login_at(proxy.addr, INITIATOR).await;
    let rss0 = rss_kib();
    proxy.set(Mode::StopReading);
    let r0 = by.rounds();
    for i in 0..64u64 {
        let p = scsi_cmd(
            &s,
            HUNG_LUN,
            &rw16(0x88, (i % 4) * 2048, 2048),
            1 << 20,
            true,
        );
        s.send_raw_command(p).await.unwrap();
    }
    by.progresses(r0).await;
    let grown = rss_kib().saturating_sub(rss0);
    println!("RSS growth with 64 MiB of reads unread: {grown} KiB");
    assert!(grown < 160 * 1024, "RSS grew by {grown} KiB");
    until("the stalled session to be dropped", || sessions(&t) == 1).await;
    until("its tasks to be gone", || t.stats.snapshot().tasks == 0).await;
    by.finish().await;
}

/// An initiator that vanishes without a FIN, a write's R2T outstanding:
/// the target's NOP-In goes unanswered and the session ends, its task
/// with it; nothing of the write is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_closed_by_the_ping() {
    let gate = Gate::new(4 << 20);
    let t = target(&gate, settings(), false);
    let by = Bystander::start(&t).await;
    let proxy = Proxy::start(t.addr).await;
    let s = login_at(proxy.addr, INITIATOR).await;
    let p = scsi_cmd(&s, HUNG_LUN, &rw16(0x8a, 64, 8), 8 * BS, false);
    let itt = p.bhs.itt();
    s.send_raw_command(p).await.unwrap();
    expect_r2t(&s, itt).await;
    let r0 = by.rounds();
    proxy.set(Mode::Silent);
    until("the half-open session to end", || sessions(&t) == 1).await;
    until("its task to be gone", || t.stats.snapshot().tasks == 0).await;
    by.progresses(r0).await;
    let d = login(&t).await;
    assert!(
        d.read16(HUNG_LUN, 64, 8, BS)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    d.logout().await.unwrap();
    by.finish().await;
}

/// A reset in the middle of an R2T sequence: the half-received write is
/// not applied (old data intact) and changed-block tracking records no
/// change for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_the_middle_of_an_r2t() {
    let gate = Gate::new(4 << 20);
    let t = target(&gate, settings(), true);
    let by = Bystander::start(&t).await;
    let d = login(&t).await;
    let old = vec![0x5au8; 64 * BS as usize];
    d.write16(HUNG_LUN, 256, &old, BS, false).await.unwrap();
    // The old write is in a closed generation; a new one would show in
    // the open generation.
    let closed = d.cbt_close(HUNG_LUN).await.unwrap();
    let before = d.cbt_all_changes(HUNG_LUN, 0, 0).await.unwrap();

    let proxy = Proxy::start(t.addr).await;
    let s = login_at(proxy.addr, INITIATOR).await;
    let p = scsi_cmd(&s, HUNG_LUN, &rw16(0x8a, 256, 64), 64 * BS, false);
    let itt = p.bhs.itt();
    s.send_raw_command(p).await.unwrap();
    let r2t = expect_r2t(&s, itt).await;
    let half = vec![0xa5u8; 32 * BS as usize];
    s.send_raw_pdu(&raw::data_out(itt, r2t.bhs.ttt(), 0, 0, half, false))
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await; // let the target take the half
    let r0 = by.rounds();
    proxy.set(Mode::Reset);
    until("the reset session to end", || sessions(&t) == 2).await;
    until("its task to be gone", || t.stats.snapshot().tasks == 0).await;
    by.progresses(r0).await;

    assert_eq!(
        d.read16(HUNG_LUN, 256, 64, BS).await.unwrap(),
        old,
        "partial write applied"
    );
    let after = d.cbt_all_changes(HUNG_LUN, 0, 0).await.unwrap();
    assert_eq!(before, after, "CBT recorded a write that was never applied");
    assert!(
        after.iter().all(|e| e.generation <= closed.generation),
        "{after:?}"
    );
    d.logout().await.unwrap();
    by.finish().await;
}
