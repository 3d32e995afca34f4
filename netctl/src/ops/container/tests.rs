//! `plan_container` without a kernel: the steps it plans for each mode, and
//! the refusals, each naming the object and the reason.

use std::{net::Ipv4Addr, path::PathBuf};

use super::*;
use crate::{
    model::{DatapathKind, Naming, Protocol},
    state::STATE_VERSION,
};

fn config() -> HostConfig {
    HostConfig::new(
        Some("sb".into()),
        Some(PathBuf::from("/run/netctl/sb")),
        None,
        Some(PathBuf::from("/sys/fs/cgroup")),
    )
}

fn network(name: &str, id: u32, subnet: &str, internal: bool) -> Network {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    Network {
        name: name.into(),
        id,
        bridge: format!("nc-{name}"),
        subnet,
        gateway: ipam::default_gateway(subnet),
        internal,
        dns: true,
        created: 1,
        mtu: None,
        ipv6: None,
    }
}

fn front() -> Network {
    network("front", 1, "172.18.0.0/16", false)
}

/// A host with networks front and vault (internal); on front, web at
/// 172.18.0.2 publishing 8080→80; on the host's namespace, `hostly`.
fn state() -> State {
    let mut state = State {
        version: STATE_VERSION,
        datapath: Some(DatapathKind::Ebpf),
        ..State::default()
    };
    for net in [front(), network("vault", 2, "172.22.0.0/24", true)] {
        state.networks.insert(net.name.clone(), net);
    }
    let ip = Ipv4Addr::new(172, 18, 0, 2);
    let web = Container {
        name: "web".into(),
        mode: NetworkMode::Bridge,
        netns: Some("sb-web".into()),
        endpoints: vec![plan_endpoint(&state, &front(), "web", "eth0", Some(ip), None).unwrap()],
        ports: vec![PortMapping {
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: 8080,
            container_ip: ip,
            container_ip6: None,
            container_port: 80,
            container: "web".into(),
            network: "front".into(),
        }],
        process: None,
        created: 1,
        cni: None,
        docker: None,
        naming: Naming::default(),
    };
    let hostly = Container {
        name: "hostly".into(),
        mode: NetworkMode::Host,
        netns: None,
        endpoints: Vec::new(),
        ports: Vec::new(),
        ..web.clone()
    };
    state.containers.insert("web".into(), web);
    state.containers.insert("hostly".into(), hostly);
    state
}

fn run(name: &str, network: &str) -> ContainerRun {
    ContainerRun {
        name: name.into(),
        network: network.parse().unwrap(),
        ..ContainerRun::default()
    }
}

fn specs(texts: &[&str]) -> Vec<PortSpec> {
    texts.iter().map(|t| ports::parse(t).unwrap()).collect()
}

fn mapping(host_port: u16, container_port: u16, ip: Ipv4Addr) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        host_ip: None,
        host_port,
        container_ip: ip,
        container_ip6: None,
        container_port,
        container: "db".into(),
        network: "front".into(),
    }
}

#[test]
fn networking_parses_like_docker() {
    let parse = |text: &str| text.parse::<Networking>().unwrap();
    assert_eq!(parse("host"), Networking::Host);
    assert_eq!(parse("none"), Networking::None);
    assert_eq!(parse("container:web"), Networking::Container("web".into()));
    assert_eq!(parse("front"), Networking::Network("front".into()));
    assert_eq!(
        Networking::default(),
        Networking::Network(DEFAULT_NETWORK.into())
    );
    assert_eq!(parse("container:web").mode().to_string(), "container:web");
}

