//! Ethernet + IPv4 frames for the tests that feed the TC programs: a builder
//! ([`Frame`]) that computes every checksum, a reader ([`view`]), checksum
//! checks, and the odd frames (ARP, IPv6, cut short) that the programs must
//! leave alone or drop (also sent for real by `nettool arpsend|rasend`).
//! Nothing here knows the tests' topology: frames between its
//! hosts are built in [`crate::tc::topology`].

use std::net::Ipv4Addr;

// ---------------------------------------------------------------------------
// Protocol numbers and TCP flags.

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const PSH: u8 = 0x08;
pub const RST: u8 = 0x04;

/// Where the IPv4 header starts: after the Ethernet header.
const ETH_LEN: usize = 14;

/// Internet checksum (RFC 1071), folded and complemented: 0 over data that
/// includes a correct checksum.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for bytes in chunks {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------
// The builder.

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `checksum: false` sends 0 ("no checksum", legal on IPv4).
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
    },
    Icmp {
        ty: u8,
        id: u16,
        seq: u16,
    },
    /// Another protocol, with the payload as its content.
    Raw {
        proto: u8,
    },
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        checksum: true,
    }
}

/// UDP with a checksum of 0: "none", which a translation must keep.
pub fn udp_no_checksum(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        checksum: false,
    }
}

pub fn echo(ty: u8, id: u16) -> L4 {
    L4::Icmp { ty, id, seq: 7 }
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Flags and fragment offset, host order (0x4000: DF).
    pub frag: u16,
    /// IP options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// TCP sequence and acknowledgment numbers (other protocols: unused).
    pub seq: u32,
    pub ack: u32,
}

