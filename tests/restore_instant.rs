//! Instant restore (issue 14): a backup made by `gentgt backup` from a
//! served file LUN is served by `gentgt serve` as a `backend = "backup"`
//! LUN straight from the repository, and read by qemu-img and the
//! project's initiator over real TCP.

mod common;

use common::{ServeProcess, gentgt_cli as gentgt, require_tool, run};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SRC: &str = "iqn.2026-11.dev.gentgt:src";
const INST: &str = "iqn.2026-11.dev.gentgt:instant";
const ME: &str = "iqn.2026-11.dev.gentgt:tester";
const EXTENT: usize = 64 << 10;
const SIZE: usize = 32 << 20;
const BS: u32 = 512;

/// Extents of four kinds in turn: zeros, random, compressible text, half
/// random and half zeros.
fn image() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut img = vec![0u8; SIZE];
    for (i, e) in img.chunks_mut(EXTENT).enumerate() {
        match i % 4 {
            0 => {}
            1 => rng.fill_bytes(e),
            2 => {
                let text = format!("extent {i} of the instant-restore test; ");
                for (b, t) in e.iter_mut().zip(text.bytes().cycle()) {
                    *b = t;
                }
            }
            _ => rng.fill_bytes(&mut e[..EXTENT / 2]),
        }
    }
    img
}

fn ok(args: &[&str]) -> String {
    let (ok, text) = gentgt(args);
    assert!(ok, "gentgt {args:?}: {text}");
    text
}

/// A repository under `dir` holding one backup of `img`, taken from a
/// served file LUN; `key` makes it encrypted with that key file.
/// Returns (repository, backup id).
fn make_backup(dir: &Path, img: &[u8], key: Option<&Path>) -> (PathBuf, String) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/src.img"), img).unwrap();
    let toml = format!(
        "[[target]]\nname = \"{SRC}\"\n[[target.lun]]\nid = 0\nbackend = \"file\"\n\
         path = \"src.img\"\nsize = {}\n",
        img.len()
    );
    let server = ServeProcess::start_in(&src, &toml);
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    let mut key_args = vec![];
    if let Some(k) = key {
        let k = k.to_str().unwrap();
        ok(&[
            "init",
            "--repo",
            r,
            "--encrypt",
            "--key-file",
            k,
            "--new-key-file",
        ]);
        key_args = vec!["--key-file", k];
    }
    let portal = server.addr.to_string();
    let mut args = vec!["backup", "--portal", &portal, "--target", SRC, "--repo", r];
    args.extend(["--json", "--quiet"]);
    args.extend(&key_args);
    let out = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backup: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    (repo, json["id"].as_str().unwrap().to_string())
}

/// The target INST with LUN 0 serving `backup` of `repo`, plus `extra` keys.
fn instant_toml(repo: &Path, backup: &str, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{INST}\"\n[[target.lun]]\nid = 0\nbackend = \"backup\"\n\
         repository = \"{}\"\nbackup = \"{backup}\"\n{extra}\n",
        repo.display()
    )
}

/// The whole LUN through qemu-img's iSCSI driver.
fn qemu_read(server: &ServeProcess, out: &Path) -> Vec<u8> {
    require_tool("qemu-img");
    let url = format!("iscsi://{}/{INST}/0", server.addr);
    let (good, o, e) = run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&url)
            .arg(out),
        120,
    );
    assert!(good, "qemu-img convert from the instant LUN: {o}\n{e}");
    std::fs::read(out).unwrap()
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: differs at byte {at} (extent {})", at / EXTENT);
    }
}

async fn login(server: &ServeProcess) -> Session {
    let mut o = ConnectOptions::new(server.addr, ME, Some(INST));
    o.timeout = Duration::from_secs(20);
    let s = Initiator::connect(&o).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    s
}

fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = write16(lba, blocks, false);
    c[0] = 0x88;
    c
}

