//! `cargo xtask run [--datapath iptables|ebpf] [--keep]`: the demo.
//!
//! Builds netctl (release), makes a sandbox, drives the `netctl` binary
//! through Docker's scenarios and prints one row per check. The sandbox is
//! removed at the end, also on failure and on Ctrl-C, unless `--keep`.
//!
//! The sandbox (made here with `ip`, the only thing xtask builds itself):
//!
//! ```text
//!   <p>-out netns ("the internet")         <p>-host netns (netctl --host-netns)
//!   <p>-wan 198.51.100.2/24  <-- veth -->  <p>-up 198.51.100.1/24, default route via .2
//!   echo server on :9000                   network "demo" 172.18.0.0/16: web, a, b
//! ```
//!
//! plus a cgroup v2 directory `<cgroup2 mount>/<p>` passed as `--cgroup`.
//! `<p>` is `ncd<pid>`: short, so that `<p>-wan` fits in IFNAMSIZ.
//!
//! Assumptions about the netctl CLI (keep in step with netctl/src/cli.rs):
//! - global options come first: `--host-netns NAME --cgroup DIR`, and the
//!   state dir is derived from the host netns (`/run/netctl/<p>-host`);
//!   `--format json` is global too;
//! - `network create NAME --subnet CIDR --datapath iptables|ebpf`;
//! - `container run NAME --network NET [-p HOST:CTR] [-- CMD...]` starts CMD
//!   detached inside the container's namespace; the process sees the same
//!   filesystem, so this very xtask binary can be the server;
//! - `--format json container inspect NAME` prints the container, or a list
//!   of them, with `endpoints[].{network, ip}` (ip as "A.B.C.D", a "/len"
//!   suffix is tolerated);
//! - `exec NAME -- CMD...` runs CMD in the container's namespace (names of
//!   peers resolve), `exec --host -- CMD...` in the host namespace and the
//!   `--cgroup`; both exit with CMD's status and pass its stdout through;
//! - `down` removes everything netctl made for this host, including the
//!   container namespaces `<p>-host-<name>` and their processes.

use std::{
    fmt,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::ValueEnum;

use crate::{
    cmd::{display, read, read_echoed, run, step, succeeds, workspace_root},
    deps::mounts_of_type,
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

use crate::sandbox::{kill_all, remove_cgroup, HOST_IP, OUTSIDE_IP};
const NETWORK: &str = "demo";
const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 18, 0, 0), 16);
const WEB_PORT: u16 = 80;
const PUBLISHED_PORT: u16 = 8080;
const OUTSIDE_PORT: u16 = 9000;
/// How long to wait for web's server to listen.
const SERVER_START_SECS: &str = "3";
const PREFIX_START: &str = "ncd";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed; called between steps so that the guard's
/// Drop tears the sandbox down.
fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

