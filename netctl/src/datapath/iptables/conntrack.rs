//! The kernel's conntrack entries of the host namespace, on the iptables
//! datapath. NAT is decided on a flow's first packet and kept in its
//! conntrack entry, and a UDP flow has no end: every packet refreshes the
//! entry. So a UDP client that keeps sending (a fixed source port, every
//! few seconds) would keep going to a container removed since, or to the
//! host itself if some packet came while no rule published the port, and
//! never reach the container that publishes the port now (Docker's
//! long-standing bug). netctl deletes those entries with `conntrack`
//! (conntrack-tools), in the host namespace it runs in:
//! - when an endpoint goes, every entry from or to its address (a
//!   container that reuses the address must not inherit them either);
//! - once UDP ports are published, every entry that takes one of their
//!   host ports on a host address anywhere but to the container now
//!   publishing it. Flows to other hosts that merely use the same port
//!   number (the host's own DNS, when 53/udp is published) are kept.
//!
//! Entries that are already gone are no error. TCP needs none of this: a
//! stale TCP flow is answered with a reset and ends.
//!
//! The table is read from `/proc/thread-self/net/nf_conntrack` (the
//! namespace's, without a process), and `conntrack -D` runs only when some
//! entry is to go: spawning it twice per removed endpoint, with nothing to
//! delete most of the time, was most of an iptables `container rm`. Where
//! the kernel has no such file, `conntrack` does all of it as before.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use crate::{
    error::{Error, Result},
    model::{PortMapping, Protocol},
};

pub(super) const CONNTRACK: &str = "conntrack";

/// What `conntrack -D` says on stderr (and exits 1) when nothing matched.
const NOTHING_DELETED: &str = " 0 flow entries have been deleted";

/// One direction of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

/// An entry: the tuple of its first packet, and the one its replies carry
/// (where NAT shows: a DNATed flow's replies come from the container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    original: Tuple,
    reply: Tuple,
}

impl Flow {
    /// One line of `conntrack -L -p udp`:
    /// `udp 17 29 src=A dst=B sport=P dport=Q [UNREPLIED] src=C dst=D sport=R dport=S mark=0 use=1`
    /// (the first `src`..`dport` are the original direction, the second the reply).
    fn parse(line: &str) -> Option<Flow> {
        let fields: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let nth = |key: &str, n: usize| {
            fields
                .iter()
                .filter(|(k, _)| *k == key)
                .nth(n)
                .map(|(_, v)| *v)
        };
        let tuple = |n| {
            Some(Tuple {
                src: nth("src", n)?.parse().ok()?,
                dst: nth("dst", n)?.parse().ok()?,
                sport: nth("sport", n)?.parse().ok()?,
                dport: nth("dport", n)?.parse().ok()?,
            })
        };
        Some(Flow {
            original: tuple(0)?,
            reply: tuple(1)?,
        })
    }

    /// Whether the flow takes `port`'s host port on a host address
    /// (`local`, or the port's own address) somewhere else than to the
    /// container publishing it. IPv4 flows only: a port bound to one IPv6
    /// address takes none.
    fn is_stale_for(&self, port: &PortMapping, local: &BTreeSet<Ipv4Addr>) -> bool {
        let to = self.original;
        let on_host_port = to.dport == port.host_port
            && port.is_ipv4()
            && match port.host_ip4() {
                Some(ip) => to.dst == ip,
                None => to.dst.is_loopback() || local.contains(&to.dst),
            };
        let to_container =
            self.reply.src == port.container_ip && self.reply.sport == port.container_port;
        on_host_port && !to_container
    }
}

