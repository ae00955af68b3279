//! The CBT wire contract end to end: an in-process target with tracking
//! on, driven over real iSCSI through the client module the CLI and the
//! backup client use. Guarantee 1 (never under-report) is checked on every
//! reply against the writes this test made. Every test runs on a memory
//! LUN and on an RBD LUN of the one-node Ceph cluster (tests/common/ceph.rs).

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::backend::{Backend, MemoryBackend};
use gentgt::initiator::cbt::{self as wire, CbtClientError, ExtentDescriptor};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::collections::BTreeSet;
use std::sync::Arc;

const BS: u32 = 512;
/// 16 blocks (8 KiB) per extent; the 4 MiB LUN has 512 extents.
const EB: u64 = 16;
const SIZE: u64 = 4 << 20;
const BLOCKS: u64 = SIZE / BS as u64;

const INVALID_FIELD: (u8, u8, u8) = (5, 0x24, 0);
const ACCESS_DENIED: (u8, u8, u8) = (5, 0x20, 0x02);

/// The LUN under test: memory, or a new RBD image.
fn target(rbd: bool) -> TestTarget {
    let backend: Arc<dyn Backend> = match rbd {
        true => common::ceph::cluster().backend(&common::ceph::unique_image("cbtwire"), SIZE),
        false => Arc::new(MemoryBackend::new(SIZE)),
    };
    TestTarget::start(
        &[LunSpec::Backend {
            backend,
            block_size: BS,
        }],
        TargetOptions {
            cbt_extent_blocks: Some(EB as u32),
            ..Default::default()
        },
    )
}

async fn login(t: &TestTarget, initiator: &str) -> Session {
    let opts = ConnectOptions::new(t.addr, initiator, Some(&t.name));
    let s = Initiator::connect(&opts).await.unwrap();
    // Consume the power-on unit attention.
    let _ = s.test_unit_ready(0).await;
    s
}

/// Extents covered by a list of descriptors.
fn covered(list: &[ExtentDescriptor]) -> BTreeSet<u64> {
    list.iter()
        .flat_map(|x| (x.lba / EB)..(x.lba + u64::from(x.blocks)).div_ceil(EB))
        .collect()
}

/// Guarantee 1: every extent in `written` is listed since `g`.
async fn assert_listed(s: &Session, g: u64, written: &BTreeSet<u64>) -> BTreeSet<u64> {
    let list = s.cbt_all_changes(0, g, 0).await.unwrap();
    let got = covered(&list);
    let missing: Vec<_> = written.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "since {g}: extents {missing:?} written but not listed"
    );
    got
}

async fn write(s: &Session, lba: u64, blocks: u64, written: &mut [&mut BTreeSet<u64>]) {
    let data = vec![lba as u8; (blocks * u64::from(BS)) as usize];
    s.write16(0, lba, &data, BS, false).await.unwrap();
    for set in written.iter_mut() {
        set.extend((lba / EB)..(lba + blocks).div_ceil(EB));
    }
}

fn sense(e: CbtClientError) -> Option<(u8, u8, u8)> {
    match e {
        CbtClientError::Initiator(e) => e.sense_code(),
        CbtClientError::Wire(_) => None,
        CbtClientError::ViewLost => Some(wire::VIEW_LOST_SENSE),
    }
}

async fn status_close_changes_with_writes(t: TestTarget) {
    let s = login(&t, INITIATOR).await;
    let r = s.cbt_report(0).await.unwrap();
    assert!(r.flags.tracking_on && !r.flags.persistent);
    assert_eq!(
        (r.extent_blocks, r.block_len, r.capacity_blocks),
        (EB as u32, BS, BLOCKS)
    );
    let vpd = s.cbt_vpd(0).await.unwrap();
    assert_eq!((vpd.uuid, vpd.open_generation), (r.uuid, r.open_generation));

    // Rounds of: close, write a pseudo-random set, check every G so far.
    let mut closes: Vec<(u64, BTreeSet<u64>)> = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for round in 0..6 {
        let c = s.cbt_close(0).await.unwrap();
        assert_eq!(c.uuid, r.uuid);
        closes.push((c.generation, BTreeSet::new()));
        // Between two closes without writes nothing is listed (round 3).
        let writes = if round == 3 { 0 } else { 8 };
        for _ in 0..writes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let lba = seed % (BLOCKS - 40);
            let blocks = 1 + (seed >> 20) % 40;
            let mut sets: Vec<&mut BTreeSet<u64>> = closes.iter_mut().map(|(_, w)| w).collect();
            write(&s, lba, blocks, &mut sets).await;
        }
        for (g, written) in &closes {
            let got = assert_listed(&s, *g, written).await;
            if written.is_empty() {
                assert!(
                    got.is_empty(),
                    "since {g}: nothing was written, got {got:?}"
                );
            }
        }
    }
    // Writes racing a close: whatever finishes after CLOSE returns is
    // listed since that G (guarantee 2 seen from the wire).
    let before = s.cbt_close(0).await.unwrap().generation;
    let mut racing = BTreeSet::new();
    let (close, ()) = tokio::join!(s.cbt_close(0), async {
        for i in 0..16u64 {
            write(&s, i * 3 * EB, 2, &mut [&mut racing]).await;
        }
    });
    let g = close.unwrap().generation;
    assert_listed(&s, before, &racing).await;
    let mut after = BTreeSet::new();
    write(&s, 5 * EB + 1, 3, &mut [&mut after]).await;
    assert_listed(&s, g, &after).await;
    s.logout().await.unwrap();
}

