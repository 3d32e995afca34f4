//! IPv6 address management of dual-stack networks (`--ipv6`): the IPv6
//! subnet and gateway of a network, the IPv6 address of each endpoint.
//!
//! Pure, as `ipam.rs`: the caller passes what the state holds and gets a
//! value or an [`Error::Invalid`] naming the object and the reason.
//! Addresses are handed out from the bottom of the subnet, as IPv4's are:
//! the MAC stays the one derived from the IPv4 address (`Mac::for_ip`), so
//! nothing here depends on it.

use std::{collections::BTreeSet, net::Ipv6Addr};

use ipnet::Ipv6Net;

use crate::{
    error::{Error, Result},
    ipam::{self, shown},
};

/// The longest prefix an IPv6 subnet may have. Its first address is the
/// subnet-router anycast address (RFC 4291 2.6.1), which no host may take,
/// so a /126 is the smallest subnet that still holds a gateway and one
/// container. Docker refuses subnets that cannot hold the addresses it
/// must give out in the same way (rather than requiring a /64: netctl
/// never derives addresses from MACs, so nothing needs 64 host bits).
const MAX_PREFIX: u8 = 126;

/// Prefix length of the unique-local subnet `--ipv6` takes by itself: one
/// /64, the size every IPv6 link is expected to have (RFC 7421).
const ULA_PREFIX: u8 = 64;

/// Parses an IPv6 `--subnet` (host bits refused, as for IPv4).
pub fn parse_subnet(s: &str) -> Result<Ipv6Net> {
    let subnet: Ipv6Net = s.parse().map_err(|_| {
        Error::invalid(
            format!("subnet {}", shown(s)),
            "not a valid IPv6 CIDR (expected e.g. fd00:1::/64)",
        )
    })?;
    check_subnet(subnet)
}

