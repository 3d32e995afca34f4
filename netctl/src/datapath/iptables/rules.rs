//! The rules as data: netctl's tables and chains, one [`Rule`] value per
//! rule, and the functions that build each rule set (the host's chains and
//! jumps, a network's, an endpoint's anti-spoofing, the published ports).
//! Nothing here runs a program: what is rendered here is what
//! [`super::batch`] writes and what [`super::save`] reads back.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};

use crate::{
    error::{Error, Result},
    model::{Endpoint, Network, PortMapping, Protocol},
};

/// Every chain netctl creates starts with this.
pub const CHAIN_PREFIX: &str = "NETCTL-";
/// nat: one DNAT rule per published port.
pub const DNAT_CHAIN: &str = "NETCTL-DNAT";
/// nat: MASQUERADE of each network.
pub const POSTROUTING_CHAIN: &str = "NETCTL-POSTROUTING";
/// filter: what may cross the bridges.
pub const FORWARD_CHAIN: &str = "NETCTL-FORWARD";
/// filter: packets leaving a bridge for another interface...
pub const ISOLATION_1_CHAIN: &str = "NETCTL-ISOLATION-1";
/// filter: ...are dropped if that interface is another network's bridge.
pub const ISOLATION_2_CHAIN: &str = "NETCTL-ISOLATION-2";
/// raw: per endpoint, packets from its veth with a forged source address or MAC.
pub const ANTISPOOF_CHAIN: &str = "NETCTL-ANTISPOOF";
/// filter: per network, what its bridge sends to the host's 127.0.0.0/8.
pub const INPUT_CHAIN: &str = "NETCTL-INPUT";

/// The chains of the host, created by `host_up` (and re-created by any
/// `*_up` that finds them missing).
pub const CHAINS: [(Table, &str); 7] = [
    (Table::Nat, DNAT_CHAIN),
    (Table::Nat, POSTROUTING_CHAIN),
    (Table::Filter, FORWARD_CHAIN),
    (Table::Filter, ISOLATION_1_CHAIN),
    (Table::Filter, ISOLATION_2_CHAIN),
    (Table::Raw, ANTISPOOF_CHAIN),
    (Table::Filter, INPUT_CHAIN),
];

/// The tables netctl writes to (mangle and security it never touches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
    Raw,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Filter, Table::Nat, Table::Raw];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: where it lives and its specification in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: &'static str,
    /// Matches and target, exactly as `iptables-save` prints them.
    pub spec: String,
    /// Inserted at the head of its chain (`-I CHAIN 1`) instead of appended.
    pub first: bool,
}

impl Rule {
    fn append(table: Table, chain: &'static str, spec: Spec) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.render(),
            first: false,
        }
    }

    fn insert_first(table: Table, chain: &'static str, spec: Spec) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.render(),
            first: true,
        }
    }

    /// The line `iptables-save` prints for this rule.
    pub fn saved(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }

    /// The restore line that adds it.
    pub fn add(&self) -> String {
        if self.first {
            format!("-I {} 1 {}", self.chain, self.spec)
        } else {
            self.saved()
        }
    }

    /// The restore line that deletes (one copy of) it.
    pub fn delete(&self) -> String {
        format!("-D {} {}", self.chain, self.spec)
    }
}

/// `nat -A CHAIN SPEC`: the form of [`super::Iptables::netctl_rules`].
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.saved())
    }
}

/// A rule specification. Whatever order the builder is called in, it
/// renders in the order `iptables-save` prints: `-s`, `-d`, `-i`, `-o`
/// (each with its `!` in front), `-p P -m P --dport N`, the other matches
/// in the order netctl always uses, `-j TARGET ...`.
#[derive(Default)]
struct Spec {
    source: Option<IpNet>,
    /// `! -s`: any source but `source`.
    source_negated: bool,
    destination: Option<IpNet>,
    /// `! -d`: any destination but `destination`.
    destination_negated: bool,
    /// (negated, interface)
    input: Option<(bool, String)>,
    output: Option<(bool, String)>,
    dport: Option<(Protocol, u16)>,
    /// `-m physdev --physdev-in PORT`: the bridge port a packet came in by.
    physdev_in: Option<String>,
    /// `-m mac ! --mac-source MAC` (lower case, as iptables-save prints it).
    not_mac_source: Option<String>,
    dst_local: bool,
    ctstate: Option<&'static str>,
    /// `! --ctstate`: any state but `ctstate`.
    ctstate_negated: bool,
    target: String,
}

