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
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};

use crate::nat::PortSearch;
use netctl_common::{
    config::Config,
    conntrack::{CtEntry, CtKey, CONNTRACK_MAX_DEFAULT, CT_RECLAIM_SLOTS, CT_UNCONFIRMED_SLOTS},
    endpoint::{EndpointInfo, NetworkInfo, NetworkPrefix},
    event::FLOW_EVENTS_BYTES,
    fragment::{FragEntry, FragKey, FRAGMENTS_MAX},
    host::HOST_IFACES_MAX,
    maps::TAIL_SLOTS,
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

/// Each network's subnet and its gateway (a /32) → network id and kind:
/// what a destination is, in one longest-prefix lookup (two entries per
/// network of NETWORKS, kept in step by the controller); and each address
/// of the host's interfaces (a /32 of kind `PREFIX_HOST`).
#[map]
pub static NETWORK_PREFIXES: LpmTrie<u32, NetworkPrefix> = LpmTrie::with_max_entries(8_192, 0);

/// Published ports.
#[map]
pub static PORTMAP: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(65_536, 0);

/// Translated flows, one entry per direction. A plain hash: when full, new
/// flows are refused and counted, established ones keep their entries (see
/// the `conntrack` module). The controller may size it at load
/// (`NETCTL_CONNTRACK_MAX`); this is the default.
#[map]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(CONNTRACK_MAX_DEFAULT, 0);

/// `CT_RECLAIM_*` slots: bpf_ktime_get_ns() of the last reclaim sweep of
/// CONNTRACK, and the cursors of the `CT_UNCONFIRMED` ring.
#[map]
pub static CT_RECLAIM: Array<u64> = Array::with_max_entries(CT_RECLAIM_SLOTS, 0);

/// A ring of the original keys of new flows, oldest first from the read
/// cursor: early drop looks there for unconfirmed flows to delete when the
/// table is full.
#[map]
pub static CT_UNCONFIRMED: Array<CtKey> = Array::with_max_entries(CT_UNCONFIRMED_SLOTS, 0);

/// Host sockets whose peer the cgroup programs rewrote (for recvmsg and
/// getpeername).
#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(65_536, 0);

/// Programs reached by tail call (`netctl_common::maps::TAIL_*` slots),
/// filled by the controller at load.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);
/// Slot 0: the SNAT port search under way on this CPU (its bpf_loop
/// callback's state, off the stack).
#[map]
pub static SNAT_SEARCH: PerCpuArray<PortSearch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Datagram identity → the translation of its first fragment, for the
/// later fragments (see the `fragment` module).
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX, 0);

/// Flow events for `netctl trace` (see the `events` module).
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

/// Slot 0: the listener's lease, the bpf_ktime_get_ns() time until which
/// `netctl trace` wants events (0: nobody listens).
#[map]
pub static FLOW_LISTENER: Array<u64> = Array::with_max_entries(1, 0);

/// The host's interfaces that are not netctl's: ifindex → primary IPv4
/// address (network order; see `netctl_common::host`). The address a new
/// flow leaving by that interface is translated to.
#[map]
pub static HOST_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(HOST_IFACES_MAX, 0);
