//! Limits: a full conntrack table refuses new flows (counted) while the
//! established ones keep going, and reclaims dead entries by itself; 1,000
//! containers on one network (a stress test, `#[ignore]`d: it takes
//! minutes; `cargo xtask test --stress` runs it).

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    process::Output,
    thread::sleep,
    time::{Duration, Instant},
};

use netctl_tests::output::{nettool, peer_ip, text};
use netctl_tests::privileged;
use netctl_tests::sandbox::{call_until_answer, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

fn json(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&sb.netctl_ok(&all)).expect("json output")
}

fn conntrack(sb: &Sandbox) -> Vec<serde_json::Value> {
    json(sb, &["conntrack", "ls"])
        .as_array()
        .expect("flows")
        .clone()
}

fn stat(sb: &Sandbox, name: &str) -> u64 {
    json(sb, &["stats"])[name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name}"))
}

/// "sent=N received=M" of `nettool stream`: both numbers.
fn stream_counts(out: &Output) -> (u64, u64) {
    let line = text(out);
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
    };
    (field("sent="), field("received="))
}

/// The table holds 6 entries, three flows: two TCP streams and one UDP
/// exchange fill it. New flows (TCP, ICMP) are then refused and counted as
/// `drop_conntrack_full` while both streams carry on to the last byte.
/// Once the streams have closed and their entries expired (nobody looks
/// them up again), the next new flow finds the table full, the programs'
/// sweep reclaims the dead entries, and the flow goes through.
#[test]
fn full_conntrack_refuses_new_flows_and_keeps_established_ones() {
    if !privileged("sandboxes") {
        return;
    }
    const STREAM_SECONDS: &str = "8";
    let mut sb = Sandbox::new("ebpf");
    let out = sb
        .netctl_command(&[
            "network",
            "create",
            "front",
            "--datapath",
            "ebpf",
            "--subnet",
            "172.18.0.0/16",
        ])
        .env("NETCTL_CONNTRACK_MAX", "6")
        .output()
        .expect("run netctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["a", "b"] {
        sb.netctl_ok(&["container", "run", name, "--network", "front"]);
    }
    let tool = nettool();
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "sink", "7071"]);
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "9000"]);
    sb.spawn_in(&outside, &[&tool, "serve", "udp", "9001"]);
    let far = OUTSIDE_IP.to_string();
    // The servers listen (asked from their own namespace: no flow of ours).
    call_until_answer(|| sb.outside(&[&tool, "stream", &far, "7071", "0"]));
    call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &far, "9000"]));
    assert!(conntrack(&sb).is_empty());

    let (a_stream, b_stream) = std::thread::scope(|scope| {
        let a = scope.spawn(|| sb.exec("a", &[&tool, "stream", &far, "7071", STREAM_SECONDS]));
        let b = scope.spawn(|| sb.exec("b", &[&tool, "stream", &far, "7071", STREAM_SECONDS]));
        // Both streams tracked: four entries.
        let started = Instant::now();
        while conntrack(&sb).len() < 4 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the streams' flows: {:?}",
                conntrack(&sb)
            );
            sleep(Duration::from_millis(50));
        }
        // A third flow fills the table.
        let reply = text(&sb.exec("a", &[&tool, "call", "udp", &far, "9001"]));
        assert_eq!(peer_ip(&reply), HOST_UPLINK_IP, "the UDP flow is SNATed");
        assert_eq!(conntrack(&sb).len(), 6);
        let refused_before = stat(&sb, "drop_conntrack_full");
        assert_eq!(refused_before, 0);

        // Full: new flows are refused...
        let tcp = sb.exec("b", &[&tool, "call", "tcp", &far, "9000"]);
        assert!(!tcp.status.success(), "a new TCP flow got through");
        assert!(
            !sb.exec("b", &["ping", "-c1", "-W1", &far]).status.success(),
            "a new ICMP flow got through"
        );
        // ...and counted, nothing else added or evicted.
        let refused = stat(&sb, "drop_conntrack_full");
        assert!(refused >= 2, "drop_conntrack_full {refused}");
        assert_eq!(conntrack(&sb).len(), 6);
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    for (name, out) in [("a", &a_stream), ("b", &b_stream)] {
        assert!(
            out.status.success(),
            "stream of {name} broke: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (sent, received) = stream_counts(out);
        assert!(sent > 0, "{name} sent nothing");
        assert_eq!(sent, received, "stream of {name} lost bytes");
    }

    // The streams closed: their entries are TIME_WAIT (120 s) or CLOSE,
    // looked up by nobody. When a new flow needs their room (and no
    // unconfirmed flow is there to early-drop), the sweep deletes them.
    let closing: Vec<_> = conntrack(&sb)
        .into_iter()
        .filter(|f| f["proto"] == "tcp")
        .collect();
    assert_eq!(closing.len(), 4, "{closing:?}");
    assert!(
        closing
            .iter()
            .all(|f| f["state"] == "time_wait" || f["state"] == "close"),
        "{closing:?}"
    );
    assert_eq!(conntrack(&sb).len(), 6, "nothing reclaimed them yet");
    let reply = call_until_answer(|| sb.exec("b", &[&tool, "call", "tcp", &far, "9000"]));
    assert_eq!(peer_ip(&reply), HOST_UPLINK_IP);
    let flows = conntrack(&sb);
    let port = |f: &serde_json::Value, field: &str| f[field].as_str().unwrap_or("").to_owned();
    assert!(
        flows
            .iter()
            .all(|f| !port(f, "src").ends_with(":7071") && !port(f, "dst").ends_with(":7071")),
        "the streams' dead entries reclaimed: {flows:?}"
    );
    assert!(
        flows.iter().any(|f| f["proto"] == "udp"),
        "the live UDP flow kept: {flows:?}"
    );
}

