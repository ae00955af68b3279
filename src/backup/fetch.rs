//! Reading a run of a backup's chunks for a restore with as few system
//! calls and copies as the repository allows.
//!
//! Why: a full restore is CPU-bound on a small machine (target, initiator
//! and restore share the cores), and the simple way — one `pread` per
//! chunk into a fresh buffer, a copy to open its frame, another to take
//! the data out, another into the run's buffer — costs four copies of the
//! whole image on top of hashing it. Here the chunks of one WRITE that
//! lie one after another in one pack (a backup writes consecutive extents
//! in order, so they usually do) are read with one `preadv` straight into
//! the run's buffer, their one-byte frame tags into a side array, and
//! checked in place: no copy at all. Chunks stored otherwise (compressed,
//! encrypted) are read with one `pread` per span and decoded straight
//! into place. Every chunk is still checked against its id before the
//! buffer is returned; whatever fails the fast way is read again the
//! plain way, which gives the definitive answer or error.

use super::index::Loc;
use super::manifest::{ExtentRef, Manifest};
use super::repo::{Repo, parse_id};
use super::{BackupError, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Most chunks read by one `preadv` (each takes two iovecs; the kernel
/// allows 1024).
const MAX_SPAN_CHUNKS: usize = 256;

/// One stored chunk of the run: where it goes and where it comes from.
#[derive(Clone, Copy)]
struct Piece {
    id: blake3::Hash,
    loc: Loc,
    /// Byte offset in the run's buffer.
    at: usize,
    len: usize,
}

/// The image of `count` extents from `first` into `out` (resized to
/// it), every chunk checked. `out` may hold stale bytes of an earlier
/// run (restores recycle their buffers: a fresh zeroed MiB per WRITE
/// costs a memset or page faults): every byte is overwritten, zero
/// extents with zeros, or an error is returned.
pub(super) fn fetch_run(
    repo: &Repo,
    m: &Manifest,
    first: u64,
    count: u64,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (_, total) = m.byte_range(first, count);
    out.resize(total, 0);
    let mut at = 0;
    for i in first..first + count {
        let len = m.lun.extent_bytes(i);
        if m.extents[i as usize] == ExtentRef::Zero {
            out[at..at + len].fill(0);
        }
        at += len;
    }
    let pieces = pieces(repo, m, first, count)?;
    for span in spans(&pieces) {
        read_span(repo, span, out)?;
    }
    Ok(())
}

/// The data extents of the run with their locations (zero extents stay
/// zeros in the buffer).
fn pieces(repo: &Repo, m: &Manifest, first: u64, count: u64) -> Result<Vec<Piece>> {
    let mut out = Vec::new();
    let mut at = 0;
    for i in first..first + count {
        let len = m.lun.extent_bytes(i);
        if let ExtentRef::Blake3(h) = &m.extents[i as usize] {
            let id = parse_id(h)?;
            let loc = repo.chunk_loc(&id).ok_or_else(|| BackupError::Corrupt {
                what: format!("chunk {h}"),
                why: "not in the repository index".into(),
            })?;
            if loc.raw_len as usize != len {
                return Err(BackupError::Invalid(format!(
                    "chunk {h} is {} bytes, extent {i} is {len}",
                    loc.raw_len
                )));
            }
            out.push(Piece { id, loc, at, len });
        }
        at += len;
    }
    Ok(out)
}

/// Pieces split where the next one does not follow in the same pack.
fn spans(pieces: &[Piece]) -> Vec<&[Piece]> {
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=pieces.len() {
        let split = k == pieces.len() || k - start >= MAX_SPAN_CHUNKS || {
            let (a, b) = (&pieces[k - 1].loc, &pieces[k].loc);
            a.pack != b.pack || a.offset + u64::from(a.len) != b.offset
        };
        if split {
            out.push(&pieces[start..k]);
            start = k;
        }
    }
    out
}

fn read_span(repo: &Repo, span: &[Piece], out: &mut [u8]) -> Result<()> {
    let in_place = span
        .iter()
        .all(|p| repo.codec.in_place_len(p.len) == Some(p.loc.len as usize));
    let ok = match repo.open_pack(&span[0].loc.pack) {
        Ok(f) if in_place => read_in_place(repo, &f, span, out),
        Ok(f) => decode_span(repo, &f, span, out),
        Err(_) => vec![false; span.len()],
    };
    // Anything that failed the fast way: read again one by one, which
    // either succeeds or names the chunk and what is wrong with it.
    for (p, good) in span.iter().zip(ok) {
        if !good {
            let data = repo.read_chunk(&p.id, &p.loc)?;
            out[p.at..p.at + p.len].copy_from_slice(&data);
        }
    }
    Ok(())
}

/// One `preadv`: each chunk's tag byte into `tags`, its data into its
/// place in `out`; then each checked there. Returns which passed.
fn read_in_place(repo: &Repo, file: &File, span: &[Piece], out: &mut [u8]) -> Vec<bool> {
    let mut tags = vec![0u8; span.len()];
    let want: usize = span.iter().map(|p| p.loc.len as usize).sum();
    let base = out.as_mut_ptr();
    let mut iov = Vec::with_capacity(2 * span.len());
    for (p, t) in span.iter().zip(tags.iter_mut()) {
        iov.push(libc::iovec {
            iov_base: (t as *mut u8).cast(),
            iov_len: 1,
        });
        iov.push(libc::iovec {
            // SAFETY: `p.at + p.len <= out.len()` (pieces() lays the
            // extents out in the run's buffer), so this stays in `out`.
            iov_base: unsafe { base.add(p.at) }.cast(),
            iov_len: p.len,
        });
    }
    // SAFETY: every iovec points into `tags` or `out`, both live and not
    // otherwise borrowed until the call returns; the ranges do not overlap.
    let n = unsafe {
        libc::preadv(
            file.as_raw_fd(),
            iov.as_ptr(),
            iov.len() as libc::c_int,
            span[0].loc.offset as libc::off_t,
        )
    };
    if n < 0 || n as usize != want {
        // Error or short read (a truncated pack): the slow path tells.
        return vec![false; span.len()];
    }
    span.iter()
        .zip(&tags)
        .map(|(p, &t)| {
            repo.codec
                .check_in_place(&p.id, t, &out[p.at..p.at + p.len])
                .is_ok()
        })
        .collect()
}

/// One `pread` of the span's stored bytes, each chunk decoded into its
/// place. Returns which decoded and passed their check.
fn decode_span(repo: &Repo, file: &File, span: &[Piece], out: &mut [u8]) -> Vec<bool> {
    let first = span[0].loc.offset;
    let want: usize = span.iter().map(|p| p.loc.len as usize).sum();
    let mut stored = vec![0u8; want];
    if file.read_exact_at(&mut stored, first).is_err() {
        return vec![false; span.len()];
    }
    span.iter()
        .map(|p| {
            let s = (p.loc.offset - first) as usize;
            let blob = &stored[s..s + p.loc.len as usize];
            repo.codec
                .decode_chunk_into(&p.id, blob, &mut out[p.at..p.at + p.len])
                .is_ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::crypto::KeySource;
    use crate::backup::lock::LockMode;
    use crate::backup::manifest::{LunId, MANIFEST_VERSION, Stats};
    use crate::backup::repo::{CreateOptions, RepoOptions};
    use rand::{Rng, SeedableRng};

    const EXTENT: usize = 4096;
    const EXTENTS: usize = 48;

    /// Random (stored raw), text (zstd) and zero extents in turn.
    fn image() -> Vec<Vec<u8>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..EXTENTS)
            .map(|i| {
                let mut d = vec![0u8; EXTENT];
                match i % 3 {
                    0 => rng.fill(&mut d[..]),
                    1 => d
                        .iter_mut()
                        .enumerate()
                        .for_each(|(k, b)| *b = (k % 7) as u8 + i as u8),
                    _ => {}
                }
                d
            })
            .collect()
    }

    /// A repository with small packs (spans split across them) holding
    /// `img` as backup "b".
    fn make(dir: &std::path::Path, encrypt: Option<KeySource>) -> (Repo, Manifest) {
        let o = RepoOptions {
            lock: Some(LockMode::Exclusive),
            command: "test".into(),
            create: Some(CreateOptions {
                pack_bytes: 64 << 10,
                zstd_level: 1,
                encrypt: encrypt.clone(),
                kdf_cost: Some((64, 1)),
            }),
            key: encrypt,
            ..Default::default()
        };
        let repo = Repo::open_with(dir, &o).unwrap();
        let extents = image()
            .iter()
            .map(|d| repo.put_extent(d).unwrap())
            .collect();
        let m = Manifest {
            version: MANIFEST_VERSION,
            id: "b".into(),
            parent: None,
            created_ms: 1,
            lun: LunId {
                naa: "600000000000000000000000000000cc".into(),
                uuid: "u".into(),
                capacity_blocks: (EXTENTS * EXTENT / 512) as u64,
                block_size: 512,
                extent_blocks: (EXTENT / 512) as u32,
            },
            lock_generation: 1,
            extents,
            stats: Stats::default(),
        };
        repo.commit(&m).unwrap();
        (repo, m)
    }

    /// Every run length, into a buffer full of stale bytes: each byte is
    /// the image's.
    fn fetches_exactly(repo: &Repo, m: &Manifest) {
        let want: Vec<u8> = image().concat();
        for count in [1, 2, 5, 16, EXTENTS as u64] {
            for first in (0..EXTENTS as u64 - count + 1).step_by(count as usize) {
                let mut buf = vec![0xee; 3 * EXTENT];
                fetch_run(repo, m, first, count, &mut buf).unwrap();
                let at = first as usize * EXTENT;
                assert!(
                    buf == want[at..at + count as usize * EXTENT],
                    "{first}+{count}"
                );
            }
        }
    }

    #[test]
    fn runs_read_in_place_or_decoded_overwrite_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, m) = make(dir.path(), None);
        fetches_exactly(&repo, &m);
        let dir = tempfile::tempdir().unwrap();
        let key = KeySource::Passphrase("fetch test".into());
        let (repo, m) = make(dir.path(), Some(key));
        fetches_exactly(&repo, &m);
    }

    #[test]
    fn a_damaged_chunk_fails_the_run_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, m) = make(dir.path(), None);
        let ExtentRef::Blake3(h) = &m.extents[3] else {
            panic!("extent 3 holds data")
        };
        let loc = repo.chunk_loc(&parse_id(h).unwrap()).unwrap();
        let path = super::super::pack::pack_path(&dir.path().join("packs"), &loc.pack);
        let mut b = std::fs::read(&path).unwrap();
        b[(loc.offset + 100) as usize] ^= 1;
        std::fs::write(&path, b).unwrap();
        let mut buf = Vec::new();
        let e = fetch_run(&repo, &m, 0, 8, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(h.as_str()) && e.contains("does not match"),
            "{e}"
        );
        fetch_run(&repo, &m, 4, 4, &mut buf).unwrap();
    }
}
