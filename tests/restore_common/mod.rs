//! Shared by tests/restore_full.rs and tests/restore_rollback.rs: a real
//! `gentgt serve` with file LUNs (64 KiB extents, tracking on), the
//! `gentgt` binary for backups and restores, and our initiator to fill
//! and read the LUNs.
#![allow(dead_code)]

use crate::common::ServeProcess;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const TARGET: &str = "iqn.2026-11.dev.gentgt:restore";
pub const WRITER: &str = "iqn.2026-11.dev.gentgt:writer";
pub const BS: u32 = 512;
/// Blocks per 64 KiB extent.
pub const EB: u64 = 128;
pub const EXTENT: usize = 64 << 10;

/// A server with one file LUN per size (MiB), LUN i at `lun{i}.img`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub serve: ServeProcess,
    pub repo: PathBuf,
    pub luns: u64,
}

impl Env {
    pub fn start(sizes_mib: &[u64]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!("listen = [\"127.0.0.1:0\"]\n\n[[target]]\nname = \"{TARGET}\"\n");
        for (i, s) in sizes_mib.iter().enumerate() {
            toml += &format!(
                "\n[[target.lun]]\nid = {i}\nbackend = \"file\"\npath = \"lun{i}.img\"\nsize = \"{s}MiB\"\nblock_size = {BS}\nextent_size = \"64KiB\"\n"
            );
        }
        let serve = ServeProcess::start_in(dir.path(), &toml);
        let repo = dir.path().join("repo");
        Env {
            dir,
            serve,
            repo,
            luns: sizes_mib.len() as u64,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn lun_file(&self, lun: u64) -> PathBuf {
        self.dir.path().join(format!("data/lun{lun}.img"))
    }

    pub fn portal(&self) -> String {
        self.serve.addr.to_string()
    }

    pub async fn login(&self, name: &str) -> Session {
        let mut o = ConnectOptions::new(self.serve.addr, name, Some(TARGET));
        o.timeout = Duration::from_secs(20);
        let s = Initiator::connect(&o).await.unwrap();
        // Each LUN's power-on unit attention, taken once.
        for lun in 0..self.luns {
            let _ = s.test_unit_ready(lun).await;
        }
        s
    }

    /// `gentgt ARGS`: (success, stdout + stderr).
    pub fn gentgt(&self, args: &[&str]) -> (bool, String) {
        crate::common::gentgt_cli(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.gentgt(args);
        assert!(ok, "gentgt {args:?} failed: {text}");
        text
    }

    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        let (ok, text) = self.gentgt(args);
        assert!(
            !ok && text.contains(needle),
            "gentgt {args:?} should fail with {needle:?}: {text}"
        );
        text
    }

    /// A backup of `lun` into the repository (`extra`: key options);
    /// returns its id.
    pub fn backup(&self, lun: u64, extra: &[&str]) -> String {
        let (p, r, l) = (self.portal(), self.repo_str(), lun.to_string());
        let mut args = vec![
            "backup", "--portal", &p, "--target", TARGET, "--lun", &l, "--repo", &r, "--quiet",
        ];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let line = out.lines().find(|l| l.starts_with("backup ")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_string()
    }

    pub fn repo_str(&self) -> String {
        self.repo.to_str().unwrap().to_string()
    }
}

/// Random data into every extent whose index `keep(i)` says, zeros into
/// the others (the whole LUN is written).
pub async fn fill(s: &Session, lun: u64, extents: u64, seed: u64, keep: impl Fn(u64) -> bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..extents {
        let mut d = vec![0u8; EXTENT];
        if keep(i) {
            rng.fill(&mut d[..]);
        }
        s.write16(lun, i * EB, &d, BS, false).await.unwrap();
    }
}

/// Random data into the given extents only.
pub async fn scribble(s: &Session, lun: u64, extents: &[u64], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for &i in extents {
        let mut d = vec![0u8; EXTENT];
        rng.fill(&mut d[..]);
        s.write16(lun, i * EB, &d, BS, false).await.unwrap();
    }
}

/// The whole LUN, 1 MiB per READ.
pub async fn read_all(s: &Session, lun: u64) -> Vec<u8> {
    let (blocks, _) = s.read_capacity16(lun).await.unwrap();
    let mut out = Vec::new();
    let mut lba = 0;
    while lba < blocks {
        let n = 2048.min(blocks - lba) as u32;
        out.extend(s.read16(lun, lba, n, BS).await.unwrap());
        lba += u64::from(n);
    }
    out
}

/// Bytes the file really occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// First differing byte, for a readable failure.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: differs from the backup at byte {at}");
    }
}
