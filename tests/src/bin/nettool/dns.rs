//! DNS for the resolver tests, with hickory-proto's messages:
//!
//!   nettool dnsserve IP:PORT NAME=IP...   a tiny upstream resolver: answers A
//!                                         queries for the names given (any
//!                                         case), NXDOMAIN for the rest; prints
//!                                         `listening on ...`, then `query NAME
//!                                         from IP` per query (at most 10,000
//!                                         queries, 10 minutes)
//!   nettool dnsask udp|tcp SERVER NAME [A|AAAA]
//!                                         one query (A unless told) to
//!                                         SERVER:53 (IPv4 or IPv6), prints
//!                                         `rcode=CODE answers=IP,...` or
//!                                         `timeout` (2 s)

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};

const MAX_QUERIES: u32 = 10_000;
const MAX_TIME: Duration = Duration::from_secs(600);

pub fn serve(addr: &str, entries: &[&str]) -> Result<(), String> {
    let mut names: Vec<(String, Ipv4Addr)> = Vec::new();
    for entry in entries {
        let (name, ip) = entry
            .split_once('=')
            .ok_or_else(|| format!("bad entry {entry} (NAME=IP)"))?;
        let ip = ip.parse().map_err(|_| format!("bad address in {entry}"))?;
        names.push((name.to_ascii_lowercase(), ip));
    }
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let socket = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let mut answered = 0;
    while answered < MAX_QUERIES && started.elapsed() < MAX_TIME {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = request.queries.first().cloned() else {
            continue;
        };
        let name = query.name().to_ascii();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        println!("query {name} from {}", from.ip());
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(query.clone());
        match names.iter().find(|(n, _)| *n == name) {
            Some((_, ip)) if query.query_type() == RecordType::A => {
                reply.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(*ip)),
                ));
            }
            Some(_) => {}
            None => reply.metadata.response_code = ResponseCode::NXDomain,
        }
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from);
        }
        answered += 1;
    }
    Ok(())
}

pub fn ask(transport: &str, server: &str, name: &str, qtype: &str) -> Result<(), String> {
    let server: IpAddr = server.parse().map_err(|_| format!("bad server {server}"))?;
    let qtype = match qtype {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        other => return Err(format!("type {other}: A or AAAA")),
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("name {name}: {e}"))?;
    query.add_query(Query::query(fqdn, qtype));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(2);
    let reply = match transport {
        "udp" => {
            let any: IpAddr = match server {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            socket
                .send_to(&bytes, (server, 53))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => buf[..n].to_vec(),
                Err(_) => {
                    println!("timeout");
                    return Ok(());
                }
            }
        }
        "tcp" => {
            let connected = TcpStream::connect_timeout(&(server, 53).into(), timeout);
            let Ok(mut stream) = connected else {
                println!("timeout");
                return Ok(());
            };
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed).map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                println!("timeout");
                return Ok(());
            }
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf
        }
        other => return Err(format!("transport {other}: udp or tcp")),
    };
    let reply = Message::from_vec(&reply).map_err(|e| format!("reply: {e}"))?;
    if reply.metadata.message_type != MessageType::Response
        || reply.metadata.id != query.metadata.id
    {
        return Err("not an answer to the query".into());
    }
    let answers: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(aaaa) => Some(aaaa.0.to_string()),
            _ => None,
        })
        .collect();
    println!(
        "rcode={:?} answers={}",
        reply.metadata.response_code,
        answers.join(",")
    );
    Ok(())
}
