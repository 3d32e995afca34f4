//! The host's own interfaces and addresses (`HOST_IFACES`, and the
//! `PREFIX_HOST` entries of `NETWORK_PREFIXES`, kept by the controller; see
//! `netctl_common::host`): which interface a container's packet may leave
//! by translated, the address it then gets, and what a destination is.

use netctl_common::endpoint::{PREFIX_GATEWAY, PREFIX_HOST};

use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{HOST_IFACES, NETWORK_PREFIXES};

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

/// What an address outside the own subnet is, from `NETWORK_PREFIXES`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    None,
    /// A network's gateway (a host address).
    Gateway,
    /// In a network's subnet (not its gateway).
    Subnet,
    /// An address of one of the host's interfaces.
    Host,
}

impl Prefix {
    /// An address the host answers on: a published port without a host
    /// address answers there.
    #[inline(always)]
    pub fn is_host(self) -> bool {
        matches!(self, Prefix::Gateway | Prefix::Host)
    }
}

/// One longest-prefix lookup: the gateways and the host's addresses are
/// /32 entries (a gateway inside its subnet's entry), so the longest match
/// tells a gateway from the rest of its subnet. (It replaced a
/// bpf_for_each_map_elem walk of every bucket of NETWORKS, whose callback
/// also shared the 512-byte stack.)
#[inline(always)]
pub fn network_prefix(addr: u32) -> Prefix {
    let key = Key::new(32, addr);
    match NETWORK_PREFIXES.get(&key) {
        Some(prefix) if prefix.kind == PREFIX_GATEWAY => Prefix::Gateway,
        Some(prefix) if prefix.kind == PREFIX_HOST => Prefix::Host,
        Some(_) => Prefix::Subnet,
        None => Prefix::None,
    }
}
