//! `ENDPOINTS` (container IP → its veth), `NETWORKS` (id → subnet) and
//! `NETWORK_PREFIXES` (subnet or gateway → network: the destination's
//! class in one lookup).

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

/// Value of `NETWORK_PREFIXES`, an LPM trie keyed by (prefix length,
/// address in network order): each network's subnet, and its gateway as a
/// /32, which the longest match prefers to the subnet around it. One lookup
/// tells what an address is, whatever the number of networks (a walk of
/// `NETWORKS` cost ~15 µs per new flow at 4,096 buckets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkPrefix {
    pub network_id: u32,
    /// `PREFIX_SUBNET`, `PREFIX_GATEWAY` or `PREFIX_HOST` (whose
    /// `network_id` holds the interface's index instead: no network).
    pub kind: u32,
}

const _: () = assert!(core::mem::size_of::<NetworkPrefix>() == 8);

/// An address of the network's subnet (not its gateway).
pub const PREFIX_SUBNET: u32 = 1;
/// The network's gateway: a host address.
pub const PREFIX_GATEWAY: u32 = 2;
/// An address of one of the host's interfaces (a /32; see `host`): since
/// datapath 3, written only by its controller once it runs the programs.
pub const PREFIX_HOST: u32 = 3;

/// One entry of `NETWORK_PREFIXES`: prefix length, address (network order,
/// host bits cleared) and value.
pub type PrefixEntry = (u32, u32, NetworkPrefix);

impl NetworkInfo {
    /// The two `NETWORK_PREFIXES` entries of network `id`, derived from its
    /// `NETWORKS` value so that both maps say the same (the controller and
    /// the packet tests fill the trie with these).
    pub fn prefixes(&self, id: u32) -> [PrefixEntry; 2] {
        [
            (
                self.mask.count_ones(),
                self.subnet & self.mask,
                NetworkPrefix {
                    network_id: id,
                    kind: PREFIX_SUBNET,
                },
            ),
            (
                32,
                self.gateway,
                NetworkPrefix {
                    network_id: id,
                    kind: PREFIX_GATEWAY,
                },
            ),
        ]
    }
}
