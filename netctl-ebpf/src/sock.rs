//! Host processes reaching published ports: cgroup `sock_addr` programs that
//! rewrite the destination of a host socket at connect()/sendmsg() time
//! (socket-level load balancing, as Cilium does), instead of the seeds'
//! OUTPUT-chain DNAT.
//!
//! Only sockets of the host namespace are touched: the programs compare the
//! socket's netns cookie with `Config::host_netns_cookie` (0 = not
//! configured: every program does nothing). Every program returns 1: a
//! socket is never refused here.
//!
//! Which destinations are translated, in order:
//! 1. `PORTMAP[(dst ip, dst port, proto)]`: a port published on that exact
//!    address (`-p 127.0.0.1:8080:80`, `-p 198.51.100.1:8080:80`);
//! 2. `PORTMAP[(0, dst port, proto)]` (`-p 8080:80`), only when the
//!    destination is an address of the host: 127.0.0.0/8, 0.0.0.0 (Linux
//!    connects that to the host itself) or an address of the host in
//!    `NETWORK_PREFIXES` (an interface's: the uplink's, a LAN's...; or a
//!    network's gateway), as `--dst-type LOCAL` takes them.
//!
//! Why 127.0.0.1 works without `route_localnet` or a proxy: nothing is
//! translated per packet. connect() itself is redirected, so the kernel
//! routes the socket straight to the container address, picks the bridge
//! address as source, and the exchange is ordinary routed traffic between the
//! host and the container, replies included. No packet ever carries 127.0.0.1
//! on the bridge, and there is no conntrack entry to keep.
//!
//! IPv6 sockets: a dual-stack socket aimed at an IPv4-mapped address
//! (`::ffff:127.0.0.1`, Java's default) goes through the `*6` hooks with
//! the mapped address; those programs translate it like the IPv4 one and
//! write back a mapped address. Any other IPv6 address is left alone (the
//! networks have no IPv6).
//!
//! getpeername() reports the address the application dialled, not the
//! container's: connect4/6 record every translated socket (TCP and UDP) in
//! `SOCK_REVNAT`, which getpeername4/6 and recvmsg4/6 read back.
//!
//! Not covered:
//! - a socket bound to a loopback address before connect()/sendto() (e.g.
//!   `bind(127.0.0.1:0)`): after the rewrite its source is 127.0.0.1 on a route
//!   out of a non-loopback device, which the kernel's output routing refuses,
//!   so connect()/sendto() fails with EINVAL (with `route_localnet` it would
//!   leave, and the container's reply to 127.0.0.1 could not come back);
//! - host addresses other than 127/8, 0.0.0.0 and the uplink address (a
//!   network's gateway, a second uplink address) for ports published on every
//!   address: BPF cannot iterate `NETWORKS`, and there is no map of local
//!   addresses; publishing on such an address explicitly works (rule 1);
//! - `::1` and other IPv6 addresses (published ports are IPv4);
//! - `SOCK_REVNAT` is an LRU: a socket whose entry was pushed out by 65,536
//!   newer ones gets the container's address from getpeername(), and an
//!   unconnected UDP socket's recvmsg() reports the original address only for
//!   the last published address it sent to per container address and port;
//! - host processes outside the cgroup the programs are attached to.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use netctl_common::{
    config::Config,
    portmap::{PortKey, PortTarget},
    sock::{SockRevKey, SockRevValue},
    stats::StatIndex,
};

use crate::maps::{CONFIG, PORTMAP, SOCK_REVNAT};

/// The only verdict these programs give: let the call go on.
const ALLOW: i32 = 1;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// connect() of a TCP or UDP socket.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4);
    ALLOW
}

/// sendto()/sendmsg() with an address on an unconnected UDP socket (the
/// kernel runs this hook only then: a connected socket went through connect4).
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4);
    ALLOW
}

/// recvfrom()/recvmsg() asking for the source of a UDP datagram: report the
/// address the application sent to, not the container's.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, Family::V4);
    ALLOW
}

/// getpeername() of a translated socket: the address the application
/// dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, Family::V4);
    ALLOW
}

/// connect() of a dual-stack socket to an IPv4-mapped address (the kernel
/// runs this hook before it hands the mapped address to IPv4).
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6Mapped);
    ALLOW
}

/// sendto() with an IPv4-mapped address on an unconnected dual-stack UDP
/// socket, where the kernel runs the IPv6 hook (recent kernels hand mapped
/// destinations to udp_sendmsg, whose sendmsg4 hook sees them as IPv4).
#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6Mapped);
    ALLOW
}

/// recvfrom() on a dual-stack UDP socket: the source of an IPv4 datagram
/// arrives mapped.
#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, Family::V6Mapped);
    ALLOW
}

/// getpeername() of a dual-stack socket connected to a mapped address.
#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, Family::V6Mapped);
    ALLOW
}

