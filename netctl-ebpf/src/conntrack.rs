//! Connection tracking of translated flows: one `CONNTRACK` entry per
//! direction. The entry of one direction names the rewrite; the key of the
//! other direction is the rewritten tuple turned around ([`reverse_key`]),
//! so either entry finds its pair without storing it.
//!
//! TCP flows follow the kernel's state machine (see [`tcp_next`]): a flow
//! is ESTABLISHED only once the initiator acknowledges the responder's
//! SYN-ACK, and each entry keeps what its direction sent and acknowledged,
//! so that a FIN or RST outside the window changes nothing.
//!
//! The table is a plain hash of fixed size, not an LRU: when it is full an
//! insert fails, and the new flow that needed room is dropped
//! (`drop_conntrack_full`); confirmed flows never lose their entries. An
//! LRU would instead evict the least recently used flow in silence, which
//! may well be an idle established connection. Room is made by four means:
//! expired entries are deleted when a lookup meets them; `netctl conntrack
//! gc` does the same from userspace; when an insert finds the table full,
//! [`early_drop`] deletes the oldest *unconfirmed* flow (handshake not
//! completed, or no reply yet) from a ring of the newest flows' keys, as
//! nf_conntrack's early drop does, a bounded O(1) step per refused packet;
//! and only when that finds none, [`reclaim`] sweeps the table for dead
//! entries that nobody looks up any more (a closed flow whose tuple never
//! comes back), at most once a second. The packet that found the table full
//! is dropped all the same; its retransmission (a SYN is resent after a
//! second) finds the room. Both run in one place, where a program turns a
//! drop into its verdict:
//! retrying the insert in place made the verifier walk the rest of the
//! program again for every insert (endpoint_ingress went from 150k to
//! 240k–330k processed instructions), where a sweep on the way out of the
//! program costs it next to nothing.

// Keys that live in map values or already on the stack are passed to the
// map helpers by reference, so that the helper gets that very pointer
// rather than a copy in a new stack slot: the program and its callbacks
// share 512 bytes of stack, and endpoint_ingress uses most of them.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_ns},
};
use netctl_common::{
    conntrack::{
        closed, expired, in_window, unconfirmed, CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY,
        CT_FLAG_ACK, CT_FLAG_FIN, CT_FLAG_SEQ, CT_RECLAIM_LAST_SWEEP, CT_RECLAIM_RING_READ,
        CT_RECLAIM_RING_SPAN, CT_RECLAIM_RING_WRITTEN, CT_SEQ_SLACK, CT_STATE_CLOSE,
        CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_FIN_WAIT, CT_STATE_LAST_ACK,
        CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_SYN_SENT, CT_STATE_TIME_WAIT,
        CT_UNCONFIRMED_SLOTS,
    },
    event::{END_EARLY_DROP, END_FIN, END_RST, END_TIMEOUT, EVENT_END},
    stats::StatIndex,
};

pub use netctl_common::conntrack::reverse_key;

use crate::{
    events,
    maps::{CONNTRACK, CT_RECLAIM, CT_UNCONFIRMED},
    parse::{Packet, L4, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::count,
};

const EEXIST: i32 = 17;

/// Least time between two sweeps of [`reclaim`]: a table full of live
/// flows costs one walk per second, not one per refused packet.
const RECLAIM_INTERVAL_NS: u64 = 1_000_000_000;

/// See [`seen`].
const PAIR_REFRESH_NS: u64 = 1_000_000_000;

/// Ring slots early drop reads per refused packet: a bounded loop (16
/// iterations of a few map operations, verified once per path into the
/// verdict).
const EARLY_DROP_SCAN: u32 = 16;

/// How far a direction's sequence (or acknowledgment) number may move
/// ahead in one packet and still be taken as its own: a GSO packet of the
/// largest size (BIG TCP: 512 KiB) and more. A packet jumping further
/// (a blind guess) is forwarded but teaches the tracker nothing.
const SEQ_ADVANCE_MAX: u32 = 1 << 20;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The packet's tuple as a key.
#[inline(always)]
pub fn key_of(pkt: &Packet) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// Looks a tuple up. An entry past its timeout is a miss, unless its pair
/// is still alive: a flow lives as long as either direction is seen (a
/// one-way UDP stream refreshes only one of the two). Dead pairs are deleted
/// here, so an expired entry never blocks a port or a new flow.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    let now = now();
    // SAFETY: a map value pointer from a successful lookup; concurrent
    // writers only store whole scalar fields.
    unsafe {
        if !expired(&*entry, key.proto, now) {
            return Some(entry);
        }
        let pair_key = reverse_key(&*entry, key.proto);
        if let Some(pair) = CONNTRACK.get_ptr_mut(pair_key) {
            if !expired(&*pair, key.proto, now) {
                return Some(entry);
            }
            let _ = CONNTRACK.remove(pair_key);
        }
        // The flow's end, once: its other entry is gone already or now.
        events::of_key(0, events::what(EVENT_END, END_TIMEOUT), key, &*entry);
    }
    let _ = CONNTRACK.remove(key);
    None
}

