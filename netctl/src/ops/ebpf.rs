//! The eBPF datapath's own tables behind `netctl conntrack`, `stats` and
//! `trace`. They read and edit the pinned maps directly, outside any
//! transaction; the host only says where the pins are, and refuses when
//! its datapath is not eBPF.

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use netctl_common::stats::Counter;

use super::Host;
use crate::{
    datapath::ebpf::{self, Flow},
    error::{Error, Result},
    model::DatapathKind,
    state::{read_snapshot, stamp, STATE_FILE},
    trace::{self, Filters, Names},
};

/// The name of link `index` in this (the host) namespace, if it exists.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

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

    /// Follows the programs' flow events for `seconds` (`None`: until
    /// SIGINT or SIGTERM) and writes those `filters` keep to `out`, a line
    /// of text or a JSON object each, with the names of the state (read
    /// again when it changes, at most once a second). Takes the host by
    /// value: its state lock is released before tracing begins, so other
    /// commands run meanwhile.
    pub async fn trace(
        self,
        seconds: Option<u64>,
        filters: &Filters,
        json: bool,
        out: &mut dyn Write,
    ) -> Result<()> {
        // The iptables datapath emits no events: its flows are the
        // kernel's conntrack entries, which `conntrack -E` follows (without
        // netctl's names); drops by its rules leave only their counters.
        if self.state.datapath == Some(DatapathKind::Iptables) {
            return Err(Error::invalid(
                "trace",
                "this host uses the iptables datapath, which has no flow events (the kernel's \
                 conntrack events: `conntrack -E` in the host namespace)",
            ));
        }
        let pins = self.ebpf_pins("trace")?;
        filters.check(&self.state)?;
        let mut names = Names::new(&self.state);
        let state_dir = self.config.state_dir.clone();
        drop(self);
        let state_file = state_dir.join(STATE_FILE);
        let mut seen = stamp(&state_file);
        let mut checked = Instant::now();
        let mut ifnames: HashMap<u32, Option<String>> = HashMap::new();
        ebpf::follow(&pins, &state_dir, seconds, |event, clock| {
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                let now = stamp(&state_file);
                if now != seen {
                    seen = now;
                    // Containers come and go: their names, and the veths'
                    // indexes (reused by the kernel) afresh.
                    if let Ok(state) = read_snapshot(&state_file) {
                        names = Names::new(&state);
                        ifnames.clear();
                    }
                }
            }
            let ifname = match event.ifindex {
                0 => None,
                index => ifnames
                    .entry(index)
                    .or_insert_with(|| if_name(index))
                    .clone(),
            };
            let Some(line) = trace::line(
                event,
                clock.wall_ns(event.time_ns),
                ifname.as_deref(),
                &names,
                filters,
            ) else {
                return Ok(());
            };
            let text = if json {
                serde_json::to_string(&line).map_err(|e| Error::system("trace output", e))?
            } else {
                line.text()
            };
            writeln!(out, "{text}")
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("trace output", e))
        })
        .await
    }
}
