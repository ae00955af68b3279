//! iSCSI protocol core (RFC 7143) with no I/O: codec, text keys,
//! negotiation, login, CHAP. Events in, actions out; tested in memory.

pub mod chap;
pub mod cmdsn;
pub mod conn;
pub mod dataout;
pub mod digest;
pub mod discovery;
pub mod login;
pub mod login_failure;
pub mod negotiation;
pub mod pdu;
pub mod response;
pub mod text;

pub use pdu::{BHS_LEN, Bhs, Framing, Opcode, Pdu, PduError};
