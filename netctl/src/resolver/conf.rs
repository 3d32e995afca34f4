//! resolv.conf: the host's, read; each container's, written.
//!
//! A container's file is decided here, purely: on a user-defined network it
//! names that network's resolver (the gateway, where the resolver process
//! listens), which answers the network's names and forwards the rest; on
//! the default network (or with `--network none`) it names the host's
//! nameservers minus the loopback ones, which a container cannot reach.
//! Search domains and options are the host's unless `--dns-search` or
//! `--dns-option` replace them, as in Docker.

use std::{net::IpAddr, path::PathBuf};

use crate::{config::HostConfig, model::Container, state::State};

/// What a resolv.conf says. The host's is read for its IPv4 nameservers
/// only; a container's names its network's IPv6 gateway too on a
/// dual-stack network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The host's resolver configuration: `/etc/netns/NAME/resolv.conf` with
/// `--host-netns NAME` when that file exists (the `ip netns` convention),
/// else /etc/resolv.conf.
pub fn host_path(config: &HostConfig) -> PathBuf {
    if let Some(name) = &config.host_netns {
        let own = PathBuf::from(crate::hosts::ETC_NETNS)
            .join(name)
            .join("resolv.conf");
        if own.exists() {
            return own;
        }
    }
    PathBuf::from("/etc/resolv.conf")
}

/// The host's configuration; an unreadable file is an empty one.
pub fn read_host(config: &HostConfig) -> (PathBuf, ResolvConf) {
    let path = host_path(config);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    (path, parse(&text))
}

/// `nameserver`, `search` (the last one wins, as in glibc; `domain` counts
/// as a one-domain search) and `options` lines; comments and the rest are
/// ignored. IPv6 nameservers are left out.
pub fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(Ok(ip @ IpAddr::V4(_))) = words.next().map(str::parse) {
                    conf.nameservers.push(ip);
                }
            }
            Some("search") | Some("domain") => conf.search = words.map(str::to_owned).collect(),
            Some("options") => conf.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    conf
}

pub fn render(conf: &ResolvConf) -> String {
    let mut text = String::from("# written by netctl\n");
    for ns in &conf.nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !conf.search.is_empty() {
        text.push_str(&format!("search {}\n", conf.search.join(" ")));
    }
    if !conf.options.is_empty() {
        text.push_str(&format!("options {}\n", conf.options.join(" ")));
    }
    text
}

/// The first user-defined network of a container (the one whose resolver
/// its resolv.conf names), with its gateway.
pub fn resolver_network<'a>(
    state: &'a State,
    ctr: &Container,
) -> Option<&'a crate::model::Network> {
    ctr.endpoints
        .iter()
        .filter_map(|ep| state.networks.get(&ep.network))
        .find(|net| net.dns)
}

