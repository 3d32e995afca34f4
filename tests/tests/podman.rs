//! podman with its CNI backend and a conflist of `"type": "netctl"`: the
//! real `podman run --network NAME -p 8080:80`, inside a sandbox
//! (tests/src/podman.rs has the harness). The conflist names the datapath,
//! so the scenario runs once per datapath, and in a different `cniVersion`
//! on each (0.4.0 results tag addresses with a version, 1.0.0 ones do not;
//! podman must read both).

use std::{net::Ipv4Addr, time::Instant};

use netctl_tests::output::{assert_no_byte_lost, nettool, peer_ip, text};
use netctl_tests::{
    cni::{containers, map_entries},
    podman::{Podman, NETTOOL},
    sandbox::{call_until_answer, Sandbox, HOST_UPLINK_IP, OUTSIDE_IP},
};

netctl_tests::on_both_datapaths!(podman_run_publish_names_egress_and_removal);

/// Seconds of the connection that must survive podman's comings and goings.
const STREAM_SECONDS: u64 = 8;

fn podman_run_publish_names_egress_and_removal(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    let tool = nettool();
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "9000"]);
    let version = if datapath == "ebpf" { "1.0.0" } else { "0.4.0" };
    let podman = Podman::new(&sb, version);

    // web serves tcp/80 (who is calling) and counts bytes on tcp/81.
    let web_id = podman.run_detached(
        "web",
        &["-p", "8080:80", "-p", "8081:81", "--network-alias", "www"],
        &[
            "/bin/sh",
            "-c",
            &format!("{NETTOOL} sink 81 & exec {NETTOOL} serve tcp 80"),
        ],
    );
    let cli_id = podman.run_detached("cli", &[], &["/bin/sleep", "120"]);
    let web_ip = addr_of(&podman, "web");
    let cli_ip = addr_of(&podman, "cli");
    assert!(
        [web_ip, cli_ip]
            .iter()
            .all(|ip| ip.octets()[..3] == [10, 78, 0]),
        "addresses from netctl's IPAM in the conflist's subnet: {web_ip} {cli_ip}"
    );
    // podman reads netctl's ports back from its own records.
    let ports = podman.ok(&["port", "web"]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");

    // netctl sees podman's containers as CNI attachments.
    let attachment = |id: &str| format!("cni-{}-eth0", &id[..12]);
    let mut expected = vec![attachment(&cli_id), attachment(&web_id)];
    expected.sort();
    assert_eq!(containers(&sb), expected);

    // Published port from outside: web sees the client's own address.
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP, "client address kept");

    // Egress: the outside server sees the uplink's address.
    let server = OUTSIDE_IP.to_string();
    let reply = call_until_answer(|| {
        podman.podman(&["exec", "cli", NETTOOL, "call", "tcp", &server, "9000"])
    });
    assert_eq!(peer_ip(&reply), HOST_UPLINK_IP, "egress SNAT");

    // By name: podman's resolv.conf names the network's resolver (the
    // result's dns), which knows podman's container names and aliases.
    let resolv = podman.ok(&["exec", "cli", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.lines().next() == Some("nameserver 10.78.0.1"),
        "{resolv}"
    );
    for name in ["web", "www", &web_id[..12]] {
        let reply = call_until_answer(|| {
            podman.podman(&["exec", "cli", NETTOOL, "call", "tcp", name, "80"])
        });
        assert_eq!(peer_ip(&reply), cli_ip, "{name}: container to container");
    }
    let lookup = podman.podman(&["exec", "web", "nslookup", "cli"]);
    assert!(
        text(&lookup).contains(&format!("Address: {cli_ip}")),
        "{lookup:?}"
    );
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {doctor:?}");

    // A connection keeps flowing while podman commands come and go (there
    // is no daemon: each is a process, running the plugin for what
    // changes) and another container is added and removed.
    let started = Instant::now();
    let seconds = STREAM_SECONDS.to_string();
    let streamed = std::thread::scope(|scope| {
        let stream = scope.spawn(|| sb.outside(&[&tool, "stream", &host, "8081", &seconds]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        podman.ok(&["ps"]);
        let other_id = podman.run_detached(
            "other",
            &[
                "-p",
                "8082-8083:80-81",
                "--ip",
                "10.78.0.50",
                "--mac-address",
                "02:00:00:00:00:50",
            ],
            &["/bin/sleep", "120"],
        );
        // podman's --ip and --mac-address reach netctl (ips, mac).
        let other = addr_of(&podman, "other");
        assert_eq!(
            network_field(&podman, "other", "MacAddress"),
            "02:00:00:00:00:50"
        );
        // A range arrives as one mapping per port.
        let ports = sb.netctl_ok(&["port", &attachment(&other_id)]);
        assert_eq!(
            ports.lines().collect::<Vec<_>>(),
            ["80/tcp -> 0.0.0.0:8082", "81/tcp -> 0.0.0.0:8083"]
        );
        podman.ok(&["inspect", "web"]);
        podman.rm("other");
        podman.ok(&["ps", "-a"]);
        let busy = started.elapsed().as_secs();
        assert!(
            busy < STREAM_SECONDS,
            "the podman commands took {busy} s, longer than the connection"
        );
        (stream.join().expect("stream thread"), other)
    });
    let (stream, other_ip) = streamed;
    assert_no_byte_lost("connection through podman's comings and goings", &stream);
    assert_eq!(other_ip, Ipv4Addr::new(10, 78, 0, 50));

    // A host port another container holds: netctl refuses the ADD, podman
    // says why and the run fails; netctl's state is as it was.
    let state_before = std::fs::read_to_string(sb.state_dir.join("state.json")).unwrap();
    let clash = podman.try_run(
        &["-d", "--name", "clash", "-p", "8080:80"],
        &["/bin/sleep", "120"],
    );
    let why = String::from_utf8_lossy(&clash.stderr);
    assert!(
        !clash.status.success() && why.contains("8080"),
        "a taken host port: {why}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.state_dir.join("state.json")).unwrap(),
        state_before
    );
    podman.rm("clash");

    // Stopped, web's attachment goes (podman's DEL); started again, it
    // comes back in a new namespace with its port.
    podman.ok(&["stop", "-t", "0", "web"]);
    assert_eq!(containers(&sb), vec![attachment(&cli_id)]);
    podman.start("web");
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP, "after podman start");

    // Removal: podman's DELs leave nothing of netctl's, and podman removed
    // its namespaces and libcni's cache entries.
    podman.rm("web");
    podman.rm("cli");
    assert_eq!(containers(&sb), Vec::<String>::new());
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor after removal: {doctor:?}");
    assert_eq!(podman.netns_left(), Vec::<String>::new(), "namespaces");
    assert_eq!(podman.cni_results(), Vec::<String>::new(), "libcni cache");
    assert_eq!(
        podman.left_outside(),
        Vec::<String>::new(),
        "outside podman's dirs"
    );
    // Nothing of the containers in the datapath (the network's own rules
    // and bridge stay until `netctl network rm`, as with CNI's bridge).
    let rules = sb.iptables_save();
    for ip in [web_ip, cli_ip, other_ip] {
        assert!(
            !rules.contains(&format!("{ip}/32")) && !rules.contains(&format!("{ip}:")),
            "a rule left for {ip}: {rules}"
        );
    }
    assert_eq!(map_entries(&sb, "ENDPOINTS"), 0);
    assert_eq!(map_entries(&sb, "PORTMAP"), 0);
}

/// A container's address as podman recorded it from netctl's result.
fn addr_of(podman: &Podman, name: &str) -> Ipv4Addr {
    let text = network_field(podman, name, "IPAddress");
    text.parse()
        .unwrap_or_else(|_| panic!("{name}: no address in {text:?}"))
}

/// A field of a container's entry for the network in `podman inspect`.
fn network_field(podman: &Podman, name: &str, field: &str) -> String {
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").{field}}}}}",
        podman.network
    );
    podman
        .ok(&["inspect", "--format", &format, name])
        .trim()
        .to_owned()
}
