//! No fail-open window (issue 12, item 8), on each datapath: an endpoint's
//! link carries nothing before the datapath holds the endpoint
//! (anti-spoofing, isolation, SNAT), and nothing once the datapath has let
//! it go. netctl is paused at the failpoint between the two steps of
//! `container run` (the link made, the datapath not yet told) and of
//! `container rm` / `network disconnect` (the datapath told, the link gone
//! or not), and the container sends frames to the outside meanwhile, one
//! set with a forged source and one with its own: none may arrive.

use std::{
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::Duration,
};

use netctl::{failpoint, model::Mac};
use netctl_tests::{
    output::line_channel,
    sandbox::{nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};

netctl_tests::on_both_datapaths!(
    a_new_link_carries_nothing_before_its_datapath,
    a_removed_link_carries_nothing_after_its_datapath,
);

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The container the tests pause netctl around, at a fixed address.
const VICTIM_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 50);
/// A source that belongs to nobody in the sandbox.
const FORGED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const FRAMES: u32 = 20;
/// How long the outside listens (the sends take a few ms).
const LISTEN_MS: &str = "1500";

/// netctl with `args`, paused at `point` (it printed so): the caller acts,
/// then [`kill`]s it.
fn paused_at(sb: &Sandbox, point: &str, args: &[&str]) -> Child {
    let mut child = sb
        .netctl_command(args)
        .env(failpoint::ENV, format!("{point}=pause"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl");
    let rx = line_channel(child.stderr.take().expect("piped"));
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("paused at") => {
                assert!(line.ends_with(point), "{line}");
                return child;
            }
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                panic!("netctl never paused at {point} ({status}): {seen:?}");
            }
        }
    }
}

/// SIGKILL, then any command finishes or undoes the interrupted one.
fn kill(sb: &Sandbox, mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
    sb.netctl_ok(&["container", "ls"]);
}

/// The container in `netns` sends [`FRAMES`] UDP frames to the outside
/// through the gateway with a forged source, then as many with its own
/// address; returns what the outside received (`received=N from=...`) and
/// whether the container could send at all (its link may be gone).
fn send_out(sb: &Sandbox, netns: &str, port: &str) -> (String, bool) {
    let tool = nettool_bin().display().to_string();
    let outside = sb.outside_netns.clone();
    let mut listener = sb.start_all_ready(&[(
        outside.as_str(),
        vec![tool.as_str(), "count", port, LISTEN_MS],
    )]);
    let mac = Mac::for_ip(VICTIM_IP).to_string();
    let gateway_mac = Mac::for_ip(GATEWAY).to_string();
    let mut sent = true;
    for src in [FORGED_IP, VICTIM_IP] {
        let out = sb.run_in(
            netns,
            &[
                &tool,
                "rawsend",
                "eth0",
                &mac,
                &gateway_mac,
                &src.to_string(),
                &OUTSIDE_IP.to_string(),
                port,
                &FRAMES.to_string(),
            ],
        );
        sent &= out.status.success();
    }
    let got = listener.pop().expect("one listener").finish();
    (got.lines().last().unwrap_or_default().to_owned(), sent)
}

fn with_front(datapath: &str) -> Sandbox {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb
}

/// The control: a running container's frames do reach the outside, its
/// own SNATed, the forged one never.
fn control(sb: &Sandbox, container: &str) {
    let netns = sb.netns_of(container);
    let (got, sent) = send_out(sb, &netns, "7100");
    assert!(sent, "the container could not send");
    assert_eq!(
        got,
        format!("received={FRAMES} from={HOST_UPLINK_IP}"),
        "the running container's frames"
    );
}

fn a_new_link_carries_nothing_before_its_datapath(datapath: &str) {
    let sb = with_front(datapath);
    let victim_ip = VICTIM_IP.to_string();
    let run = [
        "container",
        "run",
        "victim",
        "--network",
        "front",
        "--ip",
        &victim_ip,
    ];
    // The link made and configured inside, the datapath not yet told.
    let child = paused_at(&sb, "run.link", &run);
    let netns = format!("{}-victim", sb.host_netns);
    let (got, sent) = send_out(&sb, &netns, "7101");
    kill(&sb, child);
    assert!(sent, "the container's eth0 was not there to send on");
    assert_eq!(
        got, "received=0 from=",
        "frames left a container whose datapath was not attached yet"
    );
    // The same run, uninterrupted, works.
    sb.netctl_ok(&run);
    control(&sb, "victim");
}

fn a_removed_link_carries_nothing_after_its_datapath(datapath: &str) {
    let sb = with_front(datapath);
    let victim_ip = VICTIM_IP.to_string();
    let run = [
        "container",
        "run",
        "victim",
        "--network",
        "front",
        "--ip",
        &victim_ip,
    ];
    let cases: [(&str, &[&str]); 2] = [
        (
            "disconnect.datapath",
            &["network", "disconnect", "front", "victim"],
        ),
        ("rm.datapath", &["container", "rm", "victim"]),
    ];
    for (point, args) in cases {
        sb.netctl_ok(&run);
        control(&sb, "victim");
        let netns = sb.netns_of("victim");
        // The datapath has forgotten the endpoint.
        let child = paused_at(&sb, point, args);
        let (got, _sent) = send_out(&sb, &netns, "7102");
        kill(&sb, child);
        // Sending may fail (no link any more): then nothing can arrive
        // either, which is the point.
        assert_eq!(
            got, "received=0 from=",
            "{point}: frames left a container its datapath had let go"
        );
        if point.starts_with("disconnect") {
            sb.netctl_ok(&["container", "rm", "victim"]);
        }
    }
}
