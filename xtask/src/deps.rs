//! `cargo xtask deps`: installs what a fresh Debian 12 machine lacks to build
//! and test netctl. Idempotent and quick when nothing is missing: every item
//! is checked first and only the missing ones are installed, one printed line
//! each.

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{read, run, step, succeeds};

/// Debian packages, with why netctl needs them.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "LLVM that bpf-linker links against"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("libzstd-dev", "needed to link bpf-linker against LLVM 22"),
    ("zlib1g-dev", "needed to link bpf-linker against LLVM 22"),
    ("iptables", "the iptables datapath, and leak checks"),
    ("iproute2", "ip: sandboxes and leak checks"),
    ("iputils-ping", "ping in the scenarios"),
    (
        "nftables",
        "nft: the iptables datapath's ARP anti-spoofing (table bridge netctl), leak checks",
    ),
    ("iperf3", "benchmarks"),
    ("sockperf", "benchmarks"),
    (
        "containernetworking-plugins",
        "CNI bridge/portmap peers in benchmarks",
    ),
    ("netavark", "netavark peer in benchmarks"),
    (
        "conntrack",
        "the iptables datapath: flushing the flows of removed containers and re-published UDP ports",
    ),
    ("bpftool", "inspecting BPF programs and maps"),
    (
        "ethtool",
        "turning checksum offloads off where the checksum tests capture",
    ),
    ("procps", "sysctl, ps"),
    (
        "prometheus",
        "promtool check metrics, and a Prometheus server scraping `netctl metrics --listen` in the tests",
    ),
    (
        "docker.io",
        "dockerd 20.10 and its CLI driving `netctl docker-plugin` in tests/tests/docker.rs",
    ),
    (
        "podman",
        "tests/podman.rs: podman 4.3's CNI backend driving netctl's plugin",
    ),
    (
        "busybox-static",
        "the root filesystem of the Docker tests' image (`docker import`) and of the podman tests' containers (`podman run --rootfs`)",
    ),
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_FEATURE: &str = "llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

pub fn ensure() -> Result<()> {
    let started = Instant::now();
    step("deps: checking what this machine lacks");
    require_root()?;
    let mut installed = 0;
    installed += apt_packages()?;
    installed += rust_src()?;
    installed += bpf_linker()?;
    installed += bpffs()?;
    warn_without_cgroup2();
    let secs = started.elapsed().as_secs_f64();
    if installed == 0 {
        println!("deps: nothing missing ({secs:.2} s)");
    } else {
        println!("deps: installed {installed} item(s) ({secs:.1} s)");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "xtask must run as root: it installs packages, mounts bpffs and the tests \
             create network namespaces (try `sudo -E env PATH=$PATH cargo xtask ...`)"
        );
    }
    Ok(())
}

/// Packages among `names` that dpkg reports as installed. One dpkg-query for
/// all of them; unknown names make it exit 1 but still print the others.
fn installed_packages(names: &[&str]) -> Result<BTreeSet<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(names)
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn apt_packages() -> Result<usize> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
    let installed = installed_packages(&names)?;
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(name, _)| !installed.contains(*name))
        .map(|(name, why)| {
            println!("missing: apt package {name} ({why}): installing");
            *name
        })
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let _no_daemons = NoDaemonStarts::install()?;
    run(Command::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(missing.len())
}

/// Debian's `policy-rc.d` answer "not now" (101) for the length of an
/// install: docker.io, podman and prometheus ship daemons that a host
/// running systemd would start at once, and dockerd would make `docker0`
/// and its iptables rules in the root network namespace, which nothing of
/// netctl's may touch. The tests start their own, inside sandboxes. An
/// existing policy file is the administrator's and is left alone.
struct NoDaemonStarts(Option<&'static Path>);

impl NoDaemonStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> Result<Self> {
        let path = Path::new(Self::PATH);
        if path.exists() {
            return Ok(Self(None));
        }
        fs::write(
            path,
            "#!/bin/sh\n# cargo xtask deps: no daemon starts while it installs\nexit 101\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoDaemonStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            if let Err(e) = fs::remove_file(path) {
                eprintln!("deps: cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// rust-src for nightly: aya-build compiles netctl-ebpf with `-Z build-std=core`.
fn rust_src() -> Result<usize> {
    let components = read(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match components {
        Ok(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(0),
        Ok(_) => {
            println!(
                "missing: rust-src for the nightly toolchain (builds the eBPF crate): installing"
            );
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
            Ok(1)
        }
        Err(_) => {
            println!(
                "missing: the nightly toolchain with rust-src (builds the eBPF crate): installing"
            );
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            Ok(1)
        }
    }
}

fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// Puts `dir` in front of PATH for this process and the commands it runs.
fn prepend_to_path(dir: &Path) {
    let old = env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(dir.to_owned()).chain(env::split_paths(&old));
    if let Ok(joined) = env::join_paths(paths) {
        env::set_var("PATH", joined);
    }
}

/// bpf-linker links the eBPF object; it must be in PATH for rustc.
fn bpf_linker() -> Result<usize> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(0);
    }
    if let Some(bin) = cargo_bin_dir() {
        if succeeds(Command::new(bin.join("bpf-linker")).arg("--version")) {
            println!(
                "note: bpf-linker found in {} (not in PATH): using it",
                bin.display()
            );
            prepend_to_path(&bin);
            return Ok(0);
        }
    }
    println!(
        "missing: bpf-linker (links the eBPF object; built against LLVM 22, ~2 min): installing"
    );
    run(crate::cmd::cargo()
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            BPF_LINKER_FEATURE,
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))?;
    if let Some(bin) = cargo_bin_dir() {
        prepend_to_path(&bin);
    }
    Ok(1)
}

/// Mount points of a filesystem type, from /proc/mounts.
pub fn mounts_of_type(fstype: &str) -> Vec<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && fields[2] == fstype).then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

/// netctl pins its maps and links under /sys/fs/bpf/netctl.
fn bpffs() -> Result<usize> {
    if mounts_of_type("bpf").iter().any(|m| m == Path::new(BPFFS)) {
        return Ok(0);
    }
    println!("missing: bpffs at {BPFFS} (netctl pins its maps there): mounting");
    fs::create_dir_all(BPFFS).with_context(|| format!("mkdir {BPFFS}"))?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(1)
}

/// Sandboxes need a cgroup v2 hierarchy; mounting one is the machine owner's
/// call, so only warn.
fn warn_without_cgroup2() {
    if mounts_of_type("cgroup2").is_empty() {
        println!(
            "warning: no cgroup2 filesystem mounted: the demo and the host-side \
             scenarios need one (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
        );
    }
}
