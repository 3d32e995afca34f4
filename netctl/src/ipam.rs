//! IPv4 address management with Docker's semantics: subnets and gateways of
//! networks, addresses of containers, and the names derived from them
//! (bridges, veths; MACs are `model::Mac::for_ip`).
//!
//! Everything here is pure: the caller passes what the state holds, and gets
//! back a value or an [`Error::Invalid`] that names the object and the reason.

use std::{borrow::Cow, collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::{
    error::{Error, Result},
    model::DEFAULT_NETWORK,
};

/// The longest prefix a network may have: a /30 still holds the network and
/// broadcast addresses, a gateway and one container.
const MAX_PREFIX: u8 = 30;

/// Docker's limit on container and network names.
const MAX_NAME_LEN: usize = 64;

/// Interface names hold at most IFNAMSIZ - 1 = 15 bytes (the 16th is the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// The default network keeps Docker's single well-known bridge, under our own
/// name so that it never collides with a real `docker0`.
const DEFAULT_BRIDGE: &str = "netctl0";

/// Prefix of the bridges of user-defined networks.
const BRIDGE_PREFIX: &str = "nc-";

/// Shows user-supplied text inside a one-line error: as is when it is plain,
/// quoted and escaped when it is empty or holds spaces or control characters
/// (a stray newline must not split the message).
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && !c.is_control()) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{text:?}"))
    }
}

/// Parses a `--subnet`. Docker refuses host bits rather than silently
/// truncating them, since `172.18.0.5/16` usually means a typo.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net> {
    let object = || format!("subnet {}", shown(s));
    let subnet: Ipv4Net = s.parse().map_err(|_| {
        let reason = if s.parse::<ipnet::Ipv6Net>().is_ok() {
            "IPv6 is not supported"
        } else {
            "not a valid IPv4 CIDR (expected e.g. 172.18.0.0/16)"
        };
        Error::invalid(object(), reason)
    })?;
    check_subnet_named(subnet, object)
}

/// Checks a subnet that was not parsed by [`parse_subnet`] (a delegated
/// IPAM's answer, a library caller's value) by the same rules.
pub fn check_subnet(subnet: Ipv4Net) -> Result<Ipv4Net> {
    check_subnet_named(subnet, || format!("subnet {subnet}"))
}

