//! Initiator errors, typed by how far the damage reaches: one task
//! (`Rejected`, `ScsiCheck`, `TargetFailure`), the login (`LoginFailed`,
//! `AuthFailed`), or the whole connection (`Io`, `ConnectionClosed`, ...).

use crate::proto::PduError;
use crate::proto::login::LoginFailure;
use crate::proto::text::TextError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InitiatorError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The target broke the protocol (or sent something we cannot use).
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("PDU error: {0}")]
    Pdu(#[from] PduError),
    #[error("bad text keys: {0}")]
    Text(#[from] TextError),
    /// Login Response with a non-zero Status-Class (RFC 7143 §11.13.5).
    #[error("login failed: {}", failure_words(*class, *detail))]
    LoginFailed { class: u8, detail: u8 },
    /// CHAP could not complete, or the target failed to prove itself.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The target answered the PDU of this task with a Reject.
    #[error("rejected by target, reason {reason:#04x}")]
    Rejected { reason: u8 },
    /// SCSI Response with a non-zero iSCSI response code (target failure).
    #[error("target failure, iSCSI response {response:#04x}")]
    TargetFailure { response: u8 },
    /// A helper's command ended with a SCSI status other than GOOD.
    #[error("SCSI status {status:#04x}, sense {sense:02x?}")]
    ScsiCheck { status: u8, sense: Vec<u8> },
    #[error("timed out waiting for the target")]
    Timeout,
    #[error("connection closed")]
    ConnectionClosed,
}

impl InitiatorError {
    /// True when the connection can no longer be used.
    pub fn is_fatal(&self) -> bool {
        match self {
            InitiatorError::Pdu(e) => e.is_fatal(),
            InitiatorError::Io(_)
            | InitiatorError::Protocol(_)
            | InitiatorError::Timeout
            | InitiatorError::ConnectionClosed => true,
            _ => false,
        }
    }

    /// (sense key, ASC, ASCQ) of a `ScsiCheck`, if it carried sense data.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        match self {
            InitiatorError::ScsiCheck { sense, .. } => super::command::parse_sense(sense),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, InitiatorError>;

/// The target's login refusal in words, e.g. "authorization failure
/// (0x0202)".
fn failure_words(class: u8, detail: u8) -> String {
    LoginFailure::from_status(u16::from_be_bytes([class, detail]))
        .map_or_else(|| "no failure status".to_string(), |f| f.to_string())
}
