//! The eBPF datapath: TC programs and BPF maps, no iptables.
//!
//! Only the object is exposed for now (the toolchain is proven by loading
//! it); the datapath itself is the eBPF issue's work.

/// netctl-ebpf compiled for the bpf target by build.rs (aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"));
