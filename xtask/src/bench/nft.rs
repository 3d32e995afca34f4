//! The `nft` peer: what a modern runtime writes with nftables (netavark's
//! nftables backend, Docker's nftables firewall backend), set up by hand in
//! the sandbox's host namespace so that it can be measured beside netctl.
//!
//! One bridge with two containers (veth pairs, static addresses), and one
//! `inet` table:
//! - published ports are elements of one map keyed by protocol and port,
//!   looked up by a single DNAT rule in `prerouting` (from outside) and
//!   `output` (the host's own clients): the cost of a lookup does not grow
//!   with the number of ports, which is what makes it the fair non-eBPF
//!   anchor at 10,000 ports;
//! - masquerade for the subnet leaving it, for the host's 127.0.0.1 clients
//!   of a published port (with `route_localnet` on the bridge, as netavark
//!   does) and for hairpin;
//! - a `forward` chain: established flows, the network's own traffic,
//!   DNATed flows into it and its traffic out are accepted; anything else
//!   into the bridge is dropped (isolation from outside).
//!
//! Everything lives in the sandbox's namespaces and goes with them.

use std::process::Command;

use anyhow::Result;

use super::{
    peers::{run_with_stdin, PortMapping},
    plan::BULK_CONTAINER_FIRST,
};
use crate::{cmd::run, sandbox::Sandbox};

const BRIDGE: &str = "nftbr0";
const TABLE: &str = "ncbench";
const SUBNET: &str = "10.90.0.0/24";
const GATEWAY: &str = "10.90.0.1";
/// The server container (published ports lead here) and the client.
pub const SERVER_IP: &str = "10.90.0.2";
const CLIENT_IP: &str = "10.90.0.3";

/// `nft -f -` in namespace `ns` with `script` on stdin.
fn nft_script(ns: &str, script: &str) -> Result<()> {
    run_with_stdin(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        script,
    )
    .map(drop)
}

/// Map elements `proto . host port : address . container port`.
fn elements(mappings: impl IntoIterator<Item = (u32, String, u32, &'static str)>) -> String {
    mappings
        .into_iter()
        .map(|(host, ip, container, proto)| format!("{proto} . {host} : {ip} . {container}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ruleset(published: &[PortMapping]) -> String {
    let elements = elements(
        published
            .iter()
            .map(|&(h, c, proto)| (u32::from(h), SERVER_IP.to_owned(), u32::from(c), proto)),
    );
    format!(
        "table inet {TABLE} {{
  map portmap {{
    type inet_proto . inet_service : ipv4_addr . inet_service
    elements = {{ {elements} }}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @portmap
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @portmap
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {SUBNET} ip daddr != {SUBNET} masquerade
    oifname \"{BRIDGE}\" ct status dnat ip saddr 127.0.0.0/8 masquerade
    oifname \"{BRIDGE}\" ct status dnat ip saddr {SUBNET} masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname \"{BRIDGE}\" accept
    oifname \"{BRIDGE}\" ct status dnat accept
    oifname \"{BRIDGE}\" drop
  }}
}}
"
    )
}

/// A container namespace `<prefix>-<name>` on the bridge with `ip`.
fn add_container(sb: &Sandbox, name: &str, ip: &str) -> Result<String> {
    let netns = format!("{}-{name}", sb.prefix);
    let host_end = format!("nft-{name}");
    let host = sb.host.as_str();
    run(Command::new("ip").args(["netns", "add", &netns]))?;
    run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
    run(Command::new("ip").args([
        "-n", host, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
        &netns,
    ]))?;
    run(Command::new("ip").args(["-n", host, "link", "set", &host_end, "master", BRIDGE, "up"]))?;
    run(Command::new("ip").args([
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]))?;
    run(Command::new("ip").args(["-n", &netns, "link", "set", "eth0", "up"]))?;
    run(Command::new("ip").args(["-n", &netns, "route", "add", "default", "via", GATEWAY]))?;
    Ok(netns)
}

/// Sets the peer up: bridge, server and client containers, forwarding and
/// the ruleset with `published`. Returns the server's and the client's
/// namespaces.
pub fn setup(sb: &Sandbox, published: &[PortMapping]) -> Result<(String, String)> {
    let host = sb.host.as_str();
    run(Command::new("ip").args(["-n", host, "link", "add", BRIDGE, "type", "bridge"]))?;
    run(Command::new("ip").args([
        "-n",
        host,
        "addr",
        "add",
        &format!("{GATEWAY}/24"),
        "dev",
        BRIDGE,
    ]))?;
    run(Command::new("ip").args(["-n", host, "link", "set", BRIDGE, "up"]))?;
    run(Command::new("ip").args([
        "netns",
        "exec",
        host,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        &format!("net.ipv4.conf.{BRIDGE}.route_localnet=1"),
    ]))?;
    let srv = add_container(sb, "fsrv", SERVER_IP)?;
    let cli = add_container(sb, "fcli", CLIENT_IP)?;
    nft_script(host, &ruleset(published))?;
    Ok((srv, cli))
}

/// Publishes host ports `first..first+count` (TCP) to the server's ports
/// from [`BULK_CONTAINER_FIRST`] on, in one transaction.
pub fn publish_bulk(sb: &Sandbox, first: u32, count: u32) -> Result<()> {
    let elements = elements((0..count).map(|i| {
        (
            first + i,
            SERVER_IP.to_owned(),
            BULK_CONTAINER_FIRST + i,
            "tcp",
        )
    }));
    nft_script(
        &sb.host,
        &format!("add element inet {TABLE} portmap {{ {elements} }}\n"),
    )
}

/// Publishes one TCP port to the server.
pub fn publish_one(sb: &Sandbox, host_port: u16, container_port: u16) -> Result<()> {
    nft_script(
        &sb.host,
        &format!(
            "add element inet {TABLE} portmap {{ tcp . {host_port} : {SERVER_IP} . {container_port} }}\n"
        ),
    )
}

/// Removes the bulk ports and the probe port of [`publish_bulk`] and
/// [`publish_one`].
pub fn unpublish(sb: &Sandbox, first: u32, count: u32, probe: u16) -> Result<()> {
    let mut keys: Vec<String> = (0..count).map(|i| format!("tcp . {}", first + i)).collect();
    keys.push(format!("tcp . {probe}"));
    nft_script(
        &sb.host,
        &format!(
            "delete element inet {TABLE} portmap {{ {} }}\n",
            keys.join(", ")
        ),
    )
}
