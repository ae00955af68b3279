//! Label sets of the metric families, and the names their values take.
//! Every label value comes from a small fixed set or from the operator's
//! configuration (target names, LUN ids), never from free peer input, so a
//! hostile initiator cannot blow up the number of series.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// "applied" or "rejected".
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub target: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub target: String,
    pub session_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LunLabels {
    pub target: String,
    pub lun: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub target: String,
    pub lun: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TmfLabels {
    pub target: String,
    pub function: &'static str,
    pub response: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DigestLabels {
    pub target: String,
    pub digest: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub target: String,
    pub reason: &'static str,
}

/// What a SCSI command does to the medium, for the per-LUN families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Read = 0,
    Write = 1,
    Other = 2,
}

impl CommandKind {
    pub const ALL: [CommandKind; 3] = [CommandKind::Read, CommandKind::Write, CommandKind::Other];

    /// READ and WRITE (6/10/12/16) and WRITE AND VERIFY by opcode; the
    /// rest (inquiries, UNMAP, CBT queries, ...) is "other".
    pub fn of(cdb: &[u8]) -> CommandKind {
        match cdb.first() {
            Some(0x08 | 0x28 | 0xa8 | 0x88) => CommandKind::Read,
            Some(0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e) => CommandKind::Write,
            _ => CommandKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Read => "read",
            CommandKind::Write => "write",
            CommandKind::Other => "other",
        }
    }
}

/// Task management function names (RFC 7143 §11.5.1).
pub fn tmf_function(f: u8) -> &'static str {
    match f {
        1 => "abort_task",
        2 => "abort_task_set",
        3 => "clear_aca",
        4 => "clear_task_set",
        5 => "lun_reset",
        6 => "target_warm_reset",
        7 => "target_cold_reset",
        8 => "task_reassign",
        _ => "unknown",
    }
}

/// Task management response names (RFC 7143 §11.6.1).
pub fn tmf_response(r: u8) -> &'static str {
    match r {
        0 => "function_complete",
        1 => "task_does_not_exist",
        2 => "lun_does_not_exist",
        3 => "task_still_allegiant",
        4 => "reassignment_not_supported",
        5 => "not_supported",
        6 => "authorization_failed",
        255 => "rejected",
        _ => "other",
    }
}

/// Reject reason names (RFC 7143 §11.17.1).
pub fn reject_reason(r: u8) -> &'static str {
    match r {
        0x02 => "data_digest",
        0x03 => "snack_reject",
        0x04 => "protocol_error",
        0x05 => "command_not_supported",
        0x06 => "immediate_command_reject",
        0x07 => "task_in_progress",
        0x08 => "invalid_data_ack",
        0x09 => "invalid_pdu_field",
        0x0a => "long_operation_reject",
        0x0c => "waiting_for_logout",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_opcode() {
        assert_eq!(CommandKind::of(&[0x88, 0]), CommandKind::Read);
        assert_eq!(CommandKind::of(&[0x2a]), CommandKind::Write);
        assert_eq!(CommandKind::of(&[0x12]), CommandKind::Other);
        assert_eq!(CommandKind::of(&[]), CommandKind::Other);
    }
}
