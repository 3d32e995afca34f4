//! podman (Debian's 4.3, CNI backend) driving netctl's CNI plugin inside a
//! sandbox. podman runs in the sandbox's host namespace with data, run,
//! tmp and OCI runtime directories of its own under one directory, a
//! `containers.conf` (through `CONTAINERS_CONF`) that names the CNI backend,
//! a plugin dir holding only `netctl`, a config dir holding only the
//! sandbox's conflist, and a cgroup parent under the sandbox's cgroup.
//! Containers run from a root filesystem made here (`podman run --rootfs`):
//! busybox-static, and nettool with the libraries it links.
//!
//! What podman 4.3 cannot move — the containers' namespaces
//! `/run/netns/netns-<uuid>` and libcni's cache `/var/lib/cni/results` — is
//! recorded per container and removed on drop if podman left it; the
//! directories podman could touch outside its own are compared before and
//! after ([`Podman::left_outside`]).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::json;

use crate::sandbox::{cgroup2_root, netctl_bin, nettool_bin, Sandbox, UPLINK};

/// Directories podman writes by default; with the options here it must not
/// add anything to them, except libcni's cache (the namespaces it makes in
/// /run/netns are followed per container, [`Podman::netns_left`]).
const OUTSIDE: &[&str] = &[
    "/var/lib/cni",
    "/var/lib/cni/results",
    "/var/lib/cni/networks",
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
    "/run/runc",
    "/run/crun",
    "/etc/cni/net.d",
];

const PODMAN: &str = "/usr/bin/podman";
const BUSYBOX: &str = "/bin/busybox";

/// Where the container sees its tools.
pub const NETTOOL: &str = "/nettool";

