//! Fragmented datagrams through every translation, on both datapaths
//! (iptables, whose kernel reassembles before NAT, is the reference): a
//! 4,000-byte UDP datagram (three fragments at the uplink's MTU of 1500)
//! echoed through SNAT, through a published UDP port from the outside, and
//! through hairpin; and `ping -s 2000` from a container to the outside. The
//! echo must come back whole and unchanged, with the translated source seen
//! by the server.

use netctl_tests::output::{nettool, peer_ip};
use netctl_tests::sandbox::{call_until_answer, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    big_udp_datagram_through_snat_and_back,
    big_udp_datagram_to_a_published_port_and_back,
    big_ping_from_a_container_to_the_outside,
);

/// Bigger than one 1500-byte frame: three fragments each way.
const BIG: &str = "4000";

/// On the eBPF datapath: at least `translated` later fragments were
/// translated (`fragment_translated`: the fragments really crossed the
/// programs, not the kernel's reassembly) and none was dropped. Nothing to
/// read on iptables (the kernel's conntrack reassembles).
fn assert_fragments_translated(sb: &Sandbox, translated: u64) {
    if sb.datapath != "ebpf" {
        return;
    }
    let stats: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json");
    let packets = |name: &str| {
        stats[name]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
    };
    assert!(
        packets("fragment_translated") >= translated,
        "fragment_translated {} < {translated}",
        packets("fragment_translated")
    );
    assert_eq!(packets("drop_fragment"), 0, "drop_fragment");
    assert_eq!(
        packets("drop_fragment_out_of_order"),
        0,
        "drop_fragment_out_of_order"
    );
}

/// `udpbig` against `udpecho` until it answers (the server may still be
/// starting), 0.5 s per try.
fn echo_big(run: impl Fn(&[&str]) -> std::process::Output, host: &str, port: &str) -> String {
    call_until_answer(|| run(&[&nettool(), "udpbig", host, port, BIG, "--timeout-ms", "500"]))
}

fn big_udp_datagram_through_snat_and_back(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&nettool(), "udpecho", "9001"]);
    let server = OUTSIDE_IP.to_string();
    let reply = echo_big(|argv| sb.exec("a", argv), &server, "9001");
    assert!(reply.trim().ends_with("echoed=4000"), "{reply:?}");
    assert_eq!(
        peer_ip(&reply),
        HOST_UPLINK_IP,
        "the datagram left with the uplink address"
    );
    // Two later fragments out, two back.
    assert_fragments_translated(&sb, 4);
}

fn big_udp_datagram_to_a_published_port_and_back(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "echo",
        "--network",
        "front",
        "-p",
        "7001:7001/udp",
        "--",
        &tool,
        "udpecho",
        "7001",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let host = HOST_UPLINK_IP.to_string();
    // From the outside: DNAT, the client's address kept.
    let reply = echo_big(|argv| sb.outside(argv), &host, "7001");
    assert!(reply.trim().ends_with("echoed=4000"), "{reply:?}");
    assert_eq!(peer_ip(&reply), OUTSIDE_IP, "the client address is kept");
    // From another container through the host's address (hairpin).
    let reply = echo_big(|argv| sb.exec("a", argv), &host, "7001");
    assert!(reply.trim().ends_with("echoed=4000"), "hairpin: {reply:?}");
    assert_fragments_translated(&sb, 8);
}

fn big_ping_from_a_container_to_the_outside(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let server = OUTSIDE_IP.to_string();
    // The small ping first: the path works at all.
    assert!(sb.pings("a", &server), "a 64-byte ping");
    // 2,008 bytes of ICMP: two fragments out, two back.
    let answered = (0..3).any(|_| {
        sb.exec("a", &["ping", "-c1", "-W1", "-s", "2000", &server])
            .status
            .success()
    });
    assert!(answered, "ping -s 2000 from a container is answered");
    assert_fragments_translated(&sb, 2);
}
