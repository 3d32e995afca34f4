//! Every seed scenario and every command, written once and run against each
//! datapath (`iptables::*`, `ebpf::*`). Each test builds its own sandbox,
//! removed even when the test fails.

use std::{net::Ipv4Addr, process::Output, thread::sleep, time::Duration};

use netctl_tests::sandbox::{call_until_answer, nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    ip_allocation_and_reach_by_ip_and_name,
    egress_is_snatted_to_the_uplink_address,
    published_port_from_outside_keeps_the_source,
    published_udp_port_and_ranges,
    host_reaches_published_ports_on_its_address_and_loopback,
    hairpin_from_a_container_to_a_published_port,
    networks_are_isolated_until_connected,
    internal_network_has_no_way_out,
    host_none_and_container_modes,
    default_bridge_network_has_no_names,
    network_lifecycle,
    rm_and_down_remove_exactly_what_was_added,
    bad_input_changes_nothing,
    streams_survive_netctl_killed_mid_command,
    global_options_state_dir_and_uplink,
);

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nettool() -> String {
    nettool_bin().display().to_string()
}

/// Peer address a `nettool serve` reported.
fn peer_ip(reply: &str) -> Ipv4Addr {
    let addr = reply
        .trim()
        .strip_prefix("peer=")
        .unwrap_or_else(|| panic!("reply {reply:?}"));
    addr.rsplit_once(':')
        .and_then(|(ip, _)| ip.parse().ok())
        .unwrap_or_else(|| panic!("reply {reply:?}"))
}

fn pings(sb: &Sandbox, from: &str, to: &str) -> bool {
    sb.exec(from, &["ping", "-c1", "-W1", to]).status.success()
}

/// A network `front` with containers `web` (serving tcp/80, published on
/// 8080) and `a`.
fn front_with_web(sb: &Sandbox) {
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
}

fn ip_allocation_and_reach_by_ip_and_name(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    for name in ["a", "b", "c"] {
        sb.netctl_ok(&["container", "run", name, "--network", "front"]);
    }
    assert_eq!(sb.ip_of("a", "front"), Ipv4Addr::new(172, 18, 0, 2));
    assert_eq!(sb.ip_of("b", "front"), Ipv4Addr::new(172, 18, 0, 3));
    assert_eq!(sb.ip_of("c", "front"), Ipv4Addr::new(172, 18, 0, 4));
    assert_eq!(sb.inspect("a")["endpoints"][0]["mac"], "02:42:ac:12:00:02");
    // A requested address; the freed one is reused after rm.
    sb.netctl_ok(&[
        "container",
        "run",
        "d",
        "--network",
        "front",
        "--ip",
        "172.18.0.77",
    ]);
    assert_eq!(sb.ip_of("d", "front"), Ipv4Addr::new(172, 18, 0, 77));
    sb.netctl_ok(&["container", "rm", "b"]);
    sb.netctl_ok(&["container", "run", "e", "--network", "front"]);
    assert_eq!(sb.ip_of("e", "front"), Ipv4Addr::new(172, 18, 0, 3));

    assert!(pings(&sb, "a", "172.18.0.4"), "a reaches c by IP");
    assert!(
        pings(&sb, "a", "c"),
        "a reaches c by name through netctl exec"
    );
    assert!(pings(&sb, "c", "e"), "names follow run and rm");
    assert!(
        !pings(&sb, "a", "b"),
        "b was removed: its name no longer resolves"
    );
    // The gateway (the bridge address) answers too.
    assert!(pings(&sb, "a", "172.18.0.1"));
    // Names also resolve under `ip netns exec`, which binds /etc/netns/NS/hosts.
    let netns = sb.inspect("a")["netns"].as_str().unwrap().to_owned();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, "getent", "hosts", "c"])
        .output()
        .unwrap();
    assert!(
        text(&out).starts_with("172.18.0.4"),
        "ip netns exec resolves c: {}",
        text(&out)
    );
}

