//! The iptables datapath against the kernel, without netctl's binary: each
//! test runs the library's `Iptables` in a private network namespace of its
//! own (an anonymous one, gone with the thread that made it) and reads the
//! result with `iptables-save`. What the rules do to packets is tested
//! through real sandboxes (scenarios, isolation, transactions); here it is
//! what lands in the tables, in which order, and what every failure says.
//! They need root ([`privileged`]).

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use netctl::{
    config::HostConfig,
    datapath::{
        iptables::{
            endpoint_rules,
            fixtures::{endpoint, front, front_ports, network, port, saved_lines},
            host_rules, network_rules, port_rules, Batch, Iptables, Rule, Table, ANTISPOOF_CHAIN,
            CHAINS, DNAT_CHAIN, FORWARD_CHAIN, ISOLATION_1_CHAIN, ISOLATION_2_CHAIN,
        },
        Datapath, HostInfo,
    },
    error::Error,
    model::{Endpoint, Protocol},
};
use netctl_tests::privileged;
use nix::sched::{unshare, CloneFlags};

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// iptables matches interfaces by name: the ifindex the `Datapath` trait
/// passes is unused, and these tests make no links.
const ANY_IFINDEX: u32 = 0;

fn host() -> HostInfo {
    let dir = std::env::temp_dir().join("netctl-iptables-test");
    HostInfo {
        config: HostConfig::new(None, Some(dir), None, None),
        uplink: None,
        interfaces: Vec::new(),
    }
}

