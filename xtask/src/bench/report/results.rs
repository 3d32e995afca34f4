//! The bench's results as data: the samples of every run, the profile,
//! scaling and control-plane rows, the machine they come from; the
//! computations on them (medians, ratios to the ceiling and to iptables,
//! the targets) and how a figure is written (units, titles,
//! thousands). The markdown, json and svg modules only lay them out.

use std::process::Command;

use super::super::bpf::MapMemory;

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

/// The control plane of one configuration: `n` containers set up one
/// command at a time on one network, then removed one at a time.
pub struct Control {
    pub config: String,
    pub n: usize,
    /// Each setup command, in order (ms): netctl `container run -p`, CNI
    /// namespace + bridge ADD + portmap ADD, netavark namespace + `setup`.
    pub setup_ms: Vec<f64>,
    /// Each removal, in the same order (ms): `container rm`, CNI DEL,
    /// netavark `teardown` (namespace deletion included).
    pub teardown_ms: Vec<f64>,
}

/// Median, p99, first and last of a series of command times (ms).
pub struct Latencies {
    pub median: f64,
    pub p99: f64,
    pub first: f64,
    pub last: f64,
}

impl Latencies {
    pub fn of(ms: &[f64]) -> Option<Self> {
        let (&first, &last) = (ms.first()?, ms.last()?);
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with 99% of the series at or
        // below it.
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        Some(Latencies {
            median: median(ms),
            p99: sorted[rank.clamp(1, sorted.len()) - 1],
            first,
            last,
        })
    }
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

/// The configurations the ratios are against: the no-NAT ceiling (×ceil)
/// and netctl's iptables datapath (×ipt).
pub(super) const CEILING: &str = "veth";
pub(super) const BASELINE: &str = "iptables";

/// The median; NaN without values.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(super) fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Thousands separated by commas: 12,345.
pub(super) fn grouped(v: f64) -> String {
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

pub(super) fn unit(metric: &str) -> &'static str {
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
pub(super) fn bare(metric: &str, v: f64) -> String {
    if is_gbit(metric) {
        format!("{v:.2}")
    } else {
        grouped(v)
    }
}

pub(super) fn metric_title(metric: &str) -> &'static str {
    match metric {
        "gbit1" => "TCP Gbit/s, 1 stream",
        "gbit4" => "TCP Gbit/s, 4 streams",
        "udp_pps" => "UDP datagrams/s (64 B)",
        "rr" => "request/response rounds/s (p50/p99 µs)",
        _ => "new connections/s",
    }
}

pub(super) fn path_title(path: &str) -> &'static str {
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

