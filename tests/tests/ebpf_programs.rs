//! The TC programs of netctl-ebpf, packet by packet, through
//! BPF_PROG_TEST_RUN: a crafted frame in, the verdict, the frame out, the
//! maps after. Nothing is attached to an interface and nothing is pinned
//! (the object's maps are private to each load).
//!
//! Each test runs in a thread of its own that first moves to a private,
//! anonymous network namespace (gone with the thread) and builds a small
//! topology there with rtnetlink: the uplink `up0` (198.51.100.1/24,
//! default route via 198.51.100.2, with or without a permanent neighbour
//! for the gateway), three bridges and four containers' host-side veths.
//! The kernel needs them twice: BPF_PROG_TEST_RUN runs a program "on" the
//! device named by `__sk_buff.ifindex` (which must exist in the caller's
//! namespace), and `bpf_fib_lookup` asks that namespace's routing tables.
//! So the fast path towards the uplink is tested for real: with the
//! neighbour the FIB answers SUCCESS (the program writes the MACs and
//! returns bpf_redirect's TC_ACT_REDIRECT), without it NO_NEIGH
//! (bpf_redirect_neigh, MACs left to the kernel), and without a route at
//! all the program hands the untranslated packet to the kernel (FibPass).
//! Redirects are not carried out by test runs: the verdict (7,
//! TC_ACT_REDIRECT) and the rewritten frame are what is checked.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::SchedClassifier,
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
};
use netctl::{datapath::ebpf::EBPF_OBJECT, netlink::Netlink};
use netctl_common::{
    config::Config,
    conntrack::{
        CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_KIND_DNAT, CT_KIND_HAIRPIN, CT_KIND_SNAT,
        CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_NEW,
    },
    endpoint::{EndpointInfo, NetworkInfo, NETWORK_FLAG_INTERNAL},
    portmap::{PortKey, PortTarget},
    stats::{Counter, StatIndex, STAT_COUNT, STAT_NAMES},
};

// ---------------------------------------------------------------------------
// Verdicts and protocol numbers.

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;

// ---------------------------------------------------------------------------
// The topology.

const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const WAN_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const WAN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0xfe];
/// Somewhere on the internet.
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const REMOTE_MAC: [u8; 6] = WAN_GW_MAC;

const SNAT_MIN: u16 = 40_000;
const SNAT_MAX: u16 = 40_999;

struct Net {
    id: u32,
    bridge: &'static str,
    subnet: Ipv4Addr,
    gateway: Ipv4Addr,
    mac: [u8; 6],
    internal: bool,
}

const NET_A: Net = Net {
    id: 1,
    bridge: "br-a",
    subnet: Ipv4Addr::new(172, 18, 0, 0),
    gateway: Ipv4Addr::new(172, 18, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x01],
    internal: false,
};
const NET_B: Net = Net {
    id: 2,
    bridge: "br-b",
    subnet: Ipv4Addr::new(172, 19, 0, 0),
    gateway: Ipv4Addr::new(172, 19, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x01],
    internal: false,
};
const NET_I: Net = Net {
    id: 3,
    bridge: "br-i",
    subnet: Ipv4Addr::new(172, 20, 0, 0),
    gateway: Ipv4Addr::new(172, 20, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x01],
    internal: true,
};
const NETS: [&Net; 3] = [&NET_A, &NET_B, &NET_I];

#[derive(Clone, Copy)]
struct Ctr {
    veth: &'static str,
    ip: Ipv4Addr,
    mac: [u8; 6],
    net: u32,
}

const A1: Ctr = Ctr {
    veth: "ve-a1",
    ip: Ipv4Addr::new(172, 18, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x02],
    net: 1,
};
const A2: Ctr = Ctr {
    veth: "ve-a2",
    ip: Ipv4Addr::new(172, 18, 0, 3),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x03],
    net: 1,
};
const B1: Ctr = Ctr {
    veth: "ve-b1",
    ip: Ipv4Addr::new(172, 19, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x02],
    net: 2,
};
const I1: Ctr = Ctr {
    veth: "ve-i1",
    ip: Ipv4Addr::new(172, 20, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x02],
    net: 3,
};
const CTRS: [Ctr; 4] = [A1, A2, B1, I1];

/// Published ports: (host ip, host port, proto) → (container, port).
const PORTS: [(Ipv4Addr, u16, u8, Ctr, u16); 5] = [
    (Ipv4Addr::UNSPECIFIED, 8080, TCP, A2, 80),
    (Ipv4Addr::UNSPECIFIED, 5353, UDP, A2, 53),
    // The exact address wins over 0.0.0.0 for the same port.
    (UPLINK_IP, 8443, TCP, B1, 443),
    (Ipv4Addr::UNSPECIFIED, 8443, TCP, A1, 9443),
    (Ipv4Addr::UNSPECIFIED, 9090, TCP, I1, 90),
];

fn net_of(id: u32) -> &'static Net {
    NETS.iter().find(|n| n.id == id).expect("network")
}

/// As stored in the maps: the bytes of the wire, read as a native integer.
fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn be_port(port: u16) -> u16 {
    port.to_be()
}

fn ct_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: be_ip(saddr),
        daddr: be_ip(daddr),
        sport: be_port(sport),
        dport: be_port(dport),
        proto,
        _pad: [0; 3],
    }
}

// ---------------------------------------------------------------------------
// The environment: a private netns, its links, the loaded object, its maps.

#[derive(Clone, Copy)]
struct Opts {
    /// A permanent neighbour entry for the uplink's gateway (FIB SUCCESS)
    /// or none (FIB NO_NEIGH).
    neighbour: bool,
    /// The default route via the uplink's gateway (without it, the outside
    /// is unroutable).
    default_route: bool,
    snat_ports: (u16, u16),
    /// Size of CONNTRACK (the object's default when None).
    conntrack_max: Option<u32>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            neighbour: true,
            default_route: true,
            snat_ports: (SNAT_MIN, SNAT_MAX),
            conntrack_max: None,
        }
    }
}

struct Env {
    ebpf: Ebpf,
    uplink: u32,
    veths: Vec<(&'static str, u32)>,
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("skipped: BPF_PROG_TEST_RUN and namespaces need root");
    }
    false
}

