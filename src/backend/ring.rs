//! One io_uring per calling thread, and the loop that pushes a batch of
//! positional reads or writes through it and waits for all of them.
//!
//! Backend calls are synchronous and come from many threads of the
//! target's blocking pool at once, so each thread lazily builds its own
//! small ring (thread-local, shared by every backend that thread serves):
//! no lock on the I/O path, and a thread's ring dies with the thread.
//! The gain over pread/pwrite is in large transfers, split into several
//! SQEs that the kernel runs in parallel, for one or two system calls.

use io_uring::{IoUring, opcode, types};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Submission queue entries per ring: the most SQEs one call has in flight.
pub const DEPTH: u32 = 32;

/// One contiguous piece of a transfer. `ptr` points at `len` bytes that
/// stay valid (and, for reads, unaliased) until [`run`] returns.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub offset: u64,
    pub ptr: *mut u8,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    /// `dsync`: each write is durable on completion (RWF_DSYNC).
    Write {
        dsync: bool,
    },
}

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Whether this process can use io_uring for file reads and writes
/// (kernel 5.6+, not blocked by seccomp or `io_uring_disabled`). Asked
/// once; the answer is kept.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| match probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "io_uring unavailable");
            false
        }
    })
}

fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for code in [opcode::Read::CODE, opcode::Write::CODE] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode {code} not supported by this kernel"),
            ));
        }
    }
    Ok(())
}

/// Run every op against `file`, through this thread's ring when it has
/// one (pread/pwrite otherwise). Returns after all ops completed or
/// failed; the first error is returned.
///
/// # Safety
/// Each op's `ptr` must be valid for `len` bytes until this returns
/// (writable and not otherwise accessed, for reads).
pub unsafe fn run(file: &File, dir: Dir, ops: &mut [Op]) -> io::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let via_ring = RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = new_ring();
        }
        let ring = slot.as_mut()?;
        // SAFETY: forwarded from our caller.
        let r = unsafe { run_ring(ring, file.as_raw_fd(), dir, ops) };
        if let Err(RingError::Broken(_)) = &r {
            // Entries may be stuck in a ring the kernel refused: never
            // submit them later against freed memory.
            *slot = None;
        }
        Some(r)
    });
    match via_ring {
        Some(Ok(())) => Ok(()),
        Some(Err(RingError::Io(e) | RingError::Broken(e))) => Err(e),
        // SAFETY: forwarded from our caller.
        None => unsafe { run_sync(file, dir, ops) },
    }
}

fn new_ring() -> Option<IoUring> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match IoUring::new(DEPTH) {
        Ok(r) => Some(r),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot set up an io_uring on this thread; using pread/pwrite");
            }
            None
        }
    }
}

enum RingError {
    /// An op failed; the ring is fine.
    Io(io::Error),
    /// io_uring_enter itself failed: drop the ring.
    Broken(io::Error),
}

fn transient(errno: i32) -> bool {
    matches!(errno, libc::EINTR | libc::EAGAIN | libc::EBUSY)
}

fn entry(fd: i32, dir: Dir, op: &Op, tag: usize) -> io_uring::squeue::Entry {
    // Ops are cut to at most the pool's chunk size, far below 4 GiB.
    let len = u32::try_from(op.len).unwrap_or(u32::MAX);
    let e = match dir {
        Dir::Read => opcode::Read::new(types::Fd(fd), op.ptr, len)
            .offset(op.offset)
            .build(),
        Dir::Write { dsync } => opcode::Write::new(types::Fd(fd), op.ptr.cast_const(), len)
            .offset(op.offset)
            .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
            .build(),
    };
    e.user_data(tag as u64)
}

