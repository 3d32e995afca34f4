//! Test support: sandboxes of real namespaces, and the datapaths to run
//! every scenario against.

pub mod sandbox;

pub use sandbox::Sandbox;
