//! Isolation, on both datapaths (`iptables::*`, `ebpf::*`): the full
//! reachability matrix between containers of two networks, an internal
//! network, a `none` container and a container on two networks; the
//! outside reaching container addresses directly; and frames a container
//! forges (source address, source MAC), which must be dropped and counted.

use std::{net::Ipv4Addr, process::Output, thread::sleep, time::Duration};

use netctl_tests::sandbox::{nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    reachability_matrix_is_exactly_the_allowed_one,
    outside_reaches_containers_only_through_published_ports,
    forged_source_addresses_and_macs_are_dropped_and_counted,
    truncated_packets_stay_on_their_network,
);

fn nettool() -> String {
    nettool_bin().display().to_string()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on every item, at most `width` at a time; results in order.
fn parallel<T: Sync, R: Send>(items: &[T], width: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut results = Vec::with_capacity(items.len());
    for chunk in items.chunks(width) {
        let f = &f;
        results.extend(std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|item| scope.spawn(move || f(item)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect::<Vec<R>>()
        }));
    }
    results
}

/// A container as the matrix sees it: its namespace and its addresses.
struct Ctr {
    name: &'static str,
    netns: String,
    /// (network, address)
    addrs: Vec<(String, Ipv4Addr)>,
}

impl Ctr {
    fn load(sb: &Sandbox, name: &'static str) -> Ctr {
        let json = sb.inspect(name);
        let netns = json["netns"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a namespace: {json}"))
            .to_owned();
        let addrs = json["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                (
                    e["network"].as_str().unwrap().to_owned(),
                    e["ip"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        Ctr { name, netns, addrs }
    }

    fn ip_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == network)
            .map(|(_, ip)| *ip)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Ping,
}

struct Probe<'a> {
    from: &'a Ctr,
    to: &'a Ctr,
    network: String,
    ip: Ipv4Addr,
    kind: Kind,
    /// Docker's rule: the source has an interface on the target address's network.
    allowed: bool,
}

const PORT: &str = "80";

/// One attempt: did it pass, and what did it say.
fn attempt(sb: &Sandbox, probe: &Probe) -> (bool, String) {
    let ip = probe.ip.to_string();
    let out = match probe.kind {
        Kind::Tcp => sb.run_in(
            &probe.from.netns,
            &[&nettool(), "call", "tcp", &ip, PORT, "--timeout-ms", "1500"],
        ),
        Kind::Ping => sb.run_in(&probe.from.netns, &["ping", "-c1", "-W1", &ip]),
    };
    let said = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said.trim().to_owned())
}

/// Runs a probe: an allowed one may need a few tries (ARP, a busy
/// machine), a forbidden one must fail at the first and only try.
/// Returns a failure description, if any.
fn check(sb: &Sandbox, probe: &Probe) -> Option<String> {
    let what = format!(
        "{} -> {} {} ({}) {:?}",
        probe.from.name, probe.to.name, probe.ip, probe.network, probe.kind
    );
    if !probe.allowed {
        let (passed, said) = attempt(sb, probe);
        return passed.then(|| format!("{what}: passed but must not ({said})"));
    }
    let mut last = String::new();
    for _ in 0..3 {
        let (passed, said) = attempt(sb, probe);
        if passed {
            if probe.kind == Kind::Tcp {
                // Same network: no translation, the server sees the client's
                // own address on that network.
                let own = probe
                    .from
                    .ip_on(&probe.network)
                    .expect("source on the network");
                if !said.starts_with(&format!("peer={own}:")) {
                    return Some(format!("{what}: server saw {said:?}, not {own}"));
                }
            }
            return None;
        }
        last = said;
        sleep(Duration::from_millis(200));
    }
    Some(format!("{what}: must pass but failed ({last})"))
}

