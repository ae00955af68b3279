//! Log context: every event of a session carries who it belongs to. The
//! spans here are entered around a connection's futures, so the fmt
//! subscriber prints their fields on each event's single line, e.g.
//! `conn{peer=..}:session{initiator=.. isid=.. tsih=3 target=..}: msg`.

use crate::proto::login::LoginResult;
use tracing::{Span, info_span};

/// The span of a session in full feature phase, inside its connection's.
pub fn session_span(conn: &Span, r: &LoginResult, tsih: u16) -> Span {
    info_span!(
        parent: conn,
        "session",
        initiator = %r.initiator_name,
        isid = %hex::encode(r.isid),
        tsih,
        target = r.target_name.as_deref().unwrap_or("(discovery)"),
    )
}
