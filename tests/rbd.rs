//! RBD LUNs against a real one-node Ceph cluster (tests/common/ceph.rs):
//! data through iSCSI lands in the image byte for byte, UNMAP, WRITE
//! SAME, COMPARE AND WRITE, SYNCHRONIZE CACHE and GET LBA STATUS do what
//! a file LUN does, two targets on one image are one disk to multipath,
//! and every misconfiguration is a clear start-up error.

mod common;

use common::bystander::sense_information;
use common::ceph::{Ceph, cluster, unique_image};
use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::process::{Command, Stdio};
use std::time::Duration;

const BS: usize = 512;
const MIB: u64 = 1 << 20;
/// librbd's default object size: ranges across it take other code paths.
const OBJECT: u64 = 4 * MIB;
const MISCOMPARE: (u8, u8, u8) = (0x0e, 0x1d, 0x00);

const NAME: &str = "iqn.2026-11.dev.gentgt:rbd";

/// Configuration of one target with LUN 0 on `rbd/IMAGE` (`extra` keys
/// appended to the LUN).
fn toml(ceph: &Ceph, image: &str, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{NAME}\"\n[[target.lun]]\nid = 0\n{}{extra}\n",
        ceph.lun_keys(image)
    )
}

/// A target on a new image of `size` bytes (created by the target).
fn target_on_new(image: &str, size: u64) -> (TestTarget, tempfile::TempDir) {
    let ceph = cluster();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("create = true\nsize = {size}\n");
    let t = TestTarget::from_toml(&toml(ceph, image, &extra), dir.path(), false);
    (t, dir)
}

async fn login(t: &TestTarget) -> Session {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(&t.name));
    o.timeout = Duration::from_secs(30);
    let s = Initiator::connect(&o).await.expect("login");
    let _ = s.test_unit_ready(0).await; // the power-on unit attention
    s
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn at(lba: u64) -> usize {
    lba as usize * BS
}

/// WRITE(16) of `data` from `lba`, in transfers the target takes.
async fn write_all(s: &Session, lba: u64, data: &[u8]) {
    for (i, piece) in data.chunks(MIB as usize).enumerate() {
        let l = lba + (i as u64 * MIB) / BS as u64;
        s.write16(0, l, piece, BS as u32, false).await.unwrap();
    }
}

/// READ(16) of `blocks` from `lba`, in transfers the target takes.
async fn read_all(s: &Session, lba: u64, blocks: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let per = MIB / BS as u64;
    let mut l = lba;
    while l < lba + blocks {
        let n = per.min(lba + blocks - l);
        out.extend(s.read16(0, l, n as u32, BS as u32).await.unwrap());
        l += n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_iscsi_land_in_the_image_byte_for_byte() {
    let image = unique_image("rw");
    let (t, _dir) = target_on_new(&image, 16 * MIB);
    let s = login(&t).await;
    assert_eq!(
        s.read_capacity16(0).await.unwrap(),
        (16 * MIB / BS as u64, BS as u32)
    );
    let mut want = vec![0u8; 16 * MIB as usize];
    // At the start, across the first object boundary, and the last block.
    let writes = [
        (0u64, 64 * 1024usize),
        (OBJECT / BS as u64 - 8, 8 * 1024),
        (16 * MIB / BS as u64 - 1, BS),
    ];
    for (i, (lba, len)) in writes.into_iter().enumerate() {
        let data = pattern(len, i as u8 + 1);
        s.write16(0, lba, &data, BS as u32, i == 1).await.unwrap();
        want[at(lba)..at(lba) + len].copy_from_slice(&data);
    }
    s.sync_cache(0).await.unwrap();
    for (lba, len) in writes {
        let got = s
            .read16(0, lba, (len / BS) as u32, BS as u32)
            .await
            .unwrap();
        assert_eq!(got, want[at(lba)..at(lba) + len], "read back at LBA {lba}");
    }
    // What librbd itself reads, not only what the target says.
    assert!(
        cluster().export(&image) == want,
        "rbd export differs from what was written"
    );
}

#[test]
fn qemu_img_copies_in_and_out_byte_identical() {
    require_tool("qemu-img");
    let image = unique_image("qemu");
    let (t, dir) = target_on_new(&image, 8 * MIB);
    let src = dir.path().join("src.raw");
    let data = pattern(8 * MIB as usize, 7);
    std::fs::write(&src, &data).unwrap();
    let url = t.url(0);
    let (ok, _, err) = run(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&url),
        120,
    );
    assert!(ok, "qemu-img convert in: {err}");
    assert!(
        cluster().export(&image) == data,
        "image differs from the file copied in"
    );
    let back = dir.path().join("back.raw");
    let (ok, _, err) = run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&url)
            .arg(&back),
        120,
    );
    assert!(ok, "qemu-img convert out: {err}");
    assert!(std::fs::read(&back).unwrap() == data, "copy out differs");
}

