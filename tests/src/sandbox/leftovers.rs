//! The sandbox's leak check of netctl itself. After `netctl down`, and
//! before the sandbox removes anything by force, nothing netctl made may be
//! left: no container namespace (`<host netns>-*`; the host and outside
//! namespaces, and namespaces a test made as a CNI runtime would, are the
//! sandbox's own), no /etc/netns entry, no state dir, no process netctl
//! started (in the sandbox cgroup, recorded in its state or as its
//! resolver, or living in one of its namespaces), no pin, no BPF program on the sandbox cgroup or the
//! host's links, no link, iptables or ip6tables rule or nftables table of netctl's
//! (`table bridge netctl`) in the host namespace. Then the
//! forced cleanup removes whatever is there, and says what it had to remove.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use netctl::netns;

use super::{Sandbox, LAN, UPLINK};

/// How long processes netctl stopped may take to be gone (SIGKILL is
/// asynchronous; a loaded machine is slow to reap).
const PROCESS_GRACE: Duration = Duration::from_secs(3);
const STATE_ROOT: &str = "/run/netctl";
const PIN_ROOT: &str = "/sys/fs/bpf/netctl";

/// What is known of netctl's processes before `down`, to find them after it.
pub(super) struct Watch {
    /// Pid, start time (pids are recycled) and where it was seen: the
    /// container commands of the state, and every process living in one of
    /// netctl's container namespaces. Found by the namespace's inode while
    /// it still exists: once freed, its inode may be another sandbox's.
    processes: Vec<(u32, u64, String)>,
}

impl Watch {
    pub(super) fn before_down(sb: &Sandbox) -> Watch {
        let namespaces: Vec<(String, u64)> = sb
            .namespaces()
            .into_iter()
            .filter(|name| sb.is_netctl_namespace(name))
            .filter_map(|name| {
                let inode = fs::metadata(netns::path(&name)).ok()?.ino();
                Some((name, inode))
            })
            .collect();
        let mut processes: Vec<(u32, u64, String)> = state_processes(&sb.state_dir)
            .into_iter()
            .map(|(pid, start)| (pid, start, "a container's command in the state".into()))
            .collect();
        if let Some((pid, start)) = resolver_process(&sb.state_dir) {
            processes.push((pid, start, "the networks' resolver".into()));
        }
        if !namespaces.is_empty() {
            for pid in all_pids() {
                let (Some(inode), Some(start)) = (netns_inode(pid), running_since(pid)) else {
                    continue;
                };
                if let Some((name, _)) = namespaces.iter().find(|(_, i)| *i == inode) {
                    processes.push((pid, start, format!("in namespace {name}")));
                }
            }
        }
        let mut seen = BTreeSet::new();
        processes.retain(|(pid, _, _)| seen.insert(*pid));
        Watch { processes }
    }

    /// Everything of the sandbox netctl made and `down` left.
    pub(super) fn left_after_down(&self, sb: &Sandbox) -> Vec<String> {
        let mut left = Vec::new();
        left.extend(describe(
            "namespace",
            sb.namespaces()
                .into_iter()
                .filter(|n| sb.is_netctl_namespace(n))
                .collect(),
        ));
        left.extend(describe(
            "/etc/netns entry",
            prefixed(Path::new(netctl::hosts::ETC_NETNS), &sb.prefix),
        ));
        left.extend(describe(
            "state dir",
            prefixed(Path::new(STATE_ROOT), &sb.prefix),
        ));
        left.extend(describe("process", self.processes_after_grace(sb)));
        let pins = PathBuf::from(PIN_ROOT).join(&sb.host_netns);
        if pins.exists() {
            left.push(format!(
                "pin dir {} holding {:?}",
                pins.display(),
                sb.pins()
            ));
        }
        left.extend(describe("BPF program on the cgroup", cgroup_programs(sb)));
        if netns::exists(&sb.host_netns) {
            left.extend(describe("host link", host_links(sb)));
            left.extend(describe("host iptables line", host_rules(sb)));
            left.extend(describe("host nftables table", host_nft_tables(sb)));
            left.extend(describe("BPF program on a host link", link_programs(sb)));
        }
        left
    }

