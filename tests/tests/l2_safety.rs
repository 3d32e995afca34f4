//! What a container can do to the host below IPv4, on both datapaths
//! (`iptables::*`, `ebpf::*`): networks have no IPv6, so a router
//! advertisement a container sends never gives the host a route or an
//! address; and a container's ARP must carry its own address and MAC, so a
//! gratuitous ARP claiming another container's address changes neither the
//! host's neighbour table nor the bridge's forwarding table, and the victim
//! keeps its published-port traffic. The frames are sent for real from the
//! container (`nettool rasend|arpsend`, an AF_PACKET socket); the drops are
//! counted exactly (eBPF `drop_ipv6`, `drop_arp_spoofed`; iptables datapath:
//! the endpoint's rule in nftables' `table bridge netctl`).

use std::time::{Duration, Instant};

use netctl_tests::output::{nettool, text};
use netctl_tests::sandbox::{Sandbox, HOST_UPLINK_IP};

netctl_tests::on_both_datapaths!(
    router_advertisement_from_a_container_never_reaches_the_host,
    gratuitous_arp_cannot_take_over_another_containers_address,
);

/// How long the host is watched for what an RA would have given it (the
/// kernel acts on an RA as it receives it).
const WATCH: Duration = Duration::from_millis(1500);

/// A sysctl as the namespace `netns` sees it (`/proc/sys/net` is the
/// reader's namespace's).
fn sysctl(sb: &Sandbox, netns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    sb.run_in_ok(netns, &["cat", &path]).trim().to_owned()
}

/// The eBPF drop counters that moved since `before` (empty on iptables).
fn ebpf_drops_since(
    sb: &Sandbox,
    before: &netctl_tests::sandbox::probe::DropCounters,
) -> std::collections::BTreeMap<String, u64> {
    sb.drop_counters().since(before)
}

fn router_advertisement_from_a_container_never_reaches_the_host(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let a = sb.inspect("a");
    let a_mac = a["endpoints"][0]["mac"].as_str().unwrap().to_owned();
    let a_veth = a["endpoints"][0]["host_veth"].as_str().unwrap().to_owned();
    let a_netns = a["netns"].as_str().unwrap().to_owned();

    // The container sends router advertisements (a raw socket needs no
    // IPv6 of its own): a default router and a prefix to autoconfigure.
    let before = sb.drop_counters();
    let sent = sb.run_in_ok(&a_netns, &[&nettool(), "rasend", "eth0", &a_mac, "3"]);
    assert_eq!(sent.trim(), "sent=3");
    let deadline = Instant::now() + WATCH;
    loop {
        let routes = sb.run_in_ok(&sb.host_netns, &["ip", "-6", "route", "show", "default"]);
        let addrs = sb.run_in_ok(
            &sb.host_netns,
            &["ip", "-6", "addr", "show", "scope", "global"],
        );
        assert!(
            routes.trim().is_empty() && addrs.trim().is_empty(),
            "a container's RA configured the host: routes {routes:?}, addresses {addrs:?}"
        );
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // eBPF: dropped on the container's veth, each one counted. (The
    // iptables datapath has no counter for it: the host's bridge and veth
    // have no IPv6, so it never processes them, as checked above.)
    if datapath == "ebpf" {
        let moved = ebpf_drops_since(&sb, &before);
        assert_eq!(moved, [("drop_ipv6".to_owned(), 3)].into(), "eBPF drops");
    }
    // IPv6 is off in the container, on its bridge and on its host-side veth.
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
        "net.ipv6.conf.eth0.disable_ipv6",
    ] {
        assert_eq!(sysctl(&sb, &a_netns, key), "1", "{key} in the container");
    }
    for link in ["nc-front", a_veth.as_str()] {
        let key = format!("net.ipv6.conf.{link}.disable_ipv6");
        assert_eq!(sysctl(&sb, &sb.host_netns, &key), "1", "{key} on the host");
    }
    let eth0 = text(&sb.run_in(&a_netns, &["ip", "-6", "addr", "show", "dev", "eth0"]));
    assert!(
        eth0.trim().is_empty(),
        "IPv6 addresses in the container: {eth0}"
    );
}