impl Spec {
    fn jump(target: impl Into<String>) -> Spec {
        Spec {
            target: target.into(),
            ..Spec::default()
        }
    }

    fn src(mut self, net: impl Into<IpNet>) -> Spec {
        self.source = Some(net.into().trunc());
        self
    }

    fn not_src_host(self, ip: impl Into<IpAddr>) -> Spec {
        self.not_src(IpNet::from(ip.into()))
    }

    fn not_src(mut self, net: impl Into<IpNet>) -> Spec {
        self.source = Some(net.into().trunc());
        self.source_negated = true;
        self
    }

    fn physdev_in(mut self, port: &str) -> Spec {
        self.physdev_in = Some(port.to_owned());
        self
    }

    fn not_mac_source(mut self, mac: &str) -> Spec {
        self.not_mac_source = Some(mac.to_ascii_lowercase());
        self
    }

    fn dst_host(self, ip: impl Into<IpAddr>) -> Spec {
        self.dst(IpNet::from(ip.into()))
    }

    fn dst(mut self, net: impl Into<IpNet>) -> Spec {
        self.destination = Some(net.into().trunc());
        self
    }

    fn not_dst_host(mut self, ip: impl Into<IpAddr>) -> Spec {
        self.destination = Some(IpNet::from(ip.into()));
        self.destination_negated = true;
        self
    }

    fn in_(mut self, iface: &str) -> Spec {
        self.input = Some((false, iface.to_owned()));
        self
    }

    fn not_in(mut self, iface: &str) -> Spec {
        self.input = Some((true, iface.to_owned()));
        self
    }

    fn out(mut self, iface: &str) -> Spec {
        self.output = Some((false, iface.to_owned()));
        self
    }

    fn not_out(mut self, iface: &str) -> Spec {
        self.output = Some((true, iface.to_owned()));
        self
    }

    fn dport(mut self, protocol: Protocol, port: u16) -> Spec {
        self.dport = Some((protocol, port));
        self
    }

    fn dst_local(mut self) -> Spec {
        self.dst_local = true;
        self
    }

    fn ctstate(mut self, states: &'static str) -> Spec {
        self.ctstate = Some(states);
        self
    }

    fn not_ctstate(mut self, states: &'static str) -> Spec {
        self.ctstate = Some(states);
        self.ctstate_negated = true;
        self
    }

    fn render(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        // iptables-save always prints the prefix length, /32 included.
        if let Some(net) = self.source {
            let not = if self.source_negated { "! " } else { "" };
            parts.push(format!("{not}-s {net}"));
        }
        if let Some(net) = self.destination {
            let not = if self.destination_negated { "! " } else { "" };
            parts.push(format!("{not}-d {net}"));
        }
        for (flag, iface) in [("-i", &self.input), ("-o", &self.output)] {
            if let Some((negated, name)) = iface {
                parts.push(format!("{}{flag} {name}", if *negated { "! " } else { "" }));
            }
        }
        if let Some((protocol, port)) = self.dport {
            // `-p tcp --dport N` loads the tcp match implicitly; save shows it.
            parts.push(format!("-p {protocol} -m {protocol} --dport {port}"));
        }
        if let Some(port) = &self.physdev_in {
            parts.push(format!("-m physdev --physdev-in {port}"));
        }
        if let Some(mac) = &self.not_mac_source {
            parts.push(format!("-m mac ! --mac-source {mac}"));
        }
        if self.dst_local {
            parts.push("-m addrtype --dst-type LOCAL".to_owned());
        }
        if let Some(states) = self.ctstate {
            let not = if self.ctstate_negated { "! " } else { "" };
            parts.push(format!("-m conntrack {not}--ctstate {states}"));
        }
        parts.push(format!("-j {}", self.target));
        parts.join(" ")
    }
}

