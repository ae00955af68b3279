//! Restore edge cases (issue 14) through the `gentgt` binary against a
//! real `gentgt serve`: a block device (a loop device) as destination; a
//! restore killed with SIGKILL midway, then rerun: it resumes, writes
//! less than the whole image and the result is identical; the killed
//! restore's stale shared lock does not stop the next restore (and an
//! exclusive taker names it STALE); a rollback killed while it holds its
//! PR fence is taken over and finished by a rerun with --force.

mod common;
mod restore_common;

use restore_common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 128 << 20;
const EXTENTS: u64 = SIZE / EXTENT as u64;

fn json(text: &str) -> Value {
    let (a, b) = (text.find('{').unwrap(), text.rfind('}').unwrap());
    serde_json::from_str(&text[a..=b]).unwrap()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL `child` once `cond` holds; fails if the child ended first
/// (it was not killed midway).
fn kill_when(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what}: the process ended ({st}) before it could be killed midway");
        }
        if cond() {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        assert!(Instant::now() < until, "{what}: never reached");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn lock_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks")).map_or(0, |d| d.count())
}

/// Slow on purpose (one 64 KiB WRITE at a time) so it can be killed midway.
const SLOW: [&str; 4] = ["--parallel", "1", "--max-write-kib", "64"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_restores_resume_and_their_stale_lock_blocks_nothing() {
    let env = Env::start(&[SIZE >> 20, SIZE >> 20]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 21, |_| true).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);
    let r = env.repo_str();

    // To a file: killed a quarter in; the marker stays.
    let out = env.path("img");
    let o = out.to_str().unwrap();
    let to_file = ["restore", "--repo", &r, "--backup", &id, "--to-file", o];
    let mut child = spawn(&[&to_file[..], &SLOW].concat());
    kill_when(&mut child, "file restore a quarter in", || {
        out.exists() && allocated(&out) >= SIZE / 4
    });
    assert!(
        env.path("img.restoring").exists(),
        "marker left by the kill"
    );
    assert_eq!(lock_files(&env.repo), 1, "the killed restore's lock file");

    // The stale shared lock does not stop the next restore, which resumes.
    let rep = json(&env.ok(&[&to_file[..], &["--json"]].concat()));
    assert_eq!(rep["resumed"], true, "{rep}");
    let written = rep["written_bytes"].as_u64().unwrap();
    assert!(written < SIZE * 3 / 4 + (1 << 20), "{rep}");
    assert!(rep["skipped_bytes"].as_u64().unwrap() >= SIZE / 4 - (1 << 20));
    assert_same(&std::fs::read(&out).unwrap(), &want, "resumed file");
    assert!(!env.path("img.restoring").exists());

    // Onto LUN 1 (sparse, never written): killed a quarter in.
    let p = env.portal();
    let to_lun = [
        "restore", "--repo", &r, "--backup", &id, "--portal", &p, "--target", TARGET, "--lun", "1",
    ];
    let mut child = spawn(&[&to_lun[..], &SLOW].concat());
    let lun1 = env.lun_file(1);
    kill_when(&mut child, "LUN restore a quarter in", || {
        allocated(&lun1) >= SIZE / 4
    });
    let rep = json(&env.ok(&[&to_lun[..], &["--resume", "--json"]].concat()));
    assert!(rep["written_bytes"].as_u64().unwrap() < SIZE * 3 / 4 + (1 << 20));
    assert!(rep["skipped_bytes"].as_u64().unwrap() >= SIZE / 4 - (1 << 20));
    assert_same(&read_all(&w, 1).await, &want, "resumed LUN");

    // Two dead holders now. An exclusive taker names them STALE and how
    // to break them; `gentgt unlock` does, and the exclusive one runs.
    assert_eq!(lock_files(&env.repo), 2);
    let text = env.fails(&["gc", "--repo", &r], "STALE");
    assert!(text.contains("--break-lock"), "{text}");
    env.ok(&["unlock", "--repo", &r]);
    assert_eq!(lock_files(&env.repo), 0);
    env.ok(&["gc", "--repo", &r]);
    w.logout().await.unwrap();
}