#[test]
fn a_bridge_run_picks_address_mac_veth_and_host_ports() {
    let req = ContainerRun {
        ports: specs(&["8081:81", "90"]),
        command: vec!["sleep".into(), "1".into()],
        ..run("db", "front")
    };
    let plan = plan_container(&state(), &config(), &HostPorts::default(), &req).unwrap();
    assert_eq!(plan.container.name, "db");
    assert_eq!(plan.container.mode, NetworkMode::Bridge);
    assert_eq!(plan.container.netns.as_deref(), Some("sb-db"));
    assert!(plan.container.endpoints.is_empty() && plan.container.ports.is_empty());
    let ip = Ipv4Addr::new(172, 18, 0, 3);
    let endpoint = Endpoint {
        network: "front".into(),
        ifname: "eth0".into(),
        host_veth: ipam::veth_name("db", 1),
        ip,
        mac: "02:42:ac:12:00:03".parse().unwrap(),
        ip6: None,
    };
    assert_eq!(
        plan.steps,
        vec![
            Step::CreateNetns("sb-db".into()),
            Step::Attach {
                netns: "sb-db".into(),
                network: front(),
                endpoint,
            },
            Step::Publish {
                network: front(),
                // 8080 is web's; 90 gets the lowest ephemeral port.
                ports: vec![mapping(8081, 81, ip), mapping(20000, 90, ip)],
            },
            Step::Start {
                netns: "sb-db".into(),
                command: vec!["sleep".into(), "1".into()],
                log: PathBuf::from("/run/netctl/sb/db.log"),
            },
        ]
    );
}

#[test]
fn the_first_run_on_the_default_network_creates_it() {
    let empty = State::default();
    let plan = plan_container(
        &empty,
        &config(),
        &HostPorts::default(),
        &run("a", DEFAULT_NETWORK),
    )
    .unwrap();
    let Step::CreateNetwork {
        network: net,
        datapath: None,
    } = &plan.steps[0]
    else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(
        (net.name.as_str(), net.bridge.as_str(), net.id, net.dns),
        (DEFAULT_NETWORK, "netctl0", 1, false)
    );
    assert_eq!(
        net.subnet,
        "172.17.0.0/16".parse::<ipnet::Ipv4Net>().unwrap()
    );
    assert_eq!(net.gateway, Ipv4Addr::new(172, 17, 0, 1));
    assert_eq!(plan.steps[1], Step::CreateNetns("sb-a".into()));
    let Step::Attach { endpoint, .. } = &plan.steps[2] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(endpoint.ip, Ipv4Addr::new(172, 17, 0, 2));
    assert_eq!(plan.steps.len(), 3);
}

/// A network the request says to create (a CNI configuration's, on its
/// first ADD) is the run's first step, on the datapath asked; a network
/// of another name is still unknown.
#[test]
fn a_network_to_create_is_the_first_step() {
    let empty = State::default();
    let create = NetworkCreate {
        name: "cninet".into(),
        subnet: Some("10.77.0.0/24".parse().unwrap()),
        datapath: Some(DatapathKind::Iptables),
        ..NetworkCreate::default()
    };
    let req = ContainerRun {
        create_network: Some(create.clone()),
        ..run("a", "cninet")
    };
    let plan = plan_container(&empty, &config(), &HostPorts::default(), &req).unwrap();
    let Step::CreateNetwork { network, datapath } = &plan.steps[0] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(
        (
            network.name.as_str(),
            network.bridge.as_str(),
            network.subnet
        ),
        ("cninet", "nc-cninet", create.subnet.unwrap())
    );
    assert_eq!(*datapath, Some(DatapathKind::Iptables));
    let Step::Attach { endpoint, .. } = &plan.steps[2] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(endpoint.ip, Ipv4Addr::new(10, 77, 0, 2));
    let other = ContainerRun {
        create_network: Some(create),
        ..run("a", "elsewhere")
    };
    let err = plan_container(&empty, &config(), &HostPorts::default(), &other).unwrap_err();
    assert_eq!(err.to_string(), "network elsewhere: not found");
}

#[test]
fn other_modes_take_no_network_step() {
    let state = state();
    let plan =
        |req: &ContainerRun| plan_container(&state, &config(), &HostPorts::default(), req).unwrap();

    let host = plan(&run("h", "host"));
    assert_eq!(
        (host.container.mode, host.container.netns),
        (NetworkMode::Host, None)
    );
    assert!(host.steps.is_empty());

    let none = plan(&run("n", "none"));
    assert_eq!(none.container.mode, NetworkMode::None);
    assert_eq!(none.steps, vec![Step::CreateNetns("sb-n".into())]);

    // A sharer runs its command in web's namespace, which it does not own.
    let sharer = plan(&ContainerRun {
        command: vec!["true".into()],
        ..run("s", "container:web")
    });
    assert_eq!(sharer.container.netns.as_deref(), Some("sb-web"));
    assert_eq!(
        sharer.steps,
        vec![Step::Start {
            netns: "sb-web".into(),
            command: vec!["true".into()],
            log: PathBuf::from("/run/netctl/sb/s.log"),
        }]
    );
}