/// Networks `neta` (a1, a2 and ab), `netb` (b1 and ab, connected second),
/// internal `neti` (i1, i2), and `n1` with `--network none`; every container
/// serves TCP on port 80.
fn build(sb: &Sandbox) -> Vec<Ctr> {
    sb.network("neta", &["--subnet", "172.30.1.0/24"]);
    sb.network("netb", &["--subnet", "172.30.2.0/24"]);
    sb.network("neti", &["--subnet", "172.30.3.0/24", "--internal"]);
    let tool = nettool();
    let serve = [tool.as_str(), "serve", "tcp", PORT];
    for (name, network) in [
        ("a1", "neta"),
        ("a2", "neta"),
        ("b1", "netb"),
        ("i1", "neti"),
        ("i2", "neti"),
        ("ab", "neta"),
        ("n1", "none"),
    ] {
        let mut args = vec!["container", "run", name, "--network", network, "--"];
        args.extend_from_slice(&serve);
        sb.netctl_ok(&args);
    }
    sb.netctl_ok(&["network", "connect", "netb", "ab"]);
    ["a1", "a2", "b1", "i1", "i2", "ab", "n1"]
        .into_iter()
        .map(|name| Ctr::load(sb, name))
        .collect()
}

fn reachability_matrix_is_exactly_the_allowed_one(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let ctrs = build(&sb);
    let ab = ctrs.iter().find(|c| c.name == "ab").unwrap();
    assert_eq!(ab.addrs.len(), 2, "ab is on neta and netb: {:?}", ab.addrs);
    assert!(ctrs
        .iter()
        .find(|c| c.name == "n1")
        .unwrap()
        .addrs
        .is_empty());

    let mut probes = Vec::new();
    for from in &ctrs {
        for to in ctrs.iter().filter(|t| t.name != from.name) {
            for (network, ip) in &to.addrs {
                for kind in [Kind::Tcp, Kind::Ping] {
                    probes.push(Probe {
                        from,
                        to,
                        network: network.clone(),
                        ip: *ip,
                        kind,
                        allowed: from.ip_on(network).is_some(),
                    });
                }
            }
        }
    }
    let allowed = probes.iter().filter(|p| p.allowed).count();
    // 7 containers, 7 addresses: 42 (source, address) pairs, twice.
    assert_eq!(probes.len(), 84);
    // neta: a1, a2, ab reach each other (6 pairs); netb: b1 <-> ab (2);
    // neti: i1 <-> i2 (2); everything else is forbidden.
    assert_eq!(allowed, 20);
    let failures: Vec<String> = parallel(&probes, 12, |p| check(&sb, p))
        .into_iter()
        .flatten()
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} probes wrong on {datapath}:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
}