fn egress_is_snatted_to_the_uplink_address(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&nettool(), "serve", "tcp", "9000"]);
    sb.spawn_in(&outside, &[&nettool(), "serve", "udp", "9001"]);
    let server = OUTSIDE_IP.to_string();
    let reply = call_until_answer(|| sb.exec("a", &[&nettool(), "call", "tcp", &server, "9000"]));
    assert_eq!(
        peer_ip(&reply),
        HOST_UPLINK_IP,
        "TCP leaves with the uplink address"
    );
    let reply = call_until_answer(|| sb.exec("a", &[&nettool(), "call", "udp", &server, "9001"]));
    assert_eq!(
        peer_ip(&reply),
        HOST_UPLINK_IP,
        "UDP leaves with the uplink address"
    );
    assert!(pings(&sb, "a", &server), "ICMP echo through SNAT");
    if datapath == "ebpf" {
        assert_no_rules(&sb);
        let flows = sb.netctl_ok(&["conntrack", "ls"]);
        assert!(
            flows
                .lines()
                .any(|l| l.contains("snat") && l.contains("172.18.0.2:")),
            "{flows}"
        );
        assert!(flows.lines().any(|l| l.starts_with("icmp")), "{flows}");
    }
}

fn published_port_from_outside_keeps_the_source(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_web(&sb);
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&nettool(), "call", "tcp", &host, "8080"]));
    assert_eq!(
        peer_ip(&reply),
        OUTSIDE_IP,
        "the container sees the client's own address"
    );
    assert_eq!(
        sb.netctl_ok(&["port", "web"]).trim(),
        "80/tcp -> 0.0.0.0:8080"
    );
    // Unpublished ports are not reachable.
    assert!(!sb
        .outside(&[&nettool(), "call", "tcp", &host, "8081"])
        .status
        .success());
    if datapath == "ebpf" {
        assert_no_rules(&sb);
        // The flow is in the eBPF conntrack table, both directions, and counted.
        let flows: serde_json::Value =
            serde_json::from_str(&sb.netctl_ok(&["--format", "json", "conntrack", "ls"])).unwrap();
        let flows = flows.as_array().unwrap();
        assert!(
            flows.iter().any(|f| f["kind"] == "dnat"
                && f["translated_dst"] == "172.18.0.2:80"
                && f["src"].as_str().unwrap().starts_with("198.51.100.2:")),
            "{flows:?}"
        );
        let stats: serde_json::Value =
            serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).unwrap();
        assert!(stats["dnat"]["packets"].as_u64().unwrap() > 0, "{stats}");
        assert!(
            stats["redirect_peer"]["packets"].as_u64().unwrap() > 0,
            "{stats}"
        );
    }
}

/// In ebpf mode the host namespace has no netctl chains and no nat or
/// filter rules at all.
fn assert_no_rules(sb: &Sandbox) {
    let rules = sb.iptables_save();
    assert!(!rules.contains("NETCTL"), "{rules}");
    assert!(
        !rules.lines().any(|l| l.starts_with("-A")),
        "rules in ebpf mode:\n{rules}"
    );
    let nft = sb.in_host(&["nft", "list", "ruleset"]);
    let nft = String::from_utf8_lossy(&nft.stdout);
    assert!(
        nft.trim().is_empty(),
        "nftables ruleset in ebpf mode:\n{nft}"
    );
}

