//! What the tests could leave behind in the ROOT namespace and on the
//! machine, read before and after a test run to find leaks. Reading only:
//! `ip`, `iptables-save`, `ip6tables-save`, `nft list` and `bpftool prog list` never change
//! anything here.
//!
//! Besides objects (links, namespaces, rules, pins, dirs), it holds the
//! processes (netctl's own programs by name, anything in a cgroup made
//! during the run), the nftables tables and chains, netctl's BPF programs
//! loaded anywhere, pinned or not, and the networking sysctls of the root
//! namespace by value: a changed value is a leak too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{cmd::read, deps::mounts_of_type};

const BPF_PINS: &str = "/sys/fs/bpf/netctl";
const STATE_DIRS: &str = "/run/netctl";
const ETC_NETNS: &str = "/etc/netns";
/// Programs a test run starts (matched on the executable's name, never on
/// the whole command line: the test runner's own mentions netctl).
const NETCTL_PROGRAMS: [&str; 3] = ["netctl", "nettool", "iperf3"];
/// How netctl's BPF programs are named (the kernel keeps 15 characters:
/// `endpoint_ingress` is listed as `endpoint_ingres`).
const NETCTL_BPF_PROGRAMS: [&str; 3] = ["endpoint_ingres", "uplink_", "sock_"];
/// Networking sysctls of the root namespace: single files, and
/// directories read whole.
const SYSCTL_FILES: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];
const SYSCTL_DIRS: [&str; 2] = ["/proc/sys/net/ipv4/conf/all", "/proc/sys/net/bridge"];

/// One kind of object and the names present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    links: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    netctl_rules: Vec<String>,
    pins: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    etc_netns: BTreeSet<String>,
    processes: BTreeMap<u32, Process>,
    /// `table FAMILY NAME` and `table FAMILY NAME chain NAME` lines.
    nft: BTreeSet<String>,
    /// netctl's BPF programs, `ID NAME`.
    bpf_programs: BTreeSet<String>,
    /// Sysctl key (dotted) -> value.
    sysctls: BTreeMap<String, String>,
}

/// A process as the leak check tells it apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    comm: String,
    /// Its command line, spaces for NULs (to tell which test left it).
    command: String,
    /// One of [`NETCTL_PROGRAMS`] by its executable's name.
    netctl_program: bool,
    /// The top-level cgroup (v2) it lives in, as a path like `cgroups`'s.
    cgroup: Option<String>,
}

/// Something present after the tests and not before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    kind: &'static str,
    name: String,
}

impl Leak {
    pub fn is_process(&self) -> bool {
        self.kind == "process"
    }
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.name)
    }
}

