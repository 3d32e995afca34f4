//! `netctl doctor` for the eBPF datapath: the pins, links and map entries
//! the state implies, against what is pinned and what the maps hold.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    path::Path,
};

use netctl_common::{
    endpoint::{EndpointInfo, NetworkInfo, PrefixEntry, PREFIX_HOST},
    maps,
    portmap::{PortKey, PortTarget},
};

use super::{
    bpf_error, endpoint_info, host, ifindex,
    maps::{be_ip, ip_from_be, port_key, prefix_key},
    network_info,
    pins::ENDPOINT_INGRESS,
    Ebpf,
};
use crate::{
    datapath::{Datapath, Drift},
    error::{Error, Result},
    model::{DatapathKind, Endpoint, Network},
    state::State,
};

/// Endpoints of the state with their network.
fn endpoints(state: &State) -> impl Iterator<Item = (&Network, &Endpoint)> {
    state.containers.values().flat_map(move |c| {
        c.endpoints
            .iter()
            .filter_map(move |ep| state.networks.get(&ep.network).map(|net| (net, ep)))
    })
}

/// Names under `links/` (`<ifname>@<program>`).
fn pinned_links(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Links the state and the host imply: the uplink programs on each host
/// interface, one per endpoint.
fn wanted_links(dp: &Ebpf, state: &State) -> BTreeSet<String> {
    let mut wanted: BTreeSet<String> = endpoints(state)
        .map(|(_, ep)| format!("{}@{ENDPOINT_INGRESS}", ep.host_veth))
        .collect();
    wanted.extend(host::wanted_links(&dp.host.interfaces));
    wanted
}

/// The drifts of one endpoint: entry absent or stale, link not pinned.
fn endpoint_drift(dp: &Ebpf, net: &Network, ep: &Endpoint, links: &BTreeSet<String>) -> Vec<Drift> {
    let object = format!("ebpf endpoint {} ({})", ep.ip, ep.host_veth);
    let mut drift = Vec::new();
    match (
        ifindex(&ep.host_veth).map(|index| endpoint_info(net, ep, index)),
        dp.hash::<u32, EndpointInfo>(maps::ENDPOINTS)
            .map(|m| m.get(&be_ip(ep.ip), 0).ok()),
    ) {
        (_, Ok(None)) => drift.push(Drift::new(&object, "missing from map ENDPOINTS")),
        (Ok(want), Ok(Some(have))) if want != have => {
            drift.push(Drift::new(&object, "stale entry in map ENDPOINTS"))
        }
        (Err(e), _) | (_, Err(e)) => drift.push(Drift::new(&object, e.to_string())),
        _ => {}
    }
    if !links.contains(&format!("{}@{ENDPOINT_INGRESS}", ep.host_veth)) {
        drift.push(Drift::new(&object, "program link not pinned"));
    }
    drift
}

/// The NETWORK_PREFIXES entries the state implies: each network's subnet
/// and gateway.
fn wanted_prefixes(state: &State) -> impl Iterator<Item = PrefixEntry> + '_ {
    state
        .networks
        .values()
        .flat_map(|net| network_info(net, 0).prefixes(net.id))
}

/// What the links and maps hold that no object of the state owns: what
/// `audit` reports and `reconcile` removes.
struct Orphans {
    links: Vec<String>,
    network_ids: Vec<u32>,
    /// NETWORK_PREFIXES entries no network of the state implies, or that
    /// say something else than it does.
    prefixes: Vec<PrefixEntry>,
    endpoint_ips: Vec<u32>,
    ports: Vec<PortKey>,
}

