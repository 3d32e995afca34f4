//! netctl's TC programs. Entry points stay thin: each calls a `try_*`
//! function and turns its result into a TC verdict.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use netctl_common::stats::{Counter, StatIndex, STAT_COUNT};

#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
fn count(index: StatIndex, bytes: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

/// Host-side veth ingress (packets leaving a container). For now it only
/// counts and passes: the full datapath comes with the eBPF issue.
#[classifier]
pub fn endpoint_ingress(ctx: TcContext) -> i32 {
    count(StatIndex::Pass, ctx.len());
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
