//! `netctl metrics`: one scrape of the host. The state lock is held only
//! to copy the state (after any recovery `Host::open` does); the datapath
//! is read after it is released — the pinned maps opened, or
//! `iptables-save -c` run — so a scrape never blocks a command for longer
//! than a state load, and each scrape sees the datapath as it is then.

use std::net::SocketAddr;

use super::Host;
use crate::{
    config::HostConfig,
    datapath::{ebpf, iptables::Iptables},
    error::Result,
    metrics::{self, DatapathReadings, EbpfReadings, Readings},
    model::DatapathKind,
    state,
};

/// Reads the host once and renders it in the exposition format. A host
/// without a state dir keeps none (a scrape after `netctl down` must not
/// bring one back).
pub async fn metrics_text(config: &HostConfig) -> Result<String> {
    super::leaving_no_trace(&config.state_dir, scrape(config)).await
}

async fn scrape(config: &HostConfig) -> Result<String> {
    let host = Host::open(config.clone()).await?;
    if !host.had_state_file {
        // Decided under the lock: a scrape that waited for `down` finds the
        // dir gone, its own lock made it again, and it must not stay
        // (`leaving_no_trace` judged by what existed before the wait).
        state::remove_if_unused(&config.state_dir);
    }
    let state = host.state.clone();
    let pins = host.config.pin_dir();
    drop(host);
    let datapath = match state.datapath {
        None => DatapathReadings::None,
        Some(DatapathKind::Ebpf) => DatapathReadings::Ebpf(EbpfReadings {
            stats: ebpf::stats(&pins)?,
            flows: ebpf::conntrack_list(&pins)?,
            conntrack_capacity: ebpf::conntrack_capacity(&pins)?,
        }),
        Some(DatapathKind::Iptables) => {
            DatapathReadings::Iptables(Iptables::system().rule_counters()?)
        }
    };
    Ok(metrics::text(&Readings { state, datapath }))
}

/// Serves the host's metrics at `addr` until SIGINT or SIGTERM, reading it
/// anew for each request; `ready` is told the bound address.
pub async fn serve_metrics(
    config: &HostConfig,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    metrics::http::serve(addr, ready, || metrics_text(config)).await
}
