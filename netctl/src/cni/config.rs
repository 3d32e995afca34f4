//! What a runtime hands the plugin: the `CNI_*` environment and the network
//! configuration on stdin (one plugin object of a conflist, with `name`,
//! `cniVersion`, `runtimeConfig` and, when chained or checking, `prevResult`).

use std::{
    ffi::OsString,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::Deserialize;
use serde_json::Value;

use super::result::{CniError, Code};
use crate::{ipam, ipam6, model::DatapathKind};

/// Versions of the spec this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: the answer to a VERSION without input.
pub const LATEST_VERSION: &str = "1.1.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The first spec version that has the command.
    pub fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The `CNI_*` variables, checked for the command at hand.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_PATH`: where delegated plugins (an `ipam` type) are looked up.
    pub path: Vec<PathBuf>,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, in order.
    pub args: Vec<(String, String)>,
}

fn var(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v: OsString| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

fn invalid_env(name: &str, reason: &str) -> CniError {
    CniError::new(Code::InvalidEnv, format!("{name}: {reason}"))
}

impl Env {
    /// Reads the environment. Which variables are required depends on the
    /// command (spec, "Parameters"): ADD and CHECK need all of them, DEL
    /// needs the container id and ifname, the others none.
    pub fn from_process() -> Result<Self, CniError> {
        let text = var("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND", "not set"))?;
        let command = Command::parse(&text)
            .ok_or_else(|| invalid_env("CNI_COMMAND", &format!("unknown command {text:?}")))?;
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        let netns = var("CNI_NETNS");
        if per_attachment {
            check_container_id(&container_id)?;
            ipam::check_ifname("CNI_IFNAME", &ifname)
                .map_err(|e| CniError::new(Code::InvalidEnv, e.to_string()))?;
        }
        if matches!(command, Command::Add | Command::Check) {
            match &netns {
                None => return Err(invalid_env("CNI_NETNS", "not set")),
                Some(path) if !path.starts_with('/') => {
                    return Err(invalid_env("CNI_NETNS", "must be an absolute path"))
                }
                Some(_) => {}
            }
        }
        let path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            path,
            args: parse_args(&var("CNI_ARGS").unwrap_or_default()),
        })
    }

    /// The value of one `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `CNI_ARGS` `IP`: the addresses asked (comma-separated), the way
    /// podman 4.3 passes `--ip` and host-local reads it.
    pub fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        first_ipv4("CNI_ARGS IP", self.requested_texts())
    }

    /// The IPv6 address of `CNI_ARGS` `IP` (podman's `--ip6`).
    pub fn requested_ip6(&self) -> Result<Option<Ipv6Addr>, CniError> {
        first_ipv6("CNI_ARGS IP", self.requested_texts())
    }

    fn requested_texts(&self) -> impl Iterator<Item = &str> {
        self.arg("IP")
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
    }

    /// The container's name as podman gives it: `K8S_POD_NAME` without
    /// `K8S_POD_NAMESPACE` (podman sets only the first, for the `dnsname`
    /// plugin; Kubernetes runtimes set both, and pod names repeat across
    /// namespaces, so theirs are not names on the network).
    pub fn podman_name(&self) -> Option<&str> {
        match self.arg("K8S_POD_NAMESPACE") {
            Some(_) => None,
            None => self.arg("K8S_POD_NAME").filter(|n| !n.is_empty()),
        }
    }
}

