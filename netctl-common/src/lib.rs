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
    pub const PORTMAP: &str = "PORTMAP";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CT_RECLAIM: &str = "CT_RECLAIM";
    pub const STATS: &str = "STATS";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";

    /// Every map of the object (aya-log's own `AYA_LOGS` aside), all pinned
    /// by the controller.
    pub const ALL: [&str; 8] = [
        CONFIG,
        ENDPOINTS,
        NETWORKS,
        PORTMAP,
        CONNTRACK,
        CT_RECLAIM,
        SOCK_REVNAT,
        STATS,
    ];
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
    layout::Layout,
    portmap::PortKey,
    portmap::PortTarget,
    sock::SockRevKey,
    sock::SockRevValue,
    stats::Counter,
);
