//! librbd aio completions, handed back to whoever waits for them.
//!
//! librbd calls an op's completion callback on one of its own threads.
//! The callback here only takes the op's return value, releases the
//! completion and hands the value to a Rust closure: never blocks, never
//! touches the image. [`wait`] makes that closure wake the thread that
//! submitted the op — the backend trait is synchronous and runs on the
//! target's blocking pool, exactly like the io_uring backend, whose
//! pool thread waits for its ring's completions (src/backend/ring.rs).
//! No tokio worker ever waits here, and librbd runs any number of ops
//! at once: each pool thread has one op in flight (librbd itself splits
//! it per object and runs the pieces in parallel).

use super::ffi::{CompletionT, Lib};
use std::ffi::{c_int, c_void};
use std::io;
use std::sync::mpsc;

/// What runs when an op ends, with librbd's return value (negative errno
/// on failure).
type Done = Box<dyn FnOnce(isize) + Send>;

/// The C callback: `arg` is the `Box<Done>` [`start`] leaked.
unsafe extern "C" fn on_complete(c: CompletionT, arg: *mut c_void) {
    // SAFETY: librbd passes back the argument given at creation, once.
    let done = unsafe { Box::from_raw(arg.cast::<Done>()) };
    let Ok(lib) = super::ffi::lib() else {
        return; // unreachable: a completion exists only if librbd loaded
    };
    // SAFETY: `c` is the live completion of this callback; released once.
    let r = unsafe {
        let r = (lib.rbd_aio_get_return_value)(c);
        (lib.rbd_aio_release)(c);
        r
    };
    done(r);
}

/// Create a completion that runs `done`, and give it to `submit` (one
/// `rbd_aio_*` call). If librbd refuses the op at once (negative return,
/// the callback will not run) the error comes back here.
fn start(lib: &Lib, done: Done, submit: impl FnOnce(CompletionT) -> c_int) -> io::Result<()> {
    let arg = Box::into_raw(Box::new(done)).cast::<c_void>();
    let mut c: CompletionT = std::ptr::null_mut();
    // SAFETY: `arg` stays valid until the callback (or the error path
    // below) takes it back.
    let r = unsafe { (lib.rbd_aio_create_completion)(arg, on_complete, &mut c) };
    if r < 0 {
        // SAFETY: no completion was made; `arg` is still ours.
        drop(unsafe { Box::from_raw(arg.cast::<Done>()) });
        return Err(errno(r as isize));
    }
    let r = submit(c);
    if r < 0 {
        // Not queued (librbd checks arguments before it takes the
        // completion): no callback will come.
        // SAFETY: as above, and the completion is unused.
        unsafe {
            drop(Box::from_raw(arg.cast::<Done>()));
            (lib.rbd_aio_release)(c);
        }
        return Err(errno(r as isize));
    }
    Ok(())
}

/// Run one op and wait for its end; its non-negative return value.
///
/// The caller's buffers must stay valid until this returns — they do,
/// since it returns only after librbd is done with them.
pub(super) fn wait(lib: &Lib, submit: impl FnOnce(CompletionT) -> c_int) -> io::Result<usize> {
    let (tx, rx) = mpsc::sync_channel(1);
    start(
        lib,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        submit,
    )?;
    // The callback always sends: a closed channel cannot happen.
    let r = rx
        .recv()
        .map_err(|_| io::Error::other("librbd dropped a completion"))?;
    status(r)
}

/// A librbd return value as a result.
pub(super) fn status(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| errno(r))
}

/// A negative errno as an `io::Error` (so the device server's one
/// mapping, src/scsi/io_fault.rs, sees the same errors as for files).
pub(super) fn errno(r: isize) -> io::Error {
    io::Error::from_raw_os_error(r.unsigned_abs().min(i32::MAX as usize) as i32)
}
