//! `netctl container`, `exec` and `port`: their arguments, their
//! conversion into typed requests, and their output.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clap::{Args, Subcommand};

use super::{
    output::{print_json, print_listing, with_ipv6},
    values::{dns_arg, ip6_arg, ip_arg},
    Format, Names,
};
use crate::{
    config::HostConfig,
    error::{Error, Result},
    model::{DnsConfig, Naming, DEFAULT_NETWORK},
    netns,
    ops::{self, ContainerRun, Host, Networking},
    ports::{self, PortSpec},
    process,
};

// `run` carries every flag of Docker's it knows; parsed once per process,
// boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Make a container namespace and attach it; `-- CMD` starts CMD inside, detached.
    Run {
        name: String,
        /// NET | bridge | host | none | container:NAME
        #[arg(long, default_value = DEFAULT_NETWORK)]
        network: Networking,
        /// Address on the network [default: the first free one].
        #[arg(long, value_parser = ip_arg)]
        ip: Option<Ipv4Addr>,
        /// IPv6 address on a dual-stack network [default: the first free one].
        #[arg(long, value_parser = ip6_arg)]
        ip6: Option<Ipv6Addr>,
        /// Publish a port: [IP:][HOST[-HOST]:]CTR[-CTR][/tcp|/udp].
        #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = ports::parse)]
        publish: Vec<PortSpec>,
        /// Publish every --expose'd port on an ephemeral host port.
        #[arg(short = 'P', long = "publish-all")]
        publish_all: bool,
        /// A container port (PORT[/PROTO]) for -P.
        #[arg(long, value_name = "PORT", value_parser = ports::parse)]
        expose: Vec<PortSpec>,
        /// Hostname its processes see (and its own hosts file lists).
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        /// Another name for it on its network (repeatable; user-defined networks).
        #[arg(long = "network-alias", value_name = "NAME")]
        network_alias: Vec<String>,
        /// A nameserver instead of the host's (repeatable). On a
        /// user-defined network the network's resolver forwards to it.
        #[arg(long = "dns", value_name = "IP", value_parser = dns_arg)]
        dns: Vec<Ipv4Addr>,
        /// A search domain instead of the host's (repeatable).
        #[arg(long = "dns-search", value_name = "DOMAIN")]
        dns_search: Vec<String>,
        /// A resolv.conf option instead of the host's (repeatable).
        #[arg(long = "dns-option", value_name = "OPT")]
        dns_option: Vec<String>,
        /// Command to start inside, detached (output in the state dir).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List containers.
    #[command(alias = "list")]
    Ls,
    /// Show containers in detail (JSON).
    Inspect(Names),
    /// Remove containers: their command, ports, links and namespace.
    Rm(Names),
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run in the host namespace and cgroup instead of a container.
    #[arg(long, conflicts_with = "name")]
    pub host: bool,
    /// Container to enter.
    #[arg(required_unless_present = "host")]
    pub name: Option<String>,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub(super) fn exec(config: HostConfig, args: ExecArgs) -> Result<()> {
    if args.host {
        let target = process::Target {
            netns: None,
            cgroup: Some(&config.cgroup),
        };
        return Err(process::exec(&target, &args.command));
    }
    let name = args.name.expect("clap requires a name without --host");
    let ctr = ops::lookup_container(&config, &name)?;
    if let Some(netns_name) = &ctr.netns {
        if !netns::exists(netns_name) {
            return Err(Error::system(
                format!("container {name}"),
                format!("namespace {netns_name} is gone (run `netctl doctor`)"),
            ));
        }
    }
    let target = process::Target {
        netns: ctr.netns.as_deref(),
        cgroup: None,
    };
    Err(process::exec(&target, &args.command))
}

pub(super) async fn container(mut host: Host, cmd: ContainerCommand, format: Format) -> Result<()> {
    match cmd {
        ContainerCommand::Run {
            name,
            network,
            ip,
            ip6,
            mut publish,
            publish_all,
            expose,
            command,
            hostname,
            network_alias,
            dns,
            dns_search,
            dns_option,
        } => {
            if !expose.is_empty() && !publish_all {
                return Err(Error::invalid(
                    format!("container {name}"),
                    "--expose needs -P",
                ));
            }
            // -P: every exposed port on an ephemeral host port.
            publish.extend(expose);
            let ctr = host
                .container_run(ContainerRun {
                    name,
                    network,
                    ip,
                    ip6,
                    ports: publish,
                    command,
                    naming: Naming {
                        hostname,
                        aliases: match network_alias.is_empty() {
                            true => Default::default(),
                            // Keyed by the network the plan puts it on.
                            false => [(String::new(), network_alias)].into(),
                        },
                        dns: DnsConfig {
                            servers: dns,
                            search: dns_search,
                            options: dns_option,
                        },
                    },
                    ..ContainerRun::default()
                })
                .await?;
            println!("{}", ctr.name);
            Ok(())
        }
        ContainerCommand::Ls => print_listing(
            format,
            &host.container_ls(),
            &["NAME", "MODE", "NETWORKS", "IPS", "PORTS", "COMMAND"],
            |c| {
                vec![
                    c.name.clone(),
                    c.mode.to_string(),
                    c.endpoints
                        .iter()
                        .map(|e| e.network.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    c.endpoints
                        .iter()
                        .map(|e| with_ipv6(&e.ip, e.ip6))
                        .collect::<Vec<_>>()
                        .join(","),
                    c.ports
                        .iter()
                        .map(|p| p.describe())
                        .collect::<Vec<_>>()
                        .join(","),
                    c.process
                        .as_ref()
                        .map(|p| {
                            let state = if process::is_running(p) {
                                ""
                            } else {
                                " (exited)"
                            };
                            format!("{}{state}", p.command.join(" "))
                        })
                        .unwrap_or_default(),
                ]
            },
        ),
        ContainerCommand::Inspect(Names { names }) => print_json(&host.container_inspect(&names)?),
        ContainerCommand::Rm(Names { names }) => {
            host.container_rm(&names).await?;
            names.iter().for_each(|n| println!("{n}"));
            Ok(())
        }
    }
}

/// `netctl port NAME`: a container's published ports.
pub(super) fn port(host: &Host, name: &str, format: Format) -> Result<()> {
    let ctr = host.state.container(name)?;
    if format == Format::Json {
        return print_json(&ctr.ports);
    }
    for p in &ctr.ports {
        println!(
            "{}/{} -> {}:{}",
            p.container_port,
            p.protocol,
            crate::model::host_ip_text(p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            p.host_port
        );
    }
    Ok(())
}
