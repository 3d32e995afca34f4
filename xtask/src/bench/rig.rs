//! Setting a configuration up in its sandbox: its servers, containers or
//! peers, and the target of each path (where the client runs, what it
//! talks to), kept only when a first round trip goes through.

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Result};

use super::{
    load::{self, client_sysctls, Client, Target},
    nft, peers,
    plan::{Config, CONTAINER_PORTS, LOOPBACK, NETWORK, OUTSIDE_PORTS, PUBLISHED, PUBLISHED_PORTS},
    report::Results,
};
use crate::{
    cmd::run,
    sandbox::{OnDrop, Sandbox, HOST_IP, OUTSIDE_IP},
    tools::Tools,
};

/// A configuration set up in its sandbox, with a target per path.
pub struct Rig {
    pub config: Config,
    pub sb: Sandbox,
    targets: Vec<(&'static str, Target)>,
}

impl Rig {
    pub fn target(&self, path: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| t)
    }
}

/// The pong, iperf3 and udpsink servers in `ns` on the given ports.
fn start_servers(sb: &mut Sandbox, ns: &str, ports: [u16; 3], tools: &Tools) -> Result<()> {
    let [pong, iperf, udp] = ports;
    let nettool = tools.nettool.to_string_lossy().into_owned();
    sb.spawn_server(ns, "tcp", pong, &[&nettool, "pong", &pong.to_string()])?;
    sb.spawn_server(
        ns,
        "tcp",
        iperf,
        &["iperf3", "-s", "-p", &iperf.to_string()],
    )?;
    sb.spawn_server(ns, "udp", udp, &[&nettool, "udpsink", &udp.to_string()])?;
    Ok(())
}

/// A target at `ip` with the pong, iperf3 and udpsink `ports` behind it.
pub fn target(client: Client, ip: impl ToString, ports: [u16; 3]) -> Target {
    let [crr_port, iperf_port, udp_port] = ports;
    Target {
        client,
        ip: ip.to_string(),
        crr_port,
        iperf_port,
        udp_port,
    }
}

pub fn in_ns(ns: &str) -> Client {
    Client::Netns(ns.to_owned())
}

fn host_client(sb: &Sandbox) -> Client {
    Client::HostCgroup {
        ns: sb.host.clone(),
        cgroup: sb.cgroup.clone(),
    }
}

/// The four targets of a configuration whose server container has the
/// address `srv_ip` and whose client container's namespace is `cli_ns`.
fn container_targets(sb: &Sandbox, srv_ip: &str, cli_ns: &str) -> Vec<(&'static str, Target)> {
    vec![
        (
            "published",
            target(in_ns(&sb.out), HOST_IP, PUBLISHED_PORTS),
        ),
        ("snat", target(in_ns(cli_ns), OUTSIDE_IP, OUTSIDE_PORTS)),
        ("host", target(host_client(sb), LOOPBACK, PUBLISHED_PORTS)),
        ("c2c", target(in_ns(cli_ns), srv_ip, CONTAINER_PORTS)),
    ]
}

