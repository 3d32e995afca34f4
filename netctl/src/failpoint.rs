//! Named points inside commands where tests inject a failure or a crash.
//!
//! `NETCTL_FAILPOINT=run.link` makes the step fail there, as a real error
//! would (the command rolls back); `NETCTL_FAILPOINT=run.link=pause` prints
//! `netctl: paused at run.link` on stderr and waits, so that a test can kill
//! the process at that exact point. Unset (always, outside tests), a check is
//! one environment lookup.

use std::time::Duration;

use crate::error::{Error, Result};

/// The variable tests set.
pub const ENV: &str = "NETCTL_FAILPOINT";

/// How long a paused netctl waits for its killer before it carries on.
const PAUSE: Duration = Duration::from_secs(30);

/// Every failpoint, in the order the commands reach them. Tests iterate this
/// list, so a new point is covered by the failure and crash tests at once.
pub const POINTS: &[&str] = &[
    // network create
    "create.host",
    "create.bridge",
    "create.network",
    // container run (and the `bridge` network it may create)
    "run.netns",
    "run.link",
    "run.endpoint",
    "run.ports",
    "run.process",
    // network connect
    "connect.link",
    "connect.endpoint",
    // the save that ends a successful command
    "commit",
    // container rm, down, network rm: steps of a teardown
    "rm.datapath",
    "rm.links",
    "rm.netns",
    "network-rm.datapath",
    // network disconnect: steps of taking an endpoint apart
    "disconnect.datapath",
    "disconnect.links",
];

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
