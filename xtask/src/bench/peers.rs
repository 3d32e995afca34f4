//! The peers, driven the way a runtime drives them, inside the sandbox's
//! host namespace (`ip netns exec HOST`): Debian's CNI plugins (bridge +
//! host-local + portmap) and netavark. Each attachment comes back with its
//! undo (DEL, teardown): queued on the sandbox, which runs it before
//! deleting the namespaces, or run at once by the control-plane runs,
//! which time it.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{
    cmd::{display, run},
    sandbox::{Cleanup, Sandbox},
};

pub const CNI_PATH: &str = "/usr/lib/cni";
pub const NETAVARK: &str = "/usr/lib/podman/netavark";
const NET_NAME: &str = "ncbnet";

/// Runs a command with `stdin`, returns stdout; stderr (and stdout, where
/// CNI plugins write their errors) in the error.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Result<String> {
    let line = display(cmd);
    println!("$ {line} <<< (config)");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

fn cni_command(sb: &Sandbox, verb: &str, plugin: &str, id: &str, netns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &sb.host])
        .arg(format!("{CNI_PATH}/{plugin}"))
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH);
    cmd
}

/// A port to publish: host port, container port, "tcp" or "udp".
pub type PortMapping = (u16, u16, &'static str);

/// A container namespace attached to a peer, and what detaches it.
pub struct Attached {
    /// Its IPv4 address.
    pub ip: String,
    netns: String,
    /// DEL or teardown commands, in the order they were needed (run in
    /// reverse).
    undo: Vec<Cleanup>,
}

impl Attached {
    /// Leaves it attached until the sandbox goes (its undo is queued
    /// there); returns its address.
    pub fn keep(self, sb: &mut Sandbox) -> String {
        for cleanup in self.undo {
            sb.on_teardown(cleanup);
        }
        self.ip
    }

    /// Detaches it now, as a runtime removing the container does: the
    /// undo in reverse, then the namespace.
    pub fn detach(self) -> Result<()> {
        for Cleanup { mut cmd, stdin } in self.undo.into_iter().rev() {
            match stdin {
                Some(text) => run_with_stdin(&mut cmd, &text).map(drop)?,
                None => run(&mut cmd)?,
            }
        }
        run(Command::new("ip").args(["netns", "del", &self.netns]))
    }
}

/// Makes namespace `<p>-<name>` and attaches it with bridge (+ portmap when
/// `ports` is not empty).
pub fn cni_add(sb: &Sandbox, name: &str, ports: &[PortMapping]) -> Result<Attached> {
    let netns = format!("{}-{name}", sb.prefix);
    run(Command::new("ip").args(["netns", "add", &netns]))?;
    run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
    let id = format!("{}-{name}", sb.prefix);
    let data_dir = sb.scratch_dir()?.join("cni");
    let bridge = json!({
        "cniVersion": "0.4.0",
        "name": NET_NAME,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": "10.88.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
    .to_string();
    let result = run_with_stdin(&mut cni_command(sb, "ADD", "bridge", &id, &netns), &bridge)?;
    let mut undo = vec![Cleanup {
        cmd: cni_command(sb, "DEL", "bridge", &id, &netns),
        stdin: Some(bridge),
    }];
    let result: Value = serde_json::from_str(&result).context("bridge plugin result")?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| anyhow!("no ips[0].address in {result}"))?
        .to_owned();
    if !ports.is_empty() {
        let mappings: Vec<Value> = ports
            .iter()
            .map(|(h, c, proto)| json!({"hostPort": h, "containerPort": c, "protocol": proto}))
            .collect();
        let portmap = json!({
            "cniVersion": "0.4.0",
            "name": NET_NAME,
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "snat": true,
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": result,
        })
        .to_string();
        let added = run_with_stdin(
            &mut cni_command(sb, "ADD", "portmap", &id, &netns),
            &portmap,
        );
        if let Err(e) = added {
            // The bridge attachment is undone here: nobody else holds it.
            let _ = Attached { ip, netns, undo }.detach();
            return Err(e);
        }
        undo.push(Cleanup {
            cmd: cni_command(sb, "DEL", "portmap", &id, &netns),
            stdin: Some(portmap),
        });
    }
    Ok(Attached { ip, netns, undo })
}

/// `netavark --config CONFIG -f OPTS VERB NETNS` in the host namespace.
fn netavark_command(sb: &Sandbox, config: &Path, verb: &str, opts: &Path, netns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &sb.host, NETAVARK, "--config"])
        .arg(config)
        .arg("-f")
        .arg(opts)
        .args([verb, &format!("/run/netns/{netns}")]);
    cmd
}

/// Makes namespace `<p>-<name>` and runs `netavark setup` for it with the
/// static address `ip` on 10.89.0.0/16 and the given ports.
pub fn netavark_add(sb: &Sandbox, name: &str, ip: &str, ports: &[PortMapping]) -> Result<Attached> {
    let netns = format!("{}-{name}", sb.prefix);
    run(Command::new("ip").args(["netns", "add", &netns]))?;
    run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
    let scratch = sb.scratch_dir()?;
    let config = scratch.join("netavark");
    std::fs::create_dir_all(&config)?;
    let hex64 = |s: &str| {
        let mut h: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        h.truncate(64);
        format!("{h:0<64}")
    };
    let port_mappings: Vec<Value> = ports
        .iter()
        .map(|(h, c, proto)| {
            json!({"host_ip": "", "container_port": c, "host_port": h, "range": 1, "protocol": proto})
        })
        .collect();
    let opts = json!({
        "container_id": hex64(&netns),
        "container_name": name,
        "port_mappings": port_mappings,
        "networks": {NET_NAME: {"static_ips": [ip], "interface_name": "eth0"}},
        "network_info": {NET_NAME: {
            "name": NET_NAME,
            "id": hex64(NET_NAME),
            "driver": "bridge",
            "network_interface": "ncbbr0",
            "subnets": [{"subnet": "10.89.0.0/16", "gateway": "10.89.0.1"}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
        }},
    });
    let path = scratch.join(format!("netavark-{name}.json"));
    std::fs::write(&path, opts.to_string())?;
    run(&mut netavark_command(sb, &config, "setup", &path, &netns))?;
    Ok(Attached {
        ip: ip.to_owned(),
        undo: vec![Cleanup {
            cmd: netavark_command(sb, &config, "teardown", &path, &netns),
            stdin: None,
        }],
        netns,
    })
}