pub fn setup(config: Config, prefix: &str, tools: &Tools, results: &mut Results) -> Result<Rig> {
    let netctl = config.is_netctl().then(|| tools.netctl.clone());
    let mut sb = Sandbox::new(prefix, netctl, OnDrop::Remove)?;
    client_sysctls(&sb.out)?;
    let out = sb.out.clone();
    start_servers(&mut sb, &out, OUTSIDE_PORTS, tools)?;
    let targets = match config {
        Config::Veth => {
            // No bridge, no NAT: the servers sit in the host namespace and
            // every path is one veth hop between two namespaces.
            let host = sb.host.clone();
            start_servers(&mut sb, &host, CONTAINER_PORTS, tools)?;
            client_sysctls(&host)?;
            vec![
                (
                    "published",
                    target(in_ns(&sb.out), HOST_IP, CONTAINER_PORTS),
                ),
                ("snat", target(in_ns(&host), OUTSIDE_IP, OUTSIDE_PORTS)),
                ("host", target(host_client(&sb), OUTSIDE_IP, OUTSIDE_PORTS)),
                ("c2c", target(in_ns(&sb.out), HOST_IP, CONTAINER_PORTS)),
            ]
        }
        Config::Iptables | Config::Ebpf => {
            let subnet = "172.30.0.0/16";
            run(&mut sb.netctl(&[
                "network",
                "create",
                NETWORK,
                "--subnet",
                subnet,
                "--datapath",
                config.name(),
            ]))?;
            let mut args = vec!["container", "run", "srv", "--network", NETWORK];
            let publish: Vec<String> = PUBLISHED
                .iter()
                .map(|(h, c, proto)| format!("{h}:{c}/{proto}"))
                .collect();
            for p in &publish {
                args.extend(["-p", p.as_str()]);
            }
            run(&mut sb.netctl(&args))?;
            run(&mut sb.netctl(&["container", "run", "cli", "--network", NETWORK]))?;
            let srv_ip = sb.container_ip("srv", NETWORK)?.to_string();
            let (srv_ns, cli_ns) = (sb.container_netns("srv"), sb.container_netns("cli"));
            start_servers(&mut sb, &srv_ns, CONTAINER_PORTS, tools)?;
            client_sysctls(&cli_ns)?;
            client_sysctls(&sb.host.clone())?;
            container_targets(&sb, &srv_ip, &cli_ns)
        }
        Config::Cni => {
            ensure!(
                PathBuf::from(peers::CNI_PATH).join("portmap").exists(),
                "no CNI plugins in {} (containernetworking-plugins)",
                peers::CNI_PATH
            );
            run(Command::new("ip").args([
                "netns",
                "exec",
                &sb.host,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]))?;
            let srv_ip = peers::cni_add(&sb, "csrv", &PUBLISHED)?.keep(&mut sb);
            peers::cni_add(&sb, "ccli", &[])?.keep(&mut sb);
            let (srv_ns, cli_ns) = (format!("{prefix}-csrv"), format!("{prefix}-ccli"));
            start_servers(&mut sb, &srv_ns, CONTAINER_PORTS, tools)?;
            client_sysctls(&cli_ns)?;
            client_sysctls(&sb.host.clone())?;
            container_targets(&sb, &srv_ip, &cli_ns)
        }
        Config::Netavark => {
            ensure!(
                PathBuf::from(peers::NETAVARK).exists(),
                "{} is missing (Debian package netavark)",
                peers::NETAVARK
            );
            let srv_ip = "10.89.0.2";
            peers::netavark_add(&sb, "nsrv", srv_ip, &PUBLISHED)?.keep(&mut sb);
            peers::netavark_add(&sb, "ncli", "10.89.0.3", &[])?.keep(&mut sb);
            let (srv_ns, cli_ns) = (format!("{prefix}-nsrv"), format!("{prefix}-ncli"));
            start_servers(&mut sb, &srv_ns, CONTAINER_PORTS, tools)?;
            client_sysctls(&cli_ns)?;
            client_sysctls(&sb.host.clone())?;
            container_targets(&sb, srv_ip, &cli_ns)
        }
        Config::Nft => {
            ensure!(
                crate::cmd::succeeds(Command::new("nft").arg("--version")),
                "nft is missing (Debian package nftables)"
            );
            let (srv_ns, cli_ns) = nft::setup(&sb, &PUBLISHED)?;
            start_servers(&mut sb, &srv_ns, CONTAINER_PORTS, tools)?;
            client_sysctls(&cli_ns)?;
            client_sysctls(&sb.host.clone())?;
            container_targets(&sb, nft::SERVER_IP, &cli_ns)
        }
    };
    // A first round trip through every target: a path that does not carry
    // traffic is reported as failed (with the reason), not as a zero, and
    // is left out of the runs; the configuration's other paths go on.
    let mut working = Vec::new();
    for (path, t) in targets {
        match load::crr(&tools.nettool, &t, 0.2) {
            Ok(_) => working.push((path, t)),
            Err(e) => {
                let e = e.context("no answer at setup");
                for &(p, metric) in &results.plan.clone() {
                    if p == path {
                        results.fail(config.name(), path, metric, &e);
                    }
                }
            }
        }
    }
    ensure!(!working.is_empty(), "no path carries traffic");
    Ok(Rig {
        config,
        sb,
        targets: working,
    })
}
