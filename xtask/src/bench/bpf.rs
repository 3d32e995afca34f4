//! What the eBPF datapath holds and costs, read from the outside: map
//! memory (`bpftool map show`), run counts and run time per program (the
//! kernel's BPF statistics, switched on only while an fd from
//! `BPF_ENABLE_STATS` is open) and netctl's own counters (`netctl stats`).

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::cmd::read;

/// `/sys/fs/bpf/netctl/<host id>`: where netctl pins a host's objects.
pub fn pin_dir(host_netns: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/netctl").join(host_netns)
}

fn pinned(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    Ok(out)
}

fn bpftool_json(kind: &str, path: &Path) -> Result<serde_json::Value> {
    let out = read(
        Command::new("bpftool")
            .args(["-j", kind, "show", "pinned"])
            .arg(path),
    )?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {kind} show {}", path.display()))
}

/// One pinned map as the kernel accounts it.
#[derive(Clone, Debug)]
pub struct MapMemory {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub bytes: u64,
}

/// Memory the kernel charges for each pinned map of the host.
pub fn map_memory(host_netns: &str) -> Result<Vec<MapMemory>> {
    pinned(&pin_dir(host_netns).join("maps"))?
        .into_iter()
        .map(|(name, path)| {
            let v = bpftool_json("map", &path)?;
            Ok(MapMemory {
                name,
                kind: v["type"].as_str().unwrap_or("?").to_owned(),
                max_entries: v["max_entries"].as_u64().unwrap_or(0),
                bytes: v["bytes_memlock"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no bytes_memlock for {}", path.display()))?,
            })
        })
        .collect()
}

/// Run count and total run time (ns) of each program, by name.
pub type ProgStats = BTreeMap<String, (u64, u64)>;

/// Every program attached for the host: those pinned under `progs/` and
/// those only reachable through a pinned link (the cgroup programs).
pub fn prog_stats(host_netns: &str) -> Result<ProgStats> {
    let dir = pin_dir(host_netns);
    // Named after their pin (the kernel cuts program names at 15 bytes).
    let mut programs: Vec<(String, serde_json::Value)> = pinned(&dir.join("progs"))?
        .into_iter()
        .map(|(name, path)| Ok((name, bpftool_json("prog", &path)?)))
        .collect::<Result<_>>()?;
    for (_, path) in pinned(&dir.join("links"))? {
        let link = bpftool_json("link", &path)?;
        let Some(id) = link["prog_id"].as_u64() else {
            continue;
        };
        if programs.iter().any(|(_, p)| p["id"].as_u64() == Some(id)) {
            continue;
        }
        let out =
            read(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
        let prog: serde_json::Value = serde_json::from_str(&out).context("bpftool prog show id")?;
        let name = prog["name"].as_str().unwrap_or("?").to_owned();
        programs.push((name, prog));
    }
    Ok(programs
        .into_iter()
        .map(|(name, v)| {
            // bpftool omits both fields while they are zero.
            let runs = v["run_cnt"].as_u64().unwrap_or(0);
            let ns = v["run_time_ns"].as_u64().unwrap_or(0);
            (name, (runs, ns))
        })
        .collect())
}

/// Difference of two snapshots, programs that ran only.
pub fn prog_delta(before: &ProgStats, after: &ProgStats) -> ProgStats {
    after
        .iter()
        .filter_map(|(name, &(runs, ns))| {
            let (r0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let d = (runs.saturating_sub(r0), ns.saturating_sub(n0));
            (d.0 > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// Packets per counter of `netctl --format json stats`.
pub fn counters(json: &str) -> Result<BTreeMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(json).context("netctl stats output")?;
    let map = v
        .as_object()
        .ok_or_else(|| anyhow!("netctl stats: not an object"))?;
    Ok(map
        .iter()
        .map(|(k, c)| (k.clone(), c["packets"].as_u64().unwrap_or(0)))
        .collect())
}

/// The kernel's BPF run-time statistics, on while this lives (the kernel
/// counts them for every program as long as one such fd is open).
pub struct RunTimeStats(#[allow(dead_code)] OwnedFd);

/// `BPF_ENABLE_STATS` with `BPF_STATS_RUN_TIME`.
pub fn enable_run_time_stats() -> Result<RunTimeStats> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr { struct { __u32 type; } enable_stats; ... }: type 0
    // is BPF_STATS_RUN_TIME; the rest of the attr must be zero.
    let attr = [0u64; 1];
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of a live buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("bpf(BPF_ENABLE_STATS): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd returned by the kernel, owned by nothing else.
    Ok(RunTimeStats(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_programs_that_ran() {
        let before: ProgStats = [("a".into(), (10, 1000)), ("b".into(), (5, 50))].into();
        let after: ProgStats = [
            ("a".into(), (30, 3000)),
            ("b".into(), (5, 50)),
            ("c".into(), (1, 7)),
        ]
        .into();
        let d = prog_delta(&before, &after);
        assert_eq!(d.get("a"), Some(&(20, 2000)));
        assert_eq!(d.get("b"), None);
        assert_eq!(d.get("c"), Some(&(1, 7)));
    }

    #[test]
    fn reads_netctl_counters() {
        let c = counters(r#"{"dnat":{"packets":3,"bytes":180},"pass":{"packets":0,"bytes":0}}"#)
            .unwrap();
        assert_eq!(c["dnat"], 3);
        assert!(counters("[]").is_err());
    }
}
