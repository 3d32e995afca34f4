//! Delivery of translated packets without the kernel's stack: into a
//! container with `bpf_redirect_peer`, out of the uplink with
//! `bpf_fib_lookup` + `bpf_redirect` / `bpf_redirect_neigh`. Forwarding
//! decrements the TTL, as the kernel's forwarding would.

use core::mem;

use aya_ebpf::bindings::bpf_check_mtu_flags::BPF_MTU_CHK_SEGS;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netctl_common::{
    endpoint::{NetworkInfo, NETWORK_FLAG_INTERNAL},
    stats::StatIndex,
};

use crate::{
    csum,
    maps::{ENDPOINTS, HOST_IFACES, NETWORKS},
    parse::{skb_ifindex, Packet},
    stats::count,
};

const AF_INET: u8 = 2;

/// Where and how a packet enters a container.
#[derive(Clone, Copy)]
pub struct PeerTarget {
    pub ifindex: u32,
    /// The container's MAC (L2 destination) and its bridge's (L2 source).
    pub mac: [u8; 6],
    pub bridge_mac: [u8; 6],
    /// The container's gateway (its bridge address): the source of hairpin
    /// traffic into it.
    pub gateway: u32,
    pub internal: bool,
}

/// The container at `ip`, to be entered through its veth `ifindex`. Looked
/// up before any rewrite: a flow whose container is gone is dropped
/// untouched.
#[inline(always)]
pub fn peer_target(ip: u32, ifindex: u32) -> Result<PeerTarget, StatIndex> {
    // SAFETY: plain-data values copied out at once.
    let ep = unsafe { ENDPOINTS.get(ip).copied() }.ok_or(StatIndex::DropUnsolicited)?;
    let net = network(ep.network_id).ok_or(StatIndex::DropUnsolicited)?;
    Ok(PeerTarget {
        ifindex,
        mac: ep.mac,
        bridge_mac: net.bridge_mac,
        gateway: net.gateway,
        internal: net.flags & NETWORK_FLAG_INTERNAL != 0,
    })
}

#[inline(always)]
pub fn network(id: u32) -> Option<NetworkInfo> {
    // SAFETY: plain-data value copied out at once.
    unsafe { NETWORKS.get(id).copied() }
}

/// Sends the (already translated) packet into the container: MACs of the
/// bridge → container hop, TTL, then the peer of the host-side veth.
/// Only valid on an ingress hook (where the kernel honours redirect_peer).
#[inline(always)]
pub fn redirect_peer(ctx: &TcContext, pkt: &Packet, target: &PeerTarget) -> Result<i32, StatIndex> {
    csum::set_macs(ctx, target.mac, target.bridge_mac)?;
    csum::dec_ttl(ctx, pkt)?;
    count(StatIndex::RedirectPeer, ctx.len());
    // SAFETY: a helper taking plain integers.
    Ok(unsafe { bpf_redirect_peer(target.ifindex, 0) } as i32)
}

