//! The iptables datapath: Docker's behaviour (without a userland proxy),
//! written in chains of netctl's own so that nothing else's rules are edited.
//!
//! ```text
//! nat     PREROUTING   -m addrtype --dst-type LOCAL -j NETCTL-DNAT
//!         OUTPUT       -m addrtype --dst-type LOCAL -j NETCTL-DNAT
//!         POSTROUTING  -j NETCTL-POSTROUTING
//!         NETCTL-DNAT         one DNAT rule per published port
//!         NETCTL-POSTROUTING  per network: egress MASQUERADE, hairpin, 127.0.0.1
//! raw     PREROUTING   -j NETCTL-ANTISPOOF               (first rule)
//!         NETCTL-ANTISPOOF    per endpoint: from its veth with another source
//!                             address -> DROP, with another source MAC -> DROP
//! filter  INPUT        -j NETCTL-INPUT                   (first rule)
//!         NETCTL-INPUT        per network: from its bridge to 127.0.0.0/8, not
//!                             from 127.0.0.0/8, neither a flow nor DNAT -> DROP
//!         FORWARD      -j NETCTL-FORWARD                 (first rule)
//!         NETCTL-FORWARD      -j NETCTL-ISOLATION-1      (first rule), then per
//!                             network: replies and published ports in, INVALID
//!                             (un-NATable) leaving DROP, all out, DROP
//!         NETCTL-ISOLATION-1  per network: leaving its bridge -> ISOLATION-2;
//!                             per internal network: DROP anything in or out
//!         NETCTL-ISOLATION-2  published-port connections RETURN (first rule), then
//!                             per network: entering its bridge -> DROP
//! ```
//!
//! So: containers of one network never reach another network's containers
//! directly, but reach its published ports through a host address like any
//! client would (as with Docker's default userland proxy; moby#38784 is the
//! bug Docker had without it); internal networks reach nothing and nothing
//! reaches them.
//!
//! Anti-spoofing goes beyond Docker (which has none): a container may send
//! IPv4 only from its own address and MAC, on its own veth, like the eBPF
//! datapath's `endpoint_ingress`. The rules match the bridge port with
//! `physdev`, so they need br_netfilter's `net.bridge.bridge-nf-call-iptables`
//! (per network namespace since Linux 5.3, 1 by default): `host_up` sets it
//! in the host namespace only, and never turns it back off. They sit in the
//! raw table, before conntrack, so a forged packet leaves no flow behind, and
//! their packet counters (`iptables-save -c -t raw`) count what was dropped.
//!
//! ARP is anti-spoofed too, but iptables never sees ARP: that check is a
//! rule per endpoint in nftables' bridge family (`table bridge netctl`,
//! see `arp.rs`), with a counter of its own.
//!
//! Rules are data ([`Rule`]): the same value renders the line that adds it
//! (`-A`/`-I`), the line that deletes it (`-D`) and the line `iptables-save`
//! prints for it, so add, delete and "is it there?" can never disagree. Each
//! rule is rendered in the canonical form of `iptables-save` (checked by the
//! tests, iptables v1.8.9 nft backend): addresses, then interfaces, then the
//! protocol and its match, then other matches, then the target.
//!
//! Every change is one `iptables-restore --noflush` batch, planned against
//! one `iptables-save` read: only missing rules are added, only present ones
//! deleted, and only absent chains declared (a `:CHAIN` line flushes an
//! existing chain under `--noflush`). A batch never fails half-way on
//! account of state, and the kernel applies it atomically (per table with
//! the legacy backend, as a whole with the nft one).
//!
//! Dual-stack networks (`--ipv6`) get the same chains and the same rules
//! in ip6tables, built by the same functions (`network_rules6`,
//! `endpoint_rules6`, `port_rules6`: filtering, isolation and `--internal`
//! match bridges, so they are identical; NAT66 MASQUERADEs the network's
//! IPv6 subnet; anti-spoofing checks the endpoint's IPv6 address and MAC;
//! ports published on every host address DNAT from the host's IPv6
//! addresses too), written by `ip6tables-restore` in batches of their own
//! (`Iptables::ip6`). The ip6tables chains are made with the first
//! dual-stack network and go with the last one (or `host_down`); a host
//! without one has nothing of netctl's in ip6tables. Neighbour advertisements claiming
//! another address are dropped in `table bridge netctl` (see `arp.rs`).
//!
//! Where each part lives: `rules.rs` (the rules as data and the functions
//! that build each set), `save.rs` (`iptables-save` read into typed rules),
//! `batch.rs` (one `iptables-restore` input and why it failed), `arp.rs`
//! (ARP anti-spoofing in nftables), `audit.rs` (`netctl doctor`); here, the [`Datapath`] calls that tie them together.
//! The kernel tests are in the tests crate (`tests/tests/iptables_datapath.rs`).

