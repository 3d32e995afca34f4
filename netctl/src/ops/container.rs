//! `container run` and `container rm`.
//!
//! A run is decided before anything changes: [`plan_container`] is a pure
//! function of the state and the request that checks the name and the
//! mode, picks the network, address and MAC, expands the ports against
//! what the host already publishes, and returns the steps to take. Then
//! [`Host`] takes the steps in order, recording how to undo each, so that a
//! failing step undoes them all. Removal takes a container apart and keeps
//! going past errors.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use super::{
    network::{forget_in_datapath, plan_endpoint, plan_network, NetworkCreate},
    now, Host,
};
use crate::{
    config::HostConfig,
    error::{Error, Result},
    failpoint, hosts, ipam,
    journal::Undo,
    model::{
        CniAttachment, Container, DatapathKind, DockerEndpoint, Endpoint, Mac, Naming, Network,
        NetworkMode, PortMapping, DEFAULT_NETWORK,
    },
    netns,
    ports::{self, HostPorts, PortSpec},
    process,
    resolver::conf,
    state::{State, StateDir},
    topology,
};

/// The prefix Docker gives the interface it moves into a sandbox (the
/// `DstPrefix` netctl's Docker driver answers Join with).
pub const DOCKER_IFNAME_PREFIX: &str = "eth";

/// Where `container run` puts a container: `--network` in Docker's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Networking {
    /// A bridge network, by name (the default network unless named).
    Network(String),
    /// The host's own namespace.
    Host,
    /// A namespace of its own with only `lo`.
    None,
    /// The namespace of another container.
    Container(String),
}

impl Networking {
    /// The mode the container is recorded with.
    pub fn mode(&self) -> NetworkMode {
        match self {
            Networking::Network(_) => NetworkMode::Bridge,
            Networking::Host => NetworkMode::Host,
            Networking::None => NetworkMode::None,
            Networking::Container(other) => NetworkMode::Container(other.clone()),
        }
    }
}

impl Default for Networking {
    fn default() -> Self {
        Networking::Network(DEFAULT_NETWORK.to_owned())
    }
}

/// `host`, `none`, `container:NAME`, or else the name of a network (which
/// the plan looks up: an unknown one is refused there, by name).
impl FromStr for Networking {
    type Err = Infallible;

    fn from_str(value: &str) -> Result<Self, Infallible> {
        Ok(match value {
            "host" => Networking::Host,
            "none" => Networking::None,
            other => match other.strip_prefix("container:") {
                Some(target) => Networking::Container(target.to_owned()),
                None => Networking::Network(other.to_owned()),
            },
        })
    }
}

/// What `container run` was asked.
#[derive(Clone, Debug, Default)]
pub struct ContainerRun {
    pub name: String,
    pub network: Networking,
    /// Address on the network [default: the lowest free one].
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address on a dual-stack network [default: the lowest free one].
    pub ip6: Option<Ipv6Addr>,
    pub ports: Vec<PortSpec>,
    /// Command to start inside, detached.
    pub command: Vec<String>,
    /// Container-side MAC [default: derived from the address].
    pub mac: Option<Mac>,
    /// A CNI attachment: the container joins the runtime's namespace
    /// (`netns`) as `ifname` instead of getting a namespace of its own.
    pub cni: Option<CniAttachment>,
    /// A Docker endpoint (`netctl docker-plugin`): the container's end of
    /// the veth pair stays in the host namespace for Docker to move into
    /// its sandbox, which it names only later (Join).
    pub docker: Option<DockerEndpoint>,
    /// The network to create with the container, in the same transaction,
    /// when the one it joins does not exist yet (a CNI configuration's
    /// network on its first ADD). The default network needs none: it is
    /// created on first use as it is.
    pub create_network: Option<NetworkCreate>,
    /// `--hostname`, `--dns*`; `--network-alias` as `aliases` keyed by the
    /// network it joins.
    pub naming: Naming,
}

/// A container as `container inspect` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ContainerView<'a> {
    #[serde(flatten)]
    pub container: &'a Container,
    /// Its own namespace's resolv.conf (none for host mode, container:NAME
    /// and CNI attachments, whose files are someone else's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<ResolvView>,
}

