//! Why a login failed: RFC 7143 §11.13.5's Status-Class and Status-Detail
//! as one enum, so the target's login machine, the runtime's own refusals
//! (connection limit, adding a connection to a session) and the metrics all
//! name a failure instead of passing a bare `u16` around, and the initiator
//! can say in words what a target refused.

#[cfg(test)]
use super::pdu::Opcode;
use super::pdu::Pdu;

/// A failed login's status. Open like a wire enum: a status this table does
/// not know (from a peer) is kept as `Other` rather than lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginFailure {
    /// 0200h: the initiator did something wrong (catch-all of class 2).
    InitiatorError,
    /// 0201h.
    AuthFailure,
    /// 0202h: authenticated, but not allowed (ACL).
    AuthorizationFailure,
    /// 0203h.
    NotFound,
    /// 0204h.
    TargetRemoved,
    /// 0205h.
    UnsupportedVersion,
    /// 0206h.
    TooManyConnections,
    /// 0207h.
    MissingParameter,
    /// 0208h.
    CantIncludeInSession,
    /// 0209h.
    SessionTypeUnsupported,
    /// 020Ah.
    SessionDoesNotExist,
    /// 020Bh.
    InvalidDuringLogin,
    /// 0300h.
    TargetError,
    /// 0301h.
    ServiceUnavailable,
    /// 0302h.
    OutOfResources,
    /// Any other non-zero status (a redirect, or one a later RFC adds).
    Other(u16),
}

use LoginFailure::*;

/// Every named failure with its status: the one table `status` and
/// `from_status` read.
const TABLE: [(LoginFailure, u16); 15] = [
    (InitiatorError, 0x0200),
    (AuthFailure, 0x0201),
    (AuthorizationFailure, 0x0202),
    (NotFound, 0x0203),
    (TargetRemoved, 0x0204),
    (UnsupportedVersion, 0x0205),
    (TooManyConnections, 0x0206),
    (MissingParameter, 0x0207),
    (CantIncludeInSession, 0x0208),
    (SessionTypeUnsupported, 0x0209),
    (SessionDoesNotExist, 0x020a),
    (InvalidDuringLogin, 0x020b),
    (TargetError, 0x0300),
    (ServiceUnavailable, 0x0301),
    (OutOfResources, 0x0302),
];

impl LoginFailure {
    /// Status-Class (high byte) and Status-Detail (low byte).
    pub fn status(self) -> u16 {
        match self {
            Other(s) => s,
            named => TABLE.iter().find(|(f, _)| *f == named).map_or(0, |e| e.1),
        }
    }

    /// The failure a Login Response's status names; `None` for success.
    pub fn from_status(status: u16) -> Option<Self> {
        if status == 0 {
            return None;
        }
        let named = TABLE.iter().find(|(_, s)| *s == status).map(|e| e.0);
        Some(named.unwrap_or(Other(status)))
    }

    /// The failure a Login Response carries, if any.
    pub fn of_response(p: &Pdu) -> Option<Self> {
        Self::from_status(u16::from_be_bytes([p.bhs.0[36], p.bhs.0[37]]))
    }

    /// Write this status into a Login Response.
    pub fn stamp(self, p: &mut Pdu) {
        p.bhs.0[36..38].copy_from_slice(&self.status().to_be_bytes());
    }

    /// The `result` label of the login metric.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure => "auth_failure",
            AuthorizationFailure => "acl_denied",
            NotFound | TargetRemoved => "target_not_found",
            TooManyConnections => "too_many_connections",
            SessionDoesNotExist => "session_does_not_exist",
            TargetError | ServiceUnavailable | OutOfResources => "target_error",
            Other(s) if (0x0300..=0x03ff).contains(&s) => "target_error",
            Other(s) if !(0x0200..=0x02ff).contains(&s) => "other",
            _ => "negotiation_error",
        }
    }

    /// The refusal of a connection's first Login Request that the runtime
    /// decides before any login machine exists (connection limit, a second
    /// connection for a session). Built by the same header rule as the
    /// machine's responses, so both agree on StatSN and the CmdSN window.
    pub fn refuse_first(self, req: &Pdu) -> Pdu {
        let (csg, _) = super::login::stages(req.bhs.flags());
        let ident = Some(super::login::identity_of(req));
        let mut p = super::login::response_header(
            ident,
            csg << 2,
            super::login::FIRST_STAT_SN,
            req.bhs.cmd_sn(),
        );
        self.stamp(&mut p);
        p
    }
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words = match self {
            InitiatorError => "initiator error",
            AuthFailure => "authentication failure",
            AuthorizationFailure => "authorization failure",
            NotFound => "target not found",
            TargetRemoved => "target removed",
            UnsupportedVersion => "unsupported version",
            TooManyConnections => "too many connections",
            MissingParameter => "missing parameter",
            CantIncludeInSession => "cannot include in session",
            SessionTypeUnsupported => "session type not supported",
            SessionDoesNotExist => "session does not exist",
            InvalidDuringLogin => "invalid during login",
            TargetError => "target error",
            ServiceUnavailable => "service unavailable",
            OutOfResources => "out of resources",
            Other(_) => "status",
        };
        write!(f, "{words} ({:#06x})", self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_status_round_trips() {
        for (f, s) in TABLE {
            assert_eq!(f.status(), s);
            assert_eq!(LoginFailure::from_status(s), Some(f));
        }
        assert_eq!(LoginFailure::from_status(0), None);
        assert_eq!(LoginFailure::from_status(0x0101), Some(Other(0x0101)));
        assert_eq!(Other(0x0101).status(), 0x0101);
    }

    #[test]
    fn labels() {
        assert_eq!(AuthFailure.label(), "auth_failure");
        assert_eq!(AuthorizationFailure.label(), "acl_denied");
        assert_eq!(NotFound.label(), "target_not_found");
        assert_eq!(MissingParameter.label(), "negotiation_error");
        assert_eq!(ServiceUnavailable.label(), "target_error");
        assert_eq!(Other(0x0101).label(), "other");
        assert_eq!(Other(0x02ff).label(), "negotiation_error");
    }

    #[test]
    fn refusal_echoes_the_request_and_starts_stat_sn() {
        let mut req = Pdu::new(Opcode::LoginRequest);
        req.bhs.set_flags(1 << 2);
        req.bhs.set_isid([1, 2, 3, 4, 5, 6]);
        req.bhs.set_tsih(7);
        req.bhs.set_itt(9);
        req.bhs.set_cmd_sn(40);
        let p = OutOfResources.refuse_first(&req);
        assert_eq!(p.opcode(), Opcode::LoginResponse);
        assert_eq!(LoginFailure::of_response(&p), Some(OutOfResources));
        assert_eq!(p.bhs.isid(), [1, 2, 3, 4, 5, 6]);
        assert_eq!((p.bhs.tsih(), p.bhs.itt()), (7, 9));
        assert_eq!(p.bhs.stat_sn(), super::super::login::FIRST_STAT_SN);
        assert_eq!(p.bhs.exp_cmd_sn(), 40);
        assert_eq!(super::super::login::stages(p.bhs.flags()), (1, 0));
    }
}