/// Keep the submission queue full, wait for completions, resubmit short
/// transfers and transient failures, and never return while an SQE the
/// kernel accepted is still in flight (its buffer would dangle).
unsafe fn run_ring(ring: &mut IoUring, fd: i32, dir: Dir, ops: &mut [Op]) -> Result<(), RingError> {
    let mut pending: VecDeque<usize> = (0..ops.len()).collect();
    let mut in_flight = 0usize;
    let mut first_err: Option<io::Error> = None;
    while in_flight > 0 || (first_err.is_none() && !pending.is_empty()) {
        if first_err.is_none() {
            let mut sq = ring.submission();
            while !sq.is_full() {
                let Some(i) = pending.pop_front() else { break };
                // SAFETY: the caller keeps ops[i].ptr valid until we return,
                // and we return only once every pushed entry completed.
                if unsafe { sq.push(&entry(fd, dir, &ops[i], i)) }.is_err() {
                    pending.push_front(i);
                    break;
                }
                in_flight += 1;
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error().is_some_and(transient) => {}
            Err(e) => return Err(RingError::Broken(e)),
        }
        for cqe in ring.completion() {
            in_flight = in_flight.saturating_sub(1);
            let Some(op) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| ops.get_mut(i))
            else {
                continue;
            };
            let tag = cqe.user_data() as usize;
            let res = cqe.result();
            if res < 0 {
                if transient(-res) {
                    pending.push_back(tag);
                } else {
                    first_err.get_or_insert(io::Error::from_raw_os_error(-res));
                }
            } else if res == 0 {
                first_err.get_or_insert(short(dir));
            } else {
                let n = (res as usize).min(op.len);
                if n < op.len {
                    op.offset += n as u64;
                    // SAFETY: n < len, so still inside the caller's buffer.
                    op.ptr = unsafe { op.ptr.add(n) };
                    op.len -= n;
                    pending.push_back(tag);
                }
            }
        }
    }
    first_err.map_or(Ok(()), |e| Err(RingError::Io(e)))
}

fn short(dir: Dir) -> io::Error {
    match dir {
        Dir::Read => io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"),
        Dir::Write { .. } => io::Error::new(io::ErrorKind::WriteZero, "write made no progress"),
    }
}

/// The same ops with pread/pwrite, for threads without a ring.
unsafe fn run_sync(file: &File, dir: Dir, ops: &[Op]) -> io::Result<()> {
    for op in ops {
        match dir {
            Dir::Read => {
                // SAFETY: the caller guarantees ptr is valid and exclusive.
                let buf = unsafe { std::slice::from_raw_parts_mut(op.ptr, op.len) };
                file.read_exact_at(buf, op.offset)?;
            }
            Dir::Write { .. } => {
                // SAFETY: the caller guarantees ptr is valid for len bytes.
                let buf = unsafe { std::slice::from_raw_parts(op.ptr, op.len) };
                file.write_all_at(buf, op.offset)?;
            }
        }
    }
    if dir == (Dir::Write { dsync: true }) {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_larger_than_the_ring() {
        assert!(available(), "io_uring should work on the test machine");
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        // 3 × DEPTH ops of 1000 bytes, each a different byte value.
        let n = 3 * DEPTH as usize;
        let mut data: Vec<u8> = (0..n * 1000).map(|i| (i / 1000) as u8).collect();
        let mut ops: Vec<Op> = (0..n)
            .map(|i| Op {
                offset: (i * 1000) as u64,
                ptr: data[i * 1000..].as_mut_ptr(),
                len: 1000,
            })
            .collect();
        unsafe { run(&f, Dir::Write { dsync: true }, &mut ops) }.unwrap();
        let mut back = vec![0u8; n * 1000];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
        let mut got = vec![0u8; n * 1000];
        let mut ops: Vec<Op> = (0..n)
            .map(|i| Op {
                offset: (i * 1000) as u64,
                ptr: got[i * 1000..].as_mut_ptr(),
                len: 1000,
            })
            .collect();
        unsafe { run(&f, Dir::Read, &mut ops) }.unwrap();
        assert_eq!(got, data);
        data.clear();
    }

    #[test]
    fn read_past_end_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [1u8; 100]).unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = [0u8; 200];
        let mut ops = [Op {
            offset: 0,
            ptr: buf.as_mut_ptr(),
            len: 200,
        }];
        let e = unsafe { run(&f, Dir::Read, &mut ops) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&buf[..100], &[1u8; 100]);
        // A write through a read-only descriptor fails with EBADF.
        let mut ops = [Op {
            offset: 0,
            ptr: buf.as_mut_ptr(),
            len: 10,
        }];
        let e = unsafe { run(&f, Dir::Write { dsync: false }, &mut ops) }.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
