//! STATUS: whether the host is ready for ADDs.

use super::{
    super::{
        delegate,
        result::{CniError, Code},
    },
    Invocation,
};
use crate::{
    model::DatapathKind,
    ops::{Host, DEFAULT_DATAPATH},
};

impl Invocation<'_> {
    /// Ready for ADDs: the state is readable, bpffs is there for the eBPF
    /// datapath, a delegated IPAM plugin can be found.
    pub(super) async fn status(&self) -> Result<(), CniError> {
        let unavailable = |what: String| CniError::new(Code::NotAvailable, what);
        let host = Host::open(self.config.clone())
            .await
            .map_err(|e| unavailable(format!("state: {e}")))?;
        let datapath = host
            .state
            .datapath
            .or(self.conf.datapath)
            .unwrap_or(DEFAULT_DATAPATH);
        drop(host);
        if datapath == DatapathKind::Ebpf {
            let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
                .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
            if !bpffs {
                return Err(unavailable(
                    "/sys/fs/bpf: bpffs is not mounted (the eBPF datapath pins its maps there)"
                        .to_owned(),
                ));
            }
        }
        if let Some(plugin) = self.conf.delegated_ipam() {
            delegate::find(plugin, &self.env.path).map_err(|e| unavailable(e.msg))?;
        }
        Ok(())
    }
}
