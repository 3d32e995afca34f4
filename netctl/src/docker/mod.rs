//! `netctl docker-plugin`: Docker's remote network driver. Docker finds it
//! by its socket (`/run/docker/plugins/NAME.sock`, or a spec file
//! `/etc/docker/plugins/NAME.spec` naming it) and POSTs JSON to it; each
//! call runs the same transactions as the CLI and the CNI front, on the
//! host netctl was started for (`--host-netns`, `--state-dir`, ...):
//!
//! | Docker | netctl |
//! |---|---|
//! | CreateNetwork | `network create docker-ID12` with Docker's pool and gateway, bridge `nc-ID12` |
//! | CreateEndpoint | `container run docker-EID12` at Docker's address: a veth pair whose container end stays in the host namespace, the datapath's endpoint, then the host end up |
//! | Join | records the sandbox; answers the veth end to move and the gateway |
//! | ProgramExternalConnectivity / Revoke | publishes / unpublishes Docker's port map |
//! | Leave | forgets the sandbox |
//! | DeleteEndpoint / DeleteNetwork | `container rm` / `network rm` |
//!
//! Calls are served one after the other (a transaction holds the state
//! lock anyway), one request per connection. The server itself is
//! `metrics::http`'s head reader and writer over a Unix socket.

pub mod protocol;