/// The first address of a list of addresses (each with or without a
/// prefix length) that `family` takes; code 7 for one that is not an
/// address. Every text is checked up to the one taken.
fn first_of<'t, A>(
    what: &str,
    texts: impl IntoIterator<Item = &'t str>,
    family: impl Fn(std::net::IpAddr) -> Option<A>,
) -> Result<Option<A>, CniError> {
    for text in texts {
        let addr = text.trim().split('/').next().unwrap_or_default();
        let ip = addr.parse::<std::net::IpAddr>().map_err(|_| {
            CniError::new(
                Code::InvalidConfig,
                format!("{what}: {text:?} is not an address"),
            )
        })?;
        if let Some(ip) = family(ip) {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// The first IPv4 address of a list of addresses (see [`first_of`]).
fn first_ipv4<'t>(
    what: &str,
    texts: impl IntoIterator<Item = &'t str>,
) -> Result<Option<Ipv4Addr>, CniError> {
    first_of(what, texts, |ip| match ip {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    })
}

/// The first IPv6 address of a list of addresses (see [`first_of`]).
fn first_ipv6<'t>(
    what: &str,
    texts: impl IntoIterator<Item = &'t str>,
) -> Result<Option<Ipv6Addr>, CniError> {
    first_of(what, texts, |ip| match ip {
        std::net::IpAddr::V6(ip) => Some(ip),
        std::net::IpAddr::V4(_) => None,
    })
}

/// `CNI_ARGS` as pairs; an item without `=` is skipped (the spec leaves
/// the format to the runtime, libcni writes `K=V;K=V`).
fn parse_args(text: &str) -> Vec<(String, String)> {
    text.split(';')
        .filter_map(|item| item.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The spec's rule for container ids: Docker's name shape, any length.
fn check_container_id(id: &str) -> Result<(), CniError> {
    if ipam::has_name_shape(id) {
        Ok(())
    } else {
        Err(invalid_env(
            "CNI_CONTAINERID",
            &format!("{id:?} is not a container id ({}*)", ipam::NAME_PATTERN),
        ))
    }
}

/// The network configuration. Unknown keys are ignored, as the spec asks
/// (`capabilities`, `args` and keys of other plugins).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    /// The netctl network that CNI-made containers join.
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Bridge interface [default: `nc-NAME`].
    #[serde(default)]
    pub bridge: Option<String>,
    /// Subnet of the network (netctl's IPAM) [default: the first free pool,
    /// or the subnet of a delegated IPAM's first address].
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Dual stack (netctl's IPAM; the CLI's `--ipv6`): without `subnet6`,
    /// a unique-local /64. Implied by `subnet6`, and by a delegated IPAM
    /// that answers an IPv6 address.
    #[serde(default)]
    pub ipv6: bool,
    /// The IPv6 subnet of a dual-stack network (netctl's IPAM).
    #[serde(default)]
    pub subnet6: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    #[serde(default)]
    pub datapath: Option<DatapathKind>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Absent or `{"type": "netctl"}`: netctl allocates; another type is
    /// exec'd from `CNI_PATH` as a runtime would.
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// Returned as the result's `dns` unchanged.
    #[serde(default)]
    pub dns: Option<Value>,
    // The CLI's global options, to point the plugin at a sandbox.
    #[serde(default)]
    pub host_netns: Option<String>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub uplink: Option<String>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments that must stay.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub plugin_type: Option<String>,
}

/// The capabilities netctl declares: `portMappings`, `ips`, `mac`, `dns`,
/// `aliases`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMappingConf>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// The runtime's resolver settings for the container (the `dns`
    /// capability): its servers are what the network's resolver forwards
    /// to, its search domains and options go into the result's `dns`.
    #[serde(default)]
    pub dns: Option<RuntimeDns>,
    /// More names per network (podman's `--network-alias`, and the
    /// container's short id): the attachment's names on the network of
    /// the same name.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

/// `runtimeConfig.dns`, as podman and containerd pass it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeDns {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMappingConf {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Decodes stdin (code 6 when it is not the expected JSON), then checks
    /// the version (code 1) and the values (code 7).
    pub fn decode(stdin: &[u8], command: Command) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodeFailed,
                format!("network configuration on stdin: {e}"),
            )
        })?;
        check_version(&conf.cni_version, command)?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> Result<(), CniError> {
        let invalid = |e: crate::error::Error| CniError::new(Code::InvalidConfig, e.to_string());
        ipam::check_name("network", &self.name).map_err(invalid)?;
        if let Some(subnet) = &self.subnet {
            ipam::parse_subnet(subnet).map_err(invalid)?;
        }
        if let Some(gateway) = &self.gateway {
            ipam::parse_ip("gateway", gateway).map_err(invalid)?;
        }
        if let Some(subnet) = &self.subnet6 {
            ipam6::parse_subnet(subnet).map_err(invalid)?;
        }
        if let Some(gateway) = &self.gateway6 {
            parse_ip6("gateway6", gateway)?;
        }
        if let Some(bridge) = &self.bridge {
            ipam::check_bridge_name(&self.name, bridge).map_err(invalid)?;
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("network {}: mtu {mtu} out of range 68-65535", self.name),
                ));
            }
        }
        if let Some(kind) = self.delegated_ipam() {
            if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("ipam type {kind:?}: not a plugin name"),
                ));
            }
        }
        if self.internal && !self.runtime_config.port_mappings.is_empty() {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("network {}: internal, no published ports", self.name),
            ));
        }
        if let Some(name) = &self.host_netns {
            if name.contains('/') || !crate::netns::exists(name) {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("hostNetns {name}: no such namespace under /run/netns"),
                ));
            }
        }
        Ok(())
    }

    /// The delegated IPAM plugin, if the config names one.
    pub fn delegated_ipam(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .and_then(|i| i.plugin_type.as_deref())
            .filter(|t| *t != "netctl")
    }

    /// The address asked through the `ips` capability (first IPv4 one).
    pub fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        first_ipv4(
            "runtimeConfig.ips",
            self.runtime_config.ips.iter().map(String::as_str),
        )
    }

    /// The IPv6 address asked through the `ips` capability (first one).
    pub fn requested_ip6(&self) -> Result<Option<Ipv6Addr>, CniError> {
        first_ipv6(
            "runtimeConfig.ips",
            self.runtime_config.ips.iter().map(String::as_str),
        )
    }

    /// The configuration's IPv6 side: `(subnet6, gateway6)` when it asks
    /// for dual stack (`ipv6`, or a `subnet6`), checked by `validate`.
    pub fn ipv6_side(&self) -> Option<(Option<ipnet::Ipv6Net>, Option<Ipv6Addr>)> {
        let subnet = self
            .subnet6
            .as_deref()
            .and_then(|s| ipam6::parse_subnet(s).ok());
        let gateway = self.gateway6.as_deref().and_then(|g| g.parse().ok());
        (self.ipv6 || subnet.is_some() || gateway.is_some()).then_some((subnet, gateway))
    }
}

