//! Dual-stack networks (`--ipv6`) on the iptables datapath, in a sandbox
//! whose uplink has 2001:db8::/32 addresses (`Sandbox::dual_stack`):
//! container to container by address and by name over IPv6, NAT66 egress
//! seen from outside, a published port reached from outside over IPv6 with
//! the client's address kept (and from the host itself, and hairpin),
//! unpublished ports and container addresses unreachable from outside,
//! isolation between networks, `--internal`, forged source addresses, MACs
//! and neighbour advertisements dropped (and counted), router
//! advertisements taken by nobody, `network connect`/`disconnect` keeping
//! an IPv6 way out, `doctor` clean and repairing the IPv6 side, and the
//! sandbox's leak check covering ip6tables. Then bad input (IPv6 subnets too small or overlapping,
//! `--ip6` outside the subnet or on an IPv4-only network, a family given
//! twice) and the eBPF datapath's refusal, each leaving the host as it was,
//! as a failure at any step of a dual-stack create or run does.
//! IPv4 on the same networks is covered as before by the other files; here
//! it is checked to still work beside IPv6.

use netctl_tests::output::{nettool, peer_ip6 as peer6, text};
use netctl_tests::sandbox::{Sandbox, HOST_UPLINK_IP, HOST_UPLINK_IP6, OUTSIDE_IP6, UPLINK};

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

/// `nettool call tcp [ip] port` from a namespace until it answers (a
/// server may still be starting, ~3 s at most): the reply.
fn answer6(sb: &Sandbox, netns: &str, ip: impl std::fmt::Display, port: u16) -> String {
    let (host, port) = (bracket(ip), port.to_string());
    netctl_tests::sandbox::call_until_answer(|| {
        sb.run_in(netns, &[&nettool(), "call", "tcp", &host, &port])
    })
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

/// A container serving tcp/80 on both families (`extra`: more flags of
/// `container run`).
fn server(sb: &Sandbox, name: &str, network: &str, extra: &[&str]) {
    let tool = nettool();
    let mut args = vec!["container", "run", name, "--network", network];
    args.extend_from_slice(extra);
    args.extend(["--", &tool, "serve", "tcp", "[::]:80"]);
    sb.netctl_ok(&args);
}

/// A dual-stack network with these subnets (`extra`: more flags).
fn dual(sb: &Sandbox, name: &str, v4: &str, v6: &str, extra: &[&str]) {
    let mut args = vec!["--ipv6", "--subnet", v4, "--subnet", v6];
    args.extend_from_slice(extra);
    sb.network(name, &args);
}

/// Front (dual stack) with `web` serving tcp/80 on both families,
/// published on 8080, and `a`.
fn front(sb: &Sandbox) {
    dual(sb, "front", "172.18.0.0/16", FRONT6, &[]);
    server(sb, "web", "front", &["-p", "8080:80"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
}

/// A dual-stack sandbox with [`front`], when the test may run (root).
fn front_sandbox() -> Option<Sandbox> {
    root("sandboxes").then(|| {
        let sb = Sandbox::dual_stack("iptables");
        front(&sb);
        sb
    })
}

/// The packet counter of the one ip6tables raw rule holding `needle`.
fn raw6_counter(sb: &Sandbox, needle: &str) -> u64 {
    let saved = sb.run_in_ok(&sb.host_netns, &["ip6tables-save", "-c", "-t", "raw"]);
    counter_in(&saved, needle, |line| {
        line.trim_start_matches('[').split(':').next()?.parse().ok()
    })
}

/// The number `read` finds in the one line of `text` holding `needle`.
fn counter_in(text: &str, needle: &str, read: impl Fn(&str) -> Option<u64>) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle}:\n{text}"));
    read(line).unwrap_or_else(|| panic!("counter of {line}"))
}

#[test]
fn dual_stack_containers_talk_by_address_and_name_and_reach_out_through_nat66() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    assert_eq!(sb.ip6_of("web", "front").to_string(), WEB6);
    assert_eq!(sb.ip6_of("a", "front").to_string(), A6);
    // Tables show both families.
    let ls = sb.netctl_ok(&["container", "ls"]);
    assert!(ls.contains(&format!("172.18.0.3,{A6}")), "{ls}");
    let ls = sb.netctl_ok(&["network", "ls"]);
    assert!(ls.contains(&format!("172.18.0.0/16,{FRONT6}")), "{ls}");
    assert!(ls.contains("172.18.0.1,fd00:18::1"), "{ls}");
    let a = sb.netns_of("a");

    // Container to container by address: the server sees a's own address.
    let reply = answer6(&sb, &a, WEB6, 80);
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
    let reply = answer6(&sb, &a, OUTSIDE_IP6, 9000);
    assert_eq!(peer6(&reply), HOST_UPLINK_IP6, "{reply}");

    // ICMPv6 echo through NAT66 too.
    let ping = sb.exec("a", &["ping", "-6", "-c1", "-W2", &OUTSIDE_IP6.to_string()]);
    assert!(ping.status.success(), "ping -6 outside: {}", text(&ping));

    // The hosts file carries both addresses.
    let hosts = sb.exec("a", &["cat", "/etc/hosts"]);
    assert!(
        text(&hosts).contains(&format!("{A6}\ta")),
        "{}",
        text(&hosts)
    );

    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
}

