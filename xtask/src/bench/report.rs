//! The bench's results: report.md, report.json and hand-written SVG charts.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::bpf::MapMemory;

pub struct Sample {
    pub config: String,
    pub path: &'static str,
    pub metric: &'static str,
    pub values: Vec<f64>,
    /// Failed rounds of the rr/crr runs (0 for the others).
    pub errors: u64,
    /// Latency of one round (rr, crr), µs, one pair per run.
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
}

/// One run's result.
pub struct Measured {
    pub value: f64,
    pub errors: u64,
    /// p50 and p99 of one round, µs (rr, crr).
    pub latency: Option<(f64, f64)>,
}

pub struct ScalePoint {
    pub config: String,
    /// Published ports of the bulk container (the bench server has 3 more).
    pub ports: usize,
    pub conn_s: f64,
    pub errors: u64,
    /// `container run -p` of the probe, with `ports` already published.
    pub publish_ms: f64,
    /// Publishing the bulk range with one `container run`.
    pub bulk_ms: f64,
    /// Memory of the pinned maps (eBPF).
    pub map_bytes: Option<u64>,
}

pub struct Control {
    pub config: String,
    pub n: usize,
    pub run_total_ms: f64,
    pub run_ms: Vec<f64>,
    pub rm_ms: f64,
}

/// One profiled run on the eBPF configuration.
pub struct ProfileRow {
    pub path: &'static str,
    pub metric: &'static str,
    /// What the load measured (conn/s, datagrams/s).
    pub rate: f64,
    /// Wall time of the run, s.
    pub secs: f64,
    /// Program → (runs, run time in ns) during the run.
    pub programs: Vec<(String, (u64, u64))>,
    /// netctl's counters that moved, packets.
    pub counters: Vec<(String, u64)>,
}

/// Where the figures come from.
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
}

impl Machine {
    fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let date = crate::cmd::read(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .unwrap_or_default();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            date: date.trim().to_owned(),
            load_start: loadavg(),
            load_end: String::new(),
        }
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Results {
    pub quick: bool,
    pub secs: f64,
    pub reps: usize,
    pub machine: Machine,
    /// Every configuration tried, in column order.
    pub configs: Vec<String>,
    /// Configurations that could not be set up, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// The (path, metric) rows asked for.
    pub plan: Vec<(&'static str, &'static str)>,
    pub samples: Vec<Sample>,
    /// (configuration, path, metric) of runs that failed (reason in notes).
    pub failed: Vec<(String, &'static str, &'static str)>,
    pub profile: Vec<ProfileRow>,
    pub scaling: Vec<ScalePoint>,
    /// The eBPF maps at the largest scaling level.
    pub maps: Vec<MapMemory>,
    pub control: Vec<Control>,
    pub notes: Vec<String>,
    pub build_secs: f64,
    pub wall_secs: f64,
}

const CEILING: &str = "veth";
const BASELINE: &str = "iptables";

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Thousands separated by commas: 12,345.
fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn unit(metric: &str) -> &'static str {
    match metric {
        "conn_s" => "conn/s",
        "rr" => "rounds/s",
        "udp_pps" => "datagrams/s",
        _ => "Gbit/s",
    }
}

fn is_gbit(metric: &str) -> bool {
    metric.starts_with("gbit")
}

/// A value with its unit.
pub fn show(metric: &str, v: f64) -> String {
    if is_gbit(metric) {
        format!("{v:.2} Gbit/s")
    } else {
        format!("{} {}", grouped(v), unit(metric))
    }
}

/// A value without its unit (the row names it).
fn bare(metric: &str, v: f64) -> String {
    if is_gbit(metric) {
        format!("{v:.2}")
    } else {
        grouped(v)
    }
}

fn metric_title(metric: &str) -> &'static str {
    match metric {
        "gbit1" => "TCP Gbit/s, 1 stream",
        "gbit4" => "TCP Gbit/s, 4 streams",
        "udp_pps" => "UDP datagrams/s (64 B)",
        "rr" => "request/response rounds/s (p50/p99 µs)",
        _ => "new connections/s",
    }
}

