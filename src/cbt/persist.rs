//! On-disk formats (meta, snapshot, intent logs) and the group-committed
//! write-ahead intent log. Little-endian; every file carries a CRC32C.
//!
//! Files in the LUN's tracking directory:
//! * `meta`: uuid, extent size, capacity, high-water mark `H` (no generation
//!   above it was ever handed out), open generation at clean shutdown,
//!   latest recovery generation, clean marker. Replaced atomically.
//! * `snapshot`: every non-zero extent generation and hint bit as of a
//!   checkpoint, plus the intent epoch from which logs still matter.
//! * `intent.<epoch>`: a header, then 12-byte records (region, crc). A torn
//!   or corrupt record is skipped; the others still count.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::map::{CHUNK_EXTENTS, ExtentMap};

const META_MAGIC: &[u8; 8] = b"GTCBTMET";
const SNAP_MAGIC: &[u8; 8] = b"GTCBTSNP";
const LOG_MAGIC: &[u8; 8] = b"GTCBTINT";
const META_LEN: usize = 8 + 4 + 4 + 16 + 8 * 4 + 4 + 4;
const LOG_HEADER_LEN: usize = 8 + 16 + 8 + 4;
const LOG_RECORD_LEN: usize = 12;
/// How far `H` is persisted ahead of the open generation.
pub(crate) const HIGH_WATER_SLACK: u64 = 1024;

/// Metadata is unreadable: the only reason to change the UUID.
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) String);

fn corrupt(what: impl Into<String>) -> Corrupt {
    Corrupt(what.into())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) uuid: [u8; 16],
    pub(crate) extent_blocks: u32,
    pub(crate) capacity: u64,
    pub(crate) high_water: u64,
    pub(crate) open: u64,
    pub(crate) recovery_gen: u64,
    pub(crate) clean: bool,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(META_LEN);
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&self.extent_blocks.to_le_bytes());
        b.extend_from_slice(&self.uuid);
        for v in [self.capacity, self.high_water, self.open, self.recovery_gen] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&u32::from(self.clean).to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Meta, Corrupt> {
        if b.len() != META_LEN || &b[..8] != META_MAGIC {
            return Err(corrupt("meta: bad length or magic"));
        }
        if crc32c::crc32c(&b[..META_LEN - 4]) != le_u32(b, META_LEN - 4) {
            return Err(corrupt("meta: checksum mismatch"));
        }
        if le_u32(b, 8) != 1 {
            return Err(corrupt("meta: unknown version"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let meta = Meta {
            extent_blocks: le_u32(b, 12),
            uuid,
            capacity: le_u64(b, 32),
            high_water: le_u64(b, 40),
            open: le_u64(b, 48),
            recovery_gen: le_u64(b, 56),
            clean: le_u32(b, 64) != 0,
        };
        if meta.open == 0 || meta.open > meta.high_water || meta.recovery_gen > meta.high_water {
            return Err(corrupt("meta: generations inconsistent"));
        }
        Ok(meta)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `dir/name` with `bytes` atomically and durably.
fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    write_atomic(dir, "meta", |w| w.write_all(&meta.encode()))
}

/// `Ok(None)`: no meta file.
pub(crate) fn read_meta(dir: &Path) -> Result<Option<Meta>, Corrupt> {
    match fs::read(dir.join("meta")) {
        Ok(b) => Meta::decode(&b).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(corrupt(format!("meta: {e}"))),
    }
}

/// Writes bytes and folds them into a running CRC32C.
struct CrcWriter<'a> {
    w: &'a mut dyn Write,
    crc: u32,
}

impl CrcWriter<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.w.write_all(b)
    }
}

/// Snapshot every existing chunk; `epoch`: logs older than it are covered.
pub(crate) fn write_snapshot(
    dir: &Path,
    uuid: &[u8; 16],
    epoch: u64,
    map: &ExtentMap,
) -> io::Result<()> {
    write_atomic(dir, "snapshot", |w| {
        let mut cw = CrcWriter { w, crc: 0 };
        cw.put(SNAP_MAGIC)?;
        cw.put(uuid)?;
        cw.put(&epoch.to_le_bytes())?;
        let mut res: io::Result<()> = Ok(());
        map.for_each_chunk(&mut |ci, chunk| {
            if res.is_err() || chunk.max.load(SeqCst) == 0 {
                return;
            }
            let gens: Vec<u64> = chunk.gens.iter().map(|g| g.load(SeqCst)).collect();
            let nonzero = gens
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, &g)| m | (u64::from(g != 0) << i));
            res = (|| {
                cw.put(&ci.to_le_bytes())?;
                cw.put(&nonzero.to_le_bytes())?;
                cw.put(&chunk.dealloc.load(SeqCst).to_le_bytes())?;
                for g in gens.iter().filter(|&&g| g != 0) {
                    cw.put(&g.to_le_bytes())?;
                }
                Ok(())
            })();
        });
        res?;
        let crc = cw.crc;
        cw.w.write_all(&crc.to_le_bytes())
    })
}

