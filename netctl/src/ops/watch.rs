//! `netctl watch`: keeps the datapath's view of the host's interfaces and
//! addresses true while they change under it (DHCP renewing with another
//! address, a VPN or a second LAN coming up), between commands.
//!
//! Every command re-reads them anyway (`Datapath::sync_host`, when it opens
//! the datapath); `watch` runs the same sync on every rtnetlink link or
//! IPv4 address event, under the state's lock like any command, so that a
//! host whose address changes while no command runs is followed at once.
//! Events come in bursts (DHCP deletes the old address and adds the new
//! one; a link going down takes its addresses with it): the sync runs once
//! a burst has been quiet for [`SETTLE`].

use std::time::Duration;

use futures::StreamExt as _;
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::signal::unix::{signal, SignalKind};

use super::Host;
use crate::{
    config::HostConfig,
    error::{Error, Result},
};

/// How long a burst of events must be quiet before the sync runs.
const SETTLE: Duration = Duration::from_millis(100);

impl Host {
    /// Makes the datapath follow the host's interfaces and addresses as
    /// the kernel has them now; what it changed, one line each. Nothing on
    /// a host without a datapath.
    pub async fn sync_host_interfaces(&mut self) -> Result<Vec<String>> {
        if self.state.datapath.is_none() {
            return Ok(Vec::new());
        }
        // Taken over first if another build loaded it (and synced then).
        self.datapath().await?;
        self.follow_host_interfaces().await
    }
}

/// One sync, as a command: the lock taken, the state read, released.
async fn sync_once(config: &HostConfig) -> Result<Vec<String>> {
    Host::open_without_sync(config.clone())
        .await?
        .sync_host_interfaces()
        .await
}

/// Runs until SIGINT or SIGTERM: a sync at start, then one after every
/// burst of link and address events. `report` is told each change, and
/// `ready` once the events are subscribed (after the first sync). A sync
/// that fails is reported and the watch goes on: the next event retries.
pub async fn watch(
    config: &HostConfig,
    ready: impl FnOnce(),
    mut report: impl FnMut(&str),
) -> Result<()> {
    let what = || "netctl watch".to_owned();
    let (mut connection, _handle, mut events) =
        rtnetlink::new_connection().map_err(|e| Error::system(what(), e))?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        .map_err(|e| Error::system(what(), format!("netlink subscription: {e}")))?;
    tokio::spawn(connection);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Error::system(what(), e))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Error::system(what(), e))?;
    let sync = |result: Result<Vec<String>>, report: &mut dyn FnMut(&str)| match result {
        Ok(lines) => lines.iter().for_each(|l| report(l)),
        Err(e) => report(&format!("sync failed: {e}")),
    };
    sync(sync_once(config).await, &mut report);
    ready();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            event = events.next() => {
                if event.is_none() {
                    return Err(Error::system(what(), "the netlink connection closed"));
                }
            }
        }
        // The rest of the burst.
        while let Ok(Some(_)) = tokio::time::timeout(SETTLE, events.next()).await {}
        sync(sync_once(config).await, &mut report);
    }
}
