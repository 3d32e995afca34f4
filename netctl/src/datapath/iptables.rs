//! The iptables datapath: Docker's behaviour (without a userland proxy),
//! written in chains of netctl's own so that nothing else's rules are edited.
//!
//! ```text
//! nat     PREROUTING   -m addrtype --dst-type LOCAL -j NETCTL-DNAT
//!         OUTPUT       -m addrtype --dst-type LOCAL -j NETCTL-DNAT
//!         POSTROUTING  -j NETCTL-POSTROUTING
//!         NETCTL-DNAT         one DNAT rule per published port
//!         NETCTL-POSTROUTING  per network: egress MASQUERADE, hairpin, 127.0.0.1
//! raw     PREROUTING   -j NETCTL-ANTISPOOF               (first rule)
//!         NETCTL-ANTISPOOF    per endpoint: from its veth with another source
//!                             address -> DROP, with another source MAC -> DROP
//! filter  FORWARD      -j NETCTL-FORWARD                 (first rule)
//!         NETCTL-FORWARD      -j NETCTL-ISOLATION-1      (first rule), then per
//!                             network: replies and published ports in, INVALID
//!                             (un-NATable) leaving DROP, all out, DROP
//!         NETCTL-ISOLATION-1  per network: leaving its bridge -> ISOLATION-2;
//!                             per internal network: DROP anything in or out
//!         NETCTL-ISOLATION-2  published-port connections RETURN (first rule), then
//!                             per network: entering its bridge -> DROP
//! ```
//!
//! So: containers of one network never reach another network's containers
//! directly, but reach its published ports through a host address like any
//! client would (as with Docker's default userland proxy; moby#38784 is the
//! bug Docker had without it); internal networks reach nothing and nothing
//! reaches them.
//!
//! Anti-spoofing goes beyond Docker (which has none): a container may send
//! IPv4 only from its own address and MAC, on its own veth, like the eBPF
//! datapath's `endpoint_ingress`. The rules match the bridge port with
//! `physdev`, so they need br_netfilter's `net.bridge.bridge-nf-call-iptables`
//! (per network namespace since Linux 5.3, 1 by default): `host_up` sets it
//! in the host namespace only, and never turns it back off. They sit in the
//! raw table, before conntrack, so a forged packet leaves no flow behind, and
//! their packet counters (`iptables-save -c -t raw`) count what was dropped.
//!
//! Rules are data ([`Rule`]): the same value renders the line that adds it
//! (`-A`/`-I`), the line that deletes it (`-D`) and the line `iptables-save`
//! prints for it, so add, delete and "is it there?" can never disagree. Each
//! rule is rendered in the canonical form of `iptables-save` (checked by the
//! tests, iptables v1.8.9 nft backend): addresses, then interfaces, then the
//! protocol and its match, then other matches, then the target.
//!
//! Every change is one `iptables-restore --noflush` batch, planned against
//! one `iptables-save` read: only missing rules are added, only present ones
//! deleted, and only absent chains declared (a `:CHAIN` line flushes an
//! existing chain under `--noflush`). A batch never fails half-way on
//! account of state, and the kernel applies it atomically (per table with
//! the legacy backend, as a whole with the nft one).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use ipnet::Ipv4Net;

mod audit;

