//! Out of space below a thin LUN, over iSCSI: a 64 MiB file LUN (with
//! persistent CBT, the default) on a real 8 MiB tmpfs. Writes past the
//! space get DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT
//! (07h/27h/07h), never MEDIUM ERROR; the soft threshold raises THIN
//! PROVISIONING SOFT THRESHOLD REACHED (06h/38h/07h) once per I_T nexus
//! and the provisioning VPD and log pages show it; reads keep working,
//! CBT lists the failed write, and once the tmpfs grows the same write
//! succeeds without a restart. A bystander session verifies I/O on a
//! memory LUN all along.

mod common;

use common::bystander::{Bystander, sense_information, settle, write16_cdb};
use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHUNK_BLOCKS: u32 = 2048; // 1 MiB of 512-byte blocks
const SPACE_FULL: (u8, u8, u8) = (0x07, 0x27, 0x07);
const SOFT_THRESHOLD: (u8, u8, u8) = (0x06, 0x38, 0x07);

/// A real tmpfs mounted for the test (root needed; no skipping), lazily
/// unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn chunk(i: u64) -> Vec<u8> {
    vec![(i as u8).wrapping_add(1); CHUNK_BLOCKS as usize * 512]
}

async fn write_chunk(s: &Session, i: u64, fua: bool) -> gentgt::initiator::ScsiOutcome {
    let cdb = write16_cdb(i * u64::from(CHUNK_BLOCKS), CHUNK_BLOCKS, fua);
    s.scsi(0, &cdb, Some(&chunk(i)), 0).await.unwrap()
}

/// LOG SENSE, Logical Block Provisioning page: (available, used) counts.
async fn provisioning_counts(s: &Session) -> (u64, u64) {
    let cdb = [0x4d, 0, 0x40 | 0x0c, 0, 0, 0, 0, 0x01, 0x00, 0];
    let r = s.scsi(0, &cdb, None, 256).await.unwrap().good().unwrap();
    let d = r.data;
    assert_eq!(d[0] & 0x3f, 0x0c, "page code");
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let (mut avail, mut used) = (None, None);
    let mut at = 4;
    while at + 4 <= 4 + len {
        let code = u16::from_be_bytes([d[at], d[at + 1]]);
        let n = u64::from(u32::from_be_bytes(d[at + 4..at + 8].try_into().unwrap()));
        match code {
            1 => avail = Some(n),
            2 => used = Some(n),
            _ => {}
        }
        at += 4 + d[at + 3] as usize;
    }
    (avail.expect("available count"), used.expect("used count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_space_is_data_protect_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let fs = Tmpfs::mount(&mnt, "8m");
    let toml = format!(
        r#"
[[target]]
name = "{TARGET}"
[[target.lun]]
id = 0
backend = "file"
path = "{}"
size = "64MiB"
soft_threshold = 50
views = false
cbt_initiators = ["{INITIATOR}"]
[[target.lun]]
id = 1
backend = "memory"
size = "16MiB"
tracking = "off"
"#,
        mnt.join("lun0.img").display()
    );
    let t = TestTarget::from_toml(&toml, &tmp.path().join("data"), false);
    let bystander = Bystander::start(t.addr, TARGET, 1).await;
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(TARGET)))
        .await
        .unwrap();
    settle(&s, 0).await;
    // A third nexus that only watches LUN 0 for the unit attention.
    let observer_name = "iqn.2026-11.dev.gentgt:observer";
    let observer = Initiator::connect(&ConnectOptions::new(t.addr, observer_name, Some(TARGET)))
        .await
        .unwrap();
    settle(&observer, 0).await;

    // Fill: 1 MiB writes until the tmpfs refuses one.
    let (mut written, mut attentions, mut failed) = (Vec::new(), 0, None);
    let mut i = 0u64;
    while i < 64 {
        let r = write_chunk(&s, i, false).await;
        match (r.status, r.sense_code()) {
            (0, _) => {
                written.push(i);
                i += 1;
            }
            // Reported instead of running the write: send it again.
            (2, Some(SOFT_THRESHOLD)) => attentions += 1,
            (2, Some(SPACE_FULL)) => {
                let info = sense_information(r.sense.as_deref().unwrap());
                assert_eq!(info, Some(i * u64::from(CHUNK_BLOCKS)), "INFORMATION");
                failed = Some(i);
                break;
            }
            other => panic!("write {i}: unexpected outcome {other:?}"),
        }
    }
    let failed = failed.expect("an 8 MiB tmpfs took 64 MiB");
    assert!(written.len() >= 3, "only {} MiB fitted", written.len());
    assert_eq!(
        attentions, 1,
        "soft threshold UA to the writer exactly once"
    );
    bystander.progresses().await;

    // Not a disk fault: FUA writes get the same answer, the cache flushes.
    let r = write_chunk(&s, failed, true).await;
    assert_eq!(r.sense_code(), Some(SPACE_FULL), "FUA write when full");
    s.sync_cache(0).await.expect("SYNCHRONIZE CACHE while full");
    // Reads keep working.
    for &w in &written {
        let back = s
            .read16(0, w * u64::from(CHUNK_BLOCKS), CHUNK_BLOCKS, 512)
            .await
            .unwrap();
        assert!(back == chunk(w), "chunk {w} reads back other data");
    }

    // The other nexus gets the threshold UA once, then nothing.
    let r = observer.scsi(0, &[0; 6], None, 0).await.unwrap();
    assert_eq!(r.sense_code(), Some(SOFT_THRESHOLD), "observer's UA");
    observer
        .test_unit_ready(0)
        .await
        .expect("UA reported twice");

    // VPD B2h: threshold exponent and percentage; log page 0Ch counts in
    // 2^exponent-block units.
    let vpd = s.inquiry_vpd(0, 0xb2).await.unwrap();
    let exponent = vpd[4];
    assert!(exponent >= 1, "THRESHOLD EXPONENT {exponent}");
    assert_eq!(vpd[7], 50, "THRESHOLD PERCENTAGE");
    let unit = 512u64 << exponent;
    let (avail, used) = provisioning_counts(&s).await;
    assert!(
        used * unit >= written.len() as u64 * (1 << 20),
        "used {used} units of {unit} bytes for {} MiB written",
        written.len()
    );
    assert!(avail * unit < 1 << 20, "available {avail} units when full");

    // CBT over-reports at worst: the failed write is listed.
    let lba = failed * u64::from(CHUNK_BLOCKS);
    let changes = s.cbt_all_changes(0, 0, 0).await.unwrap();
    let covered: u64 = changes
        .iter()
        .map(|d| {
            let (a, b) = (d.lba, d.lba + u64::from(d.blocks));
            b.min(lba + u64::from(CHUNK_BLOCKS))
                .saturating_sub(a.max(lba))
        })
        .sum();
    assert_eq!(
        covered,
        u64::from(CHUNK_BLOCKS),
        "failed write not listed: {changes:?}"
    );

    // Space returns: the same write succeeds, no restart.
    fs.resize("32m");
    let r = write_chunk(&s, failed, true).await;
    assert_eq!(
        (r.status, r.sense_code()),
        (0, None),
        "write after space returned"
    );
    let back = s.read16(0, lba, CHUNK_BLOCKS, 512).await.unwrap();
    assert!(
        back == chunk(failed),
        "recovered write reads back other data"
    );
    s.sync_cache(0).await.unwrap();
    bystander.progresses().await;
    assert!(bystander.finish().await > 0);
    s.logout().await.unwrap();
    observer.logout().await.unwrap();
    t.stop();
}
