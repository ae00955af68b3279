//! The CBT write lock over real iSCSI (issue 4): an in-process target with
//! tracking on, a backup session that takes the lock and normal sessions
//! whose writes are in flight (tokio tasks) while it is held. Every wait is
//! bounded: a held write that never finishes fails the test, it does not
//! hang it.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::initiator::cbt::{self as wire, CbtClientError, ExtentDescriptor, LockGrant};
use gentgt::initiator::{ConnectOptions, Initiator, InitiatorError, Session, tmf};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const BS: u32 = 512;
/// 16 blocks (8 KiB) per extent; the 4 MiB LUN has 512 extents.
const EB: u64 = 16;
const SIZE: u64 = 4 << 20;
/// A normal initiator: may write, may not use opcode C0h.
const WRITER: &str = "iqn.2026-11.dev.gentgt:writer";

const INVALID_FIELD: (u8, u8, u8) = (5, 0x24, 0);
const RESERVATION_CONFLICT: u8 = 0x18;
/// Long enough that a write which was not held would have finished.
const SETTLE: Duration = Duration::from_millis(300);
/// Bound on anything that should finish "now".
const SOON: Duration = Duration::from_secs(5);

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

async fn login(t: &TestTarget, initiator: &str) -> Arc<Session> {
    let mut opts = ConnectOptions::new(t.addr, initiator, Some(&t.name));
    opts.timeout = Duration::from_secs(10);
    let s = Initiator::connect(&opts).await.unwrap();
    // Consume the power-on unit attention.
    let _ = s.test_unit_ready(0).await;
    Arc::new(s)
}

async fn logout(s: Arc<Session>) {
    let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("session still shared"));
    tokio::time::timeout(SOON, s.logout())
        .await
        .expect("logout timed out")
        .unwrap();
}

fn pattern(byte: u8, blocks: u64) -> Vec<u8> {
    vec![byte; (blocks * u64::from(BS)) as usize]
}

/// A write in flight on its own task.
fn spawn_write(
    s: &Arc<Session>,
    lba: u64,
    blocks: u64,
    byte: u8,
) -> JoinHandle<Result<(), InitiatorError>> {
    let s = s.clone();
    tokio::spawn(async move { s.write16(0, lba, &pattern(byte, blocks), BS, false).await })
}

async fn write(s: &Session, lba: u64, blocks: u64, byte: u8) {
    s.write16(0, lba, &pattern(byte, blocks), BS, false)
        .await
        .unwrap();
}

/// The byte every block of `[lba, lba+blocks)` holds (asserts they agree).
async fn read_byte(s: &Session, lba: u64, blocks: u32) -> u8 {
    let d = tokio::time::timeout(SOON, s.read16(0, lba, blocks, BS))
        .await
        .expect("a read waited while the LUN was locked")
        .unwrap();
    assert_eq!(d.len(), (blocks * BS) as usize);
    assert!(d.iter().all(|b| *b == d[0]), "mixed data at {lba}");
    d[0]
}

/// Wait (bounded) for a held write and require GOOD.
async fn landed(h: JoinHandle<Result<(), InitiatorError>>, what: &str) {
    match tokio::time::timeout(SOON, h).await {
        Err(_) => panic!("{what}: still not complete {SOON:?} after the lock ended"),
        Ok(r) => r.unwrap().unwrap_or_else(|e| panic!("{what}: {e}")),
    }
}

fn covered(list: &[ExtentDescriptor]) -> BTreeSet<u64> {
    list.iter()
        .flat_map(|x| (x.lba / EB)..(x.lba + u64::from(x.blocks)).div_ceil(EB))
        .collect()
}

async fn changed_since(s: &Session, g: u64) -> (BTreeSet<u64>, Vec<ExtentDescriptor>) {
    let list = s.cbt_all_changes(0, g, 0).await.unwrap();
    (covered(&list), list)
}

fn sense(e: CbtClientError) -> Option<(u8, u8, u8)> {
    match e {
        CbtClientError::Initiator(e) => e.sense_code(),
        CbtClientError::Wire(_) => None,
        CbtClientError::ViewLost => Some(wire::VIEW_LOST_SENSE),
    }
}

async fn locked(s: &Session) -> bool {
    let r = s.cbt_report(0).await.unwrap();
    assert_eq!(
        r.flags.write_locked,
        r.lease_remaining_ms > 0,
        "WRITE LOCKED flag and lease remaining disagree"
    );
    r.flags.write_locked
}

async fn acquire(s: &Session, lease_ms: u32) -> LockGrant {
    tokio::time::timeout(SOON, s.cbt_acquire(0, lease_ms, 0))
        .await
        .expect("ACQUIRE timed out")
        .unwrap()
}

