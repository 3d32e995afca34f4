//! The TC programs of netctl-ebpf run through BPF_PROG_TEST_RUN, for the
//! tests that feed them frames (`ebpf_programs.rs`, one behaviour at a time;
//! `ebpf_fuzz.rs`, random and mutated frames): a private network namespace
//! with a small topology, the object loaded with private maps filled as
//! netctl would, a frame builder computing every checksum, and readers for
//! frames, counters and conntrack entries. See `ebpf_programs.rs` for why the
//! namespace and its links are needed.

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
    conntrack::{CtEntry, CtKey},
    endpoint::{EndpointInfo, NetworkInfo, NETWORK_FLAG_INTERNAL},
    portmap::{PortKey, PortTarget},
    stats::{Counter, StatIndex, STAT_COUNT, STAT_NAMES},
};
// ---------------------------------------------------------------------------
// Verdicts and protocol numbers.

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const PSH: u8 = 0x08;

// ---------------------------------------------------------------------------
// The topology.

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WAN_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const WAN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0xfe];
/// Somewhere on the internet.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const REMOTE_MAC: [u8; 6] = WAN_GW_MAC;

pub const SNAT_MIN: u16 = 40_000;
pub const SNAT_MAX: u16 = 40_999;

pub struct Net {
    pub id: u32,
    pub bridge: &'static str,
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub internal: bool,
}

pub const NET_A: Net = Net {
    id: 1,
    bridge: "br-a",
    subnet: Ipv4Addr::new(172, 18, 0, 0),
    gateway: Ipv4Addr::new(172, 18, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x01],
    internal: false,
};
pub const NET_B: Net = Net {
    id: 2,
    bridge: "br-b",
    subnet: Ipv4Addr::new(172, 19, 0, 0),
    gateway: Ipv4Addr::new(172, 19, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x01],
    internal: false,
};
pub const NET_I: Net = Net {
    id: 3,
    bridge: "br-i",
    subnet: Ipv4Addr::new(172, 20, 0, 0),
    gateway: Ipv4Addr::new(172, 20, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x01],
    internal: true,
};
pub const NETS: [&Net; 3] = [&NET_A, &NET_B, &NET_I];

#[derive(Clone, Copy)]
pub struct Ctr {
    pub veth: &'static str,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub net: u32,
}

pub const A1: Ctr = Ctr {
    veth: "ve-a1",
    ip: Ipv4Addr::new(172, 18, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x02],
    net: 1,
};
pub const A2: Ctr = Ctr {
    veth: "ve-a2",
    ip: Ipv4Addr::new(172, 18, 0, 3),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x03],
    net: 1,
};
pub const B1: Ctr = Ctr {
    veth: "ve-b1",
    ip: Ipv4Addr::new(172, 19, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x02],
    net: 2,
};
pub const I1: Ctr = Ctr {
    veth: "ve-i1",
    ip: Ipv4Addr::new(172, 20, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x02],
    net: 3,
};
pub const CTRS: [Ctr; 4] = [A1, A2, B1, I1];

/// Published ports: (host ip, host port, proto) → (container, port).
pub const PORTS: [(Ipv4Addr, u16, u8, Ctr, u16); 5] = [
    (Ipv4Addr::UNSPECIFIED, 8080, TCP, A2, 80),
    (Ipv4Addr::UNSPECIFIED, 5353, UDP, A2, 53),
    // The exact address wins over 0.0.0.0 for the same port.
    (UPLINK_IP, 8443, TCP, B1, 443),
    (Ipv4Addr::UNSPECIFIED, 8443, TCP, A1, 9443),
    (Ipv4Addr::UNSPECIFIED, 9090, TCP, I1, 90),
];

pub fn net_of(id: u32) -> &'static Net {
    NETS.iter().find(|n| n.id == id).expect("network")
}

/// As stored in the maps: the bytes of the wire, read as a native integer.
pub fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn be_port(port: u16) -> u16 {
    port.to_be()
}

