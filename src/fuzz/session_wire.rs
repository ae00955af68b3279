//! Blocking socket helpers for the session target: an in-process server
//! built once per process, a login with fixed good keys, and a reader
//! thread that decodes (and checks) every PDU the target sends.

use crate::backend::{Backend, MemoryBackend};
use crate::cbt::Tracker;
use crate::proto::negotiation::SessionParams;
use crate::proto::pdu::{self, Bhs, Framing, Opcode, Pdu};
use crate::proto::text::TextPairs;
use crate::scsi::{DeviceServer, LogicalUnit};
use crate::server::{Registry, Server, TargetEntry};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const TARGET: &str = "iqn.2026-11.dev.gentgt:fuzz-session";
pub const INITIATOR: &str = "iqn.2026-11.dev.gentgt:fuzz-initiator";
/// How long the target may take to answer before we call it a hang.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Set by the panic hook: a panic on a server thread does not reach the
/// fuzz thread (tokio catches it), so the harness checks this flag.
static PANICKED: AtomicBool = AtomicBool::new(false);
static ADDR: OnceLock<SocketAddr> = OnceLock::new();
/// Gives every login its own ISID, so sessions never reinstate each other.
static NEXT_ISID: AtomicU32 = AtomicU32::new(1);

pub fn server_panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

fn lun(size: u64, bs: u32, n: u8, tracked: bool) -> Arc<LogicalUnit> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(size));
    let id = crate::config::identity::derived_identity("fuzz-session", u64::from(n));
    let mut lu = LogicalUnit::new(backend, bs, id, !tracked);
    if tracked {
        let blocks = size / u64::from(bs);
        lu = lu.with_tracker(Arc::new(Tracker::volatile(blocks, 8).expect("tracker")));
        lu.cbt.allowed_initiators = vec![INITIATOR.to_string()];
        lu.cbt.max_lease = Duration::from_millis(200);
    }
    Arc::new(lu)
}

/// The fuzzed target's device server: LUN 0 a tracked 1 MiB memory disk,
/// LUN 1 a read-only 256 KiB one with 4 KiB blocks.
pub fn device() -> DeviceServer {
    let luns = vec![
        (0, lun(1 << 20, 512, 0, true)),
        (1, lun(256 << 10, 4096, 1, false)),
    ];
    DeviceServer::new(TARGET, luns)
}

/// The server's address, starting it on first use (see [`device`]).
pub fn server_addr() -> SocketAddr {
    *ADDR.get_or_init(|| {
        // A Rust `main` ignores SIGPIPE before it starts; libFuzzer's C
        // main does not, and vectored socket writes (writev) to a peer
        // that closed would kill the fuzzer instead of returning EPIPE.
        // SAFETY: setting a signal disposition to SIG_IGN is always sound.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            prev(info)
        }));
        let mut registry = Registry::default();
        registry.targets.insert(
            TARGET.to_string(),
            TargetEntry {
                name: TARGET.to_string(),
                alias: None,
                allowed_initiators: None,
                chap: None,
                device: Arc::new(device()),
            },
        );
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let addr = "127.0.0.1:0".parse().expect("addr");
                let server = Server::bind(Arc::new(registry), &[addr])
                    .await
                    .expect("bind");
                tx.send(server.local_addrs()[0]).expect("send addr");
                server
                    .run(std::future::pending())
                    .await
                    .expect("server run");
            });
        });
        rx.recv().expect("server address")
    })
}

/// Login options taken from the first input byte.
#[derive(Debug, Clone, Copy)]
pub struct LoginChoice(pub u8);

impl LoginChoice {
    pub fn discovery(self) -> bool {
        self.0 & 0x40 != 0
    }
    /// Our MaxRecvDataSegmentLength.
    pub fn mrdsl(self) -> u32 {
        if self.0 & 0x10 != 0 { 512 } else { 262_144 }
    }

    /// What a login with these keys negotiates (the target accepts them
    /// all as offered), for the in-memory harness.
    pub fn params(self) -> SessionParams {
        let on = |bit: u8| self.0 & bit != 0;
        let mut p = SessionParams {
            header_digest: on(0x01),
            data_digest: on(0x02),
            initiator_max_recv_dsl: self.mrdsl(),
            target_max_recv_dsl: crate::proto::login::LoginOffer::default().max_recv_dsl,
            ..SessionParams::default()
        };
        if !self.discovery() {
            p.immediate_data = !on(0x04);
            p.initial_r2t = on(0x08);
            p.first_burst_length = if on(0x20) { 512 } else { 65536 };
            p.max_burst_length = if on(0x20) { 1024 } else { 262_144 };
            p.max_outstanding_r2t = if on(0x80) { 4 } else { 1 };
        }
        p
    }

