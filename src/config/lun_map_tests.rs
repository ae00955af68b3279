//! The per-LUN `initiators` key: what it builds (the LU's visibility, and
//! the view LUN's, which is for CBT initiators the LUN is mapped for),
//! validation, and reload (a change redefines the LUN, like other keys).

use super::{Config, ConfigError, build_registry, rebuild_registry};
use crate::server::Registry;
use std::sync::Arc;

const T: &str = "iqn.2026-11.dev.gentgt:t";
const A: &str = "iqn.2026-11.dev.gentgt:host-a";
const B: &str = "iqn.2026-11.dev.gentgt:host-b";
const BACKUP: &str = "iqn.2026-11.dev.gentgt:backup";

fn config(lun1: &str) -> String {
    format!(
        "[[target]]\nname = \"{T}\"\n[[target.lun]]\nid = 0\nbackend = \"memory\"\n\
         size = \"1MiB\"\n[[target.lun]]\nid = 1\nbackend = \"memory\"\nsize = \"1MiB\"\n\
         tracking = \"volatile\"\ncbt_initiators = [\"{BACKUP}\", \"{B}\"]\n{lun1}"
    )
}

fn parse(text: &str) -> Config {
    Config::from_toml(text, "test").unwrap()
}

fn lu(r: &Registry, lun: u64) -> &Arc<crate::scsi::LogicalUnit> {
    &r.target(T).unwrap().device.luns[&lun]
}

#[test]
fn initiators_map_a_lun_and_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(&format!("initiators = [\"{A}\", \"{BACKUP}\"]"));
    let reg = build_registry(&parse(&text), dir.path()).unwrap();
    assert!(lu(&reg, 0).visible(B), "absent key: every initiator");
    assert!(lu(&reg, 1).visible(A) && lu(&reg, 1).visible(BACKUP));
    assert!(!lu(&reg, 1).visible(B));
    // The view LUN (129): CBT initiators that the LUN is mapped for.
    let view = lu(&reg, 129);
    assert!(view.visible(BACKUP));
    assert!(
        !view.visible(B),
        "B may use CBT but LUN 1 is not mapped for it"
    );
    assert!(!view.visible(A), "A sees LUN 1 but is no CBT initiator");
}

#[test]
fn initiators_are_validated() {
    let e = match Config::from_toml(&config("initiators = [\"Not An IQN\"]"), "t") {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected validation errors, got {other:?}"),
    };
    assert!(e.iter().any(|m| m.contains("LUN 1: initiators")), "{e:?}");
}

#[test]
fn reload_with_a_new_map_redefines_the_lun() {
    let dir = tempfile::tempdir().unwrap();
    let a = config("");
    let reg = build_registry(&parse(&a), dir.path()).unwrap();
    let b = config(&format!("initiators = [\"{A}\"]"));
    let reg2 = rebuild_registry(&parse(&a), &reg, &parse(&b), dir.path()).unwrap();
    assert!(Arc::ptr_eq(lu(&reg, 0), lu(&reg2, 0)), "LUN 0 unchanged");
    assert!(!Arc::ptr_eq(lu(&reg, 1), lu(&reg2, 1)), "LUN 1 redefined");
    assert!(lu(&reg2, 1).visible(A) && !lu(&reg2, 1).visible(B));
}
