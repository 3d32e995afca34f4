//! Upgrade in place (issue 12, item 10), on the eBPF datapath (the
//! iptables datapath has no programs to replace: its rules are rewritten by
//! every command). A netctl that finds a datapath loaded by an older build
//! takes it over on the next command that changes the host: the programs
//! are replaced on their existing links (same link ids, new program ids),
//! the maps whose layout is unchanged are kept, hooks the older datapath
//! lacked are attached, and TCP streams through SNAT and a published port
//! lose no byte. A datapath it cannot take over (a layout without a
//! migration, a newer one) is refused with one line naming the map, and
//! nothing changes.
//!
//! "Older" is written into the pinned layout record (`LAYOUT`), as a
//! previous build would have left it: an older datapath version and
//! another object, one cgroup hook it did not have. With `NETCTL_OLD_BIN`
//! naming an older netctl binary, that binary loads the datapath instead
//! (a real older build: no record at all, fewer hooks).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread::sleep,
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use netctl_common::{
    layout::{Layout, DATAPATH_VERSION},
    maps,
};
use netctl_tests::{
    output::{assert_no_byte_lost, text},
    sandbox::{call_until_answer, nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};

/// The layout record of the sandbox's host, read or rewritten in place.
fn record(sb: &Sandbox) -> Array<MapData, Layout> {
    let data = MapData::from_pin(sb.pin_path("LAYOUT")).expect("LAYOUT pinned");
    Array::try_from(Map::Array(data)).expect("LAYOUT is an array of Layout")
}

fn rewrite_record(sb: &Sandbox, change: impl FnOnce(&mut Layout)) -> Layout {
    let mut map = record(sb);
    let mut layout = map.get(&0, 0).expect("slot 0");
    change(&mut layout);
    map.set(0, layout, 0).expect("write LAYOUT");
    layout
}

/// (link id, program id) of a pinned link, from bpftool.
fn link_ids(sb: &Sandbox, link: &str) -> (u64, u64) {
    let path = sb.pin_path(&format!("links/{link}"));
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned", &path])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool link show {path}: {}",
        text(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    (
        json["id"].as_u64().expect("link id"),
        json["prog_id"].as_u64().expect("prog_id"),
    )
}

fn links(sb: &Sandbox) -> Vec<String> {
    sb.pins()
        .into_iter()
        .filter_map(|p| p.strip_prefix("links/").map(str::to_owned))
        .collect()
}

fn version_json(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.netctl_ok(&["--format", "json", "version"])).expect("version json")
}

/// An older netctl binary to load the datapath with, if the run names one.
fn old_binary() -> Option<PathBuf> {
    std::env::var_os("NETCTL_OLD_BIN").map(PathBuf::from)
}

/// netctl `args` on the sandbox's host, by `binary` (the current one when
/// `None`); must succeed.
fn netctl_by(sb: &Sandbox, binary: Option<&Path>, args: &[&str]) {
    let out: Output = match binary {
        None => sb.netctl(args),
        Some(bin) => Command::new(bin)
            .arg("--host-netns")
            .arg(&sb.host_netns)
            .arg("--cgroup")
            .arg(&sb.cgroup)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the old netctl"),
    };
    assert!(
        out.status.success(),
        "netctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host with a sink behind a published port, a client container and a
/// sink outside, made by `binary` (the current one when `None`).
fn host_with_streams(binary: Option<&Path>) -> Sandbox {
    let mut sb = Sandbox::new("ebpf");
    let tool = nettool_bin().display().to_string();
    netctl_by(
        &sb,
        binary,
        &["network", "create", "front", "--subnet", "172.18.0.0/16"],
    );
    netctl_by(
        &sb,
        binary,
        &[
            "container",
            "run",
            "sink",
            "--network",
            "front",
            "-p",
            "7070:7070",
            "--",
            &tool,
            "sink",
            "7070",
        ],
    );
    netctl_by(
        &sb,
        binary,
        &["container", "run", "a", "--network", "front"],
    );
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "sink", "7071"]);
    let (host, far) = (HOST_UPLINK_IP.to_string(), OUTSIDE_IP.to_string());
    call_until_answer(|| sb.outside(&[&tool, "stream", &host, "7070", "0"]));
    call_until_answer(|| sb.exec("a", &[&tool, "stream", &far, "7071", "0"]));
    sb
}

#[test]
fn an_older_datapath_is_taken_over_in_place_without_losing_a_byte() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let old = old_binary();
    let sb = host_with_streams(old.as_deref());
    let mine = version_json(&sb)["binary"].clone();
    let missing = "cgroup@sock_connect6";
    let missing_path = sb.pin_path(&format!("links/{missing}"));
    if old.is_none() {
        assert_eq!(
            version_json(&sb)["loaded"],
            mine,
            "a fresh load records this build"
        );
        // An older build's datapath: an older version, other programs, and
        // no dual-stack connect hook yet.
        rewrite_record(&sb, |l| {
            l.datapath = DATAPATH_VERSION - 1;
            l.object ^= 1;
        });
        std::fs::remove_file(&missing_path).expect("unpin a hook");
    }
    assert!(!Path::new(&missing_path).exists());
    let loaded = version_json(&sb)["loaded"].clone();
    assert!(
        loaded["datapath"].as_u64().expect("a loaded datapath") < u64::from(DATAPATH_VERSION),
        "{loaded}"
    );
    let before: Vec<(String, (u64, u64))> = links(&sb)
        .into_iter()
        .map(|l| (l.clone(), link_ids(&sb, &l)))
        .collect();
    let maps_before: Vec<String> = [maps::ENDPOINTS, maps::PORTMAP, maps::NETWORKS]
        .iter()
        .map(|m| sb.bpf_map_dump(m))
        .collect();

    let tool = nettool_bin().display().to_string();
    let (host, far) = (HOST_UPLINK_IP.to_string(), OUTSIDE_IP.to_string());
    let (inbound, outbound, upgrade) = std::thread::scope(|scope| {
        let inbound = scope.spawn(|| sb.outside(&[&tool, "stream", &host, "7070", "4"]));
        let outbound = scope.spawn(|| sb.exec("a", &[&tool, "stream", &far, "7071", "4"]));
        sleep(Duration::from_millis(500));
        // The first command that changes the host takes the datapath over.
        let upgrade = sb.netctl(&["container", "run", "b", "--network", "front"]);
        (inbound.join().unwrap(), outbound.join().unwrap(), upgrade)
    });
    let stderr = String::from_utf8_lossy(&upgrade.stderr);
    assert!(upgrade.status.success(), "the upgrading command: {stderr}");
    assert!(
        stderr.contains("upgraded the eBPF datapath in place"),
        "{stderr}"
    );
    assert_no_byte_lost("outside → published port", &inbound);
    assert_no_byte_lost("container → outside (SNAT)", &outbound);

    // The record is this build's; every old link is the same link running
    // a new program; the missing hook is back.
    assert_eq!(version_json(&sb)["loaded"], mine);
    for (link, (link_id, prog_id)) in &before {
        let (now_link, now_prog) = link_ids(&sb, link);
        assert_eq!(now_link, *link_id, "{link}: the same link");
        assert_ne!(now_prog, *prog_id, "{link}: a new program");
    }
    assert!(
        Path::new(&missing_path).exists(),
        "{missing} attached again"
    );
    // The maps were kept, entries and all (b added its own endpoint).
    let maps_after: Vec<String> = [maps::ENDPOINTS, maps::PORTMAP, maps::NETWORKS]
        .iter()
        .map(|m| sb.bpf_map_dump(m))
        .collect();
    assert_eq!(
        maps_after[1..],
        maps_before[1..],
        "PORTMAP and NETWORKS kept"
    );
    for line in maps_before[0].lines().filter(|l| !l.starts_with("Found")) {
        assert!(maps_after[0].contains(line), "ENDPOINTS lost {line}");
    }
    // The new programs run: new connections both ways, and the hook that
    // came with the upgrade.
    call_until_answer(|| sb.outside(&[&tool, "stream", &host, "7070", "0"]));
    call_until_answer(|| sb.exec("b", &[&tool, "stream", &far, "7071", "0"]));
    // Nothing left to do: the next command is a plain one.
    let again = sb.netctl(&["container", "run", "c", "--network", "front"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("upgraded"));
}

/// An edit of the layout record.
type Change = dyn Fn(&mut Layout);

#[test]
fn a_datapath_that_cannot_be_taken_over_is_refused_with_nothing_changed() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let sb = host_with_streams(None);
    let ct = netctl_common::layout::layout_version(maps::CONNTRACK).expect("CONNTRACK layout");
    let cases: [(&str, Box<Change>, &[&str]); 3] = [
        (
            "an older conntrack layout without a migration",
            Box::new(move |l: &mut Layout| assert!(l.set_version(maps::CONNTRACK, ct - 1))),
            &["map CONNTRACK", "no migration"],
        ),
        (
            "a newer conntrack layout",
            Box::new(move |l: &mut Layout| assert!(l.set_version(maps::CONNTRACK, ct + 1))),
            &["map CONNTRACK", "newer"],
        ),
        (
            "a newer datapath",
            Box::new(|l: &mut Layout| l.datapath = DATAPATH_VERSION + 1),
            &["newer netctl"],
        ),
    ];
    let pristine = record(&sb).get(&0, 0).expect("slot 0");
    for (what, change, words) in cases {
        let written = rewrite_record(&sb, |l| {
            *l = pristine;
            change(l);
        });
        let pins = sb.pins();
        let ids: Vec<(u64, u64)> = links(&sb).iter().map(|l| link_ids(&sb, l)).collect();
        let dumps: Vec<String> = maps::ALL
            .iter()
            .map(|m| sb.bpf_map_dump(m))
            .collect::<Vec<_>>();
        let state = std::fs::read_to_string(sb.state_dir.join("state.json")).expect("state");

        let (code, err) = sb.netctl_err(&["container", "run", "refused", "--network", "front"]);
        assert_eq!(code, 1, "{what}: bad input, exit 1: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.contains("datapath ebpf"), "{what}: {err}");
        for word in words {
            assert!(err.contains(word), "{what}: {err}");
        }
        // The maps are not misread either.
        let (code, err) = sb.netctl_err(&["stats"]);
        assert_eq!(code, 1, "{what}: stats: {err}");

        assert_eq!(sb.pins(), pins, "{what}: pins changed");
        let now: Vec<(u64, u64)> = links(&sb).iter().map(|l| link_ids(&sb, l)).collect();
        assert_eq!(now, ids, "{what}: a link or its program changed");
        let dumps_now: Vec<String> = maps::ALL
            .iter()
            .filter(|m| **m != maps::STATS && **m != maps::CONNTRACK)
            .map(|m| sb.bpf_map_dump(m))
            .collect();
        let dumps_then: Vec<String> = maps::ALL
            .iter()
            .zip(&dumps)
            .filter(|(m, _)| **m != maps::STATS && **m != maps::CONNTRACK)
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(dumps_now, dumps_then, "{what}: a map changed");
        assert_eq!(
            record(&sb).get(&0, 0).expect("slot 0"),
            written,
            "{what}: record changed"
        );
        assert_eq!(
            std::fs::read_to_string(sb.state_dir.join("state.json")).expect("state"),
            state,
            "{what}: state changed"
        );
        assert!(
            !sb.namespaces().iter().any(|n| n.ends_with("-refused")),
            "{what}: a namespace was made"
        );
    }
    // `down` takes anything down, even what it would not take over.
    sb.netctl_ok(&["down"]);
}
