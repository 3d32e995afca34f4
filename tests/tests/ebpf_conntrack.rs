//! The conntrack table of the TC programs, frame by frame through
//! BPF_PROG_TEST_RUN (the harness: `netctl_tests::tc`): a flow's states
//! (RST closing both directions, a SYN reopening a closing flow), expired
//! entries and their pairs, and a full table (new flows refused, dead
//! entries reclaimed at most once a second).

use netctl_common::{
    conntrack::{
        CtEntry, CtKey, CT_STATE_CLOSE, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED,
        CT_STATE_FIN_WAIT, CT_STATE_LAST_ACK, CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_SYN_SENT,
        CT_STATE_TIME_WAIT,
    },
    stats::StatIndex,
};
use netctl_tests::{frames::*, tc::*};
use std::net::Ipv4Addr;

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
        let rst = Frame::from(A1, REMOTE, tcp(33000, 443, RST)).bytes();
        let (verdict, _) = env.endpoint(A1, &rst);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let original = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        assert_eq!(env.ct_get(&original).unwrap().state, CT_STATE_CLOSE);
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
        let stale = CtEntryBuilder::snat((UPLINK_IP, 41_234), (REMOTE, 443))
            .state(CT_STATE_CLOSE)
            .last_seen(long_ago())
            .build();
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
        let pair = CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33001))
            .reply()
            .deliver_to(env.veth(A1))
            .state(CT_STATE_CLOSE)
            .last_seen(monotonic_ns())
            .build();
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
        // The remote resets, acknowledging the SYN (a RST in SYN_SENT must,
        // as in the kernel): both entries close.
        let rst = numbered(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, RST | ACK)),
            0,
            syn.seq + seq_len(&syn),
        );
        let (verdict, out) = env.uplink_in(&rst.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_checksums(&out);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_CLOSE);
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_CLOSE);
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

