//! The command line (Docker's words where they fit) and its output.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    config::HostConfig,
    datapath::ebpf,
    error::{Error, Result},
    ipam, ipam6,
    model::{DatapathKind, DnsConfig, Naming, DEFAULT_NETWORK},
    netns,
    ops::{self, ContainerRun, Host, NetworkCreate, Networking},
    ports::{self, PortSpec},
    process, resolver, trace,
};

#[derive(Parser, Debug)]
#[command(
    name = "netctl",
    version,
    about = "Docker-style container networking with a TC eBPF datapath"
)]
pub struct Cli {
    /// Host network namespace to act on (a name under /run/netns); the root namespace by default.
    #[arg(long, global = true, value_name = "NAME")]
    pub host_netns: Option<String>,
    /// State directory [default: /var/lib/netctl, or /run/netctl/NAME with --host-netns].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Uplink interface for SNAT [default: the interface of the default route].
    #[arg(long, global = true, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// cgroup v2 directory for host-side programs and `exec --host` [default: the cgroup v2 root].
    #[arg(long, global = true, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Output format of listings.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage containers (network namespaces attached to networks).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Run a command inside a container's namespace (peers' names resolve), or on the host.
    Exec(ExecArgs),
    /// List a container's published ports.
    Port { name: String },
    /// The eBPF datapath's connection tracking table.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Counters and drop reasons of the eBPF datapath.
    Stats,
    /// Follow the eBPF datapath's flow events live: new flows with their
    /// translation, drops with their reason, flow ends; with the
    /// containers' names. Until Ctrl-C, or --seconds. Every filter given
    /// must match; a filter given several times matches any of its values.
    Trace(TraceArgs),
    /// Print the host's metrics in the Prometheus text format, or serve
    /// them over HTTP at /metrics with --listen.
    Metrics {
        /// Serve GET /metrics on this address until SIGINT or SIGTERM
        /// (in the host namespace; port 0 picks a free one).
        #[arg(long, value_name = "ADDR:PORT", value_parser = listen_arg)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Serve Docker's remote network driver API on a Unix socket until
    /// SIGINT or SIGTERM (`docker network create -d netctl ...`).
    DockerPlugin {
        /// Docker finds a plugin NAME by /run/docker/plugins/NAME.sock, or
        /// by a spec file /etc/docker/plugins/NAME.spec holding unix://PATH.
        #[arg(long, default_value = crate::docker::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Compare the state with the kernel: report what is missing, and what
    /// carries netctl's names without being in the state.
    Doctor {
        /// Repair: rebuild what the state names, remove what nothing owns.
        #[arg(long)]
        fix: bool,
    },
    /// Keep the datapath following the host's interfaces and addresses
    /// (DHCP, VPNs, a second LAN) until SIGINT or SIGTERM: a re-sync on
    /// every netlink link or address change. Commands re-read them anyway;
    /// this is for hosts whose addresses change between commands.
    Watch,
    /// Remove everything netctl made on this host.
    Down,
    /// This netctl's version and its datapath's (datapath version, object
    /// fingerprint, each map's layout version), and those of the eBPF
    /// datapath loaded on this host.
    Version,
    /// The networks' resolver (started and stopped by netctl itself).
    #[command(hide = true)]
    Resolver,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Stop after this many seconds (1 to 86400) [default: until Ctrl-C].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: Option<u64>,
    /// Events of this container (its address, before or after translation,
    /// or its veth).
    #[arg(long = "container", value_name = "NAME")]
    pub containers: Vec<String>,
    /// Events touching this network (its containers or its subnet).
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Events with this port (source or destination, before or after
    /// translation).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// tcp, udp, icmp or a protocol number.
    #[arg(long = "proto", value_name = "PROTO", value_parser = trace::parse_protocol)]
    pub protocols: Vec<u8>,
    /// new, drop, end, or a drop reason (as `netctl stats` names it).
    #[arg(long = "verdict", value_name = "VERDICT")]
    pub verdicts: Vec<String>,
}

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

/// The objects a command acts on, by name (one or more).
#[derive(Args, Debug)]
pub struct Names {
    #[arg(required = true)]
    pub names: Vec<String>,
}

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

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List translated flows (one entry per direction).
    #[command(alias = "list")]
    Ls,
    /// Remove every entry (established flows are re-created only for
    /// published ports; SNAT flows then break, as with `conntrack -F`).
    Flush,
    /// Remove expired entries.
    Gc,
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

impl Cli {
    pub fn host_config(&self) -> HostConfig {
        HostConfig::new(
            self.host_netns.clone(),
            self.state_dir.clone(),
            self.uplink.clone(),
            self.cgroup.clone(),
        )
    }
}

/// `--ip`: an address whose refusal names the option.
fn ip_arg(text: &str) -> Result<Ipv4Addr> {
    if text.parse::<Ipv6Addr>().is_ok() {
        return Err(Error::invalid(
            format!("ip {text}"),
            "is an IPv6 address: give it with --ip6",
        ));
    }
    ipam::parse_ip("ip", text)
}

/// `--dns`: an address whose refusal names the option.
fn dns_arg(text: &str) -> Result<Ipv4Addr> {
    ipam::parse_ip("dns", text)
}

/// `--gateway`: an address of either family, whose refusal names the option.
fn gateway_arg(text: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("gateway {}", ipam::shown(text)),
            "not a valid IP address",
        )
    })
}

