//! Conntrack entries in the TC-program tests: keys, a builder for the
//! entries a test expects or plants, the check of an entry the programs
//! wrote, the `CONNTRACK` map of an [`Env`], and the clock its timestamps
//! use (bpf_ktime_get_ns: CLOCK_MONOTONIC).

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap};
use netctl_common::conntrack::{
    CtEntry, CtKey, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_ACK, CT_FLAG_SEQ, CT_KIND_DNAT,
    CT_KIND_HAIRPIN, CT_KIND_HOST, CT_KIND_SNAT, CT_STATE_NEW,
};

use super::{be_ip, be_port, Env};

pub fn ct_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: be_ip(saddr),
        daddr: be_ip(daddr),
        sport: be_port(sport),
        dport: be_port(dport),
        proto,
        _pad: [0; 3],
    }
}

/// The order [`Env::conntrack`] lists entries in.
fn table_order(key: &CtKey) -> (u32, u32, u16, u16, u8) {
    (key.saddr, key.daddr, key.sport, key.dport, key.proto)
}

/// Keys sorted as [`Env::ct_keys`] lists them, to compare with it.
pub fn in_table_order(mut keys: Vec<CtKey>) -> Vec<CtKey> {
    keys.sort_by_key(table_order);
    keys
}

/// An (address, port) pair; ICMP echo uses the identifier as the port.
pub type Endpoint = (Ipv4Addr, u16);

/// A conntrack entry, for a test to expect or to plant. It starts as what a
/// translation writes for a new flow in the original direction: matching
/// packets rewritten to `src → dst`, delivered through the uplink, state
/// NEW, never seen (clock and counters 0). The methods change the rest;
/// e.g. the reply entry of an SNAT flow from A1:
/// `CtEntryBuilder::snat((REMOTE, 443), (A1.ip, 33000)).reply().deliver_to(a1_veth).build()`.
#[derive(Clone, Copy, Debug)]
pub struct CtEntryBuilder {
    entry: CtEntry,
}

impl CtEntryBuilder {
    /// An entry of a flow from a container to the outside.
    pub fn snat(src: Endpoint, dst: Endpoint) -> CtEntryBuilder {
        CtEntryBuilder::new(CT_KIND_SNAT, src, dst)
    }

    /// An entry of a flow from the outside to a published port.
    pub fn dnat(src: Endpoint, dst: Endpoint) -> CtEntryBuilder {
        CtEntryBuilder::new(CT_KIND_DNAT, src, dst)
    }

    /// An entry of a flow from a container to a published port.
    pub fn hairpin(src: Endpoint, dst: Endpoint) -> CtEntryBuilder {
        CtEntryBuilder::new(CT_KIND_HAIRPIN, src, dst)
    }

    /// An entry of the host's own flow from a published port (untranslated:
    /// `src → dst` is the tuple itself).
    pub fn host(src: Endpoint, dst: Endpoint) -> CtEntryBuilder {
        CtEntryBuilder::new(CT_KIND_HOST, src, dst)
    }

    fn new(kind: u8, (saddr, sport): Endpoint, (daddr, dport): Endpoint) -> CtEntryBuilder {
        CtEntryBuilder {
            entry: CtEntry {
                saddr: be_ip(saddr),
                daddr: be_ip(daddr),
                sport: be_port(sport),
                dport: be_port(dport),
                kind,
                state: CT_STATE_NEW,
                direction: CT_DIR_ORIGINAL,
                flags: 0,
                ifindex: 0,
                seq_end: 0,
                last_seen_ns: 0,
                packets: 0,
                bytes: 0,
                ack: 0,
                window: 0,
                _pad: 0,
            },
        }
    }

    /// The entry of the reply direction.
    pub fn reply(mut self) -> CtEntryBuilder {
        self.entry.direction = CT_DIR_REPLY;
        self
    }

    /// Delivered into the container behind this host-side veth.
    pub fn deliver_to(mut self, ifindex: u32) -> CtEntryBuilder {
        self.entry.ifindex = ifindex;
        self
    }

    /// A `CT_STATE_*`.
    pub fn state(mut self, state: u8) -> CtEntryBuilder {
        self.entry.state = state;
        self
    }

    /// The last packet's time, on the bpf_ktime_get_ns() clock.
    pub fn last_seen(mut self, ns: u64) -> CtEntryBuilder {
        self.entry.last_seen_ns = ns;
        self
    }

