use which::which;

/// Building this crate needs the `bpf-linker` binary, which cargo cannot
/// express as a dependency: rebuild whenever it changes.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask deps`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
