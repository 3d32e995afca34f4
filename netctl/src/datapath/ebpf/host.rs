//! The host's interfaces in the eBPF datapath: `HOST_IFACES` (ifindex →
//! primary address), the host's addresses as /32 entries of kind
//! `PREFIX_HOST` in `NETWORK_PREFIXES` (address → ifindex) and the uplink
//! programs' TCX links on each interface, kept true to
//! `HostInfo::interfaces` (read from the kernel by the command, or by
//! `netctl watch`). `sync` makes them so, `drift` says how they differ
//! (`doctor`).
//!
//! A link is named `links/<ifname>@<program>` like every TCX link. A pin
//! can outlive its attachment (the kernel detaches a link whose interface
//! is deleted; a new interface may take the name), so a link counts only
//! while it is attached to the interface's current index.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
};

use aya::maps::lpm_trie::Key;
use netctl_common::{
    endpoint::{NetworkPrefix, PREFIX_HOST},
    maps,
};

use super::{
    bpf_error, conntrack_remove,
    maps::{be_ip, ip_from_be, is_absent},
    pins::UPLINK_PROGRAMS,
    sys, Ebpf,
};
use crate::{
    datapath::{Drift, HostIface},
    error::{Error, Result},
};

/// What the maps hold, or should: ifindex → primary address, and address
/// → ifindex (both in the programs' byte order).
#[derive(Default, PartialEq, Eq)]
struct View {
    ifaces: BTreeMap<u32, u32>,
    addrs: BTreeMap<u32, u32>,
}

/// The view `interfaces` imply; an address that is also a network's /32
/// (in `networks`: a gateway) stays the network's.
fn wanted(interfaces: &[HostIface], networks: &BTreeSet<u32>) -> View {
    let mut view = View::default();
    for iface in interfaces {
        if let Some(primary) = iface.primary() {
            view.ifaces.insert(iface.index, be_ip(primary));
        }
        for ip in iface.addresses.iter().map(|ip| be_ip(*ip)) {
            if !networks.contains(&ip) {
                // An address on two interfaces: the first one's.
                view.addrs.entry(ip).or_insert(iface.index);
            }
        }
    }
    view
}

/// The pin names of the uplink programs' links each interface needs.
pub(super) fn wanted_links(interfaces: &[HostIface]) -> impl Iterator<Item = String> + '_ {
    interfaces.iter().flat_map(|iface| {
        UPLINK_PROGRAMS
            .iter()
            .map(move |(prog, _)| format!("{}@{prog}", iface.name))
    })
}

/// Whether a pinned link name is one of an interface's uplink programs.
pub(super) fn is_iface_link(name: &str) -> bool {
    name.split_once('@')
        .is_some_and(|(_, prog)| UPLINK_PROGRAMS.iter().any(|(p, _)| *p == prog))
}

impl Ebpf {
    /// What the maps hold, and the /32 entries of `NETWORK_PREFIXES` that
    /// are a network's (a host address never takes their place).
    fn view(&self) -> Result<(View, BTreeSet<u32>)> {
        let ifaces = self
            .hash::<u32, u32>(maps::HOST_IFACES)?
            .iter()
            .map(|entry| entry.map_err(|e| bpf_error("map HOST_IFACES", e)))
            .collect::<Result<_>>()?;
        let mut addrs = BTreeMap::new();
        let mut networks = BTreeSet::new();
        for entry in self.prefixes()?.iter() {
            let (key, value) = entry.map_err(|e| bpf_error("map NETWORK_PREFIXES", e))?;
            match (key.prefix_len(), value.kind) {
                (32, PREFIX_HOST) => {
                    addrs.insert(key.data(), value.network_id);
                }
                (32, _) => {
                    networks.insert(key.data());
                }
                _ => {}
            }
        }
        Ok((View { ifaces, addrs }, networks))
    }

    /// Whether `iface`'s link of `program` is pinned and attached to it.
    fn iface_link_attached(&self, iface: &HostIface, program: &str) -> bool {
        let path = self.link_path(&iface.name, program);
        path.exists()
            && sys::obj_get(&path)
                .and_then(|fd| {
                    sys::tcx_link_ifindex(fd.as_fd(), &format!("link {}", path.display()))
                })
                .is_ok_and(|index| index == iface.index)
    }

    /// The differences between the datapath's view of the host's
    /// interfaces and the kernel's (links pinned but missing or orphaned
    /// are `audit`'s, with every other link).
    pub(super) fn host_drift(&self) -> Result<Vec<Drift>> {
        let (have, networks) = self.view()?;
        let want = wanted(&self.host.interfaces, &networks);
        let name_of = |index: u32| {
            self.host
                .interfaces
                .iter()
                .find(|i| i.index == index)
                .map_or(format!("#{index}"), |i| i.name.clone())
        };
        let mut drift = Vec::new();
        for (index, ip) in &want.ifaces {
            let object = format!("ebpf host interface {}", name_of(*index));
            match have.ifaces.get(index) {
                None => drift.push(Drift::new(
                    object,
                    format!("address {} missing from map HOST_IFACES", ip_from_be(*ip)),
                )),
                Some(old) if old != ip => drift.push(Drift::new(
                    object,
                    format!(
                        "stale address {} in map HOST_IFACES, the kernel's is {}",
                        ip_from_be(*old),
                        ip_from_be(*ip)
                    ),
                )),
                Some(_) => {}
            }
        }
        for (index, ip) in &have.ifaces {
            if !want.ifaces.contains_key(index) {
                drift.push(Drift::new(
                    format!("ebpf host interface #{index}"),
                    format!(
                        "stale address {} in map HOST_IFACES, no such host interface or address",
                        ip_from_be(*ip)
                    ),
                ));
            }
        }
        for (ip, index) in &want.addrs {
            if have.addrs.get(ip) != Some(index) {
                drift.push(Drift::new(
                    format!("ebpf host address {}", ip_from_be(*ip)),
                    format!("missing from map NETWORK_PREFIXES ({})", name_of(*index)),
                ));
            }
        }
        for ip in have.addrs.keys() {
            if !want.addrs.contains_key(ip) {
                drift.push(Drift::new(
                    format!("ebpf host address {}", ip_from_be(*ip)),
                    "stale in map NETWORK_PREFIXES: no longer an address of the host",
                ));
            }
        }
        for iface in &self.host.interfaces {
            for (program, _) in UPLINK_PROGRAMS {
                let path = self.link_path(&iface.name, program);
                if path.exists() && !self.iface_link_attached(iface, program) {
                    drift.push(Drift::new(
                        format!("ebpf link {}@{program}", iface.name),
                        "pinned, but not attached to the interface",
                    ));
                }
            }
        }
        Ok(drift)
    }

