//! A delegated IPAM plugin (`"ipam": {"type": "host-local", ...}`), exec'd
//! from `CNI_PATH` exactly as a runtime execs a plugin: the same
//! environment with `CNI_COMMAND` set, the whole network configuration on
//! stdin, a result or an error object on stdout.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use super::result::{CniError, Code};

/// Finds an executable plugin in the `CNI_PATH` directories.
pub fn find(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!(
                    "ipam plugin {plugin}: not found in CNI_PATH ({})",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which attachment an IPAM call is about (GC passes ones other than the
/// current environment's).
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a str>,
}

/// Runs the plugin; returns its stdout as JSON (`Value::Null` if empty).
pub fn exec(
    plugin: &str,
    dirs: &[PathBuf],
    call: &Call<'_>,
    stdin: &[u8],
) -> Result<Value, CniError> {
    let binary = find(plugin, dirs)?;
    let object = format!("ipam plugin {plugin} {}", call.command);
    let mut cmd = Command::new(&binary);
    cmd.env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match call.netns {
        Some(netns) => cmd.env("CNI_NETNS", netns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::new(Code::Ipam, format!("{object}: {e}")))?;
    // A plugin that exits without reading stdin closes the pipe: not our error.
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::Ipam, format!("{object}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
    if !out.status.success() {
        let reason = parsed
            .as_ref()
            .map(|v| {
                format!(
                    "{} {}",
                    v["msg"].as_str().unwrap_or(""),
                    v["details"].as_str().unwrap_or("")
                )
                .trim()
                .to_owned()
            })
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
        return Err(CniError::new(
            Code::Ipam,
            format!("{object}: {reason} ({})", out.status),
        ));
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    parsed.ok_or_else(|| CniError::new(Code::Ipam, format!("{object}: stdout is not JSON")))
}

/// An address of an IPAM result with its subnet and gateway.
pub type Allocated<A, N> = (A, N, Option<A>);

/// The `ips` of an IPAM result (any version's format): address text and
/// gateway text.
fn entries(result: &Value) -> impl Iterator<Item = (&str, Option<&str>)> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["address"].as_str()?, e["gateway"].as_str())))
}

/// The first IPv4 address of an IPAM result with its subnet and gateway.
pub fn first_ipv4(result: &Value) -> Result<Allocated<Ipv4Addr, Ipv4Net>, CniError> {
    entries(result)
        .find_map(|(address, gateway)| {
            let net = address.parse::<Ipv4Net>().ok()?;
            Some((
                net.addr(),
                net.trunc(),
                gateway.and_then(|g| g.parse().ok()),
            ))
        })
        .ok_or_else(|| {
            CniError::new(
                Code::Ipam,
                format!("ipam result has no IPv4 address: {result}"),
            )
        })
}

/// The first IPv6 address of an IPAM result (a `host-local` with an IPv6
/// range), if any, with its subnet and gateway.
pub fn first_ipv6(result: &Value) -> Option<Allocated<Ipv6Addr, Ipv6Net>> {
    entries(result).find_map(|(address, gateway)| {
        let net = address.parse::<Ipv6Net>().ok()?;
        Some((
            net.addr(),
            net.trunc(),
            gateway.and_then(|g| g.parse().ok()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_of_both_formats() {
        let v04: Value = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.22.0.5/16","gateway":"10.22.0.1"}]}"#,
        )
        .unwrap();
        let (ip, net, gw) = first_ipv4(&v04).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 22, 0, 5));
        assert_eq!(net, "10.22.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(gw, Some(Ipv4Addr::new(10, 22, 0, 1)));
        let v6only: Value = serde_json::from_str(r#"{"ips":[{"address":"fd00::5/64"}]}"#).unwrap();
        assert!(first_ipv4(&v6only).is_err());
        assert_eq!(
            first_ipv6(&v6only),
            Some((
                "fd00::5".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
                None
            ))
        );
        assert_eq!(first_ipv6(&v04), None);
    }
}
