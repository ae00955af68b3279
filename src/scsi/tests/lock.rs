//! CBT write lock: ACQUIRE/RENEW/RELEASE handlers called directly (the C0h
//! dispatch lives elsewhere) and changes held by `DeviceServer::submit`.

use super::*;
use crate::cbt::{ChangeKind, Tracker};
use crate::scsi::cdb::{CommandDesc, Ctx, Handler};
use crate::scsi::vendor::lock::{acquire, release, renew};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// The row a C0h dispatch would pass; the handlers only read the CDB.
static DESC: CommandDesc = CommandDesc {
    opcode: 0xc0,
    service_action: Some(3),
    name: "CBT WRITE LOCK (test)",
    cdb_len: 16,
    usage_mask: [0xff; 16],
    direction: DataDirection::In,
    handler: acquire,
    writes: false,
    lun_optional: false,
    pr: crate::scsi::pr::classify(0xc0, Some(3), false),
};

const EXTENT: u32 = 8;
const WAIT: Duration = Duration::from_secs(5);
const ABORTED_TIMEOUT: (u8, u8, u8) = (key::ABORTED_COMMAND, 0x2e, 0x02);

struct Lk {
    srv: Arc<DeviceServer>,
}

#[derive(Debug, PartialEq, Eq)]
struct Reply {
    token: u64,
    generation: u64,
    lease_ms: u32,
}

fn tracked_lu(max_lease: Duration) -> Arc<LogicalUnit> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let tracker = Arc::new(Tracker::volatile(BLOCKS, EXTENT).unwrap());
    let mut lu = LogicalUnit::new(backend, BS, identity(1), false).with_tracker(tracker);
    lu.cbt.max_lease = max_lease;
    Arc::new(lu)
}

fn acquire_cdb(lease_ms: u32, drain_ms: u32) -> Vec<u8> {
    let mut c = vec![0xc0, 0x03];
    c.extend_from_slice(&lease_ms.to_be_bytes());
    c.extend_from_slice(&drain_ms.to_be_bytes());
    c.resize(16, 0);
    c
}

fn token_cdb(sa: u8, token: u64, lease_ms: u32) -> Vec<u8> {
    let mut c = vec![0xc0, sa];
    c.extend_from_slice(&token.to_be_bytes());
    if sa == 0x04 {
        c.extend_from_slice(&lease_ms.to_be_bytes());
    }
    c.resize(16, 0);
    c
}

impl Lk {
    fn new() -> Lk {
        Lk::with_max(Duration::from_secs(30))
    }

    fn with_max(max_lease: Duration) -> Lk {
        let srv = DeviceServer::new("iqn.2024-01.test:target", vec![(0, tracked_lu(max_lease))]);
        Lk { srv: Arc::new(srv) }
    }

    fn lu(&self) -> &LogicalUnit {
        &self.srv.luns[&0]
    }

    fn tracker(&self) -> &Tracker {
        self.lu().tracker.as_deref().unwrap()
    }

    fn run(&self, h: Handler, n: u64, cdb: &[u8], alloc: u32) -> ScsiResult {
        let nx = nexus(n);
        let ctx = Ctx {
            server: &self.srv,
            lu: Some(self.lu()),
            nexus: &nx,
            desc: &DESC,
        };
        let cmd = ScsiCommand {
            lun: 0,
            cdb,
            data_out: &[],
            expected_len: alloc,
            nexus: &nx,
        };
        h(&ctx, &cmd).unwrap_or_else(|s| ScsiResult::check_condition(s, 0))
    }

    fn ok(&self, h: Handler, n: u64, cdb: &[u8]) -> Reply {
        let r = self.run(h, n, cdb, 32);
        assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
        assert_eq!((r.data_in.len(), r.transfer_len), (32, 32));
        assert!(r.data_in[20..].iter().all(|&b| b == 0));
        Reply {
            token: u64::from_be_bytes(r.data_in[0..8].try_into().unwrap()),
            generation: u64::from_be_bytes(r.data_in[8..16].try_into().unwrap()),
            lease_ms: u32::from_be_bytes(r.data_in[16..20].try_into().unwrap()),
        }
    }

