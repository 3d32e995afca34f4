//! The eBPF datapath: TC programs and BPF maps, no iptables.
//!
//! `host_up` loads the object once, pins every map, program and link under
//! the host's bpffs directory (`/sys/fs/bpf/netctl/<host id>/`) and writes
//! `CONFIG`. Every later change — a network, an endpoint, a published port —
//! opens what is pinned and edits maps (plus one TCX attach per endpoint):
//! no reload, and nothing stops when netctl exits, because the links are
//! pinned. `host_down` unpins everything, which detaches the programs.
//!
//! Layout of the pin directory:
//! ```text
//! maps/<NAME>                 CONFIG, ENDPOINTS, NETWORKS, PORTMAP, CONNTRACK, CT_RECLAIM, SOCK_REVNAT, STATS
//! progs/<program>             endpoint_ingress, uplink_ingress, uplink_egress, sock_*
//! links/<ifname>@<program>    TCX links (uplink, and each endpoint's host-side veth)
//! links/cgroup@<program>      cgroup sock_addr links (on --cgroup)
//! ```
//!
//! The conntrack table's size is fixed when the object is loaded:
//! [`CONNTRACK_MAX_ENV`] or [`CONNTRACK_MAX_DEFAULT`] entries; every later
//! command opens the pinned table, so all agree until `netctl down`.

use std::{
    fs,
    io::Write,
    net::Ipv4Addr,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};
use netctl_common::{
    config::{Config, CONFIG_FLAG_LOG},
    conntrack::{expired, reverse_key, CtEntry, CtKey},
    endpoint::{EndpointInfo, NetworkInfo, NETWORK_FLAG_INTERNAL},
    maps,
    portmap::{PortKey, PortTarget},
    stats::{Counter, STAT_COUNT, STAT_NAMES},
};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

mod audit;

use super::{Datapath, Drift, HostInfo};
use crate::{
    error::{Error, Result},
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

/// netctl-ebpf compiled for the bpf target by build.rs (aya-build).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"));

const BPFFS: &str = "/sys/fs/bpf";

/// Every map of the object, pinned by the controller.
const MAP_NAMES: [&str; 8] = [
    maps::CONFIG,
    maps::ENDPOINTS,
    maps::NETWORKS,
    maps::PORTMAP,
    maps::CONNTRACK,
    maps::CT_RECLAIM,
    maps::SOCK_REVNAT,
    maps::STATS,
];

const ENDPOINT_INGRESS: &str = "endpoint_ingress";
/// TC programs on the uplink and the hook each goes on.
const UPLINK_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("uplink_ingress", TcAttachType::Ingress),
    ("uplink_egress", TcAttachType::Egress),
];
/// cgroup programs: host processes reaching published ports.
const SOCK_PROGRAMS: [&str; 3] = ["sock_connect4", "sock_sendmsg4", "sock_recvmsg4"];

/// SNAT source ports: above the kernel's default ephemeral range
/// (32768–60999), so translated flows never take a port the host's own
/// sockets on the uplink address could use.
pub const SNAT_PORTS: (u16, u16) = (61_000, 65_535);

/// Entries of the conntrack table (two per flow) unless
/// [`CONNTRACK_MAX_ENV`] says otherwise.
pub const CONNTRACK_MAX_DEFAULT: u32 = 262_144;
/// Sizes the conntrack table when the datapath is loaded (the host's first
/// network); small tables let tests fill it.
pub const CONNTRACK_MAX_ENV: &str = "NETCTL_CONNTRACK_MAX";
/// Bounds of the size: one flow, and 1M entries (the table is
/// preallocated, about 120 bytes an entry; and a full table is swept once a
/// second, ~0.26 µs an entry: see the eBPF `conntrack::reclaim`).
const CONNTRACK_MAX_RANGE: (u32, u32) = (2, 1_048_576);

/// The conntrack table size asked by [`CONNTRACK_MAX_ENV`], or the default.
pub fn conntrack_max() -> Result<u32> {
    let Some(raw) = std::env::var_os(CONNTRACK_MAX_ENV) else {
        return Ok(CONNTRACK_MAX_DEFAULT);
    };
    let raw = raw.to_string_lossy();
    let (min, max) = CONNTRACK_MAX_RANGE;
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Error::invalid(
                CONNTRACK_MAX_ENV,
                format!("{raw:?} is not a table size ({min} to {max} entries)"),
            )
        })
}

