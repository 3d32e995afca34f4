//! Isolation, on both datapaths (`iptables::*`, `ebpf::*`): the full
//! reachability matrix, over TCP, UDP and ICMP, between containers of two
//! networks, an internal network, a `none` container and a container on
//! two networks, and from each to the outside and to the host's addresses;
//! the outside reaching container addresses directly; and frames a
//! container forges (source address, source MAC), which must be dropped
//! and counted. A forbidden probe counts only after a control reached the
//! same listener, must end in a timeout (a drop), and its packets must be
//! the datapath's exact drop count (sandbox/probe.rs).

use std::net::Ipv4Addr;

use netctl_tests::output::{nettool, text};
use netctl_tests::sandbox::{
    probe::{Outcome, Proto, Reason},
    Sandbox, HOST_UPLINK_IP, OUTSIDE_IP,
};

netctl_tests::on_both_datapaths!(
    reachability_matrix_is_exactly_the_allowed_one,
    outside_reaches_containers_only_through_published_ports,
    forged_source_addresses_and_macs_are_dropped_and_counted,
    truncated_packets_stay_on_their_network,
);

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

    fn internal(&self) -> bool {
        !self.addrs.is_empty() && self.addrs.iter().all(|(n, _)| n == "neti")
    }
}

const PORT: u16 = 80;
const NETWORKS: [(&str, Ipv4Addr); 3] = [
    ("neta", Ipv4Addr::new(172, 30, 1, 1)),
    ("netb", Ipv4Addr::new(172, 30, 2, 1)),
    ("neti", Ipv4Addr::new(172, 30, 3, 1)),
];

/// What a probe aims at: a container's address, the outside server, or
/// one of the host's addresses (its uplink address, a network's gateway).
#[derive(Clone, Debug)]
enum Target {
    Container(&'static str, String, Ipv4Addr),
    Outside,
    Host(Ipv4Addr),
}

impl Target {
    fn ip(&self) -> Ipv4Addr {
        match self {
            Target::Container(_, _, ip) | Target::Host(ip) => *ip,
            Target::Outside => OUTSIDE_IP,
        }
    }
}

/// How a probe must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Answer,
    /// Dropped by the datapath, counted for this reason.
    Drop(Reason),
    /// Never sent: no route (a `none` container has no interface).
    NoRoute,
}

/// Docker's matrix, and where an internal network's containers stop.
fn expect(from: &Ctr, target: &Target, datapath: &str) -> Expect {
    if from.addrs.is_empty() {
        return Expect::NoRoute;
    }
    match target {
        // Only through an interface on the target address's network.
        Target::Container(_, network, _) if from.ip_on(network).is_some() => Expect::Answer,
        Target::Container(..) => Expect::Drop(Reason::Isolated),
        Target::Outside if from.internal() => Expect::Drop(Reason::Internal),
        Target::Outside => Expect::Answer,
        // An internal network reaches the host only at its own gateway on
        // eBPF; the iptables datapath, like Docker's, filters forwarding
        // only, so the host's other addresses answer it there.
        Target::Host(ip)
            if from.internal()
                && datapath == "ebpf"
                && NETWORKS
                    .iter()
                    .all(|(n, gw)| gw != ip || from.ip_on(n).is_none()) =>
        {
            Expect::Drop(Reason::Internal)
        }
        Target::Host(_) => Expect::Answer,
    }
}

struct Probe<'a> {
    from: &'a Ctr,
    target: Target,
    proto: Proto,
    expect: Expect,
    /// Where a positive control of a forbidden probe comes from.
    control: Option<String>,
}

impl Probe<'_> {
    fn what(&self) -> String {
        format!(
            "{} -> {:?} {} ({:?})",
            self.from.name, self.target, self.proto, self.expect
        )
    }
}

/// Whom the source must look like in an answer: itself on the target's
/// network, the uplink address after SNAT, itself on the host.
fn check_answer(probe: &Probe, reply: &str) -> Option<String> {
    let ip = reply
        .strip_prefix("peer=")
        .or_else(|| reply.strip_prefix("from="))
        .and_then(|p| p.split(':').next())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let want: Vec<Ipv4Addr> = match (&probe.target, probe.proto) {
        // An echo reply comes from the address pinged.
        (target, Proto::Icmp) => vec![target.ip()],
        (Target::Container(_, network, _), _) => probe.from.ip_on(network).into_iter().collect(),
        (Target::Outside, _) => vec![HOST_UPLINK_IP],
        (Target::Host(_), _) => probe.from.addrs.iter().map(|(_, ip)| *ip).collect(),
    };
    match ip {
        Some(ip) if want.contains(&ip) => None,
        _ => Some(format!(
            "{}: answered {reply:?}, not from {want:?}",
            probe.what()
        )),
    }
}

