//! Quick rollback (issue 14) through the `gentgt` binary against a real
//! `gentgt serve`: after 1 % of the extents changed, `restore
//! --changed-only` writes at most 1.1 % of the LUN and leaves it equal to
//! the backup; another tracking UUID, another initiator's reservation or
//! registration are refused with nothing written.

mod common;
mod restore_common;

use gentgt::initiator::pr::*;
use restore_common::*;
use serde_json::Value;

const SIZE: u64 = 64 << 20;
const EXTENTS: u64 = SIZE / EXTENT as u64;

fn json(text: &str) -> Value {
    let (a, b) = (text.find('{').unwrap(), text.rfind('}').unwrap());
    serde_json::from_str(&text[a..=b]).unwrap()
}

fn rollback(env: &Env, id: &str, lun: u64, extra: &[&str]) -> Vec<String> {
    let (r, p, l) = (env.repo_str(), env.portal(), lun.to_string());
    let mut a: Vec<String> = [
        "restore",
        "--repo",
        &r,
        "--backup",
        id,
        "--portal",
        &p,
        "--target",
        TARGET,
        "--lun",
        &l,
        "--changed-only",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// 1 % of the extents, spread, some of them zero in the backup.
fn changed() -> Vec<u64> {
    (0..EXTENTS / 100).map(|k| k * 97 + 3).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_writes_only_what_changed_and_equals_the_backup() {
    let env = Env::start(&[64]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 7, |i| i % 3 != 0).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);
    scribble(&w, 0, &changed(), 8).await;
    assert_ne!(read_all(&w, 0).await, want);

    // Someone else registered: refused unless --force, nothing written.
    let other = env.login("iqn.2026-11.dev.gentgt:cluster-node").await;
    other.pr_out(0, PR_REGISTER, 0, 0, 0x1234).await.unwrap();
    let before = read_all(&w, 0).await;
    env.fails(&strs(&rollback(&env, &id, 0, &[])), "registered");
    assert_eq!(read_all(&w, 0).await, before, "refused rollback wrote");
    // ... and its reservation is refused even with --force.
    other
        .pr_out(0, PR_RESERVE, PR_WRITE_EXCLUSIVE, 0x1234, 0)
        .await
        .unwrap();
    env.fails(
        &strs(&rollback(&env, &id, 0, &["--force"])),
        "reserved by another initiator",
    );
    assert_eq!(read_all(&w, 0).await, before, "refused rollback wrote");
    other
        .pr_out(0, PR_RELEASE, PR_WRITE_EXCLUSIVE, 0x1234, 0)
        .await
        .unwrap();

    let r = json(&env.ok(&strs(&rollback(&env, &id, 0, &["--force", "--json"]))));
    assert_same(&read_all(&w, 0).await, &want, "rolled-back LUN");
    let written = r["written_bytes"].as_u64().unwrap() + r["zero_bytes"].as_u64().unwrap();
    assert!(
        written as f64 <= 0.011 * SIZE as f64,
        "wrote {written} of {SIZE} bytes: {r}"
    );
    assert!(written >= changed().len() as u64 * EXTENT as u64, "{r}");
    assert!(
        r["zero_bytes"].as_u64().unwrap() > 0,
        "zero extents rolled back: {r}"
    );
    assert_eq!(r["lun_bytes"], SIZE);
    assert!(r["open_generation_after"].as_u64().unwrap() > r["since_generation"].as_u64().unwrap());

    // The fence is gone: our key unregistered, writers write again.
    let keys = other.pr_read_keys(0).await.unwrap();
    assert_eq!(keys, vec![0x1234], "only the other node's key is left");
    assert_eq!(other.pr_read_reservation(0).await.unwrap(), None);
    w.write16(0, 0, &[1u8; 512], BS, false).await.unwrap();
    other.pr_out(0, PR_REGISTER, 0, 0x1234, 0).await.unwrap();

    // A second rollback lists the first one's extents again (its writes
    // moved their generation) but finds them right: only extent 0, a
    // zero extent in the backup, is put back.
    let r = json(&env.ok(&strs(&rollback(&env, &id, 0, &["--json"]))));
    assert_eq!(r["zero_bytes"].as_u64().unwrap(), EXTENT as u64, "{r}");
    assert_eq!(r["written_bytes"].as_u64().unwrap(), 0, "{r}");
    assert!(r["skipped_bytes"].as_u64().unwrap() >= changed().len() as u64 * EXTENT as u64);
    assert_same(&read_all(&w, 0).await, &want, "second rollback");
    w.logout().await.unwrap();
    other.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tracking_uuid_is_refused() {
    let env = Env::start(&[16, 16]);
    let w = env.login(WRITER).await;
    fill(&w, 0, 256, 9, |i| i % 2 == 1).await;
    fill(&w, 1, 256, 10, |_| true).await;
    let other = read_all(&w, 1).await;
    let id = env.backup(0, &[]);
    // LUN 1 has the same geometry but its own tracking UUID.
    let text = env.fails(&strs(&rollback(&env, &id, 1, &[])), "UUID");
    assert!(text.contains("restore the whole backup"), "{text}");
    assert_eq!(read_all(&w, 1).await, other, "refused rollback wrote");
    w.logout().await.unwrap();
}