/// Runs `body` in a thread moved to a fresh, anonymous network namespace
/// (the root namespace is never touched), with the topology and the
/// programs loaded. A failed assertion in the thread fails the test.
fn in_netns(opts: Opts, body: impl FnOnce(&mut Env) + Send + 'static) {
    if !is_root() {
        return;
    }
    let result = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let mut env = Env::new(opts);
        body(&mut env);
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn ip_cmd(args: &[&str]) {
    // Spawned from the namespaced thread: the child inherits its netns.
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    fn new(opts: Opts) -> Env {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (uplink, veths) = runtime.block_on(async {
            let nl = Netlink::connect("test").expect("netlink");
            nl.add_veth("up0", "wan0").await.expect("veth up0");
            let uplink = nl.index("up0").await.expect("up0");
            let wan = nl.index("wan0").await.expect("wan0");
            nl.set_mac(uplink, UPLINK_MAC).await.expect("up0 mac");
            nl.set_up(uplink).await.expect("up0 up");
            nl.set_up(wan).await.expect("wan0 up");
            nl.add_address(uplink, UPLINK_IP, 24)
                .await
                .expect("up0 address");
            if opts.default_route {
                nl.add_default_route(WAN_GW).await.expect("default route");
            }
            for net in NETS {
                let index = nl.ensure_bridge(net.bridge, net.mac).await.expect("bridge");
                nl.add_address(index, net.gateway, 16)
                    .await
                    .expect("bridge address");
            }
            let mut veths = Vec::new();
            for ctr in CTRS {
                let peer = format!("c{}", &ctr.veth[1..]);
                nl.add_veth(ctr.veth, &peer).await.expect("veth");
                let index = nl.index(ctr.veth).await.expect("veth index");
                nl.set_up(index).await.expect("veth up");
                let peer_index = nl.index(&peer).await.expect("peer index");
                nl.set_up(peer_index).await.expect("peer up");
                veths.push((ctr.veth, index));
            }
            (uplink, veths)
        });
        // bpf_fib_lookup answers FWD_DISABLED on an interface that does not
        // forward.
        netctl::netns::write_sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
        if opts.neighbour {
            let mac = WAN_GW_MAC.map(|b| format!("{b:02x}")).join(":");
            ip_cmd(&[
                "neigh",
                "replace",
                &WAN_GW.to_string(),
                "lladdr",
                &mac,
                "dev",
                "up0",
                "nud",
                "permanent",
            ]);
        }

        let mut loader = EbpfLoader::new();
        if let Some(size) = opts.conntrack_max {
            loader.map_max_entries("CONNTRACK", size);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).expect("load the object");
        for name in ["endpoint_ingress", "uplink_ingress", "uplink_egress"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} in the object"))
                .try_into()
                .expect("a classifier");
            if let Err(e) = prog.load() {
                panic!("the verifier rejects {name}: {e:?}");
            }
        }
        let mut env = Env {
            ebpf,
            uplink,
            veths,
        };
        env.populate(opts);
        env
    }

    fn veth(&self, ctr: Ctr) -> u32 {
        self.veths
            .iter()
            .find(|(n, _)| *n == ctr.veth)
            .map(|(_, i)| *i)
            .expect("veth")
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect(name)).expect(name)
    }

    fn set_config(&mut self, ports: (u16, u16)) {
        let config = Config {
            uplink_ifindex: self.uplink,
            uplink_ip: be_ip(UPLINK_IP),
            snat_port_min: ports.0,
            snat_port_max: ports.1,
            host_netns_cookie: 0,
            flags: 0,
            _pad: 0,
        };
        let mut map: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut("CONFIG").expect("CONFIG")).expect("CONFIG");
        map.set(0, config, 0).expect("CONFIG[0]");
    }

    fn populate(&mut self, opts: Opts) {
        self.set_config(opts.snat_ports);
        let mut networks = self.hash::<u32, NetworkInfo>("NETWORKS");
        for net in NETS {
            let info = NetworkInfo {
                subnet: be_ip(net.subnet),
                mask: be_ip(Ipv4Addr::new(255, 255, 0, 0)),
                gateway: be_ip(net.gateway),
                bridge_ifindex: 0,
                bridge_mac: net.mac,
                _pad: [0; 2],
                flags: if net.internal {
                    NETWORK_FLAG_INTERNAL
                } else {
                    0
                },
            };
            networks.insert(net.id, info, 0).expect("NETWORKS");
        }
        let endpoints: Vec<(u32, EndpointInfo)> = CTRS
            .iter()
            .map(|c| {
                (
                    be_ip(c.ip),
                    EndpointInfo {
                        ifindex: self.veth(*c),
                        network_id: c.net,
                        mac: c.mac,
                        _pad: [0; 2],
                    },
                )
            })
            .collect();
        let mut map = self.hash::<u32, EndpointInfo>("ENDPOINTS");
        for (ip, info) in endpoints {
            map.insert(ip, info, 0).expect("ENDPOINTS");
        }
        let ports: Vec<(PortKey, PortTarget)> = PORTS
            .iter()
            .map(|(host_ip, host_port, proto, ctr, port)| {
                (
                    PortKey {
                        host_ip: be_ip(*host_ip),
                        host_port: be_port(*host_port),
                        proto: *proto,
                        _pad: 0,
                    },
                    PortTarget {
                        ip: be_ip(ctr.ip),
                        port: be_port(*port),
                        _pad: 0,
                        ifindex: self.veth(*ctr),
                    },
                )
            })
            .collect();
        let mut map = self.hash::<PortKey, PortTarget>("PORTMAP");
        for (k, v) in ports {
            map.insert(k, v, 0).expect("PORTMAP");
        }
    }

    fn publish(&mut self, host_ip: Ipv4Addr, host_port: u16, proto: u8, ctr: Ctr, port: u16) {
        let target = PortTarget {
            ip: be_ip(ctr.ip),
            port: be_port(port),
            _pad: 0,
            ifindex: self.veth(ctr),
        };
        let key = PortKey {
            host_ip: be_ip(host_ip),
            host_port: be_port(host_port),
            proto,
            _pad: 0,
        };
        self.hash::<PortKey, PortTarget>("PORTMAP")
            .insert(key, target, 0)
            .expect("PORTMAP");
    }

    /// Runs `program` on `frame` as if it arrived on (or left by) `ifindex`.
    fn run(&self, program: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .expect("program")
            .try_into()
            .expect("classifier");
        // struct __sk_buff (192 bytes): only ifindex (offset 40) is set; the
        // kernel runs the program with skb->dev = that device.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn endpoint(&self, ctr: Ctr, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("endpoint_ingress", self.veth(ctr), frame)
    }

    fn uplink_in(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("uplink_ingress", self.uplink, frame)
    }

    fn uplink_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("uplink_egress", self.uplink, frame)
    }

    /// Every counter, summed over CPUs.
    fn stats(&self) -> Vec<Counter> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("STATS")).expect("STATS");
        (0..STAT_COUNT)
            .map(|i| {
                map.get(&i, 0)
                    .expect("STATS")
                    .iter()
                    .fold(Counter::default(), |acc, c| Counter {
                        packets: acc.packets + c.packets,
                        bytes: acc.bytes + c.bytes,
                    })
            })
            .collect()
    }

    /// Asserts the packet counters: those named have these values, every
    /// other one is zero.
    fn assert_stats(&self, expected: &[(StatIndex, u64)]) {
        let stats = self.stats();
        for (i, counter) in stats.iter().enumerate() {
            let want = expected
                .iter()
                .find(|(s, _)| *s as usize == i)
                .map_or(0, |(_, n)| *n);
            assert_eq!(
                counter.packets,
                want,
                "STATS[{}] packets (all: {:?})",
                STAT_NAMES[i],
                stats
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.packets != 0)
                    .map(|(i, c)| (STAT_NAMES[i], c.packets))
                    .collect::<Vec<_>>()
            );
        }
    }

    fn stat_bytes(&self, index: StatIndex) -> u64 {
        self.stats()[index as usize].bytes
    }

    fn conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        let map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map("CONNTRACK").expect("CONNTRACK")).expect("CONNTRACK");
        let mut all: Vec<_> = map.iter().map(|r| r.expect("CONNTRACK entry")).collect();
        all.sort_by_key(|(k, _)| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        all
    }

    fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.conntrack()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    fn ct_insert(&mut self, key: CtKey, entry: CtEntry) {
        self.hash::<CtKey, CtEntry>("CONNTRACK")
            .insert(key, entry, 0)
            .expect("CONNTRACK insert");
    }

    /// Sets the time of the last reclaim sweep (bpf_ktime_get_ns clock).
    fn set_last_reclaim(&mut self, ns: u64) {
        let mut map: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("CT_RECLAIM").expect("CT_RECLAIM"))
                .expect("CT_RECLAIM");
        map.set(0, ns, 0).expect("CT_RECLAIM[0]");
    }
}

// ---------------------------------------------------------------------------
// Frames: a builder computing every checksum, and a reader.

/// Internet checksum (RFC 1071), folded and complemented: 0 over data that
/// includes a correct checksum.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for bytes in chunks {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `checksum: false` sends 0 ("no checksum", legal on IPv4).
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
    },
    Icmp {
        ty: u8,
        id: u16,
        seq: u16,
    },
    /// Another protocol, with the payload as its content.
    Raw {
        proto: u8,
    },
}

#[derive(Clone, Debug)]
struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    /// Flags and fragment offset, host order (0x4000: DF).
    frag: u16,
    /// IP options, a multiple of 4 bytes.
    options: Vec<u8>,
    l4: L4,
    payload: Vec<u8>,
}

