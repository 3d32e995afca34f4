//! GC: the attachments the runtime no longer lists.

use serde_json::{json, Value};

use super::{
    super::result::{CniError, Code},
    Invocation,
};
use crate::{model::CniAttachment, ops::Host};

impl Invocation<'_> {
    /// Removes every attachment of this network that the runtime does not
    /// list as valid, going on past errors.
    pub(super) async fn gc(&self) -> Result<(), CniError> {
        let valid = self.conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "GC needs cni.dev/valid-attachments".to_owned(),
            )
        })?;
        let mut host = Host::open(self.config.clone()).await?;
        let stale: Vec<(String, CniAttachment)> = host
            .state
            .containers
            .values()
            .filter_map(|c| c.cni.as_ref().map(|cni| (c.name.clone(), cni.clone())))
            .filter(|(_, cni)| cni.network == self.conf.name)
            .filter(|(_, cni)| {
                !valid
                    .iter()
                    .any(|v| v.container_id == cni.container_id && v.ifname == cni.ifname)
            })
            .collect();
        let mut errors: Vec<CniError> = Vec::new();
        for (name, _) in &stale {
            if let Err(e) = host.container_rm(std::slice::from_ref(name)).await {
                errors.push(e.into());
            }
        }
        drop(host);
        // The IPAM plugin gets a DEL per stale attachment, in 1.0.0 words:
        // DEL is the same in 1.0.0 and 1.1.0, and IPAM plugins that predate
        // 1.1.0 (host-local before 1.2) refuse the GC's version.
        let mut del_conf: Value = serde_json::from_slice(self.stdin).unwrap_or_default();
        if let Some(object) = del_conf.as_object_mut() {
            object.remove("cni.dev/valid-attachments");
            object.insert("cniVersion".into(), json!("1.0.0"));
        }
        let del_stdin = serde_json::to_vec(&del_conf).unwrap_or_default();
        let attachments: Vec<CniAttachment> = stale.into_iter().map(|(_, c)| c).collect();
        errors.extend(self.release_ipam_of(&attachments, &del_stdin));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::new(
                errors[0].code,
                errors
                    .iter()
                    .map(|e| e.msg.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}
