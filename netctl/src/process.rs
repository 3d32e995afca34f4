//! Processes in namespaces: `netctl exec` (foreground, replaces netctl) and
//! the detached command of `container run NAME -- CMD`.
//!
//! A process enters a container by `setns(CLONE_NEWNET)` after getting a
//! private mount namespace in which the container's hosts file is bound
//! over /etc/hosts, exactly what `ip netns exec` does for that file, but
//! without remounting /sys (which would hide /sys/fs/bpf).

use std::{
    fs::{File, OpenOptions},
    os::unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
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

/// Moves the calling thread into the target: private mount namespace with
/// the hosts file, network namespace, cgroup (the cgroup applies to the
/// whole process, which is what `exec --host` wants).
fn enter(target: &Target<'_>) -> Result<()> {
    if let Some(name) = target.netns {
        let hosts_file = hosts::file(name);
        if hosts_file.exists() {
            unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| Error::system("mount namespace", format!("unshare: {e}")))?;
            // Keep our bind mount from propagating back to the host.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::system("mount namespace", format!("make / slave: {e}")))?;
            mount(
                Some(&hosts_file),
                "/etc/hosts",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::system(format!("hosts file {}", hosts_file.display()), e))?;
        }
        netns::enter_for_good(name)?;
    }
    if let Some(cgroup) = target.cgroup {
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| Error::io(format!("cgroup {}", cgroup.display()), e))?;
    }
    Ok(())
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

/// Starts `argv` detached inside a container namespace, its output appended
/// to `log`. The namespace changes happen in a thread of their own so this
/// process stays where it is.
pub fn spawn_detached(netns_name: &str, argv: &[String], log: PathBuf) -> Result<Process> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::invalid("command", "empty"));
    };
    // The command's output may hold anything: root only, like the state.
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| Error::io(format!("log {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io(format!("log {}", log.display()), e))?;
    let netns_name = netns_name.to_owned();
    let program = program.clone();
    let args = args.to_vec();
    let child = std::thread::spawn(move || -> Result<std::process::Child> {
        enter(&Target {
            netns: Some(&netns_name),
            cgroup: None,
        })?;
        let mut command = Command::new(&program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own session: no terminal, not killed with netctl's process group.
            .process_group(0);
        command
            .spawn()
            .map_err(|e| Error::system(format!("command {program}"), e))
    })
    .join()
    .expect("spawn thread panicked")?;
    let pid = child.id();
    // Not waited for: it outlives netctl and is reparented to init.
    std::mem::forget(child);
    Ok(Process {
        pid,
        start_time: start_time(pid).unwrap_or(0),
        command: argv.to_vec(),
        log,
    })
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
