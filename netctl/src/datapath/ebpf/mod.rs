//! The eBPF datapath: TC programs and BPF maps, no iptables.
//!
//! `host_up` loads the object once, pins every map, program and link under
//! the host's bpffs directory (`/sys/fs/bpf/netctl/<host id>/`) and writes
//! `CONFIG`. Every later change — a network, an endpoint, a published port —
//! opens what is pinned and edits maps (plus one TCX attach per endpoint):
//! no reload, and nothing stops when netctl exits, because the links are
//! pinned. `host_down` unpins everything, which detaches the programs.
//!
//! Layout of the pin directory:
//! ```text
//! LAYOUT                      the layout record: datapath version, object fingerprint, each map's layout version
//! maps/<NAME>                 CONFIG, ENDPOINTS, NETWORKS, NETWORK_PREFIXES, PORTMAP, CONNTRACK,
//!                             CT_RECLAIM, CT_UNCONFIRMED, SNAT_SEARCH, SOCK_REVNAT, STATS,
//!                             FRAGMENTS, TAIL_CALLS, HOST_IFACES
//! next/<NAME>                 (during an upgrade) a migrated map being filled
//! progs/<program>             endpoint_ingress, uplink_ingress, uplink_egress, sock_*
//! links/<ifname>@<program>    TCX links (each host interface's uplink_ingress and
//!                             uplink_egress, and each endpoint's host-side veth)
//! links/cgroup@<program>      cgroup sock_addr links (on --cgroup)
//! ```
//!
//! One concern a module: [`pins`] (bpffs, loading, attaching, pinning and
//! opening what is pinned), [`maps`] (typed map access, the batch dump and
//! the byte order of keys), [`conntrack`] (the table's size and its flows),
//! [`host`] (the host's interfaces: their primary addresses in
//! `HOST_IFACES`, all their addresses as `PREFIX_HOST` entries of
//! `NETWORK_PREFIXES`, the uplink programs on each),
//! [`stats`], [`trace`], [`audit`] (`netctl doctor`), [`upgrade`] (taking
//! over a datapath loaded by another build: plan, migrations, the layout
//! record) and [`sys`] (the bpf(2) commands aya lacks: link update, object
//! info, byte-level map access). This module holds
//! the [`Datapath`] impl that ties them together.

mod audit;
mod conntrack;
mod host;
mod maps;
mod pins;
mod stats;
mod sys;
mod trace;
mod upgrade;

use std::path::PathBuf;

use netctl_common::{
    endpoint::{EndpointInfo, NetworkInfo, NETWORK_FLAG_INTERNAL},
    maps as map_names,
    portmap::{PortKey, PortTarget},
};

use self::maps::{be_ip, is_absent, port_key, prefix_key};
pub use self::{
    conntrack::{
        conntrack_capacity, conntrack_gc, conntrack_list, conntrack_max, conntrack_remove, Flow,
        CONNTRACK_MAX_DEFAULT, CONNTRACK_MAX_ENV,
    },
    pins::{ensure_bpffs, fill_tail_calls, netns_cookie, EBPF_OBJECT},
    stats::stats,
    trace::{follow, Clock, TRACE_MAX_SECONDS},
    upgrade::{binary_versions, check_layouts, loaded_versions, Versions},
};
use super::{Datapath, Drift, HostInfo};
use crate::{
    error::{Error, Result},
    failpoint,
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

/// Places the SNAT source ports when the datapath is loaded (the host's
/// first network): `MIN-MAX`, inclusive.
pub const SNAT_PORTS_ENV: &str = "NETCTL_SNAT_PORTS";
/// SNAT source ports by default: MASQUERADE's range for ports from 1024
/// (1024–65535). The host's ephemeral range (`ip_local_port_range`, read at
/// load) is always left out of it, so that a flow never takes the tuple of
/// a host socket's connection (the kernel remaps such a clash; a map cannot),
/// and so is every published port on the address (checked per port). With
/// Linux's default range, 1024–32767 and 61000–65535: 36,280 ports per
/// destination address and port.
pub const SNAT_PORTS_DEFAULT: (u16, u16) = (1024, 65_535);

/// The SNAT ports asked by [`SNAT_PORTS_ENV`], or the default, checked
/// against the host's ephemeral range `skip` (some port must remain).
pub fn snat_ports(skip: (u16, u16)) -> Result<(u16, u16)> {
    let bad = |raw: &str, why: String| Error::invalid(SNAT_PORTS_ENV, format!("{raw:?} {why}"));
    let (min, max) = match std::env::var_os(SNAT_PORTS_ENV) {
        None => SNAT_PORTS_DEFAULT,
        Some(raw) => {
            let raw = raw.to_string_lossy().into_owned();
            let parsed = raw.trim().split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            });
            match parsed {
                Some((min, max)) if min >= 1 && min <= max => (min, max),
                _ => {
                    return Err(bad(
                        &raw,
                        "is not a port range MIN-MAX (1 <= MIN <= MAX <= 65535)".into(),
                    ))
                }
            }
        }
    };
    if skip.0 <= min && max <= skip.1 {
        let raw = format!("{min}-{max}");
        return Err(bad(
            &raw,
            format!(
                "lies inside the host's ephemeral range {}-{} (net.ipv4.ip_local_port_range), which SNAT leaves to the host",
                skip.0, skip.1
            ),
        ));
    }
    Ok((min, max))
}

