//! `cargo xtask bench [--quick]`: netctl's datapaths against a no-NAT
//! ceiling and against the peers (CNI bridge+portmap, netavark).
//!
//! One sandbox per configuration (see [`sandbox`]), all alive at once so
//! that the repetitions can be interleaved:
//!
//! | configuration | outside → published port | container → outside | host → published port | container ↔ container |
//! |---|---|---|---|---|
//! | `veth` (ceiling) | outside → host IP, no NAT | host → outside | host → outside | outside → host |
//! | `iptables`, `ebpf` | outside → 198.51.100.1:808x → `srv` | `cli` → outside (SNAT) | host (in the sandbox cgroup) → 127.0.0.1:808x → `srv` | `cli` → `srv` on the bridge |
//! | `cni`, `netavark` | the same through their bridge and DNAT | | | |
//!
//! Servers behind each target: `nettool pong` (rr, crr), `iperf3 -s` (TCP
//! throughput) and `nettool udpsink` (UDP datagrams/s); clients run with
//! `ip netns exec`, the host's inside the sandbox's cgroup. Nothing is
//! asserted about speed: the figures go to `target/bench/report.{md,json}`
//! and SVG charts beside them.

mod bpf;
mod load;
mod peers;
mod report;
mod sandbox;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use self::{
    load::{Client, Target},
    peers::PortMapping,
    report::{Control, Measured, ProfileRow, Results, ScalePoint},
    sandbox::{client_sysctls, Sandbox, HOST_IP, OUTSIDE_IP, PREFIX_START},
};
use crate::cmd::{cargo, read_echoed, run, step, workspace_root};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

/// Ports behind every target: pong (TCP), iperf3 (TCP), udpsink (UDP).
const PONG_PORT: u16 = 80;
const IPERF_PORT: u16 = 5201;
const UDP_PORT: u16 = 7000;
const PUBLISHED_PONG: u16 = 8080;
const PUBLISHED_IPERF: u16 = 8081;
const PUBLISHED_UDP: u16 = 8082;
const OUTSIDE_PONG: u16 = 9000;
const OUTSIDE_IPERF: u16 = 9001;
const OUTSIDE_UDP: u16 = 9002;
/// The three published ports of the bench server.
const PUBLISHED: [PortMapping; 3] = [
    (PUBLISHED_PONG, PONG_PORT, "tcp"),
    (PUBLISHED_IPERF, IPERF_PORT, "tcp"),
    (PUBLISHED_UDP, UDP_PORT, "udp"),
];
/// Where the host's client reaches a published port (as `curl localhost:8080`).
const LOOPBACK: &str = "127.0.0.1";
/// The scaling probe's published port, the bulk range's first host port and
/// the control plane's first host port.
const PROBE_PORT: u16 = 8090;
const BULK_FIRST: u32 = 20000;
const BULK_CONTAINER_FIRST: u32 = 1000;
const CONTROL_FIRST: u32 = 40000;
const NETWORK: &str = "bench";

/// (path, metric) pairs measured on every configuration: all of them, in
/// report order (paths: published, snat, host, c2c).
const FULL_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "gbit4"),
    ("published", "udp_pps"),
    ("published", "rr"),
    ("published", "conn_s"),
    ("snat", "gbit1"),
    ("snat", "gbit4"),
    ("snat", "udp_pps"),
    ("snat", "rr"),
    ("snat", "conn_s"),
    ("host", "gbit1"),
    ("host", "gbit4"),
    ("host", "udp_pps"),
    ("host", "rr"),
    ("host", "conn_s"),
    ("c2c", "gbit1"),
    ("c2c", "gbit4"),
    ("c2c", "udp_pps"),
    ("c2c", "rr"),
    ("c2c", "conn_s"),
];
/// Every path and every metric at least once.
const QUICK_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "gbit4"),
    ("published", "udp_pps"),
    ("published", "rr"),
    ("published", "conn_s"),
    ("snat", "udp_pps"),
    ("snat", "conn_s"),
    ("host", "gbit1"),
    ("host", "conn_s"),
    ("c2c", "gbit1"),
    ("c2c", "rr"),
];
/// What the profiling pass runs on the eBPF configuration.
/// rr shows the cost per packet of a known flow, conn_s adds the new flows'.
const PROFILE_PLAN: &[(&str, &str)] = &[
    ("published", "rr"),
    ("published", "conn_s"),
    ("published", "udp_pps"),
    ("snat", "rr"),
    ("snat", "conn_s"),
    ("snat", "udp_pps"),
    ("host", "rr"),
    ("host", "conn_s"),
    ("c2c", "rr"),
];

