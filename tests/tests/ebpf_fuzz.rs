//! Hostile packets: each TC program (`endpoint_ingress`, `uplink_ingress`,
//! `uplink_egress`) gets a few thousand random and mutated frames through
//! BPF_PROG_TEST_RUN, with the harness of the packet tests (`ebpf_snat.rs`
//! and the others: `netctl_tests::tc`): the same topology, maps filled as
//! netctl would, published ports, and conntrack entries made by running
//! valid frames first, so that mutations of those frames hit the
//! translation paths.
//!
//! Seeds include fragmented datagrams of those flows (all their fragments,
//! the first ones run beforehand so that `FRAGMENTS` holds their
//! translation; the datagrams share the IP id of every other seed, so a
//! seed mutated into a later fragment may meet an entry too).
//!
//! Mutations: flipped bytes, truncation, wrong total length, IP options,
//! fragments, bad IHL, bad IPv4 and L4 checksums, other protocols and
//! EtherTypes, other TCP flags and ports, trailing bytes; plus frames of
//! random bytes. Checked for every frame:
//! - the kernel runs it (it may refuse only a frame shorter than Ethernet +
//!   20 bytes) and the verdict is one the program may return;
//! - a frame the program rewrote (IPv4 header or beyond, verdict not a
//!   drop) keeps its length, had a whole IPv4 header, and its IPv4 and L4
//!   checksums are as right as they were: a valid checksum stays valid, and
//!   a wrong one stays wrong by the same amount (an incremental update
//!   cannot and must not launder it); a zero UDP checksum stays zero, a
//!   non-zero one never becomes zero;
//! - a later fragment (offset > 0) the program rewrote changed nothing but
//!   its addresses, TTL and IPv4 checksum (its data, L4 bytes included, is
//!   untouched), and its new addresses are those `FRAGMENTS` holds for its
//!   datagram (source, destination, protocol, id as it came in);
//! - in an ICMP error, the quoted IPv4 header's checksum and, when the
//!   quote holds the whole packet, its TCP/UDP/ICMP checksum likewise.
//!
//! The seeds include ICMP errors quoting each kind of flow (SNAT, DNAT,
//! hairpin, generic) from both sides, so that mutations of them reach the
//! translation of errors.
//!
//! Seeded, with a fixed default: `NETCTL_FUZZ_SEED=N` replays a run (the
//! seed is printed, and named in any failure), `NETCTL_FUZZ_SEED=time` draws
//! a new one; `NETCTL_FUZZ_COUNT` sets the frames per program.

use std::net::Ipv4Addr;

use netctl_common::fragment::{FragEntry, FragKey};
use netctl_common::stats::StatIndex;
use netctl_tests::{frames::*, tc::*};

const DEFAULT_COUNT: u64 = 3000;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The suite's seed: fixed, so that CI is reproducible (a run that fails
/// fails again). `NETCTL_FUZZ_SEED=time` explores new frames each run.
const DEFAULT_SEED: u64 = 0x6e65_7463_746c;

fn seed() -> u64 {
    match std::env::var("NETCTL_FUZZ_SEED").as_deref() {
        Err(_) => DEFAULT_SEED,
        Ok("time") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("NETCTL_FUZZ_SEED={text}: not a number or `time`")),
    }
}

