//! `netctl metrics --listen`: a small HTTP/1.1 server for `GET /metrics`,
//! on the one thread of the command's runtime. One request per connection
//! (answered with `Connection: close`), connections served one after the
//! other: a scrape takes milliseconds, and serving them in turn keeps
//! scrapes from queueing on the state lock against each other. A client
//! that does not finish its request within [`REQUEST_TIMEOUT`] is dropped.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    signal::unix::{signal, SignalKind},
};

use super::exposition::CONTENT_TYPE;
use crate::error::{Error, Result};

/// Longest a client may take to send its request head or read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read; longer ones are refused.
const MAX_HEAD: usize = 8192;
/// The one path served.
pub const METRICS_PATH: &str = "/metrics";

/// Serves `scrape()`'s text at [`METRICS_PATH`] on `addr` until SIGINT or
/// SIGTERM. `ready` is told the bound address (port 0 picks one) once
/// connections are accepted.
pub async fn serve<S, F>(
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
    mut scrape: S,
) -> Result<()>
where
    S: FnMut() -> F,
    F: Future<Output = Result<String>>,
{
    let what = || format!("metrics listener {addr}");
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::system(what(), e))?;
    let mut stop = Stop::new().map_err(|e| Error::system(what(), e))?;
    ready(
        listener
            .local_addr()
            .map_err(|e| Error::system(what(), e))?,
    );
    loop {
        let accepted = tokio::select! {
            () = stop.wait() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let Some((stream, _)) = accepted_or_logged("metrics", accepted) else {
            continue;
        };
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &mut scrape)).await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("metrics: {e}"),
            Err(_) => log::warn!("metrics: a client took over {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// SIGINT or SIGTERM, which end a server (`metrics --listen`,
/// `docker-plugin`) cleanly.
pub(crate) struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// An accepted connection, or none after logging why not: a connection
/// that went before it was accepted, or no fd left for now, leaves the
/// listener itself good.
pub(crate) fn accepted_or_logged<T>(server: &str, accepted: std::io::Result<T>) -> Option<T> {
    accepted
        .inspect_err(|e| log::warn!("{server}: accept: {e}"))
        .ok()
}

/// Reads one request and writes its answer.
async fn answer<S, F>(mut stream: TcpStream, scrape: &mut S) -> std::io::Result<()>
where
    S: FnMut() -> F,
    F: Future<Output = Result<String>>,
{
    let Some((head, _)) = read_head(&mut stream).await? else {
        return respond(&mut stream, 400, "text/plain", "bad request\n").await;
    };
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => match scrape().await {
            Ok(text) => (200, CONTENT_TYPE, text),
            Err(e) => (500, "text/plain", format!("netctl: {e}\n")),
        },
        Route::NotFound => (404, "text/plain", format!("try {METRICS_PATH}\n")),
        Route::NotAllowed => (405, "text/plain", "GET only\n".to_owned()),
        Route::Bad => (400, "text/plain", "bad request\n".to_owned()),
    };
    respond(&mut stream, status, content_type, &body).await
}

/// The request head (up to the blank line) and the bytes read past it
/// (the start of a body), or none if it is too long or the client closed
/// first. Also serves `netctl docker-plugin`.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    };
    let rest = head.split_off(end);
    Ok(String::from_utf8(head).ok().map(|h| (h, rest)))
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    NotAllowed,
    Bad,
}

/// Where a request head goes, from its request line.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") || words.next().is_some() {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::NotAllowed;
    }
    // The query string (`?format=...`) asks for nothing we vary.
    let path = target.split('?').next().unwrap_or("");
    if path == METRICS_PATH {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// Writes a whole answer and closes the connection (`Connection: close`).
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let route_of = |line: &str| route(&format!("{line}\r\nHost: x\r\n\r\n"));
        assert_eq!(route_of("GET /metrics HTTP/1.1"), Route::Metrics);
        assert_eq!(route_of("GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route_of("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route_of("POST /metrics HTTP/1.1"), Route::NotAllowed);
        assert_eq!(route_of("GET /metrics"), Route::Bad);
        assert_eq!(route_of("GET /metrics SPDY/3"), Route::Bad);
    }
}