pub struct Ebpf {
    pin_dir: PathBuf,
    host: HostInfo,
}

/// An aya error with its whole chain of causes (aya puts the errno in the
/// source of a `SyscallError`).
fn bpf_error(object: impl Into<String>, err: impl std::error::Error) -> Error {
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::system(object, reason)
}

/// Whether a failed delete only found the key absent: aya reports that as
/// `KeyNotFound` from some calls and as the syscall's ENOENT from `remove`.
/// Removing what is absent is not an error (the datapath is idempotent).
fn is_absent(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Network byte order in a u32, as the programs read addresses from packets.
fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn port_key(p: &PortMapping) -> PortKey {
    PortKey {
        host_ip: p.host_ip.map(be_ip).unwrap_or(0),
        host_port: p.host_port.to_be(),
        proto: p.protocol.number(),
        _pad: 0,
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not there yet.
pub fn ensure_bpffs() -> Result<()> {
    let is_bpffs = nix::sys::statfs::statfs(BPFFS)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false);
    if is_bpffs {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(|e| Error::io(BPFFS, e))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::system(BPFFS, format!("mount bpffs: {e}")))
}

/// Interface index in the namespace of the calling thread.
fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|e| Error::system(format!("interface {name}"), e))
}

/// MAC of an interface in the namespace of the calling thread.
fn mac_of(name: &str) -> Result<[u8; 6]> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::system(format!("interface {name}"), e))?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ
    // (names are at most 15 bytes); SIOCGIFHWADDR only writes into ifreq.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        use std::os::fd::AsRawFd as _;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) < 0 {
            return Err(Error::system(
                format!("interface {name}"),
                std::io::Error::last_os_error(),
            ));
        }
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        Ok([
            data[0] as u8,
            data[1] as u8,
            data[2] as u8,
            data[3] as u8,
            data[4] as u8,
            data[5] as u8,
        ])
    }
}