fn count() -> u64 {
    std::env::var("NETCTL_FUZZ_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_COUNT)
}

// ---------------------------------------------------------------------------
// Frame surgery on raw bytes (Ethernet + IPv4 at offset 14).

const ETH: usize = 14;

fn ihl(frame: &[u8]) -> usize {
    usize::from(frame.get(ETH).copied().unwrap_or(0) & 0x0f) * 4
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= ETH + 20 && frame[12..14] == [0x08, 0x00] && frame[ETH] >> 4 == 4
}

/// Recomputes the IPv4 header checksum, when the header is all there.
fn fix_ip_csum(frame: &mut [u8]) {
    let len = ihl(frame);
    if !is_ipv4(frame) || len < 20 || frame.len() < ETH + len {
        return;
    }
    frame[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&[&frame[ETH..ETH + len]]);
    frame[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
}

/// Where the L4 checksum field is for a protocol, from the L4 start.
fn l4_csum_offset(proto: u8) -> Option<usize> {
    match proto {
        TCP => Some(16),
        UDP => Some(6),
        ICMP => Some(2),
        _ => None,
    }
}

/// The L4 bytes as the IPv4 header delimits them (total length), when
/// whole: `None` for a fragment past the first or a short frame.
fn l4_region(frame: &[u8]) -> Option<(usize, usize)> {
    if !is_ipv4(frame) {
        return None;
    }
    let hl = ihl(frame);
    let total = usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    let offset = u16::from_be_bytes([frame[ETH + 6], frame[ETH + 7]]) & 0x1fff;
    if hl < 20 || total < hl || ETH + total > frame.len() || offset != 0 {
        return None;
    }
    Some((ETH + hl, ETH + total))
}

/// The one's complement sum over the pseudo header (TCP, UDP) and the L4
/// bytes, folded: 0xffff (or 0) when the checksum is right. What an
/// incremental update must leave as it found it.
fn l4_residual(frame: &[u8]) -> Option<u16> {
    let (start, end) = l4_region(frame)?;
    let proto = frame[ETH + 9];
    let at = l4_csum_offset(proto)?;
    let l4 = &frame[start..end];
    if l4.len() < at + 2 {
        return None;
    }
    let mut pseudo = Vec::with_capacity(12);
    if proto != ICMP {
        pseudo.extend_from_slice(&frame[ETH + 12..ETH + 20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    Some(!checksum(&[&pseudo, l4]))
}

/// The packet an ICMP error quotes, as a frame of its own (a made-up
/// Ethernet header before the quote), when the frame is one.
fn quoted(frame: &[u8]) -> Option<Vec<u8>> {
    let (start, end) = l4_region(frame)?;
    if frame[ETH + 9] != ICMP || end - start < 8 + 20 || ![3, 11, 12].contains(&frame[start]) {
        return None;
    }
    let mut inner = vec![0u8; ETH];
    inner[12..14].copy_from_slice(&[0x08, 0x00]);
    inner.extend_from_slice(&frame[start + 8..end]);
    Some(inner)
}

fn ip_residual(frame: &[u8]) -> Option<u16> {
    let hl = ihl(frame);
    (is_ipv4(frame) && hl >= 20 && frame.len() >= ETH + hl)
        .then(|| !checksum(&[&frame[ETH..ETH + hl]]))
}

/// One's complement has two zeros: 0x0000 and 0xffff are the same sum.
fn same_sum(a: u16, b: u16) -> bool {
    let norm = |x: u16| if x == 0 { 0xffff } else { x };
    norm(a) == norm(b)
}

fn udp_csum(frame: &[u8]) -> Option<u16> {
    let (start, end) = l4_region(frame)?;
    (frame[ETH + 9] == UDP && end - start >= 8)
        .then(|| u16::from_be_bytes([frame[start + 6], frame[start + 7]]))
}

/// Recomputes the L4 checksum (as a sender would), when the L4 bytes are whole.
fn fix_l4_csum(frame: &mut [u8]) {
    let Some((start, end)) = l4_region(frame) else {
        return;
    };
    let proto = frame[ETH + 9];
    let Some(at) = l4_csum_offset(proto) else {
        return;
    };
    if end - start < at + 2 {
        return;
    }
    if proto == UDP && frame[start + 6..start + 8] == [0, 0] {
        return; // "no checksum" stays so
    }
    frame[start + at..start + at + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    if proto != ICMP {
        pseudo.extend_from_slice(&frame[ETH + 12..ETH + 20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&((end - start) as u16).to_be_bytes());
    }
    let mut c = checksum(&[&pseudo, &frame[start..end]]);
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    frame[start + at..start + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Applies one random mutation; returns its name.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) -> &'static str {
    let len = frame.len();
    match rng.below(15) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let at = 12 + rng.below(len - 12);
                frame[at] ^= 1 + rng.below(255) as u8;
            }
            "flip bytes"
        }
        1 => {
            frame.truncate(ETH + rng.below(len - ETH));
            "truncate"
        }
        2 => {
            let total = match rng.below(3) {
                0 => rng.next() as u16,
                1 => (len - ETH) as u16 + 1 + rng.below(64) as u16,
                _ => (len - ETH).saturating_sub(1 + rng.below(30)) as u16,
            };
            frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
            if rng.chance(2) {
                fix_ip_csum(frame);
            }
            "total length"
        }
        3 => {
            frame[ETH] = (frame[ETH] & 0xf0) | rng.below(16) as u8;
            if rng.chance(2) {
                fix_ip_csum(frame);
            }
            "ihl"
        }
        4 => {
            let frag: u16 = match rng.below(4) {
                0 => 0x2000,                                  // MF: a first fragment
                1 => 1 + rng.below(0x1fff) as u16,            // a later one
                2 => 0x2000 | (1 + rng.below(0x1fff) as u16), // a middle one
                _ => 0x8000 | rng.next() as u16,              // reserved bit, anything
            };
            frame[ETH + 6..ETH + 8].copy_from_slice(&frag.to_be_bytes());
            fix_ip_csum(frame);
            "fragment"
        }
        5 => {
            // IP options: whole words after the header, lengths kept true.
            let hl = ihl(frame).clamp(20, 60);
            let room = (60 - hl) / 4;
            if room == 0 || frame.len() < ETH + hl {
                return "options (no room)";
            }
            let words = 1 + rng.below(room);
            let mut options = rng.bytes(words * 4);
            if rng.chance(2) {
                options.iter_mut().for_each(|b| *b = 0x01); // NOPs
            }
            let at = ETH + hl;
            frame.splice(at..at, options);
            frame[ETH] = 0x40 | ((hl + words * 4) / 4) as u8;
            let total = u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]);
            let total = total.wrapping_add((words * 4) as u16);
            frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
            fix_ip_csum(frame);
            "ip options"
        }
        6 => {
            frame[ETH + 10] ^= 1 + rng.below(255) as u8;
            "bad ip checksum"
        }
        7 => {
            if let Some((start, end)) = l4_region(frame) {
                let at = l4_csum_offset(frame[ETH + 9]).unwrap_or(0);
                if end - start >= at + 2 {
                    frame[start + at] ^= 1 + rng.below(255) as u8;
                }
            }
            "bad l4 checksum"
        }
        8 => {
            const PROTOS: [u8; 6] = [ICMP, TCP, UDP, 47, 132, 255];
            frame[ETH + 9] = PROTOS[rng.below(PROTOS.len())];
            fix_ip_csum(frame);
            "protocol"
        }
        9 => {
            let n = 1 + rng.below(64);
            frame.extend(rng.bytes(n));
            "trailing bytes"
        }
        10 => {
            if let Some((start, end)) = l4_region(frame) {
                if frame[ETH + 9] == TCP && end - start >= 20 {
                    frame[start + 13] = rng.byte();
                    fix_l4_csum(frame);
                }
            }
            "tcp flags"
        }
        11 => {
            if let Some((start, end)) = l4_region(frame) {
                if end - start >= 4 {
                    let at = start + 2 * rng.below(2);
                    let port = u16::from_be_bytes([frame[at], frame[at + 1]]);
                    let port = match rng.below(3) {
                        0 => port.wrapping_add(1),
                        1 => port.wrapping_sub(1),
                        _ => rng.next() as u16,
                    };
                    frame[at..at + 2].copy_from_slice(&port.to_be_bytes());
                    fix_l4_csum(frame);
                }
            }
            "ports"
        }
        12 => {
            if let Some((start, end)) = l4_region(frame) {
                if frame[ETH + 9] == UDP && end - start >= 8 {
                    frame[start + 4..start + 6].copy_from_slice(&(rng.next() as u16).to_be_bytes());
                }
            }
            "udp length"
        }
        13 => {
            frame[ETH + 8] = [0, 1, 2, 255][rng.below(4)];
            fix_ip_csum(frame);
            "ttl"
        }
        _ => {
            const TYPES: [[u8; 2]; 4] = [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]];
            frame[12..14].copy_from_slice(&TYPES[rng.below(TYPES.len())]);
            "ethertype"
        }
    }
}

/// Random bytes, mostly dressed as IPv4 so that the parser goes further.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = ETH + 20 + rng.below(180);
    let mut frame = rng.bytes(len);
    if !rng.chance(4) {
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[ETH] = 0x45;
        frame[ETH + 9] = [ICMP, TCP, UDP][rng.below(3)];
        let total = (len - ETH) as u16;
        frame[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        frame[ETH + 6..ETH + 8].copy_from_slice(&[0x40, 0]);
        fix_ip_csum(&mut frame);
        fix_l4_csum(&mut frame);
    }
    frame
}

/// BPF_PROG_TEST_RUN refuses a frame shorter than the network header its
/// EtherType announces (IPv4: 20 bytes, IPv6: 40) or than Ethernet.
fn kernel_may_refuse(frame: &[u8]) -> bool {
    let needed = match frame.get(12..14) {
        Some([0x08, 0x00]) => ETH + 20,
        Some([0x86, 0xdd]) => ETH + 40,
        _ => ETH,
    };
    frame.len() < needed
}

// ---------------------------------------------------------------------------
// Seeds: valid frames of every path, with the flows they belong to.

/// A frame to feed, and the interface it arrives on (or leaves by).
#[derive(Clone)]
struct Seed {
    what: &'static str,
    ifindex: u32,
    frame: Vec<u8>,
}

/// Runs valid frames through the programs so that conntrack holds SNAT,
/// DNAT and hairpin flows, and returns frames of each path: new flows,
/// both directions of the known ones, and what is dropped or passed.
fn seeds(env: &Env) -> Vec<Seed> {
    let a1 = env.veth(A1);
    let a2 = env.veth(A2);
    let up = env.uplink;
    let mut seeds = Vec::new();
    let mut add = |what, ifindex, frame: &Frame| {
        seeds.push(Seed {
            what,
            ifindex,
            frame: frame.bytes(),
        })
    };
    let must = |got: (u32, Vec<u8>), what: &str| {
        assert_ne!(got.0, TC_ACT_SHOT, "seed flow {what}");
        got.1
    };

    // Egress SNAT flows (TCP, UDP with and without a checksum, ICMP echo).
    let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
    let out = must(env.endpoint(A1, &syn.bytes()), "snat tcp");
    let snat_tcp = view(&out).sport;
    let dns = Frame::from(A1, REMOTE, udp(5000, 53));
    let snat_udp = view(&must(env.endpoint(A1, &dns.bytes()), "snat udp")).sport;
    let bare = Frame::from(A1, REMOTE, udp_no_checksum(5001, 53));
    let snat_bare = view(&must(env.endpoint(A1, &bare.bytes()), "snat udp0")).sport;
    let ping = Frame::from(A1, REMOTE, echo(8, 77));
    let snat_id = view(&must(env.endpoint(A1, &ping.bytes()), "snat icmp")).sport;
    add("snat tcp syn", a1, &syn);
    add(
        "snat tcp ack",
        a1,
        &with(&syn, |f| f.l4 = tcp(33000, 443, ACK | PSH)),
    );
    add("snat udp", a1, &dns);
    add("snat udp, no checksum", a1, &bare);
    add("snat icmp echo", a1, &ping);
    add(
        "snat tcp, ip options",
        a1,
        &with(&syn, |f| f.options = vec![0x01, 0x01, 0x01, 0x00]),
    );
    // Their replies.
    add(
        "snat tcp reply",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, snat_tcp, SYN | ACK)),
    );
    add(
        "snat udp reply",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, udp(53, snat_udp)),
    );
    add(
        "snat udp reply, no checksum",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, udp_no_checksum(53, snat_bare)),
    );
    add(
        "snat icmp reply",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, echo(0, snat_id)),
    );

    // DNAT flows to published ports, and their replies from the container.
    let web = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
    must(env.uplink_in(&web.bytes()), "dnat tcp");
    let dns_in = Frame::from_outside(REMOTE, UPLINK_IP, udp(50001, 5353));
    must(env.uplink_in(&dns_in.bytes()), "dnat udp");
    add("dnat tcp syn", up, &web);
    add(
        "dnat tcp ack",
        up,
        &with(&web, |f| f.l4 = tcp(50000, 8080, ACK)),
    );
    add("dnat udp", up, &dns_in);
    add(
        "dnat tcp, exact address",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, tcp(50002, 8443, SYN)),
    );
    add(
        "dnat reply tcp",
        a2,
        &Frame::from(A2, REMOTE, tcp(80, 50000, SYN | ACK)),
    );
    add(
        "dnat reply udp",
        a2,
        &Frame::from(A2, REMOTE, udp(53, 50001)),
    );

    // Hairpin: a container to a published port of its own network, and back.
    let hair = Frame::from(A1, UPLINK_IP, tcp(34000, 8080, SYN));
    let out = must(env.endpoint(A1, &hair.bytes()), "hairpin");
    let back = view(&out);
    add("hairpin syn", a1, &hair);
    add(
        "hairpin reply",
        a2,
        &Frame::from(A2, back.src, tcp(80, back.sport, SYN | ACK)),
    );
    add(
        "hairpin udp",
        a1,
        &Frame::from(A1, UPLINK_IP, udp(34001, 5353)),
    );

    // What passes or is dropped: own subnet, another network, internal,
    // unsolicited, the slow path out of the uplink, host traffic.
    add("own subnet", a1, &Frame::from(A1, A2.ip, udp(1000, 2000)));
    add(
        "other network",
        a1,
        &Frame::from(A1, B1.ip, tcp(1000, 80, SYN)),
    );
    add(
        "internal out",
        env.veth(I1),
        &Frame::from(I1, REMOTE, tcp(1000, 80, SYN)),
    );
    add(
        "unsolicited",
        up,
        &Frame::from_outside(REMOTE, A1.ip, tcp(1000, 80, SYN)),
    );
    let slow = Frame::new(UPLINK_MAC, WAN_GW_MAC, A1.ip, REMOTE, tcp(33000, 443, ACK));
    add("slow path, known flow", up, &slow);
    add(
        "slow path, new flow",
        up,
        &with(&slow, |f| f.l4 = udp(5002, 53)),
    );
    add(
        "host traffic",
        up,
        &Frame::new(UPLINK_MAC, WAN_GW_MAC, UPLINK_IP, REMOTE, tcp(40, 443, SYN)),
    );
    // ICMP errors quoting each kind of flow, from the outside (a router
    // on the way) and from the containers (port unreachable).
    let router = Ipv4Addr::new(192, 0, 2, 254);
    let from_outside =
        |kind, quoted: &Frame| icmp_error(REMOTE_MAC, UPLINK_MAC, router, UPLINK_IP, kind, quoted);
    let frag_needed = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
    let unreachable = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
    let left = |f: &Frame| {
        with(f, |f| {
            f.src = UPLINK_IP;
            f.ttl = 1;
        })
    };
    add(
        "error, snat tcp",
        up,
        &from_outside(
            frag_needed,
            &left(&with(&syn, |f| f.l4 = tcp(snat_tcp, 443, ACK))),
        ),
    );
    add(
        "error, snat udp",
        up,
        &from_outside(
            (ICMP_TIME_EXCEEDED, 0),
            &left(&with(&dns, |f| f.l4 = udp(snat_udp, 53))),
        ),
    );
    add(
        "error, snat udp without checksum",
        up,
        &from_outside(
            frag_needed,
            &left(&with(&bare, |f| f.l4 = udp_no_checksum(snat_bare, 53))),
        ),
    );
    add(
        "error, snat icmp echo",
        up,
        &from_outside(
            (ICMP_PARAM_PROBLEM, 0),
            &left(&with(&ping, |f| f.l4 = echo(8, snat_id))),
        ),
    );
    add(
        "error, dnat reply",
        up,
        &from_outside(
            frag_needed,
            &Frame::from_outside(UPLINK_IP, REMOTE, tcp(8080, 50000, SYN | ACK)),
        ),
    );
    let dnat_udp_in = with(&dns_in, |f| {
        f.dst = A2.ip;
        f.l4 = udp(50001, 53);
    });
    add(
        "error from a container, dnat udp",
        a2,
        &icmp_error(A2.mac, NET_A.mac, A2.ip, REMOTE, unreachable, &dnat_udp_in),
    );
    add(
        "error from a container, hairpin",
        a2,
        &icmp_error(
            A2.mac,
            NET_A.mac,
            A2.ip,
            back.src,
            unreachable,
            &with(&Frame::from(A1, A2.ip, tcp(back.sport, 80, SYN)), |f| {
                f.src = back.src
            }),
        ),
    );
    // A protocol without ports (GRE), its answer, an error about it.
    let gre = Frame::from(A1, REMOTE, L4::Raw { proto: 47 });
    must(env.endpoint(A1, &gre.bytes()), "generic");
    add("generic", a1, &gre);
    add(
        "generic reply",
        up,
        &Frame::from_outside(REMOTE, UPLINK_IP, L4::Raw { proto: 47 }),
    );
    add(
        "error, generic",
        up,
        &from_outside(frag_needed, &left(&gre)),
    );
    add(
        "spoofed",
        a1,
        &with(&Frame::from(A1, REMOTE, udp(1, 53)), |f| {
            f.src = Ipv4Addr::new(172, 18, 0, 99)
        }),
    );

    // Fragmented datagrams of every translation (three fragments each, IP
    // id 0x1234 as every Frame): the first fragment runs first, so that
    // FRAGMENTS holds the translation the later ones get; every fragment
    // is a seed.
    let big = |f: Frame| {
        with(&f, |f| {
            f.payload = (0..3000u32).map(|i| i as u8).collect();
            f.frag = 0;
        })
    };
    let fragmented = [
        ("fragments snat udp", a1, big(dns.clone())),
        ("fragments snat icmp", a1, big(ping.clone())),
        (
            "fragments snat udp reply",
            up,
            big(Frame::from_outside(REMOTE, UPLINK_IP, udp(53, snat_udp))),
        ),
        ("fragments dnat udp", up, big(dns_in.clone())),
        (
            "fragments dnat reply udp",
            a2,
            big(Frame::from(A2, REMOTE, udp(53, 50001))),
        ),
        (
            "fragments hairpin udp",
            a1,
            big(Frame::from(A1, UPLINK_IP, udp(34001, 5353))),
        ),
        (
            "fragments slow path",
            0,
            big(with(&slow, |f| f.l4 = udp(5003, 53))),
        ),
    ];
    for (what, ifindex, datagram) in fragmented {
        let frags = fragments(&datagram.bytes(), 0x1234, 1480);
        let first = if ifindex == 0 {
            env.uplink_out(&frags[0])
        } else if ifindex == up {
            env.uplink_in(&frags[0])
        } else {
            env.run("endpoint_ingress", ifindex, &frags[0])
        };
        must(first, what);
        let ifindex = if ifindex == 0 { up } else { ifindex };
        for frame in frags {
            seeds.push(Seed {
                what,
                ifindex,
                frame,
            });
        }
    }
    seeds
}

