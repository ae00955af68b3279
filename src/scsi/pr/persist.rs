//! APTPL: the persistent reservation state of a LUN in a small text file
//! beside its data (`<lun path>.pr`), written durably before the PROUT
//! that changed it completes.
//!
//! Format, one record per line:
//! ```text
//! gentgt-pr 1
//! generation <decimal>
//! reservation <type> <relative port> <port name | *>
//! registration <key hex> <relative port> <all_tg_pt 0|1> <port name>
//! ```
//! Port names are iSCSI names plus ",i,0x<isid>": they hold no blanks, so
//! the name is the rest of the line.

use super::state::{PrState, PrType, Registration, Reservation};
use crate::durable;
use std::fs;
use std::io;
use std::path::Path;

const MAGIC: &str = "gentgt-pr 1";
/// A state file larger than this is not ours (bounds what load reads).
const MAX_FILE: u64 = 4 << 20;

pub fn encode(st: &PrState) -> String {
    let mut s = format!("{MAGIC}\ngeneration {}\n", st.generation);
    if let Some(r) = &st.reservation {
        let (port, rp) = match &r.holder {
            Some((p, rp)) => (p.as_str(), *rp),
            None => ("*", 0),
        };
        s.push_str(&format!("reservation {} {rp} {port}\n", r.kind.code()));
    }
    for r in &st.registrations {
        s.push_str(&format!(
            "registration {:x} {} {} {}\n",
            r.key, r.rel_port, r.all_tg_pt as u8, r.port
        ));
    }
    s
}

fn bad(line: usize, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PR state line {}: {what}", line + 1),
    )
}

/// Parse a state file; a loaded state always has APTPL set (that is why
/// it was written).
pub fn decode(text: &str) -> io::Result<PrState> {
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l) != Some(MAGIC) {
        return Err(bad(0, "not a gentgt PR state file"));
    }
    let mut st = PrState {
        aptpl: true,
        ..PrState::default()
    };
    for (i, line) in lines {
        let mut f = line.splitn(5, ' ');
        match (f.next(), f.next(), f.next(), f.next(), f.next()) {
            (Some("generation"), Some(g), None, _, _) => {
                st.generation = g.parse().map_err(|_| bad(i, "generation"))?;
            }
            (Some("reservation"), Some(t), Some(rp), Some(port), None) => {
                let kind = t
                    .parse()
                    .ok()
                    .and_then(PrType::from_code)
                    .ok_or_else(|| bad(i, "reservation type"))?;
                let rp: u16 = rp.parse().map_err(|_| bad(i, "relative port"))?;
                let holder = (port != "*").then(|| (port.to_string(), rp));
                if holder.is_none() != kind.all_registrants() {
                    return Err(bad(i, "reservation holder does not fit its type"));
                }
                st.reservation = Some(Reservation { kind, holder });
            }
            (Some("registration"), Some(k), Some(rp), Some(all), Some(port)) => {
                st.registrations.push(Registration {
                    key: u64::from_str_radix(k, 16).map_err(|_| bad(i, "key"))?,
                    rel_port: rp.parse().map_err(|_| bad(i, "relative port"))?,
                    all_tg_pt: match all {
                        "0" => false,
                        "1" => true,
                        _ => return Err(bad(i, "all_tg_pt")),
                    },
                    port: port.to_string(),
                });
            }
            (Some(""), None, ..) => {}
            _ => return Err(bad(i, "unknown record")),
        }
    }
    Ok(st)
}

/// The stored state, if any.
pub fn load(path: &Path) -> io::Result<Option<PrState>> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if m.len() > MAX_FILE => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PR state file too large",
            ));
        }
        Ok(_) => {}
    }
    decode(&fs::read_to_string(path)?).map(Some)
}

/// Write the state durably (temp file, fsync, rename over, fsync the
/// directory): a crash leaves either the old or the new state.
pub fn store(path: &Path, st: &PrState) -> io::Result<()> {
    durable::replace_bytes(path, encode(st).as_bytes())
}

/// APTPL turned off: nothing may survive a restart.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => durable::sync_parent(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrState {
        PrState {
            generation: 7,
            registrations: vec![
                Registration {
                    port: "iqn.2024-01.a:h,i,0x400001370000".into(),
                    rel_port: 1,
                    key: 0xabc,
                    all_tg_pt: false,
                },
                Registration {
                    port: "iqn.2024-01.b:h,i,0x1".into(),
                    rel_port: 1,
                    key: u64::MAX,
                    all_tg_pt: true,
                },
            ],
            reservation: Some(Reservation {
                kind: PrType::ExclusiveAccessRegistrantsOnly,
                holder: Some(("iqn.2024-01.a:h,i,0x400001370000".into(), 1)),
            }),
            aptpl: true,
            spc2_holder: None,
        }
    }

    #[test]
    fn round_trip() {
        let st = sample();
        assert_eq!(decode(&encode(&st)).unwrap(), st);
        let mut ar = st.clone();
        ar.reservation = Some(Reservation {
            kind: PrType::WriteExclusiveAllRegistrants,
            holder: None,
        });
        assert_eq!(decode(&encode(&ar)).unwrap(), ar);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode("").is_err());
        assert!(decode("gentgt-pr 2\n").is_err());
        assert!(decode("gentgt-pr 1\ngeneration x\n").is_err());
        assert!(decode("gentgt-pr 1\nreservation 2 1 p\n").is_err());
        assert!(decode("gentgt-pr 1\nreservation 7 1 p\n").is_err());
        assert!(decode("gentgt-pr 1\nregistration zz 1 0 p\n").is_err());
        assert!(decode("gentgt-pr 1\nfoo\n").is_err());
    }

    #[test]
    fn store_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img.pr");
        assert_eq!(load(&p).unwrap(), None);
        store(&p, &sample()).unwrap();
        assert_eq!(load(&p).unwrap(), Some(sample()));
        assert!(!durable::tmp_path(&p).exists());
        remove(&p).unwrap();
        assert_eq!(load(&p).unwrap(), None);
        remove(&p).unwrap();
    }
}
