//! The client side of a recording: a seeded script of writes (with and
//! without FUA), SYNCHRONIZE CACHE, CBT CLOSE, OPEN VIEW and PR OUT with
//! APTPL, issued one at a time through the project's initiator, each
//! logged with the wall-clock time it was sent and acknowledged (the
//! clock strace stamps the trace with), so a crash state at time `T`
//! knows exactly what the target had promised by then.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};

pub const TARGET: &str = "iqn.2026-11.dev.gentgt:powerloss";
/// The default CBT initiator; also the PR holder.
pub const INITIATOR: &str = "iqn.2026-11.dev.gentgt:backup";
/// One I_T nexus across restarts (the reservation holder's).
pub const ISID: [u8; 6] = [0x80, 0x15, 0x15, 0x15, 0, 0];
pub const BS: u32 = 512;
pub const LUN_BLOCKS: u64 = (16 << 20) / BS as u64;
/// 4 KiB extents: 8 blocks.
pub const EXTENT_BLOCKS: u64 = 8;
/// The intent log names regions of 1024 extents (src/cbt/map.rs).
pub const REGION_BLOCKS: u64 = 1024 * EXTENT_BLOCKS;
/// Writes go to regions 0..3; region 3 is never written, so a recovery
/// that lists it forced a full pass.
const WRITTEN_REGIONS: u64 = 3;
pub const PR_KEY: u64 = 0x00C0_FFEE_0000_0015;
const PR_WRITE_EXCLUSIVE: u8 = 1;

pub fn config() -> String {
    format!(
        r#"[[target]]
name = "{TARGET}"

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "16MiB"
block_size = {BS}
tracking = "persistent"
extent_size = "4KiB"
"#
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Write {
        lba: u64,
        blocks: u32,
        seq: u32,
        fua: bool,
    },
    Sync,
    /// CLOSE GENERATION or OPEN VIEW (both close `g`).
    Close {
        g: u64,
    },
    /// REPORT TRACKING: the UUID is now known to the appliance.
    Report,
    /// VPD 80h and 83h read: the identity is now known.
    Identity,
    PrRegister,
    PrReserve,
}

#[derive(Clone, Debug)]
pub struct Cmd {
    pub kind: Kind,
    pub sent: f64,
    /// `None`: no GOOD answer (the kill came first).
    pub acked: Option<f64>,
}

impl Cmd {
    pub fn acked_before(&self, t: f64) -> bool {
        self.acked.is_some_and(|a| a < t)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Log {
    pub cmds: Vec<Cmd>,
    pub uuid: [u8; 16],
    pub serial_page: Vec<u8>,
    pub naa_page: Vec<u8>,
}

/// What one step of the script does.
#[derive(Clone, Copy, Debug)]
enum Step {
    Write { lba: u64, blocks: u32, fua: bool },
    Sync,
    Close,
    OpenView,
    PrRegister,
    PrReserve,
}

/// The script of one target run (`phase` 0 starts fresh, 1 after a kill).
fn script(rng: &mut impl Rng, phase: usize) -> Vec<Step> {
    // After a restart the appliance closes at once (a backup right after
    // a crash): the last run's unsynced writes must still be listed then.
    let mut v = if phase > 0 {
        vec![Step::Close]
    } else {
        Vec::new()
    };
    let rounds = if phase == 0 { 3 } else { 2 };
    for round in 0..rounds {
        for _ in 0..rng.gen_range(3..=5) {
            let fua = rng.gen_bool(0.4);
            v.push(random_write(rng, fua));
            if rng.gen_bool(0.2) {
                v.push(Step::Sync);
            }
        }
        match (phase, round) {
            (0, 1) => v.extend([Step::PrRegister, Step::PrReserve, Step::Close]),
            // Writes under the open view (copy before write), left unsynced
            // by the kill -9: only the page cache holds them when the
            // target restarts.
            (0, 2) => v.extend([
                Step::OpenView,
                random_write(rng, false),
                random_write(rng, false),
            ]),
            _ => v.push(Step::Close),
        }
    }
    v
}

fn random_write(rng: &mut impl Rng, fua: bool) -> Step {
    let region = rng.gen_range(0..WRITTEN_REGIONS);
    let blocks = rng.gen_range(1..=16u32);
    let lba = region * REGION_BLOCKS + rng.gen_range(0..REGION_BLOCKS - 16);
    Step::Write { lba, blocks, fua }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The 512 bytes write `seq` puts at `lba`: both numbers and a filler
/// derived from them, so a read-back names the write it came from.
pub fn block_data(seq: u32, lba: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BS as usize);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&lba.to_be_bytes());
    let fill = (seq as u8) ^ (lba as u8) ^ 0x5a;
    b.resize(BS as usize, fill);
    b
}

/// Which write a block read back holds: `Some(0)` for zeros (never
/// written), `None` when it is no block any write produced.
pub fn block_seq(b: &[u8], lba: u64) -> Option<u32> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let seq = u32::from_be_bytes(b[..4].try_into().ok()?);
    (seq != 0 && block_data(seq, lba) == b).then_some(seq)
}

pub async fn login(addr: std::net::SocketAddr) -> Result<Session, String> {
    let mut o = ConnectOptions::new(addr, INITIATOR, Some(TARGET));
    o.isid = ISID;
    o.timeout = Duration::from_secs(10);
    let s = Initiator::connect(&o)
        .await
        .map_err(|e| format!("login: {e}"))?;
    let _ = s.test_unit_ready(0).await; // power-on unit attention
    Ok(s)
}

/// PROUT with the APTPL bit set in the parameter list.
async fn prout_aptpl(s: &Session, sa: u8, kind: u8, key: u64, sa_key: u64) -> Result<(), String> {
    let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0x01, 0, 0, 0]);
    let out = s
        .scsi(0, &cdb, Some(&p), 0)
        .await
        .map_err(|e| e.to_string())?;
    out.good().map(drop).map_err(|e| e.to_string())
}

