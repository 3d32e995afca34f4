//! The network commands: create, rm, prune, connect, disconnect, ls and
//! inspect. Creation and connect are undoable transactions; removal and
//! disconnect journal what they take apart and keep going past errors.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{now, Host, DEFAULT_DATAPATH};
use crate::{
    datapath::Datapath,
    error::{Error, Result},
    failpoint, hosts, ipam, ipam6,
    journal::{EndpointRef, Undo},
    model::{
        Container, DatapathKind, Endpoint, Ipv6Side, Mac, Network, NetworkMode, PortMapping,
        DEFAULT_NETWORK,
    },
    state::State,
    topology,
};

/// What `network create` was asked.
#[derive(Clone, Debug, Default)]
pub struct NetworkCreate {
    pub name: String,
    /// [default: the first of Docker's pools that overlaps no network]
    pub subnet: Option<Ipv4Net>,
    /// [default: the subnet's first host address]
    pub gateway: Option<Ipv4Addr>,
    pub datapath: Option<DatapathKind>,
    pub internal: bool,
    /// Bridge interface name [default: derived from the name].
    pub bridge: Option<String>,
    /// MTU of the endpoints' veth pairs.
    pub mtu: Option<u32>,
    /// `--ipv6`: dual stack.
    pub ipv6: bool,
    /// The IPv6 `--subnet` [default: a unique-local /64, see `ipam6::ula_subnet`].
    pub subnet6: Option<Ipv6Net>,
    /// The IPv6 `--gateway` [default: the subnet's first host address].
    pub gateway6: Option<Ipv6Addr>,
    /// The host id the unique-local subnet is derived from (set by
    /// `Host::network_create`; networks made otherwise have no IPv6).
    pub host_id: String,
}

/// A network as listed: the network, the host's datapath and its members.
#[derive(Serialize)]
pub struct NetworkView<'a> {
    #[serde(flatten)]
    pub network: &'a Network,
    pub datapath: String,
    pub containers: Vec<String>,
}

impl<'a> NetworkView<'a> {
    fn new(state: &'a State, network: &'a Network) -> Self {
        NetworkView {
            network,
            datapath: state.datapath.map(|d| d.to_string()).unwrap_or_default(),
            containers: state
                .members(&network.name)
                .map(|c| c.name.clone())
                .collect(),
        }
    }
}

/// The network a request describes, checked against the state: name,
/// bridge, datapath, subnet and gateway. Takes no step.
pub fn plan_network(state: &State, req: &NetworkCreate) -> Result<Network> {
    ipam::check_name("network", &req.name)?;
    let bridge = match &req.bridge {
        Some(name) => ipam::check_bridge_name(&req.name, name)?,
        None => ipam::bridge_name(&req.name)?,
    };
    if state.networks.contains_key(&req.name) {
        return Err(Error::invalid(
            format!("network {}", req.name),
            "already exists",
        ));
    }
    if let Some(other) = state.networks.values().find(|n| n.bridge == bridge) {
        return Err(Error::invalid(
            format!("network {}", req.name),
            format!("bridge {bridge} is the bridge of network {}", other.name),
        ));
    }
    if let (Some(have), Some(want)) = (state.datapath, req.datapath) {
        if have != want {
            return Err(Error::invalid(
                format!("network {}", req.name),
                format!(
                    "this host uses the {have} datapath; switching to {want} needs `netctl down` first"
                ),
            ));
        }
    }
    let existing: Vec<(&str, Ipv4Net)> = state
        .networks
        .values()
        .map(|n| (n.name.as_str(), n.subnet))
        .collect();
    let subnet = match req.subnet {
        Some(subnet) => {
            let subnet = ipam::check_subnet(subnet)?;
            ipam::check_overlap(subnet, &existing)?;
            subnet
        }
        None => {
            if req.gateway.is_some() {
                return Err(Error::invalid(
                    format!("network {}", req.name),
                    "--gateway needs --subnet",
                ));
            }
            let subnets: Vec<Ipv4Net> = existing.iter().map(|(_, s)| *s).collect();
            ipam::pick_subnet(&subnets)?
        }
    };
    let gateway = match req.gateway {
        Some(gateway) => {
            ipam::check_gateway(subnet, gateway)?;
            gateway
        }
        None => ipam::default_gateway(subnet),
    };
    let ipv6 = plan_ipv6(state, req)?;
    Ok(Network {
        name: req.name.clone(),
        id: state.next_network_id(),
        bridge,
        subnet,
        gateway,
        internal: req.internal,
        dns: req.name != DEFAULT_NETWORK,
        created: now(),
        mtu: req.mtu,
        ipv6,
    })
}

