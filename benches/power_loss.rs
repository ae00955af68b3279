//! Power-loss crash consistency at scale (issue 15).
//!
//! cargo bench --bench power_loss
//!
//! Records the workload of `tests/powerloss/` under strace (the real
//! `gentgt serve`, two runs with a kill -9 between them), builds
//! POWERLOSS_STATES crash states from the trace (every cut before and
//! after each fsync, nothing / everything / seeded random subsets of the
//! unsynced operations kept, writes torn by sector), restarts the real
//! binary on each and checks it over iSCSI. Prints the counts: states
//! built, checked, violations by kind; then the same for the broken
//! variant (intent log fdatasync removed from the trace), which must
//! report violations. Exits non-zero if the real trace has a violation
//! or the broken one has none.
//!
//! Knobs: POWERLOSS_STATES (3000 distinct states checked in all),
//! POWERLOSS_SEED (15), POWERLOSS_RECORDINGS (10 seeds from
//! POWERLOSS_SEED, the states split between them: one recording has only
//! a few hundred distinct crash states).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/powerloss/mod.rs"]
mod powerloss;

use powerloss::model::{self, Choice, Plan};
use powerloss::trace::Op;
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let states = env("POWERLOSS_STATES", 3000) as usize;
    let seed = env("POWERLOSS_SEED", 15);
    let recordings = env("POWERLOSS_RECORDINGS", 10).max(1);
    let mut bad = false;
    let mut all = powerloss::Tally::default();
    let mut all_broken = powerloss::Tally::default();
    for r in 0..recordings {
        let seed = seed + r;
        let t0 = Instant::now();
        let rec = powerloss::record(seed).expect("recording");
        let cuts = model::cuts(&rec.trace).len();
        println!(
            "seed {seed}: {} trace events, {cuts} cut points, {} client commands, recorded in {:.1} s",
            rec.trace.events.len(),
            rec.log.cmds.len(),
            t0.elapsed().as_secs_f64()
        );
        let t1 = Instant::now();
        // Candidates until this recording's share of distinct states is
        // checked (random choices at a cut with few undecided operations
        // often rebuild a state already checked: skipped, not counted).
        let want = states.div_ceil(recordings as usize);
        let plans = powerloss::plans(&rec.trace, want * 4, seed);
        let mut tally = powerloss::Tally::default();
        for batch in plans.chunks(100) {
            powerloss::check_into(&rec, &rec.trace, batch, &mut tally);
            if tally.checked >= want {
                break;
            }
        }
        let secs = t1.elapsed().as_secs_f64();
        println!(
            "  real trace: {} ({:.1} s, {:.0} ms per checked state)",
            tally.summary(),
            secs,
            secs * 1000.0 / tally.checked.max(1) as f64
        );
        bad |= tally.violation_states() > 0;
        all.add(&tally);

        let mut broken = rec.trace.clone();
        let removed = model::drop_syncs(&mut broken, |e| {
            matches!(e.op, Op::Sync { full: false, .. })
                && e.name.starts_with("lun0.img.cbt/intent.")
        });
        let lossy: Vec<Plan> = model::cuts(&broken)
            .into_iter()
            .map(|cut| Plan {
                cut,
                choice: Choice::NoneKept,
            })
            .collect();
        let tally = powerloss::check_states(&rec, &broken, &lossy);
        println!(
            "  broken (intent fdatasync x{removed} removed): {}",
            tally.summary()
        );
        bad |= tally.violation_states() == 0;
        all_broken.add(&tally);
    }
    println!(
        "all {recordings} recordings, real traces: {}",
        all.summary()
    );
    println!(
        "all {recordings} recordings, broken (intent fdatasync removed): {}",
        all_broken.summary()
    );
    if bad {
        std::process::exit(1);
    }
}
