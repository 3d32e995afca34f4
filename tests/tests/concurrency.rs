//! Many netctl processes at once on one host, on both datapaths
//! (`iptables::*`, `ebpf::*`): 50 `container run` in parallel on one
//! network, then `rm` and `run` interleaved. Every command succeeds, and
//! afterwards the state file parses and matches the kernel exactly:
//! addresses, veths, namespaces, the datapath's per-endpoint entries.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Stdio},
};

use aya::maps::{HashMap, MapData};
use netctl_common::{
    endpoint::EndpointInfo,
    portmap::{PortKey, PortTarget},
};
use netctl_tests::sandbox::Sandbox;

netctl_tests::on_both_datapaths!(parallel_runs_and_interleaved_rm_keep_the_state_true);

const PARALLEL: usize = 50;
const SUBNET: &str = "172.18.0.0/16";

/// Starts a netctl command without waiting (stdout/stderr kept for the report).
fn start(sb: &Sandbox, args: &[&str]) -> Child {
    sb.netctl_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl")
}

/// Waits for every command; all must succeed.
fn wait_all(children: Vec<(String, Child)>) {
    let failures: Vec<String> = children
        .into_iter()
        .filter_map(|(what, child)| {
            let out = child.wait_with_output().expect("wait netctl");
            (!out.status.success()).then(|| {
                format!(
                    "{what}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}

/// One endpoint as the state has it.
#[derive(Debug)]
struct Ep {
    container: String,
    netns: String,
    veth: String,
    ip: Ipv4Addr,
    mac: String,
    /// Host ports published to it.
    host_ports: Vec<u16>,
}

/// The state file itself (it must parse), and `container ls` (which must
/// agree with it).
fn endpoints(sb: &Sandbox) -> Vec<Ep> {
    let path = sb.state_dir.join("state.json");
    let raw = std::fs::read(&path).expect("state file");
    let state: serde_json::Value = serde_json::from_slice(&raw)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let ls: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "container", "ls"]))
            .expect("container ls json");
    let ls = ls.as_array().expect("a list");
    let in_state = state["containers"].as_object().expect("containers");
    assert_eq!(ls.len(), in_state.len(), "container ls and the state file");
    ls.iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_owned();
            assert_eq!(&in_state[&name], c, "{name}: ls and the state file agree");
            let eps = c["endpoints"].as_array().unwrap();
            assert_eq!(eps.len(), 1, "{name}: {c}");
            let ep = &eps[0];
            Ep {
                netns: c["netns"].as_str().unwrap().to_owned(),
                veth: ep["host_veth"].as_str().unwrap().to_owned(),
                ip: ep["ip"].as_str().unwrap().parse().unwrap(),
                mac: ep["mac"].as_str().unwrap().to_owned(),
                host_ports: c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["host_port"].as_u64().unwrap() as u16)
                    .collect(),
                container: name,
            }
        })
        .collect()
}

fn distinct<T: Ord + Clone>(items: impl Iterator<Item = T>) -> usize {
    items.collect::<BTreeSet<_>>().len()
}

