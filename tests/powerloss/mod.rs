//! Power-loss crash consistency of `gentgt serve` (issue 15).
//!
//! SIGKILL keeps the page cache, so kill -9 tests never see an fsync
//! that is missing. This harness records what the real binary does to
//! its files (strace: every write, fsync, rename, unlink, create of the
//! data file and of every state file — CBT meta, snapshot and intent
//! logs, PR/APTPL, identity, view stores), builds the states a power cut
//! at each durability point could leave (`model.rs`: unsynced operations
//! dropped, kept, reordered or torn), restarts the real binary on each
//! and checks over iSCSI what it promised (`check.rs`).
//!
//! Why strace and buffered I/O: a syscall tracer sees pwrite/fsync but
//! not io_uring submissions, so the recorded LUN uses the default
//! `io = "buffered"` engine; the io_uring backend is not covered here.
//!
//! The recording is two runs of the target on one data directory (fresh,
//! then restarted after a kill -9 that keeps the page cache), so the
//! states include power cuts during and after crash recovery.
// Shared by tests/power_loss.rs and benches/power_loss.rs; each uses part.
#![allow(dead_code)]

pub mod check;
pub mod model;
pub mod trace;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use model::{Choice, Plan};
use trace::Trace;
use workload::Log;

/// One recorded workload: its trace, the client's log, where it lives.
pub struct Recording {
    pub trace: Trace,
    pub log: Log,
    pub dir: tempfile::TempDir,
}

impl Recording {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("gentgt.toml")
    }
}

fn gentgt() -> &'static str {
    env!("CARGO_BIN_EXE_gentgt")
}

