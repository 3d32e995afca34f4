//! `netctl resolver`: the process itself. One UDP socket and one TCP
//! listener on port 53 of each user-defined network's gateway (both of a
//! dual-stack network's: IPv4 and IPv6), in the host namespace; DNS
//! messages are read and written with hickory-proto.
//!
//! Who may ask what: a query is answered only when it comes from an
//! address of a container on the network whose gateway it was sent to
//! (both datapaths' anti-spoofing makes the source address the sender's
//! own), and only with names of the networks that container is on, so a
//! container never learns another network's names, whichever gateway it
//! asks. Anything else is REFUSED. A name the container's networks do not
//! know is forwarded to its `--dns` servers, else to the host's resolvers
//! (loopback ones included: they are reached from the host namespace), and
//! the answer relayed as is; except a single-label name, answered NXDOMAIN
//! at once (it cannot be a name in the DNS, and systemd-resolved does not
//! forward those either), so that a name just removed fails fast.
//!
//! Reverse lookups (PTR) of an address in a user-defined network's subnet
//! are answered here too: the container's name when the address is one of
//! a container on the asker's networks, else NXDOMAIN. Forwarded, such a
//! private name would wait on resolvers that cannot know it (`ping NAME`
//! asks the PTR of every reply's source: 2 s per unanswering resolver), and
//! would tell the host's DNS which addresses the containers talk to.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::OwnedFd,
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, PTR},
        Name, RData, Record, RecordType,
    },
};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use super::{conf, READY};
use crate::{
    config::HostConfig,
    error::{Error, Result},
    state::State,
};

/// How long one upstream resolver may take to answer a forwarded query.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may take to send its query.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Names change as containers come and go: answers are not to be cached.
const TTL: u32 = 0;

/// What the resolver knows, built from the state.
#[derive(Debug, Default)]
pub struct Tables {
    /// Gateway (IPv4, and IPv6 on a dual-stack network) → user-defined
    /// network.
    networks: HashMap<IpAddr, String>,
    /// (network, address of either family) → container.
    clients: HashMap<(String, IpAddr), String>,
    /// Container → its user-defined networks (in endpoint order) and `--dns`.
    containers: HashMap<String, (Vec<String>, Vec<Ipv4Addr>)>,
    /// Network → lower-case name → addresses (IPv4, and IPv6 on a
    /// dual-stack network): containers, their aliases on it, and the
    /// containers that share their namespace.
    names: HashMap<String, HashMap<String, (Ipv4Addr, Option<Ipv6Addr>)>>,
    /// The user-defined networks' subnets (both families): the reverse
    /// names answered here.
    subnets: Vec<ipnet::IpNet>,
    /// The host's resolvers, for the rest.
    upstream: Vec<Ipv4Addr>,
}

impl Tables {
    pub fn build(state: &State, upstream: Vec<Ipv4Addr>) -> Tables {
        let mut t = Tables {
            upstream,
            ..Tables::default()
        };
        for net in state.networks.values().filter(|n| n.dns) {
            t.networks.insert(net.gateway.into(), net.name.clone());
            t.subnets.push(net.subnet.into());
            if let Some(side) = net.ipv6 {
                t.networks.insert(side.gateway.into(), net.name.clone());
                t.subnets.push(side.subnet.into());
            }
            t.names.insert(net.name.clone(), HashMap::new());
        }
        for ctr in state.containers.values() {
            let mut networks = Vec::new();
            for ep in &ctr.endpoints {
                let Some(names) = t.names.get_mut(&ep.network) else {
                    continue;
                };
                networks.push(ep.network.clone());
                let addresses = [Some(IpAddr::V4(ep.ip)), ep.ip6.map(IpAddr::V6)];
                for address in addresses.into_iter().flatten() {
                    t.clients
                        .insert((ep.network.clone(), address), ctr.name.clone());
                }
                let sharers = state
                    .containers
                    .values()
                    .filter(|c| c.mode == crate::model::NetworkMode::Container(ctr.name.clone()));
                let own = [ctr.name.clone()].into_iter();
                let aliases = ctr.aliases(&ep.network).iter().cloned();
                for name in own.chain(aliases).chain(sharers.map(|c| c.name.clone())) {
                    names
                        .entry(name.to_ascii_lowercase())
                        .or_insert((ep.ip, ep.ip6));
                }
            }
            t.containers
                .insert(ctr.name.clone(), (networks, ctr.naming.dns.servers.clone()));
        }
        t
    }

    pub fn gateways(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.networks.keys().copied()
    }
}

/// What to do with a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not from a container of this network.
    Refused,
    /// A name of the container's networks: its address (type A).
    Address(Ipv4Addr),
    /// A name of a dual-stack network: its IPv6 address (type AAAA).
    Address6(Ipv6Addr),
    /// A name of the container's networks, another type (or AAAA of a
    /// name without IPv6): no records.
    NoData,
    /// A reverse name of a container's address on the asker's networks:
    /// the container's name (type PTR).
    Pointer(String),
    /// Not a name here, and not one to forward.
    NxDomain,
    /// To these resolvers, in turn.
    Forward(Vec<Ipv4Addr>),
    /// Nowhere to forward.
    ServFail,
}

