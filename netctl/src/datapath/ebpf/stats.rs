//! `netctl stats`: the programs' per-CPU counters (`STATS`), summed.

use std::path::Path;

use aya::maps::{Map, PerCpuArray};
use netctl_common::{
    maps,
    stats::{Counter, STAT_COUNT, STAT_NAMES},
};

use super::{bpf_error, maps::open_pinned_map};
use crate::error::Result;

/// Counters summed over CPUs, in index order.
pub fn stats(pin_dir: &Path) -> Result<Vec<(&'static str, Counter)>> {
    let data = open_pinned_map(pin_dir, maps::STATS)?;
    let map: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| bpf_error("map STATS", e))?;
    let mut out = Vec::new();
    for index in 0..STAT_COUNT {
        let values = map.get(&index, 0).map_err(|e| bpf_error("map STATS", e))?;
        let total = values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        });
        out.push((STAT_NAMES[index as usize], total));
    }
    Ok(out)
}
