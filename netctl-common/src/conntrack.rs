//! `CONNTRACK`: a hash with one entry per direction of a translated flow.

/// Entries of the conntrack table (two per flow): the programs' map
/// declaration, which the controller keeps unless `NETCTL_CONNTRACK_MAX`
/// sizes it otherwise at load.
pub const CONNTRACK_MAX_DEFAULT: u32 = 262_144;

/// Slots of `CT_UNCONFIRMED`, the ring of the keys of new flows that early
/// drop reads (the newest this many are reachable).
pub const CT_UNCONFIRMED_SLOTS: u32 = 65_536;

/// Slots of `CT_RECLAIM` (u64 each).
pub const CT_RECLAIM_LAST_SWEEP: u32 = 0;
/// Count of keys written to `CT_UNCONFIRMED` (the next goes to this
/// count modulo [`CT_UNCONFIRMED_SLOTS`]).
pub const CT_RECLAIM_RING_WRITTEN: u32 = 1;
/// Count of keys early drop has looked at (never behind the newest
/// ring's worth).
pub const CT_RECLAIM_RING_READ: u32 = 2;
/// How far back early drop looks, in flows: the controller writes half
/// the table's size (older keys name flows that are gone or expire
/// soon); 0 means the whole ring.
pub const CT_RECLAIM_RING_SPAN: u32 = 3;
pub const CT_RECLAIM_SLOTS: u32 = 4;

/// A packet's 5-tuple as it arrives (addresses and ports in network order;
/// ICMP echo uses the identifier as both ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// What to do with a packet matching a [`CtKey`]: rewrite to these addresses
/// and ports, then deliver; and, for TCP, what this direction has sent and
/// acknowledged (the window of [`in_window`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Rewritten source and destination (network order).
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `CT_KIND_*`: which translation created the flow.
    pub kind: u8,
    /// `CT_STATE_*`: the flow's state, the same in both entries.
    pub state: u8,
    /// `CT_DIR_*`.
    pub direction: u8,
    /// `CT_FLAG_*`.
    pub flags: u8,
    /// Where to deliver after rewriting: a container's host-side veth
    /// (redirect_peer) or 0 for the uplink (fib lookup + redirect_neigh).
    pub ifindex: u32,
    /// TCP, host order: the sequence number after the last byte (SYN and
    /// FIN count one) this direction has sent, the highest seen
    /// (`CT_FLAG_SEQ`).
    pub seq_end: u32,
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// TCP, host order: the highest acknowledgment this direction has sent
    /// (`CT_FLAG_ACK`): the next byte it expects from the other one.
    pub ack: u32,
    /// TCP: the last window this direction advertised (raw, unscaled).
    pub window: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 56);

pub const CT_KIND_SNAT: u8 = 1;
pub const CT_KIND_DNAT: u8 = 2;
/// Container → host address:published port → container (DNAT + SNAT to the gateway).
pub const CT_KIND_HAIRPIN: u8 = 3;
/// The host's own UDP flow whose source is a published port: nothing is
/// rewritten (both entries name the tuple as it is); the reply entry keeps
/// the peer's answers from being DNATed into a container.
pub const CT_KIND_HOST: u8 = 4;

pub const CT_DIR_ORIGINAL: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// `seq_end` holds what this direction sent.
pub const CT_FLAG_SEQ: u8 = 1;
/// `ack` holds what this direction acknowledged.
pub const CT_FLAG_ACK: u8 = 2;
/// This direction sent a FIN (in the window).
pub const CT_FLAG_FIN: u8 = 4;

// States, after the kernel's TCP conntrack (nf_conntrack_proto_tcp.c),
// without its SYN_SENT2 (simultaneous open). UDP and ICMP use NEW (no
// reply yet) and ESTABLISHED only. A flow is *unconfirmed* in NEW/SYN_SENT
// and SYN_RECV: the first to go when the table is full (early drop).

