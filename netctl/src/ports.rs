//! Published ports: Docker's `-p` specs, parsed, then expanded into the
//! concrete [`PortMapping`]s the datapath installs.
//!
//! The forms are Docker's: `[IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTO]`,
//! an IPv6 `IP` in brackets (`[2001:db8::1]:8080:80`).
//! Parsing only checks the text; expanding picks host ports against what is
//! already published, so that a conflict is refused before anything changes.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use crate::{
    error::{Error, Result},
    ipam::shown,
    model::{host_ip_text, PortMapping, Protocol},
};

/// Where a spec without host ports publishes: the lowest free port of this
/// window that is outside the kernel's ephemeral range (the host's
/// `net.ipv4.ip_local_port_range`, [`HostPorts::kernel_ephemeral`]), so
/// that a host socket's ephemeral source port is never a published port
/// (whose answers would be taken for connections to the container). With
/// Linux's default range (32768–60999) that is 20000–32767. The window
/// starts above the ports services commonly listen on. The eBPF datapath's
/// SNAT ports (1024–65535 less the kernel's range) include it: SNAT never
/// allocates a published port, and a port published while a flow holds it
/// diverts only that flow's one tuple (docs/architecture.md).
pub const EPHEMERAL_WINDOW: RangeInclusive<u16> = 20000..=60999;

/// Linux's default `ip_local_port_range`.
pub const LINUX_EPHEMERAL_PORTS: RangeInclusive<u16> = 32768..=60999;

/// What `-p` is checked against on the host: read by the caller (the
/// expansion itself stays pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPorts {
    /// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
    pub kernel_ephemeral: RangeInclusive<u16>,
    /// The host's addresses of both families, on every interface; a
    /// spec's host address must be one of them or an IPv4 loopback address.
    pub addresses: BTreeSet<IpAddr>,
}

impl Default for HostPorts {
    fn default() -> Self {
        HostPorts {
            kernel_ephemeral: LINUX_EPHEMERAL_PORTS,
            addresses: BTreeSet::new(),
        }
    }
}

impl HostPorts {
    /// Parses `ip_local_port_range` as /proc prints it: `32768\t60999`.
    pub fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
        let mut bounds = text.split_whitespace().map(str::parse::<u16>);
        match (bounds.next(), bounds.next(), bounds.next()) {
            (Some(Ok(first)), Some(Ok(last)), None) if first <= last => Some(first..=last),
            _ => None,
        }
    }

    /// Whether a spec may publish on `ip`: an address of the host, or IPv4
    /// loopback (127.0.0.0/8, which the host answers on whatever `lo` holds).
    fn owns(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.is_loopback()) || self.addresses.contains(&ip)
    }
}

/// One `-p` spec, parsed but not yet bound to host ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None` publishes on every address of the host (also for `0.0.0.0`);
    /// an IPv6 address needs a dual-stack network.
    pub host_ip: Option<IpAddr>,
    /// Inclusive range; `None` asks for ephemeral host ports.
    pub host_ports: Option<(u16, u16)>,
    /// Inclusive range.
    pub container_ports: (u16, u16),
    pub protocol: Protocol,
}

/// `8080` or `8080-8090`.
fn range_text((first, last): (u16, u16)) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// The canonical form of the spec, the one `parse` reads back:
/// `127.0.0.1:8080-8090:80-90/udp`.
impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_ports) {
            (Some(ip), Some(host)) => write!(f, "{}:{}:", host_ip_text(ip), range_text(host))?,
            (Some(ip), None) => write!(f, "{}::", host_ip_text(ip))?,
            (None, Some(host)) => write!(f, "{}:", range_text(host))?,
            (None, None) => {}
        }
        write!(f, "{}/{}", range_text(self.container_ports), self.protocol)
    }
}

/// Parses a `-p` spec. Every error names the spec as the user typed it.
pub fn parse(spec: &str) -> Result<PortSpec> {
    parse_parts(spec).map_err(|reason| Error::invalid(format!("port spec {}", shown(spec)), reason))
}