/// The known flow of a packet. A bare SYN that meets a closed TCP flow
/// (TIME_WAIT or CLOSE) starts a new one instead, as the kernel's conntrack does:
/// the old entry goes, and its pair too unless a new flow has taken that
/// tuple over already (see [`claim`]); the packet is then a miss.
#[inline(always)]
pub fn lookup_packet(pkt: &Packet) -> Option<*mut CtEntry> {
    let key = key_of(pkt);
    let entry = lookup(&key)?;
    // SAFETY: a map value pointer from a successful lookup, read at once.
    let old = unsafe { *entry };
    if pkt.l4 != L4::Tcp || initial_state(pkt) != CT_STATE_SYN_SENT || !closed(old.state) {
        return Some(entry);
    }
    let pair_key = reverse_key(&old, pkt.proto);
    if let Some(pair) = CONNTRACK.get_ptr(pair_key) {
        // SAFETY: as above.
        if reverse_key(unsafe { &*pair }, pkt.proto) == key {
            let _ = CONNTRACK.remove(pair_key);
        }
    }
    let _ = CONNTRACK.remove(key);
    None
}

/// Whether `ack` acknowledges what `receiver`'s direction sent: no more
/// than it sent, and not older than a window.
#[inline(always)]
fn acknowledges(receiver: &CtEntry, ack: u32) -> bool {
    receiver.flags & CT_FLAG_SEQ != 0 && receiver.seq_end.wrapping_sub(ack) <= CT_SEQ_SLACK
}

/// The next state of a TCP flow in `state` after a segment with `flags`
/// from `direction` — the kernel's table (nf_conntrack_proto_tcp.c,
/// `tcp_conntracks`) without SYN_SENT2 (simultaneous open); what the table
/// calls invalid or ignored leaves the state as it is. `valid`: the
/// segment's numbers are its direction's own (see [`seen`]); `in_window`:
/// for a FIN or RST, within the flow's window; `fin_seen`: this direction
/// sent a FIN before; `peer_fin`: the other one did.
#[inline(always)]
fn tcp_next(
    state: u8,
    direction: u8,
    flags: u8,
    valid: bool,
    in_window: bool,
    fin_seen: bool,
    peer_fin: bool,
) -> u8 {
    if flags & TCP_RST != 0 {
        return if in_window { CT_STATE_CLOSE } else { state };
    }
    if flags & TCP_SYN != 0 {
        // A SYN-ACK from the responder that acknowledges the SYN. (A bare
        // SYN on a closed flow started a new one in lookup_packet.)
        if flags & TCP_ACK != 0 && direction == CT_DIR_REPLY && state == CT_STATE_SYN_SENT && valid
        {
            return CT_STATE_SYN_RECV;
        }
        return state;
    }
    if flags & TCP_FIN != 0 {
        if !in_window {
            return state;
        }
        return match state {
            CT_STATE_SYN_RECV | CT_STATE_ESTABLISHED => CT_STATE_FIN_WAIT,
            // The other direction's FIN (a retransmitted first one changes
            // nothing).
            CT_STATE_FIN_WAIT | CT_STATE_CLOSE_WAIT if peer_fin && !fin_seen => CT_STATE_LAST_ACK,
            _ => state,
        };
    }
    if flags & TCP_ACK == 0 || !valid {
        return state;
    }
    match state {
        // The initiator's ACK of the SYN-ACK: the handshake is complete.
        CT_STATE_SYN_RECV if direction == CT_DIR_ORIGINAL => CT_STATE_ESTABLISHED,
        // The FIN acknowledged by the other side: half-closed.
        CT_STATE_FIN_WAIT if !fin_seen => CT_STATE_CLOSE_WAIT,
        CT_STATE_LAST_ACK => CT_STATE_TIME_WAIT,
        _ => state,
    }
}