/// (a) held, not failed, invisible until RELEASE, then applied in arrival
/// order; (b) reads and other commands go on meanwhile; (e) the LOCK
/// GENERATION is the closed G and exactly the held writes are stamped > G.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_land_in_order_after_release() {
    let t = target();
    let backup = login(&t, INITIATOR).await;
    let writer = login(&t, WRITER).await;

    // Before the lock: e1 written before G0, e2 after G0.
    write(&writer, 10 * EB, 4, 0x11).await;
    let g0 = backup.cbt_close(0).await.unwrap().generation;
    write(&writer, 20 * EB + 3, 2, 0x22).await;

    let open = backup.cbt_report(0).await.unwrap().open_generation;
    let grant = acquire(&backup, 0).await;
    assert_eq!(grant.generation, open, "LOCK GENERATION is the closed O");
    assert!(grant.lease_ms > 0 && grant.lease_ms <= 30_000);
    let r = backup.cbt_report(0).await.unwrap();
    assert_eq!(r.open_generation, open + 1, "ACQUIRE closed exactly once");
    assert!(r.flags.write_locked && r.lease_remaining_ms > 0);

    // Held writes: two to block B (writer first, then the holder itself),
    // one over e2 again, one multi-extent write.
    let b = 30 * EB + 5;
    let w1 = spawn_write(&writer, b, 1, 0xa1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w2 = spawn_write(&backup, b, 1, 0xa2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w3 = spawn_write(&writer, 20 * EB, 1, 0xa3);
    let w4 = spawn_write(&writer, 40 * EB + 8, 2 * EB, 0xa4);
    tokio::time::sleep(SETTLE).await;
    for (h, n) in [(&w1, "w1"), (&w2, "w2"), (&w3, "w3"), (&w4, "w4")] {
        assert!(!h.is_finished(), "{n} completed while the LUN was locked");
    }

    // (b) reads from both sessions, and other commands, go on; nothing of
    // the held writes is visible or stamped.
    for s in [&backup, &writer] {
        assert_eq!(read_byte(s, b, 1).await, 0);
        assert_eq!(read_byte(s, 20 * EB + 3, 2).await, 0x22);
        assert_eq!(read_byte(s, 40 * EB + 8, 2 * EB as u32).await, 0);
        tokio::time::timeout(SOON, s.test_unit_ready(0))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(SOON, s.inquiry(0))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(SOON, s.read_capacity16(0))
            .await
            .unwrap()
            .unwrap();
    }
    let (during, _) = changed_since(&backup, grant.generation).await;
    assert!(
        during.is_empty(),
        "held writes stamped before release: {during:?}"
    );
    assert!(locked(&backup).await);
    for (h, n) in [(&w1, "w1"), (&w2, "w2"), (&w3, "w3"), (&w4, "w4")] {
        assert!(!h.is_finished(), "{n} completed while the LUN was locked");
    }

    let rel = backup.cbt_release(0, grant.token).await.unwrap();
    assert_eq!((rel.token, rel.lease_ms), (grant.token, 0));
    landed(w1, "w1").await;
    landed(w2, "w2").await;
    landed(w3, "w3").await;
    landed(w4, "w4").await;
    assert!(!locked(&backup).await);

    // Arrival order: the later write to B wins, seen from both sessions.
    for s in [&backup, &writer] {
        assert_eq!(read_byte(s, b, 1).await, 0xa2, "held writes reordered");
        assert_eq!(read_byte(s, 20 * EB, 1).await, 0xa3);
        assert_eq!(read_byte(s, 20 * EB + 3, 2).await, 0x22);
        assert_eq!(read_byte(s, 40 * EB + 8, 2 * EB as u32).await, 0xa4);
    }

    // (e) exactly the held writes' extents are stamped > LOCK GENERATION:
    // e1 and the pre-lock write to e2 are not (e2 is listed only because
    // w3 changed it again).
    let (since_lock, list) = changed_since(&backup, grant.generation).await;
    let held: BTreeSet<u64> = [30, 20, 40, 41, 42].into_iter().collect();
    assert_eq!(since_lock, held, "since LOCK GENERATION");
    assert!(list.iter().all(|d| d.generation > grant.generation));
    let (since_g0, _) = changed_since(&backup, g0).await;
    let mut want = held.clone();
    want.insert(20);
    assert_eq!(since_g0, want, "since G0 (before the lock)");
    assert!(!since_g0.contains(&10));

    logout(writer).await;
    logout(backup).await;
}

/// (c) the lease ends the lock by itself and the held writes then land; a
/// lease above the maximum is cut to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_by_itself() {
    let t = target();
    let backup = login(&t, INITIATOR).await;
    let writer = login(&t, WRITER).await;

    let started = Instant::now();
    let grant = acquire(&backup, 600).await;
    assert_eq!(grant.lease_ms, 600);
    let w = spawn_write(&writer, 7 * EB, 1, 0x5c);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!w.is_finished(), "write completed inside the lease");
    assert_eq!(read_byte(&writer, 7 * EB, 1).await, 0);
    // Nobody renews or releases: the lease runs out.
    landed(w, "held write after lease expiry").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "write landed after {waited:?}, before the 600 ms lease ended"
    );
    println!("lease 600 ms: held write landed {waited:?} after ACQUIRE");
    assert!(!locked(&backup).await);
    assert_eq!(read_byte(&backup, 7 * EB, 1).await, 0x5c);
    let (since, _) = changed_since(&backup, grant.generation).await;
    assert_eq!(since, BTreeSet::from([7]));
    // The expired token is worthless.
    let e = backup.cbt_renew(0, grant.token, 0).await.unwrap_err();
    assert_eq!(sense(e), Some(INVALID_FIELD));
    let e = backup.cbt_release(0, grant.token).await.unwrap_err();
    assert_eq!(sense(e), Some(INVALID_FIELD));

    // A lease over the configured maximum (default 30 s) is cut to it.
    let long = acquire(&backup, 3_600_000).await;
    assert_eq!(long.lease_ms, 30_000);
    let renewed = backup.cbt_renew(0, long.token, 400).await.unwrap();
    assert_eq!((renewed.token, renewed.lease_ms), (long.token, 400));
    let w = spawn_write(&writer, 8 * EB, 1, 0x5d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!w.is_finished());
    landed(w, "held write after the renewed (short) lease").await;
    assert!(!locked(&backup).await);

    logout(writer).await;
    logout(backup).await;
}

