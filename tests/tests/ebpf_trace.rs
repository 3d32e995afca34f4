//! `netctl trace`: the programs' aya-log output, on only while a trace
//! runs. Drops between isolated networks are the traffic: a container
//! cannot easily make any other drop happen.

use std::{
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use netctl_tests::output::text;
use netctl_tests::{privileged, sandbox::Sandbox};

const DROP_LINE: &str =
    "drop program=endpoint_ingress reason=13 (drop_isolated) src=172.20.0.2 dst=172.21.0.2";

fn drop_isolated(sb: &Sandbox) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).expect("stats json");
    stats["drop_isolated"]["packets"]
        .as_u64()
        .expect("drop_isolated packets")
}

/// Pings across networks (dropped by endpoint_ingress); the ping fails.
fn ping_across(sb: &Sandbox) {
    let out = sb.exec("r", &["ping", "-c1", "-W1", "172.21.0.2"]);
    assert!(!out.status.success(), "red cannot reach blue");
}

#[test]
fn trace_prints_drops_only_while_it_runs() {
    if !privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::new("ebpf");
    sb.network("red", &["--subnet", "172.20.0.0/24"]);
    sb.network("blue", &["--subnet", "172.21.0.0/24"]);
    sb.netctl_ok(&["container", "run", "r", "--network", "red"]);
    sb.netctl_ok(&["container", "run", "b", "--network", "blue"]);

    // Out of range: refused before anything changes.
    let (code, _) = sb.netctl_err(&["trace", "--seconds", "0"]);
    assert_ne!(code, 0);

    let trace = sb
        .netctl_command(&["trace", "--seconds", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl trace");
    // Give it time to turn the flag on, then drop a few packets.
    sleep(Duration::from_millis(500));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        ping_across(&sb);
    }
    let out = trace.wait_with_output().expect("wait for netctl trace");
    assert!(
        out.status.success(),
        "netctl trace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = text(&out);
    assert!(
        printed.lines().any(|l| l.contains(DROP_LINE)),
        "no drop line in the trace:\n{printed}"
    );

    // The trace is over: drops are still counted, but no longer logged. A
    // record logged now would wait in the ring buffer for the next reader,
    // so the next trace (no traffic meanwhile) would print it.
    let before = drop_isolated(&sb);
    ping_across(&sb);
    assert!(
        drop_isolated(&sb) > before,
        "drops are counted without trace"
    );
    let quiet = sb.netctl_ok(&["trace", "--seconds", "1"]);
    assert!(
        !quiet.contains("drop "),
        "logged with the flag off or without traffic:\n{quiet}"
    );
}
