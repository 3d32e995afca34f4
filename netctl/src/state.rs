//! Persisted state: networks, containers, their endpoints and published
//! ports. One JSON file under the state dir, read and written under an
//! exclusive `flock`, replaced atomically (write, fsync, rename).

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    journal::Journal,
};

/// Which datapath moves the packets of a host. The first network fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    Iptables,
    Ebpf,
}

impl std::fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatapathKind::Iptables => "iptables",
            DatapathKind::Ebpf => "ebpf",
        })
    }
}

/// A bridge network: one Linux bridge in the host namespace, one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// Small stable number, unique on the host (used as a key by the eBPF maps).
    pub id: u32,
    /// Bridge interface in the host namespace.
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Address of the bridge, the containers' default gateway.
    pub gateway: Ipv4Addr,
    /// No way out: no SNAT, no published ports, no traffic to other networks.
    pub internal: bool,
    /// Peers reach each other by name (user-defined networks; not `bridge`).
    pub dns: bool,
    /// Seconds since the epoch.
    pub created: u64,
    /// MTU of the veth pairs of its endpoints (`None`: the kernel's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// How a container is networked (Docker's `--network` modes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "target")]
pub enum NetworkMode {
    /// Own namespace, attached to one or more bridge networks.
    Bridge,
    /// The host's own namespace.
    Host,
    /// Own namespace with only `lo`.
    None,
    /// The namespace of another container.
    Container(String),
}

/// A container's interface on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// Interface name inside the container (eth0, eth1, ...).
    pub ifname: String,
    /// Host-side end of the veth pair, enslaved to the network's bridge.
    pub host_veth: String,
    pub ip: Ipv4Addr,
    /// MAC of the container side, "02:42:ac:12:00:02" style.
    pub mac: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port: host `[ip:]port/proto` → container `ip:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    /// `None` publishes on every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub container: String,
    /// Network whose endpoint receives the traffic.
    pub network: String,
}

impl PortMapping {
    /// `0.0.0.0:8080->80/tcp`, as `docker port` prints it.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
            self.container_port,
            self.protocol
        )
    }

    /// Two mappings collide when they share protocol and host port and
    /// their host addresses overlap (`None` overlaps everything).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// A detached command started by `container run NAME -- CMD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat), so a
    /// recycled pid is never mistaken for ours.
    pub start_time: u64,
    pub command: Vec<String>,
    pub log: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub mode: NetworkMode,
    /// Name of its namespace under /run/netns (`None` in host mode).
    pub netns: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<PortMapping>,
    pub process: Option<Process>,
    pub created: u64,
    /// Set when a container runtime made this container through the CNI
    /// plugin: the runtime owns its namespace, netctl never deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// What identifies a CNI attachment to the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// `CNI_CONTAINERID`, whole.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the namespace.
    pub ifname: String,
    /// `CNI_NETNS`: path of the runtime's namespace.
    pub netns: String,
    /// `name` of the network configuration (GC is per configuration).
    pub network: String,
}

impl Container {
    pub fn endpoint(&self, network: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.network == network)
    }
}

/// Everything netctl knows about one host namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Fixed by the first network; `None` while there is none.
    pub datapath: Option<DatapathKind>,
    pub networks: BTreeMap<String, Network>,
    pub containers: BTreeMap<String, Container>,
    /// Left by a command that did not finish (see journal.rs); the next
    /// netctl completes or undoes it before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<Journal>,
}

pub const STATE_VERSION: u32 = 1;

impl State {
    pub fn network(&self, name: &str) -> Result<&Network> {
        self.networks
            .get(name)
            .ok_or_else(|| Error::not_found("network", name))
    }

    pub fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .get(name)
            .ok_or_else(|| Error::not_found("container", name))
    }

    /// Containers with an endpoint on `network`.
    pub fn members<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers
            .values()
            .filter(move |c| c.endpoint(network).is_some())
    }

    /// Every published port of the host.
    pub fn ports(&self) -> impl Iterator<Item = &PortMapping> {
        self.containers.values().flat_map(|c| c.ports.iter())
    }

    /// Lowest network id not in use.
    pub fn next_network_id(&self) -> u32 {
        let used: std::collections::BTreeSet<u32> = self.networks.values().map(|n| n.id).collect();
        (1..)
            .find(|id| !used.contains(id))
            .expect("fewer than u32::MAX networks")
    }
}

/// The state dir, locked for the life of this value.
pub struct StateDir {
    path: PathBuf,
    _lock: Flock<File>,
}

const STATE_FILE: &str = "state.json";

/// Removes a state dir in which nothing was ever saved: a command that
/// failed, or only read, on a fresh host leaves no trace.
pub fn remove_if_unused(path: &Path) {
    if !path.join(STATE_FILE).exists() {
        let _ = fs::remove_file(path.join(LOCK_FILE));
        let _ = fs::remove_dir(path);
    }
}
const LOCK_FILE: &str = "lock";

