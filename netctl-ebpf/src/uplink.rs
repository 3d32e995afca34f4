//! The uplink's two hooks.
//!
//! `uplink_ingress`: replies of SNAT flows and connections to published
//! ports, translated and sent straight into the container (fast path);
//! outside packets addressed to a container are refused; the rest is the
//! host's.
//!
//! `uplink_egress`: the slow path. What the kernel routed out of the uplink
//! with a container source (the fast path handed it over untranslated) gets
//! the same translation the fast path would have applied.

use aya_ebpf::programs::TcContext;
use netctl_common::{endpoint::NETWORK_FLAG_INTERNAL, stats::StatIndex};

use crate::{
    config, conntrack,
    forward::{self, network, peer_target},
    maps::ENDPOINTS,
    nat,
    parse::{parse, L4},
    stats::{count, pass},
    TC_OK,
};

pub fn try_uplink_ingress(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return Ok(pass(reason, bytes)),
    };
    let cfg = config();

    if cfg.uplink_ip == 0 || pkt.daddr != cfg.uplink_ip {
        // The outside must not reach containers directly, only through
        // published ports (truncated or not).
        if ENDPOINTS.get_ptr(pkt.daddr).is_some() {
            return Err(StatIndex::DropUnsolicited);
        }
        return Ok(pass(StatIndex::Pass, bytes));
    }
    if pkt.l4 == L4::Truncated {
        return Ok(pass(StatIndex::Truncated, bytes));
    }

    // A known flow: the reply of an SNAT flow, or the next packet of a
    // connection to a published port.
    if pkt.has_tuple() {
        if let Some(entry_ptr) = conntrack::lookup_packet(&pkt) {
            // SAFETY: a map value from conntrack::lookup, copied.
            let entry = unsafe { *entry_ptr };
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
            if pkt.fragment {
                return Err(StatIndex::DropFragment);
            }
            let peer = peer_target(target.ip, target.ifindex)?;
            if peer.internal {
                return Err(StatIndex::DropInternal);
            }
            if pkt.ttl <= 1 {
                return Ok(pass(StatIndex::Pass, bytes));
            }
            let entry = nat::dnat(&pkt, &target, bytes)?;
            nat::log_new_flow(ctx, &cfg, "dnat", &pkt, &entry);
            nat::apply(ctx, &pkt, &entry)?;
            count(StatIndex::Dnat, bytes);
            return forward::redirect_peer(ctx, &pkt, &peer);
        }
    }
    Ok(pass(StatIndex::Pass, bytes))
}

pub fn try_uplink_egress(ctx: &TcContext) -> Result<i32, StatIndex> {
    let bytes = ctx.len();
    let pkt = match parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return Ok(pass(reason, bytes)),
    };
    if pkt.l4 == L4::Truncated {
        return Ok(pass(StatIndex::Truncated, bytes));
    }
    // Only a container source is ours (the fast path's packets already
    // carry the uplink address).
    // SAFETY: plain-data value copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(pkt.saddr).copied() }) else {
        return Ok(pass(StatIndex::Pass, bytes));
    };
    let cfg = config();

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
    // The kernel already routed it (MACs, TTL): translate and let it go.
    Ok(nat::masquerade(ctx, &pkt, &cfg, ep.ifindex, bytes)?.unwrap_or(TC_OK))
}