/// UDP/ICMP: no reply seen yet. TCP: SYN_SENT, the initiator's SYN seen.
pub const CT_STATE_NEW: u8 = 0;
pub const CT_STATE_SYN_SENT: u8 = CT_STATE_NEW;
/// UDP/ICMP: a reply was seen. TCP: the initiator acknowledged the
/// responder's SYN-ACK (or the flow was picked up mid-stream).
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// TCP: the responder's SYN-ACK seen, the initiator's ACK not yet.
pub const CT_STATE_SYN_RECV: u8 = 2;
/// TCP: a FIN in one direction (half-closed).
pub const CT_STATE_FIN_WAIT: u8 = 3;
/// TCP: that FIN acknowledged; the other direction may still send.
pub const CT_STATE_CLOSE_WAIT: u8 = 4;
/// TCP: FINs both ways, the last not yet acknowledged.
pub const CT_STATE_LAST_ACK: u8 = 5;
/// TCP: both FINs acknowledged.
pub const CT_STATE_TIME_WAIT: u8 = 6;
/// TCP: a RST in the window.
pub const CT_STATE_CLOSE: u8 = 7;

/// Name of a state for `netctl conntrack ls` and the metrics (`proto`
/// tells TCP's names from UDP's and ICMP's).
pub const fn state_name(proto: u8, state: u8) -> &'static str {
    match (proto, state) {
        (6, CT_STATE_SYN_SENT) => "syn_sent",
        (_, CT_STATE_NEW) => "new",
        (_, CT_STATE_ESTABLISHED) => "established",
        (_, CT_STATE_SYN_RECV) => "syn_recv",
        (_, CT_STATE_FIN_WAIT) => "fin_wait",
        (_, CT_STATE_CLOSE_WAIT) => "close_wait",
        (_, CT_STATE_LAST_ACK) => "last_ack",
        (_, CT_STATE_TIME_WAIT) => "time_wait",
        (_, CT_STATE_CLOSE) => "close",
        _ => "unknown",
    }
}

/// Every state name [`state_name`] returns (the metrics' label values).
pub const STATE_NAMES: [&str; 9] = [
    "new",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
];

/// Whether a flow in `state` has not completed its handshake (TCP) or seen
/// no reply (UDP, ICMP): early drop takes such flows first.
#[inline(always)]
pub const fn unconfirmed(state: u8) -> bool {
    state == CT_STATE_NEW || state == CT_STATE_SYN_RECV
}

/// Whether a TCP flow in `state` is over: a new SYN on its tuple starts a
/// new flow (the kernel's rule for TIME_WAIT and CLOSE).
#[inline(always)]
pub const fn closed(state: u8) -> bool {
    state == CT_STATE_TIME_WAIT || state == CT_STATE_CLOSE
}

const SECOND: u64 = 1_000_000_000;

/// Timeouts. TCP's are the kernel's defaults
/// (`net.netfilter.nf_conntrack_tcp_timeout_*`) except SYN_SENT (the
/// kernel's 120 s, halved: unconfirmed flows are the cheap ones an attacker
/// makes) and ESTABLISHED (6 h as Cilium, the kernel's is 5 days); UDP's
/// and ICMP's the kernel's `udp_timeout_stream` / `icmp_timeout` order.
pub const CT_TIMEOUT_TCP_SYN_SENT_NS: u64 = 60 * SECOND;
pub const CT_TIMEOUT_TCP_SYN_RECV_NS: u64 = 60 * SECOND;
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * SECOND;
pub const CT_TIMEOUT_TCP_FIN_WAIT_NS: u64 = 120 * SECOND;
pub const CT_TIMEOUT_TCP_CLOSE_WAIT_NS: u64 = 60 * SECOND;
pub const CT_TIMEOUT_TCP_LAST_ACK_NS: u64 = 30 * SECOND;
pub const CT_TIMEOUT_TCP_TIME_WAIT_NS: u64 = 120 * SECOND;
pub const CT_TIMEOUT_TCP_CLOSE_NS: u64 = 10 * SECOND;
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * SECOND;
pub const CT_TIMEOUT_ICMP_NS: u64 = 30 * SECOND;

