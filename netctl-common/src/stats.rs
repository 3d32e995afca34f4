//! Per-verdict and per-drop-reason counters (`STATS`, a per-CPU array).

/// Index of a counter in the `STATS` map. Every drop has a named reason
/// (`Drop*`); the other slots count verdicts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatIndex {
    /// Handed to the kernel unchanged (nothing of ours to do).
    Pass = 0,
    /// Not IPv4 (IPv6, ARP, ...): passed untouched.
    NotIpv4 = 1,
    /// Shorter than the headers it announces: passed untouched.
    Truncated = 2,
    /// Protocol netctl does not translate (not TCP, UDP or ICMP echo): passed.
    UnsupportedProto = 3,
    /// Source translated to the uplink address (new or known egress flow).
    Snat = 4,
    /// Destination translated to a container (published port).
    Dnat = 5,
    /// Container → host address:published port → container.
    Hairpin = 6,
    /// Reply of a translated flow, translated back.
    ReverseNat = 7,
    /// Delivered into a container with bpf_redirect_peer (fast path).
    RedirectPeer = 8,
    /// Sent to the uplink with bpf_redirect / bpf_redirect_neigh (fast path).
    RedirectUplink = 9,
    /// Translated, but the FIB had no answer: handed to the kernel's routing.
    FibPass = 10,
    /// Host socket connect/sendmsg rewritten to a container (cgroup programs).
    SockTranslated = 11,
    /// Drop: source address or MAC is not the endpoint's own (anti-spoofing).
    DropSpoofed = 12,
    /// Drop: destination on another network (isolation between networks).
    DropIsolated = 13,
    /// Drop: an internal network's traffic trying to leave it.
    DropInternal = 14,
    /// Drop: an IP fragment of a flow that needs translation.
    DropFragment = 15,
    /// Drop: no free SNAT port after the bounded retries.
    DropSnatExhausted = 16,
    /// Drop: the conntrack table refused a new entry.
    DropConntrackFull = 17,
    /// Drop: a rewrite helper failed (checksum or store).
    DropRewriteFailed = 18,
    /// Drop: unsolicited packet to a container address from outside.
    DropUnsolicited = 19,
}

/// Number of slots in `STATS`; the last index plus one.
pub const STAT_COUNT: u32 = 20;

/// Names in index order, for `netctl stats`.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "pass",
    "not_ipv4",
    "truncated",
    "unsupported_proto",
    "snat",
    "dnat",
    "hairpin",
    "reverse_nat",
    "redirect_peer",
    "redirect_uplink",
    "fib_pass",
    "sock_translated",
    "drop_spoofed",
    "drop_isolated",
    "drop_internal",
    "drop_fragment",
    "drop_snat_exhausted",
    "drop_conntrack_full",
    "drop_rewrite_failed",
    "drop_unsolicited",
];

/// One counter slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(StatIndex::DropUnsolicited as u32 + 1 == STAT_COUNT);