/// State of a new flow from its first packet (mid-stream TCP is picked up
/// as established, as the kernel's conntrack does by default).
#[inline(always)]
pub fn initial_state(pkt: &Packet) -> u8 {
    if pkt.l4 != L4::Tcp {
        CT_STATE_NEW
    } else if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_STATE_CLOSE
    } else if pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0 {
        CT_STATE_SYN_SENT
    } else {
        CT_STATE_ESTABLISHED
    }
}

/// Sets the original entry's sequence tracking from the flow's first
/// packet.
#[inline(always)]
pub fn track_first(entry: &mut CtEntry, pkt: &Packet) {
    if pkt.l4 != L4::Tcp {
        return;
    }
    entry.seq_end = pkt.tcp_seq.wrapping_add(pkt.tcp_len);
    entry.flags = CT_FLAG_SEQ;
    if pkt.tcp_flags & TCP_ACK != 0 {
        entry.ack = pkt.tcp_ack;
        entry.flags |= CT_FLAG_ACK;
    }
    entry.window = pkt.tcp_win;
}

/// Records a packet on `entry`: last seen, counters, TCP numbers, state.
/// A state change is written to the pair too, so both directions share one
/// timeout; and the pair's last-seen time follows this one's, at most a
/// second behind (refreshed when this entry was idle for a second or more:
/// one extra lookup per second per active direction, not per packet), so
/// that a flow seen in one direction only (a UDP stream) keeps both entries
/// alive, for `netctl conntrack gc` too.
///
/// TCP: a segment is *valid* when its numbers are its direction's own: its
/// end at most [`SEQ_ADVANCE_MAX`] past what the direction sent so far, or,
/// for the first segment of a direction, acknowledging what the other one
/// sent. Only valid segments move the tracked numbers and the state; a FIN
/// or RST must also be within the window ([`in_window`]), else it is
/// forwarded, changes nothing and is counted `ct_out_of_window`. The pair
/// entry is read for the segments that need it only: FIN, RST, the first
/// of a direction, and the handshake's SYN-ACK and ACK.
#[inline(always)]
pub fn seen(entry: *mut CtEntry, pkt: &Packet, bytes: u32) {
    let now = now();
    // SAFETY: a map value pointer from `lookup`. The counters are shared by
    // every CPU that sees the flow and are added to without atomics (Rust
    // has no fetch_add on the bpf target, which lacks compare-and-swap): two
    // CPUs racing on one flow may lose an increment. They are statistics;
    // nothing decides on them. The same holds for the TCP numbers: a lost
    // update leaves an older number, which the slack absorbs.
    unsafe {
        let idle = now.saturating_sub((*entry).last_seen_ns);
        (*entry).last_seen_ns = now;
        (*entry).packets += 1;
        (*entry).bytes += u64::from(bytes);
        let state = (*entry).state;
        let direction = (*entry).direction;
        let pair_key = reverse_key(&*entry, pkt.proto);
        let next = if pkt.l4 == L4::Tcp {
            tcp_seen(entry, &pair_key, pkt, bytes)
        } else if direction == CT_DIR_REPLY {
            CT_STATE_ESTABLISHED
        } else {
            state
        };
        if next != state || idle >= PAIR_REFRESH_NS {
            (*entry).state = next;
            if let Some(pair) = CONNTRACK.get_ptr_mut(&pair_key) {
                (*pair).state = next;
                (*pair).last_seen_ns = now;
                // A TCP flow closing (RST, or the last ACK after both
                // FINs): its end, told through the pair, whose key is at
                // hand (the packet's would take stack endpoint_ingress
                // has not got). Its entries stay for TIME_WAIT or CLOSE.
                if next != state && closed(next) && !closed(state) {
                    let reason = if next == CT_STATE_CLOSE {
                        END_RST
                    } else {
                        END_FIN
                    };
                    events::of_key(0, events::what(EVENT_END, reason), &pair_key, &*pair);
                }
            }
        }
    }
}

