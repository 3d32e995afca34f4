//! The object's life on bpffs: loading it, pinning its maps, programs and
//! links under the host's directory, opening what is pinned, and unpinning
//! it all again (which detaches the programs).

use std::{
    fs,
    os::{fd::AsFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, ProgramArray},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};
use netctl_common::{
    config::Config,
    conntrack::{CT_RECLAIM_RING_SPAN, CT_UNCONFIRMED_SLOTS},
    layout::{Layout, DATAPATH_VERSION},
    maps,
};

use super::{
    bpf_error,
    maps::{be_ip, map_pin_path},
    sys,
    upgrade::{self, MapAction, Plan},
    Ebpf,
};
use crate::{
    error::{Error, Result},
    failpoint,
};

/// Loads the programs reached by tail call and fills `TAIL_CALLS`
/// (`maps::TAIL_*` slots): `endpoint_icmp_error`, and `endpoint_ingress`
/// (loaded already), where an ICMP error quoting no flow goes back to. The
/// map is pinned, which keeps its entries (the kernel empties a program
/// array when its last file descriptor or pin goes). Tests that load the
/// object call this too.
pub fn fill_tail_calls(bpf: &mut aya::Ebpf) -> Result<()> {
    let icmp: &mut SchedClassifier = bpf
        .program_mut(maps::ICMP_ERROR_PROGRAM)
        .ok_or_else(|| {
            Error::system(
                format!("program {}", maps::ICMP_ERROR_PROGRAM),
                "missing from the object",
            )
        })?
        .try_into()
        .map_err(|e| bpf_error(format!("program {}", maps::ICMP_ERROR_PROGRAM), e))?;
    icmp.load()
        .map_err(|e| bpf_error(format!("program {}", maps::ICMP_ERROR_PROGRAM), e))?;
    let mut fds = Vec::new();
    for (slot, name) in [
        (maps::TAIL_ICMP_ERROR, maps::ICMP_ERROR_PROGRAM),
        (maps::TAIL_ENDPOINT_INGRESS, ENDPOINT_INGRESS),
    ] {
        let fd = bpf
            .program(name)
            .ok_or_else(|| Error::system(format!("program {name}"), "missing from the object"))?
            .fd()
            .map_err(|e| bpf_error(format!("program {name}"), e))?
            .try_clone()
            .map_err(|e| Error::io(format!("program {name}"), e))?;
        fds.push((slot, fd));
    }
    let map = bpf
        .map_mut(maps::TAIL_CALLS)
        .ok_or_else(|| Error::system("map TAIL_CALLS", "missing from the object"))?;
    let mut tails: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(|e| bpf_error("map TAIL_CALLS", e))?;
    for (slot, fd) in &fds {
        tails
            .set(*slot, fd, 0)
            .map_err(|e| bpf_error("map TAIL_CALLS", e))?;
    }
    Ok(())
}

/// netctl-ebpf compiled for the bpf target by build.rs (aya-build).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"));

/// `EBPF_OBJECT_FINGERPRINT`, computed by build.rs: the layout
/// check every command makes reads it rather than hashing the object.
pub const EBPF_OBJECT_FINGERPRINT: u64 =
    include!(concat!(env!("OUT_DIR"), "/netctl-ebpf.fingerprint"));

const BPFFS: &str = "/sys/fs/bpf";

/// The program attached to each endpoint's host-side veth.
pub(super) const ENDPOINT_INGRESS: &str = "endpoint_ingress";
/// TC programs on the uplink and the hook each goes on.
pub(super) const UPLINK_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("uplink_ingress", TcAttachType::Ingress),
    ("uplink_egress", TcAttachType::Egress),
];
/// cgroup programs: host processes reaching published ports (IPv4 sockets
/// and dual-stack ones aimed at IPv4-mapped addresses), and seeing the
/// address they dialled in getpeername() and recvmsg().
pub(super) const SOCK_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
    "sock_connect6",
    "sock_sendmsg6",
    "sock_recvmsg6",
    "sock_getpeername6",
];

