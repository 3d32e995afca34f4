//! The eBPF datapath's families: the programs' counters (`STATS`), and
//! what the conntrack table holds now — entries by kind and state, its
//! fill, packets and bytes per container and per published port, SNAT
//! ports in use.
//!
//! Only translated flows have conntrack entries (published ports, SNAT,
//! hairpin); traffic between containers of one bridge is not in them. An
//! entry counts the packets that matched its key, i.e. one direction of a
//! flow; the per-container and per-port counts are the sums over the
//! entries in the table at the time of the scrape, so a flow that expires
//! takes its packets with it (Prometheus reads the drop as a counter reset).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use netctl_common::stats::Counter;

use super::exposition::{Family, Kind};
use crate::{datapath::ebpf::Flow, model::PortMapping, state::State};

/// What a scrape read from the pinned maps.
#[derive(Clone, Debug, Default)]
pub struct EbpfReadings {
    /// `STATS`, summed over CPUs, by counter name.
    pub stats: Vec<(&'static str, Counter)>,
    /// Every conntrack entry.
    pub flows: Vec<Flow>,
    /// The conntrack table's size.
    pub conntrack_capacity: u32,
}

/// Prefix of the `STATS` counters that count drops (the rest of the name
/// is the reason).
const DROP_PREFIX: &str = "drop_";
const KINDS: [&str; 3] = ["snat", "dnat", "hairpin"];
const STATES: [&str; 9] = netctl_common::conntrack::STATE_NAMES;
/// From the container's side: packets it received, packets it sent.
const INGRESS: &str = "ingress";
const EGRESS: &str = "egress";
const CONTAINER_LABELS: &[&str] = &["container", "network", "direction"];
const PORT_LABELS: &[&str] = &["container", "network", "host_ip", "host_port", "protocol"];
const PORT_DIRECTION_LABELS: &[&str] = &[
    "container",
    "network",
    "host_ip",
    "host_port",
    "protocol",
    "direction",
];

/// One conntrack entry with its addresses parsed back.
struct Entry<'a> {
    flow: &'a Flow,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    translated_src: SocketAddrV4,
    translated_dst: SocketAddrV4,
}