/// A fragment past the first (offset > 0) of TCP, UDP or ICMP: no L4
/// header, so its translation comes from FRAGMENTS. (Fragments of
/// protocols without ports carry the whole tuple of their address-only
/// flow, and are judged like any rewritten frame.)
fn later_fragment(frame: &[u8]) -> bool {
    is_ipv4(frame)
        && u16::from_be_bytes([frame[ETH + 6], frame[ETH + 7]]) & 0x1fff != 0
        && matches!(frame[ETH + 9], 1 | 6 | 17)
}

/// What is wrong with a rewritten later fragment, if anything: only the
/// addresses (as FRAGMENTS says for its datagram), the TTL and the IPv4
/// checksum may change.
fn judge_fragment(env: &mut Env, input: &[u8], out: &[u8]) -> Option<String> {
    let hl = ihl(input);
    if out.get(ETH + hl..) != input.get(ETH + hl..) {
        return Some("a later fragment's data changed".into());
    }
    let same = |range: std::ops::Range<usize>| out.get(range.clone()) == input.get(range);
    if !same(ETH..ETH + 8) || !same(ETH + 9..ETH + 10) {
        return Some("a later fragment's IPv4 header changed beyond addresses and TTL".into());
    }
    let key = FragKey {
        saddr: u32::from_ne_bytes(input[ETH + 12..ETH + 16].try_into().unwrap()),
        daddr: u32::from_ne_bytes(input[ETH + 16..ETH + 20].try_into().unwrap()),
        id: u16::from_ne_bytes([input[ETH + 4], input[ETH + 5]]),
        proto: input[ETH + 9],
        _pad: 0,
    };
    let Ok(entry) = env.hash::<FragKey, FragEntry>("FRAGMENTS").get(&key, 0) else {
        return Some("a later fragment rewritten without a FRAGMENTS entry".into());
    };
    let src = u32::from_ne_bytes(out[ETH + 12..ETH + 16].try_into().unwrap());
    let dst = u32::from_ne_bytes(out[ETH + 16..ETH + 20].try_into().unwrap());
    if (src, dst) != (entry.saddr, entry.daddr) {
        return Some(format!(
            "a later fragment rewritten to {}/{}, FRAGMENTS says {}/{}",
            Ipv4Addr::from(src.to_ne_bytes()),
            Ipv4Addr::from(dst.to_ne_bytes()),
            Ipv4Addr::from(entry.saddr.to_ne_bytes()),
            Ipv4Addr::from(entry.daddr.to_ne_bytes()),
        ));
    }
    None
}

