//! The sandbox the demo and the bench run in, made with `ip`:
//!
//! ```text
//!   <p>-out netns ("the internet")         <p>-host netns (netctl --host-netns)
//!   <p>-wan 198.51.100.2/24  <-- veth -->  <p>-up 198.51.100.1/24, default route via .2
//! ```
//!
//! plus a cgroup v2 directory `<cgroup2 mount>/<p>` (netctl's `--cgroup`).
//! `<p>` is `ncd<pid>` for the demo and `ncb<pid><letter>` for the bench
//! (one letter per configuration): short, so that `<p>-wan` fits in
//! IFNAMSIZ. Everything the sandbox or the programs it drives make carries
//! `<p>`: namespaces `<p>-*`, netctl's state dir `/run/netctl/<p>-host` and
//! hosts files `/etc/netns/<p>-*`, scratch files under `<tmp>/<p>`. Drop
//! removes all of it, also after a failure, and a Ctrl-C makes the next
//! [`checkpoint`] fail so that Drop runs; the teardown keeps going past
//! errors and reports them all. The root network namespace is never changed.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use crate::{
    cmd::{display, read, read_echoed, run, step, succeeds},
    deps::mounts_of_type,
};

/// The host's uplink address (SNAT source) and the outside peer's.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PREFIX_LEN: u8 = 24;
/// The demo's prefixes are `ncd<pid>`, the bench's `ncb<pid><letter>`.
pub const DEMO_PREFIX: &str = "ncd";
pub const BENCH_PREFIX: &str = "ncb";
/// How long a server may take to listen.
const LISTEN_TIMEOUT_TENTHS: u32 = 50;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler: it only raises a flag, which the next
/// [`checkpoint`] turns into an error, so that the sandboxes' Drop tears
/// them down. (The command running in the foreground gets the Ctrl-C too,
/// and fails.) `what` names what is torn down, for the message.
pub fn tear_down_on_ctrl_c(what: &'static str) -> Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: tearing {what} down");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")
}

/// Fails once Ctrl-C was pressed; called between steps.
pub fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

/// A command to run (best effort) before the namespaces go: a peer's
/// DEL or teardown.
pub struct Cleanup {
    pub cmd: Command,
    pub stdin: Option<String>,
}

/// What dropping the sandbox does.
pub enum OnDrop {
    /// Stop its servers and remove everything.
    Remove,
    /// Leave everything in place, servers running, and call this to say
    /// how to look around and how to remove it.
    Keep(fn(&Sandbox)),
}

pub struct Sandbox {
    pub prefix: String,
    /// The host namespace (netctl's `--host-netns`).
    pub host: String,
    /// The outside namespace ("the internet").
    pub out: String,
    pub cgroup: PathBuf,
    netctl_bin: Option<PathBuf>,
    children: Vec<Child>,
    cleanups: Vec<Cleanup>,
    on_drop: OnDrop,
}

impl Sandbox {
    /// Builds the sandbox `prefix`; a failure half-way is handled by Drop
    /// like the rest. `netctl_bin`: the netctl that drives it, if any (its
    /// `down` is the first step of the teardown).
    pub fn new(prefix: &str, netctl_bin: Option<PathBuf>, on_drop: OnDrop) -> Result<Self> {
        ensure!(
            is_sandbox_prefix(prefix),
            "{prefix:?} is not a sandbox prefix"
        );
        let sandbox = Sandbox {
            prefix: prefix.to_owned(),
            host: format!("{prefix}-host"),
            out: format!("{prefix}-out"),
            cgroup: cgroup_of(prefix)?,
            netctl_bin,
            children: Vec::new(),
            cleanups: Vec::new(),
            on_drop,
        };
        sandbox.build()?;
        Ok(sandbox)
    }

