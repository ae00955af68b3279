//! Repository unit tests: atomic appearance, chain checks, corruption.

use super::manifest::{ExtentRef, LunId, MANIFEST_VERSION, Manifest, Stats};
use super::repo::Repo;
use super::{VerifyOptions, restore_to_file, verify, verify_with};

fn read_all_data(repo: &Repo) -> super::VerifyReport {
    let o = VerifyOptions {
        read_data: true,
        subset: None,
    };
    verify_with(repo, &o).unwrap()
}

/// The pack file and offset holding a chunk.
fn chunk_place(repo: &Repo, h: &str) -> (std::path::PathBuf, u64) {
    let l = repo.chunk_loc(&super::repo::parse_id(h).unwrap()).unwrap();
    (
        super::pack::pack_path(&repo.root().join("packs"), &l.pack),
        l.offset,
    )
}

fn lun(uuid: &str) -> LunId {
    LunId {
        naa: "600000000000000000000000000000aa".into(),
        uuid: uuid.into(),
        capacity_blocks: 40,
        block_size: 512,
        extent_blocks: 16, // 3 extents, the last one 8 blocks
    }
}

fn manifest(id: &str, parent: Option<&str>, generation: u64, extents: Vec<ExtentRef>) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        id: id.into(),
        parent: parent.map(str::to_string),
        created_ms: generation,
        lun: lun("u1"),
        lock_generation: generation,
        extents,
        stats: Stats::default(),
    }
}

fn extent(byte: u8, i: u64) -> Vec<u8> {
    vec![byte; lun("u1").extent_bytes(i)]
}

#[test]
fn zero_extents_take_no_chunk_and_chunks_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    assert_eq!(repo.put_extent(&extent(0, 0)).unwrap(), ExtentRef::Zero);
    let a = repo.put_extent(&extent(7, 0)).unwrap();
    let b = repo.put_extent(&extent(7, 1)).unwrap();
    assert_eq!(a, b);
    assert_eq!(repo.chunk_files().unwrap().len(), 1);
    repo.flush().unwrap();
    let ExtentRef::Blake3(h) = a else { panic!() };
    assert_eq!(repo.get_chunk(&h).unwrap(), extent(7, 0));
}

#[test]
fn a_backup_appears_only_when_committed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    let e = repo.put_extent(&extent(1, 0)).unwrap();
    // Chunks stored, nothing committed: no backup, verify is clean.
    assert!(repo.list().unwrap().is_empty());
    let r = verify(&repo).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    // Indexed but unreferenced (a crash between index and manifest).
    repo.flush().unwrap();
    assert_eq!(verify(&repo).unwrap().orphan_chunks, 1);
    // A half-written manifest in tmp/ (crash before the rename) is not a
    // backup either.
    std::fs::write(dir.path().join("tmp/manifest-crashed"), b"GTM2{\"ver").unwrap();
    assert!(repo.list().unwrap().is_empty());
    let m = manifest("b1", None, 3, vec![e, ExtentRef::Zero, ExtentRef::Zero]);
    repo.commit(&m).unwrap();
    assert_eq!(repo.list().unwrap(), vec![m.clone()]);
    assert!(repo.commit(&m).is_err(), "ids are never reused");
    let r = read_all_data(&repo);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!((r.backups, r.chunks_checked, r.orphan_chunks), (1, 1, 0));
    assert_eq!(r.temp_files, 1);
}

#[test]
fn restore_gives_the_image_with_holes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    let a = repo.put_extent(&extent(1, 0)).unwrap();
    let c = repo.put_extent(&extent(3, 2)).unwrap();
    repo.commit(&manifest("b1", None, 3, vec![a, ExtentRef::Zero, c]))
        .unwrap();
    let out = dir.path().join("img");
    restore_to_file(&repo, "b1", &out).unwrap();
    let got = std::fs::read(&out).unwrap();
    let mut want = extent(1, 0);
    want.extend(extent(0, 1));
    want.extend(extent(3, 2));
    assert_eq!(got.len(), 40 * 512);
    assert!(got == want);
}

#[test]
fn verify_checks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    let z = || vec![ExtentRef::Zero; 3];
    repo.commit(&manifest("b1", None, 3, z())).unwrap();
    repo.commit(&manifest("b2", Some("b1"), 5, z())).unwrap();
    assert!(verify(&repo).unwrap().ok());
    // Missing parent.
    repo.commit(&manifest("b3", Some("gone"), 6, z())).unwrap();
    // Parent of another tracking identity.
    let mut other = manifest("b4", Some("b2"), 7, z());
    other.lun = lun("u2");
    repo.commit(&other).unwrap();
    // Generation not above the parent's.
    repo.commit(&manifest("b5", Some("b2"), 5, z())).unwrap();
    let r = verify(&repo).unwrap();
    let all = r.problems.join("\n");
    assert_eq!(r.problems.len(), 3, "{all}");
    assert!(all.contains("b3: parent gone is missing"), "{all}");
    assert!(all.contains("b4: parent b2 is of another LUN"), "{all}");
    assert!(all.contains("b5: generation 5 not above"), "{all}");
}