/// What a run measures and how long.
struct Mode {
    reps: usize,
    /// Seconds per throughput or conn/s run.
    secs: u32,
    plan: &'static [(&'static str, &'static str)],
    /// Published ports present in the scaling runs.
    levels: &'static [usize],
    /// Containers of the control-plane run.
    containers: usize,
}

const QUICK: Mode = Mode {
    reps: 1,
    secs: 1,
    plan: QUICK_PLAN,
    levels: &[1, 100, 1000],
    containers: 20,
};
const FULL: Mode = Mode {
    reps: 3,
    secs: 2,
    plan: FULL_PLAN,
    levels: &[1, 100, 1000, 10_000],
    containers: 100,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    Veth,
    Iptables,
    Ebpf,
    Cni,
    Netavark,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Veth,
        Config::Iptables,
        Config::Ebpf,
        Config::Cni,
        Config::Netavark,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Veth => "veth",
            Config::Iptables => "iptables",
            Config::Ebpf => "ebpf",
            Config::Cni => "cni",
            Config::Netavark => "netavark",
        }
    }

    /// One letter in the sandbox prefix.
    fn tag(self) -> char {
        self.name().chars().next().expect("non-empty")
    }

    fn is_netctl(self) -> bool {
        matches!(self, Config::Iptables | Config::Ebpf)
    }
}

/// A configuration set up in its sandbox, with a target per path.
struct Rig {
    config: Config,
    sb: Sandbox,
    targets: Vec<(&'static str, Target)>,
}

impl Rig {
    fn target(&self, path: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| t)
    }
}

