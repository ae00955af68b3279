//! A sparse in-memory backend: fixed-size chunks allocated on first write,
//! so a large LUN costs only what has been written.

use super::{Backend, push_run};
use std::io;
use std::sync::RwLock;

/// Chunk size: large enough that the chunk table stays small for big LUNs,
/// small enough that a scattered write does not allocate much.
const CHUNK: u64 = 1 << 20;

pub struct MemoryBackend {
    size: u64,
    /// One lock per chunk so unrelated I/O runs in parallel. `None` reads
    /// as zeros.
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
}

impl MemoryBackend {
    pub fn new(size: u64) -> MemoryBackend {
        let n = size.div_ceil(CHUNK);
        let chunks = (0..n).map(|_| RwLock::new(None)).collect();
        MemoryBackend { size, chunks }
    }

    /// Bytes currently allocated (for tests and stats).
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| c.read().map(|g| g.is_some()).unwrap_or(false))
            .count() as u64
            * CHUNK
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_range(offset, len, self.size)
    }

    /// Visit every chunk piece of `[offset, offset+len)` as
    /// (chunk index, offset inside chunk, position in caller's buffer, length).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let abs = offset + pos;
            let inner = abs % CHUNK;
            let n = (CHUNK - inner).min(len - pos);
            let item = (
                (abs / CHUNK) as usize,
                inner as usize,
                pos as usize,
                n as usize,
            );
            pos += n;
            Some(item)
        })
    }

    fn poisoned() -> io::Error {
        io::Error::other("memory backend lock poisoned")
    }

    /// Zero a range; whole chunks are released.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        for (idx, inner, _, n) in Self::pieces(offset, len) {
            let mut guard = self.chunks[idx].write().map_err(|_| Self::poisoned())?;
            if n as u64 == CHUNK {
                *guard = None;
            } else if let Some(chunk) = guard.as_mut() {
                chunk[inner..inner + n].fill(0);
            }
        }
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        for (idx, inner, pos, n) in Self::pieces(offset, buf.len() as u64) {
            let guard = self.chunks[idx].read().map_err(|_| Self::poisoned())?;
            let dst = &mut buf[pos..pos + n];
            match guard.as_ref() {
                Some(chunk) => dst.copy_from_slice(&chunk[inner..inner + n]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], _fua: bool) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        for (idx, inner, pos, n) in Self::pieces(offset, buf.len() as u64) {
            let mut guard = self.chunks[idx].write().map_err(|_| Self::poisoned())?;
            let chunk = guard.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            chunk[inner..inner + n].copy_from_slice(&buf[pos..pos + n]);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn memory_speed(&self) -> bool {
        true
    }

    /// A chunk is mapped when it holds a buffer; a freed chunk is not.
    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        self.check(offset, len)?;
        let mut runs = Vec::new();
        for (idx, _, _, n) in Self::pieces(offset, len) {
            let mapped = self.chunks[idx]
                .read()
                .map_err(|_| Self::poisoned())?
                .is_some();
            if runs.len() == max_runs && runs.last().is_some_and(|r: &(u64, bool)| r.1 != mapped) {
                break;
            }
            push_run(&mut runs, n as u64, mapped);
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_size_allocates_nothing_up_front() {
        let m = MemoryBackend::new(1 << 30);
        assert_eq!(m.allocated_bytes(), 0);
        let mut buf = vec![1u8; 4096];
        m.read_at((1 << 30) - 4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn write_read_across_chunk_boundary() {
        let m = MemoryBackend::new(4 * CHUNK);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let off = CHUNK - 4096;
        m.write_at(off, &data, false).unwrap();
        assert_eq!(m.allocated_bytes(), 2 * CHUNK);
        let mut back = vec![0u8; data.len()];
        m.read_at(off, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let m = MemoryBackend::new(1000);
        let mut buf = [0u8; 10];
        assert!(m.read_at(995, &mut buf).is_err());
        assert!(m.write_at(u64::MAX - 3, &buf, false).is_err());
        assert!(m.unmap(999, 2).is_err());
    }

    #[test]
    fn allocation_follows_chunks() {
        let m = MemoryBackend::new(4 * CHUNK);
        assert_eq!(
            m.allocation(0, 4 * CHUNK, 8).unwrap(),
            vec![(4 * CHUNK, false)]
        );
        m.write_at(CHUNK + 5, b"x", false).unwrap();
        let runs = m.allocation(100, 4 * CHUNK - 100, 8).unwrap();
        assert_eq!(
            runs,
            vec![(CHUNK - 100, false), (CHUNK, true), (2 * CHUNK, false)]
        );
        // Limited to two runs: the answer covers less.
        assert_eq!(m.allocation(0, 4 * CHUNK, 2).unwrap().len(), 2);
        assert!(m.allocation(0, 4 * CHUNK + 1, 8).is_err());
    }

    #[test]
    fn unmap_zeroes_and_frees_whole_chunks() {
        let m = MemoryBackend::new(3 * CHUNK);
        m.write_at(0, &vec![7u8; (3 * CHUNK) as usize], false)
            .unwrap();
        m.unmap(100, 2 * CHUNK).unwrap();
        // Chunk 1 lies wholly inside the range and is freed.
        assert_eq!(m.allocated_bytes(), 2 * CHUNK);
        let mut buf = vec![0u8; (3 * CHUNK) as usize];
        m.read_at(0, &mut buf).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 7));
        assert!(buf[100..(2 * CHUNK + 100) as usize].iter().all(|&b| b == 0));
        assert!(buf[(2 * CHUNK + 100) as usize..].iter().all(|&b| b == 7));
    }
}