    fn keys(self) -> TextPairs {
        let mut t = TextPairs::new();
        let b = |bit: u8, yes: &str, no: &str| -> String {
            (if self.0 & bit != 0 { yes } else { no }).to_string()
        };
        t.push("InitiatorName", INITIATOR);
        if self.discovery() {
            t.push("SessionType", "Discovery");
        } else {
            t.push("TargetName", TARGET);
            t.push("SessionType", "Normal");
        }
        t.push("HeaderDigest", b(0x01, "CRC32C", "None"));
        t.push("DataDigest", b(0x02, "CRC32C", "None"));
        t.push("MaxRecvDataSegmentLength", self.mrdsl().to_string());
        if !self.discovery() {
            t.push("ImmediateData", b(0x04, "No", "Yes"));
            t.push("InitialR2T", b(0x08, "Yes", "No"));
            t.push("FirstBurstLength", b(0x20, "512", "65536"));
            t.push("MaxBurstLength", b(0x20, "1024", "262144"));
            t.push("MaxOutstandingR2T", b(0x80, "4", "1"));
        }
        t
    }
}

/// A logged-in connection.
pub struct Conn {
    pub stream: TcpStream,
    pub framing: Framing,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl Conn {
    pub fn send(&mut self, p: &Pdu, corrupt_data_digest: bool) -> std::io::Result<()> {
        let mut wire = pdu::encode(p, &self.framing);
        if corrupt_data_digest && self.framing.data_digest && !p.data.is_empty() {
            let last = wire.len() - 1;
            wire[last] ^= 0x55;
        }
        self.stream.write_all(&wire)
    }
}

fn read_pdu(s: &mut TcpStream, framing: &Framing) -> Option<Pdu> {
    let mut bhs = Bhs::default();
    s.read_exact(&mut bhs.0).ok()?;
    let n = pdu::tail_len(&bhs, framing).expect("target sent an oversized PDU");
    let mut tail = vec![0u8; n];
    s.read_exact(&mut tail).ok()?;
    Some(pdu::decode_tail(bhs, &tail, framing).expect("target sent a malformed PDU"))
}

/// Log in with fixed good keys; `None` if the target refused.
pub fn login(choice: LoginChoice) -> Option<Conn> {
    let mut stream = TcpStream::connect(server_addr()).expect("connect");
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(PATIENCE)).ok();
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs.set_immediate(true);
    p.bhs.set_flags(0x80 | (1 << 2) | 3);
    let n = NEXT_ISID.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    p.bhs.set_isid([0x80, 0, n[0], n[1], n[2], n[3]]);
    p.bhs.set_itt(0x4000_0000);
    p.bhs.set_cmd_sn(1);
    p.data = choice.keys().encode();
    stream
        .write_all(&pdu::encode(&p, &Framing::default()))
        .ok()?;
    let login_framing = Framing {
        max_data_segment: 1 << 24,
        ..Framing::default()
    };
    let r = read_pdu(&mut stream, &login_framing).expect("no login response");
    assert_eq!(r.opcode(), Opcode::LoginResponse);
    if r.bhs.0[36] != 0 || !r.bhs.final_bit() {
        return None;
    }
    let params = TextPairs::parse(&r.data).expect("login response text");
    let framing = Framing {
        header_digest: params.get("HeaderDigest") == Some("CRC32C"),
        data_digest: params.get("DataDigest") == Some("CRC32C"),
        max_data_segment: 1 << 24,
    };
    Some(Conn {
        stream,
        framing,
        cmd_sn: r.bhs.exp_cmd_sn(),
        exp_stat_sn: r.bhs.stat_sn().wrapping_add(1),
    })
}

/// Read the target's PDUs on a thread until it closes the connection;
/// our MaxRecvDataSegmentLength bounds every data segment.
pub fn spawn_reader(conn: &Conn, mrdsl: u32) -> Receiver<Pdu> {
    let mut s = conn.stream.try_clone().expect("clone socket");
    s.set_read_timeout(Some(PATIENCE * 2)).ok();
    let framing = Framing {
        max_data_segment: mrdsl,
        ..conn.framing
    };
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        while let Some(p) = read_pdu(&mut s, &framing) {
            if tx.send(p).is_err() {
                break;
            }
        }
        let _ = s.shutdown(Shutdown::Both);
    });
    rx
}

/// A fresh connection logs in and TEST UNIT READY gets a SCSI Response.
pub fn check_healthy() {
    let mut c = login(LoginChoice(0)).expect("healthy target refused a good login");
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.bhs.set_final(true);
    p.bhs.set_itt(1);
    p.bhs.set_cmd_sn(c.cmd_sn);
    p.bhs.set_exp_stat_sn(c.exp_stat_sn);
    c.send(&p, false).expect("send TUR");
    let framing = c.framing;
    let mut s = c.stream.try_clone().expect("clone");
    loop {
        let r = read_pdu(&mut s, &framing).expect("no answer to TEST UNIT READY");
        if r.opcode() == Opcode::ScsiResponse && r.bhs.itt() == 1 {
            break;
        }
    }
    let _ = c.stream.shutdown(Shutdown::Both);
}
