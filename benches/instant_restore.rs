//! Instant restore's figures for issue 14.
//!
//! cargo bench --bench instant_restore
//!
//! A LUN image (3/4 random, 1/8 text, 1/8 zeros, 64 KiB extents) is backed
//! up by `gentgt backup` from a served file LUN and restored with `gentgt
//! restore --to-file`. One `gentgt serve` then serves the restored file as
//! LUN 0 and the backup as LUN 1 (`backend = "backup"`, default 64 MiB
//! cache). Printed:
//!
//! - time to served: spawn of `gentgt serve` to its portal line (the
//!   backup LUN opened: repository, index, manifest), median of runs;
//! - qemu-img sequential read (`qemu-img convert` into the null driver)
//!   of LUN 0 and LUN 1, alternated, each timed; medians and the ratio
//!   instant / file (bar: >= 50 %).
//!
//! Knobs: BENCH_DIR (target/bench-instant; a real disk), BENCH_SIZE_MIB
//! (1024), BENCH_RUNS (3).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{ServeProcess, run};
use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const EXTENT: usize = 64 << 10;
const TARGET: &str = "iqn.2026-11.dev.gentgt:bench";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gentgt(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gentgt {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn write_image(path: &Path, bytes: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut img = vec![0u8; bytes];
    for (i, e) in img.chunks_mut(EXTENT).enumerate() {
        match i % 8 {
            0 => {}
            1 => {
                let text = format!("extent {i}, some text that compresses; ");
                e.iter_mut()
                    .zip(text.bytes().cycle())
                    .for_each(|(b, t)| *b = t);
            }
            _ => rng.fill_bytes(e),
        }
    }
    std::fs::write(path, img).unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds of one `qemu-img convert` of LUN `lun` into the null driver.
fn qemu_read(server: &ServeProcess, lun: u32, bytes: usize) -> f64 {
    let url = format!("iscsi://{}/{TARGET}/{lun}", server.addr);
    let t = Instant::now();
    let (ok, o, e) = run(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", &url, "--target-image-opts"])
            .arg(format!("driver=null-co,size={bytes}")),
        600,
    );
    assert!(ok, "qemu-img read of LUN {lun}: {o}{e}");
    t.elapsed().as_secs_f64()
}

fn main() {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-instant".into());
    let _ = std::fs::remove_dir_all(&base);
    let dir = &std::path::absolute(Path::new(&base)).unwrap();
    let bytes = (env("BENCH_SIZE_MIB", 1024) << 20) as usize;
    let runs = env("BENCH_RUNS", 3) as usize;
    let (src, inst) = (dir.join("src"), dir.join("inst"));
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::create_dir_all(inst.join("data")).unwrap();
    write_image(&src.join("data/src.img"), bytes);
    let lun = |id: u32, keys: &str| format!("[[target.lun]]\nid = {id}\n{keys}\n");
    let file_lun = |path: &str| {
        let keys = format!("backend = \"file\"\npath = \"{path}\"\nsize = {bytes}");
        lun(0, &keys)
    };
    let head = format!("[[target]]\nname = \"{TARGET}\"\n");
    let server = ServeProcess::start_in(&src, &format!("{head}{}", file_lun("src.img")));
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    let portal = server.addr.to_string();
    let t = Instant::now();
    let out = gentgt(&[
        "backup", "--portal", &portal, "--target", TARGET, "--repo", r, "--json", "--quiet",
    ]);
    println!(
        "backup of {} MiB: {:.1} s",
        bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    drop(server);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = json["id"].as_str().unwrap().to_string();
    let restored = inst.join("data/restored.img");
    gentgt(&[
        "restore",
        "--repo",
        r,
        "--backup",
        &id,
        "--to-file",
        restored.to_str().unwrap(),
    ]);
    let backup_keys = format!("backend = \"backup\"\nrepository = \"{r}\"\nbackup = \"{id}\"");
    let toml = format!(
        "{head}{}\ntracking = \"off\"\n{}",
        file_lun("restored.img"),
        lun(1, &backup_keys)
    );

    let mut served = Vec::new();
    let (mut file, mut instant) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let server = ServeProcess::start_in(&inst, &toml);
        served.push(t.elapsed().as_secs_f64());
        file.push(qemu_read(&server, 0, bytes));
        instant.push(qemu_read(&server, 1, bytes));
    }
    let mib = (bytes >> 20) as f64;
    let (s, f, i) = (median(&mut served), median(&mut file), median(&mut instant));
    println!(
        "time to served (spawn to portal line), median of {runs}: {:.3} s",
        s
    );
    println!(
        "qemu-img read, restored file LUN: median {:.2} s ({:.0} MiB/s) {file:.2?}",
        f,
        mib / f
    );
    println!(
        "qemu-img read, instant LUN:       median {:.2} s ({:.0} MiB/s) {instant:.2?}",
        i,
        mib / i
    );
    println!("instant / file: {:.0} %", 100.0 * f / i);
}
