//! The commands themselves, on each datapath (`iptables::*`, `ebpf::*`):
//! the life of a network, removal that takes exactly what was added, bad
//! input that changes nothing, and the global options. The seed scenarios
//! (traffic) are in scenarios.rs.

use std::net::Ipv4Addr;

use netctl_tests::{output::text, sandbox::Sandbox};

netctl_tests::on_both_datapaths!(
    network_lifecycle,
    rm_and_down_remove_exactly_what_was_added,
    bad_input_changes_nothing,
    global_options_state_dir_and_uplink,
);

fn network_lifecycle(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network(
        "front",
        &["--subnet", "172.18.0.0/16", "--gateway", "172.18.0.254"],
    );
    sb.network("back", &[]);
    sb.network("spare", &[]);
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "network", "ls"])).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["back", "front", "spare"]);
    let table = sb.netctl_ok(&["network", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("172.18.0.254"), "{table}");
    // Automatic subnets come from Docker's pools, skipping used ones.
    let back: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", "back"])).unwrap();
    assert_eq!(back[0]["subnet"], "172.17.0.0/16");
    assert_eq!(back[0]["datapath"], datapath);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    assert_eq!(
        sb.ip_of("a", "front"),
        Ipv4Addr::new(172, 18, 0, 1),
        "the gateway is .254, so .1 is free"
    );
    assert!(sb.pings("a", "172.18.0.254"));
    // The bridge keeps its gateway's MAC while ports come and go, so the
    // containers' ARP entries for the gateway never go stale.
    sb.netctl_ok(&["container", "run", "b", "--network", "front"]);
    sb.netctl_ok(&["container", "rm", "b"]);
    let link = text(&sb.in_host(&["ip", "-br", "link", "show", "nc-front"]));
    assert!(link.contains("02:42:ac:12:00:fe"), "{link}");
    let inspect: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", "front"])).unwrap();
    assert_eq!(inspect[0]["containers"][0], "a");

    let (code, err) = sb.netctl_err(&["network", "rm", "front"]);
    assert_eq!(code, 1);
    assert!(err.contains("active endpoints: a"), "{err}");
    assert_eq!(
        sb.netctl_ok(&["network", "prune"])
            .lines()
            .collect::<Vec<_>>(),
        ["back", "spare"]
    );
    assert!(!sb.host_links().contains(&"nc-back".to_string()));
    sb.netctl_ok(&["container", "rm", "a"]);
    sb.netctl_ok(&["network", "rm", "front"]);
    assert!(
        !sb.host_links().iter().any(|l| l.starts_with("nc-")),
        "{:?}",
        sb.host_links()
    );
}

fn rm_and_down_remove_exactly_what_was_added(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let links_before = sb.host_links();
    let rules_before = sb.iptables_save();
    sb.front_with_web();
    sb.netctl_ok(&["container", "run", "n", "--network", "none"]);
    assert_eq!(
        sb.namespaces().len(),
        5,
        "host, outside, web, a, n: {:?}",
        sb.namespaces()
    );
    let web_veth = sb.inspect("web")["endpoints"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sb.host_links().contains(&web_veth));
    if datapath == "iptables" {
        assert!(sb
            .iptables_save()
            .contains("--to-destination 172.18.0.2:80"));
    }
    sb.netctl_ok(&["container", "rm", "web"]);
    assert!(
        !sb.host_links().contains(&web_veth),
        "veth removed with its container"
    );
    assert!(
        !sb.iptables_save().contains("--dport 8080"),
        "its published port is gone"
    );
    assert_eq!(sb.namespaces().len(), 4);
    sb.netctl_ok(&["down"]);
    assert_eq!(
        sb.host_links(),
        links_before,
        "down leaves the host's links as they were"
    );
    let rules_after = sb.iptables_save();
    assert!(
        !rules_after.contains("NETCTL"),
        "no NETCTL rule or chain left:\n{rules_after}"
    );
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    if datapath == "iptables" {
        // Built-in chains exist now (the nat/filter tables were touched) but hold nothing of ours.
        assert!(strip(&rules_after)
            .iter()
            .all(|l| l.starts_with('*') || l.starts_with(':') || l == "COMMIT"));
    } else {
        assert_eq!(strip(&rules_after), strip(&rules_before));
    }
    assert_eq!(
        sb.namespaces().len(),
        2,
        "only the sandbox's own namespaces remain"
    );
    let state: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "container", "ls"])).unwrap();
    assert_eq!(state, serde_json::json!([]));
}

/// Everything observable about the host, to prove an error changed nothing.
fn snapshot(sb: &Sandbox) -> (String, String, Vec<String>, String, Vec<String>) {
    (
        sb.netctl_ok(&["--format", "json", "network", "ls"]),
        sb.netctl_ok(&["--format", "json", "container", "ls"]),
        sb.host_links(),
        sb.iptables_save()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
        sb.namespaces(),
    )
}

