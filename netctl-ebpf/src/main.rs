//! netctl's eBPF programs. Entry points stay thin: each calls a `try_*`
//! function and turns its result into a verdict: `Ok(action)` is already
//! counted, `Err(reason)` is a drop counted under its `Drop*` reason.
//!
//! | program | hook | module |
//! |---|---|---|
//! | `endpoint_ingress` | TC ingress, host-side veth of a container | [`endpoint`] |
//! | `uplink_ingress` | TC ingress, the uplink | [`uplink`] |
//! | `uplink_egress` | TC egress, the uplink | [`uplink`] |
//!
//! Every function is `#[inline(always)]`: one BPF function per program,
//! so that packet pointers and map value pointers never cross a BPF-to-BPF
//! call (the verifier restricts what a subprogram may receive), and the
//! stack (512 bytes in all) is shared by LLVM's slot colouring rather than
//! added up frame by frame. The exception is the callback of
//! `bpf_for_each_map_elem` in [`conntrack`], which must be a subprogram.
//!
//! Packet data is read once, through bounds-checked pointers, into plain
//! values ([`parse::Packet`]); every write goes through helpers by offset
//! (`bpf_skb_store_bytes`, `bpf_l3/l4_csum_replace`), which invalidate the
//! verifier's packet pointers, so none is kept across them.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod endpoint;
mod events;
mod forward;
mod fragment;
mod host;
mod icmp_error;
mod maps;
mod nat;
mod parse;
mod sock;
mod stats;
mod uplink;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use netctl_common::{
    config::Config,
    event::{
        PROGRAM_ENDPOINT_ICMP_ERROR, PROGRAM_ENDPOINT_INGRESS, PROGRAM_UPLINK_EGRESS,
        PROGRAM_UPLINK_INGRESS,
    },
    stats::StatIndex,
};

/// The verdicts as the entry points return them (the bindings type them
/// u32 or i32 depending on the target architecture they were generated
/// for, hence the cast that may be a no-op).
#[allow(clippy::unnecessary_cast)]
pub const TC_OK: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
pub const TC_SHOT: i32 = TC_ACT_SHOT as i32;

/// Host-side veth ingress: packets leaving a container.
#[classifier]
pub fn endpoint_ingress(ctx: TcContext) -> i32 {
    verdict(
        &ctx,
        PROGRAM_ENDPOINT_INGRESS,
        endpoint::try_endpoint_ingress(&ctx),
    )
}

/// Tail-called by `endpoint_ingress` for a container's ICMP errors: the
/// translation of errors quoting a flow needs more stack than
/// endpoint_ingress has left (528 bytes with it inline, of 512).
#[classifier]
pub fn endpoint_icmp_error(ctx: TcContext) -> i32 {
    verdict(
        &ctx,
        PROGRAM_ENDPOINT_ICMP_ERROR,
        endpoint::try_endpoint_icmp_error(&ctx),
    )
}

/// Uplink ingress: replies of SNAT flows, connections to published ports.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    verdict(
        &ctx,
        PROGRAM_UPLINK_INGRESS,
        uplink::try_uplink_ingress(&ctx),
    )
}

/// Uplink egress: the slow path's SNAT and reverse DNAT.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    verdict(&ctx, PROGRAM_UPLINK_EGRESS, uplink::try_uplink_egress(&ctx))
}

#[inline(always)]
fn verdict(ctx: &TcContext, program: u8, result: Result<i32, StatIndex>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            stats::count(reason, ctx.len());
            // Room for the next packets (this one is lost): an unconfirmed
            // flow first, a sweep for dead entries (once a second at most)
            // when there is none.
            if reason == StatIndex::DropConntrackFull && !conntrack::early_drop() {
                conntrack::reclaim();
            }
            // Every drop of every program passes here: the one place its
            // event is emitted (when someone listens).
            events::drop(ctx.skb.skb, program, reason);
            TC_SHOT
        }
    }
}

/// CONFIG slot 0, in place (an array slot always exists, so `None` does
/// not happen; all zero until the controller writes it).
#[inline(always)]
fn config_ref() -> Option<&'static Config> {
    maps::CONFIG.get(0)
}

/// CONFIG slot 0 (an array slot always exists; all zero until the
/// controller writes it, which disables SNAT and DNAT).
#[inline(always)]
fn config() -> Config {
    maps::CONFIG.get(0).copied().unwrap_or_default()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