fn orphans(dp: &Ebpf, state: &State, links: &BTreeSet<String>) -> Result<Orphans> {
    let wanted = wanted_links(dp, state);
    let known_ids: BTreeSet<u32> = state.networks.values().map(|n| n.id).collect();
    let known_ips: BTreeSet<u32> = endpoints(state).map(|(_, ep)| be_ip(ep.ip)).collect();
    let known_prefixes: Vec<PrefixEntry> = wanted_prefixes(state).collect();
    let known_ports: HashSet<PortKey> = state.ports().map(port_key).collect();
    Ok(Orphans {
        // The cgroup links belong to the host, not to any object.
        links: links
            .difference(&wanted)
            .filter(|name| !name.starts_with("cgroup@"))
            .cloned()
            .collect(),
        network_ids: dp
            .hash::<u32, NetworkInfo>(maps::NETWORKS)?
            .keys()
            .flatten()
            .filter(|id| !known_ids.contains(id))
            .collect(),
        prefixes: dp
            .prefixes()?
            .iter()
            .flatten()
            .map(|(key, value)| (key.prefix_len(), key.data(), value))
            // The host's addresses are the host sync's (host.rs).
            .filter(|(_, _, value)| value.kind != PREFIX_HOST)
            .filter(|entry| !known_prefixes.contains(entry))
            .collect(),
        endpoint_ips: dp
            .hash::<u32, EndpointInfo>(maps::ENDPOINTS)?
            .keys()
            .flatten()
            .filter(|ip| !known_ips.contains(ip))
            .collect(),
        ports: dp
            .hash::<PortKey, PortTarget>(maps::PORTMAP)?
            .keys()
            .flatten()
            .filter(|k| !known_ports.contains(k))
            .collect(),
    })
}

pub(super) fn audit(dp: &Ebpf, state: &State) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    if state.datapath != Some(DatapathKind::Ebpf) {
        if dp.pin_dir.exists() {
            drift.push(Drift::new(
                format!("ebpf pins {}", dp.pin_dir.display()),
                "present, but the host has no eBPF network",
            ));
        }
        return Ok(drift);
    }
    let missing_maps: Vec<&str> = maps::ALL
        .into_iter()
        .filter(|name| !dp.map_path(name).exists())
        .collect();
    if !missing_maps.is_empty() {
        drift.push(Drift::new(
            format!("ebpf pins {}", dp.pin_dir.display()),
            format!("maps not pinned: {}", missing_maps.join(", ")),
        ));
        return Ok(drift);
    }
    let links = pinned_links(&dp.pin_dir);
    let wanted = wanted_links(dp, state);
    for name in wanted.difference(&links) {
        if !name.contains(ENDPOINT_INGRESS) {
            drift.push(Drift::new(format!("ebpf link {name}"), "not pinned"));
        }
    }

    // The host's addresses as the datapath has them (stale after a
    // renumbering that no command or `netctl watch` followed).
    drift.extend(dp.host_drift()?);

    let networks = dp.hash::<u32, NetworkInfo>(maps::NETWORKS)?;
    for net in state.networks.values() {
        let object = format!("ebpf network {}", net.name);
        match networks.get(&net.id, 0) {
            Err(_) => drift.push(Drift::new(&object, "missing from map NETWORKS")),
            Ok(have) if ifindex(&net.bridge).ok() != Some(have.bridge_ifindex) => {
                drift.push(Drift::new(&object, "stale bridge in map NETWORKS"))
            }
            Ok(_) => {}
        }
    }
    let prefixes = dp.prefixes()?;
    for net in state.networks.values() {
        let object = format!("ebpf network {}", net.name);
        for entry in network_info(net, 0).prefixes(net.id) {
            if prefixes.get(&prefix_key(&entry), 0).ok() != Some(entry.2) {
                let what = if entry.0 == 32 { "gateway" } else { "subnet" };
                drift.push(Drift::new(
                    &object,
                    format!("{what} missing from map NETWORK_PREFIXES"),
                ));
            }
        }
    }
    for (net, ep) in endpoints(state) {
        drift.extend(endpoint_drift(dp, net, ep, &links));
    }
    let portmap = dp.hash::<PortKey, PortTarget>(maps::PORTMAP)?;
    for p in state.ports() {
        let object = format!("ebpf port {}", p.describe());
        match portmap.get(&port_key(p), 0) {
            Err(_) => drift.push(Drift::new(&object, "missing from map PORTMAP")),
            Ok(t) if t.ip != be_ip(p.container_ip) || t.port != p.container_port.to_be() => {
                drift.push(Drift::new(&object, "points elsewhere in map PORTMAP"))
            }
            Ok(_) => {}
        }
    }
    let orphans = orphans(dp, state, &links)?;
    for name in &orphans.links {
        drift.push(Drift::new(
            format!("ebpf link {name}"),
            "not implied by the state",
        ));
    }
    for id in &orphans.network_ids {
        drift.push(Drift::new(
            format!("ebpf network id {id}"),
            "in map NETWORKS, not in the state",
        ));
    }
    for (len, addr, value) in &orphans.prefixes {
        drift.push(Drift::new(
            format!("ebpf prefix {}/{len}", ip_from_be(*addr)),
            format!(
                "in map NETWORK_PREFIXES (network id {}), not in the state",
                value.network_id
            ),
        ));
    }
    for ip in &orphans.endpoint_ips {
        drift.push(Drift::new(
            format!("ebpf endpoint {}", ip_from_be(*ip)),
            "in map ENDPOINTS, not in the state",
        ));
    }
    for key in &orphans.ports {
        drift.push(Drift::new(
            format!(
                "ebpf port {}:{}/{}",
                ip_from_be(key.host_ip),
                u16::from_be(key.host_port),
                key.proto
            ),
            "in map PORTMAP, not in the state",
        ));
    }
    Ok(drift)
}

