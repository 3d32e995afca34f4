//! The commands, each a transaction: lock the state → validate → apply the
//! steps, recording how to undo each → save the state atomically. When a
//! step fails, the recorded steps are undone in reverse order and the error
//! of the failed step is returned, so the system is as it was before.
//! Removals (`container rm`, `network rm`, `network disconnect`, `down`)
//! journal what they take apart instead and keep going past errors.
//!
//! This file holds the transaction itself, [`Host`]: the lock, the journal,
//! the undo list, commit and rollback, and the recovery of what a killed
//! netctl left. The commands are beside it: `network.rs`, `container.rs`
//! (a pure plan, then its steps), `doctor.rs`, `ebpf.rs` for the eBPF
//! datapath's own tables, and `metrics.rs` for `netctl metrics`.

use std::{
    future::Future,
    path::Path,
    rc::Rc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    config::HostConfig,
    datapath::{self, Datapath, HostInfo, Uplink},
    error::{Error, Result},
    failpoint, host_ifaces, hosts,
    journal::{EndpointRef, Journal, Undo},
    model::{DatapathKind, Network, NetworkMode},
    netlink::Netlink,
    netns, process, resolver,
    state::{self, State, StateDir},
};

mod container;
mod docker;
mod doctor;
mod ebpf;
mod metrics;
mod naming;
mod network;
mod watch;

pub use container::{
    lookup_container, plan_container, ContainerPlan, ContainerRun, Networking, Step,
    DOCKER_IFNAME_PREFIX,
};
pub use doctor::Finding;
pub use metrics::{metrics_text, serve_metrics};
pub use network::{plan_network, NetworkCreate, NetworkView};
pub use watch::watch;

/// The datapath a new host gets when `--datapath` is not given.
pub const DEFAULT_DATAPATH: DatapathKind = DatapathKind::Ebpf;

/// A locked host: the state, a netlink socket in the host namespace and the
/// steps applied so far.
pub struct Host {
    pub config: HostConfig,
    dir: StateDir,
    pub state: State,
    /// The state as last saved by a commit: what a rollback returns to and
    /// what the journal is written into.
    committed: State,
    /// Whether a state file existed when the host was opened (a fresh host
    /// whose first command fails keeps no state file).
    had_state_file: bool,
    netlink: Netlink,
    /// The command under way, for the journal.
    command: String,
    undo: Vec<Undo>,
    /// What the removal under way takes apart and has not finished yet: the
    /// journal on disk names all of it, so that a crash between two objects
    /// still gets the rest removed.
    removal: Journal,
    /// The datapath once opened (opening looks the uplink up through netlink).
    datapath: Option<Rc<dyn Datapath>>,
    /// Whether opening the datapath takes over one another build loaded
    /// (`Datapath::take_over`); `down` does not: it takes anything down.
    take_over: bool,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs `command` against the state dir at `state_dir`; when the dir did
/// not exist before and the command saved nothing in it (it failed, or
/// only read), it is removed again: a fresh host keeps no trace.
pub async fn leaving_no_trace<T>(state_dir: &Path, command: impl Future<Output = T>) -> T {
    let fresh = !state_dir.exists();
    let outcome = command.await;
    if fresh {
        state::remove_if_unused(state_dir);
    }
    outcome
}

impl Host {
    /// Locks the state dir and loads the state, finishing first what an
    /// interrupted netctl left in the journal. The calling thread must be in
    /// the host namespace already (main enters it at start-up).
    pub async fn open(config: HostConfig) -> Result<Self> {
        let host = Self::open_without_sync(config).await?;
        // Every command re-reads the host's interfaces and addresses: the
        // datapath follows a renumbered interface from the next command on,
        // whatever the command. Not fatal: the command's own work does not
        // depend on it, and `doctor` reports what stays stale.
        if let Err(e) = host.follow_host_interfaces().await {
            eprintln!("netctl: {e}");
        }
        Ok(host)
    }

