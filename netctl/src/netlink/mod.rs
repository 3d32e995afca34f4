//! rtnetlink, one module per netlink object. A [`Netlink`] talks to the
//! namespace the calling thread was in when it connected: the socket stays
//! bound to that namespace even after the thread moves on.

mod addrs;
mod links;
mod routes;

pub use links::LinkInfo;

use futures::TryStreamExt as _;
use rtnetlink::Handle;

use crate::error::{Error, Result};

pub struct Netlink {
    handle: Handle,
    /// Namespace this socket talks to, for error messages.
    netns: String,
}

impl Netlink {
    /// Connects in the namespace the calling thread is in now. Needs a tokio
    /// runtime (the connection task runs on it).
    pub fn connect(netns: &str) -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::system(format!("netlink in {netns}"), e))?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: netns.to_owned(),
        })
    }

    /// Connects inside a named namespace, leaving the thread where it was.
    pub fn connect_in(netns_name: &str) -> Result<Self> {
        let _guard = crate::netns::NetnsGuard::enter(netns_name)?;
        Self::connect(netns_name)
    }

    fn error(&self, object: impl std::fmt::Display, err: rtnetlink::Error) -> Error {
        Error::system(format!("{object} in netns {}", self.netns), describe(&err))
    }
}

/// The errno of a netlink error reply, if that is what it was.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn describe(err: &rtnetlink::Error) -> String {
    match errno(err) {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => err.to_string(),
    }
}

/// Collects a netlink dump, treating "no such device" as an empty answer.
async fn collect<T>(
    stream: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, rtnetlink::Error> {
    match stream.try_collect().await {
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(Vec::new()),
        other => other,
    }
}
