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
//!    connects that to the host itself) or `Config::uplink_ip`.
//!
//! Why 127.0.0.1 works without `route_localnet` or a proxy: nothing is
//! translated per packet. connect() itself is redirected, so the kernel
//! routes the socket straight to the container address, picks the bridge
//! address as source, and the exchange is ordinary routed traffic between the
//! host and the container, replies included. No packet ever carries 127.0.0.1
//! on the bridge, and there is no conntrack entry to keep.
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
//! - IPv6 (`::1`, connect6/sendmsg6), including IPv4-mapped addresses on
//!   dual-stack sockets, which go through the connect6 hook;
//! - getpeername() on a translated socket reports the container's address
//!   (no getpeername4 program), and a UDP socket's recvmsg() reports the
//!   original address only for the last published address it sent to per
//!   container address and port;
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
    translate(&ctx);
    ALLOW
}

/// sendto()/sendmsg() with an address on an unconnected UDP socket (the
/// kernel runs this hook only then: a connected socket went through connect4).
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx);
    ALLOW
}

/// recvfrom()/recvmsg() asking for the source of a UDP datagram: report the
/// address the application sent to, not the container's.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
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
fn is_host_local(ip: u32, uplink_ip: u32) -> bool {
    // The first octet is the first byte in memory.
    let first_octet = ip.to_ne_bytes()[0];
    ip == 0 || first_octet == 127 || (uplink_ip != 0 && ip == uplink_ip)
}

/// The published port behind `ip:port` (network order), if any.
#[inline(always)]
fn published(ip: u32, port: u16, proto: u8, uplink_ip: u32) -> Option<PortTarget> {
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
    if !is_host_local(ip, uplink_ip) {
        return None;
    }
    key.host_ip = 0;
    // SAFETY: as above.
    PORTMAP.get_ptr(key).map(|target| unsafe { *target })
}

/// connect4/sendmsg4: send a host socket aimed at a published port straight
/// to the container.
#[inline(always)]
fn translate(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, readable for the whole program.
    let (proto, dst_ip, dst_port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let Some(config) = host_config(ctx) else {
        return;
    };
    // user_port holds the port in network order in its low 16 bits (the first
    // two bytes in memory), as PortKey does.
    let dst_port = dst_port as u16;
    let Some(target) = published(dst_ip, dst_port, proto as u8, config.uplink_ip) else {
        return;
    };
    if proto == IPPROTO_UDP {
        // Only UDP sockets reach recvmsg4; a TCP entry would only push live
        // UDP entries out of the LRU.
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
        // datagram is still translated: a connected socket does not need the
        // entry, an unconnected one sees the container's address as source.
        let _ = SOCK_REVNAT.insert(key, original, 0);
    }
    // SAFETY: user_ip4 and user_port are writable in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = target.ip;
        (*sa).user_port = u32::from(target.port);
    }
    crate::stats::count(StatIndex::SockTranslated, 0);
}

/// recvmsg4: the source of a datagram from a container this socket reached
/// through a published port becomes that published address again.
#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    if host_config(ctx).is_none() {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context, readable for the whole program.
    let (src_ip, src_port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
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
    // SAFETY: a value pointer from a successful lookup; user_ip4 and
    // user_port are writable in recvmsg4.
    unsafe {
        let original = *original;
        (*sa).user_ip4 = original.ip;
        (*sa).user_port = u32::from(original.port);
    }
}