    /// [`Host::open`] without the datapath following the host's interfaces:
    /// for `doctor` (which reports a stale view; `--fix` repairs it) and
    /// `down` (which takes everything away).
    pub async fn open_without_sync(config: HostConfig) -> Result<Self> {
        let dir = StateDir::lock(&config.state_dir)?;
        let had_state_file = dir.has_state_file();
        let state = dir.load()?;
        let netlink = Netlink::connect(config.host_netns.as_deref().unwrap_or("root"))?;
        let mut host = Host {
            config,
            dir,
            committed: state.clone(),
            state,
            had_state_file,
            netlink,
            command: String::new(),
            undo: Vec::new(),
            removal: Journal::default(),
            datapath: None,
            take_over: true,
        };
        if let Some(journal) = host.state.journal.take() {
            host.committed.journal = None;
            host.recover(journal).await?;
        }
        // Any command restarts a resolver found gone. Not fatal: the
        // command goes on, names do not resolve, `doctor` says why.
        if let Err(e) = resolver::keep(&host.config, &host.state) {
            eprintln!("netctl: {e}");
        }
        Ok(host)
    }

    /// Completes what a killed netctl left: undoes the steps of a command
    /// that never committed, finishes removals that had begun, then saves.
    async fn recover(&mut self, journal: Journal) -> Result<()> {
        let disconnecting = match journal.removing_endpoints.len() {
            0 => String::new(),
            n => format!(", disconnecting {n} endpoint(s)"),
        };
        let host = if journal.host_down {
            ", then taking the host down"
        } else {
            ""
        };
        eprintln!(
            "netctl: finishing `{}`, interrupted: undoing {} step(s), removing {} container(s) and {} network(s){disconnecting}{host}",
            journal.command,
            journal.undo.len(),
            journal.removing_containers.len(),
            journal.removing_networks.len()
        );
        let mut errors = Vec::new();
        // The steps may name a datapath the state does not record yet (the
        // host's first command); undo them against that one.
        let recorded = self.state.datapath;
        if journal.datapath.is_some() {
            self.state.datapath = journal.datapath;
        }
        self.undo = journal.undo.clone();
        errors.extend(self.rollback().await.err());
        self.state.datapath = recorded;
        // What is left of a removal stays in the journal until done.
        self.command = journal.command.clone();
        self.removal = Journal {
            undo: Vec::new(),
            ..journal.clone()
        };
        for EndpointRef { container, network } in &journal.removing_endpoints {
            let attached = self
                .state
                .containers
                .get(container)
                .is_some_and(|c| c.endpoint(network).is_some());
            if attached {
                errors.extend(self.remove_endpoint(container, network).await.err());
            }
        }
        for name in &journal.removing_containers {
            if self.state.containers.contains_key(name) {
                errors.extend(self.remove_container(name).await.err());
            }
        }
        for name in &journal.removing_networks {
            if let Some(net) = self.state.networks.get(name).cloned() {
                errors.extend(self.remove_network(&net).await.err());
            }
        }
        if journal.host_down {
            errors.extend(self.take_datapath_down().await.err());
        }
        self.removal = Journal::default();
        self.state.journal = None;
        errors.extend(self.dir.save(&mut self.state).err());
        self.saved();
        Error::collect(errors).map_err(|e| {
            Error::system(
                format!("recovery of `{}`", journal.command),
                format!("{e} (run `netctl doctor --fix`)"),
            )
        })
    }

    /// Names the command whose steps the journal records from now on.
    fn begin(&mut self, command: impl Into<String>) {
        self.command = command.into();
        self.undo.clear();
        self.removal = Journal::default();
    }

    /// Records how to undo a step, in the journal on disk, before the step
    /// is taken: a crash in the middle of the step still leaves its undo.
    /// `point` names the step for the failpoint between the two
    /// (`{point}.journaled`).
    fn record(&mut self, step: Undo, point: &str) -> Result<()> {
        self.undo.push(step);
        let journal = Journal {
            command: self.command.clone(),
            datapath: self.state.datapath,
            undo: self.undo.clone(),
            ..Journal::default()
        };
        self.dir
            .save_journal(&self.committed, self.had_state_file, &journal)?;
        failpoint::check(&format!("{point}.journaled"))
    }

    /// Adds what `fill` names to the journal of the removal under way and
    /// saves it, before any of it is taken apart (see `recover`). A removal
    /// of several objects names them all at once.
    fn record_removal(&mut self, fill: impl FnOnce(&mut Journal)) -> Result<()> {
        self.removal.command = self.command.clone();
        self.removal.datapath = self.state.datapath;
        fill(&mut self.removal);
        let removal = &mut self.removal;
        dedup_in_order(&mut removal.removing_containers);
        dedup_in_order(&mut removal.removing_networks);
        dedup_in_order(&mut removal.removing_endpoints);
        self.dir
            .save_journal(&self.committed, self.had_state_file, &self.removal)
    }