/// The parser proper; its errors are reasons, the caller adds the object.
fn parse_parts(spec: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = split_protocol(spec)?;
    // Like Docker, split from the right: the container ports are last, the
    // host ports before them, and whatever remains (colons and all) is the IP.
    let mut parts = ports.rsplitn(3, ':');
    let container_text = parts.next().unwrap_or_default();
    let host_text = parts.next().unwrap_or_default();
    let ip_text = parts.next().unwrap_or_default();
    let host_ip = parse_host_ip(ip_text)?;
    let host_ports = match host_text {
        "" => None,
        text => Some(parse_range(text).map_err(|reason| hint_missing_host_port(text, reason))?),
    };
    let spec = PortSpec {
        host_ip,
        host_ports,
        container_ports: parse_range(container_text)?,
        protocol,
    };
    check_shape(&spec)?;
    Ok(spec)
}

/// Splits `80/udp` into the ports and the protocol (TCP when absent).
fn split_protocol(spec: &str) -> Result<(&str, Protocol), String> {
    let Some((ports, protocol)) = spec.split_once('/') else {
        return Ok((spec, Protocol::Tcp));
    };
    let protocol = if protocol.eq_ignore_ascii_case("tcp") {
        Protocol::Tcp
    } else if protocol.eq_ignore_ascii_case("udp") {
        Protocol::Udp
    } else if protocol.is_empty() {
        return Err("missing protocol after '/' (tcp or udp)".to_owned());
    } else {
        return Err(format!("unknown protocol {} (tcp or udp)", shown(protocol)));
    };
    Ok((ports, protocol))
}

/// Empty and `0.0.0.0` both mean every address of the host. An IPv6
/// address is written in brackets, as Docker's (`[2001:db8::1]:8080:80`).
/// `[::1]` is refused: IPv6 has no `route_localnet`, so the kernel never
/// forwards a packet from or to `::1` out of `lo` (Docker needs its userland
/// proxy for it, which netctl does not run); `[::]` too, as it would mean
/// every IPv6 address but no IPv4 one.
fn parse_host_ip(text: &str) -> Result<Option<IpAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let bracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    match bracketed.unwrap_or(text).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok(None),
        Ok(IpAddr::V4(ip)) => Ok(Some(IpAddr::V4(ip))),
        Ok(IpAddr::V6(_)) if bracketed.is_none() => Err(format!(
            "IPv6 host address {} must be in brackets ([ADDR]:HOST:CONTAINER)",
            shown(text)
        )),
        Ok(IpAddr::V6(ip)) if ip.is_loopback() => Err(
            "[::1] cannot be published: the kernel never forwards ::1 to a container \
             (IPv6 has no route_localnet); publish on every address or on one of the \
             host's IPv6 addresses"
                .to_owned(),
        ),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => Err(
            "[::] is not supported: leave the address out to publish on every address".to_owned(),
        ),
        Ok(IpAddr::V6(ip)) => Ok(Some(IpAddr::V6(ip))),
        Err(_) => Err(format!("{} is not a valid IP address", shown(text))),
    }
}

/// `127.0.0.1:80` reads as host port `127.0.0.1`: say what was likely meant.
fn hint_missing_host_port(text: &str, reason: String) -> String {
    if text.parse::<Ipv4Addr>().is_ok() {
        format!("{reason} (to publish on {text} with an ephemeral host port, write {text}::PORT)")
    } else {
        reason
    }
}

/// Parses `80` or `80-90` into an inclusive range.
fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_port(first)?, parse_port(last)?),
        None => {
            let port = parse_port(text)?;
            (port, port)
        }
    };
    if first > last {
        return Err(format!("range {first}-{last} is reversed"));
    }
    Ok((first, last))
}

/// Parses one port number, 1 to 65535.
fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("missing port number".to_owned());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a port number", shown(text)));
    }
    // Only digits: a parse failure means too many of them.
    let port = text.parse::<u32>().unwrap_or(u32::MAX);
    match u16::try_from(port) {
        Ok(0) => Err("port 0 is not allowed".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {text} is out of range 1-65535")),
    }
}

/// The rules a spec obeys whether it was parsed or built by hand: ports
/// from 1, ranges in order, and host ports either one per container port or
/// a range to pick one from for a single container port.
fn check_shape(spec: &PortSpec) -> Result<(), String> {
    let ranges = [Some(spec.container_ports), spec.host_ports];
    for (first, last) in ranges.into_iter().flatten() {
        if first == 0 {
            return Err("port 0 is not allowed".to_owned());
        }
        if first > last {
            return Err(format!("range {first}-{last} is reversed"));
        }
    }
    if let Some(host) = spec.host_ports {
        let (c_first, c_last) = spec.container_ports;
        if host.1 - host.0 != c_last - c_first && c_first != c_last {
            return Err(format!(
                "host ports {} and container ports {} differ in length",
                range_text(host),
                range_text(spec.container_ports)
            ));
        }
    }
    Ok(())
}

