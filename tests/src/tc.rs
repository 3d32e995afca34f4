//! The harness of the tests that feed frames to the TC programs of
//! netctl-ebpf through BPF_PROG_TEST_RUN (`ebpf_passthrough.rs`,
//! `ebpf_snat.rs`, `ebpf_dnat.rs`, `ebpf_hairpin.rs`, `ebpf_conntrack.rs`:
//! one behaviour at a time; `ebpf_fuzz.rs`: random and mutated frames): a
//! crafted frame in, the verdict, the frame out, the maps after. This module
//! is the environment: a private network namespace with the topology of
//! [`topology`], the object loaded with private maps filled as netctl would,
//! the test runs, and the counters; [`conntrack`] reads and plants conntrack
//! entries. Frames are built and read by [`crate::frames`]. Tests import
//! `tc::*` and `frames::*`.
//!
//! Nothing is attached to an interface and nothing is pinned (the object's
//! maps are private to each load). Each test runs in a thread of its own
//! that first moves to a private, anonymous network namespace (gone with the
//! thread) and builds the topology there with rtnetlink: the uplink `up0`
//! (198.51.100.1/24, default route via 198.51.100.2, with or without a
//! permanent neighbour for the gateway), three bridges and four containers'
//! host-side veths. The kernel needs them twice: BPF_PROG_TEST_RUN runs a
//! program "on" the device named by `__sk_buff.ifindex` (which must exist in
//! the caller's namespace), and `bpf_fib_lookup` asks that namespace's
//! routing tables. So the fast path towards the uplink is tested for real:
//! with the neighbour the FIB answers SUCCESS (the program writes the MACs
//! and returns bpf_redirect's TC_ACT_REDIRECT), without it NO_NEIGH
//! (bpf_redirect_neigh, MACs left to the kernel), and without a route at
//! all the program hands the untranslated packet to the kernel (FibPass).
//! Redirects are not carried out by test runs: the verdict (7,
//! TC_ACT_REDIRECT) and the rewritten frame are what is checked.

pub mod conntrack;
pub mod topology;

pub use self::{conntrack::*, topology::*};

use std::{net::Ipv4Addr, process::Command};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::SchedClassifier,
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
};
use netctl::{datapath::ebpf::EBPF_OBJECT, netlink::Netlink};
use netctl_common::{
    config::Config,
    endpoint::{EndpointInfo, NetworkInfo, NetworkPrefix, NETWORK_FLAG_INTERNAL, PREFIX_HOST},
    event::{FlowEvent, LEASE_NS},
    maps,
    portmap::{PortKey, PortTarget},
    stats::{Counter, StatIndex, STAT_COUNT, STAT_NAMES},
};

// ---------------------------------------------------------------------------
// Verdicts.

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The program returned `verdict` and left the frame as it was.
pub fn assert_verdict(got: (u32, Vec<u8>), verdict: u32, frame: &[u8]) {
    assert_eq!(got.0, verdict, "verdict");
    assert_eq!(got.1, frame, "the frame is untouched");
}

