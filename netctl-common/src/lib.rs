//! Types shared by netctl's eBPF programs and its controller.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both
//! sides agree on the layout; sizes are asserted at compile time. With the
//! `user` feature the types implement `aya::Pod` for the controller.
//! Addresses and ports are stored in network byte order, as they appear in
//! packets, so the programs compare them without conversion.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod fragment;
pub mod host;
pub mod layout;
pub mod portmap;
pub mod sock;
pub mod stats;

/// Names of the maps: the controller loads, pins, opens and audits them by
/// these names.
///
/// The programs (netctl-ebpf/src/maps.rs) declare each map as a static of
/// the same name: aya-ebpf's `#[map(name = ...)]` takes only a string
/// literal (or, without it, the static's identifier), so a const cannot
/// name it. A unit test of netctl (`datapath::ebpf::pins`) parses the built
/// object and fails when its maps and [`maps::ALL`] differ.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const NETWORKS: &str = "NETWORKS";
    pub const NETWORK_PREFIXES: &str = "NETWORK_PREFIXES";
    pub const PORTMAP: &str = "PORTMAP";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CT_RECLAIM: &str = "CT_RECLAIM";
    pub const CT_UNCONFIRMED: &str = "CT_UNCONFIRMED";
    /// Per-CPU scratch of the SNAT port search (no type of ours to read).
    pub const SNAT_SEARCH: &str = "SNAT_SEARCH";
    pub const STATS: &str = "STATS";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// The host's interfaces that are not netctl's: ifindex → primary IPv4
    /// address (see [`crate::host`]).
    pub const HOST_IFACES: &str = "HOST_IFACES";
    /// Flow events for `netctl trace` (a ring buffer; see `event`).
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// The lease of whoever listens to `FLOW_EVENTS` (see `event`).
    pub const FLOW_LISTENER: &str = "FLOW_LISTENER";

    /// Every map of the object, all pinned by the controller.
    pub const ALL: [&str; 16] = [
        CONFIG,
        ENDPOINTS,
        NETWORKS,
        NETWORK_PREFIXES,
        PORTMAP,
        CONNTRACK,
        CT_RECLAIM,
        CT_UNCONFIRMED,
        SNAT_SEARCH,
        SOCK_REVNAT,
        STATS,
        FRAGMENTS,
        TAIL_CALLS,
        FLOW_EVENTS,
        FLOW_LISTENER,
        HOST_IFACES,
    ];

    /// The program in `TAIL_CALLS` slot [`TAIL_ICMP_ERROR`]: a container's
    /// ICMP errors, tail-called from `endpoint_ingress` (whose stack has no
    /// room for them).
    pub const ICMP_ERROR_PROGRAM: &str = "endpoint_icmp_error";
    /// `TAIL_CALLS` slots, filled by the controller when it loads the
    /// object: [`ICMP_ERROR_PROGRAM`], and `endpoint_ingress` itself (where
    /// an error quoting no flow goes back to).
    pub const TAIL_ICMP_ERROR: u32 = 0;
    pub const TAIL_ENDPOINT_INGRESS: u32 = 1;
    pub const TAIL_SLOTS: u32 = 2;
}

/// Declares `aya::Pod` for types that are plain old data (repr(C), every
/// byte initialised, padding explicit).
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        // SAFETY: each type is repr(C) with explicit padding fields and no
        // pointers, so every bit pattern is valid and no byte is uninitialised.
        $( unsafe impl aya::Pod for $t {} )*
    };
}

#[cfg(feature = "user")]
pod!(
    config::Config,
    conntrack::CtKey,
    conntrack::CtEntry,
    endpoint::EndpointInfo,
    endpoint::NetworkInfo,
    fragment::FragKey,
    fragment::FragEntry,
    endpoint::NetworkPrefix,
    event::FlowEvent,
    layout::Layout,
    portmap::PortKey,
    portmap::PortTarget,
    sock::SockRevKey,
    sock::SockRevValue,
    stats::Counter,
);
