//! One sandbox per configuration, made with `ip` like the demo's:
//!
//! ```text
//!   <p>-out netns                          <p>-host netns
//!   <p>-wan 198.51.100.2/24  <-- veth -->  <p>-up 198.51.100.1/24, default route via .2
//! ```
//!
//! `<p>` is `ncb<pid><tag>` (one letter per configuration). Everything the
//! sandbox or the programs it drives make carries `<p>`: namespaces
//! `<p>-*`, the cgroup `<cgroup2>/<p>`, netctl's state dir
//! `/run/netctl/<p>-host` and hosts files `/etc/netns/<p>-*`, the peers'
//! files under `<tmp>/<p>`. Drop removes all of it, also after a failure.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    cmd::{display, read, read_echoed, run, succeeds},
    deps::mounts_of_type,
};

use crate::sandbox::{kill_all, remove_cgroup};
pub use crate::sandbox::{HOST_IP, OUTSIDE_IP};
pub const PREFIX_START: &str = "ncb";

/// A command to run (best effort) before the namespaces go: a peer's
/// DEL or teardown.
pub struct Cleanup {
    pub cmd: Command,
    pub stdin: Option<String>,
}

pub struct Sandbox {
    pub prefix: String,
    pub host: String,
    pub out: String,
    uplink: String,
    wan: String,
    pub cgroup: PathBuf,
    /// Files of the peers (CNI dataDir, netavark config).
    pub tmp: PathBuf,
    pub netctl_bin: Option<PathBuf>,
    children: Vec<Child>,
    pub cleanups: Vec<Cleanup>,
}

impl Sandbox {
    /// Builds the sandbox; a failure half-way is torn down by Drop.
    pub fn new(prefix: &str, netctl_bin: Option<PathBuf>) -> Result<Self> {
        let cgroup_root = mounts_of_type("cgroup2")
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no cgroup2 filesystem mounted"))?;
        let sb = Sandbox {
            prefix: prefix.to_owned(),
            host: format!("{prefix}-host"),
            out: format!("{prefix}-out"),
            uplink: format!("{prefix}-up"),
            wan: format!("{prefix}-wan"),
            cgroup: cgroup_root.join(prefix),
            tmp: std::env::temp_dir().join(prefix),
            netctl_bin,
            children: Vec::new(),
            cleanups: Vec::new(),
        };
        sb.build()?;
        Ok(sb)
    }

    fn build(&self) -> Result<()> {
        crate::sandbox::build_uplink(&self.host, &self.out, &self.uplink, &self.wan)?;
        println!("$ mkdir {} {}", self.cgroup.display(), self.tmp.display());
        std::fs::create_dir(&self.cgroup)
            .with_context(|| format!("mkdir {}", self.cgroup.display()))?;
        std::fs::create_dir(&self.tmp).with_context(|| format!("mkdir {}", self.tmp.display()))?;
        client_sysctls(&self.out)
    }