/// A full table of confirmed flows refuses new flows of every kind (SNAT,
/// DNAT, hairpin), counted and untouched, and evicts nothing: the flows it
/// holds keep being translated both ways. Neither early drop (no
/// unconfirmed flow) nor the sweep (nothing dead) deletes anything.
#[test]
fn a_full_conntrack_table_refuses_new_flows_only() {
    let opts = Opts {
        conntrack_max: Some(4),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // Two confirmed flows fill the table: SNAT A1 → REMOTE (picked up
        // mid-stream: established), DNAT REMOTE → A2 (a whole handshake).
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let nat_port = view(&out).sport;
        let dnat_syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
        let (verdict, _) = env.uplink_in(&dnat_syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let syn_ack = numbered(
            &Frame::from(A2, REMOTE, tcp(80, 50000, SYN | ACK)),
            0x3000_0001,
            dnat_syn.seq + seq_len(&dnat_syn),
        );
        assert_eq!(env.endpoint(A2, &syn_ack.bytes()).0, TC_ACT_REDIRECT);
        let ack = numbered(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, ACK)),
            dnat_syn.seq + seq_len(&dnat_syn),
            0x3000_0001 + seq_len(&syn_ack),
        );
        assert_eq!(env.uplink_in(&ack.bytes()).0, TC_ACT_REDIRECT);
        for (key, _) in env.conntrack() {
            assert_eq!(env.ct_get(&key).unwrap().state, CT_STATE_ESTABLISHED);
        }
        let table = env.ct_keys();
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
        assert_eq!(env.ct_keys(), table, "no entry added or evicted");

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
            (StatIndex::Dnat, 3),
            (StatIndex::ReverseNat, 3),
            (StatIndex::RedirectUplink, 4),
            (StatIndex::RedirectPeer, 4),
            (StatIndex::DropConntrackFull, 4),
        ]);
    });
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
        let plant = |env: &mut Env, key: CtKey, entry: CtEntry| {
            env.ct_insert(key, entry);
            key
        };
        // A closed SNAT flow, both entries dead.
        let closed_out = plant(
            env,
            ct_key(A2.ip, REMOTE, 35000, 443, TCP),
            CtEntryBuilder::snat((UPLINK_IP, 41_001), (REMOTE, 443))
                .state(CT_STATE_CLOSE)
                .last_seen(dead)
                .build(),
        );
        let closed_back = plant(
            env,
            ct_key(REMOTE, UPLINK_IP, 443, 41_001, TCP),
            CtEntryBuilder::snat((REMOTE, 443), (A2.ip, 35000))
                .reply()
                .deliver_to(a2)
                .state(CT_STATE_CLOSE)
                .last_seen(dead)
                .build(),
        );
        // A one-way UDP stream: its reply entry expired long ago, the
        // original one is alive.
        let stream_out = plant(
            env,
            ct_key(A1.ip, REMOTE, 36000, 53, UDP),
            CtEntryBuilder::snat((UPLINK_IP, 41_000), (REMOTE, 53))
                .last_seen(monotonic_ns())
                .build(),
        );
        let stream_back = plant(
            env,
            ct_key(REMOTE, UPLINK_IP, 53, 41_000, UDP),
            CtEntryBuilder::snat((REMOTE, 53), (A1.ip, 36000))
                .reply()
                .deliver_to(a1)
                .last_seen(ago(120))
                .build(),
        );
        // Two lone dead entries (their pairs long gone).
        let lone = [
            plant(
                env,
                ct_key(A2.ip, REMOTE, 37000, 443, TCP),
                CtEntryBuilder::snat((UPLINK_IP, 41_002), (REMOTE, 443))
                    .state(CT_STATE_CLOSE)
                    .last_seen(dead)
                    .build(),
            ),
            plant(
                env,
                ct_key(A2.ip, REMOTE, 7, 7, ICMP),
                CtEntryBuilder::snat((UPLINK_IP, 41_003), (REMOTE, 41_003))
                    .state(CT_STATE_ESTABLISHED)
                    .last_seen(ago(60))
                    .build(),
            ),
        ];
        assert_eq!(env.conntrack().len(), 6, "full");

        // A new flow (picked up mid-stream, so that early drop never takes
        // it below): dropped, and the sweep makes room...
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
        assert_verdict(env.endpoint(A1, &syn.bytes()), TC_ACT_SHOT, &syn.bytes());
        assert_eq!(
            env.ct_keys(),
            in_table_order(vec![stream_out, stream_back]),
            "dead entries reclaimed, live ones kept"
        );
        // ...for its retransmission.
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        let nat_port = view(&out).sport;
        let want = vec![
            stream_out,
            stream_back,
            ct_key(A1.ip, REMOTE, 33000, 443, TCP),
            ct_key(REMOTE, UPLINK_IP, 443, nat_port, TCP),
        ];
        assert_eq!(
            env.ct_keys(),
            in_table_order(want),
            "the new flow and the live ones"
        );
        for gone in [closed_out, closed_back, lone[0], lone[1]] {
            assert!(env.ct_get(&gone).is_none());
        }

        // Full again with dead entries, but the last sweep was just now: a
        // new flow is refused.
        let dead_again = [
            plant(
                env,
                ct_key(A2.ip, REMOTE, 38000, 443, TCP),
                CtEntryBuilder::snat((UPLINK_IP, 41_004), (REMOTE, 443))
                    .state(CT_STATE_CLOSE)
                    .last_seen(dead)
                    .build(),
            ),
            plant(
                env,
                ct_key(A2.ip, REMOTE, 38001, 443, TCP),
                CtEntryBuilder::snat((UPLINK_IP, 41_005), (REMOTE, 443))
                    .state(CT_STATE_CLOSE)
                    .last_seen(dead)
                    .build(),
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

// ---------------------------------------------------------------------------
// The TCP state machine (the kernel's), the window, early drop.

/// The state both entries of a flow share.
fn states(env: &Env, a: &CtKey, b: &CtKey) -> (u8, u8) {
    (env.ct_get(a).unwrap().state, env.ct_get(b).unwrap().state)
}

fn assert_state(env: &Env, a: &CtKey, b: &CtKey, want: u8, what: &str) {
    assert_eq!(states(env, a, b), (want, want), "{what}");
}

/// Client (A1, SNAT) and server (REMOTE) numbers of a flow, to build its
/// segments in order.
struct Numbers {
    client: u32,
    server: u32,
}

/// SYN → SYN_SENT; a SYN-ACK that does not acknowledge the SYN changes
/// nothing, one that does → SYN_RECV; the initiator's ACK of something
/// else changes nothing, its ACK of the SYN-ACK → ESTABLISHED. Then the
/// close: FIN → FIN_WAIT, its ACK → CLOSE_WAIT (data still flows the other
/// way), the other FIN → LAST_ACK, the last ACK → TIME_WAIT. Today's code
/// made the flow ESTABLISHED at the SYN-ACK (any SYN-ACK) and CLOSING at the
/// first FIN.
#[test]
fn tcp_flows_follow_the_kernels_states() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        let orig = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let back = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        assert_state(env, &orig, &back, CT_STATE_SYN_SENT, "after the SYN");
        let mut n = Numbers {
            client: syn.seq + seq_len(&syn),
            server: 0x3000_0001,
        };
        let from_server = |flags: u8| Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, flags));
        let from_client = |flags: u8| Frame::from(A1, REMOTE, tcp(33000, 443, flags));

        // A SYN-ACK acknowledging something else: forwarded, no change.
        let blind = numbered(&from_server(SYN | ACK), 0x5555_0000, 0x7777_0000);
        assert_eq!(env.uplink_in(&blind.bytes()).0, TC_ACT_REDIRECT);
        assert_state(
            env,
            &orig,
            &back,
            CT_STATE_SYN_SENT,
            "after a blind SYN-ACK",
        );
        let syn_ack = numbered(&from_server(SYN | ACK), n.server, n.client);
        assert_eq!(env.uplink_in(&syn_ack.bytes()).0, TC_ACT_REDIRECT);
        n.server += seq_len(&syn_ack);
        assert_state(env, &orig, &back, CT_STATE_SYN_RECV, "after the SYN-ACK");
        assert_eq!(
            tcp_numbers(&env.ct_get(&back).unwrap()),
            (Some(n.server), Some(n.client)),
            "the server's numbers"
        );

        // The client's ACK of another number: still SYN_RECV.
        let wrong = numbered(&from_client(ACK), n.client, n.server + 100_000);
        assert_eq!(env.endpoint(A1, &wrong.bytes()).0, TC_ACT_REDIRECT);
        assert_state(env, &orig, &back, CT_STATE_SYN_RECV, "after a wrong ACK");
        let ack = numbered(&from_client(ACK), n.client, n.server);
        assert_eq!(env.endpoint(A1, &ack.bytes()).0, TC_ACT_REDIRECT);
        n.client += seq_len(&ack);
        assert_state(env, &orig, &back, CT_STATE_ESTABLISHED, "handshake done");

        // The client closes its side; the server acknowledges.
        let fin = numbered(&from_client(FIN | ACK), n.client, n.server);
        assert_eq!(env.endpoint(A1, &fin.bytes()).0, TC_ACT_REDIRECT);
        n.client += seq_len(&fin);
        assert_state(env, &orig, &back, CT_STATE_FIN_WAIT, "after the FIN");
        let fin_ack = numbered(&from_server(ACK), n.server, n.client);
        assert_eq!(env.uplink_in(&fin_ack.bytes()).0, TC_ACT_REDIRECT);
        n.server += seq_len(&fin_ack);
        assert_state(env, &orig, &back, CT_STATE_CLOSE_WAIT, "half-closed");
        // Data from the server, acknowledged by the client: half-closed
        // still, the flow translated both ways.
        let data = numbered(&from_server(ACK | PSH), n.server, n.client);
        let (verdict, out) = env.uplink_in(&data.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!((view(&out).dst, view(&out).dport), (A1.ip, 33000));
        assert_checksums(&out);
        n.server += seq_len(&data);
        let data_ack = with(&numbered(&from_client(ACK), n.client, n.server), |f| {
            f.payload.clear()
        });
        let (verdict, out) = env.endpoint(A1, &data_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!((view(&out).src, view(&out).sport), (UPLINK_IP, port));
        assert_state(
            env,
            &orig,
            &back,
            CT_STATE_CLOSE_WAIT,
            "data while half-closed",
        );

        // The server closes too; the client acknowledges.
        let fin2 = numbered(&from_server(FIN | ACK), n.server, n.client);
        assert_eq!(env.uplink_in(&fin2.bytes()).0, TC_ACT_REDIRECT);
        n.server += seq_len(&fin2);
        assert_state(env, &orig, &back, CT_STATE_LAST_ACK, "after the second FIN");
        let last = with(&numbered(&from_client(ACK), n.client, n.server), |f| {
            f.payload.clear()
        });
        assert_eq!(env.endpoint(A1, &last.bytes()).0, TC_ACT_REDIRECT);
        assert_state(env, &orig, &back, CT_STATE_TIME_WAIT, "after the last ACK");
        env.assert_stats(&[
            (StatIndex::Snat, 6),
            (StatIndex::RedirectUplink, 6),
            (StatIndex::ReverseNat, 5),
            (StatIndex::RedirectPeer, 5),
        ]);
    });
}