    /// Both namespaces and the veth pair between them, addresses, lo up,
    /// the host's default route through the outside, and the cgroup.
    fn build(&self) -> Result<()> {
        let (host, out) = (self.host.as_str(), self.out.as_str());
        let (uplink, wan) = (uplink_of(&self.prefix), format!("{}-wan", self.prefix));
        run(Command::new("ip").args(["netns", "add", host]))?;
        run(Command::new("ip").args(["netns", "add", out]))?;
        run(Command::new("ip")
            .args(["-n", host, "link", "add", &uplink, "type", "veth"])
            .args(["peer", "name", &wan, "netns", out]))?;
        for (ns, dev, ip) in [(host, &uplink, HOST_IP), (out, &wan, OUTSIDE_IP)] {
            let cidr = format!("{ip}/{PREFIX_LEN}");
            run(Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        let gateway = OUTSIDE_IP.to_string();
        run(Command::new("ip").args(["-n", host, "route", "add", "default", "via", &gateway]))?;
        println!("$ mkdir {}", self.cgroup.display());
        std::fs::create_dir(&self.cgroup)
            .with_context(|| format!("mkdir {}", self.cgroup.display()))
    }

    /// The netctl binary bound to this sandbox (global options first).
    pub fn netctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.netctl_bin().expect("a sandbox driven by netctl"));
        cmd.arg("--host-netns")
            .arg(&self.host)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn netctl_bin(&self) -> Option<&Path> {
        self.netctl_bin.as_deref()
    }

    /// The address of container `name` on `network`, as `netctl container
    /// inspect` reports it.
    pub fn container_ip(&self, name: &str, network: &str) -> Result<Ipv4Addr> {
        let json =
            read_echoed(&mut self.netctl(&["--format", "json", "container", "inspect", name]))?;
        endpoint_ip(&json, network).with_context(|| format!("container {name}"))
    }

    /// The namespace netctl made for container `name`.
    pub fn container_netns(&self, name: &str) -> String {
        format!("{}-{name}", self.host)
    }

    /// Files of the programs the sandbox drives (CNI dataDir, netavark
    /// config), made on first use.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = scratch_of(&self.prefix);
        if !dir.exists() {
            println!("$ mkdir {}", dir.display());
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        Ok(dir)
    }

    /// Queues a command for the teardown (run in reverse order, before the
    /// namespaces go).
    pub fn on_teardown(&mut self, cleanup: Cleanup) {
        self.cleanups.push(cleanup);
    }

    /// Starts a server in `ns` and waits until it listens on `port`
    /// (`proto` "tcp" or "udp"). Stopped by Drop, or earlier with
    /// [`Sandbox::stop`] given the index returned.
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
            // Not our stdout or stderr: a kept sandbox's server outlives
            // xtask and would hold the terminal, or a pipe, open.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        println!("$ {} &", display(&cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", display(&cmd)))?;
        self.children.push(child);
        let index = self.children.len() - 1;
        let child = &mut self.children[index];
        wait_listening(ns, proto, port, || match child.try_wait() {
            Ok(Some(status)) => bail!("`{}` exited ({status})", display(&cmd)),
            _ => Ok(()),
        })
        .with_context(|| format!("`{}`", display(&cmd)))?;
        Ok(index)
    }

    /// Waits until something in `ns` listens on `port` (a server started
    /// by another program, such as netctl's detached container command).
    pub fn wait_listening(&self, ns: &str, proto: &str, port: u16) -> Result<()> {
        wait_listening(ns, proto, port, || Ok(()))
    }

