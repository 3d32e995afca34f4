//! `netctl metrics`: traffic through a published port and through SNAT
//! moves the counters by exactly what was sent, on both datapaths;
//! `promtool check metrics` finds nothing in the output; and a real
//! Prometheus server in the sandbox's host namespace scrapes
//! `netctl metrics --listen` and answers a query for a counter.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use netctl::netns::NetnsGuard;
use netctl_tests::{
    on_both_datapaths,
    output::{nettool, peer_ip, text},
    sandbox::{call_until_answer, HOST_UPLINK_IP, OUTSIDE_IP},
    Sandbox,
};

on_both_datapaths!(
    counters_move_by_the_traffic_sent,
    prometheus_scrapes_the_listener
);

/// Clients of the published port, and of the outside server through SNAT.
const DNAT_CALLS: u64 = 3;
const SNAT_CALLS: u64 = 2;
/// What `nettool call udp` sends.
const HELLO: &str = "hello\n";
/// IPv4 + UDP headers; the eBPF programs count at TC, Ethernet header included.
const IP_UDP: u64 = 20 + 8;
const ETHERNET: u64 = 14;

/// Network `front` with `web` serving UDP on 80, published on 8080, and
/// `a`; an outside UDP server on 9001. Each server has answered once.
fn udp_setup(mut sb: Sandbox) -> Sandbox {
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool();
    let web = [
        "container",
        "run",
        "web",
        "--network",
        "front",
        "-p",
        "8080:80/udp",
        "--",
        &tool,
        "serve",
        "udp",
        "80",
    ];
    sb.netctl_ok(&web);
    sb.netctl_ok(&["container", "run", "a", "--network", "front"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "udp", "9001"]);
    let host = HOST_UPLINK_IP.to_string();
    call_until_answer(|| sb.outside(&[&tool, "call", "udp", &host, "8080"]));
    let server = OUTSIDE_IP.to_string();
    call_until_answer(|| sb.exec("a", &[&tool, "call", "udp", &server, "9001"]));
    sb
}

/// One UDP round trip that must succeed the first time (each one is the
/// exact traffic the counters are checked against); the reply's length.
fn udp_call(out: std::process::Output) -> u64 {
    assert!(
        out.status.success(),
        "call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out).len() as u64
}

/// The samples of an exposition text: `name{labels}` (labels sorted) → value.
fn samples(exposition: &str) -> BTreeMap<String, u64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
            let value = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            (normalize(series), value)
        })
        .collect()
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`, without empty labels.
fn normalize(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let mut pairs: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|p| !p.is_empty() && !p.ends_with("=\"\""))
        .collect();
    pairs.sort_unstable();
    format!("{name}{{{}}}", pairs.join(","))
}

/// How much a series grew between two scrapes (it must exist in both).
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, series: &str) -> u64 {
    let key = normalize(series);
    let value = |s: &BTreeMap<String, u64>, when: &str| {
        *s.get(&key)
            .unwrap_or_else(|| panic!("no {key} {when}: {:#?}", s.keys().collect::<Vec<_>>()))
    };
    value(after, "after") - value(before, "before")
}

/// `promtool check metrics` on the text: no finding, exit 0.
fn promtool_finds_nothing(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask deps`)");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}): {findings}\n{exposition}",
        out.status
    );
}

