//! Target-side login state machine (RFC 7143 §6.3, §11.12-13).
//! SKELETON — the interface below is fixed; the body is being written.

use super::negotiation::SessionParams;
use super::pdu::Pdu;

/// CHAP secrets a target (or discovery) requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    /// The name and secret the initiator must prove.
    pub user: String,
    pub secret: String,
    /// For mutual CHAP: the name and secret the target answers with.
    pub mutual: Option<(String, String)>,
}

/// What the directory says about a target named in a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLookup {
    NotFound,
    /// Exists, but the initiator is not in its ACL.
    Forbidden,
    Allowed {
        /// `None`: AuthMethod=None is acceptable; `Some`: CHAP is required.
        chap: Option<ChapSecrets>,
        alias: Option<String>,
        portal_group_tag: u16,
    },
}

/// The registry as login sees it (implemented by src/target).
pub trait LoginDirectory {
    fn lookup_target(&self, target_name: &str, initiator_name: &str) -> TargetLookup;
    /// CHAP required for discovery sessions, if any.
    fn discovery_chap(&self) -> Option<ChapSecrets>;
}

/// The target's offers (MaxRecvDataSegmentLength and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOffer {
    pub max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Allow digests at all ("CRC32C,None" vs "None").
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
}

impl Default for LoginOffer {
    fn default() -> Self {
        LoginOffer {
            max_recv_dsl: 256 * 1024,
            max_burst_length: 16 * 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 16,
            immediate_data: true,
            initial_r2t: false,
            allow_header_digest: true,
            allow_data_digest: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// Everything full feature phase needs from a completed login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for discovery sessions.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// TSIH the initiator sent (0 = new session).
    pub tsih: u16,
    pub cid: u16,
    pub params: SessionParams,
    /// The StatSN to put in the next response after the final login response.
    pub next_stat_sn: u32,
    /// The CmdSN expected next (the login's CmdSN; login requests do not
    /// advance it).
    pub exp_cmd_sn: u32,
    pub portal_group_tag: u16,
}

/// What to do after feeding one login PDU.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this response and wait for the next request.
    Respond(Pdu),
    /// Send this final response (caller fills TSIH) and enter full feature.
    Complete(Box<Pdu>, Box<LoginResult>),
    /// Send this response (it carries the failure status) and close.
    Fail(Pdu),
}
