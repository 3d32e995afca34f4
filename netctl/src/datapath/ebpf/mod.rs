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
//! maps/<NAME>                 CONFIG, ENDPOINTS, NETWORKS, PORTMAP, CONNTRACK, CT_RECLAIM, SOCK_REVNAT, STATS
//! next/<NAME>                 (during an upgrade) a migrated map being filled
//! progs/<program>             endpoint_ingress, uplink_ingress, uplink_egress, sock_*
//! links/<ifname>@<program>    TCX links (uplink, and each endpoint's host-side veth)
//! links/cgroup@<program>      cgroup sock_addr links (on --cgroup)
//! ```
//!
//! One concern a module: [`pins`] (bpffs, loading, attaching, pinning and
//! opening what is pinned), [`maps`] (typed map access, the batch dump and
//! the byte order of keys), [`conntrack`] (the table's size and its flows),
//! [`stats`], [`trace`], [`audit`] (`netctl doctor`), [`upgrade`] (taking
//! over a datapath loaded by another build: plan, migrations, the layout
//! record) and [`sys`] (the bpf(2) commands aya lacks: link update, object
//! info, byte-level map access). This module holds
//! the [`Datapath`] impl that ties them together.

mod audit;
mod conntrack;
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

use self::maps::{be_ip, is_absent, port_key};
pub use self::{
    conntrack::{
        conntrack_capacity, conntrack_gc, conntrack_list, conntrack_max, conntrack_remove, Flow,
        CONNTRACK_MAX_DEFAULT, CONNTRACK_MAX_ENV,
    },
    pins::{ensure_bpffs, netns_cookie, EBPF_OBJECT},
    stats::stats,
    trace::{trace, TRACE_MAX_SECONDS},
    upgrade::{binary_versions, check_layouts, loaded_versions, Versions},
};
use super::{Datapath, Drift, HostInfo};
use crate::{
    error::{Error, Result},
    failpoint,
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

/// SNAT source ports: above the kernel's default ephemeral range
/// (32768–60999), so translated flows never take a port the host's own
/// sockets on the uplink address could use.
pub const SNAT_PORTS: (u16, u16) = (61_000, 65_535);

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
        // The kernel forwards what the fast path hands back (FibPass).
        crate::netns::write_sysctl("net.ipv4.ip_forward", "1")?;
        ensure_bpffs()?;
        if self.is_loaded() {
            return self.take_over().map(drop);
        }
        let result = self.load_and_attach(conntrack_max);
        if result.is_err() {
            let _ = self.host_down();
        }
        result
    }

    fn host_down(&self) -> Result<()> {
        self.unpin_all()
    }

    fn network_up(&self, net: &Network, bridge_ifindex: u32) -> Result<()> {
        let info = NetworkInfo {
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
        };
        self.hash::<u32, NetworkInfo>(map_names::NETWORKS)?
            .insert(net.id, info, 0)
            .map_err(|e| bpf_error(format!("network {}: map NETWORKS", net.name), e))
    }

    fn network_down(&self, net: &Network) -> Result<()> {
        match self
            .hash::<u32, NetworkInfo>(map_names::NETWORKS)?
            .remove(&net.id)
        {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(bpf_error(format!("network {}: map NETWORKS", net.name), e)),
        }
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
