//! `gentgt cbt view open|renew|release`: point-in-time views (contract
//! version 2). A view outlives the session that opened it (it ends by
//! RELEASE or lease expiry), so `open` prints the token and returns unless
//! asked to `--hold` it.

use super::{Common, readable};
use anyhow::Result;
use clap::Subcommand;
use gentgt::initiator::Session;
use gentgt::initiator::cbt::{TrackingReport, ViewGrant};
use std::time::Duration;

#[derive(Subcommand)]
pub(super) enum ViewAction {
    /// OPEN VIEW: print the token, VIEW GENERATION and the VIEW LUN that
    /// reads the LUN as it is now. The view lasts until released or its
    /// lease runs out.
    Open {
        #[command(flatten)]
        common: Common,
        /// Lease (0 = the target's default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        lease_ms: u32,
        /// How long the target may wait for changes in flight (0 = default).
        #[arg(long, value_name = "N", default_value_t = 0)]
        drain_ms: u32,
        /// Keep the view, renewing it, until Ctrl-C or stdin closes; then
        /// release it.
        #[arg(long)]
        hold: bool,
    },
    /// RENEW VIEW with the token from `view open`.
    Renew {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "T")]
        token: u64,
        #[arg(long, value_name = "N", default_value_t = 0)]
        lease_ms: u32,
    },
    /// RELEASE VIEW with the token from `view open`.
    Release {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "T")]
        token: u64,
    },
}

impl ViewAction {
    pub(super) fn common(&self) -> &Common {
        match self {
            ViewAction::Open { common, .. }
            | ViewAction::Renew { common, .. }
            | ViewAction::Release { common, .. } => common,
        }
    }
}

pub(super) async fn act(s: &Session, action: &ViewAction, c: &Common) -> Result<()> {
    let lun = c.lun;
    match action {
        ViewAction::Open {
            lease_ms,
            drain_ms,
            hold,
            ..
        } => {
            let g = s
                .cbt_open_view(lun, *lease_ms, *drain_ms)
                .await
                .map_err(readable("OPEN VIEW"))?;
            print_view("opened", &g, c.json);
            if *hold {
                hold_view(s, lun, g, *lease_ms, c.json).await?;
            }
        }
        ViewAction::Renew {
            token, lease_ms, ..
        } => {
            let g = s
                .cbt_renew_view(lun, *token, *lease_ms)
                .await
                .map_err(readable("RENEW VIEW"))?;
            print_view("renewed", &g, c.json);
        }
        ViewAction::Release { token, .. } => {
            let g = s
                .cbt_release_view(lun, *token)
                .await
                .map_err(readable("RELEASE VIEW"))?;
            print_view("released", &g, c.json);
        }
    }
    Ok(())
}

/// Renew at a third of the granted lease until Ctrl-C or stdin EOF, then
/// release.
async fn hold_view(s: &Session, lun: u64, g: ViewGrant, lease_ms: u32, json: bool) -> Result<()> {
    if !json {
        eprintln!("holding the view; Ctrl-C or closing stdin releases it");
    }
    let period = Duration::from_millis((u64::from(g.lease_ms) / 3).max(1));
    super::hold_until_released(period, || async {
        s.cbt_renew_view(lun, g.token, lease_ms)
            .await
            .map(drop)
            .map_err(readable("RENEW VIEW"))
    })
    .await?;
    let r = s
        .cbt_release_view(lun, g.token)
        .await
        .map_err(readable("RELEASE VIEW"))?;
    print_view("released", &r, json);
    Ok(())
}

fn print_view(what: &str, g: &ViewGrant, json: bool) {
    if json {
        println!(
            "{{\"state\":\"{what}\",\"token\":{},\"generation\":{},\"lease_ms\":{},\"view_lun\":{}}}",
            g.token, g.generation, g.lease_ms, g.view_lun
        );
    } else {
        println!(
            "{what}: token {} generation {} lease {} ms view LUN {}",
            g.token, g.generation, g.lease_ms, g.view_lun
        );
    }
}

/// The view fields of `cbt status --json` (after the version-1 ones).
pub(super) fn report_json(r: &TrackingReport) -> String {
    let f = &r.flags;
    let mut out = format!(
        ",\"version\":{},\"views\":{},\"view_open\":{},\"view_lost\":{}",
        r.version,
        r.views_supported(),
        f.view_open,
        f.view_lost
    );
    if let Some(v) = &r.views {
        out += &format!(
            ",\"view_generation\":{},\"view_lease_remaining_ms\":{},\
             \"view_space_used\":{},\"view_space_limit\":{},\"view_lun\":{}",
            v.generation, v.lease_remaining_ms, v.space_used, v.space_limit, v.view_lun
        );
    }
    out
}

/// The view lines of `cbt status`.
pub(super) fn print_report_views(r: &TrackingReport) {
    let Some(v) = &r.views else {
        let why = match r.version {
            1 => "unsupported (target speaks contract version 1)",
            _ => "off for this LUN",
        };
        println!("views                {why}");
        return;
    };
    let state = match (r.flags.view_open, r.flags.view_lost) {
        (true, true) => "open, LOST (view space exhausted; release it)",
        (true, false) => "open",
        _ => "none open",
    };
    println!("view                 {state}");
    println!("view LUN             {}", v.view_lun);
    if r.flags.view_open {
        println!("view generation      {}", v.generation);
        println!("view lease left      {} ms", v.lease_remaining_ms);
    }
    println!(
        "view space           {} of {} bytes used",
        v.space_used, v.space_limit
    );
}