use super::{Datapath, Drift, HostInfo};
use crate::{
    error::{Error, Result},
    model::{DatapathKind, Endpoint, Network, PortMapping, Protocol},
    state::State,
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

/// The chains of the host, created by `host_up` (and re-created by any
/// `*_up` that finds them missing).
const CHAINS: [(Table, &str); 6] = [
    (Table::Nat, DNAT_CHAIN),
    (Table::Nat, POSTROUTING_CHAIN),
    (Table::Filter, FORWARD_CHAIN),
    (Table::Filter, ISOLATION_1_CHAIN),
    (Table::Filter, ISOLATION_2_CHAIN),
    (Table::Raw, ANTISPOOF_CHAIN),
];

const RESTORE: &str = "iptables-restore";
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const SAVE: &str = "iptables-save";

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

    fn from_name(name: &str) -> Option<Table> {
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

/// `nat -A CHAIN SPEC`: the form of [`Iptables::netctl_rules`].
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
    source: Option<Ipv4Net>,
    /// `! -s`: any source but `source`.
    source_negated: bool,
    destination: Option<Ipv4Net>,
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
    target: String,
}

impl Spec {
    fn jump(target: impl Into<String>) -> Spec {
        Spec {
            target: target.into(),
            ..Spec::default()
        }
    }

    fn src(mut self, net: Ipv4Net) -> Spec {
        self.source = Some(net.trunc());
        self
    }

    fn not_src_host(mut self, ip: Ipv4Addr) -> Spec {
        self.source = Some(Ipv4Net::from(ip));
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

    fn dst_host(mut self, ip: Ipv4Addr) -> Spec {
        self.destination = Some(Ipv4Net::from(ip));
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

    fn render(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        // iptables-save always prints the prefix length, /32 included.
        if let Some(net) = self.source {
            let not = if self.source_negated { "! " } else { "" };
            parts.push(format!("{not}-s {net}"));
        }
        if let Some(net) = self.destination {
            parts.push(format!("-d {net}"));
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
            parts.push(format!("-m conntrack --ctstate {states}"));
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
    let subnet = net.subnet.trunc();
    let localnet: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix");
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
        // The host reaching a published port via 127.0.0.1 (OUTPUT DNAT):
        // the source must not leave as 127.0.0.1 (with route_localnet=1 on
        // the bridge, which lets such packets be routed at all).
        Rule::append(
            Table::Nat,
            POSTROUTING_CHAIN,
            Spec::jump("MASQUERADE").src(localnet).out(br),
        ),
    ]
}

/// Anti-spoofing of one endpoint: what enters the bridge by its veth must
/// carry its own address and its own MAC. Two rules, so that each reason
/// has its own counter; a packet with both forged counts as a forged address.
pub fn endpoint_rules(ep: &Endpoint) -> Vec<Rule> {
    let veth = ep.host_veth.as_str();
    vec![
        Rule::append(
            Table::Raw,
            ANTISPOOF_CHAIN,
            Spec::jump("DROP").not_src_host(ep.ip).physdev_in(veth),
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

/// One DNAT rule per published port, as Docker does.
pub fn port_rules(ports: &[PortMapping]) -> Vec<Rule> {
    ports
        .iter()
        .map(|p| {
            let mut spec = Spec::jump(format!(
                "DNAT --to-destination {}:{}",
                p.container_ip, p.container_port
            ))
            .dport(p.protocol, p.host_port);
            if let Some(ip) = p.host_ip.filter(|ip| !ip.is_unspecified()) {
                spec = spec.dst_host(ip);
            }
            Rule::append(Table::Nat, DNAT_CHAIN, spec)
        })
        .collect()
}

/// What `iptables-save` printed for the nat and filter tables.
#[derive(Debug, Default)]
pub struct Saved {
    tables: BTreeMap<Table, Dump>,
}

#[derive(Debug, Default)]
struct Dump {
    /// `:NAME POLICY [0:0]` lines, verbatim.
    chains: Vec<String>,
    /// `-A CHAIN ...` lines, verbatim, in order.
    rules: Vec<String>,
}

impl Saved {
    pub fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        let mut table = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = Table::from_name(name.trim());
                continue;
            }
            let Some(table) = table else { continue };
            let dump = saved.tables.entry(table).or_default();
            if line.starts_with(':') {
                dump.chains.push(line.to_owned());
            } else if line.starts_with("-A ") {
                dump.rules.push(line.to_owned());
            }
        }
        saved
    }

    fn rules(&self, table: Table) -> &[String] {
        self.tables
            .get(&table)
            .map(|d| d.rules.as_slice())
            .unwrap_or_default()
    }

    /// Names of the chains of a table.
    fn chains(&self, table: Table) -> impl Iterator<Item = &str> {
        self.tables
            .get(&table)
            .into_iter()
            .flat_map(|d| d.chains.iter())
            .filter_map(|line| line[1..].split_whitespace().next())
    }

    fn has_chain(&self, table: Table, chain: &str) -> bool {
        self.chains(table).any(|c| c == chain)
    }

    /// How many copies of `rule` exist.
    pub fn count(&self, rule: &Rule) -> usize {
        let line = rule.saved();
        self.rules(rule.table)
            .iter()
            .filter(|l| **l == line)
            .count()
    }

    /// The rules of `chain`, in order, as saved.
    pub fn chain_rules(&self, table: Table, chain: &str) -> Vec<&str> {
        let prefix = format!("-A {chain} ");
        self.rules(table)
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(String::as_str)
            .collect()
    }

    /// Every chain and rule line mentioning NETCTL, as `TABLE LINE`.
    pub fn netctl_lines(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|(table, dump)| {
                dump.chains
                    .iter()
                    .chain(&dump.rules)
                    .filter(|l| l.contains("NETCTL"))
                    .map(move |l| format!("{table} {l}"))
            })
            .collect()
    }
}

/// One `iptables-restore` input: per table, chain declarations, then
/// operations, then COMMIT.
#[derive(Debug, Default)]
struct Batch {
    chains: BTreeMap<Table, Vec<String>>,
    ops: BTreeMap<Table, Vec<String>>,
}

impl Batch {
    fn declare(&mut self, table: Table, chain: &str) {
        self.chains
            .entry(table)
            .or_default()
            .push(format!(":{chain} - [0:0]"));
    }

    fn push(&mut self, table: Table, line: String) {
        self.ops.entry(table).or_default().push(line);
    }

    fn is_empty(&self) -> bool {
        self.chains
            .values()
            .chain(self.ops.values())
            .all(Vec::is_empty)
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for table in Table::ALL {
            let chains = self
                .chains
                .get(&table)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ops = self.ops.get(&table).map(Vec::as_slice).unwrap_or_default();
            if chains.is_empty() && ops.is_empty() {
                continue;
            }
            text.push_str(&format!("*{table}\n"));
            for line in chains.iter().chain(ops) {
                text.push_str(line);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        text
    }

    /// Chains and rules of the host that are missing: declares absent
    /// chains only (declaring an existing one would flush it).
    fn ensure_host(&mut self, saved: &Saved) {
        for (table, chain) in CHAINS {
            if !saved.has_chain(table, chain) {
                self.declare(table, chain);
            }
        }
        for rule in host_rules() {
            if saved.count(&rule) == 0 {
                self.push(rule.table, rule.add());
            }
        }
    }

    /// Makes each table's share of `rules` present exactly once and in
    /// order: untouched when it already is, else its present copies are
    /// deleted and all of it appended again, in the same batch (an accept
    /// re-added alone would land after the DROP that ends a network).
    fn ensure_in_order(&mut self, saved: &Saved, rules: &[Rule]) {
        for table in Table::ALL {
            let group: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
            if group.iter().all(|r| saved.count(r) == 1) {
                continue;
            }
            for rule in &group {
                for _ in 0..saved.count(rule) {
                    self.push(table, rule.delete());
                }
            }
            for rule in &group {
                self.push(table, rule.add());
            }
        }
    }

    /// Makes each of `rules` present exactly once, wherever it is (for
    /// rules whose order does not matter).
    fn ensure_once(&mut self, saved: &Saved, rules: &[Rule]) {
        for rule in rules {
            match saved.count(rule) {
                0 => self.push(rule.table, rule.add()),
                n => (1..n).for_each(|_| self.push(rule.table, rule.delete())),
            }
        }
    }

    /// Deletes every present copy of `rules`; absent ones are no error.
    fn remove(&mut self, saved: &Saved, rules: &[Rule]) {
        for rule in rules {
            for _ in 0..saved.count(rule) {
                self.push(rule.table, rule.delete());
            }
        }
    }
}

/// Drops repeated rules (the same port listed twice), keeping the order.
fn dedup(rules: Vec<Rule>) -> Vec<Rule> {
    let mut seen = BTreeSet::new();
    rules
        .into_iter()
        .filter(|r| seen.insert((r.table, r.saved())))
        .collect()
}

/// An interface name that iptables reads as exactly that interface: no
/// `+` (a wildcard to iptables), no `!`, no whitespace or `/`.
fn check_bridge(net: &Network) -> Result<()> {
    let name = &net.bridge;
    let ok = (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
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
fn check_endpoint(ep: &Endpoint) -> Result<()> {
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

/// `8080/tcp`, `127.0.0.1:8080/tcp`.
fn describe_ports(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| match p.host_ip.filter(|ip| !ip.is_unspecified()) {
            Some(ip) => format!("{ip}:{}/{}", p.host_port, p.protocol),
            None => format!("{}/{}", p.host_port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `iptables-restore` failed: the first line of its stderr that is not
/// a warning, and the batch line it blamed when it names one.
fn failure_reason(stderr: &str, batch: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut reason = lines
        .iter()
        .find(|l| !l.starts_with("Warning"))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| format!("{RESTORE} failed ({status})"));
    // "line 7 failed: ..." (rule errors) or "Error occurred at line: 2" (syntax).
    let blamed = lines.iter().find_map(|l| {
        let rest = &l[l.find("line")? + 4..];
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<usize>().ok()
    });
    if let Some(line) = blamed.and_then(|n| batch.lines().nth(n.checked_sub(1)?)) {
        reason.push_str(&format!(" (at `{line}`)"));
    }
    reason
}

fn write_sysctl(key: &str, path: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| Error::io(format!("sysctl {key}"), e))
}

/// The iptables datapath of one host namespace (the calling thread's).
#[derive(Clone, Debug)]
pub struct Iptables {
    restore: String,
    save: String,
}

impl Iptables {
    /// The rules are written in whatever namespace the calling thread is in:
    /// the host's, which the process has already entered.
    pub fn new(_host: &HostInfo) -> Iptables {
        Iptables {
            restore: RESTORE.to_owned(),
            save: SAVE.to_owned(),
        }
    }

    /// Reads the nat and filter tables.
    pub fn saved(&self) -> Result<Saved> {
        let object = || format!("iptables: read rules ({})", self.save);
        let out = Command::new(&self.save)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::system(object(), e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned();
            return Err(Error::system(object(), format!("{first} ({})", out.status)));
        }
        Ok(Saved::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Every chain and rule of the host mentioning NETCTL, as `TABLE LINE`
    /// (`nat -A POSTROUTING -j NETCTL-POSTROUTING`, `filter :NETCTL-FORWARD - [0:0]`).
    pub fn netctl_rules(&self) -> Result<Vec<String>> {
        Ok(self.saved()?.netctl_lines())
    }

    /// Whether anything of netctl's is left in nat or filter.
    pub fn rules_present(&self) -> Result<bool> {
        Ok(!self.netctl_rules()?.is_empty())
    }

    /// Which of `rules` are not there (for `doctor`).
    pub fn missing(&self, rules: &[Rule]) -> Result<Vec<Rule>> {
        let saved = self.saved()?;
        Ok(rules
            .iter()
            .filter(|r| saved.count(r) == 0)
            .cloned()
            .collect())
    }

    /// Runs one batch; `object` names the operation in the error.
    fn restore(&self, object: &str, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let text = batch.render();
        log::debug!("{object}:\n{text}");
        let mut child = Command::new(&self.restore)
            // -w: wait for the xtables lock (legacy backend) rather than fail.
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::system(object, format!("{}: {e}", self.restore)))?;
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| Error::system(object, format!("{}: {e}", self.restore)))?;
        if !out.status.success() {
            return Err(Error::system(
                object,
                failure_reason(&String::from_utf8_lossy(&out.stderr), &text, out.status),
            ));
        }
        written
            .map_err(|e| Error::system(object, format!("{}: writing the batch: {e}", self.restore)))
    }

    /// Runs `batch`; if it fails, runs its lines one by one so that
    /// everything that can be done is, and reports every failure.
    fn restore_keep_going(&self, object: &str, batch: &Batch, errors: &mut Vec<Error>) {
        if self.restore(object, batch).is_ok() {
            return;
        }
        for table in Table::ALL {
            for line in batch.ops.get(&table).into_iter().flatten() {
                let mut single = Batch::default();
                single.push(table, line.clone());
                if let Err(e) = self.restore(object, &single) {
                    errors.push(e);
                }
            }
        }
    }
}

impl Datapath for Iptables {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Iptables
    }

    fn host_up(&self) -> Result<()> {
        // /proc/sys/net resolves to the namespace of the writing thread.
        write_sysctl("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")?;
        // Anti-spoofing sees bridged packets (container to container) only
        // through br_netfilter; the sysctl is the host namespace's own.
        if !std::path::Path::new(BRIDGE_NF_CALL_IPTABLES).exists() {
            return Err(Error::system(
                "sysctl net.bridge.bridge-nf-call-iptables",
                "missing: the iptables datapath needs br_netfilter (modprobe br_netfilter)",
            ));
        }
        write_sysctl(
            "net.bridge.bridge-nf-call-iptables",
            BRIDGE_NF_CALL_IPTABLES,
        )?;
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        self.restore("iptables: host setup", &batch)
    }

    fn host_down(&self) -> Result<()> {
        let saved = self.saved()?;
        let mut errors = Vec::new();
        // One batch per table, so that a failure in one leaves the other done.
        for table in Table::ALL {
            let mut batch = Batch::default();
            let ours: Vec<&str> = saved
                .chains(table)
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .collect();
            // Jumps into our chains from any other chain (the built-in ones,
            // or a chain some admin hooked us into).
            for line in saved.rules(table) {
                let chain = line[3..].split_whitespace().next().unwrap_or_default();
                if !chain.starts_with(CHAIN_PREFIX) && line.contains(CHAIN_PREFIX) {
                    batch.push(table, format!("-D {}", &line[3..]));
                }
            }
            // Flush all before deleting any: ISOLATION-1 jumps to ISOLATION-2.
            for chain in &ours {
                batch.push(table, format!("-F {chain}"));
            }
            for chain in &ours {
                batch.push(table, format!("-X {chain}"));
            }
            self.restore_keep_going(
                &format!("iptables: host teardown ({table})"),
                &batch,
                &mut errors,
            );
        }
        Error::collect(errors)
    }

    fn network_up(&self, net: &Network) -> Result<()> {
        check_bridge(net)?;
        if !net.internal {
            // Lets the host's 127.0.0.1 -> published port packets be routed
            // out of the bridge (then MASQUERADEd), as Docker and netavark do.
            let key = format!("net.ipv4.conf.{}.route_localnet", net.bridge);
            write_sysctl(
                &key,
                &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            )?;
        }
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(net));
        self.restore(&format!("iptables: network {} up", net.name), &batch)
    }

    /// Deletes the network's rules and also any DNAT rule still sending
    /// traffic into its subnet (left by a crash before its container was
    /// removed): a later network reusing the subnet must not inherit it.
    /// (No bridge name check: only lines found in iptables-save are deleted,
    /// and teardown must never be refused.)
    fn network_down(&self, net: &Network) -> Result<()> {
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &network_rules(net));
        let dnat_prefix = format!("-A {DNAT_CHAIN} ");
        for line in saved
            .rules(Table::Nat)
            .iter()
            .filter(|l| l.starts_with(&dnat_prefix))
        {
            let target = line
                .split_once("--to-destination ")
                .and_then(|(_, rest)| rest.split([':', ' ']).next())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            if target.is_some_and(|ip| net.subnet.contains(&ip)) {
                batch.push(Table::Nat, format!("-D {}", &line[3..]));
            }
        }
        // Likewise anti-spoofing rules of endpoints in its subnet (both
        // rules of each: the MAC rule is found by the veth of the address rule).
        let antispoof = saved.chain_rules(Table::Raw, ANTISPOOF_CHAIN);
        let stale_veths: BTreeSet<&str> = antispoof
            .iter()
            .filter_map(|line| {
                let ip = line
                    .split_once("! -s ")?
                    .1
                    .split(['/', ' '])
                    .next()?
                    .parse::<Ipv4Addr>()
                    .ok()?;
                let veth = line.split_once("--physdev-in ")?.1.split(' ').next()?;
                net.subnet.contains(&ip).then_some(veth)
            })
            .collect();
        for line in &antispoof {
            let veth = line
                .split_once("--physdev-in ")
                .and_then(|(_, rest)| rest.split(' ').next());
            if veth.is_some_and(|v| stale_veths.contains(v)) {
                batch.push(Table::Raw, format!("-D {}", &line[3..]));
            }
        }
        self.restore(&format!("iptables: network {} down", net.name), &batch)
    }

    /// Anti-spoofing of the endpoint; isolation and NAT match on the
    /// network's bridge, and published ports come with their own calls.
    fn endpoint_added(&self, _net: &Network, ep: &Endpoint) -> Result<()> {
        check_endpoint(ep)?;
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_once(&saved, &endpoint_rules(ep));
        self.restore(
            &format!("iptables: endpoint {} ({}) up", ep.host_veth, ep.ip),
            &batch,
        )
    }

    fn endpoint_removed(&self, _net: &Network, ep: &Endpoint) -> Result<()> {
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &endpoint_rules(ep));
        self.restore(
            &format!("iptables: endpoint {} ({}) down", ep.host_veth, ep.ip),
            &batch,
        )
    }

    fn ports_published(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if net.internal && !ports.is_empty() {
            return Err(Error::invalid(
                format!("network {}", net.name),
                format!("is internal: cannot publish {}", describe_ports(ports)),
            ));
        }
        if let Some(p) = ports.iter().find(|p| p.network != net.name) {
            return Err(Error::invalid(
                format!("port {}", p.describe()),
                format!("belongs to network {}, not {}", p.network, net.name),
            ));
        }
        if ports.is_empty() {
            return Ok(());
        }
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_once(&saved, &dedup(port_rules(ports)));
        self.restore(
            &format!(
                "iptables: publish {} on network {}",
                describe_ports(ports),
                net.name
            ),
            &batch,
        )
    }

    fn audit(&self, state: &State) -> Result<Vec<Drift>> {
        audit::audit(self, state)
    }

    fn reconcile(&self, state: &State) -> Result<()> {
        audit::reconcile(self, state)
    }

    fn ports_unpublished(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &dedup(port_rules(ports)));
        self.restore(
            &format!(
                "iptables: unpublish {} on network {}",
                describe_ports(ports),
                net.name
            ),
            &batch,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use nix::sched::{unshare, CloneFlags};

    use super::*;
    use crate::config::HostConfig;

    fn network(name: &str, bridge: &str, subnet: &str, internal: bool) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network {
            name: name.into(),
            id: 1,
            bridge: bridge.into(),
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            internal,
            dns: true,
            created: 0,
            mtu: None,
        }
    }

    fn port(
        protocol: Protocol,
        host_ip: Option<[u8; 4]>,
        host_port: u16,
        container_ip: [u8; 4],
        container_port: u16,
        network: &str,
    ) -> PortMapping {
        PortMapping {
            protocol,
            host_ip: host_ip.map(Ipv4Addr::from),
            host_port,
            container_ip: Ipv4Addr::from(container_ip),
            container_port,
            container: "web".into(),
            network: network.into(),
        }
    }

    fn front() -> Network {
        network("front", "nc-front", "172.18.0.0/16", false)
    }

    fn front_ports() -> Vec<PortMapping> {
        vec![
            port(Protocol::Tcp, None, 8080, [172, 18, 0, 2], 80, "front"),
            port(
                Protocol::Tcp,
                Some([127, 0, 0, 1]),
                8081,
                [172, 18, 0, 2],
                80,
                "front",
            ),
            port(
                Protocol::Udp,
                Some([198, 51, 100, 1]),
                5353,
                [172, 18, 0, 3],
                53,
                "front",
            ),
        ]
    }

    fn host() -> HostInfo {
        let dir = std::env::temp_dir().join("netctl-iptables-test");
        HostInfo {
            config: HostConfig::new(None, Some(dir), None, None),
            uplink: None,
        }
    }

    fn saved_lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(Rule::saved).collect()
    }

    // ---- rendering (pure) ----

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

    #[test]
    fn batch_renders_declarations_first_and_one_commit_per_table() {
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        assert_eq!(batch.render(), "");
        batch.push(Table::Nat, "-A NETCTL-DNAT -j ACCEPT".into());
        batch.declare(Table::Nat, DNAT_CHAIN);
        batch.push(Table::Filter, "-I FORWARD 1 -j NETCTL-FORWARD".into());
        assert!(!batch.is_empty());
        assert_eq!(
            batch.render(),
            "*filter\n-I FORWARD 1 -j NETCTL-FORWARD\nCOMMIT\n\
             *nat\n:NETCTL-DNAT - [0:0]\n-A NETCTL-DNAT -j ACCEPT\nCOMMIT\n"
        );
    }

    const SAMPLE_SAVE: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 23 08:53:59 2026
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j NETCTL-MANGLE-IS-NOT-OURS
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:NETCTL-FORWARD - [0:0]
-A FORWARD -j NETCTL-FORWARD
-A FORWARD -i eth9 -j ACCEPT
-A NETCTL-FORWARD -j NETCTL-ISOLATION-1
-A NETCTL-FORWARD -o nc-front -j DROP
-A NETCTL-FORWARD -o nc-front -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
";

    #[test]
    fn saved_output_is_parsed_per_table() {
        let saved = Saved::parse(SAMPLE_SAVE);
        let host = host_rules();
        assert_eq!(saved.count(&host[3]), 1, "FORWARD jump");
        assert_eq!(saved.count(&host[0]), 0, "PREROUTING jump is absent");
        let drop = Rule::append(
            Table::Filter,
            FORWARD_CHAIN,
            Spec::jump("DROP").out("nc-front"),
        );
        assert_eq!(saved.count(&drop), 2);
        // The same line in another table is another rule.
        assert_eq!(
            saved.count(&Rule {
                table: Table::Nat,
                ..drop.clone()
            }),
            0
        );
        assert!(saved.has_chain(Table::Filter, FORWARD_CHAIN));
        assert!(saved.has_chain(Table::Filter, "FORWARD"));
        assert!(!saved.has_chain(Table::Nat, FORWARD_CHAIN));
        assert_eq!(
            saved.chain_rules(Table::Filter, "FORWARD"),
            [
                "-A FORWARD -j NETCTL-FORWARD",
                "-A FORWARD -i eth9 -j ACCEPT"
            ]
        );
        // mangle is not ours to list or touch.
        assert_eq!(
            saved.netctl_lines(),
            [
                "filter :NETCTL-FORWARD - [0:0]",
                "filter -A FORWARD -j NETCTL-FORWARD",
                "filter -A NETCTL-FORWARD -j NETCTL-ISOLATION-1",
                "filter -A NETCTL-FORWARD -o nc-front -j DROP",
                "filter -A NETCTL-FORWARD -o nc-front -j DROP",
            ]
        );
    }

    /// What iptables-save would print for a host holding our chains and `rules`.
    fn fake_save(rules: &[Rule]) -> String {
        let mut text = String::new();
        for table in Table::ALL {
            text.push_str(&format!("*{table}\n"));
            for (_, chain) in CHAINS.iter().filter(|(t, _)| *t == table) {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for rule in rules.iter().filter(|r| r.table == table) {
                text.push_str(&format!("{}\n", rule.saved()));
            }
            text.push_str("COMMIT\n");
        }
        text
    }

    #[test]
    fn plans_add_only_what_is_missing_and_restore_order() {
        let saved = Saved::parse(SAMPLE_SAVE);
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(&front()));
        let text = batch.render();
        // Only absent chains are declared (an existing one would be flushed).
        assert!(!text.contains(":NETCTL-FORWARD "), "{text}");
        assert!(
            text.contains(":NETCTL-ISOLATION-1 - [0:0]\n:NETCTL-ISOLATION-2 - [0:0]\n"),
            "{text}"
        );
        assert!(
            text.contains(":NETCTL-DNAT - [0:0]\n:NETCTL-POSTROUTING - [0:0]\n"),
            "{text}"
        );
        // Present host jumps are not added again.
        assert!(!text.contains("-I FORWARD 1"), "{text}");
        assert!(!text.contains("-j NETCTL-ISOLATION-1\n"), "{text}");
        // The filter share of the network was partly there (and the DROP twice):
        // delete what is there, then append it all in order.
        let filter: Vec<&str> = text
            .split("*nat")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with('-'))
            .collect();
        // (The DNAT exemption of the host is missing from the sample too.)
        let mut want = vec!["-I NETCTL-ISOLATION-2 1 -m conntrack --ctstate DNAT -j RETURN"];
        want.extend(["-D NETCTL-FORWARD -o nc-front -j DROP"; 2]);
        let adds: Vec<String> = network_rules(&front())
            .iter()
            .filter(|r| r.table == Table::Filter)
            .map(Rule::add)
            .collect();
        want.extend(adds.iter().map(String::as_str));
        assert_eq!(filter, want);

        // Everything present once: nothing to do.
        let rules: Vec<Rule> = host_rules()
            .into_iter()
            .chain(network_rules(&front()))
            .collect();
        let saved = Saved::parse(&fake_save(&rules));
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(&front()));
        assert!(batch.is_empty(), "{}", batch.render());
        // Removing deletes each present rule, nothing else.
        let mut batch = Batch::default();
        batch.remove(&saved, &port_rules(&front_ports()));
        assert!(batch.is_empty());
        batch.remove(&saved, &network_rules(&front()));
        assert_eq!(batch.ops.values().map(Vec::len).sum::<usize>(), 10);
    }

    #[test]
    fn failure_reason_names_the_blamed_line() {
        let batch = "*nat\n-A NETCTL-DNAT -j ACCEPT\n-D NETCTL-DNAT -p tcp -m tcp --dport 99 -j ACCEPT\nCOMMIT\n";
        let ok = std::process::Command::new("true").status().unwrap();
        let reason = failure_reason(
            "iptables-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?).\n",
            batch,
            ok,
        );
        assert_eq!(
            reason,
            "iptables-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?). \
             (at `-D NETCTL-DNAT -p tcp -m tcp --dport 99 -j ACCEPT`)"
        );
        let reason = failure_reason(
            "Warning: weird character in interface `a b'.\n\
             iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\"\n\
             Error occurred at line: 2\n",
            batch,
            ok,
        );
        assert_eq!(
            reason,
            "iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\" (at `-A NETCTL-DNAT -j ACCEPT`)"
        );
        assert!(failure_reason("", batch, ok).starts_with("iptables-restore failed"));
    }

    /// An `Iptables` whose programs do nothing: proves a method refused
    /// before reading or writing any rule.
    fn inert() -> Iptables {
        Iptables {
            restore: "/bin/false".into(),
            save: "/bin/false".into(),
        }
    }

    #[test]
    fn refuses_bad_input_before_touching_anything() {
        let dp = inert();
        let int = network("int", "nc-int", "172.20.0.0/16", true);
        let p = port(Protocol::Tcp, None, 8080, [172, 20, 0, 2], 80, "int");
        let err = dp.ports_published(&int, &[p]).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "network int: is internal: cannot publish 8080/tcp"
        );
        let err = dp
            .ports_published(
                &front(),
                &[port(Protocol::Tcp, None, 1, [10, 0, 0, 1], 1, "back")],
            )
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        for bridge in ["br+", "a b", "br/0", "", "a-very-long-bridge-name"] {
            let err = dp
                .network_up(&network("x", bridge, "10.0.0.0/24", false))
                .unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{bridge:?}: {err}");
        }
        // (A malformed MAC cannot reach the datapath: `Mac` parses it first.)
        for veth in ["veth+", "a b"] {
            let ep = Endpoint {
                host_veth: veth.into(),
                ..endpoint()
            };
            let err = dp.endpoint_added(&front(), &ep).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{veth:?}: {err}");
        }
        // Nothing to do is done without running anything.
        dp.ports_published(&front(), &[]).unwrap();
        dp.ports_unpublished(&front(), &[]).unwrap();
        // And a failing iptables-save is reported, not mistaken for "no rules".
        let err = dp.network_down(&front()).unwrap_err();
        assert!(matches!(err, Error::System { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("iptables: read rules (/bin/false): "),
            "{err}"
        );
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            network: "front".into(),
            ifname: "eth0".into(),
            host_veth: "veth0".into(),
            ip: Ipv4Addr::new(172, 18, 0, 2),
            mac: "02:42:ac:12:00:02".parse().unwrap(),
        }
    }

    // ---- in a private network namespace (root only) ----

    /// Runs `f` in a thread of its own that first moves to a fresh,
    /// anonymous network namespace (gone when the thread ends); the
    /// iptables processes it starts inherit that namespace. `None` when not
    /// root.
    fn in_private_netns<T: Send + 'static>(
        test: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("{test}: skipped (needs root for a private network namespace)");
            return None;
        }
        let thread = std::thread::spawn(move || {
            let before = fs::read_link("/proc/thread-self/ns/net").expect("netns of the thread");
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            let after = fs::read_link("/proc/thread-self/ns/net").expect("netns of the thread");
            assert_ne!(before, after, "must run in a private network namespace");
            assert_ne!(
                fs::read_link("/proc/self/ns/net").unwrap(),
                after,
                "main thread is elsewhere"
            );
            f()
        });
        Some(
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    }

    fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// iptables-save without its comment lines (they carry a timestamp).
    fn save_text() -> String {
        run("iptables-save", &[], None)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn restore_raw(text: &str) {
        run("iptables-restore", &["--noflush"], Some(text));
    }

    fn add_bridge(name: &str) {
        run("ip", &["link", "add", name, "type", "bridge"], None);
    }

    fn sysctl(path: &str) -> String {
        fs::read_to_string(PathBuf::from("/proc/sys/net/ipv4").join(path))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The NETCTL lines a host with exactly `rules` must show.
    fn expected_lines(rules: &[Rule]) -> Vec<String> {
        let mut lines: Vec<String> = CHAINS
            .iter()
            .map(|(t, c)| format!("{t} :{c} - [0:0]"))
            .collect();
        lines.extend(rules.iter().map(Rule::to_string));
        lines.sort();
        lines
    }

    fn listed(dp: &Iptables) -> Vec<String> {
        let mut lines = dp.netctl_rules().unwrap();
        lines.sort();
        lines
    }

    #[test]
    fn lifecycle_round_trips_and_leaves_nothing() {
        let root_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        in_private_netns("lifecycle_round_trips_and_leaves_nothing", || {
            // Someone else's rules: they must stay, untouched and in order.
            restore_raw(
                "*filter\n:OTHER - [0:0]\n-A FORWARD -i eth9 -j ACCEPT\n-A OTHER -j RETURN\nCOMMIT\n\
                 *nat\n-A POSTROUTING -o eth9 -j MASQUERADE\n-A PREROUTING -p tcp -m tcp --dport 1 -j ACCEPT\nCOMMIT\n\
                 *raw\n-A PREROUTING -i eth9 -j ACCEPT\nCOMMIT\n",
            );
            let before = save_text();
            assert!(!before.contains("NETCTL"));
            for bridge in ["nc-front", "nc-back", "nc-int"] {
                add_bridge(bridge);
            }
            let dp = Iptables::new(&host());
            let front = front();
            let back = network("back", "nc-back", "172.19.0.0/16", false);
            let int = network("int", "nc-int", "172.20.0.0/16", true);
            let ports = front_ports();
            let web = endpoint();
            let peer = Endpoint {
                host_veth: "veth1".into(),
                ip: Ipv4Addr::new(172, 18, 0, 3),
                mac: "02:42:ac:12:00:03".parse().unwrap(),
                ..endpoint()
            };
            let apply = || {
                dp.host_up().unwrap();
                for net in [&front, &back, &int] {
                    dp.network_up(net).unwrap();
                }
                dp.endpoint_added(&front, &web).unwrap();
                dp.endpoint_added(&front, &peer).unwrap();
                dp.ports_published(&front, &ports).unwrap();
            };
            apply();

            // Every rendered rule is there verbatim, once; nothing else of ours is.
            let all: Vec<Rule> = host_rules()
                .into_iter()
                .chain([&front, &back, &int].into_iter().flat_map(network_rules))
                .chain(endpoint_rules(&web))
                .chain(endpoint_rules(&peer))
                .chain(port_rules(&ports))
                .collect();
            let saved = dp.saved().unwrap();
            let text = save_text();
            for rule in &all {
                assert_eq!(saved.count(rule), 1, "{rule} once in:\n{text}");
            }
            assert_eq!(listed(&dp), expected_lines(&all), "{text}");
            assert!(dp.rules_present().unwrap());
            assert!(dp.missing(&all).unwrap().is_empty());
            // Order: isolation first, then each network's drops/accepts as planned.
            assert_eq!(
                saved.chain_rules(Table::Filter, FORWARD_CHAIN),
                [
                    "-A NETCTL-FORWARD -j NETCTL-ISOLATION-1",
                    "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT",
                    "-A NETCTL-FORWARD -i nc-front ! -o nc-front -m conntrack --ctstate INVALID -j DROP",
                    "-A NETCTL-FORWARD -i nc-front -j ACCEPT",
                    "-A NETCTL-FORWARD -o nc-front -j DROP",
                    "-A NETCTL-FORWARD -o nc-back -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    "-A NETCTL-FORWARD -o nc-back -m conntrack --ctstate DNAT -j ACCEPT",
                    "-A NETCTL-FORWARD -i nc-back ! -o nc-back -m conntrack --ctstate INVALID -j DROP",
                    "-A NETCTL-FORWARD -i nc-back -j ACCEPT",
                    "-A NETCTL-FORWARD -o nc-back -j DROP",
                    "-A NETCTL-FORWARD -i nc-int -o nc-int -j ACCEPT",
                ]
            );
            assert_eq!(
                saved.chain_rules(Table::Filter, ISOLATION_1_CHAIN),
                [
                    "-A NETCTL-ISOLATION-1 -i nc-front ! -o nc-front -j NETCTL-ISOLATION-2",
                    "-A NETCTL-ISOLATION-1 -i nc-back ! -o nc-back -j NETCTL-ISOLATION-2",
                    "-A NETCTL-ISOLATION-1 -i nc-int ! -o nc-int -j DROP",
                    "-A NETCTL-ISOLATION-1 ! -i nc-int -o nc-int -j DROP",
                ]
            );
            assert_eq!(
                saved.chain_rules(Table::Filter, ISOLATION_2_CHAIN),
                [
                    "-A NETCTL-ISOLATION-2 -m conntrack --ctstate DNAT -j RETURN",
                    "-A NETCTL-ISOLATION-2 -o nc-front -j DROP",
                    "-A NETCTL-ISOLATION-2 -o nc-back -j DROP",
                ]
            );
            assert_eq!(
                saved.chain_rules(Table::Filter, "FORWARD"),
                [
                    "-A FORWARD -j NETCTL-FORWARD",
                    "-A FORWARD -i eth9 -j ACCEPT"
                ]
            );
            assert_eq!(
                saved.chain_rules(Table::Nat, "POSTROUTING"),
                [
                    "-A POSTROUTING -o eth9 -j MASQUERADE",
                    "-A POSTROUTING -j NETCTL-POSTROUTING"
                ]
            );
            assert_eq!(
                saved.chain_rules(Table::Raw, "PREROUTING"),
                [
                    "-A PREROUTING -j NETCTL-ANTISPOOF",
                    "-A PREROUTING -i eth9 -j ACCEPT"
                ]
            );
            // Sysctls of this namespace.
            assert_eq!(sysctl("ip_forward"), "1");
            assert_eq!(
                fs::read_to_string(BRIDGE_NF_CALL_IPTABLES).unwrap().trim(),
                "1"
            );
            assert_eq!(sysctl("conf/nc-front/route_localnet"), "1");
            assert_eq!(sysctl("conf/nc-back/route_localnet"), "1");
            assert_eq!(
                sysctl("conf/nc-int/route_localnet"),
                "0",
                "internal: no published ports"
            );

            // Idempotent: the same calls again change nothing at all.
            apply();
            assert_eq!(save_text(), text);

            // No published port on an internal network, and nothing written.
            let err = dp
                .ports_published(
                    &int,
                    &[port(Protocol::Tcp, None, 9, [172, 20, 0, 2], 9, "int")],
                )
                .unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{err}");
            assert_eq!(save_text(), text);

            // Teardown, step by step; each step also when repeated.
            for _ in 0..2 {
                dp.endpoint_removed(&front, &peer).unwrap();
                let saved = dp.saved().unwrap();
                assert_eq!(
                    saved.chain_rules(Table::Raw, ANTISPOOF_CHAIN),
                    saved_lines(&endpoint_rules(&web)),
                    "only the other endpoint's rules stay"
                );
            }
            for _ in 0..2 {
                dp.ports_unpublished(&front, &ports).unwrap();
                let saved = dp.saved().unwrap();
                assert!(
                    saved.chain_rules(Table::Nat, DNAT_CHAIN).is_empty(),
                    "{}",
                    save_text()
                );
                assert!(!dp
                    .missing(&network_rules(&front))
                    .unwrap()
                    .iter()
                    .any(|_| true));
            }
            for _ in 0..2 {
                for net in [&front, &back, &int] {
                    dp.network_down(net).unwrap();
                }
                assert_eq!(
                    listed(&dp),
                    expected_lines(&host_rules()),
                    "{}",
                    save_text()
                );
            }
            for _ in 0..2 {
                dp.host_down().unwrap();
                assert!(dp.netctl_rules().unwrap().is_empty(), "{}", save_text());
                assert!(!dp.rules_present().unwrap());
                assert_eq!(
                    save_text(),
                    before,
                    "built-in chains and others' rules as before"
                );
            }
        });
        assert_eq!(
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            root_forward,
            "the root namespace was not touched"
        );
    }

    #[test]
    fn drift_is_repaired_in_order_and_stale_rules_go() {
        in_private_netns("drift_is_repaired_in_order_and_stale_rules_go", || {
            add_bridge("nc-front");
            let dp = Iptables::new(&host());
            let front = front();
            // network_up alone (no host_up) still makes the chains and jumps.
            dp.network_up(&front).unwrap();
            let all: Vec<Rule> = host_rules()
                .into_iter()
                .chain(network_rules(&front))
                .collect();
            assert_eq!(listed(&dp), expected_lines(&all), "{}", save_text());
            let good = save_text();

            // An accept lost in the middle and the final DROP doubled: a
            // plain "add what is missing" would put the accept after the DROP.
            restore_raw(
                "*filter\n-D NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT\n\
                 -A NETCTL-FORWARD -o nc-front -j DROP\nCOMMIT\n\
                 *nat\n-D POSTROUTING -j NETCTL-POSTROUTING\nCOMMIT\n",
            );
            assert_ne!(save_text(), good);
            dp.network_up(&front).unwrap();
            assert_eq!(save_text(), good, "repaired, in order");

            // A port published twice by hand is trimmed to one copy; a DNAT
            // rule into the subnet left by a crash goes with the network.
            let ports = &front_ports()[..1];
            let dnat = &port_rules(ports)[0];
            restore_raw(&format!(
                "*nat\n{0}\n{0}\n-A NETCTL-DNAT -p tcp -m tcp --dport 2222 -j DNAT --to-destination 172.18.0.9:22\n\
                 -A NETCTL-DNAT -p tcp -m tcp --dport 3333 -j DNAT --to-destination 10.9.0.9:22\nCOMMIT\n",
                dnat.saved()
            ));
            dp.ports_published(&front, ports).unwrap();
            assert_eq!(dp.saved().unwrap().count(dnat), 1);
            // Anti-spoofing rules of an endpoint a crash left behind go with
            // their network too; another subnet's stay.
            let other = Endpoint {
                host_veth: "veth9".into(),
                ip: Ipv4Addr::new(10, 9, 0, 9),
                mac: "02:42:0a:09:00:09".parse().unwrap(),
                ..endpoint()
            };
            dp.endpoint_added(&front, &endpoint()).unwrap();
            dp.endpoint_added(&front, &other).unwrap();
            dp.network_down(&front).unwrap();
            assert_eq!(
                dp.saved().unwrap().chain_rules(Table::Raw, ANTISPOOF_CHAIN),
                saved_lines(&endpoint_rules(&other))
            );
            assert_eq!(
                dp.saved().unwrap().chain_rules(Table::Nat, DNAT_CHAIN),
                ["-A NETCTL-DNAT -p tcp -m tcp --dport 3333 -j DNAT --to-destination 10.9.0.9:22"],
                "only the rule into another subnet stays"
            );
            // host_down removes our chains with whatever is left in them.
            dp.host_down().unwrap();
            assert!(!dp.rules_present().unwrap(), "{}", save_text());
        });
    }

    #[test]
    fn failures_name_the_operation_and_change_nothing() {
        in_private_netns("failures_name_the_operation_and_change_nothing", || {
            let dp = Iptables::new(&host());
            dp.host_up().unwrap();
            let before = save_text();
            // A batch failing on its last line leaves its first lines unapplied.
            let mut batch = Batch::default();
            batch.push(Table::Nat, port_rules(&front_ports())[0].add());
            batch.push(Table::Nat, "-A NETCTL-NOPE -j ACCEPT".into());
            let err = dp
                .restore("iptables: publish 8080/tcp on network front", &batch)
                .unwrap_err();
            assert!(matches!(err, Error::System { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(
                    "iptables: publish 8080/tcp on network front: iptables-restore: line 3 failed"
                ),
                "{msg}"
            );
            assert!(msg.ends_with("(at `-A NETCTL-NOPE -j ACCEPT`)"), "{msg}");
            assert_eq!(save_text(), before, "nothing of the failed batch applied");

            // network_up fails cleanly when the bridge is missing (no sysctl to set).
            let err = dp.network_up(&front()).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("sysctl net.ipv4.conf.nc-front.route_localnet: "),
                "{err}"
            );
            assert_eq!(save_text(), before);

            // Teardown keeps going past a failed line and reports it.
            let mut batch = Batch::default();
            batch.push(Table::Filter, "-D FORWARD -j NO-SUCH-CHAIN".into());
            batch.push(Table::Filter, host_rules()[3].delete());
            let mut errors = Vec::new();
            dp.restore_keep_going("iptables: host teardown (filter)", &batch, &mut errors);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0]
                    .to_string()
                    .starts_with("iptables: host teardown (filter): "),
                "{}",
                errors[0]
            );
            assert_eq!(
                dp.saved().unwrap().count(&host_rules()[3]),
                0,
                "the good line was applied"
            );

            // A missing program is an error naming it.
            let broken = Iptables {
                restore: "/nonexistent/iptables-restore".into(),
                save: SAVE.into(),
            };
            let err = broken
                .ports_published(&front(), &front_ports())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(
                    "iptables: publish 8080/tcp, 127.0.0.1:8081/tcp, 198.51.100.1:5353/udp on network front: \
                     /nonexistent/iptables-restore: "
                ),
                "{err}"
            );
            dp.host_down().unwrap();
            assert!(!dp.rules_present().unwrap());
        });
    }
}
