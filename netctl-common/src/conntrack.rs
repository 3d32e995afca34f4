//! `CONNTRACK`: a hash with one entry per direction of a translated flow.

/// Entries of the conntrack table (two per flow): the programs' map
/// declaration, which the controller keeps unless `NETCTL_CONNTRACK_MAX`
/// sizes it otherwise at load.
pub const CONNTRACK_MAX_DEFAULT: u32 = 262_144;

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
/// and ports, then deliver.
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
    /// `CT_STATE_*` (TCP), or `CT_STATE_ESTABLISHED` once a reply was seen.
    pub state: u8,
    /// `CT_DIR_*`.
    pub direction: u8,
    pub _pad: u8,
    /// Where to deliver after rewriting: a container's host-side veth
    /// (redirect_peer) or 0 for the uplink (fib lookup + redirect_neigh).
    pub ifindex: u32,
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 48);

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

pub const CT_STATE_NEW: u8 = 0;
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// A FIN or RST was seen.
pub const CT_STATE_CLOSING: u8 = 2;

/// Timeouts, in the spirit of the kernel's and Cilium's.
pub const CT_TIMEOUT_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_ICMP_NS: u64 = 30 * 1_000_000_000;

/// Timeout of an entry in its state, for its protocol.
pub const fn timeout_ns(proto: u8, state: u8) -> u64 {
    match (proto, state) {
        (6, CT_STATE_NEW) => CT_TIMEOUT_TCP_SYN_NS,
        (6, CT_STATE_CLOSING) => CT_TIMEOUT_TCP_CLOSING_NS,
        (6, _) => CT_TIMEOUT_TCP_ESTABLISHED_NS,
        (17, _) => CT_TIMEOUT_UDP_NS,
        _ => CT_TIMEOUT_ICMP_NS,
    }
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
