//! The eBPF datapath's own tables behind `netctl conntrack`, `stats` and
//! `trace`. They read and edit the pinned maps directly, outside any
//! transaction; the host only says where the pins are, and refuses when
//! its datapath is not eBPF.

use std::{io::Write, path::PathBuf};

use netctl_common::stats::Counter;

use super::Host;
use crate::{
    datapath::ebpf::{self, Flow},
    error::{Error, Result},
    model::DatapathKind,
};

impl Host {
    /// The pin directory of a host whose datapath is eBPF, or why there is
    /// none; `what` names the command in the error.
    fn ebpf_pins(&self, what: &str) -> Result<PathBuf> {
        match self.state.datapath {
            Some(DatapathKind::Ebpf) => {
                let pins = self.config.pin_dir();
                // Maps of another layout would be misread.
                ebpf::check_layouts(&pins)?;
                Ok(pins)
            }
            Some(DatapathKind::Iptables) => Err(Error::invalid(
                what,
                "this host uses the iptables datapath (its flows: `conntrack -L` in the host namespace)",
            )),
            None => Err(Error::invalid(
                what,
                "no datapath on this host yet (create a network first)",
            )),
        }
    }

    /// This build's versions, and those of the eBPF datapath loaded on this
    /// host (`None`: none is, or the host uses iptables).
    pub fn versions(&self) -> Result<(ebpf::Versions, Option<ebpf::Versions>)> {
        let loaded = match self.state.datapath {
            Some(DatapathKind::Ebpf) => ebpf::loaded_versions(&self.config.pin_dir())?,
            _ => None,
        };
        Ok((ebpf::binary_versions(), loaded))
    }

    /// The tracked flows, one entry per direction.
    pub fn conntrack_list(&self) -> Result<Vec<Flow>> {
        ebpf::conntrack_list(&self.ebpf_pins("conntrack")?)
    }

    /// Removes every conntrack entry; returns how many there were.
    pub fn conntrack_flush(&self) -> Result<usize> {
        ebpf::conntrack_remove(&self.ebpf_pins("conntrack")?, |_, _| true)
    }

    /// Removes the expired conntrack entries; returns how many.
    pub fn conntrack_gc(&self) -> Result<usize> {
        ebpf::conntrack_gc(&self.ebpf_pins("conntrack")?)
    }

    /// Every counter of the programs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, Counter)>> {
        ebpf::stats(&self.ebpf_pins("stats")?)
    }

    /// Prints the programs' debug log to `out` for `seconds`. Takes the host
    /// by value: its state lock is released before tracing begins, so other
    /// commands run meanwhile.
    pub fn trace(self, seconds: u64, out: &mut dyn Write) -> Result<()> {
        let pins = self.ebpf_pins("trace")?;
        drop(self);
        ebpf::trace(&pins, seconds, out)
    }
}
