//! `endpoint_ingress`: TC ingress of a container's host-side veth, so every
//! packet the container sends.
//!
//! Order: anti-spoofing (IPv6 dropped, ARP and IPv4 only from the
//! endpoint's own address and MAC), then known flows (conntrack), then the destination
//! decides: a container of the own network → straight into its namespace
//! (bpf_redirect_peer), the rest of the own subnet → the bridge; another
//! network → dropped; the uplink address or a gateway → published port
//! (hairpin) or the host; routed through the uplink → SNAT to the uplink
//! address and straight out of the uplink; anything else → the kernel.
//! What a destination outside the own subnet is (another network's
//! subnet, a gateway, neither) is one lookup in the LPM trie
//! `NETWORK_PREFIXES`, whatever the number of networks.
//!
//! The FIB is asked before anything is translated: when it has no answer
//! the fast path can use, the packet goes to the kernel *untranslated*, the
//! kernel routes it like any forwarded packet (ICMP errors, neighbour
//! resolution...), and `uplink_egress` translates it on the way out with
//! the same conntrack entry or SNAT function. A translated packet handed to
//! the kernel would instead be dropped as a martian (its source would be a
//! local address arriving on a veth).

use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use netctl_common::{
    config::Config,
    conntrack::{CtEntry, CT_KIND_HAIRPIN},
    endpoint::{EndpointInfo, NETWORK_FLAG_INTERNAL},
    fragment::FragEntry,
    maps::{TAIL_ENDPOINT_INGRESS, TAIL_ICMP_ERROR},
    portmap::PortTarget,
    stats::StatIndex,
};

use crate::{
    conntrack,
    forward::{self, fib_route, network, peer_target, Route},
    fragment,
    host::{network_prefix, Prefix},
    icmp_error,
    maps::{ENDPOINTS, TAIL_CALLS},
    nat::{self, NewFlow},
    parse::{classify_not_ipv4, parse, ptr_at, skb_ifindex, NotIpv4, Packet, L4},
    stats::{count, pass},
};

/// Inlined into its entry point: a tail call is allowed only in a
/// function that returns `int`, which a `Result` subprogram does not.
#[inline(always)]
pub fn try_endpoint_ingress(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(StatIndex::NotIpv4) => return not_ipv4(ctx, bytes),
        // Truncated: the kernel's business, untouched.
        Err(reason) => return Ok(pass(reason, bytes)),
    };

    // Anti-spoofing: the source must be the endpoint of this very veth,
    // with its own MAC.
    // SAFETY: plain-data value copied out at once.
    let ep = unsafe { ENDPOINTS.get(pkt.saddr).copied() }.ok_or(StatIndex::DropSpoofed)?;
    if ep.ifindex != skb_ifindex(ctx) || ep.mac != pkt.eth_src {
        return Err(StatIndex::DropSpoofed);
    }
    if pkt.l4 == L4::Truncated {
        return truncated(&pkt, &ep, bytes);
    }
    // Read in place (a 32-byte copy takes this program past its 512 bytes
    // of stack); slot 0 of an array always exists.
    let cfg = crate::config_ref().ok_or(StatIndex::DropRewriteFailed)?;

    // Two kinds of packet are taken by a program of their own,
    // endpoint_icmp_error, by tail call (no room for them on this
    // program's stack):
    // - an ICMP error about a packet of a translated flow (the container's
    //   port unreachable for a published UDP port, say): translated like
    //   the flow;
    // - a later fragment of a datagram whose first fragment was
    //   translated: the same translation (see the `fragment` module).
    // One that program cannot translate comes back here, marked, and goes
    // on as any packet below: on its network or to the host as it is,
    // never out with the private address (a later fragment that would
    // need translation is dropped by nat::masquerade). An empty slot
    // returns here too: then the packet goes on untranslated.
    if matches!(pkt.l4, L4::IcmpError | L4::Fragment) && !icmp_error::take_revisit_mark(ctx) {
        // SAFETY: the program's own context; returns only on failure.
        unsafe { TAIL_CALLS.tail_call(ctx, TAIL_ICMP_ERROR) };
    }

    // A known flow first: egress SNAT, the reply of a DNAT flow, hairpin in
    // either direction.
    if pkt.has_tuple() {
        if let Some(entry) = conntrack::lookup_packet(&pkt) {
            return known_flow(ctx, &pkt, entry, bytes);
        }
    }

    // An endpoint whose network is missing: fail closed.
    let net = network(ep.network_id).ok_or(StatIndex::DropIsolated)?;
    let internal = net.flags & NETWORK_FLAG_INTERNAL != 0;

    // Multicast and broadcast stay on the bridge.
    if pkt.daddr.to_ne_bytes()[0] >= 224 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    // The own subnet: a peer container straight, the rest by the bridge.
    // The gateway is in the subnet but is a host address, with maybe a
    // published port: below.
    let own_gateway = pkt.daddr == net.gateway;
    if !own_gateway && pkt.daddr & net.mask == net.subnet & net.mask {
        return same_network(ctx, &pkt, &ep, bytes);
    }
    // Another network's container.
    // SAFETY: plain-data value copied out at once.
    if let Some(peer) = unsafe { ENDPOINTS.get(pkt.daddr).copied() } {
        if peer.network_id != ep.network_id {
            return Err(StatIndex::DropIsolated);
        }
        return Ok(pass(StatIndex::Pass, bytes));
    }

    // The host addresses with published ports: the addresses of the host's
    // interfaces and the networks' gateways; any other address of another
    // network's subnet is isolated.
    let host = own_gateway
        || match network_prefix(pkt.daddr) {
            Prefix::Gateway | Prefix::Host => true,
            Prefix::Subnet => return Err(StatIndex::DropIsolated),
            Prefix::None => false,
        };
    if host {
        return to_host(ctx, &pkt, &ep, internal, own_gateway, cfg, bytes);
    }
    if internal {
        return Err(StatIndex::DropInternal);
    }
    let route = fib_route(ctx, &pkt);
    match route {
        // Out of a host interface (fib_route checked it and noted its
        // address in SNAT_SEARCH): SNAT to that address, as MASQUERADE does.
        Route::Direct { .. } | Route::Neigh { .. } => {
            to_outside(ctx, &pkt, &ep, cfg, &route, bytes)
        }
        Route::TooBig => Ok(pass(StatIndex::MtuPass, bytes)),
        // Everything else is the kernel's, untranslated: another host
        // address, no route, unreachable, forwarding disabled, fragmentation
        // needed, or an interface that is not a host interface with an
        // address (fib_route). What the kernel routes out of a host
        // interface, uplink_egress there translates (or drops,
        // drop_no_host_address).
        Route::Kernel => Ok(pass(StatIndex::FibPass, bytes)),
    }
}

