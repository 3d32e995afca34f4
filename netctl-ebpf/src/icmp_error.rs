//! ICMP errors of translated flows: destination unreachable (frag-needed
//! included), time exceeded and parameter problem quote the header of the
//! packet they are about. When that packet belongs to a tracked flow, the
//! error is translated as the kernel's NAT does for RELATED packets
//! (`nf_nat_icmp_reply_translation`): the quote is turned into the packet
//! as the other side of the translation sent or received it, and the outer
//! header is addressed to that side.
//!
//! The quote (S:s → D:d) is one of the flow's packets, so the flow's entry
//! for the packets that answer it is keyed by the quote turned around
//! (D:d → S:s): the entry says those become `E.saddr:E.sport →
//! E.daddr:E.dport`, so the quote becomes `E.daddr:E.dport →
//! E.saddr:E.sport`, the error goes to `E.daddr` (the error's destination is
//! the quote's source), and an error sent by the quote's destination itself
//! (a port unreachable from the server or the container) comes from
//! `E.saddr`; a router's address on the way stays as it is.
//!
//! Checksums: the outer IPv4 header through the usual helpers (ICMP has no
//! pseudo header); inside the ICMP message, each rewritten field updates
//! the quoted IPv4 checksum, the quoted TCP/UDP checksum (pseudo header
//! and ports) or ICMP echo checksum where the quote holds it, and the
//! outer ICMP checksum over all of those bytes, in software (RFC 1624), so
//! the result does not depend on the skb's checksum state: the
//! `bpf_l4_csum_replace` helper assumes the field it updates is the
//! packet's own L4 checksum.
//!
//! Errors never create or refresh a flow (the kernel neither).

use aya_ebpf::programs::TcContext;
use netctl_common::{
    conntrack::{CtEntry, CtKey, CT_KIND_HOST},
    stats::StatIndex,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    conntrack, csum,
    forward::{self, fib_route, peer_target, Route},
    parse::{
        ptr_at, Packet, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF,
        PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    },
    stats::{count, pass},
};

/// What an error quotes, read from the packet: the quoted header's
/// addresses and ports as they sit in the packet, and where they are.
#[derive(Clone, Copy)]
pub struct Quote {
    /// Offset of the quoted IPv4 header.
    ip_off: usize,
    /// Offset of the quoted L4 header.
    l4_off: usize,
    saddr: u32,
    daddr: u32,
    /// Ports, or the echo identifier in both; 0 for protocols without
    /// ports.
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the quoted L4 checksum when the quote holds it and it is
    /// in use (a UDP checksum of 0 is "none"), else 0.
    csum_off: usize,
    /// The quote is ICMP echo: the identifier at l4_off + 4, a checksum
    /// without pseudo header.
    echo: bool,
}

/// The tracked flow an ICMP error quotes, with the quote; `None` when the
/// quote is cut short, is not IPv4, is a later fragment of a protocol with
/// ports, or belongs to no flow, or the error is not addressed to the
/// quoted packet's source.
///
/// Reads through direct packet access (no copy on the stack, which
/// endpoint_ingress has little of), after pulling the quote into the
/// linear part when it is not there.
#[inline(always)]
pub fn quoted_flow(ctx: &TcContext, pkt: &Packet) -> Option<(Quote, *mut CtEntry)> {
    let ip_off = pkt.l4_off + 8;
    // Where the datagram ends: the quote must lie inside it (never in the
    // Ethernet padding).
    let tot_len: *const [u8; 2] = ptr_at(ctx, IP_OFF + 2).ok()?;
    // SAFETY: ptr_at checked the bounds.
    let end = IP_OFF + usize::from(u16::from_be_bytes(unsafe { *tot_len }));
    if ctx.data() + ip_off + Ipv4Hdr::LEN + 8 > ctx.data_end() {
        // Not in the linear part: pull (invalidates packet pointers; none
        // is held here).
        ctx.pull_data((ip_off + Ipv4Hdr::LEN + 8) as u32).ok()?;
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ip_off).ok()?;
    // SAFETY: inside the packet (ptr_at).
    let ip = unsafe { *ip };
    // `& 0x0f` bounds the quoted header (60 bytes) for the verifier.
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    let l4_off = ip_off + ihl;
    let later_fragment = u16::from_be_bytes(ip.frags) & 0x1fff != 0;
    let mut quote = Quote {
        ip_off,
        l4_off,
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport: 0,
        dport: 0,
        proto: ip.proto,
        csum_off: 0,
        echo: false,
    };
    // The error goes to the quoted packet's source.
    if pkt.daddr != quote.saddr {
        return None;
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => {
            // RFC 792: the quote holds at least 8 bytes of the L4 header.
            if later_fragment || l4_off + 8 > end {
                return None;
            }
            let l4: *const [u8; 8] = ptr_at(ctx, l4_off).ok()?;
            // SAFETY: inside the packet (ptr_at).
            let l4 = unsafe { *l4 };
            if ip.proto == PROTO_ICMP {
                // Echo only: errors are not quoted by errors, and other
                // ICMP is tracked without identifier (below).
                if l4[0] == ICMP_ECHO_REQUEST || l4[0] == ICMP_ECHO_REPLY {
                    let id = u16::from_ne_bytes([l4[4], l4[5]]);
                    quote.sport = id;
                    quote.dport = id;
                    quote.echo = true;
                    quote.csum_off = l4_off + 2;
                }
            } else {
                quote.sport = u16::from_ne_bytes([l4[0], l4[1]]);
                quote.dport = u16::from_ne_bytes([l4[2], l4[3]]);
                if ip.proto == PROTO_UDP {
                    if l4[6] != 0 || l4[7] != 0 {
                        quote.csum_off = l4_off + 6;
                    }
                } else if l4_off + 18 <= end {
                    quote.csum_off = l4_off + 16;
                }
            }
        }
        // Protocols without ports: tracked by addresses (generic flows).
        _ => {}
    }
    let key = CtKey {
        saddr: quote.daddr,
        daddr: quote.saddr,
        sport: quote.dport,
        dport: quote.sport,
        proto: quote.proto,
        _pad: [0; 3],
    };
    let entry = conntrack::lookup(&key)?;
    Some((quote, entry))
}