/// The state names exactly `expected`, with distinct addresses, MACs and
/// veths in the subnet, and the kernel holds exactly that: one veth on the
/// host and one namespace per container, each container's eth0 with its
/// address, and the datapath's per-endpoint entries for these and no other.
fn assert_consistent(sb: &Sandbox, expected: &BTreeSet<String>) {
    let eps = endpoints(sb);
    let names: BTreeSet<String> = eps.iter().map(|e| e.container.clone()).collect();
    assert_eq!(&names, expected, "the containers of the state");
    // In 172.18.0.0/16 (SUBNET).
    assert!(
        eps.iter().all(|e| e.ip.octets()[..2] == [172, 18]),
        "{eps:?}"
    );
    assert_eq!(
        distinct(eps.iter().map(|e| e.ip)),
        eps.len(),
        "addresses: {eps:?}"
    );
    assert_eq!(distinct(eps.iter().map(|e| e.mac.clone())), eps.len());
    assert_eq!(distinct(eps.iter().map(|e| e.veth.clone())), eps.len());
    let ports: Vec<u16> = eps.iter().flat_map(|e| e.host_ports.clone()).collect();
    assert_eq!(distinct(ports.iter()), ports.len(), "host ports: {ports:?}");

    let veths: BTreeSet<String> = eps.iter().map(|e| e.veth.clone()).collect();
    let host_veths: BTreeSet<String> = sb
        .host_links()
        .into_iter()
        .filter(|l| l.starts_with("ve"))
        .collect();
    assert_eq!(host_veths, veths, "veths on the host");
    let mut netns: BTreeSet<String> = eps.iter().map(|e| e.netns.clone()).collect();
    netns.insert(sb.host_netns.clone());
    netns.insert(sb.outside_netns.clone());
    let on_disk: BTreeSet<String> = sb.namespaces().into_iter().collect();
    assert_eq!(on_disk, netns, "namespaces under /run/netns");

    // Each container's eth0 carries its address (looked at from inside).
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = eps
            .chunks(10)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|e| {
                            let out = sb.run_in(
                                &e.netns,
                                &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                            );
                            let text = String::from_utf8_lossy(&out.stdout);
                            (!text.contains(&format!(" {}/16 ", e.ip)))
                                .then(|| format!("{}: {text}", e.container))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(wrong.is_empty(), "eth0 addresses:\n{}", wrong.join("\n"));

    match sb.datapath.as_str() {
        "iptables" => {
            // Two anti-spoofing rules per endpoint, for these veths only.
            let saved =
                String::from_utf8_lossy(&sb.in_host(&["iptables-save", "-t", "raw"]).stdout)
                    .into_owned();
            let rules: Vec<&str> = saved
                .lines()
                .filter(|l| l.starts_with("-A NETCTL-ANTISPOOF "))
                .collect();
            assert_eq!(rules.len(), 2 * eps.len(), "{saved}");
            for e in &eps {
                let own = rules
                    .iter()
                    .filter(|l| l.contains(&format!("--physdev-in {} ", e.veth)))
                    .count();
                assert_eq!(own, 2, "{}: {saved}", e.veth);
                assert!(saved.contains(&format!(
                    "! -s {}/32 -m physdev --physdev-in {} ",
                    e.ip, e.veth
                )));
            }
            // One DNAT rule per published port, to its container.
            let nat = String::from_utf8_lossy(&sb.in_host(&["iptables-save", "-t", "nat"]).stdout)
                .into_owned();
            let dnat: BTreeSet<String> = nat
                .lines()
                .filter(|l| l.starts_with("-A NETCTL-DNAT "))
                .map(str::to_owned)
                .collect();
            let want: BTreeSet<String> = eps
                .iter()
                .flat_map(|e| {
                    e.host_ports.iter().map(move |p| {
                        format!(
                            "-A NETCTL-DNAT -p tcp -m tcp --dport {p} -j DNAT --to-destination {}:80",
                            e.ip
                        )
                    })
                })
                .collect();
            assert_eq!(dnat, want, "DNAT rules");
        }
        _ => {
            // One ENDPOINTS entry per endpoint, keyed by its address.
            let pin = PathBuf::from("/sys/fs/bpf/netctl")
                .join(&sb.host_netns)
                .join("maps/ENDPOINTS");
            let map = MapData::from_pin(&pin).expect("pinned ENDPOINTS");
            let map: HashMap<MapData, u32, EndpointInfo> =
                HashMap::try_from(aya::maps::Map::HashMap(map)).expect("ENDPOINTS hash");
            let keys: BTreeSet<Ipv4Addr> = map
                .keys()
                .map(|k| Ipv4Addr::from(k.expect("key").to_ne_bytes()))
                .collect();
            let ips: BTreeSet<Ipv4Addr> = eps.iter().map(|e| e.ip).collect();
            assert_eq!(keys, ips, "ENDPOINTS keys");
            // One PORTMAP entry per published port, to its container.
            let pin = pin.with_file_name("PORTMAP");
            let map = MapData::from_pin(&pin).expect("pinned PORTMAP");
            let map: HashMap<MapData, PortKey, PortTarget> =
                HashMap::try_from(aya::maps::Map::HashMap(map)).expect("PORTMAP hash");
            let entries: BTreeSet<(u16, Ipv4Addr)> = map
                .iter()
                .map(|r| {
                    let (k, v) = r.expect("PORTMAP entry");
                    (
                        u16::from_be(k.host_port),
                        Ipv4Addr::from(v.ip.to_ne_bytes()),
                    )
                })
                .collect();
            let want: BTreeSet<(u16, Ipv4Addr)> = eps
                .iter()
                .flat_map(|e| e.host_ports.iter().map(move |p| (*p, e.ip)))
                .collect();
            assert_eq!(entries, want, "PORTMAP entries");
        }
    }
}

fn parallel_runs_and_interleaved_rm_keep_the_state_true(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", SUBNET]);

    let first: Vec<String> = (0..PARALLEL).map(|i| format!("c{i}")).collect();
    let children = first
        .iter()
        .map(|name| {
            (
                format!("run {name}"),
                // Each publishes container port 80 on an ephemeral host port.
                start(
                    &sb,
                    &["container", "run", name, "--network", "front", "-p", "80"],
                ),
            )
        })
        .collect();
    wait_all(children);
    let mut expected: BTreeSet<String> = first.iter().cloned().collect();
    assert_consistent(&sb, &expected);

    // Half of them go while as many new ones come, interleaved.
    let second: Vec<String> = (0..PARALLEL / 2).map(|i| format!("d{i}")).collect();
    let mut children = Vec::new();
    for (i, new) in second.iter().enumerate() {
        let old = &first[2 * i];
        children.push((format!("rm {old}"), start(&sb, &["container", "rm", old])));
        children.push((
            format!("run {new}"),
            start(&sb, &["container", "run", new, "--network", "front"]),
        ));
        expected.remove(old);
        expected.insert(new.clone());
    }
    wait_all(children);
    assert_consistent(&sb, &expected);

    // The containers still talk: the two ends of the address range.
    let eps = endpoints(&sb);
    let (lo, hi) = (
        eps.iter().min_by_key(|e| e.ip).unwrap(),
        eps.iter().max_by_key(|e| e.ip).unwrap(),
    );
    let out = sb.run_in(&lo.netns, &["ping", "-c1", "-W2", &hi.ip.to_string()]);
    assert!(
        out.status.success(),
        "{} -> {}: {}",
        lo.container,
        hi.ip,
        String::from_utf8_lossy(&out.stdout)
    );
}
