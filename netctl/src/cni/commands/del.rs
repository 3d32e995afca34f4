//! DEL: the attachment and its delegated IPAM addresses.

use super::{
    super::{delegate, result::CniError},
    Invocation,
};
use crate::{failpoint, ops::Host};

impl Invocation<'_> {
    /// Removes the attachment; an unknown one, or one whose namespace is
    /// gone, is not an error (the runtime may call DEL more than once).
    pub(super) async fn del(&self) -> Result<(), CniError> {
        let mut host = Host::open(self.config.clone()).await?;
        let removed = match self.ours(&host).map(|c| c.name.clone()) {
            Some(name) => host.container_rm(&[name]).await.map_err(CniError::from),
            None => Ok(()),
        };
        drop(host);
        // A failure here stands for one before the IPAM's DEL: the
        // runtime's next DEL releases the address.
        failpoint::check("cni-del.ipam")?;
        let released = match self.conf.delegated_ipam() {
            Some(plugin) => {
                delegate::exec(plugin, &self.env.path, &self.ipam_call("DEL"), self.stdin)
                    .map(|_| ())
            }
            None => Ok(()),
        };
        removed.and(released)
    }
}
