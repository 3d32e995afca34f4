//! Upgrade in place: a netctl that finds a datapath loaded by another
//! build takes it over without stopping a flow.
//!
//! What is loaded is read from the layout record (`LAYOUT`, pinned beside
//! `maps/`; see `netctl_common::layout`). A datapath loaded before layouts
//! were recorded has none: it is datapath version 1, each pinned map at
//! layout version 1. Then, before anything changes, a pure [`plan`]
//! decides per map:
//!
//! - **keep**: same layout version and the same key and value sizes and
//!   type: the new programs are loaded against the pinned map itself (its
//!   entries, the flows among them, never move);
//! - **migrate**: an older version with a chain of [`MIGRATIONS`] to ours:
//!   a new map is filled from the old one entry by entry;
//! - **resize**: an array whose number of slots changed (counters appended
//!   to `STATS`): a new array, the old slots copied by index;
//! - **create**: a map the older datapath did not have;
//!
//! and refuses, naming the map, what it cannot take over: a newer
//! datapath or layout than this build's, an older layout without a
//! migration, or sizes that differ under one version (a layout changed
//! without its version bumped). A refusal changes nothing.
//!
//! Then [`Ebpf::upgrade`] loads the object against those maps and points
//! every pinned link — TCX links on the uplink and the endpoints' veths,
//! cgroup links — at the new program with `BPF_LINK_UPDATE`: atomic, each
//! packet sees the old program or the new one, never none, and no link is
//! detached. Hooks the older datapath lacked get new links; links of
//! programs this build no longer has are unpinned. Migrated maps are copied
//! a second time once no old program runs any more (what the old programs
//! added meanwhile) and take the old pin's place. The record is written
//! last: a netctl killed half-way leaves the old record, and the next
//! command upgrades again (every step can be taken twice).

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use netctl_common::layout::{self, Layout, DATAPATH_VERSION, LAYOUT_PIN, MAP_LAYOUTS};

use super::{
    sys::{self, MapShape, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY},
    Ebpf,
};
use crate::error::{Error, Result};

/// One map entry as bytes: key, value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One map's layout step: `from` to `from + 1`.
pub struct Migration {
    pub map: &'static str,
    pub from: u32,
    /// Key and value sizes of layout `from`.
    pub old_sizes: (u32, u32),
    /// One entry of layout `from` as one of `from + 1` (`None`: dropped).
    pub convert: fn(key: &[u8], value: &[u8]) -> Option<Entry>,
}

/// Every migration this build knows. A map's layout change (a version bump
/// in `netctl_common::layout::MAP_LAYOUTS`) adds its step here, or none, in
/// which case a datapath with the old layout is refused.
pub const MIGRATIONS: &[Migration] = &[];

/// What happens to one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapAction {
    Keep,
    Create,
    /// From layout `from` through each step of [`MIGRATIONS`].
    Migrate {
        from: u32,
    },
    /// An array from `from` slots to the object's number.
    Resize {
        from: u32,
    },
}

/// What an upgrade does, decided before it does anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The loaded datapath's record (`None`: loaded before records).
    pub loaded: Option<Layout>,
    pub replace_programs: bool,
    pub maps: BTreeMap<String, MapAction>,
    /// Pinned maps this build has no use for.
    pub dropped: Vec<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        !self.replace_programs
            && self.dropped.is_empty()
            && self.maps.values().all(|a| *a == MapAction::Keep)
    }
}

fn refuse(reason: String) -> Error {
    Error::invalid("datapath ebpf", reason)
}

/// The map's migration chain from `from` to `to`, if complete.
fn chain(map: &str, from: u32, to: u32) -> Option<Vec<&'static Migration>> {
    (from..to)
        .map(|v| MIGRATIONS.iter().find(|m| m.map == map && m.from == v))
        .collect()
}

fn is_array(map_type: u32) -> bool {
    matches!(map_type, BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY)
}

