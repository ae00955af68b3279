//! PERSISTENT RESERVE OUT (5Fh): REGISTER, RESERVE, RELEASE, CLEAR,
//! PREEMPT, PREEMPT AND ABORT, REGISTER AND IGNORE EXISTING KEY
//! (SPC-5 §5.13, §6.17). REGISTER AND MOVE is not supported (no row).
//!
//! A command is applied to a copy of the state; the copy is made durable
//! (APTPL) and only then replaces the state, so a failed write changes
//! nothing.

use super::state::{PrState, PrType, Registration, Reservation};
use super::{Effects, conflict_result, persist, write};
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, Nexus, ScsiCommand, ScsiResult};

pub const REGISTER: u8 = 0;
pub const RESERVE: u8 = 1;
pub const RELEASE: u8 = 2;
pub const CLEAR: u8 = 3;
pub const PREEMPT: u8 = 4;
pub const PREEMPT_AND_ABORT: u8 = 5;
pub const REGISTER_AND_IGNORE: u8 = 6;

/// The basic parameter list is exactly this long (SPEC_I_PT=0).
const PARAM_LEN: usize = 24;
/// Bound on registrations per LUN: each costs memory and a line in the
/// state file, and the initiators decide how many there are.
pub const MAX_REGISTRATIONS: usize = 128;

/// A decoded PROUT.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub sa: u8,
    /// Checked only for the service actions that use it.
    pub kind: Option<PrType>,
    pub key: u64,
    pub sa_key: u64,
    pub all_tg_pt: bool,
    pub aptpl: bool,
}

/// Why a PROUT was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Conflict,
    Check(Sense),
}

impl From<Sense> for Refusal {
    fn from(s: Sense) -> Refusal {
        Refusal::Check(s)
    }
}

impl From<SenseReason> for Refusal {
    fn from(r: SenseReason) -> Refusal {
        Refusal::Check(Sense::new(r))
    }
}

/// Decode the CDB and the parameter list.
pub fn parse(cdb: &[u8], data: &[u8]) -> Result<Request, Sense> {
    let sa = byte(cdb, 1) & 0x1f;
    let scope_type = byte(cdb, 2);
    let len = be(cdb, 5, 4);
    let uses_type = matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT);
    let kind = if uses_type {
        if scope_type >> 4 != 0 {
            // Only LU scope exists in SPC-5.
            return Err(Sense::invalid_cdb_field(2, Some(7)));
        }
        Some(PrType::from_code(scope_type & 0x0f).ok_or(Sense::invalid_cdb_field(2, Some(3)))?)
    } else {
        None
    };
    if data.len() > 20 && data[20] & 0x08 != 0 {
        // SPEC_I_PT: registering other initiators is not supported
        // (REPORT CAPABILITIES says SIP_C=0).
        return Err(Sense::invalid_param_field(20, Some(3)));
    }
    if len != PARAM_LEN as u64 || data.len() < PARAM_LEN {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let registering = matches!(sa, REGISTER | REGISTER_AND_IGNORE);
    Ok(Request {
        sa,
        kind,
        key: be(data, 0, 8),
        sa_key: be(data, 8, 8),
        // Both bits are valid only for the register service actions and
        // ignored for the others.
        all_tg_pt: registering && data[20] & 0x04 != 0,
        aptpl: registering && data[20] & 0x01 != 0,
    })
}

pub fn prout(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    let lu = ctx.lu()?;
    let len = u32::try_from(be(cmd.cdb, 5, 4)).unwrap_or(u32::MAX);
    let req = parse(cmd.cdb, cmd.data_out)?;
    if req.aptpl && lu.pr_path.is_none() {
        // No place to keep it: PTPL_C is 0 for this LUN.
        return Err(Sense::invalid_param_field(20, Some(0)));
    }
    let fx = {
        let mut st = write(lu);
        if st.spc2_holder.is_some() {
            return Ok(conflict_result(len));
        }
        let mut next = st.clone();
        let fx = match apply(&mut next, ctx.nexus, &req) {
            Ok(fx) => fx,
            Err(Refusal::Conflict) => return Ok(conflict_result(len)),
            Err(Refusal::Check(s)) => return Err(s),
        };
        if next != *st {
            save(lu, &st, &next)?;
            *st = next;
        }
        fx
    };
    ctx.server.apply_effects(&fx, cmd.lun, ctx.nexus);
    Ok(ScsiResult::good(Vec::new(), len))
}

