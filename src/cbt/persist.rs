//! On-disk formats: meta, snapshot, intent logs (reading side).
//! Little-endian; every file carries a CRC32C.
//!
//! Files in the LUN's tracking directory:
//! * `meta`: uuid, extent size, capacity, high-water mark `H` (no generation
//!   above it was ever handed out), open generation at clean shutdown,
//!   latest recovery generation, clean marker. Replaced atomically.
//! * `snapshot`: every non-zero extent generation and hint bit as of a
//!   checkpoint, plus the intent epoch from which logs still matter.
//! * `intent.<epoch>`: a header, then 12-byte records (region, crc). Bad
//!   records at the tail are a torn append and ignored; a bad record before
//!   a good one is damage (see `read_log`). Appends live in `intent.rs`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

use crate::durable;

use super::map::{CHUNK_EXTENTS, ExtentMap};

const META_MAGIC: &[u8; 8] = b"GTCBTMET";
const SNAP_MAGIC: &[u8; 8] = b"GTCBTSNP";
pub(crate) const LOG_MAGIC: &[u8; 8] = b"GTCBTINT";
const META_LEN: usize = 8 + 4 + 4 + 16 + 8 * 4 + 4 + 4;
pub(crate) const LOG_HEADER_LEN: usize = 8 + 16 + 8 + 4;
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
        if !meta.extent_blocks.is_power_of_two() {
            return Err(corrupt("meta: extent size not a power of two"));
        }
        if meta.open == 0 || meta.open > meta.high_water || meta.recovery_gen > meta.high_water {
            return Err(corrupt("meta: generations inconsistent"));
        }
        Ok(meta)
    }
}

pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    durable::replace(&dir.join("meta"), |w| w.write_all(&meta.encode()))
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
    durable::replace(&dir.join("snapshot"), |w| {
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

pub(crate) fn log_name(epoch: u64) -> String {
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

pub(crate) fn record_crc(epoch: u64, region: u64) -> u32 {
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
