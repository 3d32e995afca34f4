//! ADD: the attachment (and its network on first use), its delegated
//! IPAM addresses, and the result.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

use super::{
    super::{
        delegate::{self, Allocated},
        result::{AddResult, CniError, Code, Interface},
    },
    invocation::container_name,
    port_mappings::{for_family, port_specs},
    Invocation,
};
use crate::{
    failpoint, ipam,
    model::{CniAttachment, Container, DnsConfig, Mac, Naming, Network},
    netlink::Netlink,
    netns,
    ops::{self, ContainerRun, Host, NetworkCreate, Networking, DEFAULT_DATAPATH},
    ports::PortSpec,
};

/// What a delegated IPAM plugin allocated: its first IPv4 address, and
/// its first IPv6 one (a `host-local` with an IPv6 range), with their
/// subnets and gateways.
#[derive(Clone, Copy, Debug)]
struct Delegated {
    v4: Allocated<Ipv4Addr, Ipv4Net>,
    v6: Option<Allocated<Ipv6Addr, Ipv6Net>>,
}

impl Invocation<'_> {
    pub(super) async fn add(&self) -> Result<Value, CniError> {
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

    /// The ADD result: the bridge, the host-side veth and the interface in
    /// the container, its address and the default route.
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