/// Jumps from the built-in chains, and the isolation stage that must stay
/// the first rule of NETCTL-FORWARD (whatever networks append after it).
pub fn host_rules() -> Vec<Rule> {
    vec![
        // Published ports answer on every local address of the host, for
        // packets from outside (PREROUTING) and from the host itself
        // (OUTPUT; 127.0.0.1 included: no userland proxy does it for us).
        Rule::append(Table::Nat, "PREROUTING", Spec::jump(DNAT_CHAIN).dst_local()),
        Rule::append(Table::Nat, "OUTPUT", Spec::jump(DNAT_CHAIN).dst_local()),
        Rule::append(Table::Nat, "POSTROUTING", Spec::jump(POSTROUTING_CHAIN)),
        // First in FORWARD, as Docker does: a DROP policy or another tool's
        // rules must not decide for container traffic before we do.
        Rule::insert_first(Table::Filter, "FORWARD", Spec::jump(FORWARD_CHAIN)),
        // Anti-spoofing first of all: another tool's ACCEPT or NOTRACK in
        // raw must not let a forged packet skip it.
        Rule::insert_first(Table::Raw, "PREROUTING", Spec::jump(ANTISPOOF_CHAIN)),
        // The guard of route_localnet (see `network_rules`), first for the
        // same reason: another tool's ACCEPT in INPUT must not open the
        // host's 127.0.0.1 services to the containers.
        Rule::insert_first(Table::Filter, "INPUT", Spec::jump(INPUT_CHAIN)),
        // Isolation before any network's ACCEPT: once it is first, the
        // per-network rules below only ever see traffic that stays on
        // their bridge, goes between it and a non-netctl interface, or is
        // a published-port connection, so their relative order across
        // networks does not matter.
        Rule::insert_first(Table::Filter, FORWARD_CHAIN, Spec::jump(ISOLATION_1_CHAIN)),
        // A connection NETCTL-DNAT rewrote (a published port) may cross
        // from one network to another, both ways (replies match DNAT too).
        // In ISOLATION-2, not ISOLATION-1, so that the DROPs of internal
        // networks in ISOLATION-1 still apply to it in any order.
        Rule::insert_first(
            Table::Filter,
            ISOLATION_2_CHAIN,
            Spec::jump("RETURN").ctstate("DNAT"),
        ),
    ]
}

/// The rules of one network, in the order they must appear in each chain.
pub fn network_rules(net: &Network) -> Vec<Rule> {
    let localnet: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix");
    if net.internal {
        return forward_rules(net);
    }
    // route_localnet=1 on the bridge (for the host's 127.0.0.1 ->
    // published port, below) also lets the bridge's packets *to*
    // 127.0.0.0/8 be routed: a container sending to 127.0.0.1 by the
    // gateway's MAC would reach the host's loopback-only services
    // (CVE-2020-8558). kube-proxy's guard, for this bridge: such a packet
    // is dropped unless it belongs to a flow (the replies of the host's
    // own 127.0.0.1 -> published port connections, de-NATed back to
    // 127.0.0.1) or netctl's DNAT rewrote it (a published port).
    let mut rules = vec![Rule::append(
        Table::Filter,
        INPUT_CHAIN,
        Spec::jump("DROP")
            .not_src(localnet)
            .dst(localnet)
            .in_(net.bridge.as_str())
            .not_ctstate("RELATED,ESTABLISHED,DNAT"),
    )];
    rules.extend(forward_rules(net));
    rules.extend(masquerade_rules(net, IpNet::V4(net.subnet)));
    // The host reaching a published port via 127.0.0.1 (OUTPUT DNAT):
    // the source must not leave as 127.0.0.1 (with route_localnet=1 on
    // the bridge, which lets such packets be routed at all).
    rules.push(Rule::append(
        Table::Nat,
        POSTROUTING_CHAIN,
        Spec::jump("MASQUERADE")
            .src(localnet)
            .out(net.bridge.as_str()),
    ));
    rules
}

/// The ip6tables rules of a dual-stack network (none for an IPv4-only
/// one): the same filtering as IPv4's, NAT66 to the uplink's address and
/// hairpin. IPv6 has no route_localnet: `::1` is never routed out of the
/// host, so the 127.0.0.1 guard and its MASQUERADE have no counterpart.
pub fn network_rules6(net: &Network) -> Vec<Rule> {
    let Some(side) = net.ipv6 else {
        return Vec::new();
    };
    let mut rules = forward_rules(net);
    if !net.internal {
        rules.extend(masquerade_rules(net, IpNet::V6(side.subnet)));
    }
    rules
}

