//! `netctl doctor [--fix]`: compares the state with the kernel.
//!
//! It reports what the state names and the kernel lacks (a namespace, veth
//! or bridge deleted behind netctl's back, rules flushed, map entries gone)
//! and what the kernel holds under netctl's names that the state does not
//! own (left by a crash or by hand). `--fix` converges on the state: a
//! container whose namespace is gone is forgotten, everything else the
//! state names is rebuilt, and what nothing owns is removed.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Host;
use crate::{
    datapath::Drift,
    error::{Error, Result},
    failpoint, hosts, ipam,
    model::{Container, Endpoint, Network, NetworkMode},
    netlink::LinkInfo,
    netns, resolver, topology,
};

/// The resolver against the state: it runs when some user-defined network
/// needs it (and only then), and answers a query on each gateway's port 53
/// (REFUSED, since the host is no container of the network, is an answer).
fn resolver_problems(
    config: &crate::config::HostConfig,
    state: &crate::state::State,
) -> Vec<Drift> {
    let object = "resolver";
    let wanted = resolver::listening_set(state);
    let running = resolver::running(config);
    match (wanted.is_empty(), running) {
        (true, Some(p)) => vec![Drift::new(
            object,
            format!("pid {} runs with no user-defined network", p.pid),
        )],
        (true, None) => Vec::new(),
        (false, None) => vec![Drift::new(
            object,
            "not running: names of user-defined networks do not resolve",
        )],
        (false, Some(_)) => wanted
            .iter()
            .filter(|(_, gateway)| {
                resolver::gateway_is_local(*gateway) && !resolver::answers(*gateway)
            })
            .map(|(network, gateway)| {
                Drift::new(
                    object,
                    format!(
                        "no answer on {} (network {network})",
                        std::net::SocketAddr::new(*gateway, 53)
                    ),
                )
            })
            .collect(),
    }
}

/// One difference, and whether `--fix` made it go away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub object: String,
    pub problem: String,
    pub fixed: bool,
}

/// How a difference is repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Repair {
    /// A namespace under our prefix that no container owns.
    DeleteNetns(String),
    /// A link with one of our names that no network or endpoint owns.
    DeleteLink(String),
    /// A container whose namespace is gone: nothing left to repair.
    ForgetContainer(String),
    /// A network's bridge missing, down or without its gateway address.
    Bridge(String),
    /// An endpoint whose veth pair is gone: (container, network).
    Reattach(String, String),
    /// An endpoint's veth no longer on its bridge: (container, network).
    Reenslave(String, String),
    /// Rules or map entries: the datapath reconciles as a whole.
    Datapath,
    /// The resolver gone, not answering, or running with nothing to serve.
    Resolver,
}