    fn lock(&self, n: u64, lease_ms: u32) -> Reply {
        self.ok(acquire, n, &acquire_cdb(lease_ms, 1000))
    }

    fn unlock(&self, n: u64, token: u64) -> Reply {
        self.ok(release, n, &token_cdb(0x05, token, 0))
    }

    /// Submit a command from nexus `n`; its result arrives on the receiver.
    fn submit(
        &self,
        n: u64,
        tag: u64,
        cdb: Vec<u8>,
        data: Vec<u8>,
        expected_len: u32,
    ) -> Receiver<ScsiResult> {
        let (tx, rx) = channel();
        let mut cdb = cdb;
        cdb.resize(16, 0);
        let cmd = OwnedCommand {
            lun: 0,
            expected_len,
            cdb,
            data_out: data,
            nexus: Arc::new(nexus(n)),
            tag,
        };
        self.srv.submit(
            cmd,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    fn write(&self, n: u64, tag: u64, lba: u32, fill: u8) -> Receiver<ScsiResult> {
        self.submit(n, tag, write10(lba, 1, false), vec![fill; BS as usize], BS)
    }

    fn read(&self, lba: u32) -> Vec<u8> {
        let rx = self.submit(1, 999, read10(lba, 1), Vec::new(), BS);
        let mut cdb = read10(lba, 1);
        cdb.resize(16, 0);
        let nx = nexus(1);
        let r = self.srv.execute(&ScsiCommand {
            lun: 0,
            cdb: &cdb,
            data_out: &[],
            expected_len: BS,
            nexus: &nx,
        });
        // The submitted read ran at once too, with the same data.
        let via_submit = rx.try_recv().expect("a read is never held");
        assert_eq!(via_submit.data_in, r.data_in);
        assert_eq!(r.status, status::GOOD);
        r.data_in
    }
}

fn good(rx: &Receiver<ScsiResult>) {
    let r = rx.recv_timeout(WAIT).expect("command finished");
    assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
}

fn pending(rx: &Receiver<ScsiResult>) {
    assert!(rx.recv_timeout(Duration::from_millis(30)).is_err(), "held");
}

#[test]
fn acquire_renew_release() {
    let t = Lk::new();
    let open = t.tracker().open_generation();
    let a = t.lock(1, 5000);
    assert_ne!(a.token, 0);
    assert_eq!((a.generation, a.lease_ms), (open, 5000));
    let left = t.lu().cbt_lock.status().expect("locked");
    assert!((4000..=5000).contains(&left), "{left}");
    // The token is a capability: another session may renew it.
    let r = t.ok(renew, 2, &token_cdb(0x04, a.token, 7000));
    assert_eq!(
        r,
        Reply {
            lease_ms: 7000,
            ..a
        }
    );
    assert!(t.lu().cbt_lock.status().unwrap() > 5000);
    let r = t.unlock(3, a.token);
    assert_eq!(r, Reply { lease_ms: 0, ..a });
    assert_eq!(t.lu().cbt_lock.status(), None);
    // The released token is dead.
    let r = t.run(release, 1, &token_cdb(0x05, a.token, 0), 32);
    assert_eq!(r.sense_codes(), Some(INVALID_FIELD));
}

#[test]
fn reply_is_cut_to_allocation_length() {
    let t = Lk::new();
    let r = t.run(acquire, 1, &acquire_cdb(0, 0), 8);
    assert_eq!(
        (r.status, r.data_in.len(), r.transfer_len),
        (status::GOOD, 8, 32)
    );
    assert!(t.lu().cbt_lock.status().is_some(), "took effect anyway");
    // Lease 0 → the default (30 s).
    assert!(t.lu().cbt_lock.status().unwrap() > 29_000);
}

#[test]
fn reserved_bytes_are_refused_and_nothing_happens() {
    let t = Lk::new();
    let open = t.tracker().open_generation();
    for at in [1usize, 10, 14, 15] {
        let mut c = acquire_cdb(1000, 1000);
        c[at] = if at == 1 { 0x23 } else { 1 };
        let r = t.run(acquire, 1, &c, 32);
        assert_eq!(r.sense_codes(), Some(INVALID_FIELD), "byte {at}");
    }
    assert_eq!(t.lu().cbt_lock.status(), None);
    assert_eq!(t.tracker().open_generation(), open);
    let a = t.lock(1, 1000);
    let mut c = token_cdb(0x04, a.token, 1000);
    c[14] = 1;
    assert_eq!(t.run(renew, 1, &c, 32).sense_codes(), Some(INVALID_FIELD));
    let mut c = token_cdb(0x05, a.token, 0);
    c[10] = 1;
    assert_eq!(t.run(release, 1, &c, 32).sense_codes(), Some(INVALID_FIELD));
    assert!(t.lu().cbt_lock.status().is_some(), "still locked");
}

#[test]
fn held_write_applies_after_release_in_order() {
    let t = Lk::new();
    let a = t.lock(1, 10_000);
    let first = t.write(2, 1, 10, 0xaa);
    let second = t.write(1, 2, 10, 0xbb); // the holder's own write is held too
    pending(&first);
    pending(&second);
    // Reads go on and see the LUN as at lock time.
    assert!(t.read(10).iter().all(|&b| b == 0));
    let r = t.run(release, 1, &token_cdb(0x05, a.token, 0), 32);
    assert_eq!(r.status, status::GOOD);
    good(&first);
    good(&second);
    assert!(
        t.read(10).iter().all(|&b| b == 0xbb),
        "the later write wins"
    );
    // Open again (once the drainer saw its queue empty): writes run.
    good(&t.write(2, 3, 11, 0xcc));
    assert!(t.read(11).iter().all(|&b| b == 0xcc));
}

#[test]
fn lock_generation_is_closed_and_held_changes_are_stamped_after_it() {
    let t = Lk::new();
    good(&t.write(2, 1, 0, 1));
    let before = t.tracker().open_generation();
    let a = t.lock(1, 10_000);
    assert_eq!(a.generation, before);
    assert_eq!(t.tracker().open_generation(), a.generation + 1);
    let w = t.write(2, 2, 100, 7);
    pending(&w);
    // Nothing changed since G while locked.
    let page = t.tracker().changed_extents(a.generation, 0, 100).unwrap();
    assert!(page.descriptors.is_empty(), "{page:?}");
    t.unlock(1, a.token);
    good(&w);
    let page = t.tracker().changed_extents(a.generation, 0, 100).unwrap();
    assert_eq!(page.descriptors.len(), 1);
    assert_eq!(page.descriptors[0].lba, 96);
    assert_eq!(page.descriptors[0].generation, a.generation + 1);
}

#[test]
fn lease_expires_by_tick_without_traffic() {
    let t = Lk::new();
    let a = t.lock(1, 50);
    let w = t.write(2, 1, 5, 9);
    std::thread::sleep(Duration::from_millis(80));
    pending(&w); // nothing expires the lease but tick (or a command)
    t.srv.tick();
    good(&w);
    assert_eq!(t.lu().cbt_lock.status(), None);
    assert!(t.read(5).iter().all(|&b| b == 9));
    let r = t.run(renew, 1, &token_cdb(0x04, a.token, 1000), 32);
    assert_eq!(r.sense_codes(), Some(INVALID_FIELD), "expired token");
}

#[test]
fn expired_lease_is_noticed_by_the_next_change() {
    let t = Lk::new();
    t.lock(1, 20);
    std::thread::sleep(Duration::from_millis(40));
    let w = t.write(2, 1, 5, 9);
    assert_eq!(w.try_recv().map(|r| r.status), Ok(status::GOOD));
}

#[test]
fn holder_session_end_releases() {
    let t = Lk::new();
    t.lock(1, 10_000);
    let other = t.write(2, 1, 3, 4);
    let own = t.write(1, 2, 4, 4);
    pending(&other);
    t.srv.nexus_removed(&nexus(1));
    good(&other);
    // The departed session's held change is dropped, not applied.
    let r = own.recv_timeout(WAIT).unwrap();
    assert_eq!(r.status, status::TASK_ABORTED);
    assert!(t.read(4).iter().all(|&b| b == 0));
    assert_eq!(t.lu().cbt_lock.status(), None);
}

#[test]
fn other_nexus_conflicts_and_holder_reacquires() {
    let t = Lk::new();
    let a = t.lock(1, 1000);
    let open = t.tracker().open_generation();
    let r = t.run(acquire, 2, &acquire_cdb(1000, 1000), 32);
    assert_eq!(
        (r.status, r.sense.is_none()),
        (status::RESERVATION_CONFLICT, true)
    );
    assert_eq!(t.tracker().open_generation(), open, "no generation closed");
    let again = t.lock(1, 9000);
    assert_eq!(
        again,
        Reply {
            lease_ms: 9000,
            ..a
        }
    );
    assert!(t.lu().cbt_lock.status().unwrap() > 8000, "lease renewed");
    assert_eq!(t.tracker().open_generation(), open);
}

#[test]
fn wrong_token_is_refused() {
    let t = Lk::new();
    let a = t.lock(1, 1000);
    for (h, sa) in [(renew as Handler, 0x04), (release, 0x05)] {
        let r = t.run(h, 1, &token_cdb(sa, a.token ^ 1, 1000), 32);
        assert_eq!(r.sense_codes(), Some(INVALID_FIELD));
    }
    assert!(t.lu().cbt_lock.status().is_some());
    let r = t.run(renew, 1, &token_cdb(0x04, 0, 1000), 32);
    assert_eq!(r.sense_codes(), Some(INVALID_FIELD));
}

#[test]
fn drain_timeout_aborts_without_lock_or_close() {
    let t = Lk::new();
    let open = t.tracker().open_generation();
    let stuck = t.tracker().begin_change(0, 1, ChangeKind::Write).unwrap();
    let r = t.run(acquire, 1, &acquire_cdb(1000, 30), 32);
    assert_eq!(r.sense_codes(), Some(ABORTED_TIMEOUT));
    assert_eq!(t.lu().cbt_lock.status(), None);
    assert_eq!(t.tracker().open_generation(), open);
    drop(stuck);
    // The gate is open again: changes run at once.
    let w = t.write(2, 1, 1, 1);
    assert_eq!(w.try_recv().map(|r| r.status), Ok(status::GOOD));
    // And a later ACQUIRE works.
    assert_eq!(t.lock(1, 1000).generation, open);
}

#[test]
fn changes_arriving_during_a_failed_acquire_run_after_it() {
    let t = Lk::new();
    let stuck = t.tracker().begin_change(0, 1, ChangeKind::Write).unwrap();
    let srv = Arc::clone(&t.srv);
    let acq = std::thread::spawn(move || {
        let t = Lk { srv };
        t.run(acquire, 1, &acquire_cdb(1000, 200), 32)
    });
    std::thread::sleep(Duration::from_millis(50));
    let w = t.write(2, 1, 2, 2); // the gate is shut while ACQUIRE drains
    pending(&w);
    let r = acq.join().unwrap();
    assert_eq!(r.sense_codes(), Some(ABORTED_TIMEOUT));
    good(&w);
    drop(stuck);
}

#[test]
fn lease_is_cut_to_the_maximum() {
    let t = Lk::with_max(Duration::from_millis(1500));
    let a = t.lock(1, 100_000);
    assert_eq!(a.lease_ms, 1500);
    let r = t.ok(renew, 1, &token_cdb(0x04, a.token, 0));
    assert_eq!(r.lease_ms, 1500, "the default is cut as well");
    assert!(t.lu().cbt_lock.status().unwrap() <= 1500);
}

#[test]
fn abort_held_finishes_matching_commands() {
    let t = Lk::new();
    let a = t.lock(1, 10_000);
    let w1 = t.write(2, 1, 20, 1);
    let w2 = t.write(2, 2, 21, 2);
    let w3 = t.write(2, 3, 22, 3);
    let w4 = t.write(3, 1, 23, 4);
    assert_eq!(t.srv.abort_held(Some(0), Some(2), Some(2)), 1);
    assert_eq!(w2.recv_timeout(WAIT).unwrap().status, status::TASK_ABORTED);
    assert_eq!(t.srv.abort_held(Some(7), None, None), 0, "other LUN");
    assert_eq!(t.srv.abort_held(None, Some(3), None), 1);
    assert_eq!(w4.recv_timeout(WAIT).unwrap().status, status::TASK_ABORTED);
    pending(&w1);
    t.unlock(1, a.token);
    good(&w1);
    good(&w3);
    assert!(t.read(20).iter().all(|&b| b == 1));
    assert!(t.read(21).iter().all(|&b| b == 0), "aborted: not applied");
    assert!(t.read(23).iter().all(|&b| b == 0));
}

#[test]
fn lun_reset_drops_held_changes() {
    let t = Lk::new();
    t.lock(1, 10_000);
    let w = t.write(2, 1, 30, 1);
    t.srv.lun_reset(0, &nexus(2));
    assert_eq!(w.recv_timeout(WAIT).unwrap().status, status::TASK_ABORTED);
}

/// Writer threads hammer the LUN (queue depth 1 each) while a lock is
/// taken and released repeatedly: nothing may land or be stamped while
/// locked (a change that passed the gate before ACQUIRE must have finished
/// before ACQUIRE returns), and every write completes in the end.
#[test]
fn nothing_lands_while_locked() {
    let t = Lk::new();
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (srv, stop, completed) = (t.srv.clone(), stop.clone(), completed.clone());
            std::thread::spawn(move || {
                let t = Lk { srv };
                let mut n = 0u8;
                while !stop.load(SeqCst) {
                    n = n.wrapping_add(1);
                    good(&t.write(10 + w, u64::from(n), 200 + w as u32, n));
                    completed.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for round in 0..20 {
        let a = t.lock(1, 10_000);
        let snap: Vec<Vec<u8>> = (200..203).map(|b| t.read(b)).collect();
        std::thread::sleep(Duration::from_millis(5));
        let page = t.tracker().changed_extents(a.generation, 0, 10).unwrap();
        assert!(
            page.descriptors.is_empty(),
            "round {round}: a change was stamped after G while locked"
        );
        let later: Vec<Vec<u8>> = (200..203).map(|b| t.read(b)).collect();
        assert_eq!(snap, later, "round {round}: a write landed while locked");
        t.unlock(1, a.token);
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert!(completed.load(SeqCst) > 0);
    assert_eq!(t.lu().cbt_lock.status(), None);
}

/// The gate protocol, step by step: a change paused between registering
/// in `active` and reading the gate. ACQUIRE (which shuts the gate
/// meanwhile) must wait for it; the change then sees the gate shut and is
/// held, stamped after G. Checking the gate before registering, or not
/// registering at all, lets ACQUIRE return while the change is about to
/// run: this test catches both.
#[test]
fn acquire_waits_for_a_change_at_the_gate() {
    let t = Lk::new();
    let (entered_tx, entered) = channel();
    let (go, go_rx) = channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let once = AtomicBool::new(true);
    *t.lu().cbt_lock.at_gate.lock().unwrap() = Some(Box::new(move || {
        if once.swap(false, SeqCst) {
            let _ = entered_tx.send(());
            let _ = go_rx.lock().unwrap().recv_timeout(WAIT);
        }
    }));
    let srv = Arc::clone(&t.srv);
    let writer = std::thread::spawn(move || Lk { srv }.write(2, 1, 40, 0x5a).recv_timeout(WAIT));
    entered.recv_timeout(WAIT).unwrap();
    let srv = Arc::clone(&t.srv);
    let acquirer = std::thread::spawn(move || Lk { srv }.lock(1, 10_000));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !acquirer.is_finished(),
        "ACQUIRE returned while a change ran"
    );
    go.send(()).unwrap();
    let a = acquirer.join().unwrap();
    assert!(t.read(40).iter().all(|&b| b == 0), "held, not applied");
    let page = t.tracker().changed_extents(a.generation, 0, 10).unwrap();
    assert!(page.descriptors.is_empty());
    t.unlock(1, a.token);
    let r = writer.join().unwrap().expect("applied after release");
    assert_eq!(r.status, status::GOOD);
    assert!(t.read(40).iter().all(|&b| b == 0x5a));
    let page = t.tracker().changed_extents(a.generation, 0, 10).unwrap();
    assert_eq!(page.descriptors[0].generation, a.generation + 1);
}