/// A network's filter rules, the same for both families (they match the
/// bridge, not addresses).
fn forward_rules(net: &Network) -> Vec<Rule> {
    let br = net.bridge.as_str();
    let filter = |spec| Rule::append(Table::Filter, FORWARD_CHAIN, spec);
    let isolation_1 = |spec| Rule::append(Table::Filter, ISOLATION_1_CHAIN, spec);
    if net.internal {
        return vec![
            // No way out and no way in, published port or not: in
            // ISOLATION-1, which every forwarded packet sees before any
            // network's ACCEPT (and before the DNAT exemption).
            isolation_1(Spec::jump("DROP").in_(br).not_out(br)),
            isolation_1(Spec::jump("DROP").not_in(br).out(br)),
            // Peers on the bridge still talk (bridge-nf-call-iptables or a
            // DROP policy would otherwise stop them).
            filter(Spec::jump("ACCEPT").in_(br).out(br)),
        ];
    }
    vec![
        // Two stages, as Docker: ISOLATION-1 catches what leaves this bridge
        // for another interface, ISOLATION-2 drops it if that interface is
        // another network's bridge (each network adds one line to each, so
        // the check is linear, not quadratic, in the number of networks).
        isolation_1(Spec::jump(ISOLATION_2_CHAIN).in_(br).not_out(br)),
        Rule::append(Table::Filter, ISOLATION_2_CHAIN, Spec::jump("DROP").out(br)),
        // Replies to connections the containers opened.
        filter(Spec::jump("ACCEPT").out(br).ctstate("RELATED,ESTABLISHED")),
        // New connections to published ports (rewritten by NETCTL-DNAT):
        // one rule for all ports instead of one per port.
        filter(Spec::jump("ACCEPT").out(br).ctstate("DNAT")),
        // What conntrack cannot follow (a truncated header, a TCP segment
        // out of window) is never NATed: leaving the bridge it would go out
        // with the container's private address, as it does with Docker.
        // Dropped instead (kube-proxy does the same), like the eBPF datapath.
        filter(Spec::jump("DROP").in_(br).not_out(br).ctstate("INVALID")),
        // Egress, and container to container on the same bridge.
        filter(Spec::jump("ACCEPT").in_(br)),
        // Anything else from outside never reaches a container; must stay
        // after the three accepts above.
        filter(Spec::jump("DROP").out(br)),
    ]
}

/// The NAT of a network's `subnet` (of either family).
fn masquerade_rules(net: &Network, subnet: IpNet) -> Vec<Rule> {
    let br = net.bridge.as_str();
    let subnet = subnet.trunc();
    vec![
        // Egress SNAT to the address of whichever interface the packet leaves by.
        Rule::append(
            Table::Nat,
            POSTROUTING_CHAIN,
            Spec::jump("MASQUERADE").src(subnet).not_out(br),
        ),
        // Hairpin: container -> host IP:published port -> container on the
        // same bridge; without SNAT the server would answer its peer
        // directly and the client would drop the reply.
        Rule::append(
            Table::Nat,
            POSTROUTING_CHAIN,
            Spec::jump("MASQUERADE").src(subnet).out(br).ctstate("DNAT"),
        ),
    ]
}

/// Anti-spoofing of one endpoint: what enters the bridge by its veth must
/// carry its own address and its own MAC. Two rules, so that each reason
/// has its own counter; a packet with both forged counts as a forged address.
pub fn endpoint_rules(ep: &Endpoint) -> Vec<Rule> {
    antispoof_rules(ep, IpAddr::V4(ep.ip))
}

/// The ip6tables anti-spoofing of an endpoint with an IPv6 address (none
/// without): the same two rules for its IPv6 address. Neighbour discovery
/// passes them (the container has no link-local address, see
/// `netns::enable_ipv6`, so it speaks from its own); what it sends from
/// `::` (MLD reports) is dropped and counted, and nothing needs it (no
/// querier on the bridge: the bridge floods multicast).
pub fn endpoint_rules6(ep: &Endpoint) -> Vec<Rule> {
    ep.ip6
        .map(|ip6| antispoof_rules(ep, IpAddr::V6(ip6)))
        .unwrap_or_default()
}

fn antispoof_rules(ep: &Endpoint, ip: IpAddr) -> Vec<Rule> {
    let veth = ep.host_veth.as_str();
    vec![
        Rule::append(
            Table::Raw,
            ANTISPOOF_CHAIN,
            Spec::jump("DROP").not_src_host(ip).physdev_in(veth),
        ),
        Rule::append(
            Table::Raw,
            ANTISPOOF_CHAIN,
            Spec::jump("DROP")
                .physdev_in(veth)
                .not_mac_source(&ep.mac.to_string()),
        ),
    ]
}

