//! What a container must not get from the host, and what it must see of
//! its own, on both datapaths (`iptables::*`, `ebpf::*`): the host's
//! services bound to 127.0.0.1 stay out of reach of a container that sends
//! to 127.0.0.1 by the gateway's MAC (CVE-2020-8558, which the iptables
//! datapath's `route_localnet` opens without its guard); a UDP flow to a
//! published port moves to the container that publishes the port after the
//! one that did is removed (stale conntrack entries would keep it on the
//! old one, or on the host); and `netctl exec` shows a container its own
//! /sys while `exec --host` keeps the host's, bpffs included.

use std::{net::Ipv4Addr, time::Duration};

use netctl::model::Mac;
use netctl_tests::output::{nettool, text};
use netctl_tests::sandbox::{Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    containers_do_not_reach_the_hosts_loopback_services,
    a_udp_flow_moves_to_the_new_owner_of_its_port,
    exec_shows_the_containers_own_sysfs,
);

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// A network `front` (172.18.0.0/16) with one container per name, in order
/// from 172.18.0.2.
fn front_with(sb: &Sandbox, names: &[&str]) {
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    for name in names {
        sb.netctl_ok(&["container", "run", name, "--network", "front"]);
    }
}

/// A container's MAC on `front`, as netctl recorded it.
fn mac_of(sb: &Sandbox, container: &str) -> String {
    let ctr = sb.inspect(container);
    ctr["endpoints"][0]["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("{container} has a MAC: {ctr}"))
        .to_owned()
}

/// The last line a `nettool count` printed (`received=N from=IP,...`).
fn counted(out: &str) -> String {
    out.lines().last().unwrap_or_default().to_owned()
}

/// Packets dropped by the iptables datapath's guard of 127.0.0.0/8 (the
/// DROP rules of NETCTL-INPUT), from their counters.
fn loopback_guard_drops(sb: &Sandbox) -> u64 {
    sb.drop_counters().total_of("-A NETCTL-INPUT ")
}

fn containers_do_not_reach_the_hosts_loopback_services(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with(&sb, &["a"]);
    let (a_netns, a_ip, a_mac) = (sb.netns_of("a"), sb.ip_of("a", "front"), mac_of(&sb, "a"));
    let gateway_mac = Mac::for_ip(GATEWAY).to_string();
    let tool = nettool();
    // A service of the host bound to 127.0.0.1 only, and one on every address.
    let listeners = sb.start_all_ready(&[
        (
            sb.host_netns.as_str(),
            vec![tool.as_str(), "count", "127.0.0.1:7777", "2500"],
        ),
        (
            sb.host_netns.as_str(),
            vec![tool.as_str(), "count", "7778", "2500"],
        ),
    ]);
    // Control: the host's own clients reach the loopback service.
    sb.run_in_ok(
        &sb.host_netns,
        &[&tool, "udptick", "127.0.0.1:7777", "40001", "0", "3"],
    );
    let guard_before = loopback_guard_drops(&sb);
    let a_ip = a_ip.to_string();
    let gateway = GATEWAY.to_string();
    // What CVE-2020-8558 sends: to 127.0.0.1, by the gateway's MAC. Then,
    // as control, the same frames to the gateway's own address.
    for (dst, port) in [("127.0.0.1", "7777"), (gateway.as_str(), "7778")] {
        sb.run_in_ok(
            &a_netns,
            &[
                &tool,
                "rawsend",
                "eth0",
                &a_mac,
                &gateway_mac,
                &a_ip,
                dst,
                port,
                "5",
            ],
        );
    }
    let mut got = listeners.into_iter().map(|l| counted(&l.finish()));
    assert_eq!(
        got.next().unwrap(),
        "received=3 from=127.0.0.1",
        "only the host reaches 127.0.0.1:7777"
    );
    assert_eq!(
        got.next().unwrap(),
        format!("received=5 from={a_ip}"),
        "control: a's frames reach the host's stack"
    );
    if datapath == "iptables" {
        assert_eq!(
            loopback_guard_drops(&sb) - guard_before,
            5,
            "the guard of 127.0.0.0/8 dropped and counted each frame"
        );
        guard_is_audited(&sb);
    }
}

/// `doctor` reports the guard missing, and `--fix` puts it back.
fn guard_is_audited(sb: &Sandbox) {
    let guard = "! -s 127.0.0.0/8 -d 127.0.0.0/8 -i nc-front -m conntrack \
                 ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP";
    let words: Vec<&str> = guard.split_whitespace().collect();
    let mut delete = vec!["iptables", "-D", "NETCTL-INPUT"];
    delete.extend(&words);
    sb.run_in_ok(&sb.host_netns, &delete);
    let out = sb.netctl(&["doctor"]);
    let said = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("-A NETCTL-INPUT {}", words.join(" "))),
        "doctor names the guard: {said}"
    );
    sb.netctl_ok(&["doctor", "--fix"]);
    sb.netctl_ok(&["doctor"]);
    let rules = sb.iptables_save();
    assert!(
        rules.contains(&format!("-A NETCTL-INPUT {}", words.join(" "))),
        "{rules}"
    );
}

