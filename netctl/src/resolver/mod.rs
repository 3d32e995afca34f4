//! The networks' resolver: one small process per host namespace (as
//! aardvark-dns is for netavark), `netctl resolver`, listening on port 53
//! (UDP and TCP) of the gateway of every user-defined network (both
//! gateways of a dual-stack network). It answers
//! the names of the networks the asking container is on and forwards the
//! rest to the host's resolvers (see `server.rs`).
//!
//! It learns names from the state file itself: it checks the file's
//! identity (inode, size, mtime) on every query and reads it again when
//! the file changed. The state is replaced atomically by every command
//! (write, rename), so the resolver never sees a torn one, and a command
//! that adds or removes a container does nothing for resolution beyond its
//! one state write: O(1) work per container, none per peer. The set of
//! addresses it listens on changes only with the networks: then netctl
//! restarts it (a network command is rare; a restart re-reads everything
//! and rebinds, with no signal protocol to get wrong).
//!
//! netctl starts it when the first user-defined network appears, restarts
//! it when the networks change, stops it with the last one and on `down`.
//! It runs detached (its own session, reparented to init), so it survives
//! netctl, and any command that opens the host and finds it gone starts it
//! again. Its pid and start time are in `STATE_DIR/resolver.pid`, its
//! errors in `STATE_DIR/resolver.stderr`.

pub mod conf;
pub mod server;

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::IpAddr,
    os::{
        fd::AsRawFd as _,
        unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    },
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    config::HostConfig,
    error::{Error, Result},
    model::Process,
    process,
    state::State,
};

/// How long a starting resolver may take to say it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The line the resolver prints once it listens.
pub const READY: &str = "ready";

pub fn pid_file(config: &HostConfig) -> PathBuf {
    config.state_dir.join("resolver.pid")
}

fn log_file(config: &HostConfig) -> PathBuf {
    config.state_dir.join("resolver.stderr")
}

/// The user-defined networks' (name, gateway): where the resolver listens
/// (a dual-stack network's IPv6 gateway too).
pub fn listening_set(state: &State) -> BTreeSet<(String, IpAddr)> {
    state
        .networks
        .values()
        .filter(|n| n.dns)
        .flat_map(|n| {
            let v6 = n
                .ipv6
                .map(|side| (n.name.clone(), IpAddr::V6(side.gateway)));
            std::iter::once((n.name.clone(), IpAddr::V4(n.gateway))).chain(v6)
        })
        .collect()
}

/// The resolver recorded in the pid file, if any (alive or not).
pub fn recorded(config: &HostConfig) -> Option<Process> {
    let text = std::fs::read_to_string(pid_file(config)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The resolver, when it runs.
pub fn running(config: &HostConfig) -> Option<Process> {
    recorded(config).filter(process::is_running)
}

/// Starts the resolver and waits until it listens.
pub fn start(config: &HostConfig) -> Result<Process> {
    let object = "resolver";
    let exe = std::env::current_exe().map_err(|e| Error::system(object, e))?;
    let log = log_file(config);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| Error::io(format!("resolver log {}", log.display()), e))?;
    let mut command = Command::new(&exe);
    // Started by the CNI plugin, it must not be a plugin itself.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CNI_") {
            command.env_remove(key);
        }
    }
    if let Some(name) = &config.host_netns {
        command.args(["--host-netns", name]);
    }
    command
        .arg("--state-dir")
        .arg(&config.state_dir)
        .arg("resolver")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Own session: not killed with netctl's process group or terminal.
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| Error::system(object, format!("start {}: {e}", exe.display())))?;
    let mut out = child.stdout.take().expect("piped");
    let said = wait_readable(out.as_raw_fd(), READY_TIMEOUT).and_then(|()| {
        let mut line = [0u8; 16];
        let n = out.read(&mut line).map_err(|e| Error::system(object, e))?;
        Ok(String::from_utf8_lossy(&line[..n]).trim().to_owned())
    });
    if said.as_deref().ok() != Some(READY) {
        let _ = child.kill();
        let _ = child.wait();
        let last = std::fs::read_to_string(&log).unwrap_or_default();
        let last = last.lines().last().unwrap_or("no output").to_owned();
        return Err(match said {
            Err(e) => e,
            Ok(_) => Error::system(object, format!("exited before listening: {last}")),
        });
    }
    let pid = child.id();
    let process = Process {
        pid,
        start_time: process::start_time(pid).unwrap_or(0),
        command: vec![exe.display().to_string(), "resolver".into()],
        log,
    };
    let text = serde_json::to_string(&process).map_err(|e| Error::system(object, e))?;
    // 0600, as every file of the state dir.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(pid_file(config))
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| {
            Error::io(
                format!("resolver pid file {}", pid_file(config).display()),
                e,
            )
        })?;
    // Not waited for: it outlives netctl and is reparented to init.
    std::mem::forget(child);
    Ok(process)
}

fn wait_readable(fd: i32, timeout: Duration) -> Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        match n {
            1.. => return Ok(()),
            0 => {
                return Err(Error::system(
                    "resolver",
                    format!("not listening after {}s", timeout.as_secs()),
                ))
            }
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => return Err(Error::system("resolver", std::io::Error::last_os_error())),
        }
    }
}

/// Stops the resolver (if one runs) and removes its files.
pub fn stop(config: &HostConfig) -> Result<()> {
    let stopped = match recorded(config) {
        Some(p) => process::stop(&p),
        None => Ok(()),
    };
    for file in [pid_file(config), log_file(config)] {
        let _ = std::fs::remove_file(file);
    }
    stopped
}

/// What a command that opens the host does: start the resolver if the
/// networks want one and it is gone (killed, crashed, the machine
/// rebooted); stop a stray one that nothing wants. Returns whether it
/// (re)started one.
pub fn keep(config: &HostConfig, state: &State) -> Result<bool> {
    let wanted = !listening_set(state).is_empty();
    match (wanted, running(config).is_some()) {
        (true, false) => start(config).map(|_| true),
        (false, _) if recorded(config).is_some() => stop(config).map(|()| false),
        _ => Ok(false),
    }
}

/// After a saved change: when the user-defined networks changed, restart
/// the resolver on the new set of addresses (or stop it with the last).
pub fn follow(config: &HostConfig, old: &State, new: &State) -> Result<()> {
    let wanted = listening_set(new);
    if listening_set(old) == wanted {
        return Ok(());
    }
    stop(config)?;
    if wanted.is_empty() {
        return Ok(());
    }
    start(config).map(|_| ())
}

/// Whether the host holds `gateway` (a bridge gone or without its address
/// is a finding of its own, and then nothing can be asked there).
pub fn gateway_is_local(gateway: IpAddr) -> bool {
    std::net::UdpSocket::bind((gateway, 0)).is_ok()
}

/// Whether something answers a DNS query on `gateway`:53/udp within a
/// second (`doctor`'s check; any answer counts, REFUSED included).
pub fn answers(gateway: IpAddr) -> bool {
    let mut query = hickory_proto::op::Message::query();
    let name = hickory_proto::rr::Name::from_ascii("netctl-doctor.").expect("a valid name");
    query.add_query(hickory_proto::op::Query::query(
        name,
        hickory_proto::rr::RecordType::A,
    ));
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    // From the gateway itself (the resolver answers it REFUSED).
    let Ok(socket) = std::net::UdpSocket::bind((gateway, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    if socket.send_to(&bytes, (gateway, 53)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 2 && buf[..2] == bytes[..2])
}
