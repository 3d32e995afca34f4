//! Traffic tool for tests, the demo and benchmarks. Talks only to the
//! addresses it is given (sandbox addresses) and every loop is bounded.
//!
//!   nettool serve tcp|udp [IP:]PORT [--count N]
//!                                            answer each client with "peer=IP:PORT" (a UDP
//!                                            server bound to IP answers from IP)
//!   nettool call tcp|udp HOST PORT [--timeout-ms N]
//!                                            print the server's answer (3 s timeout)
//!   nettool sink [IP:]PORT [--count N]       count each TCP client's bytes, answer "received=N"
//!   nettool stream HOST PORT SECONDS         send for SECONDS, print "sent=N received=M"
//!   nettool pong PORT [--count N]            answer each byte with one byte, one client at a time
//!   nettool crr HOST PORT SECONDS            new connections/s against `pong`: connect,
//!                                            1-byte request, 1-byte response, close
//!   nettool rr HOST PORT SECONDS             request/response rate on one connection
//!   nettool udpsink PORT                     count UDP datagrams; answer "END" with "received=N"
//!   nettool udpflows HOST PORT FIRST_SPORT FLOWS SECONDS
//!                                            FLOWS UDP flows, one per source port from
//!                                            FIRST_SPORT, one datagram each to `serve udp`;
//!                                            prints `sent=N answered=M` (flows.rs)
//!   nettool synflood IFACE SRC_MAC DST_MAC DST_IP DST_PORT COUNT
//!                                            COUNT bare SYNs from spoofed 192.0.2.0/24
//!                                            sources out of IFACE (flows.rs)
//!   nettool halfclose serve PORT DELAY_MS | halfclose call HOST PORT TIMEOUT_MS
//!                                            one connection, half-closed by the client,
//!                                            answered DELAY_MS later (flows.rs)
//!   nettool udpflood HOST PORT SECONDS       send 64-byte datagrams to `udpsink` for SECONDS
//!
//!   nettool count [IP:]PORT MILLIS           count UDP datagrams for MILLIS ms, print
//!                                            `received=N` and `from=IP,...`
//!   nettool udptick IP:PORT SPORT EVERY_MS COUNT
//!                                            one UDP flow: COUNT datagrams from source
//!                                            port SPORT, one every EVERY_MS ms (ICMP
//!                                            errors ignored); prints `sent=N`
//!   nettool rawsend IFACE SRC_MAC DST_MAC SRC_IP DST_IP PORT COUNT [--truncated]
//!                                            send COUNT UDP frames built by hand
//!                                            (any source MAC and address) out of IFACE;
//!                                            --truncated: the IPv4 total length ends
//!                                            4 bytes into the UDP header
//!   nettool sniff IFACE MILLIS               count the IPv4 frames IFACE receives for
//!                                            MILLIS ms, per source: `from=IP:N,...`
//!   nettool sniff IFACE --checksums          verify the IPv4 and L4 checksums of every
//!                                            frame IFACE receives until stdin closes
//!                                            (checksums.rs)
//!   nettool bulk HOST PORT BYTES             send BYTES in one write to `sink` (GSO-sized
//!                                            segments)
//!   nettool probe tcp|udp|icmp HOST PORT [--timeout-ms N]
//!                                            one attempt: answered, refused, unreachable
//!                                            or timeout, and the packets sent (probe.rs)
//!   nettool arpsend IFACE ETH_SRC SENDER_MAC SENDER_IP COUNT
//!                                            send COUNT gratuitous ARP requests claiming
//!                                            SENDER_IP at SENDER_MAC (l2.rs)
//!   nettool rasend IFACE SRC_MAC COUNT      send COUNT IPv6 router advertisements of a
//!                                            default route and 2001:db8:1::/64 (l2.rs)
//!   nettool nasend IFACE SRC_MAC SRC_IP TARGET COUNT
//!                                            send COUNT unsolicited neighbour advertisements
//!                                            claiming TARGET at SRC_MAC (l2.rs)
//!
//!   nettool icmpwatch MILLIS                print each ICMP error received, its quote and
//!                                            whether its checksums verify (rawip.rs)
//!   nettool rawecho PROTO MILLIS            answer packets of IP protocol PROTO (rawip.rs)
//!   nettool rawask PROTO IP                 one packet of IP protocol PROTO to IP, wait
//!                                            for its answer (rawip.rs)
//!
//! `count` and both `sniff`s print `listening on ...` once their socket is
//! bound: a test starts sending after that line.
//!   nettool udpask sendto|connect IP:PORT  one datagram "hello" to IP:PORT from an
//!                                            unconnected socket (sendto/recvfrom) or a
//!                                            connected one (connect/send/recv); prints
//!                                            `from=SOURCE reply=PAYLOAD` (2 s timeout)
//!   nettool dial v4|v6 tcp|udp|udpconnect IP PORT
//!                                            one request to a `serve`r (TCP connect, UDP
//!                                            sendto or connect); v6 is a Java-style
//!                                            dual-stack client: an AF_INET6 socket aimed
//!                                            at the IPv4-mapped ::ffff:IP. Prints
//!                                            `peer=ADDR reply=ANSWER`, ADDR being
//!                                            getpeername() (TCP, connected UDP) or
//!                                            recvfrom()'s source (3 s timeout)
//!
//!   nettool udpecho [IP:]PORT [--count N]  answer each UDP datagram (up to 65,507 bytes)
//!                                            with "peer=IP:PORT\n" and the datagram itself;
//!                                            prints `listening on ...` once bound
//!   nettool udpbig HOST PORT BYTES [--timeout-ms N]
//!                                            send one datagram of BYTES to `udpecho` and
//!                                            check that the same bytes come back (a big
//!                                            one leaves in fragments); prints
//!                                            `peer=IP:PORT echoed=BYTES` (3 s timeout)
//!
//!   nettool dnsserve IP:PORT NAME=IP...  a tiny upstream resolver (dns.rs)
//!   nettool dnsask udp|tcp SERVER NAME [A|AAAA]  one query to SERVER:53 (dns.rs)
//!
//! `crr` and `rr` print one line: `count=N errors=E seconds=S rate=R p50_us=A p99_us=B`;
//! `udpflood` prints `sent=N received=M seconds=S rate=R` (rate: received per second).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