/// One chunk as read back from a snapshot.
pub(crate) struct SnapChunk {
    pub(crate) index: u64,
    pub(crate) gens: [u64; CHUNK_EXTENTS as usize],
    pub(crate) dealloc: u64,
}

pub(crate) struct Snapshot {
    pub(crate) epoch: u64,
    pub(crate) chunks: Vec<SnapChunk>,
}

/// `Ok(None)`: no snapshot file.
pub(crate) fn read_snapshot(dir: &Path, uuid: &[u8; 16]) -> Result<Option<Snapshot>, Corrupt> {
    let b = match fs::read(dir.join("snapshot")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(corrupt(format!("snapshot: {e}"))),
    };
    let head = 8 + 16 + 8;
    if b.len() < head + 4 || &b[..8] != SNAP_MAGIC {
        return Err(corrupt("snapshot: bad length or magic"));
    }
    let body = b.len() - 4;
    if crc32c::crc32c(&b[..body]) != le_u32(&b, body) {
        return Err(corrupt("snapshot: checksum mismatch"));
    }
    if &b[8..24] != uuid {
        return Err(corrupt("snapshot: belongs to another tracking UUID"));
    }
    let epoch = le_u64(&b, 24);
    let mut chunks = Vec::new();
    let mut at = head;
    while at < body {
        if at + 24 > body {
            return Err(corrupt("snapshot: truncated chunk"));
        }
        let (index, nonzero, dealloc) = (le_u64(&b, at), le_u64(&b, at + 8), le_u64(&b, at + 16));
        at += 24;
        let need = nonzero.count_ones() as usize * 8;
        if at + need > body {
            return Err(corrupt("snapshot: truncated generations"));
        }
        let mut gens = [0u64; CHUNK_EXTENTS as usize];
        for (i, g) in gens.iter_mut().enumerate() {
            if nonzero & (1 << i) != 0 {
                *g = le_u64(&b, at);
                at += 8;
            }
        }
        chunks.push(SnapChunk {
            index,
            gens,
            dealloc,
        });
    }
    Ok(Some(Snapshot { epoch, chunks }))
}

fn log_name(epoch: u64) -> String {
    format!("intent.{epoch:016x}")
}

/// Epochs of the intent logs present in `dir`, ascending.
pub(crate) fn list_logs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut epochs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("intent.")) else {
            continue;
        };
        if let Ok(e) = u64::from_str_radix(hex, 16)
            && hex.len() == 16
        {
            epochs.push(e);
        }
    }
    epochs.sort_unstable();
    Ok(epochs)
}

fn record_crc(epoch: u64, region: u64) -> u32 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&epoch.to_le_bytes());
    b[8..].copy_from_slice(&region.to_le_bytes());
    crc32c::crc32c(&b)
}

/// What an intent log says.
pub(crate) struct LogContents {
    pub(crate) regions: Vec<u64>,
    /// A bad record is followed by a good one: not a torn append but damage,
    /// so the regions it named are unknown.
    pub(crate) damaged: bool,
}

/// Regions named by a log. A header that never became durable (short or
/// all zeros) means an empty log; a bad header is corruption. Bad records
/// at the tail are a torn append whose writers never went on: ignored.
pub(crate) fn read_log(dir: &Path, uuid: &[u8; 16], epoch: u64) -> Result<LogContents, Corrupt> {
    let mut b = Vec::new();
    File::open(dir.join(log_name(epoch)))
        .and_then(|mut f| f.read_to_end(&mut b))
        .map_err(|e| corrupt(format!("intent log {epoch}: {e}")))?;
    let mut out = LogContents {
        regions: Vec::new(),
        damaged: false,
    };
    if b.len() < LOG_HEADER_LEN || b[..LOG_HEADER_LEN].iter().all(|&x| x == 0) {
        return Ok(out);
    }
    let h = &b[..LOG_HEADER_LEN];
    let ok = &h[..8] == LOG_MAGIC
        && &h[8..24] == uuid
        && le_u64(h, 24) == epoch
        && crc32c::crc32c(&h[..32]) == le_u32(h, 32);
    if !ok {
        return Err(corrupt(format!("intent log {epoch}: bad header")));
    }
    let mut bad_seen = false;
    for r in b[LOG_HEADER_LEN..].chunks_exact(LOG_RECORD_LEN) {
        if record_crc(epoch, le_u64(r, 0)) == le_u32(r, 8) {
            out.damaged |= bad_seen;
            out.regions.push(le_u64(r, 0));
        } else {
            bad_seen = true;
        }
    }
    Ok(out)
}

#[derive(Default)]
struct LogState {
    files: Vec<(u64, Arc<File>)>,
    pending: Vec<(u64, u64)>,
    next_ticket: u64,
    durable_ticket: u64,
    leader: bool,
    /// After a failed write or fsync nothing more can be promised.
    broken: Option<String>,
    logged: u64,
}

/// Append-only intent logs with leader/follower group commit: whoever finds
/// no leader writes and fsyncs everything pending, the others wait.
#[derive(Default)]
pub(crate) struct IntentLog {
    state: Mutex<LogState>,
    cv: Condvar,
}

