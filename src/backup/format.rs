//! The repository format (version 2, docs/backup.md "Repository format"):
//! the `config` file, sealed objects (index segments, manifests, pack
//! trailers) and the encoding of one chunk.
//!
//! Every object is checked on read: with encryption by its AEAD tag
//! (the object's kind and name are the associated data, so an object
//! copied under another name does not open), without by a BLAKE3 digest
//! over kind, name and payload. Chunks are checked by their id itself:
//! the (keyed) hash of the plaintext must equal the name they are read by.

use super::crypto::{EncryptionConfig, Keys};
use super::{BackupError, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const FORMAT_NAME: &str = "gentgt-backup-repository";
pub const FORMAT_VERSION: u32 = 2;

/// 32 MiB: 1 TiB of unique data is ~32,768 pack files (the bar is 100,000
/// files per TiB, leaving room for indexes and manifests); one fsync per
/// 32 MiB costs well under the time to write it; a repack of a mostly dead
/// pack copies at most 32 MiB; a crash loses at most one open pack of work.
pub const DEFAULT_PACK_BYTES: u64 = 32 << 20;
/// zstd level 1: the fastest level that is still plain zstd (negative
/// levels trade much ratio for speed); level 3, zstd's default, costs
/// about half the speed for a few percent of size.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// `DIR/config`: plain JSON so any version can tell what it is looking at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub version: u32,
    /// Random, names this repository in lock messages and nonces' AAD.
    pub id: String,
    pub created_ms: u64,
    pub pack_bytes: u64,
    /// 0 stores chunks uncompressed.
    pub zstd_level: i32,
    pub encryption: Option<EncryptionConfig>,
}

impl Config {
    pub fn new(pack_bytes: u64, zstd_level: i32) -> Config {
        Config {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 8]>()),
            created_ms: super::repo::now_ms(),
            pack_bytes: pack_bytes.max(1 << 16),
            zstd_level,
            encryption: None,
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT_NAME {
            return Err(BackupError::Invalid(format!(
                "not a gentgt repository config (format {:?})",
                self.format
            )));
        }
        if self.version != FORMAT_VERSION {
            return Err(BackupError::Invalid(format!(
                "repository format version {} (this gentgt reads version {FORMAT_VERSION})",
                self.version
            )));
        }
        Ok(())
    }
}

/// The kinds of sealed object, also their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    PackTrailer,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Index => b"GTI2",
            Kind::Manifest => b"GTM2",
            Kind::PackTrailer => b"GTT2",
        }
    }
}

const CHUNK_RAW: u8 = 0;
const CHUNK_ZSTD: u8 = 1;
/// Compressed output must save at least 1/32 to be kept: below that the
/// decompression on restore buys nothing.
const MIN_SAVING_SHIFT: u32 = 5;

/// Bytes sampled at the start and in the middle of a chunk to decide
/// whether compressing it is worth it: 4 KiB is a whole filesystem block,
/// so a sample does not cut a block's compressible part in two.
const SAMPLE: usize = 4096;

fn saves_enough(stored: usize, raw: usize) -> bool {
    stored < raw - (raw >> MIN_SAVING_SHIFT)
}

/// Whether either sample compresses enough (at the chunk's level, so the
/// thread's zstd context is reused). One sample alone would store raw a
/// chunk whose first block is random.
fn sample_compresses(data: &[u8], level: i32) -> bool {
    let mid = (data.len() / 2) & !(SAMPLE - 1);
    [&data[..SAMPLE], &data[mid..mid + SAMPLE]]
        .into_iter()
        .any(|s| compress(s, level).is_some_and(|c| saves_enough(c.len(), s.len())))
}

/// An encoded chunk as stored: `head` then `body` (the plaintext itself
/// when stored raw and unencrypted, empty otherwise).
#[derive(Debug, Clone)]
pub struct Blob {
    pub head: Vec<u8>,
    pub body: Bytes,
}

impl Blob {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn concat(&self) -> Vec<u8> {
        [&self.head[..], &self.body[..]].concat()
    }
}

/// Sealing and chunk encoding for one repository.
#[derive(Debug)]
pub struct Codec {
    pub keys: Option<Keys>,
    pub zstd_level: i32,
}

fn aad(kind: Kind, name: &[u8]) -> Vec<u8> {
    let mut a = kind.magic().to_vec();
    a.extend_from_slice(name);
    a
}

impl Codec {
    pub fn encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// Plain BLAKE3 without encryption, keyed BLAKE3 with it.
    pub fn chunk_id(&self, data: &[u8]) -> blake3::Hash {
        match &self.keys {
            Some(k) => k.chunk_id(data),
            None => blake3::hash(data),
        }
    }

    pub fn seal(&self, kind: Kind, name: &[u8], payload: &[u8]) -> Vec<u8> {
        let a = aad(kind, name);
        let mut out = kind.magic().to_vec();
        match &self.keys {
            Some(k) => out.extend(k.seal(payload, &a)),
            None => {
                out.extend_from_slice(payload);
                out.extend_from_slice(plain_digest(&a, payload).as_bytes());
            }
        }
        out
    }

