//! A one-line progress report on stderr for long restores: bytes done of
//! the total, MiB/s and ETA. Redrawn in place on a terminal, a line every
//! few seconds otherwise (`--progress` into a log).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counts bytes done; prints while alive when shown.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    printer: Option<JoinHandle<()>>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Progress {
    /// `show`: print at all; `total`: bytes to go through.
    pub fn new(show: bool, total: u64, what: &str) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let printer = show.then(|| {
            let (done, stop, what) = (done.clone(), stop.clone(), what.to_string());
            std::thread::spawn(move || print_loop(&done, &stop, total, &what))
        });
        Progress {
            done,
            stop,
            printer,
        }
    }

    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.printer.take() {
            let _ = t.join();
        }
    }
}

fn print_loop(done: &AtomicU64, stop: &AtomicBool, total: u64, what: &str) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { 10 } else { 50 }; // ticks of 100 ms
    let start = Instant::now();
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        tick += 1;
        if tick.is_multiple_of(every) {
            let line = status_line(what, done.load(Ordering::Relaxed), total, start.elapsed());
            let mut e = std::io::stderr().lock();
            let _ = if tty {
                write!(e, "\r{line}\x1b[K")
            } else {
                writeln!(e, "{line}")
            };
        }
    }
    let line = status_line(what, done.load(Ordering::Relaxed), total, start.elapsed());
    let _ = if tty {
        writeln!(std::io::stderr(), "\r{line}\x1b[K")
    } else {
        writeln!(std::io::stderr(), "{line}")
    };
}

/// "restore: 512.0 of 1024.0 MiB (50 %), 210.3 MiB/s, ETA 2 s".
pub fn status_line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let eta = if rate > 0.0 {
        format!("{:.0} s", total.saturating_sub(done) as f64 / rate)
    } else {
        "?".into()
    };
    format!(
        "{what}: {:.1} of {:.1} MiB ({:.0} %), {:.1} MiB/s, ETA {eta}",
        done as f64 / MIB,
        total as f64 / MIB,
        100.0 * done as f64 / total.max(1) as f64,
        rate / MIB,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_line_has_rate_and_eta() {
        let l = super::status_line(
            "restore",
            50 << 20,
            100 << 20,
            super::Duration::from_secs(5),
        );
        assert_eq!(l, "restore: 50.0 of 100.0 MiB (50 %), 10.0 MiB/s, ETA 5 s");
    }
}