struct Tools {
    netctl: PathBuf,
    nettool: PathBuf,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo xtask bench` flags.
pub struct Options {
    pub quick: bool,
    /// Configuration names to run (all when empty).
    pub only: Vec<String>,
    /// `perf record` during the eBPF profiling runs.
    pub perf: bool,
}

pub fn bench(opts: Options) -> Result<()> {
    let started = Instant::now();
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| opts.only.is_empty() || opts.only.iter().any(|o| o == c.name()))
        .collect();
    if let Some(unknown) = opts
        .only
        .iter()
        .find(|o| !Config::ALL.iter().any(|c| c.name() == o.as_str()))
    {
        bail!("--only {unknown}: no such configuration (veth, iptables, ebpf, cni, netavark)");
    }
    crate::build_release()?;
    step("building nettool (release): the load clients and servers");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "netctl-tests",
        "--bin",
        "nettool",
    ]))?;
    let tools = Tools {
        netctl: target_dir().join("release/netctl"),
        nettool: target_dir().join("release/nettool"),
    };
    for bin in [&tools.netctl, &tools.nettool] {
        ensure!(bin.exists(), "{} missing after the build", bin.display());
    }
    for (tool, why) in [("iperf3", "--version"), ("bpftool", "version")] {
        ensure!(
            crate::cmd::succeeds(Command::new(tool).arg(why)),
            "{tool} is missing (cargo xtask deps installs it)"
        );
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the sandboxes down");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    let build_secs = started.elapsed().as_secs_f64();

    let mode = if opts.quick { QUICK } else { FULL };
    let mut results = Results::new(opts.quick, mode.secs, mode.reps, mode.plan);
    results.build_secs = build_secs;

    let pid = std::process::id();
    let mut rigs: Vec<Rig> = Vec::new();
    let outcome = (|| -> Result<()> {
        for &config in &configs {
            checkpoint()?;
            let prefix = format!("{PREFIX_START}{pid}{}", config.tag());
            step(&format!("setting up {} in sandbox {prefix}", config.name()));
            results.configs.push(config.name().to_owned());
            match setup(config, &prefix, &tools, &mut results) {
                Ok(rig) => rigs.push(rig),
                Err(e) => {
                    let reason = format!("{e:#}");
                    println!("!! {} could not run: {reason}", config.name());
                    results.unavailable.push((config.name().to_owned(), reason));
                }
            }
        }
        for rep in 0..mode.reps {
            for rig in &rigs {
                for &(path, metric) in mode.plan {
                    checkpoint()?;
                    let Some(target) = rig.target(path) else {
                        continue;
                    };
                    step(&format!(
                        "[{}/{}] {} {path} {metric}",
                        rep + 1,
                        mode.reps,
                        rig.config.name()
                    ));
                    match measure(&tools, target, metric, f64::from(mode.secs)) {
                        Ok(m) => {
                            println!("   = {}", report::show(metric, m.value));
                            results.add(rig.config.name(), path, metric, m);
                        }
                        Err(e) => results.fail(rig.config.name(), path, metric, &e),
                    }
                }
            }
        }
        if let Some(rig) = rigs.iter().find(|r| r.config == Config::Ebpf) {
            checkpoint()?;
            step("where the time goes: eBPF program run time and counters per path");
            let perf_dir = opts.perf.then(|| target_dir().join("bench"));
            match profile(rig, &tools, f64::from(mode.secs), perf_dir.as_deref()) {
                Ok(rows) => results.profile = rows,
                Err(e) => results.notes.push(format!("ebpf profile failed: {e:#}")),
            }
        }
        for rig in rigs.iter_mut().filter(|r| r.config.is_netctl()) {
            checkpoint()?;
            step(&format!(
                "scaling: {} with many published ports",
                rig.config.name()
            ));
            match scaling(rig, mode.levels, mode.secs, &tools, &mut results) {
                Ok(points) => results.scaling.extend(points),
                Err(e) => results
                    .notes
                    .push(format!("{} scaling failed: {e:#}", rig.config.name())),
            }
            checkpoint()?;
            step(&format!(
                "control plane: {} runs {} containers with one published port each",
                rig.config.name(),
                mode.containers
            ));
            match control_plane(rig, mode.containers) {
                Ok(c) => results.control.push(c),
                Err(e) => results
                    .notes
                    .push(format!("{} control plane failed: {e:#}", rig.config.name())),
            }
        }
        Ok(())
    })();

    step("tearing the sandboxes down");
    drop(rigs);
    results.wall_secs = started.elapsed().as_secs_f64();
    results.machine.load_end = report::loadavg();
    if let Err(e) = &outcome {
        results.notes.push(format!("the run stopped early: {e:#}"));
    }
    let dir = target_dir().join("bench");
    report::write(&results, &dir)?;
    println!("{}", report::markdown(&results));
    println!(
        "report: {} (wall time {:.0} s, of which building {:.0} s)",
        dir.join("report.md").display(),
        results.wall_secs,
        results.build_secs
    );
    outcome
}

/// One run of `metric` against `target`.
fn measure(tools: &Tools, target: &Target, metric: &str, secs: f64) -> Result<Measured> {
    let whole_secs = secs.ceil().max(1.0) as u32;
    let plain = |value: f64| Measured {
        value,
        errors: 0,
        latency: None,
    };
    match metric {
        "gbit1" => load::iperf(target, whole_secs, 1).map(plain),
        "gbit4" => load::iperf(target, whole_secs, 4).map(plain),
        "udp_pps" => load::udp_pps(&tools.nettool, target, secs).map(plain),
        "rr" | "conn_s" => {
            let r = if metric == "rr" {
                load::rr(&tools.nettool, target, secs)?
            } else {
                load::crr(&tools.nettool, target, secs)?
            };
            println!("   p50 {} µs, p99 {} µs per round", r.p50_us, r.p99_us);
            Ok(Measured {
                value: r.per_sec,
                errors: r.errors,
                latency: Some((r.p50_us as f64, r.p99_us as f64)),
            })
        }
        other => bail!("unknown metric {other}"),
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

const CONTAINER_PORTS: [u16; 3] = [PONG_PORT, IPERF_PORT, UDP_PORT];
const PUBLISHED_PORTS: [u16; 3] = [PUBLISHED_PONG, PUBLISHED_IPERF, PUBLISHED_UDP];
const OUTSIDE_PORTS: [u16; 3] = [OUTSIDE_PONG, OUTSIDE_IPERF, OUTSIDE_UDP];

fn target(client: Client, ip: impl ToString, ports: [u16; 3]) -> Target {
    let [crr_port, iperf_port, udp_port] = ports;
    Target {
        client,
        ip: ip.to_string(),
        crr_port,
        iperf_port,
        udp_port,
    }
}

fn in_ns(ns: &str) -> Client {
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

fn setup(config: Config, prefix: &str, tools: &Tools, results: &mut Results) -> Result<Rig> {
    let netctl = config.is_netctl().then(|| tools.netctl.clone());
    let mut sb = Sandbox::new(prefix, netctl)?;
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
            let json =
                read_echoed(&mut sb.netctl(&["--format", "json", "container", "inspect", "srv"]))?;
            let srv_ip = crate::demo::endpoint_ip(&json, NETWORK)?.to_string();
            let (srv_ns, cli_ns) = (format!("{}-srv", sb.host), format!("{}-cli", sb.host));
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
            let srv_ip = peers::cni_add(&mut sb, "csrv", &PUBLISHED)?;
            peers::cni_add(&mut sb, "ccli", &[])?;
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
            peers::netavark_add(&mut sb, "nsrv", srv_ip, &PUBLISHED)?;
            peers::netavark_add(&mut sb, "ncli", "10.89.0.3", &[])?;
            let (srv_ns, cli_ns) = (format!("{prefix}-nsrv"), format!("{prefix}-ncli"));
            start_servers(&mut sb, &srv_ns, CONTAINER_PORTS, tools)?;
            client_sysctls(&cli_ns)?;
            client_sysctls(&sb.host.clone())?;
            container_targets(&sb, srv_ip, &cli_ns)
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

/// Runs a netctl command silently, returning its wall time in ms.
fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    read_echoed(cmd)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The total memory of the host's pinned maps (eBPF only).
fn map_bytes(rig: &Rig, results: &mut Results) -> Option<u64> {
    if rig.config != Config::Ebpf {
        return None;
    }
    match bpf::map_memory(&rig.sb.host) {
        Ok(maps) => {
            let total = maps.iter().map(|m| m.bytes).sum();
            results.maps = maps;
            Some(total)
        }
        Err(e) => {
            results.notes.push(format!("ebpf map memory: {e:#}"));
            None
        }
    }
}

/// For each level: publishes `level` ports with one `container run -p
/// A-B:C-D` (timed), then times `container run -p` of one more port (the
/// probe) and measures conn/s from outside through the probe's port.
fn scaling(
    rig: &mut Rig,
    levels: &[usize],
    secs: u32,
    tools: &Tools,
    results: &mut Results,
) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::new();
    let nettool = tools.nettool.to_string_lossy().into_owned();
    for &level in levels {
        checkpoint()?;
        let bulk = level as u32;
        let spec = format!(
            "{}-{}:{}-{}",
            BULK_FIRST,
            BULK_FIRST + bulk - 1,
            BULK_CONTAINER_FIRST,
            BULK_CONTAINER_FIRST + bulk - 1
        );
        let bulk_ms = timed(&mut rig.sb.netctl(&[
            "container",
            "run",
            "bulk",
            "--network",
            NETWORK,
            "-p",
            &spec,
        ]))?;
        let probe = format!("{PROBE_PORT}:{PONG_PORT}");
        let publish_ms = timed(&mut rig.sb.netctl(&[
            "container",
            "run",
            "probe",
            "--network",
            NETWORK,
            "-p",
            &probe,
        ]))?;
        let map_bytes = map_bytes(rig, results);
        let probe_ns = format!("{}-probe", rig.sb.host);
        let server = rig.sb.spawn_server(
            &probe_ns,
            "tcp",
            PONG_PORT,
            &[&nettool, "pong", &PONG_PORT.to_string()],
        )?;
        let t = target(in_ns(&rig.sb.out), HOST_IP, [PROBE_PORT, 0, 0]);
        let rate = load::crr(&tools.nettool, &t, f64::from(secs));
        rig.sb.stop(server);
        let rm_ms = timed(&mut rig.sb.netctl(&["container", "rm", "probe", "bulk"]))?;
        let rate = rate?;
        println!(
            "   = {level} ports published: {:.0} conn/s, publish one more in {publish_ms:.1} ms \
             (publishing the {level} took {bulk_ms:.0} ms, removing {rm_ms:.0} ms)",
            rate.per_sec,
        );
        points.push(ScalePoint {
            config: rig.config.name().to_owned(),
            ports: level,
            conn_s: rate.per_sec,
            errors: rate.errors,
            publish_ms,
            bulk_ms,
            map_bytes,
        });
    }
    Ok(points)
}

