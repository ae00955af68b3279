//! A crash with a view open loses only the view (issue 12): the real
//! binary with a persistent file LUN, a view open and extents kept, is
//! killed with SIGKILL and restarted on the same data directory. After the
//! restart: the view is gone (view LUN NOT READY, REPORT TRACKING without
//! VIEW OPEN), nothing of its store is left behind, the CBT guarantees hold
//! (same UUID, RECOVERED, open generation above everything handed out, the
//! extents written since the last close listed), the acknowledged data is
//! there, and a new view opens and reads the LUN as it is.
//!
//! Replies are decoded by hand from the spec's byte layout, so the test
//! checks the contract rather than the project's client.

mod common;

use common::ServeProcess;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const TARGET: &str = "iqn.2026-11.dev.gentgt:viewcrash";
const BACKUP: &str = "iqn.2026-11.dev.gentgt:backup";
const BS: u32 = 512;
const EB: u64 = 8; // 4 KiB extents
const EXTENT_BYTES: usize = (EB * BS as u64) as usize;
const EXTENTS: u64 = 1024; // 4 MiB
const VIEW_LUN: u64 = 128;
const NOT_READY: (u8, u8, u8) = (0x02, 0x04, 0x00);

fn config() -> String {
    format!(
        r#"listen = ["127.0.0.1:0"]

[[target]]
name = "{TARGET}"

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "4MiB"
block_size = {BS}
tracking = "persistent"
extent_size = "4KiB"
"#
    )
}

fn start(dir: &Path) -> ServeProcess {
    ServeProcess::start_in(dir, &config())
}

async fn login(addr: SocketAddr) -> Session {
    let mut o = ConnectOptions::new(addr, BACKUP, Some(TARGET));
    o.timeout = Duration::from_secs(5);
    let s = Initiator::connect(&o).await.unwrap();
    let _ = s.test_unit_ready(0).await; // power-on unit attentions
    let _ = s.test_unit_ready(VIEW_LUN).await;
    s
}

fn c0(sa: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = sa;
    c
}

async fn good(s: &Session, lun: u64, cdb: &[u8], alloc: u32) -> Vec<u8> {
    let r = s.scsi(lun, cdb, None, alloc).await.unwrap();
    assert_eq!(r.status, 0, "cdb {cdb:02x?}: {:?}", r.sense_code());
    r.data
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(d[i..i + 8].try_into().unwrap())
}

/// (flags, uuid, open generation, view generation) of REPORT TRACKING.
async fn report(s: &Session) -> (u8, [u8; 16], u64, u64) {
    let d = good(s, 0, &c0(0), 96).await;
    assert_eq!(d[0], 2, "contract version 2");
    (
        d[1],
        d[24..40].try_into().unwrap(),
        u64_at(&d, 40),
        u64_at(&d, 60),
    )
}

async fn close(s: &Session) -> u64 {
    u64_at(&good(s, 0, &c0(1), 32).await, 16)
}

async fn open_view(s: &Session) -> (u64, u64) {
    let d = good(s, 0, &c0(6), 32).await;
    assert_eq!(u16::from_be_bytes([d[20], d[21]]) as u64, VIEW_LUN);
    (u64_at(&d, 0), u64_at(&d, 8))
}

/// Extents listed by GET CHANGED EXTENTS since `g` (every page).
async fn changed(s: &Session, since: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut lba = 0u64;
    loop {
        let mut c = c0(2);
        c[2..10].copy_from_slice(&since.to_be_bytes());
        c[10..15].copy_from_slice(&lba.to_be_bytes()[3..]);
        let d = good(s, 0, &c, 48 + 24 * 64).await;
        let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / 24;
        for i in 0..n {
            let at = 48 + 24 * i;
            let first = u64_at(&d, at) / EB;
            let blocks = u32::from_be_bytes(d[at + 8..at + 12].try_into().unwrap()) as u64;
            out.extend(first..(u64_at(&d, at) + blocks).div_ceil(EB));
        }
        if d[4] & 1 == 1 {
            return out;
        }
        lba = u64_at(&d, 16);
    }
}

fn extent(v: u8) -> Vec<u8> {
    vec![v; EXTENT_BYTES]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_a_view_open_loses_only_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let s = login(server.addr).await;
    for e in 0..EXTENTS {
        s.write16(0, e * EB, &extent(1), BS, false).await.unwrap();
    }
    let g1 = close(&s).await;
    // Before the view: extents 10..20 change.
    for e in 10..20 {
        s.write16(0, e * EB, &extent(2), BS, false).await.unwrap();
    }
    let (_token, gv) = open_view(&s).await;
    assert!(gv > g1);
    // After it: extents 15..40 change (kept first), checked through the view.
    for e in 15..40 {
        s.write16(0, e * EB, &extent(3), BS, true).await.unwrap();
    }
    let view = good(
        &s,
        VIEW_LUN,
        &read16(15 * EB, 30 * EB as u32),
        30 * EXTENT_BYTES as u32,
    )
    .await;
    assert!(view[..5 * EXTENT_BYTES].iter().all(|&b| b == 2));
    assert!(view[5 * EXTENT_BYTES..].iter().all(|&b| b == 1));
    let (flags, uuid, open, _) = report(&s).await;
    assert_eq!(flags & 0x10, 0x10, "VIEW OPEN before the crash");
    let handed_out = open;

    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    drop(s);
    drop(server);

    let server = start(dir.path());
    let s = login(server.addr).await;
    let (flags, uuid2, open2, view_gen) = report(&s).await;
    assert_eq!(uuid2, uuid, "a crash keeps the tracking UUID");
    assert_eq!(flags & 0x08, 0x08, "RECOVERED");
    assert_eq!(flags & 0x30, 0, "no view after a restart");
    assert_eq!(view_gen, 0);
    assert!(
        open2 > handed_out,
        "open generation {open2} <= {handed_out}"
    );
    // The view LUN: NOT READY until a new view opens.
    let r = s.scsi(VIEW_LUN, &[0; 6], None, 0).await.unwrap();
    assert_eq!((r.status, r.sense_code()), (2, Some(NOT_READY)));
    // The incremental since g1 still lists every extent changed since.
    let listed = changed(&s, g1).await;
    for e in 10..40 {
        assert!(
            listed.contains(&e),
            "extent {e} changed after G{g1} but not listed"
        );
    }
    // Nothing of the view's store was left in the tracking directory.
    for f in std::fs::read_dir(dir.path().join("data/lun0.img.cbt")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("view"), "left behind: {name}");
    }
    // Acknowledged data is there, and a new view reads the LUN as it is.
    let now = good(&s, 0, &read16(0, 40 * EB as u32), 40 * EXTENT_BYTES as u32).await;
    let (_, _) = open_view(&s).await;
    let view = good(
        &s,
        VIEW_LUN,
        &read16(0, 40 * EB as u32),
        40 * EXTENT_BYTES as u32,
    )
    .await;
    assert!(view == now);
    for (e, v) in [(0usize, 1u8), (12, 2), (30, 3)] {
        assert!(
            now[e * EXTENT_BYTES..(e + 1) * EXTENT_BYTES]
                .iter()
                .all(|&b| b == v)
        );
    }
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
