//! Types shared by netctl's eBPF programs and its controller.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both
//! sides agree on the layout; sizes are asserted at compile time. With the
//! `user` feature the types implement `aya::Pod` for the controller.
#![no_std]

pub mod stats;