impl Frame {
    fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame {
            dst_mac,
            src_mac,
            src,
            dst,
            ttl: 64,
            frag: 0x4000,
            options: Vec::new(),
            l4,
            payload: b"netctl datapath test payload".to_vec(),
        }
    }

    /// From a container to its gateway's MAC.
    fn from(ctr: Ctr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(ctr.mac, net_of(ctr.net).mac, ctr.ip, dst, l4)
    }

    /// From the outside, through the uplink's gateway.
    fn from_outside(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(REMOTE_MAC, UPLINK_MAC, src, dst, l4)
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } => ICMP,
            L4::Raw { proto } => proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let pseudo = |len: usize| {
            let mut p = Vec::new();
            p.extend_from_slice(&self.src.octets());
            p.extend_from_slice(&self.dst.octets());
            p.extend_from_slice(&[0, self.proto()]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        };
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&0x1000_0001u32.to_be_bytes()); // seq
                h.extend_from_slice(&0x2000_0002u32.to_be_bytes()); // ack
                h.extend_from_slice(&[0x50, flags]); // data offset 5, flags
                h.extend_from_slice(&64240u16.to_be_bytes()); // window
                h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                h.extend_from_slice(&self.payload);
                let c = checksum(&[&pseudo(h.len()), &h]);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp {
                sport,
                dport,
                checksum: with_checksum,
            } => {
                let len = 8 + self.payload.len();
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&(len as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.payload);
                if with_checksum {
                    let c = match checksum(&[&pseudo(len), &h]) {
                        0 => 0xffff,
                        c => c,
                    };
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            L4::Icmp { ty, id, seq } => {
                let mut h = vec![ty, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&self.payload);
                let c = checksum(&[&h]);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Raw { .. } => self.payload.clone(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "IP options come in words");
        let l4 = self.l4_bytes();
        let ihl = 20 + self.options.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// What a frame says, read back.
#[derive(Debug, PartialEq, Eq)]
struct View {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    /// Ports, or the echo identifier in both.
    sport: u16,
    dport: u16,
}

fn view(frame: &[u8]) -> View {
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 frame");
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = &ip[ihl..];
    let (sport, dport) = match ip[9] {
        ICMP => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    View {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        proto: ip[9],
        sport,
        dport,
    }
}

/// Recomputes the IPv4 header checksum and the L4 checksum of a frame
/// (pseudo header for TCP and UDP); a UDP checksum of 0 means "none".
fn assert_checksums(frame: &[u8]) {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(checksum(&[&ip[..ihl]]), 0, "IPv4 header checksum");
    let l4 = &ip[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    match ip[9] {
        TCP => assert_eq!(checksum(&[&pseudo, l4]), 0, "TCP checksum"),
        UDP if l4[6..8] == [0, 0] => {}
        UDP => assert_eq!(checksum(&[&pseudo, l4]), 0, "UDP checksum"),
        ICMP => assert_eq!(checksum(&[l4]), 0, "ICMP checksum"),
        _ => {}
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        checksum: true,
    }
}

fn echo(ty: u8, id: u16) -> L4 {
    L4::Icmp { ty, id, seq: 7 }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A last-seen time past the shortest timeout (TCP closing, 10 s), in
/// bpf_ktime_get_ns() time (CLOCK_MONOTONIC: time since boot).
fn long_ago() -> u64 {
    let now = monotonic_ns();
    assert!(now > 30_000_000_000, "the machine is up for 30 s at least");
    now - 20_000_000_000
}

/// The fields of an entry that the programs decide (not the clock and
/// counters, checked apart).
#[allow(clippy::too_many_arguments)]
fn entry(
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
    kind: u8,
    state: u8,
    direction: u8,
    ifindex: u32,
) -> CtEntry {
    CtEntry {
        saddr: be_ip(saddr),
        daddr: be_ip(daddr),
        sport: be_port(sport),
        dport: be_port(dport),
        kind,
        state,
        direction,
        _pad: 0,
        ifindex,
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
    }
}

/// Compares an entry with the expected one, clock and counters apart; the
/// clock must be a recent bpf_ktime_get_ns().
fn assert_entry(actual: Option<CtEntry>, expected: CtEntry, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: no conntrack entry"));
    let now = monotonic_ns();
    assert!(
        actual.last_seen_ns > 0 && actual.last_seen_ns <= now,
        "{what}: last_seen_ns {} (now {now})",
        actual.last_seen_ns
    );
    assert_eq!(
        CtEntry {
            last_seen_ns: 0,
            packets: 0,
            bytes: 0,
            ..actual
        },
        expected,
        "{what}"
    );
}

/// The frame is what `expected` builds, byte for byte (addresses, ports,
/// MACs, TTL, payload, and checksums equal to freshly computed ones), and
/// its checksums verify.
fn assert_frame(out: &[u8], expected: &Frame) {
    let want = expected.bytes();
    assert_eq!(view(out), view(&want), "rewritten headers");
    assert_eq!(out, &want[..], "the whole frame");
    assert_checksums(out);
}

fn assert_verdict(got: (u32, Vec<u8>), verdict: u32, frame: &[u8]) {
    assert_eq!(got.0, verdict, "verdict");
    assert_eq!(got.1, frame, "the frame is untouched");
}

fn with<F: FnOnce(&mut Frame)>(frame: &Frame, change: F) -> Frame {
    let mut f = frame.clone();
    change(&mut f);
    f
}

/// The frame (20-byte IPv4 header) cut 10 bytes into its L4 header, with a
/// consistent total length and header checksum: only the L4 header is short.
fn cut_l4(frame: &[u8]) -> Vec<u8> {
    let mut short = frame[..44].to_vec();
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&short[14..34]]);
    short[24..26].copy_from_slice(&c.to_be_bytes());
    short
}

fn arp_frame(src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&A1.ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&NET_A.gateway.octets());
    f
}

fn ipv6_frame(src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = NET_A.mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]); // UDP, 8 bytes
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
    f
}

// ---------------------------------------------------------------------------
// What passes untouched.

#[test]
fn arp_ipv6_and_truncated_frames_pass_untouched() {
    in_netns(Opts::default(), |env| {
        // (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than
        // Ethernet + 20 bytes, so the shortest header is not tried.)
        let full = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        // The IPv4 header claims 60 bytes (ihl 15): only 20 are there.
        let mut long_ihl = full[..34].to_vec();
        long_ihl[14] = 0x4f;
        // A whole IPv4 header announcing TCP, 10 bytes of it.
        let short_tcp = cut_l4(&full);
        // Total length beyond the frame.
        let mut long_len = full.clone();
        long_len[16..18].copy_from_slice(&1400u16.to_be_bytes());
        let frames = [
            (arp_frame(A1.mac), StatIndex::NotIpv4),
            (ipv6_frame(A1.mac), StatIndex::NotIpv4),
            (long_ihl, StatIndex::Truncated),
            (short_tcp, StatIndex::Truncated),
            (long_len, StatIndex::Truncated),
        ];
        for (frame, _) in &frames {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_OK, frame);
            assert_verdict(env.uplink_in(frame), TC_ACT_OK, frame);
            assert_verdict(env.uplink_out(frame), TC_ACT_OK, frame);
        }
        // uplink_ingress looks at the destination before the L4 header: the
        // short TCP frame (to REMOTE, not the uplink address) is a plain Pass
        // there.
        env.assert_stats(&[
            (StatIndex::NotIpv4, 6),
            (StatIndex::Truncated, 8),
            (StatIndex::Pass, 1),
        ]);
        let arp_len = frames[0].0.len() as u64;
        let ipv6_len = frames[1].0.len() as u64;
        assert_eq!(
            env.stat_bytes(StatIndex::NotIpv4),
            3 * (arp_len + ipv6_len),
            "bytes"
        );
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn spoofed_source_address_or_mac_is_dropped() {
    in_netns(Opts::default(), |env| {
        // A2's address (and MAC) from A1's veth.
        let other = Frame::from(A2, REMOTE, tcp(33000, 443, SYN)).bytes();
        // An address nobody has.
        let unknown = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.src = Ipv4Addr::new(172, 18, 0, 99)
        })
        .bytes();
        // A1's address with another MAC.
        let wrong_mac = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.src_mac = [0x02, 0x42, 0xac, 0x12, 0x00, 0x99]
        })
        .bytes();
        // A2's address with a TCP header cut short: checked all the same
        // (the kernel would route it).
        let short = cut_l4(&Frame::from(A2, REMOTE, tcp(33000, 443, SYN)).bytes());
        for frame in [&other, &unknown, &wrong_mac, &short] {
            assert_verdict(env.endpoint(A1, frame), TC_ACT_SHOT, frame);
        }
        // The genuine one passes (same subnet).
        let genuine = Frame::from(A1, A2.ip, tcp(33000, 80, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &genuine), TC_ACT_OK, &genuine);
        env.assert_stats(&[(StatIndex::DropSpoofed, 4), (StatIndex::Pass, 1)]);
        assert_eq!(
            env.stat_bytes(StatIndex::DropSpoofed),
            (other.len() + unknown.len() + wrong_mac.len() + short.len()) as u64
        );
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn own_subnet_host_addresses_and_multicast_pass_untouched() {
    in_netns(Opts::default(), |env| {
        let frames = [
            // The peer on the same bridge.
            Frame::from(A1, A2.ip, tcp(33000, 80, SYN)),
            // DNS on the own gateway (no published port 53).
            Frame::from(A1, NET_A.gateway, udp(33000, 53)),
            // Another network's gateway: a host address, reachable.
            Frame::from(A1, NET_B.gateway, tcp(33000, 22, SYN)),
            // The uplink address, no published port.
            Frame::from(A1, UPLINK_IP, tcp(33000, 22, SYN)),
            // mDNS: multicast stays on the bridge, although 5353/udp is
            // published on 0.0.0.0.
            Frame::from(A1, Ipv4Addr::new(224, 0, 0, 251), udp(5353, 5353)),
            // The subnet's broadcast.
            Frame::from(A1, Ipv4Addr::new(172, 18, 255, 255), udp(68, 67)),
        ];
        for frame in &frames {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(A1, &bytes), TC_ACT_OK, &bytes);
        }
        env.assert_stats(&[(StatIndex::Pass, frames.len() as u64)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn networks_are_isolated() {
    in_netns(Opts::default(), |env| {
        // A container of another network.
        let to_b1 = Frame::from(A1, B1.ip, tcp(33000, 80, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &to_b1), TC_ACT_SHOT, &to_b1);
        // An address in another network's subnet (the FIB routes it to br-b).
        let to_subnet = Frame::from(A1, Ipv4Addr::new(172, 19, 0, 77), udp(33000, 53)).bytes();
        assert_verdict(env.endpoint(A1, &to_subnet), TC_ACT_SHOT, &to_subnet);
        // The other way round, ICMP.
        let ping = Frame::from(B1, A1.ip, echo(8, 0x77)).bytes();
        assert_verdict(env.endpoint(B1, &ping), TC_ACT_SHOT, &ping);
        env.assert_stats(&[(StatIndex::DropIsolated, 3)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn internal_network_reaches_only_itself() {
    in_netns(Opts::default(), |env| {
        let drops = [
            Frame::from(I1, REMOTE, tcp(33000, 443, SYN)),
            Frame::from(I1, REMOTE, echo(8, 0x99)),
            Frame::from(I1, UPLINK_IP, tcp(33000, 22, SYN)),
            // A published port of another network: no hairpin out of it.
            Frame::from(I1, UPLINK_IP, tcp(33000, 8080, SYN)),
            // Its own published port, through the uplink address: not even
            // that (the uplink address is outside the network).
            Frame::from(I1, UPLINK_IP, tcp(33000, 9090, SYN)),
            Frame::from(I1, NET_A.gateway, tcp(33000, 22, SYN)),
        ];
        for frame in &drops {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(I1, &bytes), TC_ACT_SHOT, &bytes);
        }
        let passes = [
            Frame::from(I1, NET_I.gateway, udp(33000, 53)),
            Frame::from(I1, Ipv4Addr::new(172, 20, 0, 9), tcp(33000, 80, SYN)),
        ];
        for frame in &passes {
            let bytes = frame.bytes();
            assert_verdict(env.endpoint(I1, &bytes), TC_ACT_OK, &bytes);
        }
        // Nothing reaches it from outside either, published port or not,
        // nor from another network through a host address.
        let inbound = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 9090, SYN)).bytes();
        assert_verdict(env.uplink_in(&inbound), TC_ACT_SHOT, &inbound);
        let hairpin = Frame::from(A1, UPLINK_IP, tcp(33000, 9090, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &hairpin), TC_ACT_SHOT, &hairpin);
        // Nor leaves through the kernel's routing.
        let routed = with(&Frame::from(I1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.ttl = 63
        })
        .bytes();
        assert_verdict(env.uplink_out(&routed), TC_ACT_SHOT, &routed);
        env.assert_stats(&[(StatIndex::DropInternal, 9), (StatIndex::Pass, 2)]);
        assert!(env.conntrack().is_empty());
    });
}

// ---------------------------------------------------------------------------
// SNAT.

#[test]
fn snat_tcp_flow_out_and_back_with_states() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect to the uplink");
        let port = view(&out).sport;
        assert!(
            (SNAT_MIN..=SNAT_MAX).contains(&port),
            "SNAT port {port} in the range"
        );
        // FIB SUCCESS: the uplink's MAC to the gateway's, TTL decremented.
        let snatted = |f: &Frame, flags: u8| {
            with(f, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, flags);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            })
        };
        assert_frame(&out, &snatted(&syn, SYN));

        let original_key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        assert_eq!(env.conntrack().len(), 2, "one entry per direction");
        let a1_veth = env.veth(A1);
        let original = |state| {
            entry(
                UPLINK_IP,
                REMOTE,
                port,
                443,
                CT_KIND_SNAT,
                state,
                CT_DIR_ORIGINAL,
                0,
            )
        };
        let reply = |state| {
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                state,
                CT_DIR_REPLY,
                a1_veth,
            )
        };
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_NEW),
            "original",
        );
        assert_entry(env.ct_get(&reply_key), reply(CT_STATE_NEW), "reply");
        let o = env.ct_get(&original_key).unwrap();
        assert_eq!((o.packets, o.bytes), (1, syn.bytes().len() as u64));
        env.assert_stats(&[(StatIndex::Snat, 1), (StatIndex::RedirectUplink, 1)]);

        // The SYN-ACK comes back to the uplink address and port.
        let syn_ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK));
        let (verdict, out) = env.uplink_in(&syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A1");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.dst = A1.ip;
                f.l4 = tcp(443, 33000, SYN | ACK);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_ESTABLISHED),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_ESTABLISHED),
            "reply after the reply",
        );
        assert_eq!(env.ct_get(&reply_key).unwrap().packets, 1);

        // The next packet of the flow keeps its port (conntrack hit).
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK | PSH));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&ack, ACK | PSH));
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);

        // FIN: both directions close.
        let fin = Frame::from(A1, REMOTE, tcp(33000, 443, FIN | ACK));
        let (verdict, out) = env.endpoint(A1, &fin.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(&out, &snatted(&fin, FIN | ACK));
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_CLOSING),
            "original after FIN",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_CLOSING),
            "reply after FIN",
        );
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::Snat, 3),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn snat_udp_without_neighbour_keeps_a_zero_checksum_zero() {
    let opts = Opts {
        neighbour: false,
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // With a checksum: updated (the MACs are left to bpf_redirect_neigh).
        let query = Frame::from(A1, REMOTE, udp(5000, 53));
        let (verdict, out) = env.endpoint(A1, &query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_neigh");
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&query, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(port, 53);
                f.ttl = 63;
            }),
        );
        assert_ne!(&out[40..42], &[0, 0], "a real UDP checksum");

        // Without one: it stays 0.
        let bare = Frame::from(
            A1,
            REMOTE,
            L4::Udp {
                sport: 5001,
                dport: 53,
                checksum: false,
            },
        );
        let (verdict, out) = env.endpoint(A1, &bare.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port2 = view(&out).sport;
        assert_eq!(&out[40..42], &[0, 0], "no UDP checksum stays none");
        let bare_out = |f: &Frame, sport, dport| {
            with(f, |f| {
                f.l4 = L4::Udp {
                    sport,
                    dport,
                    checksum: false,
                }
            })
        };
        assert_frame(
            &out,
            &bare_out(
                &with(&bare, |f| {
                    f.src = UPLINK_IP;
                    f.ttl = 63;
                }),
                port2,
                53,
            ),
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 53, port2, UDP)),
            entry(
                REMOTE,
                A1.ip,
                53,
                5001,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "reply entry",
        );

        // Its answer, also without a checksum, comes back to A1.
        let answer = bare_out(
            &Frame::from_outside(REMOTE, UPLINK_IP, udp(0, 0)),
            53,
            port2,
        );
        let (verdict, out) = env.uplink_in(&answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[40..42], &[0, 0], "still no checksum");
        assert_frame(
            &out,
            &bare_out(
                &with(&answer, |f| {
                    f.dst = A1.ip;
                    f.dst_mac = A1.mac;
                    f.src_mac = NET_A.mac;
                    f.ttl = 63;
                }),
                53,
                5001,
            ),
        );
        assert_eq!(
            env.ct_get(&ct_key(A1.ip, REMOTE, 5001, 53, UDP))
                .unwrap()
                .state,
            CT_STATE_ESTABLISHED
        );
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn snat_icmp_echo_by_identifier_and_other_protocols_pass() {
    in_netns(Opts::default(), |env| {
        let request = Frame::from(A1, REMOTE, echo(8, 0x4242));
        let (verdict, out) = env.endpoint(A1, &request.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let id = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&id), "identifier {id}");
        assert_frame(
            &out,
            &with(&request, |f| {
                f.src = UPLINK_IP;
                f.l4 = echo(8, id);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        let a1_veth = env.veth(A1);
        assert_entry(
            env.ct_get(&ct_key(A1.ip, REMOTE, 0x4242, 0x4242, ICMP)),
            entry(
                UPLINK_IP,
                REMOTE,
                id,
                id,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                0,
            ),
            "original",
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, id, id, ICMP)),
            entry(
                REMOTE,
                A1.ip,
                0x4242,
                0x4242,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1_veth,
            ),
            "reply",
        );

        let reply = Frame::from_outside(REMOTE, UPLINK_IP, echo(0, id));
        let (verdict, out) = env.uplink_in(&reply.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&reply, |f| {
                f.dst = A1.ip;
                f.l4 = echo(0, 0x4242);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );

        // Not translated, handed to the kernel as they are: an ICMP
        // timestamp request, GRE.
        let timestamp = Frame::from(A1, REMOTE, echo(13, 0x4343)).bytes();
        assert_verdict(env.endpoint(A1, &timestamp), TC_ACT_OK, &timestamp);
        let gre = Frame::from(A1, REMOTE, L4::Raw { proto: 47 }).bytes();
        assert_verdict(env.endpoint(A1, &gre), TC_ACT_OK, &gre);
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
            (StatIndex::UnsupportedProto, 2),
        ]);
    });
}