/// A RST or FIN whose sequence number lies outside the flow's window (a
/// blind one from outside) is forwarded but changes nothing, and is
/// counted `ct_out_of_window`; one in the window closes the flow. Today's
/// code closed the flow on any RST.
#[test]
fn rst_and_fin_outside_the_window_change_nothing() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (_, out) = env.endpoint(A1, &syn.bytes());
        let port = view(&out).sport;
        let orig = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let back = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        let from_server = |flags: u8| Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, flags));
        let client = syn.seq + seq_len(&syn);
        let mut server = 0x3000_0001u32;
        let syn_ack = numbered(&from_server(SYN | ACK), server, client);
        env.uplink_in(&syn_ack.bytes());
        server += seq_len(&syn_ack);
        let ack = numbered(
            &Frame::from(A1, REMOTE, tcp(33000, 443, ACK)),
            client,
            server,
        );
        env.endpoint(A1, &ack.bytes());
        let client = client + seq_len(&ack);
        assert_state(env, &orig, &back, CT_STATE_ESTABLISHED, "established");

        // Blind: far from the server's numbers, acknowledging nothing real.
        for flags in [RST, RST | ACK, FIN | ACK] {
            let blind = numbered(
                &from_server(flags),
                server.wrapping_add(0x4000_0000),
                0x7777_0000,
            );
            let (verdict, out) = env.uplink_in(&blind.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "forwarded all the same");
            assert_eq!(view(&out).dst, A1.ip);
            assert_state(env, &orig, &back, CT_STATE_ESTABLISHED, "a blind segment");
        }
        // The server's own RST, at its next sequence number.
        let rst = numbered(&from_server(RST | ACK), server, client);
        assert_eq!(env.uplink_in(&rst.bytes()).0, TC_ACT_REDIRECT);
        assert_state(env, &orig, &back, CT_STATE_CLOSE, "a RST in the window");
        assert_eq!(env.stats()[StatIndex::CtOutOfWindow as usize].packets, 3);
    });
}

