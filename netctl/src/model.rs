//! The model netctl keeps of a host: networks, containers, their endpoints
//! and published ports, and the small value types they are made of (MAC
//! addresses, protocols, network modes).
//!
//! These are plain data with serde names fixed by the state file: `state.rs`
//! persists them, `journal.rs` records them in undo steps, and the rest of
//! the crate reads them. Nothing here touches the disk or the kernel.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Name of Docker's default network, created on first use.
pub const DEFAULT_NETWORK: &str = "bridge";

/// Which datapath moves the packets of a host. The first network fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    Iptables,
    Ebpf,
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatapathKind::Iptables => "iptables",
            DatapathKind::Ebpf => "ebpf",
        })
    }
}

/// An Ethernet address. Written "02:42:ac:12:00:02" (lower case) wherever
/// it is shown or stored, the state file included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Docker's MAC for a container address: `02:42` (locally administered,
    /// unicast) followed by the four bytes of the IP, so that the MAC is
    /// stable and never collides on a bridge where IPs are unique. A bridge
    /// gets the MAC of its gateway address.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Mac(octets)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Six groups of one or two hex digits separated by colons, in either case.
impl FromStr for Mac {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::invalid(format!("mac {text}"), "not a MAC address");
        let mut octets = [0u8; 6];
        let mut groups = text.split(':');
        for octet in &mut octets {
            let group = groups.next().ok_or_else(invalid)?;
            let hex =
                (1..=2).contains(&group.len()) && group.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(group, 16).map_err(|_| invalid())?;
        }
        match groups.next() {
            Some(_) => Err(invalid()),
            None => Ok(Mac(octets)),
        }
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A bridge network: one Linux bridge in the host namespace, one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// Small stable number, unique on the host (used as a key by the eBPF maps).
    pub id: u32,
    /// Bridge interface in the host namespace.
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Address of the bridge, the containers' default gateway.
    pub gateway: Ipv4Addr,
    /// No way out: no SNAT, no published ports, no traffic to other networks.
    pub internal: bool,
    /// Peers reach each other by name (user-defined networks; not `bridge`).
    pub dns: bool,
    /// Seconds since the epoch.
    pub created: u64,
    /// MTU of the veth pairs of its endpoints (`None`: the kernel's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `--ipv6`: the network's IPv6 side (dual stack). Absent in states
    /// written before IPv6 and on IPv4-only networks, whose bridges and
    /// containers have IPv6 turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Side>,
}

/// The IPv6 subnet of a dual-stack network and its gateway on the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Side {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

impl Network {
    /// The bridge's MAC: derived from the gateway address as a container's
    /// is from its own, so it is the same every time the bridge is made.
    pub fn bridge_mac(&self) -> Mac {
        Mac::for_ip(self.gateway)
    }
}

/// How a container is networked (Docker's `--network` modes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "target")]
pub enum NetworkMode {
    /// Own namespace, attached to one or more bridge networks.
    Bridge,
    /// The host's own namespace.
    Host,
    /// Own namespace with only `lo`.
    None,
    /// The namespace of another container.
    Container(String),
}

/// Docker's words: `bridge`, `host`, `none`, `container:NAME`.
impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Bridge => f.write_str("bridge"),
            NetworkMode::Host => f.write_str("host"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Container(other) => write!(f, "container:{other}"),
        }
    }
}

