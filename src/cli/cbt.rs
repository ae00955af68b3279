//! `gentgt cbt ...`: the CBT wire contract from the command line, through
//! the project's initiator and its client module (`initiator::cbt`).

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use gentgt::initiator::Session;
use gentgt::initiator::cbt::{
    CbtClientError, ClosedGeneration, ExtentDescriptor, LockGrant, TrackingReport,
};
use gentgt::scsi::lun::DEFAULT_CBT_INITIATOR;
use std::net::SocketAddr;
use std::time::Duration;

mod view;

#[derive(Args)]
pub struct CbtArgs {
    #[command(subcommand)]
    action: Action,
}

/// Where to connect and as whom (every action takes these).
#[derive(Args, Clone)]
pub(super) struct Common {
    /// Target portal.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(super) portal: SocketAddr,
    /// Target name (IQN).
    #[arg(long, value_name = "IQN")]
    pub(super) target: String,
    /// Logical unit number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(super) lun: u64,
    /// Initiator name to log in with (must be in the LUN's cbt_initiators).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CBT_INITIATOR)]
    pub(super) initiator: String,
    /// Machine-readable output.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Subcommand)]
enum Action {
    /// REPORT TRACKING: UUID, open generation, flags, lock lease.
    Status(Common),
    /// CLOSE GENERATION: print the closed generation G (use it as --since
    /// next time).
    Close(Common),
    /// GET CHANGED EXTENTS since a generation, paging to the end of the LUN.
    Changes {
        #[command(flatten)]
        common: Common,
        /// Generation returned by an earlier close (0 = since tracking began).
        #[arg(long, value_name = "G")]
        since: u64,
        #[arg(long, value_name = "L", default_value_t = 0)]
        start_lba: u64,
        /// AS OF VIEW: the LUN as the open view holds it (contract v2).
        #[arg(long)]
        as_of_view: bool,
    },
    /// ACQUIRE WRITE LOCK and hold it, renewing, until Ctrl-C or stdin
    /// closes; then release it. (The lock also ends with this session.)
    Lock {
        #[command(flatten)]
        common: Common,
        /// Lease (0 = the target's default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        lease_ms: u32,
        /// How long the target may wait for changes in flight (0 = default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        drain_ms: u32,
    },
    /// RENEW WRITE LOCK with the token from `lock`.
    Renew {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "T")]
        token: u64,
        #[arg(long, value_name = "N", default_value_t = 0)]
        lease_ms: u32,
    },
    /// RELEASE WRITE LOCK with the token from `lock`.
    Unlock {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "T")]
        token: u64,
    },
    /// Point-in-time views: open, renew, release.
    View {
        #[command(subcommand)]
        action: view::ViewAction,
    },
}

impl Action {
    fn common(&self) -> &Common {
        match self {
            Action::Status(c) | Action::Close(c) => c,
            Action::Changes { common, .. }
            | Action::Lock { common, .. }
            | Action::Renew { common, .. }
            | Action::Unlock { common, .. } => common,
            Action::View { action } => action.common(),
        }
    }
}

pub fn run(args: CbtArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let c = args.action.common().clone();
        let session = super::login(c.portal, &c.target, &c.initiator, c.lun).await?;
        let result = act(&session, &args.action, &c).await;
        let _ = session.logout().await;
        result
    })
}

/// Turn a client error into an operator message with sense names.
pub(super) fn readable(what: &str) -> impl FnOnce(CbtClientError) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {}", e.describe())
}

async fn act(s: &Session, action: &Action, c: &Common) -> Result<()> {
    let lun = c.lun;
    match action {
        Action::Status(_) => {
            let r = s
                .cbt_report(lun)
                .await
                .map_err(readable("REPORT TRACKING"))?;
            print_report(&r, c.json);
        }
        Action::Close(_) => {
            let g = s
                .cbt_close(lun)
                .await
                .map_err(readable("CLOSE GENERATION"))?;
            print_close(&g, c.json);
        }
        Action::Changes {
            since,
            start_lba,
            as_of_view,
            ..
        } => {
            let report = s
                .cbt_report(lun)
                .await
                .map_err(readable("REPORT TRACKING"))?;
            let list = s
                .cbt_all_changes_as_of(lun, *since, *start_lba, *as_of_view)
                .await
                .map_err(readable("GET CHANGED EXTENTS"))?;
            print_changes(&report, (*since, *as_of_view), &list, c.json);
        }
        Action::Lock {
            lease_ms, drain_ms, ..
        } => hold_lock(s, lun, *lease_ms, *drain_ms, c.json).await?,
        Action::Renew {
            token, lease_ms, ..
        } => {
            let g = s
                .cbt_renew(lun, *token, *lease_ms)
                .await
                .map_err(readable("RENEW WRITE LOCK"))?;
            print_lock("renewed", &g, c.json);
        }
        Action::Unlock { token, .. } => {
            let g = s
                .cbt_release(lun, *token)
                .await
                .map_err(readable("RELEASE WRITE LOCK"))?;
            print_lock("released", &g, c.json);
        }
        Action::View { action } => view::act(s, action, c).await?,
    }
    Ok(())
}