/// As stored in the maps: the bytes of the wire, read as a native integer.
pub fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn be_port(port: u16) -> u16 {
    port.to_be()
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

/// Runs `body` in a thread moved to a fresh, anonymous network namespace
/// (the root namespace is never touched), with the topology and the
/// programs loaded. A failed assertion in the thread fails the test.
pub fn in_netns(opts: Opts, body: impl FnOnce(&mut Env) + Send + 'static) {
    if !crate::privileged("BPF_PROG_TEST_RUN and namespaces") {
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
        // The programs reached by tail call, as the controller loads them.
        netctl::datapath::ebpf::fill_tail_calls(&mut ebpf).expect("TAIL_CALLS");
        let mut env = Env {
            ebpf,
            uplink,
            veths,
        };
        env.populate(opts);
        if let Some(size) = opts.conntrack_max {
            // As the controller: early drop looks back over the table's flows.
            env.set_reclaim_slot(
                netctl_common::conntrack::CT_RECLAIM_RING_SPAN,
                u64::from((size / 2).max(1)),
            );
        }
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
        self.set_snat(ports, (0, 0));
    }

    /// CONFIG with the SNAT ports `ports` less `skip` (the host's
    /// ephemeral range, as the controller writes it; (0, 0): none).
    pub fn set_snat(&mut self, ports: (u16, u16), skip: (u16, u16)) {
        let config = Config {
            uplink_ifindex: self.uplink,
            uplink_ip: be_ip(UPLINK_IP),
            snat_port_min: ports.0,
            snat_port_max: ports.1,
            host_netns_cookie: 0,
            flags: 0,
            snat_skip_min: skip.0,
            snat_skip_max: skip.1,
        };
        let mut map: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut("CONFIG").expect("CONFIG")).expect("CONFIG");
        map.set(0, config, 0).expect("CONFIG[0]");
        // The uplink, as the controller's host sync writes it.
        self.host_iface(self.uplink, UPLINK_IP);
    }

    /// Interface `ifindex` as a host interface with address `ip`, as the
    /// controller's host sync writes it: its primary address in
    /// HOST_IFACES (what SNAT leaving by it gives), `ip` a `PREFIX_HOST`
    /// entry of NETWORK_PREFIXES.
    pub fn host_iface(&mut self, ifindex: u32, ip: Ipv4Addr) {
        self.hash::<u32, u32>(maps::HOST_IFACES)
            .insert(ifindex, be_ip(ip), 0)
            .expect("HOST_IFACES");
        let host = NetworkPrefix {
            network_id: ifindex,
            kind: PREFIX_HOST,
        };
        self.prefixes()
            .insert(&Key::new(32, be_ip(ip)), host, 0)
            .expect("NETWORK_PREFIXES");
    }

    /// Forgets host interface `ifindex`'s address in HOST_IFACES (an
    /// interface without one).
    pub fn forget_host_iface(&mut self, ifindex: u32) {
        self.hash::<u32, u32>(maps::HOST_IFACES)
            .remove(&ifindex)
            .expect("HOST_IFACES");
    }

    fn prefixes(&mut self) -> LpmTrie<&mut MapData, u32, NetworkPrefix> {
        LpmTrie::try_from(
            self.ebpf
                .map_mut(maps::NETWORK_PREFIXES)
                .expect("NETWORK_PREFIXES"),
        )
        .expect("NETWORK_PREFIXES")
    }

    pub fn populate(&mut self, opts: Opts) {
        self.set_config(opts.snat_ports);
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
            self.add_network(net.id, info);
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

    /// Network `id` as the controller writes it: its NETWORKS entry and
    /// the NETWORK_PREFIXES entries derived from it.
    pub fn add_network(&mut self, id: u32, info: NetworkInfo) {
        self.hash::<u32, NetworkInfo>("NETWORKS")
            .insert(id, info, 0)
            .expect("NETWORKS");
        let mut prefixes = self.prefixes();
        for (len, addr, value) in info.prefixes(id) {
            prefixes
                .insert(&Key::new(len, addr), value, 0)
                .expect("NETWORK_PREFIXES");
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

    /// The kernel's mean run time of `program` on `frame`, over `repeat`
    /// runs (BPF_PROG_TEST_RUN's `duration`). For reports only: never
    /// asserted (a busy machine would fail it).
    pub fn mean_run_time(
        &self,
        program: &str,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> std::time::Duration {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"))
        .duration
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

    /// Turns flow events on (a listener's lease, as `netctl trace` writes
    /// it) or off (0).
    pub fn listen(&mut self, on: bool) {
        let until = if on { monotonic_ns() + LEASE_NS } else { 0 };
        self.set_lease(until);
    }

    /// Writes the listener's lease as it is (a time of CLOCK_MONOTONIC).
    pub fn set_lease(&mut self, until: u64) {
        let mut map: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("FLOW_LISTENER").expect("FLOW_LISTENER"))
                .expect("FLOW_LISTENER");
        map.set(0, until, 0).expect("FLOW_LISTENER[0]");
    }

    /// The listener's lease as it is now.
    pub fn lease(&self) -> u64 {
        let map: Array<_, u64> =
            Array::try_from(self.ebpf.map("FLOW_LISTENER").expect("FLOW_LISTENER"))
                .expect("FLOW_LISTENER");
        map.get(&0, 0).expect("FLOW_LISTENER[0]")
    }

    /// The flow events written since the last call, oldest first.
    pub fn events(&mut self) -> Vec<FlowEvent> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut("FLOW_EVENTS").expect("FLOW_EVENTS"))
            .expect("FLOW_EVENTS");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<FlowEvent>(), "event size");
            // SAFETY: FlowEvent is plain old data and the record is whole.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
        events
    }

    pub fn stat_bytes(&self, index: StatIndex) -> u64 {
        self.stats()[index as usize].bytes
    }
}
