//! SNAT of containers' flows to the outside, frame by frame through
//! BPF_PROG_TEST_RUN (the harness: `netctl_tests::tc`): TCP, UDP (with and
//! without a checksum) and ICMP echo out and back, the port search, its
//! exhaustion and the ports of expired or closing flows, TTL, fragments and
//! IP options, the fast path against the FIB (no neighbour, no route,
//! another interface) and the slow path of `uplink_egress`.

use std::net::Ipv4Addr;

use netctl_common::{
    conntrack::{
        CT_STATE_CLOSE, CT_STATE_ESTABLISHED, CT_STATE_FIN_WAIT, CT_STATE_NEW, CT_STATE_SYN_RECV,
    },
    stats::StatIndex,
};
use netctl_tests::{frames::*, tc::*};

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
            CtEntryBuilder::snat((UPLINK_IP, port), (REMOTE, 443))
                .state(state)
                .build()
        };
        let reply = |state| {
            CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33000))
                .reply()
                .deliver_to(a1_veth)
                .state(state)
                .build()
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

        // The SYN-ACK comes back to the uplink address and port,
        // acknowledging the SYN: the handshake is half done.
        let client_next = syn.seq + seq_len(&syn);
        let server_isn = 0x3000_0001;
        let syn_ack = numbered(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK)),
            server_isn,
            client_next,
        );
        let server_next = server_isn + seq_len(&syn_ack);
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
            original(CT_STATE_SYN_RECV),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_SYN_RECV),
            "reply after the reply",
        );
        assert_eq!(env.ct_get(&reply_key).unwrap().packets, 1);

        // The next packet of the flow keeps its port (conntrack hit), and
        // acknowledges the SYN-ACK: established.
        let ack = numbered(
            &Frame::from(A1, REMOTE, tcp(33000, 443, ACK | PSH)),
            client_next,
            server_next,
        );
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&ack, ACK | PSH));
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_ESTABLISHED);

        // FIN: half-closed, both entries.
        let fin = numbered(
            &Frame::from(A1, REMOTE, tcp(33000, 443, FIN | ACK)),
            client_next + seq_len(&ack),
            server_next,
        );
        let (verdict, out) = env.endpoint(A1, &fin.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&fin, FIN | ACK));
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_FIN_WAIT),
            "original after FIN",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_FIN_WAIT),
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
        let bare = Frame::from(A1, REMOTE, udp_no_checksum(5001, 53));
        let (verdict, out) = env.endpoint(A1, &bare.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port2 = view(&out).sport;
        assert_eq!(&out[40..42], &[0, 0], "no UDP checksum stays none");
        assert_frame(
            &out,
            &with(&bare, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp_no_checksum(port2, 53);
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 53, port2, UDP)),
            CtEntryBuilder::snat((REMOTE, 53), (A1.ip, 5001))
                .reply()
                .deliver_to(env.veth(A1))
                .build(),
            "reply entry",
        );

        // Its answer, also without a checksum, comes back to A1.
        let answer = Frame::from_outside(REMOTE, UPLINK_IP, udp_no_checksum(53, port2));
        let (verdict, out) = env.uplink_in(&answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[40..42], &[0, 0], "still no checksum");
        assert_frame(
            &out,
            &with(&answer, |f| {
                f.dst = A1.ip;
                f.l4 = udp_no_checksum(53, 5001);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
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
fn snat_icmp_echo_by_identifier_and_other_protocols_by_address() {
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
            CtEntryBuilder::snat((UPLINK_IP, id), (REMOTE, id)).build(),
            "original",
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, id, id, ICMP)),
            CtEntryBuilder::snat((REMOTE, 0x4242), (A1.ip, 0x4242))
                .reply()
                .deliver_to(a1_veth)
                .build(),
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

        // Without identifier or ports, translated by address only (a flow
        // per server and protocol, ebpf_icmp.rs): an ICMP timestamp
        // request, GRE.
        for l4 in [echo(13, 0x4343), L4::Raw { proto: 47 }] {
            let other = Frame::from(A1, REMOTE, l4);
            let (verdict, out) = env.endpoint(A1, &other.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_frame(
                &out,
                &with(&other, |f| {
                    f.src = UPLINK_IP;
                    f.src_mac = UPLINK_MAC;
                    f.dst_mac = WAN_GW_MAC;
                    f.ttl = 63;
                }),
            );
        }
        assert_eq!(env.conntrack().len(), 6);
        env.assert_stats(&[
            (StatIndex::Snat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
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
        let a2_flow = CtEntryBuilder::snat((REMOTE, 443), (A2.ip, 35000))
            .reply()
            .deliver_to(env.veth(A2));
        let live = a2_flow
            .state(CT_STATE_ESTABLISHED)
            .last_seen(monotonic_ns());
        env.ct_insert(taken, live.build());
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_SHOT, &syn);
        assert_eq!(env.conntrack().len(), 1, "nothing inserted");
        env.assert_stats(&[(StatIndex::DropSnatExhausted, 1)]);

        // Once that flow expired, its port is free again.
        let expired = a2_flow.state(CT_STATE_CLOSE).last_seen(long_ago());
        env.ct_insert(taken, expired.build());
        let (verdict, out) = env.endpoint(A1, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_000);
        assert_entry(
            env.ct_get(&taken),
            CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33000))
                .reply()
                .deliver_to(env.veth(A1))
                .build(),
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
        let other = CtEntryBuilder::snat((REMOTE, 443), (A2.ip, 35000))
            .reply()
            .deliver_to(env.veth(A2))
            .state(CT_STATE_CLOSE)
            .last_seen(monotonic_ns())
            .build();
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
            CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33000))
                .reply()
                .deliver_to(env.veth(A1))
                .build(),
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

#[test]
fn ttl_fragments_and_ip_options() {
    in_netns(Opts::default(), |env| {
        // TTL 1: the kernel answers "time exceeded" (untranslated).
        let last_hop = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.ttl = 1
        })
        .bytes();
        assert_verdict(env.endpoint(A1, &last_hop), TC_ACT_OK, &last_hop);
        // A later fragment of a datagram needing SNAT whose first fragment
        // was not seen (translated fragments: ebpf_fragments.rs).
        let later = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.frag = 0x00b9).bytes();
        assert_verdict(env.endpoint(A1, &later), TC_ACT_SHOT, &later);
        // A fragment on the own bridge is none of our business.
        let local = with(&Frame::from(A1, A2.ip, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.endpoint(A1, &local), TC_ACT_OK, &local);
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
            (StatIndex::DropFragmentOutOfOrder, 1),
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
            CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33000))
                .reply()
                .deliver_to(env.veth(A1))
                .build(),
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
        // Protocols without ports leave translated by address; a later
        // fragment whose first was not translated is refused.
        let gre = routed(A1, L4::Raw { proto: 47 });
        let (verdict, out) = env.uplink_out(&gre.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(&out, &with(&gre, |f| f.src = UPLINK_IP));
        let fragment = with(&routed(A1, udp(5000, 53)), |f| f.frag = 0x00b9).bytes();
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
            (StatIndex::DropFragmentOutOfOrder, 1),
            (StatIndex::Snat, 2),
        ]);
    });
}

