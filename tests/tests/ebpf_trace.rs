//! Flow events and `netctl trace`. First the programs under
//! BPF_PROG_TEST_RUN (`netctl_tests::tc`): a drop and a new flow write
//! their event into `FLOW_EVENTS` only while a listener's lease runs; then
//! `netctl trace` in a sandbox: a container's new SNAT flow with its
//! translation and its forged packets' drops, with names, filtered.

use std::{net::Ipv4Addr, process::Stdio, thread::sleep, time::Duration};

use netctl_common::{
    conntrack::CT_KIND_SNAT,
    event::{
        FlowEvent, END_RST, END_TIMEOUT, EVENT_DROP, EVENT_END, EVENT_NEW, PROGRAM_ENDPOINT_INGRESS,
    },
    stats::StatIndex,
};
use netctl_tests::{
    frames::*,
    output::{nettool, text},
    privileged,
    sandbox::{call_until_answer, Sandbox, OUTSIDE_IP},
    tc::*,
};

const FORGED: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 200);

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[test]
fn a_drop_and_a_new_flow_are_events_only_while_someone_listens() {
    in_netns(Opts::default(), |env| {
        let forged = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.src = FORGED);
        let syn = |sport| Frame::from(A1, REMOTE, tcp(sport, 443, SYN));
        let arp = arp_frame(A1.mac, A2.ip, NET_A.gateway);

        // Nobody listens: dropped and translated as ever, no event.
        assert_verdict(
            env.endpoint(A1, &forged.bytes()),
            TC_ACT_SHOT,
            &forged.bytes(),
        );
        assert_eq!(env.endpoint(A1, &syn(33000).bytes()).0, TC_ACT_REDIRECT);
        assert_verdict(env.endpoint(A1, &arp), TC_ACT_SHOT, &arp);
        assert_eq!(
            env.events(),
            Vec::<FlowEvent>::new(),
            "no listener, no event"
        );

        env.listen(true);
        assert_verdict(
            env.endpoint(A1, &forged.bytes()),
            TC_ACT_SHOT,
            &forged.bytes(),
        );
        let (verdict, out) = env.endpoint(A1, &syn(33001).bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert_verdict(env.endpoint(A1, &arp), TC_ACT_SHOT, &arp);
        let events = env.events();
        assert_eq!(events.len(), 3, "{events:?}");
        let veth = env.veth(A1);

        let drop = events[0];
        assert_eq!(
            (
                drop.kind,
                drop.program,
                drop.reason,
                drop.ethertype,
                drop.proto
            ),
            (
                EVENT_DROP,
                PROGRAM_ENDPOINT_INGRESS,
                StatIndex::DropSpoofed as u16,
                0x0800,
                17
            )
        );
        assert_eq!(drop.ifindex, veth, "the veth it came in by");
        assert_eq!(
            (drop.original.saddr, drop.original.daddr),
            (be(FORGED), be(REMOTE))
        );
        assert_eq!(
            (
                u16::from_be(drop.original.sport),
                u16::from_be(drop.original.dport)
            ),
            (5000, 53)
        );

        let new = events[1];
        assert_eq!(
            (new.kind, new.ct_kind, new.proto),
            (EVENT_NEW, CT_KIND_SNAT, 6)
        );
        assert_eq!(new.ifindex, veth, "the client's veth");
        assert_eq!(
            (new.original.saddr, u16::from_be(new.original.sport)),
            (be(A1.ip), 33001)
        );
        assert_eq!(
            (new.original.daddr, u16::from_be(new.original.dport)),
            (be(REMOTE), 443)
        );
        assert_eq!(
            (new.translated.saddr, u16::from_be(new.translated.sport)),
            (be(UPLINK_IP), port),
            "the translation"
        );
        assert_eq!(new.translated.daddr, be(REMOTE));
        assert!(new.time_ns >= drop.time_ns);

        // An ARP drop names the ARP's addresses (sender and target), not
        // bytes of its hardware addresses read as an IPv4 header.
        let arp_drop = events[2];
        assert_eq!(
            (arp_drop.kind, arp_drop.reason, arp_drop.ethertype),
            (EVENT_DROP, StatIndex::DropArpSpoofed as u16, 0x0806)
        );
        assert_eq!(
            (arp_drop.original.saddr, arp_drop.original.daddr),
            (be(A2.ip), be(NET_A.gateway))
        );

        // A listener killed: its lease runs out, and the first program to
        // find it so clears it (no event, and no clock read after).
        env.set_lease(1);
        assert_verdict(
            env.endpoint(A1, &forged.bytes()),
            TC_ACT_SHOT,
            &forged.bytes(),
        );
        assert_eq!(env.lease(), 0, "a lease run out is cleared");
        assert_eq!(env.events(), Vec::<FlowEvent>::new());

        // The listener gone (lease cleared): silent again.
        env.listen(false);
        assert_verdict(
            env.endpoint(A1, &forged.bytes()),
            TC_ACT_SHOT,
            &forged.bytes(),
        );
        assert_eq!(env.endpoint(A1, &syn(33002).bytes()).0, TC_ACT_REDIRECT);
        assert_eq!(env.events(), Vec::<FlowEvent>::new());
    });
}

