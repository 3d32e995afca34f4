//! The host's own interfaces and addresses (`HOST_IFACES`, `HOST_ADDRS`,
//! kept by the controller; see `netctl_common::host`): which interface a
//! container's packet may leave by translated, the address it then gets,
//! and which destinations are the host's.

use netctl_common::endpoint::PREFIX_GATEWAY;

use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{HOST_ADDRS, HOST_IFACES, NETWORK_PREFIXES};

/// The primary IPv4 address (network order) of host interface `ifindex`:
/// the source a new flow leaving by it gets. `None` for an interface that
/// is netctl's, unknown, or without an IPv4 address (the controller writes
/// no entry for it). In place, as a map value: a scalar copy carried down
/// the SNAT paths made the verifier walk endpoint_ingress 2.5 times over
/// (its states no longer pruned), a map pointer does not.
#[inline(always)]
pub fn iface_address(ifindex: &u32) -> Option<&'static u32> {
    // SAFETY: a value of a map the program holds; the controller rewrites
    // it whole (a u32), so any read sees an address.
    HOST_IFACES.get_ptr(ifindex).map(|ip| unsafe { &*ip })
}

/// Whether `addr` is an address of one of the host's interfaces (not a
/// network's gateway: see [`network_prefix`]).
#[inline(always)]
pub fn is_host_address(addr: &u32) -> bool {
    HOST_ADDRS.get_ptr(addr).is_some()
}

/// What an address outside the own subnet is, from `NETWORK_PREFIXES`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    None,
    /// A network's gateway (a host address).
    Gateway,
    /// In a network's subnet (not its gateway).
    Subnet,
}

/// One longest-prefix lookup: the gateways are /32 entries inside their
/// subnets' entries, so the longest match tells a gateway from the rest of
/// its subnet. (It replaced a bpf_for_each_map_elem walk of every bucket
/// of NETWORKS, whose callback also shared the 512-byte stack.)
#[inline(always)]
pub fn network_prefix(addr: u32) -> Prefix {
    let key = Key::new(32, addr);
    match NETWORK_PREFIXES.get(&key) {
        Some(prefix) if prefix.kind == PREFIX_GATEWAY => Prefix::Gateway,
        Some(_) => Prefix::Subnet,
        None => Prefix::None,
    }
}
