//! DNAT of published ports from the outside, frame by frame through
//! BPF_PROG_TEST_RUN (the harness: `netctl_tests::tc`): the client address
//! kept, replies by the fast and the slow path, the exact host address over
//! 0.0.0.0, UDP; what `uplink_ingress` refuses (unsolicited traffic to
//! containers) or leaves to the host; and the host's own flows from a
//! published port (a SYN-ACK, a UDP reply), never DNATed.

use std::net::Ipv4Addr;

use netctl_common::{
    conntrack::{CT_STATE_NEW, CT_STATE_SYN_RECV},
    stats::StatIndex,
};
use netctl_tests::{frames::*, tc::*};

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
            CtEntryBuilder::dnat((REMOTE, 50000), (A2.ip, 80))
                .deliver_to(a2_veth)
                .state(state)
                .build()
        };
        let reply = |state| {
            CtEntryBuilder::dnat((UPLINK_IP, 8080), (REMOTE, 50000))
                .reply()
                .state(state)
                .build()
        };
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_NEW),
            "original",
        );
        assert_entry(env.ct_get(&reply_key), reply(CT_STATE_NEW), "reply");

        // A2 answers through its veth: reverse DNAT, straight out.
        let syn_ack = numbered(
            &Frame::from(A2, REMOTE, tcp(80, 50000, SYN | ACK)),
            0x3000_0001,
            syn.seq + seq_len(&syn),
        );
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
            original(CT_STATE_SYN_RECV),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_SYN_RECV),
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

#[test]
fn a_tcp_packet_that_opens_no_flow_is_never_dnated() {
    in_netns(Opts::default(), |env| {
        // The answers of the host's own connection from 8080 (published
        // tcp on every address): SYN-ACK, data, FIN, RST. Untouched.
        let answers = [SYN | ACK, ACK, FIN | ACK, RST];
        for flags in answers {
            let frame = Frame::from_outside(REMOTE, UPLINK_IP, tcp(9000, 8080, flags)).bytes();
            assert_verdict(env.uplink_in(&frame), TC_ACT_OK, &frame);
        }
        // A container answering the host's connection from the gateway's
        // 8080: the host's too, no hairpin.
        let syn_ack = Frame::from(A1, NET_A.gateway, tcp(80, 8080, SYN | ACK)).bytes();
        assert_verdict(env.endpoint(A1, &syn_ack), TC_ACT_OK, &syn_ack);
        assert!(env.conntrack().is_empty(), "no flow was created");
        env.assert_stats(&[(StatIndex::PublishedNotSyn, 5)]);

        // A bare SYN still opens a DNAT flow.
        let syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(9000, 8080, SYN)).bytes();
        assert_eq!(env.uplink_in(&syn).0, TC_ACT_REDIRECT);
        assert_eq!(env.conntrack().len(), 2);
    });
}

#[test]
fn the_hosts_udp_flow_from_a_published_port_is_never_dnated() {
    in_netns(Opts::default(), |env| {
        // The host asks REMOTE:53 from 5353 (published udp → A2:53).
        let query = Frame::new(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, REMOTE, udp(5353, 53)).bytes();
        assert_verdict(env.uplink_out(&query), TC_ACT_OK, &query);
        let original_key = ct_key(UPLINK_IP, REMOTE, 5353, 53, UDP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 53, 5353, UDP);
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            CtEntryBuilder::host((UPLINK_IP, 5353), (REMOTE, 53)).build(),
            "original",
        );
        assert_entry(
            env.ct_get(&reply_key),
            CtEntryBuilder::host((REMOTE, 53), (UPLINK_IP, 5353))
                .reply()
                .build(),
            "reply",
        );
        // The answer is the host's, untouched; the next query refreshes.
        let answer = Frame::from_outside(REMOTE, UPLINK_IP, udp(53, 5353)).bytes();
        assert_verdict(env.uplink_in(&answer), TC_ACT_OK, &answer);
        assert_verdict(env.uplink_out(&query), TC_ACT_OK, &query);
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);
        assert_eq!(env.ct_get(&reply_key).unwrap().packets, 1);
        env.assert_stats(&[(StatIndex::HostFlow, 3)]);

        // Another peer's datagram to 5353 is a new flow to the published port.
        let other = Frame::from_outside(REMOTE, UPLINK_IP, udp(54, 5353)).bytes();
        assert_eq!(env.uplink_in(&other).0, TC_ACT_REDIRECT);
        // That flow's reply, translated by the fast path, leaves by the
        // uplink from 5353 too: it is the DNAT flow's, no host flow.
        let translated = Frame::new(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, REMOTE, udp(5353, 54));
        let translated = translated.bytes();
        assert_verdict(env.uplink_out(&translated), TC_ACT_OK, &translated);
        // A host datagram from an unpublished port records nothing.
        let plain = Frame::new(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, REMOTE, udp(5354, 53)).bytes();
        assert_verdict(env.uplink_out(&plain), TC_ACT_OK, &plain);
        assert_eq!(env.conntrack().len(), 4);
    });
}