#[test]
fn a_flow_ends_by_rst_or_timeout_and_says_so() {
    in_netns(Opts::default(), |env| {
        env.listen(true);
        // A TCP flow: SYN out, SYN-ACK back, then the client's RST.
        let syn = Frame::from(A1, REMOTE, tcp(33010, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        let client_next = syn.seq + seq_len(&syn);
        let syn_ack = numbered(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK)),
            0x3000_0001,
            client_next,
        );
        assert_eq!(env.uplink_in(&syn_ack.bytes()).0, TC_ACT_REDIRECT);
        let rst = numbered(
            &Frame::from(A1, REMOTE, tcp(33010, 443, RST)),
            client_next,
            0,
        );
        assert_eq!(env.endpoint(A1, &rst.bytes()).0, TC_ACT_REDIRECT);
        let events = env.events();
        assert_eq!(events.len(), 2, "new, then end: {events:?}");
        let end = events[1];
        assert_eq!(
            (end.kind, end.reason, end.ct_kind),
            (EVENT_END, END_RST, CT_KIND_SNAT)
        );
        // Told through the reply entry, named as the original direction.
        assert_eq!(
            (end.original.saddr, u16::from_be(end.original.sport)),
            (be(A1.ip), 33010)
        );
        assert_eq!(
            (end.translated.saddr, u16::from_be(end.translated.sport)),
            (be(UPLINK_IP), port)
        );
        assert_eq!(end.translated.daddr, be(REMOTE));

        // A UDP flow whose two entries are past their timeout (60 s): the packet
        // that finds it ends it, then starts a new one.
        let original_key = ct_key(A1.ip, REMOTE, 5002, 53, UDP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 53, 40_500, UDP);
        env.ct_insert(
            original_key,
            CtEntryBuilder::snat((UPLINK_IP, 40_500), (REMOTE, 53))
                .last_seen(ago(120))
                .build(),
        );
        env.ct_insert(
            reply_key,
            CtEntryBuilder::snat((REMOTE, 53), (A1.ip, 5002))
                .reply()
                .deliver_to(env.veth(A1))
                .last_seen(ago(120))
                .build(),
        );
        let datagram = Frame::from(A1, REMOTE, udp(5002, 53));
        assert_eq!(env.endpoint(A1, &datagram.bytes()).0, TC_ACT_REDIRECT);
        let events = env.events();
        assert_eq!(events.len(), 2, "end, then new: {events:?}");
        assert_eq!((events[0].kind, events[0].reason), (EVENT_END, END_TIMEOUT));
        assert_eq!(
            (events[0].original.saddr, events[0].translated.sport),
            (be(A1.ip), 40_500u16.to_be())
        );
        assert_eq!(events[1].kind, EVENT_NEW);
    });
}

