//! The repository on disk:
//!
//! ```text
//! DIR/chunks/<2 hex>/<blake3 hex>    extent data, content-addressed
//! DIR/backups/<id>/manifest.json     one complete backup
//! DIR/tmp/                           files being written
//! ```
//!
//! A chunk is written to tmp/, fsynced and renamed into place; a backup
//! appears only when its manifest is renamed into `backups/<id>/` after
//! every chunk it names and the manifest itself are durable. A crash at
//! any point leaves at most orphan chunks and temp files: harmless.

use super::manifest::{ExtentRef, Manifest, is_digest};
use super::{BackupError, Result};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    /// Chunk directories written since the last `sync_chunks`.
    dirty_dirs: Mutex<BTreeSet<PathBuf>>,
    tmp_seq: AtomicU64,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(dir))
}

impl Repo {
    /// Open a repository, creating its directories if needed.
    pub fn open(root: &Path) -> Result<Repo> {
        for sub in ["chunks", "backups", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(BackupError::io(&p))?;
        }
        Ok(Repo {
            root: root.to_path_buf(),
            dirty_dirs: Mutex::new(BTreeSet::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// Open an existing repository (no directories created).
    pub fn open_existing(root: &Path) -> Result<Repo> {
        if !root.join("backups").is_dir() {
            return Err(BackupError::Invalid(format!(
                "{} is not a backup repository",
                root.display()
            )));
        }
        Repo::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("chunks")
            .join(&digest[..2.min(digest.len())])
            .join(digest)
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Store one extent's data: zeros become a marker, anything else a
    /// chunk named by its BLAKE3 digest (kept if already there).
    pub fn put_extent(&self, data: &[u8]) -> Result<ExtentRef> {
        if data.iter().all(|&b| b == 0) {
            return Ok(ExtentRef::Zero);
        }
        let digest = blake3::hash(data).to_hex().to_string();
        let path = self.chunk_path(&digest);
        if !path.exists() {
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            fs::create_dir_all(&dir).map_err(BackupError::io(&dir))?;
            let tmp = self.tmp_path("chunk");
            write_synced(&tmp, data)?;
            fs::rename(&tmp, &path).map_err(BackupError::io(&path))?;
            self.dirty_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir);
        }
        Ok(ExtentRef::Blake3(digest))
    }

    /// Read a chunk and check it still hashes to its name.
    pub fn get_chunk(&self, digest: &str) -> Result<Vec<u8>> {
        if !is_digest(digest) {
            return Err(BackupError::Invalid(format!("bad digest {digest:?}")));
        }
        let path = self.chunk_path(digest);
        let data = fs::read(&path).map_err(BackupError::io(&path))?;
        if blake3::hash(&data).to_hex().as_str() != digest {
            return Err(BackupError::Invalid(format!(
                "chunk {} is corrupt (content does not match its digest)",
                path.display()
            )));
        }
        Ok(data)
    }

    /// Make every chunk renamed so far durable (their directory entries).
    pub fn sync_chunks(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        for d in &dirs {
            fsync_dir(d)?;
        }
        fsync_dir(&self.root.join("chunks"))
    }

    /// Publish a backup: chunks durable, manifest written to a temp file
    /// and fsynced, renamed into a fresh `backups/<id>/`, directories
    /// fsynced. Before the rename nothing is visible.
    pub fn commit(&self, m: &Manifest) -> Result<()> {
        m.check().map_err(BackupError::Invalid)?;
        self.sync_chunks()?;
        let json = serde_json::to_vec_pretty(m).map_err(|source| BackupError::Json {
            path: self.root.clone(),
            source,
        })?;
        let dest = self.backup_dir(&m.id)?;
        if dest.exists() {
            return Err(BackupError::Invalid(format!("backup {} exists", m.id)));
        }
        // Build the whole directory under tmp/, then one rename publishes it.
        let staging = self.tmp_path("backup");
        let staged = fs::create_dir_all(&staging)
            .map_err(BackupError::io(&staging))
            .and_then(|()| write_synced(&staging.join(MANIFEST), &json))
            .and_then(|()| fsync_dir(&staging))
            .and_then(|()| fs::rename(&staging, &dest).map_err(BackupError::io(&dest)));
        if staged.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        staged?;
        fsync_dir(&self.root.join("backups"))
    }

    fn backup_dir(&self, id: &str) -> Result<PathBuf> {
        let ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BackupError::Invalid(format!("bad backup id {id:?}")));
        }
        Ok(self.root.join("backups").join(id))
    }

    pub fn load(&self, id: &str) -> Result<Manifest> {
        let path = self.backup_dir(id)?.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NotFound(id.to_string()));
            }
            r => r.map_err(BackupError::io(&path))?,
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| BackupError::Json {
            path: path.clone(),
            source,
        })?;
        if m.id != id {
            return Err(BackupError::Invalid(format!(
                "{}: id {:?} does not match its directory",
                path.display(),
                m.id
            )));
        }
        m.check()
            .map_err(|e| BackupError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(m)
    }

    /// Ids of every backup directory (complete or not loadable), sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let dir = self.root.join("backups");
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).map_err(BackupError::io(&dir))? {
            let e = e.map_err(BackupError::io(&dir))?;
            ids.push(e.file_name().to_string_lossy().into_owned());
        }
        ids.sort();
        Ok(ids)
    }

    /// Every loadable backup, oldest first.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            if let Ok(m) = self.load(&id) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// The newest backup of the LUN with this NAA, the base of the next.
    pub fn latest_for(&self, naa: &str) -> Result<Option<Manifest>> {
        Ok(self.list()?.into_iter().rev().find(|m| m.lun.naa == naa))
    }

    /// Every chunk file present: (digest, size in bytes).
    pub fn chunk_files(&self) -> Result<Vec<(String, u64)>> {
        let top = self.root.join("chunks");
        let mut out = Vec::new();
        for sub in fs::read_dir(&top).map_err(BackupError::io(&top))? {
            let sub = sub.map_err(BackupError::io(&top))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(BackupError::io(&sub))? {
                let f = f.map_err(BackupError::io(&sub))?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((f.file_name().to_string_lossy().into_owned(), len));
            }
        }
        Ok(out)
    }

    /// Size of a stored chunk (0 if missing).
    pub fn chunk_len(&self, digest: &str) -> u64 {
        fs::metadata(self.chunk_path(digest))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Files left in tmp/ by interrupted runs.
    pub fn leftovers(&self) -> Result<usize> {
        let dir = self.root.join("tmp");
        Ok(fs::read_dir(&dir).map_err(BackupError::io(&dir))?.count())
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(BackupError::io(path))?;
    f.write_all(data).map_err(BackupError::io(path))?;
    f.sync_all().map_err(BackupError::io(path))
}

/// A new backup id: creation time, sortable, plus a random tail so two
/// runs in the same millisecond differ.
pub fn new_id(created_ms: u64) -> String {
    format!("{created_ms:013}-{:04x}", rand::random::<u16>())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
