//! The persisted state of a host: the model (model.rs) of its networks and
//! containers plus the journal of a command under way (journal.rs). One
//! JSON file under the state dir, read and written under an exclusive
//! `flock`, replaced atomically (write, fsync, rename) at each commit.
//!
//! A command's journal records are appended to a small file of their own
//! beside it (`journal.json`, one line a record), each naming the
//! generation of the state file it belongs to: rewriting the whole state
//! for each step cost a command several writes of a file that grows with
//! the host (340 KB at 1,000 containers). A commit writes the state with
//! the next generation, which makes the journal stale in the same rename;
//! a stale one is ignored, and removed.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    journal::Journal,
    model::{Container, DatapathKind, Network, PortMapping},
};

/// Everything netctl knows about one host namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Fixed by the first network; `None` while there is none.
    pub datapath: Option<DatapathKind>,
    pub networks: BTreeMap<String, Network>,
    pub containers: BTreeMap<String, Container>,
    /// How many times the file was saved: the journal file belongs to the
    /// state of the same generation only (absent in files of netctl
    /// versions before it, which is generation 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// Left by a command that did not finish (see journal.rs); the next
    /// netctl completes or undoes it before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<Journal>,
}

pub const STATE_VERSION: u32 = 1;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The journal file: the journal of the command under way, valid for the
/// state file of `generation` only (`J`: the journal, or a reference to
/// it when writing).
#[derive(Serialize, Deserialize)]
struct JournalFile<J> {
    generation: u64,
    journal: J,
}

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

pub const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "journal.json";

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
        let file = lock_file(&lock_path)?;
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
                let mut state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::system(format!("state {}", file.display()), e))?;
                if state.version > STATE_VERSION {
                    return Err(Error::system(
                        format!("state {}", file.display()),
                        format!("written by a newer netctl (version {})", state.version),
                    ));
                }
                // Newer than the journal inside the state (written after
                // that state was), when it belongs to it.
                if let Some(current) = self
                    .read_journal_file()?
                    .filter(|j| j.generation == state.generation)
                {
                    state.journal = Some(current.journal);
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
    /// after writing its journal), and a journal file with it.
    pub fn remove_state_file(&self) -> Result<()> {
        let file = self.path.join(STATE_FILE);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("state {}", file.display()), e))
            }
            _ => self.remove_journal_file(),
        }
    }

    /// The last record of the journal file, if any (stale or not). A line
    /// cut short (a netctl killed while appending it) is no record: its
    /// step was not taken yet.
    fn read_journal_file(&self) -> Result<Option<JournalFile<Journal>>> {
        let file = self.path.join(JOURNAL_FILE);
        match fs::read(&file) {
            Ok(bytes) => Ok(bytes
                .split(|b| *b == b'\n')
                .rev()
                .find_map(|line| serde_json::from_slice(line).ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("journal {}", file.display()), e)),
        }
    }

    fn remove_journal_file(&self) -> Result<()> {
        let file = self.path.join(JOURNAL_FILE);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("journal {}", file.display()), e))
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
    /// state, never a torn one. The state is saved as the next generation
    /// (`state.generation` is advanced), which leaves any journal file
    /// stale: it is removed.
    pub fn save(&self, state: &mut State) -> Result<()> {
        state.generation += 1;
        if let Err(e) = self.write(STATE_FILE, "state", state, true) {
            // Not renamed: the file keeps the generation the journal names.
            state.generation -= 1;
            return Err(e);
        }
        // The rename made it durable once the directory is synced.
        let synced = File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("state dir {}", self.path.display()), e));
        // Stale from the rename on; a leftover one would be ignored.
        synced.and(self.remove_journal_file())
    }

    /// Records the journal of the command under way for the last committed
    /// state. Not synced to disk: it guards against a killed process, whose
    /// writes the page cache keeps; after a power loss the links and
    /// namespaces it describes are gone anyway. A host without a state file
    /// yet gets one (the empty state with the journal inside), so that a
    /// state dir holding a journal always has its state file.
    pub fn save_journal(
        &self,
        committed: &State,
        had_state_file: bool,
        journal: &Journal,
    ) -> Result<()> {
        if !had_state_file {
            let mut state = committed.clone();
            state.journal = Some(journal.clone());
            return self.write(STATE_FILE, "state", &state, false);
        }
        let record = JournalFile {
            generation: committed.generation,
            journal,
        };
        // One line a record, appended: no block of the file is freed and
        // none written twice (a rename per record had the filesystem
        // discard the old file's blocks each time). A record is the whole
        // journal; the last whole line wins.
        let file = self.path.join(JOURNAL_FILE);
        let object = || format!("journal {}", file.display());
        let mut line = serde_json::to_vec(&record).map_err(|e| Error::system(object(), e))?;
        line.push(b'\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut out| out.write_all(&line))
            .map_err(|e| Error::io(object(), e))
    }

    /// Writes `value` to `name` through a temporary file and a rename (the
    /// last step: on error the file is as it was), the data synced first
    /// when `sync`.
    fn write(&self, name: &str, what: &str, value: &impl Serialize, sync: bool) -> Result<()> {
        let file = self.path.join(name);
        let tmp = self.path.join(format!("{name}.tmp"));
        let object = || format!("{what} {}", file.display());
        // Compact: a third smaller than pretty-printed at 1,000 containers,
        // and every command writes it whole; `jq` prints it for a reader.
        let bytes = serde_json::to_vec(value).map_err(|e| Error::system(object(), e))?;
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
        fs::rename(&tmp, &file).map_err(|e| Error::io(object(), e))
    }
}

