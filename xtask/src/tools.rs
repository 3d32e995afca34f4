//! The release binaries the demo and the bench drive: `netctl` and
//! `nettool` (the tests crate's traffic tool: servers and clients).

use std::path::PathBuf;

use anyhow::{ensure, Result};

use crate::cmd::{cargo, run, step, workspace_root};

pub struct Tools {
    pub netctl: PathBuf,
    pub nettool: PathBuf,
}

/// `cargo xtask build`: deps, then netctl (release; its build.rs compiles
/// the eBPF object).
pub fn build_netctl() -> Result<()> {
    crate::deps::ensure()?;
    step("building netctl (release; build.rs compiles the eBPF object)");
    run(cargo().args(["build", "--release", "-p", "netctl"]))
}

/// Builds netctl and nettool (release) and checks both are there.
pub fn build() -> Result<Tools> {
    build_netctl()?;
    step("building nettool (release): the servers and clients");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "netctl-tests",
        "--bin",
        "nettool",
    ]))?;
    let tools = Tools {
        netctl: release_netctl(),
        nettool: target_dir().join("release/nettool"),
    };
    for bin in [&tools.netctl, &tools.nettool] {
        ensure!(bin.exists(), "{} missing after the build", bin.display());
    }
    Ok(tools)
}

/// Where `build_netctl` puts netctl.
pub fn release_netctl() -> PathBuf {
    target_dir().join("release/netctl")
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or the workspace's).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