fn published_udp_port_and_ranges(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "dns",
        "--network",
        "front",
        "-p",
        "5353:53/udp",
        "--",
        &tool,
        "serve",
        "udp",
        "53",
    ]);
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&nettool(), "call", "udp", &host, "5353"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP);

    sb.netctl_ok(&[
        "container",
        "run",
        "multi",
        "--network",
        "front",
        "-p",
        "9000-9001:80-81",
        "-p",
        "90",
        "--",
        &tool,
        "serve",
        "tcp",
        "81",
    ]);
    let ports = sb.netctl_ok(&["port", "multi"]);
    let lines: Vec<&str> = ports.lines().collect();
    assert_eq!(
        lines,
        [
            "80/tcp -> 0.0.0.0:9000",
            "81/tcp -> 0.0.0.0:9001",
            "90/tcp -> 0.0.0.0:32768"
        ]
    );
    let reply = call_until_answer(|| sb.outside(&[&nettool(), "call", "tcp", &host, "9001"]));
    assert_eq!(
        peer_ip(&reply),
        OUTSIDE_IP,
        "second port of the range reaches container port 81"
    );

    // -P publishes every --expose'd port on the next free ephemeral port.
    sb.netctl_ok(&[
        "container",
        "run",
        "auto",
        "--network",
        "front",
        "-P",
        "--expose",
        "7000",
        "--expose",
        "7001/udp",
    ]);
    let ports = sb.netctl_ok(&["port", "auto"]);
    assert_eq!(
        ports.lines().collect::<Vec<_>>(),
        ["7000/tcp -> 0.0.0.0:32769", "7001/udp -> 0.0.0.0:32768"]
    );
}

fn host_reaches_published_ports_on_its_address_and_loopback(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_web(&sb);
    for target in [HOST_UPLINK_IP.to_string(), "127.0.0.1".to_string()] {
        let reply = call_until_answer(|| {
            sb.netctl(&[
                "exec",
                "--host",
                "--",
                &nettool(),
                "call",
                "tcp",
                &target,
                "8080",
            ])
        });
        assert!(
            reply.starts_with("peer="),
            "host → {target}:8080 answered {reply:?}"
        );
    }
    // Published on 127.0.0.1 only: the host reaches it, the outside does not.
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "local",
        "--network",
        "front",
        "-p",
        "127.0.0.1:8181:80",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    let reply = call_until_answer(|| {
        sb.netctl(&[
            "exec",
            "--host",
            "--",
            &nettool(),
            "call",
            "tcp",
            "127.0.0.1",
            "8181",
        ])
    });
    assert!(reply.starts_with("peer="), "{reply}");
    let host = HOST_UPLINK_IP.to_string();
    assert!(!sb
        .outside(&[&nettool(), "call", "tcp", &host, "8181"])
        .status
        .success());
}

fn hairpin_from_a_container_to_a_published_port(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_web(&sb);
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.exec("a", &[&nettool(), "call", "tcp", &host, "8080"]));
    assert!(
        reply.starts_with("peer="),
        "a → host:8080 → web answered {reply:?}"
    );
    // web reaching its own published port through the host.
    let reply = call_until_answer(|| sb.exec("web", &[&nettool(), "call", "tcp", &host, "8080"]));
    assert!(reply.starts_with("peer="));
}

fn networks_are_isolated_until_connected(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("red", &["--subnet", "172.20.0.0/24"]);
    sb.network("blue", &["--subnet", "172.21.0.0/24"]);
    sb.netctl_ok(&["container", "run", "r", "--network", "red"]);
    sb.netctl_ok(&["container", "run", "b", "--network", "blue"]);
    assert!(!pings(&sb, "r", "172.21.0.2"), "red cannot reach blue");
    assert!(!pings(&sb, "b", "172.20.0.2"), "blue cannot reach red");
    assert!(!pings(&sb, "r", "b"), "no name across networks");

    sb.netctl_ok(&["network", "connect", "red", "b"]);
    let b_red = sb.ip_of("b", "red");
    assert_eq!(b_red, Ipv4Addr::new(172, 20, 0, 3));
    assert_eq!(sb.inspect("b")["endpoints"][1]["ifname"], "eth1");
    assert!(
        pings(&sb, "r", "b"),
        "connected: r reaches b by name on red"
    );
    assert!(pings(&sb, "b", "172.20.0.2"));

    sb.netctl_ok(&["network", "disconnect", "red", "b"]);
    assert!(!pings(&sb, "r", "b"), "disconnected: the name is gone");
    assert!(!pings(&sb, "r", &b_red.to_string()));
    assert!(pings(&sb, "b", "172.21.0.1"), "b still on blue");
    // Its default route came back through blue.
    let out = sb.exec("b", &["ip", "route", "show", "default"]);
    assert!(
        text(&out).contains("via 172.21.0.1"),
        "default route: {}",
        text(&out)
    );
}