    /// Stops a server started by [`Sandbox::spawn_server`].
    pub fn stop(&mut self, index: usize) {
        if let Some(child) = self.children.get_mut(index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `ss` in `ns` (every 100 ms, for up to 5 s) until a socket listens
/// on `port`; `alive` fails when the server is known to be gone.
fn wait_listening(
    ns: &str,
    proto: &str,
    port: u16,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let filter = format!("sport = :{port}");
    let ss_flags = if proto == "udp" { "-Hlun" } else { "-Hltn" };
    for _ in 0..LISTEN_TIMEOUT_TENTHS {
        let listening =
            read(Command::new("ip").args(["netns", "exec", ns, "ss", ss_flags, &filter]))
                .unwrap_or_default();
        if !listening.trim().is_empty() {
            return Ok(());
        }
        alive()?;
        sleep(Duration::from_millis(100));
    }
    bail!(
        "nothing listens on {proto} port {port} in {ns} after {} s",
        LISTEN_TIMEOUT_TENTHS / 10
    )
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let OnDrop::Keep(note) = self.on_drop {
            note(self);
            return;
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        step(&format!("teardown of sandbox {}", self.prefix));
        for cleanup in self.cleanups.drain(..).rev() {
            run_cleanup(cleanup);
        }
        if let Err(e) = remove_all(&self.prefix, self.netctl_bin.as_deref()) {
            eprintln!("teardown of {}: {e:#}", self.prefix);
        }
    }
}

/// Runs a queued cleanup, feeding it its stdin; a failure is printed.
fn run_cleanup(Cleanup { mut cmd, stdin }: Cleanup) {
    println!("$ {}", display(&cmd));
    let spawned = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else { return };
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

/// `ncd<pid>` or `ncb<pid><letter>`: what [`teardown`] accepts, so that it
/// can never be pointed at namespaces that are not a sandbox's.
pub fn is_sandbox_prefix(prefix: &str) -> bool {
    let digits_then = |rest: &str, letter: bool| {
        let pid = if letter {
            match rest.strip_suffix(|c: char| c.is_ascii_lowercase()) {
                Some(pid) => pid,
                None => return false,
            }
        } else {
            rest
        };
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(rest) = prefix.strip_prefix(DEMO_PREFIX) {
        digits_then(rest, false)
    } else if let Some(rest) = prefix.strip_prefix(BENCH_PREFIX) {
        digits_then(rest, true)
    } else {
        false
    }
}

fn cgroup_of(prefix: &str) -> Result<PathBuf> {
    let root = mounts_of_type("cgroup2")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no cgroup2 filesystem mounted"))?;
    Ok(root.join(prefix))
}

fn uplink_of(prefix: &str) -> String {
    format!("{prefix}-up")
}

fn scratch_of(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(prefix)
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

/// Removes everything of the sandbox `prefix` (also what a kept sandbox
/// left): `netctl down` when `netctl_bin` is given, the processes left in
/// its namespaces and cgroup, the cgroup, the uplink, the namespaces, the
/// state dir, hosts files and scratch files. Keeps going after errors and
/// reports them all.
pub fn teardown(prefix: &str, netctl_bin: Option<&Path>) -> Result<()> {
    ensure!(
        is_sandbox_prefix(prefix),
        "{prefix:?} is not a sandbox prefix"
    );
    step(&format!("teardown of sandbox {prefix}"));
    remove_all(prefix, netctl_bin)
}

/// [`teardown`] after its check and header (a sandbox's Drop runs its
/// queued cleanups in between).
fn remove_all(prefix: &str, netctl_bin: Option<&Path>) -> Result<()> {
    let host = format!("{prefix}-host");
    let cgroup = cgroup_of(prefix).ok();
    let mut errors: Vec<String> = Vec::new();
    let mut attempt = |what: &str, result: Result<()>| {
        if let Err(e) = result {
            errors.push(format!("{what}: {e:#}"));
        }
    };
    if let Some(bin) = netctl_bin.filter(|_| namespaces(prefix).contains(&host)) {
        let mut down = Command::new(bin);
        down.args(["--host-netns", &host]);
        if let Some(cgroup) = &cgroup {
            down.arg("--cgroup").arg(cgroup);
        }
        attempt("netctl down", run(down.arg("down").stdin(Stdio::null())));
    }
    // Whatever still runs in the sandbox: its namespaces and its cgroup.
    for ns in namespaces(prefix) {
        let pids = read(Command::new("ip").args(["netns", "pids", &ns])).unwrap_or_default();
        kill_all(&pids);
    }
    if let Some(cgroup) = cgroup.as_deref().filter(|c| c.exists()) {
        attempt("cgroup", remove_cgroup(cgroup));
    }
    let uplink = uplink_of(prefix);
    if succeeds(Command::new("ip").args(["-n", &host, "link", "show", &uplink])) {
        attempt(
            "uplink veth",
            run(Command::new("ip").args(["-n", &host, "link", "del", &uplink])),
        );
    }
    for ns in namespaces(prefix) {
        attempt(
            &format!("netns {ns}"),
            run(Command::new("ip").args(["netns", "del", &ns])),
        );
    }
    let mut dirs = vec![Path::new("/run/netctl").join(&host), scratch_of(prefix)];
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
        println!("$ rm -r {}", dir.display());
        attempt(
            &format!("rm -r {}", dir.display()),
            std::fs::remove_dir_all(dir).map_err(Into::into),
        );
    }
    if errors.is_empty() {
        println!("sandbox {prefix} removed");
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// SIGKILLs every pid in a whitespace-separated list (a cgroup.procs file).
fn kill_all(pids: &str) {
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        println!("$ kill -9 {pid}");
        // SAFETY: kill(2) with a pid read from our own sandbox; no memory involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills the cgroup's processes and removes it (it empties asynchronously,
/// so the removal is retried for up to a second).
fn remove_cgroup(cgroup: &Path) -> Result<()> {
    kill_all(&std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default());
    println!("$ rmdir {}", cgroup.display());
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "rmdir {}: {}",
        cgroup.display(),
        last.expect("tried")
    ))
}

/// A container's address on `network`, from `container inspect` JSON (one
/// object or a list of them).
fn endpoint_ip(json: &str, network: &str) -> Result<Ipv4Addr> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("inspect output is not JSON")?;
    let ctr = match &value {
        serde_json::Value::Array(list) => {
            list.first().ok_or_else(|| anyhow!("empty inspect list"))?
        }
        other => other,
    };
    let endpoint = ctr["endpoints"]
        .as_array()
        .ok_or_else(|| anyhow!("no endpoints in inspect output"))?
        .iter()
        .find(|e| e["network"] == network)
        .ok_or_else(|| anyhow!("no endpoint on network {network}"))?;
    let ip = endpoint["ip"]
        .as_str()
        .ok_or_else(|| anyhow!("endpoint without ip"))?;
    let ip = ip.split('/').next().unwrap_or(ip);
    ip.parse().with_context(|| format!("bad address {ip:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_endpoint_address() {
        let one = r#"{"name":"a","mode":{"mode":"bridge"},"netns":"x","endpoints":[
            {"network":"other","ifname":"eth1","ip":"10.0.0.2"},
            {"network":"demo","ifname":"eth0","host_veth":"v","ip":"172.18.0.2","mac":"02:42:ac:12:00:02"}],
            "ports":[]}"#;
        assert_eq!(
            endpoint_ip(one, "demo").unwrap(),
            Ipv4Addr::new(172, 18, 0, 2)
        );
        let list = r#"[{"endpoints":[{"network":"demo","ip":"172.18.0.3/16"}]}]"#;
        assert_eq!(
            endpoint_ip(list, "demo").unwrap(),
            Ipv4Addr::new(172, 18, 0, 3)
        );
        assert!(endpoint_ip(list, "nope").is_err());
        assert!(endpoint_ip("not json", "demo").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(is_sandbox_prefix("ncd123"));
        assert!(is_sandbox_prefix("ncb123e"));
        assert!(!is_sandbox_prefix("ncd"));
        assert!(!is_sandbox_prefix("ncd12x"));
        assert!(!is_sandbox_prefix("ncb123"));
        assert!(!is_sandbox_prefix("ncbe"));
        assert!(!is_sandbox_prefix("nt1x0"));
        assert!(!is_sandbox_prefix(""));
    }

    #[test]
    fn interface_names_fit() {
        // pid_max is at most 2^22 (7 digits); IFNAMSIZ leaves 15 characters.
        for prefix in ["ncd4194304", "ncb4194304v"] {
            assert!(is_sandbox_prefix(prefix));
            assert!(format!("{prefix}-wan").len() <= 15);
        }
    }
}