/// RFC 1624 (eqn. 3): the checksum `check` after a 32-bit field changed
/// from `old` to `new`. All three as they sit in the packet: one's
/// complement sums are the same in either byte order.
#[inline(always)]
fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!check) + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// As [`csum_replace4`], for a 16-bit field.
#[inline(always)]
fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn load16(ctx: &TcContext, off: usize) -> Result<u16, StatIndex> {
    ctx.load::<u16>(off)
        .map_err(|_| StatIndex::DropRewriteFailed)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), StatIndex> {
    ctx.store(off, v, 0)
        .map_err(|_| StatIndex::DropRewriteFailed)
}

/// Rewrites the error with the flow's entry `e` (see the module's
/// documentation): quoted addresses, ports or identifier and their
/// checksums, the ICMP checksum, then the outer addresses.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    pkt: &Packet,
    q: &Quote,
    e: &CtEntry,
    bytes: u32,
) -> Result<(), StatIndex> {
    let icmp_csum_off = pkt.l4_off + 2;
    let mut icmp = load16(ctx, icmp_csum_off)?;
    let (saddr, daddr) = (e.daddr, e.saddr);

    // The quoted IPv4 header: addresses and their checksum.
    let ip_csum_off = q.ip_off + 10;
    let old_ip = load16(ctx, ip_csum_off)?;
    let new_ip = csum_replace4(csum_replace4(old_ip, q.saddr, saddr), q.daddr, daddr);
    icmp = csum_replace4(icmp, q.saddr, saddr);
    icmp = csum_replace4(icmp, q.daddr, daddr);
    icmp = csum_replace2(icmp, old_ip, new_ip);
    store(ctx, q.ip_off + 12, &saddr)?;
    store(ctx, q.ip_off + 16, &daddr)?;
    store(ctx, ip_csum_off, &new_ip)?;

    // The quoted L4 header: ports (or the echo identifier) and its
    // checksum, when quoted.
    let (sport, dport) = (e.dport, e.sport);
    let mut l4 = 0;
    if q.csum_off != 0 {
        l4 = load16(ctx, q.csum_off)?;
    }
    let old_l4 = l4;
    if q.echo {
        l4 = csum_replace2(l4, q.sport, sport);
        icmp = csum_replace2(icmp, q.sport, sport);
        store(ctx, q.l4_off + 4, &sport)?;
    } else if q.proto == PROTO_TCP || q.proto == PROTO_UDP {
        // Pseudo header and ports.
        l4 = csum_replace4(l4, q.saddr, saddr);
        l4 = csum_replace4(l4, q.daddr, daddr);
        l4 = csum_replace2(l4, q.sport, sport);
        l4 = csum_replace2(l4, q.dport, dport);
        icmp = csum_replace2(icmp, q.sport, sport);
        icmp = csum_replace2(icmp, q.dport, dport);
        store(ctx, q.l4_off, &sport)?;
        store(ctx, q.l4_off + 2, &dport)?;
        // A UDP checksum that comes out 0 is sent as 0xffff (0 is "none").
        if q.proto == PROTO_UDP && l4 == 0 {
            l4 = 0xffff;
        }
    }
    if q.csum_off != 0 {
        icmp = csum_replace2(icmp, old_l4, l4);
        store(ctx, q.csum_off, &l4)?;
    }
    store(ctx, icmp_csum_off, &icmp)?;

    // The outer header.
    csum::set_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, e.daddr)?;
    if pkt.saddr == q.daddr {
        csum::set_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, e.saddr)?;
    }
    count(StatIndex::IcmpError, bytes);
    Ok(())
}

