//! Everything netctl could have changed on a sandbox's host, as sorted
//! tagged lines to compare: the state's objects, links, namespaces, rules
//! (iptables, and netctl's nftables table),
//! pins, the eBPF maps' entries (CONNTRACK by keys), the processes netctl
//! started, hosts files and command logs. The transaction tests compare a
//! host with itself before a command, or with a twin sandbox's.

use std::{net::Ipv4Addr, path::Path, process::Command};

use serde_json::{json, Value};

use crate::Sandbox;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entries of a pinned eBPF map, as `key` and `value` JSON of
/// `bpftool -j`, sorted (none when the map is not pinned).
pub fn map_entries(sb: &Sandbox, map: &str) -> Vec<(String, String)> {
    let path = sb.pin_path(&format!("maps/{map}"));
    if !Path::new(&path).exists() {
        return Vec::new();
    }
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &path])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {path}: {}",
        text(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let mut entries: Vec<(String, String)> = dump
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["key"].to_string(), e["value"].to_string()))
        .collect();
    entries.sort();
    entries
}

/// A listing with the times and pids of the moment left out.
fn steady_json(text: &str) -> String {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for key in ["created", "pid", "start_time"] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(text).expect("json");
    strip(&mut value);
    value.to_string()
}

/// The processes netctl started for this host (their output goes to a log
/// in its state dir, deleted or not) and those in its cgroup.
fn processes(sb: &Sandbox) -> Vec<String> {
    let state_dir = sb.state_dir.display().to_string();
    let in_cgroup: Vec<String> = std::fs::read_to_string(sb.cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let output = std::fs::read_link(entry.path().join("fd/1"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let ours = output.starts_with(&state_dir);
        if !ours && !in_cgroup.contains(&pid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = text(&cmdline).replace('\0', " ");
        found.push(format!("process: {} > {output}", cmdline.trim_end()));
    }
    found.sort();
    found
}

/// netctl's nftables table (the iptables datapath's ARP anti-spoofing),
/// without counters: its chain and rules, one line each.
fn nft_lines(sb: &Sandbox) -> Vec<String> {
    let table = netctl::datapath::iptables::ARP_TABLE;
    let tables = sb.run_in_ok(&sb.host_netns, &["nft", "list", "tables", "bridge"]);
    if !tables
        .lines()
        .any(|l| l.trim() == format!("table bridge {table}"))
    {
        return Vec::new();
    }
    sb.run_in_ok(
        &sb.host_netns,
        &["nft", "-s", "list", "table", "bridge", table],
    )
    .lines()
    .map(|l| format!("nft: {}", l.trim()))
    .collect()
}

/// Everything netctl could have changed, as tagged lines: objects, links,
/// namespaces, rules, pins, the eBPF maps' entries (CONNTRACK by keys),
/// processes, hosts files and command logs.
pub fn snapshot(sb: &Sandbox) -> Vec<String> {
    let mut lines = vec![
        format!(
            "networks: {}",
            steady_json(&sb.netctl_ok(&["--format", "json", "network", "ls"]))
        ),
        format!(
            "containers: {}",
            steady_json(&sb.netctl_ok(&["--format", "json", "container", "ls"]))
        ),
    ];
    lines.extend(sb.host_links().into_iter().map(|l| format!("link: {l}")));
    lines.extend(sb.namespaces().into_iter().map(|n| format!("netns: {n}")));
    // Rules and our chains (a table iptables-save merely loaded, with its
    // empty built-in chains, is not a change).
    let rules = sb.in_host(&["iptables-save"]);
    assert!(
        rules.status.success(),
        "iptables-save: {}",
        text(&rules.stderr)
    );
    lines.extend(
        text(&rules.stdout)
            .lines()
            .filter(|l| l.starts_with("-A") || l.contains("NETCTL"))
            .map(|l| format!("rule: {l}")),
    );
    lines.extend(nft_lines(sb));
    lines.extend(sb.pins().into_iter().map(|p| format!("pin: {p}")));
    for map in [
        "ENDPOINTS",
        "NETWORKS",
        "NETWORK_PREFIXES",
        "PORTMAP",
        "CONFIG",
    ] {
        for (key, value) in map_entries(sb, map) {
            lines.push(format!("map {map}: {key} value {value}"));
        }
    }
    for (key, _) in map_entries(sb, "CONNTRACK") {
        lines.push(format!("map CONNTRACK: {key}"));
    }
    lines.extend(processes(sb));
    if let Ok(dir) = std::fs::read_dir(netctl::hosts::ETC_NETNS) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&sb.prefix) {
                let hosts = std::fs::read_to_string(entry.path().join("hosts")).unwrap_or_default();
                lines.push(format!("hosts {name}: {hosts:?}"));
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(&sb.state_dir) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                lines.push(format!("log: {name}"));
            }
        }
    }
    lines.sort();
    lines
}

