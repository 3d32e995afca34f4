//! `FRAGMENTS`: the translation of fragmented datagrams. Only the first
//! fragment of an IPv4 datagram carries the L4 header (ports, checksum), so
//! only it can be matched against `CONNTRACK`; when it is translated, its
//! rewrite is recorded here under the datagram's identity, and the later
//! fragments (no L4 header, offset > 0) get the same addresses and the same
//! delivery. An LRU hash: an entry is only needed for the few milliseconds
//! a datagram takes to cross, so the oldest go first when it is full.

/// Entries of `FRAGMENTS`: datagrams in flight at once (each holds one for
/// at most [`FRAG_TIMEOUT_NS`], or until the LRU evicts it).
pub const FRAGMENTS_MAX: u32 = 8_192;

/// Lifetime of an entry, the default of the kernel's `ipfrag_time` (30 s):
/// a fragment that comes later than this would not be reassembled by the
/// receiver either, and an IP id reused after it starts afresh.
pub const FRAG_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

/// A datagram's identity as its fragments arrive (RFC 791: source,
/// destination, protocol and identification); addresses and id in network
/// order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// What the first fragment became: its rewritten addresses, where it went,
/// and the counter it was counted under.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// Rewritten source and destination (network order).
    pub saddr: u32,
    pub daddr: u32,
    /// Delivery, as in `CtEntry::ifindex`: a container's host-side veth
    /// (redirect_peer), or 0 for the uplink.
    pub ifindex: u32,
    /// The `StatIndex` of the first fragment (snat, dnat, hairpin,
    /// reverse_nat): later fragments are counted under it too.
    pub stat: u32,
    /// bpf_ktime_get_ns() when the first fragment was translated.
    pub created_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FragEntry>() == 24);