impl<'a> Entry<'a> {
    fn parse(flow: &'a Flow) -> Option<Entry<'a>> {
        Some(Entry {
            flow,
            src: flow.src.parse().ok()?,
            dst: flow.dst.parse().ok()?,
            translated_src: flow.translated_src.parse().ok()?,
            translated_dst: flow.translated_dst.parse().ok()?,
        })
    }

    fn is_original(&self) -> bool {
        self.flow.direction == "original"
    }

    /// An entry of a flow to a published port (from outside or hairpin).
    fn is_published(&self) -> bool {
        matches!(self.flow.kind, "dnat" | "hairpin")
    }

    /// Whether it carries packets of this published port: the original
    /// direction arrives at the host port and goes to the container, the
    /// reply leaves the container's port and goes out as the host port.
    fn belongs_to(&self, port: &PortMapping) -> bool {
        let container = SocketAddrV4::new(port.container_ip, port.container_port);
        let on_host_ip = |addr: &SocketAddrV4| {
            port.is_ipv4() && port.host_ip4().is_none_or(|ip| *addr.ip() == ip)
        };
        self.is_published()
            && self.flow.proto == port.protocol.as_str()
            && if self.is_original() {
                self.translated_dst == container
                    && self.dst.port() == port.host_port
                    && on_host_ip(&self.dst)
            } else {
                self.src == container
                    && self.translated_src.port() == port.host_port
                    && on_host_ip(&self.translated_src)
            }
    }
}

/// The families of the eBPF datapath.
pub fn families(state: &State, readings: &EbpfReadings) -> Vec<Family> {
    let entries: Vec<Entry> = readings.flows.iter().filter_map(Entry::parse).collect();
    let mut out = stats_families(&readings.stats);
    out.extend(conntrack_families(&entries, readings.conntrack_capacity));
    out.extend(container_families(state, &entries));
    out.extend(published_port_families(state, &entries));
    out
}

fn stats_families(stats: &[(&'static str, Counter)]) -> Vec<Family> {
    const LABELS: &[&str] = &["verdict", "reason"];
    let mut packets = Family::new(
        "netctl_packets_total",
        Kind::Counter,
        LABELS,
        "Packets the eBPF programs counted, by verdict (verdicts overlap: a SNATed packet also counts as redirect_uplink); drops have verdict drop and a reason.",
    );
    let mut bytes = Family::new(
        "netctl_bytes_total",
        Kind::Counter,
        LABELS,
        "Bytes (as seen at TC, Ethernet header included) the eBPF programs counted, by verdict; drops have verdict drop and a reason.",
    );
    for (name, counter) in stats {
        let labels = match name.strip_prefix(DROP_PREFIX) {
            Some(reason) => ["drop", reason],
            None => [*name, ""],
        };
        packets.add(labels, counter.packets);
        bytes.add(labels, counter.bytes);
    }
    vec![packets, bytes]
}

fn conntrack_families(entries: &[Entry], capacity: u32) -> Vec<Family> {
    let mut by_kind = Family::new(
        "netctl_conntrack_entries",
        Kind::Gauge,
        &["kind", "state"],
        "Entries of the eBPF conntrack table (one per direction of a flow), by kind and state.",
    );
    for kind in KINDS {
        for state in STATES {
            by_kind.touch([kind, state]);
        }
    }
    for e in entries {
        by_kind.add([e.flow.kind, e.flow.state], 1);
    }
    let mut size = Family::new(
        "netctl_conntrack_capacity",
        Kind::Gauge,
        &[],
        "Entries the eBPF conntrack table can hold.",
    );
    size.add(Vec::<String>::new(), u64::from(capacity));
    let mut snat = Family::new(
        "netctl_snat_ports_in_use",
        Kind::Gauge,
        &["protocol"],
        "Uplink source ports (ICMP: echo identifiers) taken by SNAT flows in the conntrack table.",
    );
    let mut taken = BTreeSet::new();
    for e in entries {
        if e.flow.kind == "snat" && e.is_original() {
            taken.insert((e.flow.proto, e.translated_src.port()));
        }
    }
    for proto in ["tcp", "udp", "icmp"] {
        snat.touch([proto]);
    }
    for (proto, _) in taken {
        snat.add([proto], 1);
    }
    vec![by_kind, size, snat]
}

/// Packets and bytes per container endpoint: an entry's packets were sent
/// by the container whose address is its key's source, and received by the
/// one whose address is its translated destination (both, for hairpin).
fn container_families(state: &State, entries: &[Entry]) -> Vec<Family> {
    let mut packets = Family::new(
        "netctl_container_packets_total",
        Kind::Counter,
        CONTAINER_LABELS,
        "Packets of translated flows (published ports, SNAT, hairpin) now in the conntrack table, per container endpoint, received (ingress) or sent (egress).",
    );
    let mut bytes = Family::new(
        "netctl_container_bytes_total",
        Kind::Counter,
        CONTAINER_LABELS,
        "Bytes of translated flows now in the conntrack table, per container endpoint, received (ingress) or sent (egress).",
    );
    let mut owner: BTreeMap<Ipv4Addr, (&str, &str)> = BTreeMap::new();
    for ctr in state.containers.values() {
        for ep in &ctr.endpoints {
            owner.insert(ep.ip, (&ctr.name, &ep.network));
            for direction in [INGRESS, EGRESS] {
                packets.touch([ctr.name.as_str(), &ep.network, direction]);
                bytes.touch([ctr.name.as_str(), &ep.network, direction]);
            }
        }
    }
    for e in entries {
        let sides = [(e.src.ip(), EGRESS), (e.translated_dst.ip(), INGRESS)];
        for (ip, direction) in sides {
            if let Some((container, network)) = owner.get(ip) {
                packets.add([*container, *network, direction], e.flow.packets);
                bytes.add([*container, *network, direction], e.flow.bytes);
            }
        }
    }
    vec![packets, bytes]
}

fn published_port_families(state: &State, entries: &[Entry]) -> Vec<Family> {
    let mut connections = Family::new(
        "netctl_published_port_connections",
        Kind::Gauge,
        PORT_LABELS,
        "Flows to a published port now in the conntrack table (from outside or hairpin).",
    );
    let mut packets = Family::new(
        "netctl_published_port_packets_total",
        Kind::Counter,
        PORT_DIRECTION_LABELS,
        "Packets of the flows to a published port now in the conntrack table, to the container (ingress) or from it (egress).",
    );
    let mut bytes = Family::new(
        "netctl_published_port_bytes_total",
        Kind::Counter,
        PORT_DIRECTION_LABELS,
        "Bytes of the flows to a published port now in the conntrack table, to the container (ingress) or from it (egress).",
    );
    for port in state.containers.values().flat_map(|c| &c.ports) {
        let host_ip = port
            .host_ip
            .map_or_else(|| Ipv4Addr::UNSPECIFIED.to_string(), |ip| ip.to_string());
        let host_port = port.host_port.to_string();
        let labels = [
            port.container.as_str(),
            &port.network,
            &host_ip,
            &host_port,
            port.protocol.as_str(),
        ];
        connections.touch(labels);
        for direction in [INGRESS, EGRESS] {
            let with_direction = labels.iter().copied().chain([direction]);
            packets.touch(with_direction.clone());
            bytes.touch(with_direction);
        }
        for e in entries.iter().filter(|e| e.belongs_to(port)) {
            let direction = if e.is_original() { INGRESS } else { EGRESS };
            let with_direction = labels.iter().copied().chain([direction]);
            packets.add(with_direction.clone(), e.flow.packets);
            bytes.add(with_direction, e.flow.bytes);
            if e.is_original() {
                connections.add(labels, 1);
            }
        }
    }
    vec![connections, packets, bytes]
}
