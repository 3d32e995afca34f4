//! Hairpin: containers reaching a published port through a host address,
//! frame by frame through BPF_PROG_TEST_RUN (the harness:
//! `netctl_tests::tc`). DNAT plus SNAT to the target's gateway, both
//! directions, from the target's network, from another one, and from the
//! target itself.

use netctl_common::{conntrack::CT_STATE_SYN_RECV, stats::StatIndex};
use netctl_tests::{frames::*, tc::*};

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
            CtEntryBuilder::hairpin((NET_A.gateway, port), (A2.ip, 80))
                .deliver_to(a2_veth)
                .build(),
            "original",
        );
        assert_entry(
            env.ct_get(&reply_key),
            CtEntryBuilder::hairpin((UPLINK_IP, 8080), (A1.ip, 33000))
                .reply()
                .deliver_to(a1_veth)
                .build(),
            "reply",
        );

        // A2 answers its gateway: back to A1, from the published address.
        let syn_ack = numbered(
            &Frame::from(A2, NET_A.gateway, tcp(80, port, SYN | ACK)),
            0x3000_0001,
            syn.seq + seq_len(&syn),
        );
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
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_SYN_RECV);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_SYN_RECV);

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