/// TCP's part of [`seen`]: tracks the numbers, returns the next state.
///
/// # Safety
/// `entry` is a map value pointer from `lookup`.
#[inline(always)]
unsafe fn tcp_seen(entry: *mut CtEntry, pair_key: &CtKey, pkt: &Packet, bytes: u32) -> u8 {
    let flags = pkt.tcp_flags;
    let state = (*entry).state;
    let direction = (*entry).direction;
    let own = (*entry).flags;
    let end = pkt.tcp_seq.wrapping_add(pkt.tcp_len);
    let known = own & CT_FLAG_SEQ != 0;
    let need_pair =
        flags & (TCP_FIN | TCP_RST | TCP_SYN) != 0 || !known || state == CT_STATE_SYN_RECV;
    let pair = if need_pair {
        CONNTRACK.get_ptr(pair_key)
    } else {
        None
    };
    let has_ack = flags & TCP_ACK != 0;
    let valid = if known {
        end.wrapping_sub((*entry).seq_end) as i32 <= SEQ_ADVANCE_MAX as i32
    } else {
        match pair {
            // Nothing known on the other side either: picked up as it is.
            Some(p) if (*p).flags & CT_FLAG_SEQ != 0 => has_ack && acknowledges(&*p, pkt.tcp_ack),
            _ => true,
        }
    };
    let window = if flags & (TCP_FIN | TCP_RST) != 0 {
        let receiver = pair.map(|p| &*p);
        valid && in_window(&*entry, receiver, pkt.tcp_seq, pkt.tcp_ack, has_ack)
    } else {
        true
    };
    if !window {
        count(StatIndex::CtOutOfWindow, bytes);
    }
    // SYN_RECV → ESTABLISHED needs the initiator to acknowledge the
    // responder's SYN-ACK itself, not just any number of its own.
    let acked = match pair {
        Some(p) => acknowledges(&*p, pkt.tcp_ack),
        None => false,
    };
    let valid_for_state = valid && (state != CT_STATE_SYN_RECV || acked);
    let peer_fin = match pair {
        Some(p) => (*p).flags & CT_FLAG_FIN != 0,
        None => false,
    };
    let next = tcp_next(
        state,
        direction,
        flags,
        valid_for_state,
        window,
        own & CT_FLAG_FIN != 0,
        peer_fin,
    );
    if valid && window {
        if !known || end.wrapping_sub((*entry).seq_end) as i32 > 0 {
            (*entry).seq_end = end;
        }
        let mut flags_now = own | CT_FLAG_SEQ;
        if has_ack {
            let ack_known = own & CT_FLAG_ACK != 0;
            let ahead = pkt.tcp_ack.wrapping_sub((*entry).ack);
            if !ack_known || (ahead as i32 > 0 && ahead <= SEQ_ADVANCE_MAX) {
                (*entry).ack = pkt.tcp_ack;
            }
            flags_now |= CT_FLAG_ACK;
        }
        if flags & TCP_FIN != 0 {
            flags_now |= CT_FLAG_FIN;
        }
        (*entry).flags = flags_now;
        (*entry).window = pkt.tcp_win;
    }
    next
}

/// Inserts the reply entry of a new flow, claiming its key: `Ok(false)`
/// when the key is taken by a live flow (the caller tries another port),
/// `Err(DropConntrackFull)` when the table is full. BPF_NOEXIST makes the
/// claim atomic between CPUs.
///
/// A TCP flow that is closed (TIME_WAIT, CLOSE) gives its tuple to a new
/// connection (a SYN), as the kernel's conntrack does for a SYN that meets
/// TIME_WAIT: otherwise every SNAT port stays held for the whole TIME_WAIT
/// timeout and a client opening short connections to one server runs out
/// of ports. That takeover overwrites; two CPUs taking over the same
/// closed tuple in the same instant is the one race left (the kernel
/// serialises it under a lock; a map has no compare-and-swap).
#[inline(always)]
pub fn claim(key: &CtKey, entry: &CtEntry) -> Result<bool, StatIndex> {
    if let Some(existing) = lookup(key) {
        // SAFETY: a map value pointer, read at once.
        let over = closed(unsafe { (*existing).state });
        if key.proto == PROTO_TCP && entry.state == CT_STATE_SYN_SENT && over {
            return insert(key, entry).map(|()| true);
        }
        return Ok(false);
    }
    match CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        Err(_) => Err(StatIndex::DropConntrackFull),
    }
}

