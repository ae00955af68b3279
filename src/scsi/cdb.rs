//! The command table. Each supported command is one row: opcode, service
//! action, CDB length, usage mask, direction and handler. Dispatch, the
//! reserved-bit check and REPORT SUPPORTED OPERATION CODES all read this
//! table, so supporting a new command means adding a row.

use super::sense::{Sense, SenseReason};
use super::server::DeviceServer;
use super::vendor::{cbt, lock, view};
use super::{DataDirection, LogicalUnit, Nexus, ScsiCommand, ScsiResult};
use super::{pr, sbc, spc};

/// What a handler returns: a result, or a sense condition that the server
/// turns into CHECK CONDITION.
pub type CmdResult = Result<ScsiResult, Sense>;
pub type Handler = fn(&Ctx, &ScsiCommand) -> CmdResult;

/// Everything a handler may look at besides the command itself.
pub struct Ctx<'a> {
    pub server: &'a DeviceServer,
    /// The addressed logical unit; `None` when it does not exist (only
    /// commands with `lun_optional` reach their handler then).
    pub lu: Option<&'a LogicalUnit>,
    pub nexus: &'a Nexus,
    pub desc: &'static CommandDesc,
}

impl Ctx<'_> {
    pub fn lu(&self) -> Result<&LogicalUnit, Sense> {
        self.lu.ok_or(Sense::new(SenseReason::LunNotSupported))
    }
}

#[derive(Debug)]
pub struct CommandDesc {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub name: &'static str,
    pub cdb_len: usize,
    /// Bits the device server looks at, byte by byte (byte 0 is the
    /// opcode). Any other bit set in a CDB is a reserved bit →
    /// INVALID FIELD IN CDB. Reported as CDB USAGE DATA.
    pub usage_mask: [u8; 16],
    pub direction: DataDirection,
    pub handler: Handler,
    /// Modifies the medium: refused on a read-only LUN.
    pub writes: bool,
    /// INQUIRY, REPORT LUNS and REQUEST SENSE: they work for a LUN that does
    /// not exist and are not blocked by a pending unit attention
    /// (SPC-5 §5.14, SAM-5 §5.9).
    pub lun_optional: bool,
    /// Behaviour under a reservation the sender does not hold; derived by
    /// `pr::classify` from opcode, service action and `writes`.
    pub pr: pr::PrClass,
}

