//! The repository on disk (format version 2, docs/backup.md):
//!
//! ```text
//! DIR/config                   format, version, pack size, zstd level, wrapped key
//! DIR/packs/<2 hex>/<id>.pack  chunks, ~32 MiB per file (pack.rs)
//! DIR/index/<ms>-<rand>        index segments: chunk -> pack, offset (index.rs)
//! DIR/manifests/<backup id>    one sealed manifest per complete backup
//! DIR/pruned/<backup id>       tombstones of backups prune removed
//! DIR/locks/                   lock files (lock.rs)
//! DIR/tmp/                     packs and files being written
//! ```
//!
//! A backup appears in three durable steps: its packs are fsynced and
//! renamed into packs/ (one fsync per pack), then one index segment names
//! their chunks, then the manifest is renamed into manifests/. Only the
//! manifest makes a backup visible, and it is written only once every
//! chunk it names is durable and indexed; a crash earlier leaves packs or
//! a segment nothing references, which gc collects.

use super::crypto::{self, KeySource};
use super::format::{Codec, Config, DEFAULT_PACK_BYTES, DEFAULT_ZSTD_LEVEL, Kind};
use super::index::{self, Index, Loc};
use super::lock::{self, LockMode, RepoLock};
use super::manifest::{ExtentRef, Manifest};
use super::pack::{self, PackId};
use super::writer::{Pipeline, Store, locked};
use super::{BackupError, Result, fsio};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// How a repository is created when it does not exist yet.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub pack_bytes: u64,
    pub zstd_level: i32,
    pub encrypt: Option<KeySource>,
    /// Argon2id (memory KiB, passes); None = 64 MiB, 3.
    pub kdf_cost: Option<(u32, u32)>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            pack_bytes: DEFAULT_PACK_BYTES,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            encrypt: None,
            kdf_cost: None,
        }
    }
}

/// How to open a repository.
#[derive(Debug, Clone, Default)]
pub struct RepoOptions {
    /// None takes no lock (only for tools that already hold one).
    pub lock: Option<LockMode>,
    pub command: String,
    /// Remove stale locks (their process is gone) first.
    pub break_lock: bool,
    /// Create the repository if missing.
    pub create: Option<CreateOptions>,
    pub key: Option<KeySource>,
    /// Overrides the repository's zstd level for chunks written now.
    pub zstd_level: Option<i32>,
    /// Open although format-1 data is still there (repo-upgrade itself).
    pub upgrading: bool,
}

pub struct Repo {
    root: PathBuf,
    pub(super) cfg: Config,
    pub(super) codec: Arc<Codec>,
    pub(super) index: RwLock<Index>,
    store: Arc<Store>,
    pipeline: Pipeline,
    /// Packs open for reading, most recent last (parallel restores read
    /// a few packs at once).
    read_cache: Mutex<Vec<(PackId, Arc<File>)>>,
    tmp_seq: AtomicU64,
    _lock: Option<RepoLock>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.root.display())
    }
}

/// Format-1 data (one file per chunk, `backups/<id>/manifest.json`) is
/// there: format 2 never has a `backups/` directory, and repo-upgrade
/// removes it last, so an interrupted upgrade is still seen as one.
pub fn is_old_format(root: &Path) -> bool {
    root.join("backups").is_dir()
}

impl Repo {
    /// Open for writing (exclusive lock), creating with defaults if missing.
    pub fn open(root: &Path) -> Result<Repo> {
        Repo::open_with(
            root,
            &RepoOptions {
                lock: Some(LockMode::Exclusive),
                command: "backup".into(),
                create: Some(CreateOptions::default()),
                ..Default::default()
            },
        )
    }

    /// Open an existing repository for reading (shared lock).
    pub fn open_existing(root: &Path) -> Result<Repo> {
        Repo::open_with(
            root,
            &RepoOptions {
                lock: Some(LockMode::Shared),
                command: "read".into(),
                ..Default::default()
            },
        )
    }