/// Decides the upgrade: `loaded` is the record found (`None`: an older
/// datapath without one), `pinned` the shape of each map pinned now,
/// `wanted` the shape of each map of this build's object, `object` this
/// build's fingerprint. Pure.
pub fn plan(
    loaded: Option<&Layout>,
    pinned: &BTreeMap<String, MapShape>,
    wanted: &BTreeMap<String, MapShape>,
    object: u64,
) -> Result<Plan> {
    let loaded_version = loaded.map_or(1, |l| l.datapath);
    if loaded_version > DATAPATH_VERSION {
        return Err(refuse(format!(
            "was loaded by a newer netctl (datapath version {loaded_version}, this one's is \
             {DATAPATH_VERSION}): use that netctl, or `netctl down` to start afresh"
        )));
    }
    let mut maps = BTreeMap::new();
    for (name, version) in MAP_LAYOUTS {
        let want = wanted
            .get(name)
            .ok_or_else(|| Error::system(format!("map {name}"), "missing from the object"))?;
        let Some(have) = pinned.get(name) else {
            maps.insert(name.to_owned(), MapAction::Create);
            continue;
        };
        // A datapath without a record predates every layout bump.
        let have_version = match loaded {
            Some(l) => l.version_of(name).unwrap_or(1),
            None => 1,
        };
        let action = if have_version > version {
            return Err(refuse(format!(
                "map {name} has layout version {have_version}, newer than this netctl's \
                 {version}: use the netctl that loaded it, or `netctl down` to start afresh"
            )));
        } else if have_version < version {
            let Some(steps) = chain(name, have_version, version) else {
                return Err(refuse(format!(
                    "map {name} has layout version {have_version}; this netctl's is {version} \
                     and it has no migration from {have_version}: nothing changed; \
                     `netctl down` and re-create the networks to switch (it cuts every flow)"
                )));
            };
            let (key, value) = steps[0].old_sizes;
            if (have.key_size, have.value_size) != (key, value) {
                return Err(refuse(format!(
                    "map {name}: pinned entries of {}+{} bytes, not layout version \
                     {have_version}'s {key}+{value}: nothing changed",
                    have.key_size, have.value_size
                )));
            }
            MapAction::Migrate { from: have_version }
        } else if (have.map_type, have.key_size, have.value_size)
            != (want.map_type, want.key_size, want.value_size)
        {
            return Err(refuse(format!(
                "map {name}: pinned as type {} with {}+{}-byte entries, this build's is type {} \
                 with {}+{} under the same layout version {version} (a layout change without \
                 a version bump): nothing changed",
                have.map_type,
                have.key_size,
                have.value_size,
                want.map_type,
                want.key_size,
                want.value_size
            )));
        } else if is_array(have.map_type) && have.max_entries != want.max_entries {
            MapAction::Resize {
                from: have.max_entries,
            }
        } else {
            MapAction::Keep
        };
        maps.insert(name.to_owned(), action);
    }
    let dropped = pinned
        .keys()
        .filter(|name| layout::layout_version(name).is_none())
        .cloned()
        .collect();
    let replace_programs = loaded
        .is_none_or(|l| l.datapath != DATAPATH_VERSION || l.object != object)
        || maps.values().any(|a| *a != MapAction::Keep);
    Ok(Plan {
        loaded: loaded.copied(),
        replace_programs,
        maps,
        dropped,
    })
}

/// The record pinned under `pin_dir`: `Ok(None)` when there is none (a
/// datapath loaded before records).
pub fn read_layout(pin_dir: &Path) -> Result<Option<Layout>> {
    let path = pin_dir.join(LAYOUT_PIN);
    if !path.exists() {
        return Ok(None);
    }
    let fd = sys::obj_get(&path)?;
    let shape = sys::map_shape(fd.as_fd(), "layout record")?;
    if shape.value_size as usize != std::mem::size_of::<Layout>() {
        return Err(Error::system(
            format!("layout record {}", path.display()),
            format!(
                "holds {} bytes, not {}",
                shape.value_size,
                std::mem::size_of::<Layout>()
            ),
        ));
    }
    let mut bytes = vec![0u8; std::mem::size_of::<Layout>()];
    sys::map_lookup(fd.as_fd(), &0u32.to_ne_bytes(), &mut bytes)?;
    // SAFETY: Layout is repr(C) plain data (integers and byte arrays), valid
    // for any bytes, and `bytes` holds exactly its size.
    Ok(Some(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<Layout>())
    }))
}

