//! netctl as a CNI plugin, driven exactly as a runtime drives a plugin: the
//! binary is exec'd with the `CNI_*` environment and the network
//! configuration on stdin, and its stdout is read as JSON. Each scenario runs
//! on both datapaths in a sandbox; the container namespaces are made by the
//! test (as a runtime would), under the sandbox's prefix.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use netctl::netns;
use netctl_tests::output::{nettool, peer_ip, peer_ip6, text};
use netctl_tests::{
    cni::*,
    sandbox::{
        call_until_answer, Sandbox, HOST_UPLINK_IP, HOST_UPLINK_IP6, OUTSIDE_IP, OUTSIDE_IP6,
    },
};
use serde_json::{json, Value};

netctl_tests::on_both_datapaths!(
    every_command_in_every_version,
    errors_are_spec_error_objects,
    egress_published_port_and_peers_on_cni_containers,
    del_twice_and_after_the_netns_is_gone,
    taken_host_port_is_refused_and_changes_nothing,
    gc_keeps_only_the_valid_attachments,
    chained_with_the_reference_tuning_plugin,
    delegated_host_local_ipam,
    netns_given_as_a_proc_path,
    podman_names_and_vanished_namespaces,
);

// ------------------------------------------------------------------ scenarios

fn every_command_in_every_version(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    // VERSION, with and without input.
    let reply = rt.netctl("VERSION", "", "", &json!({"cniVersion": "0.4.0"}));
    let versions = reply.ok("VERSION");
    assert_eq!(versions["cniVersion"], "0.4.0");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            versions["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(v)),
            "{versions}"
        );
    }
    assert_eq!(
        rt.netctl("VERSION", "", "", &Value::Null).ok("VERSION")["cniVersion"],
        "1.1.0"
    );
    let netns_path = rt.make_netns("c1");
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let mut conf = rt.conf(version);
        conf["mtu"] = json!(1400);
        let id = id(n as u32);
        let result = rt.add(&id, &netns_path, &conf);
        assert_eq!(result["cniVersion"], version);
        let ip = result_ip(&result);
        assert_eq!(ip.octets()[..3], [10, 77, 0], "{ip} in {SUBNET}");
        assert_eq!(result["ips"][0]["gateway"], "10.77.0.1");
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(result["interfaces"][2]["name"], "eth0");
        assert_eq!(result["interfaces"][2]["sandbox"], netns_path.as_str());
        assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}: {result}"
        );
        assert_eq!(
            result["interfaces"][2].get("mtu").is_some(),
            version == "1.1.0",
            "{version}: {result}"
        );
        // The interface really is in the runtime's namespace, as described.
        let inside = links_in(&sb, &netns_path);
        assert!(inside.contains("eth0@"), "{inside}");
        assert!(inside.contains("mtu 1400"), "{inside}");
        assert!(
            inside.contains(result["interfaces"][2]["mac"].as_str().unwrap()),
            "{inside}"
        );
        // One state with the CLI.
        assert_eq!(containers(&sb), vec![container(n as u32)]);
        let inspect: Value =
            serde_json::from_str(&sb.netctl_ok(&["network", "inspect", NETWORK])).unwrap();
        assert_eq!(inspect[0]["containers"][0], container(n as u32).as_str());
        assert_eq!(sb.ip_of(&container(n as u32), NETWORK), ip);
        if version != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            rt.netctl("CHECK", &id, &netns_path, &check).ok("CHECK");
            // CHECK notices an address taken away behind netctl's back.
            let ns = Path::new(&netns_path)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            sb.run_in(ns, &["ip", "addr", "flush", "dev", "eth0"]);
            let reply = rt.netctl("CHECK", &id, &netns_path, &check);
            assert_eq!(reply.error_code("CHECK after flush"), 103);
        } else {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            let reply = rt.netctl("CHECK", &id, &netns_path, &check);
            assert_eq!(reply.error_code("CHECK on 0.3.1"), 1);
        }
        rt.del(&id, &netns_path, &conf);
        assert!(containers(&sb).is_empty());
        assert!(!links_in(&sb, &netns_path).contains("eth0"));
    }
    let status = rt.conf("1.1.0");
    let reply = rt.netctl("STATUS", "", "", &status);
    assert_eq!(reply.ok("STATUS"), Value::Null);
    let mut gc = rt.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    rt.netctl("GC", "", "", &gc).ok("GC");
    // STATUS and GC came with 1.1.0.
    let old = rt.conf("1.0.0");
    assert_eq!(
        rt.netctl("STATUS", "", "", &old).error_code("STATUS 1.0.0"),
        1
    );
    // The runtime's namespace is never deleted by netctl.
    assert!(netns::exists(
        Path::new(&netns_path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    ));
}