#[test]
fn a_cni_attachment_joins_the_runtime_namespace_as_asked() {
    let mac: Mac = "02:00:00:aa:bb:cc".parse().unwrap();
    let req = ContainerRun {
        ip: Some(Ipv4Addr::new(172, 18, 0, 50)),
        mac: Some(mac),
        cni: Some(CniAttachment {
            container_id: "0123456789abcdef".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/runtime".into(),
            network: "front".into(),
        }),
        ..run("cni-0123456789ab-net1", "front")
    };
    let plan = plan_container(&state(), &config(), &HostPorts::default(), &req).unwrap();
    assert!(!plan.container.owns_netns());
    let [Step::Attach {
        netns, endpoint, ..
    }] = plan.steps.as_slice()
    else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(netns, "/var/run/netns/runtime");
    assert_eq!(
        (endpoint.ifname.as_str(), endpoint.ip, endpoint.mac),
        ("net1", Ipv4Addr::new(172, 18, 0, 50), mac)
    );
}

#[test]
fn refusals_name_the_object_and_the_reason() {
    let state = state();
    let cases: Vec<(ContainerRun, &str)> = vec![
        (
            run("bad name", "front"),
            "container \"bad name\": invalid name: only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed",
        ),
        (run("web", "front"), "container web: already exists"),
        (run("x", "nosuch"), "network nosuch: not found"),
        (
            ContainerRun {
                ports: specs(&["80"]),
                ..run("x", "host")
            },
            "container x: cannot publish ports in host network mode",
        ),
        (
            ContainerRun {
                ip: Some(Ipv4Addr::new(172, 18, 0, 9)),
                ..run("x", "none")
            },
            "container x: --ip cannot be used in none network mode",
        ),
        (
            ContainerRun {
                ports: specs(&["80"]),
                ..run("x", "vault")
            },
            "container x: cannot publish ports on internal network vault",
        ),
        (
            ContainerRun {
                ip: Some(Ipv4Addr::new(172, 18, 0, 2)),
                ..run("x", "front")
            },
            "ip 172.18.0.2: already in use",
        ),
        (
            ContainerRun {
                ip: Some(Ipv4Addr::new(10, 1, 1, 1)),
                ..run("x", "front")
            },
            "ip 10.1.1.1: outside subnet 172.18.0.0/16",
        ),
        (
            ContainerRun {
                ports: specs(&["8080:80"]),
                ..run("x", "front")
            },
            "host port 8080/tcp: already published by container web",
        ),
        (
            run("x", "container:hostly"),
            "container x: container hostly uses the host namespace; use --network host",
        ),
        (run("x", "container:nosuch"), "container nosuch: not found"),
        (
            ContainerRun {
                command: vec!["true".into()],
                ..run("x", "host")
            },
            "container x: a command in host mode runs on the host itself: use `netctl exec --host`",
        ),
    ];
    for (req, expected) in cases {
        let err = plan_container(&state, &config(), &HostPorts::default(), &req).unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. } | Error::NotFound { .. }),
            "{req:?}: {err:?}"
        );
        assert_eq!(err.exit_code(), 1, "{err}");
        assert_eq!(err.to_string(), expected, "{req:?}");
    }
}

/// A Docker endpoint: at Docker's address, no namespace yet (Docker names
/// its sandbox at Join), and a veth pair whose container end stays in the
/// host namespace for Docker to move.
#[test]
fn a_docker_endpoint_is_attached_for_docker_to_move() {
    let req = ContainerRun {
        ip: Some(Ipv4Addr::new(172, 18, 0, 60)),
        docker: Some(DockerEndpoint {
            network_id: "ff128470ac6a".into(),
            endpoint_id: "f2356522f400".into(),
        }),
        ..run("docker-f2356522f400", "front")
    };
    let plan = plan_container(&state(), &config(), &HostPorts::default(), &req).unwrap();
    assert!(!plan.container.owns_netns());
    assert_eq!(plan.container.netns, None);
    let [Step::AttachForDocker { network, endpoint }] = plan.steps.as_slice() else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(network.name, "front");
    assert_eq!(
        (endpoint.ifname.as_str(), endpoint.ip),
        (DOCKER_IFNAME_PREFIX, Ipv4Addr::new(172, 18, 0, 60))
    );
}