pub fn run_demo(datapath: Datapath, keep: bool) -> Result<()> {
    crate::build_release()?;
    // A Ctrl-C also reaches the command running in the foreground, which
    // fails; the flag stops everything after it and Drop cleans up.
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the sandbox down");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;

    let netctl_bin = target_dir().join("release/netctl");
    ensure!(
        netctl_bin.exists(),
        "{} missing after the build",
        netctl_bin.display()
    );
    let xtask = std::env::current_exe().context("path of the xtask binary")?;
    let xtask = xtask.to_string_lossy().into_owned();

    let prefix = format!("{PREFIX_START}{}", std::process::id());
    step(&format!("sandbox {prefix}"));
    let mut sandbox = Sandbox::new(&prefix, netctl_bin, keep)?;
    sandbox.build()?;
    checkpoint()?;

    step(&format!(
        "netctl: a network and three containers ({datapath} datapath)"
    ));
    let netctl = &sandbox.netctl;
    let subnet = format!("{}/{}", SUBNET.0, SUBNET.1);
    let dp = datapath.to_string();
    netctl.run(&[
        "network",
        "create",
        NETWORK,
        "--subnet",
        &subnet,
        "--datapath",
        &dp,
    ])?;
    let publish = format!("{PUBLISHED_PORT}:{WEB_PORT}");
    let web_port = WEB_PORT.to_string();
    netctl.run(&[
        "container",
        "run",
        "web",
        "--network",
        NETWORK,
        "-p",
        &publish,
        "--",
        &xtask,
        "__echo-server",
        &web_port,
    ])?;
    netctl.run(&["container", "run", "a", "--network", NETWORK])?;
    netctl.run(&["container", "run", "b", "--network", NETWORK])?;
    checkpoint()?;

    step("servers: web's (in its container) and one outside");
    netctl
        .read(&[
            "exec",
            "web",
            "--",
            &xtask,
            "__client",
            "127.0.0.1",
            &web_port,
            "--wait",
            SERVER_START_SECS,
        ])
        .context("web's server does not answer inside its container")?;
    sandbox.spawn_outside_server(&xtask, OUTSIDE_PORT)?;
    checkpoint()?;

    step("checks");
    let checks = run_checks(&sandbox, &xtask)?;
    print_table(datapath, &checks);
    if datapath == Datapath::Ebpf {
        // What the checks did to the datapath: its flows and its counters.
        step("the eBPF datapath after the checks: conntrack and counters");
        sandbox.netctl.run(&["conntrack", "ls"])?;
        sandbox.netctl.run(&["stats"])?;
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    println!("all {} checks passed", checks.len());
    Ok(())
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

fn run_checks(sandbox: &Sandbox, xtask: &str) -> Result<Vec<Check>> {
    let netctl = &sandbox.netctl;
    let mut checks = Vec::new();
    let mut ips = Vec::new();
    checks.push(check(
        &format!("IP allocation in {}/{}", SUBNET.0, SUBNET.1),
        || {
            for name in ["a", "b", "web"] {
                let json = netctl.read(&["--format", "json", "container", "inspect", name])?;
                let ip =
                    endpoint_ip(&json, NETWORK).with_context(|| format!("container {name}"))?;
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
        netctl.read(&["exec", "a", "--", "ping", "-c1", "-W2", b_ip])?;
        Ok(format!("{b_ip} answers"))
    }));
    checkpoint()?;
    checks.push(check("a -> b by name (ping)", || {
        let out = netctl.read(&["exec", "a", "--", "ping", "-c1", "-W2", "b"])?;
        Ok(format!("b is {}", ping_target(&out).unwrap_or("?")))
    }));
    checkpoint()?;

    let outside_port = OUTSIDE_PORT.to_string();
    checks.push(check("a -> outside, SNAT to the uplink IP", || {
        let out = OUTSIDE_IP.to_string();
        let reply = netctl.read(&["exec", "a", "--", xtask, "__client", &out, &outside_port])?;
        expect_peer(&reply, Some(HOST_IP))
    }));
    checkpoint()?;

    let host_ip = HOST_IP.to_string();
    let published = PUBLISHED_PORT.to_string();
    checks.push(check("outside -> published port, source kept", || {
        let reply = read_echoed(
            Command::new("ip")
                .args(["netns", "exec", &sandbox.outside_netns])
                .args([xtask, "__client", &host_ip, &published]),
        )?;
        expect_peer(&reply, Some(OUTSIDE_IP))
    }));
    checkpoint()?;

    for target in [host_ip.as_str(), "127.0.0.1"] {
        checks.push(check(&format!("host -> {target}:{published}"), || {
            let reply = netctl.read(&[
                "exec", "--host", "--", xtask, "__client", target, &published,
            ])?;
            expect_peer(&reply, None)
        }));
        checkpoint()?;
    }

    checks.push(check(
        &format!("hairpin a -> {host_ip}:{published}"),
        || {
            let reply =
                netctl.read(&["exec", "a", "--", xtask, "__client", &host_ip, &published])?;
            expect_peer(&reply, None)
        },
    ));
    Ok(checks)
}

/// Checks an echo server's reply; `want` is the peer address it must have seen.
fn expect_peer(reply: &str, want: Option<Ipv4Addr>) -> Result<String> {
    let seen = crate::net::peer_ip(reply).ok_or_else(|| anyhow!("unexpected reply {reply:?}"))?;
    match want {
        Some(want) if seen != want => bail!("server saw {seen}, expected {want}"),
        _ => Ok(format!("server saw {seen}")),
    }
}

/// The address `ping` resolved its target to ("PING b (172.18.0.3) ...").
fn ping_target(out: &str) -> Option<&str> {
    let line = out.lines().next()?;
    let start = line.find('(')? + 1;
    let end = start + line[start..].find(')')?;
    Some(&line[start..end])
}

/// A container's address on `network`, from `container inspect` JSON (one
/// object or a list of them).
pub fn endpoint_ip(json: &str, network: &str) -> Result<Ipv4Addr> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("inspect output is not JSON")?;
    let ctr = match &value {
        serde_json::Value::Array(list) => {
            list.first().ok_or_else(|| anyhow!("empty inspect list"))?
        }
        other => other,
    };
    let endpoint = ctr["endpoints"]
        .as_array()
        .ok_or_else(|| anyhow!("no endpoints in inspect output"))?
        .iter()
        .find(|e| e["network"] == network)
        .ok_or_else(|| anyhow!("no endpoint on network {network}"))?;
    let ip = endpoint["ip"]
        .as_str()
        .ok_or_else(|| anyhow!("endpoint without ip"))?;
    let ip = ip.split('/').next().unwrap_or(ip);
    ip.parse().with_context(|| format!("bad address {ip:?}"))
}

pub fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix_len: u8) -> bool {
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

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The netctl binary bound to the sandbox's host namespace and cgroup.
struct Netctl {
    bin: PathBuf,
    host_netns: String,
    cgroup: PathBuf,
}

impl Netctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--host-netns")
            .arg(&self.host_netns)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs with output to the terminal; fails on a non-zero exit.
    fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args))
    }

    /// Prints the command, returns its stdout; stderr in the error.
    fn read(&self, args: &[&str]) -> Result<String> {
        read_echoed(&mut self.command(args))
    }
}

