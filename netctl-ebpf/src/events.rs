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
//! stack; the emitters take pointers (keys, conntrack entries in their
//! map or on the caller's stack) and plain integers.

use aya_ebpf::{bindings::__sk_buff, maps::ring_buf::RingBufEntry, programs::TcContext};
use netctl_common::{
    conntrack::{CtEntry, CtKey, CT_DIR_REPLY},
    event::{FlowEvent, Tuple, EVENT_DROP},
    stats::StatIndex,
};

use crate::{
    conntrack::now,
    maps::{FLOW_EVENTS, FLOW_LISTENER},
    parse::{ptr_at, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, PROTO_TCP, PROTO_UDP},
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

/// Someone listens: the lease in `FLOW_LISTENER` has not run out. A lease
/// found run out (its listener was killed, or stalled for `LEASE_NS`) is
/// cleared, so that the clock is read no more until the next listener:
/// nobody listening costs the lookup alone. A live listener renews long
/// before its lease runs out, so the clearing never races a renewal but a
/// stalled one's.
#[inline(always)]
fn listening() -> bool {
    let Some(slot) = FLOW_LISTENER.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: an array slot; the controller and other CPUs store whole
    // u64s.
    unsafe {
        let until = *slot;
        if until == 0 {
            return false;
        }
        if now() < until {
            return true;
        }
        *slot = 0;
    }
    false
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
    // Reserved first, and every field written into the reservation as it
    // is read: values held across the helper calls spill to the stack, and
    // this frame must stay within what uplink_ingress leaves (48 bytes).
    let Some(mut slot) = reserve() else {
        return 0;
    };
    let e = slot.as_mut_ptr();
    let ctx = TcContext::new(skb);
    // Through packet pointers (bounds-checked), not bpf_skb_load_bytes,
    // whose every load takes a stack slot.
    let read16 = |off: usize| -> u16 {
        // SAFETY: ptr_at checked that the bytes lie inside the packet.
        ptr_at::<[u8; 2]>(&ctx, off).map_or(0, |p| u16::from_be_bytes(unsafe { *p }))
    };
    let read32 = |off: usize| -> u32 {
        // SAFETY: as above; addresses stay in network order.
        ptr_at::<[u8; 4]>(&ctx, off).map_or(0, |p| u32::from_ne_bytes(unsafe { *p }))
    };
    // SAFETY: the reservation is a whole FlowEvent, written field by field
    // (every byte, so nothing of the ring's old contents leaks out).
    unsafe {
        let ethertype = read16(12);
        header(
            e,
            EVENT_DROP,
            0,
            0,
            program,
            reason as u16,
            ethertype,
            (*skb).ifindex,
        );
        (*e).translated = Tuple::default();
        (*e).original = Tuple::default();
        if ethertype == ETH_P_IP {
            (*e).original.saddr = read32(IP_SADDR_OFF);
            (*e).original.daddr = read32(IP_DADDR_OFF);
            let proto = read16(IP_OFF + 8) as u8;
            (*e).proto = proto;
            let ihl = usize::from((read16(IP_OFF) >> 8) as u8 & 0x0f);
            let fragment_offset = read16(IP_OFF + 6) & 0x1fff;
            if (proto == PROTO_TCP || proto == PROTO_UDP) && fragment_offset == 0 && ihl >= 5 {
                let l4 = IP_OFF + ihl * 4;
                (*e).original.sport = read16(l4).to_be();
                (*e).original.dport = read16(l4 + 2).to_be();
            }
        } else if ethertype == ETH_P_ARP {
            // Not the IPv4 header's offsets (the old trace read those and
            // printed an ARP's hardware address bytes as its addresses).
            (*e).original.saddr = read32(ARP_SPA_OFF);
            (*e).original.daddr = read32(ARP_TPA_OFF);
        }
        (*e).time_ns = now();
    }
    slot.submit(0);
    0
}

/// A flow event about the flow of `entry`, whose key is `key` (the entry
/// of either direction): the event names the original direction, for an
/// original entry the key and the entry's rewrite, for a reply entry both
/// turned around. `what` is the kind (`EVENT_NEW`, `EVENT_END`) in the
/// high 16 bits and the reason (`END_*`, 0 for new flows) in the low ones
/// (a BPF subprogram takes five arguments at most).
/// Keys, not the caller's `Packet`: a pointer to it would pin the whole
/// struct to the caller's stack (LLVM then can no longer split it), which
/// took uplink_ingress past its 512 bytes.
#[inline(never)]
pub fn of_key(ifindex: u32, what: u32, key: &CtKey, entry: &CtEntry) -> u32 {
    if !listening() {
        return 0;
    }
    let Some(mut slot) = reserve() else {
        return 0;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: as in `drop`. Written straight from the key and the entry:
    // with the tuples copied to locals first, this subprogram's frame was
    // 80 bytes, 16 more than endpoint_ingress leaves.
    unsafe {
        let kind = (what >> 16) as u8;
        header(
            e,
            kind,
            key.proto,
            entry.kind,
            PROGRAM_NONE,
            what as u16,
            ETH_P_IP,
            ifindex,
        );
        let (o, t) = (&raw mut (*e).original, &raw mut (*e).translated);
        if entry.direction == CT_DIR_REPLY {
            set(o, entry.daddr, entry.saddr, entry.dport, entry.sport);
            set(t, key.daddr, key.saddr, key.dport, key.sport);
        } else {
            set(o, key.saddr, key.daddr, key.sport, key.dport);
            set(t, entry.saddr, entry.daddr, entry.sport, entry.dport);
        }
        (*e).time_ns = now();
    }
    slot.submit(0);
    0
}

/// A reservation for one event; a full ring counts `event_lost`.
#[inline(always)]
fn reserve() -> Option<RingBufEntry<FlowEvent>> {
    let slot = FLOW_EVENTS.reserve::<FlowEvent>(0);
    if slot.is_none() {
        count(StatIndex::EventLost, 0);
    }
    slot
}

/// Writes the fields every event has but its tuples and time.
///
/// # Safety
/// `e` is a reservation of a whole `FlowEvent`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn header(
    e: *mut FlowEvent,
    kind: u8,
    proto: u8,
    ct_kind: u8,
    program: u8,
    reason: u16,
    ethertype: u16,
    ifindex: u32,
) {
    // SAFETY: the caller's.
    unsafe {
        (*e).kind = kind;
        (*e).proto = proto;
        (*e).ct_kind = ct_kind;
        (*e).program = program;
        (*e).reason = reason;
        (*e).ethertype = ethertype;
        (*e).ifindex = ifindex;
        (*e)._pad = 0;
    }
}

/// Writes a tuple in place (no copy on the stack).
///
/// # Safety
/// `t` points into a reservation.
#[inline(always)]
unsafe fn set(t: *mut Tuple, saddr: u32, daddr: u32, sport: u16, dport: u16) {
    // SAFETY: the caller's.
    unsafe {
        (*t).saddr = saddr;
        (*t).daddr = daddr;
        (*t).sport = sport;
        (*t).dport = dport;
    }
}

/// `what` of [`of_key`].
#[inline(always)]
pub const fn what(kind: u8, reason: u16) -> u32 {
    ((kind as u32) << 16) | reason as u32
}
