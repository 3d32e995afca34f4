//! Named points inside commands where tests inject a failure or a crash.
//!
//! `NETCTL_FAILPOINT=run.link` makes the step fail there, as a real error
//! would (the command rolls back); `NETCTL_FAILPOINT=run.link=pause` prints
//! `netctl: paused at run.link` on stderr and waits, so that a test can kill
//! the process at that exact point. Unset (always, outside tests), a check is
//! one environment lookup.

use std::time::Duration;

use crate::{
    error::{Error, Result},
    model::DatapathKind,
};

/// The variable tests set.
pub const ENV: &str = "NETCTL_FAILPOINT";

/// How long a paused netctl waits for its killer before it carries on.
const PAUSE: Duration = Duration::from_secs(30);

/// Every failpoint, in the order the commands reach them. Tests iterate this
/// list, so a new point is covered by the failure and crash tests at once.
///
/// A name is `COMMAND.STEP` for the point after a step, `COMMAND.STEP.journaled`
/// for the point between the journal record of the step's undo and the step
/// itself, and `COMMAND.STEP.PART` for a point inside a step of several
/// operations. A point inside a datapath or topology step is named after the
/// command the tests reach it by (`run`), though other commands taking the
/// same step pass it too.
pub const POINTS: &[&str] = &[
    // network create (and the `bridge` network a first `container run` makes)
    "create.host.journaled",
    "create.host",
    "create.bridge.journaled",
    "create.bridge",
    "create.network.journaled",
    "create.network",
    // container run
    "run.netns.journaled",
    "run.netns",
    "run.link.journaled",
    // the veth pair made and its host end on the bridge, the peer not yet
    // moved into the container
    "run.link.veth",
    "run.link",
    "run.endpoint.journaled",
    // eBPF: the ENDPOINTS entry written, the program not yet attached
    "run.endpoint.map",
    "run.endpoint",
    "run.ports.journaled",
    // eBPF: the first PORTMAP entry of the batch written, not the others
    "run.ports.map",
    "run.ports",
    // the command forked and held before exec, its undo journaled
    "run.process.journaled",
    "run.process",
    // network connect
    "connect.link.journaled",
    "connect.link.veth",
    "connect.link",
    "connect.endpoint.journaled",
    "connect.endpoint",
    // the save that ends a successful command
    "commit",
    // container rm: steps of a teardown (links before the datapath, so an
    // endpoint is held until its link is gone), then after each container
    "rm.links",
    "rm.datapath",
    "rm.netns",
    "rm.container",
    // network rm
    "network-rm.datapath",
    // network prune: after each network
    "prune.network",
    // network disconnect: steps of taking an endpoint apart
    "disconnect.links",
    "disconnect.datapath",
    // down: after the containers, after the networks, inside the datapath's
    // host teardown, and after it (before the state dir goes)
    "down.containers",
    "down.networks",
    // eBPF: the links unpinned, maps and programs still pinned
    "down.host.links",
    // iptables: the first table's chains gone, not the others'
    "down.host.table",
    "down.host",
    // doctor --fix: after the first repair, inside the re-attach of an
    // endpoint, after the datapath's reconcile
    "doctor.repair",
    "doctor.link.veth",
    "doctor.datapath",
    // CNI ADD: after the delegated IPAM's ADD (before the host changes);
    // after the attachment is committed (before the result is printed)
    "cni-add.ipam",
    "cni-add.result",
    // CNI DEL: after the attachment is removed, before the IPAM's DEL
    "cni-del.ipam",
];

/// Points inside a step only the eBPF datapath takes in several operations
/// (the iptables datapath applies each step as one atomic batch).
pub const EBPF_ONLY: &[&str] = &["run.endpoint.map", "run.ports.map", "down.host.links"];

/// Points inside a step only the iptables datapath takes in several
/// operations (its host teardown: one batch per table).
pub const IPTABLES_ONLY: &[&str] = &["down.host.table"];

/// Whether a command on `datapath` passes `point`.
pub fn reached_on(point: &str, datapath: DatapathKind) -> bool {
    let other_only = match datapath {
        DatapathKind::Ebpf => IPTABLES_ONLY,
        DatapathKind::Iptables => EBPF_ONLY,
    };
    !other_only.contains(&point)
}

/// Fails or pauses when the test hook names `point`.
pub fn check(point: &str) -> Result<()> {
    let Ok(wanted) = std::env::var(ENV) else {
        return Ok(());
    };
    let (name, action) = wanted.split_once('=').unwrap_or((&wanted, "fail"));
    if name != point {
        return Ok(());
    }
    if action == "pause" {
        eprintln!("netctl: paused at {point}");
        std::thread::sleep(PAUSE);
        return Ok(());
    }
    Err(Error::system(
        format!("step {point}"),
        "injected failure (NETCTL_FAILPOINT)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each point is listed once, and every point named in the source is
    /// listed (the tests walk the list: an unlisted point is never tried).
    #[test]
    fn the_list_holds_every_point_of_the_source() {
        for point in POINTS {
            assert_eq!(POINTS.iter().filter(|p| *p == point).count(), 1, "{point}");
        }
        for point in EBPF_ONLY.iter().chain(IPTABLES_ONLY) {
            assert!(POINTS.contains(point), "{point}");
        }
        let groups: Vec<&str> = POINTS.iter().filter_map(|p| p.split('.').next()).collect();
        let sources = [
            include_str!("ops/mod.rs"),
            include_str!("ops/container.rs"),
            include_str!("ops/network.rs"),
            include_str!("ops/doctor.rs"),
            include_str!("datapath/ebpf/mod.rs"),
            include_str!("datapath/ebpf/pins.rs"),
            include_str!("datapath/iptables/mod.rs"),
            include_str!("cni/commands/mod.rs"),
            include_str!("cni/commands/invocation.rs"),
            include_str!("cni/commands/add.rs"),
            include_str!("cni/commands/del.rs"),
            include_str!("cni/commands/check.rs"),
            include_str!("cni/commands/gc.rs"),
            include_str!("cni/commands/status.rs"),
            include_str!("cni/commands/port_mappings.rs"),
        ];
        // Every string literal GROUP.NAME of a command group is a point.
        for literal in sources.iter().flat_map(|s| s.split('"').skip(1).step_by(2)) {
            let Some((group, rest)) = literal.split_once('.') else {
                continue;
            };
            let name_like = rest.chars().all(|c| c.is_ascii_lowercase() || c == '.');
            if groups.contains(&group) && name_like && !rest.is_empty() {
                assert!(POINTS.contains(&literal), "{literal} is not in POINTS");
            }
        }
    }
}
