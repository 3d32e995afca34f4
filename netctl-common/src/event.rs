//! Flow events: what the programs tell `netctl trace` through the
//! `FLOW_EVENTS` ring buffer (a new translated flow, a drop, a flow's end).
//!
//! Events are off unless someone listens: slot 0 of `FLOW_LISTENER` holds
//! a lease, the `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) time until which a
//! listener wants events, 0 when nobody does. `netctl trace` renews it
//! every [`LEASE_RENEW_NS`] for [`LEASE_NS`] and writes 0 when it ends, so
//! a trace killed with SIGKILL stops the events within [`LEASE_NS`] (the
//! first program to find its lease run out clears it). The programs read
//! the slot where an event would be emitted (never on the path of a known
//! flow's packets): nobody listening costs that one array lookup.

/// Where an event came from: the packet's tuple before and after the
/// translation (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// One event (a `FLOW_EVENTS` record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when it happened.
    pub time_ns: u64,
    /// `EVENT_*`.
    pub kind: u8,
    /// The IP protocol (0 when the frame is not IPv4).
    pub proto: u8,
    /// New and end: the flow's `CT_KIND_*`; 0 for drops.
    pub ct_kind: u8,
    /// `PROGRAM_*`: the program that emitted it.
    pub program: u8,
    /// Drop: the `StatIndex` of its reason; end: `END_*`; new: 0.
    pub reason: u16,
    /// The frame's EtherType, host order (0x0800 IPv4, 0x0806 ARP, 0x86dd
    /// IPv6...). An ARP drop's addresses are the ARP sender's and
    /// target's, an IPv6 drop's are 0.
    pub ethertype: u16,
    /// The interface the packet was on (`skb->ifindex`): a container's
    /// host-side veth for endpoint_ingress, the uplink for the others; 0
    /// for an end found outside a packet's own flow (early drop).
    pub ifindex: u32,
    /// The flow's original direction as its first packet had it (a drop:
    /// the packet's tuple; ports 0 when it has none).
    pub original: Tuple,
    /// What the original direction becomes (new and end; 0 for drops).
    pub translated: Tuple,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 12);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);

pub const EVENT_NEW: u8 = 1;
pub const EVENT_DROP: u8 = 2;
pub const EVENT_END: u8 = 3;

pub const PROGRAM_ENDPOINT_INGRESS: u8 = 0;
pub const PROGRAM_ENDPOINT_ICMP_ERROR: u8 = 1;
pub const PROGRAM_UPLINK_INGRESS: u8 = 2;
pub const PROGRAM_UPLINK_EGRESS: u8 = 3;
/// Names of `PROGRAM_*`, by value.
pub const PROGRAM_NAMES: [&str; 4] = [
    "endpoint_ingress",
    "endpoint_icmp_error",
    "uplink_ingress",
    "uplink_egress",
];

/// A TCP RST in the window closed the flow (state CLOSE).
pub const END_RST: u16 = 1;
/// Both FINs acknowledged (state TIME_WAIT).
pub const END_FIN: u16 = 2;
/// Both directions past their timeout, found by a packet.
pub const END_TIMEOUT: u16 = 3;
/// Deleted unconfirmed to make room in a full table (early drop).
pub const END_EARLY_DROP: u16 = 4;
/// Names of `END_*`, by value (0 unused).
pub const END_NAMES: [&str; 5] = ["", "rst", "fin", "timeout", "early_drop"];

/// How long a lease lasts, and how often `netctl trace` renews it.
pub const LEASE_NS: u64 = 3_000_000_000;
pub const LEASE_RENEW_NS: u64 = 1_000_000_000;

/// Size of `FLOW_EVENTS` in bytes (a power of two, a multiple of the page
/// size): 4,681 events of 48 bytes plus the kernel's 8-byte header each.
pub const FLOW_EVENTS_BYTES: u32 = 256 * 1024;