/// A container's resolv.conf as written, or why none is (no usable resolver).
#[derive(Debug, serde::Serialize)]
pub struct ResolvView {
    pub path: Option<String>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One step of a run, in the order they are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the network the container is the first to join (the default
    /// one, or the one the request says to create), on this datapath if it
    /// is the host's first network.
    CreateNetwork {
        network: Network,
        datapath: Option<DatapathKind>,
    },
    /// Make the container's own namespace, with `lo` up.
    CreateNetns(String),
    /// A veth pair from the network's bridge into the namespace, with the
    /// endpoint's name, address and MAC.
    Attach {
        netns: String,
        network: Network,
        endpoint: Endpoint,
    },
    /// A veth pair from the network's bridge whose container end, with the
    /// endpoint's MAC, stays in the host namespace under
    /// [`topology::peer_name`]: Docker moves it into the sandbox, names it
    /// and gives it the address itself.
    AttachForDocker {
        network: Network,
        endpoint: Endpoint,
    },
    /// Publish ports, host ports chosen, on the endpoint just attached.
    Publish {
        network: Network,
        ports: Vec<PortMapping>,
    },
    /// Start a command inside the namespace, detached, its output in `log`.
    Start {
        netns: String,
        command: Vec<String>,
        log: PathBuf,
    },
}

/// What a `container run` will do, decided before any step is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPlan {
    /// The container as recorded before its steps: no endpoint, port or
    /// process yet (the steps add them as they succeed).
    pub container: Container,
    pub steps: Vec<Step>,
}

/// Checks a `container run` against the state and plans its steps. Reads
/// nothing but its arguments (and the clock, for the creation time).
pub fn plan_container(
    state: &State,
    config: &HostConfig,
    host: &HostPorts,
    req: &ContainerRun,
) -> Result<ContainerPlan> {
    ipam::check_name("container", &req.name)?;
    let object = || format!("container {}", req.name);
    if state.containers.contains_key(&req.name) {
        return Err(Error::invalid(object(), "already exists"));
    }
    let mode = req.network.mode();
    if mode != NetworkMode::Bridge {
        if !req.ports.is_empty() {
            return Err(Error::invalid(
                object(),
                format!("cannot publish ports in {mode} network mode"),
            ));
        }
        if req.ip.is_some() || req.ip6.is_some() {
            let flag = if req.ip.is_some() { "--ip" } else { "--ip6" };
            return Err(Error::invalid(
                object(),
                format!("{flag} cannot be used in {mode} network mode"),
            ));
        }
    }
    super::naming::check_naming(&req.name, &mode, &req.naming)?;
    let mut steps = Vec::new();
    let (netns_name, attach) = match &req.network {
        Networking::Host => (None, None),
        Networking::Container(other) => {
            let target = state.container(other)?;
            let Some(netns_name) = target.netns.clone() else {
                return Err(Error::invalid(
                    object(),
                    format!("container {other} uses the host namespace; use --network host"),
                ));
            };
            (Some(netns_name), None)
        }
        Networking::None => (Some(config.container_netns(&req.name)), None),
        Networking::Network(network) => {
            let net = match state.networks.get(network) {
                Some(net) => net.clone(),
                None => {
                    let create = match &req.create_network {
                        Some(create) if &create.name == network => create.clone(),
                        _ if network == DEFAULT_NETWORK => NetworkCreate {
                            name: DEFAULT_NETWORK.into(),
                            ..NetworkCreate::default()
                        },
                        _ => return Err(Error::not_found("network", network.as_str())),
                    };
                    let net = plan_network(state, &create)?;
                    steps.push(Step::CreateNetwork {
                        network: net.clone(),
                        datapath: create.datapath,
                    });
                    net
                }
            };
            if net.internal && !req.ports.is_empty() {
                return Err(Error::invalid(
                    object(),
                    format!("cannot publish ports on internal network {network}"),
                ));
            }
            super::naming::check_name_free(state, &net, &req.name)?;
            let aliases: Vec<String> = req.naming.aliases.values().flatten().cloned().collect();
            super::naming::check_aliases(state, &net, &req.name, &aliases)?;
            let ifname = match (&req.cni, &req.docker) {
                (Some(cni), _) => cni.ifname.as_str(),
                // Docker names the interface itself: this prefix and the
                // next free index inside the sandbox.
                (None, Some(_)) => DOCKER_IFNAME_PREFIX,
                (None, None) => "eth0",
            };
            let mut ep = plan_endpoint(state, &net, &req.name, ifname, req.ip, req.ip6)?;
            if let Some(mac) = req.mac {
                ep.mac = mac;
            }
            let netns_name = match (&req.cni, &req.docker) {
                (Some(cni), _) => Some(cni.netns.clone()),
                // The sandbox is known at Join, after the endpoint is made.
                (None, Some(_)) => None,
                (None, None) => Some(config.container_netns(&req.name)),
            };
            (netns_name, Some((net, ep)))
        }
    };
    let container = Container {
        name: req.name.clone(),
        mode,
        netns: netns_name.clone(),
        endpoints: Vec::new(),
        ports: Vec::new(),
        process: None,
        created: now(),
        cni: req.cni.clone(),
        docker: req.docker.clone(),
        naming: Naming {
            // Aliases are the network's it joins, whatever key they came with.
            aliases: match (
                &req.network,
                req.naming.aliases.values().any(|a| !a.is_empty()),
            ) {
                (Networking::Network(net), true) => [(
                    net.clone(),
                    req.naming.aliases.values().flatten().cloned().collect(),
                )]
                .into(),
                _ => Default::default(),
            },
            ..req.naming.clone()
        },
    };
    if let (true, Some(name)) = (container.owns_netns(), &netns_name) {
        steps.push(Step::CreateNetns(name.clone()));
    }
    if let Some((network, endpoint)) = attach {
        let taken: Vec<PortMapping> = state.ports().cloned().collect();
        // The network's gateway is the host's, even before its bridge exists.
        let mut host = host.clone();
        host.addresses.insert(network.gateway.into());
        host.addresses
            .extend(network.ipv6.map(|side| IpAddr::V6(side.gateway)));
        let ports = ports::expand_all(
            &req.ports,
            &taken,
            &host,
            &req.name,
            &network.name,
            (endpoint.ip, endpoint.ip6),
        )?;
        steps.push(match &netns_name {
            Some(netns) => Step::Attach {
                netns: netns.clone(),
                network: network.clone(),
                endpoint,
            },
            None => Step::AttachForDocker {
                network: network.clone(),
                endpoint,
            },
        });
        if !ports.is_empty() {
            steps.push(Step::Publish { network, ports });
        }
    }
    if !req.command.is_empty() {
        let Some(netns) = netns_name else {
            return Err(Error::invalid(
                object(),
                "a command in host mode runs on the host itself: use `netctl exec --host`",
            ));
        };
        steps.push(Step::Start {
            netns,
            command: req.command.clone(),
            log: config.state_dir.join(format!("{}.log", req.name)),
        });
    }
    Ok(ContainerPlan { container, steps })
}

