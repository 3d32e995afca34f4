//! Processes in namespaces: `netctl exec` (foreground, replaces netctl) and
//! the detached command of `container run NAME -- CMD`, which is held
//! before `exec` until its undo is journaled.
//!
//! A process enters a container the way `ip netns exec` does: a private
//! mount namespace in which the container's hosts file and resolv.conf are
//! bound over /etc/hosts and /etc/resolv.conf (and, with `--hostname`, a
//! UTS namespace of its own), `setns(CLONE_NEWNET)`, and a sysfs mounted afresh on /sys,
//! which then shows the container's interfaces (`/sys/class/net/eth0` is
//! its own) and no longer the host's mounts below it (bpffs, cgroups).
//! `exec --host` touches no mount: it keeps the host's /sys, bpffs included.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
};

use nix::{
    fcntl::OFlag,
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{unshare, CloneFlags},
    sys::{
        signal::{kill, Signal},
        statvfs::{statvfs, FsFlags},
    },
    unistd::{pipe2, Pid},
};

use crate::{
    error::{Error, Result},
    hosts,
    model::Process,
    netns,
};

/// Where a process goes: a network namespace (by name, or the one the
/// caller is in) and optionally a cgroup.
pub struct Target<'a> {
    pub netns: Option<&'a str>,
    pub cgroup: Option<&'a Path>,
}

/// Moves the calling thread into the target: for a container, a private
/// mount namespace with its hosts file, its network namespace and its
/// sysfs; then the cgroup (which applies to the whole process, which is
/// what `exec --host` wants).
fn enter(target: &Target<'_>) -> Result<()> {
    if let Some(name) = target.netns {
        unshare(CloneFlags::CLONE_NEWNS)
            .map_err(|e| Error::system("mount namespace", format!("unshare: {e}")))?;
        // Keep our mounts from propagating back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::system("mount namespace", format!("make / slave: {e}")))?;
        // The container's own files over the host's, as `ip netns exec`
        // binds /etc/netns/NAME/*.
        for (own, over) in [
            (hosts::file(name), "/etc/hosts"),
            (hosts::resolv_conf(name), "/etc/resolv.conf"),
        ] {
            if own.exists() {
                mount(
                    Some(&own),
                    over,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| Error::system(format!("file {}", own.display()), e))?;
            }
        }
        // --hostname: a UTS namespace of its own with that name.
        if let Ok(hostname) = std::fs::read_to_string(hosts::hostname_file(name)) {
            unshare(CloneFlags::CLONE_NEWUTS)
                .map_err(|e| Error::system("uts namespace", format!("unshare: {e}")))?;
            nix::unistd::sethostname(hostname.trim())
                .map_err(|e| Error::system(format!("hostname {}", hostname.trim()), e))?;
        }
        netns::enter_for_good(name)?;
        mount_container_sysfs(name)?;
    }
    if let Some(cgroup) = target.cgroup {
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| Error::io(format!("cgroup {}", cgroup.display()), e))?;
    }
    Ok(())
}

/// Mounts a sysfs on /sys, in the private mount namespace: sysfs shows the
/// network namespace of the thread that mounts it, the container's by now.
/// The host's /sys is detached first; if it cannot be (none mounted, or
/// not ours to unmount), the new one goes over it, read-only if it was
/// (a read-only sysfs cannot be shadowed by a writable one), as `ip netns
/// exec` does.
fn mount_container_sysfs(netns_name: &str) -> Result<()> {
    let mut flags = MsFlags::empty();
    if umount2("/sys", MntFlags::MNT_DETACH).is_err()
        && statvfs("/sys").is_ok_and(|fs| fs.flags().contains(FsFlags::ST_RDONLY))
    {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some("sysfs"), "/sys", Some("sysfs"), flags, None::<&str>).map_err(|e| {
        Error::system(
            format!("sysfs of netns {netns_name}"),
            format!("mount: {e}"),
        )
    })
}

/// Replaces this process with `argv` inside the target. Returns only on error.
pub fn exec(target: &Target<'_>, argv: &[String]) -> Error {
    let Some((program, args)) = argv.split_first() else {
        return Error::invalid("exec", "no command given");
    };
    if let Err(e) = enter(target) {
        return e;
    }
    let err = Command::new(program).args(args).exec();
    Error::system(format!("exec {program}"), err)
}

/// A command forked into a container namespace, detached, but held before
/// `exec` until [`Held::release`]: its pid is known before it runs, so that
/// the caller can journal how to stop it first. The child waits on a pipe
/// only netctl holds open: dropped without a release, or netctl killed,
/// the pipe closes and the child exits without running the command or
/// creating its log.
pub struct Held {
    pub process: Process,
    gate: Option<OwnedFd>,
    spawner: Option<JoinHandle<Result<Child>>>,
}