/// Runs one probe (a forbidden one after its control). The packets a
/// dropped probe sent, or what went wrong.
fn run(sb: &Sandbox, probe: &Probe) -> Result<u64, String> {
    let ip = probe.target.ip();
    let from = &probe.from.netns;
    match probe.expect {
        Expect::Answer => {
            let reply = sb
                .answers(from, probe.proto, ip, PORT)
                .map_err(|e| format!("{}: {e}", probe.what()))?;
            check_answer(probe, &reply).map_or(Ok(0), Err)
        }
        Expect::Drop(_) => {
            let control = probe.control.as_deref().expect("a control");
            sb.forbidden(control, from, probe.proto, ip, PORT)
                .map_err(|e| format!("{}: {e}", probe.what()))
        }
        Expect::NoRoute => match sb.probe(from, probe.proto, ip, PORT, 1000) {
            p if matches!(p.outcome, Outcome::Unreachable(_)) && p.packets == 0 => Ok(0),
            p => Err(format!("{}: got {p:?}", probe.what())),
        },
    }
}

/// Networks `neta` (a1, a2 and ab), `netb` (b1 and ab, connected second),
/// internal `neti` (i1, i2), and `n1` with `--network none`. Every
/// container, the outside and each host address serve TCP and UDP on port
/// 80. The internal containers get a default route through their gateway,
/// as any of them could add: their packets then reach the datapath, which
/// must stop them (without one, "no way out" would only prove that there
/// is no route).
fn build(sb: &mut Sandbox) -> Vec<Ctr> {
    for (name, gateway) in NETWORKS {
        let subnet = format!("{gateway}/24").replace(".1/", ".0/");
        let mut extra = vec!["--subnet", &subnet];
        if name == "neti" {
            extra.push("--internal");
        }
        sb.network(name, &extra);
    }
    let tool = nettool();
    let port = PORT.to_string();
    for (name, network) in [
        ("a1", "neta"),
        ("a2", "neta"),
        ("b1", "netb"),
        ("i1", "neti"),
        ("i2", "neti"),
        ("ab", "neta"),
        ("n1", "none"),
    ] {
        let args = ["container", "run", name, "--network", network, "--"];
        sb.netctl_ok(&[&args[..], &[tool.as_str(), "serve", "tcp", port.as_str()]].concat());
    }
    sb.netctl_ok(&["network", "connect", "netb", "ab"]);
    let ctrs: Vec<Ctr> = ["a1", "a2", "b1", "i1", "i2", "ab", "n1"]
        .into_iter()
        .map(|name| Ctr::load(sb, name))
        .collect();
    for ctr in &ctrs {
        sb.spawn_in(&ctr.netns, &[&tool, "serve", "udp", &port]);
        if ctr.internal() {
            let gateway = NETWORKS[2].1.to_string();
            sb.run_in_ok(
                &ctr.netns,
                &["ip", "route", "add", "default", "via", &gateway],
            );
        }
    }
    let (host, outside) = (sb.host_netns.clone(), sb.outside_netns.clone());
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", &port]);
    sb.spawn_in(&outside, &[&tool, "serve", "udp", &port]);
    sb.spawn_in(&host, &[&tool, "serve", "tcp", &port]);
    // One UDP server per host address, so that each answers from the
    // address it was asked at.
    for ip in std::iter::once(HOST_UPLINK_IP).chain(NETWORKS.map(|(_, gw)| gw)) {
        sb.spawn_in(&host, &[&tool, "serve", "udp", &format!("{ip}:{port}")]);
    }
    ctrs
}

fn reachability_matrix_is_exactly_the_allowed_one(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    let ctrs = build(&mut sb);
    let ab = ctrs.iter().find(|c| c.name == "ab").unwrap();
    assert_eq!(ab.addrs.len(), 2, "ab is on neta and netb: {:?}", ab.addrs);
    assert!(ctrs
        .iter()
        .find(|c| c.name == "n1")
        .unwrap()
        .addrs
        .is_empty());

    let mut targets: Vec<Target> = ctrs
        .iter()
        .flat_map(|c| {
            c.addrs
                .iter()
                .map(|(n, ip)| Target::Container(c.name, n.clone(), *ip))
        })
        .collect();
    targets.push(Target::Outside);
    targets.push(Target::Host(HOST_UPLINK_IP));
    targets.extend(NETWORKS.map(|(_, gw)| Target::Host(gw)));
    let mut probes = Vec::new();
    for from in &ctrs {
        for target in &targets {
            if matches!(target, Target::Container(name, ..) if *name == from.name) {
                continue;
            }
            let expect = expect(from, target, datapath);
            // A control from a container that may reach the same listener.
            let control = ctrs
                .iter()
                .find(|c| c.name != from.name && expect_answer(c, target, datapath))
                .map(|c| c.netns.clone());
            for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                probes.push(Probe {
                    from,
                    target: target.clone(),
                    proto,
                    expect,
                    control: control.clone(),
                });
            }
        }
    }
    // 7 containers, 7 addresses: 42 (source, address) pairs; and each of
    // the 7 to the outside and to 4 host addresses; 3 protocols each.
    assert_eq!(probes.len(), (42 + 7 * 5) * 3);
    let count = |e: fn(&Expect) -> bool| probes.iter().filter(|p| e(&p.expect)).count() / 3;
    // Between containers: neta: a1, a2, ab reach each other (6 pairs);
    // netb: b1 <-> ab (2); neti: i1 <-> i2 (2); plus the 6 others to the
    // outside, and to the host (eBPF: i1 and i2 at their gateway only).
    let host_answers = if datapath == "ebpf" { 4 * 4 + 2 } else { 6 * 4 };
    assert_eq!(count(|e| *e == Expect::Answer), 10 + 4 + host_answers);
    assert_eq!(count(|e| *e == Expect::NoRoute), 12, "n1's");

    let before = sb.drop_counters();
    let results = parallel(&probes, 8, |p| run(&sb, p));
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} probes wrong on {datapath}:\n{}",
        failures.len(),
        probes.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every packet of every forbidden probe was counted, by its reason.
    let mut dropped = std::collections::BTreeMap::new();
    for (probe, result) in probes.iter().zip(&results) {
        if let (Expect::Drop(reason), Ok(packets)) = (probe.expect, result) {
            *dropped.entry(reason).or_insert(0) += packets;
        }
    }
    sb.assert_drops_since(&before, &dropped.into_iter().collect::<Vec<_>>());
}