fn path_title(path: &str) -> &'static str {
    match path {
        "published" => "outside → published port",
        "snat" => "container → outside (SNAT)",
        "host" => "host → published port (127.0.0.1)",
        _ => "container ↔ container",
    }
}

impl Results {
    pub fn new(
        quick: bool,
        secs: u32,
        reps: usize,
        plan: &[(&'static str, &'static str)],
    ) -> Results {
        Results {
            quick,
            secs: f64::from(secs),
            reps,
            machine: Machine::here(),
            configs: Vec::new(),
            unavailable: Vec::new(),
            plan: plan.to_vec(),
            samples: Vec::new(),
            failed: Vec::new(),
            profile: Vec::new(),
            scaling: Vec::new(),
            maps: Vec::new(),
            control: Vec::new(),
            notes: Vec::new(),
            build_secs: 0.0,
            wall_secs: 0.0,
        }
    }

    pub fn add(&mut self, config: &str, path: &'static str, metric: &'static str, m: Measured) {
        let i = match self
            .samples
            .iter()
            .position(|s| s.config == config && s.path == path && s.metric == metric)
        {
            Some(i) => i,
            None => {
                self.samples.push(Sample {
                    config: config.to_owned(),
                    path,
                    metric,
                    values: Vec::new(),
                    errors: 0,
                    p50_us: Vec::new(),
                    p99_us: Vec::new(),
                });
                self.samples.len() - 1
            }
        };
        let s = &mut self.samples[i];
        s.values.push(m.value);
        s.errors += m.errors;
        if let Some((p50, p99)) = m.latency {
            s.p50_us.push(p50);
            s.p99_us.push(p99);
        }
    }

    /// Records a failed run: the table shows it, the notes say why.
    pub fn fail(
        &mut self,
        config: &str,
        path: &'static str,
        metric: &'static str,
        e: &anyhow::Error,
    ) {
        let note = format!("{config} {path} {metric} failed: {e:#}");
        println!("!! {note}");
        self.notes.push(note);
        let key = (config.to_owned(), path, metric);
        if !self.failed.contains(&key) {
            self.failed.push(key);
        }
    }

