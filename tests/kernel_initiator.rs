//! The Linux kernel's iSCSI initiator (open-iscsi + sd, dm-multipath) in a
//! QEMU guest against this build's gentgt: each scenario of tests/kernel/
//! (see tests/kernel/README.md) must print "SCENARIO PASS", and the
//! deliberate-corruption scenario must FAIL (the fio checks can fail).
//!
//! Gating: `./test.sh` runs it with every other test. Tools missing is a
//! failure, not a skip (`./test.sh` installs them first:
//! scripts/install-test-deps.sh). KERNEL_SCENARIOS=basic,digests runs a
//! subset. The whole harness has a budget (TOTAL_BUDGET_S, reported at
//! the end): a scenario gets at most what is left of it, so a wedged
//! guest cannot push CI past its time.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// (scenario, expected to pass)
const SCENARIOS: &[(&str, bool)] = &[
    ("basic", true),
    ("digests", true),
    ("r2t", true),
    ("restart", true),
    ("multipath", true),
    ("alua", true),
    ("verify-corrupt", false),
];

/// Beyond each scenario's own timeout (run-scenario.sh enforces those).
const HARD_LIMIT_S: u64 = 600;

/// The whole harness, every scenario included. Measured on the
/// developers' 2-core machine under TCG: 238-330 s in all before the alua
/// scenario, which took 263 s alone at load 12 (boot and udev settle
/// slowed 3x); 1000 s leaves room for a slow CI machine and stays well
/// inside CI's time.
const TOTAL_BUDGET_S: u64 = 1000;

const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "socat",
    "dpkg-deb",
    "depmod",
    "cpio",
    "busybox",
    "iscsiadm",
    "iscsid",
    "fio",
    "mkfs.ext4",
    "multipathd",
    "apt-get",
    "python3",
];

fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn kernel_initiator_scenarios() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let why = format!(
            "kernel-initiator harness: missing {} (scripts/install-test-deps.sh installs them)",
            missing.join(", ")
        );
        panic!("{why}");
    }
    let only: Option<Vec<String>> = std::env::var("KERNEL_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel/run-scenario.sh");
    let total = Instant::now();
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    // One at a time: each is a QEMU guest (TCG uses a whole core).
    for &(name, should_pass) in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == name)) {
            continue;
        }
        let left = TOTAL_BUDGET_S.saturating_sub(total.elapsed().as_secs());
        if left == 0 {
            wrong.push(format!(
                "{name}: not run, the {TOTAL_BUDGET_S} s budget is used up"
            ));
            continue;
        }
        let t = Instant::now();
        let out = Command::new("timeout")
            .arg(HARD_LIMIT_S.min(left).to_string())
            .arg(&script)
            .arg(name)
            .env("GENTGT_BIN", env!("CARGO_BIN_EXE_gentgt"))
            .output()
            .expect("spawn run-scenario.sh");
        let secs = t.elapsed().as_secs();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let verdict = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("SCENARIO "))
            .unwrap_or("SCENARIO (no result line)")
            .to_string();
        let code = out.status.code();
        let passed = code == Some(0) && verdict.starts_with("SCENARIO PASS");
        // A FAIL the harness reached (exit 1 with a result line), not a
        // harness breakdown (exit 2) or a timeout, counts as the expected
        // failure.
        let failed_properly = code == Some(1)
            && verdict.starts_with("SCENARIO FAIL")
            && !verdict.contains("timeout")
            && !verdict.contains("without a result");
        let ok = if should_pass { passed } else { failed_properly };
        println!(
            "kernel scenario {name}: {} in {secs} s ({verdict})",
            if ok { "as expected" } else { "WRONG" }
        );
        if !ok {
            println!("--- {name} stdout ---\n{stdout}\n--- {name} stderr ---\n{stderr}");
            wrong.push(format!("{name}: {verdict} (exit {code:?})"));
        }
        report.push(format!("{name} {secs} s"));
    }
    println!(
        "kernel-initiator harness: {} in {} s total (budget {TOTAL_BUDGET_S} s)",
        report.join(", "),
        total.elapsed().as_secs()
    );
    assert!(
        wrong.is_empty(),
        "kernel scenarios not as expected: {wrong:#?}"
    );
}
