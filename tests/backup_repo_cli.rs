//! The repository commands of the `gentgt` binary (issue 13): init with
//! a key file, the errors an operator sees for a missing or wrong key and
//! for a held or stale lock, unlock, key rotation, and an old repository.

use std::path::Path;
use std::process::Command;

fn gentgt(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn ok(args: &[&str]) -> String {
    let (ok, text) = gentgt(args);
    assert!(ok, "gentgt {args:?}: {text}");
    text
}

fn fails(args: &[&str], needle: &str) {
    let (ok, text) = gentgt(args);
    assert!(
        !ok && text.contains(needle),
        "gentgt {args:?} should fail with {needle:?}: {text}"
    );
}

fn lock_file(repo: &Path, pid: u32, command: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(19)?
                .parse::<u64>()
                .ok()
        });
    let h = serde_json::json!({
        "pid": pid, "host": host.trim(), "command": command,
        "since_ms": 1_700_000_000_000u64, "exclusive": true, "start_ticks": start,
    });
    std::fs::write(repo.join(format!("locks/{pid}-1.lock")), h.to_string()).unwrap();
}

#[test]
fn keys_locks_and_old_repositories_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (r, key) = (repo.to_str().unwrap(), dir.path().join("key"));
    let k = key.to_str().unwrap();
    ok(&[
        "init",
        "--repo",
        r,
        "--encrypt",
        "--key-file",
        k,
        "--new-key-file",
    ]);
    assert!(ok(&["verify", "--repo", r, "--key-file", k]).contains("OK"));
    fails(&["verify", "--repo", r], "this repository is encrypted");
    let other = dir.path().join("other");
    std::fs::write(&other, "00".repeat(32)).unwrap();
    fails(
        &[
            "backups",
            "--repo",
            r,
            "--key-file",
            other.to_str().unwrap(),
        ],
        "wrong key",
    );
    // Rotation: the new key opens it, the old one no longer does.
    let new = dir.path().join("new");
    std::fs::write(&new, "11".repeat(32)).unwrap();
    let n = new.to_str().unwrap();
    ok(&[
        "repo-key",
        "--repo",
        r,
        "--key-file",
        k,
        "--new-key-file",
        n,
    ]);
    fails(&["verify", "--repo", r, "--key-file", k], "wrong key");
    ok(&["verify", "--repo", r, "--key-file", n]);

    // A live holder (this test process) is named and not broken.
    lock_file(&repo, std::process::id(), "backup");
    let me = format!("pid {}", std::process::id());
    fails(&["gc", "--repo", r, "--key-file", n], &me);
    fails(
        &["gc", "--repo", r, "--key-file", n, "--break-lock"],
        "running",
    );
    assert!(ok(&["unlock", "--repo", r]).contains("still held"));
    std::fs::remove_file(repo.join(format!("locks/{}-1.lock", std::process::id()))).unwrap();
    // A holder that is gone is STALE, broken on request.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    lock_file(&repo, dead, "prune");
    fails(
        &["prune", "--repo", r, "--key-file", n, "--keep-last", "1"],
        "STALE",
    );
    assert!(ok(&["unlock", "--repo", r]).contains("removed"));
    ok(&["prune", "--repo", r, "--key-file", n, "--keep-last", "1"]);

    // Format 1 is refused with the way out.
    let old = dir.path().join("old");
    std::fs::create_dir_all(old.join("backups")).unwrap();
    std::fs::create_dir_all(old.join("chunks")).unwrap();
    fails(&["verify", "--repo", old.to_str().unwrap()], "repo-upgrade");
    ok(&["repo-upgrade", "--repo", old.to_str().unwrap()]);
    assert!(ok(&["backups", "--repo", old.to_str().unwrap()]).contains("ID"));
}
