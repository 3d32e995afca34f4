//! `netctl trace` as users read it: a flow event of the eBPF datapath
//! (`netctl_common::event`) with the containers' and networks' names, the
//! filters of the command line, and its two forms, a line of text or a
//! JSON object. Pure: the names come from the state and the host's links,
//! handed in.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use ipnet::Ipv4Net;
use netctl_common::{
    conntrack::{CT_KIND_DNAT, CT_KIND_HAIRPIN, CT_KIND_HOST, CT_KIND_SNAT},
    event::{FlowEvent, Tuple, END_NAMES, EVENT_DROP, EVENT_END, EVENT_NEW, PROGRAM_NAMES},
    stats::STAT_NAMES,
};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    state::State,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Who an address or a veth belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    container: String,
    network: String,
}

/// The names an event's addresses and interface resolve to.
#[derive(Default)]
pub struct Names {
    by_ip: HashMap<Ipv4Addr, Owner>,
    /// Host-side veths.
    by_veth: HashMap<String, Owner>,
    /// Each network's subnet (a gateway, an address nobody has yet).
    subnets: Vec<(Ipv4Net, String)>,
}

impl Names {
    /// From the state.
    pub fn new(state: &State) -> Names {
        let mut by_ip = HashMap::new();
        let mut by_veth = HashMap::new();
        for c in state.containers.values() {
            for ep in &c.endpoints {
                let owner = Owner {
                    container: c.name.clone(),
                    network: ep.network.clone(),
                };
                by_ip.insert(ep.ip, owner.clone());
                by_veth.insert(ep.host_veth.clone(), owner);
            }
        }
        let subnets = state
            .networks
            .values()
            .map(|n| (n.subnet, n.name.clone()))
            .collect();
        Names {
            by_ip,
            by_veth,
            subnets,
        }
    }

    fn network_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.subnets
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, name)| name.as_str())
    }
}

/// What `netctl trace` keeps; every filter given must match (each of
/// several values of one filter may).
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub ports: Vec<u16>,
    pub protocols: Vec<u8>,
    /// `new`, `drop`, `end`, or a drop reason (`drop_spoofed`...).
    pub verdicts: Vec<String>,
}

impl Filters {
    /// Checks the names against the state: an unknown container or
    /// network, or a verdict that is none, is refused (one line naming
    /// it) rather than filtering everything out in silence.
    pub fn check(&self, state: &State) -> Result<()> {
        for name in &self.containers {
            state.container(name)?;
        }
        for name in &self.networks {
            state.network(name)?;
        }
        for v in &self.verdicts {
            let known = ["new", "drop", "end"].contains(&v.as_str())
                || STAT_NAMES.iter().any(|n| n.starts_with("drop_") && n == v);
            if !known {
                return Err(Error::invalid(
                    format!("trace --verdict {v}"),
                    "not a verdict: new, drop, end or a drop reason (drop_spoofed, drop_isolated... as `netctl stats` names them)",
                ));
            }
        }
        Ok(())
    }

    fn keeps(&self, line: &Line, event: &FlowEvent) -> bool {
        let named = |name: &String| {
            [
                &line.src_container,
                &line.dst_container,
                &line.interface_container,
            ]
            .iter()
            .any(|c| c.as_ref() == Some(name))
        };
        let ports = [
            event.original.sport,
            event.original.dport,
            event.translated.sport,
            event.translated.dport,
        ]
        .map(u16::from_be);
        let has_ports = event.ethertype == ETH_P_IP && has_ports(event.proto);
        (self.containers.is_empty() || self.containers.iter().any(named))
            && (self.networks.is_empty() || self.networks.iter().any(|n| line.networks.contains(n)))
            && (self.ports.is_empty() || has_ports && self.ports.iter().any(|p| ports.contains(p)))
            && (self.protocols.is_empty()
                || event.ethertype == ETH_P_IP && self.protocols.contains(&event.proto))
            && (self.verdicts.is_empty()
                || self
                    .verdicts
                    .iter()
                    .any(|v| v == line.event || line.reason == Some(v.as_str())))
    }
}

