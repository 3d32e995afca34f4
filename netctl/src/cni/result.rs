//! What the plugin prints: a result in the format of the requested
//! `cniVersion`, or the spec's error object.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};

/// The spec's error codes, and netctl's own from 100 on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    InvalidEnv,
    DecodeFailed,
    InvalidConfig,
    TryAgainLater,
    /// STATUS: the plugin cannot take ADDs now.
    NotAvailable,
    /// netctl refused the request: it conflicts with what exists (a host
    /// port or an address already taken, an attachment added twice).
    Refused,
    /// A system call, netlink request or the datapath failed.
    System,
    /// The delegated IPAM plugin failed or answered nonsense.
    Ipam,
    /// CHECK found the attachment differs from what was added.
    CheckFailed,
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::InvalidEnv => 4,
            Code::DecodeFailed => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::Refused => 100,
            Code::System => 101,
            Code::Ipam => 102,
            Code::CheckFailed => 103,
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Code::IncompatibleVersion => "incompatible CNI version",
            Code::InvalidEnv => "invalid environment variables",
            Code::DecodeFailed => "failed to decode content",
            Code::InvalidConfig => "invalid network config",
            Code::TryAgainLater => "try again later",
            Code::NotAvailable => "plugin not available",
            Code::Refused => "request refused",
            Code::System => "system error",
            Code::Ipam => "IPAM plugin failed",
            Code::CheckFailed => "attachment check failed",
        }
    }
}

/// A failed command, as the spec's error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
        }
    }

    /// `{"cniVersion", "code", "msg", "details"}`: `msg` is the short
    /// meaning of the code, `details` names the object and the reason.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code.number(),
            "msg": self.code.summary(),
            "details": self.msg,
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code.number())
    }
}

/// Errors of the netctl library: refusals and missing objects are the
/// request's fault, the rest the system's.
impl From<crate::error::Error> for CniError {
    fn from(err: crate::error::Error) -> Self {
        use crate::error::Error;
        let code = match &err {
            Error::Invalid { .. } | Error::NotFound { .. } => Code::Refused,
            Error::System { .. } => Code::System,
            Error::Many(errors) if errors.iter().all(|e| !matches!(e, Error::System { .. })) => {
                Code::Refused
            }
            Error::Many(_) => Code::System,
        };
        CniError::new(code, err.to_string())
    }
}

pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The namespace path, for interfaces inside the container.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

/// The result of an ADD, independent of the version it is printed in.
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    /// Address with its prefix length (of either family), gateway, index
    /// into `interfaces`.
    pub ips: Vec<(IpNet, Option<IpAddr>, usize)>,
    /// Destination and gateway.
    pub routes: Vec<(IpNet, IpAddr)>,
    pub dns: Value,
}

impl AddResult {
    /// The result in the format of `version`: 0.3.x and 0.4.0 tag each
    /// address with its family, `"version": "4"` or `"6"`, 1.0.0 dropped
    /// that field, 1.1.0 added the interfaces' `mtu`.
    pub fn render(&self, version: &str) -> Value {
        let pre_1_0 = version.starts_with("0.");
        let with_mtu = version == "1.1.0";
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name, "mac": i.mac});
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                if let (true, Some(mtu)) = (with_mtu, i.mtu) {
                    v["mtu"] = json!(mtu);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|(address, gateway, interface)| {
                let mut v = json!({
                    "address": address.to_string(),
                    "interface": interface,
                });
                if let Some(gateway) = gateway {
                    v["gateway"] = json!(gateway.to_string());
                }
                if pre_1_0 {
                    let family = match address {
                        IpNet::V4(_) => "4",
                        IpNet::V6(_) => "6",
                    };
                    v["version"] = json!(family);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(dst, gw)| json!({"dst": dst.to_string(), "gw": gw.to_string()}))
            .collect();
        json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:42:0a:00:00:02".into(),
                sandbox: Some("/run/netns/x".into()),
                mtu: Some(1400),
            }],
            ips: vec![
                (
                    "10.0.0.2/24".parse().unwrap(),
                    Some(Ipv4Addr::new(10, 0, 0, 1).into()),
                    0,
                ),
                (
                    "fd00::2/64".parse().unwrap(),
                    Some("fd00::1".parse().unwrap()),
                    0,
                ),
            ],
            routes: vec![
                (
                    "0.0.0.0/0".parse().unwrap(),
                    Ipv4Addr::new(10, 0, 0, 1).into(),
                ),
                ("::/0".parse().unwrap(), "fd00::1".parse().unwrap()),
            ],
            dns: json!({}),
        }
    }

    #[test]
    fn results_follow_the_version() {
        let old = sample().render("0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["ips"][1]["address"], "fd00::2/64");
        assert_eq!(old["ips"][1]["gateway"], "fd00::1");
        assert_eq!(sample().render("0.3.1")["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = sample().render("1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(v1["interfaces"][0]["sandbox"], "/run/netns/x");
        let v11 = sample().render("1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v11["routes"][1]["dst"], "::/0");
        assert_eq!(v1["ips"][1]["gateway"], "fd00::1");
        assert!(v1["ips"][1].get("version").is_none());
    }

    #[test]
    fn errors_carry_code_and_details() {
        let err = CniError::new(Code::InvalidConfig, "network x: bad subnet");
        let v = err.to_json("1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["details"], "network x: bad subnet");
        let lib = crate::error::Error::invalid("port 8080/tcp", "already published");
        assert_eq!(CniError::from(lib).code, Code::Refused);
    }
}
