//! The runs on configurations that are set up: one measurement, the
//! eBPF profiling pass, the scaling with published ports and the control
//! plane.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use super::{
    bpf,
    load::{self, Target},
    nft, peers,
    plan::{
        Config, BULK_CONTAINER_FIRST, BULK_FIRST, CONTROL_FIRST, NETWORK, PONG_PORT, PROBE_PORT,
        PROFILE_PLAN,
    },
    report::{self, Control, Measured, ProfileRow, Results, ScalePoint},
    rig::{in_ns, target, Rig},
};
use crate::{
    cmd::read_echoed,
    sandbox::{checkpoint, HOST_IP},
    tools::Tools,
};

/// One run of `metric` against `target`.
pub fn measure(tools: &Tools, target: &Target, metric: &str, secs: f64) -> Result<Measured> {
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

/// Runs a netctl command silently, returning its wall time in ms.
pub fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    read_echoed(cmd)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The total memory of the host's pinned maps (eBPF only).
pub fn map_bytes(rig: &Rig, results: &mut Results) -> Option<u64> {
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
/// probe) and measures conn/s from outside through the probe's port. The
/// nftables peer publishes the same ports as elements of its map, in one
/// `nft` transaction each.
pub fn scaling(
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
        let (bulk_ms, publish_ms, server) = if rig.config == Config::Nft {
            // The bulk ports and the probe lead to the bench server, whose
            // pong already listens: the peer has no containers to make.
            let bulk_ms = timed_step(|| nft::publish_bulk(&rig.sb, BULK_FIRST, bulk))?;
            let publish_ms = timed_step(|| nft::publish_one(&rig.sb, PROBE_PORT, PONG_PORT))?;
            (bulk_ms, publish_ms, None)
        } else {
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
            let probe_ns = rig.sb.container_netns("probe");
            let server = rig.sb.spawn_server(
                &probe_ns,
                "tcp",
                PONG_PORT,
                &[&nettool, "pong", &PONG_PORT.to_string()],
            )?;
            (bulk_ms, publish_ms, Some(server))
        };
        let map_bytes = map_bytes(rig, results);
        let t = target(in_ns(&rig.sb.out), HOST_IP, [PROBE_PORT, 0, 0]);
        let rate = load::crr(&tools.nettool, &t, f64::from(secs));
        let rm_ms = match server {
            Some(server) => {
                rig.sb.stop(server);
                timed(&mut rig.sb.netctl(&["container", "rm", "probe", "bulk"]))?
            }
            None => timed_step(|| nft::unpublish(&rig.sb, BULK_FIRST, bulk, PROBE_PORT))?,
        };
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

/// The wall time of `step` in ms.
fn timed_step(step: impl FnOnce() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    step()?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Runs the [`PROFILE_PLAN`] on the eBPF rig with the kernel's BPF run-time
/// statistics on, and reads each program's runs and time and netctl's
/// counters around every run. Separate from the measured runs, which the
/// statistics (two clock reads per program run) would slow down.
pub fn profile(
    rig: &Rig,
    tools: &Tools,
    secs: f64,
    perf_dir: Option<&Path>,
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

/// A container made by the control-plane run.
enum Made {
    Netctl(String),
    Peer(peers::Attached),
}

/// Sets up `n` containers with one published port each on one network,
/// one command at a time as a runtime would (netctl: `container run -p`;
/// CNI: namespace, bridge ADD and portmap ADD; netavark: namespace and
/// `setup`), then removes them one at a time in the same order (`container
/// rm`; DEL; `teardown`), timing every command.
pub fn control_plane(rig: &mut Rig, n: usize) -> Result<Control> {
    let mut setup_ms = Vec::with_capacity(n);
    let mut made: Vec<Made> = Vec::with_capacity(n);
    let result = (|| -> Result<()> {
        for i in 0..n {
            checkpoint()?;
            let name = format!("cp{i}");
            let host_port = u16::try_from(CONTROL_FIRST + i as u32)?;
            let started = Instant::now();
            let one = match rig.config {
                Config::Iptables | Config::Ebpf => {
                    let publish = format!("{host_port}:{PONG_PORT}");
                    read_echoed(&mut rig.sb.netctl(&[
                        "container",
                        "run",
                        &name,
                        "--network",
                        NETWORK,
                        "-p",
                        &publish,
                    ]))?;
                    Made::Netctl(name)
                }
                Config::Cni => Made::Peer(peers::cni_add(
                    &rig.sb,
                    &name,
                    &[(host_port, PONG_PORT, "tcp")],
                )?),
                Config::Netavark => {
                    // 10.89.0.2 and .3 are the bench's server and client.
                    let ip = format!("10.89.{}.{}", (i + 4) / 250, (i + 4) % 250 + 2);
                    Made::Peer(peers::netavark_add(
                        &rig.sb,
                        &name,
                        &ip,
                        &[(host_port, PONG_PORT, "tcp")],
                    )?)
                }
                other => bail!("{} has no control plane to measure", other.name()),
            };
            setup_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            made.push(one);
        }
        Ok(())
    })();
    // Whatever was made is removed, also after a failure (the sandbox's
    // teardown would remove it too, untimed).
    let mut teardown_ms = Vec::with_capacity(made.len());
    let mut teardown_error = None;
    for one in made {
        let started = Instant::now();
        let removed = match one {
            Made::Netctl(name) => {
                read_echoed(&mut rig.sb.netctl(&["container", "rm", &name])).map(drop)
            }
            Made::Peer(attached) => attached.detach(),
        };
        match removed {
            Ok(()) => teardown_ms.push(started.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                teardown_error.get_or_insert(e);
            }
        }
    }
    result?;
    if let Some(e) = teardown_error {
        return Err(e.context("removing the control plane's containers"));
    }
    let control = Control {
        config: rig.config.name().to_owned(),
        n,
        setup_ms,
        teardown_ms,
    };
    println!("   = {}", report::control_line(&control));
    Ok(control)
}
