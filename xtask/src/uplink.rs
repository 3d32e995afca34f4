//! The sandbox's "internet": a host namespace and an outside namespace
//! joined by a veth pair on TEST-NET addresses, with the host's default
//! route through the outside. Built the same way by the demo and the bench.

use std::{net::Ipv4Addr, process::Command};

use anyhow::Result;

use crate::cmd::run;

/// The host's uplink address (SNAT source) and the outside peer's.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const PREFIX_LEN: u8 = 24;

/// Creates both namespaces and the veth pair `uplink` (host side) / `wan`
/// (outside side), addresses, lo up, and the host's default route.
pub fn build(host: &str, out: &str, uplink: &str, wan: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", host]))?;
    run(Command::new("ip").args(["netns", "add", out]))?;
    run(Command::new("ip")
        .args(["-n", host, "link", "add", uplink, "type", "veth"])
        .args(["peer", "name", wan, "netns", out]))?;
    for (ns, dev, ip) in [(host, uplink, HOST_IP), (out, wan, OUTSIDE_IP)] {
        let cidr = format!("{ip}/{PREFIX_LEN}");
        run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", dev]))?;
        run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
    }
    let gateway = OUTSIDE_IP.to_string();
    run(Command::new("ip").args(["-n", host, "route", "add", "default", "via", &gateway]))
}
