//! `netctl network`: its arguments, their conversion into typed requests,
//! and its output.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clap::Subcommand;
use ipnet::IpNet;

use super::{
    output::{print_json, print_listing, with_ipv6},
    values::{gateway_arg, ip6_arg, ip_arg, subnet_arg},
    Format, Names,
};
use crate::{
    error::{Error, Result},
    model::DatapathKind,
    ops::{Host, NetworkCreate},
};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create {
        name: String,
        /// Subnet in CIDR form, once per family (IPv6 with --ipv6) [default:
        /// IPv4, the first free of Docker's pools; IPv6, a unique-local /64
        /// derived from the host and the network name].
        #[arg(long, value_parser = subnet_arg)]
        subnet: Vec<IpNet>,
        /// Gateway (the bridge's address), once per family [default: first
        /// address of the subnet].
        #[arg(long, value_parser = gateway_arg)]
        gateway: Vec<IpAddr>,
        /// Dual stack: the network gets an IPv6 subnet too (iptables datapath).
        #[arg(long)]
        ipv6: bool,
        /// Datapath of the host (fixed by its first network).
        #[arg(long, value_enum)]
        datapath: Option<DatapathKind>,
        /// No way out: no SNAT, no published ports, no traffic to other networks.
        #[arg(long)]
        internal: bool,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show networks in detail (JSON).
    Inspect(Names),
    /// Remove networks (they must have no containers).
    Rm(Names),
    /// Remove every user-defined network without containers.
    Prune,
    /// Connect a container to a network.
    Connect {
        network: String,
        container: String,
        #[arg(long, value_parser = ip_arg)]
        ip: Option<Ipv4Addr>,
        /// IPv6 address on a dual-stack network.
        #[arg(long, value_parser = ip6_arg)]
        ip6: Option<Ipv6Addr>,
        /// Another name for the container on this network (repeatable).
        #[arg(long = "alias", value_name = "NAME")]
        aliases: Vec<String>,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
}

/// The `--subnet`s or `--gateway`s of `network create`: at most one of
/// each family, split by family.
fn one_per_family<T: Copy + std::fmt::Display, V4, V6>(
    flag: &str,
    values: &[T],
    split: impl Fn(T) -> Result<V4, V6>,
) -> Result<(Option<V4>, Option<V6>)> {
    let (mut v4, mut v6) = (None, None);
    for value in values {
        let (slot_taken, family) = match split(*value) {
            Ok(a) => (v4.replace(a).is_some(), "IPv4"),
            Err(b) => (v6.replace(b).is_some(), "IPv6"),
        };
        if slot_taken {
            return Err(Error::invalid(
                format!("{flag} {value}"),
                format!("{flag} is given twice for {family} (once per family)"),
            ));
        }
    }
    Ok((v4, v6))
}

pub(super) async fn network(mut host: Host, cmd: NetworkCommand, format: Format) -> Result<()> {
    match cmd {
        NetworkCommand::Create {
            name,
            subnet,
            gateway,
            ipv6,
            datapath,
            internal,
        } => {
            let (subnet, subnet6) = one_per_family("--subnet", &subnet, |n| match n {
                IpNet::V4(n) => Ok(n),
                IpNet::V6(n) => Err(n),
            })?;
            let (gateway, gateway6) = one_per_family("--gateway", &gateway, |a| match a {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(a) => Err(a),
            })?;
            let net = host
                .network_create(NetworkCreate {
                    name,
                    subnet,
                    gateway,
                    datapath,
                    internal,
                    ipv6,
                    subnet6,
                    gateway6,
                    ..NetworkCreate::default()
                })
                .await?;
            println!("{}", net.name);
            Ok(())
        }
        NetworkCommand::Ls => print_listing(
            format,
            &host.network_ls(),
            &[
                "NAME",
                "SUBNET",
                "GATEWAY",
                "BRIDGE",
                "DATAPATH",
                "INTERNAL",
                "CONTAINERS",
            ],
            |r| {
                vec![
                    r.network.name.clone(),
                    with_ipv6(&r.network.subnet, r.network.ipv6.map(|v| v.subnet)),
                    with_ipv6(&r.network.gateway, r.network.ipv6.map(|v| v.gateway)),
                    r.network.bridge.clone(),
                    r.datapath.to_string(),
                    r.network.internal.to_string(),
                    r.containers.join(","),
                ]
            },
        ),
        NetworkCommand::Inspect(Names { names }) => print_json(&host.network_inspect(&names)?),
        NetworkCommand::Rm(Names { names }) => {
            host.network_rm(&names).await?;
            names.iter().for_each(|n| println!("{n}"));
            Ok(())
        }
        NetworkCommand::Prune => {
            for name in host.network_prune().await? {
                println!("{name}");
            }
            Ok(())
        }
        NetworkCommand::Connect {
            network,
            container,
            ip,
            ip6,
            aliases,
        } => {
            host.network_connect(&network, &container, ip, ip6, &aliases)
                .await
        }
        NetworkCommand::Disconnect { network, container } => {
            host.network_disconnect(&network, &container).await
        }
    }
}
