//! Names and DNS as Docker users expect them (issue 16): each container's
//! own resolv.conf, the networks' resolver (names from the state, the rest
//! forwarded to the host's resolvers, loopback ones included), Docker's
//! `--dns*`, `--hostname` and `--network-alias` flags, isolation of names
//! between networks, and the resolver's life (killed, restored, stopped by
//! `down`: the sandbox's leak check looks for it).

use std::{net::Ipv4Addr, path::Path, time::Instant};

use netctl_tests::{
    on_both_datapaths,
    sandbox::{nettool_bin, Sandbox},
};

on_both_datapaths!(
    outside_names_resolve_through_the_hosts_loopback_resolver,
    dns_flags_override_the_host,
    names_and_aliases_resolve_on_their_network_only,
    containers_resolve_or_are_gone_within_one_command,
    the_resolver_killed_is_restored_by_the_next_command,
    bad_naming_input_is_refused_and_changes_nothing,
);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first IPv4 address `getent ahostsv4 NAME` gives in a container
/// (glibc's resolver, reading the container's /etc/hosts and resolv.conf).
fn resolve(sb: &Sandbox, container: &str, name: &str) -> Option<Ipv4Addr> {
    let out = sb.exec(container, &["getent", "ahostsv4", name]);
    text(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|ip| ip.parse().ok())
}

/// The name `getent hosts ADDRESS` gives in a container (a PTR query to
/// its resolver), if any.
fn reverse(sb: &Sandbox, container: &str, address: Ipv4Addr) -> Option<String> {
    let out = sb.exec(container, &["getent", "hosts", &address.to_string()]);
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// One A query from a container straight to a server: `rcode=... answers=...`
/// or `timeout`.
fn ask(sb: &Sandbox, container: &str, transport: &str, server: &str, name: &str) -> String {
    let tool = nettool_bin().display().to_string();
    let out = sb.exec(container, &[&tool, "dnsask", transport, server, name]);
    assert!(out.status.success(), "dnsask: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn resolver_pid(sb: &Sandbox) -> i32 {
    let pid_file = sb.state_dir.join("resolver.pid");
    let text = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let value: serde_json::Value = serde_json::from_str(&text).expect("pid file json");
    i32::try_from(value["pid"].as_u64().expect("pid")).expect("a pid")
}

/// The sandbox host's resolver: `nettool dnsserve` on 127.0.0.53 in the
/// host namespace, which containers cannot reach themselves.
fn host_resolver_on_loopback(sb: &Sandbox) -> netctl_tests::sandbox::Ready {
    sb.host_resolv_conf("nameserver 127.0.0.53\noptions edns0\n");
    let tool = nettool_bin().display().to_string();
    let mut ready = sb.start_all_ready(&[(
        &sb.host_netns,
        vec![
            &tool,
            "dnsserve",
            "127.0.0.53:53",
            "outside.example=203.0.113.7",
        ],
    )]);
    ready.pop().expect("one")
}

fn outside_names_resolve_through_the_hosts_loopback_resolver(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let upstream = host_resolver_on_loopback(&sb);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    // The network's resolver, in the container's own resolv.conf, with the
    // host's options.
    let netns = sb.netns_of("a");
    let conf = std::fs::read_to_string(Path::new("/etc/netns").join(&netns).join("resolv.conf"))
        .expect("a's resolv.conf");
    assert!(conf.contains("nameserver 172.18.0.1\n"), "{conf}");
    assert!(conf.contains("options edns0\n"), "{conf}");
    assert!(!conf.contains("127.0.0.53"), "{conf}");
    // An outside name, forwarded to 127.0.0.53 from the host namespace,
    // through netctl exec and through ip netns exec alike.
    assert_eq!(
        resolve(&sb, "a", "outside.example"),
        Some(Ipv4Addr::new(203, 0, 113, 7))
    );
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "getent",
            "ahostsv4",
            "outside.example",
        ])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).starts_with("203.0.113.7"),
        "ip netns exec: {}",
        text(&out.stdout)
    );
    // Over TCP as well (glibc retries over TCP when an answer is truncated).
    assert_eq!(
        ask(&sb, "a", "tcp", "172.18.0.1", "outside.example"),
        "rcode=NoError answers=203.0.113.7"
    );
    // On the default network nothing can reach 127.0.0.53: no broken file,
    // and inspect says why.
    sb.netctl_ok(&["container", "run", "plain"]);
    let plain = sb.inspect("plain");
    let problem = plain["resolv_conf"]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("loopback") && problem.contains("127.0.0.53"),
        "inspect: {plain}"
    );
    let plain_conf = Path::new("/etc/netns")
        .join(sb.netns_of("plain"))
        .join("resolv.conf");
    assert!(!plain_conf.exists(), "no resolv.conf for plain");
    let seen = upstream.finish_now();
    assert!(
        seen.contains("query outside.example from 127.0.0.1"),
        "the upstream saw the query from the host namespace: {seen}"
    );
}

