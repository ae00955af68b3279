//! Hostile clients in full feature phase, over real loopback sockets after
//! a real login: the cases that need a socket — declared lengths that lie
//! to the reader (segments, AHS), gigabyte transfer lengths with no data
//! behind them (memory held), connections dropped at every stage, a CBT
//! lock holder vanishing. Each case checks the RFC 7143 answer and then
//! that
//! (a) a bystander session on the same target kept working throughout, and
//! (b) the server's connection, session and task counts are back to idle.
//! The protocol cases that need no socket (sequence numbers and tags that
//! are wrong, Data-Out out of range, task management for tasks that do not
//! exist, logout mid-transfer) run on the in-memory pair in
//! `src/proto/conn/tests.rs`, which also checks that the events the
//! runtime counts tasks by match the task table after every step.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session, parse_sense};
use gentgt::proto::pdu::{self, Framing, Opcode, Pdu};
use gentgt::server::StatsSnapshot;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const BS: u32 = 512;
const SOON: Duration = Duration::from_secs(5);
/// Long enough for an answer that is not coming to have come.
const QUIET: Duration = Duration::from_millis(400);

// Reject reasons (RFC 7143 §11.17.1).
const PROTOCOL_ERROR: u8 = 0x04;
const CHECK_CONDITION: u8 = 0x02;

fn target_with(opts: TargetOptions) -> TestTarget {
    TestTarget::start(
        &[LunSpec::Memory {
            size: 4 << 20,
            block_size: BS,
        }],
        opts,
    )
}

fn target() -> TestTarget {
    target_with(TargetOptions::default())
}

async fn login_as(t: &TestTarget, initiator: &str) -> Session {
    let mut o = ConnectOptions::new(t.addr, initiator, Some(&t.name));
    o.timeout = Duration::from_secs(10);
    let s = Initiator::connect(&o).await.unwrap();
    let _ = s.test_unit_ready(0).await; // power-on unit attention
    s
}

async fn login(t: &TestTarget) -> Session {
    login_as(t, INITIATOR).await
}