/// The pid of the process strace started (its only child).
fn traced_pid(strace: &Child) -> Result<i32, String> {
    let p = format!("/proc/{0}/task/{0}/children", strace.id());
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
        if let Some(pid) = s.split_whitespace().next().and_then(|x| x.parse().ok()) {
            return Ok(pid);
        }
        if std::time::Instant::now() > until {
            return Err("strace started no child".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const TRACED: &str = "openat,creat,write,pwrite64,pwritev,pwritev2,writev,fsync,fdatasync,\
    sync_file_range,rename,renameat,renameat2,unlink,unlinkat,ftruncate,fallocate,close,\
    mkdir,mkdirat,dup,dup2,dup3,fcntl,lseek";

/// Run one traced `gentgt serve` on `data` through phase `phase` of the
/// workload, then kill -9 it; returns the trace text.
fn record_phase(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    phase: usize,
    seed: u64,
    log: &mut Log,
    next_seq: &mut u32,
) -> Result<String, String> {
    let out = dir.join(format!("trace.{phase}"));
    let data = dir.join("data");
    let err =
        std::fs::File::create(dir.join(format!("stderr.{phase}"))).map_err(|e| e.to_string())?;
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-ttt", "-X", "raw", "-xx", "-s", "1048576"])
        .args(["-e", &format!("trace={TRACED}"), "-e", "signal=none", "-o"])
        .arg(&out)
        .arg(gentgt())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(dir.join("gentgt.toml"))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    let addr = crate::common::wait_for_portal(&mut child, Duration::from_secs(60));
    let pid = traced_pid(&child);
    let res = match addr {
        Some(a) => rt.block_on(workload::run(a, seed, phase, log, next_seq)),
        None => Err("traced gentgt printed no portal".into()),
    };
    // SAFETY: kill(2) of the gentgt process this recording started.
    if let Ok(pid) = pid {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = child.wait();
    res?;
    std::fs::read_to_string(&out).map_err(|e| e.to_string())
}

/// Record the workload of `seed`: fresh start, kill -9, restart, kill -9.
pub fn record(seed: u64) -> Result<Recording, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("gentgt.toml"), workload::config())
        .map_err(|e| e.to_string())?;
    let rt = runtime();
    let (mut log, mut next_seq) = (Log::default(), 1);
    let mut parser = trace::Parser::new(&data);
    for phase in 0..2 {
        let text = record_phase(&rt, dir.path(), phase, seed, &mut log, &mut next_seq)?;
        parser.add_process(&text, dir.path())?;
    }
    Ok(Recording {
        trace: parser.trace,
        log,
        dir,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `n` crash states: first every cut with nothing unsynced kept, then
/// with everything kept, then seeded random choices, cycling the cuts
/// that leave something undecided (a cut that leaves nothing has one
/// state only, checked once); if `n` is below the number of cuts, evenly
/// spread cuts.
pub fn plans(trace: &Trace, n: usize, seed: u64) -> Vec<Plan> {
    let mut cuts = model::cuts(trace);
    let mut v = Vec::with_capacity(n);
    if n < cuts.len() {
        for i in 0..n {
            let cut = cuts[i * cuts.len() / n];
            let choice = match i % 3 {
                0 => Choice::NoneKept,
                1 => Choice::Random(seed ^ ((i as u64) << 20)),
                _ => Choice::AllKept,
            };
            v.push(Plan { cut, choice });
        }
        return v;
    }
    for &cut in &cuts {
        v.push(Plan {
            cut,
            choice: Choice::NoneKept,
        });
    }
    cuts.retain(|&c| model::undecided(trace, c) > 0);
    let mut round = 1u64;
    while v.len() < n && !cuts.is_empty() {
        for &cut in &cuts {
            let choice = match round {
                1 => Choice::AllKept,
                r => Choice::Random(seed ^ (r << 32) ^ cut as u64),
            };
            v.push(Plan { cut, choice });
            if v.len() == n {
                break;
            }
        }
        round += 1;
    }
    v
}

/// Counts over a set of crash states.
#[derive(Default, Debug)]
pub struct Tally {
    pub built: usize,
    pub checked: usize,
    /// States with no undecided operation (fully determined by the cut).
    pub determined: usize,
    /// Violations by kind: (states, first example with its plan).
    pub violations: BTreeMap<&'static str, (usize, String)>,
    /// Built states identical to one checked before (not checked again).
    pub duplicates: usize,
    /// Hashes of the states checked.
    seen: std::collections::HashSet<u64>,
}

impl Tally {
    pub fn violation_states(&self) -> usize {
        self.violations.values().map(|v| v.0).sum()
    }

    /// Add the counts of another run (another recording) to these.
    pub fn add(&mut self, other: &Tally) {
        self.built += other.built;
        self.checked += other.checked;
        self.determined += other.determined;
        self.duplicates += other.duplicates;
        for (k, (n, ex)) in &other.violations {
            self.violations.entry(k).or_insert((0, ex.clone())).0 += n;
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "crash states built {}, checked {} (distinct; {} fully determined, {} duplicates skipped), violations {}",
            self.built,
            self.checked,
            self.determined,
            self.duplicates,
            self.violation_states()
        );
        for (k, (n, ex)) in &self.violations {
            s.push_str(&format!("\n  {k}: {n} states, e.g. {ex}"));
        }
        s
    }
}

/// Start `gentgt serve` (untraced) on a crash state.
fn serve(data: &Path, config: &Path, log: &Path) -> Result<crate::common::ServeProcess, String> {
    let err = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new(gentgt())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| e.to_string())?;
    match crate::common::wait_for_portal(&mut child, Duration::from_secs(30)) {
        Some(addr) => Ok(crate::common::ServeProcess { child, addr }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            Err(format!("did not start: {tail}"))
        }
    }
}

/// Build, start and check every state of `plans` on `trace` (the
/// recording's own, or a mutated copy).
pub fn check_states(rec: &Recording, trace: &Trace, plans: &[Plan]) -> Tally {
    let mut tally = Tally::default();
    check_into(rec, trace, plans, &mut tally);
    tally
}

/// [`check_states`], adding to `tally` (batches of one run).
pub fn check_into(rec: &Recording, trace: &Trace, plans: &[Plan], tally: &mut Tally) {
    let rt = runtime();
    for plan in plans {
        let dir = tempfile::tempdir_in(rec.dir.path()).expect("state dir");
        let data = dir.path().join("data");
        let (undecided, hash) = match model::build(trace, *plan, &data) {
            Ok(r) => r,
            Err(e) => panic!("building {plan:?}: {e}"),
        };
        tally.built += 1;
        // Restarting on the same files at a later cut still matters: the
        // promises grow with `T`. Only the same files at the same cut are
        // the same check.
        if !tally
            .seen
            .insert(hash ^ (plan.cut as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        {
            tally.duplicates += 1;
            continue;
        }
        tally.determined += usize::from(undecided == 0);
        let t = trace.time_after(plan.cut);
        let mut found = check::Found::new();
        match serve(&data, &rec.config(), &dir.path().join("stderr")) {
            Err(e) => {
                found.insert("target did not start", (1, e));
            }
            Ok(srv) => {
                let res = rt.block_on(async {
                    let s = workload::login(srv.addr).await?;
                    check::check(&s, &rec.log, t, &mut found).await
                });
                if let Err(e) = res {
                    found.insert("check failed (command error)", (1, e));
                }
            }
        }
        tally.checked += 1;
        for (k, (_, ex)) in found {
            let e = tally
                .violations
                .entry(k)
                .or_insert((0, format!("{plan:?} at t={t:.6}: {ex}")));
            e.0 += 1;
        }
    }
}