fn unmap_cdb(param_len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    d[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    for (lba, n) in ranges {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmap_of_unaligned_ranges_reads_back_zeros() {
    let image = unique_image("unmap");
    let (t, _dir) = target_on_new(&image, 16 * MIB);
    let s = login(&t).await;
    let mut want = pattern(12 * MIB as usize, 3);
    write_all(&s, 0, &want).await;
    // Neither range is object-aligned: a plain discard would leave the
    // old data readable in them.
    let ranges = [(3u64, 5u32), (OBJECT / BS as u64 - 100, 300)];
    let list = unmap_list(&ranges);
    let r = s
        .scsi(0, &unmap_cdb(list.len() as u16), Some(&list), 0)
        .await
        .unwrap();
    assert_eq!(r.status, 0, "UNMAP: {r:?}");
    for (lba, n) in ranges {
        want[at(lba)..at(lba + u64::from(n))].fill(0);
    }
    let got = read_all(&s, 0, (want.len() / BS) as u64).await;
    assert!(
        got == want,
        "UNMAP: zeros exactly in the ranges, data around them"
    );
    assert!(
        cluster().export(&image)[..want.len()] == want[..],
        "image after UNMAP"
    );
}

fn caw_cdb(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_write_miscompare_reports_the_offset_in_the_range() {
    let image = unique_image("caw");
    let (t, _dir) = target_on_new(&image, 16 * MIB);
    let s = login(&t).await;
    // (LBA, blocks, differing byte): one block is librbd's own
    // compare-and-write (Ceph 16 takes one 512-byte sector); more blocks,
    // and a range across an object boundary, the device server compares.
    let cases = [
        (10_000u64, 1u8, 345usize),
        (10_100, 4, 1234),
        (OBJECT / BS as u64 - 2, 4, 1234),
    ];
    for (lba, blocks, diff) in cases {
        let len = usize::from(blocks) * BS;
        let old = pattern(len, lba as u8);
        s.write16(0, lba, &old, BS as u32, false).await.unwrap();
        let new = pattern(len, 99);
        let mut wrong = old.clone();
        wrong[diff] ^= 0xff;
        let r = s
            .scsi(
                0,
                &caw_cdb(lba, blocks),
                Some(&[wrong, new.clone()].concat()),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 2, "CAW with a wrong compare half at {lba}");
        assert_eq!(r.sense_code(), Some(MISCOMPARE));
        assert_eq!(
            sense_information(r.sense.as_deref().unwrap()),
            Some(diff as u64),
            "offset at {lba}"
        );
        let now = s.read16(0, lba, blocks.into(), BS as u32).await.unwrap();
        assert_eq!(now, old, "a miscompare writes nothing ({lba})");
        let r = s
            .scsi(
                0,
                &caw_cdb(lba, blocks),
                Some(&[old, new.clone()].concat()),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 0, "CAW that matches at {lba}: {r:?}");
        assert_eq!(
            s.read16(0, lba, blocks.into(), BS as u32).await.unwrap(),
            new
        );
        let img = cluster().export(&image);
        assert_eq!(
            img[at(lba)..at(lba) + len],
            new[..],
            "CAW data in the image ({lba})"
        );
    }
}

fn write_same16(lba: u64, blocks: u32, unmap: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x93;
    c[1] = if unmap { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_same_repeats_the_block_and_unmaps_to_zeros() {
    let image = unique_image("ws");
    let (t, _dir) = target_on_new(&image, 16 * MIB);
    let s = login(&t).await;
    let block = pattern(BS, 42);
    // 3 MiB across the first object boundary.
    let (lba, blocks) = (OBJECT / BS as u64 - 2048, 6144u32);
    let r = s
        .scsi(0, &write_same16(lba, blocks, false), Some(&block), 0)
        .await
        .unwrap();
    assert_eq!(r.status, 0, "WRITE SAME: {r:?}");
    let got = s.read16(0, lba, blocks, BS as u32).await.unwrap();
    assert!(
        got.chunks(BS).all(|b| b == block),
        "every block is the pattern"
    );
    let img = cluster().export(&image);
    assert!(
        img[at(lba)..at(lba + u64::from(blocks))]
            .chunks(BS)
            .all(|b| b == block)
    );
    assert!(
        img[..at(lba)].iter().all(|&b| b == 0),
        "nothing written before the range"
    );
    // With UNMAP, part of the same range: zeros.
    let r = s
        .scsi(0, &write_same16(lba + 7, 1000, true), Some(&[0u8; BS]), 0)
        .await
        .unwrap();
    assert_eq!(r.status, 0, "WRITE SAME UNMAP: {r:?}");
    let got = s.read16(0, lba, 1100, BS as u32).await.unwrap();
    for (i, b) in got.chunks(BS).enumerate() {
        let zero = (7..1007).contains(&i);
        assert!(
            if zero {
                b.iter().all(|&x| x == 0)
            } else {
                b == block
            },
            "block {i}"
        );
    }
}

/// GET LBA STATUS from `lba`: (lba, blocks, deallocated?) descriptors.
async fn lba_status(s: &Session, lba: u64) -> Vec<(u64, u32, bool)> {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&4096u32.to_be_bytes());
    let d = s
        .scsi(0, &c, None, 4096)
        .await
        .unwrap()
        .good()
        .unwrap()
        .data;
    d[8..]
        .chunks_exact(16)
        .map(|x| {
            let lba = u64::from_be_bytes(x[0..8].try_into().unwrap());
            let n = u32::from_be_bytes(x[8..12].try_into().unwrap());
            (lba, n, x[12] & 0x0f == 1)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lba_status_follows_what_was_written() {
    let image = unique_image("lbas");
    let size = 16 * MIB;
    let (t, _dir) = target_on_new(&image, size);
    let s = login(&t).await;
    let blocks = size / BS as u64;
    assert_eq!(
        lba_status(&s, 0).await,
        vec![(0, blocks as u32, true)],
        "a fresh image"
    );
    // 64 KiB in the second object.
    let lba = OBJECT / BS as u64 + 1024;
    s.write16(0, lba, &pattern(64 * 1024, 1), BS as u32, false)
        .await
        .unwrap();
    let map = lba_status(&s, 0).await;
    let mapped: Vec<_> = map.iter().filter(|d| !d.2).collect();
    assert!(!mapped.is_empty(), "the write is mapped: {map:?}");
    for (l, n, _) in &mapped {
        assert!(
            *l <= lba && l + u64::from(*n) >= lba + 128,
            "mapped run covers the write: {map:?}"
        );
        assert!(
            *l >= OBJECT / BS as u64 && l + u64::from(*n) <= 2 * OBJECT / BS as u64,
            "only that object: {map:?}"
        );
    }
    let covered: u64 = map.iter().map(|d| u64::from(d.1)).sum();
    assert_eq!(covered, blocks, "descriptors cover the LUN: {map:?}");
    assert!(
        map[0].2 && map.last().unwrap().2,
        "unwritten ends are deallocated: {map:?}"
    );
}

/// (serial, device identification page) of LUN 0.
async fn identity_of(t: &TestTarget) -> (Vec<u8>, Vec<u8>) {
    let s = login(t).await;
    let serial = s.inquiry_vpd(0, 0x80).await.unwrap();
    let ids = s.inquiry_vpd(0, 0x83).await.unwrap();
    (serial[4..].to_vec(), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_targets_on_one_image_report_one_disk() {
    let ceph = cluster();
    let image = unique_image("ident");
    ceph.create(&image, 8 * MIB);
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = TestTarget::from_toml(&toml(ceph, &image, ""), d1.path(), false);
    // Another gateway: another process state, another data directory.
    let b = TestTarget::from_toml(&toml(ceph, &image, ""), d2.path(), false);
    let (ida, idb) = (identity_of(&a).await, identity_of(&b).await);
    assert!(!ida.0.is_empty());
    assert_eq!(ida, idb, "serial and designators are the image's");
    let other = unique_image("ident");
    ceph.create(&other, 8 * MIB);
    let c = TestTarget::from_toml(&toml(ceph, &other, ""), d3.path(), false);
    let idc = identity_of(&c).await;
    assert_ne!(ida.0, idc.0, "another image is another disk");
    assert_ne!(ida.1, idc.1);
    // Data written through one gateway is read through the other.
    let (sa, sb) = (login(&a).await, login(&b).await);
    let data = pattern(8 * BS, 5);
    sa.write16(0, 100, &data, BS as u32, true).await.unwrap();
    assert_eq!(sb.read16(0, 100, 8, BS as u32).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_makes_a_missing_image_of_the_configured_size() {
    let ceph = cluster();
    let image = unique_image("create");
    assert!(!ceph.exists(&image));
    let (t, _dir) = target_on_new(&image, 12 * MIB);
    let info = ceph.rbd_ok(&["info", "--format", "json", &format!("rbd/{image}")]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["size"], 12 * MIB, "{info}");
    let s = login(&t).await;
    assert_eq!(s.read_capacity16(0).await.unwrap().0, 12 * MIB / BS as u64);
    drop(s);
    t.stop();
    // Started again with create = true: the same image, not a new one.
    let (t, _dir) = target_on_new(&image, 12 * MIB);
    let again: serde_json::Value =
        serde_json::from_str(&ceph.rbd_ok(&["info", "--format", "json", &format!("rbd/{image}")]))
            .unwrap();
    assert_eq!(again["id"], info["id"]);
    t.stop();
}

/// The start-up error of `toml`, built as `gentgt serve` builds it.
fn build_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = match gentgt::config::Config::from_toml(toml, "test") {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match gentgt::config::build_registry(&cfg, dir.path()) {
        Ok(_) => panic!("built: {toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn misconfigured_rbd_luns_are_clear_start_up_errors() {
    let ceph = cluster();
    let missing = unique_image("missing");
    let cases = [
        (
            toml(ceph, &missing, ""),
            vec!["not found", &missing, "create = true"],
        ),
        (
            toml(ceph, &missing, "").replace("pool = \"rbd\"", "pool = \"nopool\""),
            vec!["cannot open pool \"nopool\""],
        ),
        (
            toml(ceph, &missing, "create = true\n"),
            vec!["create = true needs size"],
        ),
        (
            toml(ceph, &missing, "size = 4096\n").replace("image = ", "imag = "),
            vec!["imag"],
        ),
        (
            toml(ceph, &missing, "tracking = \"persistent\"\n"),
            vec!["persistent", "RBD"],
        ),
        (
            toml(ceph, &missing, "")
                .replace(&ceph.conf.display().to_string(), "/nonexistent/ceph.conf"),
            vec!["/nonexistent/ceph.conf"],
        ),
    ];
    for (text, needles) in cases {
        let e = build_error(&text);
        for n in needles {
            assert!(e.contains(n), "error for\n{text}\nlacks {n:?}: {e}");
        }
    }
    assert!(!ceph.exists(&missing), "no image created by a failed start");
    // An existing image whose size differs from the configured one.
    let image = unique_image("size");
    ceph.create(&image, 8 * MIB);
    let e = build_error(&toml(ceph, &image, &format!("size = {}\n", 4 * MIB)));
    assert!(e.contains("differs from the image's"), "{e}");
}

#[test]
fn without_librbd_an_rbd_lun_fails_to_start_naming_the_library() {
    let ceph = cluster();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gentgt.toml");
    std::fs::write(
        &cfg,
        toml(
            ceph,
            &unique_image("nolib"),
            "create = true\nsize = 1048576\n",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .env("GENTGT_LIBRBD", "/nonexistent/librbd.so.1")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served without librbd");
    assert!(
        err.contains("/nonexistent/librbd.so.1") && err.contains("librbd1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The other backends still work in that environment.
    let mem = dir.path().join("mem.toml");
    std::fs::write(
        &mem,
        format!("[[target]]\nname = \"{NAME}\"\n[[target.lun]]\nid = 0\nbackend = \"memory\"\nsize = 1048576\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&mem)
        .env("GENTGT_LIBRBD", "/nonexistent/librbd.so.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let portal = wait_for_portal(&mut child, Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    assert!(portal.is_some(), "a memory LUN serves without librbd");
}

/// libiscsi's MultipathIO.CompareAndWrite after its Unmap tests: one
/// block compared with zeros where the image was written, unmapped to
/// its end, then zeroed by WRITE SAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_write_of_zeros_after_unmap_and_write_same() {
    let image = unique_image("cawz");
    let (t, _dir) = target_on_new(&image, 16 * MIB);
    let s = login(&t).await;
    write_all(&s, 0, &pattern(MIB as usize, 9)).await;
    let r = s
        .scsi(0, &write_same16(0, 0, true), Some(&[0u8; BS]), 0)
        .await
        .unwrap();
    assert_eq!(r.status, 0, "WRITE SAME UNMAP to the end: {r:?}");
    let r = s
        .scsi(0, &write_same16(0, 256, false), Some(&[0u8; BS]), 0)
        .await
        .unwrap();
    assert_eq!(r.status, 0, "WRITE SAME zeros: {r:?}");
    for lba in 0..4u64 {
        let new = pattern(BS, lba as u8);
        let r = s
            .scsi(
                0,
                &caw_cdb(lba, 1),
                Some(&[vec![0u8; BS], new.clone()].concat()),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 0, "CAW of zeros at {lba}: {r:?}");
        assert_eq!(s.read16(0, lba, 1, BS as u32).await.unwrap(), new);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbd_config_serves_on_the_cluster() {
    let ceph = cluster();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/rbd.toml")).unwrap();
    let image = unique_image("example");
    let text = text
        .replace("/etc/ceph/ceph.conf", &ceph.conf.display().to_string())
        .replace("\"gentgt-lun0\"", &format!("\"{image}\""))
        .replace("\"10GiB\"", "\"64MiB\"");
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::from_toml(&text, dir.path(), false);
    assert!(ceph.exists(&image), "create = true made the image");
    let s = login(&t).await;
    assert_eq!(
        s.read_capacity16(0).await.unwrap(),
        (64 * MIB / BS as u64, BS as u32)
    );
}