    /// The netctl binary bound to this sandbox.
    pub fn netctl(&self, args: &[&str]) -> Command {
        let bin = self.netctl_bin.as_deref().expect("a netctl configuration");
        let mut cmd = Command::new(bin);
        cmd.arg("--host-netns")
            .arg(&self.host)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts a server in `ns` and waits (at most 5 s) until it listens on
    /// `port` (`proto` "tcp" or "udp"). Killed by Drop, or earlier with
    /// [`Sandbox::stop`].
    pub fn spawn_server(
        &mut self,
        ns: &str,
        proto: &str,
        port: u16,
        program: &[&str],
    ) -> Result<usize> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!("$ {} &", display(&cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", display(&cmd)))?;
        self.children.push(child);
        let index = self.children.len() - 1;
        let filter = format!("sport = :{port}");
        let ss_flags = if proto == "udp" { "-Hlun" } else { "-Hltn" };
        for _ in 0..50 {
            let listening =
                read(Command::new("ip").args(["netns", "exec", ns, "ss", ss_flags, &filter]))
                    .unwrap_or_default();
            if !listening.trim().is_empty() {
                return Ok(index);
            }
            if let Ok(Some(status)) = self.children[index].try_wait() {
                bail!("`{}` exited ({status})", display(&cmd));
            }
            sleep(Duration::from_millis(100));
        }
        bail!(
            "`{}` does not listen on port {port} after 5 s",
            display(&cmd)
        )
    }

    /// Kills a server started by [`Sandbox::spawn_server`].
    pub fn stop(&mut self, index: usize) {
        if let Some(child) = self.children.get_mut(index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Client side of the load runs: many short connections to one address.
/// TIME_WAIT sockets may be reused (timestamps are on) and the ephemeral
/// range is wider than the default. Only the namespace `ns` is touched.
pub fn client_sysctls(ns: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=10000 65000",
    ]))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for cleanup in self.cleanups.drain(..).rev() {
            let Cleanup { mut cmd, stdin } = cleanup;
            println!("$ {}", display(&cmd));
            let spawned = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            let Ok(mut child) = spawned else { continue };
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                let _ = pipe.write_all(text.as_bytes());
            }
            match child.wait_with_output() {
                Ok(o) if !o.status.success() => eprintln!(
                    "  (failed, {}: {})",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                _ => {}
            }
        }
        if let Err(e) = teardown(&self.prefix, self.netctl_bin.as_deref()) {
            eprintln!("teardown of {}: {e:#}", self.prefix);
        }
    }
}

/// The namespaces whose names start with `<prefix>-`.
fn namespaces(prefix: &str) -> Vec<String> {
    read(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// Removes everything of the sandbox `prefix`; keeps going after errors.
pub fn teardown(prefix: &str, netctl_bin: Option<&Path>) -> Result<()> {
    if prefix
        .strip_prefix(PREFIX_START)
        .is_none_or(|rest| rest.len() < 2)
    {
        bail!("{prefix:?} is not a bench sandbox prefix");
    }
    println!("-- teardown of sandbox {prefix}");
    let host = format!("{prefix}-host");
    let cgroup = mounts_of_type("cgroup2")
        .into_iter()
        .next()
        .map(|root| root.join(prefix));
    let mut errors: Vec<String> = Vec::new();
    if let Some(bin) = netctl_bin.filter(|_| namespaces(prefix).contains(&host)) {
        let mut down = Command::new(bin);
        down.args(["--host-netns", &host]);
        if let Some(cgroup) = &cgroup {
            down.arg("--cgroup").arg(cgroup);
        }
        if let Err(e) = read_echoed(down.arg("down")) {
            errors.push(format!("netctl down: {e:#}"));
        }
    }
    for ns in namespaces(prefix) {
        let pids = read(Command::new("ip").args(["netns", "pids", &ns])).unwrap_or_default();
        kill_all(&pids);
    }
    if let Some(cgroup) = cgroup.as_deref().filter(|c| c.exists()) {
        if let Err(e) = remove_cgroup(cgroup) {
            errors.push(format!("cgroup: {e:#}"));
        }
    }
    let uplink = format!("{prefix}-up");
    if succeeds(Command::new("ip").args(["-n", &host, "link", "show", &uplink])) {
        let _ = read(Command::new("ip").args(["-n", &host, "link", "del", &uplink]));
    }
    for ns in namespaces(prefix) {
        if let Err(e) = read(Command::new("ip").args(["netns", "del", &ns])) {
            errors.push(format!("netns {ns}: {e:#}"));
        }
    }
    let mut dirs = vec![
        Path::new("/run/netctl").join(&host),
        std::env::temp_dir().join(prefix),
    ];
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        dirs.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}-"))
                })
                .map(|e| e.path()),
        );
    }
    for dir in dirs.iter().filter(|d| d.exists()) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            errors.push(format!("rm -r {}: {e}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}