/// The IPv6 side of a network a request describes, if it asked for one.
fn plan_ipv6(state: &State, req: &NetworkCreate) -> Result<Option<Ipv6Side>> {
    let object = || format!("network {}", req.name);
    if !req.ipv6 {
        return match (req.subnet6, req.gateway6) {
            (None, None) => Ok(None),
            _ => Err(Error::invalid(
                object(),
                "an IPv6 --subnet or --gateway needs --ipv6",
            )),
        };
    }
    let datapath = state.datapath.or(req.datapath).unwrap_or(DEFAULT_DATAPATH);
    if datapath == DatapathKind::Ebpf {
        return Err(Error::invalid(
            object(),
            "--ipv6 needs the iptables datapath: the eBPF datapath's programs are \
             IPv4-only for now",
        ));
    }
    let existing: Vec<(&str, Ipv6Net)> = state
        .networks
        .values()
        .filter_map(|n| Some((n.name.as_str(), n.ipv6?.subnet)))
        .collect();
    let subnet = match req.subnet6 {
        Some(subnet) => {
            let subnet = ipam6::check_subnet(subnet)?;
            ipam6::check_overlap(subnet, &existing)?;
            subnet
        }
        None => {
            if req.gateway6.is_some() {
                return Err(Error::invalid(
                    object(),
                    "an IPv6 --gateway needs an IPv6 --subnet",
                ));
            }
            let taken: Vec<Ipv6Net> = existing.iter().map(|(_, s)| *s).collect();
            ipam6::ula_subnet(&req.host_id, &req.name, &taken)?
        }
    };
    let gateway = match req.gateway6 {
        Some(gateway) => {
            ipam6::check_gateway(subnet, gateway)?;
            gateway
        }
        None => ipam6::default_gateway(subnet),
    };
    Ok(Some(Ipv6Side { subnet, gateway }))
}

/// First free ethN inside a container.
fn next_ifname(ctr: &Container) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|name| ctr.endpoints.iter().all(|e| &e.ifname != name))
        .expect("an unused ethN")
}

/// Gateways a container could route through, in endpoint order: IPv4's,
/// and IPv6's of the dual-stack networks it has an IPv6 address on.
fn default_gateways(state: &State, ctr: &Container) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let routed = || {
        ctr.endpoints
            .iter()
            .filter_map(|e| Some((e, state.networks.get(&e.network)?)))
            .filter(|(_, n)| !n.internal)
    };
    let v4 = routed().map(|(_, n)| n.gateway).collect();
    let v6 = routed()
        .filter(|(e, _)| e.ip6.is_some())
        .filter_map(|(_, n)| Some(n.ipv6?.gateway))
        .collect();
    (v4, v6)
}

/// A container's endpoint on `net`: the address asked (checked) or the
/// lowest free one, the MAC derived from it, the veth named after the
/// container and the network.
pub(super) fn plan_endpoint(
    state: &State,
    net: &Network,
    container: &str,
    ifname: &str,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
) -> Result<Endpoint> {
    let used: BTreeSet<Ipv4Addr> = state
        .members(&net.name)
        .filter_map(|c| c.endpoint(&net.name))
        .map(|e| e.ip)
        .collect();
    let ip = match ip {
        Some(ip) => {
            ipam::reserve(net.subnet, net.gateway, &used, ip)?;
            ip
        }
        None => ipam::allocate(net.subnet, net.gateway, &used)?,
    };
    let ip6 = match (net.ipv6, ip6) {
        (None, None) => None,
        (None, Some(ip6)) => {
            return Err(Error::invalid(
                format!("ip6 {ip6}"),
                format!("network {} has no IPv6 (made without --ipv6)", net.name),
            ))
        }
        (Some(side), asked) => {
            let used: BTreeSet<Ipv6Addr> = state
                .members(&net.name)
                .filter_map(|c| c.endpoint(&net.name)?.ip6)
                .collect();
            Some(match asked {
                Some(ip6) => {
                    ipam6::reserve(side.subnet, side.gateway, &used, ip6)?;
                    ip6
                }
                None => ipam6::allocate(side.subnet, side.gateway, &used)?,
            })
        }
    };
    Ok(Endpoint {
        network: net.name.clone(),
        ifname: ifname.to_owned(),
        host_veth: ipam::veth_name(container, net.id),
        ip,
        ip6,
        mac: Mac::for_ip(ip),
    })
}

impl Host {
    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<Network> {
        self.begin(format!("network create {}", req.name));
        let req = NetworkCreate {
            host_id: self.config.host_id().to_owned(),
            ..req
        };
        let net = plan_network(&self.state, &req)?;
        // A datapath this build cannot take over refuses the command
        // before its first step.
        self.open_datapath_if_up().await?;
        let result = self.apply_network_create(&net, req.datapath).await;
        self.commit(result, &[]).await?;
        Ok(net)
    }