/// A container's interface on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// Interface name inside the container (eth0, eth1, ...).
    pub ifname: String,
    /// Host-side end of the veth pair, enslaved to the network's bridge.
    pub host_veth: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// MAC of the container side.
    pub mac: Mac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port: host `[ip:]port/proto` → container `ip:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    /// `None` publishes on every address of the host. An IPv6 address
    /// (`-p [2001:db8::1]:8080:80`, dual-stack networks only) publishes on
    /// that address alone, to `container_ip6`: such a mapping has no IPv4
    /// side (states written before IPv6 hold IPv4 addresses, read the same).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    /// The endpoint's IPv6 address when the port is published on every
    /// host address of a dual-stack network (the host's IPv6 addresses
    /// forward to it too) or on one IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip6: Option<Ipv6Addr>,
    pub container_port: u16,
    pub container: String,
    /// Network whose endpoint receives the traffic.
    pub network: String,
}

impl PortMapping {
    /// `0.0.0.0:8080->80/tcp` or `[2001:db8::1]:8080->80/tcp`, as
    /// `docker port` prints them.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            host_ip_text(self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            self.host_port,
            self.container_port,
            self.protocol
        )
    }

    /// Whether the mapping has an IPv4 side: on every host address or on
    /// one IPv4 address (not on one IPv6 address).
    pub fn is_ipv4(&self) -> bool {
        !matches!(self.host_ip, Some(IpAddr::V6(_)))
    }

    /// The IPv4 host address the mapping is bound to, if any (`None` also
    /// for a mapping without IPv4 side: see [`PortMapping::is_ipv4`]).
    pub fn host_ip4(&self) -> Option<Ipv4Addr> {
        match self.host_ip {
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => Some(ip),
            _ => None,
        }
    }

    /// Two mappings collide when they share protocol and host port and
    /// their host addresses overlap (`None` overlaps everything).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// A host address as `-p` and `docker port` write it: IPv6 in brackets.
pub fn host_ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A detached command started by `container run NAME -- CMD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat), so a
    /// recycled pid is never mistaken for ours.
    pub start_time: u64,
    pub command: Vec<String>,
    pub log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub mode: NetworkMode,
    /// Name of its namespace under /run/netns (`None` in host mode).
    pub netns: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<PortMapping>,
    pub process: Option<Process>,
    pub created: u64,
    /// Set when a container runtime made this container through the CNI
    /// plugin: the runtime owns its namespace, netctl never deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
    /// Set when Docker made this container through `netctl docker-plugin`:
    /// Docker owns its namespace (`netns` is the sandbox's path once
    /// joined) and moves the interface into it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerEndpoint>,
    /// Its names and resolver settings (`--hostname`, `--network-alias`,
    /// `--dns*`), shown flat in the state and in `container inspect`.
    #[serde(flatten)]
    pub naming: Naming,
}

/// What a container is called besides its name, and how it resolves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Naming {
    /// `--hostname`: the name its processes see (their UTS namespace under
    /// `netctl exec`) and the one its own hosts file gives its addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--network-alias`: more names on one network, by network (Docker's
    /// network-scoped aliases; user-defined networks only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
    /// `--dns`, `--dns-search`, `--dns-option`.
    #[serde(default, skip_serializing_if = "DnsConfig::is_empty")]
    pub dns: DnsConfig,
}

/// A container's own resolver settings, Docker's `--dns*` flags: each list
/// given replaces the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// What identifies a CNI attachment to the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// `CNI_CONTAINERID`, whole.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the namespace.
    pub ifname: String,
    /// `CNI_NETNS`: path of the runtime's namespace.
    pub netns: String,
    /// `name` of the network configuration (GC is per configuration).
    pub network: String,
}

/// What identifies a Docker endpoint to Docker (libnetwork's ids).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub network_id: String,
    pub endpoint_id: String,
}

