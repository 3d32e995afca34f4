//! The TC programs of netctl-ebpf, packet by packet, through
//! BPF_PROG_TEST_RUN: a crafted frame in, the verdict, the frame out, the
//! maps after. Nothing is attached to an interface and nothing is pinned
//! (the object's maps are private to each load).
//!
//! Each test runs in a thread of its own that first moves to a private,
//! anonymous network namespace (gone with the thread) and builds a small
//! topology there with rtnetlink: the uplink `up0` (198.51.100.1/24,
//! default route via 198.51.100.2, with or without a permanent neighbour
//! for the gateway), three bridges and four containers' host-side veths.
//! The kernel needs them twice: BPF_PROG_TEST_RUN runs a program "on" the
//! device named by `__sk_buff.ifindex` (which must exist in the caller's
//! namespace), and `bpf_fib_lookup` asks that namespace's routing tables.
//! So the fast path towards the uplink is tested for real: with the
//! neighbour the FIB answers SUCCESS (the program writes the MACs and
//! returns bpf_redirect's TC_ACT_REDIRECT), without it NO_NEIGH
//! (bpf_redirect_neigh, MACs left to the kernel), and without a route at
//! all the program hands the untranslated packet to the kernel (FibPass).
//! Redirects are not carried out by test runs: the verdict (7,
//! TC_ACT_REDIRECT) and the rewritten frame are what is checked.

use std::net::Ipv4Addr;

use aya::programs::SchedClassifier;
use netctl_common::{
    conntrack::{
        CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_KIND_DNAT, CT_KIND_HAIRPIN, CT_KIND_SNAT,
        CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    stats::StatIndex,
};
use netctl_tests::tc::*;

// ---------------------------------------------------------------------------
// What passes untouched.

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
        let frames = [
            (arp_frame(A1.mac), StatIndex::NotIpv4),
            (ipv6_frame(A1.mac), StatIndex::NotIpv4),
            (long_ihl, StatIndex::Truncated),
            (short_tcp, StatIndex::Truncated),
            (long_len, StatIndex::Truncated),
        ];
        for (i, (frame, _)) in frames.iter().enumerate() {
            // A short TCP header leaving its network from a container is
            // dropped (see truncated_l4_headers_never_leave_their_network).
            let from_a1 = if i == 3 { TC_ACT_SHOT } else { TC_ACT_OK };
            assert_verdict(env.endpoint(A1, frame), from_a1, frame);
            assert_verdict(env.uplink_in(frame), TC_ACT_OK, frame);
            assert_verdict(env.uplink_out(frame), TC_ACT_OK, frame);
        }
        // uplink_ingress looks at the destination before the L4 header: the
        // short TCP frame (to REMOTE, not the uplink address) is a plain Pass
        // there.
        env.assert_stats(&[
            (StatIndex::NotIpv4, 6),
            (StatIndex::Truncated, 7),
            (StatIndex::Pass, 1),
            (StatIndex::DropIsolated, 1),
        ]);
        let arp_len = frames[0].0.len() as u64;
        let ipv6_len = frames[1].0.len() as u64;
        assert_eq!(
            env.stat_bytes(StatIndex::NotIpv4),
            3 * (arp_len + ipv6_len),
            "bytes"
        );
        assert!(env.conntrack().is_empty());
    });
}

