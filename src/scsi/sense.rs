//! Sense data: one table of reasons (key, ASC, ASCQ) and builders for the
//! fixed (0x70) and descriptor (0x72) formats (SPC-5 §4.4).

use super::{ScsiResult, status};

/// Sense keys (SPC-5 table 49).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Every reason this device server reports. The mapping to codes lives in
/// [`SenseReason::codes`] and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenseReason {
    NoSense,
    // ILLEGAL REQUEST
    InvalidOpcode,
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    ParameterListLengthError,
    LbaOutOfRange,
    LunNotSupported,
    InvalidFieldInInformationUnit,
    SavingParametersNotSupported,
    MediumRemovalPrevented,
    TooManyTargetDescriptors,
    UnsupportedTargetDescriptorType,
    TooManySegmentDescriptors,
    UnsupportedSegmentDescriptorType,
    UnexpectedInexactSegment,
    InlineDataLengthExceeded,
    OperationInProgress,
    // COPY ABORTED
    /// A segment could not be processed (range, I/O) and no better code fits.
    CopyAborted,
    CopyTargetNotReachable,
    /// The initiator may not use this command (CBT opcode C0h ACL).
    AccessDeniedNoAccessRights,
    InvalidReleaseOfPersistentReservation,
    InsufficientRegistrationResources,
    // DATA PROTECT
    WriteProtected,
    SoftwareWriteProtected,
    /// Thin provisioning: the write needed space the medium (the
    /// filesystem below a file LUN) does not have (ENOSPC/EDQUOT). Hosts
    /// pause instead of failing the disk.
    SpaceAllocationFailedWriteProtect,
    // UNIT ATTENTION
    PowerOnReset,
    BusDeviceReset,
    ItNexusLoss,
    ReportedLunsDataChanged,
    ModeParametersChanged,
    CapacityDataChanged,
    ReservationsPreempted,
    ReservationsReleased,
    RegistrationsPreempted,
    /// ALUA: a target port group's state changed (reload).
    AsymmetricAccessStateChanged,
    /// The LUN's use of its mapping resources crossed the configured soft
    /// threshold (`soft_threshold`).
    SoftThresholdReached,
    /// NOT READY TO READY CHANGE: a hung backend call returned and the
    /// LUN serves commands again.
    NotReadyToReady,
    // NOT READY
    /// ALUA: LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    PortInStandby,
    /// ALUA: LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    PortUnavailable,
    /// ALUA: LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    AccessStateTransition,
    MediumNotPresent,
    InitializingCommandRequired,
    SanitizeInProgress,
    /// CBT view LUN without an open view (LOGICAL UNIT NOT READY, CAUSE
    /// NOT REPORTABLE).
    NotReadyNoView,
    /// A backend call on the LUN hangs (see `scsi::hung`): LOGICAL UNIT
    /// NOT READY, CAUSE NOT REPORTABLE, so hosts fail the I/O (and
    /// multipath a path) instead of retrying into the stuck device.
    BackendHung,
    // MEDIUM ERROR / HARDWARE ERROR
    UnrecoveredReadError,
    WriteError,
    InternalTargetFailure,
    SanitizeFailed,
    // MISCOMPARE
    Miscompare,
    // ABORTED COMMAND
    /// The transport lost or refused part of the command's data.
    DataPhaseError,
    /// CBT ACQUIRE WRITE LOCK: changes in flight did not finish within the
    /// DRAIN TIMEOUT (COMMAND TIMEOUT DURING PROCESSING).
    LockDrainTimeout,
    /// CBT view lost: its kept data exceeded the view space
    /// (INSUFFICIENT RESOURCES).
    ViewLost,
}