fn dns_flags_override_the_host(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    let _upstream = host_resolver_on_loopback(&sb);
    // Another resolver, outside, answering the same name differently.
    let tool = nettool_bin().display().to_string();
    let outside_ns = sb.outside_netns.clone();
    sb.spawn_in(
        &outside_ns,
        &[
            &tool,
            "dnsserve",
            "198.51.100.2:53",
            "outside.example=203.0.113.9",
        ],
    );
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "d",
        "--network",
        "front",
        "--dns",
        "198.51.100.2",
        "--dns-search",
        "corp.example",
        "--dns-option",
        "ndots:2",
    ]);
    sb.netctl_ok(&["container", "run", "plain", "--dns", "198.51.100.2"]);
    // On a user network the resolver forwards to --dns; on the default
    // network the file names it.
    let until = Instant::now() + std::time::Duration::from_secs(5);
    let mut got = None;
    while got.is_none() && Instant::now() < until {
        got = resolve(&sb, "d", "outside.example");
    }
    assert_eq!(got, Some(Ipv4Addr::new(203, 0, 113, 9)));
    assert_eq!(
        resolve(&sb, "plain", "outside.example"),
        Some(Ipv4Addr::new(203, 0, 113, 9))
    );
    let d = sb.inspect("d");
    assert_eq!(d["dns"]["servers"][0], "198.51.100.2", "{d}");
    assert_eq!(d["resolv_conf"]["nameservers"][0], "172.18.0.1", "{d}");
    assert_eq!(d["resolv_conf"]["search"][0], "corp.example", "{d}");
    assert_eq!(d["resolv_conf"]["options"][0], "ndots:2", "{d}");
    let plain = sb.inspect("plain");
    assert_eq!(
        plain["resolv_conf"]["nameservers"][0], "198.51.100.2",
        "{plain}"
    );
    // --hostname: the name its processes see, and its own hosts file's.
    sb.netctl_ok(&[
        "container",
        "run",
        "h",
        "--network",
        "front",
        "--hostname",
        "box1",
    ]);
    let out = sb.exec("h", &["hostname"]);
    assert_eq!(text(&out.stdout).trim(), "box1");
    assert_eq!(resolve(&sb, "h", "box1"), Some(sb.ip_of("h", "front")));
}

