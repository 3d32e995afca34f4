//! Transactions, crash safety and drift, on both datapaths: a step that
//! fails changes nothing; a netctl killed at any step is finished by the
//! next one; `doctor` finds what changed behind netctl's back and `--fix`
//! repairs it, traffic included.
//!
//! The failure and crash tests walk every point of `failpoint::POINTS`: a
//! transaction (create, run, connect) that fails or is killed leaves the
//! host exactly as before; a removal (rm, network rm, prune, disconnect,
//! down) goes on past a failure, and one killed is completed by the next
//! command, and either way the host is as a twin sandbox's after the same
//! removal without failpoint; `doctor --fix` failed or killed is finished
//! by the next `doctor --fix`, also as its twin. The CNI plugin's ADD and
//! DEL have a walk of their own, driven as a runtime drives them.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use netctl::{failpoint, model::DatapathKind, model::Mac};
use netctl_tests::{
    host_state::{as_twin, assert_same, map_entries, snapshot, stale_flows},
    sandbox::{call_until_answer, netctl_bin, nettool_bin, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};
use serde_json::{json, Value};

netctl_tests::on_both_datapaths!(
    a_failure_at_any_step_changes_nothing,
    a_crash_at_any_step_is_finished_by_the_next_command,
    cni_add_and_del_fail_or_crash_at_any_step,
    doctor_reports_drift_and_fix_repairs_it,
);

/// How a command meets a failure or a crash, by failpoint group.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Undone on failure or crash: the host is as before.
    Transaction,
    /// Goes on past a failure; completed by the next command after a crash.
    Removal,
    /// `doctor --fix`: finished by the next `doctor --fix`.
    Repair,
    /// A CNI command: walked by the CNI test only.
    Cni,
}

fn group(point: &str) -> &str {
    point.split('.').next().unwrap_or_default()
}

fn kind(point: &str) -> Kind {
    match group(point) {
        "rm" | "network-rm" | "prune" | "disconnect" | "down" => Kind::Removal,
        "doctor" => Kind::Repair,
        "cni-add" | "cni-del" => Kind::Cni,
        _ => Kind::Transaction,
    }
}

fn datapath_kind(datapath: &str) -> DatapathKind {
    match datapath {
        "ebpf" => DatapathKind::Ebpf,
        _ => DatapathKind::Iptables,
    }
}

/// Set to comma-separated prefixes (`rm.,down.host`) to walk only the
/// points they start (while working on some; said on stderr).
const ONLY_ENV: &str = "NETCTL_TEST_FAILPOINTS";

/// Whether [`ONLY_ENV`] lets the walk try `point`.
fn wanted(point: &str) -> bool {
    let only = std::env::var(ONLY_ENV).unwrap_or_default();
    only.is_empty() || only.split(',').any(|o| point.starts_with(o))
}

/// The points a command on `datapath` passes, of the given kinds.
fn points(datapath: &str, kinds: &[Kind]) -> Vec<&'static str> {
    if let Ok(only) = std::env::var(ONLY_ENV) {
        eprintln!("{ONLY_ENV}={only}: walking only those points");
    }
    failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| kinds.contains(&kind(p)) && wanted(p))
        .filter(|p| failpoint::reached_on(p, datapath_kind(datapath)))
        .collect()
}

/// The command that reaches each failpoint, on the host `prepare` builds.
/// Two ports and two containers, so that "after the first" is real.
fn command_for(point: &str, datapath: &str) -> Vec<String> {
    let line = match group(point) {
        "create" => "network create extra --subnet 10.77.0.0/24",
        "run" | "commit" => {
            "container run newcomer --network front -p 9000:90 -p 9001:91 -- sleep 30"
        }
        "connect" => "network connect back web",
        "rm" => "container rm web a",
        "network-rm" => "network rm spare",
        "prune" => "network prune",
        "disconnect" => "network disconnect front web",
        "down" => "down",
        "doctor" => "doctor --fix",
        other => panic!("no command for failpoint group {other}"),
    };
    let mut words: Vec<&str> = line.split(' ').collect();
    // `create.host*` is only reached by a host's first command.
    if point.starts_with("create.host") {
        words.extend(["--datapath", datapath]);
    }
    words.iter().map(|w| w.to_string()).collect()
}