impl SenseReason {
    /// (sense key, additional sense code, additional sense code qualifier).
    pub const fn codes(self) -> (u8, u8, u8) {
        use SenseReason::*;
        use key::*;
        match self {
            NoSense => (NO_SENSE, 0x00, 0x00),
            InvalidOpcode => (ILLEGAL_REQUEST, 0x20, 0x00),
            InvalidFieldInCdb => (ILLEGAL_REQUEST, 0x24, 0x00),
            DataPhaseError => (ABORTED_COMMAND, 0x4b, 0x00),
            LockDrainTimeout => (ABORTED_COMMAND, 0x2e, 0x02),
            ViewLost => (ABORTED_COMMAND, 0x55, 0x03),
            InvalidFieldInParameterList => (ILLEGAL_REQUEST, 0x26, 0x00),
            ParameterListLengthError => (ILLEGAL_REQUEST, 0x1a, 0x00),
            LbaOutOfRange => (ILLEGAL_REQUEST, 0x21, 0x00),
            LunNotSupported => (ILLEGAL_REQUEST, 0x25, 0x00),
            InvalidFieldInInformationUnit => (ILLEGAL_REQUEST, 0x0e, 0x03),
            SavingParametersNotSupported => (ILLEGAL_REQUEST, 0x39, 0x00),
            MediumRemovalPrevented => (ILLEGAL_REQUEST, 0x53, 0x02),
            TooManyTargetDescriptors => (ILLEGAL_REQUEST, 0x26, 0x06),
            UnsupportedTargetDescriptorType => (ILLEGAL_REQUEST, 0x26, 0x07),
            TooManySegmentDescriptors => (ILLEGAL_REQUEST, 0x26, 0x08),
            UnsupportedSegmentDescriptorType => (ILLEGAL_REQUEST, 0x26, 0x09),
            UnexpectedInexactSegment => (ILLEGAL_REQUEST, 0x26, 0x0a),
            InlineDataLengthExceeded => (ILLEGAL_REQUEST, 0x26, 0x0b),
            OperationInProgress => (ILLEGAL_REQUEST, 0x00, 0x16),
            CopyAborted => (COPY_ABORTED, 0x00, 0x00),
            CopyTargetNotReachable => (COPY_ABORTED, 0x0d, 0x02),
            AccessDeniedNoAccessRights => (ILLEGAL_REQUEST, 0x20, 0x02),
            InvalidReleaseOfPersistentReservation => (ILLEGAL_REQUEST, 0x26, 0x04),
            InsufficientRegistrationResources => (ILLEGAL_REQUEST, 0x55, 0x04),
            WriteProtected => (DATA_PROTECT, 0x27, 0x00),
            SoftwareWriteProtected => (DATA_PROTECT, 0x27, 0x02),
            SpaceAllocationFailedWriteProtect => (DATA_PROTECT, 0x27, 0x07),
            PowerOnReset => (UNIT_ATTENTION, 0x29, 0x00),
            BusDeviceReset => (UNIT_ATTENTION, 0x29, 0x03),
            ItNexusLoss => (UNIT_ATTENTION, 0x29, 0x07),
            ReportedLunsDataChanged => (UNIT_ATTENTION, 0x3f, 0x0e),
            ModeParametersChanged => (UNIT_ATTENTION, 0x2a, 0x01),
            CapacityDataChanged => (UNIT_ATTENTION, 0x2a, 0x09),
            ReservationsPreempted => (UNIT_ATTENTION, 0x2a, 0x03),
            ReservationsReleased => (UNIT_ATTENTION, 0x2a, 0x04),
            RegistrationsPreempted => (UNIT_ATTENTION, 0x2a, 0x05),
            AsymmetricAccessStateChanged => (UNIT_ATTENTION, 0x2a, 0x06),
            SoftThresholdReached => (UNIT_ATTENTION, 0x38, 0x07),
            PortInStandby => (NOT_READY, 0x04, 0x0b),
            PortUnavailable => (NOT_READY, 0x04, 0x0c),
            AccessStateTransition => (NOT_READY, 0x04, 0x0a),
            MediumNotPresent => (NOT_READY, 0x3a, 0x00),
            InitializingCommandRequired => (NOT_READY, 0x04, 0x02),
            SanitizeInProgress => (NOT_READY, 0x04, 0x1b),
            NotReadyNoView => (NOT_READY, 0x04, 0x00),
            BackendHung => (NOT_READY, 0x04, 0x00),
            NotReadyToReady => (UNIT_ATTENTION, 0x28, 0x00),
            SanitizeFailed => (MEDIUM_ERROR, 0x31, 0x03),
            UnrecoveredReadError => (MEDIUM_ERROR, 0x11, 0x00),
            WriteError => (MEDIUM_ERROR, 0x0c, 0x00),
            InternalTargetFailure => (HARDWARE_ERROR, 0x44, 0x00),
            Miscompare => (MISCOMPARE, 0x1d, 0x00),
        }
    }
}

