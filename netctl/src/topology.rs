//! Links and addresses of networks and endpoints, applied through netlink.
//!
//! Each function does one step that the caller records in its undo list;
//! none of them touches the datapath or the state.
//!
//! Networks without `--ipv6` have no IPv6, as Docker's: the bridge, the
//! host-side veths and the namespaces netctl makes have it turned off
//! (`disable_ipv6`), so that nothing a container sends over IPv6 (a router
//! advertisement, say) is ever processed by the host. A runtime's
//! namespace (CNI) is the runtime's to configure.
//!
//! A dual-stack network (`--ipv6`) turns IPv6 on exactly where netctl puts
//! an IPv6 address (the bridge, the container's interface on it), with
//! router advertisements ignored, no duplicate address detection and, in
//! containers, no link-local address (`netns::enable_ipv6`), and IPv6 forwarding on in the
//! host namespace. Host-side veths stay without IPv6 (they are bridge
//! ports and need none), and so do a container's other interfaces.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{
    error::Result,
    failpoint,
    model::{Endpoint, Network},
    netlink::Netlink,
    netns,
};

/// Bridge up with the gateway address: the network exists in the kernel.
/// Returns the bridge's ifindex (for the datapath).
pub async fn network_up(host: &Netlink, net: &Network) -> Result<u32> {
    let bridge = host
        .ensure_bridge(&net.bridge, net.bridge_mac().octets())
        .await?;
    // The calling thread is in the host namespace (see `netns`).
    match net.ipv6 {
        None => netns::disable_ipv6(Some(&net.bridge))?,
        Some(side) => {
            netns::write_sysctl("net.ipv6.conf.all.forwarding", "1")?;
            netns::enable_ipv6(&net.bridge, true)?;
            host.add_address(bridge, side.gateway, side.subnet.prefix_len())
                .await?;
        }
    }
    host.add_address(bridge, net.gateway, net.subnet.prefix_len())
        .await?;
    Ok(bridge)
}

/// Deletes the bridge (its address and any enslaved veth ends go with it).
pub async fn network_down(host: &Netlink, net: &Network) -> Result<()> {
    host.delete_link(&net.bridge).await
}

/// Makes a container namespace with IPv6 off and `lo` up.
pub async fn create_container_netns(name: &str) -> Result<()> {
    netns::create(name)?;
    let no_ipv6 = netns::NetnsGuard::enter(name).and_then(|_inside| netns::disable_ipv6(None));
    if let Err(e) = no_ipv6 {
        let _ = netns::delete(name);
        return Err(e);
    }
    let inside = match Netlink::connect_in(name) {
        Ok(inside) => inside,
        Err(e) => {
            let _ = netns::delete(name);
            return Err(e);
        }
    };
    let lo = inside.index("lo").await?;
    inside.set_up(lo).await
}

/// Name of the container-side veth end while it is in the host namespace:
/// a Docker endpoint's, until Docker moves it into its sandbox (and what
/// netctl versions that moved the end in themselves could leave behind,
/// which `doctor` finds).
pub fn peer_name(ep: &Endpoint) -> String {
    format!("{}p", ep.host_veth)
}

/// Connects a container namespace to a network: a veth pair whose host end
/// joins the bridge and whose other end is made inside as `ifname`, with
/// the endpoint's MAC, then gets its address, and a default route via the
/// gateway unless the network is internal. The host end stays down, so the
/// pair carries nothing yet (no carrier on either end): the caller attaches
/// the datapath to it, then calls [`activate`]. A link up before its
/// anti-spoofing would let the container's first packets out with any
/// source. On failure the pair is deleted again, which leaves the system as
/// before. `point` names the failpoint between the pair's making and the
/// configuration of its inside end (the caller's command's). Returns the
/// host end's ifindex (for the datapath).
///
/// Without a namespace (a Docker endpoint), the container's end stays in
/// the host namespace as [`peer_name`], down, with the endpoint's MAC:
/// Docker moves it into the sandbox after Join and gives it its name,
/// address and routes there. It is down until Docker brings it up inside,
/// so the order above holds as well.
pub async fn attach(
    host: &Netlink,
    netns_name: Option<&str>,
    net: &Network,
    ep: &Endpoint,
    point: &str,
) -> Result<u32> {
    let bridge = host.index(&net.bridge).await?;
    let inside = match netns_name {
        Some(name) => Some((name, netns::open(name)?)),
        None => None,
    };
    let peer = match inside {
        Some(_) => ep.ifname.clone(),
        None => peer_name(ep),
    };
    host.add_veth_into(
        &ep.host_veth,
        bridge,
        net.mtu,
        &peer,
        ep.mac.octets(),
        inside.as_ref().map(|(_, ns)| ns),
    )
    .await?;
    let result = async {
        let host_end = host.index(&ep.host_veth).await?;
        host.set_hairpin(host_end).await?;
        netns::disable_ipv6(Some(&ep.host_veth))?;
        failpoint::check(point)?;
        if let Some((netns_name, _)) = inside {
            configure_inside(netns_name, net, ep).await?;
        }
        Ok(host_end)
    }
    .await;
    if result.is_err() {
        let _ = host.delete_link(&ep.host_veth).await;
    }
    result
}

async fn configure_inside(netns_name: &str, net: &Network, ep: &Endpoint) -> Result<()> {
    let inside = Netlink::connect_in(netns_name)?;
    let index = inside.index(&ep.ifname).await?;
    inside
        .add_address(index, ep.ip, net.subnet.prefix_len())
        .await?;
    let ipv6 = net.ipv6.zip(ep.ip6);
    if let Some((side, ip6)) = ipv6 {
        netns::NetnsGuard::enter(netns_name)
            .and_then(|_inside| netns::enable_ipv6(&ep.ifname, false))?;
        inside
            .add_address(index, ip6, side.subnet.prefix_len())
            .await?;
    }
    inside.set_up(index).await?;
    if !net.internal {
        inside.add_default_route(net.gateway).await?;
        if let Some((side, _)) = ipv6 {
            inside.add_default_route6(side.gateway).await?;
        }
    }
    Ok(())
}

/// Brings an attached endpoint's host end up: from here on the pair carries
/// traffic, so the datapath must already hold the endpoint.
pub async fn activate(host: &Netlink, ep: &Endpoint) -> Result<()> {
    let host_end = host.index(&ep.host_veth).await?;
    host.set_up(host_end).await
}

/// Removes an endpoint's veth pair (from the host side; absent is fine).
/// Done before the datapath forgets the endpoint: the link is gone before
/// its anti-spoofing is.
pub async fn detach(host: &Netlink, ep: &Endpoint) -> Result<()> {
    host.delete_link(&ep.host_veth).await
}

/// After a detach, gives the container default routes again through the
/// first of the networks it is still on for each family (a route left with
/// the deleted link).
pub async fn restore_default_route(
    netns_name: &str,
    gateways: &[Ipv4Addr],
    gateways6: &[Ipv6Addr],
) -> Result<()> {
    if gateways.is_empty() && gateways6.is_empty() {
        return Ok(());
    }
    let inside = Netlink::connect_in(netns_name)?;
    if let Some(gateway) = gateways.first() {
        inside.add_default_route(*gateway).await?;
    }
    if let Some(gateway) = gateways6.first() {
        inside.add_default_route6(*gateway).await?;
    }
    Ok(())
}
