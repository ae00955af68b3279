//! Format-2 repository tests: packs, compression, encryption, locks,
//! prune, gc, verify of damaged files, upgrade of a format-1 repository.

use super::crypto::KeySource;
use super::gc::{GcOptions, gc};
use super::lock::LockMode;
use super::manifest::{ExtentRef, LunId, MANIFEST_VERSION, Manifest, Stats};
use super::prune::{Policy, plan, prune};
use super::repo::{CreateOptions, Repo, RepoOptions};
use super::{BackupError, VerifyOptions, restore_to_file, verify, verify_with};
use rand::{Rng, SeedableRng};
use std::path::Path;

const EXTENTS: u64 = 64;
const EXTENT: usize = 4096;

fn lun() -> LunId {
    LunId {
        naa: "600000000000000000000000000000bb".into(),
        uuid: "u1".into(),
        capacity_blocks: EXTENTS * 8,
        block_size: 512,
        extent_blocks: 8,
    }
}

fn opts(create: Option<CreateOptions>, key: Option<KeySource>) -> RepoOptions {
    RepoOptions {
        lock: Some(LockMode::Exclusive),
        command: "test".into(),
        create,
        key,
        ..Default::default()
    }
}

fn small(encrypt: Option<KeySource>) -> CreateOptions {
    CreateOptions {
        pack_bytes: 64 << 10,
        zstd_level: 1,
        encrypt,
        kdf_cost: Some((64, 1)),
    }
}

fn random_image(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..EXTENTS)
        .map(|i| {
            let mut d = vec![0u8; EXTENT];
            if i % 8 != 7 {
                rng.fill(&mut d[..]);
            }
            d
        })
        .collect()
}

/// Store `img` as backup `id` (generation `g`, created at `g` ms).
fn store(repo: &Repo, id: &str, parent: Option<&str>, g: u64, img: &[Vec<u8>]) {
    let extents = img.iter().map(|d| repo.put_extent(d).unwrap()).collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.into(),
        parent: parent.map(str::to_string),
        created_ms: g,
        lun: lun(),
        lock_generation: g,
        extents,
        stats: Stats::default(),
    };
    repo.commit(&m).unwrap();
}

fn assert_restores(repo: &Repo, id: &str, img: &[Vec<u8>], dir: &Path) {
    let out = dir.join(format!("img-{id}"));
    restore_to_file(repo, id, &out).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == img.concat(),
        "backup {id} differs"
    );
}

fn read_data(repo: &Repo) -> super::VerifyReport {
    let o = VerifyOptions {
        read_data: true,
        subset: None,
    };
    verify_with(repo, &o).unwrap()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

#[test]
fn chunks_go_into_few_packs_compressed_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
    let img = random_image(1);
    store(&repo, "b1", None, 1, &img);
    // Half-compressible extents: random first half, zeros second half.
    let mut img2 = img.clone();
    for d in img2.iter_mut().step_by(2) {
        d[EXTENT / 2..].fill(0);
        d[0] ^= 0xff;
    }
    store(&repo, "b2", Some("b1"), 2, &img2);
    let packs = repo.pack_files().unwrap();
    let stored: u64 = packs.iter().map(|p| p.2).sum();
    let unique = (56 + 32) * EXTENT as u64;
    assert!(packs.len() <= 6, "{} packs", packs.len());
    assert!(
        stored < unique - 32 * EXTENT as u64 / 3,
        "{stored} of {unique}"
    );
    // config, 2 index segments, 2 manifests, the lock, the packs.
    assert_eq!(count_files(&root), 6 + packs.len());
    let r = read_data(&repo);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.chunks_checked, 56 + 32);
    assert_restores(&repo, "b1", &img, dir.path());
    assert_restores(&repo, "b2", &img2, dir.path());
}

