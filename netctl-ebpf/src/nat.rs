//! Address and port translation: applying a conntrack entry to a packet,
//! and creating the entries of new SNAT, DNAT and hairpin flows.

// Keys that live in map values or already on the stack are passed to the
// map helpers by reference, so that the helper gets that very pointer
// rather than a copy in a new stack slot: the program and its callbacks
// share 512 bytes of stack, and endpoint_ingress uses most of them.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_loop, programs::TcContext};
use netctl_common::{
    config::Config,
    conntrack::{
        closed, expired, CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_KIND_DNAT,
        CT_KIND_HAIRPIN, CT_KIND_SNAT, CT_STATE_NEW, CT_STATE_SYN_SENT,
    },
    event::EVENT_NEW,
    portmap::{PortKey, PortTarget},
    stats::StatIndex,
};

use crate::{
    conntrack::{self, key_of},
    csum, events, fragment,
    maps::{CONNTRACK, PORTMAP, SNAT_SEARCH},
    parse::{
        Packet, ICMP_ECHO_REQUEST, IP_DADDR_OFF, IP_SADDR_OFF, L4, PROTO_DCCP, PROTO_ICMP,
        PROTO_TCP, PROTO_UDPLITE,
    },
    stats::count,
};

/// SNAT port candidates tried before giving up: the whole range when it is
/// smaller. bpf_loop runs the search (the verifier checks its callback
/// once, whatever the count); at ~0.1 µs a candidate, an exhausted range
/// costs a new flow at most ~1 ms.
const SNAT_SEARCH_MAX: u32 = 8_192;

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

/// Notes the address the packet under way is SNATed to (`source` in this
/// CPU's `SNAT_SEARCH` slot), for the SNAT of [`masquerade`] ([`new_flow`]
/// and `generic_snat` read it there): where the interface it leaves by is
/// known (`forward::fib_route`, `uplink_egress`). Off the stack: carried
/// down as an argument, or read into a local before the SNAT, it took
/// endpoint_ingress past its 512 bytes.
#[inline(always)]
pub fn set_snat_source(ip: u32) {
    if let Some(slot) = scratch() {
        slot.source = ip;
    }
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
    if pkt.l4 == L4::Generic {
        // An address-only rewrite would break a checksum over the
        // addresses.
        if pkt.proto == PROTO_DCCP || pkt.proto == PROTO_UDPLITE {
            return Err(StatIndex::DropUntranslatable);
        }
        let entry = generic_snat(pkt, client_ifindex, bytes)?;
        apply(ctx, pkt, entry)?;
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
        let entry = snat(pkt, cfg, client_ifindex, bytes)?;
        apply(ctx, pkt, entry)?;
    }
    count(StatIndex::Snat, bytes);
    Ok(None)
}

