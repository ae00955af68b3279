//! Session fuzzing speed: executions per second of the in-memory state
//! machine target (`session_sm`) against the loopback target (`session`)
//! on the same inputs (the session seeds, cycled). Issue 16's bar is a
//! ratio of at least 10.
//!
//! `cargo bench --bench session_fuzz [-- SECONDS]` (default 5 s each).

use gentgt::fuzz;
use std::time::{Duration, Instant};

fn rate(name: &str, f: fuzz::Target, inputs: &[Vec<u8>], limit: Duration) -> f64 {
    // One warm-up pass: the loopback server and the device start lazily.
    for i in inputs {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < limit {
        f(&inputs[n as usize % inputs.len()]);
        n += 1;
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{name:<11} {n:>9} execs in {:>5.1} s: {r:>10.0} execs/s",
        start.elapsed().as_secs_f64()
    );
    r
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let limit = Duration::from_secs(secs);
    let inputs: Vec<Vec<u8>> = fuzz::seeds()
        .into_iter()
        .filter(|(t, _)| *t == "session")
        .map(|(_, i)| i)
        .collect();
    assert!(!inputs.is_empty(), "no session seeds");
    let target = |n: &str| {
        fuzz::TARGETS
            .iter()
            .find(|(t, _)| *t == n)
            .expect("target")
            .1
    };
    let wire = rate("session", target("session"), &inputs, limit);
    let sm = rate("session_sm", target("session_sm"), &inputs, limit);
    println!("ratio       {:.1}x (bar: 10x)", sm / wire);
}