#[test]
fn encrypted_repositories_need_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let (root, kf) = (dir.path().join("r"), dir.path().join("key"));
    super::crypto::generate_key_file(&kf).unwrap();
    let key = KeySource::File(kf.clone());
    let img = random_image(2);
    {
        let repo = Repo::open_with(
            &root,
            &opts(Some(small(Some(key.clone()))), Some(key.clone())),
        )
        .unwrap();
        store(&repo, "b1", None, 1, &img);
        // Chunk ids are keyed: no plain digest of the data appears.
        let m = repo.load("b1").unwrap();
        let plain = ExtentRef::Blake3(blake3::hash(&img[0]).to_hex().to_string());
        assert_ne!(m.extents[0], plain);
    }
    let no_key = Repo::open_with(&root, &opts(None, None)).unwrap_err();
    assert!(no_key.to_string().contains("encrypted"), "{no_key}");
    let other = dir.path().join("other");
    super::crypto::generate_key_file(&other).unwrap();
    let wrong = Repo::open_with(&root, &opts(None, Some(KeySource::File(other)))).unwrap_err();
    assert!(wrong.to_string().contains("wrong key"), "{wrong}");
    // Rotate to a passphrase: the old key file no longer opens it.
    let pass = KeySource::Passphrase("correct horse".into());
    {
        let repo = Repo::open_with(&root, &opts(None, Some(key.clone()))).unwrap();
        let mut cfg = repo.config().clone();
        let enc = cfg.encryption.clone().unwrap();
        cfg.encryption = Some(super::crypto::rewrap(&enc, &key, &pass, Some((64, 1))).unwrap());
        super::repo::write_config(&root, &cfg).unwrap();
    }
    assert!(Repo::open_with(&root, &opts(None, Some(key))).is_err());
    let repo = Repo::open_with(&root, &opts(None, Some(pass))).unwrap();
    assert!(read_data(&repo).ok());
    assert_restores(&repo, "b1", &img, dir.path());
    // Nothing in the packs is the plaintext.
    for (_, p, _) in repo.pack_files().unwrap() {
        let bytes = std::fs::read(p).unwrap();
        assert!(!bytes.windows(64).any(|w| w == &img[0][..64]));
    }
}

