//! The CNI commands on netctl's host: each opens the host (state lock,
//! netlink, datapath) the way a CLI command does and reuses its
//! transactions, so a failed ADD leaves the host as it was.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use serde_json::{json, Value};

use super::{
    config::{Command, Env, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS},
    delegate::{self, Allocated, Call},
    result::{AddResult, CniError, Code, Interface},
};
use crate::{
    config::HostConfig,
    failpoint, ipam,
    model::{
        CniAttachment, Container, DatapathKind, DnsConfig, Mac, Naming, Network, PortMapping,
        Protocol,
    },
    netlink::Netlink,
    netns,
    ops::{self, ContainerRun, Host, NetworkCreate, Networking, DEFAULT_DATAPATH},
    ports::PortSpec,
};

/// Runs the command of `env` with the configuration on stdin; returns what
/// to print on stdout.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::decode(stdin, env.command)?;
    let config = HostConfig::new(
        conf.host_netns.clone(),
        conf.state_dir.clone(),
        conf.uplink.clone(),
        conf.cgroup.clone(),
    );
    if let Some(name) = &conf.host_netns {
        // Before any thread exists, as the CLI does: everything below, the
        // delegated IPAM plugin included, runs in the host namespace.
        netns::enter_for_good(name)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::System, format!("tokio runtime: {e}")))?;
    let state_dir = config.state_dir.clone();
    let cmd = Invocation {
        env,
        conf: &conf,
        stdin,
        config,
    };
    // A DEL of an unknown attachment on a fresh host leaves no state dir.
    runtime.block_on(ops::leaving_no_trace(&state_dir, async {
        match env.command {
            Command::Add => cmd.add().await.map(Some),
            Command::Del => cmd.del().await.map(|()| None),
            Command::Check => cmd.check().await.map(|()| None),
            Command::Status => cmd.status().await.map(|()| None),
            Command::Gc => cmd.gc().await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    }))
}

