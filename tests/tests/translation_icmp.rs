//! Translation of what is not a plain TCP/UDP/ICMP echo flow, on both
//! datapaths (`iptables::*`, `ebpf::*`) with the same expectations: the
//! iptables datapath (the kernel's conntrack and NAT) is the reference.
//!
//! - Path MTU discovery through SNAT: an upload from a container to a
//!   server behind a router whose far link has MTU 1280 completes (the
//!   router's frag-needed, sent to the host's address, must reach the
//!   container translated, or the connection stalls).
//! - The same when the host's own uplink has the smaller MTU: the
//!   container's GSO packets (1448-byte segments) do not fit it, and the
//!   host must send the container frag-needed itself (the kernel's
//!   forwarding does; the eBPF fast path hands such packets to it).
//! - A router's time exceeded about a container's ping (TTL 3: the host,
//!   the outside, then the router) reaches the container (traceroute).
//! - A published UDP port without listener: the container's port
//!   unreachable reaches the client from the host's address, quoting the
//!   datagram as the client sent it, with every checksum right.
//! - A protocol without ports (GRE, IP protocol 47): it leaves a container
//!   with the host's address, and the server's answer comes back in.

use std::net::Ipv4Addr;

use netctl_tests::output::nettool;
use netctl_tests::sandbox::{Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    an_upload_through_a_smaller_mtu_completes,
    an_upload_over_a_smaller_uplink_mtu_completes,
    a_router_reports_an_expired_ttl_to_the_container,
    a_published_udp_port_without_listener_answers_from_the_host,
    gre_from_a_container_leaves_with_the_hosts_address,
);

/// The outside's end of its link to the router, the router's ends, and the
/// server behind the router (TEST-NET-1).
const OUTSIDE_TO_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_NEAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const ROUTER_FAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 6);

/// A router namespace behind the outside one, and a server namespace
/// behind the router, whose link has MTU 1280 on the router's side (the
/// server's side keeps 1500, so the server announces an MSS of 1460 and
/// the router must tell senders). Named with the sandbox's prefix; removed
/// when dropped (before the sandbox, declared after it).
struct Hops {
    router: String,
    server: String,
}

