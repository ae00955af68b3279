//! Write-buffer budget: a write's whole transfer is charged before its
//! R2Ts go out, per session and target-wide, so a session never holds more
//! solicited data than its budget however many large writes it queues.
//! R2Ts that do not fit wait, in order, until earlier writes finish.

use super::task::Task;
use super::{Connection, Event, Output, Reply};
use crate::proto::dataout::R2tRequest;
use crate::proto::response;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Instant;

/// The target-wide part of the budget, shared by all connections.
pub trait WriteBudget: Send + Sync {
    /// Take `need` bytes if they fit; `first` (the session holds nothing
    /// yet) always fits, so one large write cannot stall.
    fn try_take(&self, need: u64, first: bool) -> bool;
    fn give(&self, n: u64);
}

/// A [`WriteBudget`] of `cap` bytes.
#[derive(Debug)]
pub struct BudgetPool {
    used: AtomicU64,
    cap: u64,
}

impl BudgetPool {
    pub fn new(cap: u64) -> BudgetPool {
        BudgetPool {
            used: AtomicU64::new(0),
            cap,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(SeqCst)
    }
}

impl WriteBudget for BudgetPool {
    fn try_take(&self, need: u64, first: bool) -> bool {
        self.used
            .fetch_update(SeqCst, SeqCst, |t| {
                (first || t + need <= self.cap).then_some(t + need)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, SeqCst);
    }
}

impl Drop for Connection {
    /// Tasks still in the table when the connection goes (writes waiting
    /// for data the initiator will never send: it crashed, or failed over
    /// to another path) give their budget back. The target-wide pool
    /// outlives every connection; without this each such session would
    /// shrink it for good, until writes stalled on every session.
    fn drop(&mut self) {
        let held: u64 = self.tasks.values().map(|t| u64::from(t.charged)).sum();
        if held > 0 {
            self.budget.give(held);
        }
    }
}

impl Connection {
    /// Send a write's R2Ts, or queue them behind earlier deferred ones
    /// when the budget is full.
    pub(super) fn send_r2ts(&mut self, itt: u32, r2ts: Vec<R2tRequest>) {
        if r2ts.is_empty() {
            return;
        }
        if !self.deferred_r2ts.is_empty() || !self.charge(itt) {
            self.deferred_r2ts.push_back((itt, r2ts));
            return;
        }
        self.push_r2ts(itt, &r2ts);
    }

    fn push_r2ts(&mut self, itt: u32, r2ts: &[R2tRequest]) {
        let Some(task) = self.tasks.get(&itt) else {
            return;
        };
        let lun = task.lun_raw;
        let pdus = r2ts.iter().map(|r| response::r2t(itt, lun, r)).collect();
        self.out.push_back(Output::Send(Reply::plain(pdus)));
    }

    /// Charge a write's whole transfer to the budget (once).
    fn charge(&mut self, itt: u32) -> bool {
        // Write data held by abandoned (stuck) calls still counts.
        let used = self.write_charged + self.stuck.load(SeqCst);
        let cap = self.cfg.write_buffer_per_session;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return false;
        };
        if task.charged > 0 {
            return true;
        }
        let need = u64::from(task.edtl.max(1));
        if used > 0 && used + need > cap {
            return false;
        }
        if !self.budget.try_take(need, used == 0) {
            return false;
        }
        task.charged = need as u32;
        if let Some(t) = task.transfer_mut() {
            t.reserve_all();
        }
        self.write_charged += need;
        self.events.push_back(Event::Budget(need as i64));
        true
    }

    /// A task left the table: give its budget back.
    pub(super) fn release(&mut self, task: &Task) {
        let n = u64::from(task.charged);
        if n == 0 {
            return;
        }
        self.write_charged -= n;
        self.budget.give(n);
        self.events.push_back(Event::Budget(-(n as i64)));
    }

    /// Whether R2Ts wait for budget (the driver retries them on every
    /// turn of its loop, and `next_deadline` wakes it for them).
    pub fn budget_waiting(&self) -> bool {
        !self.deferred_r2ts.is_empty()
    }

    /// Send the R2Ts that waited for budget, oldest first.
    pub fn retry_budget(&mut self, now: Instant) {
        self.budget_tried = now;
        while let Some(&(itt, _)) = self.deferred_r2ts.front() {
            let alive = self.tasks.get(&itt).is_some_and(|t| !t.is_executing());
            if alive && !self.charge(itt) {
                break;
            }
            let (_, r2ts) = self.deferred_r2ts.pop_front().expect("front exists");
            if alive {
                self.push_r2ts(itt, &r2ts);
            }
        }
    }
}
