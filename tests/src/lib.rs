//! Test support: sandboxes of real namespaces, the datapaths to run every
//! scenario against, and the harness that runs the TC programs through
//! BPF_PROG_TEST_RUN.

pub mod sandbox;
pub mod tc;

pub use sandbox::Sandbox;