/// (d) the end of the holder's session ends the lock: Logout, and a
/// dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_session_end_releases() {
    let t = target();
    let writer = login(&t, WRITER).await;

    for (round, by_logout) in [(0u64, true), (1, false)] {
        let holder = login(&t, INITIATOR).await;
        let grant = acquire(&holder, 0).await;
        assert!(
            grant.lease_ms >= 10_000,
            "lease too short to prove anything"
        );
        let lba = (50 + round) * EB;
        let w = spawn_write(&writer, lba, 1, 0x70 + round as u8);
        tokio::time::sleep(SETTLE).await;
        assert!(!w.is_finished(), "round {round}: write not held");
        let t0 = Instant::now();
        if by_logout {
            logout(holder).await;
        } else {
            // Drop the TCP connection without a Logout.
            drop(holder);
        }
        landed(
            w,
            if by_logout {
                "after logout"
            } else {
                "after drop"
            },
        )
        .await;
        println!(
            "holder {}: held write landed {:?} later",
            if by_logout { "logout" } else { "dropped" },
            t0.elapsed()
        );
        assert_eq!(read_byte(&writer, lba, 1).await, 0x70 + round as u8);
        // The lock is really gone: a new session may take it.
        let other = login(&t, INITIATOR).await;
        assert!(!locked(&other).await);
        let g = acquire(&other, 0).await;
        assert!(g.generation > grant.generation);
        other.cbt_release(0, g.token).await.unwrap();
        logout(other).await;
    }
    logout(writer).await;
}