fn internal_network_has_no_way_out(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("vault", &["--subnet", "172.22.0.0/24", "--internal"]);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "x", "--network", "vault"]);
    sb.netctl_ok(&["container", "run", "y", "--network", "vault"]);
    sb.netctl_ok(&["container", "run", "f", "--network", "front"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&nettool(), "serve", "tcp", "9000"]);
    assert!(pings(&sb, "x", "y"), "peers on an internal network talk");
    assert!(!pings(&sb, "x", &OUTSIDE_IP.to_string()), "no way out");
    assert!(!sb
        .exec(
            "x",
            &[&nettool(), "call", "tcp", &OUTSIDE_IP.to_string(), "9000"]
        )
        .status
        .success());
    assert!(
        !pings(&sb, "f", "172.22.0.2"),
        "no way in from another network"
    );
    let (code, err) = sb.netctl_err(&[
        "container",
        "run",
        "z",
        "--network",
        "vault",
        "-p",
        "8080:80",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("internal"), "{err}");
}

fn host_none_and_container_modes(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_web(&sb);
    // host: the host's own namespace, uplink included.
    sb.netctl_ok(&["container", "run", "h", "--network", "host"]);
    let links = text(&sb.exec("h", &["ip", "-o", "link", "show"]));
    assert!(
        links.contains("uplink0"),
        "host mode sees the uplink: {links}"
    );
    // none: only lo.
    sb.netctl_ok(&["container", "run", "n", "--network", "none"]);
    let links = text(&sb.exec("n", &["ip", "-o", "link", "show"]));
    assert_eq!(links.lines().count(), 1, "none mode has only lo: {links}");
    assert!(links.contains("lo:"));
    // container:web shares web's namespace: same address, and web's server on localhost.
    sb.netctl_ok(&["container", "run", "side", "--network", "container:web"]);
    let addrs = text(&sb.exec("side", &["ip", "-o", "-4", "addr", "show", "eth0"]));
    assert!(
        addrs.contains(&sb.ip_of("web", "front").to_string()),
        "{addrs}"
    );
    let reply =
        call_until_answer(|| sb.exec("side", &[&nettool(), "call", "tcp", "127.0.0.1", "80"]));
    assert!(reply.starts_with("peer=127.0.0.1"));
    let (code, err) = sb.netctl_err(&["container", "rm", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("side"), "{err}");
    sb.netctl_ok(&["container", "rm", "side", "web", "h", "n"]);
}

fn default_bridge_network_has_no_names(datapath: &str) {
    let sb = Sandbox::new(datapath);
    // The first network fixes the host's datapath; `bridge` then follows it.
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a"]);
    sb.netctl_ok(&["container", "run", "b"]);
    assert_eq!(sb.ip_of("a", "bridge"), Ipv4Addr::new(172, 17, 0, 2));
    assert_eq!(sb.ip_of("b", "bridge"), Ipv4Addr::new(172, 17, 0, 3));
    assert!(
        sb.host_links().contains(&"netctl0".to_string()),
        "Docker's docker0, ours netctl0"
    );
    assert!(
        pings(&sb, "a", "172.17.0.3"),
        "by IP on the default network"
    );
    assert!(
        !pings(&sb, "a", "b"),
        "no name resolution on the default network, as in Docker"
    );
    let (code, err) = sb.netctl_err(&["network", "rm", "bridge"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("netctl: network bridge:"), "{err}");
}

fn network_lifecycle(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network(
        "front",
        &["--subnet", "172.18.0.0/16", "--gateway", "172.18.0.254"],
    );
    sb.network("back", &[]);
    sb.network("spare", &[]);
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "network", "ls"])).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["back", "front", "spare"]);
    let table = sb.netctl_ok(&["network", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("172.18.0.254"), "{table}");
    // Automatic subnets come from Docker's pools, skipping used ones.
    let back: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", "back"])).unwrap();
    assert_eq!(back[0]["subnet"], "172.17.0.0/16");
    assert_eq!(back[0]["datapath"], datapath);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    assert_eq!(
        sb.ip_of("a", "front"),
        Ipv4Addr::new(172, 18, 0, 1),
        "the gateway is .254, so .1 is free"
    );
    assert!(pings(&sb, "a", "172.18.0.254"));
    // The bridge keeps its gateway's MAC while ports come and go, so the
    // containers' ARP entries for the gateway never go stale.
    sb.netctl_ok(&["container", "run", "b", "--network", "front"]);
    sb.netctl_ok(&["container", "rm", "b"]);
    let link = text(&sb.in_host(&["ip", "-br", "link", "show", "nc-front"]));
    assert!(link.contains("02:42:ac:12:00:fe"), "{link}");
    let inspect: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", "front"])).unwrap();
    assert_eq!(inspect[0]["containers"][0], "a");

    let (code, err) = sb.netctl_err(&["network", "rm", "front"]);
    assert_eq!(code, 1);
    assert!(err.contains("active endpoints: a"), "{err}");
    assert_eq!(
        sb.netctl_ok(&["network", "prune"])
            .lines()
            .collect::<Vec<_>>(),
        ["back", "spare"]
    );
    assert!(!sb.host_links().contains(&"nc-back".to_string()));
    sb.netctl_ok(&["container", "rm", "a"]);
    sb.netctl_ok(&["network", "rm", "front"]);
    assert!(
        !sb.host_links().iter().any(|l| l.starts_with("nc-")),
        "{:?}",
        sb.host_links()
    );
}

