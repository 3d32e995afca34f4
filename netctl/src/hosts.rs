//! A container's own name files: `/etc/netns/NETNS/hosts` (localhost and
//! its own names) and `/etc/netns/NETNS/resolv.conf` (see
//! `resolver::conf`), the places `ip netns exec` bind-mounts over
//! /etc/hosts and /etc/resolv.conf; `netctl exec` and a container's command
//! get them the same way.
//!
//! Peers' names are not in these files: the network's resolver answers them
//! from the state (resolver/), so adding or removing a container writes its
//! own two files and nobody else's. A command writes the files of the
//! containers it made or changed, compared with the state it started from.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    config::HostConfig,
    error::{Error, Result},
    model::Container,
    resolver::conf,
    state::State,
};

pub const ETC_NETNS: &str = "/etc/netns";

pub fn dir(netns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns)
}

pub fn file(netns: &str) -> PathBuf {
    dir(netns).join("hosts")
}

pub fn resolv_conf(netns: &str) -> PathBuf {
    dir(netns).join("resolv.conf")
}

/// `--hostname`, for the processes netctl starts in the container (`ip
/// netns` has no such convention).
pub fn hostname_file(netns: &str) -> PathBuf {
    dir(netns).join("hostname")
}

/// The namespace whose files are this container's to write: its own
/// (container:OTHER shares OTHER's; a CNI runtime owns its containers'
/// /etc files; host mode has none).
fn own_netns(ctr: &Container) -> Option<&str> {
    ctr.netns.as_deref().filter(|_| ctr.owns_netns())
}

/// localhost, then each of its addresses with its hostname and name.
pub fn render_hosts(ctr: &Container) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut names = Vec::new();
    if let Some(hostname) = &ctr.naming.hostname {
        names.push(hostname.as_str());
    }
    if !names.contains(&ctr.name.as_str()) {
        names.push(&ctr.name);
    }
    let mut seen = Vec::new();
    for ep in &ctr.endpoints {
        // Both families of a dual-stack endpoint.
        let ips = std::iter::once(std::net::IpAddr::V4(ep.ip)).chain(ep.ip6.map(Into::into));
        for ip in ips {
            if !seen.contains(&ip) {
                seen.push(ip);
                text.push_str(&format!("{ip}\t{}\n", names.join(" ")));
            }
        }
    }
    text
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("file {}", path.display()), e))
}

/// Writes a container's hosts file and resolv.conf. Without a usable
/// resolver no resolv.conf is written (an old one is removed): `container
/// inspect` says why instead.
pub fn write(state: &State, ctr: &Container, host: &(PathBuf, conf::ResolvConf)) -> Result<()> {
    let Some(netns) = own_netns(ctr) else {
        return Ok(());
    };
    fs::create_dir_all(dir(netns))
        .map_err(|e| Error::io(format!("dir {}", dir(netns).display()), e))?;
    write_atomic(&file(netns), &render_hosts(ctr))?;
    if let Some(hostname) = &ctr.naming.hostname {
        write_atomic(&hostname_file(netns), &format!("{hostname}\n"))?;
    }
    match conf::for_container(state, ctr, &host.1, &host.0) {
        Ok(resolv) => write_atomic(&resolv_conf(netns), &conf::render(&resolv)),
        Err(_) => match fs::remove_file(resolv_conf(netns)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
                format!("file {}", resolv_conf(netns).display()),
                e,
            )),
            _ => Ok(()),
        },
    }
}

/// Writes the files of every container of `new` that `old` does not hold
/// as it is (made, connected, disconnected): O(1) files per container a
/// command changes, whatever the number of containers.
pub fn sync(config: &HostConfig, old: &State, new: &State) -> Result<()> {
    let changed: Vec<&Container> = new
        .containers
        .values()
        .filter(|c| own_netns(c).is_some())
        .filter(|c| old.containers.get(&c.name) != Some(*c))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let host = conf::read_host(config);
    let errors: Vec<Error> = changed
        .into_iter()
        .filter_map(|c| write(new, c, &host).err())
        .collect();
    Error::collect(errors)
}

/// Writes the files of every container (`doctor --fix`).
pub fn write_all(config: &HostConfig, state: &State) -> Result<()> {
    let host = conf::read_host(config);
    let errors: Vec<Error> = state
        .containers
        .values()
        .filter_map(|c| write(state, c, &host).err())
        .collect();
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