/// Pad a usage mask to 16 bytes.
const fn m(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

const FF: u8 = 0xff;
/// CONTROL byte: NACA and LINK are not supported, so no bit may be set.
const CTL: u8 = 0x00;
/// READ/WRITE byte 1: DPO, FUA and the obsolete FUA_NV (still sent by some
/// initiators); RDPROTECT/WRPROTECT are absent because we have no
/// protection information.
const RW_FLAGS: u8 = 0x1a;
const GROUP: u8 = 0x3f;
/// VERIFY / WRITE AND VERIFY byte 1: DPO and BYTCHK (VRPROTECT/WRPROTECT
/// absent: no protection information).
const VFY_FLAGS: u8 = 0x16;
/// DPO and FUA alone (WRITE ATOMIC has no FUA_NV).
const DPO_FUA: u8 = 0x18;
/// PRE-FETCH byte 1: IMMED.
const IMMED: u8 = 0x02;

macro_rules! row {
    ($op:expr, $sa:expr, $name:expr, $mask:expr, $dir:ident, $h:expr, $writes:expr, $opt:expr) => {
        CommandDesc {
            opcode: $op,
            service_action: $sa,
            name: $name,
            cdb_len: $mask.len(),
            usage_mask: m(&$mask),
            direction: DataDirection::$dir,
            handler: $h,
            writes: $writes,
            lun_optional: $opt,
            pr: pr::classify($op, $sa, $writes),
        }
    };
}

/// Sorted by opcode, then service action.
#[rustfmt::skip]
pub static TABLE: &[CommandDesc] = &[
    row!(0x00, None, "TEST UNIT READY", [0x00, 0, 0, 0, 0, CTL], None, spc::test_unit_ready, false, false),
    row!(0x03, None, "REQUEST SENSE", [0x03, 0x01, 0, 0, FF, CTL], In, spc::request_sense, false, true),
    row!(0x08, None, "READ(6)", [0x08, 0x1f, FF, FF, FF, CTL], In, sbc::rw::read, false, false),
    row!(0x0a, None, "WRITE(6)", [0x0a, 0x1f, FF, FF, FF, CTL], Out, sbc::rw::write, true, false),
    row!(0x12, None, "INQUIRY", [0x12, 0x01, FF, FF, FF, CTL], In, spc::inquiry::inquiry, false, true),
    row!(0x15, None, "MODE SELECT(6)", [0x15, 0x11, 0, 0, FF, CTL], Out, spc::modeselect::mode_select6, false, false),
    row!(0x16, None, "RESERVE(6)", [0x16, 0, 0, 0, 0, CTL], None, pr::reserve6::reserve, false, false),
    row!(0x17, None, "RELEASE(6)", [0x17, 0, 0, 0, 0, CTL], None, pr::reserve6::release, false, false),
    row!(0x1a, None, "MODE SENSE(6)", [0x1a, 0x08, FF, FF, FF, CTL], In, spc::mode::mode_sense6, false, false),
    row!(0x1b, None, "START STOP UNIT", [0x1b, 0x01, 0, 0x0f, 0xf7, CTL], None, spc::startstop::start_stop_unit, false, false),
    row!(0x1e, None, "PREVENT ALLOW MEDIUM REMOVAL", [0x1e, 0, 0, 0, 0x03, CTL], None, spc::startstop::prevent_allow, false, false),
    row!(0x25, None, "READ CAPACITY(10)", [0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, CTL], In, sbc::read_capacity10, false, false),
    row!(0x28, None, "READ(10)", [0x28, RW_FLAGS, FF, FF, FF, FF, GROUP, FF, FF, CTL], In, sbc::rw::read, false, false),
    row!(0x2a, None, "WRITE(10)", [0x2a, RW_FLAGS, FF, FF, FF, FF, GROUP, FF, FF, CTL], Out, sbc::rw::write, true, false),
    row!(0x2e, None, "WRITE AND VERIFY(10)", [0x2e, VFY_FLAGS, FF, FF, FF, FF, GROUP, FF, FF, CTL], Out, sbc::verify::write_and_verify, true, false),
    row!(0x2f, None, "VERIFY(10)", [0x2f, VFY_FLAGS, FF, FF, FF, FF, GROUP, FF, FF, CTL], Out, sbc::verify::verify, false, false),
    row!(0x34, None, "PRE-FETCH(10)", [0x34, IMMED, FF, FF, FF, FF, GROUP, FF, FF, CTL], None, sbc::prefetch::prefetch, false, false),
    row!(0x35, None, "SYNCHRONIZE CACHE(10)", [0x35, 0x06, FF, FF, FF, FF, GROUP, FF, FF, CTL], None, sbc::synchronize_cache, false, false),
    row!(0x37, None, "READ DEFECT DATA(10)", [0x37, 0, 0x1f, 0, 0, 0, 0, FF, FF, CTL], In, sbc::defect::read_defect_data, false, false),
    row!(0x41, None, "WRITE SAME(10)", [0x41, 0x18, FF, FF, FF, FF, 0x1f, FF, FF, CTL], Out, sbc::writesame::write_same, true, false),
    row!(0x42, None, "UNMAP", [0x42, 0x01, 0, 0, 0, 0, 0x1f, FF, FF, CTL], Out, sbc::unmap::unmap, true, false),
    row!(0x48, Some(0x01), "SANITIZE", [0x48, 0xbf, 0, 0, 0, 0, 0, FF, FF, CTL], Out, sbc::sanitize::sanitize, true, false),
    row!(0x48, Some(0x02), "SANITIZE", [0x48, 0xbf, 0, 0, 0, 0, 0, FF, FF, CTL], None, sbc::sanitize::sanitize, true, false),
    row!(0x48, Some(0x03), "SANITIZE", [0x48, 0xbf, 0, 0, 0, 0, 0, FF, FF, CTL], None, sbc::sanitize::sanitize, true, false),
    row!(0x4d, None, "LOG SENSE", [0x4d, 0, FF, FF, 0, FF, FF, FF, FF, CTL], In, spc::log::log_sense, false, false),
    row!(0x55, None, "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, CTL], Out, spc::modeselect::mode_select10, false, false),
    row!(0x56, None, "RESERVE(10)", [0x56, 0, 0, 0, 0, 0, 0, 0, 0, CTL], None, pr::reserve6::reserve, false, false),
    row!(0x57, None, "RELEASE(10)", [0x57, 0, 0, 0, 0, 0, 0, 0, 0, CTL], None, pr::reserve6::release, false, false),
    row!(0x5a, None, "MODE SENSE(10)", [0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, CTL], In, spc::mode::mode_sense10, false, false),
    row!(0x5e, Some(0x00), "PERSISTENT RESERVE IN", [0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, CTL], In, pr::prin::prin, false, false),
    row!(0x5e, Some(0x01), "PERSISTENT RESERVE IN", [0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, CTL], In, pr::prin::prin, false, false),
    row!(0x5e, Some(0x02), "PERSISTENT RESERVE IN", [0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, CTL], In, pr::prin::prin, false, false),
    row!(0x5e, Some(0x03), "PERSISTENT RESERVE IN", [0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, CTL], In, pr::prin::prin, false, false),
    row!(0x5f, Some(0x00), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x01), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x02), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x03), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x04), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x05), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x5f, Some(0x06), "PERSISTENT RESERVE OUT", [0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, CTL], Out, pr::prout::prout, false, false),
    row!(0x83, Some(0x00), "EXTENDED COPY(LID1)", [0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL], Out, spc::xcopy::extended_copy, false, false),
    row!(0x84, Some(0x00), "RECEIVE COPY RESULTS(COPY STATUS)", [0x84, 0x1f, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL], In, spc::copy_results::receive_copy_results, false, false),
    row!(0x84, Some(0x03), "RECEIVE COPY RESULTS(OPERATING PARAMETERS)", [0x84, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL], In, spc::copy_results::receive_copy_results, false, false),
    row!(0x84, Some(0x04), "RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)", [0x84, 0x1f, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL], In, spc::copy_results::receive_copy_results, false, false),
    row!(0x88, None, "READ(16)", [0x88, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], In, sbc::rw::read, false, false),
    row!(0x89, None, "COMPARE AND WRITE", [0x89, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, GROUP, CTL], Out, sbc::caw::compare_and_write, true, false),
    row!(0x8a, None, "WRITE(16)", [0x8a, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::rw::write, true, false),
    row!(0x8b, None, "ORWRITE(16)", [0x8b, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::orwrite::orwrite, true, false),
    row!(0x8e, None, "WRITE AND VERIFY(16)", [0x8e, VFY_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::verify::write_and_verify, true, false),
    row!(0x8f, None, "VERIFY(16)", [0x8f, VFY_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::verify::verify, false, false),
    row!(0x90, None, "PRE-FETCH(16)", [0x90, IMMED, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], None, sbc::prefetch::prefetch, false, false),
    row!(0x91, None, "SYNCHRONIZE CACHE(16)", [0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], None, sbc::synchronize_cache, false, false),
    row!(0x93, None, "WRITE SAME(16)", [0x93, 0x19, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1f, CTL], Out, sbc::writesame::write_same, true, false),
    row!(0x9c, None, "WRITE ATOMIC(16)", [0x9c, DPO_FUA, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, FF, FF, GROUP, CTL], Out, sbc::atomic::write_atomic16, true, false),
    row!(0x9e, Some(0x10), "READ CAPACITY(16)", [0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, CTL], In, sbc::read_capacity16, false, false),
    row!(0x9e, Some(0x12), "GET LBA STATUS", [0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL], In, sbc::lbastatus::get_lba_status, false, false),
    row!(0xa0, None, "REPORT LUNS", [0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, CTL], In, spc::report_luns, false, true),
    row!(0xa3, Some(0x0a), "REPORT TARGET PORT GROUPS", [0xa3, FF, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL], In, spc::rtpg::report_target_port_groups, false, false),
    row!(0xa3, Some(0x0c), "REPORT SUPPORTED OPERATION CODES", [0xa3, 0x1f, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, CTL], In, spc::rsoc::report_supported_opcodes, false, false),
    row!(0xa8, None, "READ(12)", [0xa8, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], In, sbc::rw::read, false, false),
    row!(0xaa, None, "WRITE(12)", [0xaa, RW_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::rw::write, true, false),
    row!(0xae, None, "WRITE AND VERIFY(12)", [0xae, VFY_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::verify::write_and_verify, true, false),
    row!(0xaf, None, "VERIFY(12)", [0xaf, VFY_FLAGS, FF, FF, FF, FF, FF, FF, FF, FF, GROUP, CTL], Out, sbc::verify::verify, false, false),
    row!(0xb7, None, "READ DEFECT DATA(12)", [0xb7, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL], In, sbc::defect::read_defect_data, false, false),
    // Vendor specific: changed-block tracking (shared/specs/cbt-scsi.md).
    row!(0xc0, Some(0x00), "CBT REPORT TRACKING", [0xc0, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, CTL], In, cbt::report_tracking, false, false),
    row!(0xc0, Some(0x01), "CBT CLOSE GENERATION", [0xc0, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, CTL], In, cbt::close_generation, false, false),
    row!(0xc0, Some(0x02), "CBT GET CHANGED EXTENTS", [0xc0, 0x3f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, CTL], In, cbt::get_changed_extents, false, false),
    row!(0xc0, Some(0x03), "CBT ACQUIRE WRITE LOCK", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, 0, 0, CTL], In, lock::acquire, false, false),
    row!(0xc0, Some(0x04), "CBT RENEW WRITE LOCK", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL], In, lock::renew, false, false),
    row!(0xc0, Some(0x05), "CBT RELEASE WRITE LOCK", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, 0, 0, CTL], In, lock::release, false, false),
    row!(0xc0, Some(0x06), "CBT OPEN VIEW", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, 0, 0, CTL], In, view::open, false, false),
    row!(0xc0, Some(0x07), "CBT RENEW VIEW", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL], In, view::renew, false, false),
    row!(0xc0, Some(0x08), "CBT RELEASE VIEW", [0xc0, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, 0, 0, CTL], In, view::release, false, false),
];

