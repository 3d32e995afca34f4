//! The host's own sockets reaching published ports as applications open
//! them (issue 12, item 7), on each datapath: a Java-style dual-stack client
//! (an AF_INET6 socket aimed at `::ffff:127.0.0.1`) is answered, and every
//! client — IPv4 or dual-stack, TCP or UDP — sees the address it dialled as
//! its peer, never the container's. The iptables datapath is the reference:
//! conntrack's NAT is invisible to sockets.

use netctl_tests::sandbox::{call_until_answer, nettool_bin, Sandbox, HOST_UPLINK_IP};

netctl_tests::on_both_datapaths!(host_clients_see_the_address_they_dialled);

/// `nettool dial FAMILY HOW IP PORT` from the host namespace and its cgroup
/// (where the eBPF cgroup programs apply), until the server answers.
fn dial(sb: &Sandbox, family: &str, how: &str, ip: &str, port: &str) -> String {
    let tool = nettool_bin().display().to_string();
    call_until_answer(|| sb.netctl(&["exec", "--host", "--", &tool, "dial", family, how, ip, port]))
}

fn host_clients_see_the_address_they_dialled(datapath: &str) {
    let sb = Sandbox::new(datapath);
    sb.network("front", &["--subnet", "172.18.0.0/16"]);
    let tool = nettool_bin().display().to_string();
    for (name, publish, proto, port) in [
        ("web", "8080:80", "tcp", "80"),
        ("dns", "5353:53/udp", "udp", "53"),
    ] {
        sb.netctl_ok(&[
            "container",
            "run",
            name,
            "--network",
            "front",
            "-p",
            publish,
            "--",
            &tool,
            "serve",
            proto,
            port,
        ]);
    }
    let web = sb.ip_of("web", "front");
    let dns = sb.ip_of("dns", "front");
    let uplink = HOST_UPLINK_IP.to_string();
    for ip in ["127.0.0.1", uplink.as_str()] {
        for (family, how, port, shown) in [
            ("v6", "tcp", "8080", format!("[::ffff:{ip}]:8080")),
            ("v6", "udp", "5353", format!("[::ffff:{ip}]:5353")),
            ("v6", "udpconnect", "5353", format!("[::ffff:{ip}]:5353")),
            ("v4", "tcp", "8080", format!("{ip}:8080")),
            ("v4", "udp", "5353", format!("{ip}:5353")),
            ("v4", "udpconnect", "5353", format!("{ip}:5353")),
        ] {
            let out = dial(&sb, family, how, ip, port);
            let what = format!("{family} {how} client of {ip}:{port}");
            let (peer, reply) = out
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("{what}: {out:?}"));
            assert_eq!(peer, format!("peer={shown}"), "{what}: {out:?}");
            // The server answered (its reply names the client it saw), and
            // the peer shown is not the container's address.
            assert!(reply.starts_with("reply=peer="), "{what}: {out:?}");
            for container in [web, dns] {
                assert!(
                    !peer.contains(&container.to_string()),
                    "{what} sees the container: {out:?}"
                );
            }
        }
    }
}