    /// The steps of a network: the datapath on the host if it is the first,
    /// the bridge, the network in the datapath. Also the first step of a
    /// `container run` on the default network before it exists.
    pub(super) async fn apply_network_create(
        &mut self,
        net: &Network,
        datapath: Option<DatapathKind>,
    ) -> Result<()> {
        if self.state.datapath.is_none() {
            let kind = datapath.unwrap_or(DEFAULT_DATAPATH);
            self.state.datapath = Some(kind);
            let dp = self.datapath().await?;
            self.record(Undo::HostDown, "create.host")?;
            dp.host_up()?;
            // The host's interfaces, which the loaded datapath now follows.
            dp.sync_host()?;
            failpoint::check("create.host")?;
        }
        if self.netlink.link(&net.bridge).await?.is_some() {
            return Err(Error::invalid(
                format!("network {}", net.name),
                format!("interface {} already exists on the host", net.bridge),
            ));
        }
        self.record(
            Undo::DeleteLink {
                name: net.bridge.clone(),
            },
            "create.bridge",
        )?;
        let bridge_ifindex = topology::network_up(&self.netlink, net).await?;
        failpoint::check("create.bridge")?;
        let dp = self.datapath().await?;
        self.record(
            Undo::NetworkDown {
                network: net.clone(),
            },
            "create.network",
        )?;
        dp.network_up(net, bridge_ifindex)?;
        failpoint::check("create.network")?;
        self.state.networks.insert(net.name.clone(), net.clone());
        Ok(())
    }

