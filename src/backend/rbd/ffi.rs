//! The few librados/librbd entry points the RBD backend uses, written by
//! hand from Debian 12's librbd-dev and librados-dev (Ceph 16.2) headers
//! and resolved at run time with `libloading`.
//!
//! Why at run time: gentgt must build and run on machines without Ceph's
//! libraries (every other backend works there); only an RBD LUN needs
//! them, and its start-up then fails with an error naming the library.
//! The libraries are loaded once per process and never unloaded (the
//! function pointers below live as long as the process).

use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub type RadosT = *mut c_void;
pub type IoctxT = *mut c_void;
pub type ImageT = *mut c_void;
pub type CompletionT = *mut c_void;
/// `rbd_callback_t`: called on a librbd thread when an aio op ends.
pub type Callback = unsafe extern "C" fn(c: CompletionT, arg: *mut c_void);
/// The extent callback of `rbd_diff_iterate2`: (offset, length, exists,
/// arg); a negative return stops the iteration with that error.
pub type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// Where the libraries are looked up unless the environment names others
/// (`GENTGT_LIBRBD`, `GENTGT_LIBRADOS`: a path or a soname).
const LIBRBD: &str = "librbd.so.1";
const LIBRADOS: &str = "librados.so.2";

/// Declares the function table, and the loader that fills it from the
/// library named by each group.
macro_rules! table {
    ($( $lib:ident { $( fn $name:ident ( $($arg:ty),* ) -> $ret:ty; )* } )*) => {
        /// Resolved entry points; see the C headers for their contracts.
        pub struct Lib {
            $( $( pub $name: unsafe extern "C" fn($($arg),*) -> $ret, )* )*
            _libs: Vec<Library>,
        }

        impl Lib {
            fn resolve($($lib: Library),*) -> Result<Lib, String> {
                $( $(
                    // SAFETY: the type is the one the header declares;
                    // the library moves into the table below, so the
                    // pointer stays valid while the table lives.
                    let $name = unsafe {
                        *$lib
                            .get::<unsafe extern "C" fn($($arg),*) -> $ret>(stringify!($name))
                            .map_err(|e| format!("{}: {e}", stringify!($name)))?
                    };
                )* )*
                Ok(Lib {
                    $( $( $name, )* )*
                    _libs: vec![$($lib),*],
                })
            }
        }
    };
}

table! {
    rados {
        fn rados_create2(*mut RadosT, *const c_char, *const c_char, u64) -> c_int;
        fn rados_conf_read_file(RadosT, *const c_char) -> c_int;
        fn rados_connect(RadosT) -> c_int;
        fn rados_shutdown(RadosT) -> ();
        fn rados_cluster_fsid(RadosT, *mut c_char, usize) -> c_int;
        fn rados_ioctx_create(RadosT, *const c_char, *mut IoctxT) -> c_int;
        fn rados_ioctx_destroy(IoctxT) -> ();
        fn rados_ioctx_set_namespace(IoctxT, *const c_char) -> ();
        fn rados_ioctx_get_id(IoctxT) -> i64;
    }
    rbd {
        fn rbd_create(IoctxT, *const c_char, u64, *mut c_int) -> c_int;
        fn rbd_open(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
        fn rbd_open_read_only(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
        fn rbd_close(ImageT) -> c_int;
        fn rbd_get_size(ImageT, *mut u64) -> c_int;
        fn rbd_get_id(ImageT, *mut c_char, usize) -> c_int;
        fn rbd_aio_create_completion(*mut c_void, Callback, *mut CompletionT) -> c_int;
        fn rbd_aio_get_return_value(CompletionT) -> isize;
        fn rbd_aio_release(CompletionT) -> ();
        fn rbd_aio_read(ImageT, u64, usize, *mut c_char, CompletionT) -> c_int;
        fn rbd_aio_write(ImageT, u64, usize, *const c_char, CompletionT) -> c_int;
        fn rbd_aio_flush(ImageT, CompletionT) -> c_int;
        fn rbd_aio_write_zeroes(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
        fn rbd_aio_writesame(ImageT, u64, usize, *const c_char, usize, CompletionT, c_int) -> c_int;
        fn rbd_aio_compare_and_write(
            ImageT, u64, usize, *const c_char, *const c_char, CompletionT, *mut u64, c_int
        ) -> isize;
        fn rbd_diff_iterate2(
            ImageT, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void
        ) -> c_int;
    }
}

/// The process's librbd, loaded on first use; the error says which
/// library could not be loaded (or which symbol it lacks) and what to
/// install.
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Lib, String> {
    let rados = open("GENTGT_LIBRADOS", LIBRADOS)?;
    let rbd = open("GENTGT_LIBRBD", LIBRBD)?;
    Lib::resolve(rados, rbd).map_err(|e| format!("librbd/librados lack a function: {e}"))
}

fn open(var: &str, default: &str) -> Result<Library, String> {
    let name = std::env::var(var).unwrap_or_else(|_| default.to_string());
    // SAFETY: loading Ceph's client libraries runs their initialisers,
    // which have no preconditions on us.
    unsafe { Library::new(&name) }.map_err(|e| {
        format!(
            "cannot load {name} ({e}): RBD LUNs need Ceph's client libraries \
             (Debian: apt-get install librbd1 librados2)"
        )
    })
}