/// A container as the state records it, read under the state lock without
/// opening the host (no netlink, no recovery): for `exec`, which replaces
/// the process right after.
pub fn lookup_container(config: &HostConfig, name: &str) -> Result<Container> {
    let dir = StateDir::lock(&config.state_dir)?;
    Ok(dir.load()?.container(name)?.clone())
}

impl Host {
    pub async fn container_run(&mut self, req: ContainerRun) -> Result<Container> {
        self.begin(format!("container run {}", req.name));
        let host = if req.ports.is_empty() {
            HostPorts::default()
        } else {
            self.host_ports().await?
        };
        let plan = plan_container(&self.state, &self.config, &host, &req)?;
        // A datapath this build cannot take over refuses the command
        // before its first step.
        self.open_datapath_if_up().await?;
        let result = self.apply(plan).await;
        self.commit(result, &[]).await?;
        Ok(self.state.containers[&req.name].clone())
    }

    /// What `-p` is checked against: the host namespace's ephemeral port
    /// range and addresses, as they are now.
    pub(super) async fn host_ports(&self) -> Result<HostPorts> {
        let key = "net.ipv4.ip_local_port_range";
        let text = netns::read_sysctl(key)?;
        let kernel_ephemeral = HostPorts::parse_range(&text).ok_or_else(|| {
            Error::system(
                format!("sysctl {key}"),
                format!("unreadable value {text:?}"),
            )
        })?;
        let addresses = self.netlink.all_addresses().await?.into_iter().collect();
        Ok(HostPorts {
            kernel_ephemeral,
            addresses,
        })
    }