/// Marks the packet (`__sk_buff.cb[0]`, which the kernel keeps across tail
/// calls) as already seen by endpoint_icmp_error.
#[inline(always)]
pub fn mark_revisit(ctx: &TcContext) {
    // SAFETY: the program's context; TC programs may write cb.
    unsafe { (*ctx.skb.skb).cb[0] = REVISIT_MARK };
}

/// Whether endpoint_icmp_error sent this packet back (the mark is then
/// cleared, so that nothing downstream reads it).
#[inline(always)]
pub fn take_revisit_mark(ctx: &TcContext) -> bool {
    // SAFETY: the program's context; TC programs may read and write cb.
    unsafe {
        if (*ctx.skb.skb).cb[0] != REVISIT_MARK {
            return false;
        }
        (*ctx.skb.skb).cb[0] = 0;
    }
    true
}

/// See [`mark_revisit`]: a value no packet carries by chance, almost (the
/// kernel does not clear cb before TC; a packet arriving with it skips
/// the translation and is handled as an error quoting no flow).
const REVISIT_MARK: u32 = 0x6e63_6963;

/// uplink_ingress: an error from the outside to the uplink address. Into
/// the container when it quotes one of its flows; anything else (the
/// host's own flows, no flow, a quote cut short) is the host's.
#[inline(always)]
pub fn from_outside(ctx: &TcContext, pkt: &Packet, bytes: u32) -> Result<i32, StatIndex> {
    let Some((q, entry_ptr)) = quoted_flow(ctx, pkt) else {
        return Ok(pass(StatIndex::Pass, bytes));
    };
    // SAFETY: a map value from conntrack::lookup, copied.
    let e = unsafe { *entry_ptr };
    if e.kind == CT_KIND_HOST || e.ifindex == 0 || pkt.ttl <= 1 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    let target = peer_target(e.daddr, e.ifindex)?;
    translate(ctx, pkt, &q, &e, bytes)?;
    forward::redirect_peer(ctx, pkt, &target)
}

/// endpoint_ingress: an error a container sends about a packet it
/// received through a translated flow (a port unreachable for a published
/// UDP port without listener, say). `Ok(None)` when it quotes none: the
/// caller goes on as for any packet (to the outside it is then dropped,
/// `drop_untranslatable`, never sent with the private address).
///
/// Only the container the quote was addressed to may report it (its own
/// address, anti-spoofed, is the key's source): it cannot reach another
/// container's flow this way.
#[inline(always)]
pub fn from_container(ctx: &TcContext, pkt: &Packet, bytes: u32) -> Result<Option<i32>, StatIndex> {
    let Some((q, entry_ptr)) = quoted_flow(ctx, pkt) else {
        return Ok(None);
    };
    if pkt.saddr != q.daddr {
        return Ok(None);
    }
    // SAFETY: a map value from conntrack::lookup, copied.
    let e = unsafe { *entry_ptr };
    if pkt.ttl <= 1 {
        return Ok(Some(pass(StatIndex::Pass, bytes)));
    }
    // Into a container (the client of a hairpin flow).
    if e.ifindex != 0 {
        let target = peer_target(e.daddr, e.ifindex)?;
        translate(ctx, pkt, &q, &e, bytes)?;
        return forward::redirect_peer(ctx, pkt, &target).map(Some);
    }
    // Out of a host interface: the route of the untranslated packet, as for the
    // flow's own packets (known_flow).
    let route = fib_route(ctx, pkt);
    match route {
        // Out of a host interface (fib_route checked it).
        Route::Direct { .. } | Route::Neigh { .. } => {
            translate(ctx, pkt, &q, &e, bytes)?;
            forward::redirect_out(ctx, pkt, &route).map(Some)
        }
        Route::TooBig => Ok(Some(pass(StatIndex::MtuPass, bytes))),
        // The kernel's; uplink_egress translates it on the way out.
        _ => Ok(Some(pass(StatIndex::FibPass, bytes))),
    }
}

/// uplink_egress: a container's error the kernel routed out untranslated.
/// `true` when it was translated.
#[inline(always)]
pub fn routed_out(ctx: &TcContext, pkt: &Packet, bytes: u32) -> Result<bool, StatIndex> {
    let Some((q, entry_ptr)) = quoted_flow(ctx, pkt) else {
        return Ok(false);
    };
    // SAFETY: a map value from conntrack::lookup, copied.
    let e = unsafe { *entry_ptr };
    if pkt.saddr != q.daddr || e.ifindex != 0 {
        return Ok(false);
    }
    translate(ctx, pkt, &q, &e, bytes)?;
    Ok(true)
}