/// A SYN flood at a published port fills a small table with unconfirmed
/// flows (the container answers each SYN, no ACK ever comes). A new
/// connection is refused once, and the refusal deletes the oldest
/// unconfirmed flow (`ct_early_drop`), so that its retransmission gets in;
/// an established flow is never taken. Today's code freed nothing (the
/// sweep finds no dead entry) and every new connection was refused for the
/// SYN timeout.
#[test]
fn early_drop_takes_the_oldest_unconfirmed_flow_never_an_established_one() {
    let opts = Opts {
        conntrack_max: Some(6),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // One established flow (picked up mid-stream).
        let est = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
        assert_eq!(env.endpoint(A1, &est.bytes()).0, TC_ACT_REDIRECT);
        let est_key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        // Two spoofed SYNs, answered by A2: SYN_RECV, never confirmed.
        let spoofed = |i: u8| Ipv4Addr::new(203, 0, 113, 100 + i);
        for i in 0..2 {
            let syn = Frame::from_outside(spoofed(i), UPLINK_IP, tcp(50000, 8080, SYN));
            assert_eq!(env.uplink_in(&syn.bytes()).0, TC_ACT_REDIRECT);
            let syn_ack = numbered(
                &Frame::from(A2, spoofed(i), tcp(80, 50000, SYN | ACK)),
                0x3000_0001,
                syn.seq + seq_len(&syn),
            );
            assert_eq!(env.endpoint(A2, &syn_ack.bytes()).0, TC_ACT_REDIRECT);
        }
        assert_eq!(env.conntrack().len(), 6, "full");
        let flood0 = ct_key(spoofed(0), UPLINK_IP, 50000, 8080, TCP);
        let flood1 = ct_key(spoofed(1), UPLINK_IP, 50000, 8080, TCP);
        assert_eq!(env.ct_get(&flood0).unwrap().state, CT_STATE_SYN_RECV);

        // A legitimate client: refused once, the oldest flood flow goes...
        let client = Ipv4Addr::new(203, 0, 113, 50);
        let syn = Frame::from_outside(client, UPLINK_IP, tcp(40000, 8080, SYN)).bytes();
        assert_verdict(env.uplink_in(&syn), TC_ACT_SHOT, &syn);
        assert!(
            env.ct_get(&flood0).is_none(),
            "the oldest unconfirmed flow went"
        );
        assert!(env
            .ct_get(&ct_key(A2.ip, spoofed(0), 80, 50000, TCP))
            .is_none());
        assert!(env.ct_get(&flood1).is_some(), "one at a time");
        assert!(env.ct_get(&est_key).is_some(), "the established flow stays");
        // ...and its retransmission gets in.
        let (verdict, out) = env.uplink_in(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A2.ip);
        assert_eq!(env.stats()[StatIndex::CtEarlyDrop as usize].packets, 1);

        // Only confirmed flows and the new client's left to take: the next
        // refusal takes the other flood flow, then nothing (the new client
        // is unconfirmed too, and next in line).
        let other = Frame::from_outside(client, UPLINK_IP, tcp(40001, 8080, SYN)).bytes();
        assert_verdict(env.uplink_in(&other), TC_ACT_SHOT, &other);
        assert!(env.ct_get(&flood1).is_none());
        assert!(env.ct_get(&est_key).is_some(), "the established flow stays");
        assert_eq!(env.stats()[StatIndex::CtEarlyDrop as usize].packets, 2);
    });
}