/// Writes the record under `pin_dir` (made and pinned if absent).
pub fn write_layout(pin_dir: &Path, layout: &Layout) -> Result<()> {
    let path = pin_dir.join(LAYOUT_PIN);
    let fd = if path.exists() {
        sys::obj_get(&path)?
    } else {
        let fd = sys::map_create(
            MapShape {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: std::mem::size_of::<Layout>() as u32,
                max_entries: 1,
            },
            LAYOUT_PIN,
        )?;
        sys::obj_pin(fd.as_fd(), &path)?;
        fd
    };
    // SAFETY: Layout is repr(C) plain data with no padding (asserted sizes),
    // so its bytes are initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (layout as *const Layout).cast::<u8>(),
            std::mem::size_of::<Layout>(),
        )
    };
    sys::map_update(fd.as_fd(), &0u32.to_ne_bytes(), bytes)
}

/// The shapes of the maps pinned under `maps_dir`.
pub fn pinned_shapes(maps_dir: &Path) -> Result<BTreeMap<String, MapShape>> {
    let mut shapes = BTreeMap::new();
    let Ok(dir) = fs::read_dir(maps_dir) else {
        return Ok(shapes);
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let fd = sys::obj_get(&entry.path())?;
        shapes.insert(
            name.clone(),
            sys::map_shape(fd.as_fd(), &format!("map {name}"))?,
        );
    }
    Ok(shapes)
}

/// The shapes of the maps this build's object declares.
pub fn object_shapes(object: &[u8]) -> Result<BTreeMap<String, MapShape>> {
    let parsed =
        aya_obj::Object::parse(object).map_err(|e| Error::system("ebpf object", e.to_string()))?;
    Ok(parsed
        .maps
        .iter()
        .filter(|(name, _)| layout::layout_version(name).is_some())
        .map(|(name, map)| {
            (
                name.clone(),
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                },
            )
        })
        .collect())
}

