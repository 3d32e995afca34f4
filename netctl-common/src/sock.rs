//! `SOCK_REVNAT`: how a host socket's rewritten peer maps back, so that
//! `recvmsg` (UDP) reports the address the application sent to.

/// Key: the socket and the container address it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// bpf_get_socket_cookie() of the socket.
    pub cookie: u64,
    /// Container address and port (network order).
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);

/// Value: the host address and published port the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);
