//! The transactions Docker's network driver (`netctl docker-plugin`) needs
//! beyond `network create`, `container run` and `rm`: an endpoint joining
//! and leaving a sandbox, and its ports published and unpublished after
//! the endpoint exists (Docker hands the port map over in a call of its
//! own, ProgramExternalConnectivity).

use super::Host;
use crate::{
    error::{Error, Result},
    failpoint,
    journal::Undo,
    model::PortMapping,
    ports::{self, PortSpec},
};

impl Host {
    /// Records the sandbox a Docker endpoint joined (`None`: it left): the
    /// container's namespace from then on, for `doctor` and `container ls`.
    pub async fn docker_sandbox(&mut self, container: &str, sandbox: Option<String>) -> Result<()> {
        self.begin(format!("docker join {container}"));
        let ctr = self
            .state
            .containers
            .get_mut(container)
            .filter(|c| c.docker.is_some())
            .ok_or_else(|| Error::not_found("docker endpoint", container))?;
        ctr.netns = sandbox;
        self.commit(Ok(()), &[]).await
    }

    /// Publishes `specs` on the container's one endpoint (host ports
    /// chosen as `container run -p` chooses them); returns the mappings.
    pub async fn container_publish(
        &mut self,
        container: &str,
        specs: &[PortSpec],
    ) -> Result<Vec<PortMapping>> {
        self.begin(format!("publish {container}"));
        let ctr = self.state.container(container)?.clone();
        let object = || format!("container {container}");
        if !ctr.ports.is_empty() {
            return Err(Error::invalid(object(), "has published ports already"));
        }
        let [ep] = ctr.endpoints.as_slice() else {
            return Err(Error::invalid(object(), "publishes on one network only"));
        };
        let net = self.state.network(&ep.network)?.clone();
        if net.internal && !specs.is_empty() {
            return Err(Error::invalid(
                object(),
                format!("cannot publish ports on internal network {}", net.name),
            ));
        }
        let mut host = self.host_ports().await?;
        host.addresses.insert(net.gateway.into());
        let taken: Vec<PortMapping> = self.state.ports().cloned().collect();
        let mappings =
            ports::expand_all(specs, &taken, &host, container, &net.name, (ep.ip, ep.ip6))?;
        if mappings.is_empty() {
            return Ok(mappings);
        }
        self.open_datapath_if_up().await?;
        let result = async {
            let dp = self.datapath().await?;
            self.record(
                Undo::PortsUnpublished {
                    network: net.clone(),
                    ports: mappings.clone(),
                },
                "run.ports",
            )?;
            dp.ports_published(&net, &mappings)?;
            failpoint::check("run.ports")?;
            self.state
                .containers
                .get_mut(container)
                .expect("found above")
                .ports = mappings.clone();
            Ok(())
        }
        .await;
        self.commit(result, &[]).await?;
        Ok(mappings)
    }

    /// Unpublishes every port of the container. The state forgets them
    /// first: should the datapath's step fail, what it keeps is an orphan
    /// that `doctor --fix` removes, never a port the state still claims.
    pub async fn container_unpublish(&mut self, container: &str) -> Result<()> {
        self.begin(format!("unpublish {container}"));
        let ctr = self.state.container(container)?.clone();
        if ctr.ports.is_empty() {
            return Ok(());
        }
        let Some(net) = ctr
            .ports
            .first()
            .and_then(|p| self.state.networks.get(&p.network))
            .cloned()
        else {
            return Err(Error::not_found("network", ctr.ports[0].network.as_str()));
        };
        self.state
            .containers
            .get_mut(container)
            .expect("found above")
            .ports
            .clear();
        self.commit(Ok(()), &[]).await?;
        let dp = self.datapath().await?;
        dp.ports_unpublished(&net, &ctr.ports)
    }
}