fn errors_are_spec_error_objects(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let netns_path = rt.make_netns("c1");
    let conf = rt.conf("1.0.0");
    let before = snapshot(&sb);
    let code = |reply: Reply, what: &str| reply.error_code(what);
    // 1: a version netctl does not speak.
    let mut future = conf.clone();
    future["cniVersion"] = json!("9.9.9");
    assert_eq!(
        code(rt.netctl("ADD", &id(1), &netns_path, &future), "9.9.9"),
        1
    );
    // 4: environment.
    assert_eq!(code(rt.netctl("ADD", &id(1), "", &conf), "no CNI_NETNS"), 4);
    assert_eq!(
        code(
            rt.netctl("ADD", "", &netns_path, &conf),
            "no CNI_CONTAINERID"
        ),
        4
    );
    assert_eq!(
        code(
            rt.netctl("FROB", &id(1), &netns_path, &conf),
            "unknown command"
        ),
        4
    );
    assert_eq!(
        code(
            rt.netctl("ADD", &id(1), "/run/netns/nothing-here-at-all", &conf),
            "missing netns"
        ),
        4
    );
    // 6: stdin that is not a network configuration.
    let reply = rt.netctl("ADD", &id(1), &netns_path, &json!("just a string"));
    assert_eq!(code(reply, "string config"), 6);
    // 7: values that cannot be.
    for (key, value) in [
        ("subnet", json!("10.77.0.0/33")),
        ("datapath", json!("xdp")),
        ("mtu", json!(10)),
        ("bridge", json!("this-name-is-too-long")),
        ("hostNetns", json!(format!("{}-nope", sb.prefix))),
    ] {
        let mut bad = conf.clone();
        bad[key] = value;
        let expected = if key == "datapath" { 6 } else { 7 };
        assert_eq!(
            code(rt.netctl("ADD", &id(1), &netns_path, &bad), key),
            expected,
            "{key}"
        );
    }
    let mut sctp = conf.clone();
    sctp["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "sctp"}]});
    assert_eq!(
        code(rt.netctl("ADD", &id(1), &netns_path, &sctp), "sctp"),
        7
    );
    // A delegated IPAM plugin that is not installed: ADD refuses the
    // config, STATUS says the plugin is not available.
    let mut missing_ipam = conf.clone();
    missing_ipam["ipam"] = json!({"type": "no-such-ipam"});
    assert_eq!(
        code(
            rt.netctl("ADD", &id(1), &netns_path, &missing_ipam),
            "missing ipam"
        ),
        7
    );
    missing_ipam["cniVersion"] = json!("1.1.0");
    assert_eq!(
        code(
            rt.netctl("STATUS", "", "", &missing_ipam),
            "STATUS missing ipam"
        ),
        50
    );
    // Nothing of the above changed anything.
    assert_eq!(snapshot(&sb), before);
    assert!(!links_in(&sb, &netns_path).contains("eth0"));
    // 100: an attachment added twice; the first stays intact.
    rt.add(&id(1), &netns_path, &conf);
    let after_first = snapshot(&sb);
    assert_eq!(
        code(rt.netctl("ADD", &id(1), &netns_path, &conf), "ADD twice"),
        100
    );
    assert_eq!(snapshot(&sb), after_first);
    // A second network cannot take the first one's bridge.
    let mut same_bridge = conf.clone();
    same_bridge["name"] = json!("othernet");
    same_bridge["subnet"] = json!("10.78.0.0/24");
    same_bridge["bridge"] = json!("nc-cninet");
    assert_eq!(
        code(
            rt.netctl("ADD", &id(2), &netns_path, &same_bridge),
            "bridge taken"
        ),
        7
    );
    assert_eq!(snapshot(&sb), after_first);
    // An existing network is checked against the configuration.
    let mut other_subnet = conf.clone();
    other_subnet["subnet"] = json!("10.99.0.0/24");
    assert_eq!(
        code(
            rt.netctl("ADD", &id(2), &netns_path, &other_subnet),
            "subnet"
        ),
        7
    );
    assert_eq!(snapshot(&sb), after_first);
}

fn egress_published_port_and_peers_on_cni_containers(datapath: &str) {
    let mut sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let web_ns = rt.make_netns("web");
    let client_ns = rt.make_netns("client");
    let mut web_conf = rt.conf("1.1.0");
    web_conf["runtimeConfig"] = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "mac": "02:00:00:aa:bb:cc",
        "ips": ["10.77.0.50/24"],
        "dns": {"servers": ["198.51.100.2"], "searches": ["corp.example"], "options": ["ndots:2"]},
    });
    let web = rt.add(&id(1), &web_ns, &web_conf);
    // The dns capability: the network's resolver as the nameserver, the
    // runtime's search domains and options.
    assert_eq!(
        web["dns"],
        json!({"nameservers": ["10.77.0.1"], "search": ["corp.example"], "options": ["ndots:2"]}),
        "dns capability"
    );
    assert_eq!(
        result_ip(&web),
        Ipv4Addr::new(10, 77, 0, 50),
        "ips capability"
    );
    assert_eq!(
        web["interfaces"][2]["mac"], "02:00:00:aa:bb:cc",
        "mac capability"
    );
    let client = rt.add(&id(2), &client_ns, &rt.conf("1.1.0"));
    let client_ip = result_ip(&client);
    drop(rt);
    let web_name = format!("{}-web", sb.prefix);
    let client_name = format!("{}-client", sb.prefix);
    let tool = nettool();
    sb.spawn_in(&web_name, &[&tool, "serve", "tcp", "80"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "9000"]);
    sb.spawn_in(
        &outside,
        &[
            &tool,
            "dnsserve",
            "198.51.100.2:53",
            "cni.example=203.0.113.5",
        ],
    );
    // The network's resolver forwards web's outside names to the servers
    // the runtime gave.
    // (dnsserve may still be starting: a few tries.)
    let ask = || {
        text(&sb.run_in(
            &web_name,
            &[&tool, "dnsask", "udp", "10.77.0.1", "cni.example"],
        ))
        .trim()
        .to_owned()
    };
    let mut answer = ask();
    for _ in 0..5 {
        if answer.contains("NoError") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        answer = ask();
    }
    assert_eq!(answer, "rcode=NoError answers=203.0.113.5");

    // Published port from outside: the container sees the client's address.
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    assert_eq!(peer_ip(&reply), OUTSIDE_IP);
    // Egress is SNATed to the uplink address.
    let server = OUTSIDE_IP.to_string();
    let reply =
        call_until_answer(|| sb.run_in(&client_name, &[&tool, "call", "tcp", &server, "9000"]));
    assert_eq!(peer_ip(&reply), HOST_UPLINK_IP);
    // Container to container, by address, source kept.
    let reply =
        call_until_answer(|| sb.run_in(&client_name, &[&tool, "call", "tcp", "10.77.0.50", "80"]));
    assert_eq!(peer_ip(&reply), client_ip);
    // The CLI sees the CNI-made containers and their port; doctor finds
    // the runtime's namespaces and the attachments in order.
    assert_eq!(containers(&sb), vec![container(1), container(2)]);
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {doctor:?}");
    // `netctl exec` enters the runtime's namespace.
    let reply =
        call_until_answer(|| sb.exec(&container(2), &[&tool, "call", "tcp", "10.77.0.50", "80"]));
    assert_eq!(peer_ip(&reply), client_ip);
    assert_eq!(
        sb.netctl_ok(&["port", &container(1)]).trim(),
        "80/tcp -> 0.0.0.0:8080"
    );
    if datapath == "ebpf" {
        let flows: Value =
            serde_json::from_str(&sb.netctl_ok(&["--format", "json", "conntrack", "ls"])).unwrap();
        let flows = flows.as_array().unwrap();
        assert!(
            flows
                .iter()
                .any(|f| f["kind"] == "dnat" && f["translated_dst"] == "10.77.0.50:80"),
            "{flows:?}"
        );
        assert!(
            flows.iter().any(|f| f["kind"] == "snat"
                && f["src"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{client_ip}:"))),
            "{flows:?}"
        );
        let stats: Value =
            serde_json::from_str(&sb.netctl_ok(&["--format", "json", "stats"])).unwrap();
        assert!(stats["dnat"]["packets"].as_u64().unwrap() > 0, "{stats}");
        assert_eq!(map_entries(&sb, "ENDPOINTS"), 2);
        assert_eq!(map_entries(&sb, "PORTMAP"), 1);
    } else {
        assert!(sb
            .iptables_save()
            .contains("--to-destination 10.77.0.50:80"));
    }
}

fn del_twice_and_after_the_netns_is_gone(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let conf = rt.conf("1.0.0");
    // DEL of an attachment netctl never saw, on a fresh host: success, no trace.
    rt.del(&id(9), "", &conf);
    assert!(!sb.state_dir.join("state.json").exists());

    let first = rt.make_netns("c1");
    rt.add(&id(1), &first, &conf);
    let empty_network = snapshot(&sb);
    let mut published = conf.clone();
    published["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]});
    let second = rt.make_netns("c2");
    rt.add(&id(2), &second, &published);
    assert_ne!(snapshot(&sb), empty_network);
    // DEL twice: the second finds nothing and succeeds.
    rt.del(&id(2), &second, &published);
    assert_eq!(
        snapshot(&sb),
        empty_network,
        "DEL leaves what was there before ADD"
    );
    rt.del(&id(2), &second, &published);
    // The runtime deletes the namespace before calling DEL.
    rt.add(&id(3), &second, &published);
    let veth = sb.inspect(&container(3))["endpoints"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    netns::delete(Path::new(&second).file_name().unwrap().to_str().unwrap()).unwrap();
    let doctor = sb.netctl(&["doctor"]);
    assert!(
        !doctor.status.success() && text(&doctor).contains("is gone"),
        "doctor sees the namespace gone: {doctor:?}"
    );
    rt.del(&id(3), &second, &published);
    rt.del(&id(3), "", &published);
    assert!(!sb.host_links().contains(&veth));
    assert_eq!(snapshot(&sb), empty_network);
    assert_eq!(containers(&sb), vec![container(1)]);
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor after DEL: {doctor:?}");
    // The address is free again: the next attachment gets it back.
    let third = rt.make_netns("c3");
    let result = rt.add(&id(4), &third, &conf);
    assert_eq!(result_ip(&result), Ipv4Addr::new(10, 77, 0, 3));
}

fn taken_host_port_is_refused_and_changes_nothing(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let mut conf = rt.conf("1.0.0");
    conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]});
    let first = rt.make_netns("c1");
    rt.add(&id(1), &first, &conf);
    // Taken by the CLI too: one state.
    sb.netctl_ok(&[
        "container",
        "run",
        "cli",
        "--network",
        NETWORK,
        "-p",
        "9090:90",
    ]);
    let before = snapshot(&sb);
    let second = rt.make_netns("c2");
    for port in [8080, 9090] {
        let mut clash = conf.clone();
        clash["runtimeConfig"] = json!({"portMappings": [{"hostPort": 7070, "containerPort": 70}, {"hostPort": port, "containerPort": 80}]});
        let reply = rt.netctl("ADD", &id(2), &second, &clash);
        assert_eq!(reply.error_code("taken host port"), 100);
        assert!(
            reply.json["details"]
                .as_str()
                .unwrap()
                .contains(&port.to_string()),
            "{}",
            reply.json
        );
        assert_eq!(snapshot(&sb), before, "nothing half-applied");
        assert!(!links_in(&sb, &second).contains("eth0"));
    }
    // An address taken, through the ips capability.
    let mut taken_ip = rt.conf("1.0.0");
    taken_ip["runtimeConfig"] = json!({"ips": ["10.77.0.2/24"]});
    assert_eq!(
        rt.netctl("ADD", &id(2), &second, &taken_ip)
            .error_code("taken ip"),
        100
    );
    assert_eq!(snapshot(&sb), before);
}