    /// Processes netctl started that are still alive, waiting
    /// [`PROCESS_GRACE`] for stopped ones to go.
    fn processes_after_grace(&self, sb: &Sandbox) -> Vec<String> {
        let deadline = Instant::now() + PROCESS_GRACE;
        loop {
            let alive = self.processes_alive(sb);
            if alive.is_empty() || Instant::now() >= deadline {
                return alive
                    .iter()
                    .map(|(pid, why)| describe_pid(*pid, why))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (pid, where it was found) of each live process netctl started.
    fn processes_alive(&self, sb: &Sandbox) -> Vec<(u32, String)> {
        let mut alive: Vec<(u32, String)> = cgroup_pids(&sb.cgroup)
            .into_iter()
            .map(|pid| (pid, "in the sandbox cgroup".to_owned()))
            .collect();
        for (pid, start, why) in &self.processes {
            if running_since(*pid) == Some(*start) {
                alive.push((*pid, why.clone()));
            }
        }
        let mut seen = BTreeSet::new();
        alive.retain(|(pid, _)| seen.insert(*pid));
        alive
    }
}

impl Sandbox {
    /// A namespace netctl names after this sandbox's host (its containers').
    fn is_netctl_namespace(&self, name: &str) -> bool {
        name.starts_with(&format!("{}-", self.host_netns))
    }

    /// Removes whatever is left of the sandbox, its own objects included,
    /// and returns what was netctl's to remove.
    pub(super) fn force_cleanup(&self, watch: &Watch) -> Vec<String> {
        let mut removed = Vec::new();
        let mut kill = |pid: u32, why: &str| {
            removed.push(format!("killed {}", describe_pid(pid, why)));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        };
        for (pid, why) in watch.processes_alive(self) {
            kill(pid, &why);
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for name in self.namespaces() {
            if netns::delete(&name).is_ok() && self.is_netctl_namespace(&name) {
                removed.push(format!("deleted namespace {name}"));
            }
        }
        for (root, kind) in [
            (netctl::hosts::ETC_NETNS, "/etc/netns entry"),
            (STATE_ROOT, "state dir"),
        ] {
            for name in prefixed(Path::new(root), &self.prefix) {
                if fs::remove_dir_all(Path::new(root).join(&name)).is_ok() {
                    removed.push(format!("removed {kind} {name}"));
                }
            }
        }
        let pins = PathBuf::from(PIN_ROOT).join(&self.host_netns);
        if fs::remove_dir_all(&pins).is_ok() {
            removed.push(format!("removed pins {}", pins.display()));
            // The parent goes with the last host, as netctl does it.
            let _ = fs::remove_dir(PIN_ROOT);
        }
        removed
    }
}

/// Each name, after what it is.
fn describe(kind: &str, names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| format!("{kind} {n}")).collect()
}

/// Names in `dir` that belong to the sandbox `prefix` (`<prefix>-...`).
fn prefixed(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Pid and start time of each container command recorded in a state dir.
fn state_processes(state_dir: &Path) -> Vec<(u32, u64)> {
    let Ok(text) = fs::read_to_string(state_dir.join("state.json")) else {
        return Vec::new();
    };
    let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    state["containers"]
        .as_object()
        .into_iter()
        .flat_map(|containers| containers.values())
        .filter_map(|ctr| {
            let process = &ctr["process"];
            Some((
                u32::try_from(process["pid"].as_u64()?).ok()?,
                process["start_time"].as_u64()?,
            ))
        })
        .collect()
}

/// Pid and start time of the resolver netctl records in a state dir.
fn resolver_process(state_dir: &Path) -> Option<(u32, u64)> {
    let text = fs::read_to_string(state_dir.join("resolver.pid")).ok()?;
    let process: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        u32::try_from(process["pid"].as_u64()?).ok()?,
        process["start_time"].as_u64()?,
    ))
}

fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of a process's network namespace (none for a zombie, or a
/// process gone).
fn netns_inode(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Start time of a live (not zombie) process.
fn running_since(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces: the fields after it follow ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    if fields.first()? == &"Z" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn describe_pid(pid: u32, why: &str) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("{pid} ({}) {why}", comm.trim())
}

/// Links of the host namespace other than the sandbox's own (lo, uplink,
/// the LAN interface of `add_lan`).
fn host_links(sb: &Sandbox) -> Vec<String> {
    sb.host_links()
        .into_iter()
        .filter(|l| l != "lo" && l != UPLINK && l != LAN)
        .collect()
}

/// netctl's chains and any rule at all in the host namespace, iptables' and ip6tables' (the tests
/// add none that outlives them).
fn host_rules(sb: &Sandbox) -> Vec<String> {
    let v4 = sb.iptables_save();
    let v6 = sb.ip6tables_save();
    let rules = |text: &str, family: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("NETCTL") || l.starts_with("-A"))
            .map(|l| format!("{family}{l}"))
            .collect()
    };
    let mut found = rules(&v4, "");
    found.extend(rules(&v6, "ip6tables: "));
    found
}

/// nftables tables named like netctl's (its ARP anti-spoofing table).
fn host_nft_tables(sb: &Sandbox) -> Vec<String> {
    let table = netctl::datapath::iptables::ARP_TABLE;
    sb.run_in_ok(&sb.host_netns, &["nft", "list", "tables"])
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(table))
        .map(str::to_owned)
        .collect()
}

/// `bpftool -j` output read as JSON ("" is "nothing"); panics unless it
/// exits 0.
fn bpftool_json(out: std::process::Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bpftool {what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool {what}: {e}: {text}"))
}

fn program_names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} ({})",
                p["name"].as_str().unwrap_or("?"),
                p["attach_type"]
                    .as_str()
                    .or(p["kind"].as_str())
                    .unwrap_or("")
            )
        })
        .collect()
}

/// Programs attached to the sandbox cgroup (the sock_* programs).
fn cgroup_programs(sb: &Sandbox) -> Vec<String> {
    if !sb.cgroup.exists() {
        return Vec::new();
    }
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(&sb.cgroup)
        .output()
        .expect("bpftool");
    program_names(&bpftool_json(out, "cgroup show"))
}

/// TC and XDP programs on the host namespace's links.
fn link_programs(sb: &Sandbox) -> Vec<String> {
    let out = sb.in_host(&["bpftool", "-j", "net", "show"]);
    let json = bpftool_json(out, "net show");
    json.as_array()
        .into_iter()
        .flatten()
        .flat_map(|hooks| ["tc", "xdp"].map(|hook| program_names(&hooks[hook])))
        .flatten()
        .collect()
}
