//! Typed access to the pinned maps: the byte order the programs keep keys
//! in, typed views of a pinned hash, and reading a whole hash with
//! `BPF_MAP_LOOKUP_BATCH`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, Map, MapData,
};
use netctl_common::{
    endpoint::{NetworkPrefix, PrefixEntry},
    maps,
    portmap::PortKey,
};

use super::{bpf_error, Ebpf};
use crate::{
    error::{Error, Result},
    model::PortMapping,
};

/// Whether a failed delete only found the key absent: aya reports that as
/// `KeyNotFound` from some calls and as the syscall's ENOENT from `remove`.
/// Removing what is absent is not an error (the datapath is idempotent).
pub(super) fn is_absent(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Network byte order in a u32, as the programs read addresses from packets.
pub(super) fn be_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address of a key or value the programs wrote (network byte order).
pub(super) fn ip_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// The PORTMAP key of a published port, as the programs build it from a
/// packet (0 for any host address). The eBPF datapath has no IPv6
/// networks, so no mapping on an IPv6 host address reaches it.
pub(super) fn port_key(p: &PortMapping) -> PortKey {
    PortKey {
        host_ip: p.host_ip4().map(be_ip).unwrap_or(0),
        host_port: p.host_port.to_be(),
        proto: p.protocol.number(),
        _pad: 0,
    }
}

/// Typed view of a pinned hash map.
pub(super) fn pinned_hash<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
    let data = open_pinned_map(dir, name)?;
    let map = if name == maps::SOCK_REVNAT {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    HashMap::try_from(map)
        .map_err(|e| bpf_error(format!("map {}", map_pin_path(dir, name).display()), e))
}

/// The pinned `NETWORK_PREFIXES` trie: (prefix length, address) → network.
pub(super) type Prefixes = LpmTrie<MapData, u32, NetworkPrefix>;

/// The trie key of a `NETWORK_PREFIXES` entry.
pub(super) fn prefix_key(entry: &PrefixEntry) -> Key<u32> {
    Key::new(entry.0, entry.1)
}

impl Ebpf {
    pub(super) fn hash<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
    ) -> Result<HashMap<MapData, K, V>> {
        pinned_hash(&self.pin_dir, name)
    }

    pub(super) fn prefixes(&self) -> Result<Prefixes> {
        let name = maps::NETWORK_PREFIXES;
        let data = open_pinned_map(&self.pin_dir, name)?;
        LpmTrie::try_from(Map::LpmTrie(data)).map_err(|e| {
            bpf_error(
                format!("map {}", map_pin_path(&self.pin_dir, name).display()),
                e,
            )
        })
    }
}

/// Entries read per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 4096;
/// Most entries one bucket could hold that a batch is grown to (ENOSPC:
/// the kernel returns a bucket whole or not at all).
const BATCH_MAX: u32 = 1 << 20;

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of a hash map, read with BPF_MAP_LOOKUP_BATCH: one syscall
/// per [`BATCH`] entries, where aya 0.14 (no batch operations) spends two
/// per entry (next key, then lookup). A walk of the conntrack table per
/// removed endpoint made `container rm` slow on a busy host.
pub(super) fn dump_hash<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    what: &str,
) -> Result<Vec<(K, V)>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let mut size = BATCH;
    // SAFETY (zeroed): Pod types are plain data, valid for any bytes.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; size as usize];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; size as usize];
    let mut out = Vec::new();
    // A hash map's batch token is a bucket index (u32).
    let (mut token_in, mut token_out): (u32, u32) = (0, 0);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: size,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values of the
        // map's sizes (K and V are its key and value types) and at the two
        // tokens, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let errno = std::io::Error::last_os_error();
        let filled = (attr.count as usize).min(keys.len());
        out.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        if rc == 0 {
            token_in = token_out;
            first = false;
            continue;
        }
        match errno.raw_os_error() {
            // The end of the map (the last entries are in this batch).
            Some(libc::ENOENT) => return Ok(out),
            Some(libc::ENOSPC) if size < BATCH_MAX => {
                size *= 2;
                keys.resize(size as usize, keys[0]);
                values.resize(size as usize, values[0]);
            }
            _ => return Err(Error::system(what, format!("batch lookup: {errno}"))),
        }
    }
}

/// Where map `name` is pinned under a host's pin directory.
pub(super) fn map_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

/// Opens the map pinned as `name` under a host's pin directory.
pub(super) fn open_pinned_map(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = map_pin_path(pin_dir, name);
    MapData::from_pin(&path).map_err(|e| bpf_error(format!("map {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_stored_as_on_the_wire() {
        let ip = Ipv4Addr::new(172, 18, 0, 2);
        assert_eq!(be_ip(ip).to_ne_bytes(), [172, 18, 0, 2]);
        assert_eq!(ip_from_be(be_ip(ip)), ip);
        let p = PortMapping {
            protocol: crate::model::Protocol::Udp,
            host_ip: None,
            host_port: 8080,
            container_ip: ip,
            container_ip6: None,
            container_port: 80,
            container: "web".into(),
            network: "front".into(),
        };
        let key = port_key(&p);
        assert_eq!(key.host_ip, 0);
        assert_eq!(key.host_port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(key.proto, 17);
    }
}