/// A container's resolv.conf, or why it gets none (no usable resolver).
pub fn for_container(
    state: &State,
    ctr: &Container,
    host: &ResolvConf,
    host_path: &std::path::Path,
) -> Result<ResolvConf, String> {
    let search = if ctr.naming.dns.search.is_empty() {
        host.search.clone()
    } else {
        ctr.naming.dns.search.clone()
    };
    let options = if ctr.naming.dns.options.is_empty() {
        host.options.clone()
    } else {
        ctr.naming.dns.options.clone()
    };
    // On a user-defined network, the network's resolver: it forwards what
    // it does not know to --dns or to the host's resolvers. It listens on a
    // dual-stack network's IPv6 gateway too, listed second: the IPv4 one
    // stays the one asked first, as before.
    if let Some(net) = resolver_network(state, ctr) {
        let v6 = net.ipv6.map(|side| IpAddr::V6(side.gateway));
        return Ok(ResolvConf {
            nameservers: std::iter::once(IpAddr::V4(net.gateway)).chain(v6).collect(),
            search,
            options,
        });
    }
    let nameservers: Vec<IpAddr> = if ctr.naming.dns.servers.is_empty() {
        host.nameservers
            .iter()
            .copied()
            .filter(|ns| !ns.is_loopback())
            .collect()
    } else {
        ctr.naming
            .dns
            .servers
            .iter()
            .copied()
            .map(IpAddr::V4)
            .collect()
    };
    if nameservers.is_empty() {
        let why = if host.nameservers.is_empty() {
            format!("{} names no IPv4 nameserver", host_path.display())
        } else {
            let shown: Vec<String> = host.nameservers.iter().map(ToString::to_string).collect();
            format!(
                "the host's nameservers ({}, from {}) are loopback addresses a container cannot reach",
                shown.join(", "),
                host_path.display()
            )
        };
        return Err(format!(
            "no usable resolver: {why}; use --dns or a user-defined network"
        ));
    }
    Ok(ResolvConf {
        nameservers,
        search,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DnsConfig, Endpoint, Mac, Naming, Network, NetworkMode};
    use std::net::Ipv4Addr;

    fn net(name: &str, dns: bool, gateway: [u8; 4]) -> Network {
        Network {
            name: name.into(),
            id: 1,
            bridge: format!("nc-{name}"),
            subnet: format!("{}.{}.0.0/16", gateway[0], gateway[1])
                .parse()
                .unwrap(),
            gateway: gateway.into(),
            internal: false,
            dns,
            created: 0,
            mtu: None,
            ipv6: None,
        }
    }

    fn ctr(networks: &[&str], dns: DnsConfig) -> Container {
        Container {
            name: "web".into(),
            mode: NetworkMode::Bridge,
            netns: Some("h-web".into()),
            endpoints: networks
                .iter()
                .map(|n| Endpoint {
                    network: (*n).into(),
                    ifname: "eth0".into(),
                    host_veth: "ve00000000".into(),
                    ip: Ipv4Addr::new(172, 18, 0, 2),
                    mac: Mac::for_ip(Ipv4Addr::new(172, 18, 0, 2)),
                    ip6: None,
                })
                .collect(),
            ports: Vec::new(),
            process: None,
            created: 0,
            cni: None,
            docker: None,
            naming: Naming {
                dns,
                ..Naming::default()
            },
        }
    }

    fn state() -> State {
        let mut state = State::default();
        for n in [
            net("bridge", false, [172, 17, 0, 1]),
            net("front", true, [172, 18, 0, 1]),
        ] {
            state.networks.insert(n.name.clone(), n);
        }
        state
    }

    const HOST: &str = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch a.example b.example\noptions edns0 trust-ad\n";

    #[test]
    fn the_host_file_is_read_as_glibc_reads_it() {
        let conf = parse(HOST);
        assert_eq!(
            conf.nameservers,
            [
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))
            ]
        );
        assert_eq!(conf.search, ["a.example", "b.example"]);
        assert_eq!(conf.options, ["edns0", "trust-ad"]);
    }

    #[test]
    fn the_default_network_gets_the_host_resolvers_minus_loopback() {
        let host = parse(HOST);
        let got = for_container(
            &state(),
            &ctr(&["bridge"], DnsConfig::default()),
            &host,
            "/h".as_ref(),
        );
        assert_eq!(
            render(&got.unwrap()),
            "# written by netctl\nnameserver 192.0.2.53\nsearch a.example b.example\noptions edns0 trust-ad\n"
        );
    }

    #[test]
    fn a_user_network_gets_its_resolver_and_flags_replace_the_host_lists() {
        let host = parse(HOST);
        let dns = DnsConfig {
            servers: vec![Ipv4Addr::new(198, 51, 100, 53)],
            search: vec!["corp.example".into()],
            options: vec!["ndots:2".into()],
        };
        let got = for_container(
            &state(),
            &ctr(&["bridge", "front"], dns.clone()),
            &host,
            "/h".as_ref(),
        );
        assert_eq!(
            got.unwrap(),
            ResolvConf {
                nameservers: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1))],
                search: dns.search.clone(),
                options: dns.options.clone(),
            }
        );
        // --dns on the default network goes into the file itself.
        let got = for_container(
            &state(),
            &ctr(&["bridge"], dns.clone()),
            &host,
            "/h".as_ref(),
        );
        assert_eq!(
            got.unwrap().nameservers,
            [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53))]
        );
        // A dual-stack network's resolver: its IPv6 gateway second.
        let mut state = state();
        state.networks.get_mut("front").unwrap().ipv6 = Some(crate::model::Ipv6Side {
            subnet: "fd00:18::/64".parse().unwrap(),
            gateway: "fd00:18::1".parse().unwrap(),
        });
        let got = for_container(&state, &ctr(&["front"], dns), &host, "/h".as_ref()).unwrap();
        assert_eq!(
            render(&got),
            "# written by netctl\nnameserver 172.18.0.1\nnameserver fd00:18::1\nsearch corp.example\noptions ndots:2\n"
        );
    }

    #[test]
    fn only_loopback_resolvers_is_said_not_written() {
        let host = parse("nameserver 127.0.0.53\n");
        let err = for_container(
            &state(),
            &ctr(&["bridge"], DnsConfig::default()),
            &host,
            "/etc/resolv.conf".as_ref(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "no usable resolver: the host's nameservers (127.0.0.53, from /etc/resolv.conf) are loopback addresses a container cannot reach; use --dns or a user-defined network"
        );
        // A user network's resolver reaches them from the host namespace.
        assert!(for_container(
            &state(),
            &ctr(&["front"], DnsConfig::default()),
            &host,
            "/h".as_ref()
        )
        .is_ok());
    }
}
