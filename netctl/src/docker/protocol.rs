//! Docker's remote network driver protocol (libnetwork's plugin API) as
//! data: the requests netctl reads, and the pure translations between
//! Docker's words and netctl's (names, the network's pool, the port map).
//! Everything here is checked by unit tests; `mod.rs` does the I/O.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    model::{DatapathKind, Mac, PortMapping, Protocol},
    ops::NetworkCreate,
    ports::PortSpec,
};

/// What the driver implements (the answer to `Plugin.Activate`).
pub const IMPLEMENTS: &str = "NetworkDriver";
/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// Docker's generic options: the `-o KEY=VALUE` of `docker network create`.
const GENERIC: &str = "com.docker.network.generic";
/// `-o netctl.datapath=ebpf|iptables`: the host's datapath, when this is
/// its first network.
pub const DATAPATH_OPTION: &str = "netctl.datapath";
/// `-o com.docker.network.driver.mtu=N`, as for Docker's bridge driver.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// `docker network create --internal`.
const INTERNAL: &str = "com.docker.network.internal";
/// The port map of `docker run -p`, in CreateEndpoint and
/// ProgramExternalConnectivity.
pub const PORTMAP: &str = "com.docker.network.portmap";
/// How many characters of Docker's ids name netctl's objects (as `docker
/// ps` shortens them); the bridge name `nc-` + 12 fills IFNAMSIZ.
const SHORT_ID: usize = 12;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
}

/// Every request that names a network and maybe an endpoint.
#[derive(Debug, Deserialize)]
pub struct Ids {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub sandbox_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProgramExternal {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub options: Map<String, Value>,
}

/// One entry of Docker's port map (libnetwork's `types.PortBinding`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    /// IANA number: 6 TCP, 17 UDP (132 SCTP, refused).
    proto: u8,
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

/// Docker's id shortened; refused unless it is hex and long enough, so
/// that it cannot make a name of something else.
fn short_id(what: &str, id: &str) -> Result<String> {
    if id.len() < SHORT_ID || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            format!("{what} {id:?}"),
            "not a Docker id (hex, at least 12 characters)",
        ));
    }
    Ok(id[..SHORT_ID].to_ascii_lowercase())
}

/// The netctl network of a Docker network.
pub fn network_name(network_id: &str) -> Result<String> {
    Ok(format!("docker-{}", short_id("network", network_id)?))
}

/// The netctl container of a Docker endpoint.
pub fn container_name(endpoint_id: &str) -> Result<String> {
    Ok(format!("docker-{}", short_id("endpoint", endpoint_id)?))
}

/// An address with its prefix (`172.30.0.1/16`) or without.
fn address(what: &str, text: &str) -> Result<Ipv4Addr> {
    let bare = text.split('/').next().unwrap_or_default();
    bare.parse().map_err(|_| {
        Error::invalid(
            format!("{what} {text:?}"),
            "not an IPv4 address (netctl networks are IPv4 only)",
        )
    })
}