/// Inserts or replaces an entry. Replacing never needs room (the kernel
/// keeps a spare element per CPU for that): a full table refuses new
/// flows only.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry) -> Result<(), StatIndex> {
    CONNTRACK
        .insert(key, entry, 0)
        .map_err(|_| StatIndex::DropConntrackFull)
}

/// Inserts the original entry of a flow whose reply entry is in place;
/// on failure the reply entry is taken back.
#[inline(always)]
pub fn insert_original(key: &CtKey, entry: &CtEntry, reply_key: &CtKey) -> Result<(), StatIndex> {
    if CONNTRACK.insert(key, entry, 0).is_err() {
        let _ = CONNTRACK.remove(reply_key);
        return Err(StatIndex::DropConntrackFull);
    }
    Ok(())
}

/// Deletes every dead entry of the table — past its timeout, and its pair
/// too or gone (the rule of [`lookup`] and `netctl conntrack gc`) — and
/// every entry of a closed TCP flow (TIME_WAIT, CLOSE), at most
/// once per [`RECLAIM_INTERVAL_NS`] over all CPUs (the time of the last
/// sweep is in `CT_RECLAIM`; two CPUs starting in the same instant both
/// sweep, which is harmless). Called for every `drop_conntrack_full`: an
/// insert that failed for another reason (none is known for a
/// preallocated hash) costs at most a needless sweep.
///
/// BPF cannot loop over a hash map's keys, so the walk is
/// bpf_for_each_map_elem: the kernel runs the loop, bounded by the map's
/// size, and the verifier checks the callback once as a subprogram, not
/// once per element, so the table size does not count against the 1M
/// processed-instruction limit. What the verifier does count is the
/// combined stack of the program and the callback (512 bytes): hence no
/// callback context (the callback reads the clock itself) and a callback
/// frame of one 16-byte key (a version with an 8-byte context, counting
/// deletions to back off after a sweep that found nothing, failed to load
/// endpoint_ingress: EFAULT with a truncated verifier log, not
/// investigated further). A sweep's cost, one callback per
/// entry, is paid by the packet that found the table full, at most once a
/// second: ~68 ms for a full 262,144-entry table of live flows
/// (BPF_PROG_TEST_RUN on the 2-CPU test machine), so a table that stays
/// full of live flows costs about 7% of one CPU.
#[inline(always)]
pub fn reclaim() {
    let Some(last) = CT_RECLAIM.get_ptr_mut(CT_RECLAIM_LAST_SWEEP) else {
        return;
    };
    let now = now();
    // SAFETY: an array slot; a racing CPU stores a whole u64 too.
    unsafe {
        if now.saturating_sub(*last) < RECLAIM_INTERVAL_NS {
            return;
        }
        *last = now;
        // SAFETY: a map definition, a callback of the expected signature,
        // no context.
        bpf_for_each_map_elem(
            (&raw const CONNTRACK).cast_mut().cast(),
            reclaim_entry as *mut c_void,
            ptr::null_mut(),
            0,
        );
    }
}

/// Remembers the original key of a new, unconfirmed flow in the ring that
/// [`early_drop`] reads (the oldest slot is overwritten).
#[inline(always)]
pub fn remember_new(key: &CtKey, state: u8) {
    if !unconfirmed(state) {
        return;
    }
    let Some(written) = CT_RECLAIM.get_ptr_mut(CT_RECLAIM_RING_WRITTEN) else {
        return;
    };
    // SAFETY: array slots; a racing CPU may write the same slot (one of
    // two new flows is then out of early drop's reach: it still expires).
    unsafe {
        let n = *written;
        let slot = (n % u64::from(CT_UNCONFIRMED_SLOTS)) as u32;
        if let Some(ring) = CT_UNCONFIRMED.get_ptr_mut(slot) {
            *ring = *key;
        }
        *written = n + 1;
    }
}

