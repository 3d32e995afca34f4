//! Links: bridges, veth pairs, moving and renaming, up, master, MAC.

use std::os::fd::AsRawFd as _;

use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::{collect, errno, Netlink};
use crate::error::{Error, Result};

/// What netctl needs to know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    pub loopback: bool,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            mac: None,
            master: None,
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name = name.clone(),
                LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                    info.mac = bytes.as_slice().try_into().ok()
                }
                LinkAttribute::Controller(index) => info.master = Some(*index),
                _ => {}
            }
        }
        info
    }
}

impl Netlink {
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let request = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let links = collect(request)
            .await
            .map_err(|e| self.error(format!("link {name}"), e))?;
        Ok(links.first().map(LinkInfo::from_message))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let request = self.handle.link().get().match_index(index).execute();
        let links = collect(request)
            .await
            .map_err(|e| self.error(format!("link #{index}"), e))?;
        Ok(links.first().map(LinkInfo::from_message))
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let request = self.handle.link().get().execute();
        let links = collect(request).await.map_err(|e| self.error("links", e))?;
        Ok(links.iter().map(LinkInfo::from_message).collect())
    }

    /// Index of a link that must exist.
    pub async fn index(&self, name: &str) -> Result<u32> {
        self.link(name).await?.map(|l| l.index).ok_or_else(|| {
            Error::system(format!("link {name} in netns {}", self.netns), "not found")
        })
    }

    /// Creates a bridge (up) unless it exists; returns its index.
    /// The MAC is set at creation: a bridge whose address was never set
    /// takes the lowest MAC among its ports and changes it whenever a port
    /// comes or goes, which leaves every container's ARP entry for the
    /// gateway stale and stalls its traffic for seconds.
    pub async fn ensure_bridge(&self, name: &str, mac: [u8; 6]) -> Result<u32> {
        if let Some(link) = self.link(name).await? {
            self.set_up(link.index).await?;
            return Ok(link.index);
        }
        let msg = LinkBridge::new(name).address(mac.to_vec()).up().build();
        self.add(format!("bridge {name}"), msg).await?;
        self.index(name).await
    }

    /// Creates a veth pair; both ends stay down.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        let msg = LinkVeth::new(name, peer).build();
        self.add(format!("veth {name}/{peer}"), msg).await
    }

    /// Creates a veth pair in one request: this end `name` here, down and
    /// enslaved to `bridge`; the peer straight inside the namespace open as
    /// `peer_netns` (here without one), already named `peer` and with its
    /// MAC (down too). Made
    /// where it belongs rather than moved there: moving a link between
    /// namespaces waits for the kernel's RCU grace periods, tens of
    /// milliseconds, the largest cost of a `container run`. Both ends get
    /// one queue from the start (see below).
    pub async fn add_veth_into(
        &self,
        name: &str,
        bridge: u32,
        mtu: Option<u32>,
        peer: &str,
        peer_mac: [u8; 6],
        peer_netns: Option<&std::fs::File>,
    ) -> Result<()> {
        let mut peer_msg = one_queue(LinkUnspec::new_with_name(peer).address(peer_mac.to_vec()));
        if let Some(netns) = peer_netns {
            peer_msg = peer_msg.setns_by_fd(netns.as_raw_fd());
        }
        let mut msg = one_queue(LinkVeth::new(name, peer).controller(bridge));
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            msg = msg.mtu(mtu);
        }
        // The builder names the peer only; this description replaces it.
        let msg = msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.add(format!("veth {name}/{peer}"), msg).await
    }

    async fn add(&self, what: String, msg: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.error(what, e))
    }

    async fn set(&self, what: String, msg: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.error(what, e))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            format!("link #{index} up"),
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    pub async fn set_master(&self, index: u32, bridge: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(bridge).build();
        self.set(format!("link #{index} master #{bridge}"), msg)
            .await
    }

    /// Hairpin mode on a bridge port: a frame may leave by the port it came
    /// in, so a container reaches its own published port through the host.
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| self.error(format!("link #{index} hairpin"), e))
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set(format!("link #{index} address"), msg).await
    }

    /// Moves a link into the namespace open as `netns`.
    pub async fn move_to_netns(&self, index: u32, netns: &std::fs::File, what: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.set(format!("link #{index} to netns {what}"), msg)
            .await
    }

    /// Deletes a link by name; absent is not an error (deleting one end of
    /// a veth pair deletes both).
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(self.error(format!("delete link {name}"), e)),
        }
    }
}

/// A link asked with one transmit and one receive queue: a veth made with
/// the default (one per CPU) is cut down to one by the kernel at once,
/// after an RCU grace period for each of its ends.
fn one_queue<T>(msg: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
    msg.append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
}