/// A session that writes and reads back its own region in a loop while an
/// attack goes on; any error or wrong byte fails the test.
struct Bystander {
    session: Arc<Session>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl Bystander {
    async fn start(t: &TestTarget) -> Bystander {
        let session = Arc::new(login_as(t, "iqn.2026-11.dev.gentgt:bystander").await);
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, st, r) = (session.clone(), stop.clone(), rounds.clone());
        let handle = tokio::spawn(async move {
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed) {
                n += 1;
                let blocks = 1 + (n % 64) as usize;
                let lba = 6000 + (n % 8) * 64;
                let data: Vec<u8> = (0..blocks * BS as usize)
                    .map(|i| (i as u64 ^ n) as u8)
                    .collect();
                let w = tokio::time::timeout(SOON, s.write16(0, lba, &data, BS, false)).await;
                w.expect("bystander write timed out").unwrap();
                let back = tokio::time::timeout(SOON, s.read16(0, lba, blocks as u32, BS))
                    .await
                    .expect("bystander read timed out")
                    .unwrap();
                assert!(back == data, "bystander read back wrong data");
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        Bystander {
            session,
            stop,
            rounds,
            handle,
        }
    }

    /// Stop the loop (checking it made progress since `since`), leaving
    /// the bystander's session logged in and idle.
    async fn pause(self, since: u64) -> Arc<Session> {
        // Let it prove it still works after the attack.
        let t0 = Instant::now();
        while self.rounds.load(Ordering::Relaxed) < since + 3 {
            assert!(t0.elapsed() < SOON, "bystander stalled");
            assert!(!self.handle.is_finished(), "bystander failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("bystander failed");
        self.session
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Wait for the counts to settle at `want` (connections, sessions, tasks).
async fn wait_counts(t: &TestTarget, want: (usize, usize, usize)) {
    let want = StatsSnapshot {
        connections: want.0,
        sessions: want.1,
        tasks: want.2,
    };
    let t0 = Instant::now();
    loop {
        let now = t.stats.snapshot();
        if now == want {
            return;
        }
        assert!(
            t0.elapsed() < SOON,
            "server did not return to idle: {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// End of every case: the bystander kept working, nothing of the attack is
/// left in the server, and the bystander logs out to an empty server.
async fn finish(t: &TestTarget, by: Bystander, before: u64) {
    let s = by.pause(before).await;
    wait_counts(t, (1, 1, 0)).await;
    let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("bystander still shared"));
    s.logout().await.unwrap();
    wait_counts(t, (0, 0, 0)).await;
}

fn scsi_cmd(cdb: &[u8], edtl: u32, read: bool, write: bool, fin: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    let mut flags = 0x01; // SIMPLE
    if fin {
        flags |= 0x80;
    }
    if read {
        flags |= 0x40;
    }
    if write {
        flags |= 0x20;
    }
    p.bhs.set_flags(flags);
    p.bhs.set_expected_data_len(edtl);
    p.bhs.set_cdb(cdb);
    p
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A WRITE (16) of `blocks` blocks announcing all its data as solicited
/// (F bit set, no immediate data): the target answers with an R2T.
fn write_cmd(s: &Session, lba: u64, blocks: u32) -> Pdu {
    let mut p = scsi_cmd(&rw16(0x8a, lba, blocks), blocks * BS, false, true, true);
    p.bhs.set_itt(s.alloc_itt());
    p
}

async fn recv(s: &Session) -> Pdu {
    raw::recv(s, SOON).await
}

async fn expect_r2t(s: &Session, itt: u32) -> Pdu {
    raw::expect_r2t(s, itt, SOON).await
}

fn assert_reject(p: &Pdu, reason: u8, rejected: &Pdu) {
    assert_eq!(p.opcode(), Opcode::Reject, "{:?}", p.bhs);
    assert_eq!(p.bhs.0[2], reason, "Reject reason");
    // The data segment carries the rejected header.
    assert!(p.data.len() >= 48, "Reject without the rejected header");
    assert_eq!(p.data[0] & 0x3f, rejected.bhs.0[0] & 0x3f);
    assert_eq!(&p.data[16..20], &rejected.bhs.0[16..20], "rejected ITT");
}

/// A SCSI Response for `itt` with CHECK CONDITION and this sense.
/// The target closes the connection soon.
async fn assert_closed(s: &Session) {
    let t0 = Instant::now();
    while !s.is_closed() {
        assert!(t0.elapsed() < SOON, "connection left open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_check(p: &Pdu, itt: u32, sense: (u8, u8, u8)) {
    assert_eq!(p.opcode(), Opcode::ScsiResponse, "{:?}", p.bhs);
    assert_eq!(p.bhs.itt(), itt);
    assert_eq!(p.bhs.0[3], CHECK_CONDITION, "status");
    let got = p.data.get(2..).and_then(parse_sense);
    assert_eq!(got, Some(sense), "sense");
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_segment_beyond_max_recv_dsl() {
    let t = target();
    let by = Bystander::start(&t).await;
    let before = by.rounds();
    let s = login(&t).await;
    let mrdsl = s.params().target_max_recv_dsl;
    let mut p = write_cmd(&s, 0, 8);
    p.bhs.set_cmd_sn(s.sequence_numbers().0);
    p.bhs.set_data_segment_len(mrdsl + 4);
    // Header only: the target must not wait for (or buffer) the data.
    s.send_raw_bytes(&p.bhs.0).await.unwrap();
    assert_reject(&recv(&s).await, PROTOCOL_ERROR, &p);
    // Framing is lost: the connection is closed.
    assert_closed(&s).await;
    drop(s);
    finish(&t, by, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ahs_length_past_the_pdu() {
    let t = target();
    let by = Bystander::start(&t).await;
    let before = by.rounds();
    let s = login(&t).await;
    let mut p = scsi_cmd(&[0; 6], 0, false, false, true);
    p.bhs.set_itt(s.alloc_itt());
    p.bhs.set_cmd_sn(s.sequence_numbers().0);
    // One 4-byte AHS whose own length field claims 200 bytes.
    p.ahs = vec![0x00, 200, 0x01, 0x00];
    let bytes = pdu::encode(&p, &Framing::default());
    assert_eq!(bytes[4], 1, "TotalAHSLength");
    s.send_raw_bytes(&bytes).await.unwrap();
    assert_reject(&recv(&s).await, PROTOCOL_ERROR, &p);
    assert_closed(&s).await;
    drop(s);
    finish(&t, by, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_transfer_lengths_without_data() {
    let t = target();
    let by = Bystander::start(&t).await;
    let before = by.rounds();
    let s = login(&t).await;
    // Beyond the largest write accepted: failed at once, nothing allocated.
    let mut p = scsi_cmd(&rw16(0x8a, 0, 8), 0xffff_fe00, false, true, true);
    p.bhs.set_itt(s.alloc_itt());
    s.send_raw_command(p.clone()).await.unwrap();
    assert_check(&recv(&s).await, p.bhs.itt(), (0x05, 0x24, 0x00));

    // Within the limit (32 MiB each), 32 of them at once, and then no data:
    // the target asks for the first write's data only (the session's
    // write-buffer budget, 16 MiB, is taken by it; the others' R2Ts wait)
    // and holds what arrived (nothing), not the 1 GiB declared.
    let rss0 = rss_kib();
    let blocks = (32u32 << 20) / BS;
    let mut itts = Vec::new();
    for i in 0..32u64 {
        let p = write_cmd(&s, i * u64::from(blocks) % 4096, blocks);
        itts.push(p.bhs.itt());
        s.send_raw_command(p).await.unwrap();
    }
    let r = recv(&s).await;
    assert_eq!(r.opcode(), Opcode::R2t);
    assert_eq!(r.bhs.itt(), itts[0]);
    while let Ok(r) = s.recv_raw_within(QUIET).await {
        // More R2Ts of the first write (one per MaxBurstLength, up to
        // MaxOutstandingR2T), never one of another write.
        assert_eq!(r.opcode(), Opcode::R2t);
        assert_eq!(r.bhs.itt(), itts[0], "R2T beyond the write budget");
    }
    wait_counts(&t, (2, 2, 32)).await;
    let grown = rss_kib().saturating_sub(rss0);
    println!("RSS growth with 1 GiB of declared writes pending: {grown} KiB");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // The client vanishes: every pending task goes with its session.
    drop(s);
    finish(&t, by, before).await;
}

/// A first login request (security stage, no authentication).
fn login_request() -> Vec<u8> {
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs.set_immediate(true);
    p.bhs.set_flags(0x81); // T, CSG 0 -> NSG 1
    p.bhs.set_isid([0x80, 1, 2, 3, 0, 0]);
    p.bhs.set_itt(1);
    let text = format!(
        "InitiatorName={INITIATOR}\0TargetName={TARGET}\0SessionType=Normal\0AuthMethod=None\0"
    );
    p.data = text.into_bytes();
    pdu::encode(&p, &Framing::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drops_at_every_stage() {
    let t = target();
    let by = Bystander::start(&t).await;
    let before = by.rounds();
    let idle = || wait_counts(&t, (1, 1, 0));
    // Login phase: at once, half a header, after the first exchange.
    drop(TcpStream::connect(t.addr).await.unwrap());
    idle().await;
    let mut c = TcpStream::connect(t.addr).await.unwrap();
    c.write_all(&login_request()[..20]).await.unwrap();
    drop(c);
    idle().await;
    let mut c = TcpStream::connect(t.addr).await.unwrap();
    c.write_all(&login_request()).await.unwrap();
    let mut buf = [0u8; 48];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0] & 0x3f, 0x23, "login response");
    drop(c);
    idle().await;

    // Full feature phase: idle, inside a header, inside a data segment.
    drop(login(&t).await);
    idle().await;
    let s = login(&t).await;
    s.send_raw_bytes(&[0u8; 30]).await.unwrap();
    drop(s);
    idle().await;
    let s = login(&t).await;
    let mut n = Pdu::new(Opcode::NopOut).with_data(vec![9; 4096]);
    n.bhs.set_immediate(true);
    n.bhs.set_final(true);
    n.bhs.set_itt(s.alloc_itt());
    n.bhs.set_ttt(0xffff_ffff);
    s.send_raw_bytes(&pdu::encode(&n, &Framing::default())[..148])
        .await
        .unwrap();
    drop(s);
    idle().await;

    // With a write waiting for its data, with commands held behind a
    // CmdSN gap, and with writes executing.
    let s = login(&t).await;
    let p = write_cmd(&s, 512, 64);
    let itt = p.bhs.itt();
    s.send_raw_command(p).await.unwrap();
    expect_r2t(&s, itt).await;
    drop(s);
    idle().await;
    let s = login(&t).await;
    let (next, ..) = s.sequence_numbers();
    for i in 1..=8u32 {
        let mut r = scsi_cmd(&rw16(0x88, 0, 8), 4096, true, false, true);
        r.bhs.set_itt(s.alloc_itt());
        r.bhs.set_cmd_sn(next.wrapping_add(i));
        s.send_raw_pdu(&r).await.unwrap();
    }
    wait_counts(&t, (2, 2, 8)).await;
    drop(s);
    idle().await;
    let s = Arc::new(login(&t).await);
    for i in 0..16u64 {
        let s = s.clone();
        tokio::spawn(async move {
            let _ = s
                .write16(0, 1024 + i * 128, &vec![4u8; 64 << 10], BS, true)
                .await;
        });
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(s);
    idle().await;
    finish(&t, by, before).await;
}

/// A CBT write lock held by a session that vanishes in the middle of a
/// transfer is released: the writes it held land, and another session
/// can take the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbt_lock_released_when_holder_drops_mid_transfer() {
    let t = target_with(TargetOptions {
        cbt_extent_blocks: Some(8),
        ..Default::default()
    });
    let by = Bystander::start(&t).await;
    let before = by.rounds();
    let holder = login(&t).await;
    let grant = tokio::time::timeout(SOON, holder.cbt_acquire(0, 0, 0))
        .await
        .expect("ACQUIRE timed out")
        .unwrap();
    // The holder starts a write and stalls in its data phase.
    let p = write_cmd(&holder, 2048, 8);
    let itt = p.bhs.itt();
    holder.send_raw_command(p).await.unwrap();
    expect_r2t(&holder, itt).await;
    // Another initiator's write is held by the lock.
    let writer = Arc::new(login_as(&t, "iqn.2026-11.dev.gentgt:writer").await);
    let w = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.write16(0, 4096, &[0x66; 4096], BS, false).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.is_finished(), "write not held by the lock");
    drop(holder);
    tokio::time::timeout(SOON, w)
        .await
        .expect("held write never landed after the holder dropped")
        .unwrap()
        .unwrap();
    let back = writer.read16(0, 4096, 8, BS).await.unwrap();
    assert!(back.iter().all(|&b| b == 0x66));
    let other = login(&t).await;
    let g = tokio::time::timeout(SOON, other.cbt_acquire(0, 0, 0))
        .await
        .expect("lock still held")
        .unwrap();
    assert!(g.generation > grant.generation);
    other.cbt_release(0, g.token).await.unwrap();
    other.logout().await.unwrap();
    Arc::try_unwrap(writer)
        .ok()
        .unwrap()
        .logout()
        .await
        .unwrap();
    finish(&t, by, before).await;
}