use std::{
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{
    io::AsyncReadExt,
    net::{UnixListener, UnixStream},
};

use crate::{
    config::HostConfig,
    error::{Error, Result},
    metrics::http::{accepted_or_logged, read_head, respond, Stop},
    model::{DockerEndpoint, NetworkMode},
    ops::{ContainerRun, Host, Networking, DOCKER_IFNAME_PREFIX},
};
use protocol::{
    container_name, endpoint_address, network_name, network_request, port_map, port_specs,
    CreateEndpoint, CreateNetwork, Ids, Join, ProgramExternal, CONTENT_TYPE, IMPLEMENTS,
};

/// Where Docker looks for a plugin named `netctl` without a spec file.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netctl.sock";
/// Longest a client may take to send its request or read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body read (Docker's are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// Serves the driver on `socket` until SIGINT or SIGTERM, then removes
/// the socket. `ready` is called once connections are accepted.
pub async fn serve(config: HostConfig, socket: &Path, ready: impl FnOnce()) -> Result<()> {
    let what = || format!("docker plugin socket {}", socket.display());
    take_stale_socket(socket).await?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::system(what(), e))?;
    }
    let listener = UnixListener::bind(socket).map_err(|e| Error::system(what(), e))?;
    let _remove = RemoveOnDrop(socket.to_owned());
    let mut stop = Stop::new().map_err(|e| Error::system(what(), e))?;
    ready();
    loop {
        let accepted = tokio::select! {
            () = stop.wait() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let Some((stream, _)) = accepted_or_logged("docker-plugin", accepted) else {
            continue;
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &config)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("docker-plugin: {e}"),
            Err(_) => log::warn!("docker-plugin: a call took over {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// A socket left by a plugin that died is removed; one that answers is
/// another plugin's, and refused.
async fn take_stale_socket(socket: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    let object = format!("docker plugin socket {}", socket.display());
    if !meta.file_type().is_socket() {
        return Err(Error::invalid(object, "exists and is not a socket"));
    }
    if UnixStream::connect(socket).await.is_ok() {
        return Err(Error::invalid(object, "another process serves it"));
    }
    std::fs::remove_file(socket).map_err(|e| Error::system(object, e))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads one request (head and `Content-Length` body) and answers it.
async fn answer(mut stream: UnixStream, config: &HostConfig) -> std::io::Result<()> {
    let Some((head, mut body)) = read_head(&mut stream).await? else {
        return respond(&mut stream, 400, "text/plain", "bad request\n").await;
    };
    let Some((path, length)) = request_line(&head) else {
        return respond(
            &mut stream,
            400,
            "text/plain",
            "POST with a Content-Length\n",
        )
        .await;
    };
    if length > MAX_BODY {
        return respond(&mut stream, 413, "text/plain", "too large\n").await;
    }
    while body.len() < length {
        let mut buf = vec![0u8; length - body.len()];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    let method = path.trim_start_matches('/');
    let answer = match call(config, method, &body).await {
        Ok(value) => value,
        Err(e) => {
            log::info!("docker-plugin: {method}: {e}");
            json!({ "Err": e.to_string() })
        }
    };
    log::debug!(
        "docker-plugin: {method} {} -> {answer}",
        String::from_utf8_lossy(&body)
    );
    respond(&mut stream, 200, CONTENT_TYPE, &answer.to_string()).await
}

/// The path of a POST and its body's length (0 without the header).
fn request_line(head: &str) -> Option<(String, usize)> {
    let mut lines = head.lines();
    let mut words = lines.next()?.split(' ');
    let (method, path) = (words.next()?, words.next()?);
    if method != "POST" {
        return None;
    }
    let mut length = 0;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        }
        // Docker sends whole bodies; a chunked one is not read.
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    Some((path.to_owned(), length))
}

fn decode<'a, T: serde::Deserialize<'a>>(method: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("docker call {method}"), format!("bad request: {e}")))
}

/// One call of the protocol: its answer, or the error Docker shows.
async fn call(config: &HostConfig, method: &str, body: &[u8]) -> Result<Value> {
    match method {
        "Plugin.Activate" => Ok(json!({ "Implements": [IMPLEMENTS] })),
        "NetworkDriver.GetCapabilities" => {
            Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
        }
        "NetworkDriver.CreateNetwork" => {
            create_network(config, &decode::<CreateNetwork>(method, body)?).await
        }
        "NetworkDriver.DeleteNetwork" => {
            let ids: Ids = decode(method, body)?;
            let name = network_name(&ids.network_id)?;
            let mut host = Host::open(config.clone()).await?;
            if host.state.networks.contains_key(&name) {
                host.network_rm(&[name]).await?;
            }
            Ok(json!({}))
        }
        "NetworkDriver.CreateEndpoint" => {
            create_endpoint(config, &decode::<CreateEndpoint>(method, body)?).await
        }
        "NetworkDriver.DeleteEndpoint" => {
            let ids: Ids = decode(method, body)?;
            let name = container_name(&ids.endpoint_id)?;
            let mut host = Host::open(config.clone()).await?;
            if host.state.containers.contains_key(&name) {
                host.container_rm(&[name]).await?;
            }
            Ok(json!({}))
        }
        "NetworkDriver.EndpointOperInfo" => {
            let ids: Ids = decode(method, body)?;
            let name = container_name(&ids.endpoint_id)?;
            let host = Host::open(config.clone()).await?;
            let ctr = host.state.container(&name)?;
            Ok(json!({ "Value": { protocol::PORTMAP: port_map(&ctr.ports) } }))
        }
        "NetworkDriver.Join" => join(config, &decode::<Join>(method, body)?).await,
        "NetworkDriver.Leave" => {
            let ids: Ids = decode(method, body)?;
            let name = container_name(&ids.endpoint_id)?;
            let mut host = Host::open(config.clone()).await?;
            if host.state.containers.contains_key(&name) {
                host.docker_sandbox(&name, None).await?;
            }
            Ok(json!({}))
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let req: ProgramExternal = decode(method, body)?;
            let name = container_name(&req.endpoint_id)?;
            let specs = port_specs(&req.options)?;
            let mut host = Host::open(config.clone()).await?;
            host.container_publish(&name, &specs).await?;
            Ok(json!({}))
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let ids: Ids = decode(method, body)?;
            let name = container_name(&ids.endpoint_id)?;
            let mut host = Host::open(config.clone()).await?;
            if host.state.containers.contains_key(&name) {
                host.container_unpublish(&name).await?;
            }
            Ok(json!({}))
        }
        // Discovery tells drivers about swarm nodes; a local driver has
        // nothing to learn from it.
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => Ok(json!({})),
        // Only asked of global-scope drivers (swarm's manager allocating a
        // network for the cluster); netctl is local.
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => Err(Error::invalid(
            format!("docker call {method}"),
            "netctl is a local-scope driver (no swarm networks)",
        )),
        other => Err(Error::invalid(
            format!("docker call {other}"),
            "unknown method",
        )),
    }
}

async fn create_network(config: &HostConfig, req: &CreateNetwork) -> Result<Value> {
    let create = network_request(req)?;
    let mut host = Host::open(config.clone()).await?;
    // Docker asks again for a network it knows when netctl's reply was
    // lost; the same network is no error.
    if let Some(net) = host.state.networks.get(&create.name) {
        if Some(net.subnet) == create.subnet && create.gateway.is_none_or(|g| g == net.gateway) {
            return Ok(json!({}));
        }
        return Err(Error::invalid(
            format!("network {}", create.name),
            "exists with another subnet or gateway",
        ));
    }
    host.network_create(create).await?;
    Ok(json!({}))
}

async fn create_endpoint(config: &HostConfig, req: &CreateEndpoint) -> Result<Value> {
    let network = network_name(&req.network_id)?;
    let name = container_name(&req.endpoint_id)?;
    let (ip, mac) = endpoint_address(req)?;
    let mut host = Host::open(config.clone()).await?;
    let run = ContainerRun {
        name: name.clone(),
        network: Networking::Network(network),
        ip: Some(ip),
        mac,
        docker: Some(DockerEndpoint {
            network_id: req.network_id.clone(),
            endpoint_id: req.endpoint_id.clone(),
        }),
        ..ContainerRun::default()
    };
    let ctr = host.container_run(run).await?;
    // Docker sets the MAC it was given itself; otherwise it learns
    // netctl's here (the veth end already carries it).
    Ok(match mac {
        Some(_) => json!({}),
        None => json!({ "Interface": {
            "MacAddress": ctr.endpoints.first().map(|e| e.mac.to_string()).unwrap_or_default()
        } }),
    })
}

async fn join(config: &HostConfig, req: &Join) -> Result<Value> {
    let name = container_name(&req.endpoint_id)?;
    let mut host = Host::open(config.clone()).await?;
    let ctr = host.state.container(&name)?.clone();
    let (Some(ep), NetworkMode::Bridge) = (ctr.endpoints.first(), &ctr.mode) else {
        return Err(Error::invalid(
            format!("container {name}"),
            "has no endpoint",
        ));
    };
    let net = host.state.network(&ep.network)?.clone();
    host.docker_sandbox(&name, Some(req.sandbox_key.clone()))
        .await?;
    let mut answer = json!({
        "InterfaceName": {
            "SrcName": crate::topology::peer_name(ep),
            "DstPrefix": DOCKER_IFNAME_PREFIX,
        },
    });
    // An internal network has no way out, hence no default route.
    if !net.internal {
        answer["Gateway"] = json!(net.gateway.to_string());
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_is_read_with_its_length() {
        let head =
            "POST /NetworkDriver.Join HTTP/1.1\r\nHost: plugin\r\nContent-Length: 42\r\n\r\n";
        assert_eq!(
            request_line(head),
            Some(("/NetworkDriver.Join".to_owned(), 42))
        );
        assert_eq!(request_line("GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            request_line("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
    }
}
