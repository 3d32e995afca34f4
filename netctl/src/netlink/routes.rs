//! Routes: the containers' default routes (IPv4, and IPv6 on dual-stack
//! networks), the host's uplink.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use super::{errno, Netlink};
use crate::error::Result;

impl Netlink {
    /// `default via GATEWAY`; present already is not an error.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.add_route(Ipv4Addr::UNSPECIFIED, 0, gateway).await
    }

    /// `DESTINATION/PREFIX via GATEWAY`; present already is not an error.
    pub async fn add_route(
        &self,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix)
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.error(format!("route {destination}/{prefix} via {gateway}"), e)),
        }
    }

    /// `default via GATEWAY` for IPv6; present already is not an error.
    pub async fn add_default_route6(&self, gateway: Ipv6Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.error(format!("default route via {gateway}"), e)),
        }
    }

    /// Output interface of the main table's IPv4 default route, if any.
    pub async fn default_route_interface(&self) -> Result<Option<u32>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("routes", e))?;
        Ok(routes
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })
            }))
    }
}
