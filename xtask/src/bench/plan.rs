//! What the bench measures: the configurations, the ports behind every
//! target, the (path, metric) plans of the full, quick and profiling runs
//! and the scaling and control-plane levels.

use super::peers::PortMapping;

/// Ports behind every target: pong (TCP), iperf3 (TCP), udpsink (UDP).
pub const PONG_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;
pub const UDP_PORT: u16 = 7000;
pub const PUBLISHED_PONG: u16 = 8080;
pub const PUBLISHED_IPERF: u16 = 8081;
pub const PUBLISHED_UDP: u16 = 8082;
pub const OUTSIDE_PONG: u16 = 9000;
pub const OUTSIDE_IPERF: u16 = 9001;
pub const OUTSIDE_UDP: u16 = 9002;
/// The same, as [pong, iperf3, udpsink] triples: in a server container or
/// the veth ceiling's host, published on the host, in the outside.
pub const CONTAINER_PORTS: [u16; 3] = [PONG_PORT, IPERF_PORT, UDP_PORT];
pub const PUBLISHED_PORTS: [u16; 3] = [PUBLISHED_PONG, PUBLISHED_IPERF, PUBLISHED_UDP];
pub const OUTSIDE_PORTS: [u16; 3] = [OUTSIDE_PONG, OUTSIDE_IPERF, OUTSIDE_UDP];
/// The three published ports of the bench server.
pub const PUBLISHED: [PortMapping; 3] = [
    (PUBLISHED_PONG, PONG_PORT, "tcp"),
    (PUBLISHED_IPERF, IPERF_PORT, "tcp"),
    (PUBLISHED_UDP, UDP_PORT, "udp"),
];
/// Where the host's client reaches a published port (as `curl localhost:8080`).
pub const LOOPBACK: &str = "127.0.0.1";
/// The scaling probe's published port, the bulk range's first host port and
/// the control plane's first host port.
pub const PROBE_PORT: u16 = 8090;
pub const BULK_FIRST: u32 = 20000;
pub const BULK_CONTAINER_FIRST: u32 = 1000;
pub const CONTROL_FIRST: u32 = 40000;
pub const NETWORK: &str = "bench";

/// (path, metric) pairs measured on every configuration: all of them, in
/// report order (paths: published, snat, host, c2c).
pub const FULL_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "gbit4"),
    ("published", "udp_pps"),
    ("published", "rr"),
    ("published", "conn_s"),
    ("snat", "gbit1"),
    ("snat", "gbit4"),
    ("snat", "udp_pps"),
    ("snat", "rr"),
    ("snat", "conn_s"),
    ("host", "gbit1"),
    ("host", "gbit4"),
    ("host", "udp_pps"),
    ("host", "rr"),
    ("host", "conn_s"),
    ("c2c", "gbit1"),
    ("c2c", "gbit4"),
    ("c2c", "udp_pps"),
    ("c2c", "rr"),
    ("c2c", "conn_s"),
];
/// Every path and every metric at least once.
pub const QUICK_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "gbit4"),
    ("published", "udp_pps"),
    ("published", "rr"),
    ("published", "conn_s"),
    ("snat", "udp_pps"),
    ("snat", "conn_s"),
    ("host", "gbit1"),
    ("host", "conn_s"),
    ("c2c", "gbit1"),
    ("c2c", "rr"),
];
/// What the profiling pass runs on the eBPF configuration.
/// rr shows the cost per packet of a known flow, conn_s adds the new flows'.
pub const PROFILE_PLAN: &[(&str, &str)] = &[
    ("published", "rr"),
    ("published", "conn_s"),
    ("published", "udp_pps"),
    ("snat", "rr"),
    ("snat", "conn_s"),
    ("snat", "udp_pps"),
    ("host", "rr"),
    ("host", "conn_s"),
    ("c2c", "rr"),
];

/// What a run measures and how long.
pub struct Mode {
    pub reps: usize,
    /// Seconds per throughput or conn/s run.
    pub secs: u32,
    pub plan: &'static [(&'static str, &'static str)],
    /// Published ports present in the scaling runs.
    pub levels: &'static [usize],
    /// Containers of the control-plane run (one network; each command's
    /// time is kept, so the 1st, 100th and last can be compared).
    pub containers: usize,
}

pub const QUICK: Mode = Mode {
    reps: 1,
    secs: 1,
    plan: QUICK_PLAN,
    levels: &[1, 100, 1000],
    containers: 20,
};
pub const FULL: Mode = Mode {
    reps: 3,
    secs: 2,
    plan: FULL_PLAN,
    levels: &[1, 100, 1000, 10_000],
    containers: 1000,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    Veth,
    Iptables,
    Ebpf,
    Cni,
    Netavark,
    Nft,
}

impl Config {
    pub const ALL: [Config; 6] = [
        Config::Veth,
        Config::Iptables,
        Config::Ebpf,
        Config::Cni,
        Config::Netavark,
        Config::Nft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Veth => "veth",
            Config::Iptables => "iptables",
            Config::Ebpf => "ebpf",
            Config::Cni => "cni",
            Config::Netavark => "netavark",
            Config::Nft => "nft",
        }
    }

    /// One letter in the sandbox prefix, distinct per configuration
    /// (`nft` and `netavark` share their first letter).
    pub fn tag(self) -> char {
        match self {
            Config::Nft => 'f',
            other => other.name().chars().next().expect("non-empty"),
        }
    }

    pub fn is_netctl(self) -> bool {
        matches!(self, Config::Iptables | Config::Ebpf)
    }

    /// Measured with many published ports: netctl's datapaths and the
    /// nftables peer (one map lookup per new connection, whatever the
    /// number of ports).
    pub fn scales(self) -> bool {
        self.is_netctl() || self == Config::Nft
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn every_configuration_has_its_own_sandbox_letter() {
        let mut tags: Vec<char> = Config::ALL.iter().map(|c| c.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), Config::ALL.len(), "{tags:?}");
    }
}