/// Keep the state file in step: written while APTPL is on, removed when
/// it goes off.
fn save(lu: &LogicalUnit, old: &PrState, new: &PrState) -> Result<(), Sense> {
    let Some(path) = &lu.pr_path else {
        return Ok(());
    };
    let r = match (old.aptpl, new.aptpl) {
        (_, true) => persist::store(path, new),
        (true, false) => persist::remove(path),
        (false, false) => Ok(()),
    };
    r.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "cannot store PR state");
        // Nothing changed; no room to record it is a resource shortage.
        match crate::scsi::io_fault::out_of_space(&e) {
            true => Sense::new(SenseReason::InsufficientRegistrationResources),
            false => Sense::new(SenseReason::InternalTargetFailure),
        }
    })
}

/// Apply `req` from `n` to `st`. On error `st` may be partly changed; the
/// caller throws it away.
pub fn apply(st: &mut PrState, n: &Nexus, req: &Request) -> Result<Effects, Refusal> {
    if req.sa == REGISTER_AND_IGNORE {
        return register(st, n, req);
    }
    let registered = st.registration(n).map(|r| r.key);
    match (req.sa, registered) {
        (REGISTER, None) if req.key != 0 => Err(Refusal::Conflict),
        (REGISTER, _) => register(st, n, req),
        (_, Some(k)) if k == req.key => match req.sa {
            RESERVE => reserve(st, n, req),
            RELEASE => release(st, n, req),
            CLEAR => Ok(clear(st, n)),
            _ => preempt(st, n, req),
        },
        // Unregistered, or the wrong key.
        _ => Err(Refusal::Conflict),
    }
}

fn register(st: &mut PrState, n: &Nexus, req: &Request) -> Result<Effects, Refusal> {
    if req.sa == REGISTER && st.registration(n).is_some_and(|r| r.key != req.key) {
        return Err(Refusal::Conflict);
    }
    let mut fx = Effects::default();
    let registered = st.is_registered(n);
    match (registered, req.sa_key) {
        (false, 0) => return Ok(fx),
        (true, 0) => {
            if let Some(kind) = st.unregister(&n.initiator_port, n.relative_port) {
                released_ua(st, kind, &mut fx);
            }
        }
        (true, key) => {
            if let Some(r) = st
                .registrations
                .iter_mut()
                .find(|r| r.is(&n.initiator_port, n.relative_port))
            {
                r.key = key;
                r.all_tg_pt = req.all_tg_pt;
            }
        }
        (false, key) => {
            if st.registrations.len() >= MAX_REGISTRATIONS {
                return Err(SenseReason::InsufficientRegistrationResources.into());
            }
            st.registrations.push(Registration {
                port: n.initiator_port.clone(),
                rel_port: n.relative_port,
                key,
                all_tg_pt: req.all_tg_pt,
            });
        }
    }
    st.aptpl = req.aptpl;
    st.bump();
    Ok(fx)
}

/// The reservation went away without a PREEMPT or CLEAR: the registrants
/// of a registrants-only type are told (SPC-5 §5.13.11.2.2).
fn released_ua(st: &PrState, kind: PrType, fx: &mut Effects) {
    if matches!(
        kind,
        PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
    ) {
        for r in &st.registrations {
            fx.notify.push((
                r.port.clone(),
                r.rel_port,
                SenseReason::ReservationsReleased,
            ));
        }
    }
}

fn holder_of(kind: PrType, n: &Nexus) -> Reservation {
    Reservation {
        kind,
        holder: (!kind.all_registrants()).then(|| (n.initiator_port.clone(), n.relative_port)),
    }
}

