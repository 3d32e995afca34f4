//! Docker 20.10 (Debian's `docker.io`) in a sandbox's host namespace,
//! driving `netctl docker-plugin` as Docker drives any remote network
//! driver. Everything is the sandbox's: dockerd's data root, exec root,
//! pid file, API socket and daemon.json under one directory named with the
//! sandbox's prefix, a plugin name (its spec file in
//! `/etc/docker/plugins`) equal to the prefix. dockerd never touches the
//! root namespace: it runs with `--iptables=false --ip6tables=false
//! --bridge=none` and without IP forwarding or masquerading of its own.
//!
//! Images come from a local root filesystem: Debian's `busybox-static`
//! with a few applets, plus `nettool` and the libraries it links
//! (`docker import`), since a sandbox has no registry.
//!
//! Dropping a [`Docker`] removes every container and network (through the
//! plugin, so netctl takes its part apart), stops dockerd and the plugin,
//! and removes what dockerd leaves on the host: its mounts (the data root
//! bound on itself, the nsfs of `EXEC/netns/default`), and the host
//! directories it makes wherever they did not exist before
//! (`/run/docker`, `/run/containerd`, `/opt/containerd`), and the
//! containers' cgroup parent (`PREFIX-docker`, in every hierarchy).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::sandbox::{nettool_bin, spawn_in_netns, Sandbox};

/// Debian's docker.io client and daemon (another `docker` may come first
/// on PATH).
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";
/// The image every test runs.
pub const IMAGE: &str = "netctl-bb:latest";
/// The applets the tests use inside containers.
const APPLETS: [&str; 6] = ["sh", "nslookup", "sed", "tail", "ip", "cat"];
/// Where Docker finds remote drivers by name.
const PLUGIN_SPECS: &str = "/etc/docker/plugins";
/// Host directories dockerd makes whatever its roots are.
const DOCKERD_HOST_DIRS: [&str; 3] = ["/run/docker", "/run/containerd", "/opt/containerd"];
/// Where the cgroup hierarchies are mounted (v1 controllers beside v2's
/// `unified` on this machine's hybrid layout, or v2 alone).
const CGROUPS: &str = "/sys/fs/cgroup";
/// Longest dockerd may take to answer, and to exit.
const DOCKERD_TIMEOUT: Duration = Duration::from_secs(30);

/// One dockerd at a time on this machine: the daemons share
/// `/run/containerd` and `/run/docker`, and each start is heavy.
static ONE_DOCKERD: Mutex<()> = Mutex::new(());

pub struct Docker<'a> {
    sb: &'a Sandbox,
    /// The driver's name (`docker network create -d NAME`).
    pub plugin: String,
    root: PathBuf,
    spec: PathBuf,
    dockerd: Option<Child>,
    plugin_process: Option<Child>,
    /// Of `DOCKERD_HOST_DIRS` and the spec directory, those that did not
    /// exist before: removed at the end.
    made_dirs: Vec<PathBuf>,
    _one: MutexGuard<'static, ()>,
}

impl<'a> Docker<'a> {
    /// The plugin serving `sb`'s host, dockerd in its host namespace, the
    /// image imported.
    pub fn start(sb: &'a Sandbox) -> Self {
        let one = ONE_DOCKERD.lock().unwrap_or_else(|e| e.into_inner());
        let mut made_dirs: Vec<PathBuf> = DOCKERD_HOST_DIRS
            .iter()
            .chain([&PLUGIN_SPECS])
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        // Innermost first when removed.
        made_dirs.reverse();
        let root = std::env::temp_dir().join(format!("{}-docker", sb.prefix));
        let mut docker = Docker {
            sb,
            plugin: sb.prefix.clone(),
            spec: Path::new(PLUGIN_SPECS).join(format!("{}.spec", sb.prefix)),
            root,
            dockerd: None,
            plugin_process: None,
            made_dirs,
            _one: one,
        };
        // Built after the struct exists, so a failure half-way is undone by Drop.
        for dir in ["data", "exec", "cli"] {
            fs::create_dir_all(docker.root.join(dir)).expect("docker root");
        }
        fs::write(
            docker.root.join("daemon.json"),
            serde_json::json!({
                // Elsewhere dockerd writes /etc/docker/key.json.
                "deprecated-key-path": docker.root.join("key.json"),
                // Containers outlive dockerd's restarts, as on a host that
                // upgrades Docker without stopping its services.
                "live-restore": true,
                // Containers' cgroups under one of the sandbox's, rather
                // than under `docker` in every hierarchy.
                "cgroup-parent": docker.cgroup_parent(),
            })
            .to_string(),
        )
        .expect("daemon.json");
        docker.start_plugin();
        fs::create_dir_all(PLUGIN_SPECS).expect("plugin spec dir");
        fs::write(
            &docker.spec,
            format!("unix://{}\n", docker.plugin_socket().display()),
        )
        .expect("plugin spec");
        docker.start_dockerd();
        docker.import_image();
        docker
    }