/// Forks `argv` inside a container namespace (in a thread of its own, so
/// this process stays where it is) and holds it before `exec`; once
/// released, its output goes to `log`.
pub fn start_held(netns_name: &str, argv: &[String], log: PathBuf) -> Result<Held> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::invalid("command", "empty"));
    };
    let log_path = CString::new(log.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("log {}", log.display()), "holds a NUL byte"))?;
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::system("pipe", e));
    let (pid_read, pid_write) = pipe()?;
    let (gate_read, gate_write) = pipe()?;
    let gate_write_fd = gate_write.as_raw_fd();
    let netns_name = netns_name.to_owned();
    let program = program.clone();
    let args = args.to_vec();
    let spawner = std::thread::spawn(move || -> Result<Child> {
        enter(&Target {
            netns: Some(&netns_name),
            cgroup: None,
        })?;
        let (pid_fd, gate_fd) = (pid_write.as_raw_fd(), gate_read.as_raw_fd());
        let mut command = Command::new(&program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own session: no terminal, not killed with netctl's process group.
            .process_group(0);
        // SAFETY: the hook runs between fork and exec and only makes
        // async-signal-safe calls (close, getpid, write, read, open, dup2).
        unsafe {
            command.pre_exec(move || wait_for_release(pid_fd, gate_fd, gate_write_fd, &log_path));
        }
        // Returns once the child has exec'd (released) or exited.
        let child = command
            .spawn()
            .map_err(|e| Error::system(format!("command {program}"), e));
        drop((pid_write, gate_read));
        child
    });
    let mut pid = [0u8; 4];
    let forked = File::from(pid_read).read_exact(&mut pid);
    let mut held = Held {
        process: Process {
            pid: 0,
            start_time: 0,
            command: argv.to_vec(),
            log,
        },
        gate: Some(gate_write),
        spawner: Some(spawner),
    };
    if forked.is_err() {
        // The thread failed before the fork: its error says why.
        held.gate = None;
        let spawned = held.spawner.take().expect("set above").join();
        return Err(spawned
            .expect("spawn thread panicked")
            .err()
            .unwrap_or_else(|| Error::system("command", "forked without a pid")));
    }
    held.process.pid = u32::from_ne_bytes(pid);
    held.process.start_time = start_time(held.process.pid).unwrap_or(0);
    Ok(held)
}

/// In the forked child: says its pid, waits for the release, then sends
/// its output to the log. An end of file on the gate (netctl gone, or the
/// start given up) fails the exec, and the child exits.
fn wait_for_release(
    pid_fd: RawFd,
    gate_fd: RawFd,
    gate_write_fd: RawFd,
    log: &CStr,
) -> std::io::Result<()> {
    let fail = std::io::Error::last_os_error;
    // SAFETY: plain system calls on descriptors this child inherited and
    // buffers it owns.
    unsafe {
        // Only netctl may hold the gate open, or its death would go unseen.
        libc::close(gate_write_fd);
        let pid = libc::getpid().to_ne_bytes();
        if libc::write(pid_fd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
            return Err(fail());
        }
        let mut byte = 0u8;
        loop {
            match libc::read(gate_fd, (&mut byte as *mut u8).cast(), 1) {
                1 => break,
                0 => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
                _ if fail().raw_os_error() == Some(libc::EINTR) => continue,
                _ => return Err(fail()),
            }
        }
        let out = libc::open(
            log.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o600,
        );
        if out < 0 || libc::dup2(out, 1) < 0 || libc::dup2(out, 2) < 0 {
            return Err(fail());
        }
        libc::close(out);
    }
    Ok(())
}

impl Held {
    /// Lets the command run; returns it once it has exec'd. Not waited
    /// for: it outlives netctl and is reparented to init.
    pub fn release(mut self) -> Result<Process> {
        let gate = self.gate.take().expect("held until released");
        let opened = nix::unistd::write(&gate, b"r");
        drop(gate);
        let spawned = self
            .spawner
            .take()
            .expect("held until released")
            .join()
            .expect("spawn thread panicked");
        opened.map_err(|e| Error::system(format!("command {}", self.process.command[0]), e))?;
        std::mem::forget(spawned?);
        Ok(self.process.clone())
    }
}

impl Drop for Held {
    /// Not released: the gate closes and the child exits unexec'd (the
    /// spawning thread reaps it).
    fn drop(&mut self) {
        self.gate = None;
        if let Some(spawner) = self.spawner.take() {
            let _ = spawner.join();
        }
    }
}

/// State letter and start time (clock ticks since boot) of a pid, from
/// fields 3 and 22 of its stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after it follow ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Our process, still alive: same start time (pids are recycled) and not a
/// zombie waiting for a parent that is not netctl.
pub fn is_running(process: &Process) -> bool {
    matches!(stat(process.pid), Some((state, start)) if start == process.start_time && state != 'Z')
}

/// Stops a detached command and deletes its log (absent is fine).
pub fn remove(process: &Process) -> Result<()> {
    let stopped = stop(process);
    match std::fs::remove_file(&process.log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("log {}", process.log.display()), e))
        }
        _ => stopped,
    }
}

/// Stops a detached command (SIGTERM, then SIGKILL after a grace period).
pub fn stop(process: &Process) -> Result<()> {
    if !is_running(process) {
        return Ok(());
    }
    let pid = Pid::from_raw(process.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..50 {
        if !is_running(process) {
            return Ok(());
        }
        reap(pid);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill(pid, Signal::SIGKILL)
        .map_err(|e| Error::system(format!("process {}", process.pid), format!("kill: {e}")))?;
    Ok(())
}

/// Collects a child of ours if it already exited (it is one when started by
/// this same netctl process, e.g. on rollback).
fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// Opens the log of a container's command for reading, if it has one.
pub fn open_log(process: &Process) -> Option<File> {
    File::open(&process.log).ok()
}
