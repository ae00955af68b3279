//! Operational parameter negotiation (RFC 7143 §13), table driven.
//!
//! (Skeleton: the table and the negotiation rules are filled in by the
//! login work; `SessionParams` is the shared result type.)

/// The values a login negotiated, as both sides use them in full feature
/// phase. Names follow the RFC keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the *initiator* declared: the largest data segment we may send it.
    pub initiator_max_recv_dsl: u32,
    /// What *we* declared: the largest data segment the initiator may send us.
    pub target_max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for SessionParams {
    /// RFC 7143 defaults (what applies when a key is never negotiated).
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_dsl: 8192,
            target_max_recv_dsl: 8192,
            max_burst_length: 262144,
            first_burst_length: 65536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}
