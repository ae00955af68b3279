//! An RBD LUN whose only OSD stops answering (SIGSTOP) mid-I/O behaves
//! like a file LUN on a hung disk (src/server/hung.rs): the session keeps
//! answering, other LUNs keep working, the LUN is fenced (NOT READY)
//! once the call is past `hung_io_timeout`, and when the OSD comes back
//! the write completes, the LUN is ready again and holds the data.
//!
//! Its own test binary: stopping the OSD of the shared cluster would
//! stall every other RBD test running beside it.

mod common;

use common::ceph::{cluster, unique_image};
use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u32 = 512;
/// Bound on answers that must come (generous: a loaded CI machine).
const SOON: Duration = Duration::from_secs(10);
const NOT_READY_HUNG: (u8, u8, u8) = (0x02, 0x04, 0x00);
const RBD_LUN: u64 = 0;
const MEMORY_LUN: u64 = 1;

/// The OSD process, continued when dropped so a failing test never
/// leaves the cluster stopped.
struct StoppedOsd(i32);

impl StoppedOsd {
    fn stop() -> StoppedOsd {
        let pid_file = cluster().dir.join("run/osd.0.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signalling a process; no memory involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        StoppedOsd(pid)
    }
}

impl Drop for StoppedOsd {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

async fn login(t: &TestTarget) -> Session {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(&t.name));
    o.timeout = Duration::from_secs(60);
    let s = Initiator::connect(&o).await.expect("login");
    for lun in [RBD_LUN, MEMORY_LUN] {
        let _ = s.test_unit_ready(lun).await; // power-on unit attentions
    }
    s
}

fn sense_of<T: std::fmt::Debug>(r: gentgt::initiator::Result<T>) -> (u8, u8, u8) {
    r.expect_err("command should have failed")
        .sense_code()
        .expect("no sense data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_osd_fences_the_lun_and_the_write_lands_when_it_returns() {
    let ceph = cluster();
    let image = unique_image("osdstop");
    let toml = format!(
        "hung_io_timeout_ms = 1000\nabort_timeout_ms = 500\n\
         [[target]]\nname = \"iqn.2026-11.dev.gentgt:rbd\"\n\
         [[target.lun]]\nid = 0\n{}create = true\nsize = 8388608\n\
         [[target.lun]]\nid = 1\nbackend = \"memory\"\nsize = 1048576\n",
        ceph.lun_keys(&image)
    );
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::from_toml(&toml, dir.path(), false);
    let s = Arc::new(login(&t).await);
    let old = vec![0x11u8; 8 * BS as usize];
    s.write16(RBD_LUN, 0, &old, BS, true).await.unwrap();

    let osd = StoppedOsd::stop();
    let new = vec![0x22u8; 8 * BS as usize];
    let writer = {
        let (s, new) = (s.clone(), new.clone());
        tokio::spawn(async move { s.write16(RBD_LUN, 0, &new, BS, true).await })
    };
    // Past hung_io_timeout the LUN is fenced: commands fail at once.
    let t0 = Instant::now();
    loop {
        let tur = tokio::time::timeout(SOON, s.test_unit_ready(RBD_LUN)).await;
        match tur.expect("TEST UNIT READY hung") {
            Err(e) if e.sense_code() == Some(NOT_READY_HUNG) => break,
            other => assert!(t0.elapsed() < SOON, "never fenced: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = tokio::time::timeout(SOON, s.read16(RBD_LUN, 0, 8, BS)).await;
    assert_eq!(
        sense_of(read.expect("READ to a fenced LUN hung")),
        NOT_READY_HUNG
    );
    // The session is not stuck: pings and the other LUN answer.
    tokio::time::timeout(SOON, s.nop())
        .await
        .expect("NOP hung")
        .unwrap();
    let other = vec![0x33u8; 4 * BS as usize];
    s.write16(MEMORY_LUN, 8, &other, BS, false).await.unwrap();
    assert_eq!(s.read16(MEMORY_LUN, 8, 4, BS).await.unwrap(), other);
    assert!(
        !writer.is_finished(),
        "the write finished with the OSD stopped"
    );

    drop(osd);
    let done = tokio::time::timeout(Duration::from_secs(60), writer).await;
    done.expect("the write never completed after the OSD came back")
        .unwrap()
        .expect("the write failed after the OSD came back");
    let t0 = Instant::now();
    while s.test_unit_ready(RBD_LUN).await.is_err() {
        assert!(t0.elapsed() < SOON, "the LUN never became ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.read16(RBD_LUN, 0, 8, BS).await.unwrap(), new);
    assert!(
        ceph.export(&image)[..new.len()] == new[..],
        "the write is in the image"
    );
}