/// The container end shared by every mapping of one expansion.
struct Target<'a> {
    container: &'a str,
    network: &'a str,
    ip: Ipv4Addr,
    /// The endpoint's IPv6 address on a dual-stack network.
    ip6: Option<Ipv6Addr>,
    host: &'a HostPorts,
}

impl Target<'_> {
    fn mapping(&self, spec: &PortSpec, host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            protocol: spec.protocol,
            host_ip: spec.host_ip,
            host_port,
            container_ip: self.ip,
            // On every host address or one IPv6 address: the host's IPv6
            // side forwards to the endpoint's IPv6 address (Docker's
            // behaviour); a port bound to one IPv4 address has none.
            container_ip6: match spec.host_ip {
                Some(IpAddr::V4(_)) => None,
                None | Some(IpAddr::V6(_)) => self.ip6,
            },
            container_port,
            container: self.container.to_owned(),
            network: self.network.to_owned(),
        }
    }
}

/// `8080/tcp` or `127.0.0.1:8080/tcp`: a host port as errors name it.
fn host_port_text(host_ip: Option<IpAddr>, ports: (u16, u16), protocol: Protocol) -> String {
    match host_ip {
        Some(ip) => format!("{}:{}/{protocol}", host_ip_text(ip), range_text(ports)),
        None => format!("{}/{protocol}", range_text(ports)),
    }
}

/// Mappings already published on the host plus those of this expansion so
/// far: a new mapping must conflict with none of them.
struct Published<'a> {
    taken: &'a [PortMapping],
    new: &'a [PortMapping],
}

impl Published<'_> {
    fn iter(&self) -> impl Iterator<Item = &PortMapping> {
        self.taken.iter().chain(self.new)
    }

    /// The mapping that already holds the host port of `candidate`.
    fn holder(&self, candidate: &PortMapping) -> Option<&PortMapping> {
        self.iter().find(|m| m.conflicts_with(candidate))
    }

    /// The mappings that keep `spec` off their host port: same protocol,
    /// overlapping host address (the rule of [`PortMapping::conflicts_with`]).
    fn blockers<'s>(&'s self, spec: &'s PortSpec) -> impl Iterator<Item = &'s PortMapping> + 's {
        self.iter().filter(|m| {
            let probe = PortMapping {
                protocol: spec.protocol,
                host_ip: spec.host_ip,
                ..(*m).clone()
            };
            m.conflicts_with(&probe)
        })
    }

    /// The ports of `range` that `spec` may take, lowest first.
    fn free_ports(&self, spec: &PortSpec, range: RangeInclusive<u16>) -> impl Iterator<Item = u16> {
        let busy: BTreeSet<u16> = self.blockers(spec).map(|m| m.host_port).collect();
        range.filter(move |port| !busy.contains(port))
    }
}

/// Turns a spec into concrete mappings for one container endpoint. Fails,
/// naming the host port and its holder, on any conflict with `taken`.
pub fn expand(
    spec: &PortSpec,
    taken: &[PortMapping],
    host: &HostPorts,
    container: &str,
    network: &str,
    container_ip: Ipv4Addr,
) -> Result<Vec<PortMapping>> {
    expand_all(
        std::slice::from_ref(spec),
        taken,
        host,
        container,
        network,
        (container_ip, None),
    )
}

/// Expands several specs in order; a later spec sees the host ports of the
/// earlier ones as taken, so two specs of one container cannot collide.
/// A host address the host does not have is refused, and so is an IPv6
/// one when the endpoint has no IPv6 address (`container_ips.1`).
pub fn expand_all(
    specs: &[PortSpec],
    taken: &[PortMapping],
    host: &HostPorts,
    container: &str,
    network: &str,
    container_ips: (Ipv4Addr, Option<Ipv6Addr>),
) -> Result<Vec<PortMapping>> {
    let target = Target {
        container,
        network,
        ip: container_ips.0,
        ip6: container_ips.1,
        host,
    };
    let mut out = Vec::new();
    for spec in specs {
        check_shape(spec).map_err(|reason| Error::invalid(format!("port spec {spec}"), reason))?;
        if matches!(spec.host_ip, Some(IpAddr::V6(_))) && target.ip6.is_none() {
            return Err(Error::invalid(
                format!("port spec {spec}"),
                format!("network {network} has no IPv6 (create it with --ipv6)"),
            ));
        }
        if let Some(ip) = spec.host_ip.filter(|ip| !host.owns(*ip)) {
            return Err(Error::invalid(
                format!("port spec {spec}"),
                format!("{ip} is not an address of the host"),
            ));
        }
        let mappings = expand_one(spec, taken, &out, &target)?;
        out.extend(mappings);
    }
    Ok(out)
}