    /// `network ls`: every network, by name.
    pub fn network_ls(&self) -> Vec<NetworkView<'_>> {
        self.state
            .networks
            .values()
            .map(|n| NetworkView::new(&self.state, n))
            .collect()
    }

    /// `network inspect`: the named networks, or the first name not found.
    pub fn network_inspect(&self, names: &[String]) -> Result<Vec<NetworkView<'_>>> {
        names
            .iter()
            .map(|n| {
                self.state
                    .network(n)
                    .map(|net| NetworkView::new(&self.state, net))
            })
            .collect()
    }

    pub async fn network_rm(&mut self, names: &[String]) -> Result<()> {
        self.begin(format!("network rm {}", names.join(" ")));
        for name in names {
            let net = self.state.network(name)?.clone();
            if name == DEFAULT_NETWORK {
                return Err(Error::invalid(
                    format!("network {name}"),
                    "is the default network and cannot be removed (use `netctl down`)",
                ));
            }
            let users: Vec<&str> = self.state.members(name).map(|c| c.name.as_str()).collect();
            if !users.is_empty() {
                return Err(Error::invalid(
                    format!("network {name}"),
                    format!("has active endpoints: {}", users.join(", ")),
                ));
            }
            self.remove_network(&net).await?;
        }
        Ok(())
    }

    /// Removes an empty network: datapath first, then the bridge, then state.
    pub(super) async fn remove_network(&mut self, net: &Network) -> Result<()> {
        self.record_removal(|j| j.removing_networks.push(net.name.clone()))?;
        let dp = self.datapath().await?;
        let mut errors = Vec::new();
        if let Err(e) = dp.network_down(net) {
            errors.push(e);
        }
        errors.extend(failpoint::check("network-rm.datapath").err());
        if let Err(e) = topology::network_down(&self.netlink, net).await {
            errors.push(e);
        }
        self.state.networks.remove(&net.name);
        errors.extend(
            self.removal_done(|j| j.removing_networks.retain(|n| n != &net.name))
                .err(),
        );
        Error::collect(errors)
    }

    /// Removes every user-defined network without containers; returns their names.
    pub async fn network_prune(&mut self) -> Result<Vec<String>> {
        self.begin("network prune");
        let unused: Vec<Network> = self
            .state
            .networks
            .values()
            .filter(|n| n.name != DEFAULT_NETWORK && self.state.members(&n.name).next().is_none())
            .cloned()
            .collect();
        if !unused.is_empty() {
            self.record_removal(|j| {
                j.removing_networks = unused.iter().map(|n| n.name.clone()).collect()
            })?;
        }
        let mut errors = Vec::new();
        for net in &unused {
            if let Err(e) = self.remove_network(net).await {
                errors.push(e);
            }
            errors.extend(failpoint::check("prune.network").err());
        }
        Error::collect(errors)?;
        Ok(unused.into_iter().map(|n| n.name).collect())
    }

    pub async fn network_connect(
        &mut self,
        network: &str,
        container: &str,
        ip: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
        aliases: &[String],
    ) -> Result<()> {
        let net = self.state.network(network)?.clone();
        let ctr = self.state.container(container)?.clone();
        if ctr.mode != NetworkMode::Bridge {
            return Err(Error::invalid(
                format!("container {container}"),
                format!("is in {} mode and cannot join networks", ctr.mode),
            ));
        }
        if ctr.endpoint(network).is_some() {
            return Err(Error::invalid(
                format!("container {container}"),
                format!("is already connected to network {network}"),
            ));
        }
        super::naming::check_aliases(&self.state, &net, container, aliases)?;
        self.begin(format!("network connect {network} {container}"));
        let ifname = next_ifname(&ctr);
        let ep = plan_endpoint(&self.state, &net, &ctr.name, &ifname, ip, ip6)?;
        let netns_name = ctr.netns.clone().expect("bridge mode has a namespace");
        self.open_datapath_if_up().await?;
        let result = self
            .apply_attach("connect", container, Some(&netns_name), &net, &ep)
            .await;
        if result.is_ok() && !aliases.is_empty() {
            if let Some(entry) = self.state.containers.get_mut(container) {
                entry
                    .naming
                    .aliases
                    .insert(network.to_owned(), aliases.to_vec());
            }
        }
        self.commit(result, &[]).await
    }

    pub async fn network_disconnect(&mut self, network: &str, container: &str) -> Result<()> {
        self.state.network(network)?;
        let ctr = self.state.container(container)?;
        if ctr.endpoint(network).is_none() {
            return Err(Error::invalid(
                format!("container {container}"),
                format!("is not connected to network {network}"),
            ));
        }
        // Opened before anything is journaled: a host whose datapath cannot
        // be opened refuses the command and changes nothing.
        self.datapath().await?;
        self.begin(format!("network disconnect {network} {container}"));
        self.remove_endpoint(container, network).await
    }

    /// Takes a container off a network, going on past errors: the veth
    /// pair, then its ports there and the endpoint in the datapath, the state;
    /// then a default route through a network it is still on, and the
    /// hosts files.
    pub(super) async fn remove_endpoint(&mut self, container: &str, network: &str) -> Result<()> {
        self.record_removal(|j| {
            j.removing_endpoints.push(EndpointRef {
                container: container.to_owned(),
                network: network.to_owned(),
            })
        })?;
        let ctr = self.state.container(container)?.clone();
        let ep = ctr
            .endpoint(network)
            .cloned()
            .ok_or_else(|| Error::not_found("endpoint", format!("{container} on {network}")))?;
        // The link goes first: the endpoint's anti-spoofing and isolation
        // stay until it can carry nothing more.
        let mut errors: Vec<Error> = topology::detach(&self.netlink, &ep)
            .await
            .err()
            .into_iter()
            .collect();
        errors.extend(failpoint::check("disconnect.links").err());
        match self.datapath().await {
            Ok(dp) => errors.extend(forget_in_datapath(&*dp, &self.state, &ctr, &ep)),
            Err(e) => errors.push(e),
        }
        errors.extend(failpoint::check("disconnect.datapath").err());
        let entry = self
            .state
            .containers
            .get_mut(container)
            .expect("checked above");
        entry.endpoints.retain(|e| e.network != network);
        entry.ports.retain(|p| p.network != network);
        entry.naming.aliases.remove(network);
        let remaining = entry.clone();
        let (gateways, gateways6) = default_gateways(&self.state, &remaining);
        if let Some(netns_name) = &remaining.netns {
            errors.extend(
                topology::restore_default_route(netns_name, &gateways, &gateways6)
                    .await
                    .err(),
            );
        }
        errors.extend(hosts::sync(&self.config, &self.committed, &self.state).err());
        errors.extend(
            self.removal_done(|j| {
                j.removing_endpoints
                    .retain(|e| e.container != container || e.network != network)
            })
            .err(),
        );
        Error::collect(errors)
    }
}

/// Removes an endpoint of `ctr` from the datapath, its published ports
/// first; returns the errors met (a removal goes on past them).
pub(super) fn forget_in_datapath(
    dp: &dyn Datapath,
    state: &State,
    ctr: &Container,
    ep: &Endpoint,
) -> Vec<Error> {
    let Some(net) = state.networks.get(&ep.network) else {
        return Vec::new();
    };
    let ports: Vec<PortMapping> = ctr
        .ports
        .iter()
        .filter(|p| p.network == ep.network)
        .cloned()
        .collect();
    dp.endpoint_forgotten(net, ep, &ports)
        .err()
        .into_iter()
        .collect()
}
