//! report.json: every figure of the run (the medians and ratios too), for
//! tools that compare runs.

use serde_json::json;

use super::results::{median, unit, Results, BASELINE, CEILING};

/// The whole run as one JSON document.
pub(super) fn to_json(r: &Results) -> serde_json::Value {
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
            "setup_ms": c.setup_ms,
            "teardown_ms": c.teardown_ms,
        })).collect::<Vec<_>>(),
        "notes": r.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::{super::results::example, *};

    #[test]
    fn json_has_ratios_and_unavailable_configurations() {
        let json = to_json(&example());
        assert_eq!(json["unavailable"][0]["configuration"], "netavark");
        let ebpf = json["datapath"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["configuration"] == "ebpf" && s["metric"] == "conn_s")
            .unwrap();
        assert_eq!(ebpf["ratio_to_ceiling"], 0.75);
        assert_eq!(ebpf["ratio_to_iptables"], 1.5);
    }
}
