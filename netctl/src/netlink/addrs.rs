//! Addresses on links (IPv4, and IPv6 on dual-stack networks).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};

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

    /// Removes `ip/prefix` from a link; absent already is not an error.
    pub async fn delete_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = request
            .try_next()
            .await
            .map_err(|e| self.error(format!("addresses of link #{index}"), e))?
        {
            let ours = msg.header.prefix_len == prefix
                && addresses_of(std::slice::from_ref(&msg)).contains(&IpAddr::V4(ip));
            if ours {
                return match self.handle.address().del(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
                    Err(e) => Err(self.error(format!("address {ip}/{prefix} on link #{index}"), e)),
                };
            }
        }
        Ok(())
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

    /// Every address message of the namespace, on any link.
    async fn address_messages(&self) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("addresses of the host", e))
    }

    /// Every address of the namespace, of both families, on any link.
    pub async fn all_addresses(&self) -> Result<Vec<IpAddr>> {
        Ok(addresses_of(&self.address_messages().await?))
    }

    /// Every IPv4 address of the namespace with its link's index, each
    /// link's primary addresses before its secondary ones (so the first of
    /// a link is the source the kernel picks, and MASQUERADE too).
    pub async fn ipv4_addresses_by_link(&self) -> Result<Vec<(u32, Ipv4Addr)>> {
        let messages = self.address_messages().await?;
        let mut found: Vec<(bool, u32, Ipv4Addr)> = messages
            .iter()
            .flat_map(|m| {
                let secondary = m.header.flags.contains(AddressHeaderFlags::Secondary);
                addresses_of(std::slice::from_ref(m))
                    .into_iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(ip) => Some(ip),
                        IpAddr::V6(_) => None,
                    })
                    .map(move |ip| (secondary, m.header.index, ip))
            })
            .collect();
        // Stable: the kernel's order within primaries and within secondaries.
        found.sort_by_key(|(secondary, _, _)| *secondary);
        Ok(found
            .into_iter()
            .map(|(_, index, ip)| (index, ip))
            .collect())
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