/// Lock files in the repository (the served LUN's shared lock).
fn locks(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_lun_serves_the_backup_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let server = ServeProcess::start_in(&inst, &instant_toml(&repo, &id, ""));
    let got = qemu_read(&server, &dir.path().join("out.raw"));
    assert_same(&got, &img, "qemu-img read of the instant LUN");

    // Read-only: writes get DATA PROTECT, WRITE PROTECTED; MODE SENSE says WP.
    let s = login(&server).await;
    let r = s
        .scsi(0, &write16(8, 1, false), Some(&[7u8; 512]), 0)
        .await
        .unwrap();
    assert_eq!(r.sense_code(), Some((0x07, 0x27, 0x00)), "{r:?}");
    let ms = s
        .scsi(0, &[0x1a, 0, 0x3f, 0, 255, 0], None, 255)
        .await
        .unwrap();
    assert_eq!(ms.status, 0);
    assert_ne!(ms.data[2] & 0x80, 0, "MODE SENSE WP bit");
    assert_eq!(s.read16(0, 8, 1, BS).await.unwrap(), img[4096..4608]);

    // The shared lock keeps gc out while the LUN is served.
    assert_eq!(locks(&repo), 1);
    let (good, text) = gentgt(&["gc", "--repo", repo.to_str().unwrap()]);
    assert!(!good && text.contains("shared lock"), "{text}");
    let _ = s.logout().await;
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(locks(&repo), 0, "lock released at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_example_serves_a_real_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/instant-restore.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let text = text
        .replace("/backups/lun0", repo.to_str().unwrap())
        .replace("1764651600000-3fa2", &id)
        .replace("127.0.0.1:3260", "127.0.0.1:0");
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let server = ServeProcess::start_in(&inst, &text);
    let mut o = ConnectOptions::new(server.addr, ME, Some("iqn.2026-11.dev.gentgt:restore"));
    o.timeout = Duration::from_secs(20);
    let s = Initiator::connect(&o).await.unwrap();
    for lun in [0, 1] {
        let _ = s.test_unit_ready(lun).await;
        let (blocks, bs) = s.read_capacity16(lun).await.unwrap();
        assert_eq!((blocks * u64::from(bs)) as usize, img.len());
        let at = 3 * EXTENT as u64 / 512;
        let data = s.read16(lun, at, 256, BS).await.unwrap();
        assert_same(
            &data,
            &img[3 * EXTENT..3 * EXTENT + 256 * 512],
            "example LUN",
        );
    }
}

/// Writes of every shape: part of a random extent, a whole extent, one
/// spanning two extents, into a zero extent, with FUA; applied to `img`.
async fn scribble(s: &Session, img: &mut [u8]) {
    let writes: [(usize, usize, bool); 5] = [
        (EXTENT + 1024, 512, false),
        (5 * EXTENT, EXTENT, false),
        (10 * EXTENT - 4096, 8192, true),
        (16 * EXTENT + 512, 1536, false),
        (SIZE - 512, 512, false),
    ];
    for (n, (off, len, fua)) in writes.into_iter().enumerate() {
        let data = vec![0xa0 + n as u8; len];
        let cdb = write16((off / 512) as u64, (len / 512) as u32, fua);
        let r = s.scsi(0, &cdb, Some(&data), 0).await.unwrap();
        assert_eq!(r.status, 0, "write {n}: {r:?}");
        img[off..off + len].copy_from_slice(&data);
    }
    s.sync_cache(0).await.unwrap();
}

/// A writable instant-restore LUN of a fresh backup, served by `gentgt
/// serve` and written to by `scribble` (`want`: what it must hold now).
struct Scribbled {
    dir: tempfile::TempDir,
    img: Vec<u8>,
    repo: PathBuf,
    id: String,
    inst: PathBuf,
    toml: String,
    server: ServeProcess,
    s: Session,
    want: Vec<u8>,
}

async fn writable_and_scribbled() -> Scribbled {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let toml = instant_toml(&repo, &id, "writable = true\n");
    let server = ServeProcess::start_in(&inst, &toml);
    let s = login(&server).await;
    let mut want = img.clone();
    scribble(&s, &mut want).await;
    Scribbled {
        dir,
        img,
        repo,
        id,
        inst,
        toml,
        server,
        s,
        want,
    }
}

/// Where the served LUN keeps its overlay.
fn overlay_path(inst: &Path, id: &str) -> PathBuf {
    inst.join(format!("data/{INST}-lun0-{id}.overlay"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_lun_keeps_writes_across_restarts_and_the_backup_untouched() {
    let Scribbled {
        dir,
        img,
        repo,
        id,
        inst,
        toml,
        mut server,
        s,
        want,
    } = writable_and_scribbled().await;
    assert_same(&read_all(&s).await, &want, "read back after writes");
    let _ = s.logout().await;
    let overlay = overlay_path(&inst, &id);
    assert!(overlay.is_file() && overlay.with_extension("overlay.map").is_file());

    // SIGKILL: only what was synced counts, and all of it was.
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(30));
    drop(server);
    let server = ServeProcess::start_in(&inst, &toml);
    let got = qemu_read(&server, &dir.path().join("after.raw"));
    assert_same(&got, &want, "qemu-img read after a restart");
    drop(server);

    let r = repo.to_str().unwrap();
    let (good, text) = gentgt(&["verify", "--repo", r, "--read-data"]);
    assert!(good, "verify after writes: {text}");
    let restored = dir.path().join("restored.img");
    let to = restored.to_str().unwrap();
    ok(&["restore", "--repo", r, "--backup", &id, "--to-file", to]);
    assert_same(
        &std::fs::read(&restored).unwrap(),
        &img,
        "restore of the backup",
    );
}

fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in std::fs::read_dir(repo.join("packs")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v
}

/// Read every extent with its own READ(16): (extents that failed with
/// MEDIUM ERROR, UNRECOVERED READ ERROR); every other one must be GOOD
/// and equal `img`.
async fn failing_extents(s: &Session, img: &[u8]) -> Vec<usize> {
    let per = (EXTENT / 512) as u32;
    let mut bad = Vec::new();
    for (i, want) in img.chunks(EXTENT).enumerate() {
        let cdb = read16((i * EXTENT / 512) as u64, per);
        let r = s.scsi(0, &cdb, None, EXTENT as u32).await.unwrap();
        if r.status == 0 {
            assert_same(&r.data, want, &format!("extent {i}"));
        } else {
            assert_eq!(r.sense_code(), Some((0x03, 0x11, 0x00)), "extent {i}");
            bad.push(i);
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_chunks_fail_their_reads_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let packs = pack_files(&repo);
    assert_eq!(packs.len(), 1, "{packs:?}");
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&packs[0], &bytes).unwrap();
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let toml = instant_toml(&repo, &id, "");
    let server = ServeProcess::start_in(&inst, &toml);
    let s = login(&server).await;
    let bad = failing_extents(&s, &img).await;
    assert_eq!(
        bad.len(),
        1,
        "one damaged chunk, one failing extent: {bad:?}"
    );
    assert!(img[bad[0] * EXTENT..][..EXTENT].iter().any(|&b| b != 0));
    let _ = s.logout().await;
    drop(server);

    // The pack gone: the LUN still starts (the index names the chunks);
    // zero extents read, every other read fails.
    std::fs::remove_file(&packs[0]).unwrap();
    let server = ServeProcess::start_in(&inst, &toml);
    let s = login(&server).await;
    let bad = failing_extents(&s, &img).await;
    let zeros = img.chunks(EXTENT).filter(|e| e.iter().all(|&b| b == 0));
    assert_eq!(bad.len(), SIZE / EXTENT - zeros.count());
}

/// `gentgt serve` on `toml` must fail at start, its message holding
/// every one of `needles`.
fn start_fails(dir: &Path, toml: &str, needles: &[&str]) {
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, toml).unwrap();
    let (good, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_gentgt"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg),
        60,
    );
    assert!(!good, "serve should have failed: {out}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backup_lun_settings_fail_at_start_naming_the_lun() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let key = dir.path().join("repo.key");
    let (repo, id) = make_backup(dir.path(), &img, Some(&key));
    let other = dir.path().join("other.key");
    std::fs::write(&other, "00".repeat(32)).unwrap();
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let lun = "target \"iqn.2026-11.dev.gentgt:instant\" LUN 0 (backup LUN)";
    let key_line = format!("key_file = \"{}\"\n", key.display());
    let cases = [
        (
            instant_toml(&repo, "1764651600000-0000", &key_line),
            "not found",
        ),
        (instant_toml(&repo, &id, ""), "this repository is encrypted"),
        (
            instant_toml(&repo, &id, &format!("key_file = \"{}\"", other.display())),
            "wrong key",
        ),
        (
            instant_toml(&repo, &id, &format!("{key_line}size = \"1MiB\"")),
            "differs from the backup's",
        ),
        (
            instant_toml(&repo, &id, &format!("{key_line}block_size = 4096")),
            "set block_size = 512",
        ),
        (
            instant_toml(&dir.path().join("nope"), &id, ""),
            "not a backup repository",
        ),
    ];
    for (toml, needle) in &cases {
        start_fails(&inst, toml, &[lun, needle]);
        assert_eq!(locks(&repo), 0, "no lock left by a failed start ({needle})");
    }
    // The right key serves it.
    let server = ServeProcess::start_in(&inst, &instant_toml(&repo, &id, &key_line));
    let s = login(&server).await;
    let at = 7 * EXTENT;
    let got = s.read16(0, (at / 512) as u64, 256, BS).await.unwrap();
    assert_same(&got, &img[at..at + 256 * 512], "encrypted backup LUN");
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < until, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_a_backup_lun_and_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let pid = inst.join("gentgt.pid");
    let head = format!("pid_file = \"{}\"\n", pid.display());
    let memory = "[[target.lun]]\nid = 0\nbackend = \"memory\"\nsize = \"1MiB\"\n";
    let only_memory = format!("{head}[[target]]\nname = \"{INST}\"\n{memory}");
    let server = ServeProcess::start_in(&inst, &only_memory);
    let status = inst.join("gentgt.pid.reload");
    let reload = |toml: &str, generation: u32| {
        std::fs::write(inst.join("gentgt.toml"), toml).unwrap();
        server.signal(libc::SIGHUP);
        let want = format!("{generation} ok");
        wait_for("reload status", || {
            std::fs::read_to_string(&status).is_ok_and(|s| s.starts_with(&want))
        });
    };
    let backup_lun = instant_toml(&repo, &id, "").replace("id = 0", "id = 1");
    let backup_lun = backup_lun.split_once("[[target.lun]]").unwrap().1;
    reload(&format!("{only_memory}[[target.lun]]{backup_lun}"), 1);
    assert_eq!(locks(&repo), 1, "the added backup LUN holds the lock");
    let s = login(&server).await;
    let _ = s.test_unit_ready(1).await;
    let at = 9 * EXTENT;
    let got = s.read16(1, (at / 512) as u64, 128, BS).await.unwrap();
    assert_same(&got, &img[at..at + EXTENT], "backup LUN added by reload");
    let _ = s.logout().await;
    reload(&only_memory, 2);
    wait_for("lock released after the LUN was removed", || {
        locks(&repo) == 0
    });
}

/// The whole LUN, 1 MiB per READ.
async fn read_all(s: &Session) -> Vec<u8> {
    let mut all = Vec::new();
    for lba in (0..SIZE as u64 / 512).step_by(2048) {
        all.extend(s.read16(0, lba, 2048, BS).await.unwrap());
    }
    all
}

/// GET LBA STATUS from LBA 0: (lba, blocks, deallocated) per descriptor.
async fn lba_status(s: &Session) -> Vec<(u64, u64, bool)> {
    let alloc: u32 = 8 + 16 * 1024;
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x12;
    cdb[10..14].copy_from_slice(&alloc.to_be_bytes());
    let r = s.scsi(0, &cdb, None, alloc).await.unwrap();
    assert_eq!(r.status, 0, "GET LBA STATUS: {r:?}");
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    r.data[8..4 + len]
        .chunks_exact(16)
        .map(|d| {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap());
            let n = u32::from_be_bytes(d[8..12].try_into().unwrap());
            (lba, u64::from(n), d[12] & 0x0f == 1)
        })
        .collect()
}

/// Per extent, deallocated as GET LBA STATUS says (every block of the
/// extent in one state, or the test fails).
fn deallocated_extents(desc: &[(u64, u64, bool)]) -> Vec<bool> {
    let per = (EXTENT / 512) as u64;
    let mut out = vec![None; SIZE / EXTENT];
    let mut next = 0;
    for &(lba, n, dealloc) in desc {
        assert_eq!(lba, next, "descriptors follow each other: {desc:?}");
        assert!(lba % per == 0 && n % per == 0, "whole extents: {desc:?}");
        for e in lba / per..(lba + n) / per {
            out[e as usize] = Some(dealloc);
        }
        next = lba + n;
    }
    assert_eq!(next, (SIZE / 512) as u64, "the whole LUN is described");
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lba_status_shows_zero_extents_deallocated() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let (repo, id) = make_backup(dir.path(), &img, None);
    let inst = dir.path().join("inst");
    std::fs::create_dir_all(&inst).unwrap();
    let server = ServeProcess::start_in(&inst, &instant_toml(&repo, &id, ""));
    let s = login(&server).await;
    let zero: Vec<bool> = img
        .chunks(EXTENT)
        .map(|e| e.iter().all(|&b| b == 0))
        .collect();
    assert!(zero.iter().any(|&z| z) && zero.iter().any(|&z| !z));
    let got = deallocated_extents(&lba_status(&s).await);
    assert_eq!(got, zero, "deallocated exactly where the backup has zeros");
    // Every descriptor of an alternating map: no merging across kinds.
    assert_eq!(lba_status(&s).await.len(), SIZE / EXTENT / 2);
}

/// WRITE SAME(16) with UNMAP of `blocks` from `lba`.
async fn unmap(s: &Session, lba: u64, blocks: u32) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x93;
    cdb[1] = 0x08;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let r = s.scsi(0, &cdb, Some(&[0u8; 512]), 0).await.unwrap();
    assert_eq!(r.status, 0, "WRITE SAME UNMAP: {r:?}");
}

fn json(text: &str) -> serde_json::Value {
    let (a, b) = (text.find('{').unwrap(), text.rfind('}').unwrap());
    serde_json::from_str(&text[a..=b]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_merges_back_through_gentgt_restore_or_is_discarded() {
    let Scribbled {
        dir,
        img,
        repo,
        id,
        inst,
        toml,
        mut server,
        s,
        mut want,
    } = writable_and_scribbled().await;
    // A text extent made zeros, through the overlay.
    unmap(&s, (2 * EXTENT / 512) as u64, (EXTENT / 512) as u32).await;
    want[2 * EXTENT..3 * EXTENT].fill(0);
    s.sync_cache(0).await.unwrap();
    let shown = read_all(&s).await;
    assert_same(&shown, &want, "the instant LUN after writes");
    // Extent 16 was zeros in the backup and is written now: mapped.
    let dealloc = deallocated_extents(&lba_status(&s).await);
    assert!(dealloc[0] && !dealloc[16] && !dealloc[1], "{dealloc:?}");

    let r = repo.to_str().unwrap();
    let ov = overlay_path(&inst, &id);
    let o = ov.to_str().unwrap();
    let out = dir.path().join("merged.img");
    let to = out.to_str().unwrap();
    let merge = ["restore", "--repo", r, "--backup", &id, "--overlay", o];
    let to_file = [&merge[..], &["--to-file", to, "--json"]].concat();
    // Served: refused, nothing written.
    let (good, text) = gentgt(&to_file);
    assert!(!good && text.contains("in use by a running LUN"), "{text}");
    assert!(!out.exists());
    let _ = s.logout().await;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());

    let rep = json(&ok(&to_file));
    assert_eq!(rep["overlay_extents"], 7, "{rep}");
    assert_same(&std::fs::read(&out).unwrap(), &shown, "merged file");

    // Onto a LUN of another server, the same.
    let dest = dir.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let dtoml = format!(
        "[[target]]\nname = \"{INST}\"\n[[target.lun]]\nid = 0\nbackend = \"file\"\n\
         path = \"d.img\"\nsize = {SIZE}\n"
    );
    let d = ServeProcess::start_in(&dest, &dtoml);
    let p = d.addr.to_string();
    ok(&[
        &merge[..],
        &["--portal", &p, "--target", INST, "--lun", "0"],
    ]
    .concat());
    let ds = login(&d).await;
    assert_same(&read_all(&ds).await, &shown, "merged onto a LUN");
    let _ = ds.logout().await;

    // No such overlay: refused before anything is written.
    let wrong = dir.path().join("wrong.img");
    let (good, text) = gentgt(&[
        "restore",
        "--repo",
        r,
        "--backup",
        &id,
        "--overlay",
        "/nonexistent/x",
        "--to-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(!good && text.contains("nothing written"), "{text}");
    assert!(!wrong.exists());

    // Discard: delete both files; the LUN serves the backup again.
    std::fs::remove_file(&ov).unwrap();
    std::fs::remove_file(ov.with_extension("overlay.map")).unwrap();
    let server = ServeProcess::start_in(&inst, &toml);
    let got = qemu_read(&server, &dir.path().join("discarded.raw"));
    assert_same(&got, &img, "after discarding the overlay");
}
