//! ICMP errors of translated flows, protocols without ports, and the egress
//! MTU, frame by frame through BPF_PROG_TEST_RUN (the harness:
//! `netctl_tests::tc`). An ICMP error quoting a flow is translated like the
//! flow's own packets would be in its direction: the outer addresses, the
//! quoted header (addresses and ports) and every checksum (outer IPv4,
//! ICMP, quoted IPv4, quoted TCP/UDP/ICMP). The expected frames are built
//! from scratch with the translated quote, so a byte-for-byte comparison
//! checks each checksum.

use std::net::Ipv4Addr;

use netctl_common::stats::StatIndex;
use netctl_tests::{frames::*, tc::*};

/// A router on the way to REMOTE, which reports errors about our packets.
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Another server on the internet.
const REMOTE2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const GRE: u8 = 47;

const FRAG_NEEDED: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
const PORT_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
const TTL_EXCEEDED: (u8, u8) = (ICMP_TIME_EXCEEDED, 0);
const PARAM_PROBLEM: (u8, u8) = (ICMP_PARAM_PROBLEM, 0);

/// An error from the outside (through the uplink's gateway) to `dst`.
fn error_from_outside(src: Ipv4Addr, dst: Ipv4Addr, kind: (u8, u8), quoted: &Frame) -> Frame {
    icmp_error(REMOTE_MAC, UPLINK_MAC, src, dst, kind, quoted)
}

/// An error from a container to `dst` through its gateway.
fn error_from(ctr: Ctr, dst: Ipv4Addr, kind: (u8, u8), quoted: &Frame) -> Frame {
    icmp_error(ctr.mac, net_of(ctr.net).mac, ctr.ip, dst, kind, quoted)
}

/// `error` as delivered into `ctr` by bpf_redirect_peer: to `dst`, MACs of
/// the bridge → container hop, TTL decremented, quoting `quoted`.
fn delivered(error: &Frame, ctr: Ctr, src: Ipv4Addr, quoted: &Frame) -> Frame {
    let (ty, code) = (error.payload[0], error.payload[1]);
    let mut f = icmp_error(
        net_of(ctr.net).mac,
        ctr.mac,
        src,
        ctr.ip,
        (ty, code),
        quoted,
    );
    f.ttl = error.ttl - 1;
    f
}

/// `error` as sent out of the uplink (FIB SUCCESS): from the uplink
/// address, the gateway's MAC, TTL decremented, quoting `quoted`.
fn sent_out(error: &Frame, dst: Ipv4Addr, quoted: &Frame) -> Frame {
    let (ty, code) = (error.payload[0], error.payload[1]);
    let mut f = icmp_error(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, dst, (ty, code), quoted);
    f.ttl = error.ttl - 1;
    f
}

fn assert_error(out: &[u8], expected: &Frame) {
    assert_frame(out, expected);
    assert_quoted_checksums(out);
}

#[test]
fn errors_quoting_an_snat_flow_reach_the_container() {
    in_netns(Opts::default(), |env| {
        for (i, (l4, kind)) in [
            (udp(5000, 53), FRAG_NEEDED),
            (tcp(33000, 443, ACK | PSH), FRAG_NEEDED),
            (tcp(33001, 443, SYN), TTL_EXCEEDED),
            (udp_no_checksum(5001, 53), PARAM_PROBLEM),
            (echo(8, 0x4242), TTL_EXCEEDED),
        ]
        .into_iter()
        .enumerate()
        {
            let first = Frame::from(A1, REMOTE, l4);
            let (verdict, out) = env.endpoint(A1, &first.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "case {i}: SNAT out");
            let sent = view(&out);
            // The packet as it left, reported by a router on the way.
            let left = with(&first, |f| {
                f.src = UPLINK_IP;
                f.l4 = match l4 {
                    L4::Tcp { dport, flags, .. } => tcp(sent.sport, dport, flags),
                    L4::Udp {
                        dport, checksum, ..
                    } => L4::Udp {
                        sport: sent.sport,
                        dport,
                        checksum,
                    },
                    L4::Icmp { ty, seq, .. } => L4::Icmp {
                        ty,
                        id: sent.sport,
                        seq,
                    },
                    L4::Raw { .. } => unreachable!(),
                };
                f.ttl = 1;
            });
            assert_checksums(&left.bytes());
            let error = error_from_outside(ROUTER, UPLINK_IP, kind, &left);
            let (verdict, out) = env.uplink_in(&error.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "case {i}: into A1");
            // The quote becomes the packet A1 sent, the error is for A1.
            let quoted = with(&first, |f| f.ttl = 1);
            assert_error(&out, &delivered(&error, A1, ROUTER, &quoted));
        }
        // Errors do not make flows: two entries per flow, as before.
        assert_eq!(env.conntrack().len(), 10);
        env.assert_stats(&[
            (StatIndex::Snat, 5),
            (StatIndex::RedirectUplink, 5),
            (StatIndex::IcmpError, 5),
            (StatIndex::RedirectPeer, 5),
        ]);
    });
}