// ---------------------------------------------------------------------------
// The run.

/// What is wrong with one run, if anything.
fn judge(
    program: &str,
    verdicts: &[u32],
    input: &[u8],
    verdict: u32,
    out: &[u8],
) -> Option<String> {
    if !verdicts.contains(&verdict) {
        return Some(format!("{program} returned {verdict}"));
    }
    if verdict == TC_ACT_SHOT || out.get(ETH..) == input.get(ETH..) {
        return None;
    }
    if out.len() != input.len() {
        return Some(format!("length {} -> {}", input.len(), out.len()));
    }
    if !is_ipv4(input) {
        return Some("rewrote a frame that is not (whole) IPv4".into());
    }
    let (Some(ip_in), Some(ip_out)) = (ip_residual(input), ip_residual(out)) else {
        return Some(format!(
            "rewrote a frame with IHL {} and {} bytes",
            ihl(input),
            input.len()
        ));
    };
    if !same_sum(ip_in, ip_out) {
        return Some(format!(
            "IPv4 header checksum: residual {ip_in:#06x} in, {ip_out:#06x} out"
        ));
    }
    match (udp_csum(input), udp_csum(out)) {
        (Some(0), Some(c)) if c != 0 => {
            return Some(format!("UDP checksum 0 (none) became {c:#06x}"))
        }
        (Some(0), _) => return None,
        (Some(_), Some(0)) => return Some("UDP checksum became 0 (none)".into()),
        _ => {}
    }
    match (l4_residual(input), l4_residual(out)) {
        (Some(a), Some(b)) if !same_sum(a, b) => {
            return Some(format!(
                "L4 (protocol {}) checksum: residual {a:#06x} in, {b:#06x} out",
                input[ETH + 9]
            ))
        }
        _ => {}
    }
    // The quote of an ICMP error: its own checksums, judged alike.
    let (Some(q_in), Some(q_out)) = (quoted(input), quoted(out)) else {
        return None;
    };
    match (ip_residual(&q_in), ip_residual(&q_out)) {
        (Some(a), Some(b)) if !same_sum(a, b) => {
            return Some(format!(
                "quoted IPv4 checksum: residual {a:#06x} in, {b:#06x} out"
            ))
        }
        _ => {}
    }
    match (udp_csum(&q_in), udp_csum(&q_out)) {
        (Some(0), Some(c)) if c != 0 => {
            return Some(format!("quoted UDP checksum 0 (none) became {c:#06x}"))
        }
        (Some(0), _) => return None,
        (Some(_), Some(0)) => return Some("quoted UDP checksum became 0 (none)".into()),
        _ => {}
    }
    match (l4_residual(&q_in), l4_residual(&q_out)) {
        (Some(a), Some(b)) if !same_sum(a, b) => Some(format!(
            "quoted L4 (protocol {}) checksum: residual {a:#06x} in, {b:#06x} out",
            q_in[ETH + 9]
        )),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fuzz(program: &'static str, verdicts: &'static [u32], index: u64) {
    let seed = seed();
    let count = count();
    eprintln!(
        "ebpf_fuzz {program}: seed {seed} (NETCTL_FUZZ_SEED={seed} replays it), {count} frames"
    );
    in_netns(Opts::default(), move |env| {
        // Each program its own stream of the same seed.
        let mut rng = Rng(seed ^ index.wrapping_mul(0x9e37_79b9));
        let seeds = seeds(env);
        let mut failures = Vec::new();
        let mut tally = [0u64; 8];
        let mut rewritten = 0u64;
        let mut refused = 0u64;
        let mut l4_checked = 0u64;
        let mut fragments_rewritten = 0u64;
        for case in 0..count {
            let (what, ifindex, frame, mutations) = if rng.chance(8) {
                let ifindex = if rng.chance(2) {
                    env.uplink
                } else {
                    env.veth(A1)
                };
                ("random bytes", ifindex, random_frame(&mut rng), Vec::new())
            } else {
                let seed = &seeds[rng.below(seeds.len())];
                let mut frame = seed.frame.clone();
                let mut mutations = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    if frame.len() > ETH + 20 {
                        mutations.push(mutate(&mut rng, &mut frame));
                    }
                }
                if rng.chance(3) {
                    fix_ip_csum(&mut frame);
                    mutations.push("ip checksum fixed");
                }
                (seed.what, seed.ifindex, frame, mutations)
            };
            // uplink_egress runs on the uplink, whatever the seed's interface.
            let ifindex = if program == "endpoint_ingress" {
                ifindex
            } else {
                env.uplink
            };
            let (verdict, out) = match env.try_run(program, ifindex, &frame) {
                Ok(result) => result,
                // The kernel refuses to run a frame shorter than Ethernet +
                // the IPv4 or IPv6 header it announces; anything else must run.
                Err(_) if kernel_may_refuse(&frame) => {
                    refused += 1;
                    continue;
                }
                Err(e) => {
                    failures.push(format!("case {case} ({what}, {mutations:?}): refused: {e}"));
                    continue;
                }
            };
            tally[(verdict as usize).min(7)] += 1;
            if verdict != TC_ACT_SHOT && out.get(ETH..) != frame.get(ETH..) {
                rewritten += 1;
                if l4_residual(&frame).is_some() {
                    l4_checked += 1;
                }
            }
            let mut problem = judge(program, verdicts, &frame, verdict, &out);
            if verdict != TC_ACT_SHOT
                && later_fragment(&frame)
                && out.get(ETH..) != frame.get(ETH..)
            {
                fragments_rewritten += 1;
                problem = problem.or_else(|| judge_fragment(env, &frame, &out));
            }
            if let Some(problem) = problem {
                failures.push(format!(
                    "case {case} ({what}, {mutations:?}): {problem}\n  in  {}\n  out {}",
                    hex(&frame),
                    hex(&out)
                ));
            }
        }
        eprintln!(
            "ebpf_fuzz {program}: verdicts ok={} shot={} redirect={}, rewritten {rewritten} \
             (L4 checksum checked on {l4_checked}, later fragments {fragments_rewritten}), \
             refused {refused}, conntrack entries {}",
            tally[TC_ACT_OK as usize],
            tally[TC_ACT_SHOT as usize],
            tally[TC_ACT_REDIRECT as usize],
            env.conntrack().len()
        );
        assert!(
            failures.is_empty(),
            "seed {seed} (NETCTL_FUZZ_SEED={seed}): {} of {count} frames wrong on {program}, first ones:\n{}",
            failures.len(),
            failures.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
        );
        // The fuzz reached the translation paths, not only the parser.
        assert!(rewritten > count / 50, "only {rewritten} frames rewritten");
        assert!(
            l4_checked > count / 100,
            "only {l4_checked} L4 checksums checked"
        );
        // Later fragments were translated (on the fast path's programs
        // and the slow path alike), and checked.
        assert!(
            fragments_rewritten > count / 200,
            "only {fragments_rewritten} later fragments rewritten"
        );
        // And the translation of ICMP errors (judged with their quotes).
        let icmp_errors = env.stats()[StatIndex::IcmpError as usize].packets;
        eprintln!("ebpf_fuzz {program}: {icmp_errors} ICMP errors translated");
        assert!(
            icmp_errors > count / 200,
            "only {icmp_errors} ICMP errors translated"
        );
    });
}

const ALL: &[u32] = &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT];

