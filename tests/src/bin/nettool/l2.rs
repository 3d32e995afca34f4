//! `nettool arpsend`, `nettool rasend` and `nettool nasend`: the link-layer frames a container
//! would send to take over another's address or to become the host's
//! router, put on the wire as they are through an AF_PACKET socket (so
//! they go out whatever the sender's own IPv6 or ARP settings). The frames
//! are built by the test library's `frames`, as the TC tests build theirs.

use std::net::Ipv4Addr;

use netctl_tests::frames::{
    arp_packet, neighbour_advertisement, router_advertisement, ARP_REQUEST,
};

use super::{parse_mac, send_frames, MAX_RAW_FRAMES};

/// The prefix the router advertisements offer: 2001:db8:1::/64
/// (documentation addresses, RFC 3849).
const RA_PREFIX: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0];

fn parse_count(count: &str) -> Result<u64, String> {
    let count: u64 = count.parse().map_err(|_| format!("bad count {count}"))?;
    Ok(count.min(MAX_RAW_FRAMES))
}

/// COUNT gratuitous ARP requests (sender and target address both
/// SENDER_IP, broadcast) from Ethernet source ETH_SRC with sender MAC
/// SENDER_MAC; prints `sent=N`.
pub fn arp_send(iface: &str, args: [&str; 4]) -> Result<(), String> {
    let [eth_src, sender_mac, sender_ip, count] = args;
    let eth_src = parse_mac(eth_src)?;
    let sender_mac = parse_mac(sender_mac)?;
    let sender: Ipv4Addr = sender_ip
        .parse()
        .map_err(|_| format!("bad address {sender_ip}"))?;
    let count = parse_count(count)?;
    let frames = (0..count).map(|_| arp_packet(ARP_REQUEST, eth_src, sender_mac, sender, sender));
    let sent = send_frames(iface, frames)?;
    println!("sent={sent}");
    Ok(())
}

/// COUNT unsolicited neighbour advertisements from SRC_MAC and SRC_IP
/// saying that TARGET is at SRC_MAC; prints `sent=N`.
pub fn na_send(iface: &str, args: [&str; 4]) -> Result<(), String> {
    let [src_mac, src_ip, target, count] = args;
    let src_mac = parse_mac(src_mac)?;
    let ip = |text: &str| {
        text.parse::<std::net::Ipv6Addr>()
            .map(|ip| ip.octets())
            .map_err(|_| format!("bad address {text}"))
    };
    let (src, target) = (ip(src_ip)?, ip(target)?);
    let count = parse_count(count)?;
    let frames = (0..count).map(|_| neighbour_advertisement(src_mac, src, target));
    let sent = send_frames(iface, frames)?;
    println!("sent={sent}");
    Ok(())
}

/// COUNT router advertisements from SRC_MAC (and its link-local address);
/// prints `sent=N`.
pub fn ra_send(iface: &str, src_mac: &str, count: &str) -> Result<(), String> {
    let src_mac = parse_mac(src_mac)?;
    let count = parse_count(count)?;
    let frames = (0..count).map(|_| router_advertisement(src_mac, RA_PREFIX));
    let sent = send_frames(iface, frames)?;
    println!("sent={sent}");
    Ok(())
}
