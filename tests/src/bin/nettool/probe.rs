//! `nettool probe tcp|udp|icmp HOST PORT --timeout-ms N`: one attempt to
//! reach a listener, told apart by how it ends, so that a test can say
//! whether the datapath dropped a packet or something answered it:
//!
//! - `answered packets=N REPLY`: the listener answered (REPLY is the first
//!   line of a `nettool serve`, `from=IP` for an echo reply);
//! - `refused packets=N`: a TCP reset or an ICMP port unreachable came
//!   back: the packet reached a host's stack, nothing listened there;
//! - `unreachable packets=N ERROR`: the local routing refused to send
//!   (no route: packets=0) or an ICMP error other than "port unreachable"
//!   came back;
//! - `timeout packets=N`: nothing came back: dropped on the way.
//!
//! `packets` is how many packets the probe put on the wire: 1 for UDP and
//! ICMP, the SYN and its retransmissions for TCP (from TCP_INFO), so that a
//! test can compare it with a drop counter exactly. The process exits 0
//! whatever the outcome; only bad arguments or a failed socket call fail it.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// How a probe ended.
enum Outcome {
    Answered(String),
    Refused,
    Unreachable(String),
    Timeout,
}

pub fn probe(proto: &str, host: &str, port: &str, rest: &[&str]) -> Result<(), String> {
    let timeout = match rest {
        ["--timeout-ms", ms] => {
            Duration::from_millis(ms.parse().map_err(|_| format!("bad timeout {ms}"))?)
        }
        [] => super::TIMEOUT,
        _ => return Err("unexpected arguments".into()),
    };
    let ip: Ipv4Addr = host.parse().map_err(|_| format!("bad address {host}"))?;
    let (outcome, packets) = match proto {
        "tcp" => tcp(SocketAddrV4::new(ip, parse_port(port)?), timeout)?,
        "udp" => udp(SocketAddrV4::new(ip, parse_port(port)?), timeout)?,
        "icmp" => icmp(ip, timeout)?,
        other => return Err(format!("unknown protocol {other}")),
    };
    match outcome {
        Outcome::Answered(reply) => println!("answered packets={packets} {reply}"),
        Outcome::Refused => println!("refused packets={packets}"),
        Outcome::Unreachable(error) => println!("unreachable packets={packets} {error}"),
        Outcome::Timeout => println!("timeout packets={packets}"),
    }
    Ok(())
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse().map_err(|_| format!("bad port {port}"))
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

/// An outcome from the errno a connect or a receive ended with.
fn outcome_of(error: &std::io::Error) -> Outcome {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Refused,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => Outcome::Timeout,
        _ => Outcome::Unreachable(error.to_string().replace(' ', "_")),
    }
}

/// A non-blocking connect waited for with poll: unlike
/// `TcpStream::connect_timeout`, the socket is still there after a timeout
/// to ask how many SYNs went out.
fn tcp(addr: SocketAddrV4, timeout: Duration) -> Result<(Outcome, u32), String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_error("TCP socket"));
    }
    // SAFETY: fd is a new socket, owned from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = sockaddr(addr);
    // SAFETY: a valid address of its own size.
    let started = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if started < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            // Refused by the local routing: nothing was sent.
            return Ok((outcome_of(&error), 0));
        }
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd, counted.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    if ready < 0 {
        return Err(os_error("poll"));
    }
    let packets = syn_packets(&socket)?;
    if ready == 0 {
        return Ok((Outcome::Timeout, packets));
    }
    let mut error: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int of the size given.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::addr_of_mut!(error).cast(),
            &mut len,
        )
    };
    if got < 0 {
        return Err(os_error("SO_ERROR"));
    }
    if error != 0 {
        return Ok((
            outcome_of(&std::io::Error::from_raw_os_error(error)),
            packets,
        ));
    }
    let mut stream = TcpStream::from(socket);
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    match stream.read_to_string(&mut reply) {
        Ok(_) => Ok((Outcome::Answered(first_line(&reply)), packets)),
        Err(e) => Ok((
            Outcome::Unreachable(format!("connected_but_read_failed:{e}").replace(' ', "_")),
            packets,
        )),
    }
}

/// The SYN and its retransmissions so far.
fn syn_packets(socket: &OwnedFd) -> Result<u32, String> {
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a tcp_info of the size given.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    if got < 0 {
        return Err(os_error("TCP_INFO"));
    }
    Ok(1 + info.tcpi_total_retrans)
}

fn first_line(reply: &str) -> String {
    reply.lines().next().unwrap_or_default().trim().to_owned()
}

/// One datagram; a connected socket reports an ICMP error as the error of
/// the receive that follows.
fn udp(addr: SocketAddrV4, timeout: Duration) -> Result<(Outcome, u32), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    if let Err(e) = socket.connect(addr) {
        return Ok((outcome_of(&e), 0));
    }
    if let Err(e) = socket.send(b"hello\n") {
        return Ok((outcome_of(&e), 0));
    }
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) => Ok((
            Outcome::Answered(first_line(&String::from_utf8_lossy(&buf[..n]))),
            1,
        )),
        Err(e) => Ok((outcome_of(&e), 1)),
    }
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PORT_UNREACHABLE: u8 = 3;

/// One echo request on a raw socket (every probe of a namespace sees every
/// ICMP packet of it: ours are told apart by their identifier, the pid).
fn icmp(ip: Ipv4Addr, timeout: Duration) -> Result<(Outcome, u32), String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(os_error("ICMP socket"));
    }
    // SAFETY: fd is a new socket, owned from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() & 0xffff) as u16;
    let mut echo = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    echo.extend_from_slice(&id.to_be_bytes());
    echo.extend_from_slice(&1u16.to_be_bytes());
    echo.extend_from_slice(b"nettool probe");
    let checksum = super::inet_checksum(&[&echo]);
    echo[2..4].copy_from_slice(&checksum.to_be_bytes());
    let sa = sockaddr(SocketAddrV4::new(ip, 0));
    // SAFETY: the buffer and the address outlive the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            echo.as_ptr().cast(),
            echo.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Ok((outcome_of(&std::io::Error::last_os_error()), 0));
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((Outcome::Timeout, 1));
        }
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, counted.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: the buffer outlives the call and its length is given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(outcome) = icmp_answer(&buf[..n as usize], id) {
            return Ok((outcome, 1));
        }
    }
}

/// What an IPv4 packet a raw ICMP socket received says about our echo
/// request `id`, if it is about it.
fn icmp_answer(packet: &[u8], id: u16) -> Option<Outcome> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    match kind {
        ICMP_ECHO_REPLY if icmp.get(4..6)? == id.to_be_bytes() => {
            let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            Some(Outcome::Answered(format!("from={from}")))
        }
        ICMP_UNREACHABLE | ICMP_TIME_EXCEEDED => {
            // The error quotes our request: its IPv4 header, then the echo.
            let quoted = icmp.get(8..)?;
            let quoted_ihl = usize::from(quoted.first()? & 0x0f) * 4;
            let echo = quoted.get(quoted_ihl..quoted_ihl + 8)?;
            if echo[0] != ICMP_ECHO_REQUEST || echo[4..6] != id.to_be_bytes() {
                return None;
            }
            Some(
                if kind == ICMP_UNREACHABLE && code == ICMP_PORT_UNREACHABLE {
                    Outcome::Refused
                } else {
                    Outcome::Unreachable(format!("icmp_type={kind}_code={code}"))
                },
            )
        }
        _ => None,
    }
}