pub fn ct_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
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
pub struct Opts {
    /// A permanent neighbour entry for the uplink's gateway (FIB SUCCESS)
    /// or none (FIB NO_NEIGH).
    pub neighbour: bool,
    /// The default route via the uplink's gateway (without it, the outside
    /// is unroutable).
    pub default_route: bool,
    pub snat_ports: (u16, u16),
    /// Size of CONNTRACK (the object's default when None).
    pub conntrack_max: Option<u32>,
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

pub struct Env {
    pub ebpf: Ebpf,
    pub uplink: u32,
    pub veths: Vec<(&'static str, u32)>,
}

pub fn is_root() -> bool {
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
pub fn in_netns(opts: Opts, body: impl FnOnce(&mut Env) + Send + 'static) {
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

pub fn ip_cmd(args: &[&str]) {
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
    pub fn new(opts: Opts) -> Env {
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

    pub fn veth(&self, ctr: Ctr) -> u32 {
        self.veths
            .iter()
            .find(|(n, _)| *n == ctr.veth)
            .map(|(_, i)| *i)
            .expect("veth")
    }

    pub fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect(name)).expect(name)
    }

    pub fn set_config(&mut self, ports: (u16, u16)) {
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

    pub fn populate(&mut self, opts: Opts) {
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

    pub fn publish(&mut self, host_ip: Ipv4Addr, host_port: u16, proto: u8, ctr: Ctr, port: u16) {
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
    pub fn run(&self, program: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(program, ifindex, frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// As [`Env::run`], with the kernel's refusal as an error (the fuzz
    /// test feeds frames the kernel may refuse to run at all).
    pub fn try_run(
        &self,
        program: &str,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), String> {
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
            .map_err(|e| format!("{e:?}"))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    pub fn endpoint(&self, ctr: Ctr, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("endpoint_ingress", self.veth(ctr), frame)
    }

    pub fn uplink_in(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("uplink_ingress", self.uplink, frame)
    }

    pub fn uplink_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run("uplink_egress", self.uplink, frame)
    }

    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Vec<Counter> {
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
    pub fn assert_stats(&self, expected: &[(StatIndex, u64)]) {
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

    pub fn stat_bytes(&self, index: StatIndex) -> u64 {
        self.stats()[index as usize].bytes
    }

    pub fn conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        let map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map("CONNTRACK").expect("CONNTRACK")).expect("CONNTRACK");
        let mut all: Vec<_> = map.iter().map(|r| r.expect("CONNTRACK entry")).collect();
        all.sort_by_key(|(k, _)| (k.saddr, k.daddr, k.sport, k.dport, k.proto));
        all
    }

    pub fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.conntrack()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    pub fn ct_insert(&mut self, key: CtKey, entry: CtEntry) {
        self.hash::<CtKey, CtEntry>("CONNTRACK")
            .insert(key, entry, 0)
            .expect("CONNTRACK insert");
    }

    /// Sets the time of the last reclaim sweep (bpf_ktime_get_ns clock).
    pub fn set_last_reclaim(&mut self, ns: u64) {
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
pub fn checksum(chunks: &[&[u8]]) -> u16 {
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
pub enum L4 {
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
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Flags and fragment offset, host order (0x4000: DF).
    pub frag: u16,
    /// IP options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
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
    pub fn from(ctr: Ctr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(ctr.mac, net_of(ctr.net).mac, ctr.ip, dst, l4)
    }

    /// From the outside, through the uplink's gateway.
    pub fn from_outside(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(REMOTE_MAC, UPLINK_MAC, src, dst, l4)
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } => ICMP,
            L4::Raw { proto } => proto,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
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

    pub fn bytes(&self) -> Vec<u8> {
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
pub struct View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// Ports, or the echo identifier in both.
    pub sport: u16,
    pub dport: u16,
}

pub fn view(frame: &[u8]) -> View {
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
pub fn assert_checksums(frame: &[u8]) {
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

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        checksum: true,
    }
}

pub fn echo(ty: u8, id: u16) -> L4 {
    L4::Icmp { ty, id, seq: 7 }
}

pub fn monotonic_ns() -> u64 {
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
pub fn long_ago() -> u64 {
    let now = monotonic_ns();
    assert!(now > 30_000_000_000, "the machine is up for 30 s at least");
    now - 20_000_000_000
}

/// The fields of an entry that the programs decide (not the clock and
/// counters, checked apart).
#[allow(clippy::too_many_arguments)]
pub fn entry(
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
pub fn assert_entry(actual: Option<CtEntry>, expected: CtEntry, what: &str) {
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
pub fn assert_frame(out: &[u8], expected: &Frame) {
    let want = expected.bytes();
    assert_eq!(view(out), view(&want), "rewritten headers");
    assert_eq!(out, &want[..], "the whole frame");
    assert_checksums(out);
}

pub fn assert_verdict(got: (u32, Vec<u8>), verdict: u32, frame: &[u8]) {
    assert_eq!(got.0, verdict, "verdict");
    assert_eq!(got.1, frame, "the frame is untouched");
}

pub fn with<F: FnOnce(&mut Frame)>(frame: &Frame, change: F) -> Frame {
    let mut f = frame.clone();
    change(&mut f);
    f
}

/// The frame (20-byte IPv4 header) cut 10 bytes into its L4 header, with a
/// consistent total length and header checksum: only the L4 header is short.
pub fn cut_l4(frame: &[u8]) -> Vec<u8> {
    let mut short = frame[..44].to_vec();
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&[&short[14..34]]);
    short[24..26].copy_from_slice(&c.to_be_bytes());
    short
}

pub fn arp_frame(src_mac: [u8; 6]) -> Vec<u8> {
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

pub fn ipv6_frame(src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = NET_A.mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]); // UDP, 8 bytes
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
    f
}