/// Run phase `phase` of the script of `seed` against the target at
/// `addr`, appending to `log`. `next_seq` numbers the writes (never 0).
pub async fn run(
    addr: std::net::SocketAddr,
    seed: u64,
    phase: usize,
    log: &mut Log,
    next_seq: &mut u32,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(phase as u64 * 7919));
    let s = login(addr).await?;
    let sent = now();
    log.serial_page = s.inquiry_vpd(0, 0x80).await.map_err(|e| e.to_string())?;
    log.naa_page = s.inquiry_vpd(0, 0x83).await.map_err(|e| e.to_string())?;
    log.cmds.push(Cmd {
        kind: Kind::Identity,
        sent,
        acked: Some(now()),
    });
    let sent = now();
    let r = s.cbt_report(0).await.map_err(|e| e.to_string())?;
    if phase > 0 && r.uuid != log.uuid {
        return Err("tracking UUID changed across the recording's own kill -9".into());
    }
    log.uuid = r.uuid;
    log.cmds.push(Cmd {
        kind: Kind::Report,
        sent,
        acked: Some(now()),
    });
    for step in script(&mut rng, phase) {
        let sent = now();
        let kind = match step {
            Step::Write { lba, blocks, fua } => {
                let seq = *next_seq;
                *next_seq += 1;
                let data: Vec<u8> = (0..u64::from(blocks))
                    .flat_map(|i| block_data(seq, lba + i))
                    .collect();
                s.write16(0, lba, &data, BS, fua)
                    .await
                    .map_err(|e| e.to_string())?;
                Kind::Write {
                    lba,
                    blocks,
                    seq,
                    fua,
                }
            }
            Step::Sync => {
                s.sync_cache(0).await.map_err(|e| e.to_string())?;
                Kind::Sync
            }
            Step::Close => {
                let c = s.cbt_close(0).await.map_err(|e| e.to_string())?;
                if c.uuid != log.uuid {
                    return Err("CLOSE returned another UUID".into());
                }
                Kind::Close { g: c.generation }
            }
            Step::OpenView => {
                let v = s.cbt_open_view(0, 0, 0).await.map_err(|e| e.to_string())?;
                Kind::Close { g: v.generation }
            }
            Step::PrRegister => {
                prout_aptpl(&s, 0, 0, 0, PR_KEY).await?;
                Kind::PrRegister
            }
            Step::PrReserve => {
                prout_aptpl(&s, 1, PR_WRITE_EXCLUSIVE, PR_KEY, 0).await?;
                Kind::PrReserve
            }
        };
        log.cmds.push(Cmd {
            kind,
            sent,
            acked: Some(now()),
        });
    }
    Ok(())
}