fn reserve(st: &mut PrState, n: &Nexus, req: &Request) -> Result<Effects, Refusal> {
    let kind = req.kind.ok_or(SenseReason::InvalidFieldInCdb)?;
    match &st.reservation {
        None => st.reservation = Some(holder_of(kind, n)),
        // Reserving again what one already holds changes nothing.
        Some(r) if r.kind == kind && st.is_holder(n) => {}
        Some(_) => return Err(Refusal::Conflict),
    }
    Ok(Effects::default())
}

fn release(st: &mut PrState, n: &Nexus, req: &Request) -> Result<Effects, Refusal> {
    let mut fx = Effects::default();
    let Some(r) = &st.reservation else {
        return Ok(fx);
    };
    if !st.is_holder(n) {
        return Ok(fx);
    }
    if Some(r.kind) != req.kind {
        return Err(SenseReason::InvalidReleaseOfPersistentReservation.into());
    }
    let kind = r.kind;
    st.reservation = None;
    if kind.registrants_have_access() {
        for reg in &st.registrations {
            if !reg.is(&n.initiator_port, n.relative_port) {
                fx.notify.push((
                    reg.port.clone(),
                    reg.rel_port,
                    SenseReason::ReservationsReleased,
                ));
            }
        }
    }
    Ok(fx)
}

fn clear(st: &mut PrState, n: &Nexus) -> Effects {
    let mut fx = Effects::default();
    for r in &st.registrations {
        if !r.is(&n.initiator_port, n.relative_port) {
            fx.notify.push((
                r.port.clone(),
                r.rel_port,
                SenseReason::ReservationsPreempted,
            ));
        }
    }
    st.registrations.clear();
    st.reservation = None;
    st.bump();
    fx
}

/// Remove every registration whose key is `key` (or every one when
/// `key` is None), the issuer's excepted. Returns the removed nexuses.
fn remove_keys(st: &mut PrState, n: &Nexus, key: Option<u64>) -> Vec<(String, u16)> {
    let mut gone = Vec::new();
    st.registrations.retain(|r| {
        let hit = key.is_none_or(|k| r.key == k) && !r.is(&n.initiator_port, n.relative_port);
        if hit {
            gone.push((r.port.clone(), r.rel_port));
        }
        !hit
    });
    gone
}

fn preempt(st: &mut PrState, n: &Nexus, req: &Request) -> Result<Effects, Refusal> {
    let kind = req.kind.ok_or(SenseReason::InvalidFieldInCdb)?;
    let old = st.reservation.clone();
    let holder_key = st.reservation_key();
    let gone = match &old {
        // All registrants type and SARK zero: everyone else goes, the
        // issuer takes a new reservation.
        Some(r) if r.kind.all_registrants() && req.sa_key == 0 => {
            let gone = remove_keys(st, n, None);
            st.reservation = Some(holder_of(kind, n));
            gone
        }
        // SARK names the holder: its registrations go and the issuer
        // takes the reservation.
        Some(r) if !r.kind.all_registrants() && req.sa_key == holder_key => {
            let gone = remove_keys(st, n, Some(req.sa_key));
            st.reservation = Some(holder_of(kind, n));
            gone
        }
        // Otherwise only registrations are removed (SPC-5 §5.13.11.4.3).
        _ => {
            if req.sa_key == 0 {
                return Err(Sense::invalid_param_field(8, None).into());
            }
            let gone = remove_keys(st, n, Some(req.sa_key));
            let own = st.registration(n).is_some_and(|r| r.key == req.sa_key);
            if gone.is_empty() && !own {
                return Err(Refusal::Conflict);
            }
            gone
        }
    };
    let mut fx = Effects::default();
    for (p, rp) in &gone {
        fx.notify
            .push((p.clone(), *rp, SenseReason::RegistrationsPreempted));
    }
    // The reservation changed hands with a new type: the remaining
    // registrants learn their access changed.
    if let (Some(o), Some(nw)) = (&old, &st.reservation)
        && o.kind != nw.kind
    {
        for r in &st.registrations {
            if !r.is(&n.initiator_port, n.relative_port) {
                fx.notify.push((
                    r.port.clone(),
                    r.rel_port,
                    SenseReason::ReservationsReleased,
                ));
            }
        }
    }
    if req.sa == PREEMPT_AND_ABORT {
        fx.abort = gone;
    }
    st.bump();
    Ok(fx)
}