/// The kernel's routing decision for a packet arriving on this device.
#[derive(Clone, Copy)]
pub enum Route {
    /// Out of `ifindex` to a resolved next hop.
    Direct {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of `ifindex` to `nexthop`, whose MAC the kernel must resolve.
    Neigh { ifindex: u32, nexthop: u32 },
    /// Out of an interface whose MTU the packet (or one of its GSO
    /// segments) exceeds: the kernel's forwarding must send the sender
    /// "fragmentation needed" (DF) or fragment it, on the untranslated
    /// packet, as it does under iptables.
    TooBig,
    /// No answer the fast path can use (a local address, no route,
    /// unreachable, forwarding disabled, fragmentation needed...): the
    /// kernel decides.
    Kernel,
}

/// `bpf_fib_lookup` for the packet's original tuple, as the kernel's
/// forwarding would do it (input interface = this device, fib rules
/// honoured), before any rewrite: the route of the untranslated packet is
/// the one the kernel would have used (it translates in POSTROUTING).
///
/// The 64-byte parameter block lives on the stack (512 bytes in all), zeroed
/// first: the verifier rejects passing uninitialised stack to a helper.
#[inline(always)]
pub fn fib_route(ctx: &TcContext, pkt: &Packet) -> Route {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers).
    let mut params: FibParams = unsafe { mem::zeroed() };
    let route = match fib_lookup(ctx, pkt, &mut params, 0) {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Direct {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::Neigh {
            ifindex: params.ifindex,
            // SAFETY: the kernel wrote the next hop (gateway, or the
            // destination itself on a connected route) into ipv4_dst.
            nexthop: unsafe { params.__bindgen_anon_4.ipv4_dst },
        },
        // Checked by the lookup itself (SUCCESS only, whole skb).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Route::TooBig,
        _ => return Route::Kernel,
    };
    // The fast path leaves only by a host interface with an address to
    // translate to (HOST_IFACES), which a new flow is SNATed to
    // (nat::set_snat_source); anything else (an interface without an address, say)
    // is the kernel's. Keyed by the params' own ifindex: endpoint_ingress
    // has no stack left for a copy (hence the borrow, not a value).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let Some(source) = HOST_IFACES.get_ptr(&params.ifindex) else {
        return Route::Kernel;
    };
    // SAFETY: a map value pointer from a successful lookup, read at once.
    crate::nat::set_snat_source(unsafe { *source });
    // The egress MTU: bpf_fib_lookup checks it (tot_len 0: the skb
    // against the device) on SUCCESS only, and takes any GSO packet as
    // fitting; bpf_check_mtu with BPF_MTU_CHK_SEGS checks each GSO segment
    // too, whatever the neighbour state. Its in/out length is
    // params.ifindex, read above: a u32 already on the stack (endpoint_ingress
    // has ~16 bytes of its 512 left), zeroed as the SEGS flag requires.
    params.ifindex = 0;
    // SAFETY: ctx is the program's skb; the pointer is a u32 on our stack.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            match route {
                Route::Direct { ifindex, .. } | Route::Neigh { ifindex, .. } => ifindex,
                _ => 0,
            },
            &mut params.ifindex,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        )
    };
    // Negative: the device is gone (or bad arguments): the kernel decides.
    match rc {
        0 => route,
        1.. => Route::TooBig,
        _ => Route::Kernel,
    }
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, pkt: &Packet, params: &mut FibParams, flags: u32) -> u32 {
    params.family = AF_INET;
    params.l4_protocol = pkt.proto;
    params.sport = pkt.sport;
    params.dport = pkt.dport;
    // tot_len 0: the kernel checks the skb against the output MTU itself.
    params.__bindgen_anon_1.tot_len = 0;
    params.ifindex = skb_ifindex(ctx);
    params.__bindgen_anon_2.tos = pkt.tos;
    params.__bindgen_anon_3.ipv4_src = pkt.saddr;
    params.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    // SAFETY: ctx is the program's skb; params a valid, sized block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            params,
            mem::size_of::<FibParams>() as i32,
            flags,
        )
    };
    // Negative: bad arguments; no lookup happened.
    if rc < 0 {
        u32::MAX
    } else {
        rc as u32
    }
}

/// Sends the (already translated) packet out of the route's interface.
/// `Route::Kernel` never gets here (the callers hand it to the kernel
/// before translating).
#[inline(always)]
pub fn redirect_out(ctx: &TcContext, pkt: &Packet, route: &Route) -> Result<i32, StatIndex> {
    csum::dec_ttl(ctx, pkt)?;
    match *route {
        Route::Direct {
            ifindex,
            smac,
            dmac,
        } => {
            csum::set_macs(ctx, dmac, smac)?;
            count(StatIndex::RedirectUplink, ctx.len());
            // SAFETY: a helper taking plain integers.
            Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
        }
        Route::Neigh { ifindex, nexthop } => {
            let mut nh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                // SAFETY: an all-zero union is valid; ipv4_nh set below.
                __bindgen_anon_1: unsafe { mem::zeroed() },
            };
            nh.__bindgen_anon_1.ipv4_nh = nexthop;
            count(StatIndex::RedirectUplink, ctx.len());
            // SAFETY: nh is a valid, sized block on the stack.
            Ok(unsafe {
                bpf_redirect_neigh(
                    ifindex,
                    &mut nh,
                    mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            } as i32)
        }
        Route::Kernel | Route::TooBig => Err(StatIndex::DropRewriteFailed),
    }
}
