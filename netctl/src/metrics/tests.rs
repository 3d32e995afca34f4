//! The families built from readings: labels, values and what is left out.

use std::net::Ipv4Addr;

use netctl_common::stats::Counter;

use super::*;
use crate::{
    datapath::{ebpf::Flow, iptables::fixtures},
    model::{Container, DatapathKind, Naming, NetworkMode, Protocol},
};

/// A host with network `front`, container `web` (172.18.0.2, publishing
/// 8080/tcp → 80) and container `a` (172.18.0.3).
fn state(datapath: DatapathKind) -> State {
    let mut state = State {
        datapath: Some(datapath),
        ..State::default()
    };
    state.networks.insert("front".into(), fixtures::front());
    for (name, last, veth) in [("web", 2, "veweb"), ("a", 3, "vea")] {
        let mut ep = fixtures::endpoint();
        ep.ip = Ipv4Addr::new(172, 18, 0, last);
        ep.host_veth = veth.into();
        let ports = if name == "web" {
            vec![fixtures::port(
                Protocol::Tcp,
                None,
                8080,
                [172, 18, 0, 2],
                80,
                "front",
            )]
        } else {
            Vec::new()
        };
        state.containers.insert(
            name.into(),
            Container {
                name: name.into(),
                mode: NetworkMode::Bridge,
                netns: None,
                endpoints: vec![ep],
                ports,
                process: None,
                created: 0,
                cni: None,
                docker: None,
                naming: Naming::default(),
            },
        );
    }
    state
}

