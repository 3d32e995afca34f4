//! Sandbox scaffolding shared by the demo and the bench: the "internet"
//! (a host namespace and an outside namespace joined by a veth pair on
//! TEST-NET addresses, the host's default route through the outside), and
//! the removal of a sandbox cgroup.

use std::{net::Ipv4Addr, path::Path, process::Command, thread::sleep, time::Duration};

use anyhow::{anyhow, Result};

use crate::cmd::run;

/// The host's uplink address (SNAT source) and the outside peer's.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const PREFIX_LEN: u8 = 24;

/// Creates both namespaces and the veth pair `uplink` (host side) / `wan`
/// (outside side), addresses, lo up, and the host's default route.
pub fn build_uplink(host: &str, out: &str, uplink: &str, wan: &str) -> Result<()> {
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

/// SIGKILLs every pid in a whitespace-separated list (a cgroup.procs file).
pub fn kill_all(pids: &str) {
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        println!("$ kill -9 {pid}");
        // SAFETY: kill(2) with a pid read from our own sandbox; no memory involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills the cgroup's processes and removes it (it empties asynchronously,
/// so the removal is retried for up to a second).
pub fn remove_cgroup(cgroup: &Path) -> Result<()> {
    kill_all(&std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default());
    println!("$ rmdir {}", cgroup.display());
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "rmdir {}: {}",
        cgroup.display(),
        last.expect("tried")
    ))
}
