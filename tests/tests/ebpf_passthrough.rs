//! What the TC programs leave alone or drop untranslated, frame by frame
//! through BPF_PROG_TEST_RUN (the harness and why it needs a namespace:
//! `netctl_tests::tc`): ARP, IPv6 and truncated frames, spoofed sources,
//! a container's IPv6 and forged ARP,
//! traffic within a network or to host addresses, isolation between
//! networks and of `--internal` ones; and the verifier's cost of each
//! program.

use std::net::Ipv4Addr;

use aya::programs::SchedClassifier;
use netctl_common::stats::StatIndex;
use netctl_tests::{frames::*, tc::*};

#[test]
fn arp_ipv6_and_truncated_frames_pass_untouched() {
    in_netns(Opts::default(), |env| {
        // (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than
        // Ethernet + 20 bytes, so the shortest header is not tried.)
        let full = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        // The IPv4 header claims 60 bytes (ihl 15): only 20 are there.
        let mut long_ihl = full[..34].to_vec();
        long_ihl[14] = 0x4f;
        // A whole IPv4 header announcing TCP, 10 bytes of it.
        let short_tcp = cut_l4(&full);
        // Total length beyond the frame.
        let mut long_len = full.clone();
        long_len[16..18].copy_from_slice(&1400u16.to_be_bytes());
        let arp = arp_frame(A1.mac, A1.ip, NET_A.gateway);
        let ipv6 = ipv6_frame(A1.mac, NET_A.mac);
        let frames = [&arp, &ipv6, &long_ihl, &short_tcp, &long_len];
        for (i, frame) in frames.into_iter().enumerate() {
            // A short TCP header leaving its network from a container is
            // dropped (see truncated_l4_headers_never_leave_their_network),
            // and so is a container's IPv6 (see
            // container_ipv6_and_forged_arp_are_dropped).
            let from_a1 = if i == 1 || i == 3 {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            };
            assert_verdict(env.endpoint(A1, frame), from_a1, frame);
            assert_verdict(env.uplink_in(frame), TC_ACT_OK, frame);
            assert_verdict(env.uplink_out(frame), TC_ACT_OK, frame);
        }
        // uplink_ingress looks at the destination before the L4 header: the
        // short TCP frame (to REMOTE, not the uplink address) is a plain Pass
        // there.
        env.assert_stats(&[
            (StatIndex::NotIpv4, 5),
            (StatIndex::Truncated, 7),
            (StatIndex::Pass, 1),
            (StatIndex::DropIsolated, 1),
            (StatIndex::DropIpv6, 1),
        ]);
        let (arp_len, ipv6_len) = (arp.len() as u64, ipv6.len() as u64);
        assert_eq!(
            env.stat_bytes(StatIndex::NotIpv4),
            3 * arp_len + 2 * ipv6_len,
            "bytes"
        );
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn container_ipv6_and_forged_arp_are_dropped() {
    in_netns(Opts::default(), |env| {
        const FORGED_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x12, 0x00, 0x99];
        let garp = |eth_src, sha, spa| arp_packet(ARP_REQUEST, eth_src, sha, spa, spa);
        // Networks have no IPv6: none leaves a container, a router
        // advertisement least of all.
        let ipv6 = [
            ipv6_frame(A1.mac, NET_A.mac),
            router_advertisement(A1.mac, [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0]),
        ];
        let mut bad_hlen = arp_frame(A1.mac, A1.ip, NET_A.gateway);
        bad_hlen[18] = 8;
        let forged = [
            // A2's address at A1's MAC: the takeover of a gratuitous ARP.
            garp(A1.mac, A1.mac, A2.ip),
            // A2 whole (address and MACs) from A1's veth.
            garp(A2.mac, A2.mac, A2.ip),
            // A1's address with another sender MAC, or Ethernet source.
            garp(A1.mac, FORGED_MAC, A1.ip),
            garp(FORGED_MAC, A1.mac, A1.ip),
            // An address nobody has, another network's container, the gateway.
            garp(A1.mac, A1.mac, Ipv4Addr::new(172, 18, 0, 99)),
            garp(A1.mac, A1.mac, B1.ip),
            arp_packet(ARP_REPLY, A1.mac, A1.mac, NET_A.gateway, A2.ip),
            // An ARP probe (sender 0.0.0.0) and what is not Ethernet/IPv4
            // ARP, or is cut short, cannot be told genuine.
            arp_packet(ARP_REQUEST, A1.mac, A1.mac, Ipv4Addr::UNSPECIFIED, A2.ip),
            bad_hlen,
            arp_frame(A1.mac, A1.ip, A2.ip)[..30].to_vec(),
        ];
        for frame in ipv6.iter().chain(&forged) {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_SHOT, frame);
        }
        // A1's own requests and replies, gratuitous or not, pass untouched.
        let genuine = [
            arp_frame(A1.mac, A1.ip, NET_A.gateway),
            garp(A1.mac, A1.mac, A1.ip),
            arp_packet(ARP_REPLY, A1.mac, A1.mac, A1.ip, NET_A.gateway),
        ];
        for frame in &genuine {
            let out = env.endpoint(A1, frame);
            assert_eq!(&out.1, frame, "changed");
            assert_verdict(out, TC_ACT_OK, frame);
        }
        // B1's own, on B1's veth; I1's on an internal network.
        let b1 = garp(B1.mac, B1.mac, B1.ip);
        assert_verdict(env.endpoint(B1, &b1), TC_ACT_OK, &b1);
        let i1 = arp_frame(I1.mac, I1.ip, NET_I.gateway);
        assert_verdict(env.endpoint(I1, &i1), TC_ACT_OK, &i1);
        env.assert_stats(&[
            (StatIndex::DropIpv6, ipv6.len() as u64),
            (StatIndex::DropArpSpoofed, forged.len() as u64),
            (StatIndex::NotIpv4, genuine.len() as u64 + 2),
        ]);
        let bytes = |frames: &[Vec<u8>]| frames.iter().map(|f| f.len() as u64).sum::<u64>();
        assert_eq!(env.stat_bytes(StatIndex::DropIpv6), bytes(&ipv6));
        assert_eq!(env.stat_bytes(StatIndex::DropArpSpoofed), bytes(&forged));
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn truncated_l4_headers_never_leave_their_network() {
    in_netns(Opts::default(), |env| {
        // An echo request whose datagram ends 4 bytes into ICMP: the
        // identifier after it is Ethernet padding, not a header (found by
        // ebpf_fuzz: it was read, translated and its checksum "updated").
        let padded_ping = with_total_length(&Frame::from(A1, REMOTE, echo(8, 77)).bytes(), 24);
        // A whole TCP header, all of it past a total length of 30.
        let padded_syn =
            with_total_length(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes(), 30);
        // To the outside or another network: nothing to translate, and
        // handed to the kernel they would leave their network untranslated.
        for frame in [&padded_ping, &padded_syn] {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_SHOT, frame);
        }
        let to_b1 = cut_l4(&Frame::from(A1, B1.ip, tcp(33000, 80, SYN)).bytes());
        assert_verdict(env.endpoint(A1, &to_b1), TC_ACT_SHOT, &to_b1);
        // From an internal network, not even that way out.
        let out_of_i1 = cut_l4(&Frame::from(I1, REMOTE, tcp(33000, 80, SYN)).bytes());
        assert_verdict(env.endpoint(I1, &out_of_i1), TC_ACT_SHOT, &out_of_i1);
        // On their own network they pass untouched (the receiver drops them).
        let to_a2 = with_total_length(&Frame::from(A1, A2.ip, echo(8, 77)).bytes(), 24);
        assert_verdict(env.endpoint(A1, &to_a2), TC_ACT_OK, &to_a2);
        let in_i1 = cut_l4(&Frame::from(I1, Ipv4Addr::new(172, 20, 0, 9), tcp(1, 80, SYN)).bytes());
        assert_verdict(env.endpoint(I1, &in_i1), TC_ACT_OK, &in_i1);
        // From the outside, a padded echo reply to the uplink: the host's.
        let reply = with_total_length(
            &Frame::from_outside(REMOTE, UPLINK_IP, echo(0, 77)).bytes(),
            24,
        );
        assert_verdict(env.uplink_in(&reply), TC_ACT_OK, &reply);
        env.assert_stats(&[
            (StatIndex::DropIsolated, 3),
            (StatIndex::DropInternal, 1),
            (StatIndex::Truncated, 3),
        ]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn spoofed_source_address_or_mac_is_dropped() {
    in_netns(Opts::default(), |env| {
        // A2's address (and MAC) from A1's veth.
        let other = Frame::from(A2, REMOTE, tcp(33000, 443, SYN)).bytes();
        // An address nobody has.
        let unknown = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.src = Ipv4Addr::new(172, 18, 0, 99)
        })
        .bytes();
        // A1's address with another MAC.
        let wrong_mac = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.src_mac = [0x02, 0x42, 0xac, 0x12, 0x00, 0x99]
        })
        .bytes();
        // A2's address with a TCP header cut short: checked all the same
        // (the kernel would route it).
        let short = cut_l4(&Frame::from(A2, REMOTE, tcp(33000, 443, SYN)).bytes());
        for frame in [&other, &unknown, &wrong_mac, &short] {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_SHOT, frame);
        }
        // The genuine one passes (same subnet).
        let genuine = Frame::from(A1, A2.ip, tcp(33000, 80, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &genuine), TC_ACT_OK, &genuine);
        env.assert_stats(&[(StatIndex::DropSpoofed, 4), (StatIndex::Pass, 1)]);
        assert_eq!(
            env.stat_bytes(StatIndex::DropSpoofed),
            (other.len() + unknown.len() + wrong_mac.len() + short.len()) as u64
        );
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn own_subnet_host_addresses_and_multicast_pass_untouched() {
    in_netns(Opts::default(), |env| {
        let frames = [
            // The peer on the same bridge.
            Frame::from(A1, A2.ip, tcp(33000, 80, SYN)),
            // DNS on the own gateway (no published port 53).
            Frame::from(A1, NET_A.gateway, udp(33000, 53)),
            // Another network's gateway: a host address, reachable.
            Frame::from(A1, NET_B.gateway, tcp(33000, 22, SYN)),
            // The uplink address, no published port.
            Frame::from(A1, UPLINK_IP, tcp(33000, 22, SYN)),
            // mDNS: multicast stays on the bridge, although 5353/udp is
            // published on 0.0.0.0.
            Frame::from(A1, Ipv4Addr::new(224, 0, 0, 251), udp(5353, 5353)),
            // The subnet's broadcast.
            Frame::from(A1, Ipv4Addr::new(172, 18, 255, 255), udp(68, 67)),
        ];
        for frame in &frames {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(A1, &bytes), TC_ACT_OK, &bytes);
        }
        env.assert_stats(&[(StatIndex::Pass, frames.len() as u64)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn networks_are_isolated() {
    in_netns(Opts::default(), |env| {
        // A container of another network.
        let to_b1 = Frame::from(A1, B1.ip, tcp(33000, 80, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &to_b1), TC_ACT_SHOT, &to_b1);
        // An address in another network's subnet (the FIB routes it to br-b).
        let to_subnet = Frame::from(A1, Ipv4Addr::new(172, 19, 0, 77), udp(33000, 53)).bytes();
        assert_verdict(env.endpoint(A1, &to_subnet), TC_ACT_SHOT, &to_subnet);
        // The other way round, ICMP.
        let ping = Frame::from(B1, A1.ip, echo(8, 0x77)).bytes();
        assert_verdict(env.endpoint(B1, &ping), TC_ACT_SHOT, &ping);
        env.assert_stats(&[(StatIndex::DropIsolated, 3)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn internal_network_reaches_only_itself() {
    in_netns(Opts::default(), |env| {
        let drops = [
            Frame::from(I1, REMOTE, tcp(33000, 443, SYN)),
            Frame::from(I1, REMOTE, echo(8, 0x99)),
            Frame::from(I1, UPLINK_IP, tcp(33000, 22, SYN)),
            // A published port of another network: no hairpin out of it.
            Frame::from(I1, UPLINK_IP, tcp(33000, 8080, SYN)),
            // Its own published port, through the uplink address: not even
            // that (the uplink address is outside the network).
            Frame::from(I1, UPLINK_IP, tcp(33000, 9090, SYN)),
            Frame::from(I1, NET_A.gateway, tcp(33000, 22, SYN)),
        ];
        for frame in &drops {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(I1, &bytes), TC_ACT_SHOT, &bytes);
        }
        let passes = [
            Frame::from(I1, NET_I.gateway, udp(33000, 53)),
            Frame::from(I1, Ipv4Addr::new(172, 20, 0, 9), tcp(33000, 80, SYN)),
        ];
        for frame in &passes {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(I1, &bytes), TC_ACT_OK, &bytes);
        }
        // Nothing reaches it from outside either, published port or not,
        // nor from another network through a host address.
        let inbound = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 9090, SYN)).bytes();
        assert_verdict(env.uplink_in(&inbound), TC_ACT_SHOT, &inbound);
        let hairpin = Frame::from(A1, UPLINK_IP, tcp(33000, 9090, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &hairpin), TC_ACT_SHOT, &hairpin);
        // Nor leaves through the kernel's routing.
        let routed = with(&Frame::from(I1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.ttl = 63
        })
        .bytes();
        assert_verdict(env.uplink_out(&routed), TC_ACT_SHOT, &routed);
        env.assert_stats(&[(StatIndex::DropInternal, 9), (StatIndex::Pass, 2)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn the_verifier_accepts_every_program() {
    in_netns(Opts::default(), |env| {
        // Loaded by Env::new; how much the verifier had to walk, against its
        // limit of 1M instructions (a guard against state explosion).
        for name in ["endpoint_ingress", "uplink_ingress", "uplink_egress"] {
            let prog: &SchedClassifier = env
                .ebpf
                .program(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            let info = prog.info().expect("program info");
            let verified = info.verified_instruction_count().unwrap_or(0);
            println!(
                "{name}: {} bytes translated, {verified} instructions verified",
                info.size_translated().unwrap_or(0)
            );
            assert!(
                verified < 200_000,
                "{name}: {verified} instructions verified"
            );
        }
        env.assert_stats(&[]);
        assert!(env.conntrack().is_empty());
    });
}
