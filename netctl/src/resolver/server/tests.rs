use super::*;
use crate::model::{Container, Endpoint, Mac, Naming, Network, NetworkMode};

fn net(name: &str, third: u8, dns: bool) -> Network {
    Network {
        name: name.into(),
        id: u32::from(third),
        bridge: format!("nc-{name}"),
        subnet: format!("172.{third}.0.0/16").parse().unwrap(),
        gateway: Ipv4Addr::new(172, third, 0, 1),
        internal: false,
        dns,
        created: 0,
        mtu: None,
        ipv6: None,
    }
}

fn ctr(name: &str, eps: &[(&str, Ipv4Addr)], mode: NetworkMode) -> Container {
    Container {
        name: name.into(),
        mode,
        netns: Some(format!("h-{name}")),
        endpoints: eps
            .iter()
            .map(|(n, ip)| Endpoint {
                network: (*n).into(),
                ifname: "eth0".into(),
                host_veth: "ve00000000".into(),
                ip: *ip,
                mac: Mac::for_ip(*ip),
                ip6: None,
            })
            .collect(),
        ports: Vec::new(),
        process: None,
        created: 0,
        cni: None,
        docker: None,
        naming: Naming::default(),
    }
}

fn ip(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, c, 0, d)
}

fn tables() -> Tables {
    let mut state = State::default();
    for n in [
        net("bridge", 17, false),
        net("front", 18, true),
        net("back", 19, true),
    ] {
        state.networks.insert(n.name.clone(), n);
    }
    let mut web = ctr("web", &[("front", ip(18, 2))], NetworkMode::Bridge);
    web.naming
        .aliases
        .insert("front".into(), vec!["WWW".into()]);
    web.naming.dns.servers = vec![Ipv4Addr::new(192, 0, 2, 53)];
    let both = ctr(
        "both",
        &[("front", ip(18, 3)), ("back", ip(19, 3))],
        NetworkMode::Bridge,
    );
    let db = ctr("db", &[("back", ip(19, 2))], NetworkMode::Bridge);
    let side = ctr("side", &[], NetworkMode::Container("db".into()));
    let plain = ctr("plain", &[("bridge", ip(17, 2))], NetworkMode::Bridge);
    for c in [web, both, db, side, plain] {
        state.containers.insert(c.name.clone(), c);
    }
    Tables::build(&state, vec![Ipv4Addr::new(127, 0, 0, 53)])
}

#[test]
fn names_of_the_askers_networks_only() {
    let t = tables();
    let ask = |gw: Ipv4Addr, from: Ipv4Addr, name: &str| {
        decide(&t, gw.into(), from.into(), name, RecordType::A)
    };
    // web on front: front's names and aliases, any case, with the dot.
    assert_eq!(
        ask(ip(18, 1), ip(18, 2), "both."),
        Decision::Address(ip(18, 3))
    );
    assert_eq!(
        ask(ip(18, 1), ip(18, 2), "www"),
        Decision::Address(ip(18, 2))
    );
    assert_eq!(ask(ip(18, 1), ip(18, 2), "db"), Decision::NxDomain);
    // both is on both: the asked network's address first.
    assert_eq!(
        ask(ip(18, 1), ip(18, 3), "both"),
        Decision::Address(ip(18, 3))
    );
    assert_eq!(
        ask(ip(19, 1), ip(19, 3), "both"),
        Decision::Address(ip(19, 3))
    );
    assert_eq!(
        ask(ip(18, 1), ip(18, 3), "side"),
        Decision::Address(ip(19, 2))
    );
    // web asking back's gateway, or a stranger: refused.
    assert_eq!(ask(ip(19, 1), ip(18, 2), "db"), Decision::Refused);
    assert_eq!(ask(ip(17, 1), ip(17, 2), "web"), Decision::Refused);
    assert_eq!(
        ask(ip(18, 1), Ipv4Addr::new(198, 51, 100, 2), "web"),
        Decision::Refused
    );
    // AAAA of a known name: no data (not forwarded).
    assert_eq!(
        decide(
            &t,
            ip(18, 1).into(),
            ip(18, 3).into(),
            "web",
            RecordType::AAAA
        ),
        Decision::NoData
    );
}

