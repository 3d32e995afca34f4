//! The bench's results: report.md, report.json and hand-written SVG charts.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::json;

pub struct Sample {
    pub config: String,
    pub path: &'static str,
    pub metric: &'static str,
    pub values: Vec<f64>,
    /// Failed rounds of the crr runs (0 for iperf3).
    pub errors: u64,
}

pub struct ScalePoint {
    pub config: String,
    /// Published ports present before the probe's.
    pub ports: usize,
    pub conn_s: f64,
    pub errors: u64,
    /// `container run -p` of the probe, with `ports` already published.
    pub publish_ms: f64,
    /// Publishing the bulk range with one `container run`.
    pub bulk_ms: Option<f64>,
}

pub struct Control {
    pub config: String,
    pub n: usize,
    pub run_total_ms: f64,
    pub run_ms: Vec<f64>,
    pub rm_ms: f64,
}

pub struct Results {
    pub quick: bool,
    pub secs: f64,
    pub reps: usize,
    pub configs: Vec<String>,
    pub samples: Vec<Sample>,
    pub scaling: Vec<ScalePoint>,
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

/// A value with its unit.
pub fn show(metric: &str, v: f64) -> String {
    match metric {
        "conn_s" => format!("{v:.0} conn/s"),
        _ => format!("{v:.2} Gbit/s"),
    }
}

fn metric_title(metric: &str) -> &'static str {
    match metric {
        "gbit1" => "TCP throughput, 1 stream",
        "gbit4" => "TCP throughput, 4 streams",
        _ => "new connections/s",
    }
}

fn path_title(path: &str) -> &'static str {
    match path {
        "published" => "outside → published port",
        "snat" => "container → outside (SNAT)",
        _ => "container ↔ container",
    }
}

impl Results {
    fn sample(&self, config: &str, path: &str, metric: &str) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.config == config && s.path == path && s.metric == metric)
    }

    /// The (path, metric) rows in the order they were measured.
    fn rows(&self) -> Vec<(&'static str, &'static str)> {
        let mut rows: Vec<(&'static str, &'static str)> = Vec::new();
        for s in &self.samples {
            if !rows.contains(&(s.path, s.metric)) {
                rows.push((s.path, s.metric));
            }
        }
        rows
    }

    fn ratio(&self, config: &str, path: &str, metric: &str, against: &str) -> Option<f64> {
        let v = median(&self.sample(config, path, metric)?.values);
        let base = median(&self.sample(against, path, metric)?.values);
        (base > 0.0).then_some(v / base)
    }
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "# netctl benchmarks{}\n",
        if r.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Kernel {}, {cpus} CPUs. {} repetition(s) of {:.0} s runs, configurations \
         interleaved; median{}. Wall time {:.0} s (building {:.0} s). \
         Ratios: ×ceiling against `veth` (a plain veth pair, no bridge, no NAT), \
         ×ipt against netctl's iptables datapath. Nothing here is asserted: \
         a noisy machine gives noisy figures.\n",
        kernel.trim(),
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
    for (path, metric) in r.rows() {
        let mut cells = Vec::new();
        for c in &configs {
            let Some(s) = r.sample(c, path, metric) else {
                cells.push("–".to_owned());
                continue;
            };
            let mut cell = show(metric, median(&s.values));
            if s.values.len() > 1 {
                let (lo, hi) = min_max(&s.values);
                let digits = if metric == "conn_s" { 0 } else { 2 };
                let _ = write!(cell, " [{lo:.digits$}–{hi:.digits$}]");
            }
            let mut ratios = Vec::new();
            if *c != CEILING {
                if let Some(x) = r.ratio(c, path, metric, CEILING) {
                    ratios.push(format!("{x:.2}×ceiling"));
                }
            }
            if *c != BASELINE && *c != CEILING {
                if let Some(x) = r.ratio(c, path, metric, BASELINE) {
                    ratios.push(format!("{x:.2}×ipt"));
                }
            }
            if !ratios.is_empty() {
                let _ = write!(cell, "<br>{}", ratios.join(", "));
            }
            if s.errors > 0 {
                let _ = write!(cell, "<br>{} failed", s.errors);
            }
            cells.push(cell);
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
        "\nThe `veth` column is the no-NAT ceiling for every path (outside ↔ host \
         over the uplink veth); `container ↔ container` in the netctl columns is \
         the bridge without NAT.\n\n![ratios](ratios.svg)\n"
    );
    if !r.scaling.is_empty() {
        let _ = writeln!(md, "## Scaling with published ports\n");
        let _ = writeln!(
            md,
            "A probe container publishes one port after N others (a bulk container \
             publishing a `-p A-B:C-D` range, plus the bench server's two ports); \
             conn/s from outside to the probe's port, and the wall time of the \
             probe's `netctl container run -p`.\n"
        );
        let _ = writeln!(
            md,
            "| configuration | ports present | conn/s | publish one more (ms) | publish the range (ms) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for p in &r.scaling {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0}{} | {:.1} | {} |",
                p.config,
                p.ports,
                p.conn_s,
                if p.errors > 0 {
                    format!(" ({} failed)", p.errors)
                } else {
                    String::new()
                },
                p.publish_ms,
                p.bulk_ms.map_or("–".to_owned(), |ms| format!("{ms:.0}"))
            );
        }
        let _ = writeln!(
            md,
            "\n![conn/s vs ports](scaling_conn.svg) ![publish time vs ports](scaling_publish.svg)\n"
        );
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
    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {}", n.replace('\n', " "));
        }
    }
    md
}

