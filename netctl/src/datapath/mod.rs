//! The seam between topology and packets. The controller builds links and
//! addresses; a datapath makes packets move between them: SNAT for egress,
//! DNAT for published ports, isolation between networks.
//!
//! Every method is called in the host namespace (the process has entered it)
//! and must be idempotent: re-applying what exists changes nothing, removing
//! what is absent is not an error.

pub mod ebpf;
pub mod iptables;

use std::net::Ipv4Addr;

pub use crate::host_ifaces::HostIface;
use crate::{
    config::HostConfig,
    error::{Error, Result},
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

/// One difference between what a datapath holds and what the state says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    pub object: String,
    pub problem: String,
}

impl Drift {
    pub fn new(object: impl Into<String>, problem: impl Into<String>) -> Self {
        Drift {
            object: object.into(),
            problem: problem.into(),
        }
    }
}

/// What a datapath needs to know about the host it runs on.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub config: HostConfig,
    /// Uplink interface and its primary IPv4 address (the default route's,
    /// or `--uplink`): the eBPF datapath needs one to load.
    pub uplink: Option<Uplink>,
    /// Every interface of the host that is not netctl's, with its
    /// addresses as the kernel has them now (see `host_ifaces`).
    pub interfaces: Vec<HostIface>,
}

#[derive(Clone, Debug)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    pub address: Ipv4Addr,
}

pub trait Datapath {
    fn kind(&self) -> DatapathKind;

    /// Host-wide setup before the first network (chains, jumps, programs).
    fn host_up(&self) -> Result<()>;
    /// Takes over what another build of netctl loaded on this host, in
    /// place (eBPF: programs replaced on their links, maps kept or
    /// migrated), or refuses with nothing changed. `Some(what it did)`, or
    /// `None` when there was nothing to do. Every command that opens the
    /// datapath calls it first, except `down`.
    fn take_over(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Removes everything the datapath made on the host; keeps going past
    /// errors and reports all of them.
    fn host_down(&self) -> Result<()>;
    /// Makes the datapath follow the host's interfaces and addresses as
    /// `HostInfo::interfaces` has them (read just before): every command
    /// that opens an up datapath calls it, and `netctl watch` on every
    /// netlink change. Returns what it changed, one line each. The
    /// iptables datapath has nothing to follow: MASQUERADE and
    /// `--dst-type LOCAL` read the host's addresses per packet.
    fn sync_host(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// `bridge_ifindex` is the index topology gave the network's bridge.
    fn network_up(&self, net: &Network, bridge_ifindex: u32) -> Result<()>;
    fn network_down(&self, net: &Network) -> Result<()>;

    /// `veth_ifindex` is the index topology gave the endpoint's host-side veth.
    fn endpoint_added(&self, net: &Network, ep: &Endpoint, veth_ifindex: u32) -> Result<()>;
    fn endpoint_removed(&self, net: &Network, ep: &Endpoint) -> Result<()>;

    /// Publishes a batch (one `iptables-restore` or one round of map updates).
    fn ports_published(&self, net: &Network, ports: &[PortMapping]) -> Result<()>;
    fn ports_unpublished(&self, net: &Network, ports: &[PortMapping]) -> Result<()>;

    /// An endpoint going with the ports published to it (`container rm`,
    /// `network disconnect`), past errors: the ports, then the endpoint. A
    /// datapath that applies changes in batches takes both in one.
    fn endpoint_forgotten(
        &self,
        net: &Network,
        ep: &Endpoint,
        ports: &[PortMapping],
    ) -> Result<()> {
        let unpublished = match ports {
            [] => Ok(()),
            ports => self.ports_unpublished(net, ports),
        };
        let removed = self.endpoint_removed(net, ep);
        Error::collect(unpublished.err().into_iter().chain(removed.err()).collect())
    }

    /// What the datapath lacks of `state`, and what it holds that no
    /// object of `state` owns (for `netctl doctor`). Reads only.
    fn audit(&self, state: &State) -> Result<Vec<Drift>>;
    /// Makes the datapath hold exactly `state`: re-applies what is missing
    /// and removes what nothing owns (for `netctl doctor --fix`).
    fn reconcile(&self, state: &State) -> Result<()>;
}

/// The datapath of a given kind for a host.
pub fn open(kind: DatapathKind, host: &HostInfo) -> Result<Box<dyn Datapath>> {
    match kind {
        DatapathKind::Iptables => Ok(Box::new(iptables::Iptables::new(host))),
        DatapathKind::Ebpf => Ok(Box::new(ebpf::Ebpf::new(host))),
    }
}