/// A dual-stack network: the endpoint gets the lowest free IPv6 address
/// (or the one asked), a port on every host address gets its IPv6 side,
/// one bound to an IPv4 host address none; `--ip6` is checked.
#[test]
fn a_dual_stack_run_gets_an_ipv6_address_and_ipv6_ports() {
    let mut state = state();
    state.datapath = Some(DatapathKind::Iptables);
    let dual = Network {
        ipv6: Some(crate::model::Ipv6Side {
            subnet: "fd00:30::/64".parse().unwrap(),
            gateway: "fd00:30::1".parse().unwrap(),
        }),
        ..network("dual", 3, "172.30.0.0/16", false)
    };
    state.networks.insert("dual".into(), dual);
    let hosts = HostPorts {
        addresses: [std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)].into(),
        ..HostPorts::default()
    };
    let req = ContainerRun {
        ports: specs(&["8085:80", "127.0.0.1:8086:80"]),
        ..run("d", "dual")
    };
    let plan = plan_container(&state, &config(), &hosts, &req).unwrap();
    let Step::Attach { endpoint, .. } = &plan.steps[1] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(endpoint.ip6, Some("fd00:30::2".parse().unwrap()));
    let Step::Publish { ports, .. } = &plan.steps[2] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(ports[0].container_ip6, endpoint.ip6);
    assert_eq!(ports[1].container_ip6, None);

    let asked = ContainerRun {
        ip6: Some("fd00:30::99".parse().unwrap()),
        ..run("d", "dual")
    };
    let plan = plan_container(&state, &config(), &hosts, &asked).unwrap();
    let Step::Attach { endpoint, .. } = &plan.steps[1] else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(endpoint.ip6, asked.ip6);
    for (network, ip6, message) in [
        (
            "dual",
            "fd00:31::2",
            "ip6 fd00:31::2: outside subnet fd00:30::/64",
        ),
        (
            "front",
            "fd00:30::5",
            "ip6 fd00:30::5: network front has no IPv6 (made without --ipv6)",
        ),
        (
            "host",
            "fd00:30::5",
            "container d: --ip6 cannot be used in host network mode",
        ),
    ] {
        let req = ContainerRun {
            ip6: Some(ip6.parse().unwrap()),
            ..run("d", network)
        };
        let err = plan_container(&state, &config(), &hosts, &req).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
}

/// `--ipv6` on the eBPF datapath is refused, whether the host already
/// runs it or the request asks for it; a default IPv6 subnet is the ULA
/// /64 of the host and the name.
#[test]
fn ipv6_networks_are_planned_on_iptables_only() {
    let req = |datapath| NetworkCreate {
        name: "six".into(),
        ipv6: true,
        datapath,
        host_id: "sb".into(),
        ..NetworkCreate::default()
    };
    let refusal = "network six: --ipv6 needs the iptables datapath: the eBPF datapath's \
                   programs are IPv4-only for now";
    let ebpf_host = state();
    assert_eq!(
        plan_network(&ebpf_host, &req(None))
            .unwrap_err()
            .to_string(),
        refusal
    );
    let empty = State::default();
    assert_eq!(
        plan_network(&empty, &req(Some(DatapathKind::Ebpf)))
            .unwrap_err()
            .to_string(),
        refusal
    );
    let net = plan_network(&empty, &req(Some(DatapathKind::Iptables))).unwrap();
    let side = net.ipv6.unwrap();
    assert_eq!(
        side.subnet,
        crate::ipam6::ula_subnet("sb", "six", &[]).unwrap()
    );
    assert_eq!(side.gateway, crate::ipam6::default_gateway(side.subnet));
}
