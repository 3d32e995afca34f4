//! A sandbox per test: a host namespace (passed to netctl with
//! `--host-netns`), an "outside" namespace on TEST-NET addresses linked to it
//! by a veth pair (the uplink), and a cgroup of its own. Everything carries a
//! unique prefix and is removed when the `Sandbox` drops, also when the test
//! panics. The root namespace is never changed.
//!
//! Dropping a sandbox is also a leak check of netctl itself (leftovers.rs):
//! `netctl down` must succeed and leave nothing of what netctl made, and a
//! test that passed fails if it did not. Probes that tell a datapath drop
//! from a refusal, and the drop counters to attribute them, are in
//! probe.rs.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use netctl::{netlink::Netlink, netns};

mod leftovers;
pub mod probe;

/// The host's uplink address (SNAT source) and the outside peer's.
pub const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The same two ends' IPv6 addresses in a dual-stack sandbox
/// ([`Sandbox::dual_stack`]; 2001:db8::/32 is IPv6's documentation range).
pub const HOST_UPLINK_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const UPLINK: &str = "uplink0";
const WAN: &str = "wan0";
/// A second host interface ([`Sandbox::add_lan`]) and its peer, in a "LAN"
/// namespace on another TEST-NET range.
pub const HOST_LAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const LAN: &str = "lan0";
const LAN_PEER: &str = "lan1";

pub struct Sandbox {
    pub prefix: String,
    pub host_netns: String,
    pub outside_netns: String,
    pub cgroup: PathBuf,
    pub state_dir: PathBuf,
    pub datapath: String,
    children: Vec<Child>,
}

/// Directory holding the workspace's binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