/// Expands one well-formed spec against `taken` and the mappings `new`
/// already made by this expansion.
fn expand_one(
    spec: &PortSpec,
    taken: &[PortMapping],
    new: &[PortMapping],
    target: &Target<'_>,
) -> Result<Vec<PortMapping>> {
    let (c_first, c_last) = spec.container_ports;
    match spec.host_ports {
        Some(host) if c_first == c_last && host.0 != host.1 => {
            Ok(vec![pick_from_range(spec, host, taken, new, target)?])
        }
        Some((h_first, _)) => pairwise(spec, h_first, taken, new, target),
        None => ephemeral(spec, taken, new, target),
    }
}

/// Host range and container range of the same length: `8080-8081:80-81`
/// maps 8080→80 and 8081→81, every one of them required.
fn pairwise(
    spec: &PortSpec,
    h_first: u16,
    taken: &[PortMapping],
    new: &[PortMapping],
    target: &Target<'_>,
) -> Result<Vec<PortMapping>> {
    let published = Published { taken, new };
    let (c_first, c_last) = spec.container_ports;
    (c_first..=c_last)
        .map(|container_port| {
            let host_port = h_first + (container_port - c_first);
            let candidate = target.mapping(spec, host_port, container_port);
            match published.holder(&candidate) {
                Some(holder) => Err(Error::invalid(
                    format!(
                        "host port {}",
                        host_port_text(spec.host_ip, (host_port, host_port), spec.protocol)
                    ),
                    format!("already published by container {}", holder.container),
                )),
                None => Ok(candidate),
            }
        })
        .collect()
}

/// A host range for one container port (`8080-8090:80`): the first free
/// host port of the range, as Docker does.
fn pick_from_range(
    spec: &PortSpec,
    host: (u16, u16),
    taken: &[PortMapping],
    new: &[PortMapping],
    target: &Target<'_>,
) -> Result<PortMapping> {
    let published = Published { taken, new };
    let range = host.0..=host.1;
    if let Some(port) = published.free_ports(spec, range.clone()).next() {
        return Ok(target.mapping(spec, port, spec.container_ports.0));
    }
    let holders: BTreeSet<&str> = published
        .blockers(spec)
        .filter(|m| range.contains(&m.host_port))
        .map(|m| m.container.as_str())
        .collect();
    let holders: Vec<&str> = holders.into_iter().collect();
    Err(Error::invalid(
        format!(
            "host ports {}",
            host_port_text(spec.host_ip, host, spec.protocol)
        ),
        format!(
            "all already published (by container {})",
            holders.join(", ")
        ),
    ))
}

/// No host ports (`80`, `80-90`): each container port gets the lowest free
/// port of [`EPHEMERAL_WINDOW`] outside the kernel's ephemeral range. One
/// spec shares protocol and host address, so the free ports computed once
/// serve every container port in turn.
fn ephemeral(
    spec: &PortSpec,
    taken: &[PortMapping],
    new: &[PortMapping],
    target: &Target<'_>,
) -> Result<Vec<PortMapping>> {
    let kernel = target.host.kernel_ephemeral.clone();
    let mut free = Published { taken, new }
        .free_ports(spec, EPHEMERAL_WINDOW)
        .filter(|port| !kernel.contains(port));
    let (c_first, c_last) = spec.container_ports;
    (c_first..=c_last)
        .map(|container_port| {
            let port = free.next().ok_or_else(|| {
                Error::invalid(
                    format!("port spec {spec}"),
                    format!(
                        "no free host port for {container_port}/{} in {}-{} outside the \
                         kernel's ephemeral range {}-{}",
                        spec.protocol,
                        EPHEMERAL_WINDOW.start(),
                        EPHEMERAL_WINDOW.end(),
                        kernel.start(),
                        kernel.end()
                    ),
                )
            })?;
            Ok(target.mapping(spec, port, container_port))
        })
        .collect()
}

#[cfg(test)]
mod tests;
