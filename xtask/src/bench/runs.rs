//! The runs on configurations that are set up: one measurement, the
//! eBPF profiling pass, the scaling with published ports and the control
//! plane.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{
    bpf,
    load::{self, Target},
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
/// probe) and measures conn/s from outside through the probe's port.
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
        let probe_ns = rig.sb.container_netns("probe");
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

/// `container run` N containers with one published port each, then removes
/// them with one `container rm`.
pub fn control_plane(rig: &mut Rig, n: usize) -> Result<Control> {
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
