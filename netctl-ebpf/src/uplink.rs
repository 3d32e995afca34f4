//! The two hooks of every host interface (the uplink, a second LAN
//! interface, a VPN...: every link of the host namespace that is not
//! netctl's, see `netctl_common::host`).
//!
//! `uplink_ingress`: replies of SNAT flows and connections to published
//! ports, translated and sent straight into the container (fast path);
//! outside packets addressed to a container are refused; the rest is the
//! host's. A connection to a published port starts only with a packet that
//! opens a flow (for TCP a bare SYN): the SYN-ACK of a connection the host
//! itself opened from that port is the host's.
//!
//! `uplink_egress`: the slow path. What the kernel routed out of the uplink
//! with a container source (the fast path handed it over untranslated) gets
//! the same translation the fast path would have applied. It also sees the
//! host's own packets leaving: a UDP datagram whose source is a published
//! port gets a `host` flow, so that the peer's answers stay the host's
//! instead of being DNATed into the container (UDP has no SYN to tell a
//! reply from a new flow).

use aya_ebpf::programs::TcContext;
use netctl_common::{
    conntrack::{CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_KIND_HOST, CT_STATE_NEW},
    endpoint::NETWORK_FLAG_INTERNAL,
    stats::StatIndex,
};

use crate::{
    config, conntrack,
    forward::{self, network, peer_target},
    fragment, host, icmp_error,
    maps::ENDPOINTS,
    nat,
    parse::{parse, skb_ifindex, Packet, L4},
    stats::{count, pass},
    TC_OK,
};

/// Inlined into its entry point: a tail call is allowed only in a
/// function that returns `int`, which a `Result` subprogram does not.
#[inline(always)]
pub fn try_uplink_ingress(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return Ok(pass(reason, bytes)),
    };
    // Addressed to the host (any address of its interfaces, or a network's
    // gateway), or not ours at all.
    if !host::network_prefix(pkt.daddr).is_host() {
        // The outside, on any host interface, must not reach containers
        // directly, only through published ports (truncated or not).
        if ENDPOINTS.get_ptr(pkt.daddr).is_some() {
            return Err(StatIndex::DropUnsolicited);
        }
        return Ok(pass(StatIndex::Pass, bytes));
    }
    if pkt.l4 == L4::Truncated {
        return Ok(pass(StatIndex::Truncated, bytes));
    }
    // An ICMP error about one of our flows' packets (frag-needed for the
    // SNAT flow of a container, say): into the container; else the host's.
    if pkt.l4 == L4::IcmpError {
        return icmp_error::from_outside(ctx, &pkt, bytes);
    }

    // A later fragment of a translated datagram: its first fragment's
    // translation. Without an entry (none translated, or not seen yet) it
    // is the host's: it may be part of the host's own datagram.
    if pkt.l4 == L4::Fragment {
        let Some(frag) = fragment::lookup(&pkt) else {
            return Ok(pass(StatIndex::Pass, bytes));
        };
        if frag.ifindex == 0 || pkt.ttl <= 1 {
            return Ok(pass(StatIndex::Pass, bytes));
        }
        let target = peer_target(frag.daddr, frag.ifindex)?;
        fragment::apply(ctx, &pkt, &frag, bytes)?;
        return forward::redirect_peer(ctx, &pkt, &target);
    }

    // A known flow: the reply of an SNAT flow, or the next packet of a
    // connection to a published port.
    if pkt.has_tuple() {
        if let Some(entry_ptr) = conntrack::lookup_packet(&pkt) {
            // SAFETY: a map value from conntrack::lookup, copied.
            let entry = unsafe { *entry_ptr };
            // The answer of the host's own flow: the host's, untranslated.
            if entry.kind == CT_KIND_HOST {
                conntrack::seen(entry_ptr, &pkt, bytes);
                return Ok(pass(StatIndex::HostFlow, bytes));
            }
            // ifindex 0 would mean "to the uplink": not a flow arriving here.
            // TTL 1: the kernel's business (it would not forward it either).
            if entry.ifindex == 0 || pkt.ttl <= 1 {
                return Ok(pass(StatIndex::Pass, bytes));
            }
            let target = peer_target(entry.daddr, entry.ifindex)?;
            nat::translate(ctx, &pkt, entry_ptr, &entry, bytes)?;
            return forward::redirect_peer(ctx, &pkt, &target);
        }
    }

    // A new connection to a published port.
    if pkt.has_ports() {
        if let Some(target) = nat::portmap(pkt.daddr, pkt.dport, pkt.proto) {
            // Not the start of a connection, and no flow: the answer of one
            // the host opened from this port (its SYN-ACK), or a stray.
            if !pkt.opens_flow() {
                return Ok(pass(StatIndex::PublishedNotSyn, bytes));
            }
            let peer = peer_target(target.ip, target.ifindex)?;
            if peer.internal {
                return Err(StatIndex::DropInternal);
            }
            if pkt.ttl <= 1 {
                return Ok(pass(StatIndex::Pass, bytes));
            }
            let entry = nat::dnat(&pkt, &target, bytes)?;
            nat::apply(ctx, &pkt, entry)?;
            count(StatIndex::Dnat, bytes);
            return forward::redirect_peer(ctx, &pkt, &peer);
        }
    }
    Ok(pass(StatIndex::Pass, bytes))
}