impl Hops {
    /// `far_mtu`: the router's side of its link to the server.
    fn new(sb: &Sandbox, far_mtu: &str) -> Hops {
        let hops = Hops {
            router: format!("{}-rtr", sb.prefix),
            server: format!("{}-srv", sb.prefix),
        };
        netctl::netns::create(&hops.router).expect("router netns");
        netctl::netns::create(&hops.server).expect("server netns");
        let ip = |netns: &str, args: &[&str]| {
            let mut argv = vec!["ip"];
            argv.extend_from_slice(args);
            sb.run_in_ok(netns, &argv);
        };
        let out = sb.outside_netns.as_str();
        let (rtr, srv) = (hops.router.as_str(), hops.server.as_str());
        // outside <-> router.
        ip(
            out,
            &[
                "link", "add", "o-rtr", "type", "veth", "peer", "name", "r-out", "netns", rtr,
            ],
        );
        ip(out, &["address", "add", "192.0.2.1/30", "dev", "o-rtr"]);
        ip(out, &["link", "set", "o-rtr", "up"]);
        ip(
            out,
            &[
                "route",
                "add",
                "192.0.2.4/30",
                "via",
                &ROUTER_NEAR.to_string(),
            ],
        );
        ip(rtr, &["link", "set", "lo", "up"]);
        ip(rtr, &["address", "add", "192.0.2.2/30", "dev", "r-out"]);
        ip(rtr, &["link", "set", "r-out", "up"]);
        ip(
            rtr,
            &[
                "route",
                "add",
                "default",
                "via",
                &OUTSIDE_TO_ROUTER.to_string(),
            ],
        );
        // router <-> server: far_mtu on the router's side.
        ip(
            rtr,
            &[
                "link", "add", "r-srv", "mtu", far_mtu, "type", "veth", "peer", "name", "s-rtr",
                "netns", srv,
            ],
        );
        ip(rtr, &["address", "add", "192.0.2.5/30", "dev", "r-srv"]);
        ip(rtr, &["link", "set", "r-srv", "up"]);
        ip(srv, &["link", "set", "lo", "up"]);
        ip(srv, &["link", "set", "s-rtr", "mtu", "1500"]);
        ip(srv, &["address", "add", "192.0.2.6/30", "dev", "s-rtr"]);
        ip(srv, &["link", "set", "s-rtr", "up"]);
        ip(
            srv,
            &["route", "add", "default", "via", &ROUTER_FAR.to_string()],
        );
        for netns in [out, rtr] {
            sb.run_in_ok(netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        hops
    }
}

impl Drop for Hops {
    fn drop(&mut self) {
        // The veths go with their namespaces (o-rtr with its peer's).
        for netns in [&self.server, &self.router] {
            let _ = netctl::netns::delete(netns);
        }
    }
}

/// A network `front` (172.18.0.0/16) with a container `a`.
fn front_with_a(sb: &Sandbox) {
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
}

/// Container `a` uploads 300 KB to the server behind `hops`: all of it
/// arrives, and the container has learnt a path MTU of 1280 (from a
/// router's frag-needed, or from its gateway, as the kernel's forwarding
/// tells it).
fn upload_learning_mtu_1280(sb: &mut Sandbox, hops: &Hops, datapath: &str) {
    let tool = nettool();
    let server = hops.server.clone();
    sb.spawn_in(&server, &[&tool, "sink", "9000", "--count", "1"]);
    let a_netns = sb.netns_of("a");
    let out = sb.run_in(
        &a_netns,
        &[&tool, "bulk", &SERVER.to_string(), "9000", "300000"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent=300000 received=300000"),
        "{datapath}: the upload stalls ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let route = sb.run_in_ok(&a_netns, &["ip", "route", "get", &SERVER.to_string()]);
    assert!(
        route.contains("mtu 1280"),
        "{datapath}: no path MTU learnt in the container: {route}"
    );
}

fn an_upload_through_a_smaller_mtu_completes(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    front_with_a(&sb);
    let hops = Hops::new(&sb, "1280");
    upload_learning_mtu_1280(&mut sb, &hops, datapath);
    drop(hops);
}

fn an_upload_over_a_smaller_uplink_mtu_completes(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    front_with_a(&sb);
    // Both ends of the uplink's link at 1280; the server two hops away on
    // 1500-byte links (so it announces an MSS of 1460).
    sb.run_in_ok(
        &sb.host_netns,
        &["ip", "link", "set", "uplink0", "mtu", "1280"],
    );
    sb.run_in_ok(
        &sb.outside_netns,
        &["ip", "link", "set", "wan0", "mtu", "1280"],
    );
    let hops = Hops::new(&sb, "1500");
    upload_learning_mtu_1280(&mut sb, &hops, datapath);
    drop(hops);
}

fn a_router_reports_an_expired_ttl_to_the_container(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_a(&sb);
    let hops = Hops::new(&sb, "1500");
    let a_netns = sb.netns_of("a");
    let server = SERVER.to_string();
    // The host and the outside forward it (TTL 3, 2), the router would
    // have to send it on with TTL 0.
    let out = sb.run_in(&a_netns, &["ping", "-n", "-c1", "-W2", "-t3", &server]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("From {ROUTER_NEAR}")) && stdout.contains("Time to live exceeded"),
        "{datapath}: no time exceeded from the router: {stdout}"
    );
    // And with TTL enough, the server answers.
    let out = sb.run_in(&a_netns, &["ping", "-n", "-c1", "-W2", &server]);
    assert!(out.status.success(), "{datapath}: the server answers");
    drop(hops);
}

fn a_published_udp_port_without_listener_answers_from_the_host(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    // Published, nothing listening.
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "5353:53/udp",
    ]);
    let tool = nettool();
    let watch = sb.start_all_ready(&[(
        sb.outside_netns.as_str(),
        vec![tool.as_str(), "icmpwatch", "3000"],
    )]);
    let probe = sb.run_in_ok(
        &sb.outside_netns,
        &[
            &tool,
            "probe",
            "udp",
            &HOST_UPLINK_IP.to_string(),
            "5353",
            "--timeout-ms",
            "2000",
        ],
    );
    let seen = watch.into_iter().next().unwrap().finish();
    // The client's socket got it: the quote names its own datagram.
    assert!(
        probe.starts_with("refused"),
        "{datapath}: no port unreachable matched the client's socket: {probe}; seen: {seen}"
    );
    let host = HOST_UPLINK_IP.to_string();
    let outside = OUTSIDE_IP.to_string();
    let errors: Vec<&str> = seen.lines().filter(|l| l.starts_with("icmp ")).collect();
    assert_eq!(errors.len(), 1, "{datapath}: one error: {seen}");
    let error = errors[0];
    for field in [
        "type=3 code=3".to_owned(),
        format!("src={host} dst={outside}"),
        format!("quote_src={outside} quote_dst={host} quote_proto=17"),
        "quote_dport=5353".to_owned(),
        "checksums=ok".to_owned(),
    ] {
        assert!(
            error.contains(&field),
            "{datapath}: the error must read {field}: {error}"
        );
    }
}

fn gre_from_a_container_leaves_with_the_hosts_address(datapath: &str) {
    let sb = Sandbox::new(datapath);
    front_with_a(&sb);
    let tool = nettool();
    let echo = sb.start_all_ready(&[(
        sb.outside_netns.as_str(),
        vec![tool.as_str(), "rawecho", "47", "3000"],
    )]);
    let a_netns = sb.netns_of("a");
    let ask = sb.run_in(&a_netns, &[&tool, "rawask", "47", &OUTSIDE_IP.to_string()]);
    let seen = echo.into_iter().next().unwrap().finish();
    // Seen outside from the host's address only, never the container's.
    assert_eq!(
        seen.lines().last().unwrap_or_default(),
        format!("from={HOST_UPLINK_IP}"),
        "{datapath}: GRE seen outside from the host's address"
    );
    assert!(
        ask.status.success(),
        "{datapath}: the answer did not come back into the container: {}",
        String::from_utf8_lossy(&ask.stderr)
    );
}