/// A host with networks front (web publishing 8080 and 8081 and running a
/// command, a), back and spare; on eBPF, a flow from web and one from a in
/// CONNTRACK. `create.host*` gets an empty host; `doctor` a host with a's
/// veth deleted and a stray link.
fn prepare(sb: &Sandbox, point: &str) {
    if point.starts_with("create.host") {
        return;
    }
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    sb.network("back", &["--subnet", "172.19.0.0/16"]);
    sb.network("spare", &["--subnet", "172.20.0.0/16"]);
    let web = "container run web --network front -p 8080:80 -p 8081:81 -- sleep 300";
    sb.netctl_ok(&web.split(' ').collect::<Vec<_>>());
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    if sb.datapath == "ebpf" {
        make_flows(sb, &["web", "a"]);
    }
    if group(point) == "doctor" {
        let veth = sb.inspect("a")["endpoints"][0]["host_veth"]
            .as_str()
            .unwrap()
            .to_owned();
        in_host_ok(sb, &["ip", "link", "del", &veth]);
        in_host_ok(sb, &STRAY_LINK);
    }
}

/// A veth pair under netctl's names that no container owns.
const STRAY_LINK: [&str; 9] = [
    "ip",
    "link",
    "add",
    "ve0badc0de",
    "type",
    "veth",
    "peer",
    "name",
    "ve0badc0dep",
];

fn in_host_ok(sb: &Sandbox, argv: &[&str]) {
    let out = sb.in_host(argv);
    assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One UDP datagram from each container to the outside, from a fixed
/// source port (`nettool rawsend`), so that the SNAT flows' CONNTRACK keys
/// are the same in every sandbox; waits until both directions of each are
/// tracked.
fn make_flows(sb: &Sandbox, containers: &[&str]) {
    let tool = nettool_bin().display().to_string();
    let gateway = Mac::for_ip(Ipv4Addr::new(172, 18, 0, 1)).to_string();
    for name in containers {
        let ip = sb.ip_of(name, "front");
        let out = sb.exec(
            name,
            &[
                &tool,
                "rawsend",
                "eth0",
                &Mac::for_ip(ip).to_string(),
                &gateway,
                &ip.to_string(),
                &OUTSIDE_IP.to_string(),
                "5000",
                "1",
            ],
        );
        assert!(out.status.success(), "rawsend: {}", text(&out.stderr));
    }
    let wanted = 2 * containers.len();
    for _ in 0..50 {
        if map_entries(sb, "CONNTRACK").len() >= wanted {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no SNAT flows tracked: {:?}", map_entries(sb, "CONNTRACK"));
}

/// The host of a twin sandbox after `point`'s command ran without
/// failpoint, as [`as_twin`] reads it; one twin per command.
fn twin<'a>(
    twins: &'a mut BTreeMap<String, Vec<String>>,
    datapath: &str,
    point: &str,
) -> &'a [String] {
    twins.entry(group(point).to_owned()).or_insert_with(|| {
        let sb = Sandbox::new(datapath);
        prepare(&sb, point);
        let command = command_for(point, datapath);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        sb.netctl_ok(&args);
        assert_doctor_clean(&sb, &format!("{point}: twin"));
        as_twin(&snapshot(&sb), &sb, kind(point) != Kind::Repair)
    })
}

fn with_failpoint(sb: &Sandbox, value: &str, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.netctl_command(&args)
        .env(failpoint::ENV, value)
        .output()
        .expect("run netctl")
}

/// `doctor` finds nothing, and CONNTRACK holds no flow of an endpoint that
/// is gone (which doctor does not look at).
fn assert_doctor_clean(sb: &Sandbox, point: &str) {
    let stale = stale_flows(sb);
    assert!(
        stale.is_empty(),
        "{point}: flows of gone endpoints: {stale:?}"
    );
    let doctor = sb.netctl(&["doctor"]);
    assert!(
        doctor.status.success(),
        "{point}: doctor: {}{}",
        text(&doctor.stdout),
        text(&doctor.stderr)
    );
}

/// Each step of every command fails in turn. A transaction reports that
/// step, rolls back, and the host is exactly as before; then the same
/// command succeeds. A removal reports it too but goes on, and the host is
/// as its twin's after a clean removal (a failed `down` keeps its state
/// until the next `down`); `doctor --fix` is finished by the next one.
fn a_failure_at_any_step_changes_nothing(datapath: &str) {
    let mut twins = BTreeMap::new();
    for point in points(datapath, &[Kind::Transaction, Kind::Removal, Kind::Repair]) {
        let sb = Sandbox::new(datapath);
        prepare(&sb, point);
        let before = snapshot(&sb);
        let command = command_for(point, datapath);
        let out = with_failpoint(&sb, point, &command);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("step {point}: injected failure")),
            "{point}: {stderr}"
        );
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        match kind(point) {
            Kind::Transaction => {
                // One line, the step's error alone: the rollback met none.
                assert_eq!(out.status.code(), Some(2), "{point}: {stderr}");
                assert_eq!(
                    stderr.trim_end(),
                    format!("netctl: step {point}: injected failure (NETCTL_FAILPOINT)"),
                );
                assert_same(
                    &snapshot(&sb),
                    &before,
                    &format!("{point}: the failed command changed the host"),
                );
                if point.starts_with("create.host") {
                    assert!(
                        !sb.state_dir.exists(),
                        "a failed first command keeps no state"
                    );
                }
                assert_doctor_clean(&sb, point);
                sb.netctl_ok(&args);
            }
            Kind::Removal => {
                assert_eq!(out.status.code(), Some(2), "{point}: {stderr}");
                if group(point) == "down" {
                    sb.netctl_ok(&["down"]);
                }
                assert_same(
                    &as_twin(&snapshot(&sb), &sb, true),
                    twin(&mut twins, datapath, point),
                    &format!("{point}: the failed removal is not its twin's clean one"),
                );
                assert_doctor_clean(&sb, point);
            }
            Kind::Repair | Kind::Cni => {
                sb.netctl_ok(&args);
                assert_doctor_clean(&sb, point);
                assert_same(
                    &as_twin(&snapshot(&sb), &sb, false),
                    twin(&mut twins, datapath, point),
                    &format!("{point}: the failed repair, repaired again, is not its twin's"),
                );
            }
        }
    }
}

