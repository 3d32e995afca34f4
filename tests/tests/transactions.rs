//! Transactions, crash safety and drift, on both datapaths: a step that
//! fails changes nothing; a netctl killed at any step is finished by the
//! next one; `doctor` finds what changed behind netctl's back and `--fix`
//! repairs it, traffic included.

use std::{
    io::{BufRead as _, BufReader},
    process::{Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use netctl::failpoint;
use netctl_tests::sandbox::{call_until_answer, nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP};

netctl_tests::on_both_datapaths!(
    a_failure_at_any_step_changes_nothing,
    a_crash_at_any_step_is_finished_by_the_next_command,
    doctor_reports_drift_and_fix_repairs_it,
);

/// The command that reaches each failpoint, on the host `prepare` builds.
fn command_for(point: &str) -> Vec<String> {
    let words: &[&str] = match point.split('.').next().unwrap_or_default() {
        "create" => &["network", "create", "extra", "--subnet", "10.77.0.0/24"],
        "run" | "commit" => &[
            "container",
            "run",
            "newcomer",
            "--network",
            "front",
            "-p",
            "9000:90",
            "--",
            "sleep",
            "30",
        ],
        "connect" => &["network", "connect", "back", "web"],
        "rm" => &["container", "rm", "web"],
        "network-rm" => &["network", "rm", "spare"],
        "disconnect" => &["network", "disconnect", "front", "web"],
        other => panic!("no command for failpoint group {other}"),
    };
    words.iter().map(|w| w.to_string()).collect()
}

/// A host with networks front (web publishing 8080, a), back and spare.
/// `create.host` is only reached by a host's first command: it gets an
/// empty host.
fn prepare(sb: &Sandbox, point: &str) {
    if point == "create.host" {
        return;
    }
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.network("spare", &["--subnet", "172.20.0.0/16"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
}

/// Everything netctl could have changed: objects, links, namespaces,
/// rules, pins and the eBPF maps' entries.
fn snapshot(sb: &Sandbox) -> Vec<String> {
    let mut lines = vec![
        sb.netctl_ok(&["--format", "json", "network", "ls"]),
        sb.netctl_ok(&["--format", "json", "container", "ls"]),
    ];
    lines.extend(sb.host_links());
    lines.extend(sb.namespaces());
    // Rules and our chains (a table iptables-save merely loaded, with its
    // empty built-in chains, is not a change).
    lines.extend(
        sb.iptables_save()
            .lines()
            .filter(|l| l.starts_with("-A") || l.contains("NETCTL"))
            .map(str::to_owned),
    );
    lines.extend(sb.pins());
    for map in ["ENDPOINTS", "NETWORKS", "PORTMAP"] {
        lines.push(sb.bpf_map_dump(map));
    }
    lines
}

fn with_failpoint(sb: &Sandbox, value: &str, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.netctl_command(&args)
        .env(failpoint::ENV, value)
        .output()
        .expect("run netctl")
}

/// Whether the failpoint is a step of a removal (`container rm`, `network
/// rm`, `network disconnect`): those keep going past a failure, and a crash
/// in them is completed rather than undone.
fn is_removal(point: &str) -> bool {
    ["rm.", "network-rm.", "disconnect."]
        .iter()
        .any(|group| point.starts_with(group))
}

/// Each step of network create, container run, network connect and the
/// final save fails in turn: the command reports that step, rolls back,
/// and the host is exactly as before; then the same command succeeds.
fn a_failure_at_any_step_changes_nothing(datapath: &str) {
    let failing = failpoint::POINTS.iter().filter(|p| !is_removal(p));
    for point in failing {
        let sb = Sandbox::new(datapath);
        prepare(&sb, point);
        let before = snapshot(&sb);
        let mut command = command_for(point);
        if point == &"create.host" {
            command.extend(["--datapath".to_string(), datapath.to_string()]);
        }
        let out = with_failpoint(&sb, point, &command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{point}: {stderr}");
        assert!(
            stderr.contains(&format!("step {point}: injected failure")),
            "{point}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{point}: one line: {stderr}");
        assert_eq!(
            snapshot(&sb),
            before,
            "{point}: the failed command changed the host"
        );
        if point == &"create.host" {
            assert!(
                !sb.state_dir.exists(),
                "a failed first command keeps no state"
            );
        }
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        sb.netctl_ok(&args);
    }
}

/// Starts `args` paused at `point`, then kills it with SIGKILL there.
fn kill_at(sb: &Sandbox, point: &str, args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = sb
        .netctl_command(&args)
        .env(failpoint::ENV, format!("{point}=pause"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("paused at") {
                let _ = tx.send(line);
            }
        }
    });
    let paused = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let status = child.wait().expect("wait");
    let line = paused.unwrap_or_else(|_| panic!("{point}: netctl never paused ({status})"));
    assert!(line.ends_with(point), "{line}");
}

/// netctl killed at every step of every command: the next command (here a
/// read-only `container ls`) finishes the job from the journal. An
/// interrupted create, run or connect is undone, exactly; an interrupted
/// removal is completed. Either way `doctor` then finds nothing.
fn a_crash_at_any_step_is_finished_by_the_next_command(datapath: &str) {
    for point in failpoint::POINTS {
        let sb = Sandbox::new(datapath);
        prepare(&sb, point);
        let before = snapshot(&sb);
        let mut command = command_for(point);
        if point == &"create.host" {
            command.extend(["--datapath".to_string(), datapath.to_string()]);
        }
        kill_at(&sb, point, &command);

        let out = sb.netctl(&["container", "ls"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{point}: {stderr}");
        assert!(
            stderr.contains("finishing `"),
            "{point}: no recovery: {stderr}"
        );
        let removal = is_removal(point);
        if point.starts_with("disconnect.") {
            let web = sb.inspect("web");
            assert_eq!(web["endpoints"], serde_json::json!([]), "{point}: {web}");
            assert_eq!(web["ports"], serde_json::json!([]), "{point}: {web}");
        } else if removal {
            let ls = sb.netctl_ok(&["container", "ls"]) + &sb.netctl_ok(&["network", "ls"]);
            let removed = if point.starts_with("rm.") {
                "web"
            } else {
                "spare"
            };
            assert!(
                !ls.contains(removed),
                "{point}: {removed} still there: {ls}"
            );
        } else {
            assert_eq!(
                snapshot(&sb),
                before,
                "{point}: the killed command left traces"
            );
        }
        let doctor = sb.netctl(&["doctor"]);
        assert!(
            doctor.status.success(),
            "{point}: doctor after recovery: {}{}",
            String::from_utf8_lossy(&doctor.stdout),
            String::from_utf8_lossy(&doctor.stderr)
        );
        // And the host takes commands again, the interrupted one included.
        if !removal {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            sb.netctl_ok(&args);
        }
    }
}

/// Drift of every kind, made with `ip`, `iptables` and `bpftool` behind
/// netctl's back: doctor names each, `--fix` repairs all, and the repaired
/// host carries traffic again.
fn doctor_reports_drift_and_fix_repairs_it(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let tool = nettool_bin().display().to_string();
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.netctl_ok(&[
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80",
        "--",
        &tool,
        "serve",
        "tcp",
        "80",
    ]);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    sb.netctl_ok(&["container", "run", "b", "--network", "back"]);
    sb.netctl_ok(&["container", "run", "gone", "--network", "front"]);
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "a fresh host has no drift");
    assert_eq!(
        String::from_utf8_lossy(&doctor.stdout).trim(),
        "state and kernel agree"
    );

    let veth_of = |name: &str| {
        sb.inspect(name)["endpoints"][0]["host_veth"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let host = |argv: &[&str]| {
        let out = sb.in_host(argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    host(&["ip", "link", "del", &veth_of("a")]);
    host(&["ip", "link", "del", "nc-back"]);
    let gone_netns = format!("{}-gone", sb.host_netns);
    let out = std::process::Command::new("ip")
        .args(["netns", "delete", &gone_netns])
        .output()
        .unwrap();
    assert!(out.status.success());
    host(&[
        "ip",
        "link",
        "add",
        "ve0badc0de",
        "type",
        "veth",
        "peer",
        "name",
        "ve0badc0dep",
    ]);
    let ghost = format!("{}-ghost", sb.host_netns);
    netctl::netns::create(&ghost).expect("ghost netns");
    if datapath == "iptables" {
        host(&["iptables", "-t", "nat", "-F", "NETCTL-DNAT"]);
        host(&[
            "iptables",
            "-t",
            "filter",
            "-A",
            "NETCTL-FORWARD",
            "-s",
            "10.9.9.9/32",
            "-j",
            "ACCEPT",
        ]);
    } else {
        // 0.0.0.0:8080/tcp: the PORTMAP key as the programs read it.
        let map = sb.pin_path("maps/PORTMAP");
        let out = std::process::Command::new("bpftool")
            .args([
                "map", "delete", "pinned", &map, "key", "hex", "00", "00", "00", "00", "1f", "90",
                "06", "00",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = sb.netctl(&["doctor"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    let expected = [
        format!(
            "container a on network front: veth {} is gone",
            veth_of("a")
        ),
        "network back: bridge nc-back is gone".to_string(),
        format!("container gone: namespace {gone_netns} is gone"),
        "link ve0badc0de: not in the state".to_string(),
        format!("netns {ghost}: not in the state"),
    ];
    for line in &expected {
        assert!(
            report.lines().any(|l| l == line),
            "missing {line:?} in:\n{report}"
        );
    }
    if datapath == "iptables" {
        assert!(
            report.contains("NETCTL-DNAT") && report.contains(": missing"),
            "{report}"
        );
        assert!(
            report.contains("10.9.9.9/32") && report.contains("not implied by the state"),
            "{report}"
        );
    } else {
        assert!(
            report.contains("ebpf port 0.0.0.0:8080->80/tcp: missing from map PORTMAP"),
            "{report}"
        );
    }

    let out = sb.netctl(&["doctor", "--fix"]);
    let fixed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{fixed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fixed.lines().all(|l| l.ends_with("(fixed)")), "{fixed}");
    let out = sb.netctl(&["doctor"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The repaired host works: the published port from outside, a by name
    // to web, b out through SNAT; gone is forgotten, the orphans are gone.
    let reply = call_until_answer(|| {
        sb.outside(&[&tool, "call", "tcp", &HOST_UPLINK_IP.to_string(), "8080"])
    });
    assert!(reply.contains(&OUTSIDE_IP.to_string()), "{reply}");
    assert!(sb
        .exec("a", &["ping", "-c1", "-W2", "web"])
        .status
        .success());
    assert!(sb
        .exec("b", &["ping", "-c1", "-W2", &OUTSIDE_IP.to_string()])
        .status
        .success());
    assert!(!sb.netctl_ok(&["container", "ls"]).contains("gone"));
    assert!(!sb.host_links().iter().any(|l| l.starts_with("ve0badc0de")));
    assert!(!sb.namespaces().contains(&ghost));
}
