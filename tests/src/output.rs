//! Reading what the tools print: a command's stdout as text, the peer
//! address `nettool serve` answers with, and nettool's path as an argument.

use std::{net::Ipv4Addr, process::Output};

use crate::sandbox::nettool_bin;

/// A command's stdout, as text.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nettool's path, as a command-line word.
pub fn nettool() -> String {
    nettool_bin().display().to_string()
}

/// The lines `read` gives, on a channel fed by a thread of their own (a
/// child's stdout or stderr, read while the test goes on).
pub fn line_channel(
    read: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(read).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The client address a `nettool serve` answer (`peer=IP:PORT`) reports.
pub fn peer_ip(reply: &str) -> Ipv4Addr {
    reply
        .trim()
        .strip_prefix("peer=")
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(ip, _)| ip.parse().ok())
        .unwrap_or_else(|| panic!("not a peer=IP:PORT reply: {reply:?}"))
}

/// The IPv6 client address a `nettool serve` answer
/// (`peer=[2001:db8::2]:41000`) reports.
pub fn peer_ip6(reply: &str) -> std::net::Ipv6Addr {
    reply
        .trim()
        .strip_prefix("peer=[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
        .unwrap_or_else(|| panic!("not a peer=[IP]:PORT reply: {reply:?}"))
}

/// `nettool stream`'s `sent=N received=M`, both > 0 and equal.
pub fn assert_no_byte_lost(what: &str, out: &Output) {
    let report = text(out);
    assert!(
        out.status.success(),
        "{what}: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<u64> = report
        .split_whitespace()
        .filter_map(|f| f.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect();
    assert_eq!(fields.len(), 2, "{what}: {report}");
    assert!(fields[0] > 0, "{what}: nothing sent");
    assert_eq!(
        fields[0], fields[1],
        "{what}: every byte arrived ({report})"
    );
}
