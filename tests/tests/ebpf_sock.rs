//! Host processes reach published ports through the cgroup sock_addr programs
//! (`sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`), without iptables.
//!
//! Everything happens in private network namespaces made by the test thread
//! and in a cgroup of the test's own: the programs are attached to that
//! cgroup only, the maps are pinned in a private bpffs directory, and both
//! are removed at the end, also on panic. The root namespace and the root
//! cgroup are never changed.
//!
//! The "host" namespace holds a veth end with 10.99.0.2/24 and listeners on
//! 10.99.0.2:80 (TCP) and 10.99.0.2:53 (UDP): they play the container, and
//! answer "peer=CLIENT via=LISTENER". 10.98.0.1/32 on lo plays the host's
//! uplink address. Nothing listens on 8080 or 5353, so a client reaching a
//! listener through them proves the rewrite. Clients are child processes that
//! move themselves into the cgroup before exec: `nettool call`, and
//! `nettool udpask` where the address recvfrom() reports matters.

use std::{
    ffi::CString,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, PerCpuArray,
    },
    programs::{CgroupAttachMode, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use netctl::{
    datapath::ebpf::{netns_cookie, EBPF_OBJECT},
    netlink::Netlink,
};
use netctl_common::{
    config::Config,
    endpoint::{NetworkPrefix, PREFIX_HOST},
    maps,
    portmap::{PortKey, PortTarget},
    sock::{SockRevKey, SockRevValue},
    stats::{Counter, StatIndex},
};

/// The "container" and its listeners.
const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CONTAINER_TCP_PORT: u16 = 80;
const CONTAINER_UDP_PORT: u16 = 53;
/// The "host's uplink address" (on lo).
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
/// Published: TCP 8080 on every host address, UDP 5353 on 127.0.0.1 only.
const PUBLISHED_TCP: u16 = 8080;
const PUBLISHED_UDP: u16 = 5353;
const UNPUBLISHED_TCP: u16 = 8081;

const PROGRAMS: [&str; 3] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4"];
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[test]
fn host_sockets_reach_published_ports() {
    if !netctl_tests::privileged("BPF programs, cgroups and namespaces") {
        return;
    }
    // The namespace belongs to this thread only: the other tests' threads
    // (and the process) stay where they are.
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn run() {
    let nettool = netctl_tests::sandbox::nettool_bin();
    assert!(
        nettool.exists(),
        "{} missing: run `cargo build -p netctl-tests --bins`",
        nettool.display()
    );
    // Declared first, dropped last: after the programs are detached.
    let cgroup = CgroupDir::create();
    let pins = PinDir::create();

    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    setup_namespace(true);
    let _servers = Servers::start();
    let host_cookie = netns_cookie().expect("the netns cookie");

    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.path)
        .load(EBPF_OBJECT)
        .expect("load the embedded eBPF object");
    let cgroup_dir = fs::File::open(&cgroup.path).expect("open the test cgroup");
    for name in PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .unwrap_or_else(|e| panic!("{name} is a cgroup sock_addr program: {e}"));
        program
            .load()
            .unwrap_or_else(|e| panic!("the verifier accepts {name}: {e:?}"));
        program
            .attach(&cgroup_dir, CgroupAttachMode::default())
            .unwrap_or_else(|e| panic!("attach {name} to {}: {e:?}", cgroup.path.display()));
    }
    publish(&mut ebpf);
    let client = Client::new(&cgroup, nettool);

    // CONFIG still zero: the host namespace is not configured, nothing moves.
    let outcome = client.nettool(&["call", "tcp", "127.0.0.1", &PUBLISHED_TCP.to_string()]);
    assert!(
        !outcome.ok,
        "unconfigured: 127.0.0.1:8080 must not be translated: {outcome:?}"
    );
    assert_eq!(translated(&ebpf), 0, "unconfigured: sock_translated");

    configure(&mut ebpf, host_cookie);
    let mut expected = 0;

    // TCP on 127.0.0.1 and on the uplink address, published on every address.
    for host in [Ipv4Addr::LOCALHOST, HOST_IP] {
        let outcome =
            client.nettool(&["call", "tcp", &host.to_string(), &PUBLISHED_TCP.to_string()]);
        assert!(outcome.ok, "tcp {host}:{PUBLISHED_TCP}: {outcome:?}");
        assert!(
            outcome
                .stdout
                .contains(&format!("via={CONTAINER_IP}:{CONTAINER_TCP_PORT}")),
            "tcp {host}:{PUBLISHED_TCP} answered by the container: {outcome:?}"
        );
        expected += 1;
        assert_eq!(
            translated(&ebpf),
            expected,
            "sock_translated after tcp {host}"
        );
    }

    // UDP published on 127.0.0.1 (sendmsg4).
    let outcome = client.nettool(&["call", "udp", "127.0.0.1", &PUBLISHED_UDP.to_string()]);
    assert!(outcome.ok, "udp 127.0.0.1:{PUBLISHED_UDP}: {outcome:?}");
    assert!(
        outcome
            .stdout
            .contains(&format!("via={CONTAINER_IP}:{CONTAINER_UDP_PORT}")),
        "udp 127.0.0.1:{PUBLISHED_UDP} answered by the container: {outcome:?}"
    );
    expected += 1;
    assert_eq!(
        translated(&ebpf),
        expected,
        "sock_translated after udp sendto"
    );

    // recvfrom() reports the address the client sent to (recvmsg4).
    let published_udp = SocketAddr::from((Ipv4Addr::LOCALHOST, PUBLISHED_UDP));
    let line = client.udp_ask("sendto", &published_udp.to_string());
    assert!(
        line.starts_with(&format!("from={published_udp} reply=")),
        "recvfrom's source is the published address: {line}"
    );
    assert!(
        line.contains(&format!("via={CONTAINER_IP}:{CONTAINER_UDP_PORT}")),
        "answered by the container: {line}"
    );
    expected += 1;
    assert_eq!(
        translated(&ebpf),
        expected,
        "sock_translated after udpask's sendto"
    );
    let revnat: HashMap<_, SockRevKey, SockRevValue> =
        HashMap::try_from(ebpf.map(maps::SOCK_REVNAT).expect("SOCK_REVNAT")).expect("a hash map");
    let entries: Vec<_> = revnat
        .iter()
        .map(|e| e.expect("read SOCK_REVNAT"))
        .collect();
    assert!(
        entries.iter().any(|(k, v)| k.cookie != 0
            && (k.ip, k.port) == (net_ip(CONTAINER_IP), net_port(CONTAINER_UDP_PORT))
            && (v.ip, v.port) == (net_ip(Ipv4Addr::LOCALHOST), net_port(PUBLISHED_UDP))),
        "SOCK_REVNAT maps 10.99.0.2:53 back to 127.0.0.1:5353: {entries:?}"
    );
    // TCP sockets are recorded too: getpeername() reports what they dialled.
    assert!(
        entries.iter().any(|(k, v)| k.cookie != 0
            && (k.ip, k.port) == (net_ip(CONTAINER_IP), net_port(CONTAINER_TCP_PORT))
            && v.port == net_port(PUBLISHED_TCP)),
        "SOCK_REVNAT maps 10.99.0.2:80 back to the published TCP port: {entries:?}"
    );

    // connect() of a UDP socket (connect4 on UDP).
    let line = client.udp_ask("connect", &published_udp.to_string());
    assert!(
        line.contains(&format!("via={CONTAINER_IP}:{CONTAINER_UDP_PORT}")),
        "connected UDP socket answered by the container: {line}"
    );
    expected += 1;
    assert_eq!(
        translated(&ebpf),
        expected,
        "sock_translated after udp connect"
    );

    // Not published: an unpublished TCP port, and UDP 5353 on an address it
    // was not published on. Both refused, nothing counted.
    let outcome = client.nettool(&["call", "tcp", "127.0.0.1", &UNPUBLISHED_TCP.to_string()]);
    assert!(
        !outcome.ok && outcome.stderr.contains("refused"),
        "tcp 127.0.0.1:{UNPUBLISHED_TCP} is not published: {outcome:?}"
    );
    let outcome = client.nettool(&["udpask", "connect", &format!("{HOST_IP}:{PUBLISHED_UDP}")]);
    assert!(
        !outcome.ok && outcome.stderr.contains("refused"),
        "udp {HOST_IP}:{PUBLISHED_UDP} is published on 127.0.0.1 only: {outcome:?}"
    );
    assert_eq!(
        translated(&ebpf),
        expected,
        "sock_translated after unpublished ports"
    );

    // Another namespace, same cgroup, same "container" listening: its
    // sockets are not the host's, so they are not translated.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            setup_namespace(false);
            let _servers = Servers::start();
            assert_ne!(
                netns_cookie().expect("the netns cookie"),
                host_cookie,
                "a second namespace, a second cookie"
            );
            let direct = client.nettool(&[
                "call",
                "tcp",
                &CONTAINER_IP.to_string(),
                &CONTAINER_TCP_PORT.to_string(),
            ]);
            assert!(
                direct.ok,
                "other netns: the listener answers directly: {direct:?}"
            );
            let outcome = client.nettool(&["call", "tcp", "127.0.0.1", &PUBLISHED_TCP.to_string()]);
            assert!(
                !outcome.ok && outcome.stderr.contains("refused"),
                "other netns: 127.0.0.1:8080 must not be translated: {outcome:?}"
            );
        });
    });
    assert_eq!(
        translated(&ebpf),
        expected,
        "sock_translated after the other namespace"
    );
}