    pub fn open_with(root: &Path, o: &RepoOptions) -> Result<Repo> {
        if is_old_format(root) && !o.upgrading {
            return Err(BackupError::OldFormat(root.to_path_buf()));
        }
        let cfg_path = root.join("config");
        if !cfg_path.exists() {
            match &o.create {
                Some(c) => init(root, c)?,
                None => {
                    return Err(BackupError::Invalid(format!(
                        "{} is not a backup repository (no config)",
                        root.display()
                    )));
                }
            }
        }
        let cfg = read_config(root)?;
        let keys = match &cfg.encryption {
            Some(e) => Some(crypto::unlock(e, o.key.as_ref())?),
            None => None,
        };
        let lock = o
            .lock
            .map(|m| lock::acquire(&root.join("locks"), m, &o.command, o.break_lock))
            .transpose()?;
        for sub in ["packs", "index", "manifests", "pruned", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(BackupError::io(&p))?;
        }
        let codec = Arc::new(Codec {
            keys,
            zstd_level: o.zstd_level.unwrap_or(cfg.zstd_level),
        });
        let index = index::load(&codec, &root.join("index"))?;
        let store = Arc::new(Store {
            codec: codec.clone(),
            state: Mutex::default(),
            pack: Mutex::default(),
            tmp: root.join("tmp"),
            packs: root.join("packs"),
            pack_bytes: cfg.pack_bytes,
        });
        Ok(Repo {
            root: root.to_path_buf(),
            cfg,
            codec,
            index: RwLock::new(index),
            store,
            pipeline: Pipeline::default(),
            read_cache: Mutex::default(),
            tmp_seq: AtomicU64::new(0),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub(super) fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    pub(super) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub(super) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a chunk is stored, committed or written by this process.
    pub fn chunk_loc(&self, id: &blake3::Hash) -> Option<Loc> {
        if let Some(l) = self.index().chunks.get(id) {
            return Some(*l);
        }
        locked(&self.store.state).pending.get(id).copied()
    }

    /// Store one extent's data: zeros become a marker, anything else a
    /// chunk named by its (keyed) BLAKE3 id, queued for the writer threads
    /// (writer.rs) unless the repository has it already. Called from
    /// several blocking threads at once.
    pub fn put_extent(&self, data: &[u8]) -> Result<ExtentRef> {
        let mut r = self.put_chunks(vec![Bytes::copy_from_slice(data)])?;
        Ok(r.pop().expect("one result per chunk"))
    }

    /// [`Self::put_extent`] for several extents (one READ's), without
    /// copying them: the chunks to write go to the writers as one batch.
    pub fn put_chunks(&self, chunks: Vec<Bytes>) -> Result<Vec<ExtentRef>> {
        let named: Vec<_> = chunks
            .into_iter()
            .map(|d| (!is_zero(&d)).then(|| (self.codec.chunk_id(&d), d)))
            .collect();
        let refs = named
            .iter()
            .map(|n| match n {
                Some((id, _)) => ExtentRef::Blake3(id.to_hex().to_string()),
                None => ExtentRef::Zero,
            })
            .collect();
        let mut new: Vec<_> = {
            let idx = self.index();
            named
                .into_iter()
                .flatten()
                .filter(|(id, _)| !idx.chunks.contains_key(id))
                .collect()
        };
        {
            let mut w = locked(&self.store.state);
            // `queued.insert` is false for a chunk already on its way
            // (the same content twice in one batch included).
            new.retain(|(id, _)| !w.pending.contains_key(id) && w.queued.insert(*id));
        }
        if !new.is_empty() {
            self.pipeline.submit(&self.store, new)?;
        }
        Ok(refs)
    }

    /// Make every chunk written so far durable and indexed: close the open
    /// pack, fsync the pack directories, publish one index segment.
    pub fn flush(&self) -> Result<()> {
        self.pipeline.wait()?;
        let open = locked(&self.store.pack).take();
        if let Some(p) = open.filter(|p| !p.is_empty()) {
            self.store.finish_pack(p)?;
        }
        let (pending, dirs) = {
            let mut w = locked(&self.store.state);
            (
                std::mem::take(&mut w.pending),
                std::mem::take(&mut w.dirty_dirs),
            )
        };
        if pending.is_empty() {
            return Ok(());
        }
        for d in &dirs {
            fsio::fsync_dir(d)?;
        }
        fsio::fsync_dir(&self.dir("packs"))?;
        let entries: Vec<_> = pending.into_iter().collect();
        let name =
            index::write_segment(&self.codec, &self.dir("index"), &self.dir("tmp"), &entries)?;
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        idx.chunks.extend(entries);
        idx.segments.push(name);
        idx.segments.sort();
        Ok(())
    }

    /// Publish a backup: chunks durable and indexed, then the sealed
    /// manifest renamed into manifests/. Before the rename nothing is
    /// visible.
    pub fn commit(&self, m: &Manifest) -> Result<()> {
        m.check().map_err(BackupError::Invalid)?;
        self.flush()?;
        self.check_still_indexed(m)?;
        let dest = self.manifest_path(&m.id)?;
        if dest.exists() {
            return Err(BackupError::Invalid(format!("backup {} exists", m.id)));
        }
        let json = serde_json::to_vec(m).map_err(|source| BackupError::Json {
            path: dest.clone(),
            source,
        })?;
        let sealed = self.codec.seal(Kind::Manifest, m.id.as_bytes(), &json);
        fsio::write_atomic(&self.tmp_path("manifest"), &dest, &sealed)
    }

    /// A chunk this backup reused must still be in the index on disk:
    /// if another process (a gc that broke our lock) rewrote the index
    /// meanwhile, reload it and refuse to publish what it dropped.
    fn check_still_indexed(&self, m: &Manifest) -> Result<()> {
        let on_disk = fsio::names(&self.dir("index"))?;
        if on_disk == self.index().segments {
            return Ok(());
        }
        let fresh = index::load(&self.codec, &self.dir("index"))?;
        for e in &m.extents {
            if let ExtentRef::Blake3(h) = e
                && !parse_id(h).is_ok_and(|id| fresh.chunks.contains_key(&id))
            {
                return Err(BackupError::Invalid(format!(
                    "chunk {h} vanished from the index while this backup ran (a concurrent gc?); nothing published"
                )));
            }
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Every chunk `m` names is in the index (before a restore writes).
    pub fn check_indexed(&self, m: &Manifest) -> Result<()> {
        let idx = self.index();
        let missing = m
            .extents
            .iter()
            .filter_map(|e| match e {
                ExtentRef::Blake3(h) => Some(h),
                ExtentRef::Zero => None,
            })
            .filter(|h| !parse_id(h).is_ok_and(|id| idx.chunks.contains_key(&id)))
            .count();
        if missing > 0 {
            return Err(BackupError::Corrupt {
                what: format!("backup {}", m.id),
                why: format!("{missing} of its chunks are not in the repository index; run verify"),
            });
        }
        Ok(())
    }

    pub(super) fn manifest_path(&self, id: &str) -> Result<PathBuf> {
        let ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BackupError::Invalid(format!("bad backup id {id:?}")));
        }
        Ok(self.dir("manifests").join(id))
    }

    /// A manifest and its raw JSON (for fields this version does not know).
    pub fn load_json(&self, id: &str) -> Result<(Manifest, serde_json::Value)> {
        let path = self.manifest_path(id)?;
        let bytes = match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NotFound(id.to_string()));
            }
            r => r.map_err(BackupError::io(&path))?,
        };
        let corrupt = |why: String| BackupError::Corrupt {
            what: format!("manifest {}", path.display()),
            why,
        };
        let json = self
            .codec
            .open(Kind::Manifest, id.as_bytes(), &bytes)
            .map_err(corrupt)?;
        let value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        let m: Manifest =
            serde_json::from_value(value.clone()).map_err(|e| corrupt(e.to_string()))?;
        if m.id != id {
            return Err(corrupt(format!("id {:?} does not match its name", m.id)));
        }
        m.check().map_err(corrupt)?;
        Ok((m, value))
    }