/// `--subnet`: an IPv4 or an IPv6 CIDR, each checked by its family's rules.
fn subnet_arg(text: &str) -> Result<IpNet> {
    if text.contains(':') {
        ipam6::parse_subnet(text).map(IpNet::V6)
    } else {
        ipam::parse_subnet(text).map(IpNet::V4)
    }
}

/// `--ip6`: an IPv6 address.
fn ip6_arg(text: &str) -> Result<Ipv6Addr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("ip6 {}", ipam::shown(text)),
            "not a valid IPv6 address",
        )
    })
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

/// `--listen`: a socket address whose refusal names the option.
fn listen_arg(text: &str) -> Result<std::net::SocketAddr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("listen {text}"),
            "not an ADDR:PORT (e.g. 127.0.0.1:9610)",
        )
    })
}

/// The error of a value that one of netctl's own parsers refused (a port
/// spec, an address, a subnet). netctl reports it like any validation
/// error, on one line with exit code 1, rather than as a usage error.
pub fn refused_value(err: &clap::Error) -> Option<&Error> {
    if err.kind() != clap::error::ErrorKind::ValueValidation {
        return None;
    }
    std::error::Error::source(err)?.downcast_ref::<Error>()
}

/// Runs a parsed command line. The calling thread is already in the host
/// namespace. `exec` does not return when it succeeds.
pub async fn run(cli: Cli) -> Result<()> {
    let config = cli.host_config();
    let state_dir = config.state_dir.clone();
    ops::leaving_no_trace(&state_dir, dispatch(cli, config)).await
}