    /// The payload of a sealed object, or why it cannot be trusted.
    pub fn open(
        &self,
        kind: Kind,
        name: &[u8],
        bytes: &[u8],
    ) -> std::result::Result<Vec<u8>, String> {
        let body = bytes
            .strip_prefix(kind.magic())
            .ok_or_else(|| format!("not a {kind:?} object (bad magic)"))?;
        let a = aad(kind, name);
        match &self.keys {
            Some(k) => k.open(body, &a).map_err(|e| e.to_string()),
            None => {
                if body.len() < 32 {
                    return Err("truncated".into());
                }
                let (payload, sum) = body.split_at(body.len() - 32);
                if plain_digest(&a, payload).as_bytes() != sum {
                    return Err("checksum mismatch (truncated or altered)".into());
                }
                Ok(payload.to_vec())
            }
        }
    }

    /// The stored form of a chunk: compressed if that saves enough, then
    /// sealed when encrypted (bound to its id).
    pub fn encode_chunk(&self, id: &blake3::Hash, data: &[u8]) -> Vec<u8> {
        self.encode_chunk_parts(id, Bytes::copy_from_slice(data))
            .concat()
    }

    /// [`Self::encode_chunk`] without copying a chunk stored raw and
    /// unencrypted: the pack writer hands both parts to one writev.
    pub fn encode_chunk_parts(&self, id: &blake3::Hash, data: Bytes) -> Blob {
        let framed = match self.try_compress(&data) {
            Some(c) => {
                let mut f = Vec::with_capacity(c.len() + 1);
                f.push(CHUNK_ZSTD);
                f.extend_from_slice(&c);
                f
            }
            None if self.keys.is_none() => {
                return Blob {
                    head: vec![CHUNK_RAW],
                    body: data,
                };
            }
            None => {
                let mut f = Vec::with_capacity(data.len() + 1);
                f.push(CHUNK_RAW);
                f.extend_from_slice(&data);
                f
            }
        };
        let head = match &self.keys {
            Some(k) => k.seal(&framed, id.as_bytes()),
            None => framed,
        };
        Blob {
            head,
            body: Bytes::new(),
        }
    }

    /// The compressed chunk if compression is on and saves enough. Data
    /// that does not compress (random, already compressed, encrypted
    /// guests) is recognised from two small samples, so it costs zstd
    /// a fraction of the chunk instead of all of it.
    fn try_compress(&self, data: &[u8]) -> Option<Vec<u8>> {
        if self.zstd_level == 0
            || (data.len() > 4 * SAMPLE && !sample_compresses(data, self.zstd_level))
        {
            return None;
        }
        compress(data, self.zstd_level).filter(|c| saves_enough(c.len(), data.len()))
    }

    /// The plaintext of a stored chunk, checked against its id.
    pub fn decode_chunk(
        &self,
        id: &blake3::Hash,
        raw_len: usize,
        stored: &[u8],
    ) -> std::result::Result<Vec<u8>, String> {
        let mut data = vec![0u8; raw_len];
        self.decode_chunk_into(id, stored, &mut data)?;
        Ok(data)
    }

    /// [`Codec::decode_chunk`] into `out`, which has the chunk's plain
    /// length: restores decode straight into the buffer they write.
    pub fn decode_chunk_into(
        &self,
        id: &blake3::Hash,
        stored: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<(), String> {
        let opened;
        let framed = match &self.keys {
            Some(k) => {
                opened = k.open(stored, id.as_bytes()).map_err(|e| e.to_string())?;
                &opened[..]
            }
            None => stored,
        };
        let raw_len = out.len();
        match framed.split_first() {
            Some((&CHUNK_RAW, d)) if d.len() == raw_len => out.copy_from_slice(d),
            Some((&CHUNK_RAW, d)) => {
                return Err(format!("{} bytes, the index says {raw_len}", d.len()));
            }
            Some((&CHUNK_ZSTD, d)) => {
                let n =
                    zstd::bulk::decompress_to_buffer(d, out).map_err(|e| format!("zstd: {e}"))?;
                if n != raw_len {
                    return Err(format!("{n} bytes, the index says {raw_len}"));
                }
            }
            _ => return Err("unknown chunk encoding".into()),
        }
        self.check_plain(id, out)
    }

    /// The stored length of a chunk of `raw_len` bytes kept raw without
    /// encryption (its tag byte, then the data as it is), when this
    /// repository stores chunks that way: such a chunk can be read
    /// straight into place and checked there ([`Codec::check_in_place`]).
    pub fn in_place_len(&self, raw_len: usize) -> Option<usize> {
        self.keys.is_none().then_some(raw_len + 1)
    }

    /// Check a chunk read into place: `tag` its stored first byte, `data`
    /// the rest.
    pub fn check_in_place(
        &self,
        id: &blake3::Hash,
        tag: u8,
        data: &[u8],
    ) -> std::result::Result<(), String> {
        if tag != CHUNK_RAW || self.keys.is_some() {
            return Err("not a raw chunk of an unencrypted repository".into());
        }
        self.check_plain(id, data)
    }

    fn check_plain(&self, id: &blake3::Hash, data: &[u8]) -> std::result::Result<(), String> {
        if self.chunk_id(data) != *id {
            return Err("content does not match its id".into());
        }
        Ok(())
    }
}

thread_local! {
    /// One zstd context per thread and level: making one per chunk costs
    /// a few percent of the compression time.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut()?.1.compress(data).ok()
    })
}

fn plain_digest(aad: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&(aad.len() as u64).to_le_bytes());
    h.update(aad);
    h.update(payload);
    h.finalize()
}

/// Little-endian readers over a byte slice for the binary index formats.
pub struct Reader<'a> {
    pub buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated record".into());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    pub fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    pub fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
}