/// Runs `f` in a thread of its own that first moves to a fresh,
/// anonymous network namespace (gone when the thread ends); the
/// iptables processes it starts inherit that namespace. `None` when not
/// root.
fn in_private_netns<T: Send + 'static>(
    test: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !privileged(&format!("{test}: a private network namespace and iptables")) {
        return None;
    }
    let thread = std::thread::spawn(move || {
        let before = fs::read_link("/proc/thread-self/ns/net").expect("netns of the thread");
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let after = fs::read_link("/proc/thread-self/ns/net").expect("netns of the thread");
        assert_ne!(before, after, "must run in a private network namespace");
        assert_ne!(
            fs::read_link("/proc/self/ns/net").unwrap(),
            after,
            "main thread is elsewhere"
        );
        f()
    });
    Some(
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
    )
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// iptables-save without its comment lines (they carry a timestamp).
fn save_text() -> String {
    run("iptables-save", &[], None)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn restore_raw(text: &str) {
    run("iptables-restore", &["--noflush"], Some(text));
}

fn add_bridge(name: &str) {
    run("ip", &["link", "add", name, "type", "bridge"], None);
}

fn sysctl(path: &str) -> String {
    fs::read_to_string(PathBuf::from("/proc/sys/net/ipv4").join(path))
        .unwrap()
        .trim()
        .to_owned()
}

/// The NETCTL lines a host with exactly `rules` must show.
fn expected_lines(rules: &[Rule]) -> Vec<String> {
    let mut lines: Vec<String> = CHAINS
        .iter()
        .map(|(t, c)| format!("{t} :{c} - [0:0]"))
        .collect();
    lines.extend(rules.iter().map(Rule::to_string));
    lines.sort();
    lines
}

fn listed(dp: &Iptables) -> Vec<String> {
    let mut lines = dp.netctl_rules().unwrap();
    lines.sort();
    lines
}

#[test]
fn lifecycle_round_trips_and_leaves_nothing() {
    let root_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    in_private_netns("lifecycle_round_trips_and_leaves_nothing", || {
        // Someone else's rules: they must stay, untouched and in order.
        restore_raw(
            "*filter\n:OTHER - [0:0]\n-A FORWARD -i eth9 -j ACCEPT\n-A OTHER -j RETURN\nCOMMIT\n\
             *nat\n-A POSTROUTING -o eth9 -j MASQUERADE\n-A PREROUTING -p tcp -m tcp --dport 1 -j ACCEPT\nCOMMIT\n\
             *raw\n-A PREROUTING -i eth9 -j ACCEPT\nCOMMIT\n",
        );
        let before = save_text();
        assert!(!before.contains("NETCTL"));
        for bridge in ["nc-front", "nc-back", "nc-int"] {
            add_bridge(bridge);
        }
        let dp = Iptables::new(&host());
        let front = front();
        let back = network("back", "nc-back", "172.19.0.0/16", false);
        let int = network("int", "nc-int", "172.20.0.0/16", true);
        let ports = front_ports();
        let web = endpoint();
        let peer = Endpoint {
            host_veth: "veth1".into(),
            ip: Ipv4Addr::new(172, 18, 0, 3),
            mac: "02:42:ac:12:00:03".parse().unwrap(),
            ..endpoint()
        };
        let apply = || {
            dp.host_up().unwrap();
            for net in [&front, &back, &int] {
                dp.network_up(net, ANY_IFINDEX).unwrap();
            }
            dp.endpoint_added(&front, &web, ANY_IFINDEX).unwrap();
            dp.endpoint_added(&front, &peer, ANY_IFINDEX).unwrap();
            dp.ports_published(&front, &ports).unwrap();
        };
        apply();

        // Every rendered rule is there verbatim, once; nothing else of ours is.
        let all: Vec<Rule> = host_rules()
            .into_iter()
            .chain([&front, &back, &int].into_iter().flat_map(network_rules))
            .chain(endpoint_rules(&web))
            .chain(endpoint_rules(&peer))
            .chain(port_rules(&ports))
            .collect();
        let saved = dp.saved().unwrap();
        let text = save_text();
        for rule in &all {
            assert_eq!(saved.count(rule), 1, "{rule} once in:\n{text}");
        }
        assert_eq!(listed(&dp), expected_lines(&all), "{text}");
        assert!(dp.rules_present().unwrap());
        assert!(dp.missing(&all).unwrap().is_empty());
        // Order: isolation first, then each network's drops/accepts as planned.
        assert_eq!(
            saved.chain_rules(Table::Filter, FORWARD_CHAIN),
            [
                "-A NETCTL-FORWARD -j NETCTL-ISOLATION-1",
                "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT",
                "-A NETCTL-FORWARD -i nc-front ! -o nc-front -m conntrack --ctstate INVALID -j DROP",
                "-A NETCTL-FORWARD -i nc-front -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-front -j DROP",
                "-A NETCTL-FORWARD -o nc-back -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-back -m conntrack --ctstate DNAT -j ACCEPT",
                "-A NETCTL-FORWARD -i nc-back ! -o nc-back -m conntrack --ctstate INVALID -j DROP",
                "-A NETCTL-FORWARD -i nc-back -j ACCEPT",
                "-A NETCTL-FORWARD -o nc-back -j DROP",
                "-A NETCTL-FORWARD -i nc-int -o nc-int -j ACCEPT",
            ]
        );
        assert_eq!(
            saved.chain_rules(Table::Filter, ISOLATION_1_CHAIN),
            [
                "-A NETCTL-ISOLATION-1 -i nc-front ! -o nc-front -j NETCTL-ISOLATION-2",
                "-A NETCTL-ISOLATION-1 -i nc-back ! -o nc-back -j NETCTL-ISOLATION-2",
                "-A NETCTL-ISOLATION-1 -i nc-int ! -o nc-int -j DROP",
                "-A NETCTL-ISOLATION-1 ! -i nc-int -o nc-int -j DROP",
            ]
        );
        assert_eq!(
            saved.chain_rules(Table::Filter, ISOLATION_2_CHAIN),
            [
                "-A NETCTL-ISOLATION-2 -m conntrack --ctstate DNAT -j RETURN",
                "-A NETCTL-ISOLATION-2 -o nc-front -j DROP",
                "-A NETCTL-ISOLATION-2 -o nc-back -j DROP",
            ]
        );
        assert_eq!(
            saved.chain_rules(Table::Filter, "FORWARD"),
            [
                "-A FORWARD -j NETCTL-FORWARD",
                "-A FORWARD -i eth9 -j ACCEPT"
            ]
        );
        assert_eq!(
            saved.chain_rules(Table::Nat, "POSTROUTING"),
            [
                "-A POSTROUTING -o eth9 -j MASQUERADE",
                "-A POSTROUTING -j NETCTL-POSTROUTING"
            ]
        );
        assert_eq!(
            saved.chain_rules(Table::Raw, "PREROUTING"),
            [
                "-A PREROUTING -j NETCTL-ANTISPOOF",
                "-A PREROUTING -i eth9 -j ACCEPT"
            ]
        );
        // Sysctls of this namespace.
        assert_eq!(sysctl("ip_forward"), "1");
        assert_eq!(
            fs::read_to_string(BRIDGE_NF_CALL_IPTABLES).unwrap().trim(),
            "1"
        );
        assert_eq!(sysctl("conf/nc-front/route_localnet"), "1");
        assert_eq!(sysctl("conf/nc-back/route_localnet"), "1");
        assert_eq!(
            sysctl("conf/nc-int/route_localnet"),
            "0",
            "internal: no published ports"
        );

        // Idempotent: the same calls again change nothing at all.
        apply();
        assert_eq!(save_text(), text);

        // No published port on an internal network, and nothing written.
        let err = dp
            .ports_published(
                &int,
                &[port(Protocol::Tcp, None, 9, [172, 20, 0, 2], 9, "int")],
            )
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert_eq!(save_text(), text);

        // Teardown, step by step; each step also when repeated.
        for _ in 0..2 {
            dp.endpoint_removed(&front, &peer).unwrap();
            let saved = dp.saved().unwrap();
            assert_eq!(
                saved.chain_rules(Table::Raw, ANTISPOOF_CHAIN),
                saved_lines(&endpoint_rules(&web)),
                "only the other endpoint's rules stay"
            );
        }
        for _ in 0..2 {
            dp.ports_unpublished(&front, &ports).unwrap();
            let saved = dp.saved().unwrap();
            assert!(
                saved.chain_rules(Table::Nat, DNAT_CHAIN).is_empty(),
                "{}",
                save_text()
            );
            assert!(!dp
                .missing(&network_rules(&front))
                .unwrap()
                .iter()
                .any(|_| true));
        }
        for _ in 0..2 {
            for net in [&front, &back, &int] {
                dp.network_down(net).unwrap();
            }
            assert_eq!(
                listed(&dp),
                expected_lines(&host_rules()),
                "{}",
                save_text()
            );
        }
        for _ in 0..2 {
            dp.host_down().unwrap();
            assert!(dp.netctl_rules().unwrap().is_empty(), "{}", save_text());
            assert!(!dp.rules_present().unwrap());
            assert_eq!(
                save_text(),
                before,
                "built-in chains and others' rules as before"
            );
        }
    });
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward,
        "the root namespace was not touched"
    );
}