/// Mounts bpffs at /sys/fs/bpf when it is not there yet.
pub fn ensure_bpffs() -> Result<()> {
    let is_bpffs = nix::sys::statfs::statfs(BPFFS)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false);
    if is_bpffs {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(|e| Error::io(BPFFS, e))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::system(BPFFS, format!("mount bpffs: {e}")))
}

/// Netns cookie of the namespace of the calling thread (what the cgroup
/// programs compare to tell the host namespace from the others).
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::system("netns cookie", e))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(Error::system(
            "netns cookie",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// Where program `name` is pinned under a host's pin directory.
pub(super) fn prog_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("progs").join(name)
}

impl Ebpf {
    pub(super) fn map_path(&self, name: &str) -> PathBuf {
        map_pin_path(&self.pin_dir, name)
    }

    fn prog_path(&self, name: &str) -> PathBuf {
        prog_pin_path(&self.pin_dir, name)
    }

    pub(super) fn link_path(&self, target: &str, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{target}@{program}"))
    }

    /// Whether the datapath of this host is loaded (its maps are pinned).
    pub fn is_loaded(&self) -> bool {
        self.map_path(maps::CONFIG).exists()
    }

    /// CONFIG: the uplink, the SNAT ports `snat` (inclusive) with the host's
    /// ephemeral range `skip` left out, the netns cookie.
    fn config(&self, snat: (u16, u16), skip: (u16, u16)) -> Result<Config> {
        let uplink = self.host.uplink.as_ref().ok_or_else(|| {
            Error::invalid(
                "datapath ebpf",
                "needs an uplink with an IPv4 address: a default route in the host namespace, or --uplink",
            )
        })?;
        Ok(Config {
            uplink_ifindex: uplink.index,
            uplink_ip: be_ip(uplink.address),
            snat_port_min: snat.0,
            snat_port_max: snat.1,
            host_netns_cookie: netns_cookie()?,
            flags: 0,
            snat_skip_min: skip.0,
            snat_skip_max: skip.1,
        })
    }

    /// Loads the object with every map pinned under our directory (reusing
    /// maps pinned by an earlier load), pins the programs and attaches the
    /// uplink and cgroup ones with pinned links, then writes the layout
    /// record (`LAYOUT`: what a later netctl reads to know what it finds).
    pub(super) fn load_and_attach(
        &self,
        conntrack_max: u32,
        snat: (u16, u16),
        skip: (u16, u16),
    ) -> Result<()> {
        let config = self.config(snat, skip)?;
        for sub in ["maps", "progs", "links"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.pin_dir.join(sub))
                .map_err(|e| Error::io(format!("pin dir {}", self.pin_dir.display()), e))?;
        }
        let mut bpf = self.load_object(conntrack_max, &[])?;
        self.write_config(&mut bpf, config)?;
        self.write_reclaim_span(&mut bpf, conntrack_max)?;
        self.attach_programs(&mut bpf, false)?;
        upgrade::write_layout(&self.pin_dir, &Layout::current(EBPF_OBJECT_FINGERPRINT))
    }

    /// The object loaded against the pinned maps (each reused, or made and
    /// pinned at its path), except that the maps named in `staged` are made
    /// afresh at their staging path (an upgrade fills them).
    fn load_object(&self, conntrack_max: u32, staged: &[String]) -> Result<aya::Ebpf> {
        let map_paths: Vec<(&str, PathBuf)> = maps::ALL
            .iter()
            .map(|name| {
                let path = if staged.iter().any(|s| s == name) {
                    upgrade::staging_path(&self.pin_dir, name)
                } else {
                    self.map_path(name)
                };
                (*name, path)
            })
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(maps::CONNTRACK, conntrack_max);
        loader
            .load(EBPF_OBJECT)
            .map_err(|e| bpf_error("ebpf object", e))
    }

    fn write_config(&self, bpf: &mut aya::Ebpf, config: Config) -> Result<()> {
        let mut config_map: Array<_, Config> = Array::try_from(
            bpf.map_mut(maps::CONFIG)
                .ok_or_else(|| Error::system("map CONFIG", "missing from the object"))?,
        )
        .map_err(|e| bpf_error("map CONFIG", e))?;
        config_map
            .set(0, config, 0)
            .map_err(|e| bpf_error("map CONFIG", e))
    }

    /// Early drop looks back over as many new flows as the table holds.
    fn write_reclaim_span(&self, bpf: &mut aya::Ebpf, conntrack_max: u32) -> Result<()> {
        let mut reclaim: Array<_, u64> = Array::try_from(
            bpf.map_mut(maps::CT_RECLAIM)
                .ok_or_else(|| Error::system("map CT_RECLAIM", "missing from the object"))?,
        )
        .map_err(|e| bpf_error("map CT_RECLAIM", e))?;
        let span = (conntrack_max / 2).clamp(1, CT_UNCONFIRMED_SLOTS);
        reclaim
            .set(CT_RECLAIM_RING_SPAN, u64::from(span), 0)
            .map_err(|e| bpf_error("map CT_RECLAIM", e))
    }

    /// Loads and pins every program, and puts each on its hooks. Fresh
    /// (`take_over` false): new pinned links on the uplink and the cgroup.
    /// Taking over: every pinned link of a program is pointed at the new
    /// one (`BPF_LINK_UPDATE`, atomic), endpoints' veths included; a hook
    /// without a link (a program the older datapath lacked) gets one.
    fn attach_programs(&self, bpf: &mut aya::Ebpf, take_over: bool) -> Result<()> {
        let uplink = self.host.uplink.as_ref().expect("checked by config()");
        let links = self.pinned_links();
        for (name, hook) in [(ENDPOINT_INGRESS, None)]
            .into_iter()
            .chain(UPLINK_PROGRAMS.iter().map(|(n, h)| (*n, Some(*h))))
        {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| Error::system(format!("program {name}"), "missing from the object"))?
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            prog.load()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            let mut on_uplink = false;
            if take_over {
                let fd = prog
                    .fd()
                    .map_err(|e| bpf_error(format!("program {name}"), e))?;
                for (target, link) in links
                    .iter()
                    .filter(|(_, p)| p == name)
                    .map(|(t, _)| (t, self.link_path(t, name)))
                {
                    let link_fd = sys::obj_get(&link)?;
                    sys::link_update(
                        link_fd.as_fd(),
                        fd.as_fd(),
                        &format!("link {}", link.display()),
                    )?;
                    on_uplink |= *target == uplink.name;
                }
            }
            let path = self.prog_path(name);
            let _ = fs::remove_file(&path);
            prog.pin(&path)
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            if let (Some(hook), false) = (hook, on_uplink) {
                attach_tc(
                    prog,
                    &uplink.name,
                    hook,
                    &self.link_path(&uplink.name, name),
                )?;
            }
        }
        fill_tail_calls(bpf)?;
        let cgroup = fs::File::open(&self.host.config.cgroup)
            .map_err(|e| Error::io(format!("cgroup {}", self.host.config.cgroup.display()), e))?;
        for name in SOCK_PROGRAMS {
            let Some(program) = bpf.program_mut(name) else {
                // Built without the cgroup programs: host → published port
                // then needs them; say so rather than fail the whole host.
                log::warn!(
                    "program {name} missing from the object: host → published port disabled"
                );
                continue;
            };
            let prog: &mut CgroupSockAddr = program
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            prog.load()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            let path = self.link_path("cgroup", name);
            if take_over && path.exists() {
                let fd = prog
                    .fd()
                    .map_err(|e| bpf_error(format!("program {name}"), e))?;
                let link_fd = sys::obj_get(&path)?;
                sys::link_update(
                    link_fd.as_fd(),
                    fd.as_fd(),
                    &format!("link {}", path.display()),
                )?;
                continue;
            }
            // A bpf_link (what aya creates on 5.7+) coexists with other
            // programs on the cgroup by itself; the kernel refuses the
            // ALLOW_MULTI flag on link_create with EINVAL, hence Single.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| bpf_error(format!("program {name} on cgroup"), e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| bpf_error(format!("program {name}"), e))?
                .try_into()
                .map_err(|e| bpf_error(format!("program {name}"), e))?;
            let _ = fs::remove_file(&path);
            link.pin(&path)
                .map_err(|e| bpf_error(format!("link {}", path.display()), e))?;
        }
        Ok(())
    }

    /// The pinned links, as (target, program) from `links/<target>@<program>`.
    pub(super) fn pinned_links(&self) -> Vec<(String, String)> {
        let Ok(dir) = fs::read_dir(self.pin_dir.join("links")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.split_once('@')
                    .map(|(t, p)| (t.to_owned(), p.to_owned()))
            })
            .collect()
    }

    /// Takes over the loaded datapath as `plan` says (see [`upgrade`]):
    /// the object loaded against the kept maps, migrated and resized maps
    /// filled, every link pointed at its new program, then the maps' pins
    /// and the record. Returns a line saying what it did.
    pub(super) fn upgrade(&self, plan: &Plan) -> Result<String> {
        let staged: Vec<String> = plan
            .maps
            .iter()
            .filter(|(_, a)| matches!(a, MapAction::Migrate { .. } | MapAction::Resize { .. }))
            .map(|(name, _)| name.clone())
            .collect();
        let next = self.pin_dir.join("next");
        // What an interrupted upgrade left half-filled.
        let _ = fs::remove_dir_all(&next);
        if !staged.is_empty() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&next)
                .map_err(|e| Error::io(format!("pin dir {}", next.display()), e))?;
        }
        // The table keeps its size (NETCTL_CONNTRACK_MAX at the first load).
        let ct = sys::obj_get(&self.map_path(maps::CONNTRACK))?;
        let conntrack_max = sys::map_shape(ct.as_fd(), "map CONNTRACK")?.max_entries;
        let mut bpf = self.load_object(conntrack_max, &staged)?;
        if plan.maps.get(maps::CONFIG) != Some(&MapAction::Keep) {
            // The SNAT ports as a first load would place them (the older
            // CONFIG's layout is not this one's to read).
            let skip = super::kernel_ephemeral_ports()?;
            let snat = super::snat_ports(skip)?;
            self.write_config(&mut bpf, self.config(snat, skip)?)?;
        }
        self.write_reclaim_span(&mut bpf, conntrack_max)?;
        let mut pairs = Vec::new();
        for name in &staged {
            let old = sys::obj_get(&self.map_path(name))?;
            let new = sys::obj_get(&upgrade::staging_path(&self.pin_dir, name))?;
            upgrade::copy_entries(name, &old, &new, &plan.maps[name], false)?;
            pairs.push((name, old, new));
        }
        self.attach_programs(&mut bpf, true)?;
        // Links of programs this build no longer has.
        for (target, program) in self.pinned_links() {
            if bpf.program(&program).is_none() {
                Self::unpin_link(&self.link_path(&target, &program))?;
                let _ = fs::remove_file(self.prog_path(&program));
            }
        }
        // No old program runs any more: what they added meanwhile, then the
        // new maps take the old pins' places (programs hold maps by fd, so
        // the path matters to the next netctl only).
        for (name, old, new) in &pairs {
            upgrade::copy_entries(name, old, new, &plan.maps[*name], true)?;
            fs::rename(
                upgrade::staging_path(&self.pin_dir, name),
                self.map_path(name),
            )
            .map_err(|e| Error::io(format!("map {name}"), e))?;
        }
        let _ = fs::remove_dir(&next);
        for name in &plan.dropped {
            let _ = fs::remove_file(self.map_path(name));
        }
        upgrade::write_layout(&self.pin_dir, &Layout::current(EBPF_OBJECT_FINGERPRINT))?;
        let from = plan.loaded.map_or("1 (no layout record)".to_owned(), |l| {
            l.datapath.to_string()
        });
        let changed: Vec<String> = plan
            .maps
            .iter()
            .filter(|(_, a)| **a != MapAction::Keep)
            .map(|(n, a)| format!("{n} {a:?}").to_lowercase())
            .collect();
        Ok(format!(
            "upgraded the eBPF datapath in place: datapath {from} -> {DATAPATH_VERSION}, programs \
             replaced on their links, maps kept{}",
            if changed.is_empty() {
                String::new()
            } else {
                format!(" except {}", changed.join(", "))
            }
        ))
    }

    /// Attaches the pinned `endpoint_ingress` to an endpoint's host-side
    /// veth, with a pinned link.
    pub(super) fn attach_endpoint(&self, host_veth: &str) -> Result<()> {
        let mut prog = SchedClassifier::from_pin(self.prog_path(ENDPOINT_INGRESS))
            .map_err(|e| bpf_error(format!("program {ENDPOINT_INGRESS}"), e))?;
        attach_tc(
            &mut prog,
            host_veth,
            TcAttachType::Ingress,
            &self.link_path(host_veth, ENDPOINT_INGRESS),
        )
    }

    /// Attaches the pinned uplink program `program` to a host interface,
    /// with a pinned link (replacing a dead pin of the same name).
    pub(super) fn attach_iface(
        &self,
        ifname: &str,
        program: &str,
        hook: TcAttachType,
    ) -> Result<()> {
        let mut prog = SchedClassifier::from_pin(self.prog_path(program))
            .map_err(|e| bpf_error(format!("program {program}"), e))?;
        let pin = self.link_path(ifname, program);
        Self::unpin_link(&pin)?;
        attach_tc(&mut prog, ifname, hook, &pin)
    }

    /// Unpins the link of an endpoint's veth, which detaches its program.
    pub(super) fn detach_endpoint(&self, host_veth: &str) -> Result<()> {
        Self::unpin_link(&self.link_path(host_veth, ENDPOINT_INGRESS))
    }

    /// Unpins every link (detaching the programs) and removes the host's
    /// pin directory with its maps and programs.
    pub(super) fn unpin_all(&self) -> Result<()> {
        let mut errors = Vec::new();
        if let Ok(dir) = fs::read_dir(self.pin_dir.join("links")) {
            for entry in dir.flatten() {
                errors.extend(Self::unpin_link(&entry.path()).err());
            }
        }
        errors.extend(failpoint::check("down.host.links").err());
        match fs::remove_dir_all(&self.pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(Error::io(format!("pin dir {}", self.pin_dir.display()), e)),
        }
        // The parent /sys/fs/bpf/netctl goes when the last host does.
        if let Some(parent) = self.pin_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        Error::collect(errors)
    }

    /// Removes a pinned link, which detaches its program.
    pub(super) fn unpin_link(path: &Path) -> Result<()> {
        match PinnedLink::from_pin(path) {
            Ok(link) => link
                .unpin()
                .map(drop)
                .map_err(|e| Error::io(format!("link {}", path.display()), e)),
            Err(_) if !path.exists() => Ok(()),
            Err(e) => Err(bpf_error(format!("link {}", path.display()), e)),
        }
    }
}