/// Where a hook finds the IPv4 address: `user_ip4`, or the last word of an
/// IPv4-mapped `user_ip6` (`::ffff:a.b.c.d`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6Mapped,
}

/// The `::ffff:` prefix's third word as it lies in memory.
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address (network order) the hook's address holds, if any.
#[inline(always)]
fn read_ip(ctx: &SockAddrContext, family: Family) -> Option<u32> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, readable for the whole program; user_ip6
    // is read a 4-byte word at a time, as the verifier demands.
    unsafe {
        match family {
            Family::V4 => Some((*sa).user_ip4),
            Family::V6Mapped => {
                let words = [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2]];
                (words == [0, 0, MAPPED_WORD]).then(|| (*sa).user_ip6[3])
            }
        }
    }
}

/// Writes the IPv4 address and port (network order) back where
/// [`read_ip`] found them.
#[inline(always)]
fn write_addr(ctx: &SockAddrContext, family: Family, ip: u32, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4/user_ip6 and user_port are writable in every hook
    // these programs attach to (connect, sendmsg, recvmsg, getpeername of
    // their family); the mapped prefix stays as it is.
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = ip,
            Family::V6Mapped => (*sa).user_ip6[3] = ip,
        }
        (*sa).user_port = u32::from(port);
    }
}

/// The host settings, if this socket belongs to the host namespace and the
/// host namespace is configured.
#[inline(always)]
fn host_config(ctx: &SockAddrContext) -> Option<Config> {
    let config = *CONFIG.get(0)?;
    if config.host_netns_cookie == 0 {
        return None;
    }
    // SAFETY: a helper valid for cgroup sock_addr programs, given their context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (cookie == config.host_netns_cookie).then_some(config)
}

/// `ip` (network order) is an address the host answers on for ports
/// published on every address.
#[inline(always)]
fn is_host_local(ip: u32) -> bool {
    // The first octet is the first byte in memory.
    let first_octet = ip.to_ne_bytes()[0];
    ip == 0 || first_octet == 127 || crate::host::network_prefix(ip).is_host()
}

/// The published port behind `ip:port` (network order), if any.
#[inline(always)]
fn published(ip: u32, port: u16, proto: u8) -> Option<PortTarget> {
    let mut key = PortKey {
        host_ip: ip,
        host_port: port,
        proto,
        _pad: 0,
    };
    if let Some(target) = PORTMAP.get_ptr(key) {
        // SAFETY: a value pointer from a successful lookup; copied at once.
        return Some(unsafe { *target });
    }
    if !is_host_local(ip) {
        return None;
    }
    key.host_ip = 0;
    // SAFETY: as above.
    PORTMAP.get_ptr(key).map(|target| unsafe { *target })
}

/// connect/sendmsg: send a host socket aimed at a published port straight
/// to the container, and remember where it was aimed (getpeername,
/// recvmsg).
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, readable for the whole program.
    let (proto, dst_port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let Some(dst_ip) = read_ip(ctx, family) else {
        return;
    };
    if host_config(ctx).is_none() {
        return;
    }
    // user_port holds the port in network order in its low 16 bits (the first
    // two bytes in memory), as PortKey does.
    let dst_port = dst_port as u16;
    let Some(target) = published(dst_ip, dst_port, proto as u8) else {
        return;
    };
    let key = SockRevKey {
        // SAFETY: a helper valid for cgroup sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        ip: target.ip,
        port: target.port,
        _pad: 0,
    };
    let original = SockRevValue {
        ip: dst_ip,
        port: dst_port,
        _pad: 0,
    };
    // LRU: insertion evicts rather than fails. Should it fail anyway, the
    // socket is still translated: only getpeername() and an unconnected
    // socket's recvmsg() then see the container's address.
    let _ = SOCK_REVNAT.insert(key, original, 0);
    write_addr(ctx, family, target.ip, target.port);
    crate::stats::count(StatIndex::SockTranslated, 0);
}

/// recvmsg/getpeername: the address of a container this socket reached
/// through a published port becomes that published address again.
#[inline(always)]
fn restore(ctx: &SockAddrContext, family: Family) {
    let Some(src_ip) = read_ip(ctx, family) else {
        return;
    };
    if host_config(ctx).is_none() {
        return;
    }
    // SAFETY: the kernel's context, readable for the whole program.
    let src_port = unsafe { (*ctx.sock_addr).user_port };
    let key = SockRevKey {
        // SAFETY: a helper valid for cgroup sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        ip: src_ip,
        port: src_port as u16,
        _pad: 0,
    };
    let Some(original) = SOCK_REVNAT.get_ptr(key) else {
        return;
    };
    // SAFETY: a value pointer from a successful lookup, copied at once.
    let original = unsafe { *original };
    write_addr(ctx, family, original.ip, original.port);
}
