//! netctl's eBPF programs. Entry points stay thin: each calls a `try_*`
//! function and turns its result into a verdict.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};
use netctl_common::stats::StatIndex;

/// Host-side veth ingress (packets leaving a container). Placeholder until
/// the datapath lands: counts and passes.
#[classifier]
pub fn endpoint_ingress(ctx: TcContext) -> i32 {
    stats::count(StatIndex::Pass, ctx.len());
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