fn rm_and_down_remove_exactly_what_was_added(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let links_before = sb.host_links();
    let rules_before = sb.iptables_save();
    front_with_web(&sb);
    sb.netctl_ok(&["container", "run", "n", "--network", "none"]);
    assert_eq!(
        sb.namespaces().len(),
        5,
        "host, outside, web, a, n: {:?}",
        sb.namespaces()
    );
    let web_veth = sb.inspect("web")["endpoints"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sb.host_links().contains(&web_veth));
    if datapath == "iptables" {
        assert!(sb
            .iptables_save()
            .contains("--to-destination 172.18.0.2:80"));
    }
    sb.netctl_ok(&["container", "rm", "web"]);
    assert!(
        !sb.host_links().contains(&web_veth),
        "veth removed with its container"
    );
    assert!(
        !sb.iptables_save().contains("--dport 8080"),
        "its published port is gone"
    );
    assert_eq!(sb.namespaces().len(), 4);
    sb.netctl_ok(&["down"]);
    assert_eq!(
        sb.host_links(),
        links_before,
        "down leaves the host's links as they were"
    );
    let rules_after = sb.iptables_save();
    assert!(
        !rules_after.contains("NETCTL"),
        "no NETCTL rule or chain left:\n{rules_after}"
    );
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    if datapath == "iptables" {
        // Built-in chains exist now (the nat/filter tables were touched) but hold nothing of ours.
        assert!(strip(&rules_after)
            .iter()
            .all(|l| l.starts_with('*') || l.starts_with(':') || l == "COMMIT"));
    } else {
        assert_eq!(strip(&rules_after), strip(&rules_before));
    }
    assert_eq!(
        sb.namespaces().len(),
        2,
        "only the sandbox's own namespaces remain"
    );
    let state: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "container", "ls"])).unwrap();
    assert_eq!(state, serde_json::json!([]));
}

/// Everything observable about the host, to prove an error changed nothing.
fn snapshot(sb: &Sandbox) -> (String, String, Vec<String>, String, Vec<String>) {
    (
        sb.netctl_ok(&["--format", "json", "network", "ls"]),
        sb.netctl_ok(&["--format", "json", "container", "ls"]),
        sb.host_links(),
        sb.iptables_save()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
        sb.namespaces(),
    )
}