    /// What this direction sent (`seq_end`) and acknowledged (`ack`), as
    /// the TCP tracking records them (host order).
    pub fn sent(mut self, seq_end: u32, ack: u32) -> CtEntryBuilder {
        self.entry.seq_end = seq_end;
        self.entry.ack = ack;
        self.entry.flags |= CT_FLAG_SEQ | CT_FLAG_ACK;
        self
    }

    /// The last window this direction advertised.
    pub fn window(mut self, window: u16) -> CtEntryBuilder {
        self.entry.window = window;
        self
    }

    pub fn build(self) -> CtEntry {
        self.entry
    }
}

/// Compares an entry with the expected one, clock, counters and TCP
/// numbers apart (see [`assert_tcp_numbers`]); the clock must be a recent
/// bpf_ktime_get_ns().
pub fn assert_entry(actual: Option<CtEntry>, expected: CtEntry, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what}: no conntrack entry"));
    let now = monotonic_ns();
    assert!(
        actual.last_seen_ns > 0 && actual.last_seen_ns <= now,
        "{what}: last_seen_ns {} (now {now})",
        actual.last_seen_ns
    );
    assert_eq!(
        CtEntry {
            last_seen_ns: 0,
            packets: 0,
            bytes: 0,
            flags: 0,
            seq_end: 0,
            ack: 0,
            window: 0,
            ..actual
        },
        CtEntry {
            flags: 0,
            seq_end: 0,
            ack: 0,
            window: 0,
            ..expected
        },
        "{what}"
    );
}

/// The TCP numbers an entry tracks: `(seq_end, ack)`, each `None` while
/// unknown.
pub fn tcp_numbers(entry: &CtEntry) -> (Option<u32>, Option<u32>) {
    (
        (entry.flags & CT_FLAG_SEQ != 0).then_some(entry.seq_end),
        (entry.flags & CT_FLAG_ACK != 0).then_some(entry.ack),
    )
}

// ---------------------------------------------------------------------------
// The clock.

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `now - seconds` on the bpf_ktime_get_ns() clock.
pub fn ago(seconds: u64) -> u64 {
    let now = monotonic_ns();
    assert!(
        now > (seconds + 10) * 1_000_000_000,
        "the machine is up long enough"
    );
    now - seconds * 1_000_000_000
}

/// A last-seen time past the shortest timeout (TCP closing, 10 s).
pub fn long_ago() -> u64 {
    ago(20)
}

// ---------------------------------------------------------------------------
// The map.

impl Env {
    /// Every entry, in table order (see [`in_table_order`]).
    pub fn conntrack(&self) -> Vec<(CtKey, CtEntry)> {
        let map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map("CONNTRACK").expect("CONNTRACK")).expect("CONNTRACK");
        let mut all: Vec<_> = map.iter().map(|r| r.expect("CONNTRACK entry")).collect();
        all.sort_by_key(|(k, _)| table_order(k));
        all
    }

    /// Every key, in table order.
    pub fn ct_keys(&self) -> Vec<CtKey> {
        self.conntrack().into_iter().map(|(k, _)| k).collect()
    }

    pub fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.conntrack()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    pub fn ct_insert(&mut self, key: CtKey, entry: CtEntry) {
        self.hash::<CtKey, CtEntry>("CONNTRACK")
            .insert(key, entry, 0)
            .expect("CONNTRACK insert");
    }

    /// Sets the time of the last reclaim sweep (bpf_ktime_get_ns clock).
    pub fn set_last_reclaim(&mut self, ns: u64) {
        self.set_reclaim_slot(0, ns);
    }

    /// Sets a `CT_RECLAIM_*` slot.
    pub fn set_reclaim_slot(&mut self, slot: u32, value: u64) {
        let mut map: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut("CT_RECLAIM").expect("CT_RECLAIM"))
                .expect("CT_RECLAIM");
        map.set(slot, value, 0).expect("CT_RECLAIM slot");
    }

    /// Reads a `CT_RECLAIM_*` slot.
    pub fn reclaim_slot(&self, slot: u32) -> u64 {
        let map: Array<_, u64> =
            Array::try_from(self.ebpf.map("CT_RECLAIM").expect("CT_RECLAIM")).expect("CT_RECLAIM");
        map.get(&slot, 0).expect("CT_RECLAIM slot")
    }
}