/// The decision for `name` (any case, with or without the final dot)
/// asked by `client` at `gateway` (of the same family: a container asks
/// its network's IPv6 gateway from its IPv6 address).
pub fn decide(
    t: &Tables,
    gateway: IpAddr,
    client: IpAddr,
    name: &str,
    qtype: RecordType,
) -> Decision {
    let Some(network) = t.networks.get(&gateway) else {
        return Decision::Refused;
    };
    let Some(ctr) = t.clients.get(&(network.clone(), client)) else {
        return Decision::Refused;
    };
    let (networks, servers) = &t.containers[ctr];
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some(address) = reverse_address(&name) {
        if t.subnets.iter().any(|subnet| subnet.contains(&address)) {
            // The network asked first, then the container's others.
            let owner = std::iter::once(network)
                .chain(networks)
                .find_map(|n| t.clients.get(&(n.clone(), address)));
            return match owner {
                Some(owner) if qtype == RecordType::PTR => Decision::Pointer(owner.clone()),
                Some(_) => Decision::NoData,
                None => Decision::NxDomain,
            };
        }
    }
    // The network asked first, then the container's others.
    let found = std::iter::once(network)
        .chain(networks)
        .find_map(|n| t.names.get(n)?.get(&name).copied());
    match found {
        Some((ip, _)) if matches!(qtype, RecordType::A | RecordType::ANY) => Decision::Address(ip),
        Some((_, Some(ip6))) if qtype == RecordType::AAAA => Decision::Address6(ip6),
        Some(_) => Decision::NoData,
        None if !name.contains('.') => Decision::NxDomain,
        None => {
            let to = if servers.is_empty() {
                &t.upstream
            } else {
                servers
            };
            match to.is_empty() {
                true => Decision::ServFail,
                false => Decision::Forward(to.clone()),
            }
        }
    }
}