/// An IPv6 address of the configuration; code 7 when it is not one.
fn parse_ip6(what: &str, text: &str) -> Result<Ipv6Addr, CniError> {
    text.parse().map_err(|_| {
        CniError::new(
            Code::InvalidConfig,
            format!("{what} {text:?}: not an IPv6 address"),
        )
    })
}

/// Code 1 for a version this plugin does not speak, or one older than the
/// command.
pub fn check_version(version: &str, command: Command) -> Result<(), CniError> {
    let Some(position) = SUPPORTED_VERSIONS.iter().position(|v| *v == version) else {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    };
    let since = SUPPORTED_VERSIONS
        .iter()
        .position(|v| *v == command.since())
        .unwrap_or(0);
    if position < since {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "{command:?} needs cniVersion {} or later, the config has {version}",
                command.since()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_commands() {
        assert!(check_version("1.0.0", Command::Add).is_ok());
        assert!(check_version("0.3.1", Command::Check).is_err());
        assert!(check_version("1.0.0", Command::Gc).is_err());
        assert!(check_version("1.1.0", Command::Status).is_ok());
        let err = check_version("2.0.0", Command::Add).unwrap_err();
        assert_eq!(err.code, Code::IncompatibleVersion);
    }

    #[test]
    fn cni_args_and_the_podman_name() {
        let env = |args: &str| Env {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            path: Vec::new(),
            args: parse_args(args),
        };
        let podman = env("IgnoreUnknown=1;K8S_POD_NAME=web");
        assert_eq!(podman.arg("IgnoreUnknown"), Some("1"));
        assert_eq!(podman.podman_name(), Some("web"));
        let podman_ip =
            env("IgnoreUnknown=1;K8S_POD_NAME=a;MAC=02:00:00:00:00:50;IP=fd00::5,10.9.0.5");
        assert_eq!(
            podman_ip.requested_ip().unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 5))
        );
        assert_eq!(
            podman_ip.requested_ip6().unwrap(),
            Some("fd00::5".parse().unwrap())
        );
        assert_eq!(podman_ip.arg("MAC"), Some("02:00:00:00:00:50"));
        assert_eq!(
            env("IP=nonsense").requested_ip().unwrap_err().code,
            Code::InvalidConfig
        );
        let kubernetes = env("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;junk");
        assert_eq!(kubernetes.podman_name(), None);
        assert_eq!(env("").podman_name(), None);
    }

    #[test]
    fn config_decodes_and_rejects() {
        let ok = br#"{"cniVersion":"1.0.0","name":"net1","type":"netctl","subnet":"10.9.0.0/24",
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
            "ips":["fd00::2/64","10.9.0.7/24"]}}"#;
        let conf = NetConf::decode(ok, Command::Add).unwrap();
        assert_eq!(conf.runtime_config.port_mappings[0].host_port, 8080);
        assert_eq!(
            conf.requested_ip().unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 7))
        );
        assert_eq!(
            conf.requested_ip6().unwrap(),
            Some("fd00::2".parse().unwrap())
        );
        assert_eq!(conf.ipv6_side(), None);
        let dual = br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","subnet6":"fd00:9::/64"}"#;
        assert_eq!(
            NetConf::decode(dual, Command::Add).unwrap().ipv6_side(),
            Some((Some("fd00:9::/64".parse().unwrap()), None))
        );
        let ula = br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","ipv6":true}"#;
        assert_eq!(
            NetConf::decode(ula, Command::Add).unwrap().ipv6_side(),
            Some((None, None))
        );
        for bad in [
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","subnet6":"10.0.0.0/24"}"#
                .as_slice(),
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","gateway6":"10.0.0.1"}"#,
        ] {
            assert_eq!(
                NetConf::decode(bad, Command::Add).unwrap_err().code,
                Code::InvalidConfig
            );
        }
        let err = NetConf::decode(b"{not json", Command::Add).unwrap_err();
        assert_eq!(err.code, Code::DecodeFailed);
        let bad_subnet =
            br#"{"cniVersion":"1.0.0","name":"net1","type":"netctl","subnet":"10.9.0.0/33"}"#;
        assert_eq!(
            NetConf::decode(bad_subnet, Command::Add).unwrap_err().code,
            Code::InvalidConfig
        );
        let bad_ipam =
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","ipam":{"type":"../x"}}"#;
        assert_eq!(
            NetConf::decode(bad_ipam, Command::Add).unwrap_err().code,
            Code::InvalidConfig
        );
    }
}
