//! What `endpoint_ingress` makes of a destination, frame by frame through
//! BPF_PROG_TEST_RUN (the harness: `netctl_tests::tc`): another network's
//! subnet, a network's gateway or neither, told by one lookup in the LPM
//! trie `NETWORK_PREFIXES`, with the topology's 3 networks and with 1,000
//! more; and a container of the same network, reached straight through
//! bpf_redirect_peer instead of the bridge.

use std::{net::Ipv4Addr, process::Command};

use aya::programs::SchedClassifier;
use netctl_common::{
    endpoint::{EndpointInfo, NetworkInfo},
    stats::StatIndex,
};
use netctl_tests::{frames::*, tc::*};

/// Network `i` of the many: 10.x.y.0/24, gateway .1, id 100 + i.
fn many(i: u32) -> (u32, Ipv4Addr, NetworkInfo) {
    let subnet = Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 0);
    let gateway = Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 1);
    let info = NetworkInfo {
        subnet: be_ip(subnet),
        mask: be_ip(Ipv4Addr::new(255, 255, 255, 0)),
        gateway: be_ip(gateway),
        bridge_ifindex: 0,
        bridge_mac: [0x02, 0x42, 10, (i / 256) as u8, (i % 256) as u8, 1],
        _pad: [0; 2],
        flags: 0,
    };
    (100 + i, subnet, info)
}

const MANY: u32 = 1_000;

/// Every kind of destination from A1, checked with `extra` networks loaded
/// beside the topology's three (the first and the last of them probed).
fn classify_with(extra: u32) {
    in_netns(Opts::default(), move |env| {
        for i in 0..extra {
            let (id, _, info) = many(i);
            env.add_network(id, info);
        }
        let mut isolated = vec![
            // Another network's subnet, no container there.
            Frame::from(A1, Ipv4Addr::new(172, 19, 0, 77), udp(33000, 53)),
            Frame::from(A1, Ipv4Addr::new(172, 20, 255, 255), udp(33000, 53)),
        ];
        let mut host = vec![
            // Another network's gateway: a host address.
            Frame::from(A1, NET_B.gateway, tcp(33000, 22, SYN)),
            Frame::from(A1, NET_I.gateway, udp(33000, 53)),
        ];
        for i in [0, extra / 2, extra.saturating_sub(1)]
            .into_iter()
            .take(extra as usize)
        {
            let (_, subnet, info) = many(i);
            let o = subnet.octets();
            isolated.push(Frame::from(
                A1,
                Ipv4Addr::new(o[0], o[1], o[2], 200),
                tcp(33000, 80, SYN),
            ));
            host.push(Frame::from(
                A1,
                Ipv4Addr::from(info.gateway.to_ne_bytes()),
                tcp(33000, 22, SYN),
            ));
        }
        for frame in &isolated {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(A1, &bytes), TC_ACT_SHOT, &bytes);
        }
        for frame in &host {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(A1, &bytes), TC_ACT_OK, &bytes);
        }
        // Neither (10.250/16 and the outside are in no network): SNAT and
        // out of the uplink.
        let outside = [
            Frame::from(A1, REMOTE, tcp(33000, 443, SYN)),
            Frame::from(A1, Ipv4Addr::new(10, 250, 0, 1), tcp(33001, 443, SYN)),
        ];
        for frame in &outside {
            let (verdict, out) = env.endpoint(A1, &frame.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "out of the uplink");
            assert_eq!(view(&out).src, UPLINK_IP, "SNAT");
        }
        env.assert_stats(&[
            (StatIndex::DropIsolated, isolated.len() as u64),
            (StatIndex::Pass, host.len() as u64),
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
        ]);
        // The cost of a packet that needs the classification (another
        // network's gateway, no state made), for the report.
        let probe = Frame::from(A1, NET_B.gateway, tcp(33000, 22, SYN)).bytes();
        let mean = env.mean_run_time("endpoint_ingress", env.veth(A1), &probe, 10_000);
        println!(
            "endpoint_ingress to a gateway with {} networks: {} ns per run",
            3 + extra,
            mean.as_nanos()
        );
    });
}

#[test]
fn destinations_are_classified_with_three_networks() {
    classify_with(0);
}

#[test]
fn destinations_are_classified_with_a_thousand_more_networks() {
    classify_with(MANY);
}

/// A1's frame to `dst`, addressed to `dst_mac` (a container's own frame to
/// a peer on its link carries the peer's MAC; `Frame::from` addresses the
/// gateway's).
fn to_mac(from: Ctr, dst: Ipv4Addr, dst_mac: [u8; 6], l4: L4) -> Vec<u8> {
    with(&Frame::from(from, dst, l4), |f| f.dst_mac = dst_mac).bytes()
}