// ---------------------------------------------------------------------------
// SNAT port allocation.

/// MASQUERADE's allocation: the container's own source port when it is in
/// the range and free; another container with the same source port to the
/// same destination gets another port, and the same port towards another
/// destination; with every port of the range but one taken towards a
/// destination, the search finds that one, then gives up
/// (`drop_snat_exhausted`). Today's code hashed 8 tries over the range:
/// it kept a source port by chance only and gave up with one free port in
/// 64.
#[test]
fn snat_keeps_a_free_source_port_and_searches_the_range() {
    let opts = Opts {
        snat_ports: (40_000, 40_063),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let (verdict, out) =
            env.endpoint(A1, &Frame::from(A1, REMOTE, tcp(40_010, 443, SYN)).bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_010, "the source port kept");
        assert_checksums(&out);
        let (verdict, out) =
            env.endpoint(A2, &Frame::from(A2, REMOTE, tcp(40_010, 443, SYN)).bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let second = view(&out).sport;
        assert!(
            second != 40_010 && (40_000..=40_063).contains(&second),
            "{second}"
        );
        let elsewhere = Ipv4Addr::new(203, 0, 113, 11);
        let (verdict, out) = env.endpoint(
            A2,
            &Frame::from(A2, elsewhere, tcp(40_010, 443, SYN)).bytes(),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_010, "free towards another destination");

        // Every port towards REMOTE:80 taken by live flows but 40037.
        let a2 = env.veth(A2);
        for port in (40_000..=40_063).filter(|p| *p != 40_037) {
            env.ct_insert(
                ct_key(REMOTE, UPLINK_IP, 80, port, TCP),
                CtEntryBuilder::snat((REMOTE, 80), (A2.ip, port))
                    .reply()
                    .deliver_to(a2)
                    .state(CT_STATE_ESTABLISHED)
                    .last_seen(monotonic_ns())
                    .build(),
            );
        }
        let (verdict, out) =
            env.endpoint(A1, &Frame::from(A1, REMOTE, tcp(33_000, 80, SYN)).bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_037, "the one free port, found");
        let next = Frame::from(A1, REMOTE, tcp(33_001, 80, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &next), TC_ACT_SHOT, &next);
        assert_eq!(
            env.stats()[StatIndex::DropSnatExhausted as usize].packets,
            1
        );
    });
}