/// `endpoint_icmp_error`: a container's ICMP error or later fragment
/// (endpoint_ingress checked its source already). Translated when it
/// quotes a flow of the container's, or belongs to a datagram whose first
/// fragment was translated; otherwise back to endpoint_ingress, marked so
/// that it goes on as any packet there.
/// Inlined into its entry point: a tail call is allowed only in a
/// function that returns `int`, which a `Result` subprogram does not.
#[inline(always)]
pub fn try_endpoint_icmp_error(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return Ok(pass(reason, bytes)),
    };
    if pkt.l4 == L4::IcmpError {
        if let Some(verdict) = icmp_error::from_container(ctx, &pkt, bytes)? {
            return Ok(verdict);
        }
    }
    if pkt.l4 == L4::Fragment {
        if let Some(frag) = fragment::lookup(&pkt) {
            return known_fragment(ctx, &pkt, &frag, bytes);
        }
    }
    icmp_error::mark_revisit(ctx);
    // SAFETY: the program's own context; returns only on failure.
    unsafe { TAIL_CALLS.tail_call(ctx, TAIL_ENDPOINT_INGRESS) };
    // endpoint_ingress missing from its slot: nothing to decide with.
    Err(StatIndex::DropUntranslatable)
}

/// A container's frame that is not IPv4. Networks have no IPv6, so none
/// leaves a container (a router advertisement would give the host a
/// default route through it). An ARP packet must come from the endpoint of
/// this very veth, with its own MAC as Ethernet source and sender MAC and
/// its own address as sender: otherwise it would take over another
/// container's address in the host's neighbour table and the bridge's
/// forwarding table. Other EtherTypes pass, as before.
#[inline(always)]
fn not_ipv4(ctx: &TcContext, bytes: u32) -> Result<i32, StatIndex> {
    match classify_not_ipv4(ctx) {
        NotIpv4::Ipv6 => Err(StatIndex::DropIpv6),
        NotIpv4::BadArp => Err(StatIndex::DropArpSpoofed),
        NotIpv4::Arp(sender) => {
            // SAFETY: plain-data value copied out at once.
            let ep =
                unsafe { ENDPOINTS.get(sender.spa).copied() }.ok_or(StatIndex::DropArpSpoofed)?;
            if ep.ifindex != skb_ifindex(ctx) || ep.mac != sender.eth_src || ep.mac != sender.sha {
                return Err(StatIndex::DropArpSpoofed);
            }
            Ok(pass(StatIndex::NotIpv4, bytes))
        }
        NotIpv4::Other => Ok(pass(StatIndex::NotIpv4, bytes)),
    }
}