/// The frame with another IPv4 total length (and the header checksum to match).
fn with_total_length(frame: &[u8], total: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
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

// ---------------------------------------------------------------------------
// SNAT.

#[test]
fn snat_tcp_flow_out_and_back_with_states() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect to the uplink");
        let port = view(&out).sport;
        assert!(
            (SNAT_MIN..=SNAT_MAX).contains(&port),
            "SNAT port {port} in the range"
        );
        // FIB SUCCESS: the uplink's MAC to the gateway's, TTL decremented.
        let snatted = |f: &Frame, flags: u8| {
            with(f, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, flags);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            })
        };
        assert_frame(&out, &snatted(&syn, SYN));

        let original_key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        assert_eq!(env.conntrack().len(), 2, "one entry per direction");
        let a1_veth = env.veth(A1);
        let original = |state| {
            entry(
                UPLINK_IP,
                REMOTE,
                port,
                443,
                CT_KIND_SNAT,
                state,
                CT_DIR_ORIGINAL,
                0,
            )
        };
        let reply = |state| {
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                state,
                CT_DIR_REPLY,
                a1_veth,
            )
        };
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_NEW),
            "original",
        );
        assert_entry(env.ct_get(&reply_key), reply(CT_STATE_NEW), "reply");
        let o = env.ct_get(&original_key).unwrap();
        assert_eq!((o.packets, o.bytes), (1, syn.bytes().len() as u64));
        env.assert_stats(&[(StatIndex::Snat, 1), (StatIndex::RedirectUplink, 1)]);

        // The SYN-ACK comes back to the uplink address and port.
        let syn_ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK));
        let (verdict, out) = env.uplink_in(&syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A1");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.dst = A1.ip;
                f.l4 = tcp(443, 33000, SYN | ACK);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_ESTABLISHED),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_ESTABLISHED),
            "reply after the reply",
        );
        assert_eq!(env.ct_get(&reply_key).unwrap().packets, 1);

        // The next packet of the flow keeps its port (conntrack hit).
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK | PSH));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&ack, ACK | PSH));
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);

        // FIN: both directions close.
        let fin = Frame::from(A1, REMOTE, tcp(33000, 443, FIN | ACK));
        let (verdict, out) = env.endpoint(A1, &fin.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&fin, FIN | ACK));
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_CLOSING),
            "original after FIN",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_CLOSING),
            "reply after FIN",
        );
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::Snat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn snat_udp_without_neighbour_keeps_a_zero_checksum_zero() {
    let opts = Opts {
        neighbour: false,
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // With a checksum: updated (the MACs are left to bpf_redirect_neigh).
        let query = Frame::from(A1, REMOTE, udp(5000, 53));
        let (verdict, out) = env.endpoint(A1, &query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_neigh");
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&query, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(port, 53);
                f.ttl = 63;
            }),
        );
        assert_ne!(&out[40..42], &[0, 0], "a real UDP checksum");

        // Without one: it stays 0.
        let bare = Frame::from(
            A1,
            REMOTE,
            L4::Udp {
                sport: 5001,
                dport: 53,
                checksum: false,
            },
        );
        let (verdict, out) = env.endpoint(A1, &bare.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port2 = view(&out).sport;
        assert_eq!(&out[40..42], &[0, 0], "no UDP checksum stays none");
        let bare_out = |f: &Frame, sport, dport| {
            with(f, |f| {
                f.l4 = L4::Udp {
                    sport,
                    dport,
                    checksum: false,
                }
            })
        };
        assert_frame(
            &out,
            &bare_out(
                &with(&bare, |f| {
                    f.src = UPLINK_IP;
                    f.ttl = 63;
                }),
                port2,
                53,
            ),
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 53, port2, UDP)),
            entry(
                REMOTE,
                A1.ip,
                53,
                5001,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "reply entry",
        );

        // Its answer, also without a checksum, comes back to A1.
        let answer = bare_out(
            &Frame::from_outside(REMOTE, UPLINK_IP, udp(0, 0)),
            53,
            port2,
        );
        let (verdict, out) = env.uplink_in(&answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[40..42], &[0, 0], "still no checksum");
        assert_frame(
            &out,
            &bare_out(
                &with(&answer, |f| {
                    f.dst = A1.ip;
                    f.dst_mac = A1.mac;
                    f.src_mac = NET_A.mac;
                    f.ttl = 63;
                }),
                53,
                5001,
            ),
        );
        assert_eq!(
            env.ct_get(&ct_key(A1.ip, REMOTE, 5001, 53, UDP))
                .unwrap()
                .state,
            CT_STATE_ESTABLISHED
        );
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn snat_icmp_echo_by_identifier_and_other_protocols_pass() {
    in_netns(Opts::default(), |env| {
        let request = Frame::from(A1, REMOTE, echo(8, 0x4242));
        let (verdict, out) = env.endpoint(A1, &request.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let id = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&id), "identifier {id}");
        assert_frame(
            &out,
            &with(&request, |f| {
                f.src = UPLINK_IP;
                f.l4 = echo(8, id);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        let a1_veth = env.veth(A1);
        assert_entry(
            env.ct_get(&ct_key(A1.ip, REMOTE, 0x4242, 0x4242, ICMP)),
            entry(
                UPLINK_IP,
                REMOTE,
                id,
                id,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                0,
            ),
            "original",
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, id, id, ICMP)),
            entry(
                REMOTE,
                A1.ip,
                0x4242,
                0x4242,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1_veth,
            ),
            "reply",
        );

        let reply = Frame::from_outside(REMOTE, UPLINK_IP, echo(0, id));
        let (verdict, out) = env.uplink_in(&reply.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&reply, |f| {
                f.dst = A1.ip;
                f.l4 = echo(0, 0x4242);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );

        // Not translated, handed to the kernel as they are: an ICMP
        // timestamp request, GRE.
        let timestamp = Frame::from(A1, REMOTE, echo(13, 0x4343)).bytes();
        assert_verdict(env.endpoint(A1, &timestamp), TC_ACT_OK, &timestamp);
        let gre = Frame::from(A1, REMOTE, L4::Raw { proto: 47 }).bytes();
        assert_verdict(env.endpoint(A1, &gre), TC_ACT_OK, &gre);
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
            (StatIndex::UnsupportedProto, 2),
        ]);
    });
}

