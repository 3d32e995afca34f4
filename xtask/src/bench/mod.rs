//! `cargo xtask bench [--quick]`: netctl's datapaths against a no-NAT
//! ceiling and against the peers (CNI bridge+portmap, netavark, and the
//! nftables ruleset of a modern runtime).
//!
//! One sandbox per configuration (see [`crate::sandbox`]), all alive at once so
//! that the repetitions can be interleaved:
//!
//! | configuration | outside → published port | container → outside | host → published port | container ↔ container |
//! |---|---|---|---|---|
//! | `veth` (ceiling) | outside → host IP, no NAT | host → outside | host → outside | outside → host |
//! | `iptables`, `ebpf` | outside → 198.51.100.1:808x → `srv` | `cli` → outside (SNAT) | host (in the sandbox cgroup) → 127.0.0.1:808x → `srv` | `cli` → `srv` on the bridge |
//! | `cni`, `netavark`, `nft` | the same through their bridge and DNAT | | | |
//!
//! Servers behind each target: `nettool pong` (rr, crr), `iperf3 -s` (TCP
//! throughput) and `nettool udpsink` (UDP datagrams/s); clients run with
//! `ip netns exec`, the host's inside the sandbox's cgroup. Nothing is
//! asserted about speed: the figures go to `target/bench/report.{md,json}`
//! and SVG charts beside them.

mod bpf;
mod load;
mod nft;
mod peers;
mod plan;
mod report;
mod rig;
mod runs;

use std::{process::Command, time::Instant};

use anyhow::{bail, ensure, Result};

use self::{
    plan::{Config, FULL, QUICK},
    report::Results,
    rig::Rig,
};
use crate::{
    cmd::step,
    sandbox::{self, checkpoint, BENCH_PREFIX},
    tools::{self, target_dir},
};

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
        bail!("--only {unknown}: no such configuration (veth, iptables, ebpf, cni, netavark, nft)");
    }
    let tools = tools::build()?;
    for (tool, why) in [("iperf3", "--version"), ("bpftool", "version")] {
        ensure!(
            crate::cmd::succeeds(Command::new(tool).arg(why)),
            "{tool} is missing (cargo xtask deps installs it)"
        );
    }
    sandbox::tear_down_on_ctrl_c("the sandboxes")?;
    let build_secs = started.elapsed().as_secs_f64();

    let mode = if opts.quick { QUICK } else { FULL };
    let mut results = Results::new(opts.quick, mode.secs, mode.reps, mode.plan);
    results.build_secs = build_secs;

    let pid = std::process::id();
    let mut rigs: Vec<Rig> = Vec::new();
    let outcome = (|| -> Result<()> {
        for &config in &configs {
            checkpoint()?;
            let prefix = format!("{BENCH_PREFIX}{pid}{}", config.tag());
            step(&format!("setting up {} in sandbox {prefix}", config.name()));
            results.configs.push(config.name().to_owned());
            match rig::setup(config, &prefix, &tools, &mut results) {
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
                    match runs::measure(&tools, target, metric, f64::from(mode.secs)) {
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
            match runs::profile(rig, &tools, f64::from(mode.secs), perf_dir.as_deref()) {
                Ok(rows) => results.profile = rows,
                Err(e) => results.notes.push(format!("ebpf profile failed: {e:#}")),
            }
        }
        for rig in rigs.iter_mut().filter(|r| r.config.scales()) {
            checkpoint()?;
            step(&format!(
                "scaling: {} with many published ports",
                rig.config.name()
            ));
            match runs::scaling(rig, mode.levels, mode.secs, &tools, &mut results) {
                Ok(points) => results.scaling.extend(points),
                Err(e) => results
                    .notes
                    .push(format!("{} scaling failed: {e:#}", rig.config.name())),
            }
        }
        for rig in rigs
            .iter_mut()
            .filter(|r| r.config.is_netctl() || matches!(r.config, Config::Cni | Config::Netavark))
        {
            checkpoint()?;
            step(&format!(
                "control plane: {} sets up {} containers with one published port each, then removes them",
                rig.config.name(),
                mode.containers
            ));
            match runs::control_plane(rig, mode.containers) {
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