    /// Saves the state as it is now as committed, with the journal of what
    /// the removal under way has still to take apart once `done` has struck
    /// off what is finished (no journal when nothing is left).
    fn removal_done(&mut self, done: impl FnOnce(&mut Journal)) -> Result<()> {
        done(&mut self.removal);
        self.state.journal = None;
        let mut on_disk = self.state.clone();
        if self.removal.has_work() {
            on_disk.journal = Some(self.removal.clone());
        }
        self.dir.save(&mut on_disk)?;
        self.state.generation = on_disk.generation;
        self.saved();
        Ok(())
    }

    /// Saves the state as committed: the journal is gone with the same write.
    fn save_committed(&mut self) -> Result<()> {
        self.state.journal = None;
        self.dir.save(&mut self.state)?;
        self.saved();
        Ok(())
    }

    /// The state as it is now was saved: it is the committed one, and the
    /// resolver follows its user-defined networks (a failure there is said,
    /// not fatal: the change is made).
    fn saved(&mut self) {
        // `down` stops it once, at the end, rather than once per network.
        if !self.removal.host_down {
            if let Err(e) = resolver::follow(&self.config, &self.committed, &self.state) {
                eprintln!("netctl: {e}");
            }
        }
        self.committed = self.state.clone();
        self.had_state_file = true;
    }

    /// Makes an up datapath follow the host's interfaces as the kernel has
    /// them now (`Datapath::sync_host`), without taking it over: a datapath
    /// loaded by another build is left as it is until a command that opens
    /// it takes it over (and syncs then). What changed, one line each.
    async fn follow_host_interfaces(&self) -> Result<Vec<String>> {
        match self.state.datapath {
            Some(kind) => datapath::open(kind, &self.host_info().await?)?.sync_host(),
            None => Ok(Vec::new()),
        }
    }

    /// Host facts for the datapath: the uplink and its address, when found.
    async fn host_info(&self) -> Result<HostInfo> {
        let index = match &self.config.uplink {
            Some(name) => Some(self.netlink.link(name).await?.map(|l| l.index).ok_or_else(
                || {
                    Error::invalid(
                        format!("uplink {name}"),
                        "no such interface in the host namespace",
                    )
                },
            )?),
            None => self.netlink.default_route_interface().await?,
        };
        let mut uplink = None;
        if let Some(index) = index {
            let name = self
                .netlink
                .link_by_index(index)
                .await?
                .map(|l| l.name)
                .unwrap_or_default();
            if let Some(address) = self.netlink.ipv4_addresses(index).await?.first() {
                uplink = Some(Uplink {
                    name,
                    index,
                    address: *address,
                });
            }
        }
        let links = self.netlink.links().await?;
        let addresses = self.netlink.ipv4_addresses_by_link().await?;
        Ok(HostInfo {
            config: self.config.clone(),
            uplink,
            interfaces: host_ifaces::select(&links, &addresses, &self.state),
        })
    }

    /// Opens (and so takes over, see [`Datapath::take_over`]) the host's
    /// datapath if it has one: what a command that adds to the host does
    /// before its first step.
    async fn open_datapath_if_up(&mut self) -> Result<()> {
        if self.state.datapath.is_some() {
            self.datapath().await?;
        }
        Ok(())
    }

    /// The host's datapath, opened once per command.
    async fn datapath(&mut self) -> Result<Rc<dyn Datapath>> {
        let kind = self.state.datapath.unwrap_or(DEFAULT_DATAPATH);
        match &self.datapath {
            Some(dp) if dp.kind() == kind => Ok(dp.clone()),
            _ => {
                let dp: Rc<dyn Datapath> = datapath::open(kind, &self.host_info().await?)?.into();
                // Only a host whose datapath is up has anything to take
                // over; a refusal leaves the command undone, nothing changed.
                if self.take_over && self.state.datapath.is_some() {
                    if let Some(done) = dp.take_over()? {
                        eprintln!("netctl: {done}");
                        // Opening skipped the host's interfaces while the
                        // datapath was another build's (see `open`).
                        if let Err(e) = dp.sync_host() {
                            eprintln!("netctl: {e}");
                        }
                    }
                }
                self.datapath = Some(dp.clone());
                Ok(dp)
            }
        }
    }

