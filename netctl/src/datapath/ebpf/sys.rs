//! The few bpf(2) commands aya 0.14 does not expose for objects it did not
//! load itself: replacing the program of a pinned link (`BPF_LINK_UPDATE`,
//! TCX and cgroup links alike), the identity of a link's program, a map's
//! shape, byte-level element access (migrations copy entries whose types
//! this build no longer has), and the one map the controller creates
//! itself (the layout record, which no program reads).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use crate::error::{Error, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

pub(super) const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(super) const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// `union bpf_attr`, as many bytes as any command here reads, zeroed.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32_at(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed bpf_attr of 128 bytes whose pointer fields
    // (set by the callers) point at buffers alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn path_cstring(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("pin {}", path.display()), "has a NUL byte"))
}

/// Opens a pinned object (map, program or link).
pub(super) fn obj_get(path: &Path) -> Result<OwnedFd> {
    let name = path_cstring(path)?;
    let mut attr = Attr::new();
    attr.u64_at(0, name.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)
        .map_err(|e| Error::system(format!("pin {}", path.display()), e))?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins an object at `path` (which must not exist).
pub(super) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let name = path_cstring(path)?;
    let mut attr = Attr::new();
    attr.u64_at(0, name.as_ptr() as u64)
        .u32_at(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)
        .map(drop)
        .map_err(|e| Error::system(format!("pin {}", path.display()), e))
}

/// Points a link at another program, atomically: packets see either the
/// old program or the new one, never none.
pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>, what: &str) -> Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, link.as_raw_fd() as u32)
        .u32_at(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr)
        .map(drop)
        .map_err(|e| Error::system(what, format!("link update: {e}")))
}

fn info<const N: usize>(fd: BorrowedFd<'_>, what: &str) -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32)
        .u32_at(4, N as u32)
        .u64_at(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map_err(|e| Error::system(what, format!("object info: {e}")))?;
    Ok(buf)
}

fn u32_of(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes"))
}

/// The interface a TCX link is attached to (`bpf_link_info.tcx.ifindex`,
/// after type, id and prog_id, 8-aligned): 0 once that interface is gone
/// (the kernel detaches its links, whose pins stay).
pub(super) fn tcx_link_ifindex(link: BorrowedFd<'_>, what: &str) -> Result<u32> {
    let buf: [u8; 64] = info(link, what)?;
    Ok(u32_of(&buf, 16))
}

/// A map's shape (`bpf_map_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub(super) fn map_shape(map: BorrowedFd<'_>, what: &str) -> Result<MapShape> {
    let buf: [u8; 80] = info(map, what)?;
    Ok(MapShape {
        map_type: u32_of(&buf, 0),
        key_size: u32_of(&buf, 8),
        value_size: u32_of(&buf, 12),
        max_entries: u32_of(&buf, 16),
    })
}

/// A new map (not pinned yet).
pub(super) fn map_create(shape: MapShape, name: &str) -> Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32_at(0, shape.map_type)
        .u32_at(4, shape.key_size)
        .u32_at(8, shape.value_size)
        .u32_at(12, shape.max_entries);
    let bytes = name.as_bytes();
    let len = bytes.len().min(15);
    // map_name[16] after map_flags, inner_map_fd and numa_node.
    attr.0[28..28 + len].copy_from_slice(&bytes[..len]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| Error::system(format!("map {name}"), e))?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `value` (sized for the map; per-CPU maps: one 8-byte aligned slot per
/// possible CPU) for `key`; false when absent.
pub(super) fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    let mut attr = Attr::new();
    attr.u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, key.as_ptr() as u64)
        .u64_at(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::system("map lookup", e)),
    }
}

pub(super) fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, key.as_ptr() as u64)
        .u64_at(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
        .map(drop)
        .map_err(|e| Error::system("map update", e))
}

/// Every key of a map (a hash: next-key walk; an array: its indexes).
pub(super) fn map_keys(map: BorrowedFd<'_>, key_size: usize) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut next = vec![0u8; key_size];
    let mut current: Option<Vec<u8>> = None;
    loop {
        let mut attr = Attr::new();
        attr.u32_at(0, map.as_raw_fd() as u32)
            .u64_at(8, current.as_ref().map_or(0, |k| k.as_ptr() as u64))
            .u64_at(16, next.as_mut_ptr() as u64);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {
                keys.push(next.clone());
                current = Some(next.clone());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(Error::system("map keys", e)),
        }
    }
}

/// Bytes of one value as lookups return them: per-CPU maps give one slot,
/// rounded up to 8 bytes, per possible CPU.
pub(super) fn value_buffer_len(shape: MapShape) -> Result<usize> {
    let size = shape.value_size as usize;
    if shape.map_type == BPF_MAP_TYPE_PERCPU_ARRAY {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::system("possible CPUs", e))?;
        Ok(size.div_ceil(8) * 8 * cpus)
    } else {
        Ok(size)
    }
}