/// A bad table size is refused with a one-line error, and nothing is made.
#[test]
fn a_bad_conntrack_size_is_refused() {
    if !privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::new("ebpf");
    let links = sb.host_links();
    for bad in ["0", "1", "lots", "4294967296", "100000000"] {
        let out = sb
            .netctl_command(&["network", "create", "front", "--datapath", "ebpf"])
            .env("NETCTL_CONNTRACK_MAX", bad)
            .output()
            .expect("run netctl");
        assert!(!out.status.success(), "NETCTL_CONNTRACK_MAX={bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("NETCTL_CONNTRACK_MAX"), "{err}");
        assert_eq!(sb.host_links(), links, "NETCTL_CONNTRACK_MAX={bad}");
        assert_eq!(json(&sb, &["network", "ls"]), serde_json::json!([]));
    }
}

/// 1,000 containers on one user-defined network, each publishing a port
/// (`container run -p`, the command the bench times): each gets its own
/// address, a sample of them reach each other by name and the outside, and
/// removing them all leaves the host as before.
///
/// Names come from the networks' resolver, which answers from the state:
/// a `container run` writes its own hosts file and resolv.conf and nobody
/// else's, so the per-command cost no longer grows with the number of
/// members (before, every command rewrote every member's hosts file: this
/// test made ~270 containers in 9 minutes on a user-defined network). The
/// test prints the median time of the first and the last 100 runs and
/// their ratio (issue 17's target: the last at most 1.5× the first),
/// reported, never asserted: a timed assertion would fail on a busy
/// machine.
fn thousand_containers_on_one_network(datapath: &str) {
    const N: usize = 1000;
    const RM_BATCH: usize = 100;
    let started = Instant::now();
    let mut sb = Sandbox::new(datapath);
    let links_before = sb.host_links();
    sb.network("front", &["--subnet", "10.88.0.0/16"]);
    let names: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    let mut run_times = Vec::with_capacity(N);
    for (i, name) in names.iter().enumerate() {
        let publish = format!("{}:80", 20_000 + i);
        let run = Instant::now();
        sb.netctl_ok(&[
            "container",
            "run",
            name,
            "--network",
            "front",
            "-p",
            &publish,
        ]);
        run_times.push(run.elapsed().as_secs_f64());
    }
    let median = |times: &[f64]| {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        1000.0 * sorted[sorted.len() / 2]
    };
    let (first, last) = (median(&run_times[..100]), median(&run_times[N - 100..]));
    println!(
        "{datapath}: {N} containers up in {:.1} s; container run -p median: {first:.1} ms (first 100), \
         {last:.1} ms (last 100), last/first {:.2}",
        started.elapsed().as_secs_f64(),
        last / first
    );
    let containers = json(&sb, &["container", "ls"]);
    let containers = containers.as_array().expect("containers");
    assert_eq!(containers.len(), N);
    let addresses: HashSet<Ipv4Addr> = containers
        .iter()
        .map(|c| {
            c["endpoints"][0]["ip"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("address of {c}"))
        })
        .collect();
    assert_eq!(addresses.len(), N, "every container has its own address");
    assert_eq!(sb.namespaces().len(), N + 2);

    let tool = nettool();
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "9000"]);
    let far = OUTSIDE_IP.to_string();
    // A sample spread over the whole range, first and last included.
    let sample: Vec<usize> = (0..N).step_by(97).chain([N - 1]).collect();
    for (i, &from) in sample.iter().enumerate() {
        let to = sample[(i + 3) % sample.len()];
        // By name: the resolver answers from a state of 1,000 containers.
        let ping = sb.exec(&names[from], &["ping", "-c1", "-W2", &names[to]]);
        assert!(
            ping.status.success(),
            "{} reaches {} by name",
            names[from],
            names[to]
        );
        let reply =
            call_until_answer(|| sb.exec(&names[from], &[&tool, "call", "tcp", &far, "9000"]));
        assert_eq!(
            peer_ip(&reply),
            HOST_UPLINK_IP,
            "{} reaches the outside",
            names[from]
        );
        // Its published port takes the outside to it.
        let netns = sb.netns_of(&names[from]);
        sb.spawn_in(&netns, &[&tool, "serve", "tcp", "80"]);
        let host_port = (20_000 + from).to_string();
        let host_ip = HOST_UPLINK_IP.to_string();
        let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host_ip, &host_port]));
        assert_eq!(
            peer_ip(&reply),
            OUTSIDE_IP,
            "the outside reaches {} on port {host_port}, its address kept",
            names[from]
        );
    }

    for batch in names.chunks(RM_BATCH) {
        let mut args = vec!["container", "rm"];
        args.extend(batch.iter().map(String::as_str));
        sb.netctl_ok(&args);
    }
    assert_eq!(json(&sb, &["container", "ls"]), serde_json::json!([]));
    assert_eq!(sb.namespaces().len(), 2, "{:?}", sb.namespaces());
    if datapath == "ebpf" {
        let left: Vec<_> = conntrack(&sb)
            .into_iter()
            .filter(|f| f.to_string().contains("10.88."))
            .collect();
        assert!(left.is_empty(), "flows of removed containers: {left:?}");
    }
    sb.netctl_ok(&["network", "rm", "front"]);
    sb.netctl_ok(&["down"]);
    assert_eq!(sb.host_links(), links_before, "no link left behind");
    println!(
        "{datapath}: {N} containers up, checked and removed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

mod stress {
    #[test]
    #[ignore = "minutes: cargo xtask test --stress"]
    fn thousand_containers_on_one_network_ebpf() {
        if netctl_tests::privileged("sandboxes") {
            super::thousand_containers_on_one_network("ebpf");
        }
    }

    #[test]
    #[ignore = "minutes: cargo xtask test --stress"]
    fn thousand_containers_on_one_network_iptables() {
        if netctl_tests::privileged("sandboxes") {
            super::thousand_containers_on_one_network("iptables");
        }
    }
}

/// A bad SNAT port range (`NETCTL_SNAT_PORTS`) is refused with a one-line
/// error naming it, and nothing is made: not a range, an empty one, past
/// 65535, or one wholly inside the host's ephemeral range (32768–60999 in
/// a new namespace), which SNAT leaves to the host.
#[test]
fn a_bad_snat_port_range_is_refused() {
    if !privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::new("ebpf");
    let links = sb.host_links();
    for bad in ["", "80", "0-100", "5000-4000", "1024-70000", "40000-50000"] {
        let out = sb
            .netctl_command(&["network", "create", "front", "--datapath", "ebpf"])
            .env("NETCTL_SNAT_PORTS", bad)
            .output()
            .expect("run netctl");
        assert!(!out.status.success(), "NETCTL_SNAT_PORTS={bad} accepted");
        assert_eq!(out.status.code(), Some(1), "bad input: exit 1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("NETCTL_SNAT_PORTS"), "{err}");
        assert_eq!(sb.host_links(), links, "NETCTL_SNAT_PORTS={bad}");
        assert_eq!(json(&sb, &["network", "ls"]), serde_json::json!([]));
    }
    // A good one: the first network loads the datapath with it.
    let out = sb
        .netctl_command(&["network", "create", "front", "--datapath", "ebpf"])
        .env("NETCTL_SNAT_PORTS", "20000-40000")
        .output()
        .expect("run netctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