/// Timeout of an entry in its state, for its protocol.
pub const fn timeout_ns(proto: u8, state: u8) -> u64 {
    match (proto, state) {
        (6, CT_STATE_SYN_SENT) => CT_TIMEOUT_TCP_SYN_SENT_NS,
        (6, CT_STATE_SYN_RECV) => CT_TIMEOUT_TCP_SYN_RECV_NS,
        (6, CT_STATE_FIN_WAIT) => CT_TIMEOUT_TCP_FIN_WAIT_NS,
        (6, CT_STATE_CLOSE_WAIT) => CT_TIMEOUT_TCP_CLOSE_WAIT_NS,
        (6, CT_STATE_LAST_ACK) => CT_TIMEOUT_TCP_LAST_ACK_NS,
        (6, CT_STATE_TIME_WAIT) => CT_TIMEOUT_TCP_TIME_WAIT_NS,
        (6, CT_STATE_CLOSE) => CT_TIMEOUT_TCP_CLOSE_NS,
        (6, _) => CT_TIMEOUT_TCP_ESTABLISHED_NS,
        (17, _) => CT_TIMEOUT_UDP_NS,
        _ => CT_TIMEOUT_ICMP_NS,
    }
}

/// Slack of the sequence checks: the kernel's MAXACKWINDOW floor (66000),
/// used where the window is unknown or smaller.
pub const CT_SEQ_SLACK: u32 = 66_000;

/// Whether a TCP FIN or RST with sequence number `seq` (and acknowledgment
/// `ack` when `has_ack`), sent by the direction of `sender`, lies in the
/// flow's window, as far as the two entries know it: it acknowledges
/// exactly what the other direction sent, or its sequence number lies
/// between what the other direction acknowledged and what this one sent,
/// give or take a window ([`CT_SEQ_SLACK`] or the receiver's advertised
/// window, whichever is larger). A blind attacker must guess both
/// directions' numbers. With nothing known (a flow picked up mid-stream),
/// everything is in the window.
#[inline(always)]
pub fn in_window(
    sender: &CtEntry,
    receiver: Option<&CtEntry>,
    seq: u32,
    ack: u32,
    has_ack: bool,
) -> bool {
    let mut slack = CT_SEQ_SLACK;
    let mut low_known = false;
    let mut low = 0u32;
    if let Some(r) = receiver {
        if has_ack && r.flags & CT_FLAG_SEQ != 0 && ack == r.seq_end {
            return true;
        }
        if u32::from(r.window) > slack {
            slack = u32::from(r.window);
        }
        if r.flags & CT_FLAG_ACK != 0 {
            low_known = true;
            low = r.ack;
        }
    }
    let sent = sender.flags & CT_FLAG_SEQ != 0;
    let (low, high) = match (sent, low_known) {
        (true, true) => (low.wrapping_sub(slack), sender.seq_end.wrapping_add(slack)),
        (true, false) => (
            sender.seq_end.wrapping_sub(slack),
            sender.seq_end.wrapping_add(slack),
        ),
        (false, true) => (low.wrapping_sub(slack), low.wrapping_add(slack)),
        (false, false) => return true,
    };
    // `seq` in [low, high] modulo 2^32 (sequence numbers wrap).
    seq.wrapping_sub(low) <= high.wrapping_sub(low)
}

/// The key that replies to a packet rewritten by `entry` arrive with: the
/// rewritten tuple turned around. Either entry of a pair finds the other
/// this way, so neither stores it.
#[inline(always)]
pub fn reverse_key(entry: &CtEntry, proto: u8) -> CtKey {
    CtKey {
        saddr: entry.daddr,
        daddr: entry.saddr,
        sport: entry.dport,
        dport: entry.sport,
        proto,
        _pad: [0; 3],
    }
}

/// Whether an entry is past the timeout of its state at `now_ns`
/// (bpf_ktime_get_ns / CLOCK_MONOTONIC).
#[inline(always)]
pub fn expired(entry: &CtEntry, proto: u8, now_ns: u64) -> bool {
    // saturating: another CPU may have stamped a slightly later time.
    now_ns.saturating_sub(entry.last_seen_ns) > timeout_ns(proto, entry.state)
}
