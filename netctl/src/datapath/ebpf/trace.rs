//! `netctl trace`'s source: the programs' flow events (`FLOW_EVENTS`, a
//! ring buffer), switched on by a lease in `FLOW_LISTENER` that this
//! listener renews while it runs (see `netctl_common::event`).
//!
//! One listener at a time: a ring buffer has one read position, so two
//! readers would each get part of the events. The listener holds an
//! exclusive `flock` on `trace.lock` in the state dir, released by the
//! kernel however the process ends; a second `netctl trace` is refused.
//! The lease makes the programs stop by themselves when a listener dies
//! without clearing it (SIGKILL): within `LEASE_NS`.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use netctl_common::{
    event::{FlowEvent, LEASE_NS, LEASE_RENEW_NS},
    maps,
};
use nix::{
    fcntl::{Flock, FlockArg},
    time::{clock_gettime, ClockId},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::Instant,
};

use super::{bpf_error, maps::open_pinned_map};
use crate::error::{Error, Result};

/// Longest `netctl trace --seconds`.
pub const TRACE_MAX_SECONDS: u64 = 86_400;

/// The lock file of the one listener, in the state dir.
const LOCK_FILE: &str = "trace.lock";

/// CLOCK_MONOTONIC in nanoseconds: the programs' bpf_ktime_get_ns().
fn monotonic_ns() -> Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(|e| Error::system("clock", e))?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Turns the programs' monotonic times into wall-clock times (taken once:
/// a trace is short next to clock drift).
#[derive(Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds since the epoch at monotonic time 0.
    offset_ns: i128,
}

impl Clock {
    fn now() -> Result<Self> {
        let mono = monotonic_ns()?;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Ok(Clock {
            offset_ns: wall - i128::from(mono),
        })
    }

    /// The wall-clock time of a monotonic one, in nanoseconds since the
    /// epoch.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset_ns).max(0) as u64
    }
}

/// Writes the lease (0: nobody listens).
fn set_lease(map: &mut Array<MapData, u64>, until: u64) -> Result<()> {
    map.set(0, until, 0)
        .map_err(|e| bpf_error(format!("map {}", maps::FLOW_LISTENER), e))
}

/// Follows the flow events until `seconds` have passed (`None`: until
/// SIGINT or SIGTERM, which end a timed trace too), handing each to
/// `event` with the clock that dates it. The lease is cleared at the end,
/// and what the ring buffer holds by then is still handed over.
pub async fn follow(
    pin_dir: &Path,
    state_dir: &Path,
    seconds: Option<u64>,
    mut event: impl FnMut(&FlowEvent, &Clock) -> Result<()>,
) -> Result<()> {
    if let Some(s) = seconds {
        if s == 0 || s > TRACE_MAX_SECONDS {
            return Err(Error::invalid(
                "trace",
                format!("--seconds must be 1 to {TRACE_MAX_SECONDS}"),
            ));
        }
    }
    let file = crate::state::lock_file(&state_dir.join(LOCK_FILE))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::invalid(
            "trace",
            "another `netctl trace` is following this host's events (one listener at a time)",
        )
    })?;

    let ring = RingBuf::try_from(Map::RingBuf(open_pinned_map(pin_dir, maps::FLOW_EVENTS)?))
        .map_err(|e| bpf_error(format!("map {}", maps::FLOW_EVENTS), e))?;
    // SAFETY: the ring buffer's fd is its map's, owned by `ring`, which the
    // AsyncFd owns until it is dropped.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.map_err(|e| Error::system("trace: ring buffer", e))?;
    let mut lease: Array<MapData, u64> =
        Array::try_from(Map::Array(open_pinned_map(pin_dir, maps::FLOW_LISTENER)?))
            .map_err(|e| bpf_error(format!("map {}", maps::FLOW_LISTENER), e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("trace: SIGINT", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("trace: SIGTERM", e))?;
    let clock = Clock::now()?;
    // What an earlier listener left unread is not this trace's.
    while ring.get_mut().next().is_some() {}

    let end = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let result = async {
        loop {
            set_lease(&mut lease, monotonic_ns()? + LEASE_NS)?;
            let renew = Instant::now() + Duration::from_nanos(LEASE_RENEW_NS);
            loop {
                tokio::select! {
                    ready = ring.readable_mut() => {
                        let mut guard = ready.map_err(|e| Error::io("trace: ring buffer", e))?;
                        while let Some(item) = guard.get_inner_mut().next() {
                            if let Some(e) = decode(&item) {
                                event(&e, &clock)?;
                            }
                        }
                        guard.clear_ready();
                    }
                    _ = tokio::time::sleep_until(renew) => break,
                    _ = sleep_until(end) => return Ok(()),
                    _ = sigint.recv() => return Ok(()),
                    _ = sigterm.recv() => return Ok(()),
                }
            }
        }
    }
    .await;
    let cleared = set_lease(&mut lease, 0);
    let mut rest = Ok(());
    if result.is_ok() {
        while let Some(item) = ring.get_mut().next() {
            if let Some(e) = decode(&item) {
                rest = rest.and(event(&e, &clock));
            }
        }
    }
    result.and(rest).and(cleared)
}

/// Sleeps until `end`, forever without one.
async fn sleep_until(end: Option<Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

/// A record as the programs wrote it (`None`: not one of ours in size).
fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain old data (repr(C), every bit pattern
    // valid) and the slice holds enough bytes; read_unaligned copes with
    // any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}
