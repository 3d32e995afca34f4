//! Addresses on links (IPv4, and IPv6 on dual-stack networks).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use super::{errno, Netlink};
use crate::error::Result;

impl Netlink {
    /// Adds `ip/prefix` to a link; present already is not an error.
    pub async fn add_address(&self, index: u32, ip: impl Into<IpAddr>, prefix: u8) -> Result<()> {
        let ip = ip.into();
        match self.handle.address().add(index, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.error(format!("address {ip}/{prefix} on link #{index}"), e)),
        }
    }

    /// IPv4 addresses of a link, primary first.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .addresses(index)
            .await?
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Addresses of a link, of both families.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error(format!("addresses of link #{index}"), e))?;
        Ok(messages
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// Every address of the namespace, of both families, on any link.
    pub async fn all_addresses(&self) -> Result<Vec<IpAddr>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("addresses of the host", e))?;
        Ok(addresses_of(&messages))
    }
}

/// The addresses of address messages, in their order.
fn addresses_of(messages: &[AddressMessage]) -> Vec<IpAddr> {
    messages
        .iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
        .collect()
}