/// A snapshot as a twin sandbox's would read: the sandbox's prefix and its
/// host namespace's cookie left out (in CONFIG, bytes 16..24, after 4
/// bytes of padding that hold whatever netctl's stack did); without
/// `map_values`, map values too (a re-made veth has a new ifindex).
pub fn as_twin(lines: &[String], sb: &Sandbox, map_values: bool) -> Vec<String> {
    let mut lines: Vec<String> = lines
        .iter()
        .map(|l| l.replace(&sb.prefix, "SANDBOX"))
        .map(|l| match l.strip_prefix("map CONFIG: ") {
            Some(entry) => {
                let (key, value) = entry.split_once(" value ").expect("key and value");
                let mut bytes: Vec<Value> = serde_json::from_str(value).expect("bytes");
                bytes[12..24].fill(json!("cookie"));
                format!("map CONFIG: {key} value {}", Value::from(bytes))
            }
            None => l,
        })
        .map(|l| match map_values || !l.starts_with("map ") {
            true => l,
            false => l.split(" value ").next().unwrap_or_default().to_owned(),
        })
        .collect();
    lines.sort();
    lines
}

/// Asserts two snapshots are the same, naming the lines that differ.
pub fn assert_same(got: &[String], wanted: &[String], what: &str) {
    let missing: Vec<&String> = wanted.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<&String> = got.iter().filter(|l| !wanted.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == wanted.len(),
        "{what}\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}

/// Flows CONNTRACK holds for an address of one of the host's networks that
/// no endpoint has (left by a removal: `doctor` does not look at flows).
pub fn stale_flows(sb: &Sandbox) -> Vec<String> {
    let json = |args: &[&str]| -> Value {
        serde_json::from_str(&sb.netctl_ok(&[&["--format", "json"], args].concat())).expect("json")
    };
    // (network address, mask) of each subnet.
    let subnets: Vec<(u32, u32)> = json(&["network", "ls"])
        .as_array()
        .expect("networks")
        .iter()
        .filter_map(|n| {
            let (addr, len) = n["subnet"].as_str()?.split_once('/')?;
            let mask = u32::MAX
                .checked_shl(32 - len.parse::<u32>().ok()?)
                .unwrap_or(0);
            Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), mask))
        })
        .collect();
    let endpoints: Vec<Ipv4Addr> = json(&["container", "ls"])
        .as_array()
        .expect("containers")
        .iter()
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["ip"].as_str()?.parse().ok())
        .collect();
    let mut stale = Vec::new();
    for (key, _) in map_entries(sb, "CONNTRACK") {
        let bytes: Vec<u8> = serde_json::from_str::<Vec<String>>(&key)
            .expect("key bytes")
            .iter()
            .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).expect("hex byte"))
            .collect();
        // CtKey: saddr, daddr (network order) first.
        for addr in [&bytes[0..4], &bytes[4..8]] {
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            let inside = |(net, mask): &(u32, u32)| u32::from(ip) & mask == *net;
            if subnets.iter().any(inside) && !endpoints.contains(&ip) {
                stale.push(format!("{ip} in {key}"));
            }
        }
    }
    stale
}
