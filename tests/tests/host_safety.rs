//! A host that netctl never endangers (issue 12), on each datapath: the
//! host's own connections from a published port as source port are never
//! translated, `-p` picks its ephemeral host ports outside the kernel's
//! ephemeral range, and `-p` refuses a host address the host does not have.

use netctl_tests::{
    host_state::{assert_same, snapshot},
    output::text,
    sandbox::{nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};

netctl_tests::on_both_datapaths!(
    host_connections_from_a_published_port_are_the_hosts,
    ephemeral_host_ports_avoid_the_kernels_range,
    a_host_address_the_host_lacks_is_refused,
);

/// The port both the container publishes (tcp and udp) and the host's
/// kernel hands out as its only ephemeral port.
const PUBLISHED: u16 = 8080;
/// The outside server the host talks to.
const SERVER_PORT: &str = "9000";

/// The host namespace's `ip_local_port_range`.
fn set_local_port_range(sb: &Sandbox, first: u16, last: u16) {
    let value = format!("net.ipv4.ip_local_port_range={first} {last}");
    sb.run_in_ok(&sb.host_netns, &["sysctl", "-q", "-w", &value]);
}

/// The eBPF counter `name`'s packets (0 on the iptables datapath, which has
/// none).
fn ebpf_counter(sb: &Sandbox, name: &str) -> u64 {
    if sb.datapath != "ebpf" {
        return 0;
    }
    let stats: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json");
    stats[name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
}

/// One request from the host namespace to the outside server; its answer
/// names the source the server saw.
fn host_asks(sb: &Sandbox, proto: &str) -> Result<String, String> {
    let tool = nettool_bin().display().to_string();
    let out = sb.in_host(&[
        &tool,
        "call",
        proto,
        &OUTSIDE_IP.to_string(),
        SERVER_PORT,
        "--timeout-ms",
        "2000",
    ]);
    if out.status.success() {
        Ok(text(&out))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn host_connections_from_a_published_port_are_the_hosts(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool_bin().display().to_string();
    let publish = PUBLISHED.to_string();
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        &format!("{publish}:80"),
        "-p",
        &format!("{publish}:80/udp"),
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", SERVER_PORT]);
    sb.spawn_in(&outside, &[&tool, "serve", "udp", SERVER_PORT]);
    // The host's kernel has one ephemeral port left: the published one.
    set_local_port_range(&sb, PUBLISHED, PUBLISHED);
    let dnat_before = sb.dnat_packets();
    let not_syn_before = ebpf_counter(&sb, "published_not_syn");
    let host_flow_before = ebpf_counter(&sb, "host_flow");

    // TCP: the server's SYN-ACK comes back to the published port; it is the
    // host's. The server may still be starting: a few tries.
    let mut tcp = Err(String::new());
    for _ in 0..10 {
        tcp = host_asks(&sb, "tcp");
        if tcp.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let reply = tcp.unwrap_or_else(|e| panic!("host tcp connection from :{PUBLISHED}: {e}"));
    assert_eq!(
        reply.trim(),
        format!("peer={HOST_UPLINK_IP}:{PUBLISHED}"),
        "the server saw another source"
    );
    assert_eq!(sb.dnat_packets(), dnat_before, "a host packet was DNATed");
    let not_syn = ebpf_counter(&sb, "published_not_syn") - not_syn_before;
    if datapath == "ebpf" {
        assert!(
            not_syn >= 1,
            "the SYN-ACK was not counted as published_not_syn"
        );
    }

    // UDP: one request, one reply, to and from the published port.
    let reply =
        host_asks(&sb, "udp").unwrap_or_else(|e| panic!("host udp request from :{PUBLISHED}: {e}"));
    assert_eq!(
        reply.trim(),
        format!("peer={HOST_UPLINK_IP}:{PUBLISHED}"),
        "the server saw another source"
    );
    assert_eq!(sb.dnat_packets(), dnat_before, "a host packet was DNATed");
    if datapath == "ebpf" {
        // The request leaving and its reply, both of the host's flow.
        assert_eq!(ebpf_counter(&sb, "host_flow") - host_flow_before, 2);
        let flows = sb.netctl_ok(&["--format", "json", "conntrack", "ls"]);
        let flows: serde_json::Value = serde_json::from_str(&flows).expect("conntrack json");
        let host_flows: Vec<&serde_json::Value> = flows
            .as_array()
            .expect("flows")
            .iter()
            .filter(|f| f["kind"] == "host")
            .collect();
        assert_eq!(host_flows.len(), 2, "a host flow is two entries: {flows}");
        assert!(
            host_flows
                .iter()
                .all(|f| f["src"] == f["translated_src"] && f["dst"] == f["translated_dst"]),
            "a host flow is never translated: {flows}"
        );
    }

    // A connection from the outside to the published port is still DNATed.
    let outside_reply = sb.outside(&[&tool, "call", "tcp", &HOST_UPLINK_IP.to_string(), &publish]);
    assert!(
        outside_reply.status.success(),
        "published port: {}",
        String::from_utf8_lossy(&outside_reply.stderr)
    );
    assert!(
        sb.dnat_packets() > dnat_before,
        "the published port was not DNATed"
    );
}

/// The host ports `container inspect` shows for a container.
fn host_ports(sb: &Sandbox, container: &str) -> Vec<u16> {
    sb.inspect(container)["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["host_port"].as_u64().expect("host_port") as u16)
        .collect()
}

fn ephemeral_host_ports_avoid_the_kernels_range(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let range = sb.run_in_ok(
        &sb.host_netns,
        &["sysctl", "-n", "net.ipv4.ip_local_port_range"],
    );
    let bounds: Vec<u16> = range
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    let kernel = bounds[0]..=bounds[1];
    sb.netctl_ok(&["container", "run", "a", "--network", "front", "-p", "80-81"]);
    for port in host_ports(&sb, "a") {
        assert!(
            !kernel.contains(&port),
            "host port {port} is in the kernel's ephemeral range {kernel:?}"
        );
        assert!(port < 61000, "host port {port} is in the SNAT range");
    }

    // netctl reads the range of the host as it is now.
    set_local_port_range(&sb, 20000, 25000);
    sb.netctl_ok(&["container", "run", "b", "--network", "front", "-p", "80"]);
    let ports = host_ports(&sb, "b");
    assert_eq!(ports.len(), 1);
    assert!(
        !(20000..=25000).contains(&ports[0]) && ports[0] < 61000,
        "host port {} is in the kernel's range 20000-25000 or the SNAT range",
        ports[0]
    );
}

fn a_host_address_the_host_lacks_is_refused(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let before = snapshot(&sb);
    let (code, stderr) = sb.netctl_err(&[
        "container",
        "run",
        "a",
        "--network",
        "front",
        "-p",
        "192.0.2.77:8080:80",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("192.0.2.77:8080") && stderr.contains("not an address of the host"),
        "{stderr}"
    );
    assert_same(&snapshot(&sb), &before, "a refused -p changed the host");

    // The host's own addresses are accepted: the uplink's and loopback.
    let uplink = format!("{HOST_UPLINK_IP}:8080:80");
    sb.netctl_ok(&["container", "run", "a", "--network", "front", "-p", &uplink]);
    sb.netctl_ok(&[
        "container",
        "run",
        "b",
        "--network",
        "front",
        "-p",
        "127.0.0.1:8081:80",
    ]);
}