    /// Makes the maps and links follow `HostInfo::interfaces`: each
    /// interface gets the uplink programs (a dead link of its name is
    /// replaced), links of interfaces gone are unpinned, the maps are
    /// rewritten where they differ, and the flows translated to an address
    /// the host no longer has are forgotten (as the kernel's MASQUERADE
    /// forgets them when an address goes). Returns what changed.
    pub(super) fn sync_host_ifaces(&self) -> Result<Vec<String>> {
        // Not loaded yet, or loaded by another build whose maps this one
        // must not touch before taking it over (which syncs after).
        if !self.is_loaded() || !matches!(self.upgrade_plan(), Ok(None)) {
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        // Attach first, detach after: an interface renamed has its new link
        // before its old one goes (TCX runs the first program of a chain
        // that gives a verdict, so two at once are harmless).
        for iface in &self.host.interfaces {
            let mut attached = false;
            for (program, hook) in UPLINK_PROGRAMS {
                if self.iface_link_attached(iface, program) {
                    continue;
                }
                match self.attach_iface(&iface.name, program, hook) {
                    Ok(()) => attached = true,
                    Err(e) => errors.push(e),
                }
            }
            if attached {
                changes.push(format!("interface {}: programs attached", iface.name));
            }
        }
        let wanted_names: BTreeSet<String> = wanted_links(&self.host.interfaces).collect();
        let mut detached = BTreeSet::new();
        for (target, program) in self.pinned_links() {
            let name = format!("{target}@{program}");
            if is_iface_link(&name) && !wanted_names.contains(&name) {
                match Self::unpin_link(&self.link_path(&target, &program)) {
                    Ok(()) => {
                        detached.insert(target);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        changes.extend(
            detached
                .into_iter()
                .map(|target| format!("interface {target}: programs detached")),
        );

        let (have, networks) = self.view()?;
        let want = wanted(&self.host.interfaces, &networks);
        if want != have {
            changes.extend(self.write_view(&want, &have, &mut errors));
        }
        Error::collect(errors).map(|()| changes)
    }

    /// Rewrites the maps from `have` to `want`: additions and changes
    /// first, so that an address moving never leaves a gap.
    fn write_view(&self, want: &View, have: &View, errors: &mut Vec<Error>) -> Vec<String> {
        let mut changes = Vec::new();
        match self.hash::<u32, u32>(maps::HOST_IFACES) {
            Ok(mut map) => {
                for (index, ip) in &want.ifaces {
                    if have.ifaces.get(index) != Some(ip) {
                        errors.extend(
                            map.insert(index, ip, 0)
                                .map_err(|e| bpf_error("map HOST_IFACES", e))
                                .err(),
                        );
                    }
                }
                for index in have.ifaces.keys().filter(|k| !want.ifaces.contains_key(k)) {
                    match map.remove(index) {
                        Ok(()) => {}
                        Err(e) if is_absent(&e) => {}
                        Err(e) => errors.push(bpf_error("map HOST_IFACES", e)),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match self.prefixes() {
            Ok(mut prefixes) => {
                for (ip, index) in &want.addrs {
                    if have.addrs.get(ip) != Some(index) {
                        let value = NetworkPrefix {
                            network_id: *index,
                            kind: PREFIX_HOST,
                        };
                        errors.extend(
                            prefixes
                                .insert(&Key::new(32, *ip), value, 0)
                                .map_err(|e| bpf_error("map NETWORK_PREFIXES", e))
                                .err(),
                        );
                    }
                }
                for ip in have.addrs.keys().filter(|k| !want.addrs.contains_key(k)) {
                    match prefixes.remove(&Key::new(32, *ip)) {
                        Ok(()) => {}
                        Err(e) if is_absent(&e) => {}
                        Err(e) => errors.push(bpf_error("map NETWORK_PREFIXES", e)),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        for (index, ip) in &want.ifaces {
            if have.ifaces.get(index) != Some(ip) {
                let was = have
                    .ifaces
                    .get(index)
                    .map_or(String::new(), |old| format!(" (was {})", ip_from_be(*old)));
                changes.push(format!(
                    "interface #{index}: translates to {}{was}",
                    ip_from_be(*ip)
                ));
            }
        }
        let gone: Vec<u32> = have
            .addrs
            .keys()
            .filter(|ip| !want.addrs.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            match conntrack_remove(&self.pin_dir, |k, e| {
                [k.saddr, k.daddr, e.saddr, e.daddr].contains(&ip)
            }) {
                Ok(flows) => changes.push(format!(
                    "address {} gone: {flows} flow entries forgotten",
                    ip_from_be(ip)
                )),
                Err(e) => errors.push(e),
            }
        }
        changes
    }
}
