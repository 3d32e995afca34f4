//! Test support: sandboxes of real namespaces, the datapaths to run every
//! scenario against, and the harness that runs the TC programs through
//! BPF_PROG_TEST_RUN (`tc`) on frames built by `frames`.

pub mod frames;
pub mod sandbox;
pub mod tc;

pub use sandbox::Sandbox;

/// Instantiates each test body `fn NAME(datapath: &str)` once per datapath,
/// as `iptables::NAME` and `ebpf::NAME`; without root they skip.
#[macro_export]
macro_rules! on_both_datapaths {
    ($($name:ident),* $(,)?) => {
        mod iptables {
            $( #[test] fn $name() { if $crate::sandbox::is_root() { super::$name("iptables") } } )*
        }
        mod ebpf {
            $( #[test] fn $name() { if $crate::sandbox::is_root() { super::$name("ebpf") } } )*
        }
    };
}
