//! netctl as Docker's network driver, driven by a real dockerd 20.10
//! (Debian's docker.io) in the sandbox's host namespace
//! (`netctl_tests::docker`): `docker network create -d PLUGIN`, `docker
//! run -p`, Docker's embedded DNS, dockerd and the plugin restarted under
//! a flowing connection, and removal, on both datapaths.

use std::{net::Ipv4Addr, time::Duration};

use netctl_tests::{
    docker::{Docker, IMAGE},
    output::{assert_no_byte_lost, nettool, peer_ip, text},
    sandbox::{call_until_answer, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};
use serde_json::Value;

netctl_tests::on_both_datapaths!(
    published_port_egress_names_and_removal,
    a_connection_outlives_dockerd_and_plugin_restarts,
    a_failed_call_is_docker_error_and_leaves_nothing,
);

const SUBNET: &str = "172.30.0.0/16";
/// `docker run --mac-address` of the client.
const CLIENT_MAC: &str = "02:42:ac:1e:00:99";
/// The port `nettool serve` answers on outside, for egress.
const OUTSIDE_PORT: &str = "9000";

/// `docker network create -d PLUGIN` on this datapath; returns the netctl
/// network it became (`docker-` + Docker's short id).
fn create_network(docker: &Docker, datapath: &str) -> String {
    let id = docker.docker_ok(&[
        "network",
        "create",
        "-d",
        &docker.plugin,
        "--subnet",
        SUBNET,
        "-o",
        &format!("netctl.datapath={datapath}"),
        "front",
    ]);
    format!("docker-{}", &id[..12])
}

/// `docker run -d -p PORTS --name NAME IMAGE nettool ARGS...` on `front`.
fn run_nettool(docker: &Docker, name: &str, ports: &str, args: &[&str]) {
    let run = [
        "run",
        "-d",
        "--network",
        "front",
        "-p",
        ports,
        "--name",
        name,
        IMAGE,
        "nettool",
    ];
    docker.docker_ok(&[&run[..], args].concat());
}

/// Docker's address and endpoint id of a container on `front`.
fn endpoint(docker: &Docker, container: &str) -> (Ipv4Addr, String) {
    let format = "{{.NetworkSettings.Networks.front.IPAddress}} {{.NetworkSettings.Networks.front.EndpointID}}";
    let out = docker.docker_ok(&["inspect", "-f", format, container]);
    let (ip, id) = out.split_once(' ').expect("ip and endpoint id");
    (ip.parse().expect("an address"), id.to_owned())
}

/// netctl's listing, as JSON.
fn listing(sb: &Sandbox, args: &[&str]) -> Vec<Value> {
    let out = sb.netctl_ok(&[&["--format", "json"], args].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn doctor_is_clean(sb: &Sandbox) {
    let out = sb.netctl(&["doctor"]);
    assert!(
        out.status.success(),
        "doctor: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn published_port_egress_names_and_removal(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    let tool = nettool();
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", OUTSIDE_PORT]);
    let docker = Docker::start(&sb);
    let network = create_network(&docker, datapath);
    run_nettool(&docker, "web", "8080:80", &["serve", "tcp", "80"]);
    let (web_ip, web_endpoint) = endpoint(&docker, "web");
    assert!(web_ip.to_string().starts_with("172.30."), "{web_ip}");

    // A host port taken already: Docker's start fails with netctl's reason
    // (through ProgramExternalConnectivity), and nothing of the second
    // container stays in netctl.
    let out = docker.docker(&[
        "run",
        "-d",
        "--network",
        "front",
        "-p",
        "8080:81",
        "--name",
        "dup",
        IMAGE,
        "nettool",
        "serve",
        "tcp",
        "81",
    ]);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && errors.contains("host port 8080/tcp: already published"),
        "a second -p 8080: {errors}"
    );
    docker.docker_ok(&["rm", "-f", "dup"]);
    assert_eq!(listing(&sb, &["container", "ls"]).len(), 1);
    doctor_is_clean(&sb);

    // Published port from outside: the container sees the client's address.
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP);

    // Egress is SNATed to the uplink address; web is reached by name
    // through Docker's embedded DNS (127.0.0.11, in the container's
    // namespace), with the client's own address.
    let script = format!(
        "nettool call tcp {OUTSIDE_IP} {OUTSIDE_PORT}; echo; \
         web=$(nslookup web | sed -n 's/^Address:[[:space:]]*//p' | tail -n 1); echo \"$web\"; \
         nettool call tcp \"$web\" 80; echo; \
         ip -4 -o addr show eth0; ip -o link show eth0"
    );
    let out = docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--name",
        "client",
        "--mac-address",
        CLIENT_MAC,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[4].contains(CLIENT_MAC),
        "Docker's --mac-address: {out}"
    );
    assert_eq!(peer_ip(lines[0]), HOST_UPLINK_IP, "egress: {out}");
    assert_eq!(lines[1], web_ip.to_string(), "web by name: {out}");
    let client_ip = peer_ip(lines[2]);
    assert!(
        lines[3].contains(&format!("inet {client_ip}/16")),
        "container to container keeps the source: {out}"
    );

    // netctl's own commands see Docker's container: its endpoint, port and
    // flows; doctor finds Docker's sandbox and the link Docker moved.
    let name = format!("docker-{}", &web_endpoint[..12]);
    let containers = listing(&sb, &["container", "ls"]);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let web = &containers[0];
    assert_eq!(web["name"], name.as_str(), "{web}");
    assert_eq!(web["endpoints"][0]["network"], network.as_str(), "{web}");
    assert_eq!(web["endpoints"][0]["ip"], web_ip.to_string(), "{web}");
    assert_eq!(web["ports"][0]["host_port"], 8080, "{web}");
    assert!(
        web["netns"].as_str().is_some_and(|n| n.contains("/netns/")),
        "the sandbox Docker joined: {web}"
    );
    doctor_is_clean(&sb);
    if datapath == "ebpf" {
        let flows = sb.netctl_ok(&["conntrack", "ls"]);
        assert!(
            flows.contains(&format!("{web_ip}:80")) && flows.contains(&OUTSIDE_IP.to_string()),
            "the published port's flow: {flows}"
        );
        let stats = sb.netctl_ok(&["stats"]);
        assert!(stats.contains("pass"), "{stats}");
    } else {
        let rules = sb.iptables_save();
        assert!(
            rules.contains(&format!("--to-destination {web_ip}:80")),
            "the DNAT of -p 8080:80: {rules}"
        );
    }

    // `--internal` reaches netctl: no way out, and no gateway given.
    docker.docker_ok(&[
        "network",
        "create",
        "-d",
        &docker.plugin,
        "--internal",
        "--subnet",
        "172.31.0.0/16",
        "back",
    ]);
    let networks = listing(&sb, &["network", "ls"]);
    let back = networks.iter().find(|n| n["subnet"] == "172.31.0.0/16");
    assert_eq!(
        back.map(|n| &n["internal"]),
        Some(&Value::Bool(true)),
        "{networks:?}"
    );
    let out = docker.docker(&[
        "run",
        "--rm",
        "--network",
        "back",
        IMAGE,
        "nettool",
        "call",
        "tcp",
        &OUTSIDE_IP.to_string(),
        OUTSIDE_PORT,
        "--timeout-ms",
        "500",
    ]);
    // `docker network connect --ip`: a second endpoint, eth1, at the
    // address asked for.
    docker.docker_ok(&["network", "connect", "--ip", "172.31.0.9", "back", "web"]);
    let eth1 = docker.docker_ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth1"]);
    assert!(eth1.contains("inet 172.31.0.9/16"), "{eth1}");
    assert_eq!(listing(&sb, &["container", "ls"]).len(), 2);
    doctor_is_clean(&sb);
    // nettool ran, and its connection went nowhere.
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && errors.contains(&format!("connect {OUTSIDE_IP}:{OUTSIDE_PORT}")),
        "internal network: {}{errors}",
        text(&out)
    );

    // Removal leaves nothing of Docker's network in netctl or the kernel.
    docker.docker_ok(&["rm", "-f", "web"]);
    docker.docker_ok(&["network", "rm", "front", "back"]);
    assert!(listing(&sb, &["container", "ls"]).is_empty());
    assert!(listing(&sb, &["network", "ls"]).is_empty());
    doctor_is_clean(&sb);
    assert_eq!(sb.host_links(), vec!["lo".to_owned(), "uplink0".to_owned()]);
    if datapath == "ebpf" {
        for map in ["ENDPOINTS", "PORTMAP", "NETWORKS"] {
            let dump = sb.bpf_map_dump(map);
            assert!(!dump.contains("key"), "{map} keeps entries: {dump}");
        }
        assert!(
            !sb.pins().iter().any(|p| p.starts_with("links/ve")),
            "{:?}",
            sb.pins()
        );
    } else {
        let rules = sb.iptables_save();
        assert!(!rules.contains("172.30."), "rules left: {rules}");
        assert!(!sb.nft_ruleset().contains("172.30."));
    }
}

