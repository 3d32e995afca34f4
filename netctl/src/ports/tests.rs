//! `-p` specs parsed, printed and expanded against what the host publishes.

use super::*;

const LOCALHOST: Option<Ipv4Addr> = Some(Ipv4Addr::LOCALHOST);
const CTR_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const CTR_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3);
const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn spec(
    host_ip: Option<Ipv4Addr>,
    host_ports: Option<(u16, u16)>,
    container_ports: (u16, u16),
    protocol: Protocol,
) -> PortSpec {
    PortSpec {
        host_ip: host_ip.map(IpAddr::V4),
        host_ports,
        container_ports,
        protocol,
    }
}

/// A mapping held by another container, as `taken` holds it.
fn held(
    container: &str,
    host_ip: Option<Ipv4Addr>,
    host_port: u16,
    protocol: Protocol,
) -> PortMapping {
    PortMapping {
        protocol,
        host_ip: host_ip.map(IpAddr::V4),
        host_port,
        container_ip: Ipv4Addr::new(172, 18, 0, 2),
        container_ip6: None,
        container_port: 80,
        container: container.to_owned(),
        network: "front".to_owned(),
    }
}

/// A mapping of the container under test ("api" on "back").
fn ours(
    host_ip: Option<Ipv4Addr>,
    host_port: u16,
    container_port: u16,
    protocol: Protocol,
) -> PortMapping {
    PortMapping {
        protocol,
        host_ip: host_ip.map(IpAddr::V4),
        host_port,
        container_ip: CTR_IP,
        container_ip6: None,
        container_port,
        container: "api".to_owned(),
        network: "back".to_owned(),
    }
}

/// A host with Linux's default ephemeral range and the addresses 10.0.0.1,
/// 198.51.100.1 and 2001:db8::1.
fn host() -> HostPorts {
    HostPorts {
        addresses: [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            IpAddr::V6(HOST_IP6),
        ]
        .into(),
        ..HostPorts::default()
    }
}

fn run(text: &str, taken: &[PortMapping]) -> Result<Vec<PortMapping>> {
    expand(&parse(text).unwrap(), taken, &host(), "api", "back", CTR_IP)
}

use crate::ipam::tests::message;

use Protocol::{Tcp, Udp};

#[test]
fn parse_container_port_only() {
    assert_eq!(parse("80").unwrap(), spec(None, None, (80, 80), Tcp));
    assert_eq!(parse("80/udp").unwrap(), spec(None, None, (80, 80), Udp));
    assert_eq!(parse("53/UDP").unwrap(), spec(None, None, (53, 53), Udp));
    assert_eq!(parse("80-90").unwrap(), spec(None, None, (80, 90), Tcp));
}

#[test]
fn parse_host_and_container_ports() {
    assert_eq!(
        parse("8080:80").unwrap(),
        spec(None, Some((8080, 8080)), (80, 80), Tcp)
    );
    assert_eq!(
        parse("8080:80/tcp").unwrap(),
        spec(None, Some((8080, 8080)), (80, 80), Tcp)
    );
    assert_eq!(
        parse("65535:1/udp").unwrap(),
        spec(None, Some((65535, 65535)), (1, 1), Udp)
    );
    assert_eq!(
        parse("8080-8090:80-90").unwrap(),
        spec(None, Some((8080, 8090)), (80, 90), Tcp)
    );
    assert_eq!(
        parse("8080-8090:80").unwrap(),
        spec(None, Some((8080, 8090)), (80, 80), Tcp)
    );
    // An empty host port is an ephemeral one.
    assert_eq!(parse(":80").unwrap(), spec(None, None, (80, 80), Tcp));
}

#[test]
fn parse_host_address() {
    assert_eq!(
        parse("127.0.0.1:8080:80").unwrap(),
        spec(LOCALHOST, Some((8080, 8080)), (80, 80), Tcp)
    );
    assert_eq!(
        parse("127.0.0.1::80").unwrap(),
        spec(LOCALHOST, None, (80, 80), Tcp)
    );
    assert_eq!(
        parse("198.51.100.1:5353:53/udp").unwrap(),
        spec(
            Some(Ipv4Addr::new(198, 51, 100, 1)),
            Some((5353, 5353)),
            (53, 53),
            Udp
        )
    );
    assert_eq!(
        parse("0.0.0.0:8080:80").unwrap(),
        spec(None, Some((8080, 8080)), (80, 80), Tcp)
    );
    assert_eq!(parse("::80").unwrap(), spec(None, None, (80, 80), Tcp));
}