#[test]
fn published_ports_answer_on_the_hosts_ipv6_address_and_nothing_else_does() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    let out = sb.outside_netns.clone();
    // From outside over IPv6: the server sees the client's own address.
    let reply = answer6(&sb, &out, HOST_UPLINK_IP6, 8080);
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
    assert_eq!(
        call6(&sb, &out, WEB6, 80, 1500),
        None,
        "container address from outside"
    );
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
fn isolation_and_internal_hold_over_ipv6() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    dual(&sb, "back", "172.19.0.0/16", "fd00:19::/64", &[]);
    dual(&sb, "int", "172.20.0.0/16", "fd00:20::/64", &["--internal"]);
    server(&sb, "b", "back", &[]);
    sb.netctl_ok(&["container", "run", "b2", "--network", "back"]);
    server(&sb, "i", "int", &[]);
    sb.netctl_ok(&["container", "run", "i2", "--network", "int"]);
    let (b, i) = (
        sb.ip6_of("b", "back").to_string(),
        sb.ip6_of("i", "int").to_string(),
    );
    let (a, b2, i2) = (sb.netns_of("a"), sb.netns_of("b2"), sb.netns_of("i2"));
    let out = sb.outside_netns.clone();
    // An internal container has no IPv6 default route.
    let routes = sb.exec("i", &["ip", "-6", "route", "show", "default"]);
    assert_eq!(text(&routes).trim(), "", "internal default route");

    // Controls: each server answers its own network's peers.
    let reply = answer6(&sb, &b2, &b, 80);
    assert_eq!(peer6(&reply), sb.ip6_of("b2", "back"));
    let reply = answer6(&sb, &i2, &i, 80);
    assert_eq!(peer6(&reply), sb.ip6_of("i2", "int"));

    // Between networks: dropped by ISOLATION-2 (its counter says so).
    let isolated = |sb: &Sandbox| -> u64 {
        let saved = sb.run_in_ok(&sb.host_netns, &["ip6tables-save", "-c", "-t", "filter"]);
        saved
            .lines()
            .filter(|l| l.contains("-A NETCTL-ISOLATION-2 -o nc-back -j DROP"))
            .filter_map(|l| {
                l.trim_start_matches('[')
                    .split(':')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = isolated(&sb);
    assert_eq!(call6(&sb, &a, &b, 80, 1500), None, "front -> back");
    assert!(
        isolated(&sb) > before,
        "front -> back not dropped by isolation"
    );
    // Internal: nothing in, nothing out, over IPv6 too.
    assert_eq!(call6(&sb, &a, &i, 80, 1500), None, "front -> int");
    assert_eq!(call6(&sb, &b2, &i, 80, 1500), None, "back -> int");
    let ping = sb.exec(
        "i2",
        &["ping", "-6", "-c1", "-W1", &OUTSIDE_IP6.to_string()],
    );
    assert!(!ping.status.success(), "int reached the outside");
    sb.run_in_ok(
        &out,
        &[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:20::/64",
            "via",
            &HOST_UPLINK_IP6.to_string(),
        ],
    );
    assert_eq!(call6(&sb, &out, &i, 80, 1500), None, "outside -> int");
    // And a published port can still be reached from another network
    // through the host's address, as over IPv4.
    let reply = answer6(&sb, &b2, HOST_UPLINK_IP6, 8080);
    assert!(reply.starts_with("peer=["), "{reply}");
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
}

/// The nft counter of the rule whose comment is `comment`.
fn nft_counter(sb: &Sandbox, comment: &str) -> u64 {
    let rules = sb.nft_ruleset();
    counter_in(&rules, &format!("comment \"{comment}\""), |line| {
        line.split("counter packets ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn forged_ipv6_sources_macs_and_neighbour_advertisements_are_dropped() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    let a = sb.inspect("a");
    let veth = a["endpoints"][0]["host_veth"].as_str().unwrap().to_owned();
    let mac = a["endpoints"][0]["mac"].as_str().unwrap().to_owned();
    let a_ns = sb.netns_of("a");
    assert!(sb
        .exec("a", &["ping", "-6", "-c1", "-W2", WEB6])
        .status
        .success());

    // A source address that is not its own.
    let before = raw6_counter(
        &sb,
        &format!("! -s {A6}/128 -m physdev --physdev-in {veth} "),
    );
    sb.exec(
        "a",
        &["ip", "-6", "addr", "add", "fd00:18::99/64", "dev", "eth0"],
    );
    let forged = sb.exec(
        "a",
        &["ping", "-6", "-c2", "-W1", "-I", "fd00:18::99", WEB6],
    );
    assert!(!forged.status.success(), "forged source got an answer");
    let after = raw6_counter(
        &sb,
        &format!("! -s {A6}/128 -m physdev --physdev-in {veth} "),
    );
    assert!(
        after >= before + 2,
        "forged sources counted: {before} -> {after}"
    );
    sb.exec(
        "a",
        &["ip", "-6", "addr", "del", "fd00:18::99/64", "dev", "eth0"],
    );

    // A MAC that is not its own.
    let mac_rule = format!("--physdev-in {veth} -m mac ! --mac-source {mac}");
    let before = raw6_counter(&sb, &mac_rule);
    sb.exec(
        "a",
        &["ip", "link", "set", "eth0", "address", "02:42:ac:12:00:99"],
    );
    let forged = sb.exec("a", &["ping", "-6", "-c2", "-W1", WEB6]);
    sb.exec("a", &["ip", "link", "set", "eth0", "address", &mac]);
    assert!(!forged.status.success(), "forged MAC got an answer");
    assert!(
        raw6_counter(&sb, &mac_rule) >= before + 2,
        "forged MACs counted"
    );

    // A neighbour advertisement claiming web's address, from a's own
    // address and MAC: dropped and counted by its nft rule, and the host
    // keeps web's MAC for web's address.
    let comment = format!("{veth} {A6} {mac}");
    let before = nft_counter(&sb, &comment);
    let sent = sb.run_in_ok(&a_ns, &[&nettool(), "nasend", "eth0", &mac, A6, WEB6, "3"]);
    assert_eq!(sent.trim(), "sent=3");
    assert_eq!(nft_counter(&sb, &comment), before + 3, "forged NAs");
    // Its own address it may advertise (the control: the rule matched on
    // the target, not on neighbour advertisements as such).
    sb.run_in_ok(&a_ns, &[&nettool(), "nasend", "eth0", &mac, A6, A6, "2"]);
    assert_eq!(nft_counter(&sb, &comment), before + 3, "own NA dropped");
    let neigh = sb.run_in_ok(&sb.host_netns, &["ip", "-6", "neigh", "show", WEB6]);
    assert!(
        !neigh.contains(&mac),
        "the host took a's MAC for web: {neigh}"
    );
    // Traffic is unharmed.
    assert!(sb
        .exec("a", &["ping", "-6", "-c1", "-W2", WEB6])
        .status
        .success());
}

/// The host as netctl shows it: networks, containers.
fn listing(sb: &Sandbox) -> (String, String) {
    (
        sb.netctl_ok(&["--format", "json", "network", "ls"]),
        sb.netctl_ok(&["--format", "json", "container", "ls"]),
    )
}

#[test]
fn bad_ipv6_input_is_refused_and_changes_nothing() {
    if !root("sandboxes") {
        return;
    }
    let sb = Sandbox::new("iptables");
    dual(&sb, "front", "172.18.0.0/16", FRONT6, &[]);
    sb.network("v4only", &["--subnet", "172.21.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let before = listing(&sb);
    let rules_before = sb
        .ip6tables_save()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let cases: [(&[&str], &str); 12] = [
        (
            &["network", "create", "tiny", "--ipv6", "--subnet", "fd00:30::/127"],
            "subnet fd00:30::/127: prefix /127 cannot hold the subnet-router anycast address, a gateway and a container (at most /126)",
        ),
        (
            &["network", "create", "over", "--ipv6", "--subnet", "fd00:18::/48"],
            "subnet fd00:18::/48: overlaps network front (fd00:18::/64)",
        ),
        (
            &["network", "create", "two", "--ipv6", "--subnet", "fd00:31::/64", "--subnet", "fd00:32::/64"],
            "--subnet fd00:32::/64: --subnet is given twice for IPv6 (once per family)",
        ),
        (
            &["network", "create", "nov6", "--subnet", "fd00:33::/64"],
            "network nov6: an IPv6 --subnet or --gateway needs --ipv6",
        ),
        (
            &["network", "create", "gw", "--ipv6", "--subnet", "fd00:34::/64", "--gateway", "fd00:35::1"],
            "gateway fd00:35::1: outside subnet fd00:34::/64",
        ),
        (
            &["container", "run", "b", "--network", "front", "--ip6", "fd00:99::5"],
            "ip6 fd00:99::5: outside subnet fd00:18::/64",
        ),
        (
            &["container", "run", "b", "--network", "front", "--ip6", "fd00:18::1"],
            "ip6 fd00:18::1: is the gateway of fd00:18::/64",
        ),
        (
            &["container", "run", "b", "--network", "v4only", "--ip6", "fd00:18::9"],
            "ip6 fd00:18::9: network v4only has no IPv6 (made without --ipv6)",
        ),
        (
            &["container", "run", "b", "--network", "front", "--ip", "fd00:18::9"],
            "ip fd00:18::9: is an IPv6 address: give it with --ip6",
        ),
        (
            &["container", "run", "b", "--network", "front", "-p", "[2001:db8::99]:8080:80"],
            "port spec [2001:db8::99]:8080:80/tcp: 2001:db8::99 is not an address of the host",
        ),
        (
            &["container", "run", "b", "--network", "v4only", "-p", "[fd00:18::1]:8080:80"],
            "port spec [fd00:18::1]:8080:80/tcp: network v4only has no IPv6 (create it with --ipv6)",
        ),
        (
            &["container", "run", "b", "--network", "front", "-p", "[::1]:8080:80"],
            "port spec [::1]:8080:80: [::1] cannot be published: the kernel never forwards ::1 to a container (IPv6 has no route_localnet); publish on every address or on one of the host's IPv6 addresses",
        ),
    ];
    for (args, message) in cases {
        let (code, err) = sb.netctl_err(args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim(), format!("netctl: {message}"), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}");
    }
    assert_eq!(listing(&sb), before, "state changed");
    let rules_after = sb
        .ip6tables_save()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(rules_after, rules_before, "ip6tables changed");
    // A good --ip6 is taken.
    sb.netctl_ok(&[
        "container",
        "run",
        "b",
        "--network",
        "front",
        "--ip6",
        "fd00:18::99",
    ]);
    assert_eq!(sb.ip6_of("b", "front").to_string(), "fd00:18::99");
}

#[test]
fn ipv6_without_a_subnet_takes_a_stable_unique_local_64() {
    if !root("sandboxes") {
        return;
    }
    let sb = Sandbox::new("iptables");
    sb.network("u", &["--ipv6"]);
    let show = |sb: &Sandbox| -> serde_json::Value {
        let text = sb.netctl_ok(&["--format", "json", "network", "inspect", "u"]);
        serde_json::from_str::<serde_json::Value>(&text).unwrap()[0]["ipv6"].clone()
    };
    let first = show(&sb);
    let expected = netctl::ipam6::ula_subnet(&sb.host_netns, "u", &[]).unwrap();
    assert_eq!(first["subnet"], expected.to_string(), "{first}");
    assert_eq!(
        first["gateway"],
        netctl::ipam6::default_gateway(expected).to_string()
    );
    // The table shows both families.
    let table = sb.netctl_ok(&["network", "ls"]);
    assert!(table.contains(&expected.to_string()), "{table}");
    // The last dual-stack network takes netctl's ip6tables chains with it
    // (doctor stays clean with the IPv4 network left); made again, the
    // same prefix.
    sb.network("plain", &[]);
    sb.netctl_ok(&["network", "rm", "u"]);
    let saved = sb.ip6tables_save();
    assert!(!saved.contains("NETCTL"), "{saved}");
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
    sb.network("u", &["--ipv6"]);
    assert_eq!(show(&sb), first);
}

#[test]
fn the_ebpf_datapath_refuses_ipv6() {
    if !root("sandboxes") {
        return;
    }
    let sb = Sandbox::new("ebpf");
    let message = "netctl: network x: --ipv6 needs the iptables datapath: the eBPF datapath's \
                   programs are IPv4-only for now";
    // The host's first network, and a later one.
    let (code, err) = sb.netctl_err(&["network", "create", "x", "--ipv6", "--datapath", "ebpf"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim(), message);
    assert_eq!(
        sb.netctl_ok(&["--format", "json", "network", "ls"]).trim(),
        "[]"
    );
    assert!(sb.pins().is_empty(), "{:?}", sb.pins());
    sb.network("front", &[]);
    let before = sb.netctl_ok(&["--format", "json", "network", "ls"]);
    let (code, err) = sb.netctl_err(&["network", "create", "x", "--ipv6"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim(), message);
    assert_eq!(sb.netctl_ok(&["--format", "json", "network", "ls"]), before);
}

#[test]
fn connect_and_disconnect_keep_an_ipv6_way_out() {
    if !root("sandboxes") {
        return;
    }
    let mut sb = Sandbox::dual_stack("iptables");
    dual(&sb, "front", "172.18.0.0/16", FRONT6, &[]);
    dual(&sb, "back", "172.19.0.0/16", "fd00:19::/64", &[]);
    sb.netctl_ok(&["container", "run", "c", "--network", "front"]);
    sb.netctl_ok(&["network", "connect", "back", "c", "--ip6", "fd00:19::77"]);
    assert_eq!(sb.ip6_of("c", "back").to_string(), "fd00:19::77");
    sb.netctl_ok(&["network", "disconnect", "front", "c"]);
    // Its IPv6 default route came back through back's gateway, and NAT66
    // still takes it out.
    let routes = sb.exec("c", &["ip", "-6", "route", "show", "default"]);
    assert!(
        text(&routes).contains("via fd00:19::1"),
        "{}",
        text(&routes)
    );
    let out = sb.outside_netns.clone();
    sb.spawn_in(&out, &[&nettool(), "serve", "tcp", "[::]:9000"]);
    let c = sb.netns_of("c");
    let reply = answer6(&sb, &c, OUTSIDE_IP6, 9000);
    assert_eq!(peer6(&reply), HOST_UPLINK_IP6, "{reply}");
    // front's rules for c are gone from ip6tables.
    let saved = sb.ip6tables_save();
    assert!(!saved.contains("fd00:18::2/128"), "{saved}");
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));

    // Drift in the IPv6 side: the bridge's IPv6 gateway and an ip6tables
    // rule gone. doctor finds both, --fix puts them back.
    let host = sb.host_netns.clone();
    sb.run_in_ok(
        &host,
        &["ip", "-6", "addr", "del", "fd00:19::1/64", "dev", "nc-back"],
    );
    sb.run_in_ok(
        &host,
        &[
            "ip6tables",
            "-t",
            "nat",
            "-D",
            "NETCTL-POSTROUTING",
            "-s",
            "fd00:19::/64",
            "!",
            "-o",
            "nc-back",
            "-j",
            "MASQUERADE",
        ],
    );
    let doctor = sb.netctl(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "doctor: {}", text(&doctor));
    let found = text(&doctor);
    assert!(
        found.contains("lacks the gateway address fd00:19::1"),
        "{found}"
    );
    assert!(
        found.contains(
            "ip6tables rule `nat -A NETCTL-POSTROUTING -s fd00:19::/64 ! -o nc-back -j MASQUERADE`"
        ),
        "{found}"
    );
    let fix = sb.netctl(&["doctor", "--fix"]);
    assert!(
        fix.status.success(),
        "doctor --fix: {} {}",
        text(&fix),
        String::from_utf8_lossy(&fix.stderr)
    );
    let doctor = sb.netctl(&["doctor"]);
    assert!(
        doctor.status.success(),
        "doctor after --fix: {}",
        text(&doctor)
    );
    let reply = answer6(&sb, &c, OUTSIDE_IP6, 9000);
    assert_eq!(peer6(&reply), HOST_UPLINK_IP6, "{reply}");
}

#[test]
fn router_advertisements_neither_reach_the_host_nor_the_containers() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    let a = sb.inspect("a");
    let mac = a["endpoints"][0]["mac"].as_str().unwrap().to_owned();
    let a_ns = sb.netns_of("a");
    let web_ns = sb.netns_of("web");
    let host = sb.host_netns.clone();
    // netctl's settings where it assigns IPv6 addresses.
    let sysctl = |netns: &str, key: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{key}");
        sb.run_in_ok(netns, &["cat", &path]).trim().to_owned()
    };
    for (netns, link) in [(&a_ns, "eth0"), (&host, "nc-front")] {
        assert_eq!(sysctl(netns, &format!("{link}/accept_ra")), "0", "{link}");
        assert_eq!(sysctl(netns, &format!("{link}/accept_dad")), "0", "{link}");
    }
    assert_eq!(sysctl(&a_ns, "eth0/addr_gen_mode"), "1");
    assert_eq!(sysctl(&host, "all/forwarding"), "1");
    let routes = |netns: &str| sb.run_in_ok(netns, &["ip", "-6", "route"]);
    let (host_before, web_before) = (routes(&host), routes(&web_ns));

    // a sends router advertisements offering a default route and
    // 2001:db8:1::/64: neither the host nor web takes anything from them.
    let sent = sb.run_in_ok(&a_ns, &[&nettool(), "rasend", "eth0", &mac, "3"]);
    assert_eq!(sent.trim(), "sent=3");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(routes(&host), host_before, "the host took an RA");
    assert_eq!(routes(&web_ns), web_before, "web took an RA");
    let addrs = sb.run_in_ok(&web_ns, &["ip", "-6", "addr", "show", "scope", "global"]);
    assert!(!addrs.contains("2001:db8:1:"), "{addrs}");
}

#[test]
fn hairpin_and_the_host_itself_reach_published_ports_over_ipv6() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    let a = sb.netns_of("a");
    // A container of the same network through the host's IPv6 address:
    // MASQUERADEd to the gateway so that web's answer comes back the same way.
    let reply = answer6(&sb, &a, HOST_UPLINK_IP6, 8080);
    assert_eq!(peer6(&reply).to_string(), "fd00:18::1", "{reply}");
    // The host itself, at its own IPv6 address.
    let host = sb.host_netns.clone();
    let reply = answer6(&sb, &host, HOST_UPLINK_IP6, 8080);
    assert_eq!(peer6(&reply), HOST_UPLINK_IP6, "{reply}");
}

/// `nettool dnsask TRANSPORT SERVER NAME QTYPE` from a container:
/// `rcode=... answers=...` or `timeout`.
fn dnsask(
    sb: &Sandbox,
    ctr: &str,
    transport: &str,
    server: &str,
    name: &str,
    qtype: &str,
) -> String {
    let out = sb.exec(ctr, &[&nettool(), "dnsask", transport, server, name, qtype]);
    assert!(out.status.success(), "dnsask: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_resolver_answers_on_the_ipv6_gateway_too() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    // resolv.conf names both gateways, IPv4 first.
    let conf = text(&sb.exec("a", &["cat", "/etc/resolv.conf"]));
    let servers: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(str::trim)
        .collect();
    assert_eq!(servers, ["172.18.0.1", "fd00:18::1"], "{conf}");
    // AAAA and A asked over IPv6 (UDP and TCP) at the IPv6 gateway.
    for transport in ["udp", "tcp"] {
        assert_eq!(
            dnsask(&sb, "a", transport, "fd00:18::1", "web", "AAAA"),
            format!("rcode=NoError answers={WEB6}"),
            "{transport}"
        );
        assert_eq!(
            dnsask(&sb, "a", transport, "fd00:18::1", "web", "A"),
            "rcode=NoError answers=172.18.0.2",
            "{transport}"
        );
    }
    // And over IPv4, as before.
    assert_eq!(
        dnsask(&sb, "a", "udp", "172.18.0.1", "web", "AAAA"),
        format!("rcode=NoError answers={WEB6}")
    );
    // A container of another network asking front's IPv6 gateway learns
    // nothing; its own IPv6 gateway answers it.
    dual(&sb, "back", "172.19.0.0/16", "fd00:19::/64", &[]);
    sb.netctl_ok(&["container", "run", "b", "--network", "back"]);
    assert_eq!(
        dnsask(&sb, "b", "udp", "fd00:18::1", "web", "AAAA"),
        "rcode=Refused answers="
    );
    assert_eq!(
        dnsask(&sb, "b", "udp", "fd00:19::1", "b", "AAAA"),
        format!("rcode=NoError answers={}", sb.ip6_of("b", "back"))
    );
    assert_eq!(
        dnsask(&sb, "b", "udp", "fd00:19::1", "web", "AAAA"),
        "rcode=NXDomain answers="
    );
    // doctor checks both gateways and finds the resolver answering.
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
}

/// A second IPv6 address of the host (on its uplink), for ports bound to
/// one address.
const HOST_SECOND_IP6: &str = "2001:db8::11";

#[test]
fn a_port_on_one_ipv6_host_address_answers_there_only() {
    let Some(mut sb) = front_sandbox() else {
        return;
    };
    let (host, out) = (sb.host_netns.clone(), sb.outside_netns.clone());
    sb.run_in_ok(
        &host,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{HOST_SECOND_IP6}/64"),
            "dev",
            UPLINK,
            "nodad",
        ],
    );
    let spec = format!("[{HOST_SECOND_IP6}]:8443:80");
    server(&sb, "api", "front", &["-p", &spec]);
    let api6 = sb.ip6_of("api", "front").to_string();
    // Shown as Docker writes it, and DNATed in ip6tables only.
    let ports = sb.netctl_ok(&["port", "api"]);
    assert_eq!(ports.trim(), format!("80/tcp -> [{HOST_SECOND_IP6}]:8443"));
    let rule = format!(
        "-A NETCTL-DNAT -d {HOST_SECOND_IP6}/128 -p tcp -m tcp --dport 8443 -j DNAT --to-destination [{api6}]:80"
    );
    assert!(
        sb.ip6tables_save().contains(&rule),
        "{}",
        sb.ip6tables_save()
    );
    assert!(
        !sb.iptables_save().contains("--dport 8443"),
        "{}",
        sb.iptables_save()
    );

    // From outside at that address: the client's address kept.
    let reply = answer6(&sb, &out, HOST_SECOND_IP6, 8443);
    assert_eq!(peer6(&reply), OUTSIDE_IP6, "{reply}");
    // Not at the host's other IPv6 address, nor over IPv4.
    assert_eq!(
        call6(&sb, &out, &HOST_UPLINK_IP6.to_string(), 8443, 1500),
        None,
        "another IPv6 address of the host"
    );
    let v4 = sb.run_in(
        &out,
        &[
            &nettool(),
            "call",
            "tcp",
            &HOST_UPLINK_IP.to_string(),
            "8443",
            "--timeout-ms",
            "1500",
        ],
    );
    assert!(!v4.status.success(), "IPv4: {}", text(&v4));
    // The host itself at that address, and hairpin from a container (its
    // source MASQUERADEd to the gateway).
    let reply = answer6(&sb, &host, HOST_SECOND_IP6, 8443);
    assert_eq!(peer6(&reply).to_string(), HOST_SECOND_IP6, "{reply}");
    let reply = answer6(&sb, &sb.netns_of("a"), HOST_SECOND_IP6, 8443);
    assert_eq!(peer6(&reply).to_string(), "fd00:18::1", "{reply}");

    // A port on every address keeps its IPv6 side beside it; a port on one
    // IPv4 address gets none.
    server(
        &sb,
        "v4",
        "front",
        &["-p", &format!("{HOST_UPLINK_IP}:8444:80")],
    );
    assert!(!sb.ip6tables_save().contains("--dport 8444"));
    assert_eq!(
        call6(&sb, &out, &HOST_UPLINK_IP6.to_string(), 8444, 1500),
        None
    );
    let reply = answer6(&sb, &out, HOST_UPLINK_IP6, 8080);
    assert_eq!(peer6(&reply), OUTSIDE_IP6, "{reply}");
    // [::1] is not forwarded to the container (IPv6 has no route_localnet;
    // Docker needs its userland proxy for it), the host's own address is
    // (above); nor is it DNATed into nowhere: a host service on
    // [::1]:8080 still answers the host's clients.
    sb.spawn_in(&host, &[&nettool(), "serve", "tcp", "[::1]:8080"]);
    let reply = answer6(&sb, &host, "::1", 8080);
    assert_eq!(peer6(&reply).to_string(), "::1", "{reply}");

    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
    // Unpublished on rm.
    sb.netctl_ok(&["container", "rm", "api"]);
    assert!(
        !sb.ip6tables_save().contains("--dport 8443"),
        "{}",
        sb.ip6tables_save()
    );
    assert_eq!(call6(&sb, &out, HOST_SECOND_IP6, 8443, 1500), None);
}

/// Addresses behind the outside namespace: its link to a router
/// (2001:db8:1::/64) and the router's link to a server (2001:db8:2::/64).
const OUTSIDE_TO_ROUTER6: &str = "2001:db8:1::1";
const ROUTER_NEAR6: &str = "2001:db8:1::2";
const ROUTER_FAR6: &str = "2001:db8:2::1";
const SERVER6: &str = "2001:db8:2::2";

/// A router namespace behind the outside one and a server behind the
/// router, over IPv6, the router's side of the server's link at MTU 1280
/// (the server's at 1500: it announces an MSS the path cannot carry, so
/// the router must send Packet Too Big). Removed when dropped (declared
/// after the sandbox).
struct Hops6 {
    router: String,
    server: String,
}

impl Hops6 {
    fn new(sb: &Sandbox) -> Hops6 {
        let hops = Hops6 {
            router: format!("{}-rtr6", sb.prefix),
            server: format!("{}-srv6", sb.prefix),
        };
        netctl::netns::create(&hops.router).expect("router netns");
        netctl::netns::create(&hops.server).expect("server netns");
        let run = |netns: &str, args: &[&str]| {
            sb.run_in_ok(netns, args);
        };
        let (out, rtr, srv) = (
            sb.outside_netns.as_str(),
            hops.router.as_str(),
            hops.server.as_str(),
        );
        // Each link: its two ends, IPv6 on, no DAD (the addresses work at once).
        let link = |a: (&str, &str, &str), b: (&str, &str, &str), mtu: &str| {
            run(
                a.0,
                &[
                    "ip", "link", "add", a.1, "mtu", mtu, "type", "veth", "peer", "name", b.1,
                    "netns", b.0,
                ],
            );
            for (netns, ifname, address) in [a, b] {
                run(
                    netns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{ifname}.disable_ipv6=0"),
                    ],
                );
                run(
                    netns,
                    &["ip", "address", "add", address, "dev", ifname, "nodad"],
                );
                run(netns, &["ip", "link", "set", ifname, "up"]);
            }
        };
        for netns in [rtr, srv] {
            run(netns, &["ip", "link", "set", "lo", "up"]);
        }
        link(
            (out, "o-rtr6", "2001:db8:1::1/64"),
            (rtr, "r-out6", "2001:db8:1::2/64"),
            "1500",
        );
        link(
            (rtr, "r-srv6", "2001:db8:2::1/64"),
            (srv, "s-rtr6", "2001:db8:2::2/64"),
            "1280",
        );
        run(srv, &["ip", "link", "set", "s-rtr6", "mtu", "1500"]);
        run(
            out,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                ROUTER_NEAR6,
            ],
        );
        run(
            rtr,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                OUTSIDE_TO_ROUTER6,
            ],
        );
        run(
            srv,
            &["ip", "-6", "route", "add", "default", "via", ROUTER_FAR6],
        );
        for netns in [out, rtr] {
            run(netns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        hops
    }
}

impl Drop for Hops6 {
    fn drop(&mut self) {
        for netns in [&self.server, &self.router] {
            let _ = netctl::netns::delete(netns);
        }
    }
}

#[test]
fn path_mtu_and_fragments_through_nat66() {
    let Some(mut sb) = front_sandbox() else {
        return;
    };
    let hops = Hops6::new(&sb);
    let tool = nettool();
    let a = sb.netns_of("a");
    // The path works at all (and the server sees the host's address).
    let server = hops.server.clone();
    sb.spawn_in(&server, &[&tool, "sink", "[::]:9000", "--count", "1"]);
    // An upload through the router's 1280 link: the router's Packet Too
    // Big goes to the host's address (NAT66), the kernel's conntrack
    // translates it back to the container, which learns the path MTU and
    // sends smaller segments; without it the upload stalls.
    let out = sb.run_in(&a, &[&tool, "bulk", &bracket(SERVER6), "9000", "300000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent=300000 received=300000"),
        "the upload stalls ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let route = sb.run_in_ok(&a, &["ip", "-6", "route", "get", SERVER6]);
    assert!(
        route.contains("mtu 1280"),
        "no path MTU learnt in the container: {route}"
    );
    // And it was the router that told (not the host: its links are 1500).
    let nstat = sb.run_in_ok(&hops.router, &["nstat", "-az", "Icmp6OutPktTooBigs"]);
    let too_big = counter_in(&nstat, "Icmp6OutPktTooBigs", |line| {
        line.split_whitespace().nth(1)?.parse().ok()
    });
    assert!(too_big > 0, "no Packet Too Big from the router: {nstat}");

    // ping -6 with a 2000-byte payload: fragments both ways through NAT66
    // (reassembled for conntrack, fragmented again on the way out).
    assert!(sb
        .exec("a", &["ping", "-6", "-c1", "-W2", &OUTSIDE_IP6.to_string()])
        .status
        .success());
    let big = sb.exec(
        "a",
        &[
            "ping",
            "-6",
            "-c1",
            "-W2",
            "-s",
            "2000",
            &OUTSIDE_IP6.to_string(),
        ],
    );
    assert!(big.status.success(), "ping -6 -s 2000: {}", text(&big));
    assert!(text(&big).contains("2008 bytes from"), "{}", text(&big));
    drop(hops);
}

/// What a failed command must leave as it was: the state as listed,
/// netctl's rules of both families, its nftables rules (counters left
/// out), the host's links.
fn host_snapshot(sb: &Sandbox) -> Vec<String> {
    let lines = |text: String, keep: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(keep))
            .map(|l| match l.split_once("counter packets ") {
                Some((head, tail)) => {
                    let rest = tail.splitn(4, ' ').nth(3).unwrap_or_default();
                    format!("{head}counter {rest}")
                }
                None => l.to_owned(),
            })
            .collect()
    };
    let (networks, containers) = listing(sb);
    let mut all = vec![networks, containers];
    all.extend(lines(sb.iptables_save(), "NETCTL"));
    all.extend(lines(sb.ip6tables_save(), "NETCTL"));
    // The rules of `table bridge netctl` (named by their comments).
    all.extend(lines(sb.nft_ruleset(), "comment \""));
    all.extend(sb.host_links());
    all
}

#[test]
fn a_failure_at_any_step_of_a_dual_stack_command_changes_nothing() {
    let Some(sb) = front_sandbox() else {
        return;
    };
    let before = host_snapshot(&sb);
    let create = [
        "network",
        "create",
        "back",
        "--ipv6",
        "--subnet",
        "172.19.0.0/16",
        "--subnet",
        "fd00:19::/64",
    ];
    let run = [
        "container",
        "run",
        "b",
        "--network",
        "front",
        "-p",
        "8081:80",
        "--",
        "sleep",
        "30",
    ];
    // The points these two commands pass on the iptables datapath (the
    // `.map` ones are the eBPF datapath's).
    let points: Vec<&str> = netctl::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| {
            ["create.bridge", "create.network", "run.", "commit"]
                .iter()
                .any(|prefix| p.starts_with(prefix))
                && !p.ends_with(".map")
        })
        .collect();
    assert!(points.len() >= 15, "{points:?}");
    for point in points {
        let args: &[&str] = if point.starts_with("create.") {
            &create
        } else {
            &run
        };
        let out = sb
            .netctl_command(args)
            .env(netctl::failpoint::ENV, point)
            .output()
            .expect("run netctl");
        assert!(!out.status.success(), "{point}: the command succeeded");
        assert_eq!(host_snapshot(&sb), before, "after a failure at {point}");
    }
    // Without a failure both go through, with their IPv6 side.
    sb.netctl_ok(&create);
    sb.netctl_ok(&run);
    assert_eq!(sb.ip6_of("b", "front").to_string(), "fd00:18::4");
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {}", text(&doctor));
}