#[test]
fn errors_quoting_a_published_port_flow_are_translated_both_ways() {
    in_netns(Opts::default(), |env| {
        // REMOTE:40000 → uplink:8080 → A2:80; A2's SYN-ACK leaves as
        // uplink:8080 → REMOTE:40000 and a router reports it.
        let syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(40000, 8080, SYN));
        assert_eq!(env.uplink_in(&syn.bytes()).0, TC_ACT_REDIRECT);
        let syn_ack = Frame::from(A2, REMOTE, tcp(80, 40000, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).src, UPLINK_IP);
        let left = with(&syn_ack, |f| {
            f.src = UPLINK_IP;
            f.l4 = tcp(8080, 40000, SYN | ACK);
            f.ttl = 1;
        });
        let error = error_from_outside(ROUTER, UPLINK_IP, TTL_EXCEEDED, &left);
        let (verdict, out) = env.uplink_in(&error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "into A2");
        assert_error(
            &out,
            &delivered(&error, A2, ROUTER, &with(&syn_ack, |f| f.ttl = 1)),
        );

        // REMOTE:40001 → uplink:5353/udp → A2:53, where nothing listens: A2's
        // port unreachable leaves from the host's address, quoting the
        // datagram as REMOTE sent it.
        let query = Frame::from_outside(REMOTE, UPLINK_IP, udp(40001, 5353));
        let (verdict, out) = env.uplink_in(&query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let received = with(&query, |f| {
            f.dst = A2.ip;
            f.l4 = udp(40001, 53);
            f.ttl = 63;
            f.dst_mac = A2.mac;
            f.src_mac = NET_A.mac;
        });
        assert_eq!(view(&out), view(&received.bytes()));
        let error = error_from(A2, REMOTE, PORT_UNREACH, &received);
        let (verdict, out) = env.endpoint(A2, &error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "out of the uplink");
        assert_error(
            &out,
            &sent_out(&error, REMOTE, &with(&query, |f| f.ttl = 63)),
        );
        env.assert_stats(&[
            (StatIndex::Dnat, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 3),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::IcmpError, 2),
        ]);
    });
}