/// VERSION: the versions this plugin speaks, in the requested version's
/// words (the newest when the input names none or an unknown one).
fn version(stdin: &[u8]) -> Value {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    json!({"cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS})
}

/// What a delegated IPAM plugin allocated: its first IPv4 address, and
/// its first IPv6 one (a `host-local` with an IPv6 range), with their
/// subnets and gateways.
#[derive(Clone, Copy, Debug)]
struct Delegated {
    v4: Allocated<Ipv4Addr, Ipv4Net>,
    v6: Option<Allocated<Ipv6Addr, Ipv6Net>>,
}

/// The netctl container of an attachment: `cni-` + the first 12
/// characters of the container id + `-` + ifname (a hash of the ifname when
/// the ifname holds characters a container name may not).
pub fn container_name(container_id: &str, ifname: &str) -> String {
    let id: String = container_id.chars().take(12).collect();
    let readable = format!("cni-{id}-{ifname}");
    if ipam::check_name("container", &readable).is_ok() {
        readable
    } else {
        format!("cni-{id}-{}", ipam::veth_name(ifname, 0))
    }
}

struct Invocation<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    stdin: &'a [u8],
    config: HostConfig,
}

impl Invocation<'_> {
    /// The attachment of this invocation, if netctl has it.
    fn ours<'s>(&self, host: &'s Host) -> Option<&'s Container> {
        let name = container_name(&self.env.container_id, &self.env.ifname);
        host.state.containers.get(&name).filter(|c| {
            c.cni.as_ref().is_some_and(|cni| {
                cni.container_id == self.env.container_id && cni.ifname == self.env.ifname
            })
        })
    }

    /// Attachments of this network in namespaces that no longer exist
    /// which are this attachment or hold one of its names.
    fn stale(&self, host: &Host) -> Vec<(String, CniAttachment)> {
        let names: Vec<String> = self
            .names()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        host.state
            .containers
            .values()
            .filter_map(|c| Some((c, c.cni.as_ref()?)))
            .filter(|(_, cni)| cni.network == self.conf.name && !netns::exists(&cni.netns))
            .filter(|(c, cni)| {
                (cni.container_id == self.env.container_id && cni.ifname == self.env.ifname)
                    || c.aliases(&self.conf.name)
                        .iter()
                        .any(|a| names.contains(&a.to_ascii_lowercase()))
            })
            .map(|(c, cni)| (c.name.clone(), cni.clone()))
            .collect()
    }

    /// A DEL to the delegated IPAM plugin for each of `attachments`, with
    /// `stdin` as their configuration; the errors met.
    fn release_ipam_of(&self, attachments: &[CniAttachment], stdin: &[u8]) -> Vec<CniError> {
        let Some(plugin) = self.conf.delegated_ipam() else {
            return Vec::new();
        };
        attachments
            .iter()
            .filter_map(|cni| {
                let call = Call {
                    command: "DEL",
                    container_id: &cni.container_id,
                    ifname: &cni.ifname,
                    netns: None,
                };
                delegate::exec(plugin, &self.env.path, &call, stdin).err()
            })
            .collect()
    }

    /// The attachment's names on its network besides its own: podman's
    /// container name (`K8S_POD_NAME`) and the `aliases` capability's
    /// names for this network (podman's `--network-alias` and the short
    /// container id), each once whatever its case.
    fn names(&self) -> Vec<String> {
        let aliases = self.conf.runtime_config.aliases.get(&self.conf.name);
        let mut names: Vec<String> = Vec::new();
        // podman's name rule is netctl's but for the length: a longer
        // name is no DNS label either, and is left out rather than failing
        // the container (the aliases asked are checked as given).
        let podman_name = self
            .env
            .podman_name()
            .filter(|n| ipam::check_name("container", n).is_ok());
        for name in podman_name
            .into_iter()
            .chain(aliases.into_iter().flatten().map(String::as_str))
        {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.to_owned());
            }
        }
        names
    }

    fn ipam_call(&self, command: &'static str) -> Call<'_> {
        Call {
            command,
            container_id: &self.env.container_id,
            ifname: &self.env.ifname,
            netns: self.env.netns.as_deref(),
        }
    }

    // --------------------------------------------------------------------- ADD

    async fn add(&self) -> Result<Value, CniError> {
        let netns_path = self.env.netns.clone().expect("checked for ADD");
        if !netns::exists(&netns_path) {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_NETNS {netns_path}: not a network namespace"),
            ));
        }
        let name = container_name(&self.env.container_id, &self.env.ifname);
        let ports = port_specs(self.conf)?;
        // The capabilities first, then CNI_ARGS `IP` and `MAC` (podman 4.3
        // passes --ip and --mac-address that way, as the reference
        // host-local and bridge plugins read them).
        let requested_ip = match self.conf.requested_ip()? {
            Some(ip) => Some(ip),
            None => self.env.requested_ip()?,
        };
        let mac = match self
            .conf
            .runtime_config
            .mac
            .as_deref()
            .or(self.env.arg("MAC"))
        {
            Some(text) => Some(text.parse::<Mac>()?),
            None => None,
        };
        let mut host = Host::open(self.config.clone()).await?;
        // Attachments whose namespace is gone without a DEL (a reboot, a
        // runtime that crashed) and that are in the way: this same
        // attachment being set up again, or one holding a name it asks.
        // They go first, with their delegated addresses.
        let stale = self.stale(&host);
        if !stale.is_empty() {
            let names: Vec<String> = stale.iter().map(|(n, _)| n.clone()).collect();
            host.container_rm(&names).await?;
            let attachments: Vec<CniAttachment> = stale.into_iter().map(|(_, c)| c).collect();
            if let Some(e) = self
                .release_ipam_of(&attachments, self.stdin)
                .into_iter()
                .next()
            {
                return Err(e);
            }
        }
        if let Some(existing) = host.state.containers.get(&name) {
            return Err(CniError::new(
                Code::Refused,
                format!(
                    "attachment {}/{}: already added (container {}{})",
                    self.env.container_id,
                    self.env.ifname,
                    existing.name,
                    if existing.cni.is_none() {
                        ", made by the CLI"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // The delegated IPAM first: its address decides the subnet of a
        // network created now. Released again if anything later fails.
        let delegated = self.conf.delegated_ipam();
        let allocated = match delegated {
            Some(plugin) => {
                let result =
                    delegate::exec(plugin, &self.env.path, &self.ipam_call("ADD"), self.stdin)?;
                let v4 = delegate::first_ipv4(&result).inspect_err(|_| {
                    let _ =
                        delegate::exec(plugin, &self.env.path, &self.ipam_call("DEL"), self.stdin);
                })?;
                Some(Delegated {
                    v4,
                    v6: delegate::first_ipv6(&result),
                })
            }
            None => None,
        };
        let added = self
            .add_on_host(&mut host, &name, allocated, ports, requested_ip, mac)
            .await;
        if added.is_err() {
            self.release_ipam();
        }
        added
    }

    /// The host's part of an ADD: the attachment (with the configuration's
    /// network when it is the first, in the same transaction) and the
    /// result. A failure after the commit takes the attachment back.
    async fn add_on_host(
        &self,
        host: &mut Host,
        name: &str,
        allocated: Option<Delegated>,
        ports: Vec<PortSpec>,
        requested_ip: Option<Ipv4Addr>,
        mac: Option<Mac>,
    ) -> Result<Value, CniError> {
        failpoint::check("cni-add.ipam")?;
        let create_network = self.check_network(host, allocated)?;
        let dual_stack = match &create_network {
            Some(create) => create.ipv6,
            None => host
                .state
                .networks
                .get(&self.conf.name)
                .is_some_and(|n| n.ipv6.is_some()),
        };
        let ip = allocated.map(|a| a.v4.0).or(requested_ip);
        // An IPv6 address asked of a network without IPv6 is left out, as
        // it always was (a dual-stack runtime asks one per family).
        let ip6 = match (allocated.and_then(|a| a.v6), dual_stack) {
            (Some((ip6, _, _)), _) => Some(ip6),
            (None, true) => match self.conf.requested_ip6()? {
                Some(ip6) => Some(ip6),
                None => self.env.requested_ip6()?,
            },
            (None, false) => None,
        };
        let run = ContainerRun {
            name: name.to_owned(),
            network: Networking::Network(self.conf.name.clone()),
            ip,
            ip6,
            ports: for_family(ports, dual_stack),
            mac,
            cni: Some(CniAttachment {
                container_id: self.env.container_id.clone(),
                ifname: self.env.ifname.clone(),
                netns: self.env.netns.clone().expect("checked for ADD"),
                network: self.conf.name.clone(),
            }),
            create_network,
            naming: Naming {
                dns: self.runtime_dns()?,
                aliases: match self.names() {
                    names if names.is_empty() => Default::default(),
                    names => [(self.conf.name.clone(), names)].into(),
                },
                ..Naming::default()
            },
            ..ContainerRun::default()
        };
        let ctr = host.container_run(run).await?;
        let result = match failpoint::check("cni-add.result") {
            Ok(()) => self.add_result(host, &ctr).await,
            Err(e) => Err(e.into()),
        };
        if result.is_err() {
            let _ = host.container_rm(&[ctr.name]).await;
        }
        result
    }

    fn release_ipam(&self) {
        if let Some(plugin) = self.conf.delegated_ipam() {
            let _ = delegate::exec(plugin, &self.env.path, &self.ipam_call("DEL"), self.stdin);
        }
    }

    /// Checks an existing network against the configuration; on first use,
    /// returns the network to create with the attachment (checked already,
    /// so that a configuration asking what cannot be is refused as such).
    fn check_network(
        &self,
        host: &Host,
        allocated: Option<Delegated>,
    ) -> Result<Option<NetworkCreate>, CniError> {
        let conf = self.conf;
        let subnet = match (&conf.subnet, allocated) {
            (Some(text), _) => Some(ipam::parse_subnet(text)?),
            (None, Some(a)) => Some(a.v4.1),
            (None, None) => None,
        };
        let gateway = match (&conf.gateway, allocated) {
            (Some(text), _) => Some(ipam::parse_ip("gateway", text)?),
            (None, Some(a)) => a.v4.2,
            (None, None) => None,
        };
        // The IPv6 side asked: the configuration's (`ipv6`, `subnet6`,
        // `gateway6`), else the delegated IPAM's IPv6 range.
        let delegated6 = allocated.and_then(|a| a.v6);
        let ipv6 = conf
            .ipv6_side()
            .or(delegated6.map(|(_, s, g)| (Some(s), g)));
        let (subnet6, gateway6) = ipv6.unwrap_or_default();
        let mismatch = |what: &str, have: String, want: String| {
            CniError::new(
                Code::InvalidConfig,
                format!(
                    "network {}: exists with {what} {have}, the configuration says {want}",
                    conf.name
                ),
            )
        };
        if let Some(net) = host.state.networks.get(&conf.name) {
            if let Some(subnet) = subnet.filter(|s| *s != net.subnet) {
                return Err(mismatch(
                    "subnet",
                    net.subnet.to_string(),
                    subnet.to_string(),
                ));
            }
            if let Some(gateway) = gateway.filter(|g| *g != net.gateway) {
                return Err(mismatch(
                    "gateway",
                    net.gateway.to_string(),
                    gateway.to_string(),
                ));
            }
            match (net.ipv6, ipv6) {
                (None, Some(_)) => {
                    let asked = subnet6.map_or_else(|| "IPv6".to_owned(), |s| s.to_string());
                    return Err(mismatch("no IPv6", "(made without it)".into(), asked));
                }
                (Some(side), Some(_)) => {
                    if let Some(subnet6) = subnet6.filter(|s| *s != side.subnet) {
                        return Err(mismatch(
                            "IPv6 subnet",
                            side.subnet.to_string(),
                            subnet6.to_string(),
                        ));
                    }
                    if let Some(gateway6) = gateway6.filter(|g| *g != side.gateway) {
                        return Err(mismatch(
                            "IPv6 gateway",
                            side.gateway.to_string(),
                            gateway6.to_string(),
                        ));
                    }
                }
                // A configuration that does not mention IPv6 may join a
                // dual-stack network (its attachments get both families).
                (_, None) => {}
            }
            if let Some(bridge) = conf.bridge.as_ref().filter(|b| **b != net.bridge) {
                return Err(mismatch("bridge", net.bridge.clone(), bridge.clone()));
            }
            if conf.internal != net.internal {
                return Err(mismatch(
                    "internal",
                    net.internal.to_string(),
                    conf.internal.to_string(),
                ));
            }
            if conf.mtu != net.mtu {
                return Err(mismatch(
                    "mtu",
                    format!("{:?}", net.mtu),
                    format!("{:?}", conf.mtu),
                ));
            }
            let have = host.state.datapath.unwrap_or(DEFAULT_DATAPATH);
            if let Some(want) = conf.datapath.filter(|d| *d != have) {
                return Err(mismatch("datapath", have.to_string(), want.to_string()));
            }
            return Ok(None);
        }
        let req = NetworkCreate {
            name: conf.name.clone(),
            subnet,
            gateway,
            datapath: conf.datapath,
            internal: conf.internal,
            bridge: conf.bridge.clone(),
            mtu: conf.mtu,
            ipv6: ipv6.is_some(),
            subnet6,
            gateway6,
            host_id: self.config.host_id().to_owned(),
        };
        ops::plan_network(&host.state, &req).map_err(|e| match CniError::from(e) {
            // The configuration asks for what cannot be (a subnet that
            // overlaps another network, a bridge name in use).
            CniError {
                code: Code::Refused,
                msg,
            } => CniError::new(Code::InvalidConfig, msg),
            other => other,
        })?;
        Ok(Some(req))
    }

    /// The ADD result: the bridge, the host-side veth and the interface in
    /// the container, its address and the default route.
    /// The `dns` capability's settings for the container (IPv6 servers are
    /// left out: the networks have no IPv6).
    fn runtime_dns(&self) -> Result<DnsConfig, CniError> {
        let Some(dns) = &self.conf.runtime_config.dns else {
            return Ok(DnsConfig::default());
        };
        let mut servers = Vec::new();
        for text in &dns.servers {
            match text.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => servers.push(ip),
                Ok(std::net::IpAddr::V6(_)) => {}
                Err(_) => {
                    return Err(crate::error::Error::invalid(
                        "runtimeConfig.dns",
                        format!("server {text:?} is not an address"),
                    )
                    .into())
                }
            }
        }
        Ok(DnsConfig {
            servers,
            search: dns.searches.clone(),
            options: dns.options.clone(),
        })
    }

    /// The result's `dns`: the network's resolver (its gateway) as the
    /// nameserver of a user-defined network, else the runtime's servers;
    /// search domains and options from the runtime, else from the
    /// configuration's `dns`, whose other keys are kept.
    fn result_dns(&self, net: &Network, runtime: &DnsConfig) -> Value {
        let mut dns = match self.conf.dns.clone() {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let nameservers: Vec<String> = match net.dns {
            // The resolver listens on a dual-stack network's IPv6 gateway too.
            true => std::iter::once(IpAddr::V4(net.gateway))
                .chain(net.ipv6.map(|side| IpAddr::V6(side.gateway)))
                .map(|ip| ip.to_string())
                .collect(),
            false => runtime.servers.iter().map(ToString::to_string).collect(),
        };
        if !nameservers.is_empty() {
            dns.insert("nameservers".into(), json!(nameservers));
        }
        if !runtime.search.is_empty() {
            dns.insert("search".into(), json!(runtime.search));
        }
        if !runtime.options.is_empty() {
            dns.insert("options".into(), json!(runtime.options));
        }
        Value::Object(dns)
    }

    async fn add_result(&self, host: &Host, ctr: &Container) -> Result<Value, CniError> {
        let ep = ctr.endpoints.first().ok_or_else(|| {
            CniError::new(Code::System, format!("container {}: no endpoint", ctr.name))
        })?;
        let net = host.state.network(&ep.network)?;
        let netlink = Netlink::connect("host")?;
        let host_mac = netlink
            .link(&ep.host_veth)
            .await?
            .and_then(|l| l.mac)
            .map(|mac| Mac::from(mac).to_string())
            .unwrap_or_default();
        let result = AddResult {
            interfaces: vec![
                Interface {
                    name: net.bridge.clone(),
                    mac: net.bridge_mac().to_string(),
                    sandbox: None,
                    mtu: None,
                },
                Interface {
                    name: ep.host_veth.clone(),
                    mac: host_mac,
                    sandbox: None,
                    mtu: net.mtu,
                },
                Interface {
                    name: ep.ifname.clone(),
                    mac: ep.mac.to_string(),
                    sandbox: ctr.cni.as_ref().map(|c| c.netns.clone()),
                    mtu: net.mtu,
                },
            ],
            ips: addresses(net, ep.ip, ep.ip6),
            routes: if net.internal {
                Vec::new()
            } else {
                let v6 = net
                    .ipv6
                    .filter(|_| ep.ip6.is_some())
                    .map(|side| (IpNet::V6(Ipv6Net::default()), IpAddr::V6(side.gateway)));
                std::iter::once((IpNet::V4(Ipv4Net::default()), IpAddr::V4(net.gateway)))
                    .chain(v6)
                    .collect()
            },
            dns: self.result_dns(net, &ctr.naming.dns),
        };
        Ok(result.render(&self.conf.cni_version))
    }

    // --------------------------------------------------------------------- DEL

    /// Removes the attachment; an unknown one, or one whose namespace is
    /// gone, is not an error (the runtime may call DEL more than once).
    async fn del(&self) -> Result<(), CniError> {
        let mut host = Host::open(self.config.clone()).await?;
        let removed = match self.ours(&host).map(|c| c.name.clone()) {
            Some(name) => host.container_rm(&[name]).await.map_err(CniError::from),
            None => Ok(()),
        };
        drop(host);
        // A failure here stands for one before the IPAM's DEL: the
        // runtime's next DEL releases the address.
        failpoint::check("cni-del.ipam")?;
        let released = match self.conf.delegated_ipam() {
            Some(plugin) => {
                delegate::exec(plugin, &self.env.path, &self.ipam_call("DEL"), self.stdin)
                    .map(|_| ())
            }
            None => Ok(()),
        };
        removed.and(released)
    }

    // ------------------------------------------------------------------- CHECK

    /// Compares the attachment with what ADD made: state, links, addresses,
    /// the previous result and the published ports.
    async fn check(&self) -> Result<(), CniError> {
        let failed = |what: String| CniError::new(Code::CheckFailed, what);
        let host = Host::open(self.config.clone()).await?;
        let attachment = format!("attachment {}/{}", self.env.container_id, self.env.ifname);
        let ctr = self
            .ours(&host)
            .ok_or_else(|| failed(format!("{attachment}: unknown to netctl")))?
            .clone();
        let cni = ctr.cni.as_ref().expect("ours() checks it");
        let netns_path = self.env.netns.as_deref().expect("checked for CHECK");
        if cni.netns != netns_path || cni.network != self.conf.name {
            return Err(failed(format!(
                "{attachment}: added in {} on network {}, checked in {netns_path} on {}",
                cni.netns, cni.network, self.conf.name
            )));
        }
        let ep = ctr
            .endpoints
            .first()
            .ok_or_else(|| failed(format!("{attachment}: no endpoint")))?;
        let net = host.state.network(&ep.network)?;
        let prev = self.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(Code::InvalidConfig, "CHECK needs prevResult".to_owned())
        })?;
        let listed = prev["ips"].as_array().is_some_and(|ips| {
            ips.iter().any(|i| {
                i["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    == Some(ep.ip)
            })
        });
        if !listed {
            return Err(failed(format!(
                "{attachment}: prevResult does not list its address {}",
                ep.ip
            )));
        }
        if !netns::exists(netns_path) {
            return Err(failed(format!(
                "{attachment}: namespace {netns_path} is gone"
            )));
        }
        let outside = Netlink::connect("host")?;
        let bridge = outside.link(&net.bridge).await?;
        let veth = outside.link(&ep.host_veth).await?;
        match (bridge, veth) {
            (Some(bridge), Some(veth)) if veth.up && veth.master == Some(bridge.index) => {}
            _ => {
                return Err(failed(format!(
                    "{attachment}: {} is missing, down or not on bridge {}",
                    ep.host_veth, net.bridge
                )))
            }
        }
        let inside = Netlink::connect_in(netns_path)?;
        let link = inside
            .link(&ep.ifname)
            .await?
            .ok_or_else(|| failed(format!("{attachment}: no {} in {netns_path}", ep.ifname)))?;
        if !link.up || link.mac.map(Mac::from) != Some(ep.mac) {
            return Err(failed(format!(
                "{attachment}: {} is down or its MAC is not {}",
                ep.ifname, ep.mac
            )));
        }
        if !inside.ipv4_addresses(link.index).await?.contains(&ep.ip) {
            return Err(failed(format!(
                "{attachment}: {} lost its address {}",
                ep.ifname, ep.ip
            )));
        }
        let wanted: BTreeSet<String> = for_family(port_specs(self.conf)?, net.ipv6.is_some())
            .iter()
            .map(ToString::to_string)
            .collect();
        let have: BTreeSet<String> = ctr.ports.iter().map(mapping_spec).collect();
        if wanted != have {
            return Err(failed(format!(
                "{attachment}: published ports {have:?}, the runtime asks {wanted:?}"
            )));
        }
        drop(host);
        if let Some(plugin) = self.conf.delegated_ipam() {
            delegate::exec(plugin, &self.env.path, &self.ipam_call("CHECK"), self.stdin)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------- GC

    /// Removes every attachment of this network that the runtime does not
    /// list as valid, going on past errors.
    async fn gc(&self) -> Result<(), CniError> {
        let valid = self.conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "GC needs cni.dev/valid-attachments".to_owned(),
            )
        })?;
        let mut host = Host::open(self.config.clone()).await?;
        let stale: Vec<(String, CniAttachment)> = host
            .state
            .containers
            .values()
            .filter_map(|c| c.cni.as_ref().map(|cni| (c.name.clone(), cni.clone())))
            .filter(|(_, cni)| cni.network == self.conf.name)
            .filter(|(_, cni)| {
                !valid
                    .iter()
                    .any(|v| v.container_id == cni.container_id && v.ifname == cni.ifname)
            })
            .collect();
        let mut errors: Vec<CniError> = Vec::new();
        for (name, _) in &stale {
            if let Err(e) = host.container_rm(std::slice::from_ref(name)).await {
                errors.push(e.into());
            }
        }
        drop(host);
        // The IPAM plugin gets a DEL per stale attachment, in 1.0.0 words:
        // DEL is the same in 1.0.0 and 1.1.0, and IPAM plugins that predate
        // 1.1.0 (host-local before 1.2) refuse the GC's version.
        let mut del_conf: Value = serde_json::from_slice(self.stdin).unwrap_or_default();
        if let Some(object) = del_conf.as_object_mut() {
            object.remove("cni.dev/valid-attachments");
            object.insert("cniVersion".into(), json!("1.0.0"));
        }
        let del_stdin = serde_json::to_vec(&del_conf).unwrap_or_default();
        let attachments: Vec<CniAttachment> = stale.into_iter().map(|(_, c)| c).collect();
        errors.extend(self.release_ipam_of(&attachments, &del_stdin));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::new(
                errors[0].code,
                errors
                    .iter()
                    .map(|e| e.msg.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    // ------------------------------------------------------------------ STATUS

    /// Ready for ADDs: the state is readable, bpffs is there for the eBPF
    /// datapath, a delegated IPAM plugin can be found.
    async fn status(&self) -> Result<(), CniError> {
        let unavailable = |what: String| CniError::new(Code::NotAvailable, what);
        let host = Host::open(self.config.clone())
            .await
            .map_err(|e| unavailable(format!("state: {e}")))?;
        let datapath = host
            .state
            .datapath
            .or(self.conf.datapath)
            .unwrap_or(DEFAULT_DATAPATH);
        drop(host);
        if datapath == DatapathKind::Ebpf {
            let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
                .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
            if !bpffs {
                return Err(unavailable(
                    "/sys/fs/bpf: bpffs is not mounted (the eBPF datapath pins its maps there)"
                        .to_owned(),
                ));
            }
        }
        if let Some(plugin) = self.conf.delegated_ipam() {
            delegate::find(plugin, &self.env.path).map_err(|e| unavailable(e.msg))?;
        }
        Ok(())
    }
}

/// The attachment's addresses in a result: IPv4's, and IPv6's on a
/// dual-stack network (on the interface in the container, index 2).
fn addresses(
    net: &Network,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
) -> Vec<(IpNet, Option<IpAddr>, usize)> {
    let v4 = IpNet::new(ip.into(), net.subnet.prefix_len()).expect("a subnet's prefix");
    let v6 = net.ipv6.zip(ip6).map(|(side, ip6)| {
        let address = IpNet::new(ip6.into(), side.subnet.prefix_len()).expect("a subnet's prefix");
        (address, Some(IpAddr::V6(side.gateway)), 2)
    });
    std::iter::once((v4, Some(IpAddr::V4(net.gateway)), 2))
        .chain(v6)
        .collect()
}

/// The specs that apply on the network: those on one IPv6 host address
/// only on a dual-stack network (elsewhere they are left out, as before
/// IPv6: a dual-stack runtime sends a mapping once per family).
fn for_family(specs: Vec<PortSpec>, dual_stack: bool) -> Vec<PortSpec> {
    specs
        .into_iter()
        .filter(|s| dual_stack || !matches!(s.host_ip, Some(IpAddr::V6(_))))
        .collect()
}

/// The `runtimeConfig.portMappings` as netctl port specs. An IPv6 host
/// address publishes on that address ([`for_family`] drops it on a network
/// without IPv6); `::`, like `0.0.0.0`, on every address, and a mapping
/// repeated that way (one per family) is taken once.
fn port_specs(conf: &NetConf) -> Result<Vec<PortSpec>, CniError> {
    let invalid = |what: String| CniError::new(Code::InvalidConfig, what);
    let mut specs = Vec::new();
    for m in &conf.runtime_config.port_mappings {
        let object = format!("portMapping {}:{}", m.host_port, m.container_port);
        let host_ip = match m.host_ip.as_deref().unwrap_or("") {
            "" | "0.0.0.0" | "::" => None,
            text => match text.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    return Err(invalid(format!(
                        "{object}: hostIP {text:?} is not an address"
                    )))
                }
            },
        };
        let protocol = match m
            .protocol
            .as_deref()
            .unwrap_or("tcp")
            .to_ascii_lowercase()
            .as_str()
        {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(invalid(format!(
                    "{object}: protocol {other:?} (tcp or udp)"
                )))
            }
        };
        if m.host_port == 0 || m.container_port == 0 {
            return Err(invalid(format!("{object}: ports must be 1-65535")));
        }
        let spec = PortSpec {
            host_ip,
            host_ports: Some((m.host_port, m.host_port)),
            container_ports: (m.container_port, m.container_port),
            protocol,
        };
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// A published mapping in the form [`port_specs`] makes, to compare them.
fn mapping_spec(m: &PortMapping) -> String {
    PortSpec {
        host_ip: m.host_ip,
        host_ports: Some((m.host_port, m.host_port)),
        container_ports: (m.container_port, m.container_port),
        protocol: m.protocol,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_valid_and_stable() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(container_name(id, "eth0"), "cni-0123456789ab-eth0");
        let odd = container_name(id, "e@th0");
        assert!(ipam::check_name("container", &odd).is_ok(), "{odd}");
        assert_eq!(odd, container_name(id, "e@th0"));
        assert_ne!(odd, container_name(id, "e#th0"));
    }

    #[test]
    fn names_of_an_attachment() {
        let conf = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"aliases":{
              "n":["web","www"],"other":["x"]}}}"#,
            Command::Add,
        )
        .unwrap();
        let env = |pod: &str| Env {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            path: Vec::new(),
            args: vec![("K8S_POD_NAME".into(), pod.into())],
        };
        let names = |env: &Env| {
            Invocation {
                env,
                conf: &conf,
                stdin: b"",
                config: HostConfig::new(None, None, None, None),
            }
            .names()
        };
        // The pod name first; the same alias in another case once.
        assert_eq!(names(&env("Web")), ["Web", "www"]);
        // A name longer than a name may be is left out.
        assert_eq!(names(&env(&"a".repeat(70))), ["web", "www"]);
    }

    #[test]
    fn port_mappings_become_specs() {
        let conf = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"portMappings":[
              {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
              {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
              {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::"},
              {"hostPort":8443,"containerPort":443,"protocol":"tcp","hostIP":"2001:db8::1"}]}}"#,
            Command::Add,
        )
        .unwrap();
        let texts = |specs: Vec<PortSpec>| -> Vec<String> {
            specs.iter().map(ToString::to_string).collect()
        };
        let specs = port_specs(&conf).unwrap();
        assert_eq!(
            texts(specs.clone()),
            [
                "8080:80/tcp",
                "127.0.0.1:5353:53/udp",
                "[2001:db8::1]:8443:443/tcp"
            ]
        );
        // Without IPv6 on the network, the IPv6 host address is left out.
        assert_eq!(
            texts(for_family(specs.clone(), false)),
            ["8080:80/tcp", "127.0.0.1:5353:53/udp"]
        );
        assert_eq!(for_family(specs.clone(), true), specs);
        let sctp = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"portMappings":[
              {"hostPort":1,"containerPort":2,"protocol":"sctp"}]}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(port_specs(&sctp).unwrap_err().code, Code::InvalidConfig);
    }
}