#[test]
fn snat_port_search_skips_published_and_taken_ports() {
    let opts = Opts {
        snat_ports: (40_000, 40_001),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        env.publish(Ipv4Addr::UNSPECIFIED, 40_000, TCP, A2, 80);
        // 40000 is published: 40001 is the only port left.
        let first = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &first.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_001);
        // Another flow to the same destination: nothing left.
        let second = Frame::from(A1, REMOTE, tcp(33001, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &second), TC_ACT_SHOT, &second);
        // Another destination: 40001 is free towards it.
        let elsewhere = Frame::from(A1, Ipv4Addr::new(203, 0, 113, 11), tcp(33002, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &elsewhere.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_001);
        assert_checksums(&out);
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::DropSnatExhausted, 1),
        ]);
    });
}

#[test]
fn snat_exhaustion_and_expired_ports_are_reused() {
    let opts = Opts {
        snat_ports: (40_000, 40_000),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // The only port is taken by a live flow to the same destination.
        let taken = ct_key(REMOTE, UPLINK_IP, 443, 40_000, TCP);
        let mut other = entry(
            REMOTE,
            A2.ip,
            443,
            35000,
            CT_KIND_SNAT,
            CT_STATE_ESTABLISHED,
            CT_DIR_REPLY,
            env.veth(A2),
        );
        other.last_seen_ns = monotonic_ns();
        env.ct_insert(taken, other);
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_SHOT, &syn);
        assert_eq!(env.conntrack().len(), 1, "nothing inserted");
        env.assert_stats(&[(StatIndex::DropSnatExhausted, 1)]);

        // Once that flow expired, its port is free again.
        other.state = CT_STATE_CLOSING;
        other.last_seen_ns = long_ago();
        env.ct_insert(taken, other);
        let (verdict, out) = env.endpoint(A1, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_000);
        assert_entry(
            env.ct_get(&taken),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "the port's new owner",
        );
        assert_eq!(env.conntrack().len(), 2);
        env.assert_stats(&[
            (StatIndex::DropSnatExhausted, 1),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

/// A closing TCP flow (FIN or RST seen, not yet expired) gives its port to
/// a new SYN, as the kernel's conntrack does in TIME_WAIT; an established
/// one and a non-SYN packet do not take it.
#[test]
fn a_new_syn_takes_over_the_port_of_a_closing_flow() {
    let opts = Opts {
        snat_ports: (40_000, 40_000),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let taken = ct_key(REMOTE, UPLINK_IP, 443, 40_000, TCP);
        let mut other = entry(
            REMOTE,
            A2.ip,
            443,
            35000,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_REPLY,
            env.veth(A2),
        );
        other.last_seen_ns = monotonic_ns();
        env.ct_insert(taken, other);
        // Not a SYN: the closing flow keeps its port.
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK)).bytes();
        assert_verdict(env.endpoint(A1, &ack), TC_ACT_SHOT, &ack);
        assert_eq!(
            env.ct_get(&taken).unwrap().daddr,
            other.daddr,
            "still the old flow's"
        );

        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A1, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 40_000);
        assert_checksums(&out);
        assert_entry(
            env.ct_get(&taken),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "the port's new owner",
        );
        // The new flow is not closing: the next SYN finds no port.
        let next = Frame::from(A1, REMOTE, tcp(33001, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &next), TC_ACT_SHOT, &next);
        env.assert_stats(&[
            (StatIndex::DropSnatExhausted, 2),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

/// A container reusing a source port whose old flow is closing starts a
/// new flow: the old entries go (the kernel's TIME_WAIT rule) instead of the
/// SYN riding a translation whose port may belong to someone else by now.
#[test]
fn a_syn_on_a_closing_flow_starts_a_new_one() {
    let opts = Opts {
        snat_ports: (40_000, 40_001),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let first = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &first.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let old_port = view(&out).sport;
        let fin = Frame::from(A1, REMOTE, tcp(33000, 443, FIN | ACK)).bytes();
        let (verdict, _) = env.endpoint(A1, &fin);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let original = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        assert_eq!(env.ct_get(&original).unwrap().state, CT_STATE_CLOSING);
        let old_reply = ct_key(REMOTE, UPLINK_IP, 443, old_port, TCP);

        // Another flow takes the closing flow's port over (claim)...
        let taker = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A2, &taker);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let taker_port = view(&out).sport;

        // ...then A1 reuses 33000: a new flow, never the stale translation.
        let again = Frame::from(A1, REMOTE, tcp(33000, 443, SYN)).bytes();
        let (verdict, out) = env.endpoint(A1, &again);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let new_port = view(&out).sport;
        let new_reply = ct_key(REMOTE, UPLINK_IP, 443, new_port, TCP);
        assert_eq!(
            env.ct_get(&original).unwrap().state,
            CT_STATE_NEW,
            "a fresh original entry"
        );
        assert_eq!(
            env.ct_get(&new_reply).unwrap().daddr,
            be_ip(A1.ip),
            "replies come back to A1"
        );
        if taker_port == old_port {
            // The taken-over reply entry still belongs to A2's flow.
            assert_ne!(new_port, old_port);
            assert_eq!(env.ct_get(&old_reply).unwrap().daddr, be_ip(A2.ip));
        }
        assert_checksums(&out);
    });
}

#[test]
fn expired_entries_are_misses_unless_their_pair_lives() {
    in_netns(Opts::default(), |env| {
        let key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let mut stale = entry(
            UPLINK_IP,
            REMOTE,
            41_234,
            443,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_ORIGINAL,
            0,
        );
        stale.last_seen_ns = long_ago();
        // Expired, and no pair: a miss; a new flow replaces it.
        env.ct_insert(key, stale);
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let fresh = env.ct_get(&key).expect("new entry");
        assert!(fresh.last_seen_ns > stale.last_seen_ns, "a new entry");
        assert_eq!(fresh.state, CT_STATE_ESTABLISHED, "picked up mid-stream");
        assert_eq!(view(&out).sport, u16::from_be(fresh.sport));
        assert_eq!(env.conntrack().len(), 2);

        // Expired, but its pair saw a packet lately: the flow lives on, with
        // its port.
        let key2 = ct_key(A1.ip, REMOTE, 33001, 443, TCP);
        env.ct_insert(key2, stale);
        let mut pair = entry(
            REMOTE,
            A1.ip,
            443,
            33001,
            CT_KIND_SNAT,
            CT_STATE_CLOSING,
            CT_DIR_REPLY,
            env.veth(A1),
        );
        pair.last_seen_ns = monotonic_ns();
        env.ct_insert(ct_key(REMOTE, UPLINK_IP, 443, 41_234, TCP), pair);
        let ack2 = Frame::from(A1, REMOTE, tcp(33001, 443, ACK));
        let (verdict, out) = env.endpoint(A1, &ack2.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, 41_234, "the flow's own port");
        assert_checksums(&out);
        assert!(
            env.ct_get(&key2).unwrap().last_seen_ns > stale.last_seen_ns,
            "refreshed"
        );
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[(StatIndex::Snat, 2), (StatIndex::RedirectUplink, 2)]);
    });
}

#[test]
fn ttl_fragments_and_ip_options() {
    in_netns(Opts::default(), |env| {
        // TTL 1: the kernel answers "time exceeded" (untranslated).
        let last_hop = with(&Frame::from(A1, REMOTE, tcp(33000, 443, SYN)), |f| {
            f.ttl = 1
        })
        .bytes();
        assert_verdict(env.endpoint(A1, &last_hop), TC_ACT_OK, &last_hop);
        // Fragments of a datagram needing SNAT: the first (MF) and a later one.
        let first = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.endpoint(A1, &first), TC_ACT_SHOT, &first);
        let later = with(&Frame::from(A1, REMOTE, udp(5000, 53)), |f| f.frag = 0x00b9).bytes();
        assert_verdict(env.endpoint(A1, &later), TC_ACT_SHOT, &later);
        // A fragment on the own bridge is none of our business.
        let local = with(&Frame::from(A1, A2.ip, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.endpoint(A1, &local), TC_ACT_OK, &local);
        // A fragment to a published port (hairpin) cannot be translated.
        let to_port = with(&Frame::from(A1, UPLINK_IP, udp(5000, 5353)), |f| {
            f.frag = 0x2000
        })
        .bytes();
        assert_verdict(env.endpoint(A1, &to_port), TC_ACT_SHOT, &to_port);
        assert!(env.conntrack().is_empty());

        // IP options (ihl 6): the L4 header is found after them and
        // translated; the options are kept.
        let with_options = with(&Frame::from(A1, REMOTE, udp(5002, 53)), |f| {
            f.options = vec![0x01, 0x01, 0x01, 0x00]
        });
        let (verdict, out) = env.endpoint(A1, &with_options.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&with_options, |f| {
                f.src = UPLINK_IP;
                f.l4 = udp(port, 53);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        env.assert_stats(&[
            (StatIndex::Pass, 2),
            (StatIndex::DropFragment, 3),
            (StatIndex::Snat, 1),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

#[test]
fn without_a_route_the_kernel_decides_and_uplink_egress_translates() {
    let opts = Opts {
        default_route: false,
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // No route to the outside: FibPass, untranslated, no entry.
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let bytes = syn.bytes();
        assert_verdict(env.endpoint(A1, &bytes), TC_ACT_OK, &bytes);
        assert!(env.conntrack().is_empty());
        env.assert_stats(&[(StatIndex::FibPass, 1)]);

        // Say the kernel routed it out of the uplink after all: the slow
        // path translates it (MACs and TTL are the kernel's already).
        let routed = with(&syn, |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&routed.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&routed, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, SYN);
            }),
        );
        assert_entry(
            env.ct_get(&ct_key(REMOTE, UPLINK_IP, 443, port, TCP)),
            entry(
                REMOTE,
                A1.ip,
                443,
                33000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                env.veth(A1),
            ),
            "reply entry of the slow path",
        );
        // Its next packet hits the entry: same port.
        let ack = with(&routed, |f| f.l4 = tcp(33000, 443, ACK));
        let (verdict, out) = env.uplink_out(&ack.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(
            &out,
            &with(&ack, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(port, 443, ACK);
            }),
        );
        // The container's next packet hits the entry in endpoint_ingress,
        // but there is still no route: the kernel's, untranslated (for the
        // slow path to translate with the same entry).
        let again = Frame::from(A1, REMOTE, tcp(33000, 443, ACK)).bytes();
        assert_verdict(env.endpoint(A1, &again), TC_ACT_OK, &again);
        // The reply takes the fast path into the container.
        let syn_ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK));
        let (verdict, out) = env.uplink_in(&syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_eq!(view(&out).dport, 33000);
        assert_checksums(&out);
        env.assert_stats(&[
            (StatIndex::FibPass, 2),
            (StatIndex::Snat, 2),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

#[test]
fn uplink_egress_leaves_host_traffic_alone_and_checks_container_traffic() {
    in_netns(Opts::default(), |env| {
        let routed = |ctr: Ctr, l4| {
            with(&Frame::from(ctr, REMOTE, l4), |f| {
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            })
        };
        // The host's own traffic.
        let host = Frame::new(
            UPLINK_MAC,
            WAN_GW_MAC,
            UPLINK_IP,
            REMOTE,
            tcp(22, 50000, ACK),
        )
        .bytes();
        assert_verdict(env.uplink_out(&host), TC_ACT_OK, &host);
        // Unsupported protocols leave as they are; fragments are refused.
        let gre = routed(A1, L4::Raw { proto: 47 }).bytes();
        assert_verdict(env.uplink_out(&gre), TC_ACT_OK, &gre);
        let fragment = with(&routed(A1, udp(5000, 53)), |f| f.frag = 0x2000).bytes();
        assert_verdict(env.uplink_out(&fragment), TC_ACT_SHOT, &fragment);
        // ICMP echo through the slow path.
        let ping = routed(A1, echo(8, 0x5151));
        let (verdict, out) = env.uplink_out(&ping.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let id = view(&out).sport;
        assert_frame(
            &out,
            &with(&ping, |f| {
                f.src = UPLINK_IP;
                f.l4 = echo(8, id);
            }),
        );
        env.assert_stats(&[
            (StatIndex::Pass, 1),
            (StatIndex::UnsupportedProto, 1),
            (StatIndex::DropFragment, 1),
            (StatIndex::Snat, 1),
        ]);
    });
}

#[test]
fn a_route_through_another_interface_is_the_kernels() {
    in_netns(Opts::default(), |env| {
        // 192.0.2.0/24 is routed through wan0, not the uplink: netctl does
        // not translate there (replies would not come back through
        // uplink_ingress), the kernel decides.
        ip_cmd(&["route", "add", "192.0.2.0/24", "dev", "wan0"]);
        let syn = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 5), tcp(33000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &syn), TC_ACT_OK, &syn);
        // A host address that is neither the uplink's nor a gateway: the
        // host's (no hairpin there, although 8080 is published on 0.0.0.0).
        ip_cmd(&["address", "add", "192.0.2.1/24", "dev", "wan0"]);
        let host = Frame::from(A1, Ipv4Addr::new(192, 0, 2, 1), tcp(33000, 8080, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &host), TC_ACT_OK, &host);
        env.assert_stats(&[(StatIndex::FibPass, 2)]);
        assert!(env.conntrack().is_empty());
    });
}

#[test]
fn rst_closes_both_directions_and_ttl_one_from_outside_is_the_kernels() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        // TTL 1 on the way in: not forwarded, not translated.
        let expiring = with(
            &Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, SYN | ACK)),
            |f| f.ttl = 1,
        )
        .bytes();
        assert_verdict(env.uplink_in(&expiring), TC_ACT_OK, &expiring);
        let original_key = ct_key(A1.ip, REMOTE, 33000, 443, TCP);
        let reply_key = ct_key(REMOTE, UPLINK_IP, 443, port, TCP);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_NEW);
        // The remote resets: both entries close.
        let rst = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, port, 0x04));
        let (verdict, out) = env.uplink_in(&rst.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_checksums(&out);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_CLOSING);
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_CLOSING);
        // A new SYN on the same tuple reopens the flow, same port.
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, port);
        assert_eq!(env.ct_get(&original_key).unwrap().state, CT_STATE_NEW);
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_NEW);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::Pass, 1),
            (StatIndex::ReverseNat, 1),
            (StatIndex::RedirectPeer, 1),
        ]);
    });
}

