//! Reading a frame into a [`Packet`]: plain values copied out of the
//! headers, so that nothing holds a packet pointer once the rewrites start
//! (every `bpf_skb_store_bytes` / `bpf_l*_csum_replace` invalidates the
//! verifier's packet pointers; offsets stay valid, pointers do not).

use core::mem;

use aya_ebpf::programs::TcContext;
use netctl_common::stats::StatIndex;
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Offset of the IPv4 header (no VLAN tags on our links).
pub const IP_OFF: usize = EthHdr::LEN;
/// Offsets of fields inside the IPv4 header.
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// The ICMP errors that quote the packet they are about (RFC 792).
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// Protocols whose checksum covers the IP addresses (a pseudo header) in a
/// way address-only translation would break: DCCP, UDP-Lite.
pub const PROTO_DCCP: u8 = 33;
pub const PROTO_UDPLITE: u8 = 136;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What follows the IPv4 header, as far as translation cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// ICMP echo request or reply: the identifier plays the port.
    IcmpEcho,
    /// An ICMP error (destination unreachable, time exceeded, parameter
    /// problem), not a fragment: translated through the flow its quote
    /// belongs to (`icmp_error`), never a flow of its own.
    IcmpError,
    /// A protocol without ports (anything but TCP, UDP and ICMP, fragments
    /// included), or ICMP that is neither echo nor an error (not a
    /// fragment): translated by address only, tracked by addresses and
    /// protocol (ports 0), as MASQUERADE does for protocols it has no
    /// module for.
    Generic,
    /// The first fragment of ICMP that is neither echo nor an error:
    /// nothing to translate it by.
    Other,
    /// A non-first fragment: no L4 header to read.
    Fragment,
    /// TCP, UDP or ICMP whose header is cut short, by the frame's end or by
    /// the IPv4 total length. Not an `Err` of [`parse`]: the IPv4 header is
    /// whole, so the kernel would still route it, and anti-spoofing and
    /// isolation must see it first.
    Truncated,
}

#[derive(Clone, Copy)]
pub struct Packet {
    pub eth_src: [u8; 6],
    /// Addresses as they sit in the packet (network order).
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    /// MF set or a fragment offset: part of a fragmented datagram (the
    /// first fragment, offset 0, is parsed as a whole packet; the others
    /// are [`L4::Fragment`]).
    pub fragment: bool,
    /// The IPv4 identification (network order): with the addresses and the
    /// protocol, which datagram a fragment belongs to.
    pub ip_id: u16,
    pub l4: L4,
    /// Offset of the L4 header: 14 + ihl * 4, so IP options are skipped.
    pub l4_off: usize,
    /// Ports (TCP/UDP) or the echo identifier (both fields), network order;
    /// 0 for the other kinds.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// TCP (0 otherwise), host order: sequence and acknowledgment numbers,
    /// the sequence space the segment takes (payload, plus one each for
    /// SYN and FIN), the raw window. For conntrack's window.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_len: u32,
    pub tcp_win: u16,
    /// ICMP type, 0 for other protocols.
    pub icmp_type: u8,
}

impl Packet {
    /// A translatable tuple: TCP, UDP or ICMP echo, a first fragment
    /// included (its ports are real; its translation is recorded in
    /// `FRAGMENTS` for the later fragments, which are [`L4::Fragment`] and
    /// have none); and a generic (address-only) flow, which has no ports,
    /// so every fragment of it carries its whole tuple.
    #[inline(always)]
    pub fn has_tuple(&self) -> bool {
        matches!(self.l4, L4::Tcp | L4::Udp | L4::IcmpEcho | L4::Generic)
    }

    /// The first fragment of a fragmented datagram with ports or an echo
    /// identifier: offset 0, MF set (generic flows need no fragment
    /// tracking).
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        self.fragment && matches!(self.l4, L4::Tcp | L4::Udp | L4::IcmpEcho)
    }

    /// A packet that may open a flow to a published port: any UDP
    /// datagram, and for TCP a bare SYN (no ACK, RST or FIN). Anything else
    /// without a flow (a SYN-ACK, say) answers a connection the host itself
    /// opened, and must not be DNATed.
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        self.l4 != L4::Tcp || self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
    }

    /// TCP or UDP with ports (what `PORTMAP` can publish).
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        matches!(self.l4, L4::Tcp | L4::Udp)
    }
}