#[test]
fn a_route_through_another_interface_is_the_kernels() {
    in_netns(Opts::default(), |env| {
        // 192.0.2.0/24 is routed through wan0, which the datapath does not
        // know as a host interface (no HOST_IFACES entry: no address to
        // translate to): the kernel decides.
        ip_cmd(&["route", "add", "192.0.2.0/24", "dev", "wan0"]);
        let syn = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 5), tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_OK, &syn);
        // An address the datapath does not know as the host's: the host's
        // (no hairpin there, although 8080 is published on 0.0.0.0).
        ip_cmd(&["address", "add", "192.0.2.1/24", "dev", "wan0"]);
        let host = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 1), tcp(33000, 8080, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &host), TC_ACT_OK, &host);
        env.assert_stats(&[(StatIndex::FibPass, 2)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn a_route_through_another_host_interface_leaves_with_its_address() {
    in_netns(Opts::default(), |env| {
        // wan0 as a second host interface (a LAN), 192.0.2.1/24, known to
        // the datapath as the controller's host sync writes it.
        let lan_host = Ipv4Addr::new(192, 0, 2, 1);
        ip_cmd(&["address", "add", "192.0.2.1/24", "dev", "wan0"]);
        let wan0 = nix::net::if_::if_nametoindex("wan0").expect("wan0");
        env.host_iface(wan0, lan_host);
        // A new flow routed out of wan0 leaves with wan0's address.
        let syn = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 5), tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "out of wan0");
        let port = view(&out).sport;
        assert_frame(
            &out,
            &with(&syn, |f| {
                f.src = lan_host;
                f.l4 = tcp(port, 443, SYN);
                f.ttl = 63;
            }),
        );
        // wan0's address is a host address: a port published on 0.0.0.0
        // answers there (hairpin from a container).
        let published = Frame::from(A1, lan_host, tcp(33001, 8080, SYN)).bytes();
        let (verdict, _) = env.endpoint(A1, &published);
        assert_eq!(verdict, TC_ACT_REDIRECT, "hairpin to the published port");
        // An interface without an address (its HOST_IFACES entry gone): a
        // container's new flow the kernel routed out of it is dropped,
        // never sent with the container's address.
        env.forget_host_iface(env.uplink);
        let routed = with(&Frame::from(A1, REMOTE, tcp(33002, 443, SYN)), |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        })
        .bytes();
        assert_verdict(env.uplink_out(&routed), TC_ACT_SHOT, &routed);
        env.assert_stats(&[
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
            (StatIndex::Hairpin, 1),
            (StatIndex::RedirectPeer, 1),
            (StatIndex::DropNoHostAddress, 1),
        ]);
    });
}