fn expect_answer(from: &Ctr, target: &Target, datapath: &str) -> bool {
    expect(from, target, datapath) == Expect::Answer
}

fn outside_reaches_containers_only_through_published_ports(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("neta", &["--subnet", "172.30.1.0/24"]);
    sb.network("neti", &["--subnet", "172.30.3.0/24", "--internal"]);
    let tool = nettool();
    for (name, network, publish) in [
        ("web", "neta", Some("8080:80")),
        ("a1", "neta", None),
        ("i1", "neti", None),
    ] {
        let mut args = vec!["container", "run", name, "--network", network];
        args.extend(publish.iter().flat_map(|p| ["-p", p]));
        args.extend(["--", &tool, "serve", "tcp", "80"]);
        sb.netctl_ok(&args);
        let netns = sb.netns_of(name);
        sb.spawn_in(&netns, &[&tool, "serve", "udp", "80"]);
    }
    // The outside routes the container subnets to the host, as a neighbour
    // on the same link could.
    let host = HOST_UPLINK_IP.to_string();
    sb.run_in_ok(
        &sb.outside_netns,
        &["ip", "route", "add", "172.30.0.0/16", "via", &host],
    );

    // The published port answers (so the path works at all)...
    let reply = sb
        .answers(&sb.outside_netns, Proto::Tcp, HOST_UPLINK_IP, 8080)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reply
            .strip_prefix("peer=")
            .and_then(|p| p.split(':').next()),
        Some(OUTSIDE_IP.to_string().as_str()),
        "outside -> {host}:8080 answered {reply:?}"
    );
    // ...and no container address does, published container port included,
    // while each answers the host (the control just before each probe).
    let targets: Vec<(Ipv4Addr, Proto)> = [
        sb.ip_of("web", "neta"),
        sb.ip_of("a1", "neta"),
        sb.ip_of("i1", "neti"),
    ]
    .into_iter()
    .flat_map(|ip| [Proto::Tcp, Proto::Udp, Proto::Icmp].map(|proto| (ip, proto)))
    .collect();
    let before = sb.drop_counters();
    let results = parallel(&targets, 9, |(ip, proto)| {
        sb.forbidden(&sb.host_netns, &sb.outside_netns, *proto, *ip, 80)
    });
    let leaks: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
    let packets = results.iter().flatten().sum();
    sb.assert_drops_since(&before, &[(Reason::Unsolicited, packets)]);
}

fn stats(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json")
}

/// Packet counters of the host's raw-table rules, as `(rule line, packets)`.
fn raw_counters(sb: &Sandbox) -> Vec<(String, u64)> {
    sb.iptables_save_counters("raw")
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
    // Every listener bound (it said so) before a sends anything.
    let ports: Vec<String> = cases.iter().map(|c| c.5.to_string()).collect();
    let starts: Vec<(&str, Vec<&str>)> = cases
        .iter()
        .zip(&ports)
        .map(|((_, _, _, _, dst, _, _), port)| {
            let netns = if *dst == outside_ip {
                &sb.outside_netns
            } else {
                &b_netns
            };
            (
                netns.as_str(),
                vec![tool.as_str(), "count", port, LISTEN_MS],
            )
        })
        .collect();
    let listeners = sb.start_all_ready(&starts);
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
    let received: Vec<String> = listeners.into_iter().map(|l| l.finish()).collect();
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
    // Every sniffer bound (it said so) before anything is sent.
    let starts: Vec<(&str, Vec<&str>)> = [
        (&a2_ns, "eth0"),
        (&b1_ns, "eth0"),
        (&sb.outside_netns, "wan0"),
    ]
    .into_iter()
    .map(|(netns, iface)| {
        (
            netns.as_str(),
            vec![tool.as_str(), "sniff", iface, LISTEN_MS],
        )
    })
    .collect();
    let sniffers = sb.start_all_ready(&starts);
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
    let seen: Vec<String> = sniffers.into_iter().map(|s| s.finish()).collect();
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