    pub(super) fn sample(&self, config: &str, path: &str, metric: &str) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.config == config && s.path == path && s.metric == metric)
    }

    pub(super) fn value(&self, config: &str, path: &str, metric: &str) -> Option<f64> {
        self.sample(config, path, metric).map(|s| median(&s.values))
    }

    /// The (path, metric) rows with at least one figure, in plan order.
    pub(super) fn rows(&self) -> Vec<(&'static str, &'static str)> {
        self.plan
            .iter()
            .copied()
            .filter(|&(p, m)| self.samples.iter().any(|s| s.path == p && s.metric == m))
            .collect()
    }

    pub(super) fn ratio(
        &self,
        config: &str,
        path: &str,
        metric: &str,
        against: &str,
    ) -> Option<f64> {
        let v = self.value(config, path, metric)?;
        let base = self.value(against, path, metric)?;
        (base > 0.0).then_some(v / base)
    }

    pub(super) fn unavailable(&self, config: &str) -> bool {
        self.unavailable.iter().any(|(c, _)| c == config)
    }

    /// The targets against the figures: (target, measured, met).
    pub(super) fn targets(&self) -> Vec<(String, String, Option<bool>)> {
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
        // The nftables peer at the most ports both measured.
        let at_most = |config: &str| {
            self.scaling
                .iter()
                .filter(|p| p.config == config)
                .max_by_key(|p| p.ports)
        };
        if let (Some(e), Some(n)) = (at_most("ebpf"), at_most("nft")) {
            if e.ports == n.ports && n.conn_s > 0.0 {
                let x = e.conn_s / n.conn_s;
                out.push((
                    format!(
                        "ebpf conn/s with {} published ports at least 2× nft's",
                        grouped(e.ports as f64)
                    ),
                    format!("{x:.2}× ({} vs {})", grouped(e.conn_s), grouped(n.conn_s)),
                    Some(x >= 2.0),
                ));
            }
        }
        for peer in ["cni", "netavark", "nft"] {
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
        self.control_targets(&mut out);
        out
    }

    /// The control plane's targets, for netctl's eBPF configuration against
    /// the fastest peer that was measured.
    fn control_targets(&self, out: &mut Vec<(String, String, Option<bool>)>) {
        let of = |config: &str, pick: fn(&Control) -> &[f64]| {
            self.control
                .iter()
                .find(|c| c.config == config)
                .and_then(|c| Latencies::of(pick(c)))
        };
        fn setups(c: &Control) -> &[f64] {
            &c.setup_ms
        }
        fn teardowns(c: &Control) -> &[f64] {
            &c.teardown_ms
        }
        for (what, peer_what, pick) in [
            (
                "`container run -p`",
                "setup",
                setups as fn(&Control) -> &[f64],
            ),
            ("`container rm`", "teardown", teardowns),
        ] {
            let Some(ebpf) = of("ebpf", pick) else {
                continue;
            };
            out.push((
                format!("ebpf {what} median ≤ 15 ms"),
                format!("{:.1} ms", ebpf.median),
                Some(ebpf.median <= 15.0),
            ));
            let fastest = ["cni", "netavark"]
                .into_iter()
                .filter_map(|peer| Some((peer, of(peer, pick)?.median)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((peer, median)) = fastest {
                let x = ebpf.median / median;
                out.push((
                    format!("ebpf {what} median ≤ 0.5× the fastest peer's {peer_what}"),
                    format!("{x:.2}× ({peer}: {median:.1} ms)"),
                    Some(x <= 0.5),
                ));
            }
        }
        if let Some(c) = self.control.iter().find(|c| c.config == "ebpf") {
            if let Some(l) = Latencies::of(&c.setup_ms) {
                let x = l.last / l.first;
                out.push((
                    format!(
                        "ebpf: the last of {} `container run` on one network ≤ 1.5× the first{}",
                        c.n,
                        if c.n < 1000 {
                            " (the target is for 1,000)"
                        } else {
                            ""
                        }
                    ),
                    format!("{x:.2}× ({:.1} vs {:.1} ms)", l.last, l.first),
                    (c.n >= 1000).then_some(x <= 1.5),
                ));
            }
        }
    }
}

/// Results with a bit of everything, for the layouts' tests: ratios, rr
/// latency, a failed run, an unavailable configuration, a scaling point.
#[cfg(test)]
pub(super) fn example() -> Results {
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
    r.control.push(Control {
        config: "ebpf".into(),
        n: 3,
        setup_ms: vec![10.0, 30.0, 12.0],
        teardown_ms: vec![8.0, 9.0, 10.0],
    });
    r.control.push(Control {
        config: "cni".into(),
        n: 3,
        setup_ms: vec![200.0, 220.0, 240.0],
        teardown_ms: vec![15.0, 16.0, 17.0],
    });
    r
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
    fn latencies_of_a_series() {
        let l = Latencies::of(&[5.0, 1.0, 3.0, 100.0]).expect("not empty");
        assert_eq!((l.median, l.p99, l.first, l.last), (4.0, 100.0, 5.0, 100.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latencies::of(&hundred).expect("not empty");
        assert_eq!(l.p99, 99.0);
        assert!(Latencies::of(&[]).is_none());
    }

    #[test]
    fn control_plane_targets() {
        let targets = example().targets();
        let find = |what: &str| {
            targets
                .iter()
                .find(|(t, _, _)| t.contains(what))
                .unwrap_or_else(|| panic!("no target {what}: {targets:?}"))
        };
        let (_, measured, met) = find("`container run -p` median ≤ 15 ms");
        assert_eq!((measured.as_str(), *met), ("12.0 ms", Some(true)));
        let (_, measured, met) = find("`container run -p` median ≤ 0.5×");
        assert_eq!(
            (measured.as_str(), *met),
            ("0.05× (cni: 220.0 ms)", Some(true))
        );
        let (_, measured, met) = find("`container rm` median ≤ 0.5×");
        assert_eq!(
            (measured.as_str(), *met),
            ("0.56× (cni: 16.0 ms)", Some(false))
        );
        let (_, _, met) = find("the last of 3 `container run`");
        assert_eq!(*met, None, "only judged at 1,000 containers");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
    }

    #[test]
    fn ratios_and_targets() {
        let r = example();
        assert_eq!(r.ratio("ebpf", "published", "conn_s", CEILING), Some(0.75));
        assert_eq!(r.ratio("ebpf", "published", "conn_s", BASELINE), Some(1.5));
        assert_eq!(r.ratio("cni", "published", "conn_s", CEILING), None);
        let targets = r.targets();
        assert!(
            targets
                .iter()
                .any(|(t, measured, met)| t.contains("ahead of cni")
                    && measured == "ahead on all 1"
                    && *met == Some(true)),
            "{targets:?}"
        );
    }
}