/// Early drop, as nf_conntrack's when its table is full: deletes the oldest
/// unconfirmed flow (TCP handshake not completed, UDP/ICMP without a
/// reply) among the newest flows' keys in `CT_UNCONFIRMED`, both entries,
/// and says whether one went. It reads at most [`EARLY_DROP_SCAN`] slots
/// from where the last call stopped (keys of flows confirmed or gone since
/// are passed over for good), never further back than the span the
/// controller wrote (half the table: older keys name flows that are gone
/// or expire within their timeout) nor than the ring holds. O(1) per
/// refused packet, where a sweep of the table frees nothing when it is full
/// of live unconfirmed flows (a SYN flood).
#[inline(always)]
pub fn early_drop() -> bool {
    let slots = u64::from(CT_UNCONFIRMED_SLOTS);
    let span = CT_RECLAIM
        .get(CT_RECLAIM_RING_SPAN)
        .copied()
        .filter(|s| *s != 0 && *s < slots)
        .unwrap_or(slots);
    let Some(written) = CT_RECLAIM.get(CT_RECLAIM_RING_WRITTEN).copied() else {
        return false;
    };
    let Some(read) = CT_RECLAIM.get_ptr_mut(CT_RECLAIM_RING_READ) else {
        return false;
    };
    // SAFETY: array slots and map value pointers, read at once; a racing
    // CPU stores whole u64s.
    unsafe {
        let mut n = *read;
        if n < written.saturating_sub(span) {
            n = written - span;
        }
        let mut freed = false;
        for _ in 0..EARLY_DROP_SCAN {
            if n >= written {
                break;
            }
            let slot = (n % slots) as u32;
            n += 1;
            let Some(key) = CT_UNCONFIRMED.get_ptr(slot) else {
                continue;
            };
            let Some(entry) = CONNTRACK.get_ptr(&*key) else {
                continue;
            };
            if unconfirmed((*entry).state) {
                events::of_key(0, events::what(EVENT_END, END_EARLY_DROP), &*key, &*entry);
                let _ = CONNTRACK.remove(&reverse_key(&*entry, (*key).proto));
                let _ = CONNTRACK.remove(&*key);
                count(StatIndex::CtEarlyDrop, 0);
                freed = true;
                break;
            }
        }
        *read = n;
        freed
    }
}

/// Callback of [`reclaim`]: deletes the entry when it is dead. Deleting
/// the element being visited is allowed (the kernel walks the buckets
/// under RCU); its pair, dead as well, is deleted when the walk reaches
/// it (or was already).
#[inline(never)]
extern "C" fn reclaim_entry(
    _map: *mut c_void,
    key: *const CtKey,
    entry: *const CtEntry,
    _ctx: *mut c_void,
) -> i64 {
    // SAFETY: the kernel passes a valid key and value of this map.
    unsafe {
        let proto = (*key).proto;
        let now = bpf_ktime_get_ns();
        // A closed TCP flow (TIME_WAIT, CLOSE) gives way under pressure:
        // the table is full and holds no unconfirmed flow. Its pair is
        // closed too (both share the state) and goes when the walk reaches
        // it.
        let over = proto == PROTO_TCP && closed((*entry).state);
        if !over && !expired(&*entry, proto, now) {
            return 0;
        }
        if let Some(pair) = CONNTRACK.get_ptr(reverse_key(&*entry, proto)) {
            if !over && !expired(&*pair, proto, now) {
                return 0;
            }
        }
        // The kernel's own key, by reference: a copy would add 16 bytes to
        // the callback's frame, which counts against the 512-byte stack
        // the callback shares with the program.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = CONNTRACK.remove(&*key);
    }
    0
}

/// A new entry for one direction: rewrite to `src` → `dst` (address and
/// port each, network order). The original direction counts the packet
/// that created the flow.
#[inline(always)]
pub fn entry(
    src: (u32, u16),
    dst: (u32, u16),
    kind: u8,
    direction: u8,
    ifindex: u32,
    state: u8,
    bytes: u32,
) -> CtEntry {
    let packets = if direction == CT_DIR_REPLY { 0 } else { 1 };
    CtEntry {
        saddr: src.0,
        daddr: dst.0,
        sport: src.1,
        dport: dst.1,
        kind,
        state,
        direction,
        flags: 0,
        ifindex,
        seq_end: 0,
        last_seen_ns: now(),
        packets,
        bytes: if packets == 1 { u64::from(bytes) } else { 0 },
        ack: 0,
        window: 0,
        _pad: 0,
    }
}