/// Starts `command` paused at `point` (writing `stdin` to it), then kills
/// it with SIGKILL there.
fn kill_at(point: &str, mut command: Command, stdin: &[u8]) {
    let mut child = command
        .env(failpoint::ENV, format!("{point}=pause"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netctl");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("stdin");
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

/// netctl killed at every step of every command. The next command (a
/// read-only `container ls`) finishes the job from the journal: an
/// interrupted create, run or connect is undone, exactly; an interrupted
/// removal is completed, as its twin's clean removal. A killed `doctor
/// --fix` is finished by the next one, as its twin. Either way `doctor`
/// then finds nothing.
fn a_crash_at_any_step_is_finished_by_the_next_command(datapath: &str) {
    let mut twins = BTreeMap::new();
    for point in points(datapath, &[Kind::Transaction, Kind::Removal, Kind::Repair]) {
        let sb = Sandbox::new(datapath);
        prepare(&sb, point);
        let before = snapshot(&sb);
        let command = command_for(point, datapath);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        kill_at(point, sb.netctl_command(&args), b"");

        let next: &[&str] = match kind(point) {
            Kind::Repair => &["doctor", "--fix"],
            _ => &["container", "ls"],
        };
        let out = sb.netctl(next);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{point}: {stderr}");
        if kind(point) != Kind::Repair {
            assert!(
                stderr.contains("finishing `"),
                "{point}: no recovery: {stderr}"
            );
        }
        assert_doctor_clean(&sb, point);
        match kind(point) {
            Kind::Transaction => {
                assert_same(
                    &snapshot(&sb),
                    &before,
                    &format!("{point}: the killed command left traces"),
                );
                // The host takes commands again, the interrupted one included.
                sb.netctl_ok(&args);
            }
            other => assert_same(
                &as_twin(&snapshot(&sb), &sb, other != Kind::Repair),
                twin(&mut twins, datapath, point),
                &format!("{point}: the finished command is not its twin's"),
            ),
        }
    }
}

/// The CNI plugin's points, and the points of the transactions ADD and
/// DEL run that matter most to a runtime: the first ADD's network, the
/// veth, the ports, the commit; the removal.
fn cni_points(datapath: &str) -> Vec<&'static str> {
    let mut walked = points(datapath, &[Kind::Cni]);
    let ports = match datapath {
        "ebpf" => "run.ports.map",
        _ => "run.ports",
    };
    let core = [
        "create.network",
        "run.link.veth",
        ports,
        "commit",
        "rm.datapath",
    ];
    walked.extend(core.into_iter().filter(|p| wanted(p)));
    walked
}

/// A runtime's side of the CNI test: the configuration (delegating IPAM
/// to host-local, whose reservations live in the state dir) and the plugin
/// exec'd with the `CNI_*` environment.
struct Cni<'a> {
    sb: &'a Sandbox,
    ipam_dir: std::path::PathBuf,
}

impl Cni<'_> {
    fn conf(&self, with_ports: bool) -> Vec<u8> {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "cninet",
            "type": "netctl",
            "datapath": self.sb.datapath,
            "hostNetns": self.sb.host_netns,
            "stateDir": self.sb.state_dir,
            "cgroup": self.sb.cgroup,
            "uplink": "uplink0",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.79.0.0/24", "rangeStart": "10.79.0.100", "gateway": "10.79.0.1"}]],
                "dataDir": self.ipam_dir,
            },
        });
        if with_ports {
            conf["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"},
            ]});
        }
        serde_json::to_vec(&conf).unwrap()
    }

    /// A container namespace as a runtime makes one; its path.
    fn netns(&self, name: &str) -> String {
        let name = format!("{}-{name}", self.sb.prefix);
        netctl::netns::create(&name).unwrap();
        netctl::netns::path(&name).display().to_string()
    }

    fn command(&self, command: &str, id: &str, netns: &str) -> Command {
        let mut cmd = Command::new(netctl_bin());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", netns)
            .env("CNI_PATH", "/usr/lib/cni");
        cmd
    }

    fn run(&self, mut command: Command, stdin: &[u8]) -> Output {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().expect("plugin output")
    }

    fn ok(&self, command: &str, id: &str, netns: &str, stdin: &[u8]) -> Output {
        let out = self.run(self.command(command, id, netns), stdin);
        assert!(
            out.status.success(),
            "{command} {id}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// host-local's reservations (addresses held), sorted.
    fn reservations(&self) -> Vec<String> {
        let mut held: Vec<String> = std::fs::read_dir(self.ipam_dir.join("cninet"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        held.sort();
        held
    }
}

/// ADD and DEL fail, or are killed, at each point in turn. A failed ADD
/// reports the step in a CNI error object; then, as the spec has it, the
/// runtime calls DEL, which also finishes what a killed netctl left; and
/// the host and the IPAM's reservations are as before the ADD. Up to its
/// commit the ADD is the host's first, so its network must go too; after
/// it (the result), the network exists already. A DEL that failed or was
/// killed is called again, and the host is as before the ADD.
fn cni_add_and_del_fail_or_crash_at_any_step(datapath: &str) {
    const KEEP: &str = "0001keep";
    const TARGET: &str = "0002target";
    for point in cni_points(datapath) {
        for crash in [false, true] {
            let what = format!("{point} ({})", if crash { "crash" } else { "failure" });
            let sb = Sandbox::new(datapath);
            let cni = Cni {
                sb: &sb,
                ipam_dir: sb.state_dir.join("host-local"),
            };
            let adding = !matches!(group(point), "cni-del" | "rm");
            if !adding || point == "cni-add.result" {
                let keep = cni.netns("keep");
                cni.ok("ADD", KEEP, &keep, &cni.conf(false));
            }
            let netns = cni.netns("target");
            let conf = cni.conf(true);
            let before = (snapshot(&sb), cni.reservations());
            if !adding {
                cni.ok("ADD", TARGET, &netns, &conf);
            }
            let command = cni.command(if adding { "ADD" } else { "DEL" }, TARGET, &netns);
            if crash {
                kill_at(point, command, &conf);
            } else {
                let mut command = command;
                command.env(failpoint::ENV, point);
                let out = cni.run(command, &conf);
                assert!(!out.status.success(), "{what}: succeeded");
                let error: Value = serde_json::from_slice(&out.stdout).expect("error object");
                let step = format!("step {point}: injected failure");
                assert!(
                    error["details"].as_str().is_some_and(|m| m.contains(&step)),
                    "{what}: {error}"
                );
            }
            let del = cni.ok("DEL", TARGET, &netns, &conf);
            if crash && !point.starts_with("cni-") {
                assert!(
                    text(&del.stderr).contains("finishing `"),
                    "{what}: no recovery: {}",
                    text(&del.stderr)
                );
            }
            assert_doctor_clean(&sb, &what);
            assert_same(
                &snapshot(&sb),
                &before.0,
                &format!("{what}: the host is not as before the ADD"),
            );
            assert_eq!(cni.reservations(), before.1, "{what}: IPAM reservations");
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
    let host = |argv: &[&str]| in_host_ok(&sb, argv);
    host(&["ip", "link", "del", &veth_of("a")]);
    host(&["ip", "link", "del", "nc-back"]);
    let gone_netns = format!("{}-gone", sb.host_netns);
    let out = std::process::Command::new("ip")
        .args(["netns", "delete", &gone_netns])
        .output()
        .unwrap();
    assert!(out.status.success());
    host(&STRAY_LINK);
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
        // The ARP anti-spoofing rules in nftables: all gone, one stray.
        host(&["nft", "flush", "chain", "bridge", "netctl", "antispoof"]);
        host(&[
            "nft",
            "add",
            "rule",
            "bridge",
            "netctl",
            "antispoof",
            "iifname",
            "ve0stray",
            "drop",
            "comment",
            "\"ve0stray 10.9.9.9 02:00:00:00:00:01\"",
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
        // front's gateway (172.18.0.1/32) gone from NETWORK_PREFIXES, and a
        // prefix no network owns (10.9.9.0/24 → id 999).
        let prefixes = sb.pin_path("maps/NETWORK_PREFIXES");
        for edit in [
            &[
                "delete", "key", "hex", "20", "00", "00", "00", "ac", "12", "00", "01",
            ][..],
            &[
                "update", "key", "hex", "18", "00", "00", "00", "0a", "09", "09", "00", "value",
                "hex", "e7", "03", "00", "00", "01", "00", "00", "00",
            ],
        ] {
            let argv = [&["map", edit[0], "pinned", &prefixes], &edit[1..]].concat();
            let out = std::process::Command::new("bpftool")
                .args(&argv)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
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
        let web_arp = format!(
            "nftables rule \"{}\": missing",
            netctl::datapath::iptables::arp_rule_comment(
                &serde_json::from_value(sb.inspect("web")["endpoints"][0].clone()).unwrap()
            )
        );
        assert!(
            report.lines().any(|l| l == web_arp),
            "{web_arp:?} in:\n{report}"
        );
        assert!(
            report.lines().any(|l| {
                l
                == "nftables rule \"ve0stray 10.9.9.9 02:00:00:00:00:01\": not implied by the state"
            }),
            "{report}"
        );
    } else {
        assert!(
            report.contains("ebpf port 0.0.0.0:8080->80/tcp: missing from map PORTMAP"),
            "{report}"
        );
        for line in [
            "ebpf network front: gateway missing from map NETWORK_PREFIXES",
            "ebpf prefix 10.9.9.0/24: in map NETWORK_PREFIXES (network id 999), not in the state",
        ] {
            assert!(
                report.lines().any(|l| l == line),
                "missing {line:?} in:\n{report}"
            );
        }
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
