//! What netctl leaves on the host is for root only, and it opens no port of
//! its own, on both datapaths (`iptables::*`, `ebpf::*`): the state dir is
//! 0700 and every file in it (state, lock, container logs) 0600; the eBPF
//! pins and their directories are closed to group and others; and nothing
//! in the host namespace listens on a TCP or UDP port that was not
//! published (netctl has no userland proxy: published ports do not listen
//! either), but the networks' resolver on port 53 of each user-defined
//! network's gateway, and there only.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use netctl_tests::sandbox::{nettool_bin, Sandbox};

netctl_tests::on_both_datapaths!(files_and_pins_are_root_only_and_nothing_unpublished_listens);

/// Every path under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut all = vec![(
        dir.to_owned(),
        meta.permissions().mode() & 0o7777,
        meta.is_dir(),
    )];
    if meta.is_dir() {
        for entry in fs::read_dir(dir).expect("read dir") {
            all.extend(modes(&entry.expect("entry").path()));
        }
    }
    all
}

/// Local addresses of the host namespace's sockets listening (TCP) or
/// bound (UDP) on port 53.
fn dns_listeners(sb: &Sandbox) -> BTreeSet<(String, std::net::Ipv4Addr)> {
    let mut found = BTreeSet::new();
    for proto in ["tcp", "udp"] {
        let out = sb.in_host(&["cat", &format!("/proc/net/{proto}")]);
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            if port != "0035" || (proto == "tcp" && *state != "0A") {
                continue;
            }
            // The address as the kernel prints a __be32: native-endian hex.
            let addr = u32::from_str_radix(addr, 16).expect("hex address");
            found.insert((proto.to_owned(), addr.to_ne_bytes().into()));
        }
    }
    found
}

/// Local ports of the sockets listening (TCP) or bound (UDP) in the host
/// namespace, read from /proc/net by a process started in it.
fn host_listeners(sb: &Sandbox) -> BTreeSet<(String, u16)> {
    let mut found = BTreeSet::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let out = sb.in_host(&["cat", &format!("/proc/net/{proto}")]);
        assert!(out.status.success(), "/proc/net/{proto}");
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            // TCP: LISTEN (0A) only; UDP: any bound socket (07, unconnected).
            let listening = if proto.starts_with("tcp") {
                *state == "0A"
            } else {
                true
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (true, Some(port)) = (listening, port) {
                found.insert((proto.trim_end_matches('6').to_owned(), port));
            }
        }
    }
    found
}

fn files_and_pins_are_root_only_and_nothing_unpublished_listens(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("vault", &["--subnet", "172.22.0.0/24", "--internal"]);
    let tool = nettool_bin().display().to_string();
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&[
        "container",
        "run",
        "db",
        "--network",
        "vault",
        "--",
        &tool,
        "serve",
        "udp",
        "53",
    ]);
    sb.netctl_ok(&[
        "container",
        "run",
        "idle",
        "--network",
        "front",
        "-P",
        "--expose",
        "90",
    ]);
    // The state dir: 0700; every file in it: 0600.
    let state = modes(&sb.state_dir);
    assert!(state.len() >= 3, "state, lock, logs: {state:?}");
    for (path, mode, is_dir) in &state {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    assert!(
        state.iter().any(|(p, _, _)| p.ends_with("state.json")),
        "{state:?}"
    );

    // Pins: nothing for group or others, at any level of our directory.
    let pins = PathBuf::from("/sys/fs/bpf/netctl").join(&sb.host_netns);
    if datapath == "ebpf" {
        let all = modes(&pins);
        assert!(
            all.iter().filter(|(_, _, d)| !d).count() >= 10,
            "maps, programs, links: {all:?}"
        );
        for (path, mode, _) in &all {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    } else {
        assert!(!pins.exists(), "iptables mode pins nothing");
    }

    // Listening sockets of the host namespace: only published ports may be
    // there (and with no proxy, none is).
    // The resolver's port 53 is checked below, address by address.
    let published: BTreeSet<(String, u16)> = [
        ("tcp", 8080),
        ("udp", 5353),
        ("tcp", 20000),
        ("tcp", 53),
        ("udp", 53),
    ]
    .into_iter()
    .map(|(p, n)| (p.to_owned(), n))
    .collect();
    assert_eq!(
        sb.netctl_ok(&["port", "idle"]).trim(),
        "90/tcp -> 0.0.0.0:20000"
    );
    let listening = host_listeners(&sb);
    let unpublished: Vec<_> = listening.difference(&published).collect();
    assert!(
        unpublished.is_empty(),
        "the host listens on unpublished ports: {unpublished:?}"
    );
    // Port 53: the resolver, on the two gateways only (no wildcard).
    let gateways: BTreeSet<(String, std::net::Ipv4Addr)> = ["tcp", "udp"]
        .into_iter()
        .flat_map(|p| [[172, 18, 0, 1], [172, 22, 0, 1]].map(|a| (p.to_owned(), a.into())))
        .collect();
    assert_eq!(dns_listeners(&sb), gateways);
    // The check does see listeners: web's server, read the same way in
    // its own namespace (it may still be starting).
    let web_netns = sb.inspect("web")["netns"].as_str().unwrap().to_owned();
    let listens = (0..30).any(|_| {
        let out = sb.run_in(&web_netns, &["cat", "/proc/net/tcp"]);
        let seen = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(":0050 ") && l.split_whitespace().nth(3) == Some("0A"));
        if !seen {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        seen
    });
    assert!(listens, "web listens on 80 in its namespace");
}
