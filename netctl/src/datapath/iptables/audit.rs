//! `netctl doctor` for the iptables datapath: the rules the state implies,
//! against what `iptables-save` shows, and the ARP rules against what
//! nftables lists (`arp.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    batch::Batch,
    rules::{
        endpoint_rules, host_rules, network_rules, port_rules, Rule, Table, CHAINS, CHAIN_PREFIX,
    },
    save::{Saved, SavedRule},
    Iptables,
};
use crate::{
    datapath::{Datapath, Drift},
    error::{Error, Result},
    model::{DatapathKind, Endpoint, PortMapping},
    state::State,
};

/// Every rule the state implies. None at all when the host is not on this
/// datapath (its first network fixes that).
fn desired_rules(state: &State) -> Vec<Rule> {
    if state.datapath != Some(DatapathKind::Iptables) {
        return Vec::new();
    }
    let mut rules = host_rules();
    for net in state.networks.values() {
        rules.extend(network_rules(net));
    }
    for ctr in state.containers.values() {
        for ep in ctr
            .endpoints
            .iter()
            .filter(|ep| state.networks.contains_key(&ep.network))
        {
            rules.extend(endpoint_rules(ep));
        }
    }
    let ports: Vec<PortMapping> = state.ports().cloned().collect();
    rules.extend(port_rules(&ports));
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
    let saved = ipt.saved()?;
    let desired = desired_rules(state);
    let mut drift = Vec::new();
    if !desired.is_empty() {
        for (table, chain) in CHAINS {
            if !saved.has_chain(table, chain) {
                drift.push(Drift::new(
                    format!("iptables chain {table} {chain}"),
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
            0 => drift.push(Drift::new(format!("iptables rule `{rule}`"), "missing")),
            1 => {}
            n => drift.push(Drift::new(
                format!("iptables rule `{rule}`"),
                format!("present {n} times"),
            )),
        }
    }
    for rule in extra_rules(&saved, &desired) {
        drift.push(Drift::new(
            format!("iptables rule `{rule}`"),
            "not implied by the state",
        ));
    }
    for (table, chain) in extra_chains(&saved) {
        drift.push(Drift::new(
            format!("iptables chain {table} {chain}"),
            "not made by netctl",
        ));
    }
    drift.extend(
        ipt.nft
            .audit(&desired_endpoints(state), !desired.is_empty())?,
    );
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
    let saved = ipt.saved()?;
    let desired = desired_rules(state);
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
    errors.extend(ipt.restore("iptables: doctor --fix", &batch).err());
    errors.extend(ipt.nft.reconcile(&desired_endpoints(state)).err());
    Error::collect(errors)
}
