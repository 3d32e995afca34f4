//! Flow events for `netctl trace` (see `netctl_common::event`): a new
//! translated flow, a drop, a flow's end, each one `FlowEvent` in the
//! `FLOW_EVENTS` ring buffer, and only while a listener's lease in
//! `FLOW_LISTENER` runs. Nobody listening costs one array lookup where an
//! event would be emitted; the packets of known flows never get here.
//!
//! Each emitter is a subprogram of its own (`#[inline(never)]`), so that
//! the callers' frames do not grow: endpoint_ingress is at the 512-byte
//! stack limit it shares with the subprograms it calls, and its frame
//! (448 bytes rounded) leaves 64 for them. The event is written in the
//! ring buffer's reservation itself, field by field, never built on the
//! stack; the emitters take pointers (the packet's `Packet` on the
//! caller's stack, conntrack entries in their map) and plain integers.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netctl_common::{
    conntrack::{CtEntry, CtKey, CT_DIR_REPLY},
    event::{FlowEvent, Tuple, EVENT_DROP},
    stats::StatIndex,
};

use crate::{
    conntrack::now,
    maps::{FLOW_EVENTS, FLOW_LISTENER},
    parse::{IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, PROTO_TCP, PROTO_UDP},
    stats::count,
};

/// `FlowEvent::program` of events that are not drops.
pub const PROGRAM_NONE: u8 = 0xff;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// Offsets in an Ethernet/IPv4 ARP frame: the sender's and the target's
/// protocol addresses.
const ARP_SPA_OFF: usize = IP_OFF + 14;
const ARP_TPA_OFF: usize = IP_OFF + 24;

/// Someone listens: the lease in `FLOW_LISTENER` has not run out.
#[inline(always)]
fn listening() -> bool {
    match FLOW_LISTENER.get(0) {
        Some(until) => *until != 0 && now() < *until,
        None => false,
    }
}

/// A drop, from the frame as it is (re-read here: the programs keep their
/// `Packet` to themselves). IPv4: addresses, protocol, and ports when it
/// has them; ARP: the sender's and target's addresses; anything else: its
/// EtherType only.
#[inline(never)]
pub fn drop(skb: *mut __sk_buff, program: u8, reason: StatIndex) -> u32 {
    if !listening() {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let ethertype = u16::from_be(ctx.load::<u16>(12).unwrap_or(0));
    let mut original = Tuple::default();
    let mut proto = 0u8;
    if ethertype == ETH_P_IP {
        original.saddr = ctx.load(IP_SADDR_OFF).unwrap_or(0);
        original.daddr = ctx.load(IP_DADDR_OFF).unwrap_or(0);
        proto = ctx.load(IP_OFF + 9).unwrap_or(0);
        let ihl = usize::from(ctx.load::<u8>(IP_OFF).unwrap_or(0) & 0x0f);
        let fragment_offset = u16::from_be(ctx.load::<u16>(IP_OFF + 6).unwrap_or(0)) & 0x1fff;
        if (proto == PROTO_TCP || proto == PROTO_UDP) && fragment_offset == 0 && ihl >= 5 {
            let l4 = IP_OFF + ihl * 4;
            original.sport = ctx.load(l4).unwrap_or(0);
            original.dport = ctx.load(l4 + 2).unwrap_or(0);
        }
    } else if ethertype == ETH_P_ARP {
        // Not the IPv4 header's offsets (the old trace read those and
        // printed an ARP's hardware address bytes as its addresses).
        original.saddr = ctx.load(ARP_SPA_OFF).unwrap_or(0);
        original.daddr = ctx.load(ARP_TPA_OFF).unwrap_or(0);
    }
    let Some(mut slot) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(StatIndex::EventLost, 0);
        return 0;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: the reservation is a whole FlowEvent, written field by field
    // (every byte, so nothing of the ring's old contents leaks out).
    unsafe {
        (*e).time_ns = now();
        (*e).kind = EVENT_DROP;
        (*e).proto = proto;
        (*e).ct_kind = 0;
        (*e).program = program;
        (*e).reason = reason as u16;
        (*e).ethertype = ethertype;
        (*e).ifindex = (*skb).ifindex;
        (*e).original = original;
        (*e).translated = Tuple::default();
        (*e)._pad = 0;
    }
    slot.submit(0);
    0
}

/// A flow event of kind `kind` (`EVENT_NEW`, `EVENT_END`) with `reason`
/// (`END_*`, 0 for new flows) about the flow of `entry`, one of its two
/// entries, whose key is `(saddr, daddr, sport, dport)`. The event names
/// the original direction: for an original entry, the key and the entry's
/// rewrite; for a reply entry, both turned around.
#[inline(always)]
fn flow(kind: u8, reason: u16, ifindex: u32, key: Tuple, proto: u8, entry: &CtEntry) {
    let Some(mut slot) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(StatIndex::EventLost, 0);
        return;
    };
    let rewrite = Tuple {
        saddr: entry.saddr,
        daddr: entry.daddr,
        sport: entry.sport,
        dport: entry.dport,
    };
    let (original, translated) = if entry.direction == CT_DIR_REPLY {
        (turned(rewrite), turned(key))
    } else {
        (key, rewrite)
    };
    let e = slot.as_mut_ptr();
    // SAFETY: as in `drop`.
    unsafe {
        (*e).time_ns = now();
        (*e).kind = kind;
        (*e).proto = proto;
        (*e).ct_kind = entry.kind;
        (*e).program = PROGRAM_NONE;
        (*e).reason = reason;
        (*e).ethertype = ETH_P_IP;
        (*e).ifindex = ifindex;
        (*e).original = original;
        (*e).translated = translated;
        (*e)._pad = 0;
    }
    slot.submit(0);
}

#[inline(always)]
fn turned(t: Tuple) -> Tuple {
    Tuple {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
    }
}

/// A flow event about the flow of `entry`, whose key is `key` (the entry
/// of either direction); `what` is the kind in the high 16 bits and the
/// reason in the low ones (a BPF subprogram takes five arguments at most).
/// Keys, not the caller's `Packet`: a pointer to it would pin the whole
/// struct to the caller's stack (LLVM then can no longer split it), which
/// took uplink_ingress past its 512 bytes.
#[inline(never)]
pub fn of_key(ifindex: u32, what: u32, key: &CtKey, entry: &CtEntry) -> u32 {
    if !listening() {
        return 0;
    }
    let tuple = Tuple {
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
    };
    flow((what >> 16) as u8, what as u16, ifindex, tuple, key.proto, entry);
    0
}

/// `what` of [`of_key`].
#[inline(always)]
pub const fn what(kind: u8, reason: u16) -> u32 {
    ((kind as u32) << 16) | reason as u32
}
