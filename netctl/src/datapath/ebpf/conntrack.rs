//! The conntrack table from userspace: its size at load, and its flows —
//! listed and decoded for `netctl conntrack ls`, removed by a filter (an
//! endpoint's flows when it goes, `conntrack flush`), and expired by
//! `netctl conntrack gc` with the programs' own rule.
//!
//! The table's size is fixed when the object is loaded:
//! [`CONNTRACK_MAX_ENV`] or [`CONNTRACK_MAX_DEFAULT`] entries; every later
//! command opens the pinned table, so all agree until `netctl down`.

use std::path::Path;

pub use netctl_common::conntrack::CONNTRACK_MAX_DEFAULT;
use netctl_common::{
    conntrack::{expired, reverse_key, CtEntry, CtKey},
    maps,
};

use super::{
    bpf_error,
    maps::{dump_hash, ip_from_be, is_absent, open_pinned_map, pinned_hash},
};
use crate::error::{Error, Result};

/// Sizes the conntrack table when the datapath is loaded (the host's first
/// network); small tables let tests fill it.
pub const CONNTRACK_MAX_ENV: &str = "NETCTL_CONNTRACK_MAX";
/// Bounds of the size: one flow, and 1M entries (the table is
/// preallocated, about 120 bytes an entry; and a full table is swept once a
/// second, ~0.26 µs an entry: see the eBPF `conntrack::reclaim`).
const CONNTRACK_MAX_RANGE: (u32, u32) = (2, 1_048_576);

/// The conntrack table size asked by [`CONNTRACK_MAX_ENV`], or the default.
pub fn conntrack_max() -> Result<u32> {
    let Some(raw) = std::env::var_os(CONNTRACK_MAX_ENV) else {
        return Ok(CONNTRACK_MAX_DEFAULT);
    };
    let raw = raw.to_string_lossy();
    let (min, max) = CONNTRACK_MAX_RANGE;
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Error::invalid(
                CONNTRACK_MAX_ENV,
                format!("{raw:?} is not a table size ({min} to {max} entries)"),
            )
        })
}

/// One conntrack entry, decoded for `netctl conntrack ls`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Flow {
    pub proto: &'static str,
    pub src: String,
    pub dst: String,
    pub translated_src: String,
    pub translated_dst: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub state: &'static str,
    pub idle_seconds: u64,
    pub packets: u64,
    pub bytes: u64,
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    }
}

fn decode(k: &CtKey, e: &CtEntry, now: u64) -> Flow {
    use netctl_common::conntrack::*;
    let addr = |ip: u32, port: u16| format!("{}:{}", ip_from_be(ip), u16::from_be(port));
    Flow {
        proto: proto_name(k.proto),
        src: addr(k.saddr, k.sport),
        dst: addr(k.daddr, k.dport),
        translated_src: addr(e.saddr, e.sport),
        translated_dst: addr(e.daddr, e.dport),
        kind: match e.kind {
            CT_KIND_SNAT => "snat",
            CT_KIND_DNAT => "dnat",
            CT_KIND_HAIRPIN => "hairpin",
            CT_KIND_HOST => "host",
            _ => "unknown",
        },
        direction: if e.direction == CT_DIR_REPLY {
            "reply"
        } else {
            "original"
        },
        state: state_name(k.proto, e.state),
        idle_seconds: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        packets: e.packets,
        bytes: e.bytes,
    }
}

/// Every entry of the host's conntrack table.
fn conntrack_entries(pin_dir: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    let map = pinned_hash::<CtKey, CtEntry>(pin_dir, maps::CONNTRACK)?;
    dump_hash(aya::maps::IterableMap::map(&map), "map CONNTRACK")
}

/// How many entries the host's conntrack table holds at most (as sized
/// when the datapath was loaded), read from the pinned table itself.
pub fn conntrack_capacity(pin_dir: &Path) -> Result<u32> {
    let map = open_pinned_map(pin_dir, maps::CONNTRACK)?;
    let info = map.info().map_err(|e| bpf_error("map CONNTRACK", e))?;
    Ok(info.max_entries())
}

/// The flows of a host's conntrack table.
pub fn conntrack_list(pin_dir: &Path) -> Result<Vec<Flow>> {
    let now = monotonic_ns();
    Ok(conntrack_entries(pin_dir)?
        .iter()
        .map(|(k, e)| decode(k, e, now))
        .collect())
}

/// Removes the entries `doomed` selects; returns how many went.
pub fn conntrack_remove(
    pin_dir: &Path,
    doomed: impl Fn(&CtKey, &CtEntry) -> bool,
) -> Result<usize> {
    let mut map = pinned_hash::<CtKey, CtEntry>(pin_dir, maps::CONNTRACK)?;
    let keys: Vec<CtKey> = dump_hash(aya::maps::IterableMap::map(&map), "map CONNTRACK")?
        .into_iter()
        .filter(|(k, e)| doomed(k, e))
        .map(|(k, _)| k)
        .collect();
    for key in &keys {
        match map.remove(key) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(bpf_error("map CONNTRACK", e)),
        }
    }
    Ok(keys.len())
}

/// Removes expired flows, with the programs' rule: an entry lives while it
/// or its pair (the other direction) is within its timeout, so a one-way
/// stream keeps both. The programs also expire entries on lookup.
pub fn conntrack_gc(pin_dir: &Path) -> Result<usize> {
    let now = monotonic_ns();
    let table: std::collections::HashMap<CtKey, CtEntry> =
        conntrack_entries(pin_dir)?.into_iter().collect();
    conntrack_remove(pin_dir, |k, e| {
        let pair_alive = table
            .get(&reverse_key(e, k.proto))
            .is_some_and(|pair| !expired(pair, k.proto, now));
        expired(e, k.proto, now) && !pair_alive
    })
}