    /// Takes the steps of a plan in order, recording how to undo each
    /// before taking it.
    async fn apply(&mut self, plan: ContainerPlan) -> Result<()> {
        let name = plan.container.name.clone();
        self.state.containers.insert(name.clone(), plan.container);
        for step in plan.steps {
            match step {
                Step::CreateNetwork { network, datapath } => {
                    self.apply_network_create(&network, datapath).await?
                }
                Step::CreateNetns(netns_name) => {
                    if netns::path(&netns_name).exists() {
                        return Err(Error::invalid(
                            format!("container {name}"),
                            format!("namespace {netns_name} already exists"),
                        ));
                    }
                    self.record(
                        Undo::DeleteNetns {
                            name: netns_name.clone(),
                        },
                        "run.netns",
                    )?;
                    topology::create_container_netns(&netns_name).await?;
                    failpoint::check("run.netns")?;
                }
                Step::Attach {
                    netns,
                    network,
                    endpoint,
                } => {
                    self.apply_attach("run", &name, Some(&netns), &network, &endpoint)
                        .await?
                }
                Step::AttachForDocker { network, endpoint } => {
                    self.apply_attach("run", &name, None, &network, &endpoint)
                        .await?
                }
                Step::Publish { network, ports } => {
                    let dp = self.datapath().await?;
                    self.record(
                        Undo::PortsUnpublished {
                            network: network.clone(),
                            ports: ports.clone(),
                        },
                        "run.ports",
                    )?;
                    dp.ports_published(&network, &ports)?;
                    failpoint::check("run.ports")?;
                    self.state
                        .containers
                        .get_mut(&name)
                        .expect("inserted")
                        .ports = ports;
                }
                Step::Start {
                    netns,
                    command,
                    log,
                } => {
                    // The command finds its hosts file and resolv.conf in
                    // place (bound when it enters): written now rather than
                    // at commit. A rollback removes them with the namespace.
                    let ctr = &self.state.containers[&name];
                    hosts::write(&self.state, ctr, &conf::read_host(&self.config))?;
                    // Held before exec until its undo (which needs its pid)
                    // is journaled: a crash before the release ends it
                    // without running the command.
                    let held = process::start_held(&netns, &command, log)?;
                    self.record(
                        Undo::StopProcess {
                            process: held.process.clone(),
                        },
                        "run.process",
                    )?;
                    let proc = held.release()?;
                    failpoint::check("run.process")?;
                    self.state
                        .containers
                        .get_mut(&name)
                        .expect("inserted")
                        .process = Some(proc);
                }
            }
        }
        Ok(())
    }

    /// Attaches an endpoint to a container in the state: the veth pair (its
    /// host end down), then the datapath, and only then the host end up, so
    /// that no packet crosses the link before the datapath's anti-spoofing
    /// and isolation hold it. `command` names the failpoints (`run.link`,
    /// `connect.link`, ...). Without a namespace, the container's end
    /// stays in the host namespace for Docker to move.
    pub(super) async fn apply_attach(
        &mut self,
        command: &str,
        container: &str,
        netns_name: Option<&str>,
        net: &Network,
        ep: &Endpoint,
    ) -> Result<()> {
        if self.netlink.link(&ep.host_veth).await?.is_some() {
            return Err(Error::system(
                format!("endpoint {}", ep.host_veth),
                "interface already exists on the host (left by a crash? run `netctl doctor --fix`)",
            ));
        }
        let link = format!("{command}.link");
        self.record(
            Undo::DeleteLink {
                name: ep.host_veth.clone(),
            },
            &link,
        )?;
        let veth = format!("{link}.veth");
        let veth_ifindex = topology::attach(&self.netlink, netns_name, net, ep, &veth).await?;
        failpoint::check(&link)?;
        let dp = self.datapath().await?;
        let endpoint = format!("{command}.endpoint");
        self.record(
            Undo::EndpointRemoved {
                network: net.clone(),
                endpoint: ep.clone(),
            },
            &endpoint,
        )?;
        dp.endpoint_added(net, ep, veth_ifindex)?;
        topology::activate(&self.netlink, ep).await?;
        failpoint::check(&endpoint)?;
        let entry = self
            .state
            .containers
            .get_mut(container)
            .ok_or_else(|| Error::not_found("container", container))?;
        entry.endpoints.push(ep.clone());
        Ok(())
    }