impl IntentLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Create the (empty, durable) log of `epoch` so writers can use it.
    pub(crate) fn open_epoch(&self, dir: &Path, uuid: &[u8; 16], epoch: u64) -> io::Result<()> {
        let path = dir.join(log_name(epoch));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        let mut h = Vec::with_capacity(LOG_HEADER_LEN);
        h.extend_from_slice(LOG_MAGIC);
        h.extend_from_slice(uuid);
        h.extend_from_slice(&epoch.to_le_bytes());
        h.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
        file.write_all(&h)?;
        file.sync_all()?;
        fsync_dir(dir)?;
        let mut st = self.lock();
        st.files.push((epoch, Arc::new(file)));
        st.logged = 0;
        Ok(())
    }

    /// Make `regions` durable in the log of `epoch`; returns once they are.
    pub(crate) fn append(&self, epoch: u64, regions: &[u64]) -> io::Result<()> {
        let mut st = self.lock();
        st.pending.extend(regions.iter().map(|&r| (epoch, r)));
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        loop {
            if st.durable_ticket >= ticket {
                return Ok(());
            }
            if let Some(why) = &st.broken {
                return Err(io::Error::other(why.clone()));
            }
            if st.leader {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let batch = std::mem::take(&mut st.pending);
            let upto = st.next_ticket;
            let files = st.files.clone();
            drop(st);
            let res = write_batch(&files, &batch);
            st = self.lock();
            st.leader = false;
            match res {
                Ok(()) => {
                    st.durable_ticket = upto;
                    st.logged += batch.len() as u64;
                }
                Err(e) => {
                    tracing::error!("CBT intent log write failed: {e}");
                    st.broken = Some(e.to_string());
                }
            }
            self.cv.notify_all();
        }
    }

    /// Regions logged since the current epoch started.
    pub(crate) fn logged(&self) -> u64 {
        self.lock().logged
    }

    /// Close and delete every log older than `epoch`.
    pub(crate) fn retire_below(&self, dir: &Path, epoch: u64) -> io::Result<()> {
        self.lock().files.retain(|(e, _)| *e >= epoch);
        for e in list_logs(dir)? {
            if e < epoch {
                fs::remove_file(dir.join(log_name(e)))?;
            }
        }
        fsync_dir(dir)
    }
}

fn write_batch(files: &[(u64, Arc<File>)], batch: &[(u64, u64)]) -> io::Result<()> {
    for (epoch, file) in files {
        let mut buf = Vec::new();
        for &(_, region) in batch.iter().filter(|(e, _)| e == epoch) {
            buf.extend_from_slice(&region.to_le_bytes());
            buf.extend_from_slice(&record_crc(*epoch, region).to_le_bytes());
        }
        if !buf.is_empty() {
            (&**file).write_all(&buf)?;
            file.sync_data()?;
        }
    }
    if let Some((e, _)) = batch
        .iter()
        .find(|(e, _)| !files.iter().any(|(f, _)| f == e))
    {
        return Err(io::Error::other(format!(
            "no intent log open for epoch {e}"
        )));
    }
    Ok(())
}

/// The persistent side of a tracker.
pub(crate) struct Durable {
    pub(crate) dir: PathBuf,
    /// Current intent epoch; regions are (re)logged once per epoch.
    pub(crate) epoch: AtomicU64,
    pub(crate) log: IntentLog,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) checkpoint_lock: Mutex<()>,
}

impl Durable {
    pub(crate) fn new(dir: PathBuf, epoch: u64, meta: Meta) -> Durable {
        Durable {
            dir,
            epoch: AtomicU64::new(epoch),
            log: IntentLog::default(),
            meta: Mutex::new(meta),
            checkpoint_lock: Mutex::new(()),
        }
    }

    pub(crate) fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log regions `[first, last]` not yet logged in the current epoch.
    /// Already-logged regions cost one load each and no allocation.
    pub(crate) fn log_regions(&self, map: &ExtentMap, first: u64, last: u64) -> io::Result<()> {
        let epoch = self.epoch.load(SeqCst);
        let mut missing = Vec::new();
        for r in first..=last {
            if map.region_epoch(r).load(SeqCst) < epoch {
                missing.push(r);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.log.append(epoch, &missing)?;
        for r in missing {
            map.region_epoch(r).fetch_max(epoch, SeqCst);
        }
        Ok(())
    }

    /// Persist `H >= need` before any generation up to `need` is used.
    pub(crate) fn ensure_high_water(&self, need: u64) -> io::Result<()> {
        let mut meta = self.meta();
        if meta.high_water < need {
            let mut next = meta.clone();
            next.high_water = need + HIGH_WATER_SLACK;
            write_meta(&self.dir, &next)?;
            *meta = next;
        }
        Ok(())
    }

    pub(crate) fn set_capacity(&self, capacity: u64) -> io::Result<()> {
        let mut meta = self.meta();
        let mut next = meta.clone();
        next.capacity = capacity;
        write_meta(&self.dir, &next)?;
        *meta = next;
        Ok(())
    }
}