#[test]
fn parse_rejects_port_zero_and_out_of_range() {
    assert_eq!(message(parse("0")), "port spec 0: port 0 is not allowed");
    assert_eq!(
        message(parse("0:80")),
        "port spec 0:80: port 0 is not allowed"
    );
    assert_eq!(
        message(parse("8080:0-5")),
        "port spec 8080:0-5: port 0 is not allowed"
    );
    assert_eq!(
        message(parse("65536:80")),
        "port spec 65536:80: port 65536 is out of range 1-65535"
    );
    assert_eq!(
        message(parse("99999999999999999999")),
        "port spec 99999999999999999999: port 99999999999999999999 is out of range 1-65535"
    );
}

#[test]
fn parse_rejects_non_numeric_ports() {
    assert_eq!(
        message(parse("http")),
        "port spec http: http is not a port number"
    );
    assert_eq!(
        message(parse("8080:+80")),
        "port spec 8080:+80: +80 is not a port number"
    );
    assert_eq!(message(parse("")), "port spec \"\": missing port number");
    assert_eq!(
        message(parse("8080:")),
        "port spec 8080:: missing port number"
    );
    assert_eq!(message(parse("80-")), "port spec 80-: missing port number");
    assert_eq!(
        message(parse("80 ")),
        "port spec \"80 \": \"80 \" is not a port number"
    );
    assert_eq!(
        message(parse("127.0.0.1:80")),
        "port spec 127.0.0.1:80: 127.0.0.1 is not a port number \
         (to publish on 127.0.0.1 with an ephemeral host port, write 127.0.0.1::PORT)"
    );
}

#[test]
fn parse_rejects_reversed_ranges() {
    assert_eq!(
        message(parse("90-80")),
        "port spec 90-80: range 90-80 is reversed"
    );
    assert_eq!(
        message(parse("8090-8080:80")),
        "port spec 8090-8080:80: range 8090-8080 is reversed"
    );
}

#[test]
fn parse_rejects_ranges_of_different_lengths() {
    assert_eq!(
        message(parse("8080-8085:80-90")),
        "port spec 8080-8085:80-90: host ports 8080-8085 and container ports 80-90 differ in length"
    );
    assert_eq!(
        message(parse("8080:80-81")),
        "port spec 8080:80-81: host ports 8080 and container ports 80-81 differ in length"
    );
}

#[test]
fn parse_rejects_bad_and_unforwardable_addresses() {
    assert_eq!(
        message(parse("127.0.0.300:8080:80")),
        "port spec 127.0.0.300:8080:80: 127.0.0.300 is not a valid IP address"
    );
    assert_eq!(
        message(parse("localhost:8080:80")),
        "port spec localhost:8080:80: localhost is not a valid IP address"
    );
    assert_eq!(
        message(parse("[::1]:8080:80")),
        "port spec [::1]:8080:80: [::1] cannot be published: the kernel never forwards ::1 to \
         a container (IPv6 has no route_localnet); publish on every address or on one of the \
         host's IPv6 addresses"
    );
    assert_eq!(
        message(parse("[::]:8080:80")),
        "port spec [::]:8080:80: [::] is not supported: leave the address out to publish on \
         every address"
    );
    assert_eq!(
        message(parse("2001:db8::1:8080:80")),
        "port spec 2001:db8::1:8080:80: IPv6 host address 2001:db8::1 must be in brackets \
         ([ADDR]:HOST:CONTAINER)"
    );
    assert_eq!(
        message(parse("[2001:db8::zz]:8080:80")),
        "port spec [2001:db8::zz]:8080:80: [2001:db8::zz] is not a valid IP address"
    );
}

