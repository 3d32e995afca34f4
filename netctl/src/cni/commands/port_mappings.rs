//! The runtime's `portMappings` capability as netctl port specs.

use std::net::IpAddr;

use super::super::{
    config::NetConf,
    result::{CniError, Code},
};
use crate::{
    model::{PortMapping, Protocol},
    ports::PortSpec,
};

/// The specs that apply on the network: those on one IPv6 host address
/// only on a dual-stack network (elsewhere they are left out, as before
/// IPv6: a dual-stack runtime sends a mapping once per family).
pub(super) fn for_family(specs: Vec<PortSpec>, dual_stack: bool) -> Vec<PortSpec> {
    specs
        .into_iter()
        .filter(|s| dual_stack || !matches!(s.host_ip, Some(IpAddr::V6(_))))
        .collect()
}

/// The `runtimeConfig.portMappings` as netctl port specs. An IPv6 host
/// address publishes on that address ([`for_family`] drops it on a network
/// without IPv6); `::`, like `0.0.0.0`, on every address, and a mapping
/// repeated that way (one per family) is taken once.
pub(super) fn port_specs(conf: &NetConf) -> Result<Vec<PortSpec>, CniError> {
    let invalid = |what: String| CniError::new(Code::InvalidConfig, what);
    let mut specs = Vec::new();
    for m in &conf.runtime_config.port_mappings {
        let object = format!("portMapping {}:{}", m.host_port, m.container_port);
        let host_ip = match m.host_ip.as_deref().unwrap_or("") {
            "" | "0.0.0.0" | "::" => None,
            text => match text.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    return Err(invalid(format!(
                        "{object}: hostIP {text:?} is not an address"
                    )))
                }
            },
        };
        let protocol = match m
            .protocol
            .as_deref()
            .unwrap_or("tcp")
            .to_ascii_lowercase()
            .as_str()
        {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(invalid(format!(
                    "{object}: protocol {other:?} (tcp or udp)"
                )))
            }
        };
        if m.host_port == 0 || m.container_port == 0 {
            return Err(invalid(format!("{object}: ports must be 1-65535")));
        }
        let spec = PortSpec {
            host_ip,
            host_ports: Some((m.host_port, m.host_port)),
            container_ports: (m.container_port, m.container_port),
            protocol,
        };
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// A published mapping in the form [`port_specs`] makes, to compare them.
pub(super) fn mapping_spec(m: &PortMapping) -> String {
    PortSpec {
        host_ip: m.host_ip,
        host_ports: Some((m.host_port, m.host_port)),
        container_ports: (m.container_port, m.container_port),
        protocol: m.protocol,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::config::Command;

    #[test]
    fn port_mappings_become_specs() {
        let conf = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"portMappings":[
              {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
              {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
              {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::"},
              {"hostPort":8443,"containerPort":443,"protocol":"tcp","hostIP":"2001:db8::1"}]}}"#,
            Command::Add,
        )
        .unwrap();
        let texts = |specs: Vec<PortSpec>| -> Vec<String> {
            specs.iter().map(ToString::to_string).collect()
        };
        let specs = port_specs(&conf).unwrap();
        assert_eq!(
            texts(specs.clone()),
            [
                "8080:80/tcp",
                "127.0.0.1:5353:53/udp",
                "[2001:db8::1]:8443:443/tcp"
            ]
        );
        // Without IPv6 on the network, the IPv6 host address is left out.
        assert_eq!(
            texts(for_family(specs.clone(), false)),
            ["8080:80/tcp", "127.0.0.1:5353:53/udp"]
        );
        assert_eq!(for_family(specs.clone(), true), specs);
        let sctp = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"portMappings":[
              {"hostPort":1,"containerPort":2,"protocol":"sctp"}]}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(port_specs(&sctp).unwrap_err().code, Code::InvalidConfig);
    }
}
