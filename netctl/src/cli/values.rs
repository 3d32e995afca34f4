//! The value parsers of the options: text parsed once into its type, a
//! refusal naming the option.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::{
    error::{Error, Result},
    ipam, ipam6,
};

/// `--ip`: an address whose refusal names the option.
pub(super) fn ip_arg(text: &str) -> Result<Ipv4Addr> {
    if text.parse::<Ipv6Addr>().is_ok() {
        return Err(Error::invalid(
            format!("ip {text}"),
            "is an IPv6 address: give it with --ip6",
        ));
    }
    ipam::parse_ip("ip", text)
}

/// `--dns`: an address whose refusal names the option.
pub(super) fn dns_arg(text: &str) -> Result<Ipv4Addr> {
    ipam::parse_ip("dns", text)
}

/// `--gateway`: an address of either family, whose refusal names the option.
pub(super) fn gateway_arg(text: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("gateway {}", ipam::shown(text)),
            "not a valid IP address",
        )
    })
}

/// `--subnet`: an IPv4 or an IPv6 CIDR, each checked by its family's rules.
pub(super) fn subnet_arg(text: &str) -> Result<IpNet> {
    if text.contains(':') {
        ipam6::parse_subnet(text).map(IpNet::V6)
    } else {
        ipam::parse_subnet(text).map(IpNet::V4)
    }
}

/// `--ip6`: an IPv6 address.
pub(super) fn ip6_arg(text: &str) -> Result<Ipv6Addr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("ip6 {}", ipam::shown(text)),
            "not a valid IPv6 address",
        )
    })
}

/// `--listen`: a socket address whose refusal names the option.
pub(super) fn listen_arg(text: &str) -> Result<std::net::SocketAddr> {
    text.parse().map_err(|_| {
        Error::invalid(
            format!("listen {text}"),
            "not an ADDR:PORT (e.g. 127.0.0.1:9610)",
        )
    })
}