/// Acquire, print, renew at half the lease until Ctrl-C or stdin EOF,
/// release.
async fn hold_lock(s: &Session, lun: u64, lease_ms: u32, drain_ms: u32, json: bool) -> Result<()> {
    let g = s
        .cbt_acquire(lun, lease_ms, drain_ms)
        .await
        .map_err(readable("ACQUIRE WRITE LOCK"))?;
    print_lock("locked", &g, json);
    if !json {
        eprintln!("holding the lock; Ctrl-C or closing stdin releases it");
    }
    let period = Duration::from_millis(u64::from(g.lease_ms.max(2)) / 2);
    hold_until_released(period, || async {
        s.cbt_renew(lun, g.token, lease_ms)
            .await
            .map(drop)
            .map_err(readable("RENEW WRITE LOCK"))
    })
    .await?;
    let r = s
        .cbt_release(lun, g.token)
        .await
        .map_err(readable("RELEASE WRITE LOCK"))?;
    print_lock("released", &r, json);
    Ok(())
}

/// Call `renew` every `period` until Ctrl-C or standard input closes (how
/// `cbt lock` and `cbt view open --hold` keep what they hold).
pub(super) async fn hold_until_released<F, Fut>(period: Duration, mut renew: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = &mut stdin_closed => return Ok(()),
            _ = tokio::time::sleep(period) => renew().await?,
        }
    }
}

fn uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn print_report(r: &TrackingReport, json: bool) {
    let f = &r.flags;
    if json {
        println!(
            "{{\"uuid\":\"{}\",\"open_generation\":{},\"recovery_generation\":{},\
             \"extent_blocks\":{},\"block_length\":{},\"capacity_blocks\":{},\
             \"tracking_on\":{},\"persistent\":{},\"write_locked\":{},\"recovered\":{},\
             \"lock_lease_remaining_ms\":{}{}}}",
            uuid(&r.uuid),
            r.open_generation,
            r.recovery_generation,
            r.extent_blocks,
            r.block_len,
            r.capacity_blocks,
            f.tracking_on,
            f.persistent,
            f.write_locked,
            f.recovered,
            r.lease_remaining_ms,
            view::report_json(r)
        );
        return;
    }
    let mut state = vec![if f.tracking_on { "on" } else { "off" }];
    state.push(if f.persistent {
        "persistent"
    } else {
        "volatile"
    });
    if f.recovered {
        state.push("recovered after an unclean stop");
    }
    if f.write_locked {
        state.push("write locked");
    }
    println!("tracking             {}", state.join(", "));
    println!("uuid                 {}", uuid(&r.uuid));
    println!("open generation      {}", r.open_generation);
    println!("recovery generation  {}", r.recovery_generation);
    println!(
        "extent size          {} blocks ({} bytes)",
        r.extent_blocks,
        u64::from(r.extent_blocks) * u64::from(r.block_len)
    );
    println!(
        "capacity             {} blocks of {} bytes",
        r.capacity_blocks, r.block_len
    );
    println!("lock lease left      {} ms", r.lease_remaining_ms);
    view::print_report_views(r);
}

fn print_close(g: &ClosedGeneration, json: bool) {
    if json {
        println!(
            "{{\"uuid\":\"{}\",\"generation\":{}}}",
            uuid(&g.uuid),
            g.generation
        );
    } else {
        println!(
            "closed generation {} (uuid {})",
            g.generation,
            uuid(&g.uuid)
        );
    }
}

/// `query` is (SINCE, AS OF VIEW).
fn print_changes(r: &TrackingReport, query: (u64, bool), list: &[ExtentDescriptor], json: bool) {
    let (since, as_of_view) = query;
    if json {
        let items: Vec<String> = list
            .iter()
            .map(|x| {
                format!(
                    "{{\"lba\":{},\"blocks\":{},\"generation\":{},\"deallocated\":{}}}",
                    x.lba, x.blocks, x.generation, x.deallocated
                )
            })
            .collect();
        println!(
            "{{\"uuid\":\"{}\",\"since\":{since},\"as_of_view\":{as_of_view},\"extents\":[{}]}}",
            uuid(&r.uuid),
            items.join(",")
        );
        return;
    }
    println!(
        "{:>14} {:>10} {:>12}  dealloc",
        "lba", "blocks", "generation"
    );
    let mut total = 0u64;
    for x in list {
        let d = if x.deallocated { "yes" } else { "no" };
        println!("{:>14} {:>10} {:>12}  {d}", x.lba, x.blocks, x.generation);
        total += u64::from(x.blocks);
    }
    println!(
        "{} extents, {} blocks ({} bytes) changed since generation {since}{}",
        list.len(),
        total,
        total * u64::from(r.block_len),
        if as_of_view {
            ", as of the open view"
        } else {
            ""
        }
    );
}

fn print_lock(what: &str, g: &LockGrant, json: bool) {
    if json {
        println!(
            "{{\"state\":\"{what}\",\"token\":{},\"generation\":{},\"lease_ms\":{}}}",
            g.token, g.generation, g.lease_ms
        );
    } else {
        println!(
            "{what}: token {} generation {} lease {} ms",
            g.token, g.generation, g.lease_ms
        );
    }
}