/// The rules of a network's IPv6 subnet.
pub fn check_subnet(subnet: Ipv6Net) -> Result<Ipv6Net> {
    let object = || format!("subnet {subnet}");
    if subnet.prefix_len() > MAX_PREFIX {
        return Err(Error::invalid(
            object(),
            format!(
                "prefix /{} cannot hold the subnet-router anycast address, a gateway \
                 and a container (at most /{MAX_PREFIX})",
                subnet.prefix_len()
            ),
        ));
    }
    if subnet.trunc() != subnet {
        return Err(Error::invalid(
            object(),
            format!("host bits are set: it should be {}", subnet.trunc()),
        ));
    }
    let addr = subnet.network();
    if addr.is_multicast() || addr.is_loopback() || addr.is_unspecified() || is_link_local(addr) {
        return Err(Error::invalid(
            object(),
            "is not a unicast range a network can route (multicast, loopback, \
             unspecified or link-local)",
        ));
    }
    Ok(subnet)
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Refuses a subnet that overlaps another network's IPv6 subnet.
pub fn check_overlap(subnet: Ipv6Net, existing: &[(&str, Ipv6Net)]) -> Result<()> {
    match existing
        .iter()
        .find(|(_, other)| subnet.contains(&other.network()) || other.contains(&subnet.network()))
    {
        Some((name, other)) => Err(Error::invalid(
            format!("subnet {subnet}"),
            format!("overlaps network {} ({other})", shown(name)),
        )),
        None => Ok(()),
    }
}

/// 64-bit FNV-1a: a stable hash (the same on every build and host), which
/// is all the derivation below needs; it is no secret.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The unique-local /64 a network created with `--ipv6` and no IPv6
/// subnet takes: `fd` + a 40-bit global id hashed from the host id and the
/// network name (RFC 4193's layout; its random global id is replaced by a
/// hash so that the same network on the same host always gets the same
/// prefix: a network removed and made again keeps its addresses), then a
/// 16-bit subnet id, 0 unless another network already holds that /64
/// (then the next free one of the same /48).
pub fn ula_subnet(host_id: &str, network: &str, existing: &[Ipv6Net]) -> Result<Ipv6Net> {
    let hash = fnv1a64(
        host_id
            .bytes()
            .chain(std::iter::once(0))
            .chain(network.bytes()),
    );
    let global = hash & 0xff_ffff_ffff;
    let base = (0xfdu128 << 120) | (u128::from(global) << 80);
    (0..=u16::MAX)
        .map(|subnet_id| {
            let addr = Ipv6Addr::from(base | (u128::from(subnet_id) << 64));
            Ipv6Net::new(addr, ULA_PREFIX).expect("valid prefix")
        })
        .find(|candidate| {
            existing.iter().all(|other| {
                !candidate.contains(&other.network()) && !other.contains(&candidate.network())
            })
        })
        .ok_or_else(|| {
            Error::invalid(
                format!("network {}", shown(network)),
                "every /64 of its unique-local /48 is taken; give an IPv6 --subnet",
            )
        })
}

/// The gateway without `--gateway`: the subnet's first address after the
/// subnet-router anycast one (`fd00:1::1` for `fd00:1::/64`).
pub fn default_gateway(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Why `ip` cannot be a host of `subnet`, if it cannot.
fn not_a_host(subnet: Ipv6Net, ip: Ipv6Addr) -> Option<String> {
    if !subnet.contains(&ip) {
        Some(format!("outside subnet {subnet}"))
    } else if ip == subnet.network() {
        Some(format!("is the subnet-router anycast address of {subnet}"))
    } else {
        None
    }
}

/// Checks an IPv6 `--gateway`: a host address of the subnet.
pub fn check_gateway(subnet: Ipv6Net, gateway: Ipv6Addr) -> Result<()> {
    match not_a_host(subnet, gateway) {
        Some(reason) => Err(Error::invalid(format!("gateway {gateway}"), reason)),
        None => Ok(()),
    }
}

/// The lowest free address of the subnet: never the subnet-router anycast
/// address or the gateway. At most `used.len() + 2` candidates are looked
/// at, however large the subnet.
pub fn allocate(subnet: Ipv6Net, gateway: Ipv6Addr, used: &BTreeSet<Ipv6Addr>) -> Result<Ipv6Addr> {
    let first = u128::from(subnet.network()).saturating_add(1);
    let last = u128::from(subnet.broadcast());
    (first..=last)
        .map(Ipv6Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or_else(|| Error::invalid(format!("subnet {subnet}"), "no free address"))
}

/// Checks an address asked for with `--ip6`.
pub fn reserve(
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    used: &BTreeSet<Ipv6Addr>,
    ip: Ipv6Addr,
) -> Result<()> {
    ipam::check_asked("ip6", subnet, not_a_host(subnet, ip), gateway, used, ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn ula_is_stable_unique_local_and_per_name() {
        let a = ula_subnet("netctl", "front", &[]).unwrap();
        assert_eq!(a, ula_subnet("netctl", "front", &[]).unwrap());
        assert_eq!(a.prefix_len(), 64);
        assert_eq!(a.network().segments()[0] >> 8, 0xfd);
        // The subnet id (fourth group) is 0 when nothing is in the way.
        assert_eq!(a.network().segments()[3], 0);
        assert_eq!(a, a.trunc());
        let b = ula_subnet("netctl", "back", &[]).unwrap();
        let c = ula_subnet("sandbox-x", "front", &[]).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        // The hash covers the boundary between host id and name.
        assert_ne!(
            ula_subnet("ab", "c", &[]).unwrap(),
            ula_subnet("a", "bc", &[]).unwrap()
        );
        check_subnet(a).unwrap();
    }

    #[test]
    fn ula_steps_past_a_taken_64() {
        let a = ula_subnet("netctl", "front", &[]).unwrap();
        let next = ula_subnet("netctl", "front", &[a]).unwrap();
        assert_eq!(next.network().segments()[..3], a.network().segments()[..3]);
        assert_eq!(next.network().segments()[3], 1);
        // A wider subnet holding the first /64 counts too.
        let wide = Ipv6Net::new(a.network(), 63).unwrap();
        assert_eq!(
            ula_subnet("netctl", "front", &[wide])
                .unwrap()
                .network()
                .segments()[3],
            2
        );
    }

    #[test]
    fn subnets_are_checked() {
        assert_eq!(parse_subnet("fd00:1::/64").unwrap(), net("fd00:1::/64"));
        parse_subnet("2001:db8:1::/126").unwrap();
        let err = |s: &str| parse_subnet(s).unwrap_err().to_string();
        assert_eq!(
            err("fd00::/127"),
            "subnet fd00::/127: prefix /127 cannot hold the subnet-router anycast address, \
             a gateway and a container (at most /126)"
        );
        assert_eq!(
            err("fd00::5/64"),
            "subnet fd00::5/64: host bits are set: it should be fd00::/64"
        );
        assert_eq!(
            err("banana"),
            "subnet banana: not a valid IPv6 CIDR (expected e.g. fd00:1::/64)"
        );
        assert!(
            err("fe80::/64").contains("link-local"),
            "{}",
            err("fe80::/64")
        );
        assert!(err("ff02::/64").contains("multicast"));
        assert!(err("::/0").contains("unspecified"));
    }

    #[test]
    fn overlaps_are_refused_both_ways() {
        let existing = [("front", net("fd00:1::/64"))];
        check_overlap(net("fd00:2::/64"), &existing).unwrap();
        for s in ["fd00:1::/64", "fd00::/16", "fd00:1::/80"] {
            assert_eq!(
                check_overlap(net(s), &existing).unwrap_err().to_string(),
                format!("subnet {s}: overlaps network front (fd00:1::/64)")
            );
        }
    }

    #[test]
    fn addresses_are_handed_out_from_the_bottom() {
        let subnet = net("fd00:1::/64");
        let gw = default_gateway(subnet);
        assert_eq!(gw, "fd00:1::1".parse::<Ipv6Addr>().unwrap());
        let mut used = BTreeSet::new();
        let first = allocate(subnet, gw, &used).unwrap();
        assert_eq!(first, "fd00:1::2".parse::<Ipv6Addr>().unwrap());
        used.insert(first);
        assert_eq!(
            allocate(subnet, gw, &used).unwrap(),
            "fd00:1::3".parse::<Ipv6Addr>().unwrap()
        );
        // A /126 holds exactly one container besides its gateway.
        let tiny = net("fd00:2::/126");
        let tiny_gw = default_gateway(tiny);
        let mut used = BTreeSet::new();
        used.insert(allocate(tiny, tiny_gw, &used).unwrap());
        used.insert(allocate(tiny, tiny_gw, &used).unwrap());
        assert_eq!(
            allocate(tiny, tiny_gw, &used).unwrap_err().to_string(),
            "subnet fd00:2::/126: no free address"
        );
    }

    #[test]
    fn asked_addresses_and_gateways_are_checked() {
        let subnet = net("fd00:1::/64");
        let gw = default_gateway(subnet);
        let used: BTreeSet<Ipv6Addr> = ["fd00:1::2".parse().unwrap()].into();
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        reserve(subnet, gw, &used, ip("fd00:1::99")).unwrap();
        let err = |s: &str| reserve(subnet, gw, &used, ip(s)).unwrap_err().to_string();
        assert_eq!(
            err("fd00:2::5"),
            "ip6 fd00:2::5: outside subnet fd00:1::/64"
        );
        assert_eq!(
            err("fd00:1::"),
            "ip6 fd00:1::: is the subnet-router anycast address of fd00:1::/64"
        );
        assert_eq!(
            err("fd00:1::1"),
            "ip6 fd00:1::1: is the gateway of fd00:1::/64"
        );
        assert_eq!(err("fd00:1::2"), "ip6 fd00:1::2: already in use");
        check_gateway(subnet, ip("fd00:1::fe")).unwrap();
        assert_eq!(
            check_gateway(subnet, ip("fd00:9::1"))
                .unwrap_err()
                .to_string(),
            "gateway fd00:9::1: outside subnet fd00:1::/64"
        );
    }
}
