//! netctl: Docker-style container networking for Linux hosts.
//!
//! The library holds everything; `main.rs` only parses the command line.
//! One module per concern: [`model`] holds the data, [`state`] persists
//! it, [`ipam`] and [`ports`] are pure, [`netns`] and [`netlink`] touch the
//! kernel, [`topology`] plans and applies links and addresses, [`datapath`]
//! moves packets, [`ops`] runs the commands in transactions.

pub mod cli;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod error;
pub mod failpoint;
pub mod host_ifaces;
pub mod hosts;
pub mod ipam;
pub mod ipam6;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod ops;
pub mod ports;
pub mod process;
pub mod resolver;
pub mod state;
pub mod topology;
pub mod trace;
