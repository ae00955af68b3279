//! The full-feature state machine (`proto::conn`) driven in memory: the
//! same inputs as `session` (a login choice, then PDUs from the same
//! templates, then an immediate ping), but fed straight to a
//! [`Connection`] executing on a real device server, with a clock that
//! jumps instead of sleeping. No socket, no threads: many times the
//! executions per second of the loopback target. Each PDU still goes
//! through the codec's framing checks, as the socket reader does.
//!
//! Invariants: no panic; nothing is sent after Close; StatSN in order;
//! no segment beyond the initiator's MaxRecvDataSegmentLength; the ping
//! is answered unless the connection closed; every command the device
//! runs finishes, and its nexus can go.

use super::input::Input;
use super::pdus::{self, PING_ITT, R2t, RESERVED};
use super::session_wire::{self as wire, LoginChoice};
use crate::proto::conn::{BudgetPool, Config, Connection, Env, Output};
use crate::proto::login::SessionType;
use crate::proto::pdu::{self, Framing, Opcode, Pdu, PduError};
use crate::proto::response::carries_status;
use crate::scsi::{DeviceServer, Nexus, ScsiResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static DEVICE: OnceLock<Arc<DeviceServer>> = OnceLock::new();
static NEXUS: AtomicU64 = AtomicU64::new(1);

struct Target<'a> {
    device: &'a Arc<DeviceServer>,
    nexus: Arc<Nexus>,
}

impl Env for Target<'_> {
    fn lun_exists(&self, lun: u64) -> bool {
        self.device.lu_for(&self.nexus, lun).is_some()
    }
    fn targets(&self, kind: SessionType, own: Option<&str>) -> Vec<(String, Vec<String>)> {
        let names = match kind {
            SessionType::Discovery => Some(wire::TARGET),
            SessionType::Normal => own,
        };
        names
            .map(|n| (n.to_string(), vec!["127.0.0.1:3260,1".to_string()]))
            .into_iter()
            .collect()
    }
}

/// The driver: what the runtime does with a connection's outputs, and
/// the initiator's checks on what it sends.
struct Driver<'a> {
    conn: Connection,
    env: Target<'a>,
    now: Instant,
    done_tx: Sender<(u32, ScsiResult)>,
    done_rx: Receiver<(u32, ScsiResult)>,
    framing_in: Framing,
    mrdsl: u32,
    exp_stat_sn: u32,
    r2t: Option<R2t>,
    closed: bool,
    ping_answered: bool,
}

impl Driver<'_> {
    /// Feed one PDU as the socket reader would hand it over.
    fn feed(&mut self, p: &Pdu, corrupt: bool) {
        let mut bytes = pdu::encode(p, &self.framing_in);
        if corrupt && self.framing_in.data_digest && !p.data.is_empty() {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x55;
        }
        let bhs = pdu::Bhs(bytes[..pdu::BHS_LEN].try_into().expect("header"));
        let decoded = pdu::tail_len(&bhs, &self.framing_in)
            .and_then(|_| pdu::decode_tail(bhs.clone(), &bytes[pdu::BHS_LEN..], &self.framing_in));
        match decoded {
            Ok(p) => self.conn.on_pdu(self.now, p, &self.env),
            Err(PduError::DataDigest) => self.conn.on_data_digest(self.now, &bhs, &self.env),
            Err(e) => self.conn.on_framing_lost(&bhs, &e),
        }
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            if self.conn.budget_waiting() {
                self.conn.retry_budget(self.now);
            }
            while let Ok((itt, r)) = self.done_rx.try_recv() {
                self.conn.on_done(itt, r);
            }
            let Some(o) = self.conn.poll_output() else {
                break;
            };
            self.act(o);
        }
        while self.conn.poll_event().is_some() {}
    }

    fn act(&mut self, o: Output) {
        let (d, id) = (self.env.device, Some(self.env.nexus.id));
        match o {
            Output::Send(r) => {
                assert!(!self.closed, "PDU sent after Close");
                for (i, p) in r.pdus.iter().enumerate() {
                    let len = r.spans.get(i).map_or(p.data.len(), |s| s.len());
                    self.check(p, len);
                }
            }
            Output::Execute(e) => {
                let tx = self.done_tx.clone();
                let itt = e.itt;
                let cmd = e.into_command(self.env.nexus.clone());
                d.submit(cmd, Box::new(move |res| drop(tx.send((itt, res)))));
            }
            Output::Abort(s) => drop(d.abort_held(s.lun, id, s.tag)),
            Output::LunReset(l) => d.lun_reset(l, &self.env.nexus),
            Output::TargetReset => d.target_reset(&self.env.nexus),
            // Commands run in memory here: their results always come.
            Output::Abandon(_) => {}
            Output::Close(_) => self.closed = true,
        }
    }

    /// The initiator's checks on one PDU with a `len`-byte segment.
    fn check(&mut self, p: &Pdu, len: usize) {
        assert!(len <= self.mrdsl as usize, "segment beyond our MRDSL");
        if carries_status(p) {
            assert_eq!(p.bhs.stat_sn(), self.exp_stat_sn, "StatSN out of order");
            self.exp_stat_sn = self.exp_stat_sn.wrapping_add(1);
        }
        match p.opcode() {
            Opcode::R2t => {
                let b = &p.bhs;
                self.r2t = Some((b.itt(), b.ttt(), b.buffer_offset(), b.desired_data_len()));
            }
            Opcode::NopIn if p.bhs.itt() == PING_ITT => self.ping_answered = true,
            _ => {}
        }
    }

    /// Let `d` pass, firing the timer whenever it is due.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..64 {
            let due = self.conn.next_deadline();
            if self.closed || due > end {
                break;
            }
            self.now = self.now.max(due);
            self.conn.on_timeout(self.now);
            self.pump();
        }
        self.now = end;
    }

    /// The connection is gone: held commands are aborted, and every
    /// command still executing must finish.
    fn drain(&mut self) {
        self.env
            .device
            .abort_held(None, Some(self.env.nexus.id), None);
        let end = Instant::now() + wire::PATIENCE;
        while self.conn.executing() > 0 {
            let left = end.saturating_duration_since(Instant::now());
            let (itt, r) = self
                .done_rx
                .recv_timeout(left)
                .expect("an executing command never finished");
            self.conn.on_done(itt, r);
            while self.conn.poll_output().is_some() {}
        }
    }
}

