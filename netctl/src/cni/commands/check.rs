//! CHECK: the attachment against what ADD made.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{
    super::{
        delegate,
        result::{CniError, Code},
    },
    port_mappings::{for_family, mapping_spec, port_specs},
    Invocation,
};
use crate::{model::Mac, netlink::Netlink, netns, ops::Host};

impl Invocation<'_> {
    /// Compares the attachment with what ADD made: state, links, addresses,
    /// the previous result and the published ports.
    pub(super) async fn check(&self) -> Result<(), CniError> {
        let failed = |what: String| CniError::new(Code::CheckFailed, what);
        let host = Host::open(self.config.clone()).await?;
        let attachment = format!("attachment {}/{}", self.env.container_id, self.env.ifname);
        let ctr = self
            .ours(&host)
            .ok_or_else(|| failed(format!("{attachment}: unknown to netctl")))?
            .clone();
        let cni = ctr.cni.as_ref().expect("ours() checks it");
        let netns_path = self.env.netns.as_deref().expect("checked for CHECK");
        if cni.netns != netns_path || cni.network != self.conf.name {
            return Err(failed(format!(
                "{attachment}: added in {} on network {}, checked in {netns_path} on {}",
                cni.netns, cni.network, self.conf.name
            )));
        }
        let ep = ctr
            .endpoints
            .first()
            .ok_or_else(|| failed(format!("{attachment}: no endpoint")))?;
        let net = host.state.network(&ep.network)?;
        let prev = self.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(Code::InvalidConfig, "CHECK needs prevResult".to_owned())
        })?;
        let listed = prev["ips"].as_array().is_some_and(|ips| {
            ips.iter().any(|i| {
                i["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    == Some(ep.ip)
            })
        });
        if !listed {
            return Err(failed(format!(
                "{attachment}: prevResult does not list its address {}",
                ep.ip
            )));
        }
        if !netns::exists(netns_path) {
            return Err(failed(format!(
                "{attachment}: namespace {netns_path} is gone"
            )));
        }
        let outside = Netlink::connect("host")?;
        let bridge = outside.link(&net.bridge).await?;
        let veth = outside.link(&ep.host_veth).await?;
        match (bridge, veth) {
            (Some(bridge), Some(veth)) if veth.up && veth.master == Some(bridge.index) => {}
            _ => {
                return Err(failed(format!(
                    "{attachment}: {} is missing, down or not on bridge {}",
                    ep.host_veth, net.bridge
                )))
            }
        }
        let inside = Netlink::connect_in(netns_path)?;
        let link = inside
            .link(&ep.ifname)
            .await?
            .ok_or_else(|| failed(format!("{attachment}: no {} in {netns_path}", ep.ifname)))?;
        if !link.up || link.mac.map(Mac::from) != Some(ep.mac) {
            return Err(failed(format!(
                "{attachment}: {} is down or its MAC is not {}",
                ep.ifname, ep.mac
            )));
        }
        if !inside.ipv4_addresses(link.index).await?.contains(&ep.ip) {
            return Err(failed(format!(
                "{attachment}: {} lost its address {}",
                ep.ifname, ep.ip
            )));
        }
        let wanted: BTreeSet<String> = for_family(port_specs(self.conf)?, net.ipv6.is_some())
            .iter()
            .map(ToString::to_string)
            .collect();
        let have: BTreeSet<String> = ctr.ports.iter().map(mapping_spec).collect();
        if wanted != have {
            return Err(failed(format!(
                "{attachment}: published ports {have:?}, the runtime asks {wanted:?}"
            )));
        }
        drop(host);
        if let Some(plugin) = self.conf.delegated_ipam() {
            delegate::exec(plugin, &self.env.path, &self.ipam_call("CHECK"), self.stdin)?;
        }
        Ok(())
    }
}