fn gc_keeps_only_the_valid_attachments(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let conf = rt.conf("1.1.0");
    let links_before = sb.host_links();
    let mut paths = Vec::new();
    for n in 1..=3 {
        let path = rt.make_netns(&format!("c{n}"));
        let mut published = conf.clone();
        published["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 8080 + n, "containerPort": 80}]});
        rt.add(&id(n as u32), &path, &published);
        paths.push(path);
    }
    // An attachment of another network configuration is not this GC's business.
    let mut other = conf.clone();
    other["name"] = json!("othernet");
    other["subnet"] = json!("10.78.0.0/24");
    let other_ns = rt.make_netns("o1");
    rt.add(&id(7), &other_ns, &other);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": id(2), "ifname": "eth0"}]);
    rt.netctl("GC", "", "", &gc).ok("GC partial");
    assert_eq!(containers(&sb), vec![container(2), container(7)]);
    assert!(links_in(&sb, &paths[1]).contains("eth0"));
    assert!(!links_in(&sb, &paths[0]).contains("eth0"));
    assert_eq!(
        map_entries(&sb, "PORTMAP"),
        if datapath == "ebpf" { 1 } else { 0 }
    );
    if datapath == "iptables" {
        let rules = sb.iptables_save();
        assert!(rules.contains("--dport 8082"), "{rules}");
        assert!(!rules.contains("--dport 8081") && !rules.contains("--dport 8083"));
    }
    // The survivor still works: CHECK passes.
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.77.0.3/24"}]});
    check["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8082, "containerPort": 80}]});
    let reply = rt.netctl("CHECK", &id(2), &paths[1], &check);
    reply.ok("CHECK after GC");

    gc["cni.dev/valid-attachments"] = json!([]);
    rt.netctl("GC", "", "", &gc).ok("GC empty");
    assert_eq!(containers(&sb), vec![container(7)]);
    assert_eq!(
        map_entries(&sb, "ENDPOINTS"),
        if datapath == "ebpf" { 1 } else { 0 }
    );
    rt.del(&id(7), &other_ns, &other);
    // Only the networks' bridges remain of what the attachments made.
    let mut expected = links_before.clone();
    expected.extend(["nc-cninet".to_owned(), "nc-othernet".to_owned()]);
    expected.sort();
    assert_eq!(sb.host_links(), expected);
}

fn chained_with_the_reference_tuning_plugin(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    let netns_path = rt.make_netns("c1");
    // The conflist: netctl first, tuning after it; the runtime copies name
    // and cniVersion into each plugin object and passes prevResult on.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            rt.conf("1.0.0"),
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}, "promisc": true,
             "dataDir": sb.state_dir.join("tuning")},
        ],
    });
    let plugins = conflist["plugins"].as_array().unwrap();
    let mut prev = Value::Null;
    for plugin in plugins {
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        let kind = conf["type"].as_str().unwrap().to_owned();
        prev = rt.call(&kind, "ADD", &id(1), &netns_path, &conf).ok(&kind);
    }
    // tuning passed netctl's result through and applied its settings.
    assert_eq!(prev["ips"][0]["address"], "10.77.0.2/24");
    assert_eq!(prev["interfaces"][2]["sandbox"], netns_path.as_str());
    let ns = Path::new(&netns_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let sysctl = sb.run_in(ns, &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"]);
    assert_eq!(text(&sysctl).trim(), "1");
    assert!(links_in(&sb, &netns_path).contains("PROMISC"));
    // CHECK down the chain with the final result, then DEL in reverse.
    for plugin in plugins {
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["prevResult"] = prev.clone();
        let kind = conf["type"].as_str().unwrap().to_owned();
        rt.call(&kind, "CHECK", &id(1), &netns_path, &conf)
            .ok(&format!("CHECK {kind}"));
    }
    for plugin in plugins.iter().rev() {
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["prevResult"] = prev.clone();
        let kind = conf["type"].as_str().unwrap().to_owned();
        rt.call(&kind, "DEL", &id(1), &netns_path, &conf)
            .ok(&format!("DEL {kind}"));
    }
    assert!(containers(&sb).is_empty());
    assert!(!links_in(&sb, &netns_path).contains("eth0"));
}

fn delegated_host_local_ipam(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    // host-local's reservations live in the sandbox's state dir.
    let data_dir = sb.state_dir.join("host-local");
    let mut conf = rt.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("subnet");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.79.0.0/24", "rangeStart": "10.79.0.100", "gateway": "10.79.0.1"}]],
        "dataDir": data_dir,
    });
    let c1 = rt.make_netns("c1");
    let result = rt.add(&id(1), &c1, &conf);
    assert_eq!(result_ip(&result), Ipv4Addr::new(10, 79, 0, 100));
    let inspect: Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", NETWORK])).unwrap();
    assert_eq!(
        inspect[0]["subnet"], "10.79.0.0/24",
        "network made from the IPAM's subnet"
    );
    let reservation = data_dir.join(NETWORK).join("10.79.0.100");
    assert!(reservation.exists(), "host-local holds the address");
    // A failing ADD releases the IPAM's address again.
    let c2 = rt.make_netns("c2");
    let mut clash = conf.clone();
    clash["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]});
    rt.add(&id(2), &c2, &clash);
    let c3 = rt.make_netns("c3");
    let before = snapshot(&sb);
    assert_eq!(
        rt.netctl("ADD", &id(3), &c3, &clash).error_code("clash"),
        100
    );
    assert_eq!(snapshot(&sb), before);
    assert!(!data_dir.join(NETWORK).join("10.79.0.102").exists());
    // DEL and GC release host-local's reservations.
    rt.del(&id(1), &c1, &conf);
    assert!(!reservation.exists());
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    rt.netctl("GC", "", "", &gc).ok("GC");
    assert!(containers(&sb).is_empty());
    assert!(!data_dir.join(NETWORK).join("10.79.0.101").exists());
}