/// A pointer to a `T` at `offset`, after the bounds check the verifier
/// needs before any direct packet access: `data + offset + size <= data_end`
/// compared in this shape (pointer plus constant or bounded variable against
/// `data_end`; never arithmetic on `data_end` itself, which it rejects).
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// Reads the headers. `Err` carries the reason to pass the frame untouched
/// (`NotIpv4`, or `Truncated` when the Ethernet or IPv4 header is: the
/// kernel's ip_rcv drops those itself); a short L4 header is
/// [`L4::Truncated`].
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, StatIndex> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| StatIndex::Truncated)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let (ether_type, eth_src) = unsafe { ((*eth).ether_type, (*eth).src_addr) };
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(StatIndex::NotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, IP_OFF).map_err(|()| StatIndex::Truncated)?;
    // SAFETY: as above.
    let ip = unsafe { *ip };
    if ip.vihl >> 4 != 4 {
        return Err(StatIndex::NotIpv4);
    }
    // `& 0xf` bounds the header length to 60 bytes: the verifier then knows
    // the L4 offset is at most 74 and accepts `data + l4_off` below.
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Err(StatIndex::Truncated);
    }
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if tot_len < ihl || (ctx.len() as usize) < IP_OFF + tot_len {
        return Err(StatIndex::Truncated);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let offset = frags & 0x1fff;
    let more_fragments = frags & 0x2000 != 0;
    let l4_off = IP_OFF + ihl;
    // Where the datagram ends: bytes past it (Ethernet padding) are no
    // header, whatever they hold; the receiving kernel trims them.
    let l4_end = IP_OFF + tot_len;

    let mut pkt = Packet {
        eth_src,
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
        ttl: ip.ttl,
        tos: ip.tos,
        fragment: more_fragments || offset != 0,
        ip_id: u16::from_ne_bytes(ip.id),
        l4: L4::Other,
        l4_off,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_len: 0,
        tcp_win: 0,
        icmp_type: 0,
    };
    if !matches!(pkt.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        pkt.l4 = L4::Generic;
        return Ok(pkt);
    }
    if offset != 0 {
        pkt.l4 = L4::Fragment;
        return Ok(pkt);
    }
    match pkt.proto {
        PROTO_TCP => {
            let Ok(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            };
            if l4_off + TcpHdr::LEN > l4_end {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            }
            // SAFETY: inside the packet (ptr_at); the data offset is the
            // high nibble of byte 12, flags are byte 13 of the header.
            let doff = unsafe {
                pkt.sport = u16::from_ne_bytes((*tcp).source);
                pkt.dport = u16::from_ne_bytes((*tcp).dest);
                pkt.tcp_seq = u32::from_be_bytes((*tcp).seq);
                pkt.tcp_ack = u32::from_be_bytes((*tcp).ack_seq);
                pkt.tcp_win = u16::from_be_bytes((*tcp).window);
                pkt.tcp_flags = *tcp.cast::<u8>().add(13);
                u32::from(*tcp.cast::<u8>().add(12) >> 4) * 4
            };
            // Payload: what the IPv4 total length leaves after the headers
            // (a GSO packet counts whole); SYN and FIN take one number each.
            let l4_len = (l4_end - l4_off) as u32;
            let syn_fin =
                u32::from(pkt.tcp_flags & TCP_SYN != 0) + u32::from(pkt.tcp_flags & TCP_FIN != 0);
            pkt.tcp_len = l4_len.saturating_sub(doff) + syn_fin;
            pkt.l4 = L4::Tcp;
        }
        PROTO_UDP => {
            let Ok(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            };
            if l4_off + UdpHdr::LEN > l4_end {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            }
            // SAFETY: inside the packet (ptr_at).
            unsafe {
                pkt.sport = u16::from_ne_bytes((*udp).src);
                pkt.dport = u16::from_ne_bytes((*udp).dst);
            }
            pkt.l4 = L4::Udp;
        }
        PROTO_ICMP => {
            let Ok(icmp) = ptr_at::<Icmpv4Hdr>(ctx, l4_off) else {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            };
            if l4_off + Icmpv4Hdr::LEN > l4_end {
                pkt.l4 = L4::Truncated;
                return Ok(pkt);
            }
            // SAFETY: inside the packet (ptr_at).
            let (ty, data) = unsafe { ((*icmp).type_, (*icmp).data) };
            pkt.icmp_type = ty;
            if ty == ICMP_ECHO_REQUEST || ty == ICMP_ECHO_REPLY {
                let id = u16::from_ne_bytes([data[0], data[1]]);
                pkt.sport = id;
                pkt.dport = id;
                pkt.l4 = L4::IcmpEcho;
            } else if pkt.fragment {
                pkt.l4 = L4::Other;
            } else if matches!(
                ty,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
            ) {
                pkt.l4 = L4::IcmpError;
            } else {
                pkt.l4 = L4::Generic;
            }
        }
        _ => {}
    }
    Ok(pkt)
}

/// An Ethernet/IPv4 ARP packet (RFC 826), as it follows the Ethernet
/// header.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpEthIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Who an ARP packet says it comes from: the frame's Ethernet source, and
/// the sender MAC and address it asks its receivers to believe.
#[derive(Clone, Copy)]
pub struct ArpSender {
    pub eth_src: [u8; 6],
    pub sha: [u8; 6],
    /// Network order, as in the packet.
    pub spa: u32,
}

/// A frame that [`parse`] did not take as IPv4, by what anti-spoofing
/// must do with it.
pub enum NotIpv4 {
    /// EtherType IPv6.
    Ipv6,
    /// An Ethernet/IPv4 ARP packet.
    Arp(ArpSender),
    /// EtherType ARP, but too short or not Ethernet/IPv4: nothing a
    /// receiver could learn from honestly.
    BadArp,
    /// Anything else (an IPv4 EtherType with another version, a VLAN tag,
    /// short frames...): the kernel's business.
    Other,
}

/// What a frame that is not IPv4 is (see [`NotIpv4`]).
#[inline(always)]
pub fn classify_not_ipv4(ctx: &TcContext) -> NotIpv4 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return NotIpv4::Other;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let (ether_type, eth_src) = unsafe { ((*eth).ether_type, (*eth).src_addr) };
    if ether_type == EtherType::Ipv6 as u16 {
        return NotIpv4::Ipv6;
    }
    if ether_type != EtherType::Arp as u16 {
        return NotIpv4::Other;
    }
    let Ok(arp) = ptr_at::<ArpEthIpv4>(ctx, EthHdr::LEN) else {
        return NotIpv4::BadArp;
    };
    // SAFETY: as above.
    let arp = unsafe { *arp };
    let ethernet_ipv4 = u16::from_be_bytes(arp.htype) == 1
        && u16::from_be_bytes(arp.ptype) == 0x0800
        && arp.hlen == 6
        && arp.plen == 4;
    if !ethernet_ipv4 {
        return NotIpv4::BadArp;
    }
    NotIpv4::Arp(ArpSender {
        eth_src,
        sha: arp.sha,
        spa: u32::from_ne_bytes(arp.spa),
    })
}

/// The `__sk_buff` ifindex: the device the program runs on.
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel handed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}