/// The rules of a network's subnet; `object` names it in the error.
fn check_subnet_named(subnet: Ipv4Net, object: impl Fn() -> String) -> Result<Ipv4Net> {
    if subnet.prefix_len() > MAX_PREFIX {
        return Err(Error::invalid(
            object(),
            format!(
                "prefix /{} leaves no room for a gateway and a container (at most /{MAX_PREFIX})",
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
    Ok(subnet)
}

/// Parses an IPv4 address given for an option; `what` names the option
/// (`gateway`, `ip`) so that the error says which one was wrong.
pub fn parse_ip(what: &str, s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| {
        let reason = if s.parse::<std::net::Ipv6Addr>().is_ok() {
            "IPv6 is not supported"
        } else {
            "not a valid IPv4 address"
        };
        Error::invalid(format!("{what} {}", shown(s)), reason)
    })
}

/// The gateway Docker gives a network without `--gateway`: its first host
/// address (172.18.0.1 for 172.18.0.0/16).
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// Why `ip` cannot be a host of `subnet`, if it cannot.
fn not_a_host(subnet: Ipv4Net, ip: Ipv4Addr) -> Option<String> {
    if !subnet.contains(&ip) {
        Some(format!("outside subnet {subnet}"))
    } else if ip == subnet.network() {
        Some(format!("is the network address of {subnet}"))
    } else if ip == subnet.broadcast() {
        Some(format!("is the broadcast address of {subnet}"))
    } else {
        None
    }
}

/// Checks a `--gateway`: the bridge takes this address, so it must be a host
/// address of the subnet.
pub fn check_gateway(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
    match not_a_host(subnet, gateway) {
        Some(reason) => Err(Error::invalid(format!("gateway {gateway}"), reason)),
        None => Ok(()),
    }
}

/// Two CIDRs overlap exactly when one contains the other's first address.
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses a subnet that overlaps an existing network's: routes and the
/// bridges' addresses would be ambiguous.
pub fn check_overlap(subnet: Ipv4Net, existing: &[(&str, Ipv4Net)]) -> Result<()> {
    match existing.iter().find(|(_, other)| overlaps(subnet, *other)) {
        Some((name, other)) => Err(Error::invalid(
            format!("subnet {subnet}"),
            format!("overlaps network {} ({other})", shown(name)),
        )),
        None => Ok(()),
    }
}

/// Docker's default address pools, in the order it tries them:
/// 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/20 … 192.168.240.0/20.
fn default_pools() -> impl Iterator<Item = Ipv4Net> {
    let wide = (17..=31).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let narrow = (0..16).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    wide.chain(narrow).map(|net| net.expect("valid prefix"))
}

/// Chooses the subnet of a network created without `--subnet`: the first
/// default pool that overlaps no existing network.
pub fn pick_subnet(existing: &[Ipv4Net]) -> Result<Ipv4Net> {
    default_pools()
        .find(|pool| !existing.iter().any(|other| overlaps(*pool, *other)))
        .ok_or_else(|| {
            Error::invalid(
                "default address pools",
                "all of 172.17.0.0/16-172.31.0.0/16 and 192.168.0.0/20-192.168.240.0/20 \
                 overlap existing networks; give --subnet",
            )
        })
}

/// Gives a container the lowest free host address of the subnet. The gateway
/// and the network and broadcast addresses are never handed out.
pub fn allocate(subnet: Ipv4Net, gateway: Ipv4Addr, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr> {
    let first = u32::from(subnet.network()).saturating_add(1);
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or_else(|| Error::invalid(format!("subnet {subnet}"), "no free address"))
}

/// Checks an address the user asked for with `--ip`.
pub fn reserve(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    ip: Ipv4Addr,
) -> Result<()> {
    check_asked("ip", subnet, not_a_host(subnet, ip), gateway, used, ip)
}

/// The checks of an address asked for (`--ip`, `--ip6`, named `what`), of
/// either family: not a host of its subnet (`not_a_host`, the family's
/// reason), the gateway, or in use.
pub(crate) fn check_asked<A: Copy + Ord + std::fmt::Display>(
    what: &str,
    subnet: impl std::fmt::Display,
    not_a_host: Option<String>,
    gateway: A,
    used: &BTreeSet<A>,
    ip: A,
) -> Result<()> {
    let reason = not_a_host.or_else(|| {
        if ip == gateway {
            Some(format!("is the gateway of {subnet}"))
        } else if used.contains(&ip) {
            Some("already in use".to_owned())
        } else {
            None
        }
    });
    match reason {
        Some(reason) => Err(Error::invalid(format!("{what} {ip}"), reason)),
        None => Ok(()),
    }
}

/// Docker's shape of names, as a pattern for messages: the one rule for
/// container and network names, and the CNI spec's for container ids.
pub const NAME_PATTERN: &str = "[a-zA-Z0-9][a-zA-Z0-9_.-]";

/// Whether `text` has the shape of [`NAME_PATTERN`] (`*` after the second
/// class: any length from one character).
pub fn has_name_shape(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a network or container name against Docker's rule
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters. Names end up in
/// interface names, namespace names and file names, hence the narrow set.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let object = || format!("{kind} {name:?}");
    if !has_name_shape(name) {
        return Err(Error::invalid(
            object(),
            format!("invalid name: only {NAME_PATTERN} allowed"),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            object(),
            format!("invalid name: longer than {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(())
}

/// The Linux bridge of a network: `netctl0` for the default network, else
/// `nc-NAME`. The name is checked here rather than truncated, since two
/// truncated names could collide.
pub fn bridge_name(network: &str) -> Result<String> {
    if network == DEFAULT_NETWORK {
        return Ok(DEFAULT_BRIDGE.to_owned());
    }
    let object = || format!("network {network:?}");
    if network.is_empty()
        || network
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(Error::invalid(
            object(),
            "name cannot become an interface name (empty, or holds '/', ':' or whitespace)",
        ));
    }
    let ifname = format!("{BRIDGE_PREFIX}{network}");
    if ifname.len() > MAX_IFNAME_LEN {
        let head: String = ifname.chars().take(MAX_IFNAME_LEN - 1).collect();
        return Err(Error::invalid(
            object(),
            format!(
                "name cannot become an interface name ({head}… exceeds {MAX_IFNAME_LEN} characters)"
            ),
        ));
    }
    Ok(ifname)
}

/// Checks a name the kernel must accept as an interface name: 1 to 15
/// characters, none of them '/', ':' or whitespace, not `.` or `..`.
pub fn check_ifname(object: &str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(Error::invalid(
            object,
            format!(
                "{name:?} is not an interface name (1 to {MAX_IFNAME_LEN} characters, no '/', ':' or whitespace)"
            ),
        ));
    }
    Ok(())
}

/// A bridge name chosen by the user (the CNI config's `bridge`).
pub fn check_bridge_name(network: &str, bridge: &str) -> Result<String> {
    check_ifname(&format!("network {network:?}: bridge"), bridge)?;
    Ok(bridge.to_owned())
}

/// 32-bit FNV-1a: tiny, and unlike std's `DefaultHasher` the same in every
/// process and every Rust release, so a veth name can be found again later.
fn fnv1a32(bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Whether a host link carries one of the names netctl gives: a bridge
/// (`nc-NAME`, `netctl0`) or a veth end (`veXXXXXXXX`, and its peer with a
/// `p` while it is still on the host side).
pub fn is_netctl_link_name(name: &str) -> bool {
    if name == DEFAULT_BRIDGE || name.starts_with(BRIDGE_PREFIX) {
        return true;
    }
    let Some(hex) = name.strip_prefix("ve") else {
        return false;
    };
    let hex = hex.strip_suffix('p').unwrap_or(hex);
    hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The host-side veth of a container on a network: `ve` + 8 hex digits of a
/// hash of the container name and the network id. It fits IFNAMSIZ for any
/// name and is the same on every run, so teardown and `doctor` can find it.
pub fn veth_name(container: &str, network_id: u32) -> String {
    let bytes = container.bytes().chain(network_id.to_be_bytes());
    format!("ve{:08x}", fnv1a32(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The one-line message of a validation error (shared with ports' tests).
    pub(crate) fn message<T: std::fmt::Debug>(result: Result<T>) -> String {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. }),
            "not a validation error: {err:?}"
        );
        let message = err.to_string();
        assert!(!message.contains('\n'), "multi-line error: {message}");
        message
    }

    #[test]
    fn shown_quotes_only_text_that_needs_it() {
        assert_eq!(shown("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(shown(""), "\"\"");
        assert_eq!(shown("a b"), "\"a b\"");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn parse_subnet_accepts_a_network_address() {
        assert_eq!(parse_subnet("172.18.0.0/16").unwrap(), net("172.18.0.0/16"));
        assert_eq!(parse_subnet("10.1.2.0/30").unwrap(), net("10.1.2.0/30"));
    }

    #[test]
    fn parse_subnet_rejects_invalid_text() {
        assert_eq!(
            message(parse_subnet("10.0.0.0/33")),
            "subnet 10.0.0.0/33: not a valid IPv4 CIDR (expected e.g. 172.18.0.0/16)"
        );
        assert!(message(parse_subnet("10.0.0.0")).starts_with("subnet 10.0.0.0: not a valid"));
        assert!(message(parse_subnet("banana")).starts_with("subnet banana: not a valid"));
        assert!(message(parse_subnet("")).starts_with("subnet \"\": not a valid"));
        assert!(message(parse_subnet("10.0.0.0/8\nx")).starts_with("subnet \"10.0.0.0/8\\nx\""));
    }

    #[test]
    fn parse_subnet_rejects_ipv6() {
        assert_eq!(
            message(parse_subnet("fd00::/64")),
            "subnet fd00::/64: IPv6 is not supported"
        );
    }

    #[test]
    fn parse_subnet_rejects_prefixes_without_room() {
        assert_eq!(
            message(parse_subnet("10.0.0.0/31")),
            "subnet 10.0.0.0/31: prefix /31 leaves no room for a gateway and a container (at most /30)"
        );
        assert!(message(parse_subnet("10.0.0.1/32")).contains("prefix /32"));
    }

    #[test]
    fn parse_subnet_rejects_host_bits_with_a_hint() {
        assert_eq!(
            message(parse_subnet("172.18.0.5/16")),
            "subnet 172.18.0.5/16: host bits are set: it should be 172.18.0.0/16"
        );
    }

    #[test]
    fn parse_ip_names_the_option() {
        assert_eq!(parse_ip("gateway", "172.18.0.1").unwrap(), ip("172.18.0.1"));
        assert_eq!(
            message(parse_ip("gateway", "172.18.0.256")),
            "gateway 172.18.0.256: not a valid IPv4 address"
        );
        assert_eq!(
            message(parse_ip("ip", "")),
            "ip \"\": not a valid IPv4 address"
        );
        assert_eq!(
            message(parse_ip("ip", "fd00::2")),
            "ip fd00::2: IPv6 is not supported"
        );
        assert!(
            message(parse_ip("ip", "172.18.0.0/16")).starts_with("ip 172.18.0.0/16: not a valid")
        );
    }

    #[test]
    fn default_gateway_is_the_first_host() {
        assert_eq!(default_gateway(net("172.18.0.0/16")), ip("172.18.0.1"));
        assert_eq!(default_gateway(net("192.168.16.0/20")), ip("192.168.16.1"));
        assert_eq!(default_gateway(net("10.9.8.4/30")), ip("10.9.8.5"));
    }

    #[test]
    fn check_gateway_accepts_any_host_address() {
        check_gateway(net("172.18.0.0/16"), ip("172.18.0.1")).unwrap();
        check_gateway(net("172.18.0.0/16"), ip("172.18.255.254")).unwrap();
    }

    #[test]
    fn check_gateway_rejects_outside_network_and_broadcast() {
        let subnet = net("172.18.0.0/16");
        assert_eq!(
            message(check_gateway(subnet, ip("172.19.0.1"))),
            "gateway 172.19.0.1: outside subnet 172.18.0.0/16"
        );
        assert_eq!(
            message(check_gateway(subnet, ip("172.18.0.0"))),
            "gateway 172.18.0.0: is the network address of 172.18.0.0/16"
        );
        assert_eq!(
            message(check_gateway(subnet, ip("172.18.255.255"))),
            "gateway 172.18.255.255: is the broadcast address of 172.18.0.0/16"
        );
    }

    #[test]
    fn check_overlap_names_the_other_network() {
        let existing = [
            ("front", net("172.18.0.0/16")),
            ("back", net("10.0.0.0/24")),
        ];
        check_overlap(net("172.19.0.0/16"), &existing).unwrap();
        check_overlap(net("10.0.1.0/24"), &existing).unwrap();
        check_overlap(net("10.0.0.0/24"), &[]).unwrap();
        // Inside, around and equal all overlap.
        assert_eq!(
            message(check_overlap(net("172.18.5.0/24"), &existing)),
            "subnet 172.18.5.0/24: overlaps network front (172.18.0.0/16)"
        );
        assert_eq!(
            message(check_overlap(net("10.0.0.0/8"), &existing)),
            "subnet 10.0.0.0/8: overlaps network back (10.0.0.0/24)"
        );
        assert_eq!(
            message(check_overlap(net("10.0.0.0/24"), &existing)),
            "subnet 10.0.0.0/24: overlaps network back (10.0.0.0/24)"
        );
    }

    #[test]
    fn default_pools_follow_docker() {
        let pools: Vec<Ipv4Net> = default_pools().collect();
        assert_eq!(pools.len(), 15 + 16);
        assert_eq!(pools[0], net("172.17.0.0/16"));
        assert_eq!(pools[14], net("172.31.0.0/16"));
        assert_eq!(pools[15], net("192.168.0.0/20"));
        assert_eq!(pools[16], net("192.168.16.0/20"));
        assert_eq!(pools[30], net("192.168.240.0/20"));
    }

    #[test]
    fn pick_subnet_takes_the_first_free_pool() {
        assert_eq!(pick_subnet(&[]).unwrap(), net("172.17.0.0/16"));
        assert_eq!(
            pick_subnet(&[net("172.17.0.0/16")]).unwrap(),
            net("172.18.0.0/16")
        );
        // A user subnet inside a pool makes the whole pool unusable; a hole
        // left by a removed network is reused.
        let existing = [
            net("172.17.0.0/16"),
            net("172.18.3.0/24"),
            net("172.20.0.0/16"),
        ];
        assert_eq!(pick_subnet(&existing).unwrap(), net("172.19.0.0/16"));
        // One subnet covering all of 172.16.0.0/12 sends us to 192.168.
        assert_eq!(
            pick_subnet(&[net("172.16.0.0/12")]).unwrap(),
            net("192.168.0.0/20")
        );
        let existing = [net("172.16.0.0/12"), net("192.168.0.0/19")];
        assert_eq!(pick_subnet(&existing).unwrap(), net("192.168.32.0/20"));
    }

    #[test]
    fn pick_subnet_fails_when_all_pools_are_used() {
        let existing = [net("172.16.0.0/12"), net("192.168.0.0/16")];
        let message = message(pick_subnet(&existing));
        assert!(
            message.starts_with("default address pools: all of 172.17.0.0/16"),
            "{message}"
        );
        assert!(message.ends_with("give --subnet"), "{message}");
        let existing: Vec<Ipv4Net> = default_pools().collect();
        assert!(pick_subnet(&existing).is_err());
    }

    #[test]
    fn allocate_takes_the_lowest_free_host() {
        let subnet = net("172.18.0.0/16");
        let gateway = ip("172.18.0.1");
        assert_eq!(
            allocate(subnet, gateway, &BTreeSet::new()).unwrap(),
            ip("172.18.0.2")
        );
        let used = BTreeSet::from([ip("172.18.0.2"), ip("172.18.0.4")]);
        assert_eq!(allocate(subnet, gateway, &used).unwrap(), ip("172.18.0.3"));
        // A gateway elsewhere leaves .1 free.
        assert_eq!(
            allocate(subnet, ip("172.18.0.254"), &BTreeSet::new()).unwrap(),
            ip("172.18.0.1")
        );
        // Addresses crossing a byte boundary.
        let subnet = net("10.0.0.0/23");
        let used: BTreeSet<Ipv4Addr> = (2..=255).map(|d| Ipv4Addr::new(10, 0, 0, d)).collect();
        assert_eq!(
            allocate(subnet, ip("10.0.0.1"), &used).unwrap(),
            ip("10.0.1.0")
        );
    }

    #[test]
    fn allocate_fails_when_the_subnet_is_full() {
        let subnet = net("10.9.8.4/30");
        let used = BTreeSet::from([ip("10.9.8.6")]);
        assert_eq!(
            message(allocate(subnet, ip("10.9.8.5"), &used)),
            "subnet 10.9.8.4/30: no free address"
        );
        // Broadcast is never handed out.
        let subnet = net("10.0.0.0/29");
        let used: BTreeSet<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(10, 0, 0, d)).collect();
        assert!(allocate(subnet, ip("10.0.0.1"), &used).is_err());
    }

    #[test]
    fn reserve_accepts_a_free_host() {
        let used = BTreeSet::from([ip("172.18.0.2")]);
        reserve(
            net("172.18.0.0/16"),
            ip("172.18.0.1"),
            &used,
            ip("172.18.0.3"),
        )
        .unwrap();
        reserve(
            net("172.18.0.0/16"),
            ip("172.18.0.1"),
            &used,
            ip("172.18.255.254"),
        )
        .unwrap();
    }

    #[test]
    fn reserve_names_the_ip_and_the_reason() {
        let subnet = net("172.18.0.0/16");
        let gateway = ip("172.18.0.1");
        let used = BTreeSet::from([ip("172.18.0.2")]);
        let check = |addr: &str| message(reserve(subnet, gateway, &used, ip(addr)));
        assert_eq!(
            check("10.0.0.2"),
            "ip 10.0.0.2: outside subnet 172.18.0.0/16"
        );
        assert_eq!(
            check("172.18.0.0"),
            "ip 172.18.0.0: is the network address of 172.18.0.0/16"
        );
        assert_eq!(
            check("172.18.255.255"),
            "ip 172.18.255.255: is the broadcast address of 172.18.0.0/16"
        );
        assert_eq!(
            check("172.18.0.1"),
            "ip 172.18.0.1: is the gateway of 172.18.0.0/16"
        );
        assert_eq!(check("172.18.0.2"), "ip 172.18.0.2: already in use");
    }

    #[test]
    fn netctl_link_names_are_recognised() {
        for name in ["netctl0", "nc-front", &veth_name("web", 3), "ve0123abcdp"] {
            assert!(is_netctl_link_name(name), "{name}");
        }
        for name in ["eth0", "lo", "veth0", "ve0123abcdx", "ve0123abc", "docker0"] {
            assert!(!is_netctl_link_name(name), "{name}");
        }
    }

    #[test]
    fn check_name_accepts_docker_names() {
        for name in ["web", "a", "9", "my_net.v2-b", "A-", &"x".repeat(64)] {
            check_name("network", name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn check_name_rejects_other_characters() {
        assert_eq!(
            message(check_name("network", "a b")),
            "network \"a b\": invalid name: only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed"
        );
        for name in ["", "-web", "_web", ".web", "a/b", "a:b", "é", "a\nb"] {
            let message = message(check_name("container", name));
            assert!(
                message.starts_with(&format!("container {name:?}: invalid name")),
                "{message}"
            );
        }
    }

    #[test]
    fn check_name_rejects_long_names() {
        let name = "x".repeat(65);
        assert_eq!(
            message(check_name("container", &name)),
            format!("container \"{name}\": invalid name: longer than 64 characters")
        );
    }

    #[test]
    fn bridge_name_of_default_and_user_networks() {
        assert_eq!(bridge_name("bridge").unwrap(), "netctl0");
        assert_eq!(bridge_name("front").unwrap(), "nc-front");
        assert_eq!(bridge_name("abcdefghijkl").unwrap(), "nc-abcdefghijkl");
    }

    #[test]
    fn bridge_name_rejects_names_too_long_for_ifnamsiz() {
        assert_eq!(
            message(bridge_name("averyveryverylongname")),
            "network \"averyveryverylongname\": name cannot become an interface name \
             (nc-averyveryve… exceeds 15 characters)"
        );
        assert!(bridge_name("abcdefghijklm").is_err());
    }

    #[test]
    fn bridge_name_rejects_characters_interfaces_cannot_hold() {
        for name in ["", "a/b", "a:b", "a b"] {
            let message = message(bridge_name(name));
            assert!(
                message.starts_with(&format!(
                    "network {name:?}: name cannot become an interface"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn fnv1a32_matches_reference_vectors() {
        assert_eq!(fnv1a32(*b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(*b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(*b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn veth_name_is_stable_and_distinct() {
        // Computed independently (Python) from b"web" + 1u32 big-endian.
        assert_eq!(veth_name("web", 1), "ve5ac9330e");
        assert_eq!(veth_name("web", 1), veth_name("web", 1));
        assert_ne!(veth_name("web", 1), veth_name("web", 2));
        assert_ne!(veth_name("web", 1), veth_name("db", 1));
        let long = veth_name(&"x".repeat(64), u32::MAX);
        assert_eq!(long.len(), 10);
        assert!(long.starts_with("ve") && long[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
