//! The runtime side of the CNI tests: netctl (and the reference plugins)
//! exec'd exactly as a runtime execs a plugin — a clean environment with
//! the `CNI_*` variables, the network configuration on stdin, stdout read
//! as JSON — and what a failed command must leave as it was.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use netctl::netns;
use serde_json::{json, Value};

use crate::sandbox::{netctl_bin, Sandbox};

pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
pub const NETWORK: &str = "cninet";
pub const SUBNET: &str = "10.77.0.0/24";

/// One plugin invocation's outcome.
pub struct Reply {
    pub code: Option<i32>,
    pub json: Value,
    pub stderr: String,
}

impl Reply {
    pub fn ok(self, what: &str) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: {} / {}",
            self.json,
            self.stderr
        );
        self.json
    }

    /// The spec error object's code, after checking the plugin failed and
    /// printed a well-formed error object.
    pub fn error_code(&self, what: &str) -> u64 {
        assert_ne!(self.code, Some(0), "{what} succeeded: {}", self.json);
        assert!(
            self.json["msg"].is_string() && self.json["cniVersion"].is_string(),
            "{what}: not an error object: {} / {}",
            self.json,
            self.stderr
        );
        self.json["code"].as_u64().expect("numeric code")
    }
}

/// Execs a plugin binary as a runtime does: a clean environment with the
/// `CNI_*` variables (and PATH, which runtimes pass on), the config on stdin.
pub fn exec_plugin(binary: &Path, vars: &[(&str, &str)], stdin: &Value) -> Reply {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    let input = if stdin.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(stdin).unwrap()
    };
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out: Output = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    Reply {
        code: out.status.code(),
        json: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A CNI bin dir as a node has it: the reference plugins and netctl
/// installed under the name of its `type`.
pub struct BinDir(pub PathBuf);

impl BinDir {
    pub fn new(sb: &Sandbox) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-cni-bin", sb.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("netctl");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(netctl_bin(), &link).unwrap();
        BinDir(dir)
    }

    pub fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_PLUGINS}", self.0.display())
    }
}

impl Drop for BinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `CNI_ARGS` as a Kubernetes runtime passes them (the pod's namespace and
/// name: no name on the network).
pub const KUBERNETES_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test";

/// The runtime side of one sandbox: network configs and container namespaces.
pub struct Runtime<'a> {
    pub sb: &'a Sandbox,
    pub bin: BinDir,
    /// `CNI_ARGS` of the next calls [default: [`KUBERNETES_ARGS`]].
    pub args: String,
}

impl<'a> Runtime<'a> {
    pub fn new(sb: &'a Sandbox) -> Self {
        Runtime {
            sb,
            bin: BinDir::new(sb),
            args: KUBERNETES_ARGS.to_owned(),
        }
    }

    /// `CNI_ARGS` as podman passes them: the container's name alone.
    pub fn podman_args(&mut self, name: &str) {
        self.args = format!("IgnoreUnknown=1;K8S_POD_NAME={name}");
    }

    /// The plugin object of the sandbox's network, pointed at the sandbox.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "netctl",
            "subnet": SUBNET,
            "datapath": self.sb.datapath,
            "hostNetns": self.sb.host_netns,
            "stateDir": self.sb.state_dir,
            "cgroup": self.sb.cgroup,
            "uplink": "uplink0",
            "capabilities": {"portMappings": true, "ips": true, "mac": true, "dns": true},
        })
    }

    /// A container namespace as a runtime makes one (lo up).
    pub fn make_netns(&self, name: &str) -> String {
        let netns_name = format!("{}-{name}", self.sb.prefix);
        netns::create(&netns_name).unwrap();
        self.sb
            .run_in(&netns_name, &["ip", "link", "set", "lo", "up"]);
        netns::path(&netns_name).display().to_string()
    }

    pub fn call(&self, plugin: &str, command: &str, id: &str, netns: &str, conf: &Value) -> Reply {
        let path = self.bin.cni_path();
        let mut vars = vec![
            ("CNI_COMMAND", command),
            ("CNI_PATH", path.as_str()),
            ("CNI_ARGS", self.args.as_str()),
        ];
        if !id.is_empty() {
            vars.push(("CNI_CONTAINERID", id));
            vars.push(("CNI_IFNAME", "eth0"));
        }
        if !netns.is_empty() {
            vars.push(("CNI_NETNS", netns));
        }
        let binary = if plugin == "netctl" {
            self.bin.0.join("netctl")
        } else {
            Path::new(REFERENCE_PLUGINS).join(plugin)
        };
        exec_plugin(&binary, &vars, conf)
    }

    pub fn netctl(&self, command: &str, id: &str, netns: &str, conf: &Value) -> Reply {
        self.call("netctl", command, id, netns, conf)
    }

    pub fn add(&self, id: &str, netns: &str, conf: &Value) -> Value {
        self.netctl("ADD", id, netns, conf).ok(&format!("ADD {id}"))
    }

    pub fn del(&self, id: &str, netns: &str, conf: &Value) {
        self.netctl("DEL", id, netns, conf).ok(&format!("DEL {id}"));
    }
}

pub fn id(n: u32) -> String {
    format!("{n:02}a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8")
}

pub fn container(n: u32) -> String {
    format!("cni-{}-eth0", &id(n)[..12])
}

pub fn result_ip(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

/// Names of the containers netctl lists.
pub fn containers(sb: &Sandbox) -> Vec<String> {
    let ls: Value =
        serde_json::from_str(&sb.netctl_ok(&["--format", "json", "container", "ls"])).unwrap();
    let mut names: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Entries of a pinned eBPF map of the sandbox's host (none for iptables,
/// or before the datapath is set up).
pub fn map_entries(sb: &Sandbox, map: &str) -> usize {
    let path = format!("/sys/fs/bpf/netctl/{}/maps/{map}", sb.host_netns);
    if sb.datapath != "ebpf" || !Path::new(&path).exists() {
        return 0;
    }
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &path])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool {path}: {out:?}");
    let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    dump.as_array().map_or(0, Vec::len)
}

/// Everything a failed command must leave as it was: the state file, the
/// host's links, its rules and the datapath's maps.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub state: String,
    pub links: Vec<String>,
    pub rules: Vec<String>,
    pub pinned: bool,
    pub endpoints: usize,
    pub portmap: usize,
}

/// The state file without its `generation`, which counts saves: a DEL
/// that undoes an ADD leaves the same state, saved twice more.
fn state_content(sb: &Sandbox) -> String {
    let text = std::fs::read_to_string(sb.state_dir.join("state.json")).unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut state) => {
            if let Some(fields) = state.as_object_mut() {
                fields.remove("generation");
            }
            serde_json::to_string_pretty(&state).expect("json")
        }
        Err(_) => text,
    }
}

pub fn snapshot(sb: &Sandbox) -> Snapshot {
    Snapshot {
        state: state_content(sb),
        links: sb.host_links(),
        rules: sb
            .iptables_save()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        pinned: Path::new("/sys/fs/bpf/netctl")
            .join(&sb.host_netns)
            .exists(),
        endpoints: map_entries(sb, "ENDPOINTS"),
        portmap: map_entries(sb, "PORTMAP"),
    }
}

/// Links in a container namespace.
pub fn links_in(sb: &Sandbox, netns_path: &str) -> String {
    let name = Path::new(netns_path).file_name().unwrap().to_str().unwrap();
    String::from_utf8_lossy(&sb.run_in(name, &["ip", "-o", "link", "show"]).stdout).into_owned()
}
