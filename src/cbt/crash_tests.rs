//! Crash safety at the file level: simulated kill -9 (drop without
//! shutdown), torn and corrupted files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::map::REGION_SHIFT;
use super::{ChangeKind, Descriptor, Tracker};

const REGION: u64 = 1 << REGION_SHIFT;
/// One block per extent, 8 regions.
const CAP: u64 = 8 * REGION;

fn write(t: &Tracker, lba: u64, blocks: u64) {
    drop(t.begin_change(lba, blocks, ChangeKind::Write).unwrap());
}

fn listed(t: &Tracker, since: u64) -> Vec<Descriptor> {
    t.changed_extents(since, 0, usize::MAX).unwrap().descriptors
}

fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("intent.")
        })
        .collect();
    v.sort();
    v
}

fn log_bytes(dir: &Path) -> u64 {
    logs(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn d(lba: u64, blocks: u64, generation: u64) -> Descriptor {
    Descriptor {
        lba,
        blocks,
        deallocated: false,
        generation,
    }
}

#[test]
fn crash_stamps_only_logged_regions_and_keeps_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let uuid = t.status().uuid;
    write(&t, 10, 1); // region 0
    write(&t, 5 * REGION + 3, 2); // region 5
    let g1 = t.close().unwrap();
    t.checkpoint().unwrap();
    write(&t, 3 * REGION + 100, 1); // region 3, after the checkpoint
    let g2 = t.close().unwrap();
    drop(t); // kill -9

    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let s = t.status();
    assert_eq!(s.uuid, uuid);
    assert!(s.recovered);
    let r = s.recovery_generation;
    assert!(r > g2 + 1, "R must exceed every generation handed out");
    assert_eq!(s.open_generation, r);
    // Region 3 wholly stamped R; the checkpointed ones keep their generation.
    assert_eq!(
        listed(&t, 0),
        vec![
            d(10, 1, g1),
            d(3 * REGION, REGION, r),
            d(5 * REGION + 3, 2, g1)
        ]
    );
    assert_eq!(listed(&t, g1), vec![d(3 * REGION, REGION, r)]);
    // After a clean restart nothing is recovered and R is still reported.
    t.shutdown().unwrap();
    drop(t);
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let s = t.status();
    assert!(!s.recovered);
    assert_eq!(
        (s.recovery_generation, s.open_generation, s.uuid),
        (r, r, uuid)
    );
    assert_eq!(listed(&t, g1), vec![d(3 * REGION, REGION, r)]);
}

#[test]
fn intent_is_logged_once_per_region_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let base = log_bytes(dir.path());
    write(&t, 1, 1);
    let one = log_bytes(dir.path());
    assert_eq!(one, base + 12, "first touch appends one durable record");
    write(&t, 2, 5);
    write(&t, REGION - 1, 1);
    assert_eq!(log_bytes(dir.path()), one, "same region: nothing more");
    write(&t, REGION - 1, 2); // spans regions 0 and 1
    assert_eq!(log_bytes(dir.path()), one + 12);
    t.checkpoint().unwrap();
    assert_eq!(logs(dir.path()).len(), 1, "old logs retired");
    write(&t, 1, 1);
    assert!(
        log_bytes(dir.path()) > base,
        "new epoch logs the region again"
    );
}

#[test]
fn many_closes_then_crash_never_reuse_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let mut last = 0;
    for _ in 0..3000 {
        last = t.close().unwrap();
    }
    drop(t);
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    assert!(t.status().open_generation > last);
    let g = t.close().unwrap();
    assert!(g > last);
}

#[test]
fn corrupt_meta_starts_fresh_with_new_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let uuid = t.status().uuid;
    write(&t, 7, 1);
    t.close().unwrap();
    t.shutdown().unwrap();
    drop(t);
    let meta = dir.path().join("meta");
    let mut b = fs::read(&meta).unwrap();
    b[40] ^= 0x55;
    fs::write(&meta, b).unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let s = t.status();
    assert_ne!(s.uuid, uuid);
    assert_eq!((s.open_generation, s.recovered), (1, false));
    assert!(listed(&t, 0).is_empty());
}

#[test]
fn corrupt_snapshot_or_missing_meta_starts_fresh() {
    for damage in ["snapshot", "meta-missing"] {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path(), CAP, 1).unwrap();
        let uuid = t.status().uuid;
        write(&t, 7, 1);
        t.shutdown().unwrap();
        drop(t);
        if damage == "snapshot" {
            let p = dir.path().join("snapshot");
            let mut b = fs::read(&p).unwrap();
            let n = b.len();
            b[n / 2] ^= 1;
            fs::write(&p, b).unwrap();
        } else {
            fs::remove_file(dir.path().join("meta")).unwrap();
        }
        let t = Tracker::open(dir.path(), CAP, 1).unwrap();
        assert_ne!(t.status().uuid, uuid, "{damage}");
        assert!(listed(&t, 0).is_empty());
    }
}

#[test]
fn damaged_intent_record_marks_the_whole_lun() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    write(&t, 2 * REGION, 1);
    write(&t, 4 * REGION, 1);
    write(&t, 6 * REGION, 1);
    drop(t);
    let log = logs(dir.path()).pop().unwrap();
    let mut b = fs::read(&log).unwrap();
    let n = b.len();
    b[n - 12 - 2] ^= 0xff; // damage the middle record (region 4)
    fs::write(&log, &b).unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let r = t.status().recovery_generation;
    // A bad record followed by a good one is damage, not a torn append:
    // which region it named is unknown, so every extent is marked.
    assert_eq!(listed(&t, 0), vec![d(0, CAP, r)]);
}

#[test]
fn torn_trailing_intent_records_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    write(&t, 2 * REGION, 1);
    write(&t, 6 * REGION, 1);
    drop(t);
    let log = logs(dir.path()).pop().unwrap();
    // A whole record with a bad checksum, then a partial one: an append
    // whose fsync never returned, so no data write followed it.
    let mut tail = vec![0xAB; 12];
    tail.extend_from_slice(&[7, 0, 0, 0, 0]);
    OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&tail)
        .unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let r = t.status().recovery_generation;
    assert_eq!(
        listed(&t, 0),
        vec![d(2 * REGION, REGION, r), d(6 * REGION, REGION, r)]
    );
}

#[test]
fn stray_temp_files_and_grow_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), CAP, 1).unwrap();
    let g = t.close().unwrap();
    t.shutdown().unwrap();
    drop(t);
    fs::write(dir.path().join("snapshot.tmp"), b"torn").unwrap();
    fs::write(dir.path().join("meta.tmp"), b"torn").unwrap();
    let t = Tracker::open(dir.path(), CAP + 10, 1).unwrap();
    assert_eq!(listed(&t, g), vec![d(CAP, 10, g + 1)]);
    assert_eq!(t.status().capacity_blocks, CAP + 10);
    drop(t); // crash right after the grow: still listed
    let t = Tracker::open(dir.path(), CAP + 10, 1).unwrap();
    let got = listed(&t, g);
    assert!(
        got.iter()
            .any(|x| x.lba <= CAP && x.lba + x.blocks >= CAP + 10)
    );
}
