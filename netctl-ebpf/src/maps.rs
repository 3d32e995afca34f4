//! The maps shared by every program.
//!
//! Declared unpinned on purpose: aya would pin `pinned` maps under the root
//! of bpffs by default. The controller instead gives each map its own pin
//! path under the host's directory (`EbpfLoader::map_pin_path`), so that a
//! new netctl process or a reloaded program finds the same state, while
//! tests that load the object get private maps.
//!
//! Each static's identifier is the map's name in the object, and must be one
//! of `netctl_common::maps` (`#[map(name = ...)]` takes only a literal; a
//! unit test of netctl compares the object's maps with `maps::ALL`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use netctl_common::{
    config::Config,
    conntrack::{CtEntry, CtKey, CONNTRACK_MAX_DEFAULT},
    endpoint::{EndpointInfo, NetworkInfo},
    portmap::{PortKey, PortTarget},
    sock::{SockRevKey, SockRevValue},
    stats::{Counter, STAT_COUNT},
};

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Container address → its veth, MAC and network.
#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(65_536, 0);

/// Network id → subnet, gateway, bridge, flags.
#[map]
pub static NETWORKS: HashMap<u32, NetworkInfo> = HashMap::with_max_entries(4_096, 0);

/// Published ports.
#[map]
pub static PORTMAP: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(65_536, 0);

/// Translated flows, one entry per direction. A plain hash: when full, new
/// flows are refused and counted, established ones keep their entries (see
/// the `conntrack` module). The controller may size it at load
/// (`NETCTL_CONNTRACK_MAX`); this is the default.
#[map]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(CONNTRACK_MAX_DEFAULT, 0);

/// Slot 0: bpf_ktime_get_ns() of the last reclaim sweep of CONNTRACK.
#[map]
pub static CT_RECLAIM: Array<u64> = Array::with_max_entries(1, 0);

/// Host sockets whose peer the cgroup programs rewrote (for recvmsg and
/// getpeername).
#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(65_536, 0);

#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