/// A process killed when dropped, also on panic.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn netns_given_as_a_proc_path(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let rt = Runtime::new(&sb);
    rt.make_netns("c1");
    let name = format!("{}-c1", sb.prefix);
    // A runtime may name the namespace by a process in it (podman does).
    let holder = {
        let name = name.clone();
        Holder(
            std::thread::spawn(move || {
                let _guard = netns::NetnsGuard::enter(&name).expect("enter netns");
                Command::new("sleep")
                    .arg("60")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("sleep")
            })
            .join()
            .expect("thread"),
        )
    };
    let proc_path = format!("/proc/{}/ns/net", holder.0.id());
    let conf = rt.conf("1.0.0");
    let result = rt.add(&id(1), &proc_path, &conf);
    assert_eq!(result["interfaces"][2]["sandbox"], proc_path.as_str());
    let inside = text(&sb.run_in(&name, &["ip", "-o", "addr", "show", "dev", "eth0"]));
    assert!(inside.contains("10.77.0.2/24"), "{inside}");
    let mut check = conf.clone();
    check["prevResult"] = result;
    rt.netctl("CHECK", &id(1), &proc_path, &check).ok("CHECK");
    rt.del(&id(1), &proc_path, &conf);
    assert!(!links_in(&sb, &netns::path(&name).display().to_string()).contains("eth0"));
    assert!(containers(&sb).is_empty());
    drop(holder);
}

