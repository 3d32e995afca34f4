//! Field rewrites with incremental checksum updates (RFC 1624) through the
//! kernel helpers, which also keep `skb->csum` right for CHECKSUM_COMPLETE
//! packets and leave CHECKSUM_PARTIAL ones (TX offload from a veth) for the
//! device to finish.
//!
//! Values are passed as they sit in the packet (network order): the helpers
//! take the raw bytes.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netctl_common::stats::StatIndex;

use crate::parse::{Packet, IP_CSUM_OFF, IP_TTL_OFF, L4};

/// Offset of the L4 checksum and the flags for `bpf_l4_csum_replace`:
/// TCP and UDP include the addresses in their pseudo header, ICMP does not;
/// UDP's checksum is optional on IPv4, and BPF_F_MARK_MANGLED_0 makes the
/// helper leave a zero ("none") checksum at zero, and write 0xffff where an
/// update would produce zero.
#[inline(always)]
fn l4_csum(pkt: &Packet) -> Option<(usize, u64, bool)> {
    match pkt.l4 {
        L4::Tcp => Some((pkt.l4_off + 16, 0, true)),
        L4::Udp => Some((pkt.l4_off + 6, u64::from(BPF_F_MARK_MANGLED_0), true)),
        L4::IcmpEcho => Some((pkt.l4_off + 2, 0, false)),
        // ICMP errors have no pseudo header: their outer addresses are
        // covered by the IPv4 checksum only (icmp_error updates the rest).
        L4::IcmpError | L4::Generic | L4::Other | L4::Fragment | L4::Truncated => None,
    }
}

/// Replaces the IPv4 address at `off` (saddr or daddr field): the IP header
/// checksum, the L4 checksum through the pseudo header, then the field.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    pkt: &Packet,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), StatIndex> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| StatIndex::DropRewriteFailed)?;
    if let Some((csum_off, flags, pseudo)) = l4_csum(pkt) {
        if pseudo {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old),
                u64::from(new),
                flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
            )
            .map_err(|_| StatIndex::DropRewriteFailed)?;
        }
    }
    ctx.store(off, &new, 0)
        .map_err(|_| StatIndex::DropRewriteFailed)
}

/// Replaces a 16-bit L4 field at `off` (a port or the echo identifier),
/// covered by the L4 checksum only.
#[inline(always)]
pub fn set_l4_u16(
    ctx: &TcContext,
    pkt: &Packet,
    off: usize,
    old: u16,
    new: u16,
) -> Result<(), StatIndex> {
    if old == new {
        return Ok(());
    }
    if let Some((csum_off, flags, _)) = l4_csum(pkt) {
        ctx.l4_csum_replace(csum_off, u64::from(old), u64::from(new), flags | 2)
            .map_err(|_| StatIndex::DropRewriteFailed)?;
    }
    ctx.store(off, &new, 0)
        .map_err(|_| StatIndex::DropRewriteFailed)
}

/// Decrements the TTL (the caller made sure it is above 1). The TTL shares
/// a 16-bit checksum word with the protocol byte: the update is that word.
#[inline(always)]
pub fn dec_ttl(ctx: &TcContext, pkt: &Packet) -> Result<(), StatIndex> {
    let ttl = pkt.ttl.wrapping_sub(1);
    let old = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    let new = u16::from_ne_bytes([ttl, pkt.proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2)
        .map_err(|_| StatIndex::DropRewriteFailed)?;
    ctx.store(IP_TTL_OFF, &ttl, 0)
        .map_err(|_| StatIndex::DropRewriteFailed)
}

/// Writes both MAC addresses (destination, then source).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), StatIndex> {
    let macs: [u8; 12] = [
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src[0], src[1], src[2], src[3], src[4],
        src[5],
    ];
    ctx.store(0, &macs, 0)
        .map_err(|_| StatIndex::DropRewriteFailed)
}