#[test]
fn snat_port_search_skips_published_and_taken_ports() {
    let opts = Opts {
        snat_ports: (40_000, 40_001),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        env.publish(Ipv4Addr::UNSPECIFIED, 40_000, TCP, A2, 80);
        // 40000 is published: 40001 is the only port left.
        let first = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &first.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_001);
        // Another flow to the same destination: nothing left.
        let second = Frame::from(A1, REMOTE, tcp(33001, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &second), TC_ACT_SHOT, &second);
        // Another destination: 40001 is free towards it.
        let elsewhere = Frame::from(A1, Ipv4Addr::new(203, 0, 113, 11), tcp(33002, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &elsewhere.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_001);
        assert_checksums(&out);
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::DropSnatExhausted, 1),
        ]);
    });
}

#[test]
fn snat_exhaustion_and_expired_ports_are_reused() {
    let opts = Opts {
        snat_ports: (40_000, 40_000),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // The only port is taken by a live flow to the same destination.
        let taken = ct_key(REMOTE, UPLINK_IP, 443, 40_000, TCP);
        let mut other = entry(
            REMOTE,
            A2.ip,
            443,
            35000,
            CT_KIND_SNAT,
            CT_STATE_ESTABLISHED,
            CT_DIR_REPLY,
            env.veth(A2),
        );
        other.last_seen_ns = monotonic_ns();
        env.ct_insert(taken, other);
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_SHOT, &syn);
        assert_eq!(env.conntrack().len(), 1, "nothing inserted");
        env.assert_stats(&[(StatIndex::DropSnatExhausted, 1)]);

        // Once that flow expired, its port is free again.
        other.state = CT_STATE_CLOSING;
        other.last_seen_ns = long_ago();
        env.ct_insert(taken, other);
        let (verdict, out) = env.endpoint(A1, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_000);
        assert_entry(
            env.ct_get(&taken),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "the port's new owner",
        );
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::DropSnatExhausted, 1),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

/// A closing TCP flow (FIN or RST seen, not yet expired) gives its port to
/// a new SYN, as the kernel's conntrack does in TIME_WAIT; an established
/// one and a non-SYN packet do not take it.
#[test]
fn a_new_syn_takes_over_the_port_of_a_closing_flow() {
    let opts = Opts {
        snat_ports: (40_000, 40_000),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let taken = ct_key(REMOTE, UPLINK_IP, 443, 40_000, TCP);
        let mut other = entry(
            REMOTE,
            A2.ip,
            443,
            35000,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_REPLY,
            env.veth(A2),
        );
        other.last_seen_ns = monotonic_ns();
        env.ct_insert(taken, other);
        // Not a SYN: the closing flow keeps its port.
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK)).bytes();
        assert_verdict(env.endpoint(A1, &ack), TC_ACT_SHOT, &ack);
        assert_eq!(
            env.ct_get(&taken).unwrap().daddr,
            other.daddr,
            "still the old flow's"
        );

        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A1, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_000);
        assert_checksums(&out);
        assert_entry(
            env.ct_get(&taken),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "the port's new owner",
        );
        // The new flow is not closing: the next SYN finds no port.
        let next = Frame::from(A1, REMOTE, tcp(33001, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &next), TC_ACT_SHOT, &next);
        env.assert_stats(&[
            (StatIndex::DropSnatExhausted, 2),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

/// A container reusing a source port whose old flow is closing starts a
/// new flow: the old entries go (the kernel's TIME_WAIT rule) instead of the
/// SYN riding a translation whose port may belong to someone else by now.
#[test]
fn a_syn_on_a_closing_flow_starts_a_new_one() {
    let opts = Opts {
        snat_ports: (40_000, 40_001),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let first = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &first.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let old_port = view(&out).sport;
        let fin = Frame::from(A1, REMOTE, tcp(33000, 443, FIN | ACK)).bytes();
        let (verdict, _) = env.endpoint(A1, &fin);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let original = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        assert_eq!(env.ct_get(&original).unwrap().state, CT_STATE_CLOSING);
        let old_reply = ct_key(REMOTE, UPLINK_IP, 443, old_port, TCP);

        // Another flow takes the closing flow's port over (claim)...
        let taker = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A2, &taker);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let taker_port = view(&out).sport;

        // ...then A1 reuses 33000: a new flow, never the stale translation.
        let again = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A1, &again);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let new_port = view(&out).sport;
        let new_reply = ct_key(REMOTE, UPLINK_IP, 443, new_port, TCP);
        assert_eq!(
            env.ct_get(&original).unwrap().state,
            CT_STATE_NEW,
            "a fresh original entry"
        );
        assert_eq!(
            env.ct_get(&new_reply).unwrap().daddr,
            be_ip(A1.ip),
            "replies come back to A1"
        );
        if taker_port == old_port {
            // The taken-over reply entry still belongs to A2's flow.
            assert_ne!(new_port, old_port);
            assert_eq!(env.ct_get(&old_reply).unwrap().daddr, be_ip(A2.ip));
        }
        assert_checksums(&out);
    });
}