/// Attaches with TCX and pins the link (it outlives this process).
fn attach_tc(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let name = prog
        .info()
        .ok()
        .and_then(|i| i.name_as_str().map(str::to_owned))
        .unwrap_or_default();
    let id = prog
        .attach(ifname, hook)
        .map_err(|e| bpf_error(format!("program {name} on {ifname}"), e))?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(|e| bpf_error(format!("program {name} on {ifname}"), e))?
        .try_into()
        .map_err(|e| {
            bpf_error(
                format!("link of {name} on {ifname} (TCX needed, Linux 6.6+)"),
                e,
            )
        })?;
    let _ = fs::remove_file(pin);
    link.pin(pin)
        .map_err(|e| bpf_error(format!("link {}", pin.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs name their maps by their statics' identifiers
    /// (aya-ebpf's `#[map]` takes no const), so this is where a renamed,
    /// added or removed map is caught: the built object must hold exactly
    /// `maps::ALL`, besides the sections of
    /// static data (`.rodata`, `.bss`, `.data`). Parsing needs no root.
    #[test]
    fn the_object_holds_exactly_the_common_maps() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the eBPF object parses");
        let mut in_object: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.'))
            .collect();
        in_object.sort_unstable();
        let mut declared = maps::ALL.to_vec();
        declared.sort_unstable();
        assert_eq!(in_object, declared);
    }

    /// build.rs hashed the very object this build embeds.
    #[test]
    fn the_fingerprint_is_the_objects() {
        assert_eq!(
            EBPF_OBJECT_FINGERPRINT,
            netctl_common::layout::fingerprint(EBPF_OBJECT)
        );
    }
}
