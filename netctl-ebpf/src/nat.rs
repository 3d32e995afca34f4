//! Address and port translation: applying a conntrack entry to a packet,
//! and creating the entries of new SNAT, DNAT and hairpin flows.

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use netctl_common::{
    config::{Config, CONFIG_FLAG_LOG},
    conntrack::{
        CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_KIND_DNAT, CT_KIND_HAIRPIN, CT_KIND_SNAT,
        CT_STATE_NEW,
    },
    portmap::{PortKey, PortTarget},
    stats::StatIndex,
};

use crate::{
    conntrack::{self, key_of},
    csum, fragment,
    maps::PORTMAP,
    parse::{
        Packet, ICMP_ECHO_REQUEST, IP_DADDR_OFF, IP_SADDR_OFF, L4, PROTO_DCCP, PROTO_ICMP,
        PROTO_UDPLITE,
    },
    stats::count,
};

/// SNAT port candidates tried before giving up. A constant bound: the loop
/// below is a bounded loop for the verifier (and LLVM may unroll it).
const SNAT_TRIES: u32 = 8;

/// Rewrites the packet to the entry's addresses and ports. A first
/// fragment's translation is recorded first, for the later fragments of
/// its datagram (see the `fragment` module).
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &Packet, entry: &CtEntry) -> Result<(), StatIndex> {
    if pkt.first_fragment() {
        fragment::record(pkt, entry)?;
    }
    csum::set_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, entry.saddr)?;
    csum::set_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, entry.daddr)?;
    match pkt.l4 {
        L4::Tcp | L4::Udp => {
            csum::set_l4_u16(ctx, pkt, pkt.l4_off, pkt.sport, entry.sport)?;
            csum::set_l4_u16(ctx, pkt, pkt.l4_off + 2, pkt.dport, entry.dport)
        }
        // The identifier is both "ports": entries of echo flows carry the
        // same value in sport and dport.
        L4::IcmpEcho => csum::set_l4_u16(ctx, pkt, pkt.l4_off + 4, pkt.sport, entry.sport),
        // Addresses only (generic flows: no ports; ICMP errors are
        // rewritten by icmp_error).
        L4::IcmpError | L4::Generic | L4::Other | L4::Fragment | L4::Truncated => Ok(()),
    }
}

/// A packet of a tracked flow: recorded on its entry, rewritten, counted.
#[inline(always)]
pub fn translate(
    ctx: &TcContext,
    pkt: &Packet,
    entry_ptr: *mut CtEntry,
    entry: &CtEntry,
    bytes: u32,
) -> Result<(), StatIndex> {
    conntrack::seen(entry_ptr, pkt, bytes);
    apply(ctx, pkt, entry)?;
    count(stat_of(entry), bytes);
    Ok(())
}

/// SNAT of a container's new flow to the outside, shared by the fast path
/// (endpoint_ingress) and the slow path (uplink_egress). `Ok(None)`: the
/// packet is translated; `Ok(Some(verdict))`: passed untranslated. No
/// packet leaves with the container's address: what cannot be translated
/// is dropped with its reason.
#[inline(always)]
pub fn masquerade(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    client_ifindex: u32,
    bytes: u32,
) -> Result<Option<i32>, StatIndex> {
    let entry = if pkt.l4 == L4::Generic {
        // An address-only rewrite would break a checksum over the
        // addresses.
        if pkt.proto == PROTO_DCCP || pkt.proto == PROTO_UDPLITE {
            return Err(StatIndex::DropUntranslatable);
        }
        generic_snat(pkt, cfg, client_ifindex, bytes)?
    } else {
        // A later fragment with no FRAGMENTS entry (the callers look it up
        // first): its first fragment has not been seen, so there is no flow
        // to take the translation from, and untranslated it would leave
        // with the container's address.
        if pkt.l4 == L4::Fragment {
            return Err(StatIndex::DropFragmentOutOfOrder);
        }
        // An ICMP error quoting no flow, an echo reply nothing asked for, a
        // header cut short: no translation (the kernel's conntrack finds
        // them INVALID).
        if matches!(pkt.l4, L4::IcmpError | L4::Other | L4::Truncated)
            || (pkt.l4 == L4::IcmpEcho && pkt.icmp_type != ICMP_ECHO_REQUEST)
        {
            return Err(StatIndex::DropUntranslatable);
        }
        snat(pkt, cfg, client_ifindex, bytes)?
    };
    apply(ctx, pkt, &entry)?;
    count(StatIndex::Snat, bytes);
    Ok(None)
}

