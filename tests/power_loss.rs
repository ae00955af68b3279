//! Power loss, not only kill -9 (issue 15): the crash-consistency harness
//! of `tests/powerloss/` on a bounded sample of crash states, through the
//! real binary over iSCSI, and on deliberately broken variants (a trace
//! with one kind of fsync removed: what the disk holds when the code
//! skips it), which it must catch. The thousands-of-states run is
//! `cargo bench --bench power_loss`.
//!
//! Knobs: POWERLOSS_CI_STATES (150), POWERLOSS_SEED (15).

mod common;
mod powerloss;

use powerloss::model::{self, Choice, Plan};
use powerloss::trace::{Op, Trace};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn count(trace: &Trace, pred: impl Fn(&powerloss::trace::Event) -> bool) -> usize {
    trace.events.iter().filter(|e| pred(e)).count()
}

/// The recording really holds what the checks are about: the data
/// file's FUA fdatasyncs, intent log appends with their fdatasync, CBT
/// meta replaced through a rename, the APTPL file and the identity.
fn assert_recorded(trace: &Trace) {
    let sync_of = |name: &str, full: bool| {
        count(trace, |e| matches!(e.op, Op::Sync { full: f, .. } if f == full) && e.name.starts_with(name))
    };
    let data_syncs = count(trace, |e| matches!(e.op, Op::Sync { .. }) && e.name == "lun0.img");
    assert!(data_syncs > 0, "no fdatasync of the data file");
    assert!(sync_of("lun0.img.cbt/intent.", false) > 0, "no intent log fdatasync");
    let dir_syncs = count(trace, |e| matches!(e.op, Op::Sync { .. }) && e.name == "lun0.img.cbt");
    assert!(dir_syncs > 0, "no fsync of the CBT directory");
    let renamed = |to: &str| count(trace, |e| matches!(&e.op, Op::Rename { to: t, .. } if t == to));
    for f in ["meta", "snapshot", "lun0.img.pr", "lun0.img.id"] {
        assert!(renamed(f) > 0, "{f} never replaced through a rename");
    }
}

#[test]
fn power_cut_sample_keeps_every_promise() {
    common::require_tool("strace");
    let seed = env("POWERLOSS_SEED", 15);
    let rec = powerloss::record(seed).expect("recording");
    if std::env::var("POWERLOSS_DUMP").is_ok() {
        for e in &rec.trace.events {
            println!("{} {} {:?} {:.120}", e.entry, e.exit, e.name, format!("{:?}", e.op));
        }
    }
    assert_recorded(&rec.trace);
    let n = env("POWERLOSS_CI_STATES", 150) as usize;
    let plans = powerloss::plans(&rec.trace, n, seed);
    let tally = powerloss::check_states(&rec, &rec.trace, &plans);
    println!(
        "power loss (seed {seed}, {} trace events, {} cut points): {}",
        rec.trace.events.len(),
        model::cuts(&rec.trace).len(),
        tally.summary()
    );
    assert!(tally.checked >= n / 2, "too few distinct states: {}", tally.summary());
    assert_eq!(tally.violation_states(), 0, "{}", tally.summary());
}

/// Every cut of the (mutated) trace, nothing unsynced kept, at most `n`.
fn lossy_plans(trace: &Trace, n: usize) -> Vec<Plan> {
    let cuts = model::cuts(trace);
    let step = cuts.len().div_ceil(n).max(1);
    cuts.iter()
        .step_by(step)
        .map(|&cut| Plan {
            cut,
            choice: Choice::NoneKept,
        })
        .collect()
}

/// A CBT write path that skipped the intent log's fdatasync: FUA data
/// lands while the record of its region does not, and after the power
/// cut GET CHANGED EXTENTS leaves the extent out.
#[test]
fn skipped_intent_fsync_is_caught() {
    common::require_tool("strace");
    let rec = powerloss::record(env("POWERLOSS_SEED", 15)).expect("recording");
    let mut broken = rec.trace.clone();
    let removed = model::drop_syncs(&mut broken, |e| {
        matches!(e.op, Op::Sync { full: false, .. }) && e.name.starts_with("lun0.img.cbt/intent.")
    });
    assert!(removed > 0);
    let tally = powerloss::check_states(&rec, &broken, &lossy_plans(&broken, 80));
    println!("intent fdatasync removed ({removed}): {}", tally.summary());
    let under = tally
        .violations
        .get("cbt: changed extent not listed (under-report)")
        .map_or(0, |v| v.0);
    assert!(under > 0, "the skipped fsync went unnoticed: {}", tally.summary());
}

/// CBT state files replaced without the directory fsync after the
/// rename: a power cut loses the tracking metadata, the target starts
/// with a new UUID and every appliance must do a full backup.
#[test]
fn skipped_cbt_dir_fsync_is_caught() {
    common::require_tool("strace");
    let rec = powerloss::record(env("POWERLOSS_SEED", 15) + 1).expect("recording");
    let mut broken = rec.trace.clone();
    let removed = model::drop_syncs(&mut broken, |e| e.name == "lun0.img.cbt");
    assert!(removed > 0);
    let tally = powerloss::check_states(&rec, &broken, &lossy_plans(&broken, 80));
    println!("CBT directory fsync removed ({removed}): {}", tally.summary());
    assert!(tally.violation_states() > 0, "the skipped fsync went unnoticed: {}", tally.summary());
}