fn flow(kind: &'static str, direction: &'static str, addrs: [&str; 4], packets: u64) -> Flow {
    Flow {
        proto: "tcp",
        src: addrs[0].into(),
        dst: addrs[1].into(),
        translated_src: addrs[2].into(),
        translated_dst: addrs[3].into(),
        kind,
        direction,
        state: "established",
        idle_seconds: 0,
        packets,
        bytes: packets * 100,
    }
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

#[test]
fn ebpf_flows_are_counted_per_container_port_and_kind() {
    let flows = vec![
        // Outside → 8080 → web:80, 3 packets in, 2 out.
        flow(
            "dnat",
            "original",
            [
                "198.51.100.2:40000",
                "198.51.100.1:8080",
                "198.51.100.2:40000",
                "172.18.0.2:80",
            ],
            3,
        ),
        flow(
            "dnat",
            "reply",
            [
                "172.18.0.2:80",
                "198.51.100.2:40000",
                "198.51.100.1:8080",
                "198.51.100.2:40000",
            ],
            2,
        ),
        // a → outside, SNAT to port 61000: 4 out, 1 in.
        flow(
            "snat",
            "original",
            [
                "172.18.0.3:5000",
                "198.51.100.2:53",
                "198.51.100.1:61000",
                "198.51.100.2:53",
            ],
            4,
        ),
        flow(
            "snat",
            "reply",
            [
                "198.51.100.2:53",
                "198.51.100.1:61000",
                "198.51.100.2:53",
                "172.18.0.3:5000",
            ],
            1,
        ),
    ];
    let readings = Readings {
        state: state(DatapathKind::Ebpf),
        datapath: DatapathReadings::Ebpf(EbpfReadings {
            stats: vec![
                (
                    "snat",
                    Counter {
                        packets: 4,
                        bytes: 400,
                    },
                ),
                (
                    "drop_spoofed",
                    Counter {
                        packets: 2,
                        bytes: 84,
                    },
                ),
            ],
            flows,
            conntrack_capacity: 1024,
        }),
    };
    let all = families(&readings);
    let packets = family(&all, "netctl_container_packets_total");
    assert_eq!(packets.get(&["web", "front", "ingress"]), Some(3));
    assert_eq!(packets.get(&["web", "front", "egress"]), Some(2));
    assert_eq!(packets.get(&["a", "front", "egress"]), Some(4));
    assert_eq!(packets.get(&["a", "front", "ingress"]), Some(1));
    let bytes = family(&all, "netctl_container_bytes_total");
    assert_eq!(bytes.get(&["a", "front", "egress"]), Some(400));
    let port = ["web", "front", "0.0.0.0", "8080", "tcp"];
    let connections = family(&all, "netctl_published_port_connections");
    assert_eq!(connections.get(&port), Some(1));
    let port_bytes = family(&all, "netctl_published_port_bytes_total");
    assert_eq!(
        port_bytes.get(&[&port[..], &["ingress"]].concat()),
        Some(300)
    );
    assert_eq!(
        port_bytes.get(&[&port[..], &["egress"]].concat()),
        Some(200)
    );
    assert_eq!(
        family(&all, "netctl_snat_ports_in_use").get(&["tcp"]),
        Some(1)
    );
    assert_eq!(
        family(&all, "netctl_snat_ports_in_use").get(&["udp"]),
        Some(0)
    );
    let entries = family(&all, "netctl_conntrack_entries");
    assert_eq!(entries.get(&["dnat", "established"]), Some(2));
    assert_eq!(entries.get(&["hairpin", "new"]), Some(0));
    assert_eq!(
        family(&all, "netctl_conntrack_capacity").get(&[]),
        Some(1024)
    );
    let stats = family(&all, "netctl_packets_total");
    assert_eq!(stats.get(&["snat", ""]), Some(4));
    assert_eq!(stats.get(&["drop", "spoofed"]), Some(2));
    assert_eq!(
        family(&all, "netctl_bytes_total").get(&["drop", "spoofed"]),
        Some(84)
    );
    assert_eq!(family(&all, "netctl_published_ports").get(&[]), Some(1));
    assert_eq!(family(&all, "netctl_containers").get(&[]), Some(2));
    assert_eq!(family(&all, "netctl_datapath_info").get(&["ebpf"]), Some(1));
    assert!(all.iter().all(|f| !f.name.starts_with("netctl_iptables")));
}

#[test]
fn iptables_rules_are_labelled_by_what_they_are_for() {
    let state = state(DatapathKind::Iptables);
    let web = &state.containers["web"];
    let mut lines = vec!["*nat".to_owned()];
    let dnat = crate::datapath::iptables::port_rules(&web.ports);
    lines.push(format!("[3:180] {}", dnat[0].saved()));
    let net = crate::datapath::iptables::network_rules(&state.networks["front"]);
    for rule in net.iter().filter(|r| r.table.as_str() == "nat") {
        lines.push(format!("[2:120] {}", rule.saved()));
    }
    lines.extend(["COMMIT".into(), "*filter".into()]);
    for rule in net.iter().filter(|r| r.table.as_str() == "filter") {
        lines.push(format!("[1:60] {}", rule.saved()));
    }
    lines.extend(["COMMIT".into(), "*raw".into()]);
    for rule in crate::datapath::iptables::endpoint_rules(&web.endpoints[0]) {
        lines.push(format!("[5:250] {}", rule.saved()));
    }
    lines.push("COMMIT".into());
    let rules = CountedRule::parse_all(&lines.join("\n"));
    let readings = Readings {
        state,
        datapath: DatapathReadings::Iptables(rules),
    };
    let all = families(&readings);
    let packets = family(&all, "netctl_iptables_rule_packets_total");
    let port = "0.0.0.0:8080->80/tcp";
    assert_eq!(
        packets.get(&["nat", "NETCTL-DNAT", "dnat", "front", "web", port]),
        Some(3)
    );
    for (chain, rule) in [
        ("NETCTL-POSTROUTING", "masquerade_egress"),
        ("NETCTL-POSTROUTING", "masquerade_hairpin"),
        ("NETCTL-POSTROUTING", "masquerade_localhost"),
    ] {
        assert_eq!(
            packets.get(&["nat", chain, rule, "front", "", ""]),
            Some(2),
            "{rule}"
        );
    }
    for (chain, rule) in [
        ("NETCTL-ISOLATION-1", "isolation_leaving_network"),
        ("NETCTL-ISOLATION-2", "drop_isolated"),
        ("NETCTL-FORWARD", "accept_established"),
        ("NETCTL-FORWARD", "accept_published"),
        ("NETCTL-FORWARD", "drop_invalid"),
        ("NETCTL-FORWARD", "accept_from_network"),
        ("NETCTL-FORWARD", "drop_unsolicited"),
    ] {
        assert_eq!(
            packets.get(&["filter", chain, rule, "front", "", ""]),
            Some(1),
            "{rule}"
        );
    }
    for rule in ["antispoof_address_drop", "antispoof_mac_drop"] {
        assert_eq!(
            packets.get(&["raw", "NETCTL-ANTISPOOF", rule, "front", "web", ""]),
            Some(5),
            "{rule}"
        );
    }
    let bytes = family(&all, "netctl_iptables_rule_bytes_total");
    assert_eq!(
        bytes.get(&["nat", "NETCTL-DNAT", "dnat", "front", "web", port]),
        Some(180)
    );
    assert!(all.iter().all(|f| f.name != "netctl_packets_total"));
    assert_eq!(
        family(&all, "netctl_datapath_info").get(&["iptables"]),
        Some(1)
    );
}

#[test]
fn a_fresh_host_has_only_the_state_families() {
    let text = text(&Readings::default());
    assert!(
        text.contains("# TYPE netctl_networks gauge\nnetctl_networks 0\n"),
        "{text}"
    );
    assert!(!text.contains("netctl_datapath_info{"), "{text}");
    assert!(!text.contains("conntrack"), "{text}");
}