/// Netns cookie of the namespace of the calling thread.
fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::system("netns cookie", e))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(Error::system(
            "netns cookie",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// Typed view of a pinned hash map.
fn pinned_hash<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = dir.join("maps").join(name);
    let data =
        MapData::from_pin(&path).map_err(|e| bpf_error(format!("map {}", path.display()), e))?;
    let map = if name == maps::SOCK_REVNAT {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    HashMap::try_from(map).map_err(|e| bpf_error(format!("map {}", path.display()), e))
}

impl Ebpf {
    pub fn new(host: &HostInfo) -> Self {
        Ebpf {
            pin_dir: host.config.pin_dir(),
            host: host.clone(),
        }
    }

    fn map_path(&self, name: &str) -> PathBuf {
        self.pin_dir.join("maps").join(name)
    }

    fn prog_path(&self, name: &str) -> PathBuf {
        self.pin_dir.join("progs").join(name)
    }

    fn link_path(&self, target: &str, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{target}@{program}"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<HashMap<MapData, K, V>> {
        pinned_hash(&self.pin_dir, name)
    }

    /// Whether the datapath of this host is loaded (its maps are pinned).
    pub fn is_loaded(&self) -> bool {
        self.map_path(maps::CONFIG).exists()
    }

    fn config(&self) -> Result<Config> {
        let uplink = self.host.uplink.as_ref().ok_or_else(|| {
            Error::invalid(
                "datapath ebpf",
                "needs an uplink with an IPv4 address: a default route in the host namespace, or --uplink",
            )
        })?;
        Ok(Config {
            uplink_ifindex: uplink.index,
            uplink_ip: be_ip(uplink.address),
            snat_port_min: SNAT_PORTS.0,
            snat_port_max: SNAT_PORTS.1,
            host_netns_cookie: netns_cookie()?,
            flags: 0,
            _pad: 0,
        })
    }

    /// Loads the object with every map pinned under our directory (reusing
    /// maps pinned by an earlier load), pins the programs and attaches the
    /// uplink and cgroup ones with pinned links.
    fn load_and_attach(&self, conntrack_max: u32) -> Result<()> {
        let config = self.config()?;
        for sub in ["maps", "progs", "links"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.pin_dir.join(sub))
                .map_err(|e| Error::io(format!("pin dir {}", self.pin_dir.display()), e))?;
        }
        let map_paths: Vec<(&str, PathBuf)> = MAP_NAMES
            .iter()
            .map(|name| (*name, self.map_path(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(maps::CONNTRACK, conntrack_max);
        let mut bpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| bpf_error("ebpf object", e))?;

        let mut config_map: Array<_, Config> = Array::try_from(
            bpf.map_mut(maps::CONFIG)
                .ok_or_else(|| Error::system("map CONFIG", "missing from the object"))?,
        )
        .map_err(|e| bpf_error("map CONFIG", e))?;
        config_map
            .set(0, config, 0)
            .map_err(|e| bpf_error("map CONFIG", e))?;

        let uplink = self.host.uplink.as_ref().expect("checked by config()");
        for (name, hook) in [(ENDPOINT_INGRESS, None)]
            .into_iter()
            .chain(UPLINK_PROGRAMS.iter().map(|(n, h)| (*n, Some(*h))))
        {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| Error::system(format!("program {name}"), "missing from the object"))?
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            prog.load()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            let path = self.prog_path(name);
            let _ = fs::remove_file(&path);
            prog.pin(&path)
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            if let Some(hook) = hook {
                attach_tc(
                    prog,
                    &uplink.name,
                    hook,
                    &self.link_path(&uplink.name, name),
                )?;
            }
        }
        let cgroup = fs::File::open(&self.host.config.cgroup)
            .map_err(|e| Error::io(format!("cgroup {}", self.host.config.cgroup.display()), e))?;
        for name in SOCK_PROGRAMS {
            let Some(program) = bpf.program_mut(name) else {
                // Built without the cgroup programs: host → published port
                // then needs them; say so rather than fail the whole host.
                log::warn!(
                    "program {name} missing from the object: host → published port disabled"
                );
                continue;
            };
            let prog: &mut CgroupSockAddr = program
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            prog.load()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            // A bpf_link (what aya creates on 5.7+) coexists with other
            // programs on the cgroup by itself; the kernel refuses the
            // ALLOW_MULTI flag on link_create with EINVAL, hence Single.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| bpf_error(format!("program {name} on cgroup"), e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| bpf_error(format!("program {name}"), e))?
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            let path = self.link_path("cgroup", name);
            let _ = fs::remove_file(&path);
            link.pin(&path)
                .map_err(|e| bpf_error(format!("link {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Removes a pinned link, which detaches its program.
    fn unpin_link(path: &Path) -> Result<()> {
        match PinnedLink::from_pin(path) {
            Ok(link) => link
                .unpin()
                .map(drop)
                .map_err(|e| Error::io(format!("link {}", path.display()), e)),
            Err(_) if !path.exists() => Ok(()),
            Err(e) => Err(bpf_error(format!("link {}", path.display()), e)),
        }
    }
}

/// Attaches with TCX and pins the link (it outlives this process).
fn attach_tc(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let name = prog
        .info()
        .ok()
        .and_then(|i| i.name_as_str().map(str::to_owned))
        .unwrap_or_default();
    let id = prog
        .attach(ifname, hook)
        .map_err(|e| bpf_error(format!("program {name} on {ifname}"), e))?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|e| bpf_error(format!("program {name} on {ifname}"), e))?
        .try_into()
        .map_err(|e| {
            bpf_error(
                format!("link of {name} on {ifname} (TCX needed, Linux 6.6+)"),
                e,
            )
        })?;
    let _ = fs::remove_file(pin);
    link.pin(pin)
        .map_err(|e| bpf_error(format!("link {}", pin.display()), e))?;
    Ok(())
}

impl Datapath for Ebpf {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Ebpf
    }

    fn host_up(&self) -> Result<()> {
        // Bad input is refused before anything changes.
        let conntrack_max = conntrack_max()?;
        // The kernel forwards what the fast path hands back (FibPass).
        crate::netns::write_sysctl("net.ipv4.ip_forward", "1")?;
        ensure_bpffs()?;
        if self.is_loaded() {
            return Ok(());
        }
        let result = self.load_and_attach(conntrack_max);
        if result.is_err() {
            let _ = self.host_down();
        }
        result
    }

    fn host_down(&self) -> Result<()> {
        let mut errors = Vec::new();
        if let Ok(dir) = fs::read_dir(self.pin_dir.join("links")) {
            for entry in dir.flatten() {
                errors.extend(Self::unpin_link(&entry.path()).err());
            }
        }
        match fs::remove_dir_all(&self.pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(Error::io(format!("pin dir {}", self.pin_dir.display()), e)),
        }
        // The parent /sys/fs/bpf/netctl goes when the last host does.
        if let Some(parent) = self.pin_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        Error::collect(errors)
    }

    fn network_up(&self, net: &Network) -> Result<()> {
        let info = NetworkInfo {
            subnet: be_ip(net.subnet.network()),
            mask: be_ip(net.subnet.netmask()),
            gateway: be_ip(net.gateway),
            bridge_ifindex: ifindex(&net.bridge)?,
            bridge_mac: mac_of(&net.bridge)?,
            _pad: [0; 2],
            flags: if net.internal {
                NETWORK_FLAG_INTERNAL
            } else {
                0
            },
        };
        self.hash::<u32, NetworkInfo>(maps::NETWORKS)?
            .insert(net.id, info, 0)
            .map_err(|e| bpf_error(format!("network {}: map NETWORKS", net.name), e))
    }

    fn network_down(&self, net: &Network) -> Result<()> {
        match self
            .hash::<u32, NetworkInfo>(maps::NETWORKS)?
            .remove(&net.id)
        {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(bpf_error(format!("network {}: map NETWORKS", net.name), e)),
        }
    }

    fn endpoint_added(&self, net: &Network, ep: &Endpoint) -> Result<()> {
        let index = ifindex(&ep.host_veth)?;
        let info = EndpointInfo {
            ifindex: index,
            network_id: net.id,
            mac: ep.mac.octets(),
            _pad: [0; 2],
        };
        self.hash::<u32, EndpointInfo>(maps::ENDPOINTS)?
            .insert(be_ip(ep.ip), info, 0)
            .map_err(|e| bpf_error(format!("endpoint {}: map ENDPOINTS", ep.ip), e))?;
        let mut prog = SchedClassifier::from_pin(self.prog_path(ENDPOINT_INGRESS))
            .map_err(|e| bpf_error(format!("program {ENDPOINT_INGRESS}"), e))?;
        attach_tc(
            &mut prog,
            &ep.host_veth,
            TcAttachType::Ingress,
            &self.link_path(&ep.host_veth, ENDPOINT_INGRESS),
        )
    }

    fn endpoint_removed(&self, _net: &Network, ep: &Endpoint) -> Result<()> {
        let mut errors = Vec::new();
        errors.extend(Self::unpin_link(&self.link_path(&ep.host_veth, ENDPOINT_INGRESS)).err());
        match self
            .hash::<u32, EndpointInfo>(maps::ENDPOINTS)?
            .remove(&be_ip(ep.ip))
        {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => errors.push(bpf_error(format!("endpoint {}: map ENDPOINTS", ep.ip), e)),
        }
        // Its flows die with it: a later container reusing the address must
        // not inherit them.
        errors.extend(
            conntrack_remove(&self.pin_dir, |k, e| {
                [k.saddr, k.daddr, e.saddr, e.daddr].contains(&be_ip(ep.ip))
            })
            .err(),
        );
        Error::collect(errors)
    }

    fn ports_published(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if net.internal {
            return Err(Error::invalid(
                format!("network {}", net.name),
                "is internal: no published ports",
            ));
        }
        let endpoints = self.hash::<u32, EndpointInfo>(maps::ENDPOINTS)?;
        let mut portmap = self.hash::<PortKey, PortTarget>(maps::PORTMAP)?;
        let mut done = Vec::new();
        for p in ports {
            let target = endpoints.get(&be_ip(p.container_ip), 0).map_err(|e| {
                bpf_error(
                    format!("port {}: endpoint {}", p.describe(), p.container_ip),
                    e,
                )
            })?;
            let value = PortTarget {
                ip: be_ip(p.container_ip),
                port: p.container_port.to_be(),
                _pad: 0,
                ifindex: target.ifindex,
            };
            if let Err(e) = portmap.insert(port_key(p), value, 0) {
                // All or nothing: take back this batch's entries.
                for key in &done {
                    let _ = portmap.remove(key);
                }
                return Err(bpf_error(format!("port {}: map PORTMAP", p.describe()), e));
            }
            done.push(port_key(p));
        }
        Ok(())
    }

    fn audit(&self, state: &State) -> Result<Vec<Drift>> {
        audit::audit(self, state)
    }

    fn reconcile(&self, state: &State) -> Result<()> {
        audit::reconcile(self, state)
    }

    fn ports_unpublished(&self, _net: &Network, ports: &[PortMapping]) -> Result<()> {
        let mut portmap = self.hash::<PortKey, PortTarget>(maps::PORTMAP)?;
        let mut errors = Vec::new();
        for p in ports {
            match portmap.remove(&port_key(p)) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => errors.push(bpf_error(format!("port {}: map PORTMAP", p.describe()), e)),
            }
        }
        Error::collect(errors)
    }
}

/// One conntrack entry, decoded for `netctl conntrack ls`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Flow {
    pub proto: &'static str,
    pub src: String,
    pub dst: String,
    pub translated_src: String,
    pub translated_dst: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub state: &'static str,
    pub idle_seconds: u64,
    pub packets: u64,
    pub bytes: u64,
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    }
}

fn decode(k: &CtKey, e: &CtEntry, now: u64) -> Flow {
    use netctl_common::conntrack::*;
    let addr = |ip: u32, port: u16| format!("{}:{}", ip_from_be(ip), u16::from_be(port));
    Flow {
        proto: proto_name(k.proto),
        src: addr(k.saddr, k.sport),
        dst: addr(k.daddr, k.dport),
        translated_src: addr(e.saddr, e.sport),
        translated_dst: addr(e.daddr, e.dport),
        kind: match e.kind {
            CT_KIND_SNAT => "snat",
            CT_KIND_DNAT => "dnat",
            CT_KIND_HAIRPIN => "hairpin",
            _ => "unknown",
        },
        direction: if e.direction == CT_DIR_REPLY {
            "reply"
        } else {
            "original"
        },
        state: match e.state {
            CT_STATE_NEW => "new",
            CT_STATE_ESTABLISHED => "established",
            CT_STATE_CLOSING => "closing",
            _ => "unknown",
        },
        idle_seconds: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
        packets: e.packets,
        bytes: e.bytes,
    }
}

/// Entries read per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 4096;
/// Most entries one bucket could hold that a batch is grown to (ENOSPC:
/// the kernel returns a bucket whole or not at all).
const BATCH_MAX: u32 = 1 << 20;

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of a hash map, read with BPF_MAP_LOOKUP_BATCH: one syscall
/// per [`BATCH`] entries, where aya 0.14 (no batch operations) spends two
/// per entry (next key, then lookup). A walk of the conntrack table per
/// removed endpoint made `container rm` slow on a busy host.
fn dump_hash<K: aya::Pod, V: aya::Pod>(map: &MapData, what: &str) -> Result<Vec<(K, V)>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let mut size = BATCH;
    // SAFETY (zeroed): Pod types are plain data, valid for any bytes.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; size as usize];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; size as usize];
    let mut out = Vec::new();
    // A hash map's batch token is a bucket index (u32).
    let (mut token_in, mut token_out): (u32, u32) = (0, 0);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values of the
        // map's sizes (K and V are its key and value types) and at the two
        // tokens, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let errno = std::io::Error::last_os_error();
        let filled = (attr.count as usize).min(keys.len());
        out.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        if rc == 0 {
            token_in = token_out;
            first = false;
            continue;
        }
        match errno.raw_os_error() {
            // The end of the map (the last entries are in this batch).
            Some(libc::ENOENT) => return Ok(out),
            Some(libc::ENOSPC) if size < BATCH_MAX => {
                size *= 2;
                keys.resize(size as usize, keys[0]);
                values.resize(size as usize, values[0]);
            }
            _ => return Err(Error::system(what, format!("batch lookup: {errno}"))),
        }
    }
}