/// A short L4 header: nothing to translate, but isolation still holds. It
/// may stay on its own network (the receiving kernel drops it there),
/// nowhere else: passed to the kernel it would be routed to another
/// network or, from an `--internal` one, out, with its private source.
#[inline(always)]
fn truncated(pkt: &Packet, ep: &EndpointInfo, bytes: u32) -> Result<i32, StatIndex> {
    let net = network(ep.network_id).ok_or(StatIndex::DropIsolated)?;
    let multicast = pkt.daddr.to_ne_bytes()[0] >= 224;
    if multicast || pkt.daddr & net.mask == net.subnet & net.mask {
        return Ok(pass(StatIndex::Truncated, bytes));
    }
    if net.flags & NETWORK_FLAG_INTERNAL != 0 {
        return Err(StatIndex::DropInternal);
    }
    Err(StatIndex::DropIsolated)
}

/// A container's packet to its own subnet, not its gateway. To a container
/// of the same network, addressed to that container's MAC (as the sender's
/// neighbour resolution gets it for an on-link address): straight into the
/// peer's namespace with bpf_redirect_peer on the peer's host-side veth,
/// the frame as the bridge would have delivered it (a switch: MACs and TTL
/// untouched, so nothing to rewrite). The bridge never sees it, so neither
/// its forwarding table nor a tcpdump on it. Everything else stays on the
/// bridge: an address nobody has, the subnet's broadcast, a frame to
/// another MAC (the gateway's, say: the host routes it), and ARP, which
/// keeps the bridge's and the containers' neighbour state as before.
/// Isolation is unchanged: the own subnet belongs to the own network, and
/// the peer's entry must say so.
#[inline(always)]
fn same_network(
    ctx: &TcContext,
    pkt: &Packet,
    ep: &EndpointInfo,
    bytes: u32,
) -> Result<i32, StatIndex> {
    // The peer and the frame's destination MAC are read in place, through
    // pointers: copies of them take endpoint_ingress past its 512 bytes
    // of stack.
    if let (Some(peer), Ok(dst_mac)) = (ENDPOINTS.get_ptr(pkt.daddr), ptr_at::<[u8; 6]>(ctx, 0)) {
        // SAFETY: a map value and a bounds-checked packet pointer, read at
        // once (nothing has rewritten the packet yet).
        let (network_id, ifindex, same_mac) =
            unsafe { ((*peer).network_id, (*peer).ifindex, *dst_mac == (*peer).mac) };
        if network_id == ep.network_id && ifindex != ep.ifindex && same_mac {
            count(StatIndex::SameNetwork, bytes);
            // SAFETY: a helper taking plain integers. Valid on this
            // ingress hook; the kernel drops the packet if the peer's
            // veth is gone or down.
            return Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32);
        }
    }
    Ok(pass(StatIndex::Pass, bytes))
}

/// A packet of a tracked flow: rewrite with the entry, deliver into the
/// entry's container or out of a host interface.
#[inline(always)]
fn known_flow(
    ctx: &TcContext,
    pkt: &Packet,
    entry_ptr: *mut CtEntry,
    bytes: u32,
) -> Result<i32, StatIndex> {
    // SAFETY: a map value from conntrack::lookup, read in place: a 56-byte
    // copy takes endpoint_ingress past its 512 bytes of stack. The fields
    // read (addresses, ports, delivery) are never rewritten by another
    // CPU; `seen` updates only counters and TCP state.
    let entry = unsafe { &*entry_ptr };
    // TTL expiring here: the kernel's forwarding sends the ICMP time
    // exceeded (traceroute's first hop); untranslated, as it is.
    if pkt.ttl <= 1 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    if entry.ifindex != 0 {
        let target = peer_target(entry.daddr, entry.ifindex)?;
        nat::translate(ctx, pkt, entry_ptr, entry, bytes)?;
        return forward::redirect_peer(ctx, pkt, &target);
    }
    let route = fib_route(ctx, pkt);
    match route {
        // Out of a host interface (fib_route checked it).
        Route::Direct { .. } | Route::Neigh { .. } => {
            nat::translate(ctx, pkt, entry_ptr, entry, bytes)?;
            forward::redirect_out(ctx, pkt, &route)
        }
        Route::TooBig => Ok(pass(StatIndex::MtuPass, bytes)),
        // Untranslated to the kernel: uplink_egress applies this same entry
        // if the kernel routes it out of the uplink.
        _ => Ok(pass(StatIndex::FibPass, bytes)),
    }
}