/// The event of a new flow (when someone listens): `key` is its first
/// packet's tuple, `original` the entry that packet's direction got;
/// `ifindex` the container's veth (the client's for SNAT and hairpin, the
/// published container's for DNAT; 0 for the host's flows).
#[inline(always)]
pub fn new_flow_event(ifindex: u32, key: &CtKey, original: &CtEntry) {
    events::of_key(ifindex, events::what(EVENT_NEW, 0), key, original);
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

/// `NewFlow::nat_ip` for the address [`set_snat_source`] noted (read from
/// the scratch slot where it is, rather than carried on the stack).
pub const NOTED_SOURCE: u32 = 0;

/// A new flow whose source becomes `nat_ip:<allocated port>` and whose
/// destination becomes `dst_ip:dst_port` (unchanged for SNAT; the target
/// container for hairpin).
pub struct NewFlow {
    pub kind: u8,
    /// [`NOTED_SOURCE`]: the address [`set_snat_source`] noted.
    pub nat_ip: u32,
    pub dst_ip: u32,
    pub dst_port: u16,
    /// Delivery of the original direction (0: the uplink).
    pub out_ifindex: u32,
    /// Delivery of replies: the client container's veth.
    pub back_ifindex: u32,
}

/// The allowed SNAT ports: `[min, min + count)` with the ports of
/// `[skip_min, skip_min + skip_len)` left out (the host's ephemeral range).
#[derive(Clone, Copy)]
pub struct PortRange {
    min: u32,
    count: u32,
    skip_min: u32,
    skip_len: u32,
}

impl PortRange {
    /// From CONFIG: `None` when no port is allowed.
    #[inline(always)]
    fn of(cfg: &Config) -> Option<PortRange> {
        let min = u32::from(cfg.snat_port_min);
        let max = u32::from(cfg.snat_port_max);
        if min == 0 || max < min {
            return None;
        }
        // The part of the skipped range inside [min, max].
        let lo = u32::from(cfg.snat_skip_min).max(min);
        let hi = u32::from(cfg.snat_skip_max).min(max);
        let (skip_min, skip_len) = if cfg.snat_skip_min != 0 && lo <= hi {
            (lo, hi - lo + 1)
        } else {
            (0, 0)
        };
        let count = (max - min + 1) - skip_len;
        if count == 0 {
            return None;
        }
        Some(PortRange {
            min,
            count,
            skip_min,
            skip_len,
        })
    }

    /// The `index`th allowed port (`index < count`).
    #[inline(always)]
    fn nth(&self, index: u32) -> u32 {
        let port = self.min + index;
        if self.skip_len != 0 && port >= self.skip_min {
            port + self.skip_len
        } else {
            port
        }
    }

    #[inline(always)]
    fn contains(&self, port: u32) -> bool {
        port >= self.min
            && port < self.min + self.count + self.skip_len
            && (self.skip_len == 0 || port < self.skip_min || port >= self.skip_min + self.skip_len)
    }
}

/// State of the port search, shared by the program and its bpf_loop
/// callback through slot 0 of the per-CPU `SNAT_SEARCH` map rather than the
/// stack: the program and the callback share the 512-byte stack, and
/// endpoint_ingress used all of it with this struct on it (LLVM refused to
/// build it). The keys the callback looks up live here too, so that its own
/// frame stays a few bytes.
#[repr(C)]
pub struct PortSearch {
    /// The reply tuple; `dport` is the candidate, in network order.
    pub reply_key: CtKey,
    /// A published port's key on `nat_ip`, then on 0.0.0.0.
    port_key: PortKey,
    range: PortRange,
    /// The packet's own source port (host order) when it is allowed:
    /// tried first, as MASQUERADE keeps a free source port. 0: none.
    keep: u32,
    /// Where the hashed search starts, an index into the range.
    start: u32,
    /// ICMP echo: the identifier is both "ports" of the reply tuple.
    icmp: u32,
    /// A TCP SYN: a closed flow's tuple may be taken over (see `claim`).
    syn: u32,
    /// The port found (host order), 0 while none.
    found: u32,
    /// The address the packet under way is SNATed to ([`set_snat_source`]),
    /// read before the search starts. It took what was padding before
    /// `reply` (8-aligned), so `SNAT_SEARCH` keeps its layout: its old
    /// programs never read it.
    pub source: u32,
    /// The new flow's entries, built here rather than on the stack (the
    /// same 512 bytes).
    pub reply: CtEntry,
    pub original: CtEntry,
}

// SNAT_SEARCH's value, layout version 1 (`source` fills the padding).
const _: () = assert!(core::mem::size_of::<PortSearch>() == 176);

/// This CPU's `SNAT_SEARCH` slot, as scratch room for building a new
/// flow's keys and entries off the stack (the port search, generic and
/// host flows; one at a time, within one program run).
#[inline(always)]
pub fn scratch<'a>() -> Option<&'a mut PortSearch> {
    // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on
    // this CPU during the program.
    SNAT_SEARCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// One candidate of the port search: returns 1 (stop) once `found` is set.
/// Candidate 0 is the kept source port, then consecutive ports of the
/// range from a hashed start (every port of the range is reached within
/// `count` candidates). A port is free when no published port owns it on
/// the address (or on every address) and the reply tuple it makes is not
/// a live flow's; a dead entry there (its pair dead too) is left to
/// `claim`, which deletes it.
#[inline(never)]
extern "C" fn port_candidate(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(search) = SNAT_SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, which the program filled before bpf_loop
    // (nothing else runs on this CPU meanwhile).
    unsafe {
        let s = &mut *search;
        let i = index as u32;
        let count = s.range.count;
        // Tested so that no division-by-zero panic path (an endless loop in
        // the panic handler, which the verifier rejects: "last insn is not
        // an exit or jmp") is left in the callback.
        if count == 0 {
            return 1;
        }
        let port = if i == 0 && s.keep != 0 {
            s.keep
        } else {
            let step = if s.keep != 0 { i.wrapping_sub(1) } else { i };
            s.range.nth(s.start.wrapping_add(step) % count)
        };
        let be = (port as u16).to_be();
        s.port_key.host_port = be;
        if PORTMAP.get_ptr(&s.port_key).is_some() {
            return 0;
        }
        let host_ip = s.port_key.host_ip;
        s.port_key.host_ip = 0;
        let any = PORTMAP.get_ptr(&s.port_key).is_some();
        s.port_key.host_ip = host_ip;
        if any {
            return 0;
        }
        s.reply_key.dport = be;
        if s.icmp != 0 {
            s.reply_key.sport = be;
        }
        if let Some(e) = CONNTRACK.get_ptr(&s.reply_key) {
            let free = (s.syn != 0 && closed((*e).state))
                || expired(&*e, s.reply_key.proto, conntrack::now());
            if !free {
                return 0;
            }
        }
        s.found = port;
    }
    1
}

/// Allocates a source port on `flow.nat_ip` and inserts both entries:
/// ORIGINAL (packet tuple → nat_ip:port, dst_ip:dst_port) and REPLY
/// ((dst_ip, nat_ip, dst_port, port) → back to the packet's own tuple).
/// As MASQUERADE (nf_nat_l4proto_unique_tuple): the packet's own source
/// port when it is in the allowed range and free, else a search of the
/// range from a hashed start, up to [`SNAT_SEARCH_MAX`] candidates. Returns
/// the original entry, to be applied (in this CPU's `SNAT_SEARCH` slot,
/// valid until the program ends).
#[inline(always)]
pub fn new_flow<'a>(
    pkt: &Packet,
    cfg: &Config,
    flow: &NewFlow,
    bytes: u32,
) -> Result<&'a CtEntry, StatIndex> {
    let range = PortRange::of(cfg).ok_or(StatIndex::DropSnatExhausted)?;
    let key = key_of(pkt);
    let state = conntrack::initial_state(pkt);
    let icmp = pkt.l4 == L4::IcmpEcho;
    let sport = u32::from(u16::from_be(pkt.sport));
    let search = SNAT_SEARCH
        .get_ptr_mut(0)
        .ok_or(StatIndex::DropSnatExhausted)?;
    // SAFETY: this CPU's slot of a per-CPU array.
    let search = unsafe { &mut *search };
    let nat_ip = match flow.nat_ip {
        NOTED_SOURCE => search.source,
        ip => ip,
    };
    // Leaving by an interface without an address: nothing to give it.
    if nat_ip == 0 {
        return Err(StatIndex::DropNoHostAddress);
    }
    *search = PortSearch {
        reply_key: CtKey {
            saddr: flow.dst_ip,
            daddr: nat_ip,
            sport: flow.dst_port,
            dport: 0,
            proto: pkt.proto,
            _pad: [0; 3],
        },
        port_key: PortKey {
            host_ip: nat_ip,
            host_port: 0,
            proto: pkt.proto,
            _pad: 0,
        },
        range,
        keep: if range.contains(sport) { sport } else { 0 },
        start: flow_hash(&key) % range.count,
        icmp: u32::from(icmp),
        syn: u32::from(pkt.proto == PROTO_TCP && state == CT_STATE_SYN_SENT),
        found: 0,
        source: search.source,
        reply: conntrack::entry(
            (pkt.daddr, pkt.dport),
            (pkt.saddr, pkt.sport),
            flow.kind,
            CT_DIR_REPLY,
            flow.back_ifindex,
            state,
            bytes,
        ),
        original: conntrack::entry(
            (nat_ip, 0),
            (flow.dst_ip, flow.dst_port),
            flow.kind,
            CT_DIR_ORIGINAL,
            flow.out_ifindex,
            state,
            bytes,
        ),
    };
    // Echo identifiers are never published ports (PORTMAP has no ICMP).
    if icmp {
        search.port_key.proto = 0;
    }
    let tries = range.count.min(SNAT_SEARCH_MAX) + u32::from(search.keep != 0);
    // SAFETY: a callback of bpf_loop's signature, no context (the state is
    // in SNAT_SEARCH).
    unsafe {
        bpf_loop(
            tries,
            port_candidate as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    if search.found == 0 {
        return Err(StatIndex::DropSnatExhausted);
    }
    let port = (search.found as u16).to_be();
    // Another CPU may have claimed the port since: the flow's next packet
    // searches again.
    if !conntrack::claim(&search.reply_key, &search.reply)? {
        return Err(StatIndex::DropSnatExhausted);
    }
    search.original.sport = port;
    // An echo flow keeps its identifier in both "ports".
    if icmp {
        search.original.dport = port;
    }
    conntrack::track_first(&mut search.original, pkt);
    conntrack::insert_original(&key, &search.original, &search.reply_key)?;
    conntrack::remember_new(&key, state);
    new_flow_event(flow.back_ifindex, &key, &search.original);
    Ok(&search.original)
}

/// SNAT of a container's new flow to `nat_ip`, the address of the host
/// interface it leaves by.
#[inline(always)]
fn snat<'a>(
    pkt: &Packet,
    cfg: &Config,
    client_ifindex: u32,
    bytes: u32,
) -> Result<&'a CtEntry, StatIndex> {
    new_flow(
        pkt,
        cfg,
        &NewFlow {
            kind: CT_KIND_SNAT,
            nat_ip: NOTED_SOURCE,
            dst_ip: pkt.daddr,
            dst_port: pkt.dport,
            out_ifindex: 0,
            back_ifindex: client_ifindex,
        },
        bytes,
    )
}