/// podman's `K8S_POD_NAME` (without a pod namespace) and the `aliases`
/// capability are names on the network, answered by its resolver; a
/// Kubernetes pod name is not. An attachment whose namespace vanished
/// without a DEL gives way to the ADD that sets it up again, or that asks
/// for its name; a live one keeps its name.
fn podman_names_and_vanished_namespaces(datapath: &str) {
    let sb = Sandbox::new(datapath);
    let mut rt = Runtime::new(&sb);
    let mut named = rt.conf("1.0.0");
    named["runtimeConfig"] =
        json!({"aliases": {NETWORK: ["www", "0123abcdef01"], "other": ["nope"]}});
    let web_ns = rt.make_netns("web");
    rt.podman_args("web");
    let web_ip = result_ip(&rt.add(&id(1), &web_ns, &named));
    let client_ns = rt.make_netns("client");
    rt.podman_args("client");
    let client_ip = result_ip(&rt.add(&id(2), &client_ns, &rt.conf("1.0.0")));
    // A Kubernetes pod called web: no clash, no name.
    rt.args = KUBERNETES_ARGS.replace("=test", "=web");
    let pod_ns = rt.make_netns("pod");
    rt.add(&id(3), &pod_ns, &rt.conf("1.0.0"));
    let client_name = format!("{}-client", sb.prefix);
    let tool = nettool();
    let ask = |name: &str| {
        call_until_answer(|| sb.run_in(&client_name, &[&tool, "dnsask", "udp", "10.77.0.1", name]))
            .trim()
            .to_owned()
    };
    for name in ["web", "WWW", "0123abcdef01"] {
        assert_eq!(
            ask(name),
            format!("rcode=NoError answers={web_ip}"),
            "{name}"
        );
    }
    assert!(
        ask("nope").starts_with("rcode=NXDomain"),
        "another network's alias"
    );
    let web_name = format!("{}-web", sb.prefix);
    let back = call_until_answer(|| {
        sb.run_in(&web_name, &[&tool, "dnsask", "udp", "10.77.0.1", "client"])
    });
    assert_eq!(back.trim(), format!("rcode=NoError answers={client_ip}"));

    // A live attachment keeps its name: refused, nothing changed.
    let before = snapshot(&sb);
    rt.podman_args("web");
    let second_ns = rt.make_netns("web2");
    let code = rt
        .netctl("ADD", &id(4), &second_ns, &rt.conf("1.0.0"))
        .error_code("name taken");
    assert_eq!(code, 100);
    assert_eq!(snapshot(&sb), before);

    // web's namespace vanishes without a DEL (a reboot): a new web takes
    // the name; the old attachment is gone with its veth.
    netns::delete(Path::new(&web_ns).file_name().unwrap().to_str().unwrap()).unwrap();
    let new_web_ip = result_ip(&rt.add(&id(4), &second_ns, &rt.conf("1.0.0")));
    assert_eq!(ask("web"), format!("rcode=NoError answers={new_web_ip}"));
    assert!(!containers(&sb).contains(&container(1)));
    // The same attachment set up again in a new namespace after its own
    // vanished (podman starting a container again after a reboot).
    netns::delete(Path::new(&client_ns).file_name().unwrap().to_str().unwrap()).unwrap();
    rt.podman_args("client");
    let again_ns = rt.make_netns("client2");
    rt.add(&id(2), &again_ns, &rt.conf("1.0.0"));
    assert_eq!(
        containers(&sb),
        vec![container(2), container(3), container(4)]
    );
    let doctor = sb.netctl(&["doctor"]);
    assert!(doctor.status.success(), "doctor: {doctor:?}");
}