    /// Ends a command: on success saves the state (which drops the
    /// journal); on error undoes the recorded steps and returns to the
    /// committed state.
    async fn commit(&mut self, result: Result<()>, removed_netns: &[String]) -> Result<()> {
        let result = result.and_then(|()| failpoint::check("commit"));
        match result {
            Ok(()) => {
                let mut hosts = hosts::sync(&self.config, &self.committed, &self.state);
                for netns in removed_netns {
                    hosts = hosts.and(hosts::remove(netns));
                }
                self.save_committed()?;
                self.undo.clear();
                hosts
            }
            Err(err) => {
                let journaled = !self.undo.is_empty();
                let mut errors = vec![err];
                errors.extend(self.rollback().await.err());
                self.state = self.committed.clone();
                if journaled {
                    let cleared = if self.had_state_file {
                        let saved = self.dir.save(&mut self.state);
                        self.committed.generation = self.state.generation;
                        saved
                    } else {
                        self.dir.remove_state_file()
                    };
                    errors.extend(cleared.err());
                }
                Err(Error::collect(errors).expect_err("the command's error"))
            }
        }
    }

    async fn rollback(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        // HostDown is only recorded once the datapath is fixed, so this is
        // the datapath every recorded datapath step was applied to.
        let datapath = self.datapath().await;
        while let Some(step) = self.undo.pop() {
            // No `?` in here: a failing step must not stop the others.
            let result = match step {
                Undo::DeleteLink { name } => self.netlink.delete_link(&name).await,
                Undo::DeleteNetns { name } => hosts::remove(&name).and(netns::delete(&name)),
                Undo::StopProcess { process } => process::remove(&process),
                step => match &datapath {
                    Ok(dp) => match step {
                        Undo::HostDown => dp.host_down(),
                        Undo::NetworkDown { network } => dp.network_down(&network),
                        // The link first (its own undo, recorded before,
                        // would come next): the endpoint's anti-spoofing
                        // stays until the link can carry nothing.
                        Undo::EndpointRemoved { network, endpoint } => {
                            match self.netlink.delete_link(&endpoint.host_veth).await {
                                Ok(()) => dp.endpoint_removed(&network, &endpoint),
                                Err(e) => Err(e),
                            }
                        }
                        Undo::PortsUnpublished { network, ports } => {
                            dp.ports_unpublished(&network, &ports)
                        }
                        _ => unreachable!("handled above"),
                    },
                    Err(e) => Err(Error::system("datapath", e)),
                },
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        Error::collect(errors)
    }

    /// Removes everything netctl made on this host, going on past errors.
    /// The journal names every container and network and the host itself
    /// before the first goes, so that a crash anywhere is finished by the
    /// next command.
    pub async fn down(&mut self) -> Result<()> {
        self.take_over = false;
        self.begin("down");
        let mut errors = Vec::new();
        let mut names: Vec<String> = self.state.containers.keys().cloned().collect();
        names.sort_by_key(|n| !matches!(self.state.containers[n].mode, NetworkMode::Container(_)));
        let networks: Vec<Network> = self.state.networks.values().cloned().collect();
        self.record_removal(|j| {
            j.removing_containers = names.clone();
            j.removing_networks = networks.iter().map(|n| n.name.clone()).collect();
            j.host_down = true;
        })?;
        for name in names {
            errors.extend(self.remove_container(&name).await.err());
        }
        errors.extend(failpoint::check("down.containers").err());
        for net in &networks {
            errors.extend(self.remove_network(net).await.err());
        }
        errors.extend(failpoint::check("down.networks").err());
        errors.extend(self.take_datapath_down().await.err());
        errors.extend(failpoint::check("down.host").err());
        errors.extend(resolver::stop(&self.config).err());
        if errors.is_empty() {
            // Nothing left to remember: the state dir goes too (we hold its
            // lock until exit; a waiting netctl then starts from nothing).
            errors.extend(self.dir.remove().err());
        } else {
            errors.extend(self.save_committed().err());
        }
        Error::collect(errors)
    }

    /// The datapath's host-wide teardown, the last step of `down`.
    async fn take_datapath_down(&mut self) -> Result<()> {
        let result = match self.state.datapath {
            Some(_) => self.datapath().await.and_then(|dp| dp.host_down()),
            None => Ok(()),
        };
        self.state.datapath = None;
        result
    }
}

/// Drops repeated entries, keeping the first of each.
fn dedup_in_order<T: PartialEq + Clone>(items: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(items.len());
    items.retain(|item| {
        let new = !seen.contains(item);
        if new {
            seen.push(item.clone());
        }
        new
    });
}