#[test]
fn parse_and_print_ipv6_host_addresses() {
    let v6 = parse("[2001:db8::1]:8080:80").unwrap();
    assert_eq!(v6.host_ip, Some(IpAddr::V6(HOST_IP6)));
    assert_eq!(v6.host_ports, Some((8080, 8080)));
    assert_eq!(v6.to_string(), "[2001:db8::1]:8080:80/tcp");
    assert_eq!(parse(&v6.to_string()).unwrap(), v6);
    let ephemeral = parse("[2001:db8::1]::53/udp").unwrap();
    assert_eq!(ephemeral.host_ports, None);
    assert_eq!(ephemeral.to_string(), "[2001:db8::1]::53/udp");
    // Brackets around an IPv4 address read as before.
    assert_eq!(
        parse("[127.0.0.1]:8080:80").unwrap(),
        spec(LOCALHOST, Some((8080, 8080)), (80, 80), Tcp)
    );
}

#[test]
fn expand_ipv6_host_addresses() {
    let both = (CTR_IP, Some(CTR_IP6));
    let expand6 = |text: &str, taken: &[PortMapping], ips| {
        expand_all(&[parse(text).unwrap()], taken, &host(), "api", "back", ips)
    };
    // One IPv6 address: forwarded to the endpoint's IPv6 address.
    let one = expand6("[2001:db8::1]:8080:80", &[], both).unwrap();
    assert_eq!(
        one,
        vec![PortMapping {
            host_ip: Some(IpAddr::V6(HOST_IP6)),
            container_ip6: Some(CTR_IP6),
            ..ours(None, 8080, 80, Tcp)
        }]
    );
    // Every address: both families; one IPv4 address: no IPv6 side.
    let all = expand6("8080:80", &[], both).unwrap();
    assert_eq!(all[0].container_ip6, Some(CTR_IP6));
    let v4 = expand6("127.0.0.1:8080:80", &[], both).unwrap();
    assert_eq!(v4[0].container_ip6, None);
    // It conflicts with every address, not with an IPv4 one.
    assert_eq!(
        message(expand6("8080:80", &one, both)),
        "host port 8080/tcp: already published by container api"
    );
    assert_eq!(
        message(expand6("[2001:db8::1]:8080:80", &all, both)),
        "host port [2001:db8::1]:8080/tcp: already published by container api"
    );
    assert!(expand6("127.0.0.1:8080:80", &one, both).is_ok());
    // An address the host lacks, and a network without IPv6.
    assert_eq!(
        message(expand6("[2001:db8::2]:8080:80", &[], both)),
        "port spec [2001:db8::2]:8080:80/tcp: 2001:db8::2 is not an address of the host"
    );
    assert_eq!(
        message(expand6("[2001:db8::1]:8080:80", &[], (CTR_IP, None))),
        "port spec [2001:db8::1]:8080:80/tcp: network back has no IPv6 (create it with --ipv6)"
    );
}

#[test]
fn parse_rejects_unknown_protocols() {
    assert_eq!(
        message(parse("80/sctp")),
        "port spec 80/sctp: unknown protocol sctp (tcp or udp)"
    );
    assert_eq!(
        message(parse("80/tcp/udp")),
        "port spec 80/tcp/udp: unknown protocol tcp/udp (tcp or udp)"
    );
    assert_eq!(
        message(parse("80/")),
        "port spec 80/: missing protocol after '/' (tcp or udp)"
    );
}

#[test]
fn display_is_canonical_and_parses_back() {
    for (text, canonical) in [
        ("80", "80/tcp"),
        ("80-90/udp", "80-90/udp"),
        ("8080:80", "8080:80/tcp"),
        ("8080-8090:80", "8080-8090:80/tcp"),
        (
            "127.0.0.1:8080-8081:80-81/udp",
            "127.0.0.1:8080-8081:80-81/udp",
        ),
        ("127.0.0.1::80", "127.0.0.1::80/tcp"),
        ("0.0.0.0:8080:80", "8080:80/tcp"),
    ] {
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.to_string(), canonical);
        assert_eq!(parse(canonical).unwrap(), parsed);
    }
}

#[test]
fn expand_single_port() {
    assert_eq!(
        run("8080:80", &[]).unwrap(),
        vec![ours(None, 8080, 80, Tcp)]
    );
    assert_eq!(
        run("127.0.0.1:53:53/udp", &[]).unwrap(),
        vec![ours(LOCALHOST, 53, 53, Udp)]
    );
}

#[test]
fn expand_equal_ranges_pairwise() {
    assert_eq!(
        run("8080-8082:80-82", &[]).unwrap(),
        vec![
            ours(None, 8080, 80, Tcp),
            ours(None, 8081, 81, Tcp),
            ours(None, 8082, 82, Tcp)
        ]
    );
}

