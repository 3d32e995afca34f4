//! Connection tracking of translated flows: one `CONNTRACK` entry per
//! direction. The entry of one direction names the rewrite; the key of the
//! other direction is the rewritten tuple turned around ([`reverse_key`]),
//! so either entry finds its pair without storing it.
//!
//! The table is a plain hash of fixed size, not an LRU: when it is full an
//! insert fails, and only the new flow that needed room is dropped
//! (`drop_conntrack_full`); the flows already tracked never lose their
//! entries. An LRU would instead evict the least recently used flow in
//! silence, which may well be an idle established connection. Room is
//! made by three means: expired entries are deleted when a lookup meets
//! them; `netctl conntrack gc` does the same from userspace; and when an
//! insert finds the table full, [`reclaim`] sweeps it for dead entries that
//! nobody looks up any more (a closed flow whose tuple never comes back).
//! The packet that found the table full is dropped all the same; its
//! retransmission (a SYN is resent after a second) finds the room. The
//! sweep runs in one place, where a program turns a drop into its verdict:
//! retrying the insert in place made the verifier walk the rest of the
//! program again for every insert (endpoint_ingress went from 150k to
//! 240k–330k processed instructions), where a sweep on the way out of the
//! program costs it next to nothing.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_ns},
};
use netctl_common::{
    conntrack::{
        expired, CtEntry, CtKey, CT_DIR_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    stats::StatIndex,
};

pub use netctl_common::conntrack::reverse_key;

use crate::{
    maps::{CONNTRACK, CT_RECLAIM},
    parse::{Packet, L4, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const EEXIST: i32 = 17;

/// Least time between two sweeps of [`reclaim`]: a table full of live
/// flows costs one walk per second, not one per refused packet.
const RECLAIM_INTERVAL_NS: u64 = 1_000_000_000;

/// See [`seen`].
const PAIR_REFRESH_NS: u64 = 1_000_000_000;

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
    }
    let _ = CONNTRACK.remove(key);
    None
}

/// The known flow of a packet. A bare SYN that meets a closing TCP flow
/// starts a new one instead, as the kernel's conntrack does in TIME_WAIT:
/// the old entry goes, and its pair too unless a new flow has taken that
/// tuple over already (see [`claim`]); the packet is then a miss.
#[inline(always)]
pub fn lookup_packet(pkt: &Packet) -> Option<*mut CtEntry> {
    let key = key_of(pkt);
    let entry = lookup(&key)?;
    // SAFETY: a map value pointer from a successful lookup, read at once.
    let old = unsafe { *entry };
    if pkt.l4 != L4::Tcp || initial_state(pkt) != CT_STATE_NEW || old.state != CT_STATE_CLOSING {
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

/// TCP state after a packet with `flags` in `direction`. UDP and ICMP pass
/// flags 0: they become ESTABLISHED once a reply was seen.
#[inline(always)]
fn next_state(state: u8, direction: u8, flags: u8) -> u8 {
    if flags & (TCP_FIN | TCP_RST) != 0 {
        CT_STATE_CLOSING
    } else if state == CT_STATE_CLOSING {
        // A fresh SYN reuses the tuple of a closing connection.
        if direction != CT_DIR_REPLY && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
            CT_STATE_NEW
        } else {
            CT_STATE_CLOSING
        }
    } else if direction == CT_DIR_REPLY {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// State of a new flow from its first packet (mid-stream TCP is picked up
/// as established, as the kernel's conntrack does by default).
#[inline(always)]
pub fn initial_state(pkt: &Packet) -> u8 {
    if pkt.l4 != L4::Tcp {
        CT_STATE_NEW
    } else if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_STATE_CLOSING
    } else if pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0 {
        CT_STATE_NEW
    } else {
        CT_STATE_ESTABLISHED
    }
}

/// Records a packet on `entry`: last seen, counters, state. A state change
/// is written to the pair too, so both directions share one timeout; and
/// the pair's last-seen time follows this one's, at most a second behind
/// (refreshed when this entry was idle for a second or more: one extra
/// lookup per second per active direction, not per packet), so that a flow
/// seen in one direction only (a UDP stream) keeps both entries alive, for
/// `netctl conntrack gc` too.
#[inline(always)]
pub fn seen(entry: *mut CtEntry, pkt: &Packet, bytes: u32) {
    let now = now();
    let flags = if pkt.l4 == L4::Tcp { pkt.tcp_flags } else { 0 };
    // SAFETY: a map value pointer from `lookup`. The counters are shared by
    // every CPU that sees the flow and are added to without atomics (Rust
    // has no fetch_add on the bpf target, which lacks compare-and-swap): two
    // CPUs racing on one flow may lose an increment. They are statistics;
    // nothing decides on them.
    unsafe {
        let idle = now.saturating_sub((*entry).last_seen_ns);
        (*entry).last_seen_ns = now;
        (*entry).packets += 1;
        (*entry).bytes += u64::from(bytes);
        let state = (*entry).state;
        let next = next_state(state, (*entry).direction, flags);
        if next != state || idle >= PAIR_REFRESH_NS {
            (*entry).state = next;
            let pair_key = reverse_key(&*entry, pkt.proto);
            if let Some(pair) = CONNTRACK.get_ptr_mut(pair_key) {
                (*pair).state = next;
                (*pair).last_seen_ns = now;
            }
        }
    }
}

/// Inserts the reply entry of a new flow, claiming its key: `Ok(false)`
/// when the key is taken by a live flow (the caller tries another port),
/// `Err(DropConntrackFull)` when the table is full. BPF_NOEXIST makes the
/// claim atomic between CPUs.
///
/// A TCP flow that is closing gives its tuple to a new connection (a SYN),
/// as the kernel's conntrack does for a SYN that meets TIME_WAIT: otherwise
/// every SNAT port stays held for the whole closing timeout and a client
/// opening short connections to one server runs out of ports within
/// seconds. That takeover overwrites; two CPUs taking over the same closing
/// tuple in the same instant is the one race left (the kernel serialises it
/// under a lock; a map has no compare-and-swap).
#[inline(always)]
pub fn claim(key: &CtKey, entry: &CtEntry) -> Result<bool, StatIndex> {
    if let Some(existing) = lookup(key) {
        // SAFETY: a map value pointer, read at once.
        let closing = unsafe { (*existing).state } == CT_STATE_CLOSING;
        if key.proto == PROTO_TCP && entry.state == CT_STATE_NEW && closing {
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
/// too or gone (the rule of [`lookup`] and `netctl conntrack gc`) — at most
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
    let Some(last) = CT_RECLAIM.get_ptr_mut(0) else {
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
        if !expired(&*entry, proto, now) {
            return 0;
        }
        if let Some(pair) = CONNTRACK.get_ptr(reverse_key(&*entry, proto)) {
            if !expired(&*pair, proto, now) {
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
        _pad: 0,
        ifindex,
        last_seen_ns: now(),
        packets,
        bytes: if packets == 1 { u64::from(bytes) } else { 0 },
    }
}
