//! `PORTMAP`: published ports.

/// Key of `PORTMAP`. Lookups try the exact host address first, then 0 (any).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Host address the port is published on, network order; 0 = every address.
    pub host_ip: u32,
    /// Host port, network order.
    pub host_port: u16,
    /// IANA protocol number (6 tcp, 17 udp).
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

/// Value of `PORTMAP`: where the traffic goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    /// Container address, network order.
    pub ip: u32,
    /// Container port, network order.
    pub port: u16,
    pub _pad: u16,
    /// Host-side veth of the container.
    pub ifindex: u32,
}

const _: () = assert!(core::mem::size_of::<PortTarget>() == 12);