use std::collections::BTreeSet;

use ipnet::IpNet;

mod arp;
mod audit;
mod batch;
mod conntrack;
// Always built (a few constructors): a cargo feature for it would give the
// tests crate a second build of netctl, eBPF object included.
#[doc(hidden)]
pub mod fixtures;
mod rules;
mod save;

pub use arp::{arp_rule_comment, na_rule_comment, ArpRule, ARP_CHAIN, ARP_TABLE};
pub use batch::Batch;
pub use rules::{
    endpoint_rules, endpoint_rules6, host_rules, network_rules, network_rules6, port_rules,
    port_rules6, Rule, Table, ANTISPOOF_CHAIN, CHAINS, CHAIN_PREFIX, DNAT_CHAIN, FORWARD_CHAIN,
    INPUT_CHAIN, ISOLATION_1_CHAIN, ISOLATION_2_CHAIN, POSTROUTING_CHAIN,
};
pub use save::{AddressMatch, CountedRule, DnatDestination, Saved, SavedChain, SavedRule};

use rules::{check_bridge, check_endpoint, dedup};

use super::{Datapath, Drift, HostInfo};
use crate::{
    error::{Error, Result},
    failpoint,
    model::{DatapathKind, Endpoint, Network, PortMapping},
    state::State,
};

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const BRIDGE_NF_CALL_IP6TABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";

/// The ip6tables counterpart of an iptables program: `ip6tables-save` for
/// `iptables-save`, `/x/ip6tables-restore` for `/x/iptables-restore`;
/// any other program is used for both families.
fn ip6_program(program: &str) -> String {
    let (dir, file) = program
        .rsplit_once('/')
        .map_or(("", program), |(d, f)| (d, f));
    match file.strip_prefix("iptables") {
        Some(rest) if dir.is_empty() => format!("ip6tables{rest}"),
        Some(rest) => format!("{dir}/ip6tables{rest}"),
        None => program.to_owned(),
    }
}