impl Snapshot {
    pub fn take() -> Result<Self> {
        let cgroup_root = mounts_of_type("cgroup2").into_iter().next();
        let bpftool = read(Command::new("bpftool").args(["-j", "prog", "list"]))?;
        Ok(Snapshot {
            links: link_names(&read(Command::new("ip").args(["-o", "link", "show"]))?),
            namespaces: netns_names(&read(Command::new("ip").args(["netns", "list"]))?),
            netctl_rules: [
                netctl_rules(&read(&mut Command::new("iptables-save"))?),
                // Dual-stack networks write ip6tables too.
                netctl_rules(&read(&mut Command::new("ip6tables-save"))?)
                    .into_iter()
                    .map(|l| format!("ip6 {l}"))
                    .collect(),
            ]
            .concat(),
            pins: walk(Path::new(BPF_PINS)),
            state_dirs: subdirs(Path::new(STATE_DIRS)),
            cgroups: cgroup_root.as_deref().map(subdirs).unwrap_or_default(),
            etc_netns: subdirs(Path::new(ETC_NETNS)),
            processes: processes(cgroup_root.as_deref()),
            nft: nft_tables_and_chains(&read(Command::new("nft").args(["list", "ruleset"]))?),
            bpf_programs: netctl_bpf_programs(&bpftool)?,
            sysctls: sysctls(),
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "{} links, {} namespaces, {} iptables lines mentioning NETCTL, {} pins under {BPF_PINS}, \
             {} state dirs under {STATE_DIRS}, {} netctl/nettool/iperf3 processes, \
             {} nftables tables and chains, {} netctl BPF programs, {} sysctls",
            self.links.len(),
            self.namespaces.len(),
            self.netctl_rules.len(),
            self.pins.len(),
            self.state_dirs.len(),
            self.processes.values().filter(|p| p.netctl_program).count(),
            self.nft.len(),
            self.bpf_programs.len(),
            self.sysctls.len()
        )
    }

    /// Everything in `self` that `before` did not have.
    pub fn leaks_since(&self, before: &Snapshot) -> Vec<Leak> {
        let mut leaks = Vec::new();
        let mut new = |kind: &'static str, now: &BTreeSet<String>, then: &BTreeSet<String>| {
            leaks.extend(now.difference(then).map(|name| Leak {
                kind,
                name: name.clone(),
            }));
        };
        new("link in the root namespace", &self.links, &before.links);
        new("network namespace", &self.namespaces, &before.namespaces);
        new("BPF pin", &self.pins, &before.pins);
        new("state dir", &self.state_dirs, &before.state_dirs);
        new("cgroup", &self.cgroups, &before.cgroups);
        new("/etc/netns entry", &self.etc_netns, &before.etc_netns);
        new("nftables", &self.nft, &before.nft);
        new("BPF program", &self.bpf_programs, &before.bpf_programs);
        leaks.extend(self.new_processes(before));
        leaks.extend(changed_sysctls(&before.sysctls, &self.sysctls));
        if self.netctl_rules.len() > before.netctl_rules.len() {
            let old: BTreeSet<&String> = before.netctl_rules.iter().collect();
            let mut lines: Vec<&String> = self
                .netctl_rules
                .iter()
                .filter(|l| !old.contains(l))
                .collect();
            if lines.is_empty() {
                // Same lines, more of them: duplicates.
                lines = self.netctl_rules.iter().collect();
            }
            leaks.extend(lines.into_iter().map(|line| Leak {
                kind: "root namespace iptables",
                name: line.clone(),
            }));
        }
        leaks
    }
}

impl Snapshot {
    /// Processes not there before that are netctl's programs or live in a
    /// cgroup made since (a sandbox's): never the test runner, whose
    /// executable is cargo or xtask and whose cgroup is older.
    fn new_processes(&self, before: &Snapshot) -> Vec<Leak> {
        let new_cgroups: BTreeSet<&String> = self.cgroups.difference(&before.cgroups).collect();
        self.processes
            .iter()
            .filter(|(pid, p)| before.processes.get(pid) != Some(p))
            .filter(|(_, p)| {
                p.netctl_program || p.cgroup.as_ref().is_some_and(|c| new_cgroups.contains(c))
            })
            .map(|(pid, p)| Leak {
                kind: "process",
                name: match &p.cgroup {
                    Some(cgroup) => format!("{pid} ({}) in cgroup {cgroup}", p.comm),
                    None => format!("{pid} ({})", p.comm),
                } + &if p.command.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.command)
                },
            })
            .collect()
    }
}

/// Every process, by pid.
fn processes(cgroup_root: Option<&Path>) -> BTreeMap<u32, Process> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            // A process that exited meanwhile has no comm, and a zombie
            // (exited, not yet reaped by its parent) holds nothing: skipped.
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim().to_owned();
            if is_zombie(pid) {
                return None;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let top = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| top_cgroup(&text));
            Some((
                pid,
                Process {
                    netctl_program: is_netctl_program(&comm, &cmdline),
                    command: String::from_utf8_lossy(&cmdline)
                        .replace('\0', " ")
                        .trim()
                        .to_owned(),
                    cgroup: cgroup_root
                        .zip(top)
                        .map(|(root, top)| root.join(top).display().to_string()),
                    comm,
                },
            ))
        })
        .collect()
}

/// Whether `/proc/PID/stat` says Z (the state follows the command name,
/// which is in parentheses and may hold spaces).
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name.trim_start().chars().next()
        })
        == Some('Z')
}

