//! Failing I/O below a real LUN, over iSCSI. The VM has no device-mapper
//! (no dm-error/dm-flakey), so the faults come from a test-only backend
//! wrapped around a real file backend (served through the library's
//! server): EIO on reads of chosen blocks, on writes of chosen blocks, and
//! on one fsync that the next would "succeed" (what Linux does after it
//! drops the dirty pages). A bystander session verifies I/O on a memory
//! LUN all along.

mod common;

use common::bystander::{Bystander, read16_cdb, sense_information, settle, write16_cdb};
use common::*;
use gentgt::backend::{Backend, FileBackend};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

const BS: u64 = 512;
const READ_ERROR: (u8, u8, u8) = (0x03, 0x11, 0x00);
const WRITE_ERROR: (u8, u8, u8) = (0x03, 0x0c, 0x00);

/// A file backend whose reads or writes of some blocks fail with EIO, and
/// whose next `flush_failures` flushes do.
struct Faulty {
    inner: FileBackend,
    bad_reads: Mutex<Option<(u64, u64)>>,
    bad_writes: Mutex<Option<(u64, u64)>>,
    flush_failures: AtomicU32,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Does `[offset, offset + len)` touch the block range `bad`?
fn hits(bad: &Mutex<Option<(u64, u64)>>, offset: u64, len: u64) -> bool {
    bad.lock()
        .unwrap()
        .is_some_and(|(lba, n)| offset < (lba + n) * BS && lba * BS < offset + len)
}

impl Backend for Faulty {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if hits(&self.bad_reads, offset, buf.len() as u64) {
            return Err(eio());
        }
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        if hits(&self.bad_writes, offset, buf.len() as u64) {
            return Err(eio());
        }
        self.inner.write_at(offset, buf, fua)
    }
    fn flush(&self) -> io::Result<()> {
        let failing = self
            .flush_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match failing {
            Ok(_) => Err(eio()),
            Err(_) => self.inner.flush(),
        }
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.unmap(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
}

fn pattern(lba: u64, blocks: u64) -> Vec<u8> {
    (0..blocks * BS)
        .map(|k| ((lba * BS + k) % 251) as u8)
        .collect()
}

async fn write(s: &Session, lba: u64, blocks: u32, fua: bool) -> gentgt::initiator::ScsiOutcome {
    let data = pattern(lba, u64::from(blocks));
    s.scsi(0, &write16_cdb(lba, blocks, fua), Some(&data), 0)
        .await
        .unwrap()
}

async fn sync_cache(s: &Session) -> gentgt::initiator::ScsiOutcome {
    s.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, 0)
        .await
        .unwrap()
}

/// A real file LUN 0 behind `Faulty` (CBT on), a memory bystander LUN 1.
fn start(dir: &std::path::Path) -> (TestTarget, Arc<Faulty>) {
    let faulty = Arc::new(Faulty {
        inner: FileBackend::open(&dir.join("lun0.img"), 16 << 20, true, false).unwrap(),
        bad_reads: Mutex::new(None),
        bad_writes: Mutex::new(None),
        flush_failures: AtomicU32::new(0),
    });
    let luns = [
        LunSpec::Backend {
            backend: faulty.clone(),
            block_size: 512,
        },
        LunSpec::Memory {
            size: 4 << 20,
            block_size: 512,
        },
    ];
    let opts = TargetOptions {
        cbt_extent_blocks: Some(128),
        ..Default::default()
    };
    (TestTarget::start(&luns, opts), faulty)
}

async fn writer(t: &TestTarget) -> Session {
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(TARGET)))
        .await
        .unwrap();
    settle(&s, 0).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_eio_is_unrecovered_read_error_at_the_failing_lba() {
    let dir = tempfile::tempdir().unwrap();
    let (t, faulty) = start(dir.path());
    let bystander = Bystander::start(t.addr, TARGET, 1).await;
    let s = writer(&t).await;
    assert_eq!(write(&s, 0, 2048, false).await.status, 0);

    *faulty.bad_reads.lock().unwrap() = Some((1000, 1));
    let r = s
        .scsi(0, &read16_cdb(992, 16), None, 16 * 512)
        .await
        .unwrap();
    assert_eq!(r.sense_code(), Some(READ_ERROR));
    assert_eq!(sense_information(r.sense.as_deref().unwrap()), Some(1000));
    // Blocks around it still read.
    assert_eq!(s.read16(0, 0, 992, 512).await.unwrap(), pattern(0, 992));
    bystander.progresses().await;
    *faulty.bad_reads.lock().unwrap() = None;
    assert_eq!(s.read16(0, 992, 16, 512).await.unwrap(), pattern(992, 16));
    bystander.finish().await;
    s.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_eio_is_write_error_and_cbt_still_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let (t, faulty) = start(dir.path());
    let bystander = Bystander::start(t.addr, TARGET, 1).await;
    let s = writer(&t).await;

    *faulty.bad_writes.lock().unwrap() = Some((3000, 8));
    for fua in [false, true] {
        let r = write(&s, 2996, 16, fua).await;
        assert_eq!(r.sense_code(), Some(WRITE_ERROR), "fua {fua}");
        assert_eq!(sense_information(r.sense.as_deref().unwrap()), Some(2996));
    }
    bystander.progresses().await;
    // Over-report at worst: the failed range is listed as changed.
    let changes = s.cbt_all_changes(0, 0, 0).await.unwrap();
    assert!(
        changes
            .iter()
            .any(|d| d.lba <= 2996 && d.lba + u64::from(d.blocks) >= 3012 && !d.deallocated),
        "failed write not listed: {changes:?}"
    );
    // Other blocks still take writes.
    *faulty.bad_writes.lock().unwrap() = None;
    assert_eq!(write(&s, 2996, 16, false).await.status, 0);
    assert_eq!(s.read16(0, 2996, 16, 512).await.unwrap(), pattern(2996, 16));
    bystander.finish().await;
    s.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_is_never_success_and_stays_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (t, faulty) = start(dir.path());
    let bystander = Bystander::start(t.addr, TARGET, 1).await;
    let s = writer(&t).await;
    assert_eq!(write(&s, 0, 64, false).await.status, 0);
    assert_eq!(sync_cache(&s).await.status, 0, "a healthy flush");

    assert_eq!(write(&s, 64, 64, false).await.status, 0);
    faulty.flush_failures.store(1, Ordering::SeqCst);
    assert_eq!(sync_cache(&s).await.sense_code(), Some(WRITE_ERROR));
    // The backend's next flush would succeed (Linux forgot the error):
    // the LUN does not let it cover the lost writes.
    assert_eq!(
        sync_cache(&s).await.sense_code(),
        Some(WRITE_ERROR),
        "sticky"
    );
    assert_eq!(faulty.flush_failures.load(Ordering::SeqCst), 0);
    let r = write(&s, 128, 8, true).await;
    assert_eq!(
        r.sense_code(),
        Some(WRITE_ERROR),
        "FUA write after a lost sync"
    );
    assert_eq!(sense_information(r.sense.as_deref().unwrap()), Some(128));
    // Reads and cached writes go on.
    assert_eq!(write(&s, 200, 8, false).await.status, 0);
    assert_eq!(s.read16(0, 0, 64, 512).await.unwrap(), pattern(0, 64));
    assert_eq!(s.read16(0, 200, 8, 512).await.unwrap(), pattern(200, 8));
    bystander.progresses().await;
    bystander.finish().await;
    s.logout().await.unwrap();
}