// ---------------------------------------------------------------------------
// DNAT.

#[test]
fn dnat_from_outside_keeps_the_client_address_and_replies_go_back() {
    in_netns(Opts::default(), |env| {
        let syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
        let (verdict, out) = env.uplink_in(&syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A2");
        assert_frame(
            &out,
            &with(&syn, |f| {
                f.dst = A2.ip;
                f.l4 = tcp(50000, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let a2_veth = env.veth(A2);
        let original_key = ct_key(REMOTE, UPLINK_IP, 50000, 8080, TCP);
        let reply_key = ct_key(A2.ip, REMOTE, 80, 50000, TCP);
        let original = |state| {
            entry(
                REMOTE,
                A2.ip,
                50000,
                80,
                CT_KIND_DNAT,
                state,
                CT_DIR_ORIGINAL,
                a2_veth,
            )
        };
        let reply = |state| {
            entry(
                UPLINK_IP,
                REMOTE,
                8080,
                50000,
                CT_KIND_DNAT,
                state,
                CT_DIR_REPLY,
                0,
            )
        };
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_NEW),
            "original",
        );
        assert_entry(env.ct_get(&reply_key), reply(CT_STATE_NEW), "reply");

        // A2 answers through its veth: reverse DNAT, straight out.
        let syn_ack = Frame::from(A2, REMOTE, tcp(80, 50000, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect to the uplink");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(8080, 50000, SYN | ACK);
                f.src_mac = UPLINK_MAC;
                f.dst_mac = WAN_GW_MAC;
                f.ttl = 63;
            }),
        );
        assert_entry(
            env.ct_get(&original_key),
            original(CT_STATE_ESTABLISHED),
            "original after the reply",
        );
        assert_entry(
            env.ct_get(&reply_key),
            reply(CT_STATE_ESTABLISHED),
            "reply after the reply",
        );

        // The client's next packet: conntrack hit.
        let ack = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, ACK));
        let (verdict, out) = env.uplink_in(&ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&ack, |f| {
                f.dst = A2.ip;
                f.l4 = tcp(50000, 80, ACK);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.ct_get(&original_key).unwrap().packets, 2);

        // A reply the kernel routed (slow path) is translated on egress.
        let routed = with(&Frame::from(A2, REMOTE, tcp(80, 50000, ACK)), |f| {
            f.src_mac = UPLINK_MAC;
            f.dst_mac = WAN_GW_MAC;
            f.ttl = 63;
        });
        let (verdict, out) = env.uplink_out(&routed.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame(
            &out,
            &with(&routed, |f| {
                f.src = UPLINK_IP;
                f.l4 = tcp(8080, 50000, ACK);
            }),
        );

        // The exact host address wins over 0.0.0.0; UDP works alike.
        let exact = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50001, 8443, SYN));
        let (verdict, out) = env.uplink_in(&exact.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&exact, |f| {
                f.dst = B1.ip;
                f.l4 = tcp(50001, 443, SYN);
                f.dst_mac = B1.mac;
                f.src_mac = NET_B.mac;
                f.ttl = 63;
            }),
        );
        let query = Frame::from_outside(REMOTE, UPLINK_IP, udp(50002, 5353));
        let (verdict, out) = env.uplink_in(&query.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&query, |f| {
                f.dst = A2.ip;
                f.l4 = udp(50002, 53);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.conntrack().len(), 6);
        env.assert_stats(&[
            (StatIndex::Dnat, 4),
            (StatIndex::RedirectPeer, 4),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectUplink, 1),
        ]);
    });
}