/// Whether a process runs one of [`NETCTL_PROGRAMS`]: its name, or the
/// file name of its argv[0] (a CNI plugin is netctl under another path).
fn is_netctl_program(comm: &str, cmdline: &[u8]) -> bool {
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let exe = argv0.rsplit('/').next().unwrap_or_default();
    NETCTL_PROGRAMS.iter().any(|p| comm == *p || exe == *p)
}

/// The top-level directory of the cgroup v2 line of /proc/PID/cgroup
/// ("0::/a/b" -> "a"); none for the root.
fn top_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let top = path.trim_start_matches('/').split('/').next()?;
    (!top.is_empty()).then(|| top.to_owned())
}

/// Tables and chains of `nft list ruleset`.
fn nft_tables_and_chains(ruleset: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut table = String::new();
    for line in ruleset.lines().map(str::trim) {
        let Some(head) = line.strip_suffix('{').map(str::trim) else {
            continue;
        };
        if head.starts_with("table ") {
            table = head.to_owned();
            found.insert(table.clone());
        } else if head.starts_with("chain ") {
            found.insert(format!("{table} {head}"));
        }
    }
    found
}

/// netctl's programs in `bpftool -j prog list`, as `ID NAME`.
fn netctl_bpf_programs(json: &str) -> Result<BTreeSet<String>> {
    let list: serde_json::Value = serde_json::from_str(json)?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|prog| {
            let name = prog["name"].as_str()?;
            NETCTL_BPF_PROGRAMS
                .iter()
                .any(|p| name.starts_with(p))
                .then(|| format!("{} {name}", prog["id"]))
        })
        .collect())
}

/// The sysctls of [`SYSCTL_FILES`] and [`SYSCTL_DIRS`] that can be read,
/// by dotted key (read from this process: the root namespace).
fn sysctls() -> BTreeMap<String, String> {
    let mut files: Vec<PathBuf> = SYSCTL_FILES.iter().map(PathBuf::from).collect();
    for dir in SYSCTL_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    files
        .into_iter()
        .filter_map(|path| {
            let value = fs::read_to_string(&path).ok()?;
            let key = path.strip_prefix("/proc/sys").ok()?.display().to_string();
            Some((
                key.trim_start_matches('/').replace('/', "."),
                value.trim().to_owned(),
            ))
        })
        .collect()
}

/// Every sysctl whose value changed, appeared or went.
fn changed_sysctls(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<Leak> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (then, now) = (before.get(key), after.get(key));
            (then != now).then(|| Leak {
                kind: "root namespace sysctl",
                name: format!(
                    "{key}: {} -> {}",
                    then.map_or("(absent)", String::as_str),
                    now.map_or("(absent)", String::as_str)
                ),
            })
        })
        .collect()
}