/// The network `docker network create` asks for: Docker's pool and
/// gateway (its IPAM chose them), the bridge named after Docker's id.
pub fn network_request(req: &CreateNetwork) -> Result<NetworkCreate> {
    let name = network_name(&req.network_id)?;
    let object = || format!("network {name}");
    if req.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(Error::invalid(object(), "IPv6 is not supported"));
    }
    let [data] = req.ipv4_data.as_slice() else {
        return Err(Error::invalid(
            object(),
            format!(
                "one IPv4 pool expected, Docker gave {}",
                req.ipv4_data.len()
            ),
        ));
    };
    let subnet: Ipv4Net = data
        .pool
        .parse()
        .map_err(|_| Error::invalid(object(), format!("pool {:?} is not a subnet", data.pool)))?;
    let gateway = match data.gateway.as_str() {
        "" => None,
        text => Some(address("gateway", text)?),
    };
    let generic = req.options.get(GENERIC).and_then(Value::as_object);
    let option = |key: &str| generic.and_then(|g| g.get(key)).and_then(Value::as_str);
    let datapath = match option(DATAPATH_OPTION) {
        None => None,
        Some("ebpf") => Some(DatapathKind::Ebpf),
        Some("iptables") => Some(DatapathKind::Iptables),
        Some(other) => {
            return Err(Error::invalid(
                object(),
                format!("{DATAPATH_OPTION} {other:?}: ebpf or iptables"),
            ))
        }
    };
    let mtu = match option(MTU_OPTION) {
        None => None,
        Some(text) => Some(text.parse::<u32>().map_err(|_| {
            Error::invalid(object(), format!("{MTU_OPTION} {text:?} is not a number"))
        })?),
    };
    let internal = req.options.get(INTERNAL).and_then(Value::as_bool) == Some(true);
    Ok(NetworkCreate {
        bridge: Some(format!("nc-{}", short_id("network", &req.network_id)?)),
        name,
        subnet: Some(subnet),
        gateway,
        datapath,
        internal,
        mtu,
        // Docker's IPv6 (`--ipv6`) is refused above.
        ..NetworkCreate::default()
    })
}

/// The address and MAC Docker gives an endpoint (its IPAM chose the
/// address; the MAC is `--mac-address`, or none).
pub fn endpoint_address(req: &CreateEndpoint) -> Result<(Ipv4Addr, Option<Mac>)> {
    let object = || format!("endpoint {}", req.endpoint_id);
    let Some(iface) = &req.interface else {
        return Err(Error::invalid(object(), "Docker gave no interface"));
    };
    if !iface.address_ipv6.is_empty() {
        return Err(Error::invalid(object(), "IPv6 is not supported"));
    }
    if iface.address.is_empty() {
        return Err(Error::invalid(object(), "Docker gave no IPv4 address"));
    }
    let ip = address("address", &iface.address)?;
    let mac = match iface.mac_address.as_str() {
        "" => None,
        text => Some(text.parse::<Mac>()?),
    };
    Ok((ip, mac))
}

/// `docker run -p`'s port map as netctl's port specs. Entries on an IPv6
/// host address are left out: the networks have no IPv6.
pub fn port_specs(options: &Map<String, Value>) -> Result<Vec<PortSpec>> {
    let Some(map) = options.get(PORTMAP).filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> = serde_json::from_value(map.clone())
        .map_err(|e| Error::invalid(PORTMAP, format!("unreadable: {e}")))?;
    let mut specs = Vec::new();
    for b in bindings {
        let protocol = match b.proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            other => {
                return Err(Error::invalid(
                    format!("port {}", b.port),
                    format!("protocol {other} is not supported (tcp and udp are)"),
                ))
            }
        };
        let host_ip = match b.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            text if text.contains(':') => continue,
            text => Some(address("host address", text)?.into()),
        };
        let host_ports = match (b.host_port, b.host_port_end) {
            (0, _) => None,
            (first, last) => Some((first, last.max(first))),
        };
        specs.push(PortSpec {
            host_ip,
            host_ports,
            container_ports: (b.port, b.port),
            protocol,
        });
    }
    Ok(specs)
}

