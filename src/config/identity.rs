//! Stable LUN identity. Initiators (multipath, udev's /dev/disk/by-id, VMware)
//! recognise a disk by its serial number and NAA designator, so those must
//! never change while the data stays the same: for a file LUN they are made
//! once and kept beside the data file; for a memory LUN, whose data dies with
//! the process anyway, they are derived from the target name and LUN id;
//! for an RBD LUN, from the image's own identity (the same on every
//! gateway).

use crate::scsi::LunIdentity;
use md5::{Digest, Md5};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The IEEE company id in our NAA designators. Not an IEEE assignment: the
/// first octet 0x0A has the "locally administered" (X) bit set and the
/// multicast bit clear, so it cannot collide with a registered OUI.
pub const GENTGT_OUI: u32 = 0x0A_67_74;

/// Where a file LUN's identity is stored: the data path plus ".id".
pub fn identity_path(data_path: &Path) -> PathBuf {
    let mut s = data_path.as_os_str().to_owned();
    s.push(".id");
    PathBuf::from(s)
}

/// Read a stored identity. `Ok(None)` if there is none yet; any other
/// problem is an error, because silently making a new identity would show
/// initiators a different disk.
pub fn load(id_path: &Path) -> Result<Option<LunIdentity>, String> {
    let text = match fs::read_to_string(id_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    parse(&text).map(Some)
}

/// Load the stored identity or create, store and return a new random one.
pub fn load_or_create(id_path: &Path) -> Result<LunIdentity, String> {
    if let Some(id) = load(id_path)? {
        return Ok(id);
    }
    let id = random_identity();
    crate::durable::replace_bytes(id_path, render(&id).as_bytes())
        .map_err(|e| format!("cannot write: {e}"))?;
    tracing::info!(path = %id_path.display(), serial = %id.serial, "created LUN identity");
    Ok(id)
}

/// A memory LUN's identity: the same for the same target name and LUN id.
pub fn derived_identity(target: &str, lun: u64) -> LunIdentity {
    let mut h = Md5::new();
    h.update(b"gentgt memory lun\0");
    h.update(target.as_bytes());
    h.update([0]);
    h.update(lun.to_be_bytes());
    let d: [u8; 16] = h.finalize().into();
    LunIdentity {
        serial: hex::encode_upper(&d[..8]),
        naa: naa6(&d),
    }
}

/// An RBD LUN's identity, from the image's identity seed (see
/// `RbdBackend::identity_seed`): the same on every gateway that exports
/// the image, so multipath sees one disk.
pub fn rbd_identity(seed: &str) -> LunIdentity {
    let mut h = Md5::new();
    h.update(b"gentgt rbd image\0");
    h.update(seed.as_bytes());
    let d: [u8; 16] = h.finalize().into();
    LunIdentity {
        serial: hex::encode_upper(&d[..8]),
        naa: naa6(&d),
    }
}

fn random_identity() -> LunIdentity {
    let serial: [u8; 8] = rand::random();
    let vendor: [u8; 16] = rand::random();
    LunIdentity {
        serial: hex::encode_upper(serial),
        naa: naa6(&vendor),
    }
}

/// NAA 6 (IEEE Registered Extended): 4-bit NAA, 24-bit company id, then
/// 100 vendor-specific bits taken from `vendor`.
fn naa6(vendor: &[u8; 16]) -> [u8; 16] {
    let mut n = *vendor;
    let oui = GENTGT_OUI.to_be_bytes(); // [0, a, b, c]
    n[0] = 0x60 | (oui[1] >> 4);
    n[1] = (oui[1] << 4) | (oui[2] >> 4);
    n[2] = (oui[2] << 4) | (oui[3] >> 4);
    n[3] = (oui[3] << 4) | (n[3] & 0x0f);
    n
}

fn render(id: &LunIdentity) -> String {
    format!(
        "# gentgt LUN identity. Do not edit or copy: initiators know the disk by it.\n\
         serial={}\nnaa={}\n",
        id.serial,
        hex::encode_upper(id.naa)
    )
}

fn parse(text: &str) -> Result<LunIdentity, String> {
    let (mut serial, mut naa) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some(("serial", v)) if serial.is_none() => serial = Some(v.to_string()),
            Some(("naa", v)) if naa.is_none() => naa = Some(v.to_string()),
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    let serial = serial.ok_or("no serial= line")?;
    if serial.is_empty() || serial.len() > 20 || !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "serial {serial:?} is not 1..=20 printable characters"
        ));
    }
    let naa = naa.ok_or("no naa= line")?;
    let bytes: [u8; 16] = hex::decode(&naa)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("naa {naa:?} is not 32 hex digits"))?;
    if bytes[0] >> 4 != 6 {
        return Err(format!("naa {naa:?} is not an NAA 6 designator"));
    }
    Ok(LunIdentity { serial, naa: bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa6_layout() {
        let n = naa6(&[0xff; 16]);
        assert_eq!(&n[..4], &[0x60, 0xA6, 0x77, 0x4f]);
        assert_eq!(&n[4..], &[0xff; 12]);
    }

    #[test]
    fn derived_identity_is_stable_and_distinct() {
        let a = derived_identity("iqn.2026-11.dev.gentgt:a", 0);
        assert_eq!(a, derived_identity("iqn.2026-11.dev.gentgt:a", 0));
        assert_ne!(a, derived_identity("iqn.2026-11.dev.gentgt:a", 1));
        assert_ne!(a, derived_identity("iqn.2026-11.dev.gentgt:b", 0));
        assert_eq!(a.serial.len(), 16);
        assert_eq!(a.naa[0] >> 4, 6);
    }

    #[test]
    fn render_parse_round_trip() {
        let id = random_identity();
        assert_eq!(parse(&render(&id)), Ok(id));
    }

    #[test]
    fn rejects_corruption() {
        let good = render(&random_identity());
        assert!(parse("").is_err());
        assert!(parse(&good.replace("naa=6", "naa=5")).is_err());
        assert!(parse(&good.replace("serial=", "serial=X")).is_ok());
        assert!(parse(&good.replace("serial=", "serial=XXXXXXXXX")).is_err());
        assert!(parse(&format!("{good}extra=1\n")).is_err());
        assert!(parse(&format!("{good}serial=AAAA\n")).is_err());
        assert!(parse(&good[..good.len() - 5]).is_err());
    }

    #[test]
    fn stored_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = identity_path(&dir.path().join("lun0.img"));
        assert_eq!(p, dir.path().join("lun0.img.id"));
        assert_eq!(load(&p), Ok(None));
        let first = load_or_create(&p).unwrap();
        assert_eq!(load_or_create(&p).unwrap(), first);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["lun0.img.id"]);
    }
}