#[test]
fn expired_entries_are_misses_unless_their_pair_lives() {
    in_netns(Opts::default(), |env| {
        let key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let mut stale = entry(
            UPLINK_IP,
            REMOTE,
            41_234,
            443,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_ORIGINAL,
            0,
        );
        stale.last_seen_ns = long_ago();
        // Expired, and no pair: a miss; a new flow replaces it.
        env.ct_insert(key, stale);
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let fresh = env.ct_get(&key).expect("new entry");
        assert!(fresh.last_seen_ns > stale.last_seen_ns, "a new entry");
        assert_eq!(fresh.state, CT_STATE_ESTABLISHED, "picked up mid-stream");
        assert_eq!(view(&out).sport, u16::from_be(fresh.sport));
        assert_eq!(env.conntrack().len(), 2);

        // Expired, but its pair saw a packet lately: the flow lives on, with
        // its port.
        let key2 = ct_key(A1.ip, REMOTE, 33001, 443, TCP);
        env.ct_insert(key2, stale);
        let mut pair = entry(
            REMOTE,
            A1.ip,
            443,
            33001,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_REPLY,
            env.veth(A1),
        );
        pair.last_seen_ns = monotonic_ns();
        env.ct_insert(ct_key(REMOTE, UPLINK_IP, 443, 41_234, TCP), pair);
        let ack2 = Frame::from(A1, REMOTE, tcp(33001, 443, ACK));
        let (verdict, out) = env.endpoint(A1, &ack2.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 41_234, "the flow's own port");
        assert_checksums(&out);
        assert!(
            env.ct_get(&key2).unwrap().last_seen_ns > stale.last_seen_ns,
            "refreshed"
        );
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[(StatIndex::Snat, 2), (StatIndex::RedirectUplink, 2)]);
    });
}