fn bad_input_changes_nothing(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_web(&sb);
    sb.network("vault", &["--subnet", "172.22.0.0/24", "--internal"]);
    let other = if datapath == "iptables" {
        "ebpf"
    } else {
        "iptables"
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "n1", "--subnet", "10.0.0.0/33"],
            "subnet",
        ),
        (&["network", "create", "n1", "--subnet", "banana"], "banana"),
        (
            &["network", "create", "n1", "--subnet", "10.9.0.1/16"],
            "10.9.0.0/16",
        ),
        (
            &[
                "network",
                "create",
                "n1",
                "--subnet",
                "10.9.0.0/16",
                "--gateway",
                "10.8.0.1",
            ],
            "10.8.0.1",
        ),
        (
            &["network", "create", "n1", "--subnet", "172.18.5.0/24"],
            "front",
        ),
        (
            &["network", "create", "front", "--subnet", "10.9.0.0/16"],
            "already exists",
        ),
        (
            &["network", "create", "averyveryverylongname"],
            "interface name",
        ),
        (&["network", "create", "bad name"], "invalid name"),
        (
            &["network", "create", "n1", "--datapath", other],
            "datapath",
        ),
        (&["network", "rm", "nosuch"], "network nosuch: not found"),
        (&["network", "rm", "front"], "active endpoints"),
        (&["network", "connect", "nosuch", "a"], "nosuch"),
        (&["network", "connect", "front", "nosuch"], "nosuch"),
        (&["network", "connect", "front", "a"], "already connected"),
        (
            &["container", "run", "a", "--network", "front"],
            "already exists",
        ),
        (
            &["container", "run", "b", "--network", "nosuch"],
            "network nosuch: not found",
        ),
        (
            &["container", "run", "b", "--network", "front", "-p", "0:80"],
            "0",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "70000:80",
            ],
            "70000",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "8080:80",
            ],
            "8080",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "9000-9002:80-81",
            ],
            "9000-9002",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "10.1.1.1",
            ],
            "10.1.1.1",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "172.18.0.2",
            ],
            "172.18.0.2",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "172.18.0.1",
            ],
            "172.18.0.1",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "vault",
                "-p",
                "8081:80",
            ],
            "internal",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "host",
                "-p",
                "8081:80",
            ],
            "host",
        ),
        (
            &["container", "run", "b", "--network", "container:nosuch"],
            "nosuch",
        ),
        (
            &["container", "run", "b/c", "--network", "front"],
            "invalid name",
        ),
        (
            &["container", "rm", "nosuch"],
            "container nosuch: not found",
        ),
        (
            &["container", "inspect", "nosuch"],
            "container nosuch: not found",
        ),
        (&["port", "nosuch"], "nosuch"),
        (&["exec", "nosuch", "--", "true"], "nosuch"),
    ];
    let before = snapshot(&sb);
    for (args, needle) in cases {
        let (code, err) = sb.netctl_err(args);
        assert_eq!(
            code,
            1,
            "netctl {}: exit code {code}, {err}",
            args.join(" ")
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "netctl {}: one line, got {err}",
            args.join(" ")
        );
        assert!(err.starts_with("netctl: "), "{err}");
        assert!(
            err.contains(needle),
            "netctl {}: {err:?} should mention {needle:?}",
            args.join(" ")
        );
        assert_eq!(
            snapshot(&sb),
            before,
            "netctl {} changed the host",
            args.join(" ")
        );
    }
}