fn names_and_aliases_resolve_on_their_network_only(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "--network-alias",
        "www",
        "--network-alias",
        "Site",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "db",
        "--network",
        "back",
        "--network-alias",
        "store",
    ]);
    let web = sb.ip_of("web", "front");
    for name in ["web", "www", "site", "WWW"] {
        assert_eq!(resolve(&sb, "a", name), Some(web), "a resolves {name}");
    }
    for name in ["db", "store"] {
        assert_eq!(
            resolve(&sb, "a", name),
            None,
            "a must not resolve back's {name}"
        );
    }
    assert_eq!(
        resolve(&sb, "db", "web"),
        None,
        "db must not resolve front's web"
    );
    assert_eq!(resolve(&sb, "db", "store"), Some(sb.ip_of("db", "back")));
    // Asking back's resolver directly from front: refused, not answered.
    assert_eq!(
        ask(&sb, "a", "udp", "172.19.0.1", "db"),
        "rcode=Refused answers="
    );
    assert_eq!(
        ask(&sb, "a", "tcp", "172.19.0.1", "store"),
        "rcode=Refused answers="
    );
    // Reverse names: a container's address on the asker's networks gives
    // its name; another network's container, or an address nobody has,
    // gives none (answered NXDOMAIN by the resolver, never forwarded).
    assert_eq!(reverse(&sb, "a", web), Some("web".to_owned()));
    assert_eq!(reverse(&sb, "a", sb.ip_of("db", "back")), None);
    assert_eq!(reverse(&sb, "a", Ipv4Addr::new(172, 18, 9, 9)), None);
    assert_eq!(
        reverse(&sb, "db", sb.ip_of("db", "back")),
        Some("db".to_owned())
    );
    // Network-scoped aliases in inspect.
    let inspected = sb.inspect("web");
    assert_eq!(
        inspected["aliases"]["front"],
        serde_json::json!(["www", "Site"])
    );
    // Connected to back with an alias there: a container on both resolves
    // both networks' names; the alias goes with a disconnect.
    sb.netctl_ok(&["network", "connect", "back", "a", "--alias", "client"]);
    assert_eq!(resolve(&sb, "a", "store"), Some(sb.ip_of("db", "back")));
    assert_eq!(resolve(&sb, "db", "client"), Some(sb.ip_of("a", "back")));
    assert_eq!(
        resolve(&sb, "web", "client"),
        None,
        "client is a name of back only"
    );
    sb.netctl_ok(&["network", "disconnect", "back", "a"]);
    assert_eq!(resolve(&sb, "db", "client"), None);
    assert_eq!(resolve(&sb, "a", "store"), None);
    assert!(sb.inspect("a")["aliases"].is_null());
}

fn containers_resolve_or_are_gone_within_one_command(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let hosts_before =
        std::fs::read_to_string(Path::new("/etc/netns").join(sb.netns_of("a")).join("hosts"))
            .unwrap();
    sb.netctl_ok(&[
        "container",
        "run",
        "b",
        "--network",
        "front",
        "--network-alias",
        "bee",
    ]);
    assert_eq!(resolve(&sb, "a", "b"), Some(sb.ip_of("b", "front")));
    assert_eq!(resolve(&sb, "a", "bee"), Some(sb.ip_of("b", "front")));
    // Adding b wrote nothing of a's.
    let hosts_after =
        std::fs::read_to_string(Path::new("/etc/netns").join(sb.netns_of("a")).join("hosts"))
            .unwrap();
    assert_eq!(hosts_before, hosts_after);
    sb.netctl_ok(&["container", "rm", "b"]);
    let asked = Instant::now();
    assert_eq!(resolve(&sb, "a", "b"), None);
    assert_eq!(resolve(&sb, "a", "bee"), None);
    assert!(
        asked.elapsed().as_secs() < 3,
        "a removed name fails at once, not after a resolver's timeout"
    );
    // Its alias is free again.
    sb.netctl_ok(&[
        "container",
        "run",
        "c",
        "--network",
        "front",
        "--network-alias",
        "bee",
    ]);
    assert_eq!(resolve(&sb, "a", "bee"), Some(sb.ip_of("c", "front")));
}

