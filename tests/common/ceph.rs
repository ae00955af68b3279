//! The one-node Ceph cluster of the RBD tests: started once per test
//! binary by scripts/ceph-one-node.sh in a temporary directory, stopped
//! by the script's watcher when the test binary exits (`--owner`).
//!
//! Without Ceph installed every test that asks for the cluster fails,
//! saying to run scripts/install-test-deps.sh: CI installs it, so a
//! missing cluster is a broken setup, never a reason to pass.

use gentgt::backend::{Backend, RbdBackend, RbdOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Ceph {
    /// The cluster's ceph.conf (monitor address, client keyring).
    pub conf: PathBuf,
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-one-node.sh")
}

/// The cluster, started on first use.
pub fn cluster() -> &'static Ceph {
    static CEPH: OnceLock<Ceph> = OnceLock::new();
    CEPH.get_or_init(start)
}

fn start() -> Ceph {
    for tool in ["ceph-mon", "ceph-osd", "rbd"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: run scripts/install-test-deps.sh (the RBD tests need a real Ceph cluster)"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("gentgt-ceph-")
        .tempdir()
        .unwrap()
        .keep();
    let out = Command::new(script())
        .arg("start")
        .arg(&dir)
        .args(["--owner", &std::process::id().to_string()])
        .output()
        .expect("run scripts/ceph-one-node.sh");
    assert!(
        out.status.success(),
        "scripts/ceph-one-node.sh start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    assert!(conf.is_file(), "no ceph.conf at {}", conf.display());
    Ceph { conf, dir }
}

impl Ceph {
    /// `rbd -c CONF ARGS…`: (success, stdout, stderr).
    pub fn rbd(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("rbd");
        cmd.arg("-c").arg(&self.conf).args(args);
        super::run(&mut cmd, 60)
    }

    /// `rbd` that must succeed; its stdout.
    pub fn rbd_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.rbd(args);
        assert!(ok, "rbd {args:?} failed: {err}");
        out
    }

    /// The whole image as `rbd export` reads it (librbd, not the target).
    pub fn export(&self, image: &str) -> Vec<u8> {
        let file = self.dir.join(format!("{image}.export"));
        let _ = std::fs::remove_file(&file);
        self.rbd_ok(&["export", &format!("rbd/{image}"), file.to_str().unwrap()]);
        let data = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        data
    }

    /// Create `rbd/NAME` of `size` bytes.
    pub fn create(&self, image: &str, size: u64) {
        self.rbd_ok(&[
            "create",
            "--size",
            &format!("{}K", size / 1024),
            &format!("rbd/{image}"),
        ]);
    }

    /// Does `rbd/NAME` exist?
    pub fn exists(&self, image: &str) -> bool {
        self.rbd(&["info", &format!("rbd/{image}")]).0
    }

    /// A backend on a new image `rbd/IMAGE` of `size` bytes, opened as an
    /// RBD LUN opens it (for tests that build their targets by hand).
    pub fn backend(&self, image: &str, size: u64) -> Arc<dyn Backend> {
        let opts = RbdOptions {
            pool: "rbd".into(),
            image: image.into(),
            namespace: None,
            ceph_conf: Some(self.conf.clone()),
            client: "admin".into(),
            create_size: Some(size),
            read_only: false,
        };
        Arc::new(RbdBackend::open(&opts).unwrap_or_else(|e| panic!("open rbd/{image}: {e}")))
    }

    /// `[[target.lun]]` keys of an RBD LUN on `rbd/IMAGE` of this cluster.
    pub fn lun_keys(&self, image: &str) -> String {
        format!(
            "backend = \"rbd\"\npool = \"rbd\"\nimage = \"{image}\"\nceph_conf = \"{}\"\n",
            self.conf.display()
        )
    }
}

/// A name no other test of this run uses.
pub fn unique_image(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
