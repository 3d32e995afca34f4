//! One CNI invocation (its environment, configuration and stdin) and what
//! every command asks of it: its attachment, its names, its IPAM calls.

use super::super::{
    config::{Env, NetConf},
    delegate::{self, Call},
    result::CniError,
};
use crate::{
    config::HostConfig,
    ipam,
    model::{CniAttachment, Container},
    netns,
    ops::Host,
};

/// The netctl container of an attachment: `cni-` + the first 12
/// characters of the container id + `-` + ifname (a hash of the ifname when
/// the ifname holds characters a container name may not).
pub fn container_name(container_id: &str, ifname: &str) -> String {
    let id: String = container_id.chars().take(12).collect();
    let readable = format!("cni-{id}-{ifname}");
    if ipam::check_name("container", &readable).is_ok() {
        readable
    } else {
        format!("cni-{id}-{}", ipam::veth_name(ifname, 0))
    }
}

pub(super) struct Invocation<'a> {
    pub(super) env: &'a Env,
    pub(super) conf: &'a NetConf,
    pub(super) stdin: &'a [u8],
    pub(super) config: HostConfig,
}

impl Invocation<'_> {
    /// The attachment of this invocation, if netctl has it.
    pub(super) fn ours<'s>(&self, host: &'s Host) -> Option<&'s Container> {
        let name = container_name(&self.env.container_id, &self.env.ifname);
        host.state.containers.get(&name).filter(|c| {
            c.cni.as_ref().is_some_and(|cni| {
                cni.container_id == self.env.container_id && cni.ifname == self.env.ifname
            })
        })
    }

    /// Attachments of this network in namespaces that no longer exist
    /// which are this attachment or hold one of its names.
    pub(super) fn stale(&self, host: &Host) -> Vec<(String, CniAttachment)> {
        let names: Vec<String> = self
            .names()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        host.state
            .containers
            .values()
            .filter_map(|c| Some((c, c.cni.as_ref()?)))
            .filter(|(_, cni)| cni.network == self.conf.name && !netns::exists(&cni.netns))
            .filter(|(c, cni)| {
                (cni.container_id == self.env.container_id && cni.ifname == self.env.ifname)
                    || c.aliases(&self.conf.name)
                        .iter()
                        .any(|a| names.contains(&a.to_ascii_lowercase()))
            })
            .map(|(c, cni)| (c.name.clone(), cni.clone()))
            .collect()
    }

    /// A DEL to the delegated IPAM plugin for each of `attachments`, with
    /// `stdin` as their configuration; the errors met.
    pub(super) fn release_ipam_of(
        &self,
        attachments: &[CniAttachment],
        stdin: &[u8],
    ) -> Vec<CniError> {
        let Some(plugin) = self.conf.delegated_ipam() else {
            return Vec::new();
        };
        attachments
            .iter()
            .filter_map(|cni| {
                let call = Call {
                    command: "DEL",
                    container_id: &cni.container_id,
                    ifname: &cni.ifname,
                    netns: None,
                };
                delegate::exec(plugin, &self.env.path, &call, stdin).err()
            })
            .collect()
    }

    /// The attachment's names on its network besides its own: podman's
    /// container name (`K8S_POD_NAME`) and the `aliases` capability's
    /// names for this network (podman's `--network-alias` and the short
    /// container id), each once whatever its case.
    pub(super) fn names(&self) -> Vec<String> {
        let aliases = self.conf.runtime_config.aliases.get(&self.conf.name);
        let mut names: Vec<String> = Vec::new();
        // podman's name rule is netctl's but for the length: a longer
        // name is no DNS label either, and is left out rather than failing
        // the container (the aliases asked are checked as given).
        let podman_name = self
            .env
            .podman_name()
            .filter(|n| ipam::check_name("container", n).is_ok());
        for name in podman_name
            .into_iter()
            .chain(aliases.into_iter().flatten().map(String::as_str))
        {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.to_owned());
            }
        }
        names
    }

    pub(super) fn ipam_call(&self, command: &'static str) -> Call<'_> {
        Call {
            command,
            container_id: &self.env.container_id,
            ifname: &self.env.ifname,
            netns: self.env.netns.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::config::Command;

    #[test]
    fn container_names_are_valid_and_stable() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(container_name(id, "eth0"), "cni-0123456789ab-eth0");
        let odd = container_name(id, "e@th0");
        assert!(ipam::check_name("container", &odd).is_ok(), "{odd}");
        assert_eq!(odd, container_name(id, "e@th0"));
        assert_ne!(odd, container_name(id, "e#th0"));
    }

    #[test]
    fn names_of_an_attachment() {
        let conf = NetConf::decode(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netctl","runtimeConfig":{"aliases":{
              "n":["web","www"],"other":["x"]}}}"#,
            Command::Add,
        )
        .unwrap();
        let env = |pod: &str| Env {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            path: Vec::new(),
            args: vec![("K8S_POD_NAME".into(), pod.into())],
        };
        let names = |env: &Env| {
            Invocation {
                env,
                conf: &conf,
                stdin: b"",
                config: HostConfig::new(None, None, None, None),
            }
            .names()
        };
        // The pod name first; the same alias in another case once.
        assert_eq!(names(&env("Web")), ["Web", "www"]);
        // A name longer than a name may be is left out.
        assert_eq!(names(&env(&"a".repeat(70))), ["web", "www"]);
    }
}