/// `8080/tcp`, `127.0.0.1:8080/tcp`.
fn describe_ports(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| match p.host_ip.filter(|ip| !ip.is_unspecified()) {
            Some(ip) => format!(
                "{}:{}/{}",
                crate::model::host_ip_text(ip),
                p.host_port,
                p.protocol
            ),
            None => format!("{}/{}", p.host_port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `program` with `input` on its stdin: its output, and whether all
/// of the input was written (a program that failed may have stopped
/// reading: its own error says more). For `iptables-restore` and `nft -f`.
fn run_with_input(
    object: &str,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(std::process::Output, std::io::Result<()>)> {
    use std::io::Write as _;
    let failed = |e: std::io::Error| Error::system(object, format!("{program}: {e}"));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(failed)?;
    let written = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes());
    let out = child.wait_with_output().map_err(failed)?;
    Ok((out, written))
}

/// The first non-empty line a failed tool wrote on stderr (trimmed; empty
/// if it wrote none): its complaint, for a one-line error.
fn first_complaint(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

fn write_sysctl(key: &str, path: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| Error::io(format!("sysctl {key}"), e))
}

/// The iptables datapath of one host namespace (the calling thread's).
#[derive(Clone, Debug)]
pub struct Iptables {
    restore: String,
    save: String,
    /// The same pair for IPv6 (`ip6tables-restore`, `ip6tables-save`).
    restore6: String,
    save6: String,
    nft: arp::Nft,
}

impl Iptables {
    /// The network's rules (for `network_up` and `reconcile`).
    fn apply_network(&self, net: &Network) -> Result<()> {
        check_bridge(net)?;
        if !net.internal {
            // Lets the host's 127.0.0.1 -> published port packets be routed
            // out of the bridge (then MASQUERADEd), as Docker and netavark do.
            let key = format!("net.ipv4.conf.{}.route_localnet", net.bridge);
            write_sysctl(
                &key,
                &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            )?;
        }
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(net));
        self.restore(&format!("iptables: network {} up", net.name), &batch)?;
        if net.ipv6.is_none() {
            return Ok(());
        }
        // As for IPv4: bridged IPv6 reaches ip6tables (and its physdev
        // match) only through br_netfilter.
        write_sysctl(
            "net.bridge.bridge-nf-call-ip6tables",
            BRIDGE_NF_CALL_IP6TABLES,
        )?;
        let ip6 = self.ip6();
        let saved = ip6.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules6(net));
        ip6.restore(&format!("ip6tables: network {} up", net.name), &batch)
    }

    /// This datapath's ip6tables side: the same calls, run with
    /// `ip6tables-restore` and `ip6tables-save`.
    pub fn ip6(&self) -> Iptables {
        Iptables {
            restore: self.restore6.clone(),
            save: self.save6.clone(),
            restore6: self.restore6.clone(),
            save6: self.save6.clone(),
            nft: self.nft.clone(),
        }
    }

    /// Anti-spoofing of the endpoint; isolation and NAT match on the
    /// network's bridge, and published ports come with their own calls.
    /// (For `endpoint_added` and `reconcile`.)
    fn apply_endpoint(&self, ep: &Endpoint) -> Result<()> {
        check_endpoint(ep)?;
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_once(&saved, &endpoint_rules(ep));
        self.restore(
            &format!("iptables: endpoint {} ({}) up", ep.host_veth, ep.ip),
            &batch,
        )?;
        if let Some(ip6) = ep.ip6 {
            let ip6tables = self.ip6();
            let saved = ip6tables.saved()?;
            let mut batch = Batch::default();
            batch.ensure_host(&saved);
            batch.ensure_once(&saved, &endpoint_rules6(ep));
            ip6tables.restore(
                &format!("ip6tables: endpoint {} ({ip6}) up", ep.host_veth),
                &batch,
            )?;
        }
        self.nft.endpoint_up(ep)
    }

    /// The rules are written in whatever namespace the calling thread is in:
    /// the host's, which the process has already entered.
    pub fn new(_host: &HostInfo) -> Iptables {
        Iptables::system()
    }

    /// The datapath running the system's `iptables-restore` and
    /// `iptables-save`, for readers that need nothing of the host
    /// (`netctl metrics` reading the counters).
    pub fn system() -> Iptables {
        Iptables::with_programs(batch::RESTORE, save::SAVE)
    }

    /// The datapath running these programs in place of `iptables-restore`
    /// and `iptables-save` (for tests: a missing or failing program).
    pub fn with_programs(restore: impl Into<String>, save: impl Into<String>) -> Iptables {
        let (restore, save) = (restore.into(), save.into());
        Iptables {
            restore6: ip6_program(&restore),
            save6: ip6_program(&save),
            restore,
            save,
            nft: arp::Nft {
                program: arp::NFT.to_owned(),
            },
        }
    }

    /// The ARP anti-spoofing rules in `table bridge netctl`, with their
    /// counters (none when the table is not there).
    pub fn arp_rules(&self) -> Result<Vec<ArpRule>> {
        Ok(self.nft.listed()?.rules)
    }

    /// Every chain and rule of the host mentioning NETCTL, as `TABLE LINE`
    /// (`nat -A POSTROUTING -j NETCTL-POSTROUTING`, `filter :NETCTL-FORWARD - [0:0]`),
    /// then ip6tables' as `ip6 TABLE LINE`.
    pub fn netctl_rules(&self) -> Result<Vec<String>> {
        let mut lines = self.saved()?.netctl_lines();
        lines.extend(
            self.ip6()
                .saved()?
                .netctl_lines()
                .into_iter()
                .map(|l| format!("ip6 {l}")),
        );
        Ok(lines)
    }

    /// Whether anything of netctl's is left in nat or filter.
    pub fn rules_present(&self) -> Result<bool> {
        Ok(!self.netctl_rules()?.is_empty())
    }

    /// Deletes every chain of netctl's and every jump into them, going on
    /// past errors (`family` names the program in them).
    fn tables_down(&self, family: &str, errors: &mut Vec<Error>) {
        let saved = match self.saved() {
            Ok(saved) => saved,
            Err(e) => return errors.push(e),
        };
        // One batch per table, so that a failure in one leaves the other done.
        for table in Table::ALL {
            let mut batch = Batch::default();
            let ours: Vec<&str> = saved
                .chains(table)
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .collect();
            // Jumps into our chains from any other chain (the built-in ones,
            // or a chain some admin hooked us into).
            for rule in saved.rules(table) {
                if !rule.in_netctl_chain() && rule.jumps_to_netctl_chain() {
                    batch.push(table, rule.delete());
                }
            }
            // Flush all before deleting any: ISOLATION-1 jumps to ISOLATION-2.
            for chain in &ours {
                batch.push(table, format!("-F {chain}"));
            }
            for chain in &ours {
                batch.push(table, format!("-X {chain}"));
            }
            self.restore_keep_going(
                &format!("{family}: host teardown ({table})"),
                &batch,
                errors,
            );
            if family == "iptables" && table == Table::ALL[0] {
                errors.extend(failpoint::check("down.host.table").err());
            }
        }
    }

    /// Which of `rules` are not there (for `doctor`).
    pub fn missing(&self, rules: &[Rule]) -> Result<Vec<Rule>> {
        let saved = self.saved()?;
        Ok(rules
            .iter()
            .filter(|r| saved.count(r) == 0)
            .cloned()
            .collect())
    }
}

/// Rules a crash may have left sending traffic into `subnet` (a later
/// network reusing it must not inherit them): DNAT rules to an address in
/// it, and both anti-spoofing rules of each endpoint with an address in it
/// (the MAC rule is found by the veth of the address rule).
fn leftovers_in_subnet(saved: &Saved, subnet: IpNet) -> Vec<&SavedRule> {
    let dnat = saved
        .rules_in(Table::Nat, DNAT_CHAIN)
        .filter(|r| r.dnat_to.as_ref().is_some_and(|to| subnet.contains(&to.ip)));
    let antispoof: Vec<&SavedRule> = saved.rules_in(Table::Raw, ANTISPOOF_CHAIN).collect();
    let stale_veths: BTreeSet<&str> = antispoof
        .iter()
        .filter_map(|rule| {
            let source = rule.source.as_ref().filter(|s| s.negated)?;
            let veth = rule.physdev_in.as_deref()?;
            subnet.contains(&source.net.addr()).then_some(veth)
        })
        .collect();
    let stale_antispoof = antispoof.iter().copied().filter(|r| {
        r.physdev_in
            .as_deref()
            .is_some_and(|v| stale_veths.contains(v))
    });
    dnat.chain(stale_antispoof).collect()
}

/// Whether netctl's chains hold anything beyond the host's own rules (the
/// jumps and the isolation stage): a network's, an endpoint's or a port's.
fn holds_more_than_host_rules(saved: &Saved) -> bool {
    let host = host_rules();
    Table::ALL
        .into_iter()
        .flat_map(|table| saved.rules(table))
        .filter(|r| r.in_netctl_chain())
        .any(|r| !host.iter().any(|h| r.is(h)))
}

impl Datapath for Iptables {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Iptables
    }

    fn host_up(&self) -> Result<()> {
        // /proc/sys/net resolves to the namespace of the writing thread.
        write_sysctl("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")?;
        // Anti-spoofing sees bridged packets (container to container) only
        // through br_netfilter; the sysctl is the host namespace's own.
        if !std::path::Path::new(BRIDGE_NF_CALL_IPTABLES).exists() {
            return Err(Error::system(
                "sysctl net.bridge.bridge-nf-call-iptables",
                "missing: the iptables datapath needs br_netfilter (modprobe br_netfilter)",
            ));
        }
        write_sysctl(
            "net.bridge.bridge-nf-call-iptables",
            BRIDGE_NF_CALL_IPTABLES,
        )?;
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        self.restore("iptables: host setup", &batch)?;
        self.nft.host_up()
    }

    fn host_down(&self) -> Result<()> {
        let mut errors = Vec::new();
        self.tables_down("iptables", &mut errors);
        self.ip6().tables_down("ip6tables", &mut errors);
        errors.extend(self.nft.host_down().err());
        Error::collect(errors)
    }

    /// iptables matches the bridge by name: it needs no index.
    fn network_up(&self, net: &Network, _bridge_ifindex: u32) -> Result<()> {
        self.apply_network(net)
    }

    /// Deletes the network's rules and also what a crash before its
    /// containers were removed left for its subnet (`leftovers_in_subnet`).
    /// (No bridge name check: only lines found in iptables-save are deleted,
    /// and teardown must never be refused.)
    fn network_down(&self, net: &Network) -> Result<()> {
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &network_rules(net));
        for rule in leftovers_in_subnet(&saved, IpNet::V4(net.subnet)) {
            batch.push(rule.table, rule.delete());
        }
        let object = format!("iptables: network {} down", net.name);
        self.restore(&object, &batch)?;
        let mut subnets = vec![IpNet::V4(net.subnet)];
        if let Some(side) = net.ipv6 {
            let ip6 = self.ip6();
            let saved = ip6.saved()?;
            let mut batch = Batch::default();
            batch.remove(&saved, &network_rules6(net));
            for rule in leftovers_in_subnet(&saved, IpNet::V6(side.subnet)) {
                batch.push(rule.table, rule.delete());
            }
            ip6.restore(&format!("ip6tables: network {} down", net.name), &batch)?;
            subnets.push(IpNet::V6(side.subnet));
            // The last dual-stack network takes the ip6tables chains with
            // it: a host without one has nothing of netctl's there.
            if !holds_more_than_host_rules(&ip6.saved()?) {
                let mut errors = Vec::new();
                ip6.tables_down("ip6tables", &mut errors);
                Error::collect(errors)?;
            }
        }
        self.nft.remove(&object, None, &subnets)
    }

    /// iptables matches the veth by name: it needs no index.
    fn endpoint_added(&self, _net: &Network, ep: &Endpoint, _veth_ifindex: u32) -> Result<()> {
        self.apply_endpoint(ep)
    }

    fn endpoint_removed(&self, net: &Network, ep: &Endpoint) -> Result<()> {
        self.endpoint_forgotten(net, ep, &[])
    }

    /// The ports' rules, its rules and its ARP rule, then its conntrack
    /// entries (after the rules, so that no flow through them starts after
    /// the flush), whatever became of the rules. One save and one restore
    /// a family for ports and endpoint: two of each were most of an
    /// iptables `container rm`.
    fn endpoint_forgotten(
        &self,
        _net: &Network,
        ep: &Endpoint,
        ports: &[PortMapping],
    ) -> Result<()> {
        let object = format!("iptables: endpoint {} ({}) down", ep.host_veth, ep.ip);
        let removed = self.saved().and_then(|saved| {
            let mut batch = Batch::default();
            batch.remove(
                &saved,
                &dedup([port_rules(ports), endpoint_rules(ep)].concat()),
            );
            self.restore(&object, &batch)
        });
        let rules6 = dedup([port_rules6(ports), endpoint_rules6(ep)].concat());
        let removed6 = if rules6.is_empty() {
            Ok(())
        } else {
            let object6 = match ep.ip6 {
                Some(ip6) => format!("ip6tables: endpoint {} ({ip6}) down", ep.host_veth),
                None => format!("ip6tables: endpoint {} down", ep.host_veth),
            };
            let ip6tables = self.ip6();
            ip6tables.saved().and_then(|saved| {
                let mut batch = Batch::default();
                batch.remove(&saved, &rules6);
                ip6tables.restore(&object6, &batch)
            })
        };
        let arp = self.nft.remove(&object, Some(ep), &[]);
        let forgotten = conntrack::forget_address(ep.ip);
        let forgotten6 = ep.ip6.map_or(Ok(()), conntrack::forget_address);
        Error::collect(
            [
                removed.err(),
                removed6.err(),
                arp.err(),
                forgotten.err(),
                forgotten6.err(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        )
    }

    fn ports_published(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if net.internal && !ports.is_empty() {
            return Err(Error::invalid(
                format!("network {}", net.name),
                format!("is internal: cannot publish {}", describe_ports(ports)),
            ));
        }
        if let Some(p) = ports.iter().find(|p| p.network != net.name) {
            return Err(Error::invalid(
                format!("port {}", p.describe()),
                format!("belongs to network {}, not {}", p.network, net.name),
            ));
        }
        if ports.is_empty() {
            return Ok(());
        }
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_once(&saved, &dedup(port_rules(ports)));
        self.restore(
            &format!(
                "iptables: publish {} on network {}",
                describe_ports(ports),
                net.name
            ),
            &batch,
        )?;
        let rules6 = dedup(port_rules6(ports));
        if !rules6.is_empty() {
            let ip6 = self.ip6();
            let saved = ip6.saved()?;
            let mut batch = Batch::default();
            batch.ensure_host(&saved);
            batch.ensure_once(&saved, &rules6);
            ip6.restore(
                &format!(
                    "ip6tables: publish {} on network {}",
                    describe_ports(ports),
                    net.name
                ),
                &batch,
            )?;
        }
        // After the rules: a flow that starts from now on is translated.
        conntrack::forget_stale_udp(ports)
    }

    fn audit(&self, state: &State) -> Result<Vec<Drift>> {
        audit::audit(self, state)
    }

    fn reconcile(&self, state: &State) -> Result<()> {
        audit::reconcile(self, state)
    }

    fn ports_unpublished(&self, net: &Network, ports: &[PortMapping]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let object = format!(
            "iptables: unpublish {} on network {}",
            describe_ports(ports),
            net.name
        );
        let saved = self.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &dedup(port_rules(ports)));
        self.restore(&object, &batch)?;
        let rules6 = dedup(port_rules6(ports));
        if rules6.is_empty() {
            return Ok(());
        }
        let ip6 = self.ip6();
        let saved = ip6.saved()?;
        let mut batch = Batch::default();
        batch.remove(&saved, &rules6);
        ip6.restore(&format!("ip6{object}"), &batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::iptables::fixtures::{endpoint, front, network, port},
        model::Protocol,
    };

    /// An `Iptables` whose programs do nothing: proves a method refused
    /// before reading or writing any rule.
    fn inert() -> Iptables {
        Iptables::with_programs("/bin/false", "/bin/false")
    }

    #[test]
    fn ip6tables_programs_are_named_after_iptables_ones() {
        assert_eq!(ip6_program("iptables-save"), "ip6tables-save");
        assert_eq!(
            ip6_program("/usr/sbin/iptables-restore"),
            "/usr/sbin/ip6tables-restore"
        );
        assert_eq!(ip6_program("/bin/false"), "/bin/false");
        let dp = Iptables::system().ip6();
        assert_eq!(
            (dp.restore.as_str(), dp.save.as_str()),
            ("ip6tables-restore", "ip6tables-save")
        );
    }

    #[test]
    fn refuses_bad_input_before_touching_anything() {
        let dp = inert();
        let int = network("int", "nc-int", "172.20.0.0/16", true);
        let p = port(Protocol::Tcp, None, 8080, [172, 20, 0, 2], 80, "int");
        let err = dp.ports_published(&int, &[p]).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "network int: is internal: cannot publish 8080/tcp"
        );
        let err = dp
            .ports_published(
                &front(),
                &[port(Protocol::Tcp, None, 1, [10, 0, 0, 1], 1, "back")],
            )
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        for bridge in ["br+", "a b", "br/0", "", "a-very-long-bridge-name"] {
            let err = dp
                .network_up(&network("x", bridge, "10.0.0.0/24", false), 1)
                .unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{bridge:?}: {err}");
        }
        // (A malformed MAC cannot reach the datapath: `Mac` parses it first.)
        for veth in ["veth+", "a b"] {
            let ep = Endpoint {
                host_veth: veth.into(),
                ..endpoint()
            };
            let err = dp.endpoint_added(&front(), &ep, 1).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{veth:?}: {err}");
        }
        // Nothing to do is done without running anything.
        dp.ports_published(&front(), &[]).unwrap();
        dp.ports_unpublished(&front(), &[]).unwrap();
        // And a failing iptables-save is reported, not mistaken for "no rules".
        let err = dp.network_down(&front()).unwrap_err();
        assert!(matches!(err, Error::System { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("iptables: read rules (/bin/false): "),
            "{err}"
        );
    }
}