/// Runs `conntrack ARGS`; its stdout. A delete that matched nothing is
/// not an error.
fn conntrack(object: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(CONNTRACK)
        .args(args)
        .output()
        .map_err(|e| Error::system(object, format!("{CONNTRACK}: {e} (install conntrack)")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains(NOTHING_DELETED) {
        let first = super::first_complaint(&out.stderr);
        let reason = if first.is_empty() {
            format!("{CONNTRACK} failed ({})", out.status)
        } else {
            first
        };
        return Err(Error::system(object, reason));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespace's conntrack table as the kernel lists it (one entry a
/// line: `ipv4 2 udp 17 29 src=A dst=B sport=P dport=Q ... src=C ...`),
/// or `None` when the kernel offers no such file.
fn proc_table() -> Option<String> {
    std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").ok()
}

/// The source address of each direction of a listed entry (any protocol,
/// either family: the kernel writes IPv6 addresses in full, which parse).
fn sources(line: &str) -> impl Iterator<Item = IpAddr> + '_ {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("src=")?.parse().ok())
}

/// Deletes every entry from `ip` (its own flows) or answered by `ip`
/// (flows to it, translated or not).
pub(super) fn forget_address(ip: impl Into<IpAddr>) -> Result<()> {
    let ip = ip.into();
    if let Some(table) = proc_table() {
        if !table.lines().any(|line| sources(line).any(|src| src == ip)) {
            return Ok(());
        }
    }
    let object = format!("conntrack entries of {ip}");
    let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    let ip = ip.to_string();
    conntrack(&object, &["-D", "-f", family, "--orig-src", &ip])?;
    conntrack(&object, &["-D", "-f", family, "--reply-src", &ip])?;
    Ok(())
}

/// The IPv4 addresses of the host namespace's interfaces.
fn local_addresses() -> Result<BTreeSet<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::system("host addresses", format!("getifaddrs: {e}")))?;
    Ok(addrs
        .filter_map(|a| Some(a.address?.as_sockaddr_in()?.ip()))
        .collect())
}

/// After `ports` were published: deletes the UDP entries that take one of
/// their host ports elsewhere (see the module's documentation).
pub(super) fn forget_stale_udp(ports: &[PortMapping]) -> Result<()> {
    let udp: Vec<&PortMapping> = ports
        .iter()
        .filter(|p| p.protocol == Protocol::Udp)
        .collect();
    if udp.is_empty() {
        return Ok(());
    }
    let object = "conntrack entries of published UDP ports";
    let local = local_addresses()?;
    let listed = match proc_table() {
        // The kernel's lines carry the protocol's name third.
        Some(table) => table
            .lines()
            .filter(|line| line.split_whitespace().nth(2) == Some("udp"))
            .map(|line| format!("{line}\n"))
            .collect(),
        None => conntrack(object, &["-L", "-p", "udp"])?,
    };
    for flow in listed.lines().filter_map(Flow::parse) {
        if !udp.iter().any(|p| flow.is_stale_for(p, &local)) {
            continue;
        }
        let to = flow.original;
        let (src, dst) = (to.src.to_string(), to.dst.to_string());
        let (sport, dport) = (to.sport.to_string(), to.dport.to_string());
        conntrack(
            object,
            &[
                "-D",
                "-p",
                "udp",
                "--orig-src",
                &src,
                "--orig-dst",
                &dst,
                "--orig-port-src",
                &sport,
                "--orig-port-dst",
                &dport,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::iptables::fixtures::port;

    fn flow(line: &str) -> Flow {
        Flow::parse(line).unwrap_or_else(|| panic!("unparsed: {line}"))
    }

    #[test]
    fn parses_both_directions() {
        let f = flow(
            "udp      17 29 src=198.51.100.2 dst=198.51.100.1 sport=40000 dport=5353 \
             [UNREPLIED] src=172.18.0.2 dst=198.51.100.2 sport=53 dport=40000 mark=0 use=1",
        );
        assert_eq!(
            f.original,
            Tuple {
                src: [198, 51, 100, 2].into(),
                dst: [198, 51, 100, 1].into(),
                sport: 40000,
                dport: 5353
            }
        );
        assert_eq!(
            f.reply,
            Tuple {
                src: [172, 18, 0, 2].into(),
                dst: [198, 51, 100, 2].into(),
                sport: 53,
                dport: 40000
            }
        );
        assert_eq!(Flow::parse("conntrack v1.4.7: 1 flow entries"), None);
        // The kernel's own listing parses alike.
        let f = flow(
            "ipv4     2 udp      17 29 src=198.51.100.2 dst=198.51.100.1 sport=40000 \
             dport=5353 [UNREPLIED] src=172.18.0.2 dst=198.51.100.2 sport=53 dport=40000 \
             mark=0 zone=0 use=2",
        );
        assert_eq!(f.reply.src, Ipv4Addr::new(172, 18, 0, 2));
    }

    #[test]
    fn both_sources_of_any_protocol_are_found() {
        let icmp = "ipv4     2 icmp     1 29 src=172.18.0.2 dst=198.51.100.2 type=8 code=0 \
                    id=7 src=198.51.100.2 dst=198.51.100.1 type=0 code=0 id=7 mark=0 use=1";
        let found: Vec<IpAddr> = sources(icmp).collect();
        assert_eq!(
            found,
            [
                IpAddr::from([172, 18, 0, 2]),
                IpAddr::from([198, 51, 100, 2])
            ]
        );
        // The kernel writes IPv6 addresses without shortening them.
        let v6 = "ipv6     10 udp      17 29 src=fd00:0000:0000:0000:0000:0000:0000:0002 \
                  dst=fd00:0000:0000:0000:0000:0000:0000:0001 sport=1 dport=2 \
                  src=fd00:0000:0000:0000:0000:0000:0000:0001 \
                  dst=fd00:0000:0000:0000:0000:0000:0000:0002 sport=2 dport=1 mark=0 use=1";
        let found: Vec<IpAddr> = sources(v6).collect();
        assert_eq!(found[0], "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn stale_means_a_host_address_and_port_that_go_elsewhere() {
        let local: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(198, 51, 100, 1)].into();
        let any = port(Protocol::Udp, None, 5353, [172, 18, 0, 3], 53, "front");
        let entry = |dst: &str, dport: u16, reply_src: &str, reply_sport: u16| {
            flow(&format!(
                "udp 17 29 src=198.51.100.2 dst={dst} sport=40000 dport={dport} \
                 src={reply_src} dst=198.51.100.2 sport={reply_sport} dport=40000"
            ))
        };
        // To the removed container, or to the host itself (no rule then).
        assert!(entry("198.51.100.1", 5353, "172.18.0.2", 53).is_stale_for(&any, &local));
        assert!(entry("198.51.100.1", 5353, "198.51.100.1", 5353).is_stale_for(&any, &local));
        assert!(entry("127.0.0.1", 5353, "127.0.0.1", 5353).is_stale_for(&any, &local));
        // Already to the new owner; another port; another host's port 5353.
        assert!(!entry("198.51.100.1", 5353, "172.18.0.3", 53).is_stale_for(&any, &local));
        assert!(!entry("198.51.100.1", 5354, "198.51.100.1", 5354).is_stale_for(&any, &local));
        assert!(!entry("192.0.2.9", 5353, "192.0.2.9", 5353).is_stale_for(&any, &local));
        // Published on one address: only that address counts.
        let one = port(
            Protocol::Udp,
            Some([127, 0, 0, 1]),
            5353,
            [172, 18, 0, 3],
            53,
            "front",
        );
        assert!(!entry("198.51.100.1", 5353, "198.51.100.1", 5353).is_stale_for(&one, &local));
        assert!(entry("127.0.0.1", 5353, "127.0.0.1", 5353).is_stale_for(&one, &local));
    }
}