/// SNAT of a new flow of a protocol without ports (GRE, ESP, SCTP, ICMP
/// other than echo...): the source address becomes `nat_ip`, nothing
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
fn generic_snat<'a>(
    pkt: &Packet,
    client_ifindex: u32,
    bytes: u32,
) -> Result<&'a CtEntry, StatIndex> {
    // The keys and entries are built in this CPU's SNAT_SEARCH slot, as
    // new_flow's are: endpoint_ingress has no stack left for two more
    // entries.
    let search = SNAT_SEARCH
        .get_ptr_mut(0)
        .ok_or(StatIndex::DropUntranslatable)?;
    // SAFETY: this CPU's slot of a per-CPU array.
    let s = unsafe { &mut *search };
    // The address of the host interface it leaves by, noted by the caller.
    let nat_ip = s.source;
    if nat_ip == 0 {
        return Err(StatIndex::DropNoHostAddress);
    }
    s.reply_key = CtKey {
        saddr: pkt.daddr,
        daddr: nat_ip,
        sport: 0,
        dport: 0,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    s.reply = conntrack::entry(
        (pkt.daddr, 0),
        (pkt.saddr, 0),
        CT_KIND_SNAT,
        CT_DIR_REPLY,
        client_ifindex,
        CT_STATE_NEW,
        bytes,
    );
    if !conntrack::claim(&s.reply_key, &s.reply)? {
        // Taken: by this container's own flow (whose original entry is
        // gone) it is its own again, by another container's it is not.
        let mine = conntrack::lookup(&s.reply_key)
            // SAFETY: a map value pointer from a successful lookup, read at once.
            .is_some_and(|e| unsafe { (*e).daddr } == pkt.saddr);
        if !mine {
            return Err(StatIndex::DropGenericTaken);
        }
    }
    s.original = conntrack::entry(
        (nat_ip, 0),
        (pkt.daddr, 0),
        CT_KIND_SNAT,
        CT_DIR_ORIGINAL,
        0,
        CT_STATE_NEW,
        bytes,
    );
    let key = key_of(pkt);
    conntrack::insert_original(&key, &s.original, &s.reply_key)?;
    conntrack::remember_new(&key, CT_STATE_NEW);
    new_flow_event(client_ifindex, &key, &s.original);
    Ok(&s.original)
}

