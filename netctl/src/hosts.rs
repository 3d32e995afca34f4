//! Reach by name: each container namespace gets a hosts file listing its
//! peers on user-defined networks.
//!
//! The file lives at /etc/netns/NETNS/hosts, the place `ip netns exec`
//! bind-mounts over /etc/hosts; `netctl exec` mounts it the same way, so
//! names resolve for processes started either way. Files are derived from
//! the state and rewritten whole after every change.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    model::NetworkMode,
    state::State,
};

pub const ETC_NETNS: &str = "/etc/netns";

pub fn dir(netns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns)
}

pub fn file(netns: &str) -> PathBuf {
    dir(netns).join("hosts")
}

/// The hosts file of every container namespace, by namespace name.
pub fn render_all(state: &State) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for container in state.containers.values() {
        let Some(netns) = &container.netns else {
            continue;
        };
        // container:OTHER shares OTHER's namespace and so its file.
        if let NetworkMode::Container(_) = container.mode {
            continue;
        }
        // A CNI runtime owns its containers' /etc/hosts.
        if container.cni.is_some() {
            continue;
        }
        let mut entries: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for ep in &container.endpoints {
            let Some(net) = state.networks.get(&ep.network) else {
                continue;
            };
            entries.entry(container.name.clone()).or_insert(ep.ip);
            if !net.dns {
                continue;
            }
            for peer in state.members(&net.name) {
                if let Some(peer_ep) = peer.endpoint(&net.name) {
                    entries.entry(peer.name.clone()).or_insert(peer_ep.ip);
                    // Containers sharing the peer's namespace answer on it too.
                    for sharer in state.containers.values() {
                        if sharer.mode == NetworkMode::Container(peer.name.clone()) {
                            entries.entry(sharer.name.clone()).or_insert(peer_ep.ip);
                        }
                    }
                }
            }
        }
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for (name, ip) in &entries {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        files.insert(netns.clone(), text);
    }
    files
}

/// Writes the hosts file of every container namespace of the state, and
/// removes those of namespaces in `removed`.
pub fn refresh(state: &State, removed: &[String]) -> Result<()> {
    let mut errors = Vec::new();
    for (netns, text) in render_all(state) {
        let path = file(&netns);
        let written = fs::create_dir_all(dir(&netns))
            .and_then(|()| fs::write(path.with_extension("tmp"), text))
            .and_then(|()| fs::rename(path.with_extension("tmp"), &path));
        if let Err(e) = written {
            errors.push(Error::io(format!("hosts file {}", path.display()), e));
        }
    }
    for netns in removed {
        if let Err(e) = remove(netns) {
            errors.push(e);
        }
    }
    Error::collect(errors)
}

pub fn remove(netns: &str) -> Result<()> {
    match fs::remove_dir_all(dir(netns)) {
        Ok(()) => {
            // /etc/netns itself goes when the last one does (best effort: it
            // may hold other tools' files, and then it stays).
            let _ = fs::remove_dir(ETC_NETNS);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("hosts dir {}", dir(netns).display()), e)),
    }
}
