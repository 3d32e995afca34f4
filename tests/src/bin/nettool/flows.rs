//! Modes for conntrack's capacity and state machine (translation_conntrack.rs):
//! many UDP flows at once, a spoofed SYN flood, a half-closed TCP
//! connection. Every loop is bounded in count and time.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

/// Sockets open at once (well under the default 1,024 descriptors; and
/// their datagrams within a server's default receive buffer).
const BATCH: u32 = 64;
/// At most this many flows, SYNs.
const MAX_FLOWS: u32 = 50_000;

fn number<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("bad {what} {text}"))
}

/// `udpflows HOST PORT FIRST_SPORT FLOWS SECONDS`: FLOWS UDP flows to
/// HOST:PORT, each from its own source port (FIRST_SPORT, FIRST_SPORT+1...),
/// one datagram each (sent again every 100 ms while unanswered, 5 s at
/// most), BATCH sockets at a time, SECONDS in all. Prints `sent=N
/// answered=M` (flows, not datagrams).
pub fn udp_flows(
    host: &str,
    port: &str,
    first: &str,
    flows: &str,
    seconds: &str,
) -> Result<(), String> {
    let server: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let first: u16 = number("port", first)?;
    let flows: u32 = number::<u32>("count", flows)?.min(MAX_FLOWS);
    let deadline = Instant::now() + Duration::from_secs(number("seconds", seconds)?);
    if u32::from(first) + flows > 65_536 {
        return Err("source ports past 65535".into());
    }
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut lost = Vec::new();
    let mut next = 0u32;
    while next < flows && Instant::now() < deadline {
        let batch: Vec<UdpSocket> = (next..(next + BATCH).min(flows))
            .map(|i| {
                let sport = first + i as u16;
                UdpSocket::bind(("0.0.0.0", sport)).map_err(|e| format!("bind port {sport}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        next += batch.len() as u32;
        for socket in &batch {
            socket.set_nonblocking(true).map_err(|e| e.to_string())?;
            if socket.send_to(b"hello\n", server).is_ok() {
                sent += 1;
            }
        }
        let mut waiting: Vec<&UdpSocket> = batch.iter().collect();
        let mut buf = [0u8; 256];
        // As a DNS client: an unanswered datagram is sent again (same
        // socket, same flow) every 100 ms, and a batch waits 5 s at most.
        let batch_deadline = deadline.min(Instant::now() + Duration::from_secs(5));
        let mut resend = Instant::now() + Duration::from_millis(100);
        while !waiting.is_empty() && Instant::now() < batch_deadline {
            waiting.retain(|s| match s.recv_from(&mut buf) {
                Ok(_) => {
                    answered += 1;
                    false
                }
                Err(_) => true,
            });
            if Instant::now() >= resend {
                for socket in &waiting {
                    let _ = socket.send_to(b"hello\n", server);
                }
                resend = Instant::now() + Duration::from_millis(100);
            }
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        lost.extend(
            waiting
                .iter()
                .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
                .take(20 - lost.len().min(20)),
        );
    }
    if !lost.is_empty() {
        eprintln!("unanswered source ports (first 20): {lost:?}");
    }
    println!("sent={sent} answered={answered}");
    Ok(())
}

/// A TCP SYN frame from `src:sport` to `dst:dport`.
fn syn_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
    tcp.extend_from_slice(&64_240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = super::inet_checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&40u16.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = super::inet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&macs.1);
    frame.extend_from_slice(&macs.0);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// `synflood IFACE SRC_MAC DST_MAC DST_IP DST_PORT COUNT`: COUNT bare SYNs
/// to DST_IP:DST_PORT out of IFACE (AF_PACKET), from spoofed sources of
/// 192.0.2.0/24 (TEST-NET-1, which no namespace of a sandbox holds: the
/// answers go nowhere, no RST comes back) and varying ports. Prints `sent=N`.
pub fn syn_flood(args: [&str; 6]) -> Result<(), String> {
    let [iface, src_mac, dst_mac, dst_ip, dst_port, count] = args;
    let macs = (super::parse_mac(src_mac)?, super::parse_mac(dst_mac)?);
    let dst: Ipv4Addr = number("address", dst_ip)?;
    let dport: u16 = number("port", dst_port)?;
    let count: u32 = number::<u32>("count", count)?.min(MAX_FLOWS);
    let frames = (0..count).map(|i| {
        let src = Ipv4Addr::new(192, 0, 2, 1 + (i % 250) as u8);
        let sport = 10_000 + (i / 250) as u16;
        syn_frame(macs, src, sport, dst, dport)
    });
    let sent = super::send_frames(iface, frames)?;
    println!("sent={sent}");
    Ok(())
}

/// `halfclose serve PORT DELAY_MS`: accepts one connection, reads until the
/// client's FIN (a half-close), waits DELAY_MS with the connection idle,
/// then sends `late data` and closes. Prints `listening on PORT` once bound.
pub fn half_close_serve(port: &str, delay_ms: &str) -> Result<(), String> {
    let delay = Duration::from_millis(number("delay", delay_ms)?);
    let listener = TcpListener::bind(("0.0.0.0", number::<u16>("port", port)?))
        .map_err(|e| format!("bind {port}: {e}"))?;
    println!("listening on {port}");
    let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut request = Vec::new();
    stream
        .read_to_end(&mut request)
        .map_err(|e| format!("read: {e}"))?;
    std::thread::sleep(delay);
    stream
        .write_all(b"late data\n")
        .map_err(|e| format!("write: {e}"))?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// `halfclose call HOST PORT TIMEOUT_MS`: connects, sends `hello`, closes its
/// sending side, and prints what comes back before the server's FIN
/// (`received=...`), waiting at most TIMEOUT_MS.
pub fn half_close_call(host: &str, port: &str, timeout_ms: &str) -> Result<(), String> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let timeout = Duration::from_millis(number("timeout", timeout_ms)?);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(b"hello\n")
        .map_err(|e| format!("write: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let result = stream.read_to_string(&mut reply);
    println!("received={}", reply.trim());
    result.map(|_| ()).map_err(|e| format!("read: {e}"))
}