/// Inlined into its entry point: a tail call is allowed only in a
/// function that returns `int`, which a `Result` subprogram does not.
#[inline(always)]
pub fn try_uplink_egress(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return Ok(pass(reason, bytes)),
    };
    if pkt.l4 == L4::Truncated {
        return Ok(pass(StatIndex::Truncated, bytes));
    }
    // Only a container source is translated (the fast path's packets
    // already carry the uplink address); the host's own are looked at for
    // host flows.
    // SAFETY: plain-data value copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(pkt.saddr).copied() }) else {
        return Ok(pass(host_packet(&pkt, bytes), bytes));
    };
    let cfg = config();

    // A container's ICMP error about one of its flows, routed by the kernel.
    if pkt.l4 == L4::IcmpError && icmp_error::routed_out(ctx, &pkt, bytes)? {
        return Ok(TC_OK);
    }

    // A later fragment of a translated datagram (the first one was
    // translated here or by the fast path). Without an entry: below,
    // nat::masquerade drops it (drop_fragment_out_of_order).
    if pkt.l4 == L4::Fragment {
        if let Some(frag) = fragment::lookup(&pkt) {
            // Delivered into a container (hairpin): never leaves here.
            if frag.ifindex != 0 {
                return Ok(pass(StatIndex::Pass, bytes));
            }
            fragment::apply(ctx, &pkt, &frag, bytes)?;
            return Ok(TC_OK);
        }
    }

    if pkt.has_tuple() {
        if let Some(entry_ptr) = conntrack::lookup_packet(&pkt) {
            // SAFETY: a map value from conntrack::lookup, copied.
            let entry = unsafe { *entry_ptr };
            // A flow delivered into a container (hairpin) never leaves here.
            if entry.ifindex != 0 {
                return Ok(pass(StatIndex::Pass, bytes));
            }
            nat::translate(ctx, &pkt, entry_ptr, &entry, bytes)?;
            return Ok(TC_OK);
        }
    }

    // A new flow the kernel routed out: the fast path's checks, then SNAT.
    let net = network(ep.network_id).ok_or(StatIndex::DropIsolated)?;
    if net.flags & NETWORK_FLAG_INTERNAL != 0 {
        return Err(StatIndex::DropInternal);
    }
    // The kernel already routed it (MACs, TTL): translate to this
    // interface's address and let it go. An interface without one has no
    // address to give: dropped rather than sent with the container's.
    let source = host::iface_address(&skb_ifindex(ctx)).ok_or(StatIndex::DropNoHostAddress)?;
    nat::set_snat_source(*source);
    Ok(nat::masquerade(ctx, &pkt, &cfg, ep.ifindex, bytes)?.unwrap_or(TC_OK))
}

/// A packet of the host leaving by the uplink: when it is UDP from a
/// published port, its flow is recorded as a `host` flow (both entries
/// naming the tuple untranslated), so that uplink_ingress leaves the
/// answers to the host. Never dropped: when the table is full the packet
/// leaves unrecorded. Returns the counter of the packet.
#[inline(always)]
fn host_packet(pkt: &Packet, bytes: u32) -> StatIndex {
    // A first fragment has its ports (L4::Udp) and records the flow like a
    // whole datagram; later fragments (L4::Fragment) have none.
    if pkt.l4 != L4::Udp || !nat::published(pkt.saddr, pkt.sport, pkt.proto) {
        return StatIndex::Pass;
    }
    // The entries are built in this CPU's SNAT_SEARCH slot (nat::scratch):
    // two of them on the stack take uplink_egress past its 512 bytes.
    let Some(s) = nat::scratch() else {
        return StatIndex::Pass;
    };
    s.original = conntrack::entry(
        (pkt.saddr, pkt.sport),
        (pkt.daddr, pkt.dport),
        CT_KIND_HOST,
        CT_DIR_ORIGINAL,
        0,
        CT_STATE_NEW,
        bytes,
    );
    let key = conntrack::key_of(pkt);
    s.reply_key = conntrack::reverse_key(&s.original, pkt.proto);
    if let Some(reply) = conntrack::lookup(&s.reply_key) {
        // SAFETY: a map value pointer from a successful lookup, read at once.
        if unsafe { (*reply).kind } != CT_KIND_HOST {
            // The reply of a connection to the published port, which the
            // fast path translated already.
            return StatIndex::Pass;
        }
        if let Some(original) = conntrack::lookup(&key) {
            conntrack::seen(original, pkt, bytes);
        }
        return StatIndex::HostFlow;
    }
    s.reply = conntrack::entry(
        (pkt.daddr, pkt.dport),
        (pkt.saddr, pkt.sport),
        CT_KIND_HOST,
        CT_DIR_REPLY,
        0,
        CT_STATE_NEW,
        bytes,
    );
    if !matches!(conntrack::claim(&s.reply_key, &s.reply), Ok(true)) {
        return StatIndex::Pass;
    }
    if conntrack::insert_original(&key, &s.original, &s.reply_key).is_err() {
        return StatIndex::Pass;
    }
    nat::new_flow_event(0, &key, &s.original);
    StatIndex::HostFlow
}