/// Detaches the loop device when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("losetup is needed for this test (util-linux): {e}"));
        assert!(
            out.status.success(),
            "losetup -f --show failed (root and loop devices are needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_onto_a_block_device() {
    let env = Env::start(&[16]);
    let w = env.login(WRITER).await;
    let n = 16 * 16;
    fill(&w, 0, n, 22, |i| i % 3 != 0).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);
    w.logout().await.unwrap();
    let r = env.repo_str();

    // Holding stale data everywhere (the zero extents must become zeros).
    let file = env.path("disk.img");
    std::fs::write(&file, vec![0x5au8; want.len()]).unwrap();
    let dev = Loop::attach(&file);
    let d = dev.0.to_str().unwrap();
    let rep = json(&env.ok(&[
        "restore",
        "--repo",
        &r,
        "--backup",
        &id,
        "--to-file",
        d,
        "--json",
    ]));
    assert_eq!(
        rep["zero_bytes"].as_u64().unwrap(),
        n.div_ceil(3) * EXTENT as u64
    );
    assert!(!env.path(&format!("{d}.restoring")).exists());
    assert_same(&std::fs::read(&dev.0).unwrap(), &want, "block device");
    let rep = json(&env.ok(&[
        "restore",
        "--repo",
        &r,
        "--backup",
        &id,
        "--to-file",
        d,
        "--resume",
        "--json",
    ]));
    assert_eq!(rep["skipped_bytes"].as_u64().unwrap(), want.len() as u64);

    // A device smaller than the image: refused, nothing written.
    let small = env.path("small.img");
    std::fs::write(&small, vec![0x77u8; 8 << 20]).unwrap();
    let sdev = Loop::attach(&small);
    let s = sdev.0.to_str().unwrap();
    env.fails(
        &["restore", "--repo", &r, "--backup", &id, "--to-file", s],
        "nothing written",
    );
    assert!(std::fs::read(&sdev.0).unwrap().iter().all(|&b| b == 0x77));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_killed_under_its_fence_is_taken_over_by_a_rerun() {
    let env = Env::start(&[SIZE >> 20]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 23, |i| i % 4 != 0).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);
    // Everything changed since the backup.
    fill(&w, 0, EXTENTS, 24, |_| true).await;
    let (r, p) = (env.repo_str(), env.portal());
    let rollback = [
        "restore",
        "--repo",
        &r,
        "--backup",
        &id,
        "--portal",
        &p,
        "--target",
        TARGET,
        "--changed-only",
    ];
    let mut child = spawn(&[&rollback[..], &SLOW].concat());
    let mut fenced = false;
    let rt = tokio::runtime::Handle::current();
    kill_when(&mut child, "rollback holding its fence", || {
        let res = tokio::task::block_in_place(|| rt.block_on(w.pr_read_reservation(0)));
        fenced = res
            .unwrap()
            .is_some_and(|r| r.key == u64::from_be_bytes(*b"gtrollbk"));
        fenced
    });
    assert!(fenced);
    // The dead rollback's fence still refuses other writers.
    let cdb = {
        let mut c = [0u8; 16];
        c[0] = 0x8a;
        c[10..14].copy_from_slice(&1u32.to_be_bytes());
        c
    };
    let st = w.scsi(0, &cdb, Some(&[1u8; 512]), 0).await.unwrap();
    assert_eq!(
        st.status, 0x18,
        "RESERVATION CONFLICT while the stale fence holds"
    );

    let text = env.fails(&rollback, "--force");
    assert!(text.contains("earlier rollback"), "{text}");
    let rep = json(&env.ok(&[&rollback[..], &["--force", "--json"]].concat()));
    assert_eq!(rep["verified_extents"].as_u64().unwrap(), EXTENTS, "{rep}");
    assert_same(
        &read_all(&w, 0).await,
        &want,
        "rolled back after the takeover",
    );
    assert!(
        w.pr_read_reservation(0).await.unwrap().is_none(),
        "fence released"
    );
    assert!(
        w.pr_read_keys(0).await.unwrap().is_empty(),
        "no registration left"
    );
    let st = w.scsi(0, &cdb, Some(&[1u8; 512]), 0).await.unwrap();
    assert_eq!(st.status, 0, "writers write again");
    w.logout().await.unwrap();
}