/// What nobody listening costs: the drop path (where every drop's event
/// is emitted, when someone listens) timed with the lease at 0 (nobody
/// listens: one array lookup), run out (a trace killed: the lookup and
/// the clock) and running (the event written). A drop, because the
/// program leaves its frame as it was: BPF_PROG_TEST_RUN repeats a run on
/// the same buffer, so a translated frame would come back rewritten.
/// Reported, not asserted (a busy machine would fail any bound).
#[test]
fn the_cost_of_events_with_and_without_a_listener() {
    in_netns(Opts::default(), |env| {
        let forged = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.src = FORGED);
        let veth = env.veth(A1);
        let time = |env: &Env| {
            // The least of 5 rounds of 20,000 runs: the noise of other jobs
            // only adds.
            (0..5)
                .map(|_| env.mean_run_time("endpoint_ingress", veth, &forged.bytes(), 20_000))
                .min()
                .unwrap()
        };
        // Alternated, so that a change of the machine's load meanwhile
        // shows as a spread rather than as a difference.
        let (mut nobody, mut expired, mut listening) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            env.listen(false);
            nobody.push(time(env));
            env.set_lease(1);
            expired.push(time(env));
            env.listen(true);
            listening.push(time(env));
            // Room in the ring for the next round's events.
            let _ = env.events();
        }
        env.listen(false);
        println!(
            "endpoint_ingress per dropped packet (3 alternated rounds, least of 5 x 20,000 \
             runs each): nobody listening {nobody:?}, an expired lease {expired:?}, a \
             listener (event written) {listening:?}"
        );
    });
}

