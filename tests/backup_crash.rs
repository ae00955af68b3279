//! Crash safety of the backup repository (issue 13): the real `gentgt`
//! binary backs up an in-process target over 127.0.0.1, prunes and
//! collects garbage, and is SIGKILLed at random moments. After every
//! round the repository must verify (reading every chunk) and every
//! backup listed must restore to exactly the LUN as it was for its run.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::backup::{Repo, RepoOptions, VerifyOptions, restore_to_file, verify_with};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: u32 = 512;
const EB: u32 = 8;
const SIZE: u64 = 4 << 20;
const BLOCKS: u64 = SIZE / BS as u64;

fn gentgt(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gentgt"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Run to the end; panics with its stderr on failure.
fn run(args: &[&str]) {
    let out = gentgt(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gentgt {args:?}: {err}");
}

/// Let it run `ms`, then SIGKILL it (if still running). True if killed.
fn kill_after(mut c: Child, ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        if c.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = c.try_wait().unwrap().is_none();
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    c.wait().unwrap();
    killed
}

async fn read_all(s: &Session) -> Vec<u8> {
    let mut out = Vec::new();
    let mut lba = 0;
    while lba < BLOCKS {
        let n = 2048.min(BLOCKS - lba) as u32;
        out.extend(s.read16(0, lba, n, BS).await.unwrap());
        lba += u64::from(n);
    }
    out
}

async fn scribble(s: &Session, rng: &mut rand::rngs::StdRng, n: usize) {
    for _ in 0..n {
        let e = rng.gen_range(0..BLOCKS / u64::from(EB));
        let mut data = vec![0u8; (EB * BS) as usize];
        // Half compressible, so zstd frames and raw chunks both occur.
        rng.fill(&mut data[..(EB * BS / 2) as usize]);
        s.write16(0, e * u64::from(EB), &data, BS, false)
            .await
            .unwrap();
    }
}

/// The repository verifies (every chunk read) and every listed backup not
/// in `done` restores to what the LUN held (manifests never change, and
/// verify re-reads the chunks of the others).
fn check(
    root: &Path,
    want: &HashMap<String, Vec<u8>>,
    done: &mut Vec<String>,
    out: &Path,
) -> usize {
    // No lock: the killed processes' stale locks are still there.
    let repo = Repo::open_with(root, &RepoOptions::default()).unwrap();
    let o = VerifyOptions {
        read_data: true,
        subset: None,
    };
    let v = verify_with(&repo, &o).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    let list = repo.list().unwrap();
    for m in &list {
        if done.contains(&m.id) {
            continue;
        }
        done.push(m.id.clone());
        restore_to_file(&repo, &m.id, out).unwrap();
        let got = std::fs::read(out).unwrap();
        assert!(
            &got == want.get(&m.id).expect("a backup of a known round"),
            "backup {} differs",
            m.id
        );
    }
    list.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_backup_prune_and_gc_loses_nothing() {
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: SIZE,
            block_size: BS,
        }],
        TargetOptions {
            cbt_extent_blocks: Some(EB),
            ..Default::default()
        },
    );
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w = Initiator::connect(&ConnectOptions::new(
        t.addr,
        "iqn.2026-11.dev.gentgt:w",
        Some(&t.name),
    ))
    .await
    .unwrap();
    let _ = w.test_unit_ready(0).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let r = root.to_str().unwrap();
    run(&["init", "--repo", r, "--pack-mib", "1"]);
    let portal = t.addr.to_string();
    let backup = [
        "backup",
        "--portal",
        &portal,
        "--target",
        &t.name,
        "--initiator",
        INITIATOR,
        "--repo",
        r,
        "--quiet",
        "--break-lock",
        "--threshold-extents",
        "32",
    ];
    let out = dir.path().join("restored");
    let mut want: HashMap<String, Vec<u8>> = HashMap::new();
    let mut known: Vec<String> = Vec::new();
    let mut restored: Vec<String> = Vec::new();
    let mut full_ms = 0;
    let (mut kills, mut rounds) = (0, 0);
    while rounds < 10 || (kills < 8 && rounds < 30) {
        scribble(&w, &mut rng, if rounds == 0 { 1024 } else { 40 }).await;
        let content = read_all(&w).await;
        let t0 = Instant::now();
        let child = gentgt(&backup).spawn().unwrap();
        if rounds == 0 {
            assert!(
                !kill_after(child, 60_000),
                "the first backup did not finish"
            );
            full_ms = t0.elapsed().as_millis() as u64;
        } else {
            kills += kill_after(child, rng.gen_range(0..full_ms.max(10))) as usize;
        }
        if rounds % 3 == 2 {
            let prune = ["prune", "--repo", r, "--keep-last", "3", "--break-lock"];
            kills += kill_after(gentgt(&prune).spawn().unwrap(), rng.gen_range(0..400)) as usize;
            let gc = [
                "gc",
                "--repo",
                r,
                "--break-lock",
                "--grace-secs",
                "0",
                "--max-unused",
                "0",
            ];
            kills += kill_after(gentgt(&gc).spawn().unwrap(), rng.gen_range(0..400)) as usize;
        }
        let repo = Repo::open_with(&root, &RepoOptions::default()).unwrap();
        for m in repo.list().unwrap() {
            if !known.contains(&m.id) {
                known.push(m.id.clone());
                want.insert(m.id, content.clone());
            }
        }
        drop(repo);
        let n = check(&root, &want, &mut restored, &out);
        println!(
            "round {rounds}: {n} backups, {kills} kills, {} ms",
            t0.elapsed().as_millis()
        );
        rounds += 1;
    }
    // Finally everything runs to its end, and gc leaves little garbage.
    run(&backup);
    run(&["prune", "--repo", r, "--keep-last", "2", "--break-lock"]);
    run(&["gc", "--repo", r, "--grace-secs", "0"]);
    let content = read_all(&w).await;
    let repo = Repo::open_with(&root, &RepoOptions::default()).unwrap();
    for m in repo.list().unwrap() {
        want.entry(m.id).or_insert_with(|| content.clone());
    }
    drop(repo);
    let n = check(&root, &want, &mut Vec::new(), &out);
    println!(
        "{rounds} rounds, {kills} processes killed mid-run, {} backups made, {n} kept",
        known.len()
    );
    assert_eq!(n, 2);
    // The listing, as an operator's script reads it.
    let out = gentgt(&["backups", "--repo", r, "--json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row["method"], "lock");
        assert_eq!(row["logical_bytes"], SIZE);
        let created = row["created"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(created).is_ok(),
            "{created}"
        );
    }
    run(&["verify", "--repo", r, "--read-data"]);
}