/// One DNAT rule per published port, as Docker does (none for a port
/// bound to one IPv6 address).
pub fn port_rules(ports: &[PortMapping]) -> Vec<Rule> {
    ports
        .iter()
        .filter(|p| p.is_ipv4())
        .map(|p| {
            let mut spec = Spec::jump(format!(
                "DNAT --to-destination {}:{}",
                p.container_ip, p.container_port
            ))
            .dport(p.protocol, p.host_port);
            if let Some(ip) = p.host_ip4() {
                spec = spec.dst_host(ip);
            }
            Rule::append(Table::Nat, DNAT_CHAIN, spec)
        })
        .collect()
}

/// The ip6tables DNAT of the ports published on a dual-stack network, on
/// every host address (the host's IPv6 addresses forward to the endpoint's
/// IPv6 address) or on one IPv6 address (that one alone); ports bound to
/// one IPv4 address have no IPv6 side. `::1` is left out of "every
/// address" (as Docker does): the kernel never forwards it to a container
/// (no route_localnet for IPv6), so a DNAT there would only swallow the
/// host's own connections to `[::1]:PORT`; they reach the host's own
/// sockets instead.
pub fn port_rules6(ports: &[PortMapping]) -> Vec<Rule> {
    ports
        .iter()
        .filter_map(|p| {
            let ip6 = p.container_ip6?;
            let mut spec = Spec::jump(format!(
                "DNAT --to-destination [{ip6}]:{}",
                p.container_port
            ))
            .dport(p.protocol, p.host_port);
            spec = match p.host_ip {
                Some(ip @ IpAddr::V6(_)) => spec.dst_host(ip),
                _ => spec.not_dst_host(std::net::Ipv6Addr::LOCALHOST),
            };
            Some(Rule::append(Table::Nat, DNAT_CHAIN, spec))
        })
        .collect()
}

/// Drops repeated rules (the same port listed twice), keeping the order.
pub(super) fn dedup(rules: Vec<Rule>) -> Vec<Rule> {
    let mut seen = BTreeSet::new();
    rules
        .into_iter()
        .filter(|r| seen.insert((r.table, r.saved())))
        .collect()
}

/// An interface name that iptables reads as exactly that interface: no
/// `+` (a wildcard to iptables), no `!`, no whitespace or `/`.
fn is_literal_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A network whose bridge name can be written into rules.
pub(super) fn check_bridge(net: &Network) -> Result<()> {
    let name = &net.bridge;
    if is_literal_ifname(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("network {}", net.name),
            format!("bridge name {name:?} cannot be used in iptables rules"),
        ))
    }
}

