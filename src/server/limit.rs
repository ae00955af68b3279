//! The connection limit. Every open connection (logging in or logged in)
//! holds a slot; one beyond `max_connections` is accepted only to be told
//! "out of resources" (RFC 7143 §11.13.5, status 0302h) in answer to its
//! first Login Request, then closed. Established sessions never notice.

use super::shared::Shared;
use super::wire::{self, ReadOutcome};
use crate::proto::login::LoginFailure;
use crate::proto::pdu::{Framing, Opcode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Refusals waiting for their Login Request at once; beyond this an
/// excess connection is closed without a word (a flood must not hold an
/// unbounded number of sockets for a login timeout each).
const MAX_REFUSING: usize = 64;

/// A taken slot of one counter, given back on drop.
pub(super) struct Slot {
    shared: Arc<Shared>,
    refusal: bool,
}

impl Slot {
    fn counter(shared: &Shared, refusal: bool) -> &AtomicUsize {
        if refusal {
            &shared.refusing
        } else {
            &shared.connections
        }
    }

    fn take(shared: &Arc<Shared>, refusal: bool, max: usize) -> Option<Slot> {
        let c = Self::counter(shared, refusal);
        let taken = c
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Slot {
            shared: shared.clone(),
            refusal,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        Self::counter(&self.shared, self.refusal).fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot for a new connection, or `None` when the limit is reached.
pub(super) fn admit(shared: &Arc<Shared>) -> Option<Slot> {
    let max = shared.max_connections.load(Ordering::Relaxed);
    Slot::take(shared, false, max)
}

/// Turn an excess connection away: wait (at most the login timeout) for
/// its first PDU; a Login Request gets "out of resources"; then close.
pub(super) async fn refuse(stream: TcpStream, shared: Arc<Shared>, peer: SocketAddr) {
    let Some(_slot) = Slot::take(&shared, true, MAX_REFUSING) else {
        debug!(%peer, "connection limit reached; closed at once");
        return;
    };
    warn!(%peer, "connection limit reached; refusing login (out of resources)");
    let framing = Framing::default();
    let (mut rd, mut wr) = stream.into_split();
    let first = tokio::time::timeout(
        shared.settings.login_timeout,
        wire::read_pdu(&mut rd, &framing),
    )
    .await;
    let Ok(Ok(ReadOutcome::Pdu(req))) = first else {
        return;
    };
    if req.opcode() != Opcode::LoginRequest {
        return;
    }
    let resp = LoginFailure::OutOfResources.refuse_first(&req);
    if wire::write_pdus(&mut wr, &[resp], &framing).await.is_ok() {
        // FIN after the response, so the initiator reads it before EOF.
        let _ = wr.shutdown().await;
    }
}