impl StateDir {
    /// Creates the dir (0700) if needed and takes the exclusive lock, waiting
    /// for any other netctl working on the same host.
    pub fn lock(path: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(format!("state dir {}", path.display()), e))?;
        let lock_path = path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("lock {}", lock_path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::system(format!("lock {}", lock_path.display()), e))?;
        // `down` removes the dir, lock file included, while others may be
        // waiting on that file: a lock on a file no longer at its path
        // protects nothing, so take the lock again on the new one.
        let same_file = match (lock.metadata(), fs::metadata(&lock_path)) {
            (Ok(held), Ok(current)) => held.ino() == current.ino() && held.dev() == current.dev(),
            _ => false,
        };
        if !same_file {
            drop(lock);
            return Self::lock(path);
        }
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; an absent file is an empty state.
    pub fn load(&self) -> Result<State> {
        let file = self.path.join(STATE_FILE);
        match fs::read(&file) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::system(format!("state {}", file.display()), e))?;
                if state.version > STATE_VERSION {
                    return Err(Error::system(
                        format!("state {}", file.display()),
                        format!("written by a newer netctl (version {})", state.version),
                    ));
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: STATE_VERSION,
                ..State::default()
            }),
            Err(e) => Err(Error::io(format!("state {}", file.display()), e)),
        }
    }

    pub fn has_state_file(&self) -> bool {
        self.path.join(STATE_FILE).exists()
    }

    /// Deletes the state file only (a fresh host's first command failed
    /// after writing its journal).
    pub fn remove_state_file(&self) -> Result<()> {
        let file = self.path.join(STATE_FILE);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("state {}", file.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the state dir and everything in it.
    pub fn remove(&self) -> Result<()> {
        fs::remove_dir_all(&self.path)
            .map_err(|e| Error::io(format!("state dir {}", self.path.display()), e))?;
        // /run/netctl, the parent of derived state dirs, goes with the last one.
        if let Some(parent) = self.path.parent().filter(|p| p.ends_with("netctl")) {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Replaces the state file atomically: a crash leaves the old or the new
    /// state, never a torn one.
    pub fn save(&self, state: &State) -> Result<()> {
        self.write(state, true)
    }

    /// Writes the last committed state with the journal of the command under
    /// way. Not synced to disk: it guards against a killed process, whose
    /// writes the page cache keeps; after a power loss the links and
    /// namespaces it describes are gone anyway.
    pub fn save_journal(&self, committed: &State, journal: &Journal) -> Result<()> {
        let mut state = committed.clone();
        state.journal = Some(journal.clone());
        self.write(&state, false)
    }

    fn write(&self, state: &State, sync: bool) -> Result<()> {
        let file = self.path.join(STATE_FILE);
        let tmp = self.path.join(format!("{STATE_FILE}.tmp"));
        let object = || format!("state {}", file.display());
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::system(object(), e))?;
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(object(), e))?;
        out.write_all(&bytes).map_err(|e| Error::io(object(), e))?;
        if sync {
            out.sync_all().map_err(|e| Error::io(object(), e))?;
        }
        fs::rename(&tmp, &file).map_err(|e| Error::io(object(), e))?;
        if sync {
            File::open(&self.path)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(object(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_ip: Option<Ipv4Addr>, port: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            protocol,
            host_ip,
            host_port: port,
            container_ip: Ipv4Addr::new(172, 18, 0, 2),
            container_port: 80,
            container: "web".into(),
            network: "front".into(),
        }
    }

    #[test]
    fn port_conflicts_follow_address_overlap() {
        let any = mapping(None, 8080, Protocol::Tcp);
        let local = mapping(Some(Ipv4Addr::LOCALHOST), 8080, Protocol::Tcp);
        let other = mapping(Some(Ipv4Addr::new(198, 51, 100, 1)), 8080, Protocol::Tcp);
        assert!(any.conflicts_with(&local));
        assert!(local.conflicts_with(&any));
        assert!(!local.conflicts_with(&other));
        assert!(!any.conflicts_with(&mapping(None, 8080, Protocol::Udp)));
        assert!(!any.conflicts_with(&mapping(None, 8081, Protocol::Tcp)));
    }

    #[test]
    fn state_round_trips_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("netctl-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut state = State {
            version: STATE_VERSION,
            ..State::default()
        };
        state.datapath = Some(DatapathKind::Iptables);
        state.networks.insert(
            "front".into(),
            Network {
                name: "front".into(),
                id: state.next_network_id(),
                bridge: "nc-front".into(),
                subnet: "172.18.0.0/16".parse().unwrap(),
                gateway: Ipv4Addr::new(172, 18, 0, 1),
                internal: false,
                dns: true,
                created: 1,
                mtu: None,
            },
        );
        state.containers.insert(
            "web".into(),
            Container {
                name: "web".into(),
                mode: NetworkMode::Container("db".into()),
                netns: Some("x-web".into()),
                endpoints: vec![],
                ports: vec![mapping(None, 8080, Protocol::Udp)],
                process: None,
                created: 2,
                cni: None,
            },
        );
        {
            let locked = StateDir::lock(&dir).unwrap();
            assert_eq!(locked.load().unwrap().networks.len(), 0);
            locked.save(&state).unwrap();
        }
        let locked = StateDir::lock(&dir).unwrap();
        assert_eq!(locked.load().unwrap(), state);
        assert_eq!(state.next_network_id(), 2);
        let mode = fs::metadata(dir.join(STATE_FILE)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(!dir.join("state.json.tmp").exists());
        drop(locked);
        fs::remove_dir_all(&dir).unwrap();
    }
}
