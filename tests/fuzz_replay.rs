//! Replays the committed fuzz corpus and every crash input ever found
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the
//! same `gentgt::fuzz` functions cargo-fuzz runs, on stable Rust. Then a
//! short loop of seeded random mutations of that corpus per target, so CI
//! explores a little beyond it. `cargo test --test fuzz_replay -- --ignored
//! write_seeds` regenerates the seed part of the corpus.

use gentgt::fuzz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir(kind, target)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

fn target_fn(name: &str) -> fn(&[u8]) {
    fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// A random mutation of `base`: bit flips, byte sets, truncation,
/// insertion and splicing with another corpus input.
fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        let len = v.len();
        match rng.gen_range(0..6) {
            0 if len > 0 => v[rng.gen_range(0..len)] ^= 1 << rng.gen_range(0..8),
            1 if len > 0 => v[rng.gen_range(0..len)] = rng.r#gen(),
            2 if len > 0 => v.truncate(rng.gen_range(0..len)),
            3 => {
                let at = rng.gen_range(0..=len);
                let n = rng.gen_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
                v.splice(at..at, bytes);
            }
            4 if !other.is_empty() => {
                let at = rng.gen_range(0..=len);
                let from = rng.gen_range(0..other.len());
                v.splice(at..at, other[from..].iter().copied().take(64));
            }
            _ => {
                let at = rng.gen_range(0..=len);
                v.splice(
                    at..at,
                    [0xff, 0x00, 0x7f, 0x80][rng.gen_range(0..4)..]
                        .iter()
                        .copied(),
                );
            }
        }
    }
    v
}

fn replay(target: &str, mutations: usize) {
    let f = target_fn(target);
    let corpus = files("corpus", target);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty"
    );
    let regressions = files("regressions", target);
    for (path, data) in corpus.iter().chain(&regressions) {
        eprintln!("replay {}", path.display());
        f(data);
    }
    let mut rng = StdRng::seed_from_u64(0x6765_6e74_6774 ^ target.len() as u64);
    for i in 0..mutations {
        let base = &corpus[rng.gen_range(0..corpus.len())].1;
        let other = &corpus[rng.gen_range(0..corpus.len())].1;
        let input = if i % 8 == 7 {
            (0..rng.gen_range(0..256)).map(|_| rng.r#gen()).collect()
        } else {
            mutate(&mut rng, base, other)
        };
        f(&input);
    }
}

macro_rules! replay_tests {
    ($($name:ident: $n:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), $n);
            }
        )*
    };
}

replay_tests! {
    pdu: 3000,
    text_keys: 3000,
    negotiation: 3000,
    login: 3000,
    session: 300,
    session_sm: 3000,
    cdb: 1500,
    cbt: 1000,
    param_lists: 1500,
    config: 1000,
}

#[test]
fn every_target_has_a_replay_test_and_seeds() {
    let seeds = fuzz::seeds();
    for (name, _) in fuzz::TARGETS {
        assert!(
            seeds.iter().any(|(t, _)| t == name),
            "no seed for target {name}"
        );
    }
    for (target, input) in &seeds {
        target_fn(target)(input);
    }
}

/// Writes the generated seeds into fuzz/corpus/<target>/seed-NNN.
#[test]
#[ignore]
fn write_seeds() {
    let mut n = std::collections::HashMap::new();
    for (target, input) in fuzz::seeds() {
        let i = n.entry(target).or_insert(0);
        let d = dir("corpus", target);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("seed-{i:03}")), input).unwrap();
        *i += 1;
    }
}