pub fn netctl_bin() -> PathBuf {
    let path = std::env::var_os("NETCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("netctl"));
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p netctl` (cargo xtask test does)",
        path.display()
    );
    path
}

/// The traffic tool of this crate (built with its integration tests).
pub fn nettool_bin() -> PathBuf {
    bin_dir().join("nettool")
}

/// Runs `call` until it succeeds, bounded to ~3 s (a server may still be
/// starting); returns its stdout, or panics with the last stderr.
pub fn call_until_answer(mut call: impl FnMut() -> Output) -> String {
    let mut last = String::new();
    for _ in 0..30 {
        let out = call();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no answer: {last}");
}

/// Mount point of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Sandbox {
    pub fn new(datapath: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("nt{:x}x{n}", std::process::id());
        let host_netns = format!("{prefix}-host");
        let sandbox = Sandbox {
            outside_netns: format!("{prefix}-out"),
            cgroup: cgroup2_root().join(&prefix),
            state_dir: PathBuf::from("/run/netctl").join(&host_netns),
            host_netns,
            prefix,
            datapath: datapath.to_owned(),
            children: Vec::new(),
        };
        crate::ledger::record("made", &sandbox.prefix);
        // Built after the struct exists, so a failure half-way is cleaned by Drop.
        sandbox
            .build()
            .unwrap_or_else(|e| panic!("sandbox {}: {e}", sandbox.prefix));
        sandbox
    }

    fn build(&self) -> netctl::error::Result<()> {
        netns::create(&self.host_netns)?;
        netns::create(&self.outside_netns)?;
        fs::create_dir(&self.cgroup).map_err(|e| netctl::error::Error::io("sandbox cgroup", e))?;
        runtime().block_on(async {
            let host = Netlink::connect_in(&self.host_netns)?;
            let outside = Netlink::connect_in(&self.outside_netns)?;
            host.add_veth(UPLINK, WAN).await?;
            let wan = host.index(WAN).await?;
            host.move_to_netns(wan, &netns::open(&self.outside_netns)?, &self.outside_netns)
                .await?;
            for (nl, ifname, ip) in [(&host, UPLINK, HOST_UPLINK_IP), (&outside, WAN, OUTSIDE_IP)] {
                let lo = nl.index("lo").await?;
                nl.set_up(lo).await?;
                let index = nl.index(ifname).await?;
                nl.add_address(index, ip, 24).await?;
                nl.set_up(index).await?;
            }
            host.add_default_route(OUTSIDE_IP).await
        })
    }

    /// The "LAN" namespace's name (made by [`Sandbox::add_lan`]).
    pub fn lan_netns(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    /// Gives the host a second interface, `lan0` ([`HOST_LAN_IP`]/24), to a
    /// "LAN" namespace (`lan1`, [`LAN_IP`]/24) with no route beyond its
    /// own subnet. Removed with the sandbox (its namespace carries the
    /// prefix). Returns the LAN namespace's name.
    pub fn add_lan(&self) -> String {
        let lan = self.lan_netns();
        let built: netctl::error::Result<()> = (|| {
            netns::create(&lan)?;
            runtime().block_on(async {
                let host = Netlink::connect_in(&self.host_netns)?;
                let other = Netlink::connect_in(&lan)?;
                host.add_veth(LAN, LAN_PEER).await?;
                let peer = host.index(LAN_PEER).await?;
                host.move_to_netns(peer, &netns::open(&lan)?, &lan).await?;
                let lo = other.index("lo").await?;
                other.set_up(lo).await?;
                for (nl, ifname, ip) in [(&host, LAN, HOST_LAN_IP), (&other, LAN_PEER, LAN_IP)] {
                    let index = nl.index(ifname).await?;
                    nl.add_address(index, ip, 24).await?;
                    nl.set_up(index).await?;
                }
                Ok(())
            })
        })();
        built.unwrap_or_else(|e| panic!("sandbox {}: LAN: {e}", self.prefix));
        lan
    }

    /// In namespace `netns_name`: a route to `destination/prefix` via
    /// `gateway` (the LAN reaching the containers' subnet by the host).
    pub fn add_route_in(
        &self,
        netns_name: &str,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) {
        runtime()
            .block_on(async {
                Netlink::connect_in(netns_name)?
                    .add_route(destination, prefix, gateway)
                    .await
            })
            .unwrap_or_else(|e| panic!("route in {netns_name}: {e}"));
    }

    /// Renumbers the host's uplink while everything runs, as a DHCP client
    /// would: [`HOST_UPLINK_IP`] removed (which takes the default route with
    /// it), `new`/24 added, the default route put back. (Added first, `new`
    /// would be a secondary address of the same subnet, removed with the
    /// primary unless `promote_secondaries` is set.)
    pub fn renumber_uplink(&self, new: Ipv4Addr) {
        runtime()
            .block_on(async {
                let host = Netlink::connect_in(&self.host_netns)?;
                let index = host.index(UPLINK).await?;
                host.delete_address(index, HOST_UPLINK_IP, 24).await?;
                host.add_address(index, new, 24).await?;
                host.add_default_route(OUTSIDE_IP).await
            })
            .unwrap_or_else(|e| panic!("renumbering {UPLINK}: {e}"));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(netctl_bin());
        cmd.arg("--host-netns")
            .arg(&self.host_netns)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// A sandbox whose uplink carries IPv6 too: 2001:db8::1/64 on the
    /// host's end (default route via the outside's 2001:db8::2/64), for
    /// dual-stack networks. Duplicate address detection is off on both
    /// ends so that the addresses work at once.
    pub fn dual_stack(datapath: &str) -> Self {
        let sandbox = Sandbox::new(datapath);
        sandbox
            .add_ipv6()
            .unwrap_or_else(|e| panic!("sandbox {}: IPv6: {e}", sandbox.prefix));
        sandbox
    }

    fn add_ipv6(&self) -> netctl::error::Result<()> {
        for (ns, ifname) in [(&self.host_netns, UPLINK), (&self.outside_netns, WAN)] {
            let ns = ns.clone();
            std::thread::spawn(move || {
                let _inside = netns::NetnsGuard::enter(&ns)?;
                netns::write_sysctl(&format!("net.ipv6.conf.{ifname}.accept_dad"), "0")?;
                netns::write_sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "0")
            })
            .join()
            .expect("thread")?;
        }
        runtime().block_on(async {
            let host = Netlink::connect_in(&self.host_netns)?;
            let outside = Netlink::connect_in(&self.outside_netns)?;
            for (nl, ifname, ip) in [
                (&host, UPLINK, HOST_UPLINK_IP6),
                (&outside, WAN, OUTSIDE_IP6),
            ] {
                let index = nl.index(ifname).await?;
                nl.add_address(index, ip, 64).await?;
            }
            host.add_default_route6(OUTSIDE_IP6).await
        })
    }

    /// A netctl command against this sandbox's host, to configure (stdio,
    /// spawn) before running it.
    pub fn netctl_command(&self, args: &[&str]) -> Command {
        self.command(args)
    }

    /// Runs netctl against this sandbox's host.
    pub fn netctl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run netctl")
    }

    /// Runs netctl and returns its stdout; panics with its stderr on failure.
    pub fn netctl_ok(&self, args: &[&str]) -> String {
        let out = self.netctl(args);
        assert!(
            out.status.success(),
            "netctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs netctl expecting failure; returns (exit code, stderr).
    pub fn netctl_err(&self, args: &[&str]) -> (i32, String) {
        let out = self.netctl(args);
        assert!(
            !out.status.success(),
            "netctl {} succeeded but should fail",
            args.join(" ")
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Gives the sandbox's host a resolver configuration of its own,
    /// `/etc/netns/HOST/resolv.conf` (the `ip netns` convention netctl
    /// reads with `--host-netns`); removed on drop, before the leak check.
    pub fn host_resolv_conf(&self, text: &str) {
        let dir = Path::new(netctl::hosts::ETC_NETNS).join(&self.host_netns);
        fs::create_dir_all(&dir).expect("/etc/netns/HOST");
        fs::write(dir.join("resolv.conf"), text).expect("host resolv.conf");
    }

    /// Creates a network on this sandbox's datapath.
    pub fn network(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["network", "create", name, "--datapath", &self.datapath];
        args.extend_from_slice(extra);
        self.netctl_ok(&args);
    }

    /// Container JSON from `container inspect`.
    pub fn inspect(&self, container: &str) -> serde_json::Value {
        let text = self.netctl_ok(&["--format", "json", "container", "inspect", container]);
        let value: serde_json::Value = serde_json::from_str(&text).expect("inspect json");
        value[0].clone()
    }

    /// A container's namespace (for probes run in it directly).
    pub fn netns_of(&self, container: &str) -> String {
        let ctr = self.inspect(container);
        ctr["netns"]
            .as_str()
            .unwrap_or_else(|| panic!("{container} has no namespace: {ctr}"))
            .to_owned()
    }

    /// A container's address on a network.
    pub fn ip_of(&self, container: &str, network: &str) -> Ipv4Addr {
        let ctr = self.inspect(container);
        let endpoints = ctr["endpoints"].as_array().expect("endpoints");
        endpoints
            .iter()
            .find(|e| e["network"] == network)
            .and_then(|e| e["ip"].as_str())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("{container} has no address on {network}"))
    }

    /// A container's IPv6 address on a dual-stack network.
    pub fn ip6_of(&self, container: &str, network: &str) -> Ipv6Addr {
        let ctr = self.inspect(container);
        let endpoints = ctr["endpoints"].as_array().expect("endpoints");
        endpoints
            .iter()
            .find(|e| e["network"] == network)
            .and_then(|e| e["ip6"].as_str())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("{container} has no IPv6 address on {network}: {ctr}"))
    }

    /// Runs a command in a container through `netctl exec`.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", container, "--"];
        args.extend_from_slice(argv);
        self.netctl(&args)
    }

    /// Whether one ping from container `from` to `to` is answered.
    pub fn pings(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c1", "-W1", to])
            .status
            .success()
    }

    /// A network `front` (172.18.0.0/16) with containers `web` (serving
    /// tcp/80 with `nettool serve`, published on 8080) and `a`.
    pub fn front_with_web(&self) {
        self.network("front", &["--subnet", "172.18.0.0/16"]);
        let tool = nettool_bin().display().to_string();
        self.netctl_ok(&[
            "container",
            "run",
            "web",
            "--network",
            "front",
            "-p",
            "8080:80",
            "--",
            &tool,
            "serve",
            "tcp",
            "80",
        ]);
        self.netctl_ok(&["container", "run", "a", "--network", "front"]);
    }

    /// Runs a command in a namespace of the sandbox (setns in a thread of
    /// its own; the child inherits it).
    pub fn run_in(&self, netns_name: &str, argv: &[&str]) -> Output {
        let netns_name = netns_name.to_owned();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let _guard = netns::NetnsGuard::enter(&netns_name).expect("enter netns");
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .expect("run")
        })
        .join()
        .expect("thread")
    }

    pub fn outside(&self, argv: &[&str]) -> Output {
        self.run_in(&self.outside_netns, argv)
    }

    pub fn in_host(&self, argv: &[&str]) -> Output {
        self.run_in(&self.host_netns, argv)
    }

    /// Starts a long-running process in a namespace of the sandbox; killed on drop.
    pub fn spawn_in(&mut self, netns_name: &str, argv: &[&str]) {
        let child = spawn_in_netns(
            netns_name,
            argv,
            [Stdio::null(), Stdio::null(), Stdio::null()],
        );
        self.children.push(child);
    }

    /// Runs a command in a namespace of the sandbox and returns its stdout;
    /// panics unless it exits 0 (a failed read must not pass for "empty").
    pub fn run_in_ok(&self, netns_name: &str, argv: &[&str]) -> String {
        let out = self.run_in(netns_name, argv);
        assert!(
            out.status.success(),
            "{} in {netns_name} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts listeners or captures in namespaces of the sandbox, all at
    /// once (their time windows run together), and returns once each
    /// printed its `listening on ...` line (its socket is bound): what is
    /// sent after this reaches them. No sleep to guess it.
    pub fn start_all_ready(&self, starts: &[(&str, Vec<&str>)]) -> Vec<Ready> {
        let mut all: Vec<Ready> = starts
            .iter()
            .map(|(netns_name, argv)| self.start(netns_name, argv))
            .collect();
        all.iter_mut().for_each(Ready::wait_ready);
        all
    }

    /// Starts a process with its stdio piped, not waiting for it.
    fn start(&self, netns_name: &str, argv: &[&str]) -> Ready {
        let what = format!("{} in {netns_name}", argv.join(" "));
        let mut child = spawn_in_netns(
            netns_name,
            argv,
            [Stdio::piped(), Stdio::piped(), Stdio::piped()],
        );
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let rest = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            lines.map(|l| l + "\n").collect::<String>()
        });
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ready {
            what,
            first_line: rx,
            stdin: child.stdin.take(),
            child: Some(child),
            rest: Some(rest),
            errors: Some(errors),
        }
    }

    /// Rules of the host namespace as `iptables-save` prints them.
    pub fn iptables_save(&self) -> String {
        self.run_in_ok(&self.host_netns, &["iptables-save"])
    }

    /// Rules of the host namespace as `ip6tables-save` prints them.
    pub fn ip6tables_save(&self) -> String {
        self.run_in_ok(&self.host_netns, &["ip6tables-save"])
    }

    /// One table of the host namespace with packet and byte counters
    /// (`iptables-save -c -t TABLE`).
    pub fn iptables_save_counters(&self, table: &str) -> String {
        self.run_in_ok(&self.host_netns, &["iptables-save", "-c", "-t", table])
    }

    /// The host namespace's nftables ruleset (`nft list ruleset`).
    pub fn nft_ruleset(&self) -> String {
        self.run_in_ok(&self.host_netns, &["nft", "list", "ruleset"])
    }

    /// Names of the links in the host namespace, sorted.
    pub fn host_links(&self) -> Vec<String> {
        let host_netns = self.host_netns.clone();
        std::thread::spawn(move || {
            runtime().block_on(async {
                let nl = Netlink::connect_in(&host_netns).expect("netlink");
                let mut names: Vec<String> = nl
                    .links()
                    .await
                    .expect("links")
                    .into_iter()
                    .map(|l| l.name)
                    .collect();
                names.sort();
                names
            })
        })
        .join()
        .expect("thread")
    }

    /// A path under this host's bpffs pin directory.
    pub fn pin_path(&self, relative: &str) -> String {
        format!("/sys/fs/bpf/netctl/{}/{relative}", self.host_netns)
    }

    /// Everything pinned for this host (eBPF datapath), relative, sorted.
    pub fn pins(&self) -> Vec<String> {
        let root = PathBuf::from(self.pin_path(""));
        let mut found = Vec::new();
        for sub in ["maps", "progs", "links"] {
            if let Ok(dir) = fs::read_dir(root.join(sub)) {
                found.extend(
                    dir.flatten()
                        .map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())),
                );
            }
        }
        found.sort();
        found
    }

    /// The entries of one pinned map as `bpftool` prints them (sorted
    /// lines), or "" when it is not pinned or is the flow events' ring
    /// buffer (no entries: bpftool cannot dump one).
    pub fn bpf_map_dump(&self, map: &str) -> String {
        let path = self.pin_path(&format!("maps/{map}"));
        if !Path::new(&path).exists() || map == netctl_common::maps::FLOW_EVENTS {
            return String::new();
        }
        let out = Command::new("bpftool")
            .args(["map", "dump", "pinned", &path])
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map dump pinned {path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines.join("\n")
    }

    /// Namespaces under /run/netns that belong to this sandbox.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(netns::NETNS_DIR)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // With the dash: sandbox nt1x1 must not take nt1x10's namespaces.
        let own = format!("{}-", self.prefix);
        names.retain(|n| n.starts_with(&own));
        names.sort();
        names
    }
}

/// Starts `argv` in a namespace (setns in a thread of its own; the child
/// inherits it) with the given stdin, stdout and stderr.
pub(crate) fn spawn_in_netns(netns_name: &str, argv: &[&str], stdio: [Stdio; 3]) -> Child {
    let netns_name = netns_name.to_owned();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let _guard = netns::NetnsGuard::enter(&netns_name).expect("enter netns");
        let [stdin, stdout, stderr] = stdio;
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn")
    })
    .join()
    .expect("thread")
}

/// Longest a listener may take to say it is ready (a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A process of [`Sandbox::start_all_ready`], ready. Killed if dropped before
/// [`Ready::finish`].
pub struct Ready {
    what: String,
    first_line: mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
    child: Option<Child>,
    rest: Option<JoinHandle<String>>,
    errors: Option<JoinHandle<String>>,
}

impl Ready {
    /// Waits for its `listening on ...` line; panics if another comes or
    /// none within [`READY_TIMEOUT`].
    fn wait_ready(&mut self) {
        match self.first_line.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("listening on") => {}
            Ok(line) => panic!("{}: first line {line:?}, not \"listening on\"", self.what),
            Err(_) => {
                let (_, errors) = self.collect();
                panic!(
                    "{}: not ready within {READY_TIMEOUT:?}: {errors}",
                    self.what
                )
            }
        }
    }

    /// Closes its stdin (which ends a `sniff --checksums`), waits for it to
    /// exit and returns what it printed after its ready line; panics unless
    /// it exited 0.
    pub fn finish(mut self) -> String {
        self.stdin = None;
        let status = self.child.take().map(|mut c| c.wait().expect("wait"));
        let (out, errors) = self.collect();
        match status {
            Some(status) if status.success() => out,
            status => panic!("{} failed ({status:?}): {errors}{out}", self.what),
        }
    }

    /// Kills it (a server that would run on) and returns what it printed
    /// after its ready line.
    pub fn finish_now(mut self) -> String {
        self.collect().0
    }

    /// Kills it if still running; its stdout after the ready line, and its stderr.
    fn collect(&mut self) -> (String, String) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        (
            join(self.rest.take()).unwrap_or_default(),
            join(self.errors.take()).unwrap_or_default(),
        )
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.collect();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that already failed is not judged again (a second panic
        // would abort); its sandbox is still removed.
        let judged = !std::thread::panicking();
        let watch = leftovers::Watch::before_down(self);
        // netctl's own teardown first (rules, links, processes), then anything left.
        let down = (netns::exists(&self.host_netns) && netctl_bin().exists())
            .then(|| self.command(&["down"]).output());
        // The host's own resolv.conf (host_resolv_conf) is the sandbox's,
        // not netctl's: gone before the leak check looks at /etc/netns.
        let own = Path::new(netctl::hosts::ETC_NETNS).join(&self.host_netns);
        if fs::remove_dir_all(&own).is_ok() {
            let _ = fs::remove_dir(netctl::hosts::ETC_NETNS);
        }
        let mut left = Vec::new();
        if judged {
            match down {
                Some(Ok(out)) if !out.status.success() => left.push(format!(
                    "`netctl down` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Some(Err(e)) => left.push(format!("`netctl down` did not run: {e}")),
                _ => {}
            }
            // A check that fails (a tool's error) must not skip the cleanup.
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                watch.left_after_down(self)
            }));
            match checked {
                Ok(found) => left.extend(found),
                Err(_) => left.push("the leak check itself failed (its panic is above)".into()),
            }
        }
        let removed = self.force_cleanup(&watch);
        if judged {
            crate::ledger::record("judged", &self.prefix);
        }
        if judged && !(left.is_empty() && removed.is_empty()) {
            let list = |items: &[String]| match items {
                [] => "  (nothing)".to_owned(),
                _ => format!("  {}", items.join("\n  ")),
            };
            panic!(
                "sandbox {}: netctl left things behind.\nafter `netctl down`:\n{}\n\
                 removed by the sandbox's own cleanup:\n{}",
                self.prefix,
                list(&left),
                list(&removed)
            );
        }
    }
}