/// The port map as Docker reads it back (EndpointOperInfo), with the
/// host ports netctl chose.
pub fn port_map(ports: &[PortMapping]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| {
                json!({
                    "Proto": p.protocol.number(),
                    "IP": p.container_ip.to_string(),
                    "Port": p.container_port,
                    "HostIP": p.host_ip.map_or_else(|| Ipv4Addr::UNSPECIFIED.to_string(), |ip| ip.to_string()),
                    "HostPort": p.host_port,
                    "HostPortEnd": p.host_port,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0d1e4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f";

    #[test]
    fn names_come_from_the_short_id_and_fit_interface_names() {
        assert_eq!(network_name(ID).unwrap(), "docker-3f2a9c0d1e4b");
        assert_eq!(container_name(ID).unwrap(), "docker-3f2a9c0d1e4b");
        assert!(network_name("../../etc").is_err());
        assert!(container_name("abc").is_err());
    }

    #[test]
    fn a_network_takes_dockers_pool_gateway_and_options() {
        let req: CreateNetwork = serde_json::from_value(json!({
            "NetworkID": ID,
            "Options": {
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {
                    "netctl.datapath": "iptables",
                    "com.docker.network.driver.mtu": "1400"
                }
            },
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.30.0.0/16",
                          "Gateway": "172.30.0.1/16", "AuxAddresses": null}],
            "IPv6Data": []
        }))
        .unwrap();
        let create = network_request(&req).unwrap();
        assert_eq!(create.name, "docker-3f2a9c0d1e4b");
        assert_eq!(create.bridge.as_deref(), Some("nc-3f2a9c0d1e4b"));
        assert_eq!(create.subnet, Some("172.30.0.0/16".parse().unwrap()));
        assert_eq!(create.gateway, Some(Ipv4Addr::new(172, 30, 0, 1)));
        assert_eq!(create.datapath, Some(DatapathKind::Iptables));
        assert_eq!(create.mtu, Some(1400));
        assert!(!create.internal);
    }

    #[test]
    fn a_network_with_ipv6_or_a_bad_option_is_refused() {
        let mut req: CreateNetwork = serde_json::from_value(json!({
            "NetworkID": ID,
            "IPv4Data": [{"Pool": "172.30.0.0/16", "Gateway": "172.30.0.1/16"}],
            "IPv6Data": [{"Pool": "fd00::/64"}]
        }))
        .unwrap();
        let err = network_request(&req).unwrap_err().to_string();
        assert!(err.contains("IPv6"), "{err}");
        req.ipv6_data = None;
        req.options
            .insert(GENERIC.into(), json!({"netctl.datapath": "xdp"}));
        let err = network_request(&req).unwrap_err().to_string();
        assert!(err.contains("netctl.datapath \"xdp\""), "{err}");
    }

    #[test]
    fn an_endpoint_takes_dockers_address_and_mac() {
        let mut req: CreateEndpoint = serde_json::from_value(json!({
            "NetworkID": ID, "EndpointID": ID,
            "Interface": {"Address": "172.30.0.2/16", "AddressIPv6": "", "MacAddress": ""},
            "Options": {}
        }))
        .unwrap();
        assert_eq!(
            endpoint_address(&req).unwrap(),
            (Ipv4Addr::new(172, 30, 0, 2), None)
        );
        req.interface.as_mut().unwrap().mac_address = "02:42:ac:1e:00:09".into();
        let (_, mac) = endpoint_address(&req).unwrap();
        assert_eq!(mac.unwrap().to_string(), "02:42:ac:1e:00:09");
        req.interface = None;
        assert!(endpoint_address(&req).is_err());
    }

    #[test]
    fn the_port_map_becomes_port_specs() {
        let options: Map<String, Value> = serde_json::from_value(json!({
            "com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                {"Proto": 17, "IP": "", "Port": 53, "HostIP": "198.51.100.1", "HostPort": 0, "HostPortEnd": 0},
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8080, "HostPortEnd": 8080}
            ]
        }))
        .unwrap();
        let specs = port_specs(&options).unwrap();
        assert_eq!(
            specs,
            vec![
                PortSpec {
                    host_ip: None,
                    host_ports: Some((8080, 8080)),
                    container_ports: (80, 80),
                    protocol: Protocol::Tcp,
                },
                PortSpec {
                    host_ip: Some(Ipv4Addr::new(198, 51, 100, 1).into()),
                    host_ports: None,
                    container_ports: (53, 53),
                    protocol: Protocol::Udp,
                },
            ]
        );
        assert!(port_specs(&Map::new()).unwrap().is_empty());
        let sctp: Map<String, Value> = serde_json::from_value(json!({
            "com.docker.network.portmap": [{"Proto": 132, "Port": 9}]
        }))
        .unwrap();
        assert!(port_specs(&sctp).is_err());
    }
}
