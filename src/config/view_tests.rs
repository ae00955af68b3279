//! The view keys (`views`, `view_lun`, `view_space`, `max_view_lease_ms`):
//! defaults, validation, what they build, and reload semantics (like the
//! other LUN keys: an unchanged LUN keeps its open view, a redefined one
//! starts without one).

use super::{Config, ConfigError, build_registry, rebuild_registry};
use crate::scsi::{DeviceServer, Nexus, ScsiCommand, status};
use crate::server::Registry;
use std::path::Path;
use std::time::Duration;

const T: &str = "iqn.2026-11.dev.gentgt:t";
const BACKUP: &str = "iqn.2026-11.dev.gentgt:backup";

fn config(top: &str, lun0: &str, more: &str) -> String {
    format!(
        "{top}\n[[target]]\nname = \"{T}\"\n[[target.lun]]\nid = 0\nbackend = \"file\"\n\
         path = \"a.img\"\nsize = \"1MiB\"\n{lun0}\n{more}"
    )
}

fn parse(text: &str) -> Config {
    Config::from_toml(text, "test").unwrap()
}

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml(text, "test") {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn device(r: &Registry) -> &DeviceServer {
    &r.target(T).unwrap().device
}

/// OPEN VIEW on LUN 0 as the backup initiator: the view generation.
fn open_view(d: &DeviceServer) -> u64 {
    let nexus = Nexus {
        id: 1,
        initiator_port: format!("{BACKUP},i,0x1"),
        initiator_name: BACKUP.into(),
        relative_port: 1,
    };
    let mut cdb = [0u8; 16];
    cdb[0] = 0xc0;
    cdb[1] = 0x06;
    let r = d.execute(&ScsiCommand {
        lun: 0,
        cdb: &cdb,
        data_out: &[],
        expected_len: 32,
        nexus: &nexus,
    });
    assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
    u64::from_be_bytes(r.data_in[8..16].try_into().unwrap())
}

fn has_view(d: &DeviceServer) -> bool {
    d.luns[&0].tracker.as_ref().unwrap().view().is_some()
}

#[test]
fn defaults_build_a_view_lun_sized_like_the_lun() {
    let dir = tempfile::tempdir().unwrap();
    let reg = build_registry(&parse(&config("", "", "")), dir.path()).unwrap();
    let d = device(&reg);
    let v = d.luns[&0].cbt.view.clone().expect("views on by default");
    assert_eq!((v.lun, v.space), (128, 1 << 20));
    assert_eq!(v.max_lease, Duration::from_secs(300));
    assert_eq!(v.store_dir, dir.path().join("a.img.cbt"));
    let view = &d.luns[&128];
    assert!(view.read_only && view.view_of.is_some());
    assert_eq!(view.backend.size(), 1 << 20);
    assert!(view.visible(BACKUP) && !view.visible("iqn.2026-11.dev.gentgt:other"));
}

#[test]
fn keys_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "max_view_lease_ms = 5000",
        "view_lun = 7\nview_space = \"64KiB\"",
        "",
    );
    let reg = build_registry(&parse(&text), dir.path()).unwrap();
    let v = device(&reg).luns[&0].cbt.view.clone().unwrap();
    assert_eq!(
        (v.lun, v.space, v.max_lease),
        (7, 64 << 10, Duration::from_secs(5))
    );
    let off = build_registry(&parse(&config("", "views = false", "")), dir.path()).unwrap();
    assert!(device(&off).luns[&0].cbt.view.is_none());
    assert_eq!(device(&off).luns.len(), 1);
    let e = errors(&config("", "view_lun = 0", ""));
    assert!(e.iter().any(|m| m.contains("view_lun 0")), "{e:?}");
    let clash = "[[target.lun]]\nid = 1\nbackend = \"memory\"\nsize = \"1MiB\"\nview_lun = 128";
    let e = errors(&config("", "", clash));
    assert!(e.iter().any(|m| m.contains("view_lun 128")), "{e:?}");
    let e = errors(&config("", "tracking = \"off\"\nviews = true", ""));
    assert!(
        e.iter().any(|m| m.contains("views = true needs tracking")),
        "{e:?}"
    );
    let e = errors(&config("max_view_lease_ms = 0", "", ""));
    assert!(e.iter().any(|m| m.contains("max_view_lease_ms")), "{e:?}");
    let e = errors(&config("", "view_space = 0", ""));
    assert!(e.iter().any(|m| m.contains("view_space")), "{e:?}");
    // A memory LUN keeps its view's data in the temporary directory.
    let mem = "[[target]]\nname = \"iqn.2026-11.dev.gentgt:m\"\n[[target.lun]]\nid = 0\n\
               backend = \"memory\"\nsize = \"1MiB\"";
    let reg = build_registry(&parse(mem), dir.path()).unwrap();
    let d = &reg.target("iqn.2026-11.dev.gentgt:m").unwrap().device;
    assert_eq!(
        d.luns[&0].cbt.view.as_ref().unwrap().store_dir,
        std::env::temp_dir()
    );
}

fn reload(cur: &str, running: &Registry, next: &str, dir: &Path) -> Registry {
    rebuild_registry(&parse(cur), running, &parse(next), dir).unwrap()
}

#[test]
fn reload_keeps_an_unchanged_lun_and_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let a = config("", "", "");
    let reg = build_registry(&parse(&a), dir.path()).unwrap();
    open_view(device(&reg));
    // A LUN added beside it: LUN 0 and its view stay as they are.
    let b = config(
        "",
        "",
        "[[target.lun]]\nid = 1\nbackend = \"memory\"\nsize = \"1MiB\"",
    );
    let reg2 = reload(&a, &reg, &b, dir.path());
    assert!(
        has_view(device(&reg2)),
        "an unchanged LUN keeps its open view"
    );
    assert!(
        device(&reg2).luns.contains_key(&129),
        "the new LUN's view LUN"
    );
    assert!(std::sync::Arc::ptr_eq(
        &device(&reg).luns[&128],
        &device(&reg2).luns[&128]
    ));
    // A view key changed: the LUN is redefined and starts without a view.
    let c = config("", "view_space = \"512KiB\"", "");
    let reg3 = reload(&b, &reg2, &c, dir.path());
    assert!(!has_view(device(&reg3)));
    assert_eq!(
        device(&reg3).luns[&0].cbt.view.as_ref().unwrap().space,
        512 << 10
    );
    // Views turned off: the view LUN goes with them.
    let d = config("", "views = false", "");
    let reg4 = reload(&c, &reg3, &d, dir.path());
    assert!(!device(&reg4).luns.contains_key(&128));
    // A new lease maximum applies to every LUN of the target (redefined).
    let e = config("max_view_lease_ms = 1000", "", "");
    let reg5 = reload(&d, &reg4, &e, dir.path());
    let v = device(&reg5).luns[&0].cbt.view.clone().unwrap();
    assert_eq!(v.max_lease, Duration::from_secs(1));
    assert!(open_view(device(&reg5)) > 0);
}