/// With `CONFIG_FLAG_LOG` (`netctl trace`): one line per new translated
/// flow, its packet tuple and what it becomes (port in host order).
/// Called for DNAT only (uplink_ingress): in endpoint_ingress (SNAT,
/// hairpin) the log code pushes the verifier past its stack limit (a
/// 64-byte subprogram frame over the 496-byte main one) and near 1M
/// processed instructions.
#[inline(always)]
pub fn log_new_flow(
    ctx: &TcContext,
    cfg: &Config,
    kind: &'static str,
    pkt: &Packet,
    entry: &CtEntry,
) {
    if cfg.flags & CONFIG_FLAG_LOG == 0 {
        return;
    }
    debug!(
        ctx,
        "new {} flow proto={} src={:i} dst={:i} as src={:i}:{}",
        kind,
        pkt.proto,
        pkt.saddr.to_ne_bytes(),
        pkt.daddr.to_ne_bytes(),
        entry.saddr.to_ne_bytes(),
        u16::from_be(entry.sport)
    );
}

/// The counter of a translated packet.
#[inline(always)]
pub fn stat_of(entry: &CtEntry) -> StatIndex {
    if entry.direction == CT_DIR_REPLY {
        StatIndex::ReverseNat
    } else if entry.kind == CT_KIND_DNAT {
        StatIndex::Dnat
    } else if entry.kind == CT_KIND_HAIRPIN {
        StatIndex::Hairpin
    } else {
        StatIndex::Snat
    }
}

#[inline(always)]
fn port_key(host_ip: u32, port: u16, proto: u8) -> PortKey {
    PortKey {
        host_ip,
        host_port: port,
        proto,
        _pad: 0,
    }
}

/// The published port `ip:port/proto`: exact host address first, then 0.0.0.0.
#[inline(always)]
pub fn portmap(ip: u32, port: u16, proto: u8) -> Option<PortTarget> {
    // SAFETY: plain-data values copied out at once.
    unsafe {
        if let Some(t) = PORTMAP.get(port_key(ip, port, proto)) {
            return Some(*t);
        }
        PORTMAP.get(port_key(0, port, proto)).copied()
    }
}

/// Whether a published port uses `port` on `ip` (or on every address).
#[inline(always)]
pub fn published(ip: u32, port: u16, proto: u8) -> bool {
    proto != PROTO_ICMP
        && (PORTMAP.get_ptr(port_key(ip, port, proto)).is_some()
            || PORTMAP.get_ptr(port_key(0, port, proto)).is_some())
}

