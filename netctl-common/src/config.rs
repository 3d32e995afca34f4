//! `CONFIG`: a one-slot array with the host's settings.

/// Host settings the programs need. Slot 0 of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The uplink when the datapath was loaded (its interface and IPv4
    /// address, network order). No program reads them since datapath 3:
    /// every host interface is in `HOST_IFACES` with its current address
    /// (see `host`). Kept so that CONFIG keeps its layout.
    pub uplink_ifindex: u32,
    pub uplink_ip: u32,
    /// SNAT source ports, host order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Netns cookie of the host namespace: the cgroup programs act only on
    /// sockets of this namespace.
    pub host_netns_cookie: u64,
    /// `CONFIG_FLAG_*`.
    pub flags: u32,
    /// Ports of the SNAT range never used, host order, inclusive (the
    /// host's own ephemeral range, `ip_local_port_range`); 0-0: none.
    pub snat_skip_min: u16,
    pub snat_skip_max: u16,
}

// No flag is in use. Bit 0 was aya-log's debug output, which flow events
// (`event`, with a lease of their own) replaced; a CONFIG written by an
// older netctl may still have it set, to no effect.

const _: () = assert!(core::mem::size_of::<Config>() == 32);
