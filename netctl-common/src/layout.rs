//! Versions of the datapath and of each map's layout: the one place they
//! are written.
//!
//! A loaded datapath outlives the netctl that loaded it (its programs stay
//! attached by pinned links, its maps stay pinned), so a newer netctl finds
//! maps made by an older one. The controller records what it loaded in a
//! one-slot array pinned beside the maps (`LAYOUT`, a [`Layout`]): the
//! datapath version, a fingerprint of the object, and each map's layout
//! version. On the next command a netctl whose versions differ upgrades in
//! place: it keeps every map whose layout version is unchanged, migrates
//! those whose version is older and for which it has a migration, and
//! refuses — with nothing changed — what it cannot migrate.
//!
//! **Changing a map's key, value, type or meaning** is a bump of its
//! version in [`MAP_LAYOUTS`] plus, in the controller
//! (`netctl/src/datapath/ebpf/upgrade.rs`, `MIGRATIONS`), a migration from
//! the previous version (a function turning an old entry into a new one),
//! or nothing, which makes netctl refuse to take over a datapath with the
//! old layout (`netctl down` then starts afresh).

use crate::maps;

/// The datapath as a whole: bumped with any change of the programs'
/// contract with the controller. 1 was every datapath loaded before layouts
/// were recorded (no `LAYOUT` pinned): a netctl that finds one treats each
/// of its maps as layout version 1.
///
/// 3: the host's interfaces (`HOST_IFACES`, and host addresses as
/// `PREFIX_HOST` entries of `NETWORK_PREFIXES`): SNAT to the address of the
/// interface a packet leaves by (noted in `SNAT_SEARCH`'s `source`, which
/// took what was padding), published ports on every host address, the
/// uplink programs on every host interface.
pub const DATAPATH_VERSION: u32 = 3;

/// The layout version of each map of [`maps::ALL`].
pub const MAP_LAYOUTS: [(&str, u32); 16] = [
    // A zero `_pad` of a version-1 CONFIG reads as "no skipped SNAT
    // range" in version 1's place: same layout.
    (maps::CONFIG, 1),
    (maps::ENDPOINTS, 1),
    (maps::NETWORKS, 1),
    // Datapath 3 added the entry kind PREFIX_HOST; its layout is that of
    // version 1, and only a controller of datapath 3, after taking the
    // datapath over, writes such entries (an older one refuses a newer
    // datapath), so no program that misreads them ever sees one.
    (maps::NETWORK_PREFIXES, 1),
    (maps::PORTMAP, 1),
    // 2: CtEntry grew from 48 to 56 bytes (sequence tracking) and the
    // TCP states follow the kernel's; no migration from 1 yet.
    (maps::CONNTRACK, 2),
    // Slots added (an array: resized, the old slot kept).
    (maps::CT_RECLAIM, 1),
    (maps::CT_UNCONFIRMED, 1),
    (maps::SNAT_SEARCH, 1),
    (maps::SOCK_REVNAT, 1),
    (maps::STATS, 1),
    (maps::FRAGMENTS, 1),
    (maps::TAIL_CALLS, 1),
    // New with flow events: created by an upgrade from an older datapath.
    (maps::FLOW_EVENTS, 1),
    (maps::FLOW_LISTENER, 1),
    // New in datapath 3 (created empty by an upgrade, then filled by the
    // command's host sync).
    (maps::HOST_IFACES, 1),
];

/// The layout version of map `name`, if it is one of ours.
pub fn layout_version(name: &str) -> Option<u32> {
    MAP_LAYOUTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// The pin name of the record (beside the maps' directory, not one of the
/// object's maps: the programs never read it).
pub const LAYOUT_PIN: &str = "LAYOUT";

/// Room for this many maps in a [`Layout`].
pub const LAYOUT_MAX_MAPS: usize = 16;
/// Longest map name a [`MapLayout`] holds, NUL included: our pin names,
/// which may be longer than the kernel's 15-character object names
/// (`NETWORK_PREFIXES`).
pub const MAP_NAME_LEN: usize = 32;

/// One map's entry in the record: its name (NUL-padded) and layout version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapLayout {
    pub name: [u8; MAP_NAME_LEN],
    pub version: u32,
}

/// The record of a loaded datapath (the value of `LAYOUT`'s slot 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// [`DATAPATH_VERSION`] of the netctl that loaded or last upgraded it.
    pub datapath: u32,
    /// How many of `maps` are used.
    pub count: u32,
    /// A fingerprint of the eBPF object whose programs run (FNV-1a of its
    /// bytes): two builds of one version with different programs differ.
    pub object: u64,
    pub maps: [MapLayout; LAYOUT_MAX_MAPS],
}

const _: () = assert!(core::mem::size_of::<MapLayout>() == 36);
const _: () = assert!(core::mem::size_of::<Layout>() == 16 + 36 * LAYOUT_MAX_MAPS);
// Every name of MAP_LAYOUTS fits (with its NUL).
const _: () = {
    let mut i = 0;
    while i < MAP_LAYOUTS.len() {
        assert!(MAP_LAYOUTS[i].0.len() < MAP_NAME_LEN);
        i += 1;
    }
};
const _: () = assert!(MAP_LAYOUTS.len() <= LAYOUT_MAX_MAPS);

impl MapLayout {
    /// `None` when the name does not fit.
    pub fn new(name: &str, version: u32) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.len() >= MAP_NAME_LEN {
            return None;
        }
        let mut entry = MapLayout {
            name: [0; MAP_NAME_LEN],
            version,
        };
        entry.name[..bytes.len()].copy_from_slice(bytes);
        Some(entry)
    }

    /// The name, up to its first NUL (`None` if it is not UTF-8).
    pub fn name(&self) -> Option<&str> {
        let end = self
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(MAP_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }
}

impl Layout {
    /// The record of this build: [`DATAPATH_VERSION`], `object`, and
    /// [`MAP_LAYOUTS`].
    pub fn current(object: u64) -> Self {
        let mut layout = Layout {
            datapath: DATAPATH_VERSION,
            count: MAP_LAYOUTS.len() as u32,
            object,
            maps: [MapLayout::default(); LAYOUT_MAX_MAPS],
        };
        for (slot, (name, version)) in layout.maps.iter_mut().zip(MAP_LAYOUTS) {
            *slot = MapLayout::new(name, version).unwrap_or_default();
        }
        layout
    }

    /// The version recorded for map `name`.
    pub fn version_of(&self, name: &str) -> Option<u32> {
        self.entries()
            .iter()
            .find(|m| m.name() == Some(name))
            .map(|m| m.version)
    }

    /// The used entries.
    pub fn entries(&self) -> &[MapLayout] {
        &self.maps[..(self.count as usize).min(LAYOUT_MAX_MAPS)]
    }

    /// Sets (or adds) map `name`'s version; false when there is no room.
    pub fn set_version(&mut self, name: &str, version: u32) -> bool {
        let count = (self.count as usize).min(LAYOUT_MAX_MAPS);
        if let Some(entry) = self.maps[..count]
            .iter_mut()
            .find(|m| m.name() == Some(name))
        {
            entry.version = version;
            return true;
        }
        match (count < LAYOUT_MAX_MAPS, MapLayout::new(name, version)) {
            (true, Some(entry)) => {
                self.maps[count] = entry;
                self.count = count as u32 + 1;
                true
            }
            _ => false,
        }
    }
}

/// FNV-1a, 64 bits: the object's fingerprint.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