    pub fn load(&self, id: &str) -> Result<Manifest> {
        Ok(self.load_json(id)?.0)
    }

    /// Ids of every manifest file (complete or not loadable), sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        fsio::names(&self.dir("manifests"))
    }

    /// Ids of backups removed by prune.
    pub fn pruned_ids(&self) -> Result<BTreeSet<String>> {
        Ok(fsio::names(&self.dir("pruned"))?.into_iter().collect())
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

    /// Read a chunk, decode it and check it against its id.
    pub fn get_chunk(&self, digest: &str) -> Result<Vec<u8>> {
        self.get_chunk_id(&parse_id(digest)?)
    }

    /// [`Repo::get_chunk`] by parsed id (instant-restore LUNs keep ids parsed).
    pub fn get_chunk_id(&self, id: &blake3::Hash) -> Result<Vec<u8>> {
        let loc = self.chunk_loc(id).ok_or_else(|| BackupError::Corrupt {
            what: format!("chunk {}", id.to_hex()),
            why: "not in the repository index".into(),
        })?;
        self.read_chunk(id, &loc)
    }

    pub(super) fn read_chunk(&self, id: &blake3::Hash, loc: &Loc) -> Result<Vec<u8>> {
        let path = pack::pack_path(&self.dir("packs"), &loc.pack);
        let corrupt = |why: String| BackupError::Corrupt {
            what: format!("chunk {} in pack {}", id.to_hex(), path.display()),
            why,
        };
        let f = self
            .pack_file(&loc.pack, &path)
            .map_err(|e| corrupt(e.to_string()))?;
        let blob = pack::read_blob(&f, loc.offset, loc.len).map_err(|e| corrupt(e.to_string()))?;
        self.codec
            .decode_chunk(id, loc.raw_len as usize, &blob)
            .map_err(corrupt)
    }

    /// Pack `id` open for reading (kept open for the next read).
    pub(super) fn open_pack(&self, id: &PackId) -> std::io::Result<Arc<File>> {
        self.pack_file(id, &pack::pack_path(&self.dir("packs"), id))
    }

    /// The last few packs opened stay open: restores read packs in runs,
    /// several workers at once.
    fn pack_file(&self, id: &PackId, path: &Path) -> std::io::Result<Arc<File>> {
        const OPEN_PACKS: usize = 16;
        let mut c = locked(&self.read_cache);
        if let Some(k) = c.iter().position(|(cid, _)| cid == id) {
            let e = c.remove(k);
            let f = e.1.clone();
            c.push(e);
            return Ok(f);
        }
        let f = Arc::new(File::open(path)?);
        if c.len() >= OPEN_PACKS {
            c.remove(0);
        }
        c.push((*id, f.clone()));
        Ok(f)
    }

    /// The id a chunk of `data` has in this repository (keyed BLAKE3 when
    /// encrypted), to tell whether data already present is a chunk's.
    pub fn chunk_id(&self, data: &[u8]) -> blake3::Hash {
        self.codec.chunk_id(data)
    }

    /// Every chunk indexed or written by this process: (id hex, stored bytes).
    pub fn chunk_files(&self) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<_> = self
            .index()
            .chunks
            .iter()
            .map(|(h, l)| (h.to_hex().to_string(), u64::from(l.len)))
            .collect();
        let w = locked(&self.store.state);
        out.extend(
            w.pending
                .iter()
                .map(|(h, l)| (h.to_hex().to_string(), u64::from(l.len))),
        );
        out.extend(w.queued.iter().map(|h| (h.to_hex().to_string(), 0)));
        Ok(out)
    }

    /// Files left in tmp/ by interrupted runs (and the open pack).
    pub fn leftovers(&self) -> Result<usize> {
        Ok(fsio::names(&self.dir("tmp"))?.len())
    }

    /// Every pack file under packs/: (id, path, bytes).
    pub fn pack_files(&self) -> Result<Vec<(PackId, PathBuf, u64)>> {
        let mut out = Vec::new();
        let top = self.dir("packs");
        for sub in fsio::names(&top)? {
            for name in fsio::names(&top.join(&sub))? {
                let p = top.join(&sub).join(&name);
                if let Some(id) = pack::parse_pack_name(&name) {
                    let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    out.push((id, p, len));
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        self.pipeline.shutdown();
        // An open pack nothing indexes is of no use to anyone.
        if let Some(p) = locked(&self.store.pack).take() {
            p.abandon();
        }
    }
}

/// All zeros? Compared 256 bytes at a time, OR-folded as u64 words the
/// compiler vectorises, stopping at the first block that is not: cheap on
/// data (the first block decides) and on zeros (SIMD, not byte by byte).
fn is_zero(d: &[u8]) -> bool {
    let mut blocks = d.chunks_exact(256);
    let words_zero = |b: &[u8]| {
        b.chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
            .fold(0, |a, w| a | w)
            == 0
    };
    blocks.all(words_zero) && blocks.remainder().iter().all(|&b| b == 0)
}

pub(super) fn loc_of(pack: PackId, e: &pack::PackEntry) -> Loc {
    Loc {
        pack,
        offset: e.offset,
        len: e.len,
        raw_len: e.raw_len,
    }
}

pub fn parse_id(digest: &str) -> Result<blake3::Hash> {
    blake3::Hash::from_hex(digest)
        .map_err(|_| BackupError::Invalid(format!("bad chunk id {digest:?}")))
}

/// Re-wrap the master key for `new` (KEK rotation; data is unchanged).
pub fn change_key(repo: &Repo, old: &KeySource, new: &KeySource) -> Result<()> {
    let Some(enc) = &repo.cfg.encryption else {
        return Err(BackupError::Invalid(
            "the repository is not encrypted".into(),
        ));
    };
    let mut cfg = repo.cfg.clone();
    cfg.encryption = Some(crypto::rewrap(enc, old, new, None)?);
    write_config(&repo.root, &cfg)
}

fn read_config(root: &Path) -> Result<Config> {
    let path = root.join("config");
    let bytes = fs::read(&path).map_err(BackupError::io(&path))?;
    let cfg: Config =
        serde_json::from_slice(&bytes).map_err(|source| BackupError::Json { path, source })?;
    cfg.check()?;
    Ok(cfg)
}

/// Replace `config` atomically (key changes).
pub(super) fn write_config(root: &Path, cfg: &Config) -> Result<()> {
    let json = serde_json::to_vec_pretty(cfg).map_err(|source| BackupError::Json {
        path: root.join("config"),
        source,
    })?;
    fsio::write_atomic(&root.join("config.tmp"), &root.join("config"), &json)
}

pub(super) fn init(root: &Path, c: &CreateOptions) -> Result<()> {
    fs::create_dir_all(root).map_err(BackupError::io(root))?;
    let mut cfg = Config::new(c.pack_bytes, c.zstd_level);
    if let Some(src) = &c.encrypt {
        cfg.encryption = Some(crypto::create(src, c.kdf_cost)?.0);
    }
    write_config(root, &cfg)
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
