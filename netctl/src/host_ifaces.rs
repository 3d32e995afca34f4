//! The host's own interfaces: every link of the host namespace a
//! container's packet can leave by, with its IPv4 addresses. Pure: the
//! links and addresses are read by the caller (`ops`), on every command
//! and by `netctl watch`, so that the datapath follows the host's
//! addresses as they change (DHCP, a VPN coming up, a second LAN).
//!
//! Which links: not loopback, not enslaved to a bridge (a bridge port has
//! no address of its own: the bridge is the interface), and not netctl's
//! (a network's bridge or an endpoint's veth, by the state or by the names
//! netctl gives, so that a link a command is making right now never counts).

use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::{ipam, netlink::LinkInfo, state::State};

/// One host interface and its IPv4 addresses, primary first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIface {
    pub index: u32,
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
}

impl HostIface {
    /// The address a packet leaving by this interface is translated to
    /// (MASQUERADE's choice: the first primary address).
    pub fn primary(&self) -> Option<Ipv4Addr> {
        self.addresses.first().copied()
    }
}

/// The host interfaces among `links`, with their addresses from `addrs`
/// (index, address; primaries first), in the order of `links`.
pub fn select(links: &[LinkInfo], addrs: &[(u32, Ipv4Addr)], state: &State) -> Vec<HostIface> {
    let netctl_links: BTreeSet<&str> = state
        .networks
        .values()
        .map(|n| n.bridge.as_str())
        .chain(
            state
                .containers
                .values()
                .flat_map(|c| c.endpoints.iter().map(|ep| ep.host_veth.as_str())),
        )
        .collect();
    links
        .iter()
        .filter(|l| {
            !l.loopback
                && l.master.is_none()
                && !ipam::is_netctl_link_name(&l.name)
                && !netctl_links.contains(l.name.as_str())
        })
        .map(|l| HostIface {
            index: l.index,
            name: l.name.clone(),
            addresses: addrs
                .iter()
                .filter(|(index, _)| *index == l.index)
                .map(|(_, ip)| *ip)
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.to_owned(),
            up: true,
            mac: None,
            master: None,
            loopback: false,
        }
    }

    #[test]
    fn keeps_the_interfaces_a_packet_can_leave_by() {
        let mut lo = link(1, "lo");
        lo.loopback = true;
        let mut port = link(5, "eth1");
        port.master = Some(6);
        let links = vec![
            lo,
            link(2, "uplink0"),
            link(3, "nc-front"),
            link(4, "ve0123abcd"),
            port,
            link(6, "br0"),
            link(7, "wg0"),
        ];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let addrs = vec![
            (1, ip("127.0.0.1")),
            (2, ip("198.51.100.1")),
            (3, ip("172.18.0.1")),
            (6, ip("203.0.113.1")),
            (2, ip("198.51.100.9")),
        ];
        let found = select(&links, &addrs, &State::default());
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["uplink0", "br0", "wg0"]);
        assert_eq!(found[0].addresses, [ip("198.51.100.1"), ip("198.51.100.9")]);
        assert_eq!(found[0].primary(), Some(ip("198.51.100.1")));
        assert_eq!(found[2].primary(), None);
    }
}