/// Every entry of the host's conntrack table.
fn conntrack_entries(pin_dir: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    let map = pinned_hash::<CtKey, CtEntry>(pin_dir, maps::CONNTRACK)?;
    dump_hash(aya::maps::IterableMap::map(&map), "map CONNTRACK")
}

/// The flows of a host's conntrack table.
pub fn conntrack_list(pin_dir: &Path) -> Result<Vec<Flow>> {
    let now = monotonic_ns();
    Ok(conntrack_entries(pin_dir)?
        .iter()
        .map(|(k, e)| decode(k, e, now))
        .collect())
}

/// Removes the entries `doomed` selects; returns how many went.
pub fn conntrack_remove(
    pin_dir: &Path,
    doomed: impl Fn(&CtKey, &CtEntry) -> bool,
) -> Result<usize> {
    let mut map = pinned_hash::<CtKey, CtEntry>(pin_dir, maps::CONNTRACK)?;
    let keys: Vec<CtKey> = dump_hash(aya::maps::IterableMap::map(&map), "map CONNTRACK")?
        .into_iter()
        .filter(|(k, e)| doomed(k, e))
        .map(|(k, _)| k)
        .collect();
    for key in &keys {
        match map.remove(key) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(bpf_error("map CONNTRACK", e)),
        }
    }
    Ok(keys.len())
}