/// A later fragment of a translated datagram: delivered as
/// [`known_flow`] delivers its first fragment.
#[inline(always)]
fn known_fragment(
    ctx: &TcContext,
    pkt: &Packet,
    frag: &FragEntry,
    bytes: u32,
) -> Result<i32, StatIndex> {
    if pkt.ttl <= 1 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    if frag.ifindex != 0 {
        let target = peer_target(frag.daddr, frag.ifindex)?;
        fragment::apply(ctx, pkt, frag, bytes)?;
        return forward::redirect_peer(ctx, pkt, &target);
    }
    let route = fib_route(ctx, pkt);
    match route {
        // Out of a host interface (fib_route checked it).
        Route::Direct { .. } | Route::Neigh { .. } => {
            fragment::apply(ctx, pkt, frag, bytes)?;
            forward::redirect_out(ctx, pkt, &route)
        }
        // Untranslated to the kernel: uplink_egress finds the same entry.
        _ => Ok(pass(StatIndex::FibPass, bytes)),
    }
}

/// To a host address: a published port there is reached by hairpin (a
/// flow that starts with a packet that opens one), anything else is the
/// host's (DNS on the gateway, say).
#[inline(always)]
fn to_host(
    ctx: &TcContext,
    pkt: &Packet,
    ep: &EndpointInfo,
    internal: bool,
    own_gateway: bool,
    cfg: &Config,
    bytes: u32,
) -> Result<i32, StatIndex> {
    let mut reason = StatIndex::Pass;
    if pkt.has_ports() {
        if let Some(target) = nat::portmap(pkt.daddr, pkt.dport, pkt.proto) {
            // No flow, and not the start of one: the answer of a connection
            // the host opened from this port (a SYN-ACK) is the host's.
            if pkt.opens_flow() {
                return hairpin(ctx, pkt, ep, internal, &target, cfg, bytes);
            }
            reason = StatIndex::PublishedNotSyn;
        }
    }
    // An internal network reaches its own gateway, no other host address.
    if internal && !own_gateway {
        return Err(StatIndex::DropInternal);
    }
    Ok(pass(reason, bytes))
}

/// Container → host address:published port → container: DNAT to the target
/// and SNAT to the target's gateway, so that the reply comes back through
/// the target's veth (this program again) instead of going straight to the
/// client, which would not know the target's address.
#[inline(always)]
fn hairpin(
    ctx: &TcContext,
    pkt: &Packet,
    ep: &EndpointInfo,
    internal: bool,
    target: &PortTarget,
    cfg: &Config,
    bytes: u32,
) -> Result<i32, StatIndex> {
    let peer = peer_target(target.ip, target.ifindex)?;
    // Internal networks have no published ports (the controller refuses
    // them; this holds even if PORTMAP says otherwise): nothing reaches them
    // through one, and they reach none.
    if internal || peer.internal {
        return Err(StatIndex::DropInternal);
    }
    if pkt.ttl <= 1 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    let entry = nat::new_flow(
        pkt,
        cfg,
        &NewFlow {
            kind: CT_KIND_HAIRPIN,
            nat_ip: peer.gateway,
            dst_ip: target.ip,
            dst_port: target.port,
            out_ifindex: target.ifindex,
            back_ifindex: ep.ifindex,
        },
        bytes,
    )?;
    nat::apply(ctx, pkt, entry)?;
    count(StatIndex::Hairpin, bytes);
    forward::redirect_peer(ctx, pkt, &peer)
}

/// A new flow to the outside, routed through a host interface: SNAT to
/// that interface's address (noted in SNAT_SEARCH by fib_route), then out.
#[inline(always)]
fn to_outside(
    ctx: &TcContext,
    pkt: &Packet,
    ep: &EndpointInfo,
    cfg: &Config,
    route: &Route,
    bytes: u32,
) -> Result<i32, StatIndex> {
    // TTL expiring here: the kernel sends the ICMP time exceeded.
    if pkt.ttl <= 1 {
        return Ok(pass(StatIndex::Pass, bytes));
    }
    match nat::masquerade(ctx, pkt, cfg, ep.ifindex, bytes)? {
        Some(verdict) => Ok(verdict),
        None => forward::redirect_out(ctx, pkt, route),
    }
}
