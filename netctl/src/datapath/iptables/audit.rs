//! `netctl doctor` for the iptables datapath: the rules the state implies,
//! against what `iptables-save` and `ip6tables-save` show (each family on
//! its own, with the same checks), and the ARP and neighbour-advertisement
//! rules against what nftables lists (`arp.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    batch::Batch,
    rules::{
        endpoint_rules, endpoint_rules6, host_rules, network_rules, network_rules6, port_rules,
        port_rules6, Rule, Table, CHAINS, CHAIN_PREFIX,
    },
    save::{Saved, SavedRule},
    Iptables,
};
use crate::{
    datapath::{Datapath, Drift},
    error::{Error, Result},
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

/// The two families: iptables' rule builders, and ip6tables'.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn network(self, net: &Network) -> Vec<Rule> {
        match self {
            Family::V4 => network_rules(net),
            Family::V6 => network_rules6(net),
        }
    }

    fn endpoint(self, ep: &Endpoint) -> Vec<Rule> {
        match self {
            Family::V4 => endpoint_rules(ep),
            Family::V6 => endpoint_rules6(ep),
        }
    }

    fn ports(self, ports: &[PortMapping]) -> Vec<Rule> {
        match self {
            Family::V4 => port_rules(ports),
            Family::V6 => port_rules6(ports),
        }
    }

    /// The datapath speaking this family.
    fn of(self, ipt: &Iptables) -> Iptables {
        match self {
            Family::V4 => ipt.clone(),
            Family::V6 => ipt.ip6(),
        }
    }
}

/// Every rule the state implies in one family. None at all when the host
/// is not on this datapath (its first network fixes that), and none in
/// ip6tables without a dual-stack network.
fn desired_rules(state: &State, family: Family) -> Vec<Rule> {
    if state.datapath != Some(DatapathKind::Iptables) {
        return Vec::new();
    }
    if family == Family::V6 && state.networks.values().all(|n| n.ipv6.is_none()) {
        return Vec::new();
    }
    let mut rules = host_rules();
    for net in state.networks.values() {
        rules.extend(family.network(net));
    }
    for ctr in state.containers.values() {
        for ep in ctr
            .endpoints
            .iter()
            .filter(|ep| state.networks.contains_key(&ep.network))
        {
            rules.extend(family.endpoint(ep));
        }
    }
    let ports: Vec<PortMapping> = state.ports().cloned().collect();
    rules.extend(family.ports(&ports));
    rules
}

/// The endpoints whose ARP rules the state implies.
fn desired_endpoints(state: &State) -> Vec<&Endpoint> {
    if state.datapath != Some(DatapathKind::Iptables) {
        return Vec::new();
    }
    state
        .containers
        .values()
        .flat_map(|ctr| &ctr.endpoints)
        .filter(|ep| state.networks.contains_key(&ep.network))
        .collect()
}

/// Rules in our chains, or jumping into them, that no object of the state
/// implies.
fn extra_rules<'a>(saved: &'a Saved, desired: &[Rule]) -> Vec<&'a SavedRule> {
    let wanted: BTreeSet<(Table, &str, &str)> = desired
        .iter()
        .map(|r| (r.table, r.chain, r.spec.as_str()))
        .collect();
    Table::ALL
        .into_iter()
        .flat_map(|table| saved.rules(table))
        .filter(|r| r.in_netctl_chain() || r.jumps_to_netctl_chain())
        .filter(|r| !wanted.contains(&(r.table, r.chain.as_str(), r.spec.as_str())))
        .collect()
}

/// Chains named like ours that netctl does not make.
fn extra_chains(saved: &Saved) -> Vec<(Table, String)> {
    Table::ALL
        .into_iter()
        .flat_map(|table| {
            saved
                .chains(table)
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .filter(move |c| !CHAINS.contains(&(table, c)))
                .map(move |c| (table, c.to_owned()))
        })
        .collect()
}

