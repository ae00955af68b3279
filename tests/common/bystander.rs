//! A bystander: its own session writing and verifying data on another LUN
//! while a test breaks something, so the test can show the fault stays on
//! its LUN.

use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const BYSTANDER: &str = "iqn.2026-11.dev.gentgt:bystander";

/// Blocks per round (and the span of LBAs the rounds cycle through).
const BLOCKS: u32 = 8;
const SPAN: u64 = 256;

pub struct Bystander {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    task: JoinHandle<Result<(), String>>,
}

/// Clear the power-on (and any other) unit attention of `lun`.
pub async fn settle(s: &Session, lun: u64) {
    for _ in 0..8 {
        if s.test_unit_ready(lun).await.is_ok() {
            return;
        }
    }
    panic!("LUN {lun} never became ready");
}

impl Bystander {
    /// Log in as [`BYSTANDER`] and start verifying rounds on `lun`
    /// (512-byte blocks).
    pub async fn start(addr: SocketAddr, target: &str, lun: u64) -> Bystander {
        let s = Initiator::connect(&ConnectOptions::new(addr, BYSTANDER, Some(target)))
            .await
            .unwrap();
        settle(&s, lun).await;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (st, r) = (stop.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !st.load(Ordering::Relaxed) {
                let lba = (i * u64::from(BLOCKS)) % SPAN;
                let data: Vec<u8> = (0..BLOCKS as usize * 512)
                    .map(|k| (k as u64 ^ i) as u8)
                    .collect();
                s.write16(lun, lba, &data, 512, false)
                    .await
                    .map_err(|e| format!("round {i}: write: {e}"))?;
                let back = s
                    .read16(lun, lba, BLOCKS, 512)
                    .await
                    .map_err(|e| format!("round {i}: read: {e}"))?;
                if back != data {
                    return Err(format!("round {i}: read back other data at LBA {lba}"));
                }
                r.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            s.logout().await.map_err(|e| format!("logout: {e}"))
        });
        Bystander { stop, rounds, task }
    }

    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Wait until it has verified another round after this call (it kept
    /// working through whatever happened before). Panics if it stopped.
    pub async fn progresses(&self) {
        let seen = self.rounds();
        for _ in 0..3000 {
            if self.rounds() > seen {
                return;
            }
            assert!(!self.task.is_finished(), "the bystander stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the bystander made no progress in 30 s");
    }

    /// Stop it; panics with its first failure. Returns the rounds verified.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await.unwrap() {
            Ok(()) => self.rounds.load(Ordering::Relaxed),
            Err(e) => panic!("bystander failed: {e}"),
        }
    }
}

/// INFORMATION of fixed-format sense data, when VALID.
pub fn sense_information(sense: &[u8]) -> Option<u64> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense[0] & 0x80 != 0 && sense.len() >= 7 => {
            Some(u64::from(u32::from_be_bytes(sense[3..7].try_into().ok()?)))
        }
        _ => None,
    }
}

/// WRITE(16) CDB.
pub fn write16_cdb(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// READ(16) CDB.
pub fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = write16_cdb(lba, blocks, false);
    cdb[0] = 0x88;
    cdb
}
