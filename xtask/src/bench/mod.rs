//! `cargo xtask bench [--quick]`: netctl's datapaths against a no-NAT
//! ceiling and against the peers (CNI bridge+portmap, netavark).
//!
//! One sandbox per configuration (see [`sandbox`]), all alive at once so
//! that the repetitions can be interleaved:
//!
//! | configuration | published port path | container → outside | container ↔ container |
//! |---|---|---|---|
//! | `veth` (ceiling) | outside → host IP, no NAT | host → outside | same veth |
//! | `iptables`, `ebpf` | outside → 198.51.100.1:8080 → `srv`:80 | `cli` → outside (SNAT) | `cli` → `srv` on the bridge |
//! | `cni`, `netavark` | the same through their bridge and DNAT | | |
//!
//! Servers: `nettool pong` (crr) and `iperf3 -s` behind each target; clients
//! run with `ip netns exec`. Nothing is asserted about speed: the figures go
//! to `target/bench/report.{md,json}` and SVG charts beside them.

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
    load::Target,
    report::{Control, Results, Sample, ScalePoint},
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

/// Ports behind every target.
const PONG_PORT: u16 = 80;
const IPERF_PORT: u16 = 5201;
const PUBLISHED_PONG: u16 = 8080;
const PUBLISHED_IPERF: u16 = 8081;
const OUTSIDE_PONG: u16 = 9000;
const OUTSIDE_IPERF: u16 = 9001;
/// The scaling probe's published port, the bulk range's first host port and
/// the control plane's first host port.
const PROBE_PORT: u16 = 8090;
const BULK_FIRST: u32 = 20000;
const BULK_CONTAINER_FIRST: u32 = 1000;
const CONTROL_FIRST: u32 = 40000;
const NETWORK: &str = "bench";