/// Mixes the tuple into the starting point of the port search (same flow,
/// same first candidate; different flows spread over the range).
#[inline(always)]
fn flow_hash(k: &CtKey) -> u32 {
    let mut h = k.saddr
        ^ k.daddr.rotate_left(11)
        ^ ((u32::from(k.sport) << 16) | u32::from(k.dport)).rotate_left(22)
        ^ u32::from(k.proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// A new flow whose source becomes `nat_ip:<allocated port>` and whose
/// destination becomes `dst_ip:dst_port` (unchanged for SNAT; the target
/// container for hairpin).
pub struct NewFlow {
    pub kind: u8,
    pub nat_ip: u32,
    pub dst_ip: u32,
    pub dst_port: u16,
    /// Delivery of the original direction (0: the uplink).
    pub out_ifindex: u32,
    /// Delivery of replies: the client container's veth.
    pub back_ifindex: u32,
}

/// Allocates a source port on `flow.nat_ip` and inserts both entries:
/// ORIGINAL (packet tuple → nat_ip:port, dst_ip:dst_port) and REPLY
/// ((dst_ip, nat_ip, dst_port, port) → back to the packet's own tuple).
/// Candidates come from the CONFIG range by hashing the tuple, for at most
/// SNAT_TRIES tries: a port is free when the reply tuple is not tracked and
/// no published port owns it. Returns the original entry, to be applied.
#[inline(always)]
pub fn new_flow(
    pkt: &Packet,
    cfg: &Config,
    flow: &NewFlow,
    bytes: u32,
) -> Result<CtEntry, StatIndex> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if min == 0 || max < min {
        return Err(StatIndex::DropSnatExhausted);
    }
    // range >= 1: the explicit test keeps a "division by zero" panic path
    // (an endless loop in the panic handler, which the verifier rejects)
    // out of the code.
    let range = max - min + 1;
    if range == 0 {
        return Err(StatIndex::DropSnatExhausted);
    }
    let key = key_of(pkt);
    let state = conntrack::initial_state(pkt);
    let hash = flow_hash(&key);
    let icmp = pkt.l4 == L4::IcmpEcho;

    for i in 0..SNAT_TRIES {
        let port = (min + hash.wrapping_add(i.wrapping_mul(0x9e37_79b9)) % range) as u16;
        let port = port.to_be();
        // An echo flow keeps its identifier in both "ports".
        let dst_port = if icmp { port } else { flow.dst_port };
        if published(flow.nat_ip, port, pkt.proto) {
            continue;
        }
        let reply_key = CtKey {
            saddr: flow.dst_ip,
            daddr: flow.nat_ip,
            sport: dst_port,
            dport: port,
            proto: pkt.proto,
            _pad: [0; 3],
        };
        let reply = conntrack::entry(
            (pkt.daddr, pkt.dport),
            (pkt.saddr, pkt.sport),
            flow.kind,
            CT_DIR_REPLY,
            flow.back_ifindex,
            state,
            bytes,
        );
        if !conntrack::claim(&reply_key, &reply)? {
            continue;
        }
        let original = conntrack::entry(
            (flow.nat_ip, port),
            (flow.dst_ip, dst_port),
            flow.kind,
            CT_DIR_ORIGINAL,
            flow.out_ifindex,
            state,
            bytes,
        );
        conntrack::insert_original(&key, &original, &reply_key)?;
        return Ok(original);
    }
    Err(StatIndex::DropSnatExhausted)
}

/// SNAT of a container's new flow to the uplink address.
#[inline(always)]
fn snat(pkt: &Packet, cfg: &Config, client_ifindex: u32, bytes: u32) -> Result<CtEntry, StatIndex> {
    new_flow(
        pkt,
        cfg,
        &NewFlow {
            kind: CT_KIND_SNAT,
            nat_ip: cfg.uplink_ip,
            dst_ip: pkt.daddr,
            dst_port: pkt.dport,
            out_ifindex: 0,
            back_ifindex: client_ifindex,
        },
        bytes,
    )
}

/// SNAT of a new flow of a protocol without ports (GRE, ESP, SCTP, ICMP
/// other than echo...): the source address becomes the uplink's, nothing
/// else changes, and the flow is keyed by addresses and protocol (ports 0),
/// as MASQUERADE does for protocols without a NAT module of their own.
/// Replies from the server in that protocol go back to the container.
///
/// The limit: the uplink address has one such flow per server and
/// protocol. The first container keeps it while it lives (the protocol's
/// conntrack timeout after its last packet in either direction); another
/// container talking the same protocol to the same server meanwhile is
/// dropped, `drop_generic_taken` (the kernel would send it with a clashing
/// tuple, whose replies all go to the first).
#[inline(always)]
fn generic_snat(
    pkt: &Packet,
    cfg: &Config,
    client_ifindex: u32,
    bytes: u32,
) -> Result<CtEntry, StatIndex> {
    if cfg.uplink_ip == 0 {
        return Err(StatIndex::DropUntranslatable);
    }
    let key = key_of(pkt);
    let reply_key = CtKey {
        saddr: pkt.daddr,
        daddr: cfg.uplink_ip,
        sport: 0,
        dport: 0,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let reply = conntrack::entry(
        (pkt.daddr, 0),
        (pkt.saddr, 0),
        CT_KIND_SNAT,
        CT_DIR_REPLY,
        client_ifindex,
        CT_STATE_NEW,
        bytes,
    );
    if !conntrack::claim(&reply_key, &reply)? {
        // Taken: by this container's own flow (whose original entry is
        // gone) it is its own again, by another container's it is not.
        let mine = conntrack::lookup(&reply_key)
            // SAFETY: a map value pointer from a successful lookup, read at once.
            .is_some_and(|e| unsafe { (*e).daddr } == pkt.saddr);
        if !mine {
            return Err(StatIndex::DropGenericTaken);
        }
    }
    let original = conntrack::entry(
        (cfg.uplink_ip, 0),
        (pkt.daddr, 0),
        CT_KIND_SNAT,
        CT_DIR_ORIGINAL,
        0,
        CT_STATE_NEW,
        bytes,
    );
    conntrack::insert_original(&key, &original, &reply_key)?;
    Ok(original)
}

/// DNAT of a new connection to a published port: the client's address is
/// kept, the destination becomes the container. No port to allocate: the
/// reply tuple is the container's own.
#[inline(always)]
pub fn dnat(pkt: &Packet, target: &PortTarget, bytes: u32) -> Result<CtEntry, StatIndex> {
    let key = key_of(pkt);
    let state = conntrack::initial_state(pkt);
    let reply_key = CtKey {
        saddr: target.ip,
        daddr: pkt.saddr,
        sport: target.port,
        dport: pkt.sport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let reply = conntrack::entry(
        (pkt.daddr, pkt.dport),
        (pkt.saddr, pkt.sport),
        CT_KIND_DNAT,
        CT_DIR_REPLY,
        0,
        state,
        bytes,
    );
    // The same client port reconnecting after its old flow died overwrites
    // the old entries (BPF_ANY): they describe the same tuple.
    conntrack::insert(&reply_key, &reply)?;
    let original = conntrack::entry(
        (pkt.saddr, pkt.sport),
        (target.ip, target.port),
        CT_KIND_DNAT,
        CT_DIR_ORIGINAL,
        target.ifindex,
        state,
        bytes,
    );
    conntrack::insert_original(&key, &original, &reply_key)?;
    Ok(original)
}