/// The host namespace's ephemeral port range (`ip_local_port_range`).
pub fn kernel_ephemeral_ports() -> Result<(u16, u16)> {
    let key = "net.ipv4.ip_local_port_range";
    let text = crate::netns::read_sysctl(key)?;
    crate::ports::HostPorts::parse_range(&text)
        .map(|r| (*r.start(), *r.end()))
        .ok_or_else(|| {
            Error::system(
                format!("sysctl {key}"),
                format!("unreadable value {text:?}"),
            )
        })
}

pub struct Ebpf {
    pin_dir: PathBuf,
    host: HostInfo,
}

/// An aya error with its whole chain of causes (aya puts the errno in the
/// source of a `SyscallError`).
fn bpf_error(object: impl Into<String>, err: impl std::error::Error) -> Error {
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::system(object, reason)
}

/// Interface index in the namespace of the calling thread.
fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|e| Error::system(format!("interface {name}"), e))
}

/// What the ENDPOINTS entry of `ep` holds: its veth's ifindex, its
/// network and its MAC.
fn endpoint_info(net: &Network, ep: &Endpoint, veth_ifindex: u32) -> EndpointInfo {
    EndpointInfo {
        ifindex: veth_ifindex,
        network_id: net.id,
        mac: ep.mac.octets(),
        _pad: [0; 2],
    }
}

/// What the NETWORKS entry of `net` holds (its NETWORK_PREFIXES entries
/// derive from it: `NetworkInfo::prefixes`).
fn network_info(net: &Network, bridge_ifindex: u32) -> NetworkInfo {
    NetworkInfo {
        subnet: be_ip(net.subnet.network()),
        mask: be_ip(net.subnet.netmask()),
        gateway: be_ip(net.gateway),
        bridge_ifindex,
        // The MAC topology gave the bridge, not one read back from it.
        bridge_mac: net.bridge_mac().octets(),
        _pad: [0; 2],
        flags: if net.internal {
            NETWORK_FLAG_INTERNAL
        } else {
            0
        },
    }
}

impl Ebpf {
    pub fn new(host: &HostInfo) -> Self {
        Ebpf {
            pin_dir: host.config.pin_dir(),
            host: host.clone(),
        }
    }
}

