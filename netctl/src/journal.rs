//! The write-ahead journal that makes commands crash-safe.
//!
//! A command records how to undo each step *before* it takes the step, and
//! the record reaches the state file at once (inside the last committed
//! state, so the file always holds either the state before the command plus
//! the journal, or the state after it). A netctl killed at any point thus
//! leaves a journal behind; the next netctl that takes the lock finds it and
//! finishes the job: it undoes the steps of an interrupted command, and
//! completes the removals of an interrupted `rm`, `down`, `network rm`,
//! `network prune` or `network disconnect`. A removal of several objects
//! names them all before the first goes, and strikes each off as it is done.

use serde::{Deserialize, Serialize};

use crate::model::{DatapathKind, Endpoint, Network, PortMapping, Process};

/// One step to take back. Every undo is idempotent (absent is fine), since
/// a crash may come before the step it undoes was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "undo")]
pub enum Undo {
    HostDown,
    DeleteLink {
        name: String,
    },
    DeleteNetns {
        name: String,
    },
    NetworkDown {
        network: Network,
    },
    EndpointRemoved {
        network: Network,
        endpoint: Endpoint,
    },
    PortsUnpublished {
        network: Network,
        ports: Vec<PortMapping>,
    },
    StopProcess {
        process: Process,
    },
}

/// What an unfinished command was doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The command, for the recovery message (`container run web`).
    pub command: String,
    /// The datapath the steps were applied to (the state may not name one
    /// yet when the command was the host's first).
    pub datapath: Option<DatapathKind>,
    /// Steps of a command that had not committed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undo: Vec<Undo>,
    /// Containers being taken apart: recovery completes their removal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_containers: Vec<String>,
    /// Networks being taken apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_networks: Vec<String>,
    /// Endpoints being taken off their network (`network disconnect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_endpoints: Vec<EndpointRef>,
    /// The host itself is being taken down (`netctl down`): once the
    /// removals are done, recovery tears the datapath down too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_down: bool,
}

impl Journal {
    /// Whether anything is left to undo or to remove.
    pub fn has_work(&self) -> bool {
        !self.undo.is_empty()
            || !self.removing_containers.is_empty()
            || !self.removing_networks.is_empty()
            || !self.removing_endpoints.is_empty()
            || self.host_down
    }
}

/// A container's endpoint, by the names of the container and the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRef {
    pub container: String,
    pub network: String,
}