/// The datapath lives in the kernel, not in netctl: TCP streams through a
/// published port and through SNAT keep flowing, with no reset and no lost
/// byte, while netctl is killed with SIGKILL paused inside commands and
/// run again.
fn streams_survive_netctl_killed_mid_command(datapath: &str) {
    const SECONDS: &str = "4";
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "sink",
        "--network",
        "front",
        "-p",
        "7070:7070",
        "--",
        &tool,
        "sink",
        "7070",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "sink", "7071"]);
    let host = HOST_UPLINK_IP.to_string();
    let far = OUTSIDE_IP.to_string();
    // Both sinks answer (a zero-second stream) before the real streams start.
    call_until_answer(|| sb.outside(&[&tool, "stream", &host, "7070", "0"]));
    call_until_answer(|| sb.exec("a", &[&tool, "stream", &far, "7071", "0"]));

    let (inbound, outbound) = std::thread::scope(|scope| {
        let inbound = scope.spawn(|| sb.outside(&[&tool, "stream", &host, "7070", SECONDS]));
        let outbound = scope.spawn(|| sb.exec("a", &[&tool, "stream", &far, "7071", SECONDS]));
        sleep(Duration::from_millis(300));
        // Killed while paused inside `container run -p`: between the veth's
        // making and its move, inside the datapath's steps (eBPF; between
        // their journal record and them on iptables, whose steps are one
        // batch each), and before the commit. Each next command finishes
        // the killed one from the journal.
        let inside = match datapath {
            "ebpf" => ["run.endpoint.map", "run.ports.map"],
            _ => ["run.endpoint.journaled", "run.ports.journaled"],
        };
        let points = ["run.link.veth", inside[0], inside[1], "commit"];
        for (i, point) in points.into_iter().enumerate() {
            let name = format!("killed{i}");
            let port = format!("{}:80", 9100 + i);
            let mut child = sb
                .netctl_command(&["container", "run", &name, "--network", "front", "-p", &port])
                .env(netctl::failpoint::ENV, format!("{point}=pause"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn netctl");
            let stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
            let paused = std::io::BufRead::lines(stderr)
                .map_while(Result::ok)
                .any(|line| line == format!("netctl: paused at {point}"));
            let _ = child.kill();
            let status = child.wait();
            assert!(paused, "{point}: netctl never paused ({status:?})");
        }
        // netctl runs again, completely, while the streams go on.
        sb.netctl_ok(&[
            "container",
            "run",
            "after",
            "--network",
            "front",
            "-p",
            "9200:80",
        ]);
        (inbound.join().unwrap(), outbound.join().unwrap())
    });
    for (what, out) in [
        ("outside → published port", inbound),
        ("container → outside (SNAT)", outbound),
    ] {
        let report = text(&out);
        assert!(
            out.status.success(),
            "{what}: {}{}",
            report,
            String::from_utf8_lossy(&out.stderr)
        );
        let fields: Vec<u64> = report
            .split_whitespace()
            .filter_map(|f| f.split_once('=').and_then(|(_, v)| v.parse().ok()))
            .collect();
        assert_eq!(fields.len(), 2, "{what}: {report}");
        assert!(fields[0] > 0, "{what}: nothing sent");
        assert_eq!(
            fields[0], fields[1],
            "{what}: every byte arrived ({report})"
        );
    }
}

/// `--state-dir` keeps the state where it is told, `--uplink` names the
/// uplink (and a wrong one is refused with nothing changed).
fn global_options_state_dir_and_uplink(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let dir = format!("/run/netctl/{}-custom", sb.prefix);
    let (code, err) = sb.netctl_err(&[
        "--uplink",
        "nosuch0",
        "network",
        "create",
        "front",
        "--datapath",
        datapath,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("uplink nosuch0"), "{err}");
    assert!(
        sb.host_links().iter().all(|l| !l.starts_with("nc-")),
        "nothing created"
    );

    sb.netctl_ok(&[
        "--state-dir",
        &dir,
        "--uplink",
        "uplink0",
        "network",
        "create",
        "front",
        "--datapath",
        datapath,
    ]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["networks"]["front"]["subnet"], "172.17.0.0/16");
    let mode = std::fs::metadata(format!("{dir}/state.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // The default state dir of this host knows nothing of it.
    assert_eq!(
        sb.netctl_ok(&["--format", "json", "network", "ls"]).trim(),
        "[]"
    );
    let ls = sb.netctl_ok(&["--state-dir", &dir, "--format", "json", "network", "ls"]);
    assert!(ls.contains("\"front\""), "{ls}");
    sb.netctl_ok(&["--state-dir", &dir, "down"]);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "down removes its state dir"
    );
}