// Kept beside this file, not as binaries of their own.
#[path = "nettool/checksums.rs"]
mod checksums;
#[path = "nettool/dns.rs"]
mod dns;
#[path = "nettool/flows.rs"]
mod flows;
#[path = "nettool/l2.rs"]
mod l2;
#[path = "nettool/probe.rs"]
mod probe;
#[path = "nettool/rawip.rs"]
mod rawip;

const TIMEOUT: Duration = Duration::from_secs(3);
/// A server answers at most this many clients unless told otherwise.
const DEFAULT_COUNT: u64 = 100_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", proto, port, rest @ ..] => serve(proto, port, rest),
        ["call", proto, host, port] => call(proto, host, port, TIMEOUT),
        ["call", proto, host, port, "--timeout-ms", ms] => match ms.parse() {
            Ok(ms) => call(proto, host, port, Duration::from_millis(ms)),
            Err(_) => Err(format!("bad timeout {ms}")),
        },
        ["count", port, millis] => count(port, millis),
        ["rawsend", iface, src_mac, dst_mac, src_ip, dst_ip, port, count] => raw_send(
            iface,
            [src_mac, dst_mac, src_ip, dst_ip, port, count],
            false,
        ),
        ["rawsend", iface, src_mac, dst_mac, src_ip, dst_ip, port, count, "--truncated"] => {
            raw_send(iface, [src_mac, dst_mac, src_ip, dst_ip, port, count], true)
        }
        ["sniff", iface, "--checksums"] => checksums::sniff_checksums(iface),
        ["sniff", iface, millis] => sniff(iface, millis),
        ["bulk", host, port, bytes] => checksums::bulk(host, port, bytes),
        ["probe", proto, host, port, rest @ ..] => probe::probe(proto, host, port, rest),
        ["arpsend", iface, eth_src, sender_mac, sender_ip, count] => {
            l2::arp_send(iface, [eth_src, sender_mac, sender_ip, count])
        }
        ["rasend", iface, src_mac, count] => l2::ra_send(iface, src_mac, count),
        ["nasend", iface, src_mac, src_ip, target, count] => {
            l2::na_send(iface, [src_mac, src_ip, target, count])
        }
        ["sink", port, rest @ ..] => sink(port, rest),
        ["stream", host, port, seconds] => stream(host, port, seconds),
        ["pong", port, rest @ ..] => pong(port, rest),
        ["crr", host, port, seconds] => load(Load::Crr, host, port, seconds),
        ["rr", host, port, seconds] => load(Load::Rr, host, port, seconds),
        ["udpsink", port] => udp_sink(port),
        ["udpflows", host, port, first, flows, seconds] => {
            flows::udp_flows(host, port, first, flows, seconds)
        }
        ["synflood", iface, src_mac, dst_mac, dst_ip, dst_port, count] => {
            flows::syn_flood([iface, src_mac, dst_mac, dst_ip, dst_port, count])
        }
        ["halfclose", "serve", port, delay_ms] => flows::half_close_serve(port, delay_ms),
        ["halfclose", "call", host, port, timeout_ms] => {
            flows::half_close_call(host, port, timeout_ms)
        }
        ["udpflood", host, port, seconds] => udp_flood(host, port, seconds),
        ["udpask", how, addr] => udp_ask(how, addr),
        ["dial", family, how, ip, port] => dial(family, how, ip, port),
        ["udptick", addr, sport, every_ms, count] => udp_tick(addr, sport, every_ms, count),
        ["udpecho", port, rest @ ..] => udp_echo(port, rest),
        ["udpbig", host, port, bytes] => udp_big(host, port, bytes, TIMEOUT),
        ["udpbig", host, port, bytes, "--timeout-ms", ms] => match ms.parse() {
            Ok(ms) => udp_big(host, port, bytes, Duration::from_millis(ms)),
            Err(_) => Err(format!("bad timeout {ms}")),
        },
        ["icmpwatch", millis] => rawip::icmp_watch(millis),
        ["rawecho", proto, millis] => rawip::raw_echo(proto, millis),
        ["rawask", proto, ip] => rawip::raw_ask(proto, ip),
        ["dnsserve", addr, entries @ ..] => dns::serve(addr, entries),
        ["dnsask", transport, server, name] => dns::ask(transport, server, name, "A"),
        ["dnsask", transport, server, name, qtype] => dns::ask(transport, server, name, qtype),
        _ => Err("usage: nettool serve tcp|udp [IP:]PORT [--count N] \
                  | call tcp|udp HOST PORT [--timeout-ms N] | count [IP:]PORT MILLIS \
                  | rawsend IFACE SRC_MAC DST_MAC SRC_IP DST_IP PORT COUNT [--truncated] \
                  | sniff IFACE MILLIS | sniff IFACE --checksums | bulk HOST PORT BYTES \
                  | probe tcp|udp|icmp HOST PORT [--timeout-ms N] \
                  | arpsend IFACE ETH_SRC SENDER_MAC SENDER_IP COUNT | rasend IFACE SRC_MAC COUNT \
                  | nasend IFACE SRC_MAC SRC_IP TARGET COUNT \
                  | sink [IP:]PORT [--count N] | stream HOST PORT SECONDS \
                  | pong PORT [--count N] | crr HOST PORT SECONDS | rr HOST PORT SECONDS \
                  | udpsink PORT | udpflood HOST PORT SECONDS | udpask sendto|connect IP:PORT \
                  | dial v4|v6 tcp|udp|udpconnect IP PORT \
                  | udptick IP:PORT SPORT EVERY_MS COUNT | icmpwatch MILLIS \
                  | rawecho PROTO MILLIS | rawask PROTO IP \
                  | dnsserve IP:PORT NAME=IP... | dnsask udp|tcp SERVER NAME [A|AAAA]"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nettool: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_count(rest: &[&str]) -> Result<u64, String> {
    match rest {
        ["--count", n] => n.parse().map_err(|_| format!("bad count {n}")),
        [] => Ok(DEFAULT_COUNT),
        _ => Err("unexpected arguments".into()),
    }
}

/// HOST:PORT as an address; a HOST that is not one is a name, looked up
/// through the C library as any program does (resolv.conf, hosts), its
/// first IPv4 address taken.
fn resolve(host: &str, port: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = format!("{host}:{port}").parse() {
        return Ok(addr);
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("resolve {host}: no IPv4 address"))
}

fn serve(proto: &str, port: &str, rest: &[&str]) -> Result<(), String> {
    let count = parse_count(rest)?;
    let addr = if port.contains(':') {
        port.to_owned()
    } else {
        format!("0.0.0.0:{port}")
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    match proto {
        "tcp" => {
            let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            for stream in listener.incoming().take(count as usize) {
                let Ok(mut stream) = stream else { continue };
                let peer = stream
                    .peer_addr()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
            }
        }
        "udp" => {
            let socket = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            let mut buf = [0u8; 2048];
            for _ in 0..count {
                let Ok((_, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let _ = socket.send_to(format!("peer={peer}\n").as_bytes(), peer);
            }
        }
        other => return Err(format!("unknown protocol {other}")),
    }
    Ok(())
}

fn call(proto: &str, host: &str, port: &str, timeout: Duration) -> Result<(), String> {
    let addr = resolve(host, port)?;
    let reply = match proto {
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            stream
                .read_to_string(&mut reply)
                .map_err(|e| format!("read {addr}: {e}"))?;
            reply
        }
        "udp" => {
            let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            socket
                .send_to(b"hello\n", addr)
                .map_err(|e| format!("send {addr}: {e}"))?;
            let mut buf = [0u8; 2048];
            let (n, _) = socket
                .recv_from(&mut buf)
                .map_err(|e| format!("recv {addr}: {e}"))?;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
        other => return Err(format!("unknown protocol {other}")),
    };
    print!("{reply}");
    Ok(())
}

/// Longest a stream may last: loops stop by themselves.
const MAX_STREAM_SECONDS: u64 = 60;

/// Reads each client to its end and answers with the byte count.
fn sink(port: &str, rest: &[&str]) -> Result<(), String> {
    let count = parse_count(rest)?;
    // `[::]:9000` for IPv6; a bare port listens on IPv4's every address.
    let addr = match port.contains(':') {
        true => port.to_owned(),
        false => format!("0.0.0.0:{port}"),
    };
    let listener = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let mut clients = Vec::new();
    for stream in listener.incoming().take(count as usize) {
        let Ok(mut stream) = stream else { continue };
        clients.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total: u64 = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(format!("received={total}\n").as_bytes());
        }));
    }
    // The last clients are still being read: exiting now would reset them.
    for client in clients {
        let _ = client.join();
    }
    Ok(())
}

/// Sends for a while, then reads the sink's count: any reset or stall on
/// the way is an error.
fn stream(host: &str, port: &str, seconds: &str) -> Result<(), String> {
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("bad seconds {seconds}"))?;
    let seconds = seconds.min(MAX_STREAM_SECONDS);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 16 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    while std::time::Instant::now() < deadline {
        stream
            .write_all(&chunk)
            .map_err(|e| format!("send to {addr} after {sent} bytes: {e}"))?;
        sent += chunk.len() as u64;
        // Paced, so that the stream lasts without flooding the machine.
        std::thread::sleep(Duration::from_millis(2));
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    println!("sent={sent} {}", reply.trim());
    Ok(())
}

/// Most connections `pong` serves unless told otherwise (a crr run at
/// 10,000/s for 60 s stays below it).
const PONG_DEFAULT_COUNT: u64 = 10_000_000;
/// Most request/response rounds on one connection.
const MAX_ROUNDS: u64 = 100_000_000;

/// Serves one client at a time: each byte read is answered with one byte,
/// until the client closes (or stalls for [`TIMEOUT`]).
fn pong(port: &str, rest: &[&str]) -> Result<(), String> {
    let count = match rest {
        [] => PONG_DEFAULT_COUNT,
        _ => parse_count(rest)?,
    };
    let addr = format!("0.0.0.0:{port}");
    let listener = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    for stream in listener.incoming().take(count as usize) {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(TIMEOUT));
        let _ = stream.set_write_timeout(Some(TIMEOUT));
        let mut byte = [0u8; 1];
        for _ in 0..MAX_ROUNDS {
            match stream.read(&mut byte) {
                Ok(1) => {
                    if stream.write_all(b"o").is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// A new connection per request.
    Crr,
    /// One connection for every request.
    Rr,
}

/// Most failed attempts before a load run gives up.
const MAX_ERRORS: u64 = 1_000;

/// One request/response round: 1 byte each way.
fn round(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    stream.write_all(b"i")?;
    stream.read_exact(&mut byte)
}

fn connect(addr: &SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Runs rounds against `pong` for SECONDS (at most [`MAX_STREAM_SECONDS`])
/// and prints the rate and the latency percentiles of one round.
fn load(kind: Load, host: &str, port: &str, seconds: &str) -> Result<(), String> {
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| format!("bad seconds {seconds}"))?;
    let seconds = seconds.clamp(0.1, MAX_STREAM_SECONDS as f64);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut errors: u64 = 0;
    let mut last_error = String::new();
    let mut conn = match kind {
        Load::Rr => Some(connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?),
        Load::Crr => None,
    };
    for _ in 0..MAX_ROUNDS {
        let now = std::time::Instant::now();
        if now >= deadline || errors >= MAX_ERRORS {
            break;
        }
        let result = match kind {
            Load::Crr => connect(&addr).and_then(|mut s| round(&mut s)),
            Load::Rr => match conn.as_mut() {
                Some(stream) => round(stream),
                None => connect(&addr).and_then(|mut s| {
                    let r = round(&mut s);
                    conn = Some(s);
                    r
                }),
            },
        };
        match result {
            Ok(()) => latencies.push(now.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(e) => {
                errors += 1;
                last_error = e.to_string();
                if kind == Load::Rr {
                    conn = None;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        return Err(format!("no round succeeded against {addr}: {last_error}"));
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "count={} errors={errors} seconds={elapsed:.3} rate={:.1} p50_us={} p99_us={}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    if errors > 0 {
        eprintln!("nettool: {errors} failed rounds, last: {last_error}");
    }
    Ok(())
}

/// Longest `count` listens.
const MAX_COUNT_MILLIS: u64 = 60_000;

/// Counts the UDP datagrams reaching PORT during MILLIS ms and lists their
/// sources: proves what arrived, and that nothing did.
fn count(port: &str, millis: &str) -> Result<(), String> {
    let millis: u64 = millis
        .parse()
        .map_err(|_| format!("bad milliseconds {millis}"))?;
    let addr = if port.contains(':') {
        port.to_owned()
    } else {
        format!("0.0.0.0:{port}")
    };
    let socket = UdpSocket::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    // Ready: the caller may start sending once this line is out.
    println!("listening on {addr}");
    let deadline = std::time::Instant::now() + Duration::from_millis(millis.min(MAX_COUNT_MILLIS));
    let mut received = 0u64;
    let mut sources = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            received += 1;
            sources.insert(peer.ip().to_string());
        }
    }
    let sources: Vec<String> = sources.into_iter().collect();
    println!("received={received} from={}", sources.join(","));
    Ok(())
}

/// Most frames one `rawsend` sends.
const MAX_RAW_FRAMES: u64 = 10_000;

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC {text}"))?;
    bytes.try_into().map_err(|_| format!("bad MAC {text}"))
}

/// RFC 1071 checksum over `chunks` (each of even length but the last).
fn inet_checksum(chunks: &[&[u8]]) -> u16 {
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

/// An Ethernet + IPv4 + UDP frame with correct checksums, whatever its
/// addresses: what a container forging its identity would send.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    dport: u16,
    seq: u16,
) -> Vec<u8> {
    let payload = b"netctl rawsend";
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&40_000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let c = match inet_checksum(&[&pseudo, &udp]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&seq.to_be_bytes());
    ip.extend_from_slice(&0x4000u16.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = inet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + ip.len() + udp.len());
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// Sends hand-built frames through an AF_PACKET socket: the kernel puts
/// them on the wire as they are, source MAC and address included.
fn raw_send(iface: &str, args: [&str; 6], truncated: bool) -> Result<(), String> {
    let [src_mac, dst_mac, src_ip, dst_ip, port, count] = args;
    let src_mac = parse_mac(src_mac)?;
    let dst_mac = parse_mac(dst_mac)?;
    let src: std::net::Ipv4Addr = src_ip
        .parse()
        .map_err(|_| format!("bad address {src_ip}"))?;
    let dst: std::net::Ipv4Addr = dst_ip
        .parse()
        .map_err(|_| format!("bad address {dst_ip}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad count {count}"))?;
    let frames = (0..count.min(MAX_RAW_FRAMES)).map(|seq| {
        let mut frame = udp_frame(src_mac, dst_mac, src, dst, port, seq as u16);
        if truncated {
            // The datagram ends 4 bytes into the UDP header; what follows
            // is padding to the receiver. Header checksum to match.
            frame[16..18].copy_from_slice(&24u16.to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let c = inet_checksum(&[&frame[14..34]]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
        }
        frame
    });
    let sent = send_frames(iface, frames)?;
    println!("sent={sent}");
    Ok(())
}

/// Sends whole Ethernet frames through an AF_PACKET socket: the kernel puts
/// them on the wire as they are, source MAC and addresses included.
/// Returns how many were sent.
fn send_frames(iface: &str, frames: impl Iterator<Item = Vec<u8>>) -> Result<u64, String> {
    let ifindex = if_index(iface)?;
    // Protocol 0: the socket only sends, it never receives a frame.
    let socket = packet_socket(0)?;
    let mut sent = 0;
    for frame in frames {
        if frame.len() < 14 {
            return Err(format!("a frame of {} bytes", frame.len()));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        // The EtherType, already in network order in the frame.
        addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address outlive the call; the length
        // is the address's own size.
        let result = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if result < 0 {
            return Err(format!(
                "send on {iface}: {}",
                std::io::Error::last_os_error()
            ));
        }
        sent += 1;
    }
    Ok(sent)
}

fn if_index(iface: &str) -> Result<u32, String> {
    let name = std::ffi::CString::new(iface).map_err(|_| format!("bad interface {iface}"))?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "interface {iface}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(ifindex)
}

/// An AF_PACKET raw socket for `protocol` (network order; 0: send only).
fn packet_socket(protocol: u16) -> Result<std::os::fd::OwnedFd, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new socket, owned from here on.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Binds a packet socket to the IPv4 frames of `iface`.
fn bind_to_interface(socket: &std::os::fd::OwnedFd, iface: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let ifindex = if_index(iface)?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid address of its own size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(format!(
            "bind to {iface}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Counts the IPv4 frames IFACE receives (whatever their L4 header, whole
/// or not) for MILLIS ms, per source address.
fn sniff(iface: &str, millis: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let millis: u64 = millis
        .parse()
        .map_err(|_| format!("bad milliseconds {millis}"))?;
    // Protocol 0 until bound: no frame of another interface gets queued.
    let socket = packet_socket(0)?;
    bind_to_interface(&socket, iface)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
    }
    println!("listening on {iface}");
    let deadline = std::time::Instant::now() + Duration::from_millis(millis.min(MAX_COUNT_MILLIS));
    let mut seen: std::collections::BTreeMap<std::net::Ipv4Addr, u64> = Default::default();
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        // SAFETY: the buffer outlives the call and its length is given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        // SOCK_RAW: the frame from its Ethernet header on.
        if n >= 34 && buf[12..14] == [0x08, 0x00] {
            let src = std::net::Ipv4Addr::new(buf[26], buf[27], buf[28], buf[29]);
            *seen.entry(src).or_default() += 1;
        }
    }
    let list: Vec<String> = seen.iter().map(|(ip, n)| format!("{ip}:{n}")).collect();
    println!("from={}", list.join(","));
    Ok(())
}

/// The datagram that ends a flood and asks the sink for its count.
const UDP_END: &[u8] = b"END";
/// Size of a flood datagram's payload: small, so that the per-packet cost
/// of the path shows rather than the copy.
const UDP_PAYLOAD: usize = 64;
/// Most datagrams one flood sends (with [`MAX_STREAM_SECONDS`], the bound).
const MAX_DATAGRAMS: u64 = 50_000_000;
/// Most floods a sink counts before it exits.
const MAX_FLOODS: u64 = 100_000;

/// Counts the datagrams of one flood at a time; an `END` datagram is
/// answered with the count so far, which then starts again from zero.
fn udp_sink(port: &str) -> Result<(), String> {
    let addr = format!("0.0.0.0:{port}");
    let socket = UdpSocket::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let mut received: u64 = 0;
    let mut floods = 0;
    while floods < MAX_FLOODS {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if &buf[..n] == UDP_END {
            let _ = socket.send_to(format!("received={received}\n").as_bytes(), peer);
            received = 0;
            floods += 1;
        } else {
            received += 1;
        }
    }
    Ok(())
}

/// Sends datagrams as fast as one thread can for SECONDS, lets the sink
/// drain, then asks it (a few times: the question may be dropped too) how
/// many arrived.
fn udp_flood(host: &str, port: &str, seconds: &str) -> Result<(), String> {
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| format!("bad seconds {seconds}"))?;
    let seconds = seconds.clamp(0.1, MAX_STREAM_SECONDS as f64);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let payload = [0x5au8; UDP_PAYLOAD];
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    let mut failed: u64 = 0;
    while sent < MAX_DATAGRAMS {
        // The clock is read once per batch: it costs as much as a send.
        if sent.is_multiple_of(64) && std::time::Instant::now() >= deadline {
            break;
        }
        match socket.send(&payload) {
            Ok(_) => sent += 1,
            // ENOBUFS, or ECONNREFUSED from an ICMP error: count and go on.
            Err(_) => {
                failed += 1;
                if failed > MAX_DATAGRAMS {
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        if socket.send(UDP_END).is_err() {
            continue;
        }
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let reply = String::from_utf8_lossy(&buf[..n]);
        let received: u64 = reply
            .trim()
            .strip_prefix("received=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected answer {reply:?} from {addr}"))?;
        println!(
            "sent={sent} received={received} seconds={elapsed:.3} rate={:.1}",
            received as f64 / elapsed
        );
        return Ok(());
    }
    Err(format!(
        "no count from the sink at {addr} after {sent} datagrams"
    ))
}

/// `udpask`: the two ways a UDP client names its server, which the cgroup
/// programs translate at different hooks (sendmsg4 for each datagram,
/// connect4 once); the reply's source is what recvmsg4 gave back.
fn udp_ask(how: &str, addr: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let io = |e: std::io::Error| format!("udpask {how} {addr}: {e}");
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    let mut buf = [0u8; 512];
    let (n, from) = match how {
        "sendto" => {
            socket.send_to(b"hello\n", addr).map_err(io)?;
            socket.recv_from(&mut buf).map_err(io)?
        }
        "connect" => {
            socket.connect(addr).map_err(io)?;
            socket.send(b"hello\n").map_err(io)?;
            let n = socket.recv(&mut buf).map_err(io)?;
            (n, socket.peer_addr().map_err(io)?)
        }
        other => return Err(format!("udpask: {other}: expected sendto or connect")),
    };
    println!(
        "from={from} reply={}",
        String::from_utf8_lossy(&buf[..n]).trim()
    );
    Ok(())
}

/// The largest UDP payload over IPv4 (65,535 - 20 - 8).
const UDP_MAX: usize = 65_507;

/// `udpecho`: each datagram comes back whole, after a line naming its
/// source (what the server saw: SNAT or not).
fn udp_echo(port: &str, rest: &[&str]) -> Result<(), String> {
    let count = parse_count(rest)?;
    let addr = if port.contains(':') {
        port.to_owned()
    } else {
        format!("0.0.0.0:{port}")
    };
    let socket = UdpSocket::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    let mut buf = vec![0u8; UDP_MAX];
    for _ in 0..count {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let mut reply = format!("peer={peer}\n").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        reply.truncate(UDP_MAX);
        let _ = socket.send_to(&reply, peer);
    }
    Ok(())
}

/// `udpbig`: one datagram of `bytes` (a pattern that shows any byte moved)
/// to `udpecho`, which must send it back unchanged.
fn udp_big(host: &str, port: &str, bytes: &str, timeout: Duration) -> Result<(), String> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let len: usize = bytes.parse().map_err(|_| format!("bad size {bytes}"))?;
    if len == 0 || len > UDP_MAX - 64 {
        return Err(format!("size {len}: 1 to {}", UDP_MAX - 64));
    }
    let io = |e: std::io::Error| format!("udpbig {addr}: {e}");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    socket.set_read_timeout(Some(timeout)).map_err(io)?;
    socket.send_to(&data, addr).map_err(io)?;
    let mut buf = vec![0u8; UDP_MAX];
    let (n, _) = socket.recv_from(&mut buf).map_err(io)?;
    let reply = &buf[..n];
    let line_end = reply
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("udpbig {addr}: no peer line in {n} bytes"))?;
    let peer = String::from_utf8_lossy(&reply[..line_end]).into_owned();
    let echoed = &reply[line_end + 1..];
    if echoed != data.as_slice() {
        return Err(format!(
            "udpbig {addr}: sent {len} bytes, {} came back, {}",
            echoed.len(),
            if echoed.len() == len {
                "different"
            } else {
                "not all"
            }
        ));
    }
    println!("{peer} echoed={len}");
    Ok(())
}

/// `dial`: one request, and the peer address the socket reports. `v6` does
/// what a JVM does with an IPv4 address by default: an AF_INET6 socket
/// (dual stack, IPV6_V6ONLY off as Linux defaults) and the address mapped
/// into IPv6.
fn dial(family: &str, how: &str, ip: &str, port: &str) -> Result<(), String> {
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| format!("{ip}: {e}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let (addr, any) = match family {
        "v4" => (SocketAddr::from((ip, port)), "0.0.0.0:0"),
        "v6" => (
            SocketAddr::V6(std::net::SocketAddrV6::new(ip.to_ipv6_mapped(), port, 0, 0)),
            "[::]:0",
        ),
        other => return Err(format!("dial: {other}: expected v4 or v6")),
    };
    let io = |e: std::io::Error| format!("dial {family} {how} {addr}: {e}");
    let mut buf = [0u8; 512];
    let (peer, reply) = match how {
        "tcp" => {
            let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
            stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            let peer = stream.peer_addr().map_err(io)?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).map_err(io)?;
            (peer, reply)
        }
        "udp" | "udpconnect" => {
            let socket = UdpSocket::bind(any).map_err(io)?;
            socket.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
            let (n, peer) = if how == "udp" {
                socket.send_to(b"hello\n", addr).map_err(io)?;
                socket.recv_from(&mut buf).map_err(io)?
            } else {
                socket.connect(addr).map_err(io)?;
                socket.send(b"hello\n").map_err(io)?;
                let n = socket.recv(&mut buf).map_err(io)?;
                (n, socket.peer_addr().map_err(io)?)
            };
            (peer, String::from_utf8_lossy(&buf[..n]).into_owned())
        }
        other => return Err(format!("dial: {other}: expected tcp, udp or udpconnect")),
    };
    println!("peer={peer} reply={}", reply.trim());
    Ok(())
}

/// Most datagrams one `udptick` sends.
const MAX_TICKS: u64 = 10_000;

/// `udptick`: one long UDP flow (same source port throughout), as a client
/// that polls a server would make. The socket stays unconnected, so that
/// an ICMP error (nobody listening for a while) does not end it.
fn udp_tick(addr: &str, sport: &str, every_ms: &str, count: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let sport: u16 = sport.parse().map_err(|_| format!("bad port {sport}"))?;
    let every: u64 = every_ms
        .parse()
        .map_err(|_| format!("bad interval {every_ms}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad count {count}"))?;
    let socket = UdpSocket::bind(("0.0.0.0", sport)).map_err(|e| format!("bind {sport}: {e}"))?;
    let mut sent = 0;
    for seq in 0..count.min(MAX_TICKS) {
        if socket
            .send_to(format!("tick {seq}\n").as_bytes(), addr)
            .is_ok()
        {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(every));
    }
    println!("sent={sent}");
    Ok(())
}