/// The sandbox. Its Drop tears everything down (unless kept).
struct Sandbox {
    prefix: String,
    host_netns: String,
    outside_netns: String,
    uplink: String,
    wan: String,
    netctl: Netctl,
    children: Vec<Child>,
    keep: bool,
}

impl Sandbox {
    fn new(prefix: &str, netctl_bin: PathBuf, keep: bool) -> Result<Self> {
        let cgroup_root = mounts_of_type("cgroup2")
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no cgroup2 filesystem mounted"))?;
        let host_netns = format!("{prefix}-host");
        Ok(Sandbox {
            prefix: prefix.to_owned(),
            outside_netns: format!("{prefix}-out"),
            uplink: format!("{prefix}-up"),
            wan: format!("{prefix}-wan"),
            netctl: Netctl {
                bin: netctl_bin,
                host_netns: host_netns.clone(),
                cgroup: cgroup_root.join(prefix),
            },
            host_netns,
            children: Vec::new(),
            keep,
        })
    }

    /// Namespaces, the uplink veth, addresses, routes and the cgroup. Called
    /// after `new` so that a failure half-way is still torn down.
    fn build(&self) -> Result<()> {
        crate::sandbox::build_uplink(
            &self.host_netns,
            &self.outside_netns,
            &self.uplink,
            &self.wan,
        )?;
        println!("$ mkdir {}", self.netctl.cgroup.display());
        std::fs::create_dir(&self.netctl.cgroup)
            .with_context(|| format!("mkdir {}", self.netctl.cgroup.display()))
    }

