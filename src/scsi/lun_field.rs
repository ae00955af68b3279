//! The 8-byte LUN field (SAM-5 §4.7), single level: peripheral device
//! addressing (bus 0) below 256, flat space addressing below 16384. Both
//! roles encode and decode with these; anything else is not a LUN number
//! this project hands out. A SCSI rule, so it lives here: src/proto uses
//! src/scsi, never the other way round (no import cycle).

/// The largest LUN number a single-level field can carry.
pub const MAX_SINGLE_LEVEL: u64 = 0x3fff;

/// The LUN field (as a big-endian u64) for a LUN number, `None` above
/// [`MAX_SINGLE_LEVEL`].
pub fn encode(lun: u64) -> Option<u64> {
    match lun {
        0..=0xff => Some(lun << 48),
        0x100..=MAX_SINGLE_LEVEL => Some((0x4000 | lun) << 48),
        _ => None,
    }
}

/// The LUN number of a single-level field, `None` for any other form
/// (a non-zero bus, logical unit or extended addressing, a second level).
pub fn decode(field: u64) -> Option<u64> {
    if field << 16 != 0 {
        return None;
    }
    let top = field >> 48;
    match top >> 14 {
        0 if top >> 8 == 0 => Some(top),
        1 => Some(top & MAX_SINGLE_LEVEL),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_level_roundtrip() {
        for lun in [0, 1, 255, 256, 0x1234, MAX_SINGLE_LEVEL] {
            assert_eq!(decode(encode(lun).unwrap()), Some(lun), "{lun}");
        }
        assert_eq!(encode(5), Some(0x0005 << 48));
        assert_eq!(encode(300), Some(0x412c << 48));
        assert_eq!(encode(MAX_SINGLE_LEVEL + 1), None);
    }

    #[test]
    fn other_forms_are_not_lun_numbers() {
        assert_eq!(decode(0x0105 << 48), None, "peripheral, bus 1");
        assert_eq!(decode(0x8001 << 48), None, "logical unit addressing");
        assert_eq!(decode(0xc000 << 48), None, "extended addressing");
        assert_eq!(decode((0x0001 << 48) | 1), None, "second level");
    }
}