/// Opens (or makes) the file a lock is taken on, owner-only.
pub fn lock_file(path: &Path) -> Result<fs::File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("lock {}", path.display()), e))
}

/// Inode, size and mtime: the identity that says a file changed.
pub type Stamp = Option<(u64, u64, i64, i64)>;

/// The identity of the file at `path` (the state's, the host's
/// resolv.conf) that says it changed.
pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Reads a state file without the lock (the resolver, `netctl trace`):
/// every save replaces the file atomically, so a reader sees one whole
/// state; an absent file is an empty state.
pub fn read_snapshot(file: &Path) -> Result<State> {
    match fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::system(format!("state {}", file.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(Error::io(format!("state {}", file.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{NetworkMode, Protocol};

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
                ipv6: None,
            },
        );
        state.containers.insert(
            "web".into(),
            Container {
                name: "web".into(),
                mode: NetworkMode::Container("db".into()),
                netns: Some("x-web".into()),
                endpoints: vec![],
                ports: vec![PortMapping {
                    protocol: Protocol::Udp,
                    host_ip: None,
                    host_port: 8080,
                    container_ip: Ipv4Addr::new(172, 18, 0, 2),
                    container_ip6: None,
                    container_port: 80,
                    container: "web".into(),
                    network: "front".into(),
                }],
                process: None,
                created: 2,
                cni: None,
                docker: None,
                naming: crate::model::Naming::default(),
            },
        );
        {
            let locked = StateDir::lock(&dir).unwrap();
            assert_eq!(locked.load().unwrap().networks.len(), 0);
            locked.save(&mut state).unwrap();
        }
        let locked = StateDir::lock(&dir).unwrap();
        assert_eq!(locked.load().unwrap(), state);
        assert_eq!(state.generation, 1);
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

    /// A journal record reaches the journal file, not the state file, and
    /// is read back with the state it belongs to; the next save makes it
    /// stale (removed, and ignored if it were left).
    #[test]
    fn the_journal_file_belongs_to_one_generation() {
        let dir = std::env::temp_dir().join(format!("netctl-journal-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let locked = StateDir::lock(&dir).unwrap();
        let mut committed = locked.load().unwrap();
        let journal = Journal {
            command: "container run web".into(),
            undo: vec![crate::journal::Undo::DeleteNetns { name: "x".into() }],
            ..Journal::default()
        };
        // A fresh host: the journal goes inside a state file made for it.
        locked.save_journal(&committed, false, &journal).unwrap();
        assert_eq!(locked.load().unwrap().journal.as_ref(), Some(&journal));
        assert!(!dir.join(JOURNAL_FILE).exists());
        locked.save(&mut committed).unwrap();
        assert_eq!(locked.load().unwrap().journal, None);
        let before = fs::read(dir.join(STATE_FILE)).unwrap();
        locked.save_journal(&committed, true, &journal).unwrap();
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), before);
        assert_eq!(locked.load().unwrap().journal.as_ref(), Some(&journal));
        // Committed: the journal is gone with the new generation.
        let stale = fs::read(dir.join(JOURNAL_FILE)).unwrap();
        locked.save(&mut committed).unwrap();
        assert!(!dir.join(JOURNAL_FILE).exists());
        assert_eq!(locked.load().unwrap().journal, None);
        // A journal file left from before the commit (a crash between the
        // rename and the removal) names an older generation: ignored.
        fs::write(dir.join(JOURNAL_FILE), &stale).unwrap();
        assert_eq!(locked.load().unwrap().journal, None);
        // Records are appended, the last whole one wins; a line cut short
        // is none.
        let later = Journal {
            undo: vec![],
            ..journal.clone()
        };
        locked.save_journal(&committed, true, &journal).unwrap();
        locked.save_journal(&committed, true, &later).unwrap();
        assert_eq!(locked.load().unwrap().journal.as_ref(), Some(&later));
        let mut torn = fs::read(dir.join(JOURNAL_FILE)).unwrap();
        torn.extend_from_slice(&stale[..stale.len() / 2]);
        fs::write(dir.join(JOURNAL_FILE), torn).unwrap();
        assert_eq!(locked.load().unwrap().journal.as_ref(), Some(&later));
        drop(locked);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A state file as netctl writes it (a container with an endpoint and a
    /// port, a journal of each kind): it loads, and is written back byte
    /// for byte, so files of earlier versions keep loading.
    #[test]
    fn the_state_file_format_holds() {
        let file = r#"{
  "version": 1,
  "datapath": "ebpf",
  "networks": {
    "front": {
      "name": "front",
      "id": 1,
      "bridge": "nc-front",
      "subnet": "172.18.0.0/16",
      "gateway": "172.18.0.1",
      "internal": false,
      "dns": true,
      "created": 1700000000,
      "mtu": 1400
    }
  },
  "containers": {
    "web": {
      "name": "web",
      "mode": {
        "mode": "bridge"
      },
      "netns": "netctl-web",
      "endpoints": [
        {
          "network": "front",
          "ifname": "eth0",
          "host_veth": "ve1a2b3c4d",
          "ip": "172.18.0.2",
          "mac": "02:42:ac:12:00:02"
        }
      ],
      "ports": [
        {
          "protocol": "tcp",
          "host_ip": null,
          "host_port": 8080,
          "container_ip": "172.18.0.2",
          "container_port": 80,
          "container": "web",
          "network": "front"
        }
      ],
      "process": null,
      "created": 1700000001
    }
  },
  "journal": {
    "command": "network disconnect front web",
    "datapath": "ebpf",
    "undo": [
      {
        "undo": "delete_link",
        "name": "ve1a2b3c4d"
      }
    ],
    "removing_containers": [
      "db"
    ],
    "removing_networks": [
      "back"
    ],
    "removing_endpoints": [
      {
        "container": "web",
        "network": "front"
      }
    ]
  }
}"#;
        let state: State = serde_json::from_str(file).unwrap();
        let endpoint = &state.containers["web"].endpoints[0];
        assert_eq!(endpoint.mac, crate::model::Mac::for_ip(endpoint.ip));
        assert_eq!(serde_json::to_string_pretty(&state).unwrap(), file);
    }
}