    fn cgroup_parent(&self) -> String {
        format!("{}-docker", self.sb.prefix)
    }

    fn plugin_socket(&self) -> PathBuf {
        self.root.join("plugin.sock")
    }

    fn api(&self) -> String {
        format!("unix://{}", self.root.join("docker.sock").display())
    }

    /// `netctl docker-plugin` for the sandbox's host, once it listens.
    pub fn start_plugin(&mut self) {
        self.start_plugin_with(&[]);
    }

    /// The plugin with more environment (`NETCTL_FAILPOINT`, say).
    pub fn start_plugin_with(&mut self, env: &[(&str, &str)]) {
        let socket = self.plugin_socket();
        let mut child = self
            .sb
            .netctl_command(&["docker-plugin", "--socket", &socket.display().to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn netctl docker-plugin");
        let stdout = child.stdout.take().expect("piped");
        self.plugin_process = Some(child);
        let first = BufReader::new(stdout).lines().next();
        assert!(
            matches!(&first, Some(Ok(line)) if line.starts_with("listening on")),
            "netctl docker-plugin: {first:?}"
        );
    }

    /// Stops the plugin the way a service manager does (SIGTERM).
    pub fn stop_plugin(&mut self) {
        stop(self.plugin_process.take(), "netctl docker-plugin");
    }

    fn start_dockerd(&mut self) {
        let path = |p: &str| self.root.join(p).display().to_string();
        let args = [
            DOCKERD,
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--storage-driver=overlay2",
            "--data-root",
            &path("data"),
            "--exec-root",
            &path("exec"),
            "--pidfile",
            &path("dockerd.pid"),
            "--config-file",
            &path("daemon.json"),
            "-H",
            &self.api(),
        ];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .expect("dockerd log");
        let child = spawn_in_netns(
            &self.sb.host_netns,
            &args,
            [
                Stdio::null(),
                Stdio::from(log.try_clone().expect("log")),
                Stdio::from(log),
            ],
        );
        self.dockerd = Some(child);
        let started = Instant::now();
        while !self.docker(&["version"]).status.success() {
            assert!(
                started.elapsed() < DOCKERD_TIMEOUT,
                "dockerd not answering after {DOCKERD_TIMEOUT:?}: {}",
                fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd (SIGTERM: its containers live on, `live-restore`)
    /// and starts it again.
    pub fn restart_dockerd(&mut self) {
        stop(self.dockerd.take(), "dockerd");
        self.start_dockerd();
    }

    fn import_image(&self) {
        let rootfs = self.root.join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).expect("rootfs");
        fs::copy(BUSYBOX, bin.join("busybox"))
            .expect("busybox-static (apt-get install busybox-static)");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet");
        }
        fs::copy(nettool_bin(), bin.join("nettool")).expect("nettool");
        for lib in shared_libraries(&nettool_bin()) {
            let inside = rootfs.join(lib.strip_prefix("/").expect("absolute"));
            fs::create_dir_all(inside.parent().expect("dir")).expect("lib dir");
            fs::copy(&lib, &inside).expect("library");
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .docker_command(&["import", "-", IMAGE])
            .stdin(tar.stdout.take().expect("piped"))
            .output()
            .expect("docker import");
        assert!(tar.wait().expect("tar").success(), "tar of the rootfs");
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        // The CLI keeps its config there rather than in ~/.docker.
        cmd.env("DOCKER_CONFIG", self.root.join("cli"))
            .arg("-H")
            .arg(self.api())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the docker CLI against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_command(args).output().expect("run docker")
    }

    /// Runs the docker CLI; its stdout, or a panic with its stderr.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Everything dockerd mounted under the sandbox's root, deepest first.
    fn mounts(&self) -> Vec<String> {
        let root = self.root.display().to_string();
        let mut found: Vec<String> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .map(str::to_owned)
            .collect();
        found.sort_by_key(|m| std::cmp::Reverse(m.len()));
        found
    }
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        // Containers and networks first, while dockerd and the plugin run:
        // Docker's calls take netctl's side apart.
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker(&[&["rm", "-f"], ids.as_slice()].concat());
            }
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        stop(self.dockerd.take(), "dockerd");
        self.stop_plugin();
        let _ = fs::remove_file(&self.spec);
        for mount in self.mounts() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.root);
        remove_cgroups(&self.cgroup_parent());
        for dir in &self.made_dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The cgroup `name` in every hierarchy (v1 controllers and v2), with
/// whatever is left below it, deepest first (cgroups go by rmdir only).
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = fs::read_dir(CGROUPS) else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        remove_cgroup_tree(&hierarchy.path().join(name));
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// SIGTERM, then SIGKILL if it has not exited within [`DOCKERD_TIMEOUT`].
fn stop(child: Option<Child>, what: &str) {
    let Some(mut child) = child else {
        return;
    };
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < DOCKERD_TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{what} ignored SIGTERM for {DOCKERD_TIMEOUT:?}: killed");
    let _ = child.kill();
    let _ = child.wait();
}

/// The libraries `ldd` says a binary loads, the loader included.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}