/// DNAT of a new connection to a published port: the client's address is
/// kept, the destination becomes the container. No port to allocate: the
/// reply tuple is the container's own. Returns the original entry, to be
/// applied, built (with the reply's key and entry) in this CPU's
/// `SNAT_SEARCH` slot as new_flow's are: on uplink_ingress's stack, with
/// the new flow's event, they took it past its 512 bytes.
#[inline(always)]
pub fn dnat<'a>(pkt: &Packet, target: &PortTarget, bytes: u32) -> Result<&'a CtEntry, StatIndex> {
    let key = key_of(pkt);
    let state = conntrack::initial_state(pkt);
    let s = scratch().ok_or(StatIndex::DropConntrackFull)?;
    s.reply_key = CtKey {
        saddr: target.ip,
        daddr: pkt.saddr,
        sport: target.port,
        dport: pkt.sport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    s.reply = conntrack::entry(
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
    conntrack::insert(&s.reply_key, &s.reply)?;
    s.original = conntrack::entry(
        (pkt.saddr, pkt.sport),
        (target.ip, target.port),
        CT_KIND_DNAT,
        CT_DIR_ORIGINAL,
        target.ifindex,
        state,
        bytes,
    );
    conntrack::track_first(&mut s.original, pkt);
    conntrack::insert_original(&key, &s.original, &s.reply_key)?;
    conntrack::remember_new(&key, state);
    new_flow_event(target.ifindex, &key, &s.original);
    Ok(&s.original)
}
