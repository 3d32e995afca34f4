//! Compiles netctl-ebpf for the bpf target and leaves the object in OUT_DIR,
//! where `aya::include_bytes_aligned!` picks it up.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    // aya-build reruns this script when the eBPF crate changes; the types
    // and counters it shares with netctl-common must trigger it too, or the
    // object keeps stale map layouts and counter numbers.
    let common_package = packages
        .iter()
        .find(|p| p.name.as_str() == "netctl-common")
        .ok_or_else(|| anyhow!("netctl-common package not found"))?;
    if let Some(common_dir) = common_package.manifest_path.parent() {
        println!("cargo:rerun-if-changed={common_dir}");
    }
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "netctl-ebpf")
        .ok_or_else(|| anyhow!("netctl-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf_package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    write_fingerprint()
}

/// The object's fingerprint (the layout record's), computed once here
/// rather than by every command: hashing the 1.7 MB object cost a debug
/// build about 6 ms per command.
fn write_fingerprint() -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let object = out_dir.join("netctl-ebpf");
    let bytes = std::fs::read(&object).with_context(|| format!("read {}", object.display()))?;
    let fingerprint = netctl_common::layout::fingerprint(&bytes);
    let path = out_dir.join("netctl-ebpf.fingerprint");
    std::fs::write(&path, format!("0x{fingerprint:016x}_u64\n"))
        .with_context(|| format!("write {}", path.display()))
}