    /// `container ls`: every container, by name.
    pub fn container_ls(&self) -> Vec<&Container> {
        self.state.containers.values().collect()
    }

    /// `container inspect`: the named containers, or the first name not
    /// found, each with what its processes resolve with.
    pub fn container_inspect(&self, names: &[String]) -> Result<Vec<ContainerView<'_>>> {
        let host = conf::read_host(&self.config);
        names
            .iter()
            .map(|n| {
                let container = self.state.container(n)?;
                let resolv_conf = container.owns_netns().then(|| {
                    match conf::for_container(&self.state, container, &host.1, &host.0) {
                        Ok(c) => ResolvView {
                            path: container
                                .netns
                                .as_deref()
                                .map(|ns| hosts::resolv_conf(ns).display().to_string()),
                            nameservers: c.nameservers,
                            search: c.search,
                            options: c.options,
                            problem: None,
                        },
                        Err(problem) => ResolvView {
                            path: None,
                            nameservers: Vec::new(),
                            search: Vec::new(),
                            options: Vec::new(),
                            problem: Some(problem),
                        },
                    }
                });
                Ok(ContainerView {
                    container,
                    resolv_conf,
                })
            })
            .collect()
    }

    pub async fn container_rm(&mut self, names: &[String]) -> Result<()> {
        self.begin(format!("container rm {}", names.join(" ")));
        for name in names {
            self.state.container(name)?;
            let sharers: Vec<&str> = self
                .state
                .containers
                .values()
                .filter(|c| c.mode == NetworkMode::Container(name.clone()))
                .map(|c| c.name.as_str())
                .collect();
            let staying: Vec<&str> = sharers
                .into_iter()
                .filter(|s| !names.iter().any(|n| n == s))
                .collect();
            if !staying.is_empty() {
                return Err(Error::invalid(
                    format!("container {name}"),
                    format!("its namespace is used by container {}", staying.join(", ")),
                ));
            }
        }
        // Sharers first, so a namespace goes after every container in it.
        let mut order: Vec<String> = names.to_vec();
        order.sort_by_key(|n| !matches!(self.state.containers[n].mode, NetworkMode::Container(_)));
        self.record_removal(|j| j.removing_containers = order.clone())?;
        let mut errors = Vec::new();
        for name in &order {
            if let Err(e) = self.remove_container(name).await {
                errors.push(e);
            }
            errors.extend(failpoint::check("rm.container").err());
        }
        Error::collect(errors)
    }

    /// Takes a container apart, going on past errors: process, links, then
    /// ports and endpoints in the datapath, namespace, hosts file, state.
    pub(super) async fn remove_container(&mut self, name: &str) -> Result<()> {
        let ctr = self.state.container(name)?.clone();
        self.record_removal(|j| j.removing_containers.push(ctr.name.clone()))?;
        let mut errors = Vec::new();
        if let Some(p) = &ctr.process {
            errors.extend(process::remove(p).err());
        }
        // The links go first: an endpoint's anti-spoofing and isolation
        // stay until its link can carry nothing more.
        for ep in &ctr.endpoints {
            errors.extend(topology::detach(&self.netlink, ep).await.err());
        }
        errors.extend(failpoint::check("rm.links").err());
        match self.datapath().await {
            Ok(dp) => {
                for ep in &ctr.endpoints {
                    errors.extend(forget_in_datapath(&*dp, &self.state, &ctr, ep));
                }
            }
            Err(e) => errors.push(e),
        }
        errors.extend(failpoint::check("rm.datapath").err());
        let mut removed_netns = Vec::new();
        if let (true, Some(netns_name)) = (ctr.owns_netns(), &ctr.netns) {
            errors.extend(netns::delete(netns_name).err());
            removed_netns.push(netns_name.clone());
        }
        errors.extend(failpoint::check("rm.netns").err());
        self.state.containers.remove(name);
        for netns_name in &removed_netns {
            errors.extend(hosts::remove(netns_name).err());
        }
        errors.extend(
            self.removal_done(|j| j.removing_containers.retain(|n| n != name))
                .err(),
        );
        Error::collect(errors)
    }
}

#[cfg(test)]
mod tests;