fn a_connection_outlives_dockerd_and_plugin_restarts(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let tool = nettool();
    let mut docker = Docker::start(&sb);
    create_network(&docker, datapath);
    run_nettool(&docker, "sink", "9000:9000", &["sink", "9000"]);
    let host = HOST_UPLINK_IP.to_string();
    let streamed = std::thread::scope(|s| {
        let stream = s.spawn(|| sb.outside(&[&tool, "stream", &host, "9000", "6"]));
        // Mid-stream: dockerd goes and comes back (the container lives on,
        // `live-restore`), then the plugin does; the datapath carries the
        // connection throughout.
        std::thread::sleep(Duration::from_secs(1));
        docker.restart_dockerd();
        docker.stop_plugin();
        docker.start_plugin();
        assert!(
            !stream.is_finished(),
            "the restarts took longer than the stream: nothing was tested"
        );
        stream.join().expect("stream thread")
    });
    assert_no_byte_lost("a stream across dockerd's restart", &streamed);
    // Docker still drives the network afterwards: a new container joins it
    // and is reached, and removal still goes through the plugin.
    let running = docker.docker_ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(running, "sink");
    run_nettool(&docker, "web", "8080:80", &["serve", "tcp", "80"]);
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP);
    assert_eq!(listing(&sb, &["container", "ls"]).len(), 2);
    doctor_is_clean(&sb);
    docker.docker_ok(&["rm", "-f", "web", "sink"]);
    docker.docker_ok(&["network", "rm", "front"]);
    assert!(listing(&sb, &["network", "ls"]).is_empty());
    doctor_is_clean(&sb);
}