#[test]
fn ttl_fragments_and_ip_options() {
    in_netns(Opts::default(), |env| {
        // TTL 1: the kernel answers "time exceeded" (untranslated).
        let last_hop = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.ttl = 1
        })
        .bytes();
        assert_verdict(env.endpoint(A1, &last_hop), TC_ACT_OK, &last_hop);
        // Fragments of a datagram needing SNAT: the first (MF) and a later one.
        let first = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.endpoint(A1, &first), TC_ACT_SHOT, &first);
        let later = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.frag = 0x00b9).bytes();
        assert_verdict(env.endpoint(A1, &later), TC_ACT_SHOT, &later);
        // A fragment on the own bridge is none of our business.
        let local = with(&Frame::from(A1, A2.ip, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.endpoint(A1, &local), TC_ACT_OK, &local);
        // A fragment to a published port (hairpin) cannot be translated.
        let to_port = with(&Frame::from(A1, UPLINK_IP, udp(5000, 5353)), |f| {
            f.frag = 0x2000
        })
        .bytes();
        assert_verdict(env.endpoint(A1, &to_port), TC_ACT_SHOT, &to_port);
        assert!(env.conntrack().is_empty());

        // IP options (ihl 6): the L4 header is found after them and
        // translated; the options are kept.
        let with_options = with(&Frame::from(A1, REMOTE, udp(5002, 53)), |f| {
            f.options = vec![0x01, 0x01, 0x01, 0x00]
        });
        let (verdict, out) = env.endpoint(A1, &with_options.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&with_options, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(port, 53);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        env.assert_stats(&[
            (StatIndex::Pass, 2),
            (StatIndex::DropFragment, 3),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

#[test]
fn without_a_route_the_kernel_decides_and_uplink_egress_translates() {
    let opts = Opts {
        default_route: false,
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // No route to the outside: FibPass, untranslated, no entry.
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let bytes = syn.bytes();
        assert_verdict(env.endpoint(A1, &bytes), TC_ACT_OK, &bytes);
        assert!(env.conntrack().is_empty());
        env.assert_stats(&[(StatIndex::FibPass, 1)]);

        // Say the kernel routed it out of the uplink after all: the slow
        // path translates it (MACs and TTL are the kernel's already).
        let routed = with(&syn, |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&routed.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&routed, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, SYN);
            }),
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 443, port, TCP)),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "reply entry of the slow path",
        );
        // Its next packet hits the entry: same port.
        let ack = with(&routed, |f| f.l4 = tcp(33000, 443, ACK));
        let (verdict, out) = env.uplink_out(&ack.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(
            &out,
            &with(&ack, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, ACK);
            }),
        );
        // The container's next packet hits the entry in endpoint_ingress,
        // but there is still no route: the kernel's, untranslated (for the
        // slow path to translate with the same entry).
        let again = Frame::from(A1, REMOTE, tcp(33000, 443, ACK)).bytes();
        assert_verdict(env.endpoint(A1, &again), TC_ACT_OK, &again);
        // The reply takes the fast path into the container.
        let syn_ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK));
        let (verdict, out) = env.uplink_in(&syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_eq!(view(&out).dport, 33000);
        assert_checksums(&out);
        env.assert_stats(&[
            (StatIndex::FibPass, 2),
            (StatIndex::Snat, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn uplink_egress_leaves_host_traffic_alone_and_checks_container_traffic() {
    in_netns(Opts::default(), |env| {
        let routed = |ctr: Ctr, l4| {
            with(&Frame::from(ctr, REMOTE, l4), |f| {
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            })
        };
        // The host's own traffic.
        let host = Frame::new(
            UPLINK_MAC,
            WAN_GW_MAC,
            UPLINK_IP,
            REMOTE,
            tcp(22, 50000, ACK),
        )
        .bytes();
        assert_verdict(env.uplink_out(&host), TC_ACT_OK, &host);
        // Unsupported protocols leave as they are; fragments are refused.
        let gre = routed(A1, L4::Raw { proto: 47 }).bytes();
        assert_verdict(env.uplink_out(&gre), TC_ACT_OK, &gre);
        let fragment = with(&routed(A1, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.uplink_out(&fragment), TC_ACT_SHOT, &fragment);
        // ICMP echo through the slow path.
        let ping = routed(A1, echo(8, 0x5151));
        let (verdict, out) = env.uplink_out(&ping.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let id = view(&out).sport;
        assert_frame(
            &out,
            &with(&ping, |f| {
                f.src = UPLINK_IP;
                f.l4 = echo(8, id);
            }),
        );
        env.assert_stats(&[
            (StatIndex::Pass, 1),
            (StatIndex::UnsupportedProto, 1),
            (StatIndex::DropFragment, 1),
            (StatIndex::Snat, 1),
        ]);
    });
}

#[test]
fn a_route_through_another_interface_is_the_kernels() {
    in_netns(Opts::default(), |env| {
        // 192.0.2.0/24 is routed through wan0, not the uplink: netctl does
        // not translate there (replies would not come back through
        // uplink_ingress), the kernel decides.
        ip_cmd(&["route", "add", "192.0.2.0/24", "dev", "wan0"]);
        let syn = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 5), tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_OK, &syn);
        // A host address that is neither the uplink's nor a gateway: the
        // host's (no hairpin there, although 8080 is published on 0.0.0.0).
        ip_cmd(&["address", "add", "192.0.2.1/24", "dev", "wan0"]);
        let host = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 1), tcp(33000, 8080, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &host), TC_ACT_OK, &host);
        env.assert_stats(&[(StatIndex::FibPass, 2)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn rst_closes_both_directions_and_ttl_one_from_outside_is_the_kernels() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        // TTL 1 on the way in: not forwarded, not translated.
        let expiring = with(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK)),
            |f| f.ttl = 1,
        )
        .bytes();
        assert_verdict(env.uplink_in(&expiring), TC_ACT_OK, &expiring);
        let original_key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_NEW);
        // The remote resets: both entries close.
        let rst = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, 0x04));
        let (verdict, out) = env.uplink_in(&rst.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_checksums(&out);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_CLOSING);
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_CLOSING);
        // A new SYN on the same tuple reopens the flow, same port.
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, port);
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_NEW);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_NEW);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::Pass, 1),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

// ---------------------------------------------------------------------------
// DNAT.