fn bad_input_changes_nothing(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.front_with_web();
    sb.network("vault", &["--subnet", "172.22.0.0/24", "--internal"]);
    let other = if datapath == "iptables" {
        "ebpf"
    } else {
        "iptables"
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "n1", "--subnet", "10.0.0.0/33"],
            "subnet",
        ),
        (&["network", "create", "n1", "--subnet", "banana"], "banana"),
        (
            &["network", "create", "n1", "--subnet", "10.9.0.1/16"],
            "10.9.0.0/16",
        ),
        (
            &[
                "network",
                "create",
                "n1",
                "--subnet",
                "10.9.0.0/16",
                "--gateway",
                "10.8.0.1",
            ],
            "10.8.0.1",
        ),
        (
            &["network", "create", "n1", "--subnet", "172.18.5.0/24"],
            "front",
        ),
        (
            &["network", "create", "front", "--subnet", "10.9.0.0/16"],
            "already exists",
        ),
        (
            &["network", "create", "averyveryverylongname"],
            "interface name",
        ),
        (&["network", "create", "bad name"], "invalid name"),
        (
            &["network", "create", "n1", "--datapath", other],
            "datapath",
        ),
        (&["network", "rm", "nosuch"], "network nosuch: not found"),
        (&["network", "rm", "front"], "active endpoints"),
        (&["network", "connect", "nosuch", "a"], "nosuch"),
        (&["network", "connect", "front", "nosuch"], "nosuch"),
        (&["network", "connect", "front", "a"], "already connected"),
        (
            &["container", "run", "a", "--network", "front"],
            "already exists",
        ),
        (
            &["container", "run", "b", "--network", "nosuch"],
            "network nosuch: not found",
        ),
        (
            &["container", "run", "b", "--network", "front", "-p", "0:80"],
            "0",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "70000:80",
            ],
            "70000",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "8080:80",
            ],
            "8080",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "-p",
                "9000-9002:80-81",
            ],
            "9000-9002",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "10.1.1.1",
            ],
            "10.1.1.1",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "172.18.0.2",
            ],
            "172.18.0.2",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "front",
                "--ip",
                "172.18.0.1",
            ],
            "172.18.0.1",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "vault",
                "-p",
                "8081:80",
            ],
            "internal",
        ),
        (
            &[
                "container",
                "run",
                "b",
                "--network",
                "host",
                "-p",
                "8081:80",
            ],
            "host",
        ),
        (
            &["container", "run", "b", "--network", "container:nosuch"],
            "nosuch",
        ),
        (
            &["container", "run", "b/c", "--network", "front"],
            "invalid name",
        ),
        (
            &["container", "rm", "nosuch"],
            "container nosuch: not found",
        ),
        (
            &["container", "inspect", "nosuch"],
            "container nosuch: not found",
        ),
        (&["port", "nosuch"], "nosuch"),
        (&["exec", "nosuch", "--", "true"], "nosuch"),
    ];
    let before = snapshot(&sb);
    for (args, needle) in cases {
        let (code, err) = sb.netctl_err(args);
        assert_eq!(
            code,
            1,
            "netctl {}: exit code {code}, {err}",
            args.join(" ")
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "netctl {}: one line, got {err}",
            args.join(" ")
        );
        assert!(err.starts_with("netctl: "), "{err}");
        assert!(
            err.contains(needle),
            "netctl {}: {err:?} should mention {needle:?}",
            args.join(" ")
        );
        assert_eq!(
            snapshot(&sb),
            before,
            "netctl {} changed the host",
            args.join(" ")
        );
    }
}

/// `--state-dir` keeps the state where it is told, `--uplink` names the
/// uplink (and a wrong one is refused with nothing changed).
fn global_options_state_dir_and_uplink(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let dir = format!("/run/netctl/{}-custom", sb.prefix);
    let (code, err) = sb.netctl_err(&[
        "--uplink",
        "nosuch0",
        "network",
        "create",
        "front",
        "--datapath",
        datapath,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("uplink nosuch0"), "{err}");
    assert!(
        sb.host_links().iter().all(|l| !l.starts_with("nc-")),
        "nothing created"
    );

    sb.netctl_ok(&[
        "--state-dir",
        &dir,
        "--uplink",
        "uplink0",
        "network",
        "create",
        "front",
        "--datapath",
        datapath,
    ]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["networks"]["front"]["subnet"], "172.17.0.0/16");
    let mode = std::fs::metadata(format!("{dir}/state.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // The default state dir of this host knows nothing of it.
    assert_eq!(
        sb.netctl_ok(&["--format", "json", "network", "ls"]).trim(),
        "[]"
    );
    let ls = sb.netctl_ok(&["--state-dir", &dir, "--format", "json", "network", "ls"]);
    assert!(ls.contains("\"front\""), "{ls}");
    sb.netctl_ok(&["--state-dir", &dir, "down"]);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "down removes its state dir"
    );
}