#[test]
fn uplink_ingress_refuses_unsolicited_and_passes_host_traffic() {
    in_netns(Opts::default(), |env| {
        let direct = Frame::from_outside(REMOTE, A1.ip, tcp(50000, 80, SYN)).bytes();
        assert_verdict(env.uplink_in(&direct), TC_ACT_SHOT, &direct);
        let ping = Frame::from_outside(REMOTE, A2.ip, echo(8, 1)).bytes();
        assert_verdict(env.uplink_in(&ping), TC_ACT_SHOT, &ping);
        // Cut short, to a container: refused all the same.
        let short = cut_l4(&direct);
        assert_verdict(env.uplink_in(&short), TC_ACT_SHOT, &short);
        let passes = [
            Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 22, SYN)),
            Frame::from_outside(REMOTE, UPLINK_IP, echo(8, 0x1111)),
            Frame::from_outside(REMOTE, UPLINK_IP, udp(50000, 5354)),
            Frame::from_outside(REMOTE, Ipv4Addr::new(198, 51, 100, 77), tcp(1, 2, SYN)),
        ];
        for frame in &passes {
            let bytes = frame.bytes();
            assert_verdict(env.uplink_in(&bytes), TC_ACT_OK, &bytes);
        }
        env.assert_stats(&[(StatIndex::DropUnsolicited, 3), (StatIndex::Pass, 4)]);
        assert!(env.conntrack().is_empty());
    });
}