#[test]
fn dnat_from_outside_keeps_the_client_address_and_replies_go_back() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
        let (verdict, out) = env.uplink_in(&syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A2");
        assert_frame(
            &out,
            &with(&syn, |f| {
                f.dst = A2.ip;
                f.l4 = tcp(50000, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let a2_veth = env.veth(A2);
        let original_key = ct_key(REMOTE, UPLINK_IP, 50000, 8080, TCP);
        let reply_key = ct_key(A2.ip, REMOTE, 80, 50000, TCP);
        let original = |state| {
            entry(
                REMOTE,
                A2.ip,
                50000,
                80,
                CT_KIND_DNAT,
                state,
                CT_DIR_ORIGINAL,
                a2_veth,
            )
        };
        let reply = |state| {
            entry(
                UPLINK_IP,
                REMOTE,
                8080,
                50000,
                CT_KIND_DNAT,
                state,
                CT_DIR_REPLY,
                0,
            )
        };
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_NEW),
            "original",
        );
        assert_entry(env.ct_get(&reply_key), reply(CT_STATE_NEW), "reply");

        // A2 answers through its veth: reverse DNAT, straight out.
        let syn_ack = Frame::from(A2, REMOTE, tcp(80, 50000, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect to the uplink");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(8080, 50000, SYN | ACK);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_ESTABLISHED),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_ESTABLISHED),
            "reply after the reply",
        );

        // The client's next packet: conntrack hit.
        let ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, ACK));
        let (verdict, out) = env.uplink_in(&ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&ack, |f| {
                f.dst = A2.ip;
                f.l4 = tcp(50000, 80, ACK);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);

        // A reply the kernel routed (slow path) is translated on egress.
        let routed = with(&Frame::from(A2, REMOTE, tcp(80, 50000, ACK)), |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&routed.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(
            &out,
            &with(&routed, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(8080, 50000, ACK);
            }),
        );

        // The exact host address wins over 0.0.0.0; UDP works alike.
        let exact = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50001, 8443, SYN));
        let (verdict, out) = env.uplink_in(&exact.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&exact, |f| {
                f.dst = B1.ip;
                f.l4 = tcp(50001, 443, SYN);
                f.dst_mac = B1.mac;
                f.src_mac = NET_B.mac;
                f.ttl = 63;
            }),
        );
        let query = Frame::from_outside(REMOTE, UPLINK_IP, udp(50002, 5353));
        let (verdict, out) = env.uplink_in(&query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&query, |f| {
                f.dst = A2.ip;
                f.l4 = udp(50002, 53);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.conntrack().len(), 6);
        env.assert_stats(&[
            (StatIndex::Dnat, 4),
            (StatIndex::RedirectPeer, 4),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

#[test]
fn uplink_ingress_refuses_unsolicited_and_passes_host_traffic() {
    in_netns(Opts::default(), |env| {
        let direct = Frame::from_outside(REMOTE, A1.ip, tcp(50000, 80, SYN)).bytes();
        assert_verdict(env.uplink_in(&direct), TC_ACT_SHOT, &direct);
        let ping = Frame::from_outside(REMOTE, A2.ip, echo(8, 1)).bytes();
        assert_verdict(env.uplink_in(&ping), TC_ACT_SHOT, &ping);
        // Cut short, to a container: refused all the same.
        let short = cut_l4(&direct);
        assert_verdict(env.uplink_in(&short), TC_ACT_SHOT, &short);
        let passes = [
            Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 22, SYN)),
            Frame::from_outside(REMOTE, UPLINK_IP, echo(8, 0x1111)),
            Frame::from_outside(REMOTE, UPLINK_IP, udp(50000, 5354)),
            Frame::from_outside(REMOTE, Ipv4Addr::new(198, 51, 100, 77), tcp(1, 2, SYN)),
        ];
        for frame in &passes {
            let bytes = frame.bytes();
            assert_verdict(env.uplink_in(&bytes), TC_ACT_OK, &bytes);
        }
        env.assert_stats(&[(StatIndex::DropUnsolicited, 3), (StatIndex::Pass, 4)]);
        assert!(env.conntrack().is_empty());
    });
}

// ---------------------------------------------------------------------------
// Hairpin.

#[test]
fn hairpin_to_a_published_port_both_directions() {
    in_netns(Opts::default(), |env| {
        // A1 → uplink address:8080 → A2:80, the source becoming A2's gateway.
        let syn = Frame::from(A1, UPLINK_IP, tcp(33000, 8080, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A2");
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&syn, |f| {
                f.src = NET_A.gateway;
                f.dst = A2.ip;
                f.l4 = tcp(port, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let (a1_veth, a2_veth) = (env.veth(A1), env.veth(A2));
        let original_key = ct_key(A1.ip, UPLINK_IP, 33000, 8080, TCP);
        let reply_key = ct_key(A2.ip, NET_A.gateway, 80, port, TCP);
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            entry(
                NET_A.gateway,
                A2.ip,
                port,
                80,
                CT_KIND_HAIRPIN,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                a2_veth,
            ),
            "original",
        );
        assert_entry(
            env.ct_get(&reply_key),
            entry(
                UPLINK_IP,
                A1.ip,
                8080,
                33000,
                CT_KIND_HAIRPIN,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1_veth,
            ),
            "reply",
        );

        // A2 answers its gateway: back to A1, from the published address.
        let syn_ack = Frame::from(A2, NET_A.gateway, tcp(80, port, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A1");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.src = UPLINK_IP;
                f.dst = A1.ip;
                f.l4 = tcp(8080, 33000, SYN | ACK);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(
            env.ct_get(&original_key).unwrap().state,
            CT_STATE_ESTABLISHED
        );
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_ESTABLISHED);

        // From another network, through its own gateway address and through
        // A's: the target's gateway is the source either way.
        for dst in [NET_B.gateway, NET_A.gateway] {
            let syn = Frame::from(B1, dst, udp(34000, 5353));
            let (verdict, out) = env.endpoint(B1, &syn.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "hairpin via {dst}");
            let port = view(&out).sport;
            assert_frame(
                &out,
                &with(&syn, |f| {
                    f.src = NET_A.gateway;
                    f.dst = A2.ip;
                    f.l4 = udp(port, 53);
                    f.dst_mac = A2.mac;
                    f.src_mac = NET_A.mac;
                    f.ttl = 63;
                }),
            );
            assert_eq!(
                env.ct_get(&ct_key(A2.ip, NET_A.gateway, 53, port, UDP))
                    .map(|e| (e.saddr, e.daddr, e.ifindex)),
                Some((be_ip(dst), be_ip(B1.ip), env.veth(B1))),
                "reply entry of the hairpin via {dst}"
            );
        }
        // A2 to its own published port: into itself, from its gateway.
        let own = Frame::from(A2, UPLINK_IP, tcp(36000, 8080, SYN));
        let (verdict, out) = env.endpoint(A2, &own.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert_frame(
            &out,
            &with(&own, |f| {
                f.src = NET_A.gateway;
                f.dst = A2.ip;
                f.l4 = tcp(port, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let back = Frame::from(A2, NET_A.gateway, tcp(80, port, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &back.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&back, |f| {
                f.src = UPLINK_IP;
                f.dst = A2.ip;
                f.l4 = tcp(8080, 36000, SYN | ACK);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.conntrack().len(), 8);
        env.assert_stats(&[
            (StatIndex::Hairpin, 4),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectPeer, 6),
        ]);
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
/// A full table refuses new flows of every kind (SNAT, DNAT, hairpin),
/// counted and untouched, and evicts nothing: the flows it holds keep
/// being translated both ways. The sweep that a full table starts finds
/// nothing dead and deletes nothing.
#[test]
fn a_full_conntrack_table_refuses_new_flows_only() {
    let opts = Opts {
        conntrack_max: Some(4),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // Two flows fill the table: SNAT A1 → REMOTE, DNAT REMOTE → A2.
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let nat_port = view(&out).sport;
        let dnat_syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
        let (verdict, _) = env.uplink_in(&dnat_syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let table = env.conntrack();
        assert_eq!(table.len(), 4);

        // New flows: refused, frames untouched, nothing added or evicted.
        let snat = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A2, &snat), TC_ACT_SHOT, &snat);
        let dnat = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50001, 8080, SYN)).bytes();
        assert_verdict(env.uplink_in(&dnat), TC_ACT_SHOT, &dnat);
        let hairpin = Frame::from(A1, UPLINK_IP, tcp(33001, 8080, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &hairpin), TC_ACT_SHOT, &hairpin);
        let udp_flow = Frame::from(A1, REMOTE, udp(33002, 53)).bytes();
        assert_verdict(env.endpoint(A1, &udp_flow), TC_ACT_SHOT, &udp_flow);
        let keys = |t: &[(CtKey, CtEntry)]| t.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(
            keys(&env.conntrack()),
            keys(&table),
            "no entry added or evicted"
        );

        // The flows in the table go on, both ways.
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK | PSH));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, nat_port);
        assert_checksums(&out);
        let back = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, nat_port, ACK));
        let (verdict, out) = env.uplink_in(&back.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_checksums(&out);
        let more = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, ACK));
        let (verdict, out) = env.uplink_in(&more.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A2.ip);
        let answer = Frame::from(A2, REMOTE, tcp(80, 50000, ACK));
        let (verdict, out) = env.endpoint(A2, &answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).src, UPLINK_IP);
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::Dnat, 2),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::RedirectPeer, 3),
            (StatIndex::DropConntrackFull, 4),
        ]);
    });
}

