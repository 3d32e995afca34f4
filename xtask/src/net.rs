//! Tiny TCP tools the demo runs inside namespaces by re-executing xtask
//! (`xtask __echo-server PORT`, `xtask __client HOST PORT`): no dependency on
//! socat or python. Every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

/// How long a client waits to connect and for the reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// A server stops after this many clients (a bound, not a limit in practice).
const MAX_CLIENTS: usize = 100_000;

/// Answers each TCP connection with "peer=IP:PORT\n" (the address it saw)
/// and closes it. Prints "listening on ..." once bound, so a parent can wait
/// for that line.
pub fn echo_server(port: u16) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("bind 0.0.0.0:{port}"))?;
    println!("listening on 0.0.0.0:{port}");
    std::io::stdout().flush()?;
    for stream in listener.incoming().take(MAX_CLIENTS) {
        let Ok(mut stream) = stream else { continue };
        let peer = stream
            .peer_addr()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
    }
    Ok(())
}

/// Connects to HOST:PORT and prints the reply. With `wait`, a refused
/// connection is retried until `wait` has passed (a server still starting).
pub fn client(host: &str, port: u16, wait: Option<Duration>) -> Result<()> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("bad address {host}:{port}"))?;
    let deadline = Instant::now() + wait.unwrap_or_default();
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => bail!("connect {addr}: {e}"),
        }
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| anyhow!("read from {addr}: {e}"))?;
    print!("{reply}");
    Ok(())
}

/// The IP of a "peer=IP:PORT" reply.
pub fn peer_ip(reply: &str) -> Option<Ipv4Addr> {
    let addr = reply.trim().strip_prefix("peer=")?;
    addr.parse::<SocketAddr>().ok().and_then(|a| match a.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_replies() {
        assert_eq!(
            peer_ip("peer=198.51.100.2:40000\n"),
            Some(Ipv4Addr::new(198, 51, 100, 2))
        );
        assert_eq!(
            peer_ip("peer=[::ffff:10.0.0.1]:5"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(peer_ip("hello"), None);
    }
}