/// A `--proto` value: tcp, udp, icmp or a protocol number.
pub fn parse_protocol(text: &str) -> std::result::Result<u8, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        other => other
            .parse()
            .map_err(|_| format!("{text}: not tcp, udp, icmp or a protocol number (0-255)")),
    }
}

fn has_ports(proto: u8) -> bool {
    proto == 6 || proto == 17
}

/// One event as printed (`--format json`: these fields).
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// `new`, `drop` or `end`.
    pub event: &'static str,
    /// The flow's translation (`snat`, `dnat`, `hairpin`, `host`); none for
    /// drops.
    pub kind: Option<&'static str>,
    /// A drop's reason (`netctl stats`' counter name) or an end's (`rst`,
    /// `fin`, `timeout`, `early_drop`).
    pub reason: Option<&'static str>,
    /// The program that dropped the packet.
    pub program: Option<&'static str>,
    /// `tcp`, `udp`, `icmp`, a number, or `arp`, `ipv6`.
    pub protocol: String,
    /// The original direction, as its first packet had it (a drop: the
    /// dropped packet).
    pub src: String,
    pub dst: String,
    /// What the original direction became (new and end).
    pub translated_src: Option<String>,
    pub translated_dst: Option<String>,
    /// The container of the source, and of the destination after the
    /// translation.
    pub src_container: Option<String>,
    pub dst_container: Option<String>,
    /// The interface of the event (a drop: where the packet came in; a new
    /// flow: the container's veth) and its container.
    pub interface: Option<String>,
    pub interface_container: Option<String>,
    /// Every network the event touches.
    pub networks: Vec<String>,
}

fn endpoint(ip: u32, port: u16, ports: bool) -> String {
    let ip = Ipv4Addr::from(ip.to_ne_bytes());
    if ports {
        SocketAddrV4::new(ip, u16::from_be(port)).to_string()
    } else {
        ip.to_string()
    }
}

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn kind_name(kind: u8) -> Option<&'static str> {
    match kind {
        CT_KIND_SNAT => Some("snat"),
        CT_KIND_DNAT => Some("dnat"),
        CT_KIND_HAIRPIN => Some("hairpin"),
        CT_KIND_HOST => Some("host"),
        _ => None,
    }
}

/// UTC date and time of `ns` since the epoch, RFC 3339 with milliseconds.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let millis = (ns / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The event as printed, its names resolved (`ifname`: the name of its
/// `ifindex`, if any); `None` when the filters drop it or it is of no
/// kind this build knows.
pub fn line(
    event: &FlowEvent,
    wall_ns: u64,
    ifname: Option<&str>,
    names: &Names,
    filters: &Filters,
) -> Option<Line> {
    let name = match event.kind {
        EVENT_NEW => "new",
        EVENT_DROP => "drop",
        EVENT_END => "end",
        _ => return None,
    };
    let flow = event.kind != EVENT_DROP;
    let ports = event.ethertype == ETH_P_IP && has_ports(event.proto);
    let protocol = match (event.ethertype, event.proto) {
        (ETH_P_ARP, _) => "arp".to_owned(),
        (ETH_P_IPV6, _) => "ipv6".to_owned(),
        (ETH_P_IP, 6) => "tcp".to_owned(),
        (ETH_P_IP, 17) => "udp".to_owned(),
        (ETH_P_IP, 1) => "icmp".to_owned(),
        (ETH_P_IP, p) => p.to_string(),
        (other, _) => format!("ethertype 0x{other:04x}"),
    };
    let reason = match event.kind {
        EVENT_DROP => STAT_NAMES.get(usize::from(event.reason)).copied(),
        EVENT_END => END_NAMES.get(usize::from(event.reason)).copied(),
        _ => None,
    };
    let original: &Tuple = &event.original;
    let dst_ip = if flow {
        event.translated.daddr
    } else {
        original.daddr
    };
    let owner = |raw: u32| names.by_ip.get(&addr(raw));
    let src_owner = owner(original.saddr);
    let dst_owner = owner(dst_ip);
    let link_owner = ifname.and_then(|n| names.by_veth.get(n));
    let mut networks: Vec<String> = [src_owner, dst_owner, link_owner]
        .into_iter()
        .flatten()
        .map(|o| o.network.clone())
        .chain(
            [original.saddr, original.daddr, dst_ip]
                .into_iter()
                .filter_map(|ip| names.network_of(addr(ip)).map(str::to_owned)),
        )
        .collect();
    networks.sort();
    networks.dedup();
    let line = Line {
        time: rfc3339(wall_ns),
        event: name,
        kind: if flow { kind_name(event.ct_kind) } else { None },
        reason: reason.filter(|r| !r.is_empty()),
        program: if flow {
            None
        } else {
            PROGRAM_NAMES.get(usize::from(event.program)).copied()
        },
        protocol,
        src: endpoint(original.saddr, original.sport, ports),
        dst: endpoint(original.daddr, original.dport, ports),
        translated_src: flow
            .then(|| endpoint(event.translated.saddr, event.translated.sport, ports)),
        translated_dst: flow
            .then(|| endpoint(event.translated.daddr, event.translated.dport, ports)),
        src_container: src_owner.map(|o| o.container.clone()),
        dst_container: dst_owner.map(|o| o.container.clone()),
        interface: ifname.map(str::to_owned),
        interface_container: link_owner.map(|o| o.container.clone()),
        networks,
    };
    filters.keeps(&line, event).then_some(line)
}