pub(super) fn reconcile(dp: &Ebpf, state: &State) -> Result<()> {
    if state.datapath != Some(DatapathKind::Ebpf) {
        return dp.host_down();
    }
    let mut errors = Vec::new();
    // A half-pinned datapath is reloaded whole: the maps it kept are reused.
    if maps::ALL.iter().any(|name| !dp.map_path(name).exists()) {
        errors.extend(dp.host_down().err());
    }
    errors.extend(dp.host_up().err());
    errors.extend(dp.sync_host_ifaces().err());
    let links = pinned_links(&dp.pin_dir);
    for net in state.networks.values() {
        // Doctor reads the kernel: the indexes of the links as they are now.
        errors.extend(
            ifindex(&net.bridge)
                .and_then(|index| dp.network_up(net, index))
                .err(),
        );
    }
    for (net, ep) in endpoints(state) {
        if !endpoint_drift(dp, net, ep, &links).is_empty() {
            errors.extend(
                ifindex(&ep.host_veth)
                    .and_then(|index| dp.endpoint_added(net, ep, index))
                    .err(),
            );
        }
    }
    for net in state.networks.values() {
        let ports: Vec<_> = state
            .ports()
            .filter(|p| p.network == net.name)
            .cloned()
            .collect();
        if !ports.is_empty() {
            errors.extend(dp.ports_published(net, &ports).err());
        }
    }
    // Then what nothing owns.
    let orphans = orphans(dp, state, &links)?;
    for name in &orphans.links {
        errors.extend(Ebpf::unpin_link(&dp.pin_dir.join("links").join(name)).err());
    }
    let mut networks = dp.hash::<u32, NetworkInfo>(maps::NETWORKS)?;
    for id in &orphans.network_ids {
        errors.extend(
            networks
                .remove(id)
                .map_err(|e| bpf_error("map NETWORKS", e))
                .err(),
        );
    }
    let mut prefixes = dp.prefixes()?;
    for entry in &orphans.prefixes {
        errors.extend(
            prefixes
                .remove(&prefix_key(entry))
                .map_err(|e| bpf_error("map NETWORK_PREFIXES", e))
                .err(),
        );
    }
    let mut endpoint_map = dp.hash::<u32, EndpointInfo>(maps::ENDPOINTS)?;
    for ip in &orphans.endpoint_ips {
        errors.extend(
            endpoint_map
                .remove(ip)
                .map_err(|e| bpf_error("map ENDPOINTS", e))
                .err(),
        );
    }
    let mut portmap = dp.hash::<PortKey, PortTarget>(maps::PORTMAP)?;
    for key in &orphans.ports {
        errors.extend(
            portmap
                .remove(key)
                .map_err(|e| bpf_error("map PORTMAP", e))
                .err(),
        );
    }
    Error::collect(errors)
}