impl Frame {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame {
            dst_mac,
            src_mac,
            src,
            dst,
            ttl: 64,
            frag: 0x4000,
            options: Vec::new(),
            l4,
            payload: b"netctl datapath test payload".to_vec(),
            seq: 0x1000_0001,
            ack: 0x2000_0002,
        }
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } => ICMP,
            L4::Raw { proto } => proto,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let pseudo = |len: usize| {
            let mut p = Vec::new();
            p.extend_from_slice(&self.src.octets());
            p.extend_from_slice(&self.dst.octets());
            p.extend_from_slice(&[0, self.proto()]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        };
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&self.seq.to_be_bytes());
                h.extend_from_slice(&self.ack.to_be_bytes());
                h.extend_from_slice(&[0x50, flags]); // data offset 5, flags
                h.extend_from_slice(&64240u16.to_be_bytes()); // window
                h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                h.extend_from_slice(&self.payload);
                let c = checksum(&[&pseudo(h.len()), &h]);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp {
                sport,
                dport,
                checksum: with_checksum,
            } => {
                let len = 8 + self.payload.len();
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&(len as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.payload);
                if with_checksum {
                    let c = match checksum(&[&pseudo(len), &h]) {
                        0 => 0xffff,
                        c => c,
                    };
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            L4::Icmp { ty, id, seq } => {
                let mut h = vec![ty, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&self.payload);
                let c = checksum(&[&h]);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Raw { .. } => self.payload.clone(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "IP options come in words");
        let l4 = self.l4_bytes();
        let ihl = 20 + self.options.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// A copy of `frame` with `change` applied: how a test says "the same frame,
/// translated".
pub fn with<F: FnOnce(&mut Frame)>(frame: &Frame, change: F) -> Frame {
    let mut f = frame.clone();
    change(&mut f);
    f
}

// ---------------------------------------------------------------------------
// ICMP errors.

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;
/// Destination unreachable codes: port unreachable, fragmentation needed.
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// The L4 of an ICMP error: `ty`/`code`, the 4 bytes after the checksum
/// (`rest`: the next-hop MTU of a frag-needed, the pointer of a parameter
/// problem), and the first `quote` bytes (all of it when `None`) of the
/// IPv4 packet `quoted` (its Ethernet header left out), with the ICMP
/// checksum over it all. Use as `Frame { l4: L4::Raw { proto: ICMP },
/// payload, .. }` (see [`icmp_error`]).
pub fn icmp_error_payload(
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &Frame,
    quote: Option<usize>,
) -> Vec<u8> {
    let packet = quoted.bytes();
    let ip = &packet[ETH_LEN..];
    let ip = &ip[..quote.unwrap_or(ip.len()).min(ip.len())];
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&rest);
    h.extend_from_slice(ip);
    let c = checksum(&[&h]);
    h[2..4].copy_from_slice(&c.to_be_bytes());
    h
}

/// A frame carrying an ICMP error from `src` to `dst` that quotes `quoted`
/// whole (as Linux does for packets shorter than 576 bytes).
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (ty, code): (u8, u8),
    quoted: &Frame,
) -> Frame {
    let mut f = Frame::new(src_mac, dst_mac, src, dst, L4::Raw { proto: ICMP });
    f.frag = 0;
    let rest = if (ty, code) == (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) {
        [0, 0, 0x05, 0x00] // next-hop MTU 1280
    } else {
        [0; 4]
    };
    f.payload = icmp_error_payload(ty, code, rest, quoted, None);
    f
}

/// The checksums inside an ICMP error: the quoted IPv4 header's, and the
/// quoted TCP, UDP or ICMP checksum when the quote holds the whole packet
/// (what [`icmp_error`] builds). The outer ones: [`assert_checksums`].
pub fn assert_quoted_checksums(frame: &[u8]) {
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(ip[9], ICMP, "an ICMP error");
    let quoted = &ip[ihl + 8..total];
    let mut inner = vec![0u8; ETH_LEN];
    inner[12..14].copy_from_slice(&[0x08, 0x00]);
    inner.extend_from_slice(quoted);
    let inner_total = usize::from(u16::from_be_bytes([quoted[2], quoted[3]]));
    assert_eq!(
        inner_total,
        quoted.len(),
        "the quote holds the whole packet"
    );
    assert_checksums(&inner);
}

// ---------------------------------------------------------------------------
// Frames the programs must not take for whole IPv4 packets.

/// The frame (20-byte IPv4 header) with another IPv4 total length, and the
/// header checksum to match.
pub fn with_total_length(frame: &[u8], total: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&f[ETH_LEN..ETH_LEN + 20]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The frame (20-byte IPv4 header) cut 10 bytes into its L4 header, with a
/// consistent total length and header checksum: only the L4 header is short.
pub fn cut_l4(frame: &[u8]) -> Vec<u8> {
    with_total_length(&frame[..ETH_LEN + 30], 30)
}

/// An ARP request from `src_mac` (`sender` asking for `target`), broadcast.
pub fn arp_frame(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp_packet(ARP_REQUEST, src_mac, src_mac, sender, target)
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet, broadcast, whose Ethernet source
/// (`eth_src`) and sender MAC (`sha`) may differ: what a container forging
/// its identity would send. A gratuitous ARP has `spa == tpa`.
pub fn arp_packet(
    op: u16,
    eth_src: [u8; 6],
    sha: [u8; 6],
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]); // Ethernet/IPv4
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An ICMPv6 router advertisement (RFC 4861) from `src_mac`, with the
/// link-local source derived from it, to all nodes: a default router for
/// 1800 s, and `prefix`::/64 to autoconfigure addresses in. What a
/// container would send to give the host a route and an address through it.
pub fn router_advertisement(src_mac: [u8; 6], prefix: [u8; 8]) -> Vec<u8> {
    let mut src = [0u8; 16];
    src[..2].copy_from_slice(&[0xfe, 0x80]);
    src[8..11].copy_from_slice(&[src_mac[0] ^ 2, src_mac[1], src_mac[2]]);
    src[11..13].copy_from_slice(&[0xff, 0xfe]);
    src[13..].copy_from_slice(&src_mac[3..]);
    // Type 134, code 0, checksum, hop limit 64, no flags, router lifetime
    // 1800 s, reachable time and retransmission timer unspecified.
    let mut icmp = vec![134, 0, 0, 0, 64, 0];
    icmp.extend_from_slice(&1800u16.to_be_bytes());
    icmp.extend_from_slice(&[0; 8]);
    // Source link-layer address option.
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac);
    // Prefix information: /64, on-link and autonomous, valid 1 day,
    // preferred 4 hours.
    icmp.extend_from_slice(&[3, 4, 64, 0xc0]);
    icmp.extend_from_slice(&86_400u32.to_be_bytes());
    icmp.extend_from_slice(&14_400u32.to_be_bytes());
    icmp.extend_from_slice(&[0; 4]);
    icmp.extend_from_slice(&prefix);
    icmp.extend_from_slice(&[0; 8]);
    to_all_nodes(src_mac, src, icmp)
}

/// An ICMPv6 neighbour-discovery message (`icmp`, checksum left 0) from
/// `src_mac` and `src` to all nodes (ff02::1 at 33:33:00:00:00:01), its
/// checksum filled in; hop limit 255, without which a receiver ignores
/// neighbour discovery.
fn to_all_nodes(src_mac: [u8; 6], src: [u8; 16], mut icmp: Vec<u8>) -> Vec<u8> {
    let mut all_nodes = [0u8; 16];
    all_nodes[..2].copy_from_slice(&[0xff, 0x02]);
    all_nodes[15] = 1;
    let len = icmp.len() as u32;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&all_nodes);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let c = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    // Version 6; payload length; next header ICMPv6; hop limit 255.
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&all_nodes);
    f.extend_from_slice(&icmp);
    f
}

/// An unsolicited neighbour advertisement (override set, to all nodes)
/// from `src_mac` and `src`, saying that `target` is at `src_mac`: what a
/// container sends to take over another's IPv6 address.
pub fn neighbour_advertisement(src_mac: [u8; 6], src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    // Type 136, code 0, checksum, flags: override (0x20), then the target
    // and its target link-layer address option.
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&target);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&src_mac);
    to_all_nodes(src_mac, src, icmp)
}

/// An IPv6 UDP datagram (fd.. to fe..) from `src_mac` to `dst_mac`.
pub fn ipv6_frame(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]); // UDP, 8 bytes
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
    f
}