/// Reverse names of the networks' subnets are answered here: the name
/// of a container on the asker's networks, NXDOMAIN for any other
/// address of those subnets (another network's container included);
/// other reverse names go where other names go.
#[test]
fn reverse_names_of_the_subnets_are_answered_here() {
    let t = tables();
    let ptr = |from: Ipv4Addr, name: &str| {
        decide(&t, ip(18, 1).into(), from.into(), name, RecordType::PTR)
    };
    assert_eq!(
        ptr(ip(18, 2), "3.0.18.172.in-addr.arpa."),
        Decision::Pointer("both".into())
    );
    // both's address on back, asked at front's gateway by both: its
    // networks include back.
    assert_eq!(
        ptr(ip(18, 3), "3.0.19.172.in-addr.arpa"),
        Decision::Pointer("both".into())
    );
    // web is not on back: db's address is not its to learn.
    assert_eq!(
        ptr(ip(18, 2), "2.0.19.172.in-addr.arpa"),
        Decision::NxDomain
    );
    assert_eq!(
        ptr(ip(18, 2), "1.0.18.172.in-addr.arpa"),
        Decision::NxDomain
    );
    assert_eq!(
        decide(
            &t,
            ip(18, 1).into(),
            ip(18, 2).into(),
            "3.0.18.172.in-addr.arpa",
            RecordType::A
        ),
        Decision::NoData
    );
    // Outside the subnets, or not a whole address: forwarded.
    let forwarded = Decision::Forward(vec![Ipv4Addr::new(192, 0, 2, 53)]);
    assert_eq!(ptr(ip(18, 2), "2.100.51.198.in-addr.arpa"), forwarded);
    assert_eq!(ptr(ip(18, 2), "18.172.in-addr.arpa"), forwarded);
    assert_eq!(
        reverse_address("4.0.18.172.in-addr.arpa"),
        Some(IpAddr::V4(ip(18, 4)))
    );
    assert_eq!(
        reverse_address(&format!(
            "2.{}.0.0.0.0.8.1.0.0.0.0.d.f.ip6.arpa",
            "0.".repeat(19).trim_end_matches('.')
        )),
        Some("fd00:18::2".parse().unwrap())
    );
}

#[test]
fn the_rest_goes_to_dns_flags_or_the_host() {
    let t = tables();
    assert_eq!(
        decide(
            &t,
            ip(18, 1).into(),
            ip(18, 2).into(),
            "example.com",
            RecordType::A
        ),
        Decision::Forward(vec![Ipv4Addr::new(192, 0, 2, 53)])
    );
    assert_eq!(
        decide(
            &t,
            ip(18, 1).into(),
            ip(18, 3).into(),
            "example.com.",
            RecordType::A
        ),
        Decision::Forward(vec![Ipv4Addr::new(127, 0, 0, 53)])
    );
}

#[test]
fn aaaa_answers_the_ipv6_address_on_a_dual_stack_network() {
    let mut state = State::default();
    let mut dual = net("dual", 30, true);
    dual.ipv6 = Some(crate::model::Ipv6Side {
        subnet: "fd00:30::/64".parse().unwrap(),
        gateway: "fd00:30::1".parse().unwrap(),
    });
    state.networks.insert("dual".into(), dual);
    let mut web = ctr("web", &[("dual", ip(30, 2))], NetworkMode::Bridge);
    web.endpoints[0].ip6 = Some("fd00:30::2".parse().unwrap());
    let a = ctr("a", &[("dual", ip(30, 3))], NetworkMode::Bridge);
    for c in [web, a] {
        state.containers.insert(c.name.clone(), c);
    }
    let t = Tables::build(&state, Vec::new());
    let ask = |qtype| decide(&t, ip(30, 1).into(), ip(30, 3).into(), "web", qtype);
    assert_eq!(
        ask(RecordType::AAAA),
        Decision::Address6("fd00:30::2".parse().unwrap())
    );
    assert_eq!(ask(RecordType::A), Decision::Address(ip(30, 2)));
    // A name without an IPv6 address has no AAAA record.
    assert_eq!(
        decide(
            &t,
            ip(30, 1).into(),
            ip(30, 2).into(),
            "a",
            RecordType::AAAA
        ),
        Decision::NoData
    );
    // Asked over IPv6, at the IPv6 gateway from a's IPv6 address: the
    // same answers; the IPv4 address at the IPv6 gateway is a client
    // too (a container may send from either), a stranger is not.
    let gw6: IpAddr = "fd00:30::1".parse().unwrap();
    let a6: IpAddr = "fd00:30::3".parse().unwrap();
    let t6 = {
        let mut state = state.clone();
        state.containers.get_mut("a").unwrap().endpoints[0].ip6 =
            Some("fd00:30::3".parse().unwrap());
        Tables::build(&state, Vec::new())
    };
    assert_eq!(
        decide(&t6, gw6, a6, "web", RecordType::AAAA),
        Decision::Address6("fd00:30::2".parse().unwrap())
    );
    assert_eq!(
        decide(&t6, gw6, a6, "web", RecordType::A),
        Decision::Address(ip(30, 2))
    );
    assert_eq!(
        decide(
            &t6,
            gw6,
            "fd00:30::99".parse().unwrap(),
            "web",
            RecordType::AAAA
        ),
        Decision::Refused
    );
    assert_eq!(t6.gateways().filter(IpAddr::is_ipv6).count(), 1);
}