#[test]
fn drift_is_repaired_in_order_and_stale_rules_go() {
    in_private_netns("drift_is_repaired_in_order_and_stale_rules_go", || {
        add_bridge("nc-front");
        let dp = Iptables::new(&host());
        let front = front();
        // network_up alone (no host_up) still makes the chains and jumps.
        dp.network_up(&front, ANY_IFINDEX).unwrap();
        let all: Vec<Rule> = host_rules()
            .into_iter()
            .chain(network_rules(&front))
            .collect();
        assert_eq!(listed(&dp), expected_lines(&all), "{}", save_text());
        let good = save_text();

        // An accept lost in the middle and the final DROP doubled: a
        // plain "add what is missing" would put the accept after the DROP.
        restore_raw(
            "*filter\n-D NETCTL-FORWARD -o nc-front -m conntrack --ctstate DNAT -j ACCEPT\n\
             -A NETCTL-FORWARD -o nc-front -j DROP\nCOMMIT\n\
             *nat\n-D POSTROUTING -j NETCTL-POSTROUTING\nCOMMIT\n",
        );
        assert_ne!(save_text(), good);
        dp.network_up(&front, ANY_IFINDEX).unwrap();
        assert_eq!(save_text(), good, "repaired, in order");

        // A port published twice by hand is trimmed to one copy; a DNAT
        // rule into the subnet left by a crash goes with the network.
        let ports = &front_ports()[..1];
        let dnat = &port_rules(ports)[0];
        restore_raw(&format!(
            "*nat\n{0}\n{0}\n-A NETCTL-DNAT -p tcp -m tcp --dport 2222 -j DNAT --to-destination 172.18.0.9:22\n\
             -A NETCTL-DNAT -p tcp -m tcp --dport 3333 -j DNAT --to-destination 10.9.0.9:22\nCOMMIT\n",
            dnat.saved()
        ));
        dp.ports_published(&front, ports).unwrap();
        assert_eq!(dp.saved().unwrap().count(dnat), 1);
        // Anti-spoofing rules of an endpoint a crash left behind go with
        // their network too; another subnet's stay.
        let other = Endpoint {
            host_veth: "veth9".into(),
            ip: Ipv4Addr::new(10, 9, 0, 9),
            mac: "02:42:0a:09:00:09".parse().unwrap(),
            ..endpoint()
        };
        dp.endpoint_added(&front, &endpoint(), ANY_IFINDEX).unwrap();
        dp.endpoint_added(&front, &other, ANY_IFINDEX).unwrap();
        dp.network_down(&front).unwrap();
        assert_eq!(
            dp.saved().unwrap().chain_rules(Table::Raw, ANTISPOOF_CHAIN),
            saved_lines(&endpoint_rules(&other))
        );
        assert_eq!(
            dp.saved().unwrap().chain_rules(Table::Nat, DNAT_CHAIN),
            ["-A NETCTL-DNAT -p tcp -m tcp --dport 3333 -j DNAT --to-destination 10.9.0.9:22"],
            "only the rule into another subnet stays"
        );
        // host_down removes our chains with whatever is left in them.
        dp.host_down().unwrap();
        assert!(!dp.rules_present().unwrap(), "{}", save_text());
    });
}