#[test]
fn expand_host_range_picks_the_first_free_port() {
    assert_eq!(
        run("8080-8090:80", &[]).unwrap(),
        vec![ours(None, 8080, 80, Tcp)]
    );
    let taken = [
        held("web", None, 8080, Tcp),
        held("db", LOCALHOST, 8081, Tcp),
        held("dns", None, 8082, Udp),
    ];
    assert_eq!(
        run("8080-8090:80", &taken).unwrap(),
        vec![ours(None, 8082, 80, Tcp)]
    );
    // On another address, 127.0.0.1:8081 does not get in the way.
    assert_eq!(
        run("198.51.100.1:8080-8090:80", &taken).unwrap(),
        vec![ours(Some(Ipv4Addr::new(198, 51, 100, 1)), 8081, 80, Tcp)]
    );
}

#[test]
fn expand_host_range_fails_when_all_are_taken() {
    let taken = [
        held("web", None, 8080, Tcp),
        held("db", LOCALHOST, 8081, Tcp),
        held("web", None, 8081, Udp),
    ];
    assert_eq!(
        message(run("127.0.0.1:8080-8081:80", &taken)),
        "host ports 127.0.0.1:8080-8081/tcp: all already published (by container db, web)"
    );
}

#[test]
fn expand_ephemeral_takes_the_lowest_free_ports() {
    assert_eq!(run("80", &[]).unwrap(), vec![ours(None, 20000, 80, Tcp)]);
    let taken = [
        held("web", None, 20000, Tcp),
        held("db", None, 20002, Tcp),
        held("dns", None, 20001, Udp),
    ];
    assert_eq!(
        run("80-82", &taken).unwrap(),
        vec![
            ours(None, 20001, 80, Tcp),
            ours(None, 20003, 81, Tcp),
            ours(None, 20004, 82, Tcp)
        ]
    );
    assert_eq!(
        run("53/udp", &taken).unwrap(),
        vec![ours(None, 20000, 53, Udp)]
    );
    assert_eq!(
        run(
            "127.0.0.1::80",
            &[held("web", Some(Ipv4Addr::new(10, 0, 0, 1)), 20000, Tcp)]
        )
        .unwrap(),
        vec![ours(LOCALHOST, 20000, 80, Tcp)]
    );
}

#[test]
fn expand_ephemeral_fails_when_the_range_is_exhausted() {
    let taken: Vec<PortMapping> = (20000..=32767)
        .map(|port| held("web", None, port, Tcp))
        .collect();
    assert_eq!(
        message(run("80", &taken)),
        "port spec 80/tcp: no free host port for 80/tcp in 20000-60999 outside the kernel's \
         ephemeral range 32768-60999"
    );
    // UDP is a separate space.
    assert_eq!(
        run("80/udp", &taken).unwrap(),
        vec![ours(None, 20000, 80, Udp)]
    );
    // The last free port goes to the first container port; the second has none.
    let taken = &taken[..taken.len() - 1];
    assert!(message(run("80-81", taken)).contains("no free host port for 81/tcp"));
}

#[test]
fn expand_names_the_holder_of_a_taken_port() {
    let taken = [held("web", None, 8080, Tcp)];
    assert_eq!(
        message(run("8080:80", &taken)),
        "host port 8080/tcp: already published by container web"
    );
    // A specific address collides with "every address", and back.
    assert_eq!(
        message(run("127.0.0.1:8080:80", &taken)),
        "host port 127.0.0.1:8080/tcp: already published by container web"
    );
    let taken = [held("db", LOCALHOST, 9001, Tcp)];
    assert_eq!(
        message(run("9000-9001:90-91", &taken)),
        "host port 9001/tcp: already published by container db"
    );
    // Different protocol or different address: no conflict.
    assert_eq!(
        run("9001:91/udp", &taken).unwrap(),
        vec![ours(None, 9001, 91, Udp)]
    );
    assert_eq!(
        run("198.51.100.1:9001:91", &taken).unwrap(),
        vec![ours(Some(Ipv4Addr::new(198, 51, 100, 1)), 9001, 91, Tcp)]
    );
}

