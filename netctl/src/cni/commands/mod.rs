//! The CNI commands on netctl's host: each opens the host (state lock,
//! netlink, datapath) the way a CLI command does and reuses its
//! transactions, so a failed ADD leaves the host as it was. Dispatch and
//! VERSION here; a module per other command, the invocation they share in
//! `invocation.rs`, the runtime's port mappings in `port_mappings.rs`.

mod add;
mod check;
mod del;
mod gc;
mod invocation;
mod port_mappings;
mod status;

use serde_json::{json, Value};

use super::{
    config::{Command, Env, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS},
    result::{CniError, Code},
};
use crate::{config::HostConfig, netns, ops};

pub use invocation::container_name;
use invocation::Invocation;

/// Runs the command of `env` with the configuration on stdin; returns what
/// to print on stdout.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::decode(stdin, env.command)?;
    let config = HostConfig::new(
        conf.host_netns.clone(),
        conf.state_dir.clone(),
        conf.uplink.clone(),
        conf.cgroup.clone(),
    );
    if let Some(name) = &conf.host_netns {
        // Before any thread exists, as the CLI does: everything below, the
        // delegated IPAM plugin included, runs in the host namespace.
        netns::enter_for_good(name)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::System, format!("tokio runtime: {e}")))?;
    let state_dir = config.state_dir.clone();
    let cmd = Invocation {
        env,
        conf: &conf,
        stdin,
        config,
    };
    // A DEL of an unknown attachment on a fresh host leaves no state dir.
    runtime.block_on(ops::leaving_no_trace(&state_dir, async {
        match env.command {
            Command::Add => cmd.add().await.map(Some),
            Command::Del => cmd.del().await.map(|()| None),
            Command::Check => cmd.check().await.map(|()| None),
            Command::Status => cmd.status().await.map(|()| None),
            Command::Gc => cmd.gc().await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    }))
}

/// VERSION: the versions this plugin speaks, in the requested version's
/// words (the newest when the input names none or an unknown one).
fn version(stdin: &[u8]) -> Value {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned());
    json!({"cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS})
}