/// Removes expired flows, with the programs' rule: an entry lives while it
/// or its pair (the other direction) is within its timeout, so a one-way
/// stream keeps both. The programs also expire entries on lookup.
pub fn conntrack_gc(pin_dir: &Path) -> Result<usize> {
    let now = monotonic_ns();
    let table: std::collections::HashMap<CtKey, CtEntry> =
        conntrack_entries(pin_dir)?.into_iter().collect();
    conntrack_remove(pin_dir, |k, e| {
        let pair_alive = table
            .get(&reverse_key(e, k.proto))
            .is_some_and(|pair| !expired(pair, k.proto, now));
        expired(e, k.proto, now) && !pair_alive
    })
}

/// Counters summed over CPUs, in index order.
pub fn stats(pin_dir: &Path) -> Result<Vec<(&'static str, Counter)>> {
    let path = pin_dir.join("maps").join(maps::STATS);
    let data =
        MapData::from_pin(&path).map_err(|e| bpf_error(format!("map {}", path.display()), e))?;
    let map: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| bpf_error("map STATS", e))?;
    let mut out = Vec::new();
    for index in 0..STAT_COUNT {
        let values = map.get(&index, 0).map_err(|e| bpf_error("map STATS", e))?;
        let total = values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        });
        out.push((STAT_NAMES[index as usize], total));
    }
    Ok(out)
}