impl Container {
    pub fn endpoint(&self, network: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.network == network)
    }

    /// Its aliases on `network` (none when it has none there).
    pub fn aliases(&self, network: &str) -> &[String] {
        self.naming
            .aliases
            .get(network)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether the container's namespace is netctl's to make and delete:
    /// its own (bridge and none modes), unless a runtime (CNI, Docker) owns it.
    pub fn owns_netns(&self) -> bool {
        matches!(self.mode, NetworkMode::Bridge | NetworkMode::None)
            && self.cni.is_none()
            && self.docker.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_ip: Option<Ipv4Addr>, port: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            protocol,
            host_ip: host_ip.map(IpAddr::V4),
            host_port: port,
            container_ip: Ipv4Addr::new(172, 18, 0, 2),
            container_ip6: None,
            container_port: 80,
            container: "web".into(),
            network: "front".into(),
        }
    }

    #[test]
    fn port_conflicts_follow_address_overlap() {
        let any = mapping(None, 8080, Protocol::Tcp);
        let local = mapping(Some(Ipv4Addr::LOCALHOST), 8080, Protocol::Tcp);
        let other = mapping(Some(Ipv4Addr::new(198, 51, 100, 1)), 8080, Protocol::Tcp);
        assert!(any.conflicts_with(&local));
        assert!(local.conflicts_with(&any));
        assert!(!local.conflicts_with(&other));
        assert!(!any.conflicts_with(&mapping(None, 8080, Protocol::Udp)));
        assert!(!any.conflicts_with(&mapping(None, 8081, Protocol::Tcp)));
        // One IPv6 address: overlaps every address, not an IPv4 one.
        let v6 = PortMapping {
            host_ip: Some("2001:db8::1".parse().unwrap()),
            ..any.clone()
        };
        assert!(v6.conflicts_with(&any) && any.conflicts_with(&v6));
        assert!(!v6.conflicts_with(&local));
        assert_eq!(v6.describe(), "[2001:db8::1]:8080->80/tcp");
        assert!(!v6.is_ipv4() && v6.host_ip4().is_none());
        assert_eq!(local.host_ip4(), Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn mac_for_embeds_the_ip() {
        let mac = |ip: [u8; 4]| Mac::for_ip(Ipv4Addr::from(ip)).to_string();
        assert_eq!(mac([172, 18, 0, 2]), "02:42:ac:12:00:02");
        assert_eq!(mac([10, 255, 1, 254]), "02:42:0a:ff:01:fe");
    }

    #[test]
    fn macs_parse_and_reject() {
        let mac: Mac = "02:42:AC:12:00:02".parse().unwrap();
        assert_eq!(mac.octets(), [2, 0x42, 0xac, 0x12, 0, 2]);
        assert_eq!(mac.to_string(), "02:42:ac:12:00:02");
        assert_eq!("2:42:ac:12:0:2".parse::<Mac>().unwrap(), mac);
        for bad in [
            "02:42:ac:12:00",
            "02:42:ac:12:00:02:03",
            "zz:42:ac:12:00:02",
            "+2:42:ac:12:00:02",
            "002:42:ac:12:00:02",
            "",
        ] {
            let err = bad.parse::<Mac>().unwrap_err();
            assert_eq!(err.to_string(), format!("mac {bad}: not a MAC address"));
        }
    }

    #[test]
    fn macs_serialize_as_the_state_file_writes_them() {
        let mac = Mac::for_ip(Ipv4Addr::new(172, 18, 0, 2));
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, r#""02:42:ac:12:00:02""#);
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<Mac>(r#""not a mac""#).is_err());
    }

    #[test]
    fn modes_display_as_docker_names_them() {
        assert_eq!(NetworkMode::Bridge.to_string(), "bridge");
        assert_eq!(NetworkMode::Host.to_string(), "host");
        assert_eq!(NetworkMode::None.to_string(), "none");
        assert_eq!(
            NetworkMode::Container("web".into()).to_string(),
            "container:web"
        );
    }

    #[test]
    fn the_ipv6_side_is_optional_in_the_state() {
        let json = r#"{"network":"front","ifname":"eth0","host_veth":"ve1","ip":"172.18.0.2","mac":"02:42:ac:12:00:02"}"#;
        let ep: Endpoint = serde_json::from_str(json).unwrap();
        assert_eq!(ep.ip6, None);
        // Written back as it was: no key for what it does not have.
        assert_eq!(serde_json::to_string(&ep).unwrap(), json);
        let dual = Endpoint {
            ip6: Some("fd00:18::2".parse().unwrap()),
            ..ep
        };
        let text = serde_json::to_string(&dual).unwrap();
        assert!(text.contains(r#""ip6":"fd00:18::2""#), "{text}");
        assert_eq!(serde_json::from_str::<Endpoint>(&text).unwrap(), dual);
        let side: Ipv6Side =
            serde_json::from_str(r#"{"subnet":"fd00:18::/64","gateway":"fd00:18::1"}"#).unwrap();
        assert_eq!(side.gateway, "fd00:18::1".parse::<Ipv6Addr>().unwrap());
    }
}
