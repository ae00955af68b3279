//! The project's own iSCSI initiator (tests, CLI, backup client).
//!
//! `Initiator::connect` logs in (CHAP and mutual CHAP optional, digests
//! optional) and returns a [`Session`]. The session's reader task routes
//! target PDUs to tasks by ITT, so several commands may be in flight.
//! Every wait on the network is bounded by `ConnectOptions::timeout`.

pub mod cbt;
mod command;
mod datain;
mod dataout;
mod disk;
mod error;
mod login;
mod mgmt;
mod negotiate;
pub mod pr;
mod session;
mod wire;

#[cfg(test)]
mod tests;

pub use command::{ScsiOutcome, decode_lun, encode_lun, parse_sense};
pub use datain::DataInAssembler;
pub use dataout::{DataOutSeg, WritePlan, plan_r2t, plan_unsolicited, split_sequence};
pub use error::{InitiatorError, Result};
pub use login::LoginOutcome;
pub use mgmt::{parse_send_targets, tmf};
pub use session::{AsyncEvent, Session};

use crate::proto::Framing;
use login::{LoginDriver, LoginNext};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Everything needed to log in.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    pub initiator_name: String,
    /// `None` opens a discovery session.
    pub target_name: Option<String>,
    /// (user, secret) we prove to the target.
    pub chap: Option<(String, String)>,
    /// (user, secret) the target must prove to us (mutual CHAP).
    pub mutual_chap: Option<(String, String)>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub isid: [u8; 6],
    /// Our MaxRecvDataSegmentLength.
    pub max_recv_dsl: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_burst: u32,
    pub first_burst: u32,
    /// Bound on every network wait.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Defaults: no CHAP, no digests, a random-qualifier ISID, 256 KiB
    /// segments, ImmediateData=Yes, InitialR2T=No, 30 s timeout.
    pub fn new(addr: SocketAddr, initiator_name: &str, target_name: Option<&str>) -> Self {
        let q: [u8; 3] = rand::random();
        ConnectOptions {
            addr,
            initiator_name: initiator_name.to_string(),
            target_name: target_name.map(str::to_string),
            chap: None,
            mutual_chap: None,
            header_digest: false,
            data_digest: false,
            // Type 2 ("random") ISID: 0b10 in the top bits, then a qualifier.
            isid: [0x80, q[0], q[1], q[2], 0, 0],
            // As large as a backup's READ (backup::pass::READ_BYTES):
            // one Data-In PDU then carries it, and its receive buffer
            // becomes the command's with no copy (datain.rs, issue 13).
            max_recv_dsl: 512 * 1024,
            immediate_data: true,
            initial_r2t: false,
            max_burst: 1024 * 1024,
            first_burst: 256 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Entry point: connect and log in.
pub struct Initiator;

/// Login text stays within RFC 7143's 8 KiB default, but a lenient bound
/// costs nothing and tolerates targets that send a little more.
const LOGIN_MAX_SEGMENT: u32 = 64 * 1024;

impl Initiator {
    pub async fn connect(opts: &ConnectOptions) -> Result<Session> {
        let t = opts.timeout;
        let stream = tokio::time::timeout(t, TcpStream::connect(opts.addr))
            .await
            .map_err(|_| InitiatorError::Timeout)??;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let framing = Framing {
            max_data_segment: LOGIN_MAX_SEGMENT,
            ..Framing::default()
        };
        let mut driver = LoginDriver::new(opts, 1);
        let mut req = driver.start();
        let outcome = loop {
            let bytes = crate::proto::pdu::encode(&req, &framing);
            tokio::time::timeout(t, wr.write_all(&bytes))
                .await
                .map_err(|_| InitiatorError::Timeout)??;
            let resp = tokio::time::timeout(t, wire::read_pdu(&mut rd, &framing))
                .await
                .map_err(|_| InitiatorError::Timeout)??
                .map_err(|(_, e)| InitiatorError::Pdu(e))?;
            match driver.on_response(&resp)? {
                LoginNext::Send(p) => req = p,
                LoginNext::Done(o) => break *o,
            }
        };
        Ok(Session::start(rd, wr, outcome, t))
    }
}