    fn sample(&self, config: &str, path: &str, metric: &str) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.config == config && s.path == path && s.metric == metric)
    }

    fn value(&self, config: &str, path: &str, metric: &str) -> Option<f64> {
        self.sample(config, path, metric).map(|s| median(&s.values))
    }

    /// The (path, metric) rows with at least one figure, in plan order.
    fn rows(&self) -> Vec<(&'static str, &'static str)> {
        self.plan
            .iter()
            .copied()
            .filter(|&(p, m)| self.samples.iter().any(|s| s.path == p && s.metric == m))
            .collect()
    }

    fn ratio(&self, config: &str, path: &str, metric: &str, against: &str) -> Option<f64> {
        let v = self.value(config, path, metric)?;
        let base = self.value(against, path, metric)?;
        (base > 0.0).then_some(v / base)
    }

    fn unavailable(&self, config: &str) -> bool {
        self.unavailable.iter().any(|(c, _)| c == config)
    }

    fn cell(&self, config: &str, path: &'static str, metric: &'static str) -> String {
        let Some(s) = self.sample(config, path, metric) else {
            return if self.unavailable(config) {
                "not run¹".to_owned()
            } else if self
                .failed
                .iter()
                .any(|(c, p, m)| c == config && *p == path && *m == metric)
            {
                "failed¹".to_owned()
            } else {
                "–".to_owned()
            };
        };
        let mut cell = bare(metric, median(&s.values));
        if s.values.len() > 1 {
            let (lo, hi) = min_max(&s.values);
            let _ = write!(cell, " [{}–{}]", bare(metric, lo), bare(metric, hi));
        }
        if metric == "rr" && !s.p50_us.is_empty() {
            let _ = write!(cell, " ({:.0}/{:.0})", median(&s.p50_us), median(&s.p99_us));
        }
        let mut ratios = Vec::new();
        if config != CEILING {
            if let Some(x) = self.ratio(config, path, metric, CEILING) {
                ratios.push(format!("{x:.2}×ceil"));
            }
        }
        if config != BASELINE && config != CEILING {
            if let Some(x) = self.ratio(config, path, metric, BASELINE) {
                ratios.push(format!("{x:.2}×ipt"));
            }
        }
        if !ratios.is_empty() {
            let _ = write!(cell, "<br>{}", ratios.join(", "));
        }
        if s.errors > 0 {
            let _ = write!(cell, "<br>{} failed rounds", s.errors);
        }
        cell
    }

    /// The targets against the figures: (target, measured, met).
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut out = Vec::new();
        for metric in ["gbit1", "gbit4"] {
            let Some(ebpf) = self.value("ebpf", "published", metric) else {
                continue;
            };
            if let Some(bridge) = self.value("ebpf", "c2c", metric) {
                let x = ebpf / bridge;
                out.push((
                    format!(
                        "ebpf published-port {} ≥ 1.0× the bridge path",
                        metric_title(metric)
                    ),
                    format!("{x:.2}× ({ebpf:.2} vs {bridge:.2})"),
                    Some(x >= 1.0),
                ));
            }
            if let Some(x) = self.ratio("ebpf", "published", metric, BASELINE) {
                out.push((
                    format!(
                        "ebpf published-port {} ≥ 1.3× iptables",
                        metric_title(metric)
                    ),
                    format!("{x:.2}×"),
                    Some(x >= 1.3),
                ));
            }
        }
        let ebpf_scaling: Vec<&ScalePoint> =
            self.scaling.iter().filter(|p| p.config == "ebpf").collect();
        if let (Some(first), Some(last)) = (ebpf_scaling.first(), ebpf_scaling.last()) {
            if last.ports > first.ports && first.conn_s > 0.0 {
                let x = last.conn_s / first.conn_s;
                out.push((
                    format!(
                        "ebpf conn/s with {} published ports not more than 5% below {}",
                        grouped(last.ports as f64),
                        first.ports
                    ),
                    format!(
                        "{x:.2}× ({} vs {})",
                        grouped(last.conn_s),
                        grouped(first.conn_s)
                    ),
                    Some(x >= 0.95),
                ));
            }
            out.push((
                format!(
                    "ebpf publishes {} ports (one command) in under 0.2 s{}",
                    grouped(last.ports as f64),
                    if last.ports < 10_000 {
                        " (the target is for 10,000)"
                    } else {
                        ""
                    }
                ),
                format!("{:.3} s", last.bulk_ms / 1000.0),
                (last.ports >= 10_000).then_some(last.bulk_ms < 200.0),
            ));
        }
        for peer in ["cni", "netavark"] {
            let mut behind = Vec::new();
            let mut compared = 0;
            for &(path, metric) in &self.rows() {
                if let (Some(e), Some(p)) = (
                    self.value("ebpf", path, metric),
                    self.value(peer, path, metric),
                ) {
                    compared += 1;
                    if e <= p {
                        behind.push(format!("{path} {metric} {:.2}×", e / p));
                    }
                }
            }
            if compared > 0 {
                out.push((
                    format!("ebpf ahead of {peer} on every path and metric"),
                    if behind.is_empty() {
                        format!("ahead on all {compared}")
                    } else {
                        format!(
                            "behind on {} of {compared}: {}",
                            behind.len(),
                            behind.join(", ")
                        )
                    },
                    Some(behind.is_empty()),
                ));
            }
        }
        out
    }
}

/// One profile row as a progress line.
pub fn profile_line(row: &ProfileRow) -> String {
    let progs: Vec<String> = row
        .programs
        .iter()
        .map(|(name, (runs, ns))| {
            format!(
                "{name} {:.0} ns/run × {:.1} runs/op",
                *ns as f64 / *runs as f64,
                *runs as f64 / ops(row)
            )
        })
        .collect();
    format!(
        "{} {}: {}; {}",
        row.path,
        show(row.metric, row.rate),
        progs.join(", "),
        bpf_share(row)
    )
}

/// Operations (connections, datagrams) in the run.
fn ops(row: &ProfileRow) -> f64 {
    (row.rate * row.secs).max(1.0)
}