#[test]
fn verify_detects_a_corrupt_or_missing_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    let a = repo.put_extent(&extent(1, 0)).unwrap();
    let b = repo.put_extent(&extent(2, 1)).unwrap();
    repo.commit(&manifest(
        "b1",
        None,
        3,
        vec![a.clone(), b.clone(), ExtentRef::Zero],
    ))
    .unwrap();
    let (ExtentRef::Blake3(ha), ExtentRef::Blake3(hb)) = (a, b) else {
        panic!()
    };
    // Flip a byte inside chunk a (the quick verify does not read data).
    let (pack, off) = chunk_place(&repo, &ha);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[off as usize + 3] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    assert!(verify(&repo).unwrap().ok());
    let r = read_all_data(&repo);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0].contains(&ha) && r.problems[0].contains("b1"),
        "{:?}",
        r.problems
    );
    assert_eq!(r.damaged_backups, vec!["b1".to_string()]);
    assert!(restore_to_file(&repo, "b1", &dir.path().join("img")).is_err());
    // Both chunks share one pack: removing it is found quickly.
    assert_eq!(chunk_place(&repo, &hb).0, pack);
    std::fs::remove_file(&pack).unwrap();
    let r = verify(&repo).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.damaged_backups, vec!["b1".to_string()]);
    assert!(restore_to_file(&repo, "b1", &dir.path().join("img")).is_err());
}

#[test]
fn a_damaged_manifest_is_a_problem_not_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    repo.commit(&manifest("b1", None, 3, vec![ExtentRef::Zero; 3]))
        .unwrap();
    std::fs::write(dir.path().join("manifests/b1"), b"{}").unwrap();
    assert!(repo.list().unwrap().is_empty());
    let r = verify(&repo).unwrap();
    assert_eq!(r.problems.len(), 1);
    // Wrong number of extents is refused at commit.
    assert!(
        repo.commit(&manifest("b2", None, 4, vec![ExtentRef::Zero; 2]))
            .is_err()
    );
}

#[test]
fn naa_is_found_in_vpd_83() {
    // T10 vendor id first (type 1), then NAA (type 3, LU association).
    let mut d = vec![0, 0x83, 0, 0];
    d.extend([2, 0x01, 0, 4, b'a', b'b', b'c', b'd']);
    d.extend([1, 0x03, 0, 16]);
    d.extend([0x60; 16]);
    let len = (d.len() - 4) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(super::pass::naa_from_vpd83(&d).unwrap(), "60".repeat(16));
    assert_eq!(super::pass::naa_from_vpd83(&d[..10]), None);
}

#[test]
fn zero_detection_sees_the_last_byte_and_odd_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    for len in [1, 255, 256, 4096 + 100, 65536] {
        let mut d = vec![0u8; len];
        assert_eq!(repo.put_extent(&d).unwrap(), ExtentRef::Zero, "{len} zeros");
        *d.last_mut().unwrap() = 1;
        assert_ne!(
            repo.put_extent(&d).unwrap(),
            ExtentRef::Zero,
            "{len}, last byte 1"
        );
        d.fill(0);
        d[len / 2] = 0x80;
        assert_ne!(
            repo.put_extent(&d).unwrap(),
            ExtentRef::Zero,
            "{len}, middle byte"
        );
    }
}

#[test]
fn a_batch_dedupes_within_itself_and_keeps_its_order() {
    use bytes::Bytes;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path()).unwrap();
    let (a, b) = (Bytes::from(extent(1, 0)), Bytes::from(extent(2, 0)));
    let zero = Bytes::from(extent(0, 0));
    let refs = repo
        .put_chunks(vec![a.clone(), zero, b.clone(), a.clone()])
        .unwrap();
    assert_eq!(refs[1], ExtentRef::Zero);
    assert_eq!(refs[0], refs[3]);
    assert_ne!(refs[0], refs[2]);
    assert_eq!(repo.chunk_files().unwrap().len(), 2);
    repo.flush().unwrap();
    let m = manifest(
        "b1",
        None,
        1,
        vec![refs[0].clone(), refs[2].clone(), refs[1].clone()],
    );
    repo.commit(&m).unwrap();
    let out = dir.path().join("out.img");
    restore_to_file(&repo, "b1", &out).unwrap();
    let want = [&a[..], &b[..], &[0u8; 4096][..]].concat();
    assert_eq!(std::fs::read(&out).unwrap(), want);
}

#[test]
fn compression_is_decided_from_samples_without_losing_compressible_chunks() {
    use super::format::Codec;
    use bytes::Bytes;
    use rand::RngCore;
    let codec = Codec {
        keys: None,
        zstd_level: 1,
    };
    let mut random = vec![0u8; 65536];
    rand::thread_rng().fill_bytes(&mut random);
    // Random data is stored raw, the very bytes handed in (no copy).
    let data = Bytes::from(random.clone());
    let id = codec.chunk_id(&data);
    let blob = codec.encode_chunk_parts(&id, data.clone());
    assert_eq!(blob.head, [0]);
    assert_eq!(blob.body.as_ptr(), data.as_ptr());
    // A random first half must not hide a compressible second half.
    let mut half = random.clone();
    half[32768..].fill(0);
    // Nor a compressible first block followed by random data.
    let mut head = random.clone();
    head[..4096].fill(0);
    for d in [half, head] {
        let id = codec.chunk_id(&d);
        let stored = codec.encode_chunk(&id, &d);
        assert_eq!(stored[0], 1, "compressed");
        assert!(stored.len() < d.len() - 3000, "{} bytes", stored.len());
        assert_eq!(codec.decode_chunk(&id, d.len(), &stored).unwrap(), d);
    }
    let stored = codec.encode_chunk(&id, &random);
    assert_eq!(
        codec.decode_chunk(&id, random.len(), &stored).unwrap(),
        random
    );
}
