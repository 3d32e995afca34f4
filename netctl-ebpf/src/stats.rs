//! Counting verdicts and drop reasons into `STATS`.

use netctl_common::stats::StatIndex;

use crate::maps::STATS;

#[inline(always)]
pub fn count(index: StatIndex, bytes: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index as u32) {
        // SAFETY: a per-CPU slot: no other writer runs on this CPU meanwhile.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

/// Hands the packet to the kernel unchanged, counted under `index`.
#[inline(always)]
pub fn pass(index: StatIndex, bytes: u32) -> i32 {
    count(index, bytes);
    crate::TC_OK
}
