//! Checksums on the wire: `nettool sniff IFACE --checksums` verifies the
//! IPv4 header checksum and the L4 checksum (TCP, UDP unless zero, ICMP)
//! of every IPv4 frame IFACE receives, until its stdin closes; `nettool bulk
//! HOST PORT BYTES` sends BYTES in one write to a `nettool sink`, so that
//! the sender's stack builds GSO-sized segments.
//!
//! A frame the sender left CHECKSUM_PARTIAL (checksum offload, GSO) carries
//! in its L4 checksum field only the pseudo-header sum, the seed a NIC
//! completes. The capture socket asks for a virtio-net header with every
//! frame (PACKET_VNET_HDR), which says so (NEEDS_CSUM, with where the sum
//! starts and where it goes): such a frame is completed here as a NIC would
//! complete it, then verified like any other. A translation that got the
//! seed wrong (a rewritten address not folded into it, say) shows as a bad
//! checksum, as it would on a real wire; nothing is skipped.
//!
//! The sniffer prints `listening on IFACE` once bound (a test starts its
//! traffic after that line), one `bad: ...` line per bad frame (the first
//! [`MAX_BAD_LINES`]), then
//! `frames=N tcp=T udp=U icmp=I partial=P gso=G bad=B lost=L` (lost: frames
//! the capture's buffer could not hold, not verified).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

/// Longest a checksum capture runs when its stdin never closes.
const MAX_CAPTURE: Duration = Duration::from_secs(60);
/// Room for a GSO frame of 64 KiB and more (the kernel's limit on a veth).
const FRAME_BUFFER: usize = 512 * 1024;
const MAX_BAD_LINES: u64 = 20;

/// struct virtio_net_hdr, as PACKET_VNET_HDR puts it before each frame (in
/// the host's byte order).
const VNET_HDR_LEN: usize = 10;
const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_GSO_NONE: u8 = 0;

const ETH_LEN: usize = 14;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Where a CHECKSUM_PARTIAL frame's sum starts and where it is stored,
/// relative to the start of the frame (the virtio-net header's fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    pub csum_start: usize,
    pub csum_offset: usize,
}

/// A verified frame: its L4 protocol (0 when it was not checked).
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub proto: u8,
}

/// RFC 1071 sum of `bytes`, folded but not complemented: 0xffff when a
/// segment holding its own checksum is right.
fn folded_sum(chunks: &[&[u8]]) -> u16 {
    !super::inet_checksum(chunks)
}

/// Verifies one Ethernet frame's IPv4 and L4 checksums. `partial`: the
/// frame is CHECKSUM_PARTIAL and is completed first, as a NIC would.
pub fn verify_frame(frame: &[u8], partial: Option<Partial>) -> Result<Verified, String> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
        return Err(format!("not an IPv4 frame ({} bytes)", frame.len()));
    }
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return Err(format!(
            "bad IPv4 header: version/ihl {:#04x}, total length {total}, {} bytes captured",
            ip[0],
            ip.len()
        ));
    }
    let (src, dst) = (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let proto = ip[9];
    let what = format!("proto {proto} {src} -> {dst}");
    if folded_sum(&[&ip[..ihl]]) != 0xffff {
        return Err(format!("{what}: bad IPv4 header checksum"));
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let mut l4 = ip[ihl..total].to_vec();
    let field = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_ICMP => 2,
        _ => return Ok(Verified { proto: 0 }),
    };
    if let Some(p) = partial {
        if p.csum_start != ETH_LEN + ihl || p.csum_offset != field {
            return Err(format!(
                "{what}: partial checksum at {}+{}, not at the L4 header {}+{field}",
                p.csum_start,
                p.csum_offset,
                ETH_LEN + ihl
            ));
        }
        // The NIC's job: the sum from csum_start to the end, seed included.
        let complete = super::inet_checksum(&[&l4]);
        let complete = if proto == PROTO_UDP && complete == 0 {
            0xffff
        } else {
            complete
        };
        l4[field..field + 2].copy_from_slice(&complete.to_be_bytes());
    }
    if fragment {
        // The L4 checksum covers the whole datagram, not this piece.
        return Ok(Verified { proto: 0 });
    }
    if l4.len() < field + 2 {
        return Err(format!("{what}: L4 header cut short ({} bytes)", l4.len()));
    }
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    let sum = match proto {
        PROTO_ICMP => folded_sum(&[&l4]),
        PROTO_UDP if stored == 0 => return Ok(Verified { proto }),
        _ => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            folded_sum(&[&pseudo, &l4])
        }
    };
    if sum != 0xffff {
        let ports = if proto == PROTO_ICMP {
            String::new()
        } else {
            format!(
                " ports {}->{}",
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]])
            )
        };
        let kind = if partial.is_some() {
            " (completed)"
        } else {
            ""
        };
        return Err(format!(
            "{what}{ports}: bad L4 checksum {stored:#06x}{kind}, {} bytes",
            l4.len()
        ));
    }
    Ok(Verified { proto })
}