fn net_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn net_port(port: u16) -> u16 {
    port.to_be()
}

/// PORTMAP: TCP 8080 on every address → 10.99.0.2:80, UDP 5353 on
/// 127.0.0.1 → 10.99.0.2:53.
fn publish(ebpf: &mut Ebpf) {
    let mut portmap: HashMap<_, PortKey, PortTarget> =
        HashMap::try_from(ebpf.map_mut(maps::PORTMAP).expect("PORTMAP")).expect("a hash map");
    for (host_ip, host_port, proto, port) in [
        (0, PUBLISHED_TCP, IPPROTO_TCP, CONTAINER_TCP_PORT),
        (
            net_ip(Ipv4Addr::LOCALHOST),
            PUBLISHED_UDP,
            IPPROTO_UDP,
            CONTAINER_UDP_PORT,
        ),
    ] {
        let key = PortKey {
            host_ip,
            host_port: net_port(host_port),
            proto,
            _pad: 0,
        };
        let target = PortTarget {
            ip: net_ip(CONTAINER_IP),
            port: net_port(port),
            _pad: 0,
            ifindex: 0,
        };
        portmap.insert(key, target, 0).expect("insert into PORTMAP");
    }
}

fn configure(ebpf: &mut Ebpf, host_netns_cookie: u64) {
    let mut config: Array<_, Config> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).expect("CONFIG")).expect("an array");
    let value = Config {
        host_netns_cookie,
        ..Config::default()
    };
    config.set(0, value, 0).expect("set CONFIG");
    // The host's address, as the controller's host sync writes it.
    let mut prefixes: LpmTrie<_, u32, NetworkPrefix> = LpmTrie::try_from(
        ebpf.map_mut(maps::NETWORK_PREFIXES)
            .expect("NETWORK_PREFIXES"),
    )
    .expect("an LPM trie");
    let host = NetworkPrefix {
        network_id: 1,
        kind: PREFIX_HOST,
    };
    prefixes
        .insert(&Key::new(32, net_ip(HOST_IP)), host, 0)
        .expect("set NETWORK_PREFIXES");
}