#[test]
fn endpoint_ingress_survives_hostile_frames() {
    fuzz("endpoint_ingress", ALL, 1);
}

#[test]
fn uplink_ingress_survives_hostile_frames() {
    fuzz("uplink_ingress", ALL, 2);
}

#[test]
fn uplink_egress_survives_hostile_frames() {
    // The slow path translates and hands back to the kernel: no redirect.
    fuzz("uplink_egress", &[TC_ACT_OK, TC_ACT_SHOT], 3);
}

/// The checker itself: a rewrite without its checksum updates, a laundered
/// or a broken checksum, a zero UDP checksum made non-zero, an unexpected
/// verdict are all caught; a correct rewrite is not.
#[test]
fn the_judge_catches_bad_rewrites() {
    let judge_redirect = |input: &[u8], out: &[u8]| judge("test", ALL, input, TC_ACT_REDIRECT, out);
    for l4 in [tcp(33000, 443, SYN), udp(5000, 53), echo(8, 77)] {
        let frame = Frame::from(A1, REMOTE, l4);
        let input = frame.bytes();
        // SNAT done right: new source, every checksum recomputed.
        let good = with(&frame, |f| f.src = UPLINK_IP).bytes();
        assert_eq!(judge_redirect(&input, &good), None, "{l4:?}");
        // The same without updating the IPv4 checksum.
        let mut stale = good.clone();
        stale[ETH + 10..ETH + 12].copy_from_slice(&input[ETH + 10..ETH + 12]);
        assert!(
            judge_redirect(&input, &stale).is_some(),
            "{l4:?}: stale IPv4 checksum"
        );
        // The IPv4 checksum updated, the L4 one (pseudo header) not: ICMP
        // has no pseudo header, so only TCP and UDP are wrong.
        let mut half = input.clone();
        half[ETH + 12..ETH + 16].copy_from_slice(&UPLINK_IP.octets());
        fix_ip_csum(&mut half);
        assert_eq!(
            judge_redirect(&input, &half).is_some(),
            !matches!(l4, L4::Icmp { .. }),
            "{l4:?}: L4 checksum not updated"
        );
        // A wrong checksum in, "fixed" out: laundered.
        let mut bad_in = input.clone();
        bad_in[ETH + 10] ^= 0x40;
        assert!(
            judge_redirect(&bad_in, &good).is_some(),
            "{l4:?}: laundered"
        );
    }
    // UDP without a checksum must stay without one.
    let bare = Frame::from(A1, REMOTE, udp_no_checksum(5000, 53));
    let input = bare.bytes();
    let mut out = with(&bare, |f| f.src = UPLINK_IP).bytes();
    assert_eq!(judge_redirect(&input, &out), None);
    let (start, _) = l4_region(&out).unwrap();
    out[start + 6..start + 8].copy_from_slice(&[0x12, 0x34]);
    assert!(
        judge_redirect(&input, &out).is_some(),
        "zero UDP checksum made non-zero"
    );
    // An ICMP error whose quote was rewritten without its checksums.
    let quoted_frame = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
    let kind = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
    let error = icmp_error(
        REMOTE_MAC,
        UPLINK_MAC,
        REMOTE,
        UPLINK_IP,
        kind,
        &quoted_frame,
    );
    let input = error.bytes();
    let translated = with(&error, |f| f.dst = A1.ip).bytes();
    assert_eq!(judge_redirect(&input, &translated), None);
    let mut stale = translated.clone();
    let quote = ETH + 20 + 8;
    stale[quote + 12..quote + 16].copy_from_slice(&UPLINK_IP.octets());
    // The ICMP checksum made right again: only the quoted ones are stale.
    stale[ETH + 22..ETH + 24].copy_from_slice(&[0, 0]);
    let c = checksum(&[&stale[ETH + 20..]]);
    stale[ETH + 22..ETH + 24].copy_from_slice(&c.to_be_bytes());
    assert!(
        judge_redirect(&input, &stale).is_some(),
        "quoted checksums not updated"
    );
    // A verdict the program may not return.
    let frame = Frame::from(A1, REMOTE, udp(1, 2)).bytes();
    let egress = [TC_ACT_OK, TC_ACT_SHOT];
    assert!(judge("uplink_egress", &egress, &frame, TC_ACT_REDIRECT, &frame).is_some());
}