/// Counts of one capture.
#[derive(Default)]
struct Tally {
    frames: u64,
    tcp: u64,
    udp: u64,
    icmp: u64,
    partial: u64,
    gso: u64,
    bad: u64,
}

/// Sets an int socket option.
fn set_int(fd: &std::os::fd::OwnedFd, level: i32, name: i32, value: i32) -> Result<(), String> {
    // SAFETY: an int of the size given.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(format!(
            "setsockopt {level}/{name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Receive buffer of the capture: a 1 MB stream arrives faster than it is
/// verified, and what overflows is lost to the check (counted as `lost`).
const CAPTURE_RCVBUF: i32 = 64 << 20;

/// A packet socket on `iface` for IPv4 frames, with virtio-net headers.
fn capture_socket(iface: &str) -> Result<std::os::fd::OwnedFd, String> {
    // Protocol 0 until bound: no frame of another interface gets queued.
    let socket = super::packet_socket(0)?;
    set_int(&socket, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
    set_int(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        CAPTURE_RCVBUF,
    )?;
    super::bind_to_interface(&socket, iface)?;
    Ok(socket)
}

/// Captures on `iface` until stdin closes (or [`MAX_CAPTURE`]), verifying
/// every frame.
pub fn sniff_checksums(iface: &str) -> Result<(), String> {
    let socket = capture_socket(iface)?;
    println!("listening on {iface}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + MAX_CAPTURE;
    let mut tally = Tally::default();
    let mut buf = vec![0u8; VNET_HDR_LEN + FRAME_BUFFER];
    let mut stdin_open = true;
    while stdin_open && Instant::now() < deadline {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds, counted.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: the buffer outlives the call and its length is given.
            let n = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n > 0 {
                record(&buf, n as usize, &mut tally);
            }
        } else if fds[1].revents != 0 {
            // Stdin readable (or hung up): its end stops the capture.
            let mut byte = [0u8; 64];
            stdin_open = matches!(std::io::stdin().read(&mut byte), Ok(n) if n > 0);
        }
    }
    let lost = lost_frames(&socket)?;
    println!(
        "frames={} tcp={} udp={} icmp={} partial={} gso={} bad={} lost={lost}",
        tally.frames, tally.tcp, tally.udp, tally.icmp, tally.partial, tally.gso, tally.bad
    );
    Ok(())
}

/// Frames the kernel could not queue to the capture (PACKET_STATISTICS).
fn lost_frames(socket: &std::os::fd::OwnedFd) -> Result<u32, String> {
    // SAFETY: tpacket_stats is plain data; all-zero is a valid value.
    let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: a tpacket_stats of the size given.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            std::ptr::addr_of_mut!(stats).cast(),
            &mut len,
        )
    };
    if got < 0 {
        return Err(format!(
            "PACKET_STATISTICS: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(stats.tp_drops)
}

/// Verifies one received buffer (virtio-net header, then the frame) of
/// `len` bytes (more than the buffer: the frame was cut).
fn record(buf: &[u8], len: usize, tally: &mut Tally) {
    tally.frames += 1;
    let verdict = if len > buf.len() {
        Err(format!(
            "frame of {len} bytes larger than the capture buffer"
        ))
    } else {
        let hdr = &buf[..VNET_HDR_LEN];
        let field = |i: usize| usize::from(u16::from_ne_bytes([hdr[i], hdr[i + 1]]));
        let partial = (hdr[0] & VNET_F_NEEDS_CSUM != 0).then(|| Partial {
            csum_start: field(6),
            csum_offset: field(8),
        });
        tally.partial += u64::from(partial.is_some());
        tally.gso += u64::from(hdr[1] != VNET_GSO_NONE);
        verify_frame(&buf[VNET_HDR_LEN..len], partial)
    };
    match verdict {
        Ok(Verified { proto: PROTO_TCP }) => tally.tcp += 1,
        Ok(Verified { proto: PROTO_UDP }) => tally.udp += 1,
        Ok(Verified { proto: PROTO_ICMP }) => tally.icmp += 1,
        Ok(_) => {}
        Err(why) => {
            tally.bad += 1;
            if tally.bad <= MAX_BAD_LINES {
                println!("bad: {why}");
            }
        }
    }
}

/// Most bytes one `bulk` sends.
const MAX_BULK_BYTES: usize = 64 << 20;

/// Sends `bytes` with one write and reads the sink's count.
pub fn bulk(host: &str, port: &str, bytes: &str) -> Result<(), String> {
    let bytes: usize = bytes
        .parse()
        .map_err(|_| format!("bad byte count {bytes}"))?;
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, super::TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_write_timeout(Some(super::TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(super::TIMEOUT))
        .map_err(|e| e.to_string())?;
    let data = vec![0xa5u8; bytes.min(MAX_BULK_BYTES)];
    stream
        .write_all(&data)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    println!("sent={} {}", data.len(), reply.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);

    /// An Ethernet + IPv4 + TCP frame with right checksums, and its
    /// CHECKSUM_PARTIAL twin (the TCP field holding the pseudo-header seed).
    fn tcp_frames(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&SRC.octets());
        pseudo.extend_from_slice(&DST.octets());
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        let seed = folded_sum(&[&pseudo]);
        let full = super::super::inet_checksum(&[&pseudo, &tcp]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0]);
        ip.extend_from_slice(&SRC.octets());
        ip.extend_from_slice(&DST.octets());
        let c = super::super::inet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let frame = |check: u16| {
            let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
            f.extend_from_slice(&ip);
            let mut t = tcp.clone();
            t[16..18].copy_from_slice(&check.to_be_bytes());
            f.extend_from_slice(&t);
            f
        };
        (frame(full), frame(seed))
    }

    const PARTIAL: Partial = Partial {
        csum_start: 34,
        csum_offset: 16,
    };

    #[test]
    fn right_checksums_pass_and_any_flipped_bit_fails() {
        let (full, partial) = tcp_frames(b"hello, checksums");
        assert_eq!(verify_frame(&full, None), Ok(Verified { proto: PROTO_TCP }));
        assert_eq!(
            verify_frame(&partial, Some(PARTIAL)),
            Ok(Verified { proto: PROTO_TCP })
        );
        // A byte changed anywhere in the IPv4 header or the segment.
        for at in [15, 26, 30, 36, 50, full.len() - 1] {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            assert!(verify_frame(&bad, None).is_err(), "byte {at}");
        }
    }

    /// Recomputes the IPv4 header checksum of a frame after an edit.
    fn fix_ip_checksum(frame: &mut [u8]) {
        frame[24..26].fill(0);
        let c = super::super::inet_checksum(&[&frame[14..34]]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn a_seed_not_updated_for_a_rewritten_address_fails() {
        let (full, partial) = tcp_frames(b"seed");
        // Destination rewritten to 172.18.0.9, IPv4 header checksum updated,
        // the TCP seed not: a NIC would put a wrong checksum on the wire.
        let mut rewritten = partial;
        rewritten[33] = 9;
        fix_ip_checksum(&mut rewritten);
        assert!(verify_frame(&rewritten, Some(PARTIAL)).is_err());
        // A full checksum is no seed: completed, it is wrong.
        assert!(verify_frame(&full, Some(PARTIAL)).is_err());
    }

    #[test]
    fn udp_without_checksum_and_the_rawsend_frames_pass() {
        let frame =
            super::super::udp_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], SRC, DST, 53, 7);
        assert_eq!(
            verify_frame(&frame, None),
            Ok(Verified { proto: PROTO_UDP })
        );
        let mut unchecked = frame.clone();
        unchecked[40..42].fill(0);
        assert_eq!(
            verify_frame(&unchecked, None),
            Ok(Verified { proto: PROTO_UDP })
        );
        let mut bad = frame;
        bad[45] ^= 1;
        assert!(verify_frame(&bad, None).is_err());
    }
}
