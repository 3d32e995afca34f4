//! The topology every TC-program test runs against: the uplink and its
//! gateway, three networks (one `--internal`), four containers, the
//! published ports, and frames between these hosts. [`crate::tc::Env`]
//! builds it in a private namespace and fills the maps from it.

use std::net::Ipv4Addr;

use crate::frames::{Frame, L4, TCP, UDP};

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WAN_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const WAN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0xfe];
/// Somewhere on the internet.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const REMOTE_MAC: [u8; 6] = WAN_GW_MAC;

pub const SNAT_MIN: u16 = 40_000;
pub const SNAT_MAX: u16 = 40_999;

pub struct Net {
    pub id: u32,
    pub bridge: &'static str,
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub internal: bool,
}

pub const NET_A: Net = Net {
    id: 1,
    bridge: "br-a",
    subnet: Ipv4Addr::new(172, 18, 0, 0),
    gateway: Ipv4Addr::new(172, 18, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x01],
    internal: false,
};
pub const NET_B: Net = Net {
    id: 2,
    bridge: "br-b",
    subnet: Ipv4Addr::new(172, 19, 0, 0),
    gateway: Ipv4Addr::new(172, 19, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x01],
    internal: false,
};
pub const NET_I: Net = Net {
    id: 3,
    bridge: "br-i",
    subnet: Ipv4Addr::new(172, 20, 0, 0),
    gateway: Ipv4Addr::new(172, 20, 0, 1),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x01],
    internal: true,
};
pub const NETS: [&Net; 3] = [&NET_A, &NET_B, &NET_I];

#[derive(Clone, Copy)]
pub struct Ctr {
    pub veth: &'static str,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub net: u32,
}

pub const A1: Ctr = Ctr {
    veth: "ve-a1",
    ip: Ipv4Addr::new(172, 18, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x02],
    net: 1,
};
pub const A2: Ctr = Ctr {
    veth: "ve-a2",
    ip: Ipv4Addr::new(172, 18, 0, 3),
    mac: [0x02, 0x42, 0xac, 0x12, 0x00, 0x03],
    net: 1,
};
pub const B1: Ctr = Ctr {
    veth: "ve-b1",
    ip: Ipv4Addr::new(172, 19, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x13, 0x00, 0x02],
    net: 2,
};
pub const I1: Ctr = Ctr {
    veth: "ve-i1",
    ip: Ipv4Addr::new(172, 20, 0, 2),
    mac: [0x02, 0x42, 0xac, 0x14, 0x00, 0x02],
    net: 3,
};
pub const CTRS: [Ctr; 4] = [A1, A2, B1, I1];

/// Published ports: (host ip, host port, proto) → (container, port).
pub const PORTS: [(Ipv4Addr, u16, u8, Ctr, u16); 5] = [
    (Ipv4Addr::UNSPECIFIED, 8080, TCP, A2, 80),
    (Ipv4Addr::UNSPECIFIED, 5353, UDP, A2, 53),
    // The exact address wins over 0.0.0.0 for the same port.
    (UPLINK_IP, 8443, TCP, B1, 443),
    (Ipv4Addr::UNSPECIFIED, 8443, TCP, A1, 9443),
    (Ipv4Addr::UNSPECIFIED, 9090, TCP, I1, 90),
];

pub fn net_of(id: u32) -> &'static Net {
    NETS.iter().find(|n| n.id == id).expect("network")
}

/// Frames between the hosts of the topology (here rather than in
/// [`crate::frames`], which knows no topology).
impl Frame {
    /// From a container to its gateway's MAC.
    pub fn from(ctr: Ctr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(ctr.mac, net_of(ctr.net).mac, ctr.ip, dst, l4)
    }

    /// From the outside, through the uplink's gateway.
    pub fn from_outside(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(REMOTE_MAC, UPLINK_MAC, src, dst, l4)
    }
}