/// Link names from `ip -o link show` ("3: veth1@if2: <...> ..."), without
/// the "@peer" part.
fn link_names(ip_output: &str) -> BTreeSet<String> {
    ip_output
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Names from `ip netns list` ("name (id: 3)" or "name").
fn netns_names(ip_output: &str) -> BTreeSet<String> {
    ip_output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Lines of `iptables-save` mentioning NETCTL (chains, rules, jumps).
fn netctl_rules(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains("NETCTL"))
        .map(str::to_owned)
        .collect()
}

fn subdirs(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every path below `dir` (pins are files and directories).
fn walk(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            found.insert(path.display().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_names() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n\
                   7: nt1-up@if6: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\n";
        let names: Vec<String> = link_names(out).into_iter().collect();
        assert_eq!(names, ["lo", "nt1-up"]);
    }

    #[test]
    fn parses_netns_names() {
        let names: Vec<String> = netns_names("a-host (id: 3)\nb-out\n").into_iter().collect();
        assert_eq!(names, ["a-host", "b-out"]);
    }

    #[test]
    fn reports_new_objects_and_extra_rules() {
        let before = Snapshot {
            links: ["lo".to_owned()].into(),
            netctl_rules: vec![":NETCTL-X - [0:0]".into()],
            ..Snapshot::default()
        };
        let mut after = before.clone();
        after.links.insert("br-1".into());
        after.netctl_rules.push("-A NETCTL-X -j ACCEPT".into());
        assert_eq!(
            leak_lines(&after, &before),
            [
                "link in the root namespace: br-1",
                "root namespace iptables: -A NETCTL-X -j ACCEPT"
            ]
        );
        assert!(before.leaks_since(&before).is_empty());
    }

    /// The leaks of `after` since `before`, as printed.
    fn leak_lines(after: &Snapshot, before: &Snapshot) -> Vec<String> {
        after
            .leaks_since(before)
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    fn process(comm: &str, netctl_program: bool, cgroup: Option<&str>) -> Process {
        Process {
            comm: comm.into(),
            command: String::new(),
            netctl_program,
            cgroup: cgroup.map(str::to_owned),
        }
    }

    #[test]
    fn reports_netctl_processes_and_processes_of_new_cgroups_only() {
        let mut before = Snapshot::default();
        before.cgroups.insert("/cg/system.slice".into());
        before.processes.insert(1, process("init", false, None));
        before
            .processes
            .insert(50, process("cargo", false, Some("/cg/system.slice")));
        let mut after = before.clone();
        after.cgroups.insert("/cg/nt1x1".into());
        after.processes.insert(60, process("nettool", true, None));
        after
            .processes
            .insert(61, process("sleep", false, Some("/cg/nt1x1")));
        after
            .processes
            .insert(62, process("sshd", false, Some("/cg/system.slice")));
        assert_eq!(
            leak_lines(&after, &before),
            [
                "cgroup: /cg/nt1x1",
                "process: 60 (nettool)",
                "process: 61 (sleep) in cgroup /cg/nt1x1"
            ]
        );
    }

    #[test]
    fn knows_netctl_programs_by_executable_not_by_arguments() {
        assert!(is_netctl_program(
            "nettool",
            b"/x/target/debug/nettool\0serve\0"
        ));
        assert!(is_netctl_program("netctl", b""));
        // A CNI plugin: netctl linked under another directory.
        assert!(is_netctl_program("5", b"/opt/cni/bin/netctl\0"));
        assert!(!is_netctl_program(
            "cargo",
            b"cargo\0test\0-p\0netctl-tests\0--\0netctl\0"
        ));
        assert!(!is_netctl_program(
            "scenarios-6c24",
            b"/w/netctl/target/debug/deps/scenarios-6c24\0"
        ));
    }

    #[test]
    fn parses_cgroups_nft_and_bpf_programs() {
        assert_eq!(
            top_cgroup("1:cpu:/\n0::/nt1x2/inner\n"),
            Some("nt1x2".into())
        );
        assert_eq!(top_cgroup("0::/\n"), None);
        let ruleset = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward \
                       priority filter; policy accept;\n\t}\n}\ntable inet x {\n}\n";
        let found: Vec<String> = nft_tables_and_chains(ruleset).into_iter().collect();
        assert_eq!(
            found,
            [
                "table inet x",
                "table ip filter",
                "table ip filter chain FORWARD"
            ]
        );
        let progs = r#"[{"id":7,"type":"sched_cls","name":"endpoint_ingres"},
                        {"id":8,"type":"cgroup_sock_addr","name":"sock_connect4"},
                        {"id":9,"type":"tracing","name":"other"}]"#;
        let found: Vec<String> = netctl_bpf_programs(progs).unwrap().into_iter().collect();
        assert_eq!(found, ["7 endpoint_ingres", "8 sock_connect4"]);
    }

    #[test]
    fn reports_changed_sysctls() {
        let before: BTreeMap<String, String> = [
            ("net.ipv4.ip_forward".to_owned(), "0".to_owned()),
            ("net.ipv4.conf.all.rp_filter".to_owned(), "2".to_owned()),
        ]
        .into();
        let mut after = before.clone();
        assert!(changed_sysctls(&before, &after).is_empty());
        after.insert("net.ipv4.ip_forward".into(), "1".into());
        after.insert("net.bridge.bridge-nf-call-iptables".into(), "1".into());
        let leaks: Vec<String> = changed_sysctls(&before, &after)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(
            leaks,
            [
                "root namespace sysctl: net.bridge.bridge-nf-call-iptables: (absent) -> 1",
                "root namespace sysctl: net.ipv4.ip_forward: 0 -> 1"
            ]
        );
    }
}