/// The host's ephemeral range inside the SNAT range (CONFIG's skip) is
/// never allocated, not even as a kept source port.
#[test]
fn snat_never_uses_the_hosts_ephemeral_range() {
    in_netns(Opts::default(), |env| {
        env.set_snat((40_000, 40_009), (40_001, 40_008));
        let mut ports = Vec::new();
        for sport in [33_000, 40_005] {
            let (verdict, out) =
                env.endpoint(A1, &Frame::from(A1, REMOTE, tcp(sport, 443, SYN)).bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT);
            ports.push(view(&out).sport);
        }
        ports.sort_unstable();
        assert_eq!(ports, vec![40_000, 40_009]);
        let third = Frame::from(A1, REMOTE, tcp(33_002, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &third), TC_ACT_SHOT, &third);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::DropSnatExhausted, 1),
        ]);
    });
}

/// A table full of confirmed flows, one of them closed (TIME_WAIT, well
/// within its 120 s): early drop finds nothing, and the sweep deletes the
/// closed flow, so that the refused flow's retransmission gets in; the
/// established flow stays.
#[test]
fn under_pressure_a_closed_flow_gives_way() {
    let opts = Opts {
        conntrack_max: Some(4),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let a1 = env.veth(A1);
        let now = monotonic_ns();
        let plant = |env: &mut Env, sport: u16, nat: u16, state: u8| {
            let key = ct_key(A1.ip, REMOTE, sport, 443, TCP);
            env.ct_insert(
                key,
                CtEntryBuilder::snat((UPLINK_IP, nat), (REMOTE, 443))
                    .state(state)
                    .last_seen(now)
                    .build(),
            );
            env.ct_insert(
                ct_key(REMOTE, UPLINK_IP, 443, nat, TCP),
                CtEntryBuilder::snat((REMOTE, 443), (A1.ip, sport))
                    .reply()
                    .deliver_to(a1)
                    .state(state)
                    .last_seen(now)
                    .build(),
            );
            key
        };
        let closed = plant(env, 35_000, 40_100, CT_STATE_TIME_WAIT);
        let live = plant(env, 35_001, 40_101, CT_STATE_ESTABLISHED);
        let syn = Frame::from(A2, REMOTE, tcp(36_000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A2, &syn), TC_ACT_SHOT, &syn);
        assert!(env.ct_get(&closed).is_none(), "the closed flow gave way");
        assert!(env.ct_get(&live).is_some(), "the established flow stays");
        assert_eq!(env.conntrack().len(), 2);
        let (verdict, out) = env.endpoint(A2, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        assert_eq!(env.stats()[StatIndex::CtEarlyDrop as usize].packets, 0);
    });
}
