//! The login phase of one connection: feed login PDUs to the protocol
//! state machine, send its answers, and on success register the session
//! (TSIH, reinstatement). The whole phase runs under the login timeout.

use super::shared::{SessionControl, Shared};
use super::wire::{self, ReadOutcome};
use crate::proto::login::{LoginFailure, LoginOffer, LoginResult, LoginStep, TargetLogin};
use crate::proto::pdu::{Framing, Opcode};
use std::io;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A completed login: what full feature phase starts from.
pub struct LoggedIn {
    pub result: LoginResult,
    pub tsih: u16,
    pub cancel: CancellationToken,
    pub nexus_id: u64,
    pub control: mpsc::UnboundedReceiver<SessionControl>,
}

/// Run the login phase through a portal of group `tag`. `Ok(None)` means
/// the login failed and the connection should close (the failure response
/// has been sent).
pub async fn login_phase(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    shared: &Shared,
    tag: u16,
) -> io::Result<Option<LoggedIn>> {
    let framing = Framing::default();
    let mut machine = TargetLogin::new(LoginOffer::default());
    let mut first = true;
    let mut target = String::new(); // metrics label, once known
    loop {
        let pdu = match wire::read_pdu(rd, &framing).await? {
            ReadOutcome::Pdu(p) => p,
            other => {
                debug!(?other, "login connection ended");
                shared.metrics.login(&target, "closed");
                return Ok(None);
            }
        };
        if pdu.opcode() != Opcode::LoginRequest {
            // RFC 7143 §6.1: anything but Login before full feature phase
            // is a protocol error; there is no session to Reject within.
            warn!(op = ?pdu.opcode(), "non-login PDU during login");
            shared.metrics.login(&target, "protocol_error");
            return Ok(None);
        }
        if first && pdu.bhs.tsih() != 0 {
            // Adding a connection to an existing session: we negotiate
            // MaxConnections=1, so there is nothing to add to.
            let failure = if shared.session_exists(pdu.bhs.tsih()) {
                LoginFailure::TooManyConnections
            } else {
                LoginFailure::SessionDoesNotExist
            };
            wire::write_pdus(wr, &[failure.refuse_first(&pdu)], &framing).await?;
            shared.metrics.login(&target, failure.label());
            return Ok(None);
        }
        first = false;
        if let Some(t) = crate::metrics::named_target(&pdu.data, &shared.registry.load()) {
            target = t;
        }
        let registry = shared.registry.load();
        match machine.on_pdu(&pdu, &registry.through_portal(tag)) {
            LoginStep::Respond(resp) => wire::write_pdus(wr, &[resp], &framing).await?,
            LoginStep::Fail(resp, failure) => {
                wire::write_pdus(wr, &[resp], &framing).await?;
                shared.metrics.login(&target, failure.label());
                info!(result = failure.label(), %failure, "login failed");
                return Ok(None);
            }
            LoginStep::Complete(resp, result) => {
                let done = register(shared, *result).await;
                let mut resp = *resp;
                resp.bhs.set_tsih(done.tsih);
                wire::write_pdus(wr, &[resp], &framing).await?;
                shared.metrics.login(&target, "success");
                info!(
                    initiator = %done.result.initiator_name,
                    target = ?done.result.target_name,
                    tsih = done.tsih,
                    "login complete"
                );
                return Ok(Some(done));
            }
        }
    }
}

/// Give the session a TSIH; if it reinstates an older session of the same
/// initiator port, wait (briefly) for that one to wind down first.
async fn register(shared: &Shared, result: LoginResult) -> LoggedIn {
    let nexus_id = shared.nexus_id();
    let (control_tx, control) = mpsc::unbounded_channel();
    let (tsih, cancel, old) = shared.add_session(
        &result.initiator_name,
        result.isid,
        result.target_name.as_deref(),
        nexus_id,
        control_tx,
    );
    for _ in 0..100 {
        if !old.iter().any(|t| shared.session_exists(*t)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    LoggedIn {
        result,
        tsih,
        cancel,
        nexus_id,
        control,
    }
}
