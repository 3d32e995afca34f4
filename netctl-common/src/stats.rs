//! Per-verdict and per-drop-reason counters (`STATS`, a per-CPU array).

/// Declares [`StatIndex`] (one variant per counter; indexes count from 0 in
/// the order written) and, from the same list, [`STAT_NAMES`] and
/// [`STAT_COUNT`]: a counter and its name are written side by side once,
/// so they cannot drift apart.
macro_rules! stat_indexes {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Index of a counter in the `STATS` map. Every drop has a named
        /// reason (`Drop*`); the other slots count verdicts.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum StatIndex {
            $($(#[doc = $doc])* $variant,)*
        }

        /// Number of slots in `STATS`.
        pub const STAT_COUNT: u32 = [$(StatIndex::$variant),*].len() as u32;

        /// Names in index order, for `netctl stats` and `netctl trace`.
        pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [$($name),*];
    };
}

stat_indexes! {
    /// Handed to the kernel unchanged (nothing of ours to do).
    Pass => "pass",
    /// Not IPv4: passed untouched (a container's ARP only once checked,
    /// its IPv6 never).
    NotIpv4 => "not_ipv4",
    /// Shorter than the headers it announces: passed untouched.
    Truncated => "truncated",
    /// No longer counted: protocols without ports are translated by
    /// address (`snat`), and what cannot be translated is dropped
    /// (`drop_untranslatable`). Kept so that later indexes stay.
    UnsupportedProto => "unsupported_proto",
    /// Source translated to the uplink address (new or known egress flow).
    Snat => "snat",
    /// Destination translated to a container (published port).
    Dnat => "dnat",
    /// Container → host address:published port → container.
    Hairpin => "hairpin",
    /// Reply of a translated flow, translated back.
    ReverseNat => "reverse_nat",
    /// Delivered into a container with bpf_redirect_peer (fast path).
    RedirectPeer => "redirect_peer",
    /// Sent to the uplink with bpf_redirect / bpf_redirect_neigh (fast path).
    RedirectUplink => "redirect_uplink",
    /// Translated, but the FIB had no answer: handed to the kernel's routing.
    FibPass => "fib_pass",
    /// Host socket connect/sendmsg rewritten to a container (cgroup programs).
    SockTranslated => "sock_translated",
    /// Drop: source address or MAC is not the endpoint's own (anti-spoofing).
    DropSpoofed => "drop_spoofed",
    /// Drop: destination on another network (isolation between networks).
    DropIsolated => "drop_isolated",
    /// Drop: an internal network's traffic trying to leave it.
    DropInternal => "drop_internal",
    /// Drop: the first fragment of a datagram that needs translation, when
    /// `FRAGMENTS` refuses the entry its later fragments need.
    DropFragment => "drop_fragment",
    /// Drop: no free SNAT port after the bounded retries.
    DropSnatExhausted => "drop_snat_exhausted",
    /// Drop: the conntrack table refused a new entry.
    DropConntrackFull => "drop_conntrack_full",
    /// Drop: a rewrite helper failed (checksum or store).
    DropRewriteFailed => "drop_rewrite_failed",
    /// Drop: unsolicited packet to a container address from outside.
    DropUnsolicited => "drop_unsolicited",
    // Appended, not grouped with the verdicts above: existing indexes
    // (which `netctl trace` prints) keep their values.
    /// A TCP packet to a published port that opens no flow (not a bare SYN)
    /// and belongs to none: the answer of the host's own connection from
    /// that port, say. Passed to the host untranslated.
    PublishedNotSyn => "published_not_syn",
    /// A UDP packet of the host's own flow from a published port (a
    /// `host` conntrack entry): passed untranslated, never DNATed.
    HostFlow => "host_flow",
    /// Drop: an IPv6 frame from a container (networks have no IPv6; a
    /// router advertisement must never reach the host).
    DropIpv6 => "drop_ipv6",
    /// Drop: a container's ARP whose Ethernet source, sender MAC or sender
    /// address is not the endpoint's own, or that is not Ethernet/IPv4 ARP.
    DropArpSpoofed => "drop_arp_spoofed",
    /// Drop: a non-first fragment from a container that needs translation
    /// (to the outside) but arrived before its first fragment, so that
    /// `FRAGMENTS` has no translation for it: it would leave with the
    /// container's address.
    DropFragmentOutOfOrder => "drop_fragment_out_of_order",
    /// A non-first fragment translated as its first fragment was
    /// (`FRAGMENTS`); also counted under that fragment's counter.
    FragmentTranslated => "fragment_translated",
    /// An ICMP error (destination unreachable, time exceeded, parameter
    /// problem) quoting a translated flow: its outer and quoted headers
    /// translated back like the flow's own packets, checksums included.
    IcmpError => "icmp_error",
    /// Drop: a container's packet to the outside that has no translation
    /// (an ICMP error or echo reply quoting no tracked flow, a protocol
    /// whose checksum covers the addresses without a rewrite netctl knows
    /// (DCCP, UDP-Lite)): it would leave with the private address.
    DropUntranslatable => "drop_untranslatable",
    /// Drop: a protocol without ports (GRE, ESP, SCTP...) to a server that
    /// another container already talks to in that protocol: the uplink
    /// address can carry one such flow per server and protocol.
    DropGenericTaken => "drop_generic_taken",
    /// Larger than the egress MTU (each GSO segment checked): handed to the
    /// kernel untranslated, which sends the container "fragmentation
    /// needed" (DF) or fragments it, as its forwarding does.
    MtuPass => "mtu_pass",
    /// Not a packet verdict: an unconfirmed flow (a TCP handshake not
    /// completed, or no reply yet) whose entries were deleted to make room
    /// in a full conntrack table (early drop, as nf_conntrack does). The
    /// bytes are 0.
    CtEarlyDrop => "ct_early_drop",
    /// A TCP FIN or RST outside its flow's window (a blind or stale one):
    /// forwarded, but the flow's state is left as it was. Also counted
    /// under the packet's verdict.
    CtOutOfWindow => "ct_out_of_window",
    /// Container → a container of the same network, handed straight to
    /// the peer's namespace with bpf_redirect_peer (the bridge skipped).
    SameNetwork => "same_network",
    /// Not a packet verdict: a flow event (`netctl trace`) the ring buffer
    /// had no room for, its reader being too slow. The bytes are 0.
    EventLost => "event_lost",
    /// Drop: a container's new flow leaving by a host interface that has
    /// no IPv4 address to translate it to (MASQUERADE drops it too).
    DropNoHostAddress => "drop_no_host_address",
}

/// One counter slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
