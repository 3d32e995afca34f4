//! The commands, each a transaction: lock the state → validate → apply the
//! steps, recording how to undo each → save the state atomically. When a
//! step fails, the recorded steps are undone in reverse order and the error
//! of the failed step is returned, so the system is as it was before.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    rc::Rc,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;

use crate::{
    config::HostConfig,
    datapath::{self, Datapath, HostInfo, Uplink},
    error::{Error, Result},
    failpoint, hosts, ipam,
    journal::{Journal, Undo},
    netlink::Netlink,
    netns,
    ports::{self, PortSpec},
    process,
    state::{
        CniAttachment, Container, DatapathKind, Endpoint, Network, NetworkMode, PortMapping, State,
        StateDir,
    },
    topology,
};

mod doctor;

pub use doctor::Finding;

/// Name of Docker's default network, created on first use.
pub const DEFAULT_NETWORK: &str = "bridge";

/// The datapath a new host gets when `--datapath` is not given.
pub const DEFAULT_DATAPATH: DatapathKind = DatapathKind::Ebpf;

/// A locked host: the state, a netlink socket in the host namespace and the
/// steps applied so far.
pub struct Host {
    pub config: HostConfig,
    dir: StateDir,
    pub state: State,
    /// The state as last saved by a commit: what a rollback returns to and
    /// what the journal is written into.
    committed: State,
    /// Whether a state file existed when the host was opened (a fresh host
    /// whose first command fails keeps no state file).
    had_state_file: bool,
    netlink: Netlink,
    /// The command under way, for the journal.
    command: String,
    undo: Vec<Undo>,
    /// The datapath once opened (opening looks the uplink up through netlink).
    datapath: Option<Rc<dyn Datapath>>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Host {
    /// Locks the state dir and loads the state, finishing first what an
    /// interrupted netctl left in the journal. The calling thread must be in
    /// the host namespace already (main enters it at start-up).
    pub async fn open(config: HostConfig) -> Result<Self> {
        let dir = StateDir::lock(&config.state_dir)?;
        let had_state_file = dir.has_state_file();
        let state = dir.load()?;
        let netlink = Netlink::connect(config.host_netns.as_deref().unwrap_or("root"))?;
        let mut host = Host {
            config,
            dir,
            committed: state.clone(),
            state,
            had_state_file,
            netlink,
            command: String::new(),
            undo: Vec::new(),
            datapath: None,
        };
        if let Some(journal) = host.state.journal.take() {
            host.committed.journal = None;
            host.recover(journal).await?;
        }
        Ok(host)
    }

    /// Completes what a killed netctl left: undoes the steps of a command
    /// that never committed, finishes removals that had begun, then saves.
    async fn recover(&mut self, journal: Journal) -> Result<()> {
        eprintln!(
            "netctl: finishing `{}`, interrupted: undoing {} step(s), removing {} container(s) and {} network(s)",
            journal.command,
            journal.undo.len(),
            journal.removing_containers.len(),
            journal.removing_networks.len()
        );
        let mut errors = Vec::new();
        // The steps may name a datapath the state does not record yet (the
        // host's first command); undo them against that one.
        let recorded = self.state.datapath;
        if journal.datapath.is_some() {
            self.state.datapath = journal.datapath;
        }
        self.undo = journal.undo;
        errors.extend(self.rollback().await.err());
        self.state.datapath = recorded;
        for name in &journal.removing_containers {
            if self.state.containers.contains_key(name) {
                errors.extend(self.remove_container(name).await.err());
            }
        }
        for name in &journal.removing_networks {
            if let Some(net) = self.state.networks.get(name).cloned() {
                errors.extend(self.remove_network(&net).await.err());
            }
        }
        errors.extend(self.dir.save(&self.state).err());
        self.committed = self.state.clone();
        self.had_state_file = true;
        Error::collect(errors).map_err(|e| {
            Error::system(
                format!("recovery of `{}`", journal.command),
                format!("{e} (run `netctl doctor --fix`)"),
            )
        })
    }

    /// Names the command whose steps the journal records from now on.
    fn begin(&mut self, command: impl Into<String>) {
        self.command = command.into();
        self.undo.clear();
    }

    /// Records how to undo a step, in the journal on disk, before the step
    /// is taken: a crash in the middle of the step still leaves its undo.
    fn record(&mut self, step: Undo) -> Result<()> {
        self.undo.push(step);
        let journal = Journal {
            command: self.command.clone(),
            datapath: self.state.datapath,
            undo: self.undo.clone(),
            ..Journal::default()
        };
        self.dir.save_journal(&self.committed, &journal)
    }

    /// Saves a journal of removals about to start (see `recover`).
    fn record_removal(&mut self, containers: &[String], networks: &[String]) -> Result<()> {
        let journal = Journal {
            command: self.command.clone(),
            datapath: self.state.datapath,
            removing_containers: containers.to_vec(),
            removing_networks: networks.to_vec(),
            ..Journal::default()
        };
        self.dir.save_journal(&self.committed, &journal)
    }

    /// Saves the state as committed: the journal is gone with the same write.
    fn save_committed(&mut self) -> Result<()> {
        self.state.journal = None;
        self.dir.save(&self.state)?;
        self.committed = self.state.clone();
        self.had_state_file = true;
        Ok(())
    }

    /// Host facts for the datapath: the uplink and its address, when found.
    async fn host_info(&self) -> Result<HostInfo> {
        let index = match &self.config.uplink {
            Some(name) => Some(self.netlink.link(name).await?.map(|l| l.index).ok_or_else(
                || {
                    Error::invalid(
                        format!("uplink {name}"),
                        "no such interface in the host namespace",
                    )
                },
            )?),
            None => self.netlink.default_route_interface().await?,
        };
        let mut uplink = None;
        if let Some(index) = index {
            let name = self
                .netlink
                .link_by_index(index)
                .await?
                .map(|l| l.name)
                .unwrap_or_default();
            if let Some(address) = self.netlink.ipv4_addresses(index).await?.first() {
                uplink = Some(Uplink {
                    name,
                    index,
                    address: *address,
                });
            }
        }
        Ok(HostInfo {
            config: self.config.clone(),
            uplink,
        })
    }

    /// The host's datapath, opened once per command.
    async fn datapath(&mut self) -> Result<Rc<dyn Datapath>> {
        let kind = self.state.datapath.unwrap_or(DEFAULT_DATAPATH);
        match &self.datapath {
            Some(dp) if dp.kind() == kind => Ok(dp.clone()),
            _ => {
                let dp: Rc<dyn Datapath> = datapath::open(kind, &self.host_info().await?)?.into();
                self.datapath = Some(dp.clone());
                Ok(dp)
            }
        }
    }

    /// Ends a command: on success saves the state (which drops the
    /// journal); on error undoes the recorded steps and returns to the
    /// committed state.
    async fn commit(&mut self, result: Result<()>, removed_netns: &[String]) -> Result<()> {
        let result = result.and_then(|()| failpoint::check("commit"));
        match result {
            Ok(()) => {
                let hosts = hosts::refresh(&self.state, removed_netns);
                self.save_committed()?;
                self.undo.clear();
                hosts
            }
            Err(err) => {
                let journaled = !self.undo.is_empty();
                let mut errors = vec![err];
                errors.extend(self.rollback().await.err());
                self.state = self.committed.clone();
                if journaled {
                    let cleared = if self.had_state_file {
                        self.dir.save(&self.state)
                    } else {
                        self.dir.remove_state_file()
                    };
                    errors.extend(cleared.err());
                }
                Err(Error::collect(errors).expect_err("the command's error"))
            }
        }
    }

    async fn rollback(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        // HostDown is only recorded once the datapath is fixed, so this is
        // the datapath every recorded datapath step was applied to.
        let datapath = self.datapath().await;
        while let Some(step) = self.undo.pop() {
            // No `?` in here: a failing step must not stop the others.
            let result = match step {
                Undo::DeleteLink { name } => self.netlink.delete_link(&name).await,
                Undo::DeleteNetns { name } => netns::delete(&name),
                Undo::StopProcess { process } => process::stop(&process),
                step => match &datapath {
                    Ok(dp) => match step {
                        Undo::HostDown => dp.host_down(),
                        Undo::NetworkDown { network } => dp.network_down(&network),
                        Undo::EndpointRemoved { network, endpoint } => {
                            dp.endpoint_removed(&network, &endpoint)
                        }
                        Undo::PortsUnpublished { network, ports } => {
                            dp.ports_unpublished(&network, &ports)
                        }
                        _ => unreachable!("handled above"),
                    },
                    Err(e) => Err(Error::system("datapath", e)),
                },
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        Error::collect(errors)
    }

    // ---------------------------------------------------------------- networks

    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<Network> {
        self.begin(format!("network create {}", req.name));
        let net = self.plan_network(&req)?;
        let result = self.apply_network_create(&net, req.datapath).await;
        self.commit(result, &[]).await?;
        Ok(net)
    }

    fn plan_network(&self, req: &NetworkCreate) -> Result<Network> {
        ipam::check_name("network", &req.name)?;
        let bridge = match &req.bridge {
            Some(name) => ipam::check_bridge_name(&req.name, name)?,
            None => ipam::bridge_name(&req.name)?,
        };
        if self.state.networks.contains_key(&req.name) {
            return Err(Error::invalid(
                format!("network {}", req.name),
                "already exists",
            ));
        }
        if let Some(other) = self.state.networks.values().find(|n| n.bridge == bridge) {
            return Err(Error::invalid(
                format!("network {}", req.name),
                format!("bridge {bridge} is the bridge of network {}", other.name),
            ));
        }
        if let (Some(have), Some(want)) = (self.state.datapath, req.datapath) {
            if have != want {
                return Err(Error::invalid(
                    format!("network {}", req.name),
                    format!(
                        "this host uses the {have} datapath; switching to {want} needs `netctl down` first"
                    ),
                ));
            }
        }
        let existing: Vec<(&str, Ipv4Net)> = self
            .state
            .networks
            .values()
            .map(|n| (n.name.as_str(), n.subnet))
            .collect();
        let subnet = match &req.subnet {
            Some(text) => {
                let subnet = ipam::parse_subnet(text)?;
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
        let gateway = match &req.gateway {
            Some(text) => {
                let gateway = ipam::parse_ip("gateway", text)?;
                ipam::check_gateway(subnet, gateway)?;
                gateway
            }
            None => ipam::default_gateway(subnet),
        };
        Ok(Network {
            name: req.name.clone(),
            id: self.state.next_network_id(),
            bridge,
            subnet,
            gateway,
            internal: req.internal,
            dns: req.name != DEFAULT_NETWORK,
            created: now(),
            mtu: req.mtu,
        })
    }

    async fn apply_network_create(
        &mut self,
        net: &Network,
        datapath: Option<DatapathKind>,
    ) -> Result<()> {
        if self.state.datapath.is_none() {
            let kind = datapath.unwrap_or(DEFAULT_DATAPATH);
            self.state.datapath = Some(kind);
            let dp = self.datapath().await?;
            self.record(Undo::HostDown)?;
            dp.host_up()?;
            failpoint::check("create.host")?;
        }
        if self.netlink.link(&net.bridge).await?.is_some() {
            return Err(Error::invalid(
                format!("network {}", net.name),
                format!("interface {} already exists on the host", net.bridge),
            ));
        }
        self.record(Undo::DeleteLink {
            name: net.bridge.clone(),
        })?;
        topology::network_up(&self.netlink, net).await?;
        failpoint::check("create.bridge")?;
        let dp = self.datapath().await?;
        self.record(Undo::NetworkDown {
            network: net.clone(),
        })?;
        dp.network_up(net)?;
        failpoint::check("create.network")?;
        self.state.networks.insert(net.name.clone(), net.clone());
        Ok(())
    }

    /// The default network, created inside the current transaction if missing.
    async fn ensure_default_network(&mut self) -> Result<()> {
        if self.state.networks.contains_key(DEFAULT_NETWORK) {
            return Ok(());
        }
        let req = NetworkCreate {
            name: DEFAULT_NETWORK.into(),
            ..NetworkCreate::default()
        };
        let net = self.plan_network(&req)?;
        self.apply_network_create(&net, None).await
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
    async fn remove_network(&mut self, net: &Network) -> Result<()> {
        self.record_removal(&[], std::slice::from_ref(&net.name))?;
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
        errors.extend(self.save_committed().err());
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
        let mut errors = Vec::new();
        for net in &unused {
            if let Err(e) = self.remove_network(net).await {
                errors.push(e);
            }
        }
        Error::collect(errors)?;
        Ok(unused.into_iter().map(|n| n.name).collect())
    }

    pub async fn network_connect(
        &mut self,
        network: &str,
        container: &str,
        ip: Option<&str>,
    ) -> Result<()> {
        let net = self.state.network(network)?.clone();
        let ctr = self.state.container(container)?.clone();
        if ctr.mode != NetworkMode::Bridge {
            return Err(Error::invalid(
                format!("container {container}"),
                format!(
                    "is in {} mode and cannot join networks",
                    mode_name(&ctr.mode)
                ),
            ));
        }
        if ctr.endpoint(network).is_some() {
            return Err(Error::invalid(
                format!("container {container}"),
                format!("is already connected to network {network}"),
            ));
        }
        self.begin(format!("network connect {network} {container}"));
        let ifname = next_ifname(&ctr);
        let ep = self.plan_endpoint(&net, &ctr.name, &ifname, ip)?;
        let netns_name = ctr.netns.clone().expect("bridge mode has a namespace");
        let result = self
            .apply_attach("connect", container, &netns_name, &net, &ep)
            .await;
        self.commit(result, &[]).await
    }

    pub async fn network_disconnect(&mut self, network: &str, container: &str) -> Result<()> {
        let net = self.state.network(network)?.clone();
        let ctr = self.state.container(container)?.clone();
        let Some(ep) = ctr.endpoint(network).cloned() else {
            return Err(Error::invalid(
                format!("container {container}"),
                format!("is not connected to network {network}"),
            ));
        };
        let dp = self.datapath().await?;
        let ports: Vec<PortMapping> = ctr
            .ports
            .iter()
            .filter(|p| p.network == network)
            .cloned()
            .collect();
        let mut errors = Vec::new();
        if !ports.is_empty() {
            errors.extend(dp.ports_unpublished(&net, &ports).err());
        }
        errors.extend(dp.endpoint_removed(&net, &ep).err());
        errors.extend(topology::detach(&self.netlink, &ep).await.err());
        let entry = self
            .state
            .containers
            .get_mut(container)
            .expect("checked above");
        entry.endpoints.retain(|e| e.network != network);
        entry.ports.retain(|p| p.network != network);
        let remaining = entry.clone();
        let gateways = default_gateways(&self.state, &remaining);
        if let Some(netns_name) = &remaining.netns {
            errors.extend(
                topology::restore_default_route(netns_name, &gateways)
                    .await
                    .err(),
            );
        }
        errors.extend(hosts::refresh(&self.state, &[]).err());
        errors.extend(self.save_committed().err());
        Error::collect(errors)
    }

    // -------------------------------------------------------------- containers

    pub async fn container_run(&mut self, req: ContainerRun) -> Result<Container> {
        self.begin(format!("container run {}", req.name));
        let result = self.apply_container_run(&req).await;
        self.commit(result, &[]).await?;
        Ok(self.state.containers[&req.name].clone())
    }

    async fn apply_container_run(&mut self, req: &ContainerRun) -> Result<()> {
        ipam::check_name("container", &req.name)?;
        let object = || format!("container {}", req.name);
        if self.state.containers.contains_key(&req.name) {
            return Err(Error::invalid(object(), "already exists"));
        }
        let mode = parse_mode(req.network.as_deref().unwrap_or(DEFAULT_NETWORK));
        let specs = req
            .ports
            .iter()
            .map(|p| ports::parse(p))
            .collect::<Result<Vec<PortSpec>>>()?;
        if mode.0 != NetworkMode::Bridge {
            if !specs.is_empty() {
                return Err(Error::invalid(
                    object(),
                    format!(
                        "cannot publish ports in {} network mode",
                        mode_name(&mode.0)
                    ),
                ));
            }
            if req.ip.is_some() {
                return Err(Error::invalid(
                    object(),
                    format!("--ip cannot be used in {} network mode", mode_name(&mode.0)),
                ));
            }
        }
        let (netns_name, mut endpoints) = match &mode {
            (NetworkMode::Host, _) => (None, Vec::new()),
            (NetworkMode::Container(other), _) => {
                let target = self.state.container(other)?;
                let Some(netns_name) = target.netns.clone() else {
                    return Err(Error::invalid(
                        object(),
                        format!("container {other} uses the host namespace; use --network host"),
                    ));
                };
                (Some(netns_name), Vec::new())
            }
            (NetworkMode::None, _) => (Some(self.config.container_netns(&req.name)), Vec::new()),
            (NetworkMode::Bridge, network) => {
                let network = network.as_deref().expect("bridge mode names a network");
                if network == DEFAULT_NETWORK {
                    self.ensure_default_network().await?;
                }
                let net = self.state.network(network)?.clone();
                if net.internal && !specs.is_empty() {
                    return Err(Error::invalid(
                        object(),
                        format!("cannot publish ports on internal network {network}"),
                    ));
                }
                let ifname = req.cni.as_ref().map_or("eth0", |c| c.ifname.as_str());
                let mut ep = self.plan_endpoint(&net, &req.name, ifname, req.ip.as_deref())?;
                if let Some(mac) = &req.mac {
                    topology::parse_mac(mac)?;
                    ep.mac = mac.to_ascii_lowercase();
                }
                let netns_name = match &req.cni {
                    Some(cni) => cni.netns.clone(),
                    None => self.config.container_netns(&req.name),
                };
                (Some(netns_name), vec![(net, ep)])
            }
        };
        let mut container = Container {
            name: req.name.clone(),
            mode: mode.0.clone(),
            netns: netns_name.clone(),
            endpoints: Vec::new(),
            ports: Vec::new(),
            process: None,
            created: now(),
            cni: req.cni.clone(),
        };
        if let Some((net, ep)) = endpoints.first() {
            let taken: Vec<PortMapping> = self.state.ports().cloned().collect();
            container.ports = ports::expand_all(&specs, &taken, &req.name, &net.name, ep.ip)?;
        }
        let owns_netns =
            matches!(mode.0, NetworkMode::Bridge | NetworkMode::None) && req.cni.is_none();
        if let (true, Some(name)) = (owns_netns, &netns_name) {
            if netns::path(name).exists() {
                return Err(Error::invalid(
                    object(),
                    format!("namespace {name} already exists"),
                ));
            }
            self.record(Undo::DeleteNetns { name: name.clone() })?;
            topology::create_container_netns(name).await?;
            failpoint::check("run.netns")?;
        }
        self.state
            .containers
            .insert(req.name.clone(), container.clone());
        for (net, ep) in endpoints.drain(..) {
            self.apply_attach(
                "run",
                &req.name,
                netns_name.as_deref().expect("bridge mode"),
                &net,
                &ep,
            )
            .await?;
            if !container.ports.is_empty() {
                let dp = self.datapath().await?;
                self.record(Undo::PortsUnpublished {
                    network: net.clone(),
                    ports: container.ports.clone(),
                })?;
                dp.ports_published(&net, &container.ports)?;
                failpoint::check("run.ports")?;
                self.state
                    .containers
                    .get_mut(&req.name)
                    .expect("inserted")
                    .ports = container.ports.clone();
            }
        }
        if !req.command.is_empty() {
            let target = netns_name.as_deref().unwrap_or("");
            let log = self.config.state_dir.join(format!("{}.log", req.name));
            let proc = if netns_name.is_some() {
                process::spawn_detached(target, &req.command, log)?
            } else {
                return Err(Error::invalid(
                    object(),
                    "a command in host mode runs on the host itself: use `netctl exec --host`",
                ));
            };
            // Recorded once started (its pid is only known then); a crash in
            // between leaves a process in a namespace the recovery deletes.
            self.record(Undo::StopProcess {
                process: proc.clone(),
            })?;
            failpoint::check("run.process")?;
            self.state
                .containers
                .get_mut(&req.name)
                .expect("inserted")
                .process = Some(proc);
        }
        Ok(())
    }

    fn plan_endpoint(
        &self,
        net: &Network,
        container: &str,
        ifname: &str,
        ip: Option<&str>,
    ) -> Result<Endpoint> {
        let used: BTreeSet<Ipv4Addr> = self
            .state
            .members(&net.name)
            .filter_map(|c| c.endpoint(&net.name))
            .map(|e| e.ip)
            .collect();
        let ip = match ip {
            Some(text) => {
                let ip = ipam::parse_ip("ip", text)?;
                ipam::reserve(net.subnet, net.gateway, &used, ip)?;
                ip
            }
            None => ipam::allocate(net.subnet, net.gateway, &used)?,
        };
        Ok(Endpoint {
            network: net.name.clone(),
            ifname: ifname.to_owned(),
            host_veth: ipam::veth_name(container, net.id),
            ip,
            mac: ipam::mac_for(ip),
        })
    }

    /// `command` names the failpoints (`run.link`, `connect.link`, ...).
    async fn apply_attach(
        &mut self,
        command: &str,
        container: &str,
        netns_name: &str,
        net: &Network,
        ep: &Endpoint,
    ) -> Result<()> {
        if self.netlink.link(&ep.host_veth).await?.is_some() {
            return Err(Error::system(
                format!("endpoint {}", ep.host_veth),
                "interface already exists on the host (left by a crash? run `netctl doctor --fix`)",
            ));
        }
        self.record(Undo::DeleteLink {
            name: ep.host_veth.clone(),
        })?;
        topology::attach(&self.netlink, netns_name, net, ep).await?;
        failpoint::check(&format!("{command}.link"))?;
        let dp = self.datapath().await?;
        self.record(Undo::EndpointRemoved {
            network: net.clone(),
            endpoint: ep.clone(),
        })?;
        dp.endpoint_added(net, ep)?;
        failpoint::check(&format!("{command}.endpoint"))?;
        let entry = self
            .state
            .containers
            .get_mut(container)
            .ok_or_else(|| Error::not_found("container", container))?;
        entry.endpoints.push(ep.clone());
        Ok(())
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
        let mut errors = Vec::new();
        for name in &order {
            if let Err(e) = self.remove_container(name).await {
                errors.push(e);
            }
        }
        Error::collect(errors)
    }

    /// Takes a container apart, going on past errors: process, ports,
    /// endpoints, namespace, hosts file, state.
    async fn remove_container(&mut self, name: &str) -> Result<()> {
        let ctr = self.state.container(name)?.clone();
        self.record_removal(std::slice::from_ref(&ctr.name), &[])?;
        let mut errors = Vec::new();
        if let Some(p) = &ctr.process {
            errors.extend(process::stop(p).err());
            match std::fs::remove_file(&p.log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    errors.push(Error::io(format!("log {}", p.log.display()), e))
                }
                _ => {}
            }
        }
        match self.datapath().await {
            Ok(dp) => {
                for ep in &ctr.endpoints {
                    let Some(net) = self.state.networks.get(&ep.network) else {
                        continue;
                    };
                    let ports: Vec<PortMapping> = ctr
                        .ports
                        .iter()
                        .filter(|p| p.network == ep.network)
                        .cloned()
                        .collect();
                    if !ports.is_empty() {
                        errors.extend(dp.ports_unpublished(net, &ports).err());
                    }
                    errors.extend(dp.endpoint_removed(net, ep).err());
                }
            }
            Err(e) => errors.push(e),
        }
        errors.extend(failpoint::check("rm.datapath").err());
        for ep in &ctr.endpoints {
            errors.extend(topology::detach(&self.netlink, ep).await.err());
        }
        errors.extend(failpoint::check("rm.links").err());
        let mut removed_netns = Vec::new();
        if matches!(ctr.mode, NetworkMode::Bridge | NetworkMode::None) && ctr.cni.is_none() {
            if let Some(netns_name) = &ctr.netns {
                errors.extend(netns::delete(netns_name).err());
                removed_netns.push(netns_name.clone());
            }
        }
        errors.extend(failpoint::check("rm.netns").err());
        self.state.containers.remove(name);
        errors.extend(hosts::refresh(&self.state, &removed_netns).err());
        errors.extend(self.save_committed().err());
        Error::collect(errors)
    }

    /// Removes everything netctl made on this host, going on past errors.
    pub async fn down(&mut self) -> Result<()> {
        self.begin("down");
        let mut errors = Vec::new();
        let mut names: Vec<String> = self.state.containers.keys().cloned().collect();
        names.sort_by_key(|n| !matches!(self.state.containers[n].mode, NetworkMode::Container(_)));
        for name in names {
            errors.extend(self.remove_container(&name).await.err());
        }
        let networks: Vec<Network> = self.state.networks.values().cloned().collect();
        for net in &networks {
            errors.extend(self.remove_network(net).await.err());
        }
        if self.state.datapath.is_some() {
            errors.extend(self.datapath().await.and_then(|dp| dp.host_down()).err());
        }
        self.state.datapath = None;
        if errors.is_empty() {
            // Nothing left to remember: the state dir goes too (we hold its
            // lock until exit; a waiting netctl then starts from nothing).
            errors.extend(self.dir.remove().err());
        } else {
            errors.extend(self.save_committed().err());
        }
        Error::collect(errors)
    }
}

/// What `network create` was asked.
#[derive(Clone, Debug, Default)]
pub struct NetworkCreate {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub datapath: Option<DatapathKind>,
    pub internal: bool,
    /// Bridge interface name [default: derived from the name].
    pub bridge: Option<String>,
    /// MTU of the endpoints' veth pairs.
    pub mtu: Option<u32>,
}

/// What `container run` was asked.
#[derive(Clone, Debug, Default)]
pub struct ContainerRun {
    pub name: String,
    pub network: Option<String>,
    pub ip: Option<String>,
    pub ports: Vec<String>,
    pub command: Vec<String>,
    /// Container-side MAC [default: derived from the address].
    pub mac: Option<String>,
    /// A CNI attachment: the container joins the runtime's namespace
    /// (`netns`) as `ifname` instead of getting a namespace of its own.
    pub cni: Option<CniAttachment>,
}

/// `--network` value → mode and, for bridge mode, the network's name.
fn parse_mode(value: &str) -> (NetworkMode, Option<String>) {
    match value {
        "host" => (NetworkMode::Host, None),
        "none" => (NetworkMode::None, None),
        other => match other.strip_prefix("container:") {
            Some(target) => (NetworkMode::Container(target.to_owned()), None),
            None => (NetworkMode::Bridge, Some(other.to_owned())),
        },
    }
}

pub fn mode_name(mode: &NetworkMode) -> String {
    match mode {
        NetworkMode::Bridge => "bridge".into(),
        NetworkMode::Host => "host".into(),
        NetworkMode::None => "none".into(),
        NetworkMode::Container(other) => format!("container:{other}"),
    }
}

/// First free ethN inside a container.
fn next_ifname(ctr: &Container) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|name| ctr.endpoints.iter().all(|e| &e.ifname != name))
        .expect("an unused ethN")
}

/// Gateways a container could route through, in endpoint order.
fn default_gateways(state: &State, ctr: &Container) -> Vec<Ipv4Addr> {
    ctr.endpoints
        .iter()
        .filter_map(|e| state.networks.get(&e.network))
        .filter(|n| !n.internal)
        .map(|n| n.gateway)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_docker() {
        assert_eq!(parse_mode("host"), (NetworkMode::Host, None));
        assert_eq!(parse_mode("none"), (NetworkMode::None, None));
        assert_eq!(
            parse_mode("container:web"),
            (NetworkMode::Container("web".into()), None)
        );
        assert_eq!(
            parse_mode("front"),
            (NetworkMode::Bridge, Some("front".into()))
        );
    }
}
