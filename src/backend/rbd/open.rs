//! Connecting to the cluster and opening (or creating) the image, each
//! failure with an error that says what to fix.

use super::ffi::{ImageT, IoctxT, Lib, RadosT};
use super::{RbdOptions, aio::errno};
use std::ffi::{CString, c_char, c_int};
use std::io;

/// The three librados/librbd handles of an open image, released in
/// reverse order (whichever exist) when dropped.
pub(super) struct Handles {
    pub lib: &'static Lib,
    pub cluster: RadosT,
    pub ioctx: IoctxT,
    pub image: ImageT,
}

// SAFETY: librados and librbd handles may be used from any thread at
// once (librbd serialises what needs it internally); nothing here is
// thread-local.
unsafe impl Send for Handles {}
// SAFETY: as above.
unsafe impl Sync for Handles {}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each handle is live (or null) and dropped once, image
        // before pool context before cluster. rbd_close waits for the
        // image's in-flight ops.
        unsafe {
            if !self.image.is_null() {
                (self.lib.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (self.lib.rados_ioctx_destroy)(self.ioctx);
            }
            if !self.cluster.is_null() {
                (self.lib.rados_shutdown)(self.cluster);
            }
        }
    }
}

/// An error with the errno of `r` and the context a user needs.
fn fail(r: c_int, what: String) -> io::Error {
    let e = errno(r as isize);
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn cstr(what: &str, s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {s:?} contains a NUL byte"),
        )
    })
}

/// Connect, open the pool (and namespace), open the image — creating it
/// first when asked and missing.
pub(super) fn open(opts: &RbdOptions) -> io::Result<Handles> {
    let lib = super::ffi::lib().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
    let mut h = Handles {
        lib,
        cluster: std::ptr::null_mut(),
        ioctx: std::ptr::null_mut(),
        image: std::ptr::null_mut(),
    };
    connect(&mut h, opts)?;
    open_pool(&mut h, opts)?;
    open_image(&mut h, opts)?;
    Ok(h)
}

fn connect(h: &mut Handles, opts: &RbdOptions) -> io::Result<()> {
    let name = cstr("client", &format!("client.{}", opts.client))?;
    let cluster = cstr("cluster", "ceph")?;
    // SAFETY: valid C strings and out-pointer.
    let r = unsafe { (h.lib.rados_create2)(&mut h.cluster, cluster.as_ptr(), name.as_ptr(), 0) };
    if r < 0 {
        return Err(fail(r, format!("cannot create a Ceph client {name:?}")));
    }
    let conf = opts
        .ceph_conf
        .as_deref()
        .map(|p| cstr("ceph_conf", &p.to_string_lossy()));
    let conf = conf.transpose()?;
    let conf_ptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: a live cluster handle; null means Ceph's default search.
    let r = unsafe { (h.lib.rados_conf_read_file)(h.cluster, conf_ptr) };
    if r < 0 {
        let file = opts
            .ceph_conf
            .as_ref()
            .map_or("the default ceph.conf".into(), |p| {
                format!("{}", p.display())
            });
        return Err(fail(r, format!("cannot read {file}")));
    }
    // SAFETY: a live, configured cluster handle.
    let r = unsafe { (h.lib.rados_connect)(h.cluster) };
    if r < 0 {
        return Err(fail(
            r,
            format!(
                "cannot connect to the Ceph cluster as client.{}",
                opts.client
            ),
        ));
    }
    Ok(())
}

fn open_pool(h: &mut Handles, opts: &RbdOptions) -> io::Result<()> {
    let pool = cstr("pool", &opts.pool)?;
    // SAFETY: a connected cluster, a valid C string and out-pointer.
    let r = unsafe { (h.lib.rados_ioctx_create)(h.cluster, pool.as_ptr(), &mut h.ioctx) };
    if r < 0 {
        return Err(fail(r, format!("cannot open pool {:?}", opts.pool)));
    }
    if let Some(ns) = &opts.namespace {
        let ns = cstr("namespace", ns)?;
        // SAFETY: a live pool context; librados copies the name.
        unsafe { (h.lib.rados_ioctx_set_namespace)(h.ioctx, ns.as_ptr()) };
    }
    Ok(())
}

fn open_image(h: &mut Handles, opts: &RbdOptions) -> io::Result<()> {
    let name = cstr("image", &opts.image)?;
    let r = open_named(h, &name, opts.read_only);
    if r != -libc::ENOENT || opts.create_size.is_none() {
        return match r {
            0 => Ok(()),
            r if r == -libc::ENOENT => Err(fail(
                r,
                format!(
                    "image {:?} not found in {} (set create = true and size to create it)",
                    opts.image,
                    opts.place()
                ),
            )),
            r => Err(fail(r, format!("cannot open image {}", opts.place_image()))),
        };
    }
    let size = opts.create_size.unwrap_or(0);
    let mut order: c_int = 0; // librbd's default object size
    // SAFETY: a live pool context, valid C string and out-pointer.
    let r = unsafe { (h.lib.rbd_create)(h.ioctx, name.as_ptr(), size, &mut order) };
    // EEXIST: another gateway created it meanwhile; open that one.
    if r < 0 && r != -libc::EEXIST {
        return Err(fail(
            r,
            format!("cannot create image {}", opts.place_image()),
        ));
    }
    tracing::info!(image = %opts.place_image(), size, "created RBD image");
    match open_named(h, &name, opts.read_only) {
        0 => Ok(()),
        r => Err(fail(r, format!("cannot open image {}", opts.place_image()))),
    }
}

fn open_named(h: &mut Handles, name: &CString, read_only: bool) -> c_int {
    let f = match read_only {
        true => h.lib.rbd_open_read_only,
        false => h.lib.rbd_open,
    };
    let head: *const c_char = std::ptr::null(); // the image itself, no snapshot
    // SAFETY: a live pool context, valid C string and out-pointer.
    unsafe { f(h.ioctx, name.as_ptr(), &mut h.image, head) }
}