#[test]
fn a_containers_error_about_an_snat_flow_leaves_from_the_host() {
    in_netns(Opts::default(), |env| {
        // A1:5000 → REMOTE:53; the answer comes back after A1 closed its
        // socket; A1's port unreachable must quote the answer as it came.
        let query = Frame::from(A1, REMOTE, udp(5000, 53));
        let (_, out) = env.endpoint(A1, &query.bytes());
        let port = view(&out).sport;
        let answer = Frame::from_outside(REMOTE, UPLINK_IP, udp(53, port));
        let (verdict, out) = env.uplink_in(&answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let received = with(&answer, |f| {
            f.dst = A1.ip;
            f.l4 = udp(53, 5000);
            f.ttl = 63;
            f.dst_mac = A1.mac;
            f.src_mac = NET_A.mac;
        });
        assert_eq!(view(&out), view(&received.bytes()));
        let error = error_from(A1, REMOTE, PORT_UNREACH, &received);
        let (verdict, out) = env.endpoint(A1, &error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_error(
            &out,
            &sent_out(&error, REMOTE, &with(&answer, |f| f.ttl = 63)),
        );
        // Slow path: the same error routed by the kernel and leaving by
        // uplink_egress (MACs and TTL already the kernel's).
        let routed = with(&error, |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&routed.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let mut want = sent_out(&error, REMOTE, &with(&answer, |f| f.ttl = 63));
        want.ttl = 63;
        assert_error(&out, &want);
        env.assert_stats(&[
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
            (StatIndex::IcmpError, 2),
        ]);
    });
}

#[test]
fn errors_of_a_hairpin_flow_are_translated_both_ways() {
    in_netns(Opts::default(), |env| {
        // A1:5000 → uplink:5353/udp → A2:53 from A2's gateway.
        let query = Frame::from(A1, UPLINK_IP, udp(5000, 5353));
        let (verdict, out) = env.endpoint(A1, &query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        let received = with(&query, |f| {
            f.src = NET_A.gateway;
            f.dst = A2.ip;
            f.l4 = udp(port, 53);
            f.ttl = 63;
            f.dst_mac = A2.mac;
            f.src_mac = NET_A.mac;
        });
        assert_eq!(view(&out), view(&received.bytes()));
        // A2 has no listener: its port unreachable to the gateway reaches
        // A1 from the published address, quoting what A1 sent.
        let error = error_from(A2, NET_A.gateway, PORT_UNREACH, &received);
        let (verdict, out) = env.endpoint(A2, &error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "into A1");
        assert_error(
            &out,
            &delivered(&error, A1, UPLINK_IP, &with(&query, |f| f.ttl = 63)),
        );
        // The other way: A2 answers (from its port 53 to the gateway), A1
        // gets it from the published address and reports it; the error
        // reaches A2 from A2's gateway, quoting the answer as A2 sent it.
        let answer = Frame::from(A2, NET_A.gateway, udp(53, port));
        let (verdict, _) = env.endpoint(A2, &answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "the answer into A1");
        let got = with(&answer, |f| {
            f.src = UPLINK_IP;
            f.dst = A1.ip;
            f.l4 = udp(5353, 5000);
            f.ttl = 63;
        });
        let error = error_from(A1, UPLINK_IP, PORT_UNREACH, &got);
        let (verdict, out) = env.endpoint(A1, &error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "into A2");
        assert_error(
            &out,
            &delivered(&error, A2, NET_A.gateway, &with(&answer, |f| f.ttl = 63)),
        );
        env.assert_stats(&[
            (StatIndex::Hairpin, 1),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 4),
            (StatIndex::IcmpError, 2),
        ]);
    });
}

#[test]
fn errors_quoting_no_flow_are_the_hosts_or_never_leave() {
    in_netns(Opts::default(), |env| {
        // From the outside, about a packet of the host's own: the host's.
        let hosts = Frame::new(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, REMOTE, udp(40000, 53));
        let error = error_from_outside(ROUTER, UPLINK_IP, PORT_UNREACH, &hosts).bytes();
        assert_verdict(env.uplink_in(&error), TC_ACT_OK, &error);
        // From a container to another on its network: the bridge's.
        let peer = Frame::from(A2, A1.ip, udp(6000, 7000));
        let error = error_from(A1, A2.ip, PORT_UNREACH, &peer).bytes();
        assert_verdict(env.endpoint(A1, &error), TC_ACT_OK, &error);
        // From a container to the outside, about nothing netctl translated:
        // it would leave with the private address (the iptables datapath
        // drops it as INVALID).
        let stray = Frame::from_outside(REMOTE, A1.ip, udp(53, 5000));
        let error = error_from(A1, REMOTE, PORT_UNREACH, &stray).bytes();
        assert_verdict(env.endpoint(A1, &error), TC_ACT_SHOT, &error);
        // Neither may an echo reply nothing asked for.
        let reply = Frame::from(A1, REMOTE, echo(0, 0x4141)).bytes();
        assert_verdict(env.endpoint(A1, &reply), TC_ACT_SHOT, &reply);
        // A quote cut short (no room for the ports): nothing to look up.
        let mut cut = error_from_outside(ROUTER, UPLINK_IP, FRAG_NEEDED, &hosts);
        cut.payload.truncate(8 + 20 + 2);
        let cut = cut.bytes();
        assert_verdict(env.uplink_in(&cut), TC_ACT_OK, &cut);
        assert!(env.conntrack().is_empty());
        env.assert_stats(&[(StatIndex::Pass, 3), (StatIndex::DropUntranslatable, 2)]);
    });
}

#[test]
fn protocols_without_ports_are_translated_by_address() {
    in_netns(Opts::default(), |env| {
        let gre = Frame::from(A1, REMOTE, L4::Raw { proto: GRE });
        let (verdict, out) = env.endpoint(A1, &gre.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "out of the uplink");
        assert_frame(
            &out,
            &with(&gre, |f| {
                f.src = UPLINK_IP;
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&ct_key(A1.ip, REMOTE, 0, 0, GRE)),
            CtEntryBuilder::snat((UPLINK_IP, 0), (REMOTE, 0)).build(),
            "original",
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 0, 0, GRE)),
            CtEntryBuilder::snat((REMOTE, 0), (A1.ip, 0))
                .reply()
                .deliver_to(env.veth(A1))
                .build(),
            "reply",
        );
        // The answer comes back to A1.
        let answer = Frame::from_outside(REMOTE, UPLINK_IP, L4::Raw { proto: GRE });
        let (verdict, out) = env.uplink_in(&answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "into A1");
        assert_frame(
            &out,
            &with(&answer, |f| {
                f.dst = A1.ip;
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        // A fragment of the flow: the same addresses (nothing else to
        // translate), whatever its offset.
        let fragment = with(&gre, |f| f.frag = 0x0010);
        let (verdict, out) = env.endpoint(A1, &fragment.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).src, UPLINK_IP);
        assert_checksums(&out);
        // A router's error about it reaches A1 too.
        let left = with(&gre, |f| {
            f.src = UPLINK_IP;
            f.ttl = 1;
        });
        let error = error_from_outside(ROUTER, UPLINK_IP, TTL_EXCEEDED, &left);
        let (verdict, out) = env.uplink_in(&error.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_error(
            &out,
            &delivered(&error, A1, ROUTER, &with(&gre, |f| f.ttl = 1)),
        );
        // A2 talking GRE to the same server: the uplink address has one GRE
        // flow per server, A1's: refused and counted. To another server: fine.
        let taken = Frame::from(A2, REMOTE, L4::Raw { proto: GRE }).bytes();
        assert_verdict(env.endpoint(A2, &taken), TC_ACT_SHOT, &taken);
        let other = Frame::from(A2, REMOTE2, L4::Raw { proto: GRE });
        let (verdict, out) = env.endpoint(A2, &other.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).src, UPLINK_IP);
        // ICMP that is neither echo nor an error (a timestamp request):
        // the same address-only translation.
        let timestamp = Frame::from(A1, REMOTE, echo(13, 0x4343));
        let (verdict, out) = env.endpoint(A1, &timestamp.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&timestamp, |f| {
                f.src = UPLINK_IP;
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        // SCTP through the slow path.
        let sctp = with(&Frame::from(B1, REMOTE, L4::Raw { proto: 132 }), |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&sctp.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(&out, &with(&sctp, |f| f.src = UPLINK_IP));
        // UDP-Lite: its checksum covers the addresses, untranslatable.
        let lite = Frame::from(A1, REMOTE, L4::Raw { proto: 136 }).bytes();
        assert_verdict(env.endpoint(A1, &lite), TC_ACT_SHOT, &lite);
        assert_eq!(env.conntrack().len(), 8);
        env.assert_stats(&[
            (StatIndex::Snat, 5),
            (StatIndex::RedirectUplink, 4),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 2),
            (StatIndex::IcmpError, 1),
            (StatIndex::DropGenericTaken, 1),
            (StatIndex::DropUntranslatable, 1),
        ]);
    });
}

#[test]
fn a_packet_over_the_egress_mtu_is_the_kernels() {
    let opts = Opts {
        neighbour: false,
        ..Opts::default()
    };
    in_netns(opts, |env| {
        ip_cmd(&["link", "set", "up0", "mtu", "1280"]);
        // 1,400 bytes with DF, to a gateway whose MAC is not known yet
        // (FIB NO_NEIGH, where bpf_fib_lookup checks no MTU): handed to the
        // kernel untranslated, which answers frag-needed to the container.
        let mut big = Frame::from(A1, REMOTE, udp(5000, 53));
        big.payload = vec![0x5a; 1400 - 28];
        let big = big.bytes();
        assert_verdict(env.endpoint(A1, &big), TC_ACT_OK, &big);
        // One that fits goes the fast way.
        let small = Frame::from(A1, REMOTE, udp(5000, 53));
        assert_eq!(env.endpoint(A1, &small.bytes()).0, TC_ACT_REDIRECT);
        env.assert_stats(&[
            (StatIndex::MtuPass, 1),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}