    /// Starts the echo server in the outside namespace and waits until it
    /// listens (its first line of output).
    fn spawn_outside_server(&mut self, xtask: &str, port: u16) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.outside_netns,
            xtask,
            "__echo-server",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Not our stderr: with --keep it outlives xtask and would hold the
        // terminal, or a pipe, open.
        .stderr(Stdio::null());
        println!("$ {} &", display(&cmd));
        let mut child = cmd.spawn().context("starting the outside echo server")?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.children.push(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        ensure!(
            line.starts_with("listening"),
            "the outside echo server did not start"
        );
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.keep {
            let n = &self.netctl;
            println!("\nsandbox kept ({}). Look around:", self.prefix);
            println!(
                "  {} --host-netns {} --cgroup {} exec a -- ping -c1 b",
                n.bin.display(),
                n.host_netns,
                n.cgroup.display()
            );
            println!("  ip netns exec {} ping -c1 {HOST_IP}", self.outside_netns);
            println!(
                "remove it with:\n  cargo xtask demo-teardown {}",
                self.prefix
            );
            return;
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = teardown(&self.prefix) {
            eprintln!("teardown of {}: {e:#}", self.prefix);
        }
    }
}

/// Removes a demo sandbox given its prefix (also `cargo xtask demo-teardown
/// PREFIX` after `--keep`). Keeps going after errors and reports them all.
pub fn teardown(prefix: &str) -> Result<()> {
    ensure!(
        prefix
            .strip_prefix(PREFIX_START)
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())),
        "{prefix:?} is not a demo sandbox prefix ({PREFIX_START}<pid>)"
    );
    step(&format!("teardown of sandbox {prefix}"));
    let host_netns = format!("{prefix}-host");
    let cgroup = mounts_of_type("cgroup2")
        .into_iter()
        .next()
        .map(|root| root.join(prefix));
    let namespaces = || -> Vec<String> {
        read(Command::new("ip").args(["netns", "list"]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .map(str::to_owned)
            .collect()
    };
    let mut errors: Vec<String> = Vec::new();
    let mut attempt = |what: &str, result: Result<()>| {
        if let Err(e) = result {
            errors.push(format!("{what}: {e:#}"));
        }
    };

    let netctl_bin = target_dir().join("release/netctl");
    if namespaces().contains(&host_netns) && netctl_bin.exists() {
        let mut down = Command::new(&netctl_bin);
        down.args(["--host-netns", &host_netns]);
        if let Some(cgroup) = &cgroup {
            down.arg("--cgroup").arg(cgroup);
        }
        attempt("netctl down", run(down.arg("down")));
    }
    // Whatever still runs in the sandbox: its namespaces and its cgroup.
    for ns in namespaces() {
        let pids = read(Command::new("ip").args(["netns", "pids", &ns])).unwrap_or_default();
        kill_all(&pids);
    }
    if let Some(cgroup) = cgroup.as_deref().filter(|c| c.exists()) {
        attempt("cgroup", remove_cgroup(cgroup));
    }
    let uplink = format!("{prefix}-up");
    if succeeds(Command::new("ip").args(["-n", &host_netns, "link", "show", &uplink])) {
        attempt(
            "uplink veth",
            run(Command::new("ip").args(["-n", &host_netns, "link", "del", &uplink])),
        );
    }
    for ns in namespaces() {
        attempt(
            &format!("netns {ns}"),
            run(Command::new("ip").args(["netns", "del", &ns])),
        );
    }
    let state_dir = Path::new("/run/netctl").join(&host_netns);
    if state_dir.exists() {
        println!("$ rm -r {}", state_dir.display());
        attempt(
            "state dir",
            std::fs::remove_dir_all(&state_dir).map_err(Into::into),
        );
    }
    if errors.is_empty() {
        println!("sandbox {prefix} removed");
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_endpoint_address() {
        let one = r#"{"name":"a","mode":{"mode":"bridge"},"netns":"x","endpoints":[
            {"network":"other","ifname":"eth1","ip":"10.0.0.2"},
            {"network":"demo","ifname":"eth0","host_veth":"v","ip":"172.18.0.2","mac":"02:42:ac:12:00:02"}],
            "ports":[]}"#;
        assert_eq!(
            endpoint_ip(one, "demo").unwrap(),
            Ipv4Addr::new(172, 18, 0, 2)
        );
        let list = r#"[{"endpoints":[{"network":"demo","ip":"172.18.0.3/16"}]}]"#;
        assert_eq!(
            endpoint_ip(list, "demo").unwrap(),
            Ipv4Addr::new(172, 18, 0, 3)
        );
        assert!(endpoint_ip(list, "nope").is_err());
        assert!(endpoint_ip("not json", "demo").is_err());
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

    #[test]
    fn interface_names_fit() {
        // pid_max is at most 2^22 (7 digits); IFNAMSIZ leaves 15 characters.
        assert!(format!("{PREFIX_START}4194304-wan").len() <= 15);
    }
}