impl Datapath for Ebpf {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Ebpf
    }

    fn take_over(&self) -> Result<Option<String>> {
        match self.upgrade_plan()? {
            Some(plan) => self.upgrade(&plan).map(Some),
            None => Ok(None),
        }
    }

    fn host_up(&self) -> Result<()> {
        // Bad input is refused before anything changes.
        let conntrack_max = conntrack_max()?;
        let skip = kernel_ephemeral_ports()?;
        let snat = snat_ports(skip)?;
        // The kernel forwards what the fast path hands back (FibPass).
        crate::netns::write_sysctl("net.ipv4.ip_forward", "1")?;
        ensure_bpffs()?;
        if self.is_loaded() {
            return self.take_over().map(drop);
        }
        let result = self.load_and_attach(conntrack_max, snat, skip);
        if result.is_err() {
            let _ = self.host_down();
        }
        result
    }

    fn host_down(&self) -> Result<()> {
        self.unpin_all()
    }

    fn sync_host(&self) -> Result<Vec<String>> {
        self.sync_host_ifaces()
    }

    fn network_up(&self, net: &Network, bridge_ifindex: u32) -> Result<()> {
        let info = network_info(net, bridge_ifindex);
        self.hash::<u32, NetworkInfo>(map_names::NETWORKS)?
            .insert(net.id, info, 0)
            .map_err(|e| bpf_error(format!("network {}: map NETWORKS", net.name), e))?;
        // Its subnet and gateway, for the programs' one-lookup
        // classification of a destination.
        let mut prefixes = self.prefixes()?;
        for entry in info.prefixes(net.id) {
            prefixes
                .insert(&prefix_key(&entry), entry.2, 0)
                .map_err(|e| bpf_error(format!("network {}: map NETWORK_PREFIXES", net.name), e))?;
        }
        Ok(())
    }

    fn network_down(&self, net: &Network) -> Result<()> {
        let mut errors = Vec::new();
        match self.prefixes() {
            Ok(mut prefixes) => {
                for entry in network_info(net, 0).prefixes(net.id) {
                    let key = prefix_key(&entry);
                    // Only its own entries (an absent one is no error).
                    if prefixes.get(&key, 0).ok() != Some(entry.2) {
                        continue;
                    }
                    match prefixes.remove(&key) {
                        Ok(()) => {}
                        Err(e) if is_absent(&e) => {}
                        Err(e) => errors.push(bpf_error(
                            format!("network {}: map NETWORK_PREFIXES", net.name),
                            e,
                        )),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match self
            .hash::<u32, NetworkInfo>(map_names::NETWORKS)?
            .remove(&net.id)
        {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => errors.push(bpf_error(format!("network {}: map NETWORKS", net.name), e)),
        }
        Error::collect(errors)
    }

    fn endpoint_added(&self, net: &Network, ep: &Endpoint, veth_ifindex: u32) -> Result<()> {
        let info = endpoint_info(net, ep, veth_ifindex);
        self.hash::<u32, EndpointInfo>(map_names::ENDPOINTS)?
            .insert(be_ip(ep.ip), info, 0)
            .map_err(|e| bpf_error(format!("endpoint {}: map ENDPOINTS", ep.ip), e))?;
        failpoint::check("run.endpoint.map")?;
        self.attach_endpoint(&ep.host_veth)
    }

    fn endpoint_removed(&self, _net: &Network, ep: &Endpoint) -> Result<()> {
        let mut errors = Vec::new();
        errors.extend(self.detach_endpoint(&ep.host_veth).err());
        match self
            .hash::<u32, EndpointInfo>(map_names::ENDPOINTS)?
            .remove(&be_ip(ep.ip))
        {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => errors.push(bpf_error(format!("endpoint {}: map ENDPOINTS", ep.ip), e)),
        }
        // Its flows die with it: a later container reusing the address must
        // not inherit them.
        errors.extend(
            conntrack_remove(&self.pin_dir, |k, e| {
                [k.saddr, k.daddr, e.saddr, e.daddr].contains(&be_ip(ep.ip))
            })
            .err(),
        );
        Error::collect(errors)
    }

    fn ports_published(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if net.internal {
            return Err(Error::invalid(
                format!("network {}", net.name),
                "is internal: no published ports",
            ));
        }
        let endpoints = self.hash::<u32, EndpointInfo>(map_names::ENDPOINTS)?;
        let mut portmap = self.hash::<PortKey, PortTarget>(map_names::PORTMAP)?;
        let mut done = Vec::new();
        for p in ports {
            let target = endpoints.get(&be_ip(p.container_ip), 0).map_err(|e| {
                bpf_error(
                    format!("port {}: endpoint {}", p.describe(), p.container_ip),
                    e,
                )
            })?;
            let value = PortTarget {
                ip: be_ip(p.container_ip),
                port: p.container_port.to_be(),
                _pad: 0,
                ifindex: target.ifindex,
            };
            let result = portmap
                .insert(port_key(p), value, 0)
                .map_err(|e| bpf_error(format!("port {}: map PORTMAP", p.describe()), e))
                .and_then(|()| {
                    done.push(port_key(p));
                    match done.len() {
                        1 => failpoint::check("run.ports.map"),
                        _ => Ok(()),
                    }
                });
            if let Err(e) = result {
                // All or nothing: take back this batch's entries.
                for key in &done {
                    let _ = portmap.remove(key);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn audit(&self, state: &State) -> Result<Vec<Drift>> {
        audit::audit(self, state)
    }

    fn reconcile(&self, state: &State) -> Result<()> {
        audit::reconcile(self, state)
    }

    fn ports_unpublished(&self, _net: &Network, ports: &[PortMapping]) -> Result<()> {
        let mut portmap = self.hash::<PortKey, PortTarget>(map_names::PORTMAP)?;
        let mut errors = Vec::new();
        for p in ports {
            match portmap.remove(&port_key(p)) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => errors.push(bpf_error(format!("port {}: map PORTMAP", p.describe()), e)),
            }
        }
        Error::collect(errors)
    }
}