async fn paging_and_short_allocation(t: TestTarget) {
    let s = login(&t, INITIATOR).await;
    let mut written = BTreeSet::new();
    for i in 0..20u64 {
        write(&s, i * 7 * EB, 1, &mut [&mut written]).await;
    }
    let all = s.cbt_all_changes(0, 0, 0).await.unwrap();
    assert_eq!(covered(&all), written);
    // One descriptor per page: the same extents, NEXT LBA always moving.
    let mut at = 0;
    let mut paged = Vec::new();
    loop {
        let p = s.cbt_changes(0, 0, at, 1).await.unwrap();
        assert!(p.descriptors.len() <= 1);
        paged.extend(p.descriptors);
        if p.complete {
            assert_eq!(p.next_lba, BLOCKS);
            break;
        }
        assert!(p.next_lba > at);
        at = p.next_lba;
    }
    assert_eq!(paged, all);
    // A reply cut below the header: data cut, overflow residual reported.
    let cdb = wire::get_changed_extents_cdb(0, 0).unwrap();
    let out = s.scsi(0, &cdb, None, 20).await.unwrap();
    assert_eq!((out.status, out.data.len()), (0, 20));
    assert_eq!(out.residual, Some((true, 28)));
    // Room for 2.5 descriptors: exactly two whole ones, no residual.
    let out = s.scsi(0, &cdb, None, 48 + 60).await.unwrap();
    assert_eq!(out.data.len(), 48 + 48);
    let p = wire::parse_changes(&out.data, 0, 0).unwrap();
    assert_eq!(p.descriptors[..], all[..2]);
    // A CLOSE cut to 4 bytes still closes, once.
    let open = s.cbt_report(0).await.unwrap().open_generation;
    let out = s
        .scsi(0, &wire::close_generation_cdb(), None, 4)
        .await
        .unwrap();
    assert_eq!(
        (out.status, out.data.len(), out.residual),
        (0, 4, Some((true, 28)))
    );
    assert_eq!(s.cbt_report(0).await.unwrap().open_generation, open + 1);
    s.logout().await.unwrap();
}

async fn bad_fields_and_access(t: TestTarget) {
    let s = login(&t, INITIATOR).await;
    let open = s.cbt_report(0).await.unwrap().open_generation;
    let raw = |cdb: [u8; 16]| {
        let s = &s;
        async move { s.scsi(0, &cdb, None, 4096).await.unwrap().sense_code() }
    };
    let mut c = wire::close_generation_cdb();
    c[8] = 0x80;
    assert_eq!(raw(c).await, Some(INVALID_FIELD));
    let mut c = wire::report_tracking_cdb();
    c[1] = 0x06;
    assert_eq!(raw(c).await, Some(INVALID_FIELD));
    let mut c = wire::report_tracking_cdb();
    c[1] |= 0x40;
    assert_eq!(raw(c).await, Some(INVALID_FIELD));
    let c = wire::get_changed_extents_cdb(open, 0).unwrap();
    assert_eq!(raw(c).await, Some(INVALID_FIELD));
    let c = wire::get_changed_extents_cdb(0, BLOCKS).unwrap();
    assert_eq!(raw(c).await, Some(INVALID_FIELD));
    assert_eq!(
        s.cbt_report(0).await.unwrap().open_generation,
        open,
        "no bad CDB closed a generation"
    );

    // An initiator that may log in but not use CBT.
    let other = login(&t, "iqn.2026-11.dev.gentgt:intruder").await;
    let e = other.cbt_close(0).await.unwrap_err();
    assert!(e.describe().contains("ACCESS DENIED"), "{}", e.describe());
    assert_eq!(sense(e), Some(ACCESS_DENIED));
    let mut c = wire::close_generation_cdb();
    c[3] = 1; // access is checked before the CDB fields
    let out = other.scsi(0, &c, None, 32).await.unwrap();
    assert_eq!(out.sense_code(), Some(ACCESS_DENIED));
    // Discovery is visible to it all the same.
    assert!(other.cbt_vpd(0).await.unwrap().flags.tracking_on);
    assert_eq!(s.cbt_report(0).await.unwrap().open_generation, open);
    other.logout().await.unwrap();
    s.logout().await.unwrap();
}

/// Each contract test on a memory LUN and on an RBD LUN: tracking sits
/// above the backend, so the wire answers must be the same.
macro_rules! on_memory_and_rbd {
    ($($name:ident),*) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::target(false)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rbd() {
                super::$name(super::target(true)).await
            }
        }
    )* };
}

on_memory_and_rbd!(
    status_close_changes_with_writes,
    paging_and_short_allocation,
    bad_fields_and_access
);
