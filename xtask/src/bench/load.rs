//! The load generators: iperf3 for throughput, `nettool crr` for new
//! connections per second. Both run as clients inside a namespace, against
//! an address of the sandbox.

use std::{path::Path, process::Command, thread::sleep, time::Duration};

use anyhow::{anyhow, Context as _, Result};

use crate::cmd::read_echoed;

/// Where a client runs and what it talks to.
#[derive(Clone, Debug)]
pub struct Target {
    pub client_ns: String,
    pub ip: String,
    /// `nettool pong` listens behind it.
    pub crr_port: u16,
    /// `iperf3 -s` listens behind it.
    pub iperf_port: u16,
}

/// TCP throughput in Gbit/s (what the receiver got), `streams` parallel
/// streams for `secs` seconds. Retries once if the server is still busy
/// with the previous test.
pub fn iperf(t: &Target, secs: u32, streams: u32) -> Result<f64> {
    let mut last = None;
    for attempt in 0..2 {
        if attempt > 0 {
            sleep(Duration::from_millis(500));
        }
        let out = read_echoed(
            Command::new("ip")
                .args(["netns", "exec", &t.client_ns, "iperf3", "-J", "-c", &t.ip])
                .args(["-p", &t.iperf_port.to_string(), "-t", &secs.to_string()])
                .args(["-P", &streams.to_string()]),
        );
        match out.and_then(|json| parse_iperf(&json)) {
            Ok(gbit) => return Ok(gbit),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}

fn parse_iperf(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(err) = v["error"].as_str() {
        return Err(anyhow!("iperf3: {err}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| anyhow!("no end.sum_received.bits_per_second in iperf3 output"))
}

/// What one `nettool crr` run printed.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_sec: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// New connections per second (connect, 1 byte each way, close) for `secs`.
pub fn crr(nettool: &Path, t: &Target, secs: f64) -> Result<Rate> {
    let out = read_echoed(
        Command::new("ip")
            .args(["netns", "exec", &t.client_ns])
            .arg(nettool)
            .args(["crr", &t.ip, &t.crr_port.to_string(), &format!("{secs}")]),
    )?;
    parse_rate(&out)
}

fn parse_rate(out: &str) -> Result<Rate> {
    let field = |name: &str| -> Result<f64> {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("no {name}= in {out:?}"))?
            .parse::<f64>()
            .with_context(|| format!("{name} in {out:?}"))
    };
    Ok(Rate {
        per_sec: field("rate")?,
        errors: field("errors")? as u64,
        p50_us: field("p50_us")? as u64,
        p99_us: field("p99_us")? as u64,
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
        assert!((parse_iperf(json).unwrap() - 17.5).abs() < 1e-9);
        assert!(parse_iperf(r#"{"error":"the server is busy"}"#).is_err());
    }
}