impl Host {
    pub async fn doctor(&mut self, fix: bool) -> Result<Vec<Finding>> {
        let before = self.survey().await?;
        if !fix {
            return Ok(before
                .into_iter()
                .map(|(d, _)| Finding {
                    object: d.object,
                    problem: d.problem,
                    fixed: false,
                })
                .collect());
        }
        self.begin("doctor --fix");
        let mut errors = Vec::new();
        let repairs: Vec<Repair> = before.iter().map(|(_, r)| r.clone()).collect();
        errors.extend(self.repair(&repairs).await.err());
        let after: BTreeSet<(String, String)> = self
            .survey()
            .await?
            .into_iter()
            .map(|(d, _)| (d.object, d.problem))
            .collect();
        let findings = judge(
            before.into_iter().map(|(d, _)| (d.object, d.problem)),
            after,
        );
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("netctl: doctor --fix: {e}");
            }
        }
        Ok(findings)
    }

    /// Every difference with its repair, in the order repairs must run.
    async fn survey(&mut self) -> Result<Vec<(Drift, Repair)>> {
        let mut found = Vec::new();
        let links = self.netlink.links().await?;
        let link = |name: &str| links.iter().find(|l| l.name == name);

        // Containers first: one whose namespace is gone takes its endpoints
        // with it, and its other problems are moot.
        let mut owned_netns = BTreeSet::new();
        let mut owned_links: BTreeSet<String> = BTreeSet::new();
        for ctr in self.state.containers.values() {
            let owns_netns = matches!(ctr.mode, NetworkMode::Bridge | NetworkMode::None);
            if let (true, Some(name)) = (owns_netns, &ctr.netns) {
                owned_netns.insert(name.clone());
                if !netns::exists(name) {
                    found.push((
                        Drift::new(
                            format!("container {}", ctr.name),
                            format!("namespace {name} is gone"),
                        ),
                        Repair::ForgetContainer(ctr.name.clone()),
                    ));
                    continue;
                }
            }
            for ep in &ctr.endpoints {
                // The peer carries a name of ours only while it has not
                // reached the container (an attach cut short).
                let peer = topology::peer_name(ep);
                owned_links.insert(ep.host_veth.clone());
                owned_links.insert(peer.clone());
                let Some(net) = self.state.networks.get(&ep.network) else {
                    continue;
                };
                let object = format!("container {} on network {}", ctr.name, ep.network);
                let bridge = link(&net.bridge).map(|l| l.index);
                match link(&ep.host_veth) {
                    None => found.push((
                        Drift::new(object, format!("veth {} is gone", ep.host_veth)),
                        Repair::Reattach(ctr.name.clone(), ep.network.clone()),
                    )),
                    // A Docker endpoint's peer waits in the host namespace
                    // until Docker moves it into the sandbox it joins.
                    Some(_) if link(&peer).is_some() && !awaits_docker(ctr) => found.push((
                        Drift::new(
                            object,
                            format!(
                                "veth {}: its peer {peer} never reached the container",
                                ep.host_veth
                            ),
                        ),
                        Repair::Reattach(ctr.name.clone(), ep.network.clone()),
                    )),
                    Some(veth) if bridge.is_some() && veth.master != bridge => found.push((
                        Drift::new(
                            object,
                            format!("veth {} is not on bridge {}", ep.host_veth, net.bridge),
                        ),
                        Repair::Reenslave(ctr.name.clone(), ep.network.clone()),
                    )),
                    // Left down by a command killed between the datapath
                    // and bringing it up: it carries nothing.
                    Some(veth) if !veth.up => found.push((
                        Drift::new(object, format!("veth {} is down", ep.host_veth)),
                        Repair::Reenslave(ctr.name.clone(), ep.network.clone()),
                    )),
                    _ => {}
                }
            }
        }
        for net in self.state.networks.values() {
            owned_links.insert(net.bridge.clone());
            if let Some(problem) = self.bridge_problem(net, link(&net.bridge)).await? {
                found.push((
                    Drift::new(format!("network {}", net.name), problem),
                    Repair::Bridge(net.name.clone()),
                ));
            }
        }
        // What carries our names and nothing owns.
        let prefix = format!("{}-", self.config.host_id());
        for name in namespaces_with_prefix(&prefix) {
            if !owned_netns.contains(&name) {
                found.push((
                    Drift::new(format!("netns {name}"), "not in the state"),
                    Repair::DeleteNetns(name),
                ));
            }
        }
        for name in hosts_dirs_with_prefix(&prefix) {
            if !owned_netns.contains(&name) && !netns::path(&name).exists() {
                found.push((
                    Drift::new(
                        format!("hosts dir {}", hosts::dir(&name).display()),
                        "not in the state",
                    ),
                    Repair::DeleteNetns(name),
                ));
            }
        }
        for l in &links {
            if ipam::is_netctl_link_name(&l.name) && !owned_links.contains(&l.name) {
                found.push((
                    Drift::new(format!("link {}", l.name), "not in the state"),
                    Repair::DeleteLink(l.name.clone()),
                ));
            }
        }
        if self.state.datapath.is_some() || !found.is_empty() {
            let dp = self.datapath().await?;
            for drift in dp.audit(&self.state)? {
                found.push((drift, Repair::Datapath));
            }
        }
        // Last: a rebuilt bridge has its gateway address back by then.
        found.extend(
            resolver_problems(&self.config, &self.state)
                .into_iter()
                .map(|d| (d, Repair::Resolver)),
        );
        Ok(found)
    }

    async fn bridge_problem(
        &self,
        net: &Network,
        bridge: Option<&LinkInfo>,
    ) -> Result<Option<String>> {
        let Some(bridge) = bridge else {
            return Ok(Some(format!("bridge {} is gone", net.bridge)));
        };
        if !bridge.up {
            return Ok(Some(format!("bridge {} is down", net.bridge)));
        }
        let addresses = self.netlink.addresses(bridge.index).await?;
        let gateways = std::iter::once(std::net::IpAddr::V4(net.gateway))
            .chain(net.ipv6.map(|side| side.gateway.into()));
        for gateway in gateways {
            if !addresses.contains(&gateway) {
                return Ok(Some(format!(
                    "bridge {} lacks the gateway address {gateway}",
                    net.bridge
                )));
            }
        }
        Ok(None)
    }

    /// Runs the repairs, going on past errors; saves the state at the end.
    async fn repair(&mut self, repairs: &[Repair]) -> Result<()> {
        let mut errors = Vec::new();
        let mut topology_changed = false;
        // Re-made veths stay down until the datapath holds them again.
        let mut reattached = Vec::new();
        for repair in repairs {
            let result = match repair {
                Repair::ForgetContainer(name) => {
                    topology_changed = true;
                    self.remove_container(name).await
                }
                Repair::DeleteNetns(name) => hosts::remove(name).and_then(|()| netns::delete(name)),
                Repair::DeleteLink(name) => self.netlink.delete_link(name).await,
                Repair::Bridge(network) => {
                    topology_changed = true;
                    self.rebuild_bridge(network).await
                }
                Repair::Reattach(container, network) => {
                    topology_changed = true;
                    let result = self.reattach(container, network).await;
                    if result.is_ok() {
                        reattached.push((container.clone(), network.clone()));
                    }
                    result
                }
                Repair::Reenslave(container, network) => {
                    // Up once the datapath is reconciled, as a new veth.
                    topology_changed = true;
                    reattached.push((container.clone(), network.clone()));
                    let (net, ep) = self.endpoint_of(container, network)?;
                    self.enslave(&net, &ep).await
                }
                Repair::Datapath => Ok(()),
                Repair::Resolver => resolver::stop(&self.config).and_then(|()| {
                    match resolver::listening_set(&self.state).is_empty() {
                        true => Ok(()),
                        false => resolver::start(&self.config).map(|_| ()),
                    }
                }),
            };
            errors.extend(result.err());
            errors.extend(failpoint::check("doctor.repair").err());
        }
        // New links have new ifindexes: the datapath is reconciled after
        // any topology repair, not only when it reported drift itself.
        if topology_changed || repairs.contains(&Repair::Datapath) {
            let reconciled = match self.datapath().await {
                Ok(dp) => dp.reconcile(&self.state),
                Err(e) => Err(e),
            };
            match reconciled {
                Ok(()) => {
                    for (container, network) in &reattached {
                        let activated = match self.endpoint_of(container, network) {
                            Ok((_, ep)) => topology::activate(&self.netlink, &ep).await,
                            Err(e) => Err(e),
                        };
                        errors.extend(activated.err());
                    }
                }
                Err(e) => errors.push(e),
            }
            errors.extend(failpoint::check("doctor.datapath").err());
        }
        errors.extend(hosts::write_all(&self.config, &self.state).err());
        errors.extend(self.save_committed().err());
        Error::collect(errors)
    }

    fn endpoint_of(&self, container: &str, network: &str) -> Result<(Network, Endpoint)> {
        let ctr = self.state.container(container)?;
        let ep = ctr
            .endpoint(network)
            .ok_or_else(|| Error::not_found("endpoint", format!("{container} on {network}")))?;
        Ok((self.state.network(network)?.clone(), ep.clone()))
    }

    /// The bridge again (with its MAC and gateway), and every endpoint of
    /// the network back on it.
    async fn rebuild_bridge(&mut self, network: &str) -> Result<()> {
        let net = self.state.network(network)?.clone();
        topology::network_up(&self.netlink, &net).await?;
        let members: Vec<String> = self
            .state
            .members(network)
            .map(|c| c.name.clone())
            .collect();
        let mut errors = Vec::new();
        for name in members {
            let (net, ep) = self.endpoint_of(&name, network)?;
            if self.netlink.link(&ep.host_veth).await?.is_some() {
                errors.extend(self.enslave(&net, &ep).await.err());
            }
        }
        Error::collect(errors)
    }

    /// Puts an endpoint's veth back on its bridge (its state up or down
    /// unchanged: the caller brings it up once the datapath holds it).
    async fn enslave(&self, net: &Network, ep: &Endpoint) -> Result<()> {
        let bridge = self.netlink.index(&net.bridge).await?;
        let veth = self.netlink.index(&ep.host_veth).await?;
        self.netlink.set_master(veth, bridge).await?;
        self.netlink.set_hairpin(veth).await
    }

    /// A new veth pair into the container's namespace, same name, address
    /// and MAC as recorded, in place of what is left of the old one; the
    /// datapath picks it up when reconciled, and its host end comes up
    /// only then.
    async fn reattach(&mut self, container: &str, network: &str) -> Result<()> {
        let (net, ep) = self.endpoint_of(container, network)?;
        if self.state.container(container)?.docker.is_some() {
            return Err(Error::invalid(
                format!("container {container}"),
                "Docker's endpoint: only Docker can move a new veth into its sandbox (restart the container)",
            ));
        }
        let netns_name = self
            .state
            .container(container)?
            .netns
            .clone()
            .ok_or_else(|| Error::invalid(format!("container {container}"), "has no namespace"))?;
        if self.netlink.link(&net.bridge).await?.is_none() {
            self.rebuild_bridge(network).await?;
        }
        self.netlink.delete_link(&ep.host_veth).await?;
        self.netlink.delete_link(&topology::peer_name(&ep)).await?;
        // The datapath picks the new index up when reconciled.
        topology::attach(
            &self.netlink,
            Some(&netns_name),
            &net,
            &ep,
            "doctor.link.veth",
        )
        .await?;
        Ok(())
    }
}