// ------------------------------------------------------------------- IPv6
//
// Dual stack is the iptables datapath's (the eBPF datapath's programs are
// IPv4-only): these run on it, in a sandbox whose uplink has IPv6, and the
// eBPF datapath's refusal is checked on its own.

const SUBNET6: &str = "fd00:77::/64";

/// The result's IPv6 entry of `ips` (the one whose address has a colon).
fn result_ip6(result: &Value) -> Value {
    result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .find(|i| i["address"].as_str().is_some_and(|a| a.contains(':')))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no IPv6 address in {result}"))
}

/// The address of an `ips` entry without its prefix length.
fn bare(entry: &Value) -> String {
    entry["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// The IPv6 addresses of eth0 in a runtime's namespace.
fn ip6_in(sb: &Sandbox, netns_path: &str) -> String {
    let name = Path::new(netns_path).file_name().unwrap().to_str().unwrap();
    text(&sb.run_in(
        name,
        &["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"],
    ))
}

#[test]
fn ipv6_results_in_every_version() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::dual_stack("iptables");
    let rt = Runtime::new(&sb);
    let netns_path = rt.make_netns("c1");
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let mut conf = rt.conf(version);
        conf["subnet6"] = json!(SUBNET6);
        let id = id(n as u32);
        let result = rt.add(&id, &netns_path, &conf);
        // Both families, each with its gateway; the family tag before 1.0.0.
        assert_eq!(result_ip(&result).octets()[..3], [10, 77, 0], "{result}");
        let v6 = result_ip6(&result);
        assert_eq!(v6["address"], "fd00:77::2/64", "{version}: {result}");
        assert_eq!(v6["gateway"], "fd00:77::1", "{version}");
        assert_eq!(v6["interface"], 2, "{version}");
        let family = v6.get("version").cloned();
        match version.starts_with("0.") {
            true => assert_eq!(family, Some(json!("6")), "{version}: {result}"),
            false => assert_eq!(family, None, "{version}: {result}"),
        }
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with("0.")
        );
        let routes: Vec<&Value> = result["routes"].as_array().unwrap().iter().collect();
        assert!(
            routes.contains(&&json!({"dst": "::/0", "gw": "fd00:77::1"})),
            "{version}: {result}"
        );
        assert_eq!(
            result["dns"]["nameservers"],
            json!(["10.77.0.1", "fd00:77::1"]),
            "{version}"
        );
        // As described: the address is on eth0 in the runtime's namespace,
        // and netctl's state has it.
        assert!(
            ip6_in(&sb, &netns_path).contains("fd00:77::2/64"),
            "{version}"
        );
        assert_eq!(
            sb.ip6_of(&container(n as u32), NETWORK).to_string(),
            "fd00:77::2"
        );
        if version != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            rt.netctl("CHECK", &id, &netns_path, &check).ok("CHECK");
        }
        rt.del(&id, &netns_path, &conf);
        assert!(containers(&sb).is_empty());
    }
    // The network exists now, dual-stack: a configuration that does not
    // mention IPv6 joins it and its result reports the IPv6 address too; one
    // asking another IPv6 subnet is refused.
    let result = rt.add(&id(9), &netns_path, &rt.conf("1.0.0"));
    assert_eq!(result_ip6(&result)["address"], "fd00:77::2/64", "{result}");
    let c2 = rt.make_netns("c2");
    let mut other = rt.conf("1.0.0");
    other["subnet6"] = json!("fd00:78::/64");
    let before = snapshot(&sb);
    let reply = rt.netctl("ADD", &id(10), &c2, &other);
    assert_eq!(reply.error_code("another IPv6 subnet"), 7);
    assert_eq!(
        reply.json["details"],
        format!("network {NETWORK}: exists with IPv6 subnet fd00:77::/64, the configuration says fd00:78::/64")
    );
    assert_eq!(snapshot(&sb), before);
    rt.del(&id(9), &netns_path, &rt.conf("1.0.0"));
}

