//! Raw IPv4 for the translation tests (translation_icmp.rs):
//!
//! - `nettool icmpwatch MILLIS`: every ICMP error this namespace receives
//!   for MILLIS ms, one line each: `icmp type=T code=C src=IP dst=IP
//!   quote_src=IP quote_dst=IP quote_proto=P quote_sport=N quote_dport=N
//!   checksums=ok|bad quote_l4=ok|bad|none` (checksums: ICMP and quoted
//!   IPv4; quote_l4: the quoted UDP/TCP checksum when quoted whole, which
//!   a kernel quotes as it received it, partial when the sender offloaded
//!   it);
//! - `nettool rawecho PROTO MILLIS`: answers each packet of IP protocol
//!   PROTO with the same payload, back to its source, for MILLIS ms, and
//!   prints `from=IP,...` of what it received;
//! - `nettool rawask PROTO IP`: sends one packet of IP protocol PROTO to IP
//!   and prints `reply from=IP` when one comes back from IP (2 s), else
//!   fails.
//!
//! Raw sockets receive the IPv4 header with the payload; the kernel writes
//! the header of what they send. `icmpwatch` and `rawecho` print
//! `listening on ...` once their socket is open.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

const MAX_MILLIS: u64 = 30_000;
/// A GRE header (RFC 2784: no flags, version 0, protocol 0x88b5, the
/// local experimental EtherType) before the text, so that GRE trackers
/// (the kernel's conntrack) take it for what it is; other protocols carry
/// the same bytes.
const PAYLOAD: &[u8] = b"\x00\x00\x88\xb5netctl raw ip probe";

fn raw_socket(proto: i32, timeout: Duration) -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we own from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
    }
    Ok(socket)
}

fn parse_proto(proto: &str) -> Result<i32, String> {
    match proto.parse::<u8>() {
        Ok(p) if p != 0 && p != 255 => Ok(i32::from(p)),
        _ => Err(format!("bad IP protocol {proto}")),
    }
}

fn parse_millis(millis: &str) -> Result<Duration, String> {
    millis
        .parse::<u64>()
        .map(|ms| Duration::from_millis(ms.min(MAX_MILLIS)))
        .map_err(|_| format!("bad milliseconds {millis}"))
}

fn recv(socket: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: the buffer outlives the call and its length is given.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).ok()
}

fn send_to(socket: &OwnedFd, payload: &[u8], to: Ipv4Addr) -> Result<(), String> {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from(to).to_be();
    // SAFETY: the payload and the address outlive the call; lengths given.
    let n = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(format!("send to {to}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// One's complement sum, folded and complemented (0 over data holding a
/// right checksum).
fn checksum(chunks: &[&[u8]]) -> u16 {
    super::inet_checksum(chunks)
}

/// The line `icmpwatch` prints for an ICMP error (IPv4 header first), or
/// None for other ICMP.
fn describe_error(packet: &[u8]) -> Option<String> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
    if ![3, 11, 12].contains(&ty) {
        return None;
    }
    let quote = icmp.get(8..)?;
    let qihl = usize::from(quote.first()? & 0x0f) * 4;
    let ql4 = quote.get(qihl..)?;
    let ok = checksum(&[icmp]) == 0 && checksum(&[quote.get(..qihl)?]) == 0;
    let qtotal = usize::from(u16::from_be_bytes([quote[2], quote[3]]));
    let qproto = quote[9];
    let mut l4 = "none";
    if qtotal == quote.len() && (qproto == 6 || qproto == 17) {
        let udp_none = qproto == 17 && ql4.get(6..8) == Some(&[0, 0]);
        if !udp_none {
            let mut pseudo = quote[12..20].to_vec();
            pseudo.extend_from_slice(&[0, qproto]);
            pseudo.extend_from_slice(&(ql4.len() as u16).to_be_bytes());
            l4 = if checksum(&[&pseudo, ql4]) == 0 {
                "ok"
            } else {
                "bad"
            };
        }
    }
    let (sport, dport) = match ql4.get(..4) {
        Some(p) if qproto == 6 || qproto == 17 => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        _ => (0, 0),
    };
    Some(format!(
        "icmp type={ty} code={code} src={} dst={} quote_src={} quote_dst={} quote_proto={qproto} \
         quote_sport={sport} quote_dport={dport} checksums={} quote_l4={l4}",
        addr(&packet[12..16]),
        addr(&packet[16..20]),
        addr(&quote[12..16]),
        addr(&quote[16..20]),
        if ok { "ok" } else { "bad" }
    ))
}

pub fn icmp_watch(millis: &str) -> Result<(), String> {
    let window = parse_millis(millis)?;
    let socket = raw_socket(libc::IPPROTO_ICMP, Duration::from_millis(100))?;
    println!("listening on icmp");
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Some(n) = recv(&socket, &mut buf) {
            if let Some(line) = describe_error(&buf[..n]) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

pub fn raw_echo(proto: &str, millis: &str) -> Result<(), String> {
    let proto = parse_proto(proto)?;
    let window = parse_millis(millis)?;
    let socket = raw_socket(proto, Duration::from_millis(100))?;
    println!("listening on ip protocol {proto}");
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Some(n) = recv(&socket, &mut buf) else {
            continue;
        };
        if n < 20 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let from = addr(&buf[12..16]);
        if buf.get(ihl..n) != Some(PAYLOAD) {
            continue;
        }
        seen.push(from.to_string());
        // An address this namespace has no route to (a container's
        // private one) gets no answer; the list says who asked.
        let _ = send_to(&socket, PAYLOAD, from);
    }
    println!("from={}", seen.join(","));
    Ok(())
}

pub fn raw_ask(proto: &str, to: &str) -> Result<(), String> {
    let proto = parse_proto(proto)?;
    let to: Ipv4Addr = to.parse().map_err(|_| format!("bad address {to}"))?;
    let socket = raw_socket(proto, Duration::from_millis(100))?;
    send_to(&socket, PAYLOAD, to)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Some(n) = recv(&socket, &mut buf) else {
            continue;
        };
        if n < 20 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        // Our own packet is not looped back to a raw socket of the sender;
        // only the peer's answer counts.
        if addr(&buf[12..16]) == to && buf.get(ihl..n) == Some(PAYLOAD) {
            println!("reply from={to}");
            return Ok(());
        }
    }
    Err(format!("no reply from {to} in protocol {proto}"))
}