// ---------------------------------------------------------------------------
// Hairpin.

#[test]
fn hairpin_to_a_published_port_both_directions() {
    in_netns(Opts::default(), |env| {
        // A1 → uplink address:8080 → A2:80, the source becoming A2's gateway.
        let syn = Frame::from(A1, UPLINK_IP, tcp(33000, 8080, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A2");
        let port = view(&out).sport;
        assert!((SNAT_MIN..=SNAT_MAX).contains(&port));
        assert_frame(
            &out,
            &with(&syn, |f| {
                f.src = NET_A.gateway;
                f.dst = A2.ip;
                f.l4 = tcp(port, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let (a1_veth, a2_veth) = (env.veth(A1), env.veth(A2));
        let original_key = ct_key(A1.ip, UPLINK_IP, 33000, 8080, TCP);
        let reply_key = ct_key(A2.ip, NET_A.gateway, 80, port, TCP);
        assert_eq!(env.conntrack().len(), 2);
        assert_entry(
            env.ct_get(&original_key),
            entry(
                NET_A.gateway,
                A2.ip,
                port,
                80,
                CT_KIND_HAIRPIN,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                a2_veth,
            ),
            "original",
        );
        assert_entry(
            env.ct_get(&reply_key),
            entry(
                UPLINK_IP,
                A1.ip,
                8080,
                33000,
                CT_KIND_HAIRPIN,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1_veth,
            ),
            "reply",
        );

        // A2 answers its gateway: back to A1, from the published address.
        let syn_ack = Frame::from(A2, NET_A.gateway, tcp(80, port, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &syn_ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_peer into A1");
        assert_frame(
            &out,
            &with(&syn_ack, |f| {
                f.src = UPLINK_IP;
                f.dst = A1.ip;
                f.l4 = tcp(8080, 33000, SYN | ACK);
                f.dst_mac = A1.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(
            env.ct_get(&original_key).unwrap().state,
            CT_STATE_ESTABLISHED
        );
        assert_eq!(env.ct_get(&reply_key).unwrap().state, CT_STATE_ESTABLISHED);

        // From another network, through its own gateway address and through
        // A's: the target's gateway is the source either way.
        for dst in [NET_B.gateway, NET_A.gateway] {
            let syn = Frame::from(B1, dst, udp(34000, 5353));
            let (verdict, out) = env.endpoint(B1, &syn.bytes());
            assert_eq!(verdict, TC_ACT_REDIRECT, "hairpin via {dst}");
            let port = view(&out).sport;
            assert_frame(
                &out,
                &with(&syn, |f| {
                    f.src = NET_A.gateway;
                    f.dst = A2.ip;
                    f.l4 = udp(port, 53);
                    f.dst_mac = A2.mac;
                    f.src_mac = NET_A.mac;
                    f.ttl = 63;
                }),
            );
            assert_eq!(
                env.ct_get(&ct_key(A2.ip, NET_A.gateway, 53, port, UDP))
                    .map(|e| (e.saddr, e.daddr, e.ifindex)),
                Some((be_ip(dst), be_ip(B1.ip), env.veth(B1))),
                "reply entry of the hairpin via {dst}"
            );
        }
        // A2 to its own published port: into itself, from its gateway.
        let own = Frame::from(A2, UPLINK_IP, tcp(36000, 8080, SYN));
        let (verdict, out) = env.endpoint(A2, &own.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port = view(&out).sport;
        assert_frame(
            &out,
            &with(&own, |f| {
                f.src = NET_A.gateway;
                f.dst = A2.ip;
                f.l4 = tcp(port, 80, SYN);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        let back = Frame::from(A2, NET_A.gateway, tcp(80, port, SYN | ACK));
        let (verdict, out) = env.endpoint(A2, &back.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_frame(
            &out,
            &with(&back, |f| {
                f.src = UPLINK_IP;
                f.dst = A2.ip;
                f.l4 = tcp(8080, 36000, SYN | ACK);
                f.dst_mac = A2.mac;
                f.src_mac = NET_A.mac;
                f.ttl = 63;
            }),
        );
        assert_eq!(env.conntrack().len(), 8);
        env.assert_stats(&[
            (StatIndex::Hairpin, 4),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectPeer, 6),
        ]);
    });
}

/// A full table refuses new flows of every kind (SNAT, DNAT, hairpin),
/// counted and untouched, and evicts nothing: the flows it holds keep
/// being translated both ways. The sweep that a full table starts finds
/// nothing dead and deletes nothing.
#[test]
fn a_full_conntrack_table_refuses_new_flows_only() {
    let opts = Opts {
        conntrack_max: Some(4),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        // Two flows fill the table: SNAT A1 → REMOTE, DNAT REMOTE → A2.
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let nat_port = view(&out).sport;
        let dnat_syn = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, SYN));
        let (verdict, _) = env.uplink_in(&dnat_syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let table = env.conntrack();
        assert_eq!(table.len(), 4);

        // New flows: refused, frames untouched, nothing added or evicted.
        let snat = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A2, &snat), TC_ACT_SHOT, &snat);
        let dnat = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50001, 8080, SYN)).bytes();
        assert_verdict(env.uplink_in(&dnat), TC_ACT_SHOT, &dnat);
        let hairpin = Frame::from(A1, UPLINK_IP, tcp(33001, 8080, SYN)).bytes();
        assert_verdict(env.endpoint(A1, &hairpin), TC_ACT_SHOT, &hairpin);
        let udp_flow = Frame::from(A1, REMOTE, udp(33002, 53)).bytes();
        assert_verdict(env.endpoint(A1, &udp_flow), TC_ACT_SHOT, &udp_flow);
        let keys = |t: &[(CtKey, CtEntry)]| t.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(
            keys(&env.conntrack()),
            keys(&table),
            "no entry added or evicted"
        );

        // The flows in the table go on, both ways.
        let ack = Frame::from(A1, REMOTE, tcp(33000, 443, ACK | PSH));
        let (verdict, out) = env.endpoint(A1, &ack.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).sport, nat_port);
        assert_checksums(&out);
        let back = Frame::from_outside(REMOTE, UPLINK_IP, tcp(443, nat_port, ACK));
        let (verdict, out) = env.uplink_in(&back.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A1.ip);
        assert_checksums(&out);
        let more = Frame::from_outside(REMOTE, UPLINK_IP, tcp(50000, 8080, ACK));
        let (verdict, out) = env.uplink_in(&more.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).dst, A2.ip);
        let answer = Frame::from(A2, REMOTE, tcp(80, 50000, ACK));
        let (verdict, out) = env.endpoint(A2, &answer.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(view(&out).src, UPLINK_IP);
        assert_eq!(env.conntrack().len(), 4);
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::Dnat, 2),
            (StatIndex::ReverseNat, 2),
            (StatIndex::RedirectUplink, 3),
            (StatIndex::RedirectPeer, 3),
            (StatIndex::DropConntrackFull, 4),
        ]);
    });
}

/// `now - seconds` on the bpf_ktime_get_ns() clock.
fn ago(seconds: u64) -> u64 {
    let now = monotonic_ns();
    assert!(
        now > (seconds + 10) * 1_000_000_000,
        "the machine is up long enough"
    );
    now - seconds * 1_000_000_000
}

/// A full table sweeps itself when a new flow finds no room: that packet
/// is dropped, dead entries go (a closed pair, lone expired entries), an
/// expired entry whose pair is alive stays (a one-way stream), and the
/// flow's next packet gets in. One sweep a second at most: before that,
/// new flows are refused even though dead entries are there.
#[test]
fn a_full_conntrack_table_reclaims_dead_entries_once_a_second() {
    let opts = Opts {
        conntrack_max: Some(6),
        ..Opts::default()
    };
    in_netns(opts, |env| {
        let a1 = env.veth(A1);
        let a2 = env.veth(A2);
        let dead = long_ago();
        let fill = |env: &mut Env, key: CtKey, mut e: CtEntry, seen: u64| {
            e.last_seen_ns = seen;
            env.ct_insert(key, e);
            key
        };
        // A closed SNAT flow, both entries dead.
        let closed_out = fill(
            env,
            ct_key(A2.ip, REMOTE, 35000, 443, TCP),
            entry(
                UPLINK_IP,
                REMOTE,
                41_001,
                443,
                CT_KIND_SNAT,
                CT_STATE_CLOSING,
                CT_DIR_ORIGINAL,
                0,
            ),
            dead,
        );
        let closed_back = fill(
            env,
            ct_key(REMOTE, UPLINK_IP, 443, 41_001, TCP),
            entry(
                REMOTE,
                A2.ip,
                443,
                35000,
                CT_KIND_SNAT,
                CT_STATE_CLOSING,
                CT_DIR_REPLY,
                a2,
            ),
            dead,
        );
        // A one-way UDP stream: its reply entry expired long ago, the
        // original one is alive.
        let stream_out = fill(
            env,
            ct_key(A1.ip, REMOTE, 36000, 53, UDP),
            entry(
                UPLINK_IP,
                REMOTE,
                41_000,
                53,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_ORIGINAL,
                0,
            ),
            monotonic_ns(),
        );
        let stream_back = fill(
            env,
            ct_key(REMOTE, UPLINK_IP, 53, 41_000, UDP),
            entry(
                REMOTE,
                A1.ip,
                53,
                36000,
                CT_KIND_SNAT,
                CT_STATE_NEW,
                CT_DIR_REPLY,
                a1,
            ),
            ago(120),
        );
        // Two lone dead entries (their pairs long gone).
        let lone = [
            fill(
                env,
                ct_key(A2.ip, REMOTE, 37000, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_002,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
            fill(
                env,
                ct_key(A2.ip, REMOTE, 7, 7, ICMP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_003,
                    41_003,
                    CT_KIND_SNAT,
                    CT_STATE_ESTABLISHED,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                ago(60),
            ),
        ];
        assert_eq!(env.conntrack().len(), 6, "full");

        // A new flow: dropped, and the sweep makes room...
        let syn = Frame::from(A1, REMOTE, tcp(33000, 443, SYN));
        assert_verdict(env.endpoint(A1, &syn.bytes()), TC_ACT_SHOT, &syn.bytes());
        let mut left: Vec<CtKey> = env.conntrack().into_iter().map(|(k, _)| k).collect();
        let mut want = vec![stream_out, stream_back];
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        assert_eq!(left, want, "dead entries reclaimed, live ones kept");
        // ...for its retransmission.
        let (verdict, out) = env.endpoint(A1, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        let nat_port = view(&out).sport;
        left = env.conntrack().into_iter().map(|(k, _)| k).collect();
        left.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        want = vec![
            stream_out,
            stream_back,
            ct_key(A1.ip, REMOTE, 33000, 443, TCP),
            ct_key(REMOTE, UPLINK_IP, 443, nat_port, TCP),
        ];
        want.sort_by_key(|k| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        assert_eq!(left, want, "the new flow and the live ones");
        for gone in [closed_out, closed_back, lone[0], lone[1]] {
            assert!(env.ct_get(&gone).is_none());
        }

        // Full again with dead entries, but the last sweep was just now: a
        // new flow is refused.
        let dead_again = [
            fill(
                env,
                ct_key(A2.ip, REMOTE, 38000, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_004,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
            fill(
                env,
                ct_key(A2.ip, REMOTE, 38001, 443, TCP),
                entry(
                    UPLINK_IP,
                    REMOTE,
                    41_005,
                    443,
                    CT_KIND_SNAT,
                    CT_STATE_CLOSING,
                    CT_DIR_ORIGINAL,
                    0,
                ),
                dead,
            ),
        ];
        let next = Frame::from(A2, REMOTE, tcp(34000, 443, SYN)).bytes();
        assert_verdict(env.endpoint(A2, &next), TC_ACT_SHOT, &next);
        assert_eq!(env.conntrack().len(), 6);
        for kept in dead_again {
            assert!(env.ct_get(&kept).is_some(), "no sweep within the second");
        }

        // A second later, the next refusal sweeps again.
        env.set_last_reclaim(ago(2));
        assert_verdict(env.endpoint(A2, &next), TC_ACT_SHOT, &next);
        assert_eq!(env.conntrack().len(), 4);
        let (verdict, out) = env.endpoint(A2, &next);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_checksums(&out);
        for gone in dead_again {
            assert!(env.ct_get(&gone).is_none());
        }
        assert_eq!(env.conntrack().len(), 6);
        assert!(
            env.ct_get(&stream_back).is_some(),
            "the one-way stream kept"
        );
        env.assert_stats(&[
            (StatIndex::Snat, 2),
            (StatIndex::RedirectUplink, 2),
            (StatIndex::DropConntrackFull, 3),
        ]);
    });
}

#[test]
fn the_verifier_accepts_every_program() {
    in_netns(Opts::default(), |env| {
        // Loaded by Env::new; how much the verifier had to walk, against its
        // limit of 1M instructions (a guard against state explosion).
        for name in ["endpoint_ingress", "uplink_ingress", "uplink_egress"] {
            let prog: &SchedClassifier = env
                .ebpf
                .program(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            let info = prog.info().expect("program info");
            let verified = info.verified_instruction_count().unwrap_or(0);
            println!(
                "{name}: {} bytes translated, {verified} instructions verified",
                info.size_translated().unwrap_or(0)
            );
            assert!(
                verified < 200_000,
                "{name}: {verified} instructions verified"
            );
        }
        env.assert_stats(&[]);
        assert!(env.conntrack().is_empty());
    });
}
