//! `cargo xtask run [--datapath iptables|ebpf] [--keep]`: the demo.
//!
//! Builds netctl (release), makes a sandbox, drives the `netctl` binary
//! through Docker's scenarios and prints one row per check. The sandbox is
//! removed at the end, also on failure and on Ctrl-C, unless `--keep`.
//!
//! The sandbox is the xtask one (see [`crate::sandbox`], prefix `ncd<pid>`):
//! the network "demo" 172.18.0.0/16 with containers web, a and b in its
//! host namespace, and a `nettool serve` on port 9000 in the outside one.
//! Every server is `nettool serve tcp PORT`, which answers each client with
//! the address it saw ("peer=IP:PORT"), and every client `nettool call tcp
//! HOST PORT` (3 s timeout), run inside a namespace.
//!
//! Assumptions about the netctl CLI (keep in step with netctl/src/cli/):
//! - global options come first: `--host-netns NAME --cgroup DIR`, and the
//!   state dir is derived from the host netns (`/run/netctl/<p>-host`);
//!   `--format json` is global too;
//! - `network create NAME --subnet CIDR --datapath iptables|ebpf`;
//! - `container run NAME --network NET [-p HOST:CTR] [-- CMD...]` starts CMD
//!   detached inside the container's namespace `<p>-host-NAME`; the process
//!   sees the same filesystem, so nettool can be the server;
//! - `--format json container inspect NAME` prints the container, or a list
//!   of them, with `endpoints[].{network, ip}` (ip as "A.B.C.D", a "/len"
//!   suffix is tolerated);
//! - `exec NAME -- CMD...` runs CMD in the container's namespace (names of
//!   peers resolve), `exec --host -- CMD...` in the host namespace and the
//!   `--cgroup`; both exit with CMD's status and pass its stdout through;
//! - `--format json trace` (eBPF) prints a JSON object per flow event until
//!   SIGINT, and `nettool rawsend IFACE SRC_MAC DST_MAC SRC DST PORT COUNT`
//!   sends UDP frames as given (a's forged ones are dropped and traced);
//! - `down` removes everything netctl made for this host, including the
//!   container namespaces `<p>-host-<name>` and their processes.

use std::{
    fmt,
    net::Ipv4Addr,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::ValueEnum;

use crate::{
    cmd::{display, read, read_echoed, run, step},
    sandbox::{self, checkpoint, OnDrop, Sandbox, DEMO_PREFIX, HOST_IP, OUTSIDE_IP},
    tools,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Datapath {
    /// Docker's rules in NETCTL-* chains (the reference).
    Iptables,
    /// TC eBPF programs and BPF maps, no iptables.
    #[default]
    Ebpf,
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Datapath::Iptables => "iptables",
            Datapath::Ebpf => "ebpf",
        })
    }
}

const NETWORK: &str = "demo";
const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 18, 0, 0), 16);
const WEB_PORT: u16 = 80;
const PUBLISHED_PORT: u16 = 8080;
const OUTSIDE_PORT: u16 = 9000;
/// An address of the demo's subnet that no container has: a's forged
/// source.
const FORGED_SOURCE: &str = "172.18.0.200";