pub struct Podman<'a> {
    pub sb: &'a Sandbox,
    pub dir: PathBuf,
    /// podman's network and netctl's: one name (with the sandbox prefix, so
    /// that libcni's cache entries `NETWORK-ID-IFNAME` are this test's).
    pub network: String,
    /// cgroupfs parent of conmon and the containers, below the sandbox's
    /// cgroup (v2) and named after it in the v1 hierarchies.
    cgroup_parent: String,
    before: BTreeSet<String>,
    /// Namespace paths podman gave the containers (from `inspect`).
    netns_paths: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Podman<'a> {
    /// Sets podman up for `sb`; the conflist speaks `cni_version`.
    pub fn new(sb: &'a Sandbox, cni_version: &str) -> Self {
        for (path, package) in [(PODMAN, "podman"), (BUSYBOX, "busybox-static")] {
            assert!(
                Path::new(path).exists(),
                "{path} missing: apt-get install {package} (cargo xtask deps)"
            );
        }
        let dir = std::env::temp_dir().join(format!("{}-podman", sb.prefix));
        let podman = Podman {
            sb,
            network: format!("{}-pod", sb.prefix),
            cgroup_parent: format!("/{}/podman", sb.prefix),
            before: outside_entries(),
            netns_paths: Default::default(),
            dir,
        };
        podman.write_files(cni_version);
        podman
    }

    fn write_files(&self, cni_version: &str) {
        for sub in ["root", "runroot", "tmp", "runc", "oci", "bin", "net.d"] {
            fs::create_dir_all(self.dir.join(sub)).expect("podman dirs");
        }
        std::os::unix::fs::symlink(netctl_bin(), self.dir.join("bin/netctl")).expect("bin/netctl");
        let conflist = json!({
            "cniVersion": cni_version,
            "name": self.network,
            "plugins": [{
                "type": "netctl",
                "bridge": "ncpod0",
                "subnet": "10.78.0.0/24",
                "datapath": self.sb.datapath,
                "hostNetns": self.sb.host_netns,
                "stateDir": self.sb.state_dir,
                "cgroup": self.sb.cgroup,
                "uplink": UPLINK,
                "capabilities": {
                    "portMappings": true, "ips": true, "mac": true, "dns": true, "aliases": true
                },
            }],
        });
        fs::write(
            self.dir.join(format!("net.d/{}.conflist", self.network)),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .expect("conflist");
        let d = self.dir.display();
        // runc keeps its state under the directory given by its global
        // `--root` [default: /run/runc]: a wrapper gives it, since podman's
        // `--runtime-flag` does not reach the `podman container cleanup`
        // that conmon runs when a container exits.
        let runc = self.dir.join("oci/runc");
        fs::write(
            &runc,
            format!("#!/bin/sh\nexec /usr/sbin/runc --root {d}/runc \"$@\"\n"),
        )
        .expect("runc wrapper");
        fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("runc wrapper mode");
        // conmon_env_vars: conmon starts that cleanup with its own
        // environment, which must name this file too (the CNI plugin dir,
        // the runtime). default_network: a `run` without --network must not
        // fall back to podman's own bridge (it would run the bridge plugin).
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\n\
             conmon_env_vars = [\"PATH=/usr/sbin:/usr/bin:/sbin:/bin\", \"CONTAINERS_CONF={d}/containers.conf\"]\n\
             runtime = \"runc\"\n\
             [engine.runtimes]\n\
             runc = [\"{d}/oci/runc\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{d}/bin\"]\n\
             network_config_dir = \"{d}/net.d\"\n\
             default_network = \"{}\"\n",
            self.network
        );
        fs::write(self.dir.join("containers.conf"), conf).expect("containers.conf");
        make_rootfs(&self.rootfs());
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// `podman ARGS` in the sandbox's host namespace, with this podman's
    /// directories.
    pub fn podman(&self, args: &[&str]) -> Output {
        let d = &self.dir;
        let conf = format!("CONTAINERS_CONF={}", d.join("containers.conf").display());
        let paths = [d.join("root"), d.join("runroot"), d.join("tmp")];
        let [root, runroot, tmp] = paths.each_ref().map(|p| p.to_str().unwrap());
        let mut argv = vec![
            "env",
            &conf,
            PODMAN,
            "--root",
            root,
            "--runroot",
            runroot,
            "--tmpdir",
            tmp,
        ];
        argv.extend_from_slice(args);
        self.sb.in_host(&argv)
    }

    /// `podman ARGS`; its stdout, or a panic with its stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run` on the sandbox's network, in the cgroup parent, from the
    /// root filesystem: `opts` before it, `cmd` after.
    pub fn try_run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let rootfs = self.rootfs().display().to_string();
        let mut args = vec![
            "run",
            "--network",
            &self.network,
            "--cgroup-parent",
            &self.cgroup_parent,
        ];
        args.extend_from_slice(opts);
        args.push("--rootfs");
        args.push(&rootfs);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// [`Podman::try_run`]; its stdout, or a panic with its stderr.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> String {
        let out = self.try_run(opts, cmd);
        assert!(
            out.status.success(),
            "podman run {} {} failed ({}): {}",
            opts.join(" "),
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A detached container `name`; records its namespace path.
    pub fn run_detached(&self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut all = vec!["-d", "--name", name];
        all.extend_from_slice(opts);
        let id = self.run(&all, cmd).trim().to_owned();
        self.record_netns(name);
        id
    }

    /// `podman start` of a stopped container (a new namespace, an ADD).
    pub fn start(&self, name: &str) {
        self.ok(&["start", name]);
        self.record_netns(name);
    }

    fn record_netns(&self, name: &str) {
        let netns = self.netns_of(name);
        self.netns_paths.borrow_mut().insert(netns);
    }

    /// The namespace podman made for a container.
    pub fn netns_of(&self, name: &str) -> String {
        let key = self.ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ]);
        let key = key.trim().to_owned();
        assert!(key.starts_with("/run/netns/"), "{name}: SandboxKey {key:?}");
        key
    }

    /// `podman rm -f -t 0`: busybox as PID 1 ignores SIGTERM, no need to
    /// wait 10 s for it.
    pub fn rm(&self, name: &str) {
        self.ok(&["rm", "-f", "-t", "0", name]);
    }

    /// libcni's cache entries of this network.
    pub fn cni_results(&self) -> Vec<String> {
        let own = format!("{}-", self.network);
        let mut found: Vec<String> = fs::read_dir("/var/lib/cni/results")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&own))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// Namespaces podman made for this test's containers that still exist.
    pub fn netns_left(&self) -> Vec<String> {
        self.netns_paths
            .borrow()
            .iter()
            .filter(|p| Path::new(p).exists())
            .cloned()
            .collect()
    }

    /// Entries that appeared in podman's default directories since
    /// [`Podman::new`], besides libcni's cache (this network's entries
    /// are [`Podman::cni_results`]; another test's podman may be adding
    /// its own).
    pub fn left_outside(&self) -> Vec<String> {
        let ours = |e: &String| e.starts_with("/var/lib/cni/results") || e == "/var/lib/cni";
        outside_entries()
            .difference(&self.before)
            .filter(|e| !ours(e))
            .cloned()
            .collect()
    }
}

