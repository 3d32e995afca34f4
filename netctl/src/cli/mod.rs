//! The command line (Docker's words where they fit) and its output: the
//! top-level `Cli` and its dispatch here; each command group's arguments
//! and their conversion into typed requests in a module of its own.

mod container;
mod network;
mod observability;
mod output;
mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::HostConfig,
    error::{Error, Result},
    ops::{self, Host},
    resolver,
};

pub use container::{ContainerCommand, ExecArgs};
pub use network::NetworkCommand;
pub use observability::{ConntrackCommand, TraceArgs};

use values::listen_arg;

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

/// The objects a command acts on, by name (one or more).
#[derive(Args, Debug)]
pub struct Names {
    #[arg(required = true)]
    pub names: Vec<String>,
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
        Command::Exec(args) => container::exec(config, args),
        Command::Network(cmd) => network::network(Host::open(config).await?, cmd, format).await,
        Command::Container(cmd) => {
            container::container(Host::open(config).await?, cmd, format).await
        }
        Command::Port { name } => container::port(&Host::open(config).await?, &name, format),
        // Opened without following the host's interfaces: doctor audits
        // the datapath's view of them (`--fix` repairs it), down removes it.
        Command::Doctor { fix } => {
            observability::doctor(Host::open_without_sync(config).await?, fix, format).await
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
        Command::Version => observability::version(&Host::open(config).await?, format),
        Command::Resolver => resolver::server::run(&config).await,
        Command::Conntrack(cmd) => {
            observability::conntrack(&Host::open(config).await?, cmd, format)
        }
        Command::Stats => observability::stats(&Host::open(config).await?, format),
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
        Command::Trace(args) => observability::trace(Host::open(config).await?, args, format).await,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::Parser as _;

    use super::*;
    use crate::ops::Networking;

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
