//! Where netctl acts: the host namespace and the paths derived from it.

use std::path::PathBuf;

/// The global options, resolved.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Named host namespace (`--host-netns`), or `None` for the root namespace.
    pub host_netns: Option<String>,
    pub state_dir: PathBuf,
    /// Uplink interface (`--uplink`), or `None` for the default route's.
    pub uplink: Option<String>,
    /// cgroup v2 directory for the host-side programs (`--cgroup`).
    pub cgroup: PathBuf,
}

/// Default cgroup v2 root on this kind of host (hybrid layout mounts it here;
/// a unified layout at /sys/fs/cgroup).
pub fn default_cgroup() -> PathBuf {
    let hybrid = PathBuf::from("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

impl HostConfig {
    pub fn new(
        host_netns: Option<String>,
        state_dir: Option<PathBuf>,
        uplink: Option<String>,
        cgroup: Option<PathBuf>,
    ) -> Self {
        let state_dir = state_dir.unwrap_or_else(|| match &host_netns {
            Some(name) => PathBuf::from("/run/netctl").join(name),
            None => PathBuf::from("/var/lib/netctl"),
        });
        HostConfig {
            host_netns,
            state_dir,
            uplink,
            cgroup: cgroup.unwrap_or_else(default_cgroup),
        }
    }

    /// Short id of the host, used in pin paths and namespace names.
    pub fn host_id(&self) -> &str {
        self.host_netns.as_deref().unwrap_or("netctl")
    }

    /// Where the eBPF datapath pins its maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/netctl").join(self.host_id())
    }

    /// Name of a container's namespace under /run/netns: prefixed with the
    /// host id so that sandboxes never collide.
    pub fn container_netns(&self, container: &str) -> String {
        format!("{}-{}", self.host_id(), container)
    }
}