fn counters_move_by_the_traffic_sent(datapath: &str) {
    let sb = Sandbox::new(datapath);
    // A fresh host: the state's gauges at zero, no datapath yet, and no
    // state dir left behind by the read (the sandbox's drop checks).
    let fresh = sb.netctl_ok(&["metrics"]);
    promtool_finds_nothing(&fresh);
    let fresh = samples(&fresh);
    assert_eq!(fresh[&normalize("netctl_networks")], 0);
    assert!(!fresh.keys().any(|k| k.starts_with("netctl_datapath_info")));
    // Bad input: one line naming the option, exit 1, nothing made.
    let (code, err) = sb.netctl_err(&["metrics", "--listen", "banana"]);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "netctl: listen banana: not an ADDR:PORT (e.g. 127.0.0.1:9610)\n"
        )
    );
    assert!(!sb.state_dir.exists());

    let sb = udp_setup(sb);
    let before_text = sb.netctl_ok(&["metrics"]);
    promtool_finds_nothing(&before_text);
    let before = samples(&before_text);

    let tool = nettool();
    let host = HOST_UPLINK_IP.to_string();
    let mut reply_bytes = 0;
    for _ in 0..DNAT_CALLS {
        let out = sb.outside(&[&tool, "call", "udp", &host, "8080"]);
        assert_eq!(
            peer_ip(&text(&out)),
            OUTSIDE_IP,
            "the client's address kept"
        );
        reply_bytes += udp_call(out);
    }
    let server = OUTSIDE_IP.to_string();
    for _ in 0..SNAT_CALLS {
        let out = sb.exec("a", &[&tool, "call", "udp", &server, "9001"]);
        assert_eq!(peer_ip(&text(&out)), HOST_UPLINK_IP, "SNAT to the uplink");
        udp_call(out);
    }

    let after_text = sb.netctl_ok(&["metrics"]);
    promtool_finds_nothing(&after_text);
    let after = samples(&after_text);
    let d = |series: &str| delta(&before, &after, series);
    let hello = HELLO.len() as u64;
    assert_eq!(after[&normalize("netctl_networks")], 1);
    assert_eq!(after[&normalize("netctl_containers")], 2);
    assert_eq!(after[&normalize("netctl_published_ports")], 1);
    assert_eq!(
        after[&normalize(&format!("netctl_datapath_info{{datapath=\"{datapath}\"}}"))],
        1
    );
    if datapath == "iptables" {
        // nat rules count the first packet of each connection (IP bytes).
        let dnat = "netctl_iptables_rule_packets_total{table=\"nat\",chain=\"NETCTL-DNAT\",rule=\"dnat\",network=\"front\",container=\"web\",port=\"0.0.0.0:8080->80/udp\"}";
        assert_eq!(d(dnat), DNAT_CALLS, "{after_text}");
        assert_eq!(
            d(&dnat.replace("_packets_", "_bytes_")),
            DNAT_CALLS * (IP_UDP + hello)
        );
        let masquerade = "netctl_iptables_rule_packets_total{table=\"nat\",chain=\"NETCTL-POSTROUTING\",rule=\"masquerade_egress\",network=\"front\"}";
        assert_eq!(d(masquerade), SNAT_CALLS, "{after_text}");
        assert_eq!(
            d(&masquerade.replace("_packets_", "_bytes_")),
            SNAT_CALLS * (IP_UDP + hello)
        );
        // Every reply crossed the bridge as an established flow.
        let established = "netctl_iptables_rule_packets_total{table=\"filter\",chain=\"NETCTL-FORWARD\",rule=\"accept_established\",network=\"front\"}";
        assert_eq!(d(established), SNAT_CALLS, "{after_text}");
        let published = "netctl_iptables_rule_packets_total{table=\"filter\",chain=\"NETCTL-FORWARD\",rule=\"accept_published\",network=\"front\"}";
        assert_eq!(d(published), DNAT_CALLS, "{after_text}");
        return;
    }
    let frame = |payload: u64| ETHERNET + IP_UDP + payload;
    for (verdict, packets) in [
        ("dnat", DNAT_CALLS),
        ("snat", SNAT_CALLS),
        ("reverse_nat", DNAT_CALLS + SNAT_CALLS),
    ] {
        let series = format!("netctl_packets_total{{verdict=\"{verdict}\"}}");
        assert_eq!(d(&series), packets, "{series}\n{after_text}");
    }
    let port = "host_ip=\"0.0.0.0\",host_port=\"8080\",protocol=\"udp\",container=\"web\",network=\"front\"";
    assert_eq!(
        d(&format!("netctl_published_port_connections{{{port}}}")),
        DNAT_CALLS
    );
    let port_bytes =
        |dir: &str| format!("netctl_published_port_bytes_total{{{port},direction=\"{dir}\"}}");
    assert_eq!(d(&port_bytes("ingress")), DNAT_CALLS * frame(hello));
    assert_eq!(
        d(&port_bytes("egress")),
        DNAT_CALLS * frame(0) + reply_bytes
    );
    let ctr = |name: &str, dir: &str| {
        format!("netctl_container_packets_total{{container=\"{name}\",network=\"front\",direction=\"{dir}\"}}")
    };
    assert_eq!(d(&ctr("web", "ingress")), DNAT_CALLS);
    assert_eq!(d(&ctr("web", "egress")), DNAT_CALLS);
    assert_eq!(d(&ctr("a", "egress")), SNAT_CALLS);
    assert_eq!(d(&ctr("a", "ingress")), SNAT_CALLS);
    assert_eq!(
        d("netctl_container_bytes_total{container=\"a\",network=\"front\",direction=\"egress\"}"),
        SNAT_CALLS * frame(hello)
    );
    assert_eq!(d("netctl_snat_ports_in_use{protocol=\"udp\"}"), SNAT_CALLS);
    let flows = DNAT_CALLS + SNAT_CALLS;
    let entries = |kind: &str| {
        after[&normalize(&format!(
            "netctl_conntrack_entries{{kind=\"{kind}\",state=\"established\"}}"
        ))] - before[&normalize(&format!(
            "netctl_conntrack_entries{{kind=\"{kind}\",state=\"established\"}}"
        ))]
    };
    assert_eq!(
        entries("dnat") + entries("snat"),
        2 * flows,
        "two entries a flow"
    );
    assert!(after[&normalize("netctl_conntrack_capacity")] > 0);
}