async fn dispatch(cli: Cli, config: HostConfig) -> Result<()> {
    let format = cli.format;
    match cli.command {
        Command::Exec(args) => exec(config, args),
        Command::Network(cmd) => network(Host::open(config).await?, cmd, format).await,
        Command::Container(cmd) => container(Host::open(config).await?, cmd, format).await,
        Command::Port { name } => {
            let host = Host::open(config).await?;
            let ctr = host.state.container(&name)?;
            if format == Format::Json {
                return print_json(&ctr.ports);
            }
            for p in &ctr.ports {
                println!(
                    "{}/{} -> {}:{}",
                    p.container_port,
                    p.protocol,
                    crate::model::host_ip_text(
                        p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                    ),
                    p.host_port
                );
            }
            Ok(())
        }
        // Opened without following the host's interfaces: doctor audits
        // the datapath's view of them (`--fix` repairs it), down removes it.
        Command::Doctor { fix } => {
            doctor(Host::open_without_sync(config).await?, fix, format).await
        }
        Command::Down => Host::open_without_sync(config).await?.down().await,
        Command::Watch => {
            ops::watch(
                &config,
                // Scripts and tests wait for this line.
                || println!("watching"),
                |change| println!("{change}"),
            )
            .await
        }
        Command::Version => version(&Host::open(config).await?, format),
        Command::Resolver => resolver::server::run(&config).await,
        Command::Conntrack(cmd) => conntrack(&Host::open(config).await?, cmd, format),
        Command::Stats => stats(&Host::open(config).await?, format),
        Command::Metrics { listen: None } => {
            print!("{}", ops::metrics_text(&config).await?);
            Ok(())
        }
        Command::Metrics { listen: Some(addr) } => {
            ops::serve_metrics(&config, addr, |bound| {
                // Scripts and tests wait for this line (port 0 says which port).
                println!("listening on {bound}");
            })
            .await
        }
        Command::DockerPlugin { socket } => {
            crate::docker::serve(config, &socket, || {
                // Scripts and tests wait for this line.
                println!("listening on {}", socket.display());
            })
            .await
        }
        Command::Trace(args) => {
            let filters = trace::Filters {
                containers: args.containers,
                networks: args.networks,
                ports: args.ports,
                protocols: args.protocols,
                verdicts: args.verdicts,
            };
            Host::open(config)
                .await?
                .trace(
                    args.seconds,
                    &filters,
                    format == Format::Json,
                    &mut std::io::stdout(),
                )
                .await
        }
    }
}

/// `netctl version`: the binary's versions, then the loaded datapath's.
fn version(host: &Host, format: Format) -> Result<()> {
    let (binary, loaded) = host.versions()?;
    let datapath = host.state.datapath.map(|d| d.to_string());
    if format == Format::Json {
        return print_json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "binary": binary,
            "host_datapath": datapath,
            "loaded": loaded,
        }));
    }
    let describe = |v: &ebpf::Versions| {
        let maps: Vec<String> = v.maps.iter().map(|(n, l)| format!("{n} {l}")).collect();
        format!(
            "datapath {}, object {}, map layouts: {}",
            v.datapath,
            v.object
                .as_deref()
                .unwrap_or("unknown (loaded before layout records)"),
            maps.join(", ")
        )
    };
    println!("netctl {}", env!("CARGO_PKG_VERSION"));
    println!("binary: {}", describe(&binary));
    match (&loaded, datapath) {
        (Some(v), _) => println!("loaded: {}", describe(v)),
        (None, Some(kind)) if kind != "ebpf" => println!("loaded: the {kind} datapath"),
        (None, _) => println!("loaded: none"),
    }
    Ok(())
}

/// Prints every difference; fails (exit 1) when some remain, so that a
/// script can use `netctl doctor` as a check.
async fn doctor(mut host: Host, fix: bool, format: Format) -> Result<()> {
    let findings = host.doctor(fix).await?;
    if format == Format::Json {
        print_json(&findings)?;
    } else {
        for f in &findings {
            let mark = if f.fixed { " (fixed)" } else { "" };
            println!("{}: {}{mark}", f.object, f.problem);
        }
        if findings.is_empty() {
            println!("state and kernel agree");
        }
    }
    let left = findings.iter().filter(|f| !f.fixed).count();
    match (left, fix) {
        (0, _) => Ok(()),
        (n, false) => Err(Error::invalid(
            "doctor",
            format!("{n} difference(s) between the state and the kernel; `netctl doctor --fix` repairs them"),
        )),
        (n, true) => Err(Error::system("doctor --fix", format!("{n} difference(s) remain"))),
    }
}

