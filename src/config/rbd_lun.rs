//! RBD LUNs (`backend = "rbd"`): their keys' validation and opening them
//! (src/backend/rbd/ serves them).
//!
//! ```toml
//! [[target.lun]]
//! id = 0
//! backend = "rbd"
//! pool = "rbd"
//! image = "vm-disk-1"
//! namespace = "tenant-a"            # optional RADOS namespace
//! ceph_conf = "/etc/ceph/ceph.conf" # optional: Ceph's default search
//! client = "admin"                  # cephx id, without "client."
//! create = true                     # create the image if missing...
//! size = "10GiB"                    # ...with this size
//! ```
//!
//! The LUN's serial and NAA come from the image's identity (cluster fsid,
//! pool id, namespace, RBD image id), so every gateway exporting the image
//! shows the initiator the same disk.

use super::ConfigError;
use super::identity;
use super::schema::{BackendKind, IoEngine, LunConfig, TrackingMode};
use super::validate::Findings;
use crate::backend::{Backend, RbdBackend, RbdOptions};
use crate::scsi::LunIdentity;
use std::sync::Arc;

/// The cephx user when `client` is not given.
pub const DEFAULT_CLIENT: &str = "admin";

/// The keys only RBD LUNs take, with whether `lun` sets each.
fn rbd_keys(lun: &LunConfig) -> [(&'static str, bool); 6] {
    [
        ("pool", lun.pool.is_some()),
        ("image", lun.image.is_some()),
        ("namespace", lun.namespace.is_some()),
        ("ceph_conf", lun.ceph_conf.is_some()),
        ("client", lun.client.is_some()),
        ("create", lun.create),
    ]
}

/// Every check of a LUN's RBD keys that needs no cluster.
pub(super) fn check(what: &str, lun: &LunConfig, f: &mut Findings) {
    if lun.backend != BackendKind::Rbd {
        for (key, _) in rbd_keys(lun).iter().filter(|(_, set)| *set) {
            f.errors
                .push(format!("{what}: {key} is for backend = \"rbd\" LUNs only"));
        }
        return;
    }
    let mut err = |m: String| f.errors.push(format!("{what}: {m}"));
    for (key, value) in [("pool", &lun.pool), ("image", &lun.image)] {
        match value.as_deref() {
            None | Some("") => err(format!("an RBD LUN needs {key} = \"NAME\"")),
            Some(v) if v.contains(['/', '@', '\0']) => {
                err(format!("{key} {v:?} may not contain '/', '@' or NUL"))
            }
            _ => {}
        }
    }
    if lun.namespace.as_deref() == Some("") {
        err("namespace is empty (leave it out for the pool's default namespace)".into());
    }
    if let Some(c) = lun
        .client
        .as_ref()
        .filter(|c| c.is_empty() || c.starts_with("client."))
    {
        err(format!(
            "client {c:?}: give the cephx id without \"client.\" (e.g. \"admin\")"
        ));
    }
    if lun.path.is_some() {
        err("an RBD LUN takes pool and image, not path".into());
    }
    if lun.create && lun.size.is_none() {
        err("create = true needs size (the new image's size)".into());
    }
    if lun.create && lun.read_only {
        err("create = true and read_only = true contradict each other".into());
    }
    if lun.tracking_mode() == TrackingMode::Persistent {
        err("tracking = \"persistent\" is not available for RBD LUNs yet (tracking state in RADOS); use \"volatile\"".into());
    }
    if lun.io != IoEngine::Buffered || lun.direct {
        err("io and direct apply to file LUNs only".into());
    }
}

/// The backend options of a validated RBD LUN.
fn options(lun: &LunConfig) -> RbdOptions {
    RbdOptions {
        pool: lun.pool.clone().unwrap_or_default(),
        image: lun.image.clone().unwrap_or_default(),
        namespace: lun.namespace.clone(),
        ceph_conf: lun.ceph_conf.clone(),
        client: lun.client.clone().unwrap_or_else(|| DEFAULT_CLIENT.into()),
        create_size: lun.create.then(|| lun.size_bytes()),
        read_only: lun.read_only,
    }
}

/// Open the RBD LUN `lun` of `target` and derive its identity. The
/// image's size must fit the block size, and match `size` where given.
pub(super) fn open(
    target: &str,
    lun: &LunConfig,
) -> Result<(Arc<dyn Backend>, LunIdentity), ConfigError> {
    let what = format!("target {target:?} LUN {} (RBD LUN)", lun.id);
    let b = RbdBackend::open(&options(lun)).map_err(|source| ConfigError::Rbd {
        what: what.clone(),
        source,
    })?;
    let invalid = |m: String| ConfigError::Invalid(vec![format!("{what}: {m}")]);
    if lun.size.is_some_and(|s| s.0 != b.size()) {
        return Err(invalid(format!(
            "size {} differs from the image's {} bytes (leave size out, or resize the image)",
            lun.size_bytes(),
            b.size()
        )));
    }
    if !b.size().is_multiple_of(u64::from(lun.block_size)) || b.size() == 0 {
        return Err(invalid(format!(
            "the image's {} bytes are not a positive multiple of block_size {}",
            b.size(),
            lun.block_size
        )));
    }
    let id = identity::rbd_identity(b.identity_seed());
    Ok((Arc::new(b), id))
}