/// The BPF time per operation against the wall time per operation.
fn bpf_share(row: &ProfileRow) -> String {
    let bpf_ns: u64 = row.programs.iter().map(|(_, (_, ns))| ns).sum();
    let per_op_bpf = bpf_ns as f64 / ops(row);
    let per_op_wall = 1e9 / row.rate.max(1e-9);
    format!(
        "BPF {:.2} µs per op of {:.2} µs ({:.1}%)",
        per_op_bpf / 1000.0,
        per_op_wall / 1000.0,
        100.0 * per_op_bpf / per_op_wall
    )
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(
        md,
        "# netctl benchmarks{}\n",
        if r.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "{}; {} CPUs; Linux {}; {}. Load average (1/5/15 min) {} at the start, {} at \
         the end: anything else running on the machine shows there.\n",
        m.cpu, m.cpus, m.kernel, m.date, m.load_start, m.load_end
    );
    let _ = writeln!(
        md,
        "{} repetition(s) of {:.0} s runs, configurations interleaved; median{}. \
         Wall time {:.0} s (building {:.0} s). Ratios: ×ceil against `veth` \
         (a plain veth pair between two namespaces, no bridge, no NAT), ×ipt \
         against netctl's iptables datapath. Nothing here is asserted: a noisy \
         machine gives noisy figures.\n",
        r.reps,
        r.secs,
        if r.reps > 1 { " [min–max]" } else { "" },
        r.wall_secs,
        r.build_secs
    );
    let configs: Vec<&str> = r.configs.iter().map(String::as_str).collect();
    let _ = writeln!(md, "## Data path\n");
    let _ = writeln!(md, "| path | metric | {} |", configs.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(configs.len()));
    for &(path, metric) in &r.plan {
        let cells: Vec<String> = configs.iter().map(|c| r.cell(c, path, metric)).collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            path_title(path),
            metric_title(metric),
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\n¹ see the notes. The `veth` column is the no-NAT ceiling of every path \
         (outside ↔ host namespace over the uplink veth); `container ↔ container` \
         in the other columns is their bridge, without NAT. The host's client runs \
         in the sandbox host namespace and cgroup (where netctl's eBPF cgroup \
         programs connect it straight to the container). UDP: one sender of 64-byte \
         datagrams as fast as it can, datagrams/s counted by the receiver. \
         rr: 1-byte request and response on one connection; conn/s: connect, \
         1 byte each way, close.\n\n![ratios](ratios.svg)\n"
    );
    let targets = r.targets();
    if !targets.is_empty() {
        let _ = writeln!(md, "## Targets (issue 5; reported, not asserted)\n");
        let _ = writeln!(md, "| target | measured | met |");
        let _ = writeln!(md, "|---|---|---|");
        for (target, measured, met) in targets {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not measured",
            };
            let _ = writeln!(md, "| {target} | {measured} | {met} |");
        }
        md.push('\n');
    }
    if !r.profile.is_empty() {
        let _ = writeln!(md, "## Where the time goes (eBPF, kernel BPF statistics)\n");
        let _ = writeln!(
            md,
            "A separate run per row with `BPF_ENABLE_STATS` on (it adds two clock reads \
             per program run, so these runs are not in the table above). Per program: \
             nanoseconds per run and runs per operation (connection or datagram); \
             then the programs' time per operation against the wall time per \
             operation, and netctl's counters that moved.\n"
        );
        let _ = writeln!(
            md,
            "| path | load | programs: ns/run × runs/op | BPF time per op | counters (packets) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for row in &r.profile {
            let progs: Vec<String> = row
                .programs
                .iter()
                .map(|(name, (runs, ns))| {
                    format!(
                        "{name} {:.0} × {:.1}",
                        *ns as f64 / *runs as f64,
                        *runs as f64 / ops(row)
                    )
                })
                .collect();
            let counters: Vec<String> = row
                .counters
                .iter()
                .map(|(k, v)| format!("{k} {}", grouped(*v as f64)))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                path_title(row.path),
                show(row.metric, row.rate),
                progs.join("<br>"),
                bpf_share(row),
                counters.join(", ")
            );
        }
        md.push('\n');
    }
    if !r.scaling.is_empty() {
        let _ = writeln!(md, "## Scaling with published ports\n");
        let _ = writeln!(
            md,
            "A bulk container publishes N ports with one `container run -p A-B:C-D` \
             (timed), then a probe container publishes one more (timed); conn/s from \
             outside to the probe's port. The bench server's 3 ports are there too. \
             Map memory: the sum of `bytes_memlock` of the pinned maps.\n"
        );
        let _ = writeln!(
            md,
            "| configuration | ports published | conn/s | publish one more (ms) | publish the N (ms) | eBPF map memory |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for p in &r.scaling {
            let _ = writeln!(
                md,
                "| {} | {} | {}{} | {:.1} | {:.0} | {} |",
                p.config,
                grouped(p.ports as f64),
                grouped(p.conn_s),
                if p.errors > 0 {
                    format!(" ({} failed)", p.errors)
                } else {
                    String::new()
                },
                p.publish_ms,
                p.bulk_ms,
                p.map_bytes.map_or("–".to_owned(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / 1048576.0
                ))
            );
        }
        let _ = writeln!(
            md,
            "\n![conn/s vs ports](scaling_conn.svg) ![publish time vs ports](scaling_publish.svg)\n"
        );
    }
    if !r.maps.is_empty() {
        let _ = writeln!(
            md,
            "eBPF maps at the largest level (the kernel's `bytes_memlock`; hash maps \
             are preallocated, so they hold their maximum from the start):\n"
        );
        let _ = writeln!(md, "| map | type | max entries | memory |");
        let _ = writeln!(md, "|---|---|---:|---:|");
        for m in &r.maps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} MiB |",
                m.name,
                m.kind,
                grouped(m.max_entries as f64),
                m.bytes as f64 / 1048576.0
            );
        }
        md.push('\n');
    }
    if !r.control.is_empty() {
        let _ = writeln!(md, "## Control plane\n");
        let _ = writeln!(
            md,
            "| configuration | containers | `container run -p` total (ms) | per container: median (ms) | max (ms) | one `container rm` of all (ms) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for c in &r.control {
            let (_, max) = min_max(&c.run_ms);
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} |",
                c.config,
                c.n,
                c.run_total_ms,
                median(&c.run_ms),
                max,
                c.rm_ms
            );
        }
        md.push('\n');
    }
    if !r.notes.is_empty() || !r.unavailable.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for (c, reason) in &r.unavailable {
            let _ = writeln!(md, "- {c} could not run: {}", reason.replace('\n', " "));
        }
        for n in &r.notes {
            let _ = writeln!(md, "- {}", n.replace('\n', " "));
        }
    }
    md
}