/// The entries of [`OUTSIDE`] (and the directories themselves).
fn outside_entries() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for dir in OUTSIDE {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        found.insert((*dir).to_owned());
        found.extend(
            entries
                .flatten()
                .map(|e| e.path().display().to_string())
                .filter(|p| !OUTSIDE.contains(&p.as_str())),
        );
    }
    found
}

/// busybox (sh and friends) and nettool, each with the shared libraries
/// `ldd` lists at the same paths (none for busybox-static).
fn make_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).expect("rootfs/bin");
    let nettool = nettool_bin();
    for (from, to) in [
        (PathBuf::from(BUSYBOX), bin.join("busybox")),
        (nettool, rootfs.join(NETTOOL.trim_start_matches('/'))),
    ] {
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        let ldd = Command::new("ldd").arg(&from).output().expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let target = rootfs.join(lib.trim_start_matches('/'));
            fs::create_dir_all(target.parent().unwrap()).expect("rootfs lib dir");
            fs::copy(lib, &target).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
    for applet in ["sh", "cat", "sleep", "nslookup"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
}

impl Drop for Podman<'_> {
    /// Removes every container (podman's DELs), then whatever podman left:
    /// mounts under its directories, the cgroups, the namespaces and cache
    /// entries it cannot move, and its directories.
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.podman(&["network", "rm", "-f", &self.network]);
        let dir = self.dir.display().to_string();
        for mount in mounts_under(&dir) {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        remove_cgroups(&self.sb.prefix, &self.cgroup_parent);
        for netns in self.netns_left() {
            let _ = nix::mount::umount2(netns.as_str(), nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&netns);
        }
        for entry in self.cni_results() {
            let _ = fs::remove_file(Path::new("/var/lib/cni/results").join(entry));
        }
        // libcni's directories, when this test made them (still empty).
        for made in ["/var/lib/cni/results", "/var/lib/cni"] {
            if !self.before.contains(made) {
                let _ = fs::remove_dir(made);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Mount points below `dir`, deepest first.
fn mounts_under(dir: &str) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(dir))
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

/// The cgroups podman made under `parent` in every hierarchy (the cgroup v2
/// one is below the sandbox's own; in the v1 ones podman made `/PREFIX`
/// too): processes left in them killed, then the directories removed,
/// deepest first.
fn remove_cgroups(prefix: &str, parent: &str) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v2 = cgroup2_root();
    for root in mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
        .map(|f| PathBuf::from(f[1]))
    {
        let top = root.join(parent.trim_start_matches('/'));
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            kill_procs(dir);
        }
        for dir in &dirs {
            remove_dir_retrying(dir);
        }
        if root != v2 {
            remove_dir_retrying(&root.join(prefix));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn kill_procs(cgroup: &Path) {
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// rmdir, retried for a bounded while: killed processes take a moment to
/// leave their cgroup.
fn remove_dir_retrying(dir: &Path) {
    for _ in 0..30 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