/// Copies `old`'s entries into `new` as `action` says; with `only_new`,
/// only the keys `new` lacks (the second pass). Returns how many.
pub fn copy_entries(
    name: &str,
    old: &OwnedFd,
    new: &OwnedFd,
    action: &MapAction,
    only_new: bool,
) -> Result<usize> {
    let what = format!("map {name}");
    let old_shape = sys::map_shape(old.as_fd(), &what)?;
    let new_shape = sys::map_shape(new.as_fd(), &what)?;
    let mut old_value = vec![0u8; sys::value_buffer_len(old_shape)?];
    let mut probe = vec![0u8; sys::value_buffer_len(new_shape)?];
    let steps = match action {
        MapAction::Migrate { from } => {
            let to = layout::layout_version(name).unwrap_or(*from);
            chain(name, *from, to).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let keys: Vec<Vec<u8>> = if is_array(old_shape.map_type) {
        (0..old_shape.max_entries.min(new_shape.max_entries))
            .map(|i| i.to_ne_bytes().to_vec())
            .collect()
    } else {
        sys::map_keys(old.as_fd(), old_shape.key_size as usize)?
    };
    let mut copied = 0;
    for key in keys {
        if !sys::map_lookup(old.as_fd(), &key, &mut old_value)? {
            continue; // gone since the walk
        }
        let (mut key, mut value) = (key, old_value.clone());
        let mut dropped = false;
        for step in &steps {
            match (step.convert)(&key, &value) {
                Some((k, v)) => (key, value) = (k, v),
                None => {
                    dropped = true;
                    break;
                }
            }
        }
        if dropped {
            continue;
        }
        if only_new
            && !is_array(new_shape.map_type)
            && sys::map_lookup(new.as_fd(), &key, &mut probe)?
        {
            continue;
        }
        sys::map_update(new.as_fd(), &key, &value)
            .map_err(|e| Error::system(&what, format!("copying an entry: {e}")))?;
        copied += 1;
    }
    Ok(copied)
}

/// Where a migrated map is made before it takes the old one's place.
pub fn staging_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("next").join(name)
}

/// The plan for taking over what is loaded under `pin_dir` (`Ok(None)`
/// when nothing is, or when it is this build's datapath already).
pub fn plan_for(pin_dir: &Path) -> Result<Option<Plan>> {
    if !pin_dir
        .join("maps")
        .join(netctl_common::maps::CONFIG)
        .exists()
    {
        return Ok(None);
    }
    let loaded = read_layout(pin_dir)?;
    let object = super::pins::EBPF_OBJECT_FINGERPRINT;
    // This very build loaded it: same object, so the same maps (the common
    // case, and it spares every command parsing the object).
    if loaded == Some(Layout::current(object)) {
        return Ok(None);
    }
    let plan = plan(
        loaded.as_ref(),
        &pinned_shapes(&pin_dir.join("maps"))?,
        &object_shapes(super::EBPF_OBJECT)?,
        object,
    )?;
    Ok((!plan.is_noop()).then_some(plan))
}

/// Fails unless the maps under `pin_dir` have this build's layouts: what
/// the commands that read or edit maps outside a transaction (`stats`,
/// `conntrack`, `trace`, `metrics`) check first, rather than misread them.
pub fn check_layouts(pin_dir: &Path) -> Result<()> {
    match plan_for(pin_dir)? {
        Some(plan) if plan.maps.values().any(|a| *a != MapAction::Keep) => Err(refuse(
            "its maps were loaded with other layouts (`netctl version` shows them); any \
             command that changes the host (network or container) upgrades it in place"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Versions, as `netctl version` shows them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Versions {
    pub datapath: u32,
    /// The object's fingerprint (hex), `null` for a datapath loaded before
    /// layouts were recorded.
    pub object: Option<String>,
    /// Layout version per map.
    pub maps: BTreeMap<String, u32>,
}

/// This build's.
pub fn binary_versions() -> Versions {
    Versions {
        datapath: DATAPATH_VERSION,
        object: Some(format!("{:016x}", super::pins::EBPF_OBJECT_FINGERPRINT)),
        maps: MAP_LAYOUTS
            .iter()
            .map(|(n, v)| ((*n).to_owned(), *v))
            .collect(),
    }
}

/// The datapath loaded under `pin_dir`, if any.
pub fn loaded_versions(pin_dir: &Path) -> Result<Option<Versions>> {
    if !pin_dir
        .join("maps")
        .join(netctl_common::maps::CONFIG)
        .exists()
    {
        return Ok(None);
    }
    Ok(Some(match read_layout(pin_dir)? {
        Some(l) => Versions {
            datapath: l.datapath,
            object: Some(format!("{:016x}", l.object)),
            maps: l
                .entries()
                .iter()
                .filter_map(|m| m.name().map(|n| (n.to_owned(), m.version)))
                .collect(),
        },
        None => Versions {
            datapath: 1,
            object: None,
            maps: pinned_shapes(&pin_dir.join("maps"))?
                .into_keys()
                .map(|n| (n, 1))
                .collect(),
        },
    }))
}

impl Ebpf {
    /// [`plan_for`] this host.
    pub(super) fn upgrade_plan(&self) -> Result<Option<Plan>> {
        plan_for(&self.pin_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_common::maps;

    fn shape(map_type: u32, key: u32, value: u32, max: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: key,
            value_size: value,
            max_entries: max,
        }
    }

    /// This build's object: every map of MAP_LAYOUTS.
    fn wanted() -> BTreeMap<String, MapShape> {
        object_shapes(super::super::EBPF_OBJECT).expect("the object parses")
    }

    #[test]
    fn the_object_declares_a_layout_for_every_map() {
        let wanted = wanted();
        let mut names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut declared: Vec<&str> = MAP_LAYOUTS.iter().map(|(n, _)| *n).collect();
        declared.sort_unstable();
        assert_eq!(names, declared);
        let mut all = maps::ALL.to_vec();
        all.sort_unstable();
        assert_eq!(declared, all, "MAP_LAYOUTS names every map of maps::ALL");
    }

    #[test]
    fn this_builds_own_datapath_is_left_alone() {
        let wanted = wanted();
        let current = Layout::current(7);
        let plan = plan(Some(&current), &wanted, &wanted, 7).unwrap();
        assert!(plan.is_noop(), "{plan:?}");
        // Another build of the same versions: the programs are replaced,
        // every map kept.
        let plan = super::plan(Some(&current), &wanted, &wanted, 8).unwrap();
        assert!(plan.replace_programs);
        assert!(
            plan.maps.values().all(|a| *a == MapAction::Keep),
            "{plan:?}"
        );
    }

    #[test]
    fn an_older_datapath_is_taken_over_keeping_its_maps() {
        let wanted = wanted();
        // A datapath without a record predates the layouts: its CONNTRACK
        // is version 1, whose entries were 48 bytes, and no migration
        // exists yet.
        let err = plan(None, &wanted, &wanted, 7).unwrap_err().to_string();
        assert!(
            err.contains("map CONNTRACK") && err.contains("no migration"),
            "{err}"
        );
        // An older datapath version with this build's map layouts.
        let mut older = Layout::current(7);
        older.datapath = DATAPATH_VERSION - 1;
        let plan = super::plan(Some(&older), &wanted, &wanted, 7).unwrap();
        assert!(plan.replace_programs);
        assert!(
            plan.maps.values().all(|a| *a == MapAction::Keep),
            "{plan:?}"
        );
        // A map it did not have is created; one this build lacks goes.
        let mut pinned = wanted.clone();
        pinned.remove(maps::SOCK_REVNAT);
        pinned.insert("OLD_MAP".into(), shape(1, 4, 4, 16));
        let plan = super::plan(Some(&older), &pinned, &wanted, 7).unwrap();
        assert_eq!(plan.maps[maps::SOCK_REVNAT], MapAction::Create);
        assert_eq!(plan.dropped, vec!["OLD_MAP".to_owned()]);
    }

    #[test]
    fn what_cannot_be_migrated_is_refused_naming_the_map() {
        let wanted = wanted();
        let ct_version = layout::layout_version(maps::CONNTRACK).unwrap();
        // An older layout without a migration.
        let mut older = Layout::current(7);
        assert!(older.set_version(maps::CONNTRACK, ct_version - 1));
        let err = plan(Some(&older), &wanted, &wanted, 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("map CONNTRACK") && err.contains("no migration"),
            "{err}"
        );
        // A newer layout, a newer datapath.
        let mut newer = Layout::current(7);
        assert!(newer.set_version(maps::CONNTRACK, ct_version + 1));
        let err = plan(Some(&newer), &wanted, &wanted, 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("map CONNTRACK") && err.contains("newer"),
            "{err}"
        );
        let mut newer = Layout::current(7);
        newer.datapath = DATAPATH_VERSION + 1;
        let err = plan(Some(&newer), &wanted, &wanted, 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer netctl"), "{err}");
        // Entries of another size under the same version.
        let mut pinned = wanted.clone();
        pinned.get_mut(maps::CONNTRACK).unwrap().value_size += 8;
        let err = plan(Some(&Layout::current(7)), &pinned, &wanted, 7)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("map CONNTRACK") && err.contains("without"),
            "{err}"
        );
    }

    #[test]
    fn a_grown_counter_array_is_resized_and_a_resized_table_kept() {
        let wanted = wanted();
        let mut pinned = wanted.clone();
        pinned.get_mut(maps::STATS).unwrap().max_entries -= 3;
        // The conntrack table's size is the user's (NETCTL_CONNTRACK_MAX).
        pinned.get_mut(maps::CONNTRACK).unwrap().max_entries = 1024;
        let plan = plan(Some(&Layout::current(7)), &pinned, &wanted, 7).unwrap();
        assert_eq!(
            plan.maps[maps::STATS],
            MapAction::Resize {
                from: wanted[maps::STATS].max_entries - 3
            }
        );
        assert_eq!(plan.maps[maps::CONNTRACK], MapAction::Keep);
        assert!(plan.replace_programs);
    }
}
