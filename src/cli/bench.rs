//! `gentgt bench`: random reads or writes against a target through the
//! project's initiator, `--qd` commands in flight on one session, for a
//! fixed time; prints IOPS and latency percentiles.
//!
//! The load runs on a single-threaded runtime on purpose: the numbers then
//! measure the target, not how many cores the load generator grabbed, and
//! `taskset` can pin the load to one core and the target to another.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gentgt::config::parse_size;
use gentgt::initiator::Session;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Target portal.
    #[arg(long, value_name = "ADDR:PORT")]
    portal: SocketAddr,
    /// Target name (IQN).
    #[arg(long, value_name = "IQN")]
    target: String,
    #[arg(long, value_name = "N", default_value_t = 0)]
    lun: u64,
    /// Initiator name to log in with.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "iqn.2026-11.dev.gentgt:bench"
    )]
    initiator: String,
    /// Commands in flight.
    #[arg(long, value_name = "N", default_value_t = 32)]
    qd: usize,
    /// Measured duration.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured run before the measurement (caches, first touches).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, value_enum, default_value_t = Rw::Write)]
    rw: Rw,
    /// I/O size (a multiple of the LUN's block size), e.g. 4096 or 4KiB.
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_bs)]
    bs: u64,
    /// One JSON line instead of the human summary (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Read,
    Write,
}

fn parse_bs(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// What every worker shares.
struct Job {
    session: Session,
    lun: u64,
    block_size: u32,
    /// I/O size in blocks, and how many I/O-sized slots the LUN holds.
    io_blocks: u64,
    slots: u64,
    rw: Rw,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.qd == 0 || args.seconds <= 0.0 || args.warmup < 0.0 {
        bail!("--qd and --seconds must be positive, --warmup not negative");
    }
    // Single-threaded: see the module comment.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> Result<()> {
    let session = super::login(args.portal, &args.target, &args.initiator, args.lun).await?;
    let (blocks, block_size) = session
        .read_capacity16(args.lun)
        .await
        .context("READ CAPACITY (16)")?;
    if block_size == 0 || args.bs == 0 || !args.bs.is_multiple_of(u64::from(block_size)) {
        bail!(
            "--bs {} is not a multiple of the block size {block_size}",
            args.bs
        );
    }
    let io_blocks = args.bs / u64::from(block_size);
    let slots = blocks / io_blocks;
    if slots == 0 || io_blocks > u64::from(u32::MAX) {
        bail!("--bs {} does not fit the LUN ({blocks} blocks)", args.bs);
    }
    let job = Arc::new(Job {
        session,
        lun: args.lun,
        block_size,
        io_blocks,
        slots,
        rw: args.rw,
    });
    let warm = Duration::from_secs_f64(args.warmup);
    let mut warm_ios = 0;
    if !warm.is_zero() {
        warm_ios = run_for(&job, args.qd, warm).await?.len();
    }
    let started = Instant::now();
    let mut lat = run_for(&job, args.qd, Duration::from_secs_f64(args.seconds)).await?;
    let elapsed = started.elapsed();
    if let Ok(job) = Arc::try_unwrap(job) {
        let _ = job.session.logout().await;
    }
    report(&args, &mut lat, elapsed, warm_ios);
    Ok(())
}

/// `qd` workers issuing I/O back to back until `dur` passed; returns every
/// completed I/O's latency in nanoseconds.
async fn run_for(job: &Arc<Job>, qd: usize, dur: Duration) -> Result<Vec<u64>> {
    let deadline = Instant::now() + dur;
    let workers: Vec<_> = (0..qd)
        .map(|_| tokio::spawn(worker(job.clone(), deadline)))
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.context("bench worker")??);
    }
    Ok(all)
}

async fn worker(job: Arc<Job>, deadline: Instant) -> Result<Vec<u64>> {
    let mut rng = StdRng::from_entropy();
    let mut data = vec![0u8; (job.io_blocks * u64::from(job.block_size)) as usize];
    rng.fill_bytes(&mut data);
    let mut lat = Vec::with_capacity(1 << 16);
    while Instant::now() < deadline {
        let lba = rng.gen_range(0..job.slots) * job.io_blocks;
        let t0 = Instant::now();
        match job.rw {
            Rw::Write => job
                .session
                .write16(job.lun, lba, &data, job.block_size, false)
                .await
                .with_context(|| format!("WRITE (16) at LBA {lba}"))?,
            Rw::Read => {
                let blocks = job.io_blocks as u32;
                let d = job
                    .session
                    .read16(job.lun, lba, blocks, job.block_size)
                    .await
                    .with_context(|| format!("READ (16) at LBA {lba}"))?;
                std::hint::black_box(d);
            }
        }
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// Value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// `warm_ios` (completed during the warm-up) is printed in the JSON so a
/// script that samples the target's CPU time around the whole run can
/// divide by every I/O it served.
fn report(args: &BenchArgs, lat: &mut [u64], elapsed: Duration, warm_ios: usize) {
    lat.sort_unstable();
    let ios = lat.len();
    let secs = elapsed.as_secs_f64();
    let iops = ios as f64 / secs;
    let mib_s = iops * args.bs as f64 / (1 << 20) as f64;
    let (p50, p99) = (quantile(lat, 0.50), quantile(lat, 0.99));
    let rw = match args.rw {
        Rw::Read => "read",
        Rw::Write => "write",
    };
    if args.json {
        println!(
            "{{\"rw\":\"{rw}\",\"bs\":{},\"qd\":{},\"seconds\":{secs:.3},\"ios\":{ios},\
             \"iops\":{iops:.1},\"mib_s\":{mib_s:.2},\"p50_us\":{:.1},\"p99_us\":{:.1},\"ios_total\":{}}}",
            args.bs,
            args.qd,
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            ios + warm_ios
        );
    } else {
        println!(
            "random {rw}, {} B, qd {}: {ios} I/Os in {secs:.2} s = {iops:.0} IOPS, \
             {mib_s:.1} MiB/s; latency p50 {:.3} ms, p99 {:.3} ms",
            args.bs,
            args.qd,
            p50 as f64 / 1e6,
            p99 as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.50), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