/// STATS[sock_translated], summed over CPUs.
fn translated(ebpf: &Ebpf) -> u64 {
    let stats: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(ebpf.map(maps::STATS).expect("STATS")).expect("a per-CPU array");
    let values = stats
        .get(&(StatIndex::SockTranslated as u32), 0)
        .expect("read STATS");
    values.iter().map(|c| c.packets).sum()
}

/// In the calling thread's (fresh) namespace: lo up, the "container" veth
/// with 10.99.0.2/24, and, for the host, 10.98.0.1/32 on lo.
fn setup_namespace(with_host_ip: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime
        .block_on(async {
            let nl = Netlink::connect("sock-test")?;
            let lo = nl.index("lo").await?;
            nl.set_up(lo).await?;
            if with_host_ip {
                nl.add_address(lo, HOST_IP, 32).await?;
            }
            nl.add_veth("ctr0", "ctr0p").await?;
            let ctr = nl.index("ctr0").await?;
            let peer = nl.index("ctr0p").await?;
            nl.add_address(ctr, CONTAINER_IP, 24).await?;
            nl.set_up(peer).await?;
            nl.set_up(ctr).await
        })
        .unwrap_or_else(|e| panic!("test namespace: {e}"));
}

/// The "container": TCP and UDP listeners on 10.99.0.2, each answering
/// "peer=CLIENT via=LISTENER". Stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds in the calling thread's namespace (sockets keep it).
    fn start() -> Self {
        const POLL: Duration = Duration::from_millis(20);
        const LIFETIME: Duration = Duration::from_secs(120);
        let stop = Arc::new(AtomicBool::new(false));
        let tcp =
            TcpListener::bind((CONTAINER_IP, CONTAINER_TCP_PORT)).expect("bind the TCP listener");
        tcp.set_nonblocking(true).expect("nonblocking listener");
        let udp =
            UdpSocket::bind((CONTAINER_IP, CONTAINER_UDP_PORT)).expect("bind the UDP listener");
        udp.set_read_timeout(Some(POLL)).expect("UDP read timeout");
        let deadline = Instant::now() + LIFETIME;
        let running = {
            let stop = stop.clone();
            move || !stop.load(Ordering::SeqCst) && Instant::now() < deadline
        };
        let tcp_running = running.clone();
        let tcp_thread = std::thread::spawn(move || {
            use std::io::Write as _;
            while tcp_running() {
                match tcp.accept() {
                    Ok((mut stream, peer)) => {
                        let local = stream.local_addr().expect("local address");
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(format!("peer={peer} via={local}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        let udp_thread = std::thread::spawn(move || {
            let local = udp.local_addr().expect("local address");
            let mut buf = [0u8; 512];
            while running() {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("peer={peer} via={local}\n").as_bytes(), peer);
                }
            }
        });
        Servers {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs clients as child processes of the calling thread (so in its network
/// namespace) that join the test cgroup before exec.
struct Client {
    cgroup_procs: CString,
    nettool: PathBuf,
}

impl Client {
    fn new(cgroup: &CgroupDir, nettool: PathBuf) -> Self {
        let procs = cgroup.path.join("cgroup.procs");
        Client {
            cgroup_procs: CString::new(procs.as_os_str().as_bytes()).expect("cgroup path"),
            nettool,
        }
    }

    fn run(&self, mut cmd: Command) -> Outcome {
        let procs = self.cgroup_procs.clone();
        // SAFETY: between fork and exec only async-signal-safe calls
        // (open, write, close) on memory prepared before the fork. Writing
        // "0" to cgroup.procs moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written == 1 {
                    Ok(())
                } else {
                    Err(error)
                }
            });
        }
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .expect("spawn a client in the test cgroup");
        Outcome {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn nettool(&self, args: &[&str]) -> Outcome {
        let mut cmd = Command::new(&self.nettool);
        cmd.args(args);
        self.run(cmd)
    }

    /// `nettool udpask HOW ADDR` in the cgroup; returns its result line
    /// (`from=SOURCE reply=PAYLOAD`).
    fn udp_ask(&self, how: &str, addr: &str) -> String {
        let outcome = self.nettool(&["udpask", how, addr]);
        assert!(outcome.ok, "nettool udpask {how} {addr}: {outcome:?}");
        outcome.stdout.trim().to_owned()
    }
}

/// A cgroup v2 directory of this test; its processes killed and the
/// directory removed on drop.
struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    fn create() -> Self {
        let path = netctl_tests::sandbox::cgroup2_root()
            .join(format!("netctl-sock-test-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        CgroupDir { path }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for _ in 0..100 {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                // Only this test's clients can be in this cgroup.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// A bpffs directory for the maps (they are declared pinned by name; without
/// a directory aya would pin them in /sys/fs/bpf itself). Removed on drop.
struct PinDir {
    path: PathBuf,
}

impl PinDir {
    fn create() -> Self {
        let path =
            Path::new("/sys/fs/bpf").join(format!("netctl-sock-test-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        PinDir { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}