/// Longest `netctl trace`, in seconds.
pub const TRACE_MAX_SECONDS: u64 = 3600;

/// Set by SIGINT/SIGTERM while [`trace`] runs: it stops early and still
/// clears the log flag.
static TRACE_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn trace_stop(_signal: std::ffi::c_int) {
    TRACE_STOP.store(true, Ordering::Relaxed);
}

/// Collects what aya-log decodes from `AYA_LOGS`, one line per record, for
/// [`trace`] to write out after each flush (the `log::Log` must be `Sync`;
/// the writer need not be).
#[derive(Default, Clone)]
struct TraceLines(Arc<Mutex<Vec<String>>>);

impl log::Log for TraceLines {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut line = record.args().to_string();
        // "reason=13" → "reason=13 (drop_isolated)".
        if let Some(at) = line.find("reason=") {
            let digits: String = line[at + 7..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Some(name) = digits.parse::<usize>().ok().and_then(|i| STAT_NAMES.get(i)) {
                line.insert_str(at + 7 + digits.len(), &format!(" ({name})"));
            }
        }
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}", record.level(), line));
        }
    }

    fn flush(&self) {}
}

/// Sets or clears `CONFIG_FLAG_LOG` in the pinned CONFIG (the other
/// fields are kept).
fn set_log_flag(pin_dir: &Path, on: bool) -> Result<()> {
    let path = pin_dir.join("maps").join(maps::CONFIG);
    let data =
        MapData::from_pin(&path).map_err(|e| bpf_error(format!("map {}", path.display()), e))?;
    let mut map: Array<_, Config> =
        Array::try_from(Map::Array(data)).map_err(|e| bpf_error("map CONFIG", e))?;
    let mut config = map.get(&0, 0).map_err(|e| bpf_error("map CONFIG", e))?;
    if on {
        config.flags |= CONFIG_FLAG_LOG;
    } else {
        config.flags &= !CONFIG_FLAG_LOG;
    }
    map.set(0, config, 0)
        .map_err(|e| bpf_error("map CONFIG", e))
}

