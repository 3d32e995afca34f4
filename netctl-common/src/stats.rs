//! Per-verdict and per-drop-reason counters (`STATS`, a per-CPU array).

/// Index of a counter in the `STATS` map. Every drop has a named reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatIndex {
    /// Packets the programs handed to the kernel unchanged.
    Pass = 0,
    /// Packets that were not IPv4 (IPv6, ARP, ...): passed untouched.
    NotIpv4 = 1,
    /// Frames too short for the headers they announce: passed untouched.
    Truncated = 2,
}

/// Number of slots in `STATS`; the last index plus one.
pub const STAT_COUNT: u32 = 3;

/// Names in index order, for `netctl stats`.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = ["pass", "not_ipv4", "truncated"];

/// One counter slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
