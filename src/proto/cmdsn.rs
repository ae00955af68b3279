//! Sequence numbers (RFC 1982 serial arithmetic, RFC 7143 §4.2.2.1) and the
//! target's command window.
//!
//! Non-immediate commands must be delivered to the SCSI layer in CmdSN order
//! even when they arrive out of order; the window holds early arrivals and
//! releases them when the gap closes. Commands outside the window are dropped
//! silently, as the RFC requires.

use std::collections::BTreeMap;

/// `a < b` in 32-bit serial number arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// Where a command's CmdSN falls relative to the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Deliver these, in order (the new one and any it unblocked).
    Deliver(Vec<T>),
    /// Held until earlier CmdSNs arrive.
    Held,
    /// Outside the window (or a duplicate): ignore it.
    Dropped,
}

/// The target's view of the command window: ExpCmdSN..=MaxCmdSN.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: u32,
    depth: u32,
    /// Commands that arrived ahead of ExpCmdSN, by CmdSN.
    held: BTreeMap<u32, T>,
    /// Commands delivered but not yet completed: they use window slots, so
    /// MaxCmdSN does not open past them (bounded memory per session).
    in_flight: u32,
    /// Highest MaxCmdSN advertised so far. Initiators ignore a MaxCmdSN
    /// that goes backwards, so the window is never shrunk below it.
    advertised: u32,
}

impl<T> CmdWindow<T> {
    /// `exp_cmd_sn` is the CmdSN the first full-feature command must carry.
    pub fn new(exp_cmd_sn: u32, depth: u32) -> CmdWindow<T> {
        CmdWindow {
            exp_cmd_sn,
            depth: depth.max(1),
            held: BTreeMap::new(),
            in_flight: 0,
            advertised: exp_cmd_sn.wrapping_add(depth.max(1)).wrapping_sub(1),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to advertise: the window shrinks while commands are queued
    /// or executing, so a flood cannot make us hold more than `depth`.
    pub fn max_cmd_sn(&mut self) -> u32 {
        let free = self.depth.saturating_sub(self.in_flight);
        // MaxCmdSN = ExpCmdSN - 1 closes the window entirely.
        let now = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if sn_lt(self.advertised, now) {
            self.advertised = now;
        }
        self.advertised
    }

    /// Whether a non-immediate command with `cmd_sn` lies inside the
    /// window (what `admit` would not drop as outside it).
    pub fn accepts(&self, cmd_sn: u32) -> bool {
        !(sn_lt(cmd_sn, self.exp_cmd_sn) || sn_lt(self.advertised, cmd_sn))
    }

    /// Offer a non-immediate command with `cmd_sn`.
    pub fn admit(&mut self, cmd_sn: u32, cmd: T) -> Admit<T> {
        if sn_lt(cmd_sn, self.exp_cmd_sn) || sn_lt(self.advertised, cmd_sn) {
            return Admit::Dropped;
        }
        if cmd_sn != self.exp_cmd_sn {
            if self.held.contains_key(&cmd_sn) {
                return Admit::Dropped;
            }
            self.held.insert(cmd_sn, cmd);
            return Admit::Held;
        }
        let mut out = vec![cmd];
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        while let Some(next) = self.held.remove(&self.exp_cmd_sn) {
            out.push(next);
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
        self.in_flight += out.len() as u32;
        Admit::Deliver(out)
    }

    /// A delivered non-immediate command finished (its response was sent or
    /// it was aborted): its slot opens again.
    pub fn complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Drop every held command (session reset, LUN reset handled by caller).
    pub fn drain_held(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held).into_values().collect()
    }

    /// Held commands, for task-management scans.
    pub fn held_mut(&mut self) -> impl Iterator<Item = (&u32, &mut T)> {
        self.held.iter_mut()
    }

    /// Remove held commands matching `f`.
    pub fn remove_held(&mut self, mut f: impl FnMut(&T) -> bool) -> Vec<T> {
        let keys: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, v)| f(v))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.held.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(u32::MAX, 0));
        assert!(sn_lt(5, 6));
        assert!(!sn_lt(6, 5));
        assert!(sn_le(7, 7));
        assert!(sn_lt(0xffff_fff0, 0x10));
    }

    #[test]
    fn in_order_delivery() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.admit(10, 'a'), Admit::Deliver(vec!['a']));
        assert_eq!(w.exp_cmd_sn(), 11);
        assert_eq!(w.max_cmd_sn(), 13); // one slot in flight
        w.complete();
        assert_eq!(w.max_cmd_sn(), 14);
    }

    #[test]
    fn out_of_order_is_held_then_released() {
        let mut w = CmdWindow::new(1, 8);
        assert_eq!(w.admit(3, 'c'), Admit::Held);
        assert_eq!(w.admit(2, 'b'), Admit::Held);
        assert_eq!(w.admit(2, 'x'), Admit::Dropped); // duplicate
        assert_eq!(w.admit(1, 'a'), Admit::Deliver(vec!['a', 'b', 'c']));
        assert_eq!(w.exp_cmd_sn(), 4);
    }

    #[test]
    fn outside_window_dropped() {
        let mut w: CmdWindow<char> = CmdWindow::new(100, 4);
        assert_eq!(w.max_cmd_sn(), 103);
        assert_eq!(w.admit(99, 'a'), Admit::Dropped);
        assert_eq!(w.admit(104, 'a'), Admit::Dropped);
        assert_eq!(w.admit(103, 'a'), Admit::Held);
    }

    #[test]
    fn window_closes_when_full_and_wraps() {
        let mut w = CmdWindow::new(u32::MAX, 2);
        assert_eq!(w.admit(u32::MAX, 1), Admit::Deliver(vec![1]));
        assert_eq!(w.admit(0, 2), Admit::Deliver(vec![2]));
        assert_eq!(w.exp_cmd_sn(), 1);
        assert_eq!(w.max_cmd_sn(), 0); // closed: MaxCmdSN = ExpCmdSN - 1
        assert_eq!(w.admit(1, 3), Admit::Dropped);
        w.complete();
        w.complete();
        assert_eq!(w.max_cmd_sn(), 2);
    }
}