#[test]
fn ipv6_egress_and_port_mappings_on_an_ipv6_host_address() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let mut sb = Sandbox::dual_stack("iptables");
    let rt = Runtime::new(&sb);
    let web_ns = rt.make_netns("web");
    let mut conf = rt.conf("1.0.0");
    conf["subnet6"] = json!(SUBNET6);
    let host6 = HOST_UPLINK_IP6.to_string();
    conf["runtimeConfig"] = json!({
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "::"},
            {"hostPort": 8443, "containerPort": 80, "protocol": "tcp", "hostIP": host6},
        ],
        "ips": ["fd00:77::50/64"],
    });
    let web = rt.add(&id(1), &web_ns, &conf);
    assert_eq!(
        bare(&result_ip6(&web)),
        "fd00:77::50",
        "ips capability, IPv6"
    );
    drop(rt);
    let web_name = format!("{}-web", sb.prefix);
    let tool = nettool();
    sb.spawn_in(&web_name, &[&tool, "serve", "tcp", "[::]:80"]);
    let outside = sb.outside_netns.clone();
    sb.spawn_in(&outside, &[&tool, "serve", "tcp", "[::]:9000"]);
    let six = |ip: &str| format!("[{ip}]");
    // Egress through NAT66: the outside sees the uplink's IPv6 address.
    let reply = call_until_answer(|| {
        sb.run_in(
            &web_name,
            &[&tool, "call", "tcp", &six(&OUTSIDE_IP6.to_string()), "9000"],
        )
    });
    assert_eq!(peer_ip6(&reply), HOST_UPLINK_IP6, "{reply}");
    // The port on one IPv6 host address, and the one on every address over
    // both families: the container sees the client's own address.
    for port in ["8443", "8080"] {
        let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &six(&host6), port]));
        assert_eq!(peer_ip6(&reply), OUTSIDE_IP6, "{port}: {reply}");
    }
    let host = HOST_UPLINK_IP.to_string();
    let reply = call_until_answer(|| sb.outside(&[&tool, "call", "tcp", &host, "8080"]));
    // (The server's socket takes both families: IPv4 peers come mapped.)
    assert_eq!(peer_ip6(&reply), OUTSIDE_IP.to_ipv6_mapped(), "{reply}");
    // 8443 has no IPv4 side.
    let v4 = sb.outside(&[&tool, "call", "tcp", &host, "8443", "--timeout-ms", "1500"]);
    assert!(!v4.status.success(), "8443 over IPv4: {}", text(&v4));
    let ports = sb.netctl_ok(&["port", &container(1)]);
    assert!(
        ports.contains(&format!("80/tcp -> [{host6}]:8443")),
        "{ports}"
    );
    // CHECK agrees with the runtime's mappings; DEL takes the rules away.
    let rt = Runtime::new(&sb);
    let mut check = conf.clone();
    check["prevResult"] = web.clone();
    rt.netctl("CHECK", &id(1), &web_ns, &check).ok("CHECK");
    rt.del(&id(1), &web_ns, &conf);
    assert!(
        !sb.ip6tables_save().contains("--dport 8443"),
        "{}",
        sb.ip6tables_save()
    );
}