/// An endpoint whose veth name iptables reads as exactly that (its MAC, a
/// `Mac`, is always written in the one form iptables reads).
pub(super) fn check_endpoint(ep: &Endpoint) -> Result<()> {
    let name = &ep.host_veth;
    let name_ok = (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(Error::invalid(
            format!("endpoint {name}"),
            "veth name cannot be used in iptables rules",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::iptables::{
        describe_ports,
        fixtures::{endpoint, front, front_ports, network, port, saved_lines},
    };

    #[test]
    fn host_rules_render_exactly() {
        let rules = host_rules();
        assert_eq!(
            rules
                .iter()
                .map(|r| format!("{} {}", r.table, r.add()))
                .collect::<Vec<_>>(),
            [
                "nat -A PREROUTING -m addrtype --dst-type LOCAL -j NETCTL-DNAT",
                "nat -A OUTPUT -m addrtype --dst-type LOCAL -j NETCTL-DNAT",
                "nat -A POSTROUTING -j NETCTL-POSTROUTING",
                "filter -I FORWARD 1 -j NETCTL-FORWARD",
                "raw -I PREROUTING 1 -j NETCTL-ANTISPOOF",
                "filter -I INPUT 1 -j NETCTL-INPUT",
                "filter -I NETCTL-FORWARD 1 -j NETCTL-ISOLATION-1",
                "filter -I NETCTL-ISOLATION-2 1 -m conntrack --ctstate DNAT -j RETURN",
            ]
        );
        // Inserted or appended, save prints -A and delete says -D.
        assert_eq!(rules[3].saved(), "-A FORWARD -j NETCTL-FORWARD");
        assert_eq!(rules[3].delete(), "-D FORWARD -j NETCTL-FORWARD");
        assert_eq!(
            rules[0].delete(),
            "-D PREROUTING -m addrtype --dst-type LOCAL -j NETCTL-DNAT"
        );
    }

    #[test]
    fn network_rules_render_exactly() {
        let rules = network_rules(&front());
        let by_table = |t| {
            rules
                .iter()
                .filter(|r| r.table == t)
                .map(Rule::saved)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            by_table(Table::Filter),
            [
                "-A NETCTL-INPUT ! -s 127.0.0.0/8 -d 127.0.0.0/8 -i nc-front -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                "-A NETCTL-ISOLATION-1 -i nc-front ! -o nc-front -j NETCTL-ISOLATION-2",
                "-A NETCTL-ISOLATION-2 -o nc-front -j DROP",
                "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT",
                "-A NETCTL-FORWARD -i nc-front ! -o nc-front -m conntrack --ctstate INVALID -j DROP",
                "-A NETCTL-FORWARD -i nc-front -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-front -j DROP",
            ]
        );
        assert_eq!(
            by_table(Table::Nat),
            [
                "-A NETCTL-POSTROUTING -s 172.18.0.0/16 ! -o nc-front -j MASQUERADE",
                "-A NETCTL-POSTROUTING -s 172.18.0.0/16 -o nc-front -m conntrack --ctstate DNAT -j MASQUERADE",
                "-A NETCTL-POSTROUTING -s 127.0.0.0/8 -o nc-front -j MASQUERADE",
            ]
        );
        // A subnet given with host bits renders as its network address.
        let sloppy = network("front", "nc-front", "172.18.0.5/16", false);
        assert_eq!(network_rules(&sloppy), rules);
    }

    #[test]
    fn endpoint_rules_render_exactly() {
        let rules = endpoint_rules(&Endpoint {
            mac: "02:42:AC:12:00:02".parse().unwrap(),
            ..endpoint()
        });
        assert_eq!(
            rules.iter().map(Rule::to_string).collect::<Vec<_>>(),
            [
                "raw -A NETCTL-ANTISPOOF ! -s 172.18.0.2/32 -m physdev --physdev-in veth0 -j DROP",
                // iptables-save prints the MAC in lower case.
                "raw -A NETCTL-ANTISPOOF -m physdev --physdev-in veth0 -m mac ! --mac-source 02:42:ac:12:00:02 -j DROP",
            ]
        );
        assert!(rules.iter().all(|r| !r.first));
    }

    #[test]
    fn internal_network_has_no_nat_and_no_way_out() {
        let rules = network_rules(&network("int", "nc-int", "172.20.0.0/16", true));
        assert_eq!(
            saved_lines(&rules),
            [
                "-A NETCTL-ISOLATION-1 -i nc-int ! -o nc-int -j DROP",
                // iptables-save puts `! -i` before `-o`, whatever order it was given in.
                "-A NETCTL-ISOLATION-1 ! -i nc-int -o nc-int -j DROP",
                "-A NETCTL-FORWARD -i nc-int -o nc-int -j ACCEPT",
            ]
        );
        assert!(rules.iter().all(|r| r.table == Table::Filter && !r.first));
    }

    #[test]
    fn port_rules_render_exactly() {
        let mut ports = front_ports();
        ports.push(port(
            Protocol::Tcp,
            Some([0, 0, 0, 0]),
            9000,
            [172, 18, 0, 4],
            9001,
            "front",
        ));
        assert_eq!(
            saved_lines(&port_rules(&ports)),
            [
                "-A NETCTL-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:80",
                "-A NETCTL-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.18.0.2:80",
                "-A NETCTL-DNAT -d 198.51.100.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 172.18.0.3:53",
                // 0.0.0.0 means every address, as None does.
                "-A NETCTL-DNAT -p tcp -m tcp --dport 9000 -j DNAT --to-destination 172.18.0.4:9001",
            ]
        );
        assert_eq!(
            describe_ports(&ports),
            "8080/tcp, 127.0.0.1:8081/tcp, 198.51.100.1:5353/udp, 9000/tcp"
        );
    }

    fn dual_stack(internal: bool) -> Network {
        Network {
            ipv6: Some(crate::model::Ipv6Side {
                subnet: "fd00:18::/64".parse().unwrap(),
                gateway: "fd00:18::1".parse().unwrap(),
            }),
            ..network("front", "nc-front", "172.18.0.0/16", internal)
        }
    }

    #[test]
    fn ipv6_rules_render_exactly() {
        assert!(network_rules6(&front()).is_empty());
        let rules = network_rules6(&dual_stack(false));
        assert_eq!(
            rules.iter().map(Rule::to_string).collect::<Vec<_>>(),
            [
                "filter -A NETCTL-ISOLATION-1 -i nc-front ! -o nc-front -j NETCTL-ISOLATION-2",
                "filter -A NETCTL-ISOLATION-2 -o nc-front -j DROP",
                "filter -A NETCTL-FORWARD -o nc-front -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "filter -A NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT",
                "filter -A NETCTL-FORWARD -i nc-front ! -o nc-front -m conntrack --ctstate INVALID -j DROP",
                "filter -A NETCTL-FORWARD -i nc-front -j ACCEPT",
                "filter -A NETCTL-FORWARD -o nc-front -j DROP",
                "nat -A NETCTL-POSTROUTING -s fd00:18::/64 ! -o nc-front -j MASQUERADE",
                "nat -A NETCTL-POSTROUTING -s fd00:18::/64 -o nc-front -m conntrack --ctstate DNAT -j MASQUERADE",
            ]
        );
        // Internal: the same three filter rules as IPv4's, no NAT.
        assert_eq!(
            network_rules6(&dual_stack(true)),
            network_rules(&dual_stack(true))
        );
        // IPv4's rules do not change with an IPv6 side.
        assert_eq!(network_rules(&dual_stack(false)), network_rules(&front()));

        assert!(endpoint_rules6(&endpoint()).is_empty());
        let ep = Endpoint {
            ip6: Some("fd00:18::2".parse().unwrap()),
            ..endpoint()
        };
        assert_eq!(
            endpoint_rules6(&ep).iter().map(Rule::to_string).collect::<Vec<_>>(),
            [
                "raw -A NETCTL-ANTISPOOF ! -s fd00:18::2/128 -m physdev --physdev-in veth0 -j DROP",
                "raw -A NETCTL-ANTISPOOF -m physdev --physdev-in veth0 -m mac ! --mac-source 02:42:ac:12:00:02 -j DROP",
            ]
        );
        assert_eq!(endpoint_rules(&ep), endpoint_rules(&endpoint()));

        // Only ports on every host address have an IPv6 side.
        let mut ports = front_ports();
        assert!(port_rules6(&ports).is_empty());
        ports[0].container_ip6 = Some("fd00:18::2".parse().unwrap());
        assert_eq!(
            saved_lines(&port_rules6(&ports)),
            ["-A NETCTL-DNAT ! -d ::1/128 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:18::2]:80"]
        );
        // A port on one IPv6 address: that address in ip6tables, nothing in
        // iptables.
        let v4_before = port_rules(&ports);
        ports.push(PortMapping {
            host_ip: Some("2001:db8::1".parse().unwrap()),
            host_port: 8443,
            container_ip6: Some("fd00:18::2".parse().unwrap()),
            ..ports[0].clone()
        });
        assert_eq!(port_rules(&ports), v4_before);
        assert_eq!(
            saved_lines(&port_rules6(&ports)),
            [
                "-A NETCTL-DNAT ! -d ::1/128 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:18::2]:80",
                "-A NETCTL-DNAT -d 2001:db8::1/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [fd00:18::2]:80",
            ]
        );
        assert!(describe_ports(&ports).ends_with(", [2001:db8::1]:8443/tcp"));
    }

    #[test]
    fn spec_order_does_not_depend_on_builder_order() {
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let a = Spec::jump("MASQUERADE")
            .ctstate("DNAT")
            .out("b")
            .src(subnet)
            .render();
        let b = Spec::jump("MASQUERADE")
            .src(subnet)
            .out("b")
            .ctstate("DNAT")
            .render();
        assert_eq!(a, b);
        assert_eq!(
            a,
            "-s 10.1.0.0/24 -o b -m conntrack --ctstate DNAT -j MASQUERADE"
        );
        let c = Spec::jump("X")
            .not_out("o")
            .dport(Protocol::Udp, 1)
            .not_in("i")
            .dst_host(Ipv4Addr::LOCALHOST);
        assert_eq!(
            c.render(),
            "-d 127.0.0.1/32 ! -i i ! -o o -p udp -m udp --dport 1 -j X"
        );
    }
}
