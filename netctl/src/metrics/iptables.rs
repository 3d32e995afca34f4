//! The iptables datapath's families: the packet and byte counters of the
//! rules in netctl's chains (`iptables-save -c`), each labelled by what
//! the rule is for and whom it is about. Published ports' DNAT rules and
//! endpoints' anti-spoofing rules are recognised exactly (rebuilt from the
//! state and compared); a network's rules by their shape, the network by
//! the bridge or subnet they name.
//!
//! iptables counts in the nat table only the first packet of each
//! connection: a DNAT or MASQUERADE rule's counters are connections (and
//! their first packets' bytes), a filter or raw rule's are every packet.

use super::exposition::{Family, Kind};
use crate::{
    datapath::iptables::{
        endpoint_rules, port_rules, CountedRule, SavedRule, ANTISPOOF_CHAIN, CHAIN_PREFIX,
        DNAT_CHAIN, FORWARD_CHAIN, ISOLATION_1_CHAIN, ISOLATION_2_CHAIN, POSTROUTING_CHAIN,
    },
    state::State,
};

const LABELS: &[&str] = &["table", "chain", "rule", "network", "container", "port"];

/// What a rule is about: the values of [`LABELS`] after table and chain.
#[derive(Default)]
struct Meaning {
    rule: &'static str,
    network: String,
    container: String,
    port: String,
}

/// The families of the iptables datapath.
pub fn families(state: &State, rules: &[CountedRule]) -> Vec<Family> {
    let mut packets = Family::new(
        "netctl_iptables_rule_packets_total",
        Kind::Counter,
        LABELS,
        "Packets matched by the rules of netctl's iptables chains (nat rules: first packets of connections), by what the rule is for.",
    );
    let mut bytes = Family::new(
        "netctl_iptables_rule_bytes_total",
        Kind::Counter,
        LABELS,
        "Bytes (IP packets) matched by the rules of netctl's iptables chains (nat rules: first packets of connections).",
    );
    for counted in rules.iter().filter(|c| c.rule.in_netctl_chain()) {
        let meaning = meaning(state, &counted.rule);
        let labels = [
            counted.rule.table.as_str(),
            &counted.rule.chain,
            meaning.rule,
            &meaning.network,
            &meaning.container,
            &meaning.port,
        ];
        packets.add(labels, counted.packets);
        bytes.add(labels, counted.bytes);
    }
    vec![packets, bytes]
}

fn meaning(state: &State, rule: &SavedRule) -> Meaning {
    for ctr in state.containers.values() {
        for port in &ctr.ports {
            if port_rules(std::slice::from_ref(port))
                .iter()
                .any(|r| rule.is(r))
            {
                return Meaning {
                    rule: "dnat",
                    network: port.network.clone(),
                    container: ctr.name.clone(),
                    port: port.describe(),
                };
            }
        }
        for ep in &ctr.endpoints {
            // endpoint_rules: the address rule, then the MAC rule.
            let what = match endpoint_rules(ep).iter().position(|r| rule.is(r)) {
                Some(0) => "antispoof_address_drop",
                Some(_) => "antispoof_mac_drop",
                None => continue,
            };
            return Meaning {
                rule: what,
                network: ep.network.clone(),
                container: ctr.name.clone(),
                port: String::new(),
            };
        }
    }
    Meaning {
        rule: network_rule_kind(rule),
        network: network_of(state, rule).unwrap_or_default(),
        ..Meaning::default()
    }
}

/// The value after `option` among a rule's matches.
fn option<'a>(rule: &'a SavedRule, option: &str) -> Option<&'a str> {
    let mut words = rule.matches.iter();
    words.find(|w| *w == option)?;
    words.next().map(String::as_str)
}

/// What a rule of a network (or of the host's chains) does, from its
/// chain, target and matches (see `datapath/iptables/rules.rs`).
fn network_rule_kind(rule: &SavedRule) -> &'static str {
    let target = rule.target.as_deref().unwrap_or("");
    let ctstate = option(rule, "--ctstate").unwrap_or("");
    let has_in = option(rule, "-i").is_some();
    let has_out = option(rule, "-o").is_some();
    match (rule.chain.as_str(), target) {
        (FORWARD_CHAIN, ISOLATION_1_CHAIN) => "isolation",
        (FORWARD_CHAIN, "ACCEPT") if ctstate.contains("ESTABLISHED") => "accept_established",
        (FORWARD_CHAIN, "ACCEPT") if ctstate == "DNAT" => "accept_published",
        (FORWARD_CHAIN, "ACCEPT") if has_in && has_out => "accept_within_network",
        (FORWARD_CHAIN, "ACCEPT") => "accept_from_network",
        (FORWARD_CHAIN, "DROP") if ctstate == "INVALID" => "drop_invalid",
        (FORWARD_CHAIN, "DROP") => "drop_unsolicited",
        (ISOLATION_1_CHAIN, ISOLATION_2_CHAIN) => "isolation_leaving_network",
        (ISOLATION_1_CHAIN, "DROP") if has_in => "drop_internal_egress",
        (ISOLATION_1_CHAIN, "DROP") => "drop_internal_ingress",
        (ISOLATION_2_CHAIN, "RETURN") => "return_published",
        (ISOLATION_2_CHAIN, "DROP") => "drop_isolated",
        (POSTROUTING_CHAIN, "MASQUERADE") if ctstate == "DNAT" => "masquerade_hairpin",
        (POSTROUTING_CHAIN, "MASQUERADE")
            if rule
                .source
                .as_ref()
                .is_some_and(|s| s.net.addr().is_loopback()) =>
        {
            "masquerade_localhost"
        }
        (POSTROUTING_CHAIN, "MASQUERADE") => "masquerade_egress",
        (DNAT_CHAIN, "DNAT") => "dnat_unknown_port",
        (ANTISPOOF_CHAIN, "DROP") => "antispoof_unknown_endpoint",
        (_, t) if t.starts_with(CHAIN_PREFIX) => "jump",
        _ => "other",
    }
}

/// The network a rule is about: the one whose bridge it names (`-i`/`-o`),
/// or whose subnet is its source.
fn network_of(state: &State, rule: &SavedRule) -> Option<String> {
    let bridges = [option(rule, "-i"), option(rule, "-o")];
    state
        .networks
        .values()
        .find(|net| {
            bridges.contains(&Some(net.bridge.as_str()))
                || rule
                    .source
                    .as_ref()
                    .is_some_and(|s| !s.negated && s.net == ipnet::IpNet::V4(net.subnet.trunc()))
        })
        .map(|net| net.name.clone())
}
