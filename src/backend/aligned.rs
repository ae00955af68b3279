//! Page-aligned buffers for O_DIRECT, and a small pool of them so the hot
//! path does not call the allocator for every command.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of every buffer: a page satisfies any device's O_DIRECT
/// memory alignment (STATX_DIOALIGN reports at most this in practice).
pub const ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose address is a multiple of [`ALIGN`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` bytes (rounded up to a whole number of pages, at
    /// least one, so every I/O through it can be aligned).
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(len, ALIGN).expect("page-aligned layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN).expect("page-aligned layout");
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Free buffers of one size. Taking never blocks: an empty pool allocates,
/// and returns beyond `keep` are freed, so a burst costs memory only while
/// it lasts.
pub struct BufferPool {
    size: usize,
    keep: usize,
    free: Mutex<Vec<AlignedBuf>>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers (rounded up to pages) keeping at most
    /// `keep` idle ones.
    pub fn new(size: usize, keep: usize) -> BufferPool {
        BufferPool {
            size: size.max(1).next_multiple_of(ALIGN),
            keep,
            free: Mutex::new(Vec::new()),
        }
    }

    /// Size of every buffer the pool hands out.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// A buffer for exclusive use until the guard drops. Its contents are
    /// whatever the last user left: callers overwrite what they use.
    pub fn take(&self) -> PooledBuf<'_> {
        let buf = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(self.size));
        PooledBuf {
            pool: self,
            buf: Some(buf),
        }
    }

    /// Idle buffers held now (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A buffer on loan from a [`BufferPool`].
pub struct PooledBuf<'a> {
    pool: &'a BufferPool,
    buf: Option<AlignedBuf>,
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("present until drop")
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < self.pool.keep {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert!(b.len() >= len.max(1) && b.len().is_multiple_of(ALIGN));
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[0] = 7;
            assert_eq!(b.as_slice()[0], 7);
        }
    }

    #[test]
    fn pool_reuses_up_to_keep() {
        let pool = BufferPool::new(10_000, 2);
        assert_eq!(pool.buf_size(), 12288);
        let addr = {
            let mut a = pool.take();
            a.as_mut_slice()[5] = 9;
            a.as_slice().as_ptr() as usize
        };
        assert_eq!(pool.idle(), 1);
        let b = pool.take();
        // The same allocation comes back, contents as left.
        assert_eq!(b.as_slice().as_ptr() as usize, addr);
        assert_eq!(b.as_slice()[5], 9);
        let c = pool.take();
        let d = pool.take();
        assert_eq!(pool.idle(), 0);
        drop((b, c, d));
        assert_eq!(pool.idle(), 2);
    }
}
