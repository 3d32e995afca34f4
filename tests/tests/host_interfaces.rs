//! Every interface of the host (issue 12, item 4), on each datapath: a
//! container's egress by an interface other than the uplink leaves with
//! that interface's address; a published port without a host address
//! answers on every host address; a LAN beside the uplink cannot reach a
//! container directly; the datapath follows a renumbered uplink from the
//! next command on, or at once under `netctl watch`; `doctor` reports the
//! stale address and `--fix` repairs it.
//!
//! The LAN is a second host interface, `lan0` 203.0.113.1/24, to a
//! namespace of its own (`Sandbox::add_lan`). Traffic after a renumbering
//! is sent from the namespaces directly, not through `netctl exec`: any
//! netctl command makes the datapath follow the host's addresses, which is
//! what some of these tests must do without.

use std::{
    net::Ipv4Addr,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use netctl_tests::{
    output::{line_channel, nettool, peer_ip, text},
    sandbox::{
        call_until_answer,
        probe::{Outcome, Proto},
        Sandbox, HOST_LAN_IP, HOST_UPLINK_IP, LAN_IP, OUTSIDE_IP,
    },
};

netctl_tests::on_both_datapaths!(
    egress_by_a_lan_interface_leaves_with_its_address,
    published_ports_answer_on_the_lan_address,
    the_lan_cannot_reach_containers_directly,
    a_renumbered_uplink_is_followed_from_the_next_command,
    a_renumbered_uplink_is_followed_by_watch,
    doctor_reports_a_stale_host_address_and_fix_repairs_it,
);

/// The servers' port, outside and on the LAN.
const SERVER_PORT: u16 = 9000;
/// The uplink's address after the renumbering (same subnet as the outside).
const RENUMBERED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The published port of `web` (`Sandbox::front_with_web`).
const PUBLISHED: u16 = 8080;

/// A sandbox with a LAN beside the uplink, `front` with `web` (tcp/80
/// published on 8080) and `a`, and `nettool serve` for TCP and UDP on
/// [`SERVER_PORT`] in the outside and in the LAN.
fn sandbox_with_lan(datapath: &str) -> (Sandbox, String) {
    let mut sb = Sandbox::new(datapath);
    let lan = sb.add_lan();
    sb.front_with_web();
    let tool = nettool();
    let port = SERVER_PORT.to_string();
    let outside = sb.outside_netns.clone();
    for netns_name in [&outside, &lan] {
        for proto in ["tcp", "udp"] {
            sb.spawn_in(netns_name, &[&tool, "serve", proto, &port]);
        }
    }
    (sb, lan)
}

/// The source address the server at `ip` saw for a new `proto` flow
/// from namespace `netns_name` (a few tries: the server may be starting),
/// or why there was no answer.
fn source_seen(
    sb: &Sandbox,
    netns_name: &str,
    proto: &str,
    ip: Ipv4Addr,
) -> Result<Ipv4Addr, String> {
    seen_within(sb, netns_name, proto, ip, 10)
}

/// [`source_seen`] with `tries` attempts of one second at most.
fn seen_within(
    sb: &Sandbox,
    netns_name: &str,
    proto: &str,
    ip: Ipv4Addr,
    tries: u32,
) -> Result<Ipv4Addr, String> {
    let (tool, ip, port) = (nettool(), ip.to_string(), SERVER_PORT.to_string());
    let mut last = String::new();
    for _ in 0..tries {
        let out = sb.run_in(
            netns_name,
            &[&tool, "call", proto, &ip, &port, "--timeout-ms", "1000"],
        );
        if out.status.success() {
            return Ok(peer_ip(&text(&out)));
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// The client address `web` saw for a connection from `netns_name` to
/// `ip`:[`PUBLISHED`].
fn published_answer(sb: &Sandbox, netns_name: &str, ip: Ipv4Addr) -> Ipv4Addr {
    let (tool, ip, port) = (nettool(), ip.to_string(), PUBLISHED.to_string());
    let reply = call_until_answer(|| {
        sb.run_in(
            netns_name,
            &[&tool, "call", "tcp", &ip, &port, "--timeout-ms", "1000"],
        )
    });
    peer_ip(&reply)
}

fn egress_by_a_lan_interface_leaves_with_its_address(datapath: &str) {
    let (sb, _lan) = sandbox_with_lan(datapath);
    let a = sb.netns_of("a");
    for proto in ["tcp", "udp"] {
        // The LAN server is on lan0's subnet: the host routes to it by lan0,
        // not by the default route.
        let seen = source_seen(&sb, &a, proto, LAN_IP)
            .unwrap_or_else(|e| panic!("{proto} from a to the LAN server: {e}"));
        assert_eq!(
            seen, HOST_LAN_IP,
            "{proto} to the LAN left with another source"
        );
        // And the uplink's egress is unchanged.
        let seen = source_seen(&sb, &a, proto, OUTSIDE_IP)
            .unwrap_or_else(|e| panic!("{proto} from a to the outside server: {e}"));
        assert_eq!(seen, HOST_UPLINK_IP, "{proto} to the outside");
    }
}

fn published_ports_answer_on_the_lan_address(datapath: &str) {
    let (sb, lan) = sandbox_with_lan(datapath);
    let dnat_before = sb.dnat_packets();
    // `-p 8080:80` names no host address: it answers on lan0's too, and
    // web sees the LAN client's own address.
    assert_eq!(published_answer(&sb, &lan, HOST_LAN_IP), LAN_IP);
    assert!(sb.dnat_packets() > dnat_before, "not DNATed");
    // And on the uplink's, as before.
    let outside = sb.outside_netns.clone();
    assert_eq!(published_answer(&sb, &outside, HOST_UPLINK_IP), OUTSIDE_IP);
}

fn the_lan_cannot_reach_containers_directly(datapath: &str) {
    let (sb, lan) = sandbox_with_lan(datapath);
    let web = sb.ip_of("web", "front");
    // The LAN knows the containers' subnet is behind the host.
    sb.add_route_in(&lan, Ipv4Addr::new(172, 18, 0, 0), 16, HOST_LAN_IP);
    let a = sb.netns_of("a");
    let drops_before = sb.drop_counters();
    // web listens on 80 (a answers it: the control), the LAN is dropped.
    let sent = sb
        .forbidden(&a, &lan, Proto::Tcp, web, 80)
        .unwrap_or_else(|e| panic!("LAN -> {web}:80: {e}"));
    let moved = sb.drop_counters().since(&drops_before);
    let dropped: u64 = if datapath == "ebpf" {
        moved.get("drop_unsolicited").copied().unwrap_or(0)
    } else {
        moved.values().sum()
    };
    assert!(
        dropped >= sent,
        "{sent} packet(s) sent, drops counted: {moved:?}"
    );
    // ICMP too: nothing of the LAN's reaches a container's own address.
    let ping = sb.probe(&lan, Proto::Icmp, web, 0, 1000);
    assert_eq!(ping.outcome, Outcome::Timeout, "LAN ping to {web}");
    // The published port is the way in.
    assert_eq!(published_answer(&sb, &lan, HOST_LAN_IP), LAN_IP);
}

/// After the uplink became [`RENUMBERED_IP`]: new egress leaves with it,
/// and the published port answers on it. Sent from the namespaces
/// directly (no netctl command).
fn assert_follows_the_new_address(sb: &Sandbox, a: &str, deadline: Duration) {
    let started = Instant::now();
    let seen = loop {
        let seen = source_seen(sb, a, "tcp", OUTSIDE_IP);
        if seen == Ok(RENUMBERED_IP) || started.elapsed() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(seen, Ok(RENUMBERED_IP), "egress after the renumbering");
    let outside = sb.outside_netns.clone();
    assert_eq!(published_answer(sb, &outside, RENUMBERED_IP), OUTSIDE_IP);
}

fn a_renumbered_uplink_is_followed_from_the_next_command(datapath: &str) {
    let (sb, _lan) = sandbox_with_lan(datapath);
    let a = sb.netns_of("a");
    assert_eq!(source_seen(&sb, &a, "tcp", OUTSIDE_IP), Ok(HOST_UPLINK_IP));
    sb.renumber_uplink(RENUMBERED_IP);
    // Any command: this one only reads the state.
    sb.netctl_ok(&["container", "ls"]);
    assert_follows_the_new_address(&sb, &a, Duration::ZERO);
}

/// `netctl watch`, started and ready (its `watching` line); its later
/// lines come on the channel.
fn start_watch(sb: &Sandbox) -> (Child, mpsc::Receiver<String>) {
    let mut child = sb
        .netctl_command(&["watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn netctl watch");
    let rx = line_channel(child.stdout.take().expect("piped"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "watching" => return (child, rx),
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("netctl watch never said it was watching");
            }
        }
    }
}

/// SIGTERM, then its exit within a few seconds: it must be a clean one.
fn stop_watch(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("SIGTERM netctl watch");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait netctl watch") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netctl watch did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "netctl watch ended with {status}");
}

fn a_renumbered_uplink_is_followed_by_watch(datapath: &str) {
    let (sb, _lan) = sandbox_with_lan(datapath);
    let a = sb.netns_of("a");
    assert_eq!(source_seen(&sb, &a, "tcp", OUTSIDE_IP), Ok(HOST_UPLINK_IP));
    let (watch, said) = start_watch(&sb);
    sb.renumber_uplink(RENUMBERED_IP);
    // No netctl command from here on: only the watch follows.
    assert_follows_the_new_address(&sb, &a, Duration::from_secs(5));
    stop_watch(watch);
    let said: Vec<String> = said.try_iter().collect();
    if datapath == "ebpf" {
        assert!(
            said.iter().any(|l| l.contains(&RENUMBERED_IP.to_string())),
            "watch did not say what it changed: {said:?}"
        );
    } else {
        // iptables' NAT reads the host's addresses per packet.
        assert!(
            said.is_empty(),
            "watch changed something on iptables: {said:?}"
        );
    }
}

fn doctor_reports_a_stale_host_address_and_fix_repairs_it(datapath: &str) {
    let (sb, _lan) = sandbox_with_lan(datapath);
    let a = sb.netns_of("a");
    sb.renumber_uplink(RENUMBERED_IP);
    let report = sb.netctl(&["--format", "json", "doctor"]);
    let findings: serde_json::Value = serde_json::from_slice(&report.stdout).expect("doctor json");
    let findings = findings.as_array().expect("findings").clone();
    if datapath == "iptables" {
        // Nothing to be stale: MASQUERADE and --dst-type LOCAL read the
        // host's addresses per packet.
        assert!(report.status.success(), "doctor on iptables: {findings:?}");
        assert!(findings.is_empty(), "{findings:?}");
        assert_follows_the_new_address(&sb, &a, Duration::ZERO);
        return;
    }
    assert_eq!(
        report.status.code(),
        Some(1),
        "doctor found nothing: {findings:?}"
    );
    let stale = HOST_UPLINK_IP.to_string();
    assert!(
        findings.iter().any(|f| {
            let problem = f["problem"].as_str().unwrap_or_default();
            problem.contains("stale") && problem.contains(&stale)
        }),
        "no stale {stale} among {findings:?}"
    );
    // doctor only read: egress is still translated to the old address.
    assert_ne!(
        seen_within(&sb, &a, "tcp", OUTSIDE_IP, 1),
        Ok(RENUMBERED_IP)
    );

    sb.netctl_ok(&["doctor", "--fix"]);
    assert_follows_the_new_address(&sb, &a, Duration::ZERO);
    let again = sb.netctl(&["doctor"]);
    assert!(
        again.status.success(),
        "doctor after --fix: {}",
        String::from_utf8_lossy(&again.stdout)
    );
}