impl Line {
    /// One line of text: time, event, what it is, the tuple with its
    /// names, the translation, the interface.
    pub fn text(&self) -> String {
        let named = |addr: &str, who: &Option<String>| match who {
            Some(c) => format!("{addr} ({c})"),
            None => addr.to_owned(),
        };
        let mut out = format!("{} {:<4}", &self.time[11..23], self.event);
        for word in [self.kind, self.reason, self.program].into_iter().flatten() {
            out.push(' ');
            out.push_str(word);
        }
        // A flow's destination container is the translated address's.
        let to = if self.translated_dst.is_some() {
            self.dst.clone()
        } else {
            named(&self.dst, &self.dst_container)
        };
        out.push_str(&format!(
            " {} {} -> {}",
            self.protocol,
            named(&self.src, &self.src_container),
            to
        ));
        if let (Some(s), Some(d)) = (&self.translated_src, &self.translated_dst) {
            if *s != self.src || *d != self.dst {
                out.push_str(&format!(" as {s} -> {}", named(d, &self.dst_container)));
            } else if let Some(c) = &self.dst_container {
                out.push_str(&format!(" ({c})"));
            }
        }
        if let Some(i) = &self.interface {
            out.push_str(&format!(" on {}", named(i, &self.interface_container)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, Endpoint, Mac, Network, NetworkMode};
    use netctl_common::{event::END_FIN, stats::StatIndex};

    fn be(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    fn state() -> State {
        let mut state = State::default();
        state.networks.insert(
            "front".into(),
            Network {
                name: "front".into(),
                id: 1,
                bridge: "nc-front".into(),
                subnet: "172.18.0.0/16".parse().unwrap(),
                gateway: Ipv4Addr::new(172, 18, 0, 1),
                internal: false,
                dns: true,
                created: 0,
                mtu: None,
                ipv6: None,
            },
        );
        for (name, ip, veth) in [("a", 3, "vea"), ("web", 2, "veweb")] {
            state.containers.insert(
                name.into(),
                Container {
                    name: name.into(),
                    mode: NetworkMode::Bridge,
                    netns: None,
                    endpoints: vec![Endpoint {
                        network: "front".into(),
                        ifname: "eth0".into(),
                        host_veth: veth.into(),
                        ip: Ipv4Addr::new(172, 18, 0, ip),
                        mac: Mac::from([2, 0, 0, 0, 0, ip]),
                        ip6: None,
                    }],
                    ports: vec![],
                    process: None,
                    created: 0,
                    cni: None,
                    docker: None,
                    naming: Default::default(),
                },
            );
        }
        state
    }

    fn names() -> Names {
        Names::new(&state())
    }

    fn snat() -> FlowEvent {
        FlowEvent {
            time_ns: 0,
            kind: EVENT_NEW,
            proto: 6,
            ct_kind: CT_KIND_SNAT,
            program: 0xff,
            reason: 0,
            ethertype: ETH_P_IP,
            ifindex: 7,
            original: Tuple {
                saddr: be([172, 18, 0, 3]),
                daddr: be([198, 51, 100, 2]),
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
            },
            translated: Tuple {
                saddr: be([198, 51, 100, 1]),
                daddr: be([198, 51, 100, 2]),
                sport: 1024u16.to_be(),
                dport: 80u16.to_be(),
            },
            _pad: 0,
        }
    }

    #[test]
    fn a_new_snat_flow_with_its_names() {
        let line = line(
            &snat(),
            1_764_688_050_123_000_000,
            Some("vea"),
            &names(),
            &Filters::default(),
        )
        .expect("kept");
        assert_eq!(line.time, "2025-12-02T15:07:30.123Z");
        assert_eq!(line.src, "172.18.0.3:40000");
        assert_eq!(line.translated_src.as_deref(), Some("198.51.100.1:1024"));
        assert_eq!(line.src_container.as_deref(), Some("a"));
        assert_eq!(line.interface_container.as_deref(), Some("a"));
        assert_eq!(line.networks, ["front"]);
        assert_eq!(
            line.text(),
            "15:07:30.123 new  snat tcp 172.18.0.3:40000 (a) -> 198.51.100.2:80 as \
             198.51.100.1:1024 -> 198.51.100.2:80 on vea (a)"
        );
    }

    #[test]
    fn an_arp_drop_shows_the_arp_addresses() {
        let mut e = snat();
        e.kind = EVENT_DROP;
        e.ethertype = ETH_P_ARP;
        e.proto = 0;
        e.program = 0;
        e.reason = StatIndex::DropArpSpoofed as u16;
        e.original = Tuple {
            saddr: be([172, 18, 0, 2]),
            daddr: be([172, 18, 0, 1]),
            sport: 0,
            dport: 0,
        };
        e.translated = Tuple::default();
        let line = line(&e, 0, Some("vea"), &names(), &Filters::default()).expect("kept");
        assert_eq!(
            line.text(),
            "00:00:00.000 drop drop_arp_spoofed endpoint_ingress arp 172.18.0.2 (web) -> \
             172.18.0.1 on vea (a)"
        );
    }

    #[test]
    fn filters_keep_what_they_name() {
        let names = names();
        let keep = |f: Filters, e: &FlowEvent| line(e, 0, Some("vea"), &names, &f).is_some();
        let e = snat();
        let by = |containers: &[&str]| Filters {
            containers: containers.iter().map(|s| s.to_string()).collect(),
            ..Filters::default()
        };
        assert!(keep(by(&["a"]), &e));
        assert!(!keep(by(&["web"]), &e));
        assert!(keep(
            Filters {
                ports: vec![1024],
                ..Filters::default()
            },
            &e
        ));
        assert!(!keep(
            Filters {
                ports: vec![53],
                ..Filters::default()
            },
            &e
        ));
        assert!(!keep(
            Filters {
                protocols: vec![17],
                ..Filters::default()
            },
            &e
        ));
        let verdict = |v: &str| Filters {
            verdicts: vec![v.to_owned()],
            ..Filters::default()
        };
        assert!(keep(verdict("new"), &e));
        assert!(!keep(verdict("drop"), &e));
        let mut end = snat();
        end.kind = EVENT_END;
        end.reason = END_FIN;
        assert_eq!(
            line(&end, 0, None, &names, &Filters::default()).and_then(|l| l.reason),
            Some("fin")
        );
        assert!(keep(verdict("end"), &end));
        assert!(Filters {
            verdicts: vec!["drop_bogus".into()],
            ..Filters::default()
        }
        .check(&state())
        .is_err());
        assert!(by(&["nobody"]).check(&state()).is_err());
        assert!(verdict("drop_spoofed").check(&state()).is_ok());
    }
}