/// One sense condition, with the optional INFORMATION and sense-key
/// specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub reason: SenseReason,
    pub information: Option<u64>,
    /// Sense-key specific bytes 15..18 (SKSV is set when present).
    pub specific: Option<[u8; 3]>,
}

impl From<SenseReason> for Sense {
    fn from(reason: SenseReason) -> Sense {
        Sense::new(reason)
    }
}

impl Sense {
    pub const fn new(reason: SenseReason) -> Sense {
        Sense {
            reason,
            information: None,
            specific: None,
        }
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, when one bit is
    /// at fault).
    pub fn invalid_cdb_field(byte: usize, bit: Option<u8>) -> Sense {
        Sense::field_pointer(SenseReason::InvalidFieldInCdb, true, byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST pointing into the data-out buffer.
    pub fn invalid_param_field(byte: usize, bit: Option<u8>) -> Sense {
        Sense::field_pointer(SenseReason::InvalidFieldInParameterList, false, byte, bit)
    }

    fn field_pointer(reason: SenseReason, cdb: bool, byte: usize, bit: Option<u8>) -> Sense {
        let mut b0 = 0x80; // SKSV
        if cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = bit {
            b0 |= 0x08 | (bit & 7); // BPV + bit pointer
        }
        let field = u16::try_from(byte).unwrap_or(u16::MAX).to_be_bytes();
        Sense {
            reason,
            information: None,
            specific: Some([b0, field[0], field[1]]),
        }
    }

    pub fn with_information(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    /// 18-byte fixed format (response code 0x70). INFORMATION holds 4
    /// bytes; a larger value cannot be represented and is left invalid.
    pub fn to_fixed(&self) -> Vec<u8> {
        let (k, asc, ascq) = self.reason.codes();
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = k;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80; // VALID
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = 10; // additional sense length
        s[12] = asc;
        s[13] = ascq;
        if let Some(sp) = self.specific {
            s[15..18].copy_from_slice(&sp);
        }
        s
    }

    /// Descriptor format (response code 0x72) with information and
    /// sense-key specific descriptors when present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let (k, asc, ascq) = self.reason.codes();
        let mut s = vec![0x72, k, asc, ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sp) = self.specific {
            s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sp[0], sp[1], sp[2], 0x00]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

impl ScsiResult {
    /// CHECK CONDITION carrying `sense`; `transfer_len` is what the CDB
    /// asked for (so the transport can still report the residual).
    pub fn check_condition(sense: Sense, transfer_len: u32) -> ScsiResult {
        ScsiResult {
            status: status::CHECK_CONDITION,
            sense: Some(sense.to_fixed()),
            data_in: Vec::new(),
            transfer_len,
        }
    }

    /// (key, ASC, ASCQ) of the sense data, if any (tests, logs).
    pub fn sense_codes(&self) -> Option<(u8, u8, u8)> {
        let s = self.sense.as_ref()?;
        match s.first().map(|b| b & 0x7f) {
            Some(0x70) | Some(0x71) if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            Some(0x72) | Some(0x73) if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::invalid_cdb_field(1, Some(5)).to_fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], key::ILLEGAL_REQUEST);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0xc0 | 0x08 | 5, 0, 1]);
    }

    #[test]
    fn information_field_sets_valid() {
        let s = Sense::new(SenseReason::LbaOutOfRange)
            .with_information(0x1234)
            .to_fixed();
        assert_eq!(s[0], 0xf0);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        // Too large for the fixed format: VALID stays clear.
        let s = Sense::new(SenseReason::LbaOutOfRange)
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(s[0], 0x70);
    }

    #[test]
    fn descriptor_format_layout() {
        let d = Sense::new(SenseReason::PowerOnReset).to_descriptor();
        assert_eq!(d, vec![0x72, key::UNIT_ATTENTION, 0x29, 0x00, 0, 0, 0, 0]);
        let d = Sense::invalid_cdb_field(2, None)
            .with_information(7)
            .to_descriptor();
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(d.len(), 8 + 12 + 8);
    }

    #[test]
    fn check_condition_round_trip() {
        let r = ScsiResult::check_condition(SenseReason::WriteProtected.into(), 512);
        assert_eq!(r.status, status::CHECK_CONDITION);
        assert_eq!(r.sense_codes(), Some((key::DATA_PROTECT, 0x27, 0)));
        assert_eq!(r.transfer_len, 512);
    }
}
