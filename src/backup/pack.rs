//! Pack files: many chunks in one file, one fsync per pack.
//!
//! ```text
//! "GTPACK2\n"                        8-byte header
//! blob blob blob ...                 encoded chunks (format::Codec)
//! trailer                            sealed per-pack index (Kind::PackTrailer)
//! u32 LE trailer length, "GTPE"      fixed 8-byte end
//! ```
//!
//! A pack is written under `tmp/`, fsynced and renamed into
//! `packs/<2 hex>/<32 hex>.pack`; it only counts once an index segment
//! names it. The trailer repeats what the repository index says about the
//! pack's chunks, so verify can cross-check and a lost index could be
//! rebuilt from the packs alone.

use super::format::{Blob, Codec, Kind, Reader};
use super::{BackupError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub type PackId = [u8; 16];

const HEADER: &[u8; 8] = b"GTPACK2\n";
const END_MAGIC: &[u8; 4] = b"GTPE";
const TRAILER_ENTRY: usize = 32 + 8 + 4 + 4;
/// Written bytes after which the kernel is asked to start writing them
/// back (sync_file_range WRITE, no wait): the disk works while the pack
/// fills, so the fsync that finishes it has little left to do instead of
/// the whole pack.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// iovecs per writev (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// Where a chunk lives inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: blake3::Hash,
    pub offset: u64,
    /// Stored (encoded) length.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

pub fn new_pack_id() -> PackId {
    rand::random()
}

pub fn pack_path(packs: &Path, id: &PackId) -> PathBuf {
    let h = hex::encode(id);
    packs.join(&h[..2]).join(format!("{h}.pack"))
}

/// The pack id a file name under `packs/` stands for.
pub fn parse_pack_name(name: &str) -> Option<PackId> {
    let h = name.strip_suffix(".pack")?;
    hex::decode(h).ok()?.try_into().ok()
}

/// A pack being filled.
pub struct PackWriter {
    pub id: PackId,
    file: File,
    tmp: PathBuf,
    written: u64,
    /// Bytes up to here were handed to writeback already.
    kicked: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path) -> Result<PackWriter> {
        let id = new_pack_id();
        let tmp = tmp_dir.join(format!("{}.pack", hex::encode(id)));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(BackupError::io(&tmp))?;
        file.write_all(HEADER).map_err(BackupError::io(&tmp))?;
        Ok(PackWriter {
            id,
            file,
            tmp,
            written: HEADER.len() as u64,
            kicked: 0,
            entries: Vec::new(),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn append(&mut self, id: blake3::Hash, blob: &[u8], raw_len: usize) -> Result<PackEntry> {
        self.file
            .write_all(blob)
            .map_err(BackupError::io(&self.tmp))?;
        Ok(self.record(id, blob.len(), raw_len))
    }

    /// Append several encoded chunks with one writev (their parts are not
    /// copied together first), as (id, blob, plaintext length).
    pub fn append_blobs(
        &mut self,
        blobs: &[(blake3::Hash, Blob, usize)],
    ) -> Result<Vec<PackEntry>> {
        let mut iov: Vec<IoSlice<'_>> = blobs
            .iter()
            .flat_map(|(_, b, _)| [IoSlice::new(&b.head), IoSlice::new(&b.body)])
            .filter(|s| !s.is_empty())
            .collect();
        write_all_vectored(&mut self.file, &mut iov).map_err(BackupError::io(&self.tmp))?;
        let out = blobs
            .iter()
            .map(|(id, b, raw)| self.record(*id, b.len(), *raw))
            .collect();
        self.kick_writeback();
        Ok(out)
    }

    fn record(&mut self, id: blake3::Hash, len: usize, raw_len: usize) -> PackEntry {
        let e = PackEntry {
            id,
            offset: self.written,
            len: len as u32,
            raw_len: raw_len as u32,
        };
        self.written += len as u64;
        self.entries.push(e);
        e
    }

    /// Start writeback of what was written since the last kick, once that
    /// is enough to be worth a call. Only a hint: an I/O error shows in
    /// the fsync of `finish`, which every pack goes through.
    fn kick_writeback(&mut self) {
        let n = self.written - self.kicked;
        if n < WRITEBACK_EVERY {
            return;
        }
        // SAFETY: plain syscall on an fd this struct owns; no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.kicked as libc::off64_t,
                n as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.kicked = self.written;
    }

    /// Trailer, fsync, rename into `packs/`. Returns the directory whose
    /// entry must still be fsynced before an index may name the pack.
    pub fn finish(
        mut self,
        codec: &Codec,
        packs: &Path,
    ) -> Result<(PackId, Vec<PackEntry>, PathBuf)> {
        let trailer = codec.seal(Kind::PackTrailer, &self.id, &encode_trailer(&self.entries));
        let mut end = trailer;
        end.extend_from_slice(&(end.len() as u32).to_le_bytes());
        end.extend_from_slice(END_MAGIC);
        self.file
            .write_all(&end)
            .map_err(BackupError::io(&self.tmp))?;
        self.file.sync_all().map_err(BackupError::io(&self.tmp))?;
        let dest = pack_path(packs, &self.id);
        let dir = dest.parent().unwrap_or(packs).to_path_buf();
        fs::create_dir_all(&dir).map_err(BackupError::io(&dir))?;
        fs::rename(&self.tmp, &dest).map_err(BackupError::io(&dest))?;
        Ok((self.id, self.entries, dir))
    }

    /// Drop an unfinished pack (nothing names it).
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// `write_all` for iovecs (std's `write_all_vectored` is unstable).
fn write_all_vectored(f: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        match f.write_vectored(&bufs[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => IoSlice::advance_slices(&mut bufs, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn encode_trailer(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TRAILER_ENTRY);
    for e in entries {
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    out
}

fn decode_trailer(b: &[u8]) -> std::result::Result<Vec<PackEntry>, String> {
    if !b.len().is_multiple_of(TRAILER_ENTRY) {
        return Err("trailer length is not a whole number of entries".into());
    }
    let mut r = Reader { buf: b };
    let mut out = Vec::with_capacity(b.len() / TRAILER_ENTRY);
    while !r.buf.is_empty() {
        out.push(PackEntry {
            id: blake3::Hash::from_bytes(r.arr()?),
            offset: r.u64()?,
            len: r.u32()?,
            raw_len: r.u32()?,
        });
    }
    Ok(out)
}

/// The per-pack index at the end of a pack file, authenticated.
pub fn read_trailer(
    codec: &Codec,
    path: &Path,
    id: &PackId,
) -> std::result::Result<Vec<PackEntry>, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if size < (HEADER.len() + 8) as u64 {
        return Err(format!("{size} bytes: truncated"));
    }
    let mut end = [0u8; 8];
    f.read_exact_at(&mut end, size - 8)
        .map_err(|e| e.to_string())?;
    if &end[4..] != END_MAGIC {
        return Err("no pack end marker (truncated?)".into());
    }
    let tlen = u64::from(u32::from_le_bytes(end[..4].try_into().expect("4 bytes")));
    if tlen + 8 + HEADER.len() as u64 > size {
        return Err("trailer longer than the pack".into());
    }
    let mut t = vec![0u8; tlen as usize];
    f.read_exact_at(&mut t, size - 8 - tlen)
        .map_err(|e| e.to_string())?;
    let plain = codec.open(Kind::PackTrailer, id, &t)?;
    decode_trailer(&plain)
}

/// One stored blob: exactly `len` bytes at `offset`, or an error.
pub fn read_blob(f: &File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