// ---------------------------------------------------------------------------
// The reader and the checks.

/// What a frame says, read back.
#[derive(Debug, PartialEq, Eq)]
pub struct View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// Ports, or the echo identifier in both.
    pub sport: u16,
    pub dport: u16,
}

pub fn view(frame: &[u8]) -> View {
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 frame");
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = &ip[ihl..];
    let (sport, dport) = match ip[9] {
        ICMP => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    View {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        proto: ip[9],
        sport,
        dport,
    }
}

/// Recomputes the IPv4 header checksum and the L4 checksum of a frame
/// (pseudo header for TCP and UDP); a UDP checksum of 0 means "none".
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(checksum(&[&ip[..ihl]]), 0, "IPv4 header checksum");
    let l4 = &ip[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    match ip[9] {
        TCP => assert_eq!(checksum(&[&pseudo, l4]), 0, "TCP checksum"),
        UDP if l4[6..8] == [0, 0] => {}
        UDP => assert_eq!(checksum(&[&pseudo, l4]), 0, "UDP checksum"),
        ICMP => assert_eq!(checksum(&[l4]), 0, "ICMP checksum"),
        _ => {}
    }
}

/// The frame is what `expected` builds, byte for byte (addresses, ports,
/// MACs, TTL, payload, and checksums equal to freshly computed ones), and
/// its checksums verify.
pub fn assert_frame(out: &[u8], expected: &Frame) {
    let want = expected.bytes();
    assert_eq!(view(out), view(&want), "rewritten headers");
    assert_eq!(out, &want[..], "the whole frame");
    assert_checksums(out);
}

// ---------------------------------------------------------------------------
// Fragments.

/// The IPv4 datagram of `frame` cut into fragments carrying at most `chunk`
/// bytes of it each (a multiple of 8, as RFC 791 wants every fragment but
/// the last), all with identification `id`: offset and MF set, DF cleared,
/// total length and header checksum to match, the Ethernet header and IP
/// options copied into each (options are not, in reality, always copied;
/// the programs do not read them).
pub fn fragments(frame: &[u8], id: u16, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment data comes in 8-byte blocks");
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let data = &ip[ihl..total];
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    assert!(pieces.len() > 1, "the datagram fits in one fragment");
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut header = ip[..ihl].to_vec();
            header[2..4].copy_from_slice(&((ihl + piece.len()) as u16).to_be_bytes());
            header[4..6].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
            let offset = (i * chunk / 8) as u16;
            header[6..8].copy_from_slice(&(more | offset).to_be_bytes());
            header[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&[&header]);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            let mut f = frame[..ETH_LEN].to_vec();
            f.extend_from_slice(&header);
            f.extend_from_slice(piece);
            f
        })
        .collect()
}

/// What a receiver's reassembly makes of `frags` (in any order): the first
/// fragment's headers with offset, MF and total length of the whole, and
/// the data put back in place. Panics on a hole, a missing last fragment,
/// or fragments of different datagrams (source, destination, protocol,
/// identification).
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let ident = |f: &[u8]| {
        let ip = &f[ETH_LEN..];
        (ip[4..6].to_vec(), ip[9], ip[12..20].to_vec())
    };
    let mut parts: Vec<(usize, bool, &[u8], &[u8])> = frags
        .iter()
        .map(|f| {
            assert_eq!(ident(f), ident(&frags[0]), "fragments of one datagram");
            let ip = &f[ETH_LEN..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let field = u16::from_be_bytes([ip[6], ip[7]]);
            let offset = usize::from(field & 0x1fff) * 8;
            (
                offset,
                field & 0x2000 != 0,
                &f[..ETH_LEN + ihl],
                &ip[ihl..total],
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    assert_eq!(parts[0].0, 0, "the first fragment is there");
    assert!(!parts.last().unwrap().1, "the last fragment is there");
    let mut data = Vec::new();
    for (offset, _, _, piece) in &parts {
        assert_eq!(*offset, data.len(), "no hole, no overlap");
        data.extend_from_slice(piece);
    }
    let mut frame = parts[0].2.to_vec();
    let ihl = frame.len() - ETH_LEN;
    let ip = &mut frame[ETH_LEN..];
    ip[2..4].copy_from_slice(&((ihl + data.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&[&ip[..ihl]]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    frame.extend_from_slice(&data);
    frame
}

/// A fragment's IPv4 header checksum is right.
pub fn assert_ip_checksum(frame: &[u8]) {
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(checksum(&[&ip[..ihl]]), 0, "IPv4 header checksum");
}

/// The sequence space a TCP frame takes: its payload, plus one each for
/// SYN and FIN (what its sender's next sequence number moves by).
pub fn seq_len(frame: &Frame) -> u32 {
    let flags = match frame.l4 {
        L4::Tcp { flags, .. } => flags,
        _ => 0,
    };
    frame.payload.len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0)
}

/// `frame` with these TCP sequence and acknowledgment numbers.
pub fn numbered(frame: &Frame, seq: u32, ack: u32) -> Frame {
    with(frame, |f| {
        f.seq = seq;
        f.ack = ack;
    })
}
