//! The load generators, each a client run inside a namespace against an
//! address of the sandbox: iperf3 for TCP throughput, `nettool udpflood`
//! for UDP datagrams/s, `nettool rr` for the request/response rate on one
//! connection and `nettool crr` for new connections per second.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};

use crate::cmd::{read_echoed, run};

/// Client side of the load runs: many short connections to one address.
/// TIME_WAIT sockets may be reused (timestamps are on) and the ephemeral
/// range is wider than the default. Only the namespace `ns` is touched.
pub fn client_sysctls(ns: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=10000 65000",
    ]))
}

/// Where a load client runs.
#[derive(Clone, Debug)]
pub enum Client {
    /// In a namespace (a container's, the outside's).
    Netns(String),
    /// In the sandbox's host namespace and inside its cgroup, as a host
    /// process would: the eBPF datapath's cgroup connect/sendmsg programs
    /// only see sockets of that cgroup.
    HostCgroup { ns: String, cgroup: PathBuf },
}

/// Where a client runs and what it talks to.
#[derive(Clone, Debug)]
pub struct Target {
    pub client: Client,
    pub ip: String,
    /// `nettool pong` listens behind it.
    pub crr_port: u16,
    /// `iperf3 -s` listens behind it.
    pub iperf_port: u16,
    /// `nettool udpsink` listens behind it.
    pub udp_port: u16,
}

impl Target {
    /// `ip netns exec NS PROGRAM`, moved into the cgroup first if asked.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut cmd = Command::new("ip");
        let ns = match &self.client {
            Client::Netns(ns) => ns,
            Client::HostCgroup { ns, cgroup } => {
                join_cgroup_before_exec(&mut cmd, cgroup)?;
                ns
            }
        };
        cmd.args(["netns", "exec", ns]).arg(program);
        Ok(cmd)
    }
}

/// Makes the child write "0" (itself) to `cgroup/cgroup.procs` between fork
/// and exec, so that it and everything it starts live in the cgroup. Done
/// before `ip netns exec`, which remounts /sys and would hide the cgroup fs.
fn join_cgroup_before_exec(cmd: &mut Command, cgroup: &Path) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path with a NUL byte")?;
    let hook = move || {
        // SAFETY: only async-signal-safe calls (open, write, close) on a
        // path allocated before the fork.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
        }
        Ok(())
    };
    // SAFETY: the hook allocates nothing and touches no lock.
    unsafe { cmd.pre_exec(hook) };
    Ok(())
}

/// Runs iperf3 against the target; retries once if the server is still
/// busy with the previous test.
fn iperf_json(t: &Target, args: &[String]) -> Result<serde_json::Value> {
    let mut last = None;
    for attempt in 0..2 {
        if attempt > 0 {
            sleep(Duration::from_millis(500));
        }
        let out = t.command("iperf3").and_then(|mut cmd| {
            read_echoed(
                cmd.args(["-J", "-c", &t.ip])
                    .args(["-p", &t.iperf_port.to_string()])
                    .args(args),
            )
        });
        match out.and_then(|json| parse_iperf_json(&json)) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}

fn parse_iperf_json(json: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(err) = v["error"].as_str() {
        return Err(anyhow!("iperf3: {err}"));
    }
    Ok(v)
}

/// TCP throughput in Gbit/s (what the receiver got), `streams` parallel
/// streams for `secs` seconds.
pub fn iperf(t: &Target, secs: u32, streams: u32) -> Result<f64> {
    let v = iperf_json(
        t,
        &[
            "-t".into(),
            secs.to_string(),
            "-P".into(),
            streams.to_string(),
        ],
    )?;
    tcp_gbit(&v)
}

fn tcp_gbit(v: &serde_json::Value) -> Result<f64> {
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| anyhow!("no end.sum_received.bits_per_second in iperf3 output"))
}

/// UDP datagrams per second that reached `nettool udpsink`: one
/// `nettool udpflood` sender of 64-byte datagrams for `secs` seconds.
pub fn udp_pps(nettool: &Path, t: &Target, secs: f64) -> Result<f64> {
    let out = read_echoed(t.command(nettool)?.args([
        "udpflood",
        &t.ip,
        &t.udp_port.to_string(),
        &format!("{secs}"),
    ]))?;
    field(&out, "rate")
}

/// What one `nettool crr` or `nettool rr` run printed.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_sec: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// New connections per second (connect, 1 byte each way, close) for `secs`.
pub fn crr(nettool: &Path, t: &Target, secs: f64) -> Result<Rate> {
    nettool_load(nettool, "crr", t, secs)
}

/// Request/response rounds per second (1 byte each way) on one connection.
pub fn rr(nettool: &Path, t: &Target, secs: f64) -> Result<Rate> {
    nettool_load(nettool, "rr", t, secs)
}

fn nettool_load(nettool: &Path, mode: &str, t: &Target, secs: f64) -> Result<Rate> {
    let out = read_echoed(t.command(nettool)?.args([
        mode,
        &t.ip,
        &t.crr_port.to_string(),
        &format!("{secs}"),
    ]))?;
    parse_rate(&out)
}

/// The number after `name=` in nettool's one-line output.
fn field(out: &str, name: &str) -> Result<f64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .ok_or_else(|| anyhow!("no {name}= in {out:?}"))?
        .parse::<f64>()
        .with_context(|| format!("{name} in {out:?}"))
}

fn parse_rate(out: &str) -> Result<Rate> {
    Ok(Rate {
        per_sec: field(out, "rate")?,
        errors: field(out, "errors")? as u64,
        p50_us: field(out, "p50_us")? as u64,
        p99_us: field(out, "p99_us")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nettool_rate() {
        let r = parse_rate("count=100 errors=2 seconds=2.001 rate=49.9 p50_us=80 p99_us=300\n")
            .unwrap();
        assert_eq!((r.errors, r.p50_us, r.p99_us), (2, 80, 300));
        assert!((r.per_sec - 49.9).abs() < 1e-9);
        assert!(parse_rate("garbage").is_err());
    }

    #[test]
    fn reads_iperf_json() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":17.5e9}}}"#;
        let v = parse_iperf_json(json).unwrap();
        assert!((tcp_gbit(&v).unwrap() - 17.5).abs() < 1e-9);
        assert!(parse_iperf_json(r#"{"error":"the server is busy"}"#).is_err());
    }

    #[test]
    fn reads_udpflood_rate() {
        let out = "sent=1000 received=900 seconds=2.000 rate=450.0\n";
        assert!((field(out, "rate").unwrap() - 450.0).abs() < 1e-9);
        assert!(field(out, "errors").is_err());
    }
}
