//! What the tests could leave behind in the ROOT namespace and on the
//! machine, read before and after a test run to find leaks. Reading only:
//! `ip` and `iptables-save` never change anything here.

use std::{
    collections::BTreeSet,
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{cmd::read, deps::mounts_of_type};

const BPF_PINS: &str = "/sys/fs/bpf/netctl";
const STATE_DIRS: &str = "/run/netctl";
const ETC_NETNS: &str = "/etc/netns";

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
}

/// Something present after the tests and not before.
#[derive(Debug, PartialEq, Eq)]
pub struct Leak {
    kind: &'static str,
    name: String,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.name)
    }
}

impl Snapshot {
    pub fn take() -> Result<Self> {
        let cgroup_root = mounts_of_type("cgroup2").into_iter().next();
        Ok(Snapshot {
            links: link_names(&read(Command::new("ip").args(["-o", "link", "show"]))?),
            namespaces: netns_names(&read(Command::new("ip").args(["netns", "list"]))?),
            netctl_rules: netctl_rules(&read(&mut Command::new("iptables-save"))?),
            pins: walk(Path::new(BPF_PINS)),
            state_dirs: subdirs(Path::new(STATE_DIRS)),
            cgroups: cgroup_root.map(|root| subdirs(&root)).unwrap_or_default(),
            etc_netns: subdirs(Path::new(ETC_NETNS)),
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "{} links, {} namespaces, {} iptables lines mentioning NETCTL, {} pins under {BPF_PINS}, \
             {} state dirs under {STATE_DIRS}",
            self.links.len(),
            self.namespaces.len(),
            self.netctl_rules.len(),
            self.pins.len(),
            self.state_dirs.len()
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
        let leaks: Vec<String> = after
            .leaks_since(&before)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(
            leaks,
            [
                "link in the root namespace: br-1",
                "root namespace iptables: -A NETCTL-X -j ACCEPT"
            ]
        );
        assert!(before.leaks_since(&before).is_empty());
    }
}
