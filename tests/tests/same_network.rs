//! Containers of one network, on both datapaths (`iptables::*`, `ebpf::*`):
//! TCP and UDP cross between them, with their own addresses (no
//! translation), on a normal and on an `--internal` network, while networks
//! stay isolated from each other. On the eBPF datapath the packets go
//! straight into the peer's namespace (bpf_redirect_peer from the sender's
//! veth), counted as `same_network`, and never cross the bridge: the
//! receiver's host-side veth transmits none of the stream, where the
//! bridge (the iptables datapath) transmits all of it through that veth.

use netctl_tests::{
    output::nettool,
    sandbox::{
        probe::{Proto, Reason},
        Sandbox,
    },
};

netctl_tests::on_both_datapaths!(same_network_tcp_and_udp_cross_and_networks_stay_isolated);

/// One stream per pair, in one write (GSO-sized segments).
const STREAM_BYTES: u64 = 4_000_000;
const PORT: u16 = 80;
const SINK_PORT: &str = "7070";

/// Bytes the host has sent out of `veth` (towards its container).
fn tx_bytes(sb: &Sandbox, veth: &str) -> u64 {
    let out = sb.in_host(&["ip", "-s", "-j", "link", "show", "dev", veth]);
    assert!(out.status.success(), "ip link show {veth}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip json");
    json[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("tx bytes of {veth}: {json}"))
}

/// `same_network` of `netctl stats` (packets, bytes).
fn same_network(sb: &Sandbox) -> (u64, u64) {
    let stats: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json");
    let c = &stats["same_network"];
    (
        c["packets"].as_u64().unwrap_or_else(|| panic!("{stats}")),
        c["bytes"].as_u64().unwrap_or_else(|| panic!("{stats}")),
    )
}

fn same_network_tcp_and_udp_cross_and_networks_stay_isolated(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("neta", &["--subnet", "172.30.1.0/24"]);
    sb.network("netb", &["--subnet", "172.30.2.0/24"]);
    sb.network("neti", &["--subnet", "172.30.3.0/24", "--internal"]);
    let tool = nettool();
    let port = PORT.to_string();
    let ctrs = [
        ("a1", "neta"),
        ("a2", "neta"),
        ("b1", "netb"),
        ("i1", "neti"),
        ("i2", "neti"),
    ];
    for (name, network) in ctrs {
        let args = ["container", "run", name, "--network", network, "--"];
        sb.netctl_ok(&[&args[..], &[tool.as_str(), "serve", "tcp", port.as_str()]].concat());
    }
    // (name, netns, address, host-side veth)
    let info: Vec<(&str, String, String, String)> = ctrs
        .iter()
        .map(|(name, _)| {
            let json = sb.inspect(name);
            let ep = &json["endpoints"][0];
            (
                *name,
                json["netns"].as_str().expect("netns").to_owned(),
                ep["ip"].as_str().expect("ip").to_owned(),
                ep["host_veth"].as_str().expect("host_veth").to_owned(),
            )
        })
        .collect();
    let ctr = |name: &str| info.iter().find(|c| c.0 == name).expect("container");
    for (_, netns, ..) in &info {
        sb.spawn_in(netns, &[&tool, "serve", "udp", &port]);
        sb.spawn_in(netns, &[&tool, "sink", SINK_PORT]);
    }

    for (from, to) in [("a1", "a2"), ("a2", "a1"), ("i1", "i2")] {
        let (from, to) = (ctr(from), ctr(to));
        let what = format!("{} → {} on {datapath}", from.0, to.0);
        let to_ip = to.2.parse().expect("address");
        // The receiver sees the sender's own address.
        for proto in [Proto::Tcp, Proto::Udp] {
            let reply = sb
                .answers(&from.1, proto, to_ip, PORT)
                .unwrap_or_else(|e| panic!("{what}, {proto:?}: {e}"));
            assert!(
                reply.starts_with(&format!("peer={}:", from.2)),
                "{what}, {proto:?}: {reply}"
            );
        }
        // A stream, and the path it took.
        let ebpf = datapath == "ebpf";
        let veth_before = tx_bytes(&sb, &to.3);
        let counted_before = if ebpf { same_network(&sb) } else { (0, 0) };
        let bytes = STREAM_BYTES.to_string();
        let sent = sb.run_in_ok(&from.1, &[&tool, "bulk", &to.2, SINK_PORT, &bytes]);
        assert_eq!(
            sent.trim(),
            format!("sent={bytes} received={bytes}"),
            "{what}"
        );
        let through_veth = tx_bytes(&sb, &to.3) - veth_before;
        if ebpf {
            let counted = same_network(&sb);
            // Straight into the peer: its veth carried no data (ARP at
            // most, which stays on the bridge).
            assert!(
                through_veth < 10_000,
                "{what}: {through_veth} bytes crossed the bridge into {}",
                to.3
            );
            assert!(
                counted.1 - counted_before.1 >= STREAM_BYTES,
                "{what}: same_network counted {} bytes",
                counted.1 - counted_before.1
            );
        } else {
            assert!(
                through_veth >= STREAM_BYTES,
                "{what}: the bridge sent {through_veth} bytes into {}",
                to.3
            );
        }
    }

    // Between networks, nothing (controls from the host, which reaches
    // every container).
    let before = sb.drop_counters();
    let mut packets = 0;
    for (from, to) in [("a1", "b1"), ("b1", "a2")] {
        let (from, to) = (ctr(from), ctr(to));
        for proto in [Proto::Tcp, Proto::Udp] {
            packets += sb
                .forbidden(
                    &sb.host_netns,
                    &from.1,
                    proto,
                    to.2.parse().expect("address"),
                    PORT,
                )
                .unwrap_or_else(|e| panic!("{} → {} {proto:?}: {e}", from.0, to.0));
        }
    }
    sb.assert_drops_since(&before, &[(Reason::Isolated, packets)]);
}