/// The address a whole reverse name stands for (`4.0.18.172.in-addr.arpa`,
/// 32 nibbles under `ip6.arpa`); `None` for any other name, a partial one
/// included.
fn reverse_address(name: &str) -> Option<IpAddr> {
    let net = Name::from_ascii(format!("{name}."))
        .ok()?
        .parse_arpa_name()
        .ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

use crate::state::{stamp, Stamp};

/// The tables, read again when the state file or the host's resolv.conf
/// changed (checked on every query: two stat calls).
struct Source {
    config: HostConfig,
    state_file: PathBuf,
    stamps: Option<[Stamp; 2]>,
    tables: Rc<Tables>,
}

impl Source {
    fn current(&mut self) -> Rc<Tables> {
        let host_path = conf::host_path(&self.config);
        let now = [stamp(&self.state_file), stamp(&host_path)];
        if self.stamps != Some(now) {
            match load(&self.config, &self.state_file) {
                Ok(tables) => {
                    self.tables = Rc::new(tables);
                    self.stamps = Some(now);
                }
                // A state that cannot be read keeps the last tables (and
                // is tried again on the next query).
                Err(e) => eprintln!("netctl resolver: {e}"),
            }
        }
        self.tables.clone()
    }
}

fn load(config: &HostConfig, state_file: &std::path::Path) -> Result<Tables> {
    let state = crate::state::read_snapshot(state_file)?;
    let (_, host) = conf::read_host(config);
    let upstream = host
        .nameservers
        .iter()
        .filter_map(|ns| match ns {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    Ok(Tables::build(&state, upstream))
}

/// Port 53 of an address that may not (or no longer) be on the host: a
/// bridge rebuilt by `doctor --fix` gets its address back later, and the
/// sockets stay valid.
fn bound(gateway: IpAddr, kind: SockType) -> Result<OwnedFd> {
    let object = || {
        format!(
            "resolver {}/{}",
            SocketAddr::new(gateway, 53),
            if kind == SockType::Stream {
                "tcp"
            } else {
                "udp"
            }
        )
    };
    let family = match gateway {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error::system(object(), e))?;
    // IP_FREEBIND holds for IPv6 sockets too (the kernel takes SOL_IP
    // options on them): an IPv6 gateway may also be missing for a while.
    socket::setsockopt(&fd, sockopt::IpFreebind, &true).map_err(|e| Error::system(object(), e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| Error::system(object(), e))?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match gateway {
        IpAddr::V4(ip) => socket::bind(raw, &SockaddrIn::from(SocketAddrV4::new(ip, 53))),
        IpAddr::V6(ip) => socket::bind(raw, &SockaddrIn6::from(SocketAddrV6::new(ip, 53, 0, 0))),
    }
    .map_err(|e| Error::system(object(), format!("bind: {e}")))?;
    if kind == SockType::Stream {
        socket::listen(&fd, socket::Backlog::new(128).expect("in range"))
            .map_err(|e| Error::system(object(), format!("listen: {e}")))?;
    }
    Ok(fd)
}

/// Runs the resolver until killed. Prints [`READY`] once it listens.
pub async fn run(config: &HostConfig) -> Result<()> {
    let state_file = config.state_dir.join("state.json");
    let tables = load(config, &state_file)?;
    let source = Rc::new(RefCell::new(Source {
        config: config.clone(),
        state_file,
        stamps: None,
        tables: Rc::new(tables),
    }));
    let gateways: Vec<IpAddr> = source.borrow_mut().current().gateways().collect();
    let local = tokio::task::LocalSet::new();
    for gateway in gateways {
        let udp = UdpSocket::from_std(std::net::UdpSocket::from(bound(
            gateway,
            SockType::Datagram,
        )?))
        .map_err(|e| Error::system("resolver", e))?;
        let tcp = TcpListener::from_std(std::net::TcpListener::from(bound(
            gateway,
            SockType::Stream,
        )?))
        .map_err(|e| Error::system("resolver", e))?;
        local.spawn_local(serve_udp(gateway, Rc::new(udp), source.clone()));
        local.spawn_local(serve_tcp(gateway, tcp, source.clone()));
    }
    // netctl waits for this line before it records the pid; then stdout
    // is no longer needed.
    println!("{READY}");
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
    // A state gone for good (`down` removed it) ends the resolver too, in
    // case the process that stopped it died first.
    local
        .run_until(async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if !config.state_dir.exists() {
                    return;
                }
            }
        })
        .await;
    Ok(())
}

async fn serve_udp(gateway: IpAddr, socket: Rc<UdpSocket>, source: Rc<RefCell<Source>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let tables = source.borrow_mut().current();
        let socket = socket.clone();
        tokio::task::spawn_local(async move {
            if let Some(reply) = answer(&tables, gateway, from.ip(), &query, false).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp(gateway: IpAddr, listener: TcpListener, source: Rc<RefCell<Source>>) {
    loop {
        let Ok((mut stream, from)) = listener.accept().await else {
            continue;
        };
        let source = source.clone();
        tokio::task::spawn_local(async move {
            // Several queries may come on one connection.
            while let Ok(Ok(query)) =
                tokio::time::timeout(TCP_TIMEOUT, read_framed(&mut stream)).await
            {
                let tables = source.borrow_mut().current();
                let Some(reply) = answer(&tables, gateway, from.ip(), &query, true).await else {
                    return;
                };
                if write_framed(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// The reply to one query (`None`: not a DNS query, dropped).
async fn answer(
    t: &Tables,
    gateway: IpAddr,
    client: IpAddr,
    query: &[u8],
    tcp: bool,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    let question = match request.queries.as_slice() {
        [q] if request.metadata.op_code == OpCode::Query => q,
        _ => {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply.to_vec().ok();
        }
    };
    let name = question.name().to_ascii();
    match decide(t, gateway, client, &name, question.query_type()) {
        Decision::Refused => reply.metadata.response_code = ResponseCode::Refused,
        Decision::Address(ip) => {
            reply.metadata.authoritative = true;
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::A(A(ip)),
            ));
        }
        Decision::Address6(ip6) => {
            reply.metadata.authoritative = true;
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::AAAA(AAAA(ip6)),
            ));
        }
        Decision::Pointer(owner) => {
            reply.metadata.authoritative = true;
            let target = Name::from_ascii(format!("{owner}.")).ok()?;
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::PTR(PTR(target)),
            ));
        }
        Decision::NoData => reply.metadata.authoritative = true,
        Decision::NxDomain => {
            reply.metadata.authoritative = true;
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        Decision::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
        Decision::Forward(servers) => {
            // UDP first, whatever the client used (a stub resolver such as
            // systemd-resolved's may not take TCP); TCP when the answer
            // was truncated for a TCP client, or UDP got none.
            for server in servers {
                let mut relayed = forward_udp(server, query, request.metadata.id).await;
                let truncated = relayed.as_ref().is_some_and(|r| r[2] & 0x02 != 0);
                if tcp && (truncated || relayed.is_none()) {
                    relayed = forward_tcp(server, query).await.or(relayed);
                }
                if let Some(bytes) = relayed {
                    return Some(bytes);
                }
            }
            reply.metadata.response_code = ResponseCode::ServFail;
        }
    }
    reply.to_vec().ok()
}

/// One query to one upstream over UDP, from a fresh ephemeral port; the
/// first datagram from that server with the query's id is the answer.
async fn forward_udp(server: Ipv4Addr, query: &[u8], id: u16) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    socket.connect((server, 53)).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Some(buf[..n].to_vec());
            }
        }
    })
    .await
    .ok()?
}

async fn forward_tcp(server: Ipv4Addr, query: &[u8]) -> Option<Vec<u8>> {
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let mut stream = TcpStream::connect((server, 53)).await.ok()?;
        write_framed(&mut stream, query).await.ok()?;
        read_framed(&mut stream).await.ok()
    })
    .await
    .ok()?
}

#[cfg(test)]
mod tests;