#[test]
fn a_second_writer_is_refused_and_stale_locks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let a = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
    let e = Repo::open_with(&root, &opts(None, None)).unwrap_err();
    assert!(matches!(e, BackupError::Locked(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("\"test\""),
        "{msg}"
    );
    let mut shared = opts(None, None);
    shared.lock = Some(LockMode::Shared);
    assert!(
        Repo::open_with(&root, &shared).is_err(),
        "exclusive blocks readers"
    );
    drop(a);
    let r1 = Repo::open_with(&root, &shared).unwrap();
    let r2 = Repo::open_with(&root, &shared).unwrap();
    assert!(Repo::open_with(&root, &opts(None, None)).is_err());
    drop((r1, r2));
    // A lock of a process that is gone.
    let stale = r#"{"pid":999999999,"host":"HOST","command":"backup","since_ms":1,"exclusive":true,"start_ticks":null}"#;
    let me = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let stale = stale.replace("HOST", me.trim());
    std::fs::write(root.join("locks/999999999-0.lock"), stale).unwrap();
    let e = Repo::open_with(&root, &opts(None, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("STALE") && e.contains("999999999"), "{e}");
    let mut b = opts(None, None);
    b.break_lock = true;
    Repo::open_with(&root, &b).unwrap();
}

#[test]
fn retention_keeps_last_daily_weekly_monthly() {
    let day = 86_400_000u64;
    let ms: Vec<Manifest> = (0..60u64)
        .map(|d| Manifest {
            version: MANIFEST_VERSION,
            id: format!("b{d:02}"),
            parent: None,
            created_ms: 1_767_225_600_000 + d * day, // from 2026-01-01 UTC
            lun: lun(),
            lock_generation: d + 1,
            extents: vec![],
            stats: Stats::default(),
        })
        .collect();
    let p = Policy {
        keep_last: 2,
        keep_daily: 5,
        keep_weekly: 3,
        keep_monthly: 3,
    };
    let d = plan(&ms, &p, &chrono::Utc);
    let kept: Vec<&str> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
    // 5 newest days; Sundays of the two weeks before (days 52, 45 - ISO
    // weeks end on Sunday); months: March 1 (59), Feb 28 (58) and Jan 31.
    assert_eq!(
        kept,
        ["b59", "b58", "b57", "b56", "b55", "b52", "b45", "b30"]
    );
}

#[test]
fn prune_and_gc_reclaim_space_and_keep_backups_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut img = random_image(3);
    let mut images = Vec::new();
    for g in 1..=6u64 {
        // Each backup rewrites a quarter of the extents.
        for _ in 0..16 {
            let i = rng.gen_range(0..EXTENTS as usize);
            rng.fill(&mut img[i][..]);
        }
        let parent = (g > 1).then(|| format!("b{}", g - 1));
        store(&repo, &format!("b{g}"), parent.as_deref(), g, &img);
        images.push(img.clone());
    }
    let r = prune(
        &repo,
        &Policy {
            keep_last: 2,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    assert_eq!((r.kept, r.removed), (2, 4));
    assert!(
        verify(&repo).unwrap().ok(),
        "pruned parents are not problems"
    );
    let g = gc(
        &repo,
        &GcOptions {
            grace_secs: 0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        g.bytes_after < g.bytes_before && g.packs_deleted + g.packs_repacked > 0,
        "{g:?}"
    );
    assert!(
        g.unreferenced_bytes_after as f64 <= 0.05 * g.bytes_after as f64,
        "{g:?}"
    );
    let v = read_data(&repo);
    assert!(v.ok() && v.orphan_chunks == 0, "{v:?}");
    assert_restores(&repo, "b5", &images[4], dir.path());
    assert_restores(&repo, "b6", &images[5], dir.path());
    drop(repo);
    // Reopened from disk: one index segment, same answers.
    let repo = Repo::open_with(&root, &opts(None, None)).unwrap();
    assert_eq!(repo.index().segments.len(), 1);
    assert_restores(&repo, "b6", &images[5], dir.path());
}

#[test]
fn damaged_files_are_reported_with_the_backups_they_break() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
    store(&repo, "b1", None, 1, &random_image(4));
    store(&repo, "b2", Some("b1"), 2, &random_image(5));
    store(&repo, "b3", Some("b2"), 3, &random_image(6));
    drop(repo);
    let reopen = || Repo::open_with(&root, &opts(None, None)).unwrap();
    // Truncate one pack of b1 (images are disjoint: only b1 uses it).
    let repo = reopen();
    let id = match &repo.load("b1").unwrap().extents[0] {
        ExtentRef::Blake3(h) => super::repo::parse_id(h).unwrap(),
        ExtentRef::Zero => unreachable!(),
    };
    let p = super::pack::pack_path(&root.join("packs"), &repo.chunk_loc(&id).unwrap().pack);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = verify(&repo).unwrap();
    assert_eq!(r.damaged_backups, ["b1"], "{:?}", r.problems);
    assert!(restore_to_file(&repo, "b1", &dir.path().join("x")).is_err());
    // Corrupt b2's index segment.
    let first = |id: &str| match &repo.load(id).unwrap().extents[0] {
        ExtentRef::Blake3(h) => super::repo::parse_id(h).unwrap(),
        ExtentRef::Zero => unreachable!(),
    };
    let b2 = first("b2");
    let names = repo.index().segments.clone();
    let name = names
        .iter()
        .find(|n| {
            super::index::read_segment(&repo.codec, &root.join("index"), n)
                .unwrap()
                .iter()
                .any(|(h, _)| *h == b2)
        })
        .unwrap();
    let seg = root.join("index").join(name);
    drop(repo);
    let mut b = std::fs::read(&seg).unwrap();
    b[10] ^= 1;
    std::fs::write(&seg, b).unwrap();
    let r = verify(&reopen()).unwrap();
    assert_eq!(r.damaged_backups, ["b1", "b2"], "{:?}", r.problems);
    assert!(r.problems.iter().any(|p| p.contains("index segment")));
    // And b3's manifest.
    let m = root.join("manifests/b3");
    let mut b = std::fs::read(&m).unwrap();
    let n = b.len();
    b[n - 40] ^= 1;
    std::fs::write(&m, b).unwrap();
    let repo = reopen();
    let r = verify(&repo).unwrap();
    assert_eq!(r.damaged_backups, ["b1", "b2", "b3"], "{:?}", r.problems);
    assert!(restore_to_file(&repo, "b3", &dir.path().join("x")).is_err());
    assert!(
        gc(&repo, &GcOptions::default()).is_err(),
        "gc refuses a repository it cannot read"
    );
}

#[test]
fn a_format_1_repository_is_refused_then_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("old");
    let img = random_image(7);
    // Format 1: chunks/<2 hex>/<digest>, backups/<id>/manifest.json.
    let mut extents = Vec::new();
    for d in &img {
        if d.iter().all(|&b| b == 0) {
            extents.push(ExtentRef::Zero);
            continue;
        }
        let h = blake3::hash(d).to_hex().to_string();
        let p = root.join("chunks").join(&h[..2]);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join(&h), d).unwrap();
        extents.push(ExtentRef::Blake3(h));
    }
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: "old1".into(),
        parent: None,
        created_ms: 5,
        lun: lun(),
        lock_generation: 5,
        extents,
        stats: Stats::default(),
    };
    std::fs::create_dir_all(root.join("backups/old1")).unwrap();
    std::fs::write(
        root.join("backups/old1/manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let e = Repo::open(&root).unwrap_err();
    assert!(
        matches!(e, BackupError::OldFormat(_)) && e.to_string().contains("repo-upgrade"),
        "{e}"
    );
    let r = super::upgrade::upgrade(&root, &small(None), None).unwrap();
    assert_eq!((r.backups_converted, r.chunks_read), (1, 56));
    assert!(!root.join("chunks").exists() && !root.join("backups").exists());
    let repo = Repo::open(&root).unwrap();
    assert!(read_data(&repo).ok());
    assert_restores(&repo, "old1", &img, dir.path());
}

#[test]
fn a_backup_does_not_publish_chunks_a_concurrent_gc_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let img = random_image(8);
    {
        let repo = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
        store(&repo, "b1", None, 1, &img);
        store(&repo, "b2", Some("b1"), 2, &random_image(9));
    }
    // A backup that reuses b1's chunks, and (its lock broken) a prune and
    // gc that drop b1 meanwhile.
    let nolock = RepoOptions::default();
    let running = Repo::open_with(&root, &nolock).unwrap();
    let extents: Vec<_> = img.iter().map(|d| running.put_extent(d).unwrap()).collect();
    let other = Repo::open_with(&root, &nolock).unwrap();
    super::prune::remove_backup(&other, "b1").unwrap();
    gc(
        &other,
        &GcOptions {
            grace_secs: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: "b3".into(),
        parent: Some("b2".into()),
        created_ms: 3,
        lun: lun(),
        lock_generation: 3,
        extents,
        stats: Stats::default(),
    };
    let e = running.commit(&m).unwrap_err().to_string();
    assert!(e.contains("vanished"), "{e}");
    assert!(running.list().unwrap().iter().all(|m| m.id != "b3"));
    assert!(verify(&running).unwrap().ok());
}

#[test]
fn a_failed_chunk_write_fails_the_commit_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repo::open_with(&root, &opts(Some(small(None)), None)).unwrap();
    // The writers cannot create their pack: tmp/ is gone.
    std::fs::remove_dir_all(root.join("tmp")).unwrap();
    let img = random_image(10);
    let extents: Vec<_> = img.iter().map(|d| repo.put_extent(d)).collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: "b1".into(),
        parent: None,
        created_ms: 1,
        lun: lun(),
        lock_generation: 1,
        // Later puts fail at once with the first error; keep the count.
        extents: extents
            .into_iter()
            .map(|e| e.unwrap_or(ExtentRef::Zero))
            .collect(),
        stats: Stats::default(),
    };
    let e = repo.commit(&m).unwrap_err().to_string();
    assert!(e.contains("tmp"), "{e}");
    assert!(repo.list().unwrap().is_empty());
}