pub fn run_demo(datapath: Datapath, keep: bool) -> Result<()> {
    let tools = tools::build()?;
    sandbox::tear_down_on_ctrl_c("the sandbox")?;
    let nettool = tools.nettool.to_string_lossy().into_owned();

    let prefix = format!("{DEMO_PREFIX}{}", std::process::id());
    step(&format!("sandbox {prefix}"));
    let on_drop = if keep {
        OnDrop::Keep(print_kept)
    } else {
        OnDrop::Remove
    };
    let mut sb = Sandbox::new(&prefix, Some(tools.netctl), on_drop)?;
    checkpoint()?;

    step(&format!(
        "netctl: a network and three containers ({datapath} datapath)"
    ));
    let subnet = format!("{}/{}", SUBNET.0, SUBNET.1);
    let dp = datapath.to_string();
    run(&mut sb.netctl(&[
        "network",
        "create",
        NETWORK,
        "--subnet",
        &subnet,
        "--datapath",
        &dp,
    ]))?;
    let publish = format!("{PUBLISHED_PORT}:{WEB_PORT}");
    let web_port = WEB_PORT.to_string();
    run(&mut sb.netctl(&[
        "container",
        "run",
        "web",
        "--network",
        NETWORK,
        "-p",
        &publish,
        "--",
        &nettool,
        "serve",
        "tcp",
        &web_port,
    ]))?;
    run(&mut sb.netctl(&["container", "run", "a", "--network", NETWORK]))?;
    run(&mut sb.netctl(&["container", "run", "b", "--network", NETWORK]))?;
    checkpoint()?;

    step("servers: web's (in its container) and one outside");
    sb.wait_listening(&sb.container_netns("web"), "tcp", WEB_PORT)
        .and_then(|()| {
            read_echoed(&mut sb.netctl(&[
                "exec",
                "web",
                "--",
                &nettool,
                "call",
                "tcp",
                "127.0.0.1",
                &web_port,
            ]))
        })
        .context("web's server does not answer inside its container")?;
    let (out, outside_port) = (sb.out.clone(), OUTSIDE_PORT.to_string());
    sb.spawn_server(
        &out,
        "tcp",
        OUTSIDE_PORT,
        &[&nettool, "serve", "tcp", &outside_port],
    )
    .context("starting the outside server")?;
    checkpoint()?;

    // eBPF: the checks' flow events, followed live while they run.
    let trace = if datapath == Datapath::Ebpf {
        let mut cmd = sb.netctl(&["--format", "json", "trace"]);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
        // Time to take the listener's lease.
        std::thread::sleep(std::time::Duration::from_millis(700));
        Some(child)
    } else {
        None
    };
    step("checks");
    let checks = run_checks(&sb, &nettool)?;
    print_table(datapath, &checks);
    if let Some(trace) = trace {
        step("a forges its source address: dropped (drop_spoofed)");
        forge_from_a(&sb, &nettool)?;
        // SAFETY: a signal to our own child, which ends the trace.
        unsafe { libc::kill(trace.id() as libc::pid_t, libc::SIGINT) };
        let out = trace.wait_with_output().context("netctl trace")?;
        step(
            "netctl --format json trace, during the checks: new flows with their names, the drops",
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
        ensure!(
            out.status.success(),
            "netctl trace failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the checks did to the datapath: its flows and its counters.
        step("the eBPF datapath after the checks: conntrack and counters");
        run(&mut sb.netctl(&["conntrack", "ls"]))?;
        run(&mut sb.netctl(&["stats"]))?;
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    println!("all {} checks passed", checks.len());
    Ok(())
}

/// Container `a` sends two UDP datagrams with a source address that is not
/// its own, which the datapath drops on its veth (anti-spoofing).
fn forge_from_a(sb: &Sandbox, nettool: &str) -> Result<()> {
    let inspect = read(&mut sb.netctl(&["--format", "json", "container", "inspect", "a"]))?;
    let json: serde_json::Value =
        serde_json::from_str(&inspect).context("container inspect a: JSON")?;
    let mac = json[0]["endpoints"][0]["mac"]
        .as_str()
        .or_else(|| json["endpoints"][0]["mac"].as_str())
        .ok_or_else(|| anyhow!("container inspect a: no MAC"))?
        .to_owned();
    run(&mut sb.netctl(&[
        "exec",
        "a",
        "--",
        nettool,
        "rawsend",
        "eth0",
        &mac,
        "ff:ff:ff:ff:ff:ff",
        FORGED_SOURCE,
        &OUTSIDE_IP.to_string(),
        "7000",
        "2",
    ]))
}

/// One row of the result table.
struct Check {
    name: String,
    pass: bool,
    ms: f64,
    detail: String,
}

/// Runs `f`, timing it; an error is a failed check with the error as detail.
fn check(name: &str, f: impl FnOnce() -> Result<String>) -> Check {
    let started = Instant::now();
    let result = f();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (pass, detail) = match result {
        Ok(detail) => (true, detail),
        Err(e) => (false, format!("{e:#}")),
    };
    println!("{} {name}: {detail}", if pass { "PASS" } else { "FAIL" });
    Check {
        name: name.to_owned(),
        pass,
        ms,
        detail,
    }
}

fn run_checks(sb: &Sandbox, nettool: &str) -> Result<Vec<Check>> {
    let netctl = |args: &[&str]| read_echoed(&mut sb.netctl(args));
    // `nettool call tcp HOST PORT` inside container `ctr`.
    let call_from = |ctr: &str, host: &str, port: &str| {
        netctl(&["exec", ctr, "--", nettool, "call", "tcp", host, port])
    };
    let mut checks = Vec::new();
    let mut ips = Vec::new();
    checks.push(check(
        &format!("IP allocation in {}/{}", SUBNET.0, SUBNET.1),
        || {
            for name in ["a", "b", "web"] {
                let ip = sb.container_ip(name, NETWORK)?;
                ensure!(
                    in_subnet(ip, SUBNET.0, SUBNET.1),
                    "{name} got {ip}, outside the subnet"
                );
                ips.push((name, ip));
            }
            let mut distinct: Vec<Ipv4Addr> = ips.iter().map(|(_, ip)| *ip).collect();
            distinct.sort();
            distinct.dedup();
            ensure!(distinct.len() == ips.len(), "duplicate addresses: {ips:?}");
            Ok(ips
                .iter()
                .map(|(n, ip)| format!("{n}={ip}"))
                .collect::<Vec<_>>()
                .join(" "))
        },
    ));
    checkpoint()?;
    let b_ip = ips
        .iter()
        .find(|(n, _)| *n == "b")
        .map(|(_, ip)| ip.to_string());

    checks.push(check("a -> b by IP (ping)", || {
        let b_ip = b_ip.as_deref().ok_or_else(|| anyhow!("no address for b"))?;
        netctl(&["exec", "a", "--", "ping", "-c1", "-W2", b_ip])?;
        Ok(format!("{b_ip} answers"))
    }));
    checkpoint()?;
    checks.push(check("a -> b by name (ping)", || {
        let out = netctl(&["exec", "a", "--", "ping", "-c1", "-W2", "b"])?;
        Ok(format!("b is {}", ping_target(&out).unwrap_or("?")))
    }));
    checkpoint()?;

    let outside_port = OUTSIDE_PORT.to_string();
    checks.push(check("a -> outside, SNAT to the uplink IP", || {
        let reply = call_from("a", &OUTSIDE_IP.to_string(), &outside_port)?;
        expect_peer(&reply, Some(HOST_IP))
    }));
    checkpoint()?;

    let host_ip = HOST_IP.to_string();
    let published = PUBLISHED_PORT.to_string();
    checks.push(check("outside -> published port, source kept", || {
        let reply = read_echoed(
            Command::new("ip")
                .args(["netns", "exec", &sb.out])
                .args([nettool, "call", "tcp", &host_ip, &published]),
        )?;
        expect_peer(&reply, Some(OUTSIDE_IP))
    }));
    checkpoint()?;

    for target in [host_ip.as_str(), "127.0.0.1"] {
        checks.push(check(&format!("host -> {target}:{published}"), || {
            let reply = netctl(&[
                "exec", "--host", "--", nettool, "call", "tcp", target, &published,
            ])?;
            expect_peer(&reply, None)
        }));
        checkpoint()?;
    }

    checks.push(check(
        &format!("hairpin a -> {host_ip}:{published}"),
        || {
            let reply = call_from("a", &host_ip, &published)?;
            expect_peer(&reply, None)
        },
    ));
    Ok(checks)
}

/// Checks a `nettool serve` reply; `want` is the peer address it must have seen.
fn expect_peer(reply: &str, want: Option<Ipv4Addr>) -> Result<String> {
    let seen = peer_ip(reply).ok_or_else(|| anyhow!("unexpected reply {reply:?}"))?;
    match want {
        Some(want) if seen != want => bail!("server saw {seen}, expected {want}"),
        _ => Ok(format!("server saw {seen}")),
    }
}

/// The IP of a "peer=IP:PORT" reply.
fn peer_ip(reply: &str) -> Option<Ipv4Addr> {
    let addr = reply.trim().strip_prefix("peer=")?;
    addr.parse::<SocketAddr>().ok().and_then(|a| match a.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    })
}

/// The address `ping` resolved its target to ("PING b (172.18.0.3) ...").
fn ping_target(out: &str) -> Option<&str> {
    let line = out.lines().next()?;
    let start = line.find('(')? + 1;
    let end = start + line[start..].find(')')?;
    Some(&line[start..end])
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn print_table(datapath: Datapath, checks: &[Check]) {
    println!("\nnetctl demo, {datapath} datapath");
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    println!(" #  {:width$}  result  {:>7}  detail", "check", "ms");
    for (i, c) in checks.iter().enumerate() {
        let result = if c.pass { "PASS" } else { "FAIL" };
        println!(
            "{:>2}  {:width$}  {result:6}  {:>7.1}  {}",
            i + 1,
            c.name,
            c.ms,
            c.detail
        );
    }
    println!();
}

/// What `--keep` prints instead of tearing the sandbox down.
fn print_kept(sb: &Sandbox) {
    println!("\nsandbox kept ({}). Look around:", sb.prefix);
    println!(
        "  {} --host-netns {} --cgroup {} exec a -- ping -c1 b",
        sb.netctl_bin()
            .unwrap_or(&tools::release_netctl())
            .display(),
        sb.host,
        sb.cgroup.display()
    );
    println!("  ip netns exec {} ping -c1 {HOST_IP}", sb.out);
    println!("remove it with:\n  cargo xtask demo-teardown {}", sb.prefix);
}

/// `cargo xtask demo-teardown PREFIX`: removes what `run --keep` left.
/// Keeps going after errors and reports them all.
pub fn teardown(prefix: &str) -> Result<()> {
    ensure!(
        prefix.starts_with(DEMO_PREFIX) && sandbox::is_sandbox_prefix(prefix),
        "{prefix:?} is not a demo sandbox prefix ({DEMO_PREFIX}<pid>)"
    );
    let netctl = tools::release_netctl();
    sandbox::teardown(prefix, Some(netctl.as_path()).filter(|bin| bin.exists()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_replies() {
        assert_eq!(
            peer_ip("peer=198.51.100.2:40000\n"),
            Some(Ipv4Addr::new(198, 51, 100, 2))
        );
        assert_eq!(
            peer_ip("peer=[::ffff:10.0.0.1]:5"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(peer_ip("hello"), None);
    }

    #[test]
    fn subnet_membership() {
        let net = Ipv4Addr::new(172, 18, 0, 0);
        assert!(in_subnet(Ipv4Addr::new(172, 18, 255, 254), net, 16));
        assert!(!in_subnet(Ipv4Addr::new(172, 19, 0, 1), net, 16));
        assert!(in_subnet(Ipv4Addr::new(1, 2, 3, 4), net, 0));
    }

    #[test]
    fn ping_target_address() {
        let out = "PING b (172.18.0.3) 56(84) bytes of data.\n64 bytes from ...";
        assert_eq!(ping_target(out), Some("172.18.0.3"));
    }
}