fn to_json(r: &Results) -> serde_json::Value {
    json!({
        "quick": r.quick,
        "seconds_per_run": r.secs,
        "repetitions": r.reps,
        "configurations": r.configs,
        "wall_seconds": r.wall_secs,
        "build_seconds": r.build_secs,
        "datapath": r.samples.iter().map(|s| json!({
            "configuration": s.config,
            "path": s.path,
            "metric": s.metric,
            "unit": if s.metric == "conn_s" { "conn/s" } else { "Gbit/s" },
            "values": s.values,
            "median": median(&s.values),
            "failed_rounds": s.errors,
            "ratio_to_ceiling": r.ratio(&s.config, s.path, s.metric, CEILING),
            "ratio_to_iptables": r.ratio(&s.config, s.path, s.metric, BASELINE),
        })).collect::<Vec<_>>(),
        "scaling": r.scaling.iter().map(|p| json!({
            "configuration": p.config,
            "ports_present": p.ports,
            "conn_s": p.conn_s,
            "failed_rounds": p.errors,
            "publish_one_more_ms": p.publish_ms,
            "publish_range_ms": p.bulk_ms,
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
    fn report_has_ratios_and_valid_charts() {
        let sample = |config: &str, v: f64| Sample {
            config: config.to_owned(),
            path: "published",
            metric: "conn_s",
            values: vec![v],
            errors: 0,
        };
        let r = Results {
            quick: true,
            secs: 2.0,
            reps: 1,
            configs: vec!["veth".into(), "iptables".into(), "ebpf".into()],
            samples: vec![
                sample("veth", 10000.0),
                sample("iptables", 5000.0),
                sample("ebpf", 7500.0),
            ],
            scaling: vec![ScalePoint {
                config: "ebpf".into(),
                ports: 2,
                conn_s: 7000.0,
                errors: 0,
                publish_ms: 12.0,
                bulk_ms: None,
            }],
            control: Vec::new(),
            notes: vec!["netavark could not run: x".into()],
            build_secs: 1.0,
            wall_secs: 2.0,
        };
        let md = markdown(&r);
        assert!(md.contains("0.75×ceiling, 1.50×ipt"), "{md}");
        for svg in [ratio_chart(&r), scaling_chart(&r, "t", "u", |p| p.conn_s)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(!svg.contains("NaN"));
        }
    }
}