/// Longest Prometheus may take to start, scrape and answer (a loaded machine).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

/// Starts `cmd` in a namespace (setns in a thread of its own).
fn spawn_in(netns_name: &str, mut cmd: Command) -> Child {
    let netns_name = netns_name.to_owned();
    std::thread::spawn(move || {
        let _guard = NetnsGuard::enter(&netns_name).expect("enter netns");
        cmd.spawn().expect("spawn")
    })
    .join()
    .expect("thread")
}

/// Stops a process with SIGTERM and waits for it; its exit status.
fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pid {pid} did not stop on SIGTERM: {:?}", child.wait());
        }
        sleep(Duration::from_millis(100));
    }
}

/// Removes the Prometheus directory, and stops what is still running,
/// even when the test fails half-way.
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_scrapes_the_listener(datapath: &str) {
    let sb = udp_setup(Sandbox::new(datapath));
    let mut scratch = Scratch {
        dir: std::env::temp_dir().join(format!("{}-prometheus", sb.prefix)),
        children: Vec::new(),
    };
    fs::create_dir(&scratch.dir).expect("prometheus dir");

    let mut listen = sb.netctl_command(&["metrics", "--listen", "127.0.0.1:0"]);
    listen.stdout(Stdio::piped());
    let mut netctl = spawn_in(&sb.host_netns, listen);
    let mut first = String::new();
    BufReader::new(netctl.stdout.take().expect("piped"))
        .read_line(&mut first)
        .expect("netctl's first line");
    scratch.children.push(netctl);
    let target = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {first:?}"))
        .to_owned();

    // Only /metrics is served.
    let elsewhere = sb.in_host(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        &format!("http://{target}/"),
    ]);
    assert_eq!(text(&elsewhere), "404");

    let config = scratch.dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: netctl\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus.yml");
    let mut prometheus = Command::new("prometheus");
    prometheus
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    scratch.children.push(spawn_in(&sb.host_netns, prometheus));

    // Traffic after both started: the counter Prometheus reports must be
    // the one `netctl metrics` prints once the traffic is over.
    let tool = nettool();
    let host = HOST_UPLINK_IP.to_string();
    for _ in 0..DNAT_CALLS {
        udp_call(sb.outside(&[&tool, "call", "udp", &host, "8080"]));
    }
    let (query, series) = if datapath == "ebpf" {
        (
            "netctl_packets_total{verdict=\"dnat\"}",
            "netctl_packets_total{verdict=\"dnat\"}",
        )
    } else {
        (
            "netctl_iptables_rule_packets_total{rule=\"dnat\",container=\"web\"}",
            "netctl_iptables_rule_packets_total{table=\"nat\",chain=\"NETCTL-DNAT\",rule=\"dnat\",network=\"front\",container=\"web\",port=\"0.0.0.0:8080->80/udp\"}",
        )
    };
    let now = samples(&sb.netctl_ok(&["metrics"]));
    let expected = now[&normalize(series)];
    assert!(expected > DNAT_CALLS, "the calls were counted: {expected}");

    let url = format!(
        "http://{PROMETHEUS_ADDR}/api/v1/query?query={}",
        query
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
            .replace(',', "%2C")
    );
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    let mut last;
    let answered = loop {
        let out = sb.in_host(&["curl", "-sS", "--max-time", "2", &url]);
        last = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text(&out)) {
            let value = &json["data"]["result"][0]["value"][1];
            if value.as_str() == Some(expected.to_string().as_str()) {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        sleep(Duration::from_millis(500));
    };
    assert!(
        answered,
        "Prometheus did not report {query} = {expected} within {PROMETHEUS_WAIT:?}; last answer: {last}"
    );

    // Scrapes after `down` answer a fresh host, and bring no state dir back.
    sb.netctl_ok(&["down"]);
    let after_down = sb.in_host(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "5",
        &format!("http://{target}/metrics"),
    ]);
    assert!(
        text(&after_down).contains("\nnetctl_networks 0\n"),
        "{}",
        String::from_utf8_lossy(&after_down.stderr)
    );

    let prometheus = scratch.children.pop().expect("prometheus");
    let netctl = scratch.children.pop().expect("netctl");
    stop(prometheus);
    let status = stop(netctl);
    assert!(
        status.success(),
        "netctl metrics --listen on SIGTERM: {status}"
    );
    assert!(
        !sb.state_dir.exists(),
        "scrapes left {}",
        sb.state_dir.display()
    );
}
