//! Checksums on the wire, on both datapaths (`iptables::*`, `ebpf::*`):
//! every frame a translation delivers carries right IPv4 and L4 checksums.
//! The flows are SNAT (a container to the outside), DNAT (the outside to a
//! published port) and hairpin (a container to a published port on the
//! host's address), with TCP, UDP and ICMP echo (SNAT only: a published
//! port is TCP or UDP), and a 1 MB TCP stream through a published port.
//! `nettool sniff --checksums` verifies each frame on the interfaces that
//! receive the translated packets and their translated replies.
//!
//! Receive checksum offload is off on those interfaces, so their stacks
//! check too. Twice: first with the senders' offloads as they are, so that
//! the datapath rewrites CHECKSUM_PARTIAL and GSO packets (the sniffer
//! completes those as a NIC would, so a wrong pseudo-header seed shows);
//! then with transmit checksum offload off as well, so that every packet
//! carries a full checksum the datapath must update.

use std::collections::BTreeMap;

use netctl_tests::output::nettool;
use netctl_tests::sandbox::{probe::Proto, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(translated_frames_carry_right_checksums);

const STREAM_BYTES: &str = "1000000";

/// What a flow sends.
enum Send {
    /// One request/answer (retried until answered).
    Probe(Proto, std::net::Ipv4Addr, u16),
    /// [`STREAM_BYTES`] in one write to a sink.
    Stream(std::net::Ipv4Addr, u16),
}

struct Flow {
    what: &'static str,
    /// The sender's namespace.
    from: String,
    send: Send,
    /// Where its translated packets arrive, then where the translated
    /// replies arrive: (namespace, interface).
    captures: Vec<(String, &'static str)>,
    /// The L4 protocol each capture must have seen.
    proto: &'static str,
}

/// The last line of a `sniff --checksums`, as numbers by name.
fn summary(output: &str) -> BTreeMap<String, u64> {
    let last = output.lines().last().unwrap_or_default();
    last.split_whitespace()
        .filter_map(|field| {
            let (name, value) = field.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Runs one flow with its sniffers and checks what each verified: frames
/// of the flow's protocol, none bad, none lost. Returns the GSO frames seen.
fn check(sb: &Sandbox, flow: &Flow, phase: &str) -> u64 {
    let tool = nettool();
    let starts: Vec<(&str, Vec<&str>)> = flow
        .captures
        .iter()
        .map(|(netns, iface)| {
            (
                netns.as_str(),
                vec![tool.as_str(), "sniff", iface, "--checksums"],
            )
        })
        .collect();
    let sniffers = sb.start_all_ready(&starts);
    match flow.send {
        Send::Probe(proto, ip, port) => {
            sb.answers(&flow.from, proto, ip, port)
                .unwrap_or_else(|e| panic!("{phase}, {}: {e}", flow.what));
        }
        Send::Stream(ip, port) => {
            let (ip, port) = (ip.to_string(), port.to_string());
            let sent = sb.run_in_ok(&flow.from, &[&tool, "bulk", &ip, &port, STREAM_BYTES]);
            assert_eq!(
                sent.trim(),
                format!("sent={STREAM_BYTES} received={STREAM_BYTES}"),
                "{phase}, {}",
                flow.what
            );
        }
    }
    let mut gso = 0;
    for ((netns, iface), sniffer) in flow.captures.iter().zip(sniffers) {
        let output = sniffer.finish();
        let counts = summary(&output);
        let at = format!("{phase}, {}, on {iface} of {netns}", flow.what);
        assert_eq!(
            counts.get("bad"),
            Some(&0),
            "{at}: bad checksums:\n{output}"
        );
        assert_eq!(
            counts.get("lost"),
            Some(&0),
            "{at}: frames not verified:\n{output}"
        );
        assert!(
            counts.get(flow.proto).copied().unwrap_or(0) > 0,
            "{at}: no {} frame captured:\n{output}",
            flow.proto
        );
        gso += counts.get("gso").copied().unwrap_or(0);
    }
    gso
}

fn translated_frames_carry_right_checksums(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "7070:7070",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let (web, a, outside) = (
        sb.netns_of("web"),
        sb.netns_of("a"),
        sb.outside_netns.clone(),
    );
    sb.spawn_in(&web, &[&tool, "serve", "udp", "53"]);
    sb.spawn_in(&web, &[&tool, "sink", "7070"]);
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "9000"]);
    sb.spawn_in(&outside, &[&tool, "serve", "udp", "9001"]);

    let capture = |pairs: [(&String, &'static str); 2]| {
        pairs.map(|(netns, iface)| (netns.clone(), iface)).to_vec()
    };
    let snat = capture([(&outside, "wan0"), (&a, "eth0")]);
    let dnat = capture([(&web, "eth0"), (&outside, "wan0")]);
    let hairpin = capture([(&web, "eth0"), (&a, "eth0")]);
    let flow = |what, from: &String, send, captures: &Vec<_>, proto| Flow {
        what,
        from: from.clone(),
        send,
        captures: Vec::clone(captures),
        proto,
    };
    let flows = [
        flow(
            "SNAT TCP",
            &a,
            Send::Probe(Proto::Tcp, OUTSIDE_IP, 9000),
            &snat,
            "tcp",
        ),
        flow(
            "SNAT UDP",
            &a,
            Send::Probe(Proto::Udp, OUTSIDE_IP, 9001),
            &snat,
            "udp",
        ),
        flow(
            "SNAT ICMP",
            &a,
            Send::Probe(Proto::Icmp, OUTSIDE_IP, 0),
            &snat,
            "icmp",
        ),
        flow(
            "DNAT TCP",
            &outside,
            Send::Probe(Proto::Tcp, HOST_UPLINK_IP, 8080),
            &dnat,
            "tcp",
        ),
        flow(
            "DNAT UDP",
            &outside,
            Send::Probe(Proto::Udp, HOST_UPLINK_IP, 5353),
            &dnat,
            "udp",
        ),
        flow(
            "hairpin TCP",
            &a,
            Send::Probe(Proto::Tcp, HOST_UPLINK_IP, 8080),
            &hairpin,
            "tcp",
        ),
        flow(
            "hairpin UDP",
            &a,
            Send::Probe(Proto::Udp, HOST_UPLINK_IP, 5353),
            &hairpin,
            "udp",
        ),
        flow(
            "DNAT 1 MB TCP stream",
            &outside,
            Send::Stream(HOST_UPLINK_IP, 7070),
            &dnat,
            "tcp",
        ),
    ];
    let interfaces = [(&web, "eth0"), (&a, "eth0"), (&outside, "wan0")];
    for (phase, offloads) in [
        ("senders' offloads on", &["rx", "off"][..]),
        ("all checksum offloads off", &["rx", "off", "tx", "off"][..]),
    ] {
        for (netns, iface) in interfaces {
            let argv = [&["ethtool", "-K", iface][..], offloads].concat();
            sb.run_in_ok(netns, &argv);
        }
        let gso: Vec<u64> = flows.iter().map(|f| check(&sb, f, phase)).collect();
        if offloads.len() == 2 {
            // The stream went through the datapath in GSO frames, verified.
            assert!(gso[7] > 0, "{phase}: no GSO frame in the stream");
        }
    }
}