/// (f) conflicts, re-ACQUIRE by the holder, wrong tokens, and the token as
/// a capability from another allowed session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_tokens() {
    let t = target();
    // Same allowed initiator name, different ISIDs: two nexuses.
    let holder = login(&t, INITIATOR).await;
    let other = login(&t, INITIATOR).await;
    let writer = login(&t, WRITER).await;

    let grant = acquire(&holder, 0).await;
    let open = holder.cbt_report(0).await.unwrap().open_generation;
    assert_eq!(open, grant.generation + 1);

    let out = other
        .scsi(0, &wire::acquire_cdb(0, 0), None, 32)
        .await
        .unwrap();
    assert_eq!(out.status, RESERVATION_CONFLICT, "ACQUIRE by another nexus");
    assert_eq!(
        holder.cbt_report(0).await.unwrap().open_generation,
        open,
        "a refused ACQUIRE closed a generation"
    );

    let again = acquire(&holder, 0).await;
    assert_eq!(
        (again.token, again.generation),
        (grant.token, grant.generation)
    );
    assert_eq!(holder.cbt_report(0).await.unwrap().open_generation, open);

    let w = spawn_write(&writer, 3 * EB, 1, 0x3f);
    for wrong in [grant.token ^ 1, grant.token.wrapping_add(1 << 40), 0] {
        let e = other.cbt_renew(0, wrong, 0).await.unwrap_err();
        assert_eq!(sense(e), Some(INVALID_FIELD), "RENEW with {wrong:#x}");
        let e = holder.cbt_release(0, wrong).await.unwrap_err();
        assert_eq!(sense(e), Some(INVALID_FIELD), "RELEASE with {wrong:#x}");
    }
    assert!(locked(&holder).await, "a wrong token ended the lock");
    tokio::time::sleep(SETTLE).await;
    assert!(!w.is_finished());

    // The token works from another allowed session (a reconnected
    // appliance), which stays the same lock.
    let r = other.cbt_renew(0, grant.token, 20_000).await.unwrap();
    assert_eq!(
        (r.token, r.generation, r.lease_ms),
        (grant.token, grant.generation, 20_000)
    );
    let rel = other.cbt_release(0, grant.token).await.unwrap();
    assert_eq!(rel.lease_ms, 0);
    landed(w, "after RELEASE from another session").await;
    assert_eq!(holder.cbt_report(0).await.unwrap().open_generation, open);

    // Now the other nexus may take it; the old token is dead.
    let g2 = acquire(&other, 0).await;
    assert_ne!(g2.token, grant.token);
    assert_eq!(g2.generation, open);
    let e = holder.cbt_release(0, grant.token).await.unwrap_err();
    assert_eq!(sense(e), Some(INVALID_FIELD));
    other.cbt_release(0, g2.token).await.unwrap();

    logout(writer).await;
    logout(other).await;
    logout(holder).await;
}

/// (g) ABORT TASK and LUN RESET finish a held write at once; it never
/// lands, not even after the lock ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_management_ends_held_writes() {
    let t = target();
    let holder = login(&t, INITIATOR).await;
    let writer = login(&t, WRITER).await;
    let grant = acquire(&holder, 0).await;

    // ABORT TASK needs the write's ITT: the session hands ITTs out in
    // order, so the write takes the one after this probe.
    let probe = writer.alloc_itt();
    let aborted_lba = 60 * EB;
    let w = spawn_write(&writer, aborted_lba, 1, 0xee);
    tokio::time::sleep(SETTLE).await;
    assert!(!w.is_finished());
    let resp = tokio::time::timeout(
        SOON,
        writer.task_mgmt(tmf::ABORT_TASK, 0, probe.wrapping_add(1)),
    )
    .await
    .expect("ABORT TASK on a held write hung")
    .unwrap();
    assert_eq!(resp, 0, "ABORT TASK: FUNCTION COMPLETE");
    finished_not_good(w, "ABORT TASK").await;

    // LUN RESET from the writer's session.
    let reset_lba = 61 * EB;
    let w = spawn_write(&writer, reset_lba, 1, 0xef);
    tokio::time::sleep(SETTLE).await;
    assert!(!w.is_finished());
    let resp = tokio::time::timeout(
        SOON,
        writer.task_mgmt(tmf::LOGICAL_UNIT_RESET, 0, 0xffff_ffff),
    )
    .await
    .expect("LUN RESET with a held write hung")
    .unwrap();
    assert_eq!(resp, 0, "LUN RESET: FUNCTION COMPLETE");
    finished_not_good(w, "LUN RESET").await;

    // The reset leaves a unit attention for each session.
    let _ = holder.test_unit_ready(0).await;
    let _ = writer.test_unit_ready(0).await;
    // A write held after the TMFs still lands: the lock itself goes on.
    let kept = spawn_write(&writer, 62 * EB, 1, 0x99);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!kept.is_finished());
    if locked(&holder).await {
        holder.cbt_release(0, grant.token).await.unwrap();
    }
    landed(kept, "write held after the TMFs").await;
    tokio::time::sleep(SETTLE).await;
    for s in [&holder, &writer] {
        assert_eq!(
            read_byte(s, aborted_lba, 1).await,
            0,
            "aborted write landed"
        );
        assert_eq!(read_byte(s, reset_lba, 1).await, 0, "reset write landed");
        assert_eq!(read_byte(s, 62 * EB, 1).await, 0x99);
    }
    let (since, _) = changed_since(&holder, grant.generation).await;
    assert_eq!(since, BTreeSet::from([62]), "aborted writes were stamped");
    logout(writer).await;
    logout(holder).await;
}

/// An aborted task gets no SCSI response (RFC 7143 §11.5.1), or at most a
/// non-GOOD one: it must not report success.
async fn finished_not_good(h: JoinHandle<Result<(), InitiatorError>>, what: &str) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    if h.is_finished() {
        let r = h.await.unwrap();
        assert!(r.is_err(), "{what}: the aborted write reported GOOD");
    } else {
        h.abort();
    }
}
