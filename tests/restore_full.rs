//! Fast full restore (issue 14) through the `gentgt` binary against a
//! real `gentgt serve`: to a sparse file and onto a LUN, byte for byte;
//! a restore that fails midway resumes and skips what is already right;
//! bad input is refused before anything is written.

mod common;
mod restore_common;

use gentgt::backup::{Repo, pack, repo::parse_id};
use restore_common::*;
use serde_json::Value;

const SIZE: u64 = 16 << 20;
const EXTENTS: u64 = SIZE / EXTENT as u64;

/// Half the extents zero (plus every 7th with data).
fn has_data(i: u64) -> bool {
    i.is_multiple_of(2) || i.is_multiple_of(7)
}

fn zero_bytes() -> u64 {
    (0..EXTENTS).filter(|&i| !has_data(i)).count() as u64 * EXTENT as u64
}

fn json(text: &str) -> Value {
    let (a, b) = (text.find('{').unwrap(), text.rfind('}').unwrap());
    serde_json::from_str(&text[a..=b]).unwrap()
}

fn restore_file(env: &Env, id: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let r = env.repo_str();
    let mut a: Vec<String> = ["restore", "--repo", &r, "--backup", id, "--to-file", out]
        .map(String::from)
        .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn restore_lun(env: &Env, id: &str, lun: u64, extra: &[&str]) -> Vec<String> {
    let (r, p, l) = (env.repo_str(), env.portal(), lun.to_string());
    let mut a: Vec<String> = [
        "restore", "--repo", &r, "--backup", id, "--portal", &p, "--target", TARGET, "--lun", &l,
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_to_a_file_and_a_lun_byte_identical_and_sparse() {
    let env = Env::start(&[16, 16]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 1, has_data).await;
    fill(&w, 1, EXTENTS, 2, |_| true).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);

    let out = env.path("img");
    let o = out.to_str().unwrap();
    let r = json(&env.ok(&strs(&restore_file(&env, &id, o, &["--json"]))));
    assert_same(&std::fs::read(&out).unwrap(), &want, "file restore");
    assert_eq!(r["zero_bytes"], zero_bytes());
    assert_eq!(r["written_bytes"], SIZE - zero_bytes());
    assert!(
        allocated(&out) <= SIZE - zero_bytes() + (1 << 20),
        "zero extents must stay holes: {} bytes allocated",
        allocated(&out)
    );
    assert!(!env.path("img.restoring").exists(), "marker removed");

    // Onto LUN 1, which holds random data everywhere.
    let text = env.ok(&strs(&restore_lun(&env, &id, 1, &["--progress"])));
    assert!(
        text.contains("MiB/s") && text.contains("ETA"),
        "progress line: {text}"
    );
    assert_same(&read_all(&w, 1).await, &want, "LUN restore");
    assert!(
        allocated(&env.lun_file(1)) <= SIZE - zero_bytes() + (1 << 20),
        "zero extents must be unmapped (WRITE SAME with UNMAP): {} bytes allocated",
        allocated(&env.lun_file(1))
    );
    // Resuming onto a LUN that already equals the backup writes nothing.
    let r = json(&env.ok(&strs(&restore_lun(&env, &id, 1, &["--resume", "--json"]))));
    assert_eq!(r["written_bytes"], 0);
    assert_eq!(r["skipped_bytes"], SIZE);
    w.logout().await.unwrap();
}

/// Flip one byte of the chunk of extent `i`; returns (pack, offset, old).
fn damage_chunk(env: &Env, id: &str, i: usize) -> (std::path::PathBuf, u64, u8) {
    let repo = Repo::open_existing(&env.repo).unwrap();
    let m = repo.load(id).unwrap();
    let gentgt::backup::ExtentRef::Blake3(h) = &m.extents[i] else {
        panic!("extent {i} is zero")
    };
    let loc = repo.chunk_loc(&parse_id(h).unwrap()).unwrap();
    let path = pack::pack_path(&env.repo.join("packs"), &loc.pack);
    let mut b = std::fs::read(&path).unwrap();
    let at = loc.offset + u64::from(loc.len) / 2;
    let old = b[at as usize];
    b[at as usize] ^= 0x55;
    std::fs::write(&path, b).unwrap();
    (path, at, old)
}

fn put_byte(path: &std::path::Path, at: u64, v: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] = v;
    std::fs::write(path, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_restore_resumes_and_skips_what_is_right() {
    let env = Env::start(&[16, 16]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 3, has_data).await;
    fill(&w, 1, EXTENTS, 4, |_| true).await;
    let want = read_all(&w, 0).await;
    let id = env.backup(0, &[]);

    // A damaged chunk three quarters in stops the restore there.
    let (pack, at, old) = damage_chunk(&env, &id, 192);
    let out = env.path("img");
    let o = out.to_str().unwrap();
    let text = env.fails(
        &strs(&restore_file(&env, &id, o, &["--parallel", "1"])),
        "not known to be restored",
    );
    assert!(text.contains("resume"), "{text}");
    assert!(env.path("img.restoring").exists(), "marker kept: {text}");
    let fails_lun = env.fails(
        &strs(&restore_lun(&env, &id, 1, &["--parallel", "1"])),
        "not known to be restored",
    );
    assert!(fails_lun.contains("LBAs"), "{fails_lun}");

    // Repaired, the rerun reads what is there and writes only the rest.
    put_byte(&pack, at, old);
    let r = json(&env.ok(&strs(&restore_file(&env, &id, o, &["--json"]))));
    assert_eq!(r["resumed"], true);
    let skipped = r["skipped_bytes"].as_u64().unwrap();
    assert!(skipped >= SIZE / 2, "most was right already: {r}");
    assert_eq!(
        r["written_bytes"].as_u64().unwrap() + r["zero_bytes"].as_u64().unwrap() + skipped,
        SIZE
    );
    assert!(r["written_bytes"].as_u64().unwrap() < SIZE / 2, "{r}");
    assert_same(&std::fs::read(&out).unwrap(), &want, "resumed file");
    assert!(!env.path("img.restoring").exists());

    let r = json(&env.ok(&strs(&restore_lun(&env, &id, 1, &["--resume", "--json"]))));
    assert!(r["skipped_bytes"].as_u64().unwrap() >= SIZE / 2, "{r}");
    assert_same(&read_all(&w, 1).await, &want, "resumed LUN");
    w.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let env = Env::start(&[16, 8]);
    let w = env.login(WRITER).await;
    fill(&w, 0, EXTENTS, 5, has_data).await;
    fill(&w, 1, EXTENTS / 2, 6, |_| true).await;
    let small = read_all(&w, 1).await;
    let id = env.backup(0, &[]);
    let out = env.path("img");
    let o = out.to_str().unwrap();
    let nothing_written = |what: &str| {
        assert!(!out.exists(), "{what}: output file created");
        assert!(
            !env.path("img.restoring").exists(),
            "{what}: marker created"
        );
    };

    env.fails(
        &strs(&restore_file(&env, "0000000000000-beef", o, &[])),
        "not found",
    );
    nothing_written("unknown backup");
    env.fails(
        &strs(&restore_lun(&env, "0000000000000-beef", 1, &[])),
        "not found",
    );
    env.fails(&strs(&restore_lun(&env, &id, 1, &[])), "nothing written");
    assert_same(&read_all(&w, 1).await, &small, "smaller LUN untouched");

    // A chunk the index does not know.
    for e in std::fs::read_dir(env.repo.join("index")).unwrap() {
        let p = e.unwrap().path();
        std::fs::rename(&p, env.path("saved-index")).unwrap();
        env.fails(
            &strs(&restore_file(&env, &id, o, &[])),
            "not in the repository index",
        );
        nothing_written("missing chunk");
        std::fs::rename(env.path("saved-index"), &p).unwrap();
    }

    // Encrypted: the wrong key is named; the right one restores, and
    // resumes by the keyed chunk ids.
    let enc = env.path("enc");
    let (e, key, bad) = (enc.to_str().unwrap(), env.path("key"), env.path("bad"));
    let (k, b) = (key.to_str().unwrap(), bad.to_str().unwrap());
    env.ok(&[
        "init",
        "--repo",
        e,
        "--encrypt",
        "--key-file",
        k,
        "--new-key-file",
    ]);
    std::fs::write(&bad, "11".repeat(32)).unwrap();
    let (p, want) = (env.portal(), read_all(&w, 0).await);
    env.ok(&[
        "backup",
        "--portal",
        &p,
        "--target",
        TARGET,
        "--repo",
        e,
        "--key-file",
        k,
        "--quiet",
    ]);
    let eid = Repo::open_with(
        &enc,
        &gentgt::backup::RepoOptions {
            key: Some(gentgt::backup::crypto::KeySource::File(key.clone())),
            ..Default::default()
        },
    )
    .unwrap()
    .ids()
    .unwrap()
    .remove(0);
    let base = ["restore", "--repo", e, "--backup", &eid, "--to-file", o];
    let with = |kf: &str, more: &[&str]| -> Vec<String> {
        let tail = ["--key-file", kf, "--json"];
        base.iter()
            .chain(&tail)
            .chain(more)
            .map(|s| s.to_string())
            .collect()
    };
    env.fails(&strs(&with(b, &[])), "wrong key");
    nothing_written("wrong key");
    env.ok(&strs(&with(k, &[])));
    assert_same(&std::fs::read(&out).unwrap(), &want, "encrypted restore");
    let r = json(&env.ok(&strs(&with(k, &["--resume"]))));
    assert_eq!(r["skipped_bytes"], SIZE, "{r}");
    w.logout().await.unwrap();
}
