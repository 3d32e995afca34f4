//! Network namespaces: create named ones (visible to `ip netns`), enter them
//! with `setns(CLONE_NEWNET)` only, delete them.
//!
//! Entering never uses `ip netns exec`: that remounts /sys and hides the
//! pins under /sys/fs/bpf. `setns` changes the calling *thread* only, which
//! is why the helpers below either restore the thread on drop or work in a
//! thread of their own.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{fd::AsFd, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

use crate::error::{Error, Result};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A name under /run/netns, or an absolute path to a namespace file that
/// another program owns (a CNI runtime's `/run/netns/X` or `/proc/PID/ns/net`).
pub fn path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_DIR).join(name)
    }
}

pub fn exists(name: &str) -> bool {
    // A bind mount of an nsfs inode; a plain file left by a crash is not a namespace.
    is_namespace(&path(name))
}

fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that
/// namespaces mounted there are seen by every mount namespace.
fn prepare_netns_dir() -> Result<()> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(|e| Error::io(NETNS_DIR, e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::system(NETNS_DIR, format!("bind mount: {e}")))?;
            shared().map_err(|e| Error::system(NETNS_DIR, format!("make shared: {e}")))
        }
        Err(e) => Err(Error::system(NETNS_DIR, format!("make shared: {e}"))),
    }
}

/// Creates the named namespace with `lo` down (the caller brings it up).
pub fn create(name: &str) -> Result<()> {
    let object = || format!("netns {name}");
    prepare_netns_dir()?;
    let target = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&target)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::invalid(object(), "already exists"),
            _ => Error::io(object(), e),
        })?;
    // unshare() in a thread of its own: the new namespace lives as long as the
    // bind mount, and this process's threads stay where they were.
    let bind_target = target.clone();
    let result = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &bind_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .expect("netns thread panicked");
    if let Err(e) = result {
        let _ = fs::remove_file(&target);
        return Err(Error::system(object(), format!("create: {e}")));
    }
    Ok(())
}

/// Deletes the named namespace; absent is not an error. Links inside go
/// with it once no process holds it.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::system(
                format!("netns {name}"),
                format!("unmount: {e}"),
            ))
        }
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("netns {name}"), e)),
    }
}

/// Opens a namespace file for `setns` or for moving a link into it.
pub fn open(name: &str) -> Result<File> {
    let target = path(name);
    if !is_namespace(&target) {
        return Err(Error::not_found("netns", name));
    }
    File::open(&target).map_err(|e| Error::io(format!("netns {name}"), e))
}

/// The calling thread is inside a namespace until this guard drops, then
/// back where it was.
pub struct NetnsGuard {
    previous: File,
}

impl NetnsGuard {
    pub fn enter(name: &str) -> Result<Self> {
        let target = open(name)?;
        Self::enter_file(&target, name)
    }

    pub fn enter_file(target: &File, what: &str) -> Result<Self> {
        let previous = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("netns of this thread", e))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::system(format!("netns {what}"), format!("setns: {e}")))?;
        Ok(NetnsGuard { previous })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Cannot fail for a namespace we were in a moment ago; if it did, the
        // thread would act in the wrong namespace, so stop rather than go on.
        setns(self.previous.as_fd(), CloneFlags::CLONE_NEWNET)
            .expect("setns back to the previous network namespace");
    }
}

/// Moves the calling thread into a namespace for good (used once at start-up
/// for `--host-netns`).
pub fn enter_for_good(name: &str) -> Result<()> {
    let target = open(name)?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::system(format!("netns {name}"), format!("setns: {e}")))
}

/// Writes a sysctl of the namespace the calling thread is in
/// (`/proc/sys/net` resolves to the writer's namespace).
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&file, value).map_err(|e| Error::io(format!("sysctl {key}"), e))
}

/// Turns IPv6 off in the namespace the calling thread is in: on one link
/// (`Some(name)`), or on the whole namespace (`None`: `all`, which also
/// clears the links already there, and `default`, which links made or moved
/// in later start with). Written by path, not by dotted key, since a link
/// name may hold a dot. A kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(link: Option<&str>) -> Result<()> {
    // One path walk from /proc/sys, then the files relative to the dir: the
    // kernel keeps one dentry a namespace for each per-namespace sysctl
    // dir under a shared parent, so every walk from /proc/sys compares
    // against all of them (a measurable part of a command at 1,000
    // containers: `perf` shows `proc_sys_compare` under the walks).
    let conf = match File::open("/proc/sys/net/ipv6/conf") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("sysctl net.ipv6.conf", e)),
    };
    let names = match link {
        Some(name) => vec![name],
        None => vec!["all", "default"],
    };
    for name in names {
        let object = || format!("sysctl net.ipv6.conf.{name}.disable_ipv6");
        let file = Path::new(name).join("disable_ipv6");
        let fd = nix::fcntl::openat(
            &conf,
            &file,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::io(object(), e.into()))?;
        File::from(fd)
            .write_all(b"1")
            .map_err(|e| Error::io(object(), e))?;
    }
    Ok(())
}

/// Turns IPv6 on for a link netctl gives IPv6 addresses itself (the bridge
/// of a dual-stack network, a container's interface on it), in the
/// namespace the calling thread is in: router advertisements are ignored
/// (`accept_ra=0`), duplicate address detection is off (`accept_dad=0`:
/// netctl's IPAM already makes the addresses unique, and a tentative
/// address would hold traffic back for a second). A container's link
/// gets no link-local address (`link_local: false`, `addr_gen_mode=1`):
/// its neighbour discovery then speaks from the address netctl assigned,
/// the only one anti-spoofing lets it send from, and it can neither send
/// nor solicit router advertisements, which need link-local sources. The
/// bridge keeps its own (`link_local: true`): the host solicits a
/// container's address from it when it forwards a packet whose source is
/// not the host's (a published port's), and without one the kernel sends
/// no solicitation at all. All set before `disable_ipv6=0`, so the link
/// never runs with the defaults.
pub fn enable_ipv6(link: &str, link_local: bool) -> Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf").join(link);
    let addr_gen_mode = if link_local { "0" } else { "1" };
    for (key, value) in [
        ("accept_ra", "0"),
        ("accept_dad", "0"),
        ("addr_gen_mode", addr_gen_mode),
        ("disable_ipv6", "0"),
    ] {
        fs::write(conf.join(key), value)
            .map_err(|e| Error::io(format!("sysctl net.ipv6.conf.{link}.{key}"), e))?;
    }
    Ok(())
}

pub fn read_sysctl(key: &str) -> Result<String> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::io(format!("sysctl {key}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_delete() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let name = format!("nctest-ns-{}", std::process::id());
        create(&name).unwrap();
        assert!(exists(&name));
        assert!(matches!(create(&name), Err(Error::Invalid { .. })));
        let ours = fs::read_link("/proc/thread-self/ns/net").unwrap();
        {
            let _guard = NetnsGuard::enter(&name).unwrap();
            assert_ne!(fs::read_link("/proc/thread-self/ns/net").unwrap(), ours);
            // A fresh namespace: forwarding off, whatever the root's is.
            assert_eq!(read_sysctl("net.ipv4.ip_forward").unwrap(), "0");
        }
        assert_eq!(fs::read_link("/proc/thread-self/ns/net").unwrap(), ours);
        delete(&name).unwrap();
        assert!(!exists(&name));
        assert!(!path(&name).exists());
        delete(&name).unwrap();
        assert!(matches!(open(&name), Err(Error::NotFound { .. })));
    }
}
