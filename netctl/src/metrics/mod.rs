//! `netctl metrics`: the host in the Prometheus text exposition format.
//!
//! Collection is split from formatting: a scrape gathers [`Readings`] (the
//! state, and what the datapath counts: the eBPF programs' `STATS` and
//! conntrack table, or the iptables rules' counters), the families are
//! built from them here and in `ebpf.rs` / `iptables.rs` (pure functions,
//! so the labels are tested without a kernel), and `exposition.rs`
//! writes the text. `http.rs` serves it for `--listen`. The reading itself
//! is `ops::metrics`, which holds the state lock only to copy the state.

pub mod ebpf;
pub mod exposition;
pub mod http;
pub mod iptables;

use self::exposition::{Family, Kind};
pub use self::{ebpf::EbpfReadings, exposition::render};
use crate::{datapath::iptables::CountedRule, state::State};

/// Everything one scrape read.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    pub state: State,
    pub datapath: DatapathReadings,
}

/// What the host's datapath counts.
#[derive(Clone, Debug, Default)]
pub enum DatapathReadings {
    /// No network yet, so no datapath.
    #[default]
    None,
    Ebpf(EbpfReadings),
    /// The rules of the tables netctl writes to, with their counters.
    Iptables(Vec<CountedRule>),
}

/// Every family of the host: the state's gauges, then the datapath's.
pub fn families(readings: &Readings) -> Vec<Family> {
    let state = &readings.state;
    let mut out = state_families(state);
    match &readings.datapath {
        DatapathReadings::None => {}
        DatapathReadings::Ebpf(ebpf) => out.extend(ebpf::families(state, ebpf)),
        DatapathReadings::Iptables(rules) => out.extend(iptables::families(state, rules)),
    }
    out
}

/// The readings as exposition text.
pub fn text(readings: &Readings) -> String {
    render(&families(readings))
}

fn gauge(name: &'static str, help: &'static str, value: usize) -> Family {
    let mut family = Family::new(name, Kind::Gauge, &[], help);
    family.add(Vec::<String>::new(), value as u64);
    family
}

fn state_families(state: &State) -> Vec<Family> {
    let mut info = Family::new(
        "netctl_datapath_info",
        Kind::Gauge,
        &["datapath"],
        "The host's datapath (1 for the one in use; none before the first network).",
    );
    if let Some(kind) = state.datapath {
        info.add([kind.to_string()], 1);
    }
    let ports = state.containers.values().map(|c| c.ports.len()).sum();
    vec![
        info,
        gauge(
            "netctl_networks",
            "Networks of the host.",
            state.networks.len(),
        ),
        gauge(
            "netctl_containers",
            "Containers of the host (CNI attachments included).",
            state.containers.len(),
        ),
        gauge(
            "netctl_published_ports",
            "Published ports of the host's containers.",
            ports,
        ),
    ]
}

#[cfg(test)]
mod tests;