fn a_udp_flow_moves_to_the_new_owner_of_its_port(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    let listen = |sb: &Sandbox, container: &str| {
        let netns = sb.netns_of(container);
        let mut ready =
            sb.start_all_ready(&[(netns.as_str(), vec![tool.as_str(), "count", "53", "1500"])]);
        counted(&ready.pop().expect("one listener").finish())
    };
    let run = |sb: &Sandbox, name: &str, ip: &str| {
        sb.netctl_ok(&[
            "container",
            "run",
            name,
            "--network",
            "front",
            "--ip",
            ip,
            "-p",
            "5353:53/udp",
        ]);
    };
    run(&sb, "old", "172.18.0.2");
    // One flow: same source port, a datagram every 100 ms (up to 30 s;
    // killed with the sandbox).
    let server = format!("{HOST_UPLINK_IP}:5353");
    sb.spawn_in(
        &sb.outside_netns.clone(),
        &[&tool, "udptick", &server, "40002", "100", "300"],
    );
    let expected_from = format!("from={OUTSIDE_IP}");
    let seen = listen(&sb, "old");
    let received = |line: &str| -> u64 {
        line.strip_prefix("received=")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a count: {line:?}"))
    };
    assert!(
        received(&seen) >= 5 && seen.ends_with(&expected_from),
        "control: the flow reaches old first: {seen}"
    );
    sb.netctl_ok(&["container", "rm", "old"]);
    // The flow goes on while nobody publishes the port.
    std::thread::sleep(Duration::from_millis(300));
    run(&sb, "new", "172.18.0.3");
    let seen = listen(&sb, "new");
    assert!(
        received(&seen) >= 5 && seen.ends_with(&expected_from),
        "the same flow reaches new, which publishes 5353/udp now: {seen}"
    );
}

fn exec_shows_the_containers_own_sysfs(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with(&sb, &["a", "b"]);
    for (name, other) in [("a", "b"), ("b", "a")] {
        let out = sb.exec(name, &["cat", "/sys/class/net/eth0/address"]);
        assert!(
            out.status.success(),
            "exec {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = text(&out).trim().to_owned();
        assert_eq!(seen, mac_of(&sb, name), "{name}'s eth0 in {name}'s /sys");
        assert_ne!(seen, mac_of(&sb, other));
    }
    // The host's view, bpffs included (where the eBPF datapath pins).
    let out = sb.netctl(&[
        "exec",
        "--host",
        "--",
        "stat",
        "-f",
        "-c",
        "%T",
        "/sys/fs/bpf",
    ]);
    assert!(
        out.status.success(),
        "exec --host: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text(&out).trim(), "bpf_fs");
}