/// `netctl trace`: turns on the programs' aya-log output for `seconds`
/// (at most [`TRACE_MAX_SECONDS`]) and writes every record to `out`, one
/// line each: drops (program, reason, addresses) and new DNAT flows. The
/// flag is cleared at the end, also on SIGINT/SIGTERM; a `SIGKILL`ed trace
/// leaves it on until the next trace ends. Two traces at once share the
/// flag (the first to end clears it) and the ring buffer (each record
/// goes to whichever reads it first).
pub fn trace(pin_dir: &Path, seconds: u64, out: &mut dyn Write) -> Result<()> {
    if seconds == 0 || seconds > TRACE_MAX_SECONDS {
        return Err(Error::invalid(
            "trace",
            format!("--seconds must be 1 to {TRACE_MAX_SECONDS}"),
        ));
    }
    // Every TC program of the object logs into the same AYA_LOGS ring
    // buffer (one load); endpoint_ingress leads to it.
    let path = pin_dir.join("progs").join(ENDPOINT_INGRESS);
    let prog = SchedClassifier::from_pin(&path)
        .map_err(|e| bpf_error(format!("program {}", path.display()), e))?;
    let id = prog
        .info()
        .map_err(|e| bpf_error(format!("program {}", path.display()), e))?
        .id();
    // Kept for the whole trace: dropping it closes the ring buffer's fd.
    let lines = TraceLines::default();
    let mut logger = aya_log::EbpfLogger::init_from_id_with_logger(id, lines.clone())
        .map_err(|e| bpf_error("aya-log ring buffer AYA_LOGS", e))?;

    TRACE_STOP.store(false, Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(trace_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let mut previous = Vec::new();
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Ok(old) = unsafe { sigaction(signal, &action) } {
            previous.push((signal, old));
        }
    }

    let result = set_log_flag(pin_dir, true).and_then(|()| {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut last = false;
        loop {
            logger.flush();
            let batch = match lines.0.lock() {
                Ok(mut guard) => std::mem::take(&mut *guard),
                Err(_) => Vec::new(),
            };
            for line in batch {
                writeln!(out, "{line}").map_err(|e| Error::io("trace output", e))?;
            }
            out.flush().map_err(|e| Error::io("trace output", e))?;
            if last {
                return Ok(());
            }
            if TRACE_STOP.load(Ordering::Relaxed) || Instant::now() >= end {
                last = true;
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cleared = set_log_flag(pin_dir, false);
    for (signal, old) in previous {
        // SAFETY: restores what was installed before.
        let _ = unsafe { sigaction(signal, &old) };
    }
    result.and(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_stored_as_on_the_wire() {
        let ip = Ipv4Addr::new(172, 18, 0, 2);
        assert_eq!(be_ip(ip).to_ne_bytes(), [172, 18, 0, 2]);
        assert_eq!(ip_from_be(be_ip(ip)), ip);
        let p = PortMapping {
            protocol: crate::model::Protocol::Udp,
            host_ip: None,
            host_port: 8080,
            container_ip: ip,
            container_port: 80,
            container: "web".into(),
            network: "front".into(),
        };
        let key = port_key(&p);
        assert_eq!(key.host_ip, 0);
        assert_eq!(key.host_port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(key.proto, 17);
    }
}