fn the_resolver_killed_is_restored_by_the_next_command(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    sb.netctl_ok(&["container", "run", "b", "--network", "front"]);
    assert_eq!(resolve(&sb, "a", "b"), Some(sb.ip_of("b", "front")));
    let pid = nix::unistd::Pid::from_raw(resolver_pid(&sb));
    nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
    let gone = Instant::now() + std::time::Duration::from_secs(3);
    while ask(&sb, "a", "udp", "172.18.0.1", "b") != "timeout" {
        assert!(Instant::now() < gone, "the killed resolver still answers");
    }
    // Any command restores it (a listing included).
    sb.netctl_ok(&["container", "ls"]);
    assert_ne!(resolver_pid(&sb), pid.as_raw());
    assert_eq!(resolve(&sb, "a", "b"), Some(sb.ip_of("b", "front")));
    // doctor checks that it answers: a stopped one is found and restarted.
    assert!(sb.netctl_ok(&["doctor"]).contains("state and kernel agree"));
    let stopped = nix::unistd::Pid::from_raw(resolver_pid(&sb));
    nix::sys::signal::kill(stopped, nix::sys::signal::SIGSTOP).unwrap();
    let (code, _) = sb.netctl_err(&["doctor"]);
    assert_eq!(code, 1);
    let report = text(&sb.netctl(&["doctor"]).stdout);
    assert!(
        report.contains("resolver: no answer on 172.18.0.1:53"),
        "{report}"
    );
    let fixed = sb.netctl_ok(&["doctor", "--fix"]);
    assert!(fixed.contains("(fixed)"), "{fixed}");
    assert_eq!(resolve(&sb, "a", "b"), Some(sb.ip_of("b", "front")));
    // The last user network gone, the resolver goes with it.
    sb.netctl_ok(&["container", "rm", "a", "b"]);
    let last = resolver_pid(&sb);
    sb.netctl_ok(&["network", "rm", "front"]);
    assert!(!sb.state_dir.join("resolver.pid").exists());
    assert!(
        !Path::new(&format!("/proc/{last}")).exists()
            || std::fs::read_to_string(format!("/proc/{last}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "resolver {last} still runs"
    );
}

fn bad_naming_input_is_refused_and_changes_nothing(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "--network-alias",
        "www",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "back"]);
    let snapshot = || {
        (
            sb.netctl_ok(&["--format", "json", "container", "ls"]),
            sb.namespaces(),
            sb.host_links(),
        )
    };
    let before = snapshot();
    let refused: [(&[&str], &str); 7] = [
        (
            &["container", "run", "x", "--network", "front", "--dns", "1.2.3"],
            "netctl: dns 1.2.3: ",
        ),
        (
            &["container", "run", "x", "--network", "front", "--network-alias", "bad name"],
            "netctl: container x: --network-alias \"bad name\": invalid name",
        ),
        (
            &["container", "run", "x", "--network", "front", "--network-alias", "www"],
            "netctl: container x: alias www is already a name on network front",
        ),
        (
            &["container", "run", "x", "--network", "front", "--network-alias", "web"],
            "netctl: container x: alias web is already a name on network front",
        ),
        (
            &["container", "run", "x", "--network-alias", "y"],
            "netctl: container x: network-scoped aliases are only supported on user-defined networks, not bridge",
        ),
        (
            &["container", "run", "x", "--network", "host", "--dns", "192.0.2.1"],
            "netctl: container x: --dns cannot be used in host network mode",
        ),
        (
            &["network", "connect", "front", "a", "--alias", "WWW"],
            "netctl: container a: alias WWW is already a name on network front",
        ),
    ];
    for (args, wanted) in refused {
        let (code, stderr) = sb.netctl_err(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with(wanted), "{args:?}: {stderr}");
        assert_eq!(snapshot(), before, "{args:?} changed something");
    }
    // The same alias on another network is fine.
    sb.netctl_ok(&[
        "container",
        "run",
        "y",
        "--network",
        "back",
        "--network-alias",
        "www",
    ]);
    assert_eq!(resolve(&sb, "a", "www"), Some(sb.ip_of("y", "back")));
    assert_eq!(resolve(&sb, "web", "www"), Some(sb.ip_of("web", "front")));
}
