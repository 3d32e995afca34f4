//! `netctl trace`: the programs' aya-log output (off by default, since it
//! costs per packet), switched on through `CONFIG_FLAG_LOG` for a while and
//! printed one line per record.

use std::{
    io::Write,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map},
    programs::SchedClassifier,
};
use netctl_common::{
    config::{Config, CONFIG_FLAG_LOG},
    maps,
    stats::STAT_NAMES,
};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::{
    bpf_error,
    maps::open_pinned_map,
    pins::{prog_pin_path, ENDPOINT_INGRESS},
};
use crate::error::{Error, Result};

/// Longest `netctl trace`, in seconds.
pub const TRACE_MAX_SECONDS: u64 = 3600;

/// Set by SIGINT/SIGTERM while [`trace`] runs: it stops early and still
/// clears the log flag.
static TRACE_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn trace_stop(_signal: std::ffi::c_int) {
    TRACE_STOP.store(true, Ordering::Relaxed);
}

/// Collects what aya-log decodes from `AYA_LOGS`, one line per record, for
/// [`trace`] to write out after each flush (the `log::Log` must be `Sync`;
/// the writer need not be).
#[derive(Default, Clone)]
struct TraceLines(Arc<Mutex<Vec<String>>>);

impl log::Log for TraceLines {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut line = record.args().to_string();
        // "reason=13" → "reason=13 (drop_isolated)".
        if let Some(at) = line.find("reason=") {
            let digits: String = line[at + 7..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Some(name) = digits.parse::<usize>().ok().and_then(|i| STAT_NAMES.get(i)) {
                line.insert_str(at + 7 + digits.len(), &format!(" ({name})"));
            }
        }
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}", record.level(), line));
        }
    }

    fn flush(&self) {}
}

/// Sets or clears `CONFIG_FLAG_LOG` in the pinned CONFIG (the other
/// fields are kept).
fn set_log_flag(pin_dir: &Path, on: bool) -> Result<()> {
    let data = open_pinned_map(pin_dir, maps::CONFIG)?;
    let mut map: Array<_, Config> =
        Array::try_from(Map::Array(data)).map_err(|e| bpf_error("map CONFIG", e))?;
    let mut config = map.get(&0, 0).map_err(|e| bpf_error("map CONFIG", e))?;
    if on {
        config.flags |= CONFIG_FLAG_LOG;
    } else {
        config.flags &= !CONFIG_FLAG_LOG;
    }
    map.set(0, config, 0)
        .map_err(|e| bpf_error("map CONFIG", e))
}

/// `netctl trace`: turns on the programs' aya-log output for `seconds`
/// (at most [`TRACE_MAX_SECONDS`]) and writes every record to `out`, one
/// line each: drops (program, reason, addresses) and new DNAT flows. The
/// flag is cleared at the end, also on SIGINT/SIGTERM; a `SIGKILL`ed trace
/// leaves it on until the next trace ends. Two traces at once share the
/// flag (the first to end clears it) and the ring buffer (each record
/// goes to whichever reads it first).
pub fn trace(pin_dir: &Path, seconds: u64, out: &mut dyn Write) -> Result<()> {
    if seconds == 0 || seconds > TRACE_MAX_SECONDS {
        return Err(Error::invalid(
            "trace",
            format!("--seconds must be 1 to {TRACE_MAX_SECONDS}"),
        ));
    }
    // Every TC program of the object logs into the same AYA_LOGS ring
    // buffer (one load); endpoint_ingress leads to it.
    let path = prog_pin_path(pin_dir, ENDPOINT_INGRESS);
    let prog = SchedClassifier::from_pin(&path)
        .map_err(|e| bpf_error(format!("program {}", path.display()), e))?;
    let id = prog
        .info()
        .map_err(|e| bpf_error(format!("program {}", path.display()), e))?
        .id();
    // Kept for the whole trace: dropping it closes the ring buffer's fd.
    let lines = TraceLines::default();
    let mut logger = aya_log::EbpfLogger::init_from_id_with_logger(id, lines.clone())
        .map_err(|e| bpf_error("aya-log ring buffer AYA_LOGS", e))?;

    TRACE_STOP.store(false, Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(trace_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let mut previous = Vec::new();
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        if let Ok(old) = unsafe { sigaction(signal, &action) } {
            previous.push((signal, old));
        }
    }

    let result = set_log_flag(pin_dir, true).and_then(|()| {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut last = false;
        loop {
            logger.flush();
            let batch = match lines.0.lock() {
                Ok(mut guard) => std::mem::take(&mut *guard),
                Err(_) => Vec::new(),
            };
            for line in batch {
                writeln!(out, "{line}").map_err(|e| Error::io("trace output", e))?;
            }
            out.flush().map_err(|e| Error::io("trace output", e))?;
            if last {
                return Ok(());
            }
            if TRACE_STOP.load(Ordering::Relaxed) || Instant::now() >= end {
                last = true;
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cleared = set_log_flag(pin_dir, false);
    for (signal, old) in previous {
        // SAFETY: restores what was installed before.
        let _ = unsafe { sigaction(signal, &old) };
    }
    result.and(cleared)
}