#[test]
fn expand_rejects_a_malformed_hand_built_spec() {
    let bad = spec(None, Some((8080, 8081)), (80, 82), Tcp);
    assert_eq!(
        message(expand(&bad, &[], &host(), "api", "back", CTR_IP)),
        "port spec 8080-8081:80-82/tcp: host ports 8080-8081 and container ports 80-82 differ in length"
    );
    let reversed = spec(None, None, (90, 80), Tcp);
    assert!(
        message(expand(&reversed, &[], &host(), "api", "back", CTR_IP))
            .contains("range 90-80 is reversed")
    );
    let zero = spec(None, Some((0, 0)), (80, 80), Tcp);
    assert!(message(expand(&zero, &[], &host(), "api", "back", CTR_IP))
        .contains("port 0 is not allowed"));
}

#[test]
fn expand_all_keeps_order_and_shares_ephemeral_ports() {
    let specs = [
        parse("8080:80").unwrap(),
        parse("443").unwrap(),
        parse("53/udp").unwrap(),
        parse("22").unwrap(),
    ];
    let taken = [held("web", None, 20000, Tcp)];
    assert_eq!(
        expand_all(&specs, &taken, &host(), "api", "back", (CTR_IP, None)).unwrap(),
        vec![
            ours(None, 8080, 80, Tcp),
            ours(None, 20001, 443, Tcp),
            ours(None, 20000, 53, Udp),
            ours(None, 20002, 22, Tcp),
        ]
    );
    assert_eq!(
        expand_all(&[], &taken, &host(), "api", "back", (CTR_IP, None)).unwrap(),
        vec![]
    );
}

#[test]
fn expand_all_rejects_conflicts_between_specs() {
    let specs = [
        parse("8080:80").unwrap(),
        parse("127.0.0.1:8080:81").unwrap(),
    ];
    assert_eq!(
        message(expand_all(
            &specs,
            &[],
            &host(),
            "api",
            "back",
            (CTR_IP, None)
        )),
        "host port 127.0.0.1:8080/tcp: already published by container api"
    );
    // A range spec skips a port an earlier spec took.
    let specs = [parse("8080:80").unwrap(), parse("8080-8090:81").unwrap()];
    assert_eq!(
        expand_all(&specs, &[], &host(), "api", "back", (CTR_IP, None)).unwrap(),
        vec![ours(None, 8080, 80, Tcp), ours(None, 8081, 81, Tcp)]
    );
    // And a conflict with `taken` is still named.
    let specs = [parse("8081:81").unwrap(), parse("8080:80").unwrap()];
    let taken = [held("web", None, 8080, Tcp)];
    assert_eq!(
        message(expand_all(
            &specs,
            &taken,
            &host(),
            "api",
            "back",
            (CTR_IP, None)
        )),
        "host port 8080/tcp: already published by container web"
    );
}

#[test]
fn expand_ephemeral_avoids_the_kernels_range() {
    let host = HostPorts {
        kernel_ephemeral: 20000..=25000,
        ..host()
    };
    let spec = parse("80-81").unwrap();
    assert_eq!(
        expand(&spec, &[], &host, "api", "back", CTR_IP).unwrap(),
        vec![ours(None, 25001, 80, Tcp), ours(None, 25002, 81, Tcp)]
    );
    // A kernel range that covers the whole window leaves nothing.
    let host = HostPorts {
        kernel_ephemeral: 1024..=65535,
        ..host
    };
    assert!(message(expand(&spec, &[], &host, "api", "back", CTR_IP))
        .contains("no free host port for 80/tcp"));
}

#[test]
fn expand_refuses_a_host_address_the_host_lacks() {
    assert_eq!(
        message(run("192.0.2.77:8080:80", &[])),
        "port spec 192.0.2.77:8080:80/tcp: 192.0.2.77 is not an address of the host"
    );
    assert!(run("10.0.0.1:8080:80", &[]).is_ok());
    assert!(run("127.0.0.2:8080:80", &[]).is_ok());
    assert!(run("0.0.0.0:8080:80", &[]).is_ok());
}

#[test]
fn host_ports_parse_the_kernels_range() {
    assert_eq!(
        HostPorts::parse_range("32768\t60999\n"),
        Some(32768..=60999)
    );
    assert_eq!(HostPorts::parse_range("8080 8080"), Some(8080..=8080));
    assert_eq!(HostPorts::parse_range("9 8"), None);
    assert_eq!(HostPorts::parse_range("1"), None);
}