/// A step of an endpoint failing inside the plugin (a failpoint after
/// the datapath took it): `docker run` fails with netctl's one-line
/// reason, and the transaction's rollback leaves no container, link or
/// datapath entry; the next run, the failpoint gone, works.
fn a_failed_call_is_docker_error_and_leaves_nothing(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let mut docker = Docker::start(&sb);
    create_network(&docker, datapath);
    let links = sb.host_links();
    docker.stop_plugin();
    docker.start_plugin_with(&[("NETCTL_FAILPOINT", "run.endpoint")]);
    let out = docker.docker(&[
        "run",
        "-d",
        "--network",
        "front",
        "--name",
        "web",
        IMAGE,
        "nettool",
        "serve",
        "tcp",
        "80",
    ]);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && errors.contains("step run.endpoint: injected failure"),
        "{errors}"
    );
    docker.docker_ok(&["rm", "-f", "web"]);
    assert!(listing(&sb, &["container", "ls"]).is_empty());
    assert_eq!(sb.host_links(), links, "the veth pair is gone");
    if datapath == "ebpf" {
        let dump = sb.bpf_map_dump("ENDPOINTS");
        assert!(!dump.contains("key"), "ENDPOINTS keeps entries: {dump}");
    } else {
        assert!(!sb.iptables_save().contains("172.30.0.2"));
    }
    doctor_is_clean(&sb);
    docker.stop_plugin();
    docker.start_plugin();
    run_nettool(&docker, "web", "8080:80", &["serve", "tcp", "80"]);
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&nettool(), "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP);
}
