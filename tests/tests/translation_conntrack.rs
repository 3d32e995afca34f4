//! Differential tests of conntrack's capacity and state machine, on both
//! datapaths (`iptables::*`, `ebpf::*`), the kernel's conntrack and
//! MASQUERADE (iptables) as the reference: 20,000 UDP flows from one
//! container to one server port within the UDP timeout, all answered; a
//! spoofed SYN flood at a published port (a 1,024-entry eBPF table)
//! followed by legitimate connections that succeed; a half-closed TCP
//! connection idle for 55 s that still delivers data.

use std::time::Duration;

use netctl_tests::output::{nettool, text};
use netctl_tests::sandbox::{call_until_answer, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    twenty_thousand_udp_flows_to_one_server_port_are_all_answered,
    a_spoofed_syn_flood_does_not_keep_new_connections_out,
    a_half_closed_connection_idle_for_55_seconds_still_delivers,
);

/// Creates the network `front` with `NETCTL_CONNTRACK_MAX` (read by the
/// eBPF datapath when it loads; the iptables datapath ignores it).
fn front(sb: &Sandbox, conntrack_max: Option<&str>) {
    let mut cmd = sb.netctl_command(&["network", "create", "front", "--subnet", "172.18.0.0/16"]);
    if let Some(max) = conntrack_max {
        cmd.env("NETCTL_CONNTRACK_MAX", max);
    }
    let out = cmd.output().expect("run netctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A link's MAC in a namespace of the sandbox (`ip -o link`).
fn mac_of(sb: &Sandbox, netns: &str, link: &str) -> String {
    let out = sb.run_in_ok(netns, &["ip", "-o", "link", "show", "dev", link]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {link}: {out}"))
        .to_owned()
}

/// A counter of `netctl stats` (eBPF), in packets.
fn stat(sb: &Sandbox, name: &str) -> u64 {
    let json: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json");
    json[name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

/// One container, one server port, 20,000 flows (one per source port,
/// 20000–39999, one datagram each) within the UDP timeout: all answered.
/// MASQUERADE keeps a free source port and searches 1024–65535 otherwise;
/// the eBPF datapath used to hash 8 tries over 61000–65535 (4,536 ports)
/// and answered fewer than half (`drop_snat_exhausted`).
fn twenty_thousand_udp_flows_to_one_server_port_are_all_answered(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    front(&sb, None);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let tool = nettool();
    let outside = sb.outside_netns.clone();
    let server = format!("{OUTSIDE_IP}:7000");
    sb.spawn_in(
        &outside,
        &[&tool, "serve", "udp", &server, "--count", "1000000"],
    );
    let a = sb.netns_of("a");
    let ip = OUTSIDE_IP.to_string();
    call_until_answer(|| sb.run_in(&a, &[&tool, "call", "udp", &ip, "7000"]));
    let out = sb.run_in(
        &a,
        &[&tool, "udpflows", &ip, "7000", "10000", "20000", "55"],
    );
    let summary = text(&out);
    let answered: u32 = summary
        .trim()
        .strip_prefix("sent=20000 answered=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{datapath}: {summary} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    if datapath == "ebpf" {
        // The datapath under test answers every flow.
        assert_eq!(
            answered,
            20_000,
            "{datapath}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stat(&sb, "drop_snat_exhausted"), 0);
    } else {
        // The reference: the kernel's conntrack here loses one flow of the
        // 20,000 in about two runs of three (a different source port each
        // time, never answered through 5 s of resends; not investigated),
        // so it is held to 99.95%.
        assert!(
            answered >= 19_990,
            "{datapath}: {summary} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// 2,000 SYNs from spoofed sources (192.0.2.0/24, which answer nothing)
/// at a published port, then ten connections from the outside: all
/// answered. On the eBPF datapath the table has 1,024 entries: the flood
/// fills it with unconfirmed flows (SYN_RECV, which `conntrack ls` shows),
/// and each refused SYN deletes the oldest of them (`ct_early_drop`), so a
/// client's retransmission gets in. The eBPF datapath used to make each
/// flood flow ESTABLISHED at the container's SYN-ACK, for 6 hours, and
/// refused every new flow.
fn a_spoofed_syn_flood_does_not_keep_new_connections_out(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front(&sb, Some("1024"));
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
    let uplink_mac = mac_of(&sb, &sb.host_netns, "uplink0");
    let wan_mac = mac_of(&sb, &sb.outside_netns, "wan0");
    let uplink_ip = HOST_UPLINK_IP.to_string();
    let outside = sb.outside_netns.clone();
    call_until_answer(|| sb.run_in(&outside, &[&tool, "call", "tcp", &uplink_ip, "8080"]));
    let flood = sb.run_in_ok(
        &outside,
        &[
            &tool,
            "synflood",
            "wan0",
            &wan_mac,
            &uplink_mac,
            &uplink_ip,
            "8080",
            "2000",
        ],
    );
    assert_eq!(flood.trim(), "sent=2000");
    for i in 0..10 {
        let out = sb.run_in(
            &outside,
            &[
                &tool,
                "call",
                "tcp",
                &uplink_ip,
                "8080",
                "--timeout-ms",
                "8000",
            ],
        );
        assert!(
            out.status.success(),
            "{datapath}: connection {i} after the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text(&out).trim().split(':').next(),
            Some(&*format!("peer={OUTSIDE_IP}"))
        );
    }
    if datapath == "ebpf" {
        let flows = sb.netctl_ok(&["--format", "json", "conntrack", "ls"]);
        assert!(
            flows.contains("\"syn_recv\""),
            "unconfirmed flood flows: {flows}"
        );
        assert!(stat(&sb, "ct_early_drop") > 0, "early drop made the room");
    }
}

/// A client from outside sends a request to a published port and closes
/// its sending side (FIN); the server answers 55 s later, the connection
/// idle meanwhile, and the answer arrives. The kernel keeps such a flow
/// (CLOSE_WAIT, 60 s; FIN_WAIT 120 s); the eBPF datapath used to give any
/// flow with a FIN 10 s, after which the answer left untranslated.
fn a_half_closed_connection_idle_for_55_seconds_still_delivers(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front(&sb, None);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "late",
        "--network",
        "front",
        "-p",
        "8081:81",
        "--",
        &tool,
        "halfclose",
        "serve",
        "81",
        "55000",
    ]);
    let uplink_ip = HOST_UPLINK_IP.to_string();
    let outside = sb.outside_netns.clone();
    // The server accepts one connection: retry only while nothing listens.
    let mut out = None;
    for _ in 0..50 {
        let attempt = sb.run_in(
            &outside,
            &[&tool, "halfclose", "call", &uplink_ip, "8081", "70000"],
        );
        let refused = String::from_utf8_lossy(&attempt.stderr).contains("connect");
        out = Some(attempt);
        if !refused {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = out.expect("an attempt");
    assert_eq!(
        text(&out).trim(),
        "received=late data",
        "{datapath}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
