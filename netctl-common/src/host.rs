//! The host's own interfaces, as the programs see them: `HOST_IFACES`
//! (ifindex → the interface's primary IPv4 address, network order, a plain
//! `u32 → u32` hash) and, for every IPv4 address of those interfaces, a /32
//! entry of kind `PREFIX_HOST` in `NETWORK_PREFIXES` (see `endpoint`), so
//! that the one longest-prefix lookup that tells a destination's network
//! also tells a host address (a lookup of its own made the verifier walk
//! endpoint_ingress three times over). Filled and refreshed by the
//! controller on every command and by `netctl watch`.
//!
//! "The host's interfaces" are every link of the host namespace that is not
//! netctl's (bridges, endpoint veths), not loopback and not enslaved to a
//! bridge: the interfaces a container's packet can leave by. A packet
//! leaving by one gets its primary address (as MASQUERADE does), and a
//! published port without a host address answers on each of their
//! addresses (as `--dst-type LOCAL` does).

/// Room for this many host interfaces.
pub const HOST_IFACES_MAX: u32 = 1_024;