fn to_json(r: &Results) -> serde_json::Value {
    let m = &r.machine;
    json!({
        "quick": r.quick,
        "seconds_per_run": r.secs,
        "repetitions": r.reps,
        "machine": {
            "cpu": m.cpu, "cpus": m.cpus, "kernel": m.kernel, "date": m.date,
            "loadavg_start": m.load_start, "loadavg_end": m.load_end,
        },
        "configurations": r.configs,
        "unavailable": r.unavailable.iter().map(|(c, why)| json!({
            "configuration": c, "reason": why,
        })).collect::<Vec<_>>(),
        "wall_seconds": r.wall_secs,
        "build_seconds": r.build_secs,
        "datapath": r.samples.iter().map(|s| json!({
            "configuration": s.config,
            "path": s.path,
            "metric": s.metric,
            "unit": unit(s.metric),
            "values": s.values,
            "median": median(&s.values),
            "failed_rounds": s.errors,
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "ratio_to_ceiling": r.ratio(&s.config, s.path, s.metric, CEILING),
            "ratio_to_iptables": r.ratio(&s.config, s.path, s.metric, BASELINE),
        })).collect::<Vec<_>>(),
        "failed": r.failed.iter().map(|(c, p, m)| json!({
            "configuration": c, "path": p, "metric": m,
        })).collect::<Vec<_>>(),
        "targets": r.targets().into_iter().map(|(t, measured, met)| json!({
            "target": t, "measured": measured, "met": met,
        })).collect::<Vec<_>>(),
        "ebpf_profile": r.profile.iter().map(|p| json!({
            "path": p.path,
            "metric": p.metric,
            "rate": p.rate,
            "seconds": p.secs,
            "programs": p.programs.iter().map(|(name, (runs, ns))| json!({
                "program": name, "runs": runs, "run_time_ns": ns,
            })).collect::<Vec<_>>(),
            "counters": p.counters.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "scaling": r.scaling.iter().map(|p| json!({
            "configuration": p.config,
            "ports_published": p.ports,
            "conn_s": p.conn_s,
            "failed_rounds": p.errors,
            "publish_one_more_ms": p.publish_ms,
            "publish_all_ms": p.bulk_ms,
            "map_bytes": p.map_bytes,
        })).collect::<Vec<_>>(),
        "ebpf_maps": r.maps.iter().map(|m| json!({
            "map": m.name, "type": m.kind, "max_entries": m.max_entries, "bytes": m.bytes,
        })).collect::<Vec<_>>(),
        "control_plane": r.control.iter().map(|c| json!({
            "configuration": c.config,
            "containers": c.n,
            "run_total_ms": c.run_total_ms,
            "run_ms": c.run_ms,
            "rm_all_ms": c.rm_ms,
        })).collect::<Vec<_>>(),
        "notes": r.notes,
    })
}

pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let files = [
        ("report.md", markdown(r)),
        (
            "report.json",
            serde_json::to_string_pretty(&to_json(r)).expect("serializable"),
        ),
        ("ratios.svg", ratio_chart(r)),
        (
            "scaling_conn.svg",
            scaling_chart(r, "new connections/s vs published ports", "conn/s", |p| {
                p.conn_s
            }),
        ),
        (
            "scaling_publish.svg",
            scaling_chart(
                r,
                "time to publish one more port vs published ports",
                "ms",
                |p| p.publish_ms,
            ),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg_open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        escape(title)
    )
}

fn legend(svg: &mut String, names: &[&str], x: f64, y: f64) {
    for (i, name) in names.iter().enumerate() {
        let x = x + i as f64 * 110.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            escape(name)
        );
    }
}

/// Bars: ratio to the ceiling per (path, metric), one bar per configuration.
fn ratio_chart(r: &Results) -> String {
    let configs: Vec<&str> = r
        .configs
        .iter()
        .map(String::as_str)
        .filter(|c| *c != CEILING)
        .collect();
    let rows = r.rows();
    let (left, top, plot_h) = (50.0, 60.0, 260.0);
    let group_w = (configs.len().max(1) as f64) * 22.0 + 30.0;
    let w = (left + group_w * rows.len().max(1) as f64 + 20.0).max(500.0);
    let h = top + plot_h + 90.0;
    let ratios: Vec<Vec<Option<f64>>> = rows
        .iter()
        .map(|(p, m)| configs.iter().map(|c| r.ratio(c, p, m, CEILING)).collect())
        .collect();
    let max = ratios
        .iter()
        .flatten()
        .flatten()
        .fold(1.0f64, |a, &b| a.max(b))
        .max(1.0)
        * 1.1;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut svg = svg_open(w, h, "ratio to the no-NAT ceiling (veth), median");
    legend(&mut svg, &configs, left, 42.0);
    let mut tick = 0.0;
    while tick <= max {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick:.2}</text>",
            w - 20.0,
            left - 4.0,
            y(tick) + 4.0,
            y0 = y(tick)
        );
        tick += 0.25;
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y1}\" y2=\"{y1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
        w - 20.0,
        y1 = y(1.0)
    );
    for (g, ((path, metric), values)) in rows.iter().zip(&ratios).enumerate() {
        let x0 = left + g as f64 * group_w + 15.0;
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let x = x0 + i as f64 * 22.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"18\" height=\"{}\" fill=\"{}\">\
                 <title>{} {v:.2}</title></rect>",
                y(*v),
                top + plot_h - y(*v),
                COLORS[i % COLORS.len()],
                escape(configs[i])
            );
        }
        let cx = x0 + (configs.len() as f64 * 22.0) / 2.0;
        let short_metric = match *metric {
            "gbit1" => "Gbit/s ×1",
            "gbit4" => "Gbit/s ×4",
            "udp_pps" => "UDP pps",
            "rr" => "rr/s",
            _ => "conn/s",
        };
        let _ = writeln!(
            svg,
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            top + plot_h + 18.0,
            escape(path),
            top + plot_h + 34.0,
            escape(short_metric)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Lines: one per configuration, x = ports present (evenly spaced levels).
fn scaling_chart(r: &Results, title: &str, unit: &str, value: fn(&ScalePoint) -> f64) -> String {
    let mut levels: Vec<usize> = r.scaling.iter().map(|p| p.ports).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut configs: Vec<&str> = Vec::new();
    for p in &r.scaling {
        if !configs.contains(&p.config.as_str()) {
            configs.push(&p.config);
        }
    }
    let (left, top, plot_w, plot_h) = (70.0, 60.0, 420.0, 240.0);
    let (w, h) = (left + plot_w + 30.0, top + plot_h + 60.0);
    let max = r.scaling.iter().map(value).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / levels.len().max(1) as f64;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut svg = svg_open(w, h, title);
    legend(&mut svg, &configs, left, 42.0);
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>",
            left + plot_w,
            left - 4.0,
            y(v) + 4.0,
            y0 = y(v)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit)
    );
    for (i, l) in levels.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>",
            x(i),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">published ports present</text>",
        left + plot_w / 2.0,
        top + plot_h + 40.0
    );
    for (ci, c) in configs.iter().enumerate() {
        let color = COLORS[ci % COLORS.len()];
        let points: Vec<(f64, f64)> = levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                r.scaling
                    .iter()
                    .find(|p| p.config == *c && p.ports == *l)
                    .map(|p| (x(i), y(value(p))))
            })
            .collect();
        let line: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for (a, b) in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
    }

    #[test]
    fn report_has_ratios_failures_and_valid_charts() {
        let plan = [("published", "conn_s"), ("published", "rr")];
        let mut r = Results::new(true, 2, 1, &plan);
        r.configs = ["veth", "iptables", "ebpf", "cni", "netavark"]
            .map(String::from)
            .to_vec();
        for (config, v) in [("veth", 10000.0), ("iptables", 5000.0), ("ebpf", 7500.0)] {
            let m = Measured {
                value: v,
                errors: 0,
                latency: Some((80.0, 300.0)),
            };
            r.add(config, "published", "conn_s", m);
        }
        let rr = Measured {
            value: 20000.0,
            errors: 0,
            latency: Some((45.0, 120.0)),
        };
        r.add("ebpf", "published", "rr", rr);
        let slower = Measured {
            value: 10000.0,
            errors: 0,
            latency: None,
        };
        r.add("cni", "published", "rr", slower);
        r.fail("cni", "published", "conn_s", &anyhow::anyhow!("refused"));
        r.unavailable
            .push(("netavark".into(), "cannot run here".into()));
        r.scaling.push(ScalePoint {
            config: "ebpf".into(),
            ports: 1,
            conn_s: 7000.0,
            errors: 0,
            publish_ms: 12.0,
            bulk_ms: 10.0,
            map_bytes: Some(1 << 20),
        });
        let md = markdown(&r);
        assert!(md.contains("7,500<br>0.75×ceil, 1.50×ipt"), "{md}");
        assert!(md.contains("20,000 (45/120)"), "{md}");
        assert!(md.contains("| failed¹ | not run¹ |"), "{md}");
        assert!(
            md.contains("netavark could not run: cannot run here"),
            "{md}"
        );
        assert!(md.contains("cni published conn_s failed: refused"), "{md}");
        assert!(md.contains("ahead on all 1"), "{md}");
        for svg in [ratio_chart(&r), scaling_chart(&r, "t", "u", |p| p.conn_s)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(!svg.contains("NaN"));
        }
        let json = to_json(&r);
        assert_eq!(json["unavailable"][0]["configuration"], "netavark");
    }
}