fn exec(config: HostConfig, args: ExecArgs) -> Result<()> {
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

async fn network(mut host: Host, cmd: NetworkCommand, format: Format) -> Result<()> {
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

async fn container(mut host: Host, cmd: ContainerCommand, format: Format) -> Result<()> {
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

fn conntrack(host: &Host, cmd: ConntrackCommand, format: Format) -> Result<()> {
    match cmd {
        ConntrackCommand::Ls => print_listing(
            format,
            &host.conntrack_list()?,
            &[
                "PROTO", "SRC", "DST", "TO SRC", "TO DST", "KIND", "DIR", "STATE", "IDLE",
                "PACKETS", "BYTES",
            ],
            |f| {
                vec![
                    f.proto.to_string(),
                    f.src.clone(),
                    f.dst.clone(),
                    f.translated_src.clone(),
                    f.translated_dst.clone(),
                    f.kind.to_string(),
                    f.direction.to_string(),
                    f.state.to_string(),
                    format!("{}s", f.idle_seconds),
                    f.packets.to_string(),
                    f.bytes.to_string(),
                ]
            },
        ),
        ConntrackCommand::Flush => {
            let n = host.conntrack_flush()?;
            println!("{n} entries removed");
            Ok(())
        }
        ConntrackCommand::Gc => {
            let n = host.conntrack_gc()?;
            println!("{n} expired entries removed");
            Ok(())
        }
    }
}

fn stats(host: &Host, format: Format) -> Result<()> {
    let counters = host.stats()?;
    if format == Format::Json {
        let map: std::collections::BTreeMap<&str, serde_json::Value> = counters
            .iter()
            .map(|(name, c)| {
                (
                    *name,
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        return print_json(&map);
    }
    print_table(
        &["COUNTER", "PACKETS", "BYTES"],
        counters
            .iter()
            .map(|(name, c)| vec![name.to_string(), c.packets.to_string(), c.bytes.to_string()]),
    );
    Ok(())
}

/// A listing: the rows as JSON, or a table of `headers` with one line of
/// `cells` per row.
/// A table cell of both families: `172.18.0.2` or `172.18.0.2,fd00::2`.
fn with_ipv6(v4: &impl std::fmt::Display, v6: Option<impl std::fmt::Display>) -> String {
    match v6 {
        Some(v6) => format!("{v4},{v6}"),
        None => v4.to_string(),
    }
}

fn print_listing<T: Serialize>(
    format: Format,
    rows: &[T],
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if format == Format::Json {
        return print_json(rows);
    }
    print_table(headers, rows.iter().map(cells));
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::system("json output", e))?;
    println!("{text}");
    Ok(())
}

fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    rows.into_iter().for_each(line);
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn refusal(args: &[&str]) -> Option<String> {
        let err = Cli::try_parse_from(args).unwrap_err();
        refused_value(&err).map(|e| format!("{e} (exit {})", e.exit_code()))
    }

    #[test]
    fn values_are_parsed_once_into_their_types() {
        let cli = Cli::try_parse_from([
            "netctl",
            "container",
            "run",
            "web",
            "--network",
            "front",
            "--ip",
            "172.18.0.9",
            "-p",
            "8080:80",
            "-p",
            "53/udp",
        ])
        .unwrap();
        let Command::Container(ContainerCommand::Run {
            network,
            ip,
            publish,
            ..
        }) = cli.command
        else {
            panic!("not a run");
        };
        assert_eq!(network, Networking::Network("front".into()));
        assert_eq!(ip, Some(Ipv4Addr::new(172, 18, 0, 9)));
        let shown: Vec<String> = publish.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["8080:80/tcp", "53/udp"]);
    }

    #[test]
    fn refused_values_read_as_validation_errors() {
        assert_eq!(
            refusal(&["netctl", "container", "run", "b", "-p", "0:80"]).as_deref(),
            Some("port spec 0:80: port 0 is not allowed (exit 1)")
        );
        assert_eq!(
            refusal(&["netctl", "network", "create", "n", "--subnet", "banana"]).as_deref(),
            Some("subnet banana: not a valid IPv4 CIDR (expected e.g. 172.18.0.0/16) (exit 1)")
        );
        assert_eq!(
            refusal(&["netctl", "network", "connect", "n", "c", "--ip", "::1"]).as_deref(),
            Some("ip ::1: is an IPv6 address: give it with --ip6 (exit 1)")
        );
        assert_eq!(
            refusal(&["netctl", "metrics", "--listen", "9610"]).as_deref(),
            Some("listen 9610: not an ADDR:PORT (e.g. 127.0.0.1:9610) (exit 1)")
        );
        // Usage errors stay clap's.
        assert_eq!(refusal(&["netctl", "container", "run"]), None);
    }
}