#[test]
fn delegated_host_local_with_an_ipv6_range() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::dual_stack("iptables");
    let rt = Runtime::new(&sb);
    let data_dir = sb.state_dir.join("host-local");
    let mut conf = rt.conf("0.4.0");
    conf.as_object_mut().unwrap().remove("subnet");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [
            [{"subnet": "10.79.0.0/24", "rangeStart": "10.79.0.100", "gateway": "10.79.0.1"}],
            [{"subnet": "fd00:79::/64", "rangeStart": "fd00:79::100", "gateway": "fd00:79::1"}],
        ],
        "dataDir": data_dir,
    });
    let c1 = rt.make_netns("c1");
    let result = rt.add(&id(1), &c1, &conf);
    let v6 = result_ip6(&result);
    assert_eq!(v6["address"], "fd00:79::100/64", "{result}");
    assert_eq!(v6["gateway"], "fd00:79::1");
    assert_eq!(v6["version"], "6");
    // The network takes the IPAM's IPv6 range, the attachment its address.
    let inspect: Value =
        serde_json::from_str(&sb.netctl_ok(&["network", "inspect", NETWORK])).unwrap();
    let shown = inspect[0].to_string();
    assert!(shown.contains("fd00:79::/64"), "{shown}");
    assert_eq!(
        sb.ip6_of(&container(1), NETWORK).to_string(),
        "fd00:79::100"
    );
    assert!(ip6_in(&sb, &c1).contains("fd00:79::100/64"));
    assert!(
        data_dir.join(NETWORK).join("fd00:79::100").exists(),
        "host-local holds it"
    );
    rt.del(&id(1), &c1, &conf);
    assert!(!data_dir.join(NETWORK).join("fd00:79::100").exists());
    assert!(containers(&sb).is_empty());
}

#[test]
fn ebpf_refuses_an_ipv6_range() {
    if !netctl_tests::privileged("sandboxes") {
        return;
    }
    let sb = Sandbox::new("ebpf");
    let rt = Runtime::new(&sb);
    let c1 = rt.make_netns("c1");
    let before = snapshot(&sb);
    let reason = format!(
        "network {NETWORK}: --ipv6 needs the iptables datapath: the eBPF datapath's programs are IPv4-only for now"
    );
    // netctl's IPAM with an IPv6 subnet.
    let mut conf = rt.conf("1.0.0");
    conf["subnet6"] = json!(SUBNET6);
    let reply = rt.netctl("ADD", &id(1), &c1, &conf);
    assert_eq!(reply.error_code("subnet6 on eBPF"), 7);
    assert_eq!(reply.json["details"], reason.as_str());
    // A delegated host-local with an IPv6 range: refused, its addresses
    // released.
    let data_dir = sb.state_dir.join("host-local");
    let mut conf = rt.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("subnet");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.79.0.0/24"}], [{"subnet": "fd00:79::/64"}]],
        "dataDir": data_dir,
    });
    let reply = rt.netctl("ADD", &id(2), &c1, &conf);
    assert_eq!(reply.error_code("host-local IPv6 on eBPF"), 7);
    assert_eq!(reply.json["details"], reason.as_str());
    // host-local names each reservation by its address.
    let held: Vec<String> = std::fs::read_dir(data_dir.join(NETWORK))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(held.is_empty(), "host-local still holds {held:?}");
    assert_eq!(snapshot(&sb), before);
}