/// (path, metric) pairs measured on every configuration.
const FULL_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "gbit4"),
    ("published", "conn_s"),
    ("snat", "gbit1"),
    ("snat", "conn_s"),
    ("c2c", "gbit1"),
    ("c2c", "conn_s"),
];
const QUICK_PLAN: &[(&str, &str)] = &[
    ("published", "gbit1"),
    ("published", "conn_s"),
    ("snat", "conn_s"),
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
    secs: 2,
    plan: QUICK_PLAN,
    levels: &[1, 100, 1000],
    containers: 20,
};
const FULL: Mode = Mode {
    reps: 3,
    secs: 3,
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

pub fn bench(quick: bool) -> Result<()> {
    let started = Instant::now();
    crate::build_release()?;
    step("building nettool (release): the crr client and server");
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
    ensure!(
        crate::cmd::succeeds(Command::new("iperf3").arg("--version")),
        "iperf3 is missing (cargo xtask deps installs it)"
    );
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the sandboxes down");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    let build_secs = started.elapsed().as_secs_f64();

    let mode = if quick { QUICK } else { FULL };
    let (reps, secs, plan, levels, control_n) = (
        mode.reps,
        mode.secs,
        mode.plan,
        mode.levels,
        mode.containers,
    );
    let mut results = Results {
        quick,
        secs: f64::from(secs),
        reps,
        configs: Vec::new(),
        samples: Vec::new(),
        scaling: Vec::new(),
        control: Vec::new(),
        notes: Vec::new(),
        build_secs,
        wall_secs: 0.0,
    };

    let pid = std::process::id();
    let mut rigs: Vec<Rig> = Vec::new();
    let outcome = (|| -> Result<()> {
        for config in Config::ALL {
            checkpoint()?;
            let prefix = format!("{PREFIX_START}{pid}{}", config.tag());
            step(&format!("setting up {} in sandbox {prefix}", config.name()));
            match setup(config, &prefix, &tools) {
                Ok(rig) => {
                    results.configs.push(config.name().to_owned());
                    rigs.push(rig);
                }
                Err(e) => {
                    let note = format!("{} could not run: {e:#}", config.name());
                    println!("!! {note}");
                    results.notes.push(note);
                }
            }
        }
        checkpoint()?;
        for rep in 0..reps {
            for rig in &rigs {
                for &(path, metric) in plan {
                    checkpoint()?;
                    let Some(target) = rig.target(path) else {
                        continue;
                    };
                    step(&format!(
                        "[{}/{reps}] {} {path} {metric}",
                        rep + 1,
                        rig.config.name()
                    ));
                    let measured = match metric {
                        "gbit1" => load::iperf(target, secs, 1).map(|g| (g, 0)),
                        "gbit4" => load::iperf(target, secs, 4).map(|g| (g, 0)),
                        _ => load::crr(&tools.nettool, target, f64::from(secs)).map(|r| {
                            println!("   p50 {} µs, p99 {} µs per connection", r.p50_us, r.p99_us);
                            (r.per_sec, r.errors)
                        }),
                    };
                    match measured {
                        Ok((value, errors)) => {
                            println!("   = {}", report::show(metric, value));
                            results.add(rig.config.name(), path, metric, value, errors);
                        }
                        Err(e) => {
                            let note =
                                format!("{} {path} {metric} failed: {e:#}", rig.config.name());
                            println!("!! {note}");
                            results.notes.push(note);
                        }
                    }
                }
            }
        }
        for rig in rigs.iter_mut().filter(|r| r.config.is_netctl()) {
            step(&format!(
                "scaling: {} with many published ports",
                rig.config.name()
            ));
            match scaling(rig, levels, secs, &tools) {
                Ok(points) => results.scaling.extend(points),
                Err(e) => results
                    .notes
                    .push(format!("{} scaling failed: {e:#}", rig.config.name())),
            }
            checkpoint()?;
            step(&format!(
                "control plane: {} runs {control_n} containers with one published port each",
                rig.config.name()
            ));
            match control_plane(rig, control_n) {
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

/// Servers in the outside namespace, for the container → outside path.
fn outside_servers(sb: &mut Sandbox, tools: &Tools) -> Result<()> {
    let out = sb.out.clone();
    start_servers(sb, &out, OUTSIDE_PONG, OUTSIDE_IPERF, tools)
}

fn start_servers(sb: &mut Sandbox, ns: &str, pong: u16, iperf: u16, tools: &Tools) -> Result<()> {
    let nettool = tools.nettool.to_string_lossy().into_owned();
    sb.spawn_server(ns, pong, &[&nettool, "pong", &pong.to_string()])?;
    sb.spawn_server(ns, iperf, &["iperf3", "-s", "-p", &iperf.to_string()])?;
    Ok(())
}

fn target(client_ns: &str, ip: impl ToString, crr_port: u16, iperf_port: u16) -> Target {
    Target {
        client_ns: client_ns.to_owned(),
        ip: ip.to_string(),
        crr_port,
        iperf_port,
    }
}

/// The three targets of a configuration whose server namespace is
/// `srv_ns` (address `srv_ip`) and client container namespace `cli_ns`.
fn container_targets(sb: &Sandbox, srv_ip: &str, cli_ns: &str) -> Vec<(&'static str, Target)> {
    vec![
        (
            "published",
            target(&sb.out, HOST_IP, PUBLISHED_PONG, PUBLISHED_IPERF),
        ),
        (
            "snat",
            target(cli_ns, OUTSIDE_IP, OUTSIDE_PONG, OUTSIDE_IPERF),
        ),
        ("c2c", target(cli_ns, srv_ip, PONG_PORT, IPERF_PORT)),
    ]
}

fn setup(config: Config, prefix: &str, tools: &Tools) -> Result<Rig> {
    let netctl = config.is_netctl().then(|| tools.netctl.clone());
    let mut sb = Sandbox::new(prefix, netctl)?;
    outside_servers(&mut sb, tools)?;
    let ports = [(PUBLISHED_PONG, PONG_PORT), (PUBLISHED_IPERF, IPERF_PORT)];
    let targets = match config {
        Config::Veth => {
            let host = sb.host.clone();
            start_servers(&mut sb, &host, PONG_PORT, IPERF_PORT, tools)?;
            client_sysctls(&host)?;
            vec![
                ("published", target(&sb.out, HOST_IP, PONG_PORT, IPERF_PORT)),
                (
                    "snat",
                    target(&host, OUTSIDE_IP, OUTSIDE_PONG, OUTSIDE_IPERF),
                ),
                ("c2c", target(&sb.out, HOST_IP, PONG_PORT, IPERF_PORT)),
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
            let publish: Vec<String> = ports.iter().map(|(h, c)| format!("{h}:{c}")).collect();
            run(&mut sb.netctl(&[
                "container",
                "run",
                "srv",
                "--network",
                NETWORK,
                "-p",
                &publish[0],
                "-p",
                &publish[1],
            ]))?;
            run(&mut sb.netctl(&["container", "run", "cli", "--network", NETWORK]))?;
            let json =
                read_echoed(&mut sb.netctl(&["--format", "json", "container", "inspect", "srv"]))?;
            let srv_ip = crate::demo::endpoint_ip(&json, NETWORK)?.to_string();
            let (srv_ns, cli_ns) = (format!("{}-srv", sb.host), format!("{}-cli", sb.host));
            start_servers(&mut sb, &srv_ns, PONG_PORT, IPERF_PORT, tools)?;
            client_sysctls(&cli_ns)?;
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
            let srv_ip = peers::cni_add(&mut sb, "csrv", &ports)?;
            peers::cni_add(&mut sb, "ccli", &[])?;
            let (srv_ns, cli_ns) = (format!("{prefix}-csrv"), format!("{prefix}-ccli"));
            start_servers(&mut sb, &srv_ns, PONG_PORT, IPERF_PORT, tools)?;
            client_sysctls(&cli_ns)?;
            container_targets(&sb, &srv_ip, &cli_ns)
        }
        Config::Netavark => {
            ensure!(
                PathBuf::from(peers::NETAVARK).exists(),
                "{} is missing (Debian package netavark)",
                peers::NETAVARK
            );
            let srv_ip = "10.89.0.2";
            peers::netavark_add(&mut sb, "nsrv", srv_ip, &ports)?;
            peers::netavark_add(&mut sb, "ncli", "10.89.0.3", &[])?;
            let (srv_ns, cli_ns) = (format!("{prefix}-nsrv"), format!("{prefix}-ncli"));
            start_servers(&mut sb, &srv_ns, PONG_PORT, IPERF_PORT, tools)?;
            client_sysctls(&cli_ns)?;
            container_targets(&sb, srv_ip, &cli_ns)
        }
    };
    // A first round trip through every target: a setup that does not carry
    // traffic is a failed setup, not a zero in the table.
    for (path, t) in &targets {
        load::crr(&tools.nettool, t, 0.2).with_context(|| format!("{path} does not answer"))?;
    }
    Ok(Rig {
        config,
        sb,
        targets,
    })
}

/// Runs a netctl command silently, returning its wall time in ms.
fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    read_echoed(cmd)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// conn/s through a port published after `level` others, and the time
/// `container run -p` takes to publish it.
fn scaling(rig: &mut Rig, levels: &[usize], secs: u32, tools: &Tools) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::new();
    let nettool = tools.nettool.to_string_lossy().into_owned();
    // The bench server already publishes two ports.
    let present = 2usize;
    for &level in levels {
        checkpoint()?;
        let bulk = level.saturating_sub(present) as u32;
        let bulk_ms = if bulk > 0 {
            let spec = format!(
                "{}-{}:{}-{}",
                BULK_FIRST,
                BULK_FIRST + bulk - 1,
                BULK_CONTAINER_FIRST,
                BULK_CONTAINER_FIRST + bulk - 1
            );
            Some(timed(&mut rig.sb.netctl(&[
                "container",
                "run",
                "bulk",
                "--network",
                NETWORK,
                "-p",
                &spec,
            ]))?)
        } else {
            None
        };
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
        let probe_ns = format!("{}-probe", rig.sb.host);
        let server = rig.sb.spawn_server(
            &probe_ns,
            PONG_PORT,
            &[&nettool, "pong", &PONG_PORT.to_string()],
        )?;
        let t = target(&rig.sb.out, HOST_IP, PROBE_PORT, 0);
        let rate = load::crr(&tools.nettool, &t, f64::from(secs));
        rig.sb.stop(server);
        let mut rm = vec!["container", "rm", "probe"];
        if bulk > 0 {
            rm.push("bulk");
        }
        let rm_ms = timed(&mut rig.sb.netctl(&rm))?;
        let rate = rate?;
        let ports = present + bulk as usize;
        println!(
            "   = {ports} ports present: {:.0} conn/s, publish one more in {publish_ms:.1} ms{}",
            rate.per_sec,
            bulk_ms.map_or(String::new(), |ms| format!(
                " (publishing the {bulk} took {ms:.0} ms, removing {rm_ms:.0} ms)"
            ))
        );
        points.push(ScalePoint {
            config: rig.config.name().to_owned(),
            ports,
            conn_s: rate.per_sec,
            errors: rate.errors,
            publish_ms,
            bulk_ms,
        });
    }
    Ok(points)
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

impl Results {
    fn add(&mut self, config: &str, path: &'static str, metric: &'static str, v: f64, errors: u64) {
        match self
            .samples
            .iter_mut()
            .find(|s| s.config == config && s.path == path && s.metric == metric)
        {
            Some(s) => {
                s.values.push(v);
                s.errors += errors;
            }
            None => self.samples.push(Sample {
                config: config.to_owned(),
                path,
                metric,
                values: vec![v],
                errors,
            }),
        }
    }
}