#[test]
fn same_network_traffic_goes_straight_to_the_peer() {
    in_netns(Opts::default(), |env| {
        // I2, a second container of the internal network (its veth: B1's,
        // which only has to be an index other than I1's).
        const I2: Ctr = Ctr {
            veth: "ve-b1",
            ip: Ipv4Addr::new(172, 20, 0, 3),
            mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x03],
            net: 3,
        };
        let i2 = EndpointInfo {
            ifindex: env.veth(B1),
            network_id: I2.net,
            mac: I2.mac,
            _pad: [0; 2],
        };
        env.hash::<u32, EndpointInfo>("ENDPOINTS")
            .insert(be_ip(I2.ip), i2, 0)
            .expect("ENDPOINTS");
        // Redirected, the frame exactly as sent: a switch rewrites no MAC
        // and no TTL. (A test run does not carry the redirect out; the
        // end-to-end test sees it arrive, and not through the bridge.)
        let redirected = [
            to_mac(A1, A2.ip, A2.mac, tcp(33000, 80, SYN)),
            to_mac(A1, A2.ip, A2.mac, tcp(33000, 80, ACK)),
            to_mac(A2, A1.ip, A1.mac, tcp(80, 33000, SYN | ACK)),
            to_mac(A1, A2.ip, A2.mac, udp(33000, 53)),
            to_mac(A1, A2.ip, A2.mac, echo(8, 7)),
            // An internal network's containers reach each other.
            to_mac(I1, I2.ip, I2.mac, tcp(33000, 80, SYN)),
        ];
        let senders = [A1, A1, A2, A1, A1, I1];
        for (frame, from) in redirected.iter().zip(senders) {
            assert_verdict(env.endpoint(from, frame), TC_ACT_REDIRECT, frame);
        }
        // Still by the bridge: a frame to the gateway's MAC (the host
        // routes it), to a MAC that is not the peer's, to an address
        // nobody has, to the subnet's broadcast; ARP.
        let bridged = [
            Frame::from(A1, A2.ip, tcp(33000, 80, SYN)).bytes(),
            to_mac(A1, A2.ip, B1.mac, tcp(33000, 80, SYN)),
            to_mac(A1, Ipv4Addr::new(172, 18, 0, 99), A2.mac, udp(33000, 53)),
            to_mac(A1, Ipv4Addr::new(172, 18, 255, 255), [0xff; 6], udp(68, 67)),
        ];
        for frame in &bridged {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_OK, frame);
        }
        let arp = arp_frame(A1.mac, A1.ip, A2.ip);
        assert_verdict(env.endpoint(A1, &arp), TC_ACT_OK, &arp);
        // Isolation and anti-spoofing first: another network's container at
        // its own MAC, A2's address from A1's veth.
        let dropped = [
            (A1, to_mac(A1, B1.ip, B1.mac, tcp(33000, 80, SYN))),
            (I1, to_mac(I1, A1.ip, A1.mac, tcp(33000, 80, SYN))),
            (A1, to_mac(A2, A1.ip, A1.mac, tcp(80, 33000, SYN | ACK))),
        ];
        for (from, frame) in &dropped {
            assert_verdict(env.endpoint(*from, frame), TC_ACT_SHOT, frame);
        }
        env.assert_stats(&[
            (StatIndex::SameNetwork, redirected.len() as u64),
            (StatIndex::Pass, bridged.len() as u64),
            (StatIndex::NotIpv4, 1),
            (StatIndex::DropIsolated, 2),
            (StatIndex::DropSpoofed, 1),
        ]);
        assert_eq!(
            env.stat_bytes(StatIndex::SameNetwork),
            redirected.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        assert!(env.conntrack().is_empty(), "no flow for a switch");
    });
}

/// The verifier's figures for `endpoint_ingress`: instructions it walked,
/// and the stack its translated code uses (the deepest slot below r10, per
/// function, from `bpftool prog dump xlated`), with the number of map walks
/// (bpf_for_each_map_elem calls) left in it. Printed for the report; the
/// limits themselves are the verifier's (the program loads).
#[test]
fn verifier_figures_of_endpoint_ingress() {
    in_netns(Opts::default(), |env| {
        let prog: &SchedClassifier = env
            .ebpf
            .program("endpoint_ingress")
            .expect("program")
            .try_into()
            .expect("classifier");
        let info = prog.info().expect("program info");
        let out = Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &info.id().to_string()])
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool prog dump xlated");
        let xlated = String::from_utf8_lossy(&out.stdout);
        // Function headers ("i32 endpoint_ingress(...):") start each
        // function; source lines start with ';', instructions with a number.
        let mut depths: Vec<(String, u32)> = Vec::new();
        for line in xlated.lines() {
            let text = line.trim();
            if !text.starts_with(|c: char| c.is_ascii_digit() || c == ';') && text.ends_with("):") {
                let name = text.split('(').next().unwrap_or_default();
                let name = name.rsplit(' ').next().unwrap_or_default();
                depths.push((name.to_owned(), 0));
                continue;
            }
            if text.starts_with(';') {
                continue;
            }
            let mut rest = text;
            while let Some(at) = rest.find("r10 -") {
                rest = &rest[at + 5..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let (Ok(depth), Some((_, deepest))) = (digits.parse::<u32>(), depths.last_mut())
                {
                    *deepest = (*deepest).max(depth);
                }
            }
        }
        println!(
            "endpoint_ingress: {} instructions verified, {} translated; stack per function {:?}; map walks (calls of bpf_for_each_*_elem) {}",
            info.verified_instruction_count().unwrap_or(0),
            xlated.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count(),
            depths.iter().filter(|(_, d)| *d > 0).collect::<Vec<_>>(),
            xlated.matches("call bpf_for_each_").count()
        );
    });
}