#[test]
fn failures_name_the_operation_and_change_nothing() {
    in_private_netns("failures_name_the_operation_and_change_nothing", || {
        let dp = Iptables::new(&host());
        dp.host_up().unwrap();
        let before = save_text();
        // A batch failing on its last line leaves its first lines unapplied.
        let mut batch = Batch::default();
        batch.push(Table::Nat, port_rules(&front_ports())[0].add());
        batch.push(Table::Nat, "-A NETCTL-NOPE -j ACCEPT".into());
        let err = dp
            .restore("iptables: publish 8080/tcp on network front", &batch)
            .unwrap_err();
        assert!(matches!(err, Error::System { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "iptables: publish 8080/tcp on network front: iptables-restore: line 3 failed"
            ),
            "{msg}"
        );
        assert!(msg.ends_with("(at `-A NETCTL-NOPE -j ACCEPT`)"), "{msg}");
        assert_eq!(save_text(), before, "nothing of the failed batch applied");

        // network_up fails cleanly when the bridge is missing (no sysctl to set).
        let err = dp.network_up(&front(), ANY_IFINDEX).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sysctl net.ipv4.conf.nc-front.route_localnet: "),
            "{err}"
        );
        assert_eq!(save_text(), before);

        // Teardown keeps going past a failed line and reports it.
        let mut batch = Batch::default();
        batch.push(Table::Filter, "-D FORWARD -j NO-SUCH-CHAIN".into());
        batch.push(Table::Filter, host_rules()[3].delete());
        let mut errors = Vec::new();
        dp.restore_keep_going("iptables: host teardown (filter)", &batch, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("iptables: host teardown (filter): "),
            "{}",
            errors[0]
        );
        assert_eq!(
            dp.saved().unwrap().count(&host_rules()[3]),
            0,
            "the good line was applied"
        );

        // A missing program is an error naming it.
        let broken = Iptables::with_programs("/nonexistent/iptables-restore", "iptables-save");
        let err = broken
            .ports_published(&front(), &front_ports())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "iptables: publish 8080/tcp, 127.0.0.1:8081/tcp, 198.51.100.1:5353/udp on network front: \
                 /nonexistent/iptables-restore: "
            ),
            "{err}"
        );
        dp.host_down().unwrap();
        assert!(!dp.rules_present().unwrap());
    });
}
