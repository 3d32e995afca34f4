//! Every seed scenario and every command, written once and run against each
//! datapath (`iptables::*`, `ebpf::*`). Each test builds its own sandbox,
//! removed even when the test fails.

use std::{net::Ipv4Addr, thread::sleep, time::Duration};

use netctl_tests::output::{assert_no_byte_lost, nettool, peer_ip, text};
use netctl_tests::sandbox::{
    call_until_answer,
    probe::{Outcome, Proto, Reason},
    Sandbox, HOST_UPLINK_IP, OUTSIDE_IP,
};

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
    streams_survive_netctl_killed_mid_command,
);

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

    assert!(sb.pings("a", "172.18.0.4"), "a reaches c by IP");
    assert!(
        sb.pings("a", "c"),
        "a reaches c by name through netctl exec"
    );
    assert!(sb.pings("c", "e"), "names follow run and rm");
    assert!(
        !sb.pings("a", "b"),
        "b was removed: its name no longer resolves"
    );
    // The gateway (the bridge address) answers too.
    assert!(sb.pings("a", "172.18.0.1"));
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
    assert!(sb.pings("a", &server), "ICMP echo through SNAT");
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
    let mut sb = Sandbox::new(datapath);
    sb.front_with_web();
    // web also listens on 81, published nowhere.
    let web_netns = sb.netns_of("web");
    sb.spawn_in(&web_netns, &[&nettool(), "serve", "tcp", "81"]);
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
    // An unpublished port is not reachable: web answers on 81 (from a),
    // the outside asking the host for it gets the host's own refusal (not
    // translated: web would have answered), and asking web's address
    // directly is dropped and counted.
    let web = sb.ip_of("web", "front");
    let a_netns = sb.netns_of("a");
    sb.answers(&a_netns, Proto::Tcp, web, 81)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = &sb.outside_netns;
    let refused = sb.probe(out, Proto::Tcp, HOST_UPLINK_IP, 8081, 3000);
    assert_eq!(refused.outcome, Outcome::Refused, "host:8081: {refused:?}");
    sb.run_in_ok(out, &["ip", "route", "add", "172.18.0.0/16", "via", &host]);
    let before = sb.drop_counters();
    let packets = sb
        .forbidden(&a_netns, out, Proto::Tcp, web, 81)
        .unwrap_or_else(|e| panic!("{e}"));
    sb.assert_drops_since(&before, &[(Reason::Unsolicited, packets)]);
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
    let nft = sb.nft_ruleset();
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
            "90/tcp -> 0.0.0.0:20000"
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
        ["7000/tcp -> 0.0.0.0:20001", "7001/udp -> 0.0.0.0:20000"]
    );
}

fn host_reaches_published_ports_on_its_address_and_loopback(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.front_with_web();
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
    // The outside asking for 8181 gets the host's own refusal: nothing
    // translated it to local (which listens), nothing counted as DNAT.
    let dnat_before = sb.dnat_packets();
    let probe = sb.probe(&sb.outside_netns, Proto::Tcp, HOST_UPLINK_IP, 8181, 3000);
    assert_eq!(probe.outcome, Outcome::Refused, "{probe:?}");
    assert_eq!(
        sb.dnat_packets(),
        dnat_before,
        "8181 from outside was translated"
    );
}

fn hairpin_from_a_container_to_a_published_port(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.front_with_web();
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
    // Each answers the host (the control), and the other network's pings
    // are dropped and counted.
    let (r_netns, b_netns) = (sb.netns_of("r"), sb.netns_of("b"));
    let before = sb.drop_counters();
    let mut packets = 0;
    for (from, to) in [(&r_netns, "172.21.0.2"), (&b_netns, "172.20.0.2")] {
        packets += sb
            .forbidden(&sb.host_netns, from, Proto::Icmp, to.parse().unwrap(), 0)
            .unwrap_or_else(|e| panic!("the other network: {e}"));
    }
    sb.assert_drops_since(&before, &[(Reason::Isolated, packets)]);
    assert!(!sb.pings("r", "b"), "no name across networks");

    sb.netctl_ok(&["network", "connect", "red", "b"]);
    let b_red = sb.ip_of("b", "red");
    assert_eq!(b_red, Ipv4Addr::new(172, 20, 0, 3));
    assert_eq!(sb.inspect("b")["endpoints"][1]["ifname"], "eth1");
    assert!(sb.pings("r", "b"), "connected: r reaches b by name on red");
    assert!(sb.pings("b", "172.20.0.2"));

    sb.netctl_ok(&["network", "disconnect", "red", "b"]);
    assert!(!sb.pings("r", "b"), "disconnected: the name is gone");
    assert!(!sb.pings("r", &b_red.to_string()));
    assert!(sb.pings("b", "172.21.0.1"), "b still on blue");
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
    sb.spawn_in(&outside, &[&nettool(), "serve", "udp", "9000"]);
    assert!(sb.pings("x", "y"), "peers on an internal network talk");
    let [x, y, f] = ["x", "y", "f"].map(|c| sb.netns_of(c));
    // No route out is given...
    let probe = sb.probe(&x, Proto::Tcp, OUTSIDE_IP, 9000, 1000);
    assert!(
        matches!(probe.outcome, Outcome::Unreachable(_)) && probe.packets == 0,
        "no route out: {probe:?}"
    );
    // ...and one x adds itself (it is root in there) gets it nowhere: the
    // outside server answers f (the control), the datapath drops x's
    // packets and counts them.
    sb.run_in_ok(&x, &["ip", "route", "add", "default", "via", "172.22.0.1"]);
    let before = sb.drop_counters();
    let mut out_packets = 0;
    for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
        out_packets += sb
            .forbidden(&f, &x, proto, OUTSIDE_IP, 9000)
            .unwrap_or_else(|e| panic!("no way out: {e}"));
    }
    // No way in from another network either (y reaches x just before).
    let in_packets = sb
        .forbidden(&y, &f, Proto::Icmp, "172.22.0.2".parse().unwrap(), 0)
        .unwrap_or_else(|e| panic!("no way in: {e}"));
    sb.assert_drops_since(
        &before,
        &[
            (Reason::Internal, out_packets),
            (Reason::Isolated, in_packets),
        ],
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
    sb.front_with_web();
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
    assert!(sb.pings("a", "172.17.0.3"), "by IP on the default network");
    assert!(
        !sb.pings("a", "b"),
        "no name resolution on the default network, as in Docker"
    );
    let (code, err) = sb.netctl_err(&["network", "rm", "bridge"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("netctl: network bridge:"), "{err}");
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
        assert_no_byte_lost(what, &out);
    }
}
