//! report.md: the data-path table with ratios, the targets, where the
//! time goes, the scaling and the control plane, and the notes; and the
//! one-line form of a profile row that the bench prints as it goes.

use std::fmt::Write as _;

use super::results::{
    bare, grouped, median, metric_title, min_max, path_title, show, Control, Latencies, ProfileRow,
    Results, BASELINE, CEILING,
};

/// One line of progress for a control-plane run.
pub fn control_line(c: &Control) -> String {
    let part = |what: &str, ms: &[f64]| match Latencies::of(ms) {
        Some(l) => format!(
            "{what} median {:.1} ms, p99 {:.1} ms, last {:.1} ms vs first {:.1} ms",
            l.median, l.p99, l.last, l.first
        ),
        None => format!("no {what}"),
    };
    format!(
        "{} containers: {}; {}",
        c.n,
        part("setup", &c.setup_ms),
        part("teardown", &c.teardown_ms)
    )
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
        let cells: Vec<String> = configs.iter().map(|c| cell(r, c, path, metric)).collect();
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
            "Containers set up one command at a time on one network, each with one \
             published port, then removed one at a time (ms per command; last/first: \
             the last command against the first).\n"
        );
        let _ = writeln!(
            md,
            "| configuration | containers | setup median | setup p99 | setup last/first | teardown median | teardown p99 | teardown last/first |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for c in &r.control {
            let cells = |ms: &[f64]| match Latencies::of(ms) {
                Some(l) => format!(
                    "{:.1} | {:.1} | {:.2}× ({:.1} / {:.1})",
                    l.median,
                    l.p99,
                    l.last / l.first,
                    l.last,
                    l.first
                ),
                None => "– | – | –".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.config,
                c.n,
                cells(&c.setup_ms),
                cells(&c.teardown_ms)
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

/// One cell of the data-path table: the median, its range, the latency,
/// the ratios and the failed rounds; or why there is no figure.
fn cell(r: &Results, config: &str, path: &'static str, metric: &'static str) -> String {
    let Some(s) = r.sample(config, path, metric) else {
        return if r.unavailable(config) {
            "not run¹".to_owned()
        } else if r
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
        if let Some(x) = r.ratio(config, path, metric, CEILING) {
            ratios.push(format!("{x:.2}×ceil"));
        }
    }
    if config != BASELINE && config != CEILING {
        if let Some(x) = r.ratio(config, path, metric, BASELINE) {
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

#[cfg(test)]
mod tests {
    use super::{super::results::example, *};

    #[test]
    fn report_has_ratios_failures_and_notes() {
        let md = markdown(&example());
        assert!(md.contains("7,500<br>0.75×ceil, 1.50×ipt"), "{md}");
        assert!(md.contains("20,000 (45/120)"), "{md}");
        assert!(md.contains("| failed¹ | not run¹ |"), "{md}");
        assert!(
            md.contains("netavark could not run: cannot run here"),
            "{md}"
        );
        assert!(md.contains("cni published conn_s failed: refused"), "{md}");
        assert!(md.contains("ahead on all 1"), "{md}");
        assert!(
            md.contains("| ebpf | 3 | 12.0 | 30.0 | 1.20× (12.0 / 10.0) | 9.0 | 10.0 |"),
            "{md}"
        );
    }
}