/// Packets dropped so far by the ARP anti-spoofing rules of `veth` in
/// nftables' `table bridge netctl` of the host (0 when there is none).
fn nft_arp_drops(sb: &Sandbox, veth: &str) -> u64 {
    let text = sb.run_in_ok(&sb.host_netns, &["nft", "-j", "list", "ruleset"]);
    let ruleset: serde_json::Value = serde_json::from_str(&text).expect("nft json");
    let quoted = format!("\"{veth}\"");
    ruleset["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|item| item.get("rule"))
        .filter(|rule| rule["family"] == "bridge" && rule["table"] == "netctl")
        .filter(|rule| rule["expr"].to_string().contains(&quoted))
        .flat_map(|rule| rule["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .sum()
}

/// The MAC the host's neighbour table has for `ip` on the bridge.
fn host_neighbour(sb: &Sandbox, ip: &str) -> String {
    sb.run_in_ok(
        &sb.host_netns,
        &["ip", "neigh", "show", ip, "dev", "nc-front"],
    )
    .trim()
    .to_owned()
}

/// The bridge port the host's bridge forwards `mac` to.
fn fdb_port(sb: &Sandbox, mac: &str) -> String {
    let fdb = sb.run_in_ok(&sb.host_netns, &["bridge", "fdb", "show", "br", "nc-front"]);
    fdb.lines()
        .find(|l| l.starts_with(&format!("{mac} ")))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_owned()
}

/// The outside reaches b's published port (several new connections).
fn published_port_reaches_b(sb: &Sandbox) {
    for _ in 0..3 {
        let out = sb.outside(&[
            &nettool(),
            "call",
            "tcp",
            &HOST_UPLINK_IP.to_string(),
            "8080",
            "--timeout-ms",
            "2000",
        ]);
        assert!(
            out.status.success(),
            "8080 -> b: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // b answers (the client's address is kept: it is not b's own).
        assert!(text(&out).starts_with("peer="), "answer {:?}", text(&out));
    }
}

fn gratuitous_arp_cannot_take_over_another_containers_address(datapath: &str) {
    const FORGED: u64 = 3;
    let sb = Sandbox::new(datapath);
    // The victim b is `web`: its tcp/80 is published on 8080.
    sb.front_with_web();
    let tool = nettool();
    let ep = |name: &str, field: &str| {
        sb.inspect(name)["endpoints"][0][field]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_ip, a_mac, a_veth) = (ep("a", "ip"), ep("a", "mac"), ep("a", "host_veth"));
    let (b_ip, b_mac, b_veth) = (ep("web", "ip"), ep("web", "mac"), ep("web", "host_veth"));
    let a_netns = sb.netns_of("a");

    // The host knows b (a neighbour entry), the bridge knows b's port, and
    // b answers on its published port.
    sb.run_in_ok(&sb.host_netns, &["ping", "-c1", "-W2", &b_ip]);
    assert!(host_neighbour(&sb, &b_ip).contains(&b_mac), "before");
    assert_eq!(
        fdb_port(&sb, &b_mac),
        b_veth,
        "b's MAC on the bridge, before"
    );
    published_port_reaches_b(&sb);

    let before = sb.drop_counters();
    let nft_before = nft_arp_drops(&sb, &a_veth);
    // a's own gratuitous ARP is a genuine one: it passes, uncounted.
    let own = sb.run_in_ok(
        &a_netns,
        &[&tool, "arpsend", "eth0", &a_mac, &a_mac, &a_ip, "2"],
    );
    assert_eq!(own.trim(), "sent=2");
    // b's address at a's MAC: the neighbour table's takeover.
    let count = FORGED.to_string();
    let sent = sb.run_in_ok(
        &a_netns,
        &[&tool, "arpsend", "eth0", &a_mac, &a_mac, &b_ip, &count],
    );
    assert_eq!(sent.trim(), format!("sent={FORGED}"));
    let neighbour = host_neighbour(&sb, &b_ip);
    assert!(
        neighbour.contains(&b_mac) && !neighbour.contains(&a_mac),
        "the host's neighbour entry for b after a's ARP: {neighbour:?}"
    );
    published_port_reaches_b(&sb);
    // b's address and MAC both: the bridge's forwarding table's.
    let sent = sb.run_in_ok(
        &a_netns,
        &[&tool, "arpsend", "eth0", &b_mac, &b_mac, &b_ip, &count],
    );
    assert_eq!(sent.trim(), format!("sent={FORGED}"));
    assert_eq!(
        fdb_port(&sb, &b_mac),
        b_veth,
        "b's MAC on the bridge, after"
    );
    published_port_reaches_b(&sb);

    // Each forged ARP dropped and counted, nothing else.
    if datapath == "ebpf" {
        let moved = ebpf_drops_since(&sb, &before);
        assert_eq!(
            moved,
            [("drop_arp_spoofed".to_owned(), 2 * FORGED)].into(),
            "eBPF drops"
        );
    } else {
        let moved = nft_arp_drops(&sb, &a_veth) - nft_before;
        assert_eq!(
            moved,
            2 * FORGED,
            "packets of a's ARP rule in table bridge netctl"
        );
    }
}