pub(super) fn audit(ipt: &Iptables, state: &State) -> Result<Vec<Drift>> {
    let mut drift = audit_family(ipt, state, Family::V4)?;
    drift.extend(audit_family(ipt, state, Family::V6)?);
    let host_wanted = state.datapath == Some(DatapathKind::Iptables);
    drift.extend(ipt.nft.audit(&desired_endpoints(state), host_wanted)?);
    Ok(drift)
}

/// One family's chains and rules against the state.
fn audit_family(ipt: &Iptables, state: &State, family: Family) -> Result<Vec<Drift>> {
    let saved = family.of(ipt).saved()?;
    let desired = desired_rules(state, family);
    let program = family.program();
    let mut drift = Vec::new();
    if !desired.is_empty() {
        for (table, chain) in CHAINS {
            if !saved.has_chain(table, chain) {
                drift.push(Drift::new(
                    format!("{program} chain {table} {chain}"),
                    "missing",
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for rule in &desired {
        if !seen.insert(rule.to_string()) {
            continue;
        }
        match saved.count(rule) {
            0 => drift.push(Drift::new(format!("{program} rule `{rule}`"), "missing")),
            1 => {}
            n => drift.push(Drift::new(
                format!("{program} rule `{rule}`"),
                format!("present {n} times"),
            )),
        }
    }
    for rule in extra_rules(&saved, &desired) {
        drift.push(Drift::new(
            format!("{program} rule `{rule}`"),
            "not implied by the state",
        ));
    }
    for (table, chain) in extra_chains(&saved) {
        drift.push(Drift::new(
            format!("{program} chain {table} {chain}"),
            "not made by netctl",
        ));
    }
    Ok(drift)
}

pub(super) fn reconcile(ipt: &Iptables, state: &State) -> Result<()> {
    if state.datapath != Some(DatapathKind::Iptables) {
        return ipt.host_down();
    }
    let mut errors = Vec::new();
    // Re-applying is idempotent and puts each group back in its order.
    errors.extend(ipt.host_up().err());
    let mut ports: BTreeMap<&str, Vec<PortMapping>> = BTreeMap::new();
    for p in state.ports() {
        ports.entry(p.network.as_str()).or_default().push(p.clone());
    }
    for net in state.networks.values() {
        errors.extend(ipt.apply_network(net).err());
        for ep in state
            .members(&net.name)
            .filter_map(|c| c.endpoint(&net.name))
        {
            errors.extend(ipt.apply_endpoint(ep).err());
        }
        if let Some(ports) = ports.get(net.name.as_str()) {
            errors.extend(ipt.ports_published(net, ports).err());
        }
    }
    // Then whatever nothing owns, and duplicates beyond the first copy.
    for family in [Family::V4, Family::V6] {
        errors.extend(clean_family(ipt, state, family).err());
    }
    errors.extend(ipt.nft.reconcile(&desired_endpoints(state)).err());
    Error::collect(errors)
}

/// Deletes one family's rules and chains that nothing in the state owns,
/// and the copies of a rule beyond the first.
fn clean_family(ipt: &Iptables, state: &State, family: Family) -> Result<()> {
    let ipt = family.of(ipt);
    let saved = ipt.saved()?;
    let desired = desired_rules(state, family);
    let mut batch = Batch::default();
    for rule in extra_rules(&saved, &desired) {
        batch.push(rule.table, rule.delete());
    }
    let mut seen = BTreeSet::new();
    for rule in &desired {
        if seen.insert(rule.to_string()) {
            (1..saved.count(rule)).for_each(|_| batch.push(rule.table, rule.delete()));
        }
    }
    for (table, chain) in extra_chains(&saved) {
        batch.push(table, format!("-F {chain}"));
        batch.push(table, format!("-X {chain}"));
    }
    ipt.restore(&format!("{}: doctor --fix", family.program()), &batch)
}