fn outside_reaches_containers_only_through_published_ports(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("neta", &["--subnet", "172.30.1.0/24"]);
    sb.network("neti", &["--subnet", "172.30.3.0/24", "--internal"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "neta",
        "-p",
        "8080:80",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&[
        "container",
        "run",
        "a1",
        "--network",
        "neta",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&[
        "container",
        "run",
        "i1",
        "--network",
        "neti",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    // The outside routes the container subnets to the host, as a neighbour
    // on the same link could.
    let out = sb.outside(&[
        "ip",
        "route",
        "add",
        "172.30.0.0/16",
        "via",
        &HOST_UPLINK_IP.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The published port answers (so the path works at all)...
    let host = HOST_UPLINK_IP.to_string();
    let mut reply = String::new();
    for _ in 0..30 {
        let out = sb.outside(&[&tool, "call", "tcp", &host, "8080"]);
        if out.status.success() {
            reply = text(&out);
            break;
        }
        sleep(Duration::from_millis(100));
    }
    assert_eq!(
        reply
            .trim()
            .strip_prefix("peer=")
            .and_then(|p| p.split(':').next()),
        Some(OUTSIDE_IP.to_string().as_str()),
        "outside -> {host}:8080 answered {reply:?}"
    );
    // ...and no container address does, published container port included.
    let targets: Vec<(String, Kind)> = ["web", "a1"]
        .into_iter()
        .map(|c| sb.ip_of(c, "neta"))
        .chain([sb.ip_of("i1", "neti")])
        .flat_map(|ip| [(ip.to_string(), Kind::Tcp), (ip.to_string(), Kind::Ping)])
        .collect();
    let leaks: Vec<String> = parallel(&targets, 6, |(ip, kind)| {
        let out = match kind {
            Kind::Tcp => sb.outside(&[&tool, "call", "tcp", ip, "80", "--timeout-ms", "1500"]),
            Kind::Ping => sb.outside(&["ping", "-c1", "-W1", ip]),
        };
        out.status
            .success()
            .then(|| format!("outside -> {ip} {kind:?}: {}", text(&out).trim()))
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    if datapath == "ebpf" {
        let stats = stats(&sb);
        assert!(
            stats["drop_unsolicited"]["packets"].as_u64().unwrap() >= 6,
            "{stats}"
        );
    }
}

fn stats(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json")
}

/// Packet counters of the host's raw-table rules, as `(rule line, packets)`.
fn raw_counters(sb: &Sandbox) -> Vec<(String, u64)> {
    let out = sb.in_host(&["iptables-save", "-c", "-t", "raw"]);
    text(&out)
        .lines()
        .filter_map(|l| {
            let (counters, rule) = l.strip_prefix('[')?.split_once("] ")?;
            let packets = counters.split(':').next()?.parse().ok()?;
            Some((rule.to_owned(), packets))
        })
        .collect()
}

fn forged_source_addresses_and_macs_are_dropped_and_counted(datapath: &str) {
    const FRAMES: u64 = 20;
    const LISTEN_MS: &str = "3000";
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    for name in ["a", "b", "c"] {
        sb.netctl_ok(&["container", "run", name, "--network", "front"]);
    }
    let a = sb.inspect("a");
    let a_ep = &a["endpoints"][0];
    let a_ip = a_ep["ip"].as_str().unwrap().to_owned();
    let a_mac = a_ep["mac"].as_str().unwrap().to_owned();
    let a_veth = a_ep["host_veth"].as_str().unwrap().to_owned();
    let a_netns = a["netns"].as_str().unwrap().to_owned();
    let b = sb.inspect("b");
    let b_ip = b["endpoints"][0]["ip"].as_str().unwrap().to_owned();
    let b_mac = b["endpoints"][0]["mac"].as_str().unwrap().to_owned();
    let b_netns = b["netns"].as_str().unwrap().to_owned();
    let c_ip = sb.ip_of("c", "front").to_string();
    let gateway_mac = netctl::model::Mac::for_ip(Ipv4Addr::new(172, 18, 0, 1)).to_string();
    let link = text(&sb.in_host(&["ip", "-br", "link", "show", "nc-front"]));
    assert!(link.contains(&gateway_mac), "bridge MAC: {link}");
    let unused_ip = "172.18.0.200";
    let forged_mac = "02:42:ac:12:00:c8";
    let outside_ip = OUTSIDE_IP.to_string();

    // (what, source MAC, destination MAC, source address, destination, port, forged)
    let cases: [(&str, &str, &str, &str, &str, u16, bool); 6] = [
        (
            "own identity to b",
            &a_mac,
            &b_mac,
            &a_ip,
            &b_ip,
            7000,
            false,
        ),
        (
            "unused address to b",
            &a_mac,
            &b_mac,
            unused_ip,
            &b_ip,
            7001,
            true,
        ),
        ("c's address to b", &a_mac, &b_mac, &c_ip, &b_ip, 7002, true),
        (
            "forged MAC to b",
            forged_mac,
            &b_mac,
            &a_ip,
            &b_ip,
            7003,
            true,
        ),
        (
            "own identity to the outside",
            &a_mac,
            &gateway_mac,
            &a_ip,
            &outside_ip,
            7004,
            false,
        ),
        (
            "unused address to the outside",
            &a_mac,
            &gateway_mac,
            unused_ip,
            &outside_ip,
            7005,
            true,
        ),
    ];
    let stats_before = (datapath == "ebpf").then(|| stats(&sb));
    let tool = nettool();
    let received: Vec<String> = std::thread::scope(|scope| {
        let listeners: Vec<_> = cases
            .iter()
            .map(|(_, _, _, _, dst, port, _)| {
                let netns = if *dst == outside_ip {
                    sb.outside_netns.clone()
                } else {
                    b_netns.clone()
                };
                let (sb, tool) = (&sb, &tool);
                scope.spawn(move || {
                    text(&sb.run_in(&netns, &[tool, "count", &port.to_string(), LISTEN_MS]))
                })
            })
            .collect();
        // Listeners bound; then every case sends from inside a.
        sleep(Duration::from_millis(500));
        for (what, src_mac, dst_mac, src, dst, port, _) in &cases {
            let out = sb.run_in(
                &a_netns,
                &[
                    &tool,
                    "rawsend",
                    "eth0",
                    src_mac,
                    dst_mac,
                    src,
                    dst,
                    &port.to_string(),
                    &FRAMES.to_string(),
                ],
            );
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        listeners.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((what, _, _, src, dst, _, forged), got) in cases.iter().zip(&received) {
        let line = got.lines().last().unwrap_or_default();
        if *forged {
            assert_eq!(line, "received=0 from=", "{what}: {got}");
        } else {
            // The outside sees a's packets with the uplink address (SNAT).
            let seen = if *dst == outside_ip {
                HOST_UPLINK_IP.to_string()
            } else {
                src.to_string()
            };
            assert_eq!(
                line,
                format!("received={FRAMES} from={seen}"),
                "{what}: {got}"
            );
        }
    }
    let forged_frames = FRAMES * cases.iter().filter(|c| c.6).count() as u64;
    match stats_before {
        Some(before) => {
            let after = stats(&sb);
            let spoofed = |s: &serde_json::Value| s["drop_spoofed"]["packets"].as_u64().unwrap();
            assert_eq!(
                spoofed(&after) - spoofed(&before),
                forged_frames,
                "drop_spoofed counts each forged frame: {after}"
            );
        }
        None => {
            let counters = raw_counters(&sb);
            let count = |rule: &str| {
                counters
                    .iter()
                    .find(|(r, _)| r == rule)
                    .map(|(_, n)| *n)
                    .unwrap_or_else(|| panic!("no rule {rule:?} in {counters:?}"))
            };
            let by_address = format!(
                "-A NETCTL-ANTISPOOF ! -s {a_ip}/32 -m physdev --physdev-in {a_veth} -j DROP"
            );
            let by_mac = format!(
                "-A NETCTL-ANTISPOOF -m physdev --physdev-in {a_veth} -m mac ! --mac-source {a_mac} -j DROP"
            );
            assert_eq!(count(&by_address), 3 * FRAMES, "{counters:?}");
            assert_eq!(count(&by_mac), FRAMES, "{counters:?}");
        }
    }
}

/// A packet whose L4 header is cut short (its IPv4 total length ends inside
/// it) has nothing to translate, but isolation holds for it like for any
/// other: it reaches its own network and nothing else.
fn truncated_packets_stay_on_their_network(datapath: &str) {
    const FRAMES: u64 = 10;
    const LISTEN_MS: &str = "3000";
    let sb = Sandbox::new(datapath);
    sb.network("neta", &["--subnet", "172.30.1.0/24"]);
    sb.network("netb", &["--subnet", "172.30.2.0/24"]);
    sb.network("neti", &["--subnet", "172.30.3.0/24", "--internal"]);
    for (name, network) in [
        ("a1", "neta"),
        ("a2", "neta"),
        ("b1", "netb"),
        ("i1", "neti"),
    ] {
        sb.netctl_ok(&["container", "run", name, "--network", network]);
    }
    let ep = |name: &str| {
        let json = sb.inspect(name);
        (
            json["netns"].as_str().unwrap().to_owned(),
            json["endpoints"][0]["ip"].as_str().unwrap().to_owned(),
            json["endpoints"][0]["mac"].as_str().unwrap().to_owned(),
        )
    };
    let (a1_ns, a1_ip, a1_mac) = ep("a1");
    let (a2_ns, a2_ip, a2_mac) = ep("a2");
    let (b1_ns, b1_ip, _) = ep("b1");
    let (i1_ns, i1_ip, i1_mac) = ep("i1");
    let gw_a = netctl::model::Mac::for_ip(Ipv4Addr::new(172, 30, 1, 1)).to_string();
    let gw_i = netctl::model::Mac::for_ip(Ipv4Addr::new(172, 30, 3, 1)).to_string();
    let outside_ip = OUTSIDE_IP.to_string();
    let tool = nettool();
    // (sender netns, source MAC, destination MAC, source, destination, truncated)
    let sends = [
        (&a1_ns, &a1_mac, &a2_mac, &a1_ip, &a2_ip, true),
        (&a1_ns, &a1_mac, &gw_a, &a1_ip, &b1_ip, true),
        (&i1_ns, &i1_mac, &gw_i, &i1_ip, &outside_ip, true),
        // Nothing to translate: it must not leave with a private address.
        (&a1_ns, &a1_mac, &gw_a, &a1_ip, &outside_ip, true),
        // Control: a whole datagram to the outside arrives (SNAT).
        (&a1_ns, &a1_mac, &gw_a, &a1_ip, &outside_ip, false),
    ];
    let seen: Vec<String> = std::thread::scope(|scope| {
        let sniffers: Vec<_> = [
            (&a2_ns, "eth0"),
            (&b1_ns, "eth0"),
            (&sb.outside_netns, "wan0"),
        ]
        .into_iter()
        .map(|(netns, iface)| {
            let (sb, tool) = (&sb, &tool);
            scope.spawn(move || text(&sb.run_in(netns, &[tool, "sniff", iface, LISTEN_MS])))
        })
        .collect();
        sleep(Duration::from_millis(500));
        for (netns, src_mac, dst_mac, src, dst, truncated) in &sends {
            let count = FRAMES.to_string();
            let mut argv = vec![
                tool.as_str(),
                "rawsend",
                "eth0",
                src_mac,
                dst_mac,
                src,
                dst,
                "9",
                &count,
            ];
            if *truncated {
                argv.push("--truncated");
            }
            let out = sb.run_in(netns, &argv);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sniffers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Frames per source address, from each sniffer's last line.
    let from = |i: usize| -> Vec<(String, u64)> {
        let line = seen[i].lines().last().unwrap_or_default();
        line.strip_prefix("from=")
            .unwrap_or_else(|| panic!("sniffer {i}: {}", seen[i]))
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (ip, n) = e.rsplit_once(':').unwrap();
                (ip.to_owned(), n.parse().unwrap())
            })
            .collect()
    };
    let count = |i: usize, ip: &str| from(i).iter().find(|(s, _)| s == ip).map_or(0, |(_, n)| *n);
    assert_eq!(count(0, &a1_ip), FRAMES, "a2 gets a1's frames: {}", seen[0]);
    assert_eq!(
        count(1, &a1_ip),
        0,
        "b1 gets nothing from another network: {}",
        seen[1]
    );
    assert_eq!(
        count(2, &HOST_UPLINK_IP.to_string()),
        FRAMES,
        "the outside gets the whole datagrams: {}",
        seen[2]
    );
    let private: Vec<(String, u64)> = from(2)
        .into_iter()
        .filter(|(ip, _)| ip.starts_with("172.30."))
        .collect();
    assert!(
        private.is_empty(),
        "container addresses reached the outside: {private:?}"
    );
}