/// Runs the [`PROFILE_PLAN`] on the eBPF rig with the kernel's BPF run-time
/// statistics on, and reads each program's runs and time and netctl's
/// counters around every run. Separate from the measured runs, which the
/// statistics (two clock reads per program run) would slow down.
fn profile(
    rig: &Rig,
    tools: &Tools,
    secs: f64,
    perf_dir: Option<&std::path::Path>,
) -> Result<Vec<ProfileRow>> {
    let stats_on = bpf::enable_run_time_stats()?;
    if let Some(dir) = perf_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut rows = Vec::new();
    for &(path, metric) in PROFILE_PLAN {
        checkpoint()?;
        let Some(target) = rig.target(path) else {
            continue;
        };
        let counters = |rig: &Rig| -> Result<_> {
            bpf::counters(&read_echoed(
                &mut rig.sb.netctl(&["--format", "json", "stats"]),
            )?)
        };
        let (progs0, counters0) = (bpf::prog_stats(&rig.sb.host)?, counters(rig)?);
        // Sampled for the load's duration (whole CPUs: the machine's other
        // work shows too; `perf report --comm` separates it).
        let perf = match perf_dir {
            Some(dir) => Some(
                Command::new("perf")
                    .args(["record", "-q", "-e", "cpu-clock", "-a", "-g", "-o"])
                    .arg(dir.join(format!("perf-{path}-{metric}.data")))
                    .args(["--", "sleep", &format!("{secs}")])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting perf record")?,
            ),
            None => None,
        };
        let started = Instant::now();
        let measured = measure(tools, target, metric, secs);
        let elapsed = started.elapsed().as_secs_f64();
        if let Some(mut perf) = perf {
            let _ = perf.wait();
        }
        let measured = measured?;
        let (progs1, counters1) = (bpf::prog_stats(&rig.sb.host)?, counters(rig)?);
        let counters: Vec<(String, u64)> = counters1
            .iter()
            .filter_map(|(k, &v)| {
                let d = v.saturating_sub(counters0.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        let row = ProfileRow {
            path,
            metric,
            rate: measured.value,
            secs: elapsed,
            programs: bpf::prog_delta(&progs0, &progs1).into_iter().collect(),
            counters,
        };
        println!("   = {}", report::profile_line(&row));
        rows.push(row);
    }
    drop(stats_on);
    Ok(rows)
}

/// `container run` N containers with one published port each, then removes
/// them with one `container rm`.
fn control_plane(rig: &mut Rig, n: usize) -> Result<Control> {
    let mut run_ms = Vec::with_capacity(n);
    let names: Vec<String> = (0..n).map(|i| format!("cp{i}")).collect();
    let mut made = 0;
    let result = (|| -> Result<()> {
        for (i, name) in names.iter().enumerate() {
            checkpoint()?;
            let publish = format!("{}:{PONG_PORT}", CONTROL_FIRST + i as u32);
            run_ms.push(timed(&mut rig.sb.netctl(&[
                "container",
                "run",
                name,
                "--network",
                NETWORK,
                "-p",
                &publish,
            ]))?);
            made += 1;
        }
        Ok(())
    })();
    let rm_ms = if made > 0 {
        let mut args = vec!["container", "rm"];
        args.extend(names[..made].iter().map(String::as_str));
        Some(timed(&mut rig.sb.netctl(&args))?)
    } else {
        None
    };
    result?;
    let rm_ms = rm_ms.ok_or_else(|| anyhow!("no container made"))?;
    let total: f64 = run_ms.iter().sum();
    println!(
        "   = {n} containers in {total:.0} ms ({:.1} ms each), removed in {rm_ms:.0} ms",
        total / n as f64
    );
    Ok(Control {
        config: rig.config.name().to_owned(),
        n,
        run_total_ms: total,
        run_ms,
        rm_ms,
    })
}
