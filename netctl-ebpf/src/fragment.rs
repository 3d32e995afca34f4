//! Fragmented datagrams. Only the first fragment (offset 0, MF set) carries
//! the L4 header, so only it is matched against `CONNTRACK` and translated
//! as a whole packet (ports, and the L4 checksum, which covers the whole
//! datagram but lives in the first fragment: an incremental update there is
//! right for the reassembled datagram). [`record`] then stores what its
//! addresses became and where it went in `FRAGMENTS`, keyed by the
//! datagram's identity (source, destination, protocol, IP id, before
//! translation); each later fragment finds its entry ([`lookup`]) and gets
//! the same addresses (IP header checksum only, [`apply`]) and the same
//! delivery. Receivers reassemble as usual.
//!
//! A later fragment that comes before its first one has no entry. Nothing
//! can be held back in a TC program (no queue, no reassembly), so:
//! from a container, when its destination needs translation (routed to the
//! outside), it is dropped, `drop_fragment_out_of_order` (passed on, it
//! would leave with the container's private address); on the uplink, it is
//! left to the host (it may be the host's own datagram) and the first
//! fragment's datagram is lost, as in Cilium. Linux senders emit fragments
//! in order and veths keep it, so this happens when the network reorders.
//!
//! Verifier limits: the path is inlined into the three programs (no tail
//! call). endpoint_ingress's frame grows from 440 to 448 bytes (deepest
//! `r10` offset, llvm-objdump); with the 48-byte frame of the drop-logging
//! subprogram, each rounded up to 32 by the verifier, that is 448 + 64 =
//! 512 of 512 bytes, as before; ~136k processed instructions (151k before).
//!
//! Entries are not deleted by the last fragment (fragments may be reordered
//! among themselves); they expire after `FRAG_TIMEOUT_NS` (the kernel's
//! `ipfrag_time`) or are evicted, oldest first, by the LRU.

use netctl_common::{
    conntrack::CtEntry,
    fragment::{FragEntry, FragKey, FRAG_TIMEOUT_NS},
    stats::StatIndex,
};

use aya_ebpf::programs::TcContext;

use crate::{
    conntrack::now,
    csum,
    maps::FRAGMENTS,
    nat::stat_of,
    parse::{Packet, IP_DADDR_OFF, IP_SADDR_OFF},
    stats::count,
};

#[inline(always)]
fn key_of(pkt: &Packet) -> FragKey {
    FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    }
}

/// Records the translation of a first fragment (`pkt` as it arrived,
/// `entry` the conntrack entry applied to it). A refusal of the map drops
/// the first fragment (`drop_fragment`): translated alone, it would orphan
/// the others.
#[inline(always)]
pub fn record(pkt: &Packet, entry: &CtEntry) -> Result<(), StatIndex> {
    let frag = FragEntry {
        saddr: entry.saddr,
        daddr: entry.daddr,
        ifindex: entry.ifindex,
        stat: stat_of(entry) as u32,
        created_ns: now(),
    };
    FRAGMENTS
        .insert(key_of(pkt), frag, 0)
        .map_err(|_| StatIndex::DropFragment)
}

/// The translation of a later fragment's datagram, if its first fragment
/// was translated less than `FRAG_TIMEOUT_NS` ago.
#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<FragEntry> {
    // SAFETY: plain-data value copied out at once.
    let frag = unsafe { FRAGMENTS.get(key_of(pkt)).copied() }?;
    if now().saturating_sub(frag.created_ns) > FRAG_TIMEOUT_NS {
        return None;
    }
    Some(frag)
}

/// Rewrites a later fragment's addresses (no L4 header: `csum::set_addr`
/// updates the IP header checksum only) and counts it.
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &Packet, frag: &FragEntry, bytes: u32) -> Result<(), StatIndex> {
    csum::set_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, frag.saddr)?;
    csum::set_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, frag.daddr)?;
    count(StatIndex::FragmentTranslated, bytes);
    count(stat_index(frag.stat), bytes);
    Ok(())
}

/// The counter a first fragment was counted under (what [`record`]
/// stored; anything else counts as snat, which it cannot be).
#[inline(always)]
fn stat_index(stat: u32) -> StatIndex {
    if stat == StatIndex::Dnat as u32 {
        StatIndex::Dnat
    } else if stat == StatIndex::Hairpin as u32 {
        StatIndex::Hairpin
    } else if stat == StatIndex::ReverseNat as u32 {
        StatIndex::ReverseNat
    } else {
        StatIndex::Snat
    }
}