/// `now - seconds` on the bpf_ktime_get_ns() clock.
fn ago(seconds: u64) -> u64 {
    let now = monotonic_ns();
    assert!(
        now > (seconds + 10) * 1_000_000_000,
        "the machine is up long enough"
    );
    now - seconds * 1_000_000_000
}

/// A full table sweeps itself when a new flow finds no room: that packet
/// is dropped, dead entries go (a closed pair, lone expired entries), an
/// expired entry whose pair is alive stays (a one-way stream), and the
/// flow's next packet gets in. One sweep a second at most: before that,
/// new flows are refused even though dead entries are there.
#[test]
fn a_full_conntrack_table_reclaims_dead_entries_once_a_second() {
    let opts = Opts {
        conntrack_max: Some(6),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let a1 = env.veth(A1);
        let a2 = env.veth(A2);
        let dead = long_ago();
        let fill = |env: &mut Env, key: CtKey, mut e: CtEntry, seen: u64| {
            e.last_seen_ns = seen;
            env.ct_insert(key, e);
            key
        };
        // A closed SNAT flow, both entries dead.
        let closed_out = fill(
            env,
            ct_key(A2.ip, REMOTE, 35000, 443, TCP),
            entry(
                UPLINK_IP,
                REMOTE,
                41_001,
                443,
                CT_KIND_SNAT,
                CT_STATE_CLOSING,
                CT_DIR_ORIGINAL,
                0,
            ),
            dead,
        );
        let closed_back = fill(
            env,
            ct_key(REMOTE, UPLINK_IP, 443, 41_001, TCP),
            entry(
                REMOTE,
                A2.ip,
                443,
                35000,
                CT_KIND_SNAT,
                CT_STATE_CLOSING,
                CT_DIR_REPLY,
                a2,
            ),
            dead,
        );
        // A one-way UDP stream: its reply entry expired long ago, the
        // original one is alive.
        let stream_out = fill(
            env,
            ct_key(A1.ip, REMOTE, 36000, 53, UDP),
            entry(
                UPLINK_IP,
                REMOTE,
                41_000,
                53,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                0,
            ),
            monotonic_ns(),
        );
        let stream_back = fill(
            env,
            ct_key(REMOTE, UPLINK_IP, 53, 41_000, UDP),
            entry(
                REMOTE,
                A1.ip,
                53,
                36000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1,
            ),
            ago(120),
        );
        // Two lone dead entries (their pairs long gone).
        let lone = [
            fill(
                env,
                ct_key(A2.ip, REMOTE, 37000, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_002,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
            fill(
                env,
                ct_key(A2.ip, REMOTE, 7, 7, ICMP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_003,
                    41_003,
                    CT_KIND_SNAT,
                    CT_STATE_ESTABLISHED,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                ago(60),
            ),
        ];
        assert_eq!(env.conntrack().len(), 6, "full");

        // A new flow: dropped, and the sweep makes room...
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        assert_verdict(env.endpoint(A1, &syn.bytes()), TC_ACT_SHOT, &syn.bytes());
        let mut left: Vec<CtKey> = env.conntrack().into_iter().map(|(k, _)| k).collect();
        let mut want = vec![stream_out, stream_back];
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        assert_eq!(left, want, "dead entries reclaimed, live ones kept");
        // ...for its retransmission.
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        let nat_port = view(&out).sport;
        left = env.conntrack().into_iter().map(|(k, _)| k).collect();
        left.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        want = vec![
            stream_out,
            stream_back,
            ct_key(A1.ip, REMOTE, 33000, 443, TCP),
            ct_key(REMOTE, UPLINK_IP, 443, nat_port, TCP),
        ];
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        assert_eq!(left, want, "the new flow and the live ones");
        for gone in [closed_out, closed_back, lone[0], lone[1]] {
            assert!(env.ct_get(&gone).is_none());
        }

        // Full again with dead entries, but the last sweep was just now: a
        // new flow is refused.
        let dead_again = [
            fill(
                env,
                ct_key(A2.ip, REMOTE, 38000, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_004,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
            fill(
                env,
                ct_key(A2.ip, REMOTE, 38001, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_005,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
        ];
        let next = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A2, &next), TC_ACT_SHOT, &next);
        assert_eq!(env.conntrack().len(), 6);
        for kept in dead_again {
            assert!(env.ct_get(&kept).is_some(), "no sweep within the second");
        }

        // A second later, the next refusal sweeps again.
        env.set_last_reclaim(ago(2));
        assert_verdict(env.endpoint(A2, &next), TC_ACT_SHOT, &next);
        assert_eq!(env.conntrack().len(), 4);
        let (verdict, out) = env.endpoint(A2, &next);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        for gone in dead_again {
            assert!(env.ct_get(&gone).is_none());
        }
        assert_eq!(env.conntrack().len(), 6);
        assert!(
            env.ct_get(&stream_back).is_some(),
            "the one-way stream kept"
        );
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::DropConntrackFull, 3),
        ]);
    });
}