/// Whether a container is a Docker endpoint whose veth end Docker has still
/// to move: not joined yet, or joined moments ago.
fn awaits_docker(ctr: &Container) -> bool {
    ctr.docker.is_some() && ctr.netns.is_none()
}

/// What `--fix` achieved: each difference found `before` is fixed unless
/// the survey `after` the repairs still finds it; a difference only the
/// survey after finds (one a repair made, or one that appeared meanwhile)
/// is reported too, unfixed, so that `--fix` does not exit 0 over it.
fn judge(
    before: impl IntoIterator<Item = (String, String)>,
    mut after: BTreeSet<(String, String)>,
) -> Vec<Finding> {
    let mut findings: Vec<Finding> = before
        .into_iter()
        .map(|(object, problem)| {
            let fixed = !after.remove(&(object.clone(), problem.clone()));
            Finding {
                object,
                problem,
                fixed,
            }
        })
        .collect();
    findings.extend(after.into_iter().map(|(object, problem)| Finding {
        object,
        problem,
        fixed: false,
    }));
    findings
}

/// Names under /run/netns starting with `prefix`.
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    names_with_prefix(netns::NETNS_DIR, prefix)
}

/// Names under /etc/netns (hosts files) starting with `prefix`.
fn hosts_dirs_with_prefix(prefix: &str) -> Vec<String> {
    names_with_prefix(hosts::ETC_NETNS, prefix)
}

fn names_with_prefix(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(object: &str, problem: &str) -> (String, String) {
        (object.to_owned(), problem.to_owned())
    }

    #[test]
    fn fix_reports_what_stayed_and_what_appeared() {
        let before = vec![pair("bridge nc0", "missing"), pair("veth a", "down")];
        let after = BTreeSet::from([pair("veth a", "down"), pair("rule x", "extra")]);
        let findings = judge(before, after);
        let seen: Vec<(&str, &str, bool)> = findings
            .iter()
            .map(|f| (f.object.as_str(), f.problem.as_str(), f.fixed))
            .collect();
        assert_eq!(
            seen,
            [
                ("bridge nc0", "missing", true),
                ("veth a", "down", false),
                ("rule x", "extra", false),
            ]
        );
    }
}