/// Does any row for `opcode` carry a service action?
pub fn has_service_actions(opcode: u8) -> bool {
    TABLE
        .iter()
        .any(|d| d.opcode == opcode && d.service_action.is_some())
}

/// Find the row for a CDB. Unknown opcode → INVALID COMMAND OPERATION
/// CODE; known opcode with an unknown service action → INVALID FIELD IN
/// CDB pointing at the SERVICE ACTION field (byte 1, bit 4).
pub fn lookup(cdb: &[u8]) -> Result<&'static CommandDesc, Sense> {
    let opcode = *cdb.first().ok_or(Sense::new(SenseReason::InvalidOpcode))?;
    if !has_service_actions(opcode) {
        return TABLE
            .iter()
            .find(|d| d.opcode == opcode)
            .ok_or(Sense::new(SenseReason::InvalidOpcode));
    }
    let sa = cdb.get(1).map(|b| (b & 0x1f) as u16);
    TABLE
        .iter()
        .find(|d| d.opcode == opcode && d.service_action == sa)
        .ok_or(Sense::invalid_cdb_field(1, Some(4)))
}

/// Check that the CDB is long enough and that no bit outside the usage
/// mask is set (including NACA/LINK in the CONTROL byte).
pub fn check_reserved(desc: &CommandDesc, cdb: &[u8]) -> Result<(), Sense> {
    if cdb.len() < desc.cdb_len {
        return Err(Sense::invalid_cdb_field(cdb.len(), None));
    }
    let pairs = cdb.iter().zip(desc.usage_mask.iter());
    for (i, (b, mask)) in pairs.enumerate().take(desc.cdb_len).skip(1) {
        let bad = b & !mask;
        if bad != 0 {
            let bit = 7 - bad.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(i, Some(bit)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_consistent() {
        for w in TABLE.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "{} / {}",
                w[0].name,
                w[1].name
            );
        }
        for d in TABLE {
            assert_eq!(d.usage_mask[0], d.opcode, "{}", d.name);
            assert!(matches!(d.cdb_len, 6 | 10 | 12 | 16), "{}", d.name);
            assert_eq!(d.usage_mask[d.cdb_len - 1], CTL, "{}", d.name);
            // The opcode's CDB-length group (SAM-5 §5.2) matches the row.
            let group_len = match d.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                // Vendor specific (6, 7): any length.
                6 | 7 => d.cdb_len,
                _ => 0,
            };
            assert_eq!(group_len, d.cdb_len, "{}", d.name);
            if let Some(sa) = d.service_action {
                assert_eq!(d.usage_mask[1] & 0x1f, 0x1f);
                assert!(sa < 0x20);
            }
        }
    }

    #[test]
    fn lookup_by_opcode_and_service_action() {
        assert_eq!(lookup(&[0x28; 10]).unwrap().name, "READ(10)");
        assert_eq!(lookup(&[0x9e, 0x10]).unwrap().name, "READ CAPACITY(16)");
        let e = lookup(&[0x9e, 0x11]).unwrap_err();
        assert_eq!(e.reason, SenseReason::InvalidFieldInCdb);
        assert_eq!(
            lookup(&[0xff]).unwrap_err().reason,
            SenseReason::InvalidOpcode
        );
        assert_eq!(lookup(&[]).unwrap_err().reason, SenseReason::InvalidOpcode);
        // A bare 0x9e without byte 1 is not a panic.
        assert!(lookup(&[0x9e]).is_err());
    }

    #[test]
    fn reserved_bits_rejected_with_pointer() {
        let d = lookup(&[0x28]).unwrap();
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        assert!(check_reserved(d, &cdb).is_ok());
        cdb[9] = 0x04; // NACA
        let e = check_reserved(d, &cdb).unwrap_err();
        assert_eq!(e.specific, Some([0xc0 | 0x08 | 2, 0, 9]));
        cdb[9] = 0;
        cdb[1] = 0x20; // RDPROTECT
        assert!(check_reserved(d, &cdb).is_err());
        assert!(check_reserved(d, &cdb[..6]).is_err());
    }
}
