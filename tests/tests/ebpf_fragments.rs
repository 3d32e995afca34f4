//! Fragmented datagrams, frame by frame through BPF_PROG_TEST_RUN (the
//! harness: `netctl_tests::tc`): the first fragment is translated as a
//! whole packet and its translation recorded in `FRAGMENTS`, the later ones
//! get the same addresses and delivery; checked fragment by fragment (each
//! byte, each IPv4 header checksum) and reassembled (the L4 checksum over
//! the whole translated datagram). Both directions of SNAT (UDP and ICMP
//! echo), DNAT of a published UDP port, hairpin, the slow path; fragments
//! out of order, and entries past their lifetime.

use netctl_common::{
    fragment::{FragEntry, FragKey},
    stats::StatIndex,
};
use netctl_tests::{frames::*, tc::*};

/// Fragment data per fragment: what a 1500-byte MTU carries.
const CHUNK: usize = 1480;

/// A datagram big enough for three fragments at [`CHUNK`].
fn big(frame: Frame) -> Frame {
    with(&frame, |f| {
        f.payload = (0..4000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        f.frag = 0;
    })
}

/// The FRAGMENTS entry of a datagram, if any.
fn frag_entry(env: &mut Env, key: FragKey) -> Option<FragEntry> {
    env.hash::<FragKey, FragEntry>("FRAGMENTS")
        .get(&key, 0)
        .ok()
}

fn frag_key(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, proto: u8, id: u16) -> FragKey {
    FragKey {
        saddr: be_ip(src),
        daddr: be_ip(dst),
        id: id.to_be(),
        proto,
        _pad: 0,
    }
}

/// Runs every fragment through `run`, expecting `verdict` for each, and
/// checks that the outputs are exactly `expected` cut the same way (same
/// id): addresses, ports in the first, MACs, TTL, IPv4 header checksums;
/// then that their reassembly carries a right L4 checksum.
fn assert_fragments_translated(
    run: impl Fn(&[u8]) -> (u32, Vec<u8>),
    frags: &[Vec<u8>],
    verdict: u32,
    expected: &Frame,
    id: u16,
) {
    let want = fragments(&expected.bytes(), id, CHUNK);
    assert_eq!(frags.len(), want.len());
    let mut outs = Vec::new();
    for (i, (frag, want)) in frags.iter().zip(&want).enumerate() {
        let (got, out) = run(frag);
        assert_eq!(got, verdict, "verdict of fragment {i}");
        assert_ip_checksum(&out);
        assert_eq!(view(&out).src, view(want).src, "source of fragment {i}");
        assert_eq!(
            view(&out).dst,
            view(want).dst,
            "destination of fragment {i}"
        );
        assert_eq!(out, *want, "fragment {i}, byte for byte");
        outs.push(out);
    }
    let whole = reassemble(&outs);
    assert_checksums(&whole);
    assert_eq!(
        view(&whole),
        view(&expected.bytes()),
        "the reassembled datagram"
    );
}

#[test]
fn snat_udp_fragments_out_and_back() {
    in_netns(Opts::default(), |env| {
        let datagram = big(Frame::from(A1, REMOTE, udp(33000, 53)));
        let frags = fragments(&datagram.bytes(), 0x4242, CHUNK);
        assert_eq!(frags.len(), 3);
        // The first fragment makes the flow and picks the port.
        let (verdict, out) = env.endpoint(A1, &frags[0]);
        assert_eq!(verdict, TC_ACT_REDIRECT, "first fragment to the uplink");
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port), "SNAT port {port}");
        let snatted = with(&datagram, |f| {
            f.src = UPLINK_IP;
            f.l4 = udp(port, 53);
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        // The first fragment again (a duplicate), then the others.
        assert_fragments_translated(
            |f| env.endpoint(A1, f),
            &frags,
            TC_ACT_REDIRECT,
            &snatted,
            0x4242,
        );
        let entry = frag_entry(env, frag_key(A1.ip, REMOTE, UDP, 0x4242))
            .expect("FRAGMENTS entry of the datagram");
        assert_eq!(
            (entry.saddr, entry.daddr, entry.ifindex, entry.stat),
            (be_ip(UPLINK_IP), be_ip(REMOTE), 0, StatIndex::Snat as u32),
            "FRAGMENTS: the first fragment's translation"
        );
        assert_eq!(env.conntrack().len(), 2, "one flow");

        // The answer, fragmented too, back into A1.
        let answer = big(Frame::from_outside(REMOTE, UPLINK_IP, udp(53, port)));
        let back = fragments(&answer.bytes(), 0x0777, CHUNK);
        let to_a1 = with(&answer, |f| {
            f.dst = A1.ip;
            f.l4 = udp(53, 33000);
            f.dst_mac = A1.mac;
            f.src_mac = NET_A.mac;
            f.ttl = 63;
        });
        assert_fragments_translated(|f| env.uplink_in(f), &back, TC_ACT_REDIRECT, &to_a1, 0x0777);
        env.assert_stats(&[
            (StatIndex::Snat, 4),
            (StatIndex::RedirectUplink, 4),
            (StatIndex::ReverseNat, 3),
            (StatIndex::RedirectPeer, 3),
            (StatIndex::FragmentTranslated, 4),
        ]);
    });
}

#[test]
fn icmp_echo_fragments_out_and_back() {
    in_netns(Opts::default(), |env| {
        // ping -s 2000: 2008 bytes of ICMP, two fragments.
        let request = with(&Frame::from(A1, REMOTE, echo(8, 0x5151)), |f| {
            f.payload = vec![0xa5; 2000];
            f.frag = 0;
        });
        let frags = fragments(&request.bytes(), 0x0101, CHUNK);
        let (verdict, out) = env.endpoint(A1, &frags[0]);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let id = view(&out).sport;
        let snatted = with(&request, |f| {
            f.src = UPLINK_IP;
            f.l4 = echo(8, id);
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        assert_fragments_translated(
            |f| env.endpoint(A1, f),
            &frags,
            TC_ACT_REDIRECT,
            &snatted,
            0x0101,
        );
        let reply = with(&Frame::from_outside(REMOTE, UPLINK_IP, echo(0, id)), |f| {
            f.payload = vec![0xa5; 2000];
            f.frag = 0;
        });
        let back = fragments(&reply.bytes(), 0x0202, CHUNK);
        assert_fragments_translated(
            |f| env.uplink_in(f),
            &back,
            TC_ACT_REDIRECT,
            &with(&reply, |f| {
                f.dst = A1.ip;
                f.l4 = echo(0, 0x5151);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
            0x0202,
        );
        env.assert_stats(&[
            (StatIndex::Snat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectPeer, 2),
            (StatIndex::FragmentTranslated, 2),
        ]);
    });
}

#[test]
fn dnat_udp_fragments_to_a_published_port_and_back() {
    in_netns(Opts::default(), |env| {
        // 5353/udp is published on A2:53.
        let query = big(Frame::from_outside(REMOTE, UPLINK_IP, udp(40000, 5353)));
        let frags = fragments(&query.bytes(), 0x1111, CHUNK);
        assert_fragments_translated(
            |f| env.uplink_in(f),
            &frags,
            TC_ACT_REDIRECT,
            &with(&query, |f| {
                f.dst = A2.ip;
                f.l4 = udp(40000, 53);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
            0x1111,
        );
        let a2_veth = env.veth(A2);
        let entry = frag_entry(env, frag_key(REMOTE, UPLINK_IP, UDP, 0x1111))
            .expect("FRAGMENTS entry of the query");
        assert_eq!(
            (entry.saddr, entry.daddr, entry.ifindex, entry.stat),
            (be_ip(REMOTE), be_ip(A2.ip), a2_veth, StatIndex::Dnat as u32)
        );
        // A2's big answer leaves with the published address and port.
        let answer = big(Frame::from(A2, REMOTE, udp(53, 40000)));
        let back = fragments(&answer.bytes(), 0x2222, CHUNK);
        assert_fragments_translated(
            |f| env.endpoint(A2, f),
            &back,
            TC_ACT_REDIRECT,
            &with(&answer, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(5353, 40000);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
            0x2222,
        );
        env.assert_stats(&[
            (StatIndex::Dnat, 3),
            (StatIndex::RedirectPeer, 3),
            (StatIndex::ReverseNat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::FragmentTranslated, 4),
        ]);
    });
}

#[test]
fn hairpin_udp_fragments_both_ways() {
    in_netns(Opts::default(), |env| {
        // A1 → uplink address:5353 → A2:53, from A2's gateway.
        let query = big(Frame::from(A1, UPLINK_IP, udp(33000, 5353)));
        let frags = fragments(&query.bytes(), 0x3333, CHUNK);
        let (verdict, out) = env.endpoint(A1, &frags[0]);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert_fragments_translated(
            |f| env.endpoint(A1, f),
            &frags,
            TC_ACT_REDIRECT,
            &with(&query, |f| {
                f.src = NET_A.gateway;
                f.dst = A2.ip;
                f.l4 = udp(port, 53);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
            0x3333,
        );
        let answer = big(Frame::from(A2, NET_A.gateway, udp(53, port)));
        let back = fragments(&answer.bytes(), 0x4444, CHUNK);
        assert_fragments_translated(
            |f| env.endpoint(A2, f),
            &back,
            TC_ACT_REDIRECT,
            &with(&answer, |f| {
                f.src = UPLINK_IP;
                f.dst = A1.ip;
                f.l4 = udp(5353, 33000);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
            0x4444,
        );
        env.assert_stats(&[
            (StatIndex::Hairpin, 4),
            (StatIndex::ReverseNat, 3),
            (StatIndex::RedirectPeer, 7),
            (StatIndex::FragmentTranslated, 4),
        ]);
    });
}

#[test]
fn slow_path_translates_fragments_on_uplink_egress() {
    in_netns(Opts::default(), |env| {
        // What the kernel routed out of the uplink untranslated (MACs and
        // TTL already done by the kernel).
        let datagram = with(&big(Frame::from(A1, REMOTE, udp(33001, 53))), |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
        });
        let frags = fragments(&datagram.bytes(), 0x5555, CHUNK);
        let (verdict, out) = env.uplink_out(&frags[0]);
        assert_eq!(verdict, TC_ACT_OK);
        let port = view(&out).sport;
        assert_fragments_translated(
            |f| env.uplink_out(f),
            &frags,
            TC_ACT_OK,
            &with(&datagram, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(port, 53);
            }),
            0x5555,
        );
        env.assert_stats(&[(StatIndex::Snat, 4), (StatIndex::FragmentTranslated, 2)]);
    });
}

#[test]
fn fragments_out_of_order() {
    in_netns(Opts::default(), |env| {
        let datagram = big(Frame::from(A1, REMOTE, udp(33000, 53)));
        let frags = fragments(&datagram.bytes(), 0x6666, CHUNK);
        // A later fragment before its first, to the outside: dropped
        // untouched (it would leave with A1's address).
        assert_verdict(env.endpoint(A1, &frags[2]), TC_ACT_SHOT, &frags[2]);
        assert_verdict(env.endpoint(A1, &frags[1]), TC_ACT_SHOT, &frags[1]);
        assert!(env.conntrack().is_empty(), "no flow from a later fragment");
        assert_eq!(frag_entry(env, frag_key(A1.ip, REMOTE, UDP, 0x6666)), None);
        // The slow path refuses it the same way.
        let routed = with(&datagram, |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
        });
        let routed_frags = fragments(&routed.bytes(), 0x6767, CHUNK);
        assert_verdict(
            env.uplink_out(&routed_frags[1]),
            TC_ACT_SHOT,
            &routed_frags[1],
        );
        env.assert_stats(&[(StatIndex::DropFragmentOutOfOrder, 3)]);

        // Once the first is through, the sender's next copies go through.
        let (verdict, out) = env.endpoint(A1, &frags[0]);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        for frag in [&frags[2], &frags[1]] {
            let (verdict, out) = env.endpoint(A1, frag);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            assert_ip_checksum(&out);
            assert_eq!(view_ip(&out), (UPLINK_IP, REMOTE));
            assert_eq!(&out[14 + 20..], &frag[14 + 20..], "data untouched");
        }

        // From the outside, a later fragment without an entry may be the
        // host's own datagram: the host's, untouched.
        let answer = big(Frame::from_outside(REMOTE, UPLINK_IP, udp(53, port)));
        let back = fragments(&answer.bytes(), 0x6868, CHUNK);
        assert_verdict(env.uplink_in(&back[1]), TC_ACT_OK, &back[1]);

        // A later fragment that stays on the own bridge, or goes to the
        // host, needs no translation: passed without an entry.
        let local = big(Frame::from(A1, A2.ip, udp(33000, 53)));
        let local_frags = fragments(&local.bytes(), 0x6969, CHUNK);
        assert_verdict(
            env.endpoint(A1, &local_frags[1]),
            TC_ACT_OK,
            &local_frags[1],
        );
        let to_host = big(Frame::from(A1, NET_A.gateway, udp(33000, 53)));
        let host_frags = fragments(&to_host.bytes(), 0x6a6a, CHUNK);
        assert_verdict(env.endpoint(A1, &host_frags[1]), TC_ACT_OK, &host_frags[1]);
        env.assert_stats(&[
            (StatIndex::DropFragmentOutOfOrder, 3),
            (StatIndex::Snat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::FragmentTranslated, 2),
            (StatIndex::Pass, 3),
        ]);
    });
}

#[test]
fn an_entry_past_the_reassembly_time_is_not_used() {
    in_netns(Opts::default(), |env| {
        let datagram = big(Frame::from(A1, REMOTE, udp(33000, 53)));
        let frags = fragments(&datagram.bytes(), 0x7070, CHUNK);
        let key = frag_key(A1.ip, REMOTE, UDP, 0x7070);
        let stale = FragEntry {
            saddr: be_ip(UPLINK_IP),
            daddr: be_ip(REMOTE),
            ifindex: 0,
            stat: StatIndex::Snat as u32,
            created_ns: ago(31),
        };
        env.hash::<FragKey, FragEntry>("FRAGMENTS")
            .insert(key, stale, 0)
            .expect("FRAGMENTS");
        assert_verdict(env.endpoint(A1, &frags[1]), TC_ACT_SHOT, &frags[1]);
        // A fresh one is (planted: the entry alone decides).
        let fresh = FragEntry {
            created_ns: ago(1),
            ..stale
        };
        env.hash::<FragKey, FragEntry>("FRAGMENTS")
            .insert(key, fresh, 0)
            .expect("FRAGMENTS");
        let (verdict, out) = env.endpoint(A1, &frags[1]);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view_ip(&out), (UPLINK_IP, REMOTE));
        assert_ip_checksum(&out);
        env.assert_stats(&[
            (StatIndex::DropFragmentOutOfOrder, 1),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
            (StatIndex::FragmentTranslated, 1),
        ]);
    });
}

/// Source and destination of a frame (a later fragment has no ports for
/// [`view`] to read).
fn view_ip(frame: &[u8]) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let ip = &frame[14..];
    (
        std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    )
}

#[test]
fn the_hosts_fragmented_udp_from_a_published_port_stays_the_hosts() {
    in_netns(Opts::default(), |env| {
        // The host sends a big datagram from 5353 (published udp → A2:53):
        // its first fragment records the host flow, as a whole datagram
        // would, so that the fragmented answer is not DNATed into A2.
        let query = big(Frame::new(
            UPLINK_MAC,
            WAN_GW_MAC,
            UPLINK_IP,
            REMOTE,
            udp(5353, 53),
        ));
        for frag in fragments(&query.bytes(), 0x7171, CHUNK) {
            assert_verdict(env.uplink_out(&frag), TC_ACT_OK, &frag);
        }
        assert_eq!(env.conntrack().len(), 2, "the host flow's two entries");
        let answer = big(Frame::from_outside(REMOTE, UPLINK_IP, udp(53, 5353)));
        for frag in fragments(&answer.bytes(), 0x7272, CHUNK) {
            assert_verdict(env.uplink_in(&frag), TC_ACT_OK, &frag);
        }
        env.assert_stats(&[(StatIndex::HostFlow, 2), (StatIndex::Pass, 4)]);
    });
}