fn config(choice: LoginChoice) -> Config {
    let discovery = choice.discovery();
    Config {
        params: choice.params(),
        kind: if discovery {
            SessionType::Discovery
        } else {
            SessionType::Normal
        },
        target_name: (!discovery).then(|| wire::TARGET.to_string()),
        scsi: !discovery,
        cid: 0,
        exp_cmd_sn: 1,
        stat_sn: 1,
        cmd_window: 128,
        max_transfer: 32 << 20,
        write_buffer_per_session: 16 << 20,
        nop_interval: Duration::from_secs(30),
        nop_timeout: Duration::from_secs(30),
        abort_timeout: Duration::from_secs(5),
    }
}

pub fn session_sm(data: &[u8]) {
    let mut inp = Input::new(data);
    let choice = LoginChoice(inp.u8());
    let device = DEVICE.get_or_init(|| Arc::new(wire::device()));
    let id = NEXUS.fetch_add(1, Ordering::Relaxed);
    let nexus = Arc::new(Nexus {
        id,
        initiator_port: format!("{},i,0x80{id:010x}", wire::INITIATOR),
        initiator_name: wire::INITIATOR.to_string(),
        relative_port: 1,
    });
    let cfg = config(choice);
    let params = cfg.params.clone();
    let now = Instant::now();
    let (done_tx, done_rx) = channel();
    let mut d = Driver {
        conn: Connection::new(cfg, Arc::new(BudgetPool::new(256 << 20)), now),
        env: Target { device, nexus },
        now,
        done_tx,
        done_rx,
        framing_in: Framing {
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            max_data_segment: params.target_max_recv_dsl,
        },
        mrdsl: choice.mrdsl(),
        exp_stat_sn: 1,
        r2t: None,
        closed: false,
        ping_answered: false,
    };
    if !choice.discovery() {
        device.nexus_added(&d.env.nexus);
    }
    run(&mut d, &mut inp);
    d.drain();
    if !choice.discovery() {
        device.nexus_removed(&d.env.nexus);
    }
}

fn run(d: &mut Driver, inp: &mut Input) {
    let mut sns = pdus::Numbers {
        cmd_sn: 1,
        exp_stat_sn: 1,
    };
    let mut steps = 0;
    while !inp.is_empty() && !d.closed && steps < 64 {
        steps += 1;
        let kind = inp.u8();
        sns.exp_stat_sn = d.exp_stat_sn;
        let (p, corrupt) = pdus::build(inp, &mut sns, d.r2t, kind);
        d.feed(&p, corrupt);
        // Time passes between PDUs; a whole NOP interval now and then.
        let wait = if kind & 0x0f == 0x0f { 31_000 } else { 1 };
        d.advance(Duration::from_millis(wait));
    }
    if d.closed {
        return;
    }
    let mut ping = Pdu::new(Opcode::NopOut);
    ping.bhs.set_immediate(true);
    ping.bhs.set_final(true);
    ping.bhs.set_itt(PING_ITT);
    ping.bhs.set_ttt(RESERVED);
    ping.bhs.set_cmd_sn(sns.cmd_sn);
    ping.bhs.set_exp_stat_sn(d.exp_stat_sn);
    d.feed(&ping, false);
    assert!(
        d.ping_answered || d.closed,
        "the connection neither answered the ping nor closed"
    );
}