fn trace_json(sb: &Sandbox, args: &[&str], during: impl FnOnce()) -> Vec<serde_json::Value> {
    let mut argv = vec!["--format", "json", "trace"];
    argv.extend_from_slice(args);
    let trace = sb
        .netctl_command(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl trace");
    // Time to take the lease.
    sleep(Duration::from_millis(700));
    during();
    let out = trace.wait_with_output().expect("wait for netctl trace");
    assert!(
        out.status.success(),
        "netctl trace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn trace_shows_flows_and_drops_with_names_and_filters_the_rest() {
    if !privileged("sandboxes") {
        return;
    }
    let mut sb = Sandbox::new("ebpf");
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    sb.netctl_ok(&["container", "run", "b", "--network", "back"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&nettool(), "serve", "tcp", "9000"]);
    let a = sb.inspect("a");
    let a_mac = a["endpoints"][0]["mac"].as_str().unwrap().to_owned();
    let a_veth = a["endpoints"][0]["host_veth"].as_str().unwrap().to_owned();
    let a_netns = a["netns"].as_str().unwrap().to_owned();
    let gateway_mac = netctl::model::Mac::for_ip(Ipv4Addr::new(172, 18, 0, 1)).to_string();
    let server = OUTSIDE_IP.to_string();
    let tool = nettool();

    // Bad input: one line, nothing started.
    let (code, err) = sb.netctl_err(&["trace", "--container", "nobody", "--seconds", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("nobody"), "{err}");
    let (code, err) = sb.netctl_err(&["trace", "--verdict", "lost", "--seconds", "1"]);
    assert!(code != 0 && err.contains("lost"), "{err}");

    // a forges its source address: dropped on its veth.
    let forge = |count: u32| {
        sb.run_in_ok(
            &a_netns,
            &[
                &tool,
                "rawsend",
                "eth0",
                &a_mac,
                &gateway_mac,
                &FORGED.to_string(),
                &server,
                "7000",
                &count.to_string(),
            ],
        );
    };
    let traffic = || {
        call_until_answer(|| sb.exec("a", &[&tool, "call", "tcp", &server, "9000"]));
        // b's own flow, which a filter on a must leave out.
        call_until_answer(|| sb.exec("b", &[&tool, "call", "tcp", &server, "9000"]));
        forge(3);
    };
    let events = trace_json(&sb, &["--seconds", "4", "--container", "a"], traffic);

    let new = events
        .iter()
        .find(|e| e["event"] == "new" && e["dst"] == format!("{server}:9000"))
        .unwrap_or_else(|| panic!("a's SNAT flow: {events:#?}"));
    assert_eq!(new["kind"], "snat");
    assert_eq!(new["protocol"], "tcp");
    assert_eq!(new["src_container"], "a");
    assert_eq!(new["interface_container"], "a");
    assert_eq!(new["interface"], a_veth.as_str());
    assert!(
        new["src"].as_str().unwrap().starts_with("172.18.0."),
        "{new}"
    );
    assert!(
        new["translated_src"]
            .as_str()
            .unwrap()
            .starts_with("198.51.100.1:"),
        "translated to the uplink address: {new}"
    );
    assert_eq!(new["translated_dst"], format!("{server}:9000"));
    assert_eq!(new["networks"], serde_json::json!(["front"]));

    let drops: Vec<_> = events.iter().filter(|e| e["event"] == "drop").collect();
    assert_eq!(drops.len(), 3, "one event per forged frame: {events:#?}");
    for d in &drops {
        assert_eq!(d["reason"], "drop_spoofed");
        assert_eq!(d["program"], "endpoint_ingress");
        assert!(
            d["src"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{FORGED}:")),
            "{d}"
        );
        assert_eq!(d["dst"], format!("{server}:7000"));
        assert_eq!(d["interface_container"], "a", "named by the veth: {d}");
    }
    assert!(
        events.iter().all(|e| e["src_container"] != "b"),
        "--container a keeps b's flow out: {events:#?}"
    );

    // Other filters: only drops; only port 9000 (no drop has it).
    let drops_only = trace_json(&sb, &["--seconds", "3", "--verdict", "drop"], || {
        forge(2);
        call_until_answer(|| sb.exec("a", &[&tool, "call", "tcp", &server, "9000"]));
    });
    assert_eq!(drops_only.len(), 2, "{drops_only:#?}");
    assert!(drops_only.iter().all(|e| e["event"] == "drop"));
    let by_port = trace_json(
        &sb,
        &["--seconds", "3", "--port", "9000", "--network", "back"],
        || {
            call_until_answer(|| sb.exec("a", &[&tool, "call", "tcp", &server, "9000"]));
            call_until_answer(|| sb.exec("b", &[&tool, "call", "tcp", &server, "9000"]));
        },
    );
    assert!(!by_port.is_empty(), "b's flow");
    assert!(
        by_port.iter().all(|e| e["src_container"] == "b"),
        "--network back keeps a out: {by_port:#?}"
    );

    // One listener at a time, whose lease is on while it runs and cleared
    // when it ends (the programs then emit nothing).
    assert_eq!(lease(&sb), 0, "no listener");
    // Without --seconds: until SIGINT (Ctrl-C), which ends it cleanly.
    let first = sb
        .netctl_command(&["trace"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    sleep(Duration::from_millis(700));
    assert_ne!(lease(&sb), 0, "a listener's lease");
    let (code, err) = sb.netctl_err(&["trace", "--seconds", "1"]);
    assert!(code != 0 && err.contains("another"), "{err}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = first.wait_with_output().expect("trace");
    assert!(
        out.status.success(),
        "SIGINT ends a trace cleanly: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lease(&sb), 0, "cleared when the trace ends");
}

/// The listener's lease in the pinned `FLOW_LISTENER` (0: nobody).
fn lease(sb: &Sandbox) -> u64 {
    let data = aya::maps::MapData::from_pin(sb.pin_path("maps/FLOW_LISTENER"))
        .expect("FLOW_LISTENER pinned");
    let map: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array");
    map.get(&0, 0).expect("slot 0")
}

#[test]
fn trace_is_refused_on_the_iptables_datapath() {
    if !privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::new("iptables");
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let (code, err) = sb.netctl_err(&["trace", "--seconds", "1"]);
    assert_eq!(code, 1, "a validation error: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("iptables") && err.contains("conntrack -E"),
        "{err}"
    );
}
