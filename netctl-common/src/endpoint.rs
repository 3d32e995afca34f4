//! `ENDPOINTS` (container IP → its veth) and `NETWORKS` (id → subnet).

/// Value of `ENDPOINTS`, keyed by the container's IPv4 address (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth of the container (packets from it arrive here;
    /// `bpf_redirect_peer` to it enters the container).
    pub ifindex: u32,
    pub network_id: u32,
    /// The container's MAC (anti-spoofing, and the L2 destination of
    /// packets redirected to it).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

/// Value of `NETWORKS`, keyed by network id (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Subnet address and mask, network order.
    pub subnet: u32,
    pub mask: u32,
    /// Bridge address (the containers' gateway), network order.
    pub gateway: u32,
    pub bridge_ifindex: u32,
    /// MAC of the bridge: the L2 source of packets redirected into a container.
    pub bridge_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `NETWORK_FLAG_*`.
    pub flags: u32,
}

/// No way out: no SNAT, no traffic to or from other networks or the outside.
pub const NETWORK_FLAG_INTERNAL: u32 = 1;

const _: () = assert!(core::mem::size_of::<NetworkInfo>() == 28);
