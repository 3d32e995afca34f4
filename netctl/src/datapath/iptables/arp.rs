//! ARP anti-spoofing of the iptables datapath, in nftables' bridge family:
//! iptables never sees ARP, and a container's gratuitous ARP claiming
//! another's address would otherwise take that address over in the host's
//! neighbour table and the bridge's forwarding table.
//!
//! ```text
//! table bridge netctl
//!   chain antispoof    hook prerouting, priority filter, policy accept
//!     per endpoint: iifname VETH
//!                   ether saddr . arp saddr ether . arp saddr ip != { MAC . MAC . IP }
//!                   counter drop comment "VETH IP MAC"
//! ```
//!
//! On a dual-stack network the same chain holds a second rule per endpoint
//! for IPv6's ARP, neighbour discovery: a neighbour advertisement from the
//! endpoint's veth whose target address is not the endpoint's own is
//! dropped (its source address and MAC are already checked by ip6tables'
//! anti-spoofing, which sees the packet; only the target inside it is
//! left). nftables 1.0.6 has no `icmpv6 taddr`, so the target is matched
//! as raw payload: 128 bits at offset 8 of the ICMPv6 header.
//!
//! ```text
//!     per IPv6 endpoint: iifname VETH icmpv6 type nd-neighbor-advert
//!                        @th,64,128 != IP6 counter drop comment "VETH IP6 MAC"
//! ```
//!
//! An ARP packet that enters the bridge by an endpoint's veth passes only
//! with the endpoint's MAC as Ethernet source and sender MAC and its address
//! as sender; anything else is dropped before the bridge learns from it or
//! hands it to the host, and the rule's counter counts it. The table is
//! netctl's alone: `host_up` makes it, `host_down` deletes it whole. Rules
//! are told apart by their comment (the veth, address and MAC the rule is
//! built from), which is what `doctor` compares with the state.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use crate::{
    datapath::Drift,
    error::{Error, Result},
    model::Endpoint,
};

pub(super) const NFT: &str = "nft";
/// The table, in the `bridge` family.
pub const ARP_TABLE: &str = "netctl";
pub const ARP_CHAIN: &str = "antispoof";

/// What makes the table and its chain; `add` leaves existing ones alone.
fn host_script() -> String {
    format!(
        "add table bridge {ARP_TABLE}\n\
         add chain bridge {ARP_TABLE} {ARP_CHAIN} \
         {{ type filter hook prerouting priority filter; policy accept; }}\n"
    )
}

/// The comment that names an endpoint's rule.
pub fn arp_rule_comment(ep: &Endpoint) -> String {
    format!("{} {} {}", ep.host_veth, ep.ip, ep.mac)
}

/// The comment that names an endpoint's neighbour-advertisement rule
/// (its IPv6 address where the ARP rule has the IPv4 one).
pub fn na_rule_comment(ep: &Endpoint, ip6: Ipv6Addr) -> String {
    format!("{} {ip6} {}", ep.host_veth, ep.mac)
}

/// The endpoint's rules: (comment, `add rule` line), ARP's and, with an
/// IPv6 address, neighbour discovery's.
fn endpoint_lines(ep: &Endpoint) -> Vec<(String, String)> {
    let mut lines = vec![(arp_rule_comment(ep), add_line(ep))];
    if let Some(ip6) = ep.ip6 {
        let comment = na_rule_comment(ep, ip6);
        lines.push((
            comment.clone(),
            format!(
                "add rule bridge {ARP_TABLE} {ARP_CHAIN} iifname \"{}\" \
                 icmpv6 type nd-neighbor-advert @th,64,128 != {:#034x} \
                 counter drop comment \"{comment}\"\n",
                ep.host_veth,
                u128::from(ip6)
            ),
        ));
    }
    lines
}

/// The `add rule` line of an endpoint.
fn add_line(ep: &Endpoint) -> String {
    let (veth, ip, mac) = (&ep.host_veth, ep.ip, &ep.mac);
    format!(
        "add rule bridge {ARP_TABLE} {ARP_CHAIN} iifname \"{veth}\" \
         ether saddr . arp saddr ether . arp saddr ip != {{ {mac} . {mac} . {ip} }} \
         counter drop comment \"{}\"\n",
        arp_rule_comment(ep)
    )
}

/// One rule of the chain, as `nft -j` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpRule {
    pub handle: u64,
    pub comment: String,
    /// Packets dropped so far.
    pub packets: u64,
}

impl ArpRule {
    fn delete_line(&self) -> String {
        format!(
            "delete rule bridge {ARP_TABLE} {ARP_CHAIN} handle {}\n",
            self.handle
        )
    }

    /// The address of the endpoint it was made for (from its comment).
    fn ip(&self) -> Option<IpAddr> {
        self.comment.split(' ').nth(1)?.parse().ok()
    }
}

/// The table as nftables shows it.
#[derive(Debug, Default)]
pub(super) struct Listed {
    /// Whether `table bridge netctl` is there at all.
    pub table: bool,
    pub chain: bool,
    pub rules: Vec<ArpRule>,
}

/// Runs `nft` (the calling thread's namespace: the host's).
#[derive(Clone, Debug)]
pub(super) struct Nft {
    pub program: String,
}

impl Nft {
    fn run(&self, object: &str, args: &[&str], stdin: &str) -> Result<String> {
        let (out, written) = super::run_with_input(object, &self.program, args, stdin)?;
        if !out.status.success() {
            let first = super::first_complaint(&out.stderr);
            return Err(Error::system(
                object,
                format!("{} failed ({}): {first}", self.program, out.status),
            ));
        }
        written.map_err(|e| Error::system(object, format!("{}: {e}", self.program)))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a script atomically (`nft -f -`); an empty one does nothing.
    fn apply(&self, object: &str, script: &str) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        log::debug!("{object}:\n{script}");
        self.run(object, &["-f", "-"], script).map(drop)
    }

    /// The chain and its rules; nothing when the table is not there. One
    /// `nft` for both questions: the bridge family's ruleset, which lists
    /// no table rather than failing when ours is absent (a listing of the
    /// table alone fails then, and asking first cost a second process).
    pub fn listed(&self) -> Result<Listed> {
        let object = "nftables: list ruleset bridge";
        let text = self.run(object, &["-j", "list", "ruleset", "bridge"], "")?;
        parse_listing(&text).map_err(|e| Error::system(object, e))
    }

    pub fn host_up(&self) -> Result<()> {
        self.apply("nftables: host setup", &host_script())
    }

    pub fn host_down(&self) -> Result<()> {
        if !self.listed()?.table {
            return Ok(());
        }
        self.apply(
            "nftables: host teardown",
            &format!("delete table bridge {ARP_TABLE}\n"),
        )
    }

    /// The endpoint's rule, unless it is there (table and chain too).
    pub fn endpoint_up(&self, ep: &Endpoint) -> Result<()> {
        let listed = self.listed()?;
        let mut script = host_script();
        for (comment, line) in endpoint_lines(ep) {
            if !listed.rules.iter().any(|r| r.comment == comment) {
                script.push_str(&line);
            }
        }
        self.apply(
            &format!("nftables: endpoint {} ({}) up", ep.host_veth, ep.ip),
            &script,
        )
    }

    /// Deletes the endpoint's rules, and those of every endpoint with an
    /// address in one of `subnets` (what a crash may have left for a
    /// network that goes).
    pub fn remove(&self, object: &str, ep: Option<&Endpoint>, subnets: &[IpNet]) -> Result<()> {
        let comments: Vec<String> = ep
            .map(endpoint_lines)
            .into_iter()
            .flatten()
            .map(|(comment, _)| comment)
            .collect();
        let script: String = self
            .listed()?
            .rules
            .iter()
            .filter(|r| {
                comments.contains(&r.comment)
                    || r.ip()
                        .is_some_and(|ip| subnets.iter().any(|s| s.contains(&ip)))
            })
            .map(ArpRule::delete_line)
            .collect();
        self.apply(object, &script)
    }

    /// What the table lacks of `endpoints`' rules, and holds beyond them.
    pub fn audit(&self, endpoints: &[&Endpoint], host_wanted: bool) -> Result<Vec<Drift>> {
        let listed = self.listed()?;
        let mut drift = Vec::new();
        let object = |what: &str| format!("nftables {what}");
        if host_wanted && !listed.chain {
            drift.push(Drift::new(
                object(&format!("chain bridge {ARP_TABLE} {ARP_CHAIN}")),
                "missing",
            ));
        }
        for (comment, _) in endpoints.iter().flat_map(|ep| endpoint_lines(ep)) {
            match listed.rules.iter().filter(|r| r.comment == comment).count() {
                0 => drift.push(Drift::new(
                    object(&format!("rule \"{comment}\"")),
                    "missing",
                )),
                1 => {}
                n => drift.push(Drift::new(
                    object(&format!("rule \"{comment}\"")),
                    format!("present {n} times"),
                )),
            }
        }
        for rule in extra(&listed.rules, endpoints) {
            drift.push(Drift::new(
                object(&format!("rule \"{}\"", rule.comment)),
                "not implied by the state",
            ));
        }
        Ok(drift)
    }

    /// Makes the table hold exactly `endpoints`' rules, once each.
    pub fn reconcile(&self, endpoints: &[&Endpoint]) -> Result<()> {
        self.host_up()?;
        let listed = self.listed()?;
        let mut script = String::new();
        for rule in extra(&listed.rules, endpoints) {
            script.push_str(&rule.delete_line());
        }
        for (comment, line) in endpoints.iter().flat_map(|ep| endpoint_lines(ep)) {
            let mut same = listed.rules.iter().filter(|r| r.comment == comment);
            match same.next() {
                None => script.push_str(&line),
                Some(_) => same.for_each(|dup| script.push_str(&dup.delete_line())),
            }
        }
        self.apply("nftables: doctor --fix", &script)
    }
}

/// Rules no endpoint of `endpoints` owns.
fn extra<'a>(rules: &'a [ArpRule], endpoints: &[&Endpoint]) -> Vec<&'a ArpRule> {
    let wanted: Vec<String> = endpoints
        .iter()
        .flat_map(|ep| endpoint_lines(ep))
        .map(|(comment, _)| comment)
        .collect();
    rules
        .iter()
        .filter(|r| !wanted.contains(&r.comment))
        .collect()
}

/// Reads `nft -j list ruleset bridge`: whether our chain is there, and its
/// rules with their handle, comment and packet counter (other tables' are
/// not ours).
fn parse_listing(text: &str) -> std::result::Result<Listed, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("unreadable nft -j output: {e}"))?;
    let items = json["nftables"]
        .as_array()
        .ok_or("nft -j output without an nftables array")?;
    let mut listed = Listed::default();
    for item in items {
        if item["table"]["name"] == ARP_TABLE {
            listed.table = true;
        }
        let chain = &item["chain"];
        if chain["table"] == ARP_TABLE && chain["name"] == ARP_CHAIN {
            listed.chain = true;
        }
        let rule = &item["rule"];
        if rule["table"] != ARP_TABLE || rule["chain"] != ARP_CHAIN {
            continue;
        }
        let handle = rule["handle"].as_u64().ok_or("a rule without a handle")?;
        let packets = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0);
        listed.rules.push(ArpRule {
            handle,
            comment: rule["comment"].as_str().unwrap_or_default().to_owned(),
            packets,
        });
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::iptables::fixtures::endpoint;

    #[test]
    fn renders_the_rule_of_an_endpoint() {
        let ep = endpoint();
        assert_eq!(
            add_line(&ep),
            format!(
                "add rule bridge netctl antispoof iifname \"{veth}\" ether saddr . arp saddr ether \
                 . arp saddr ip != {{ {mac} . {mac} . {ip} }} counter drop comment \"{veth} {ip} {mac}\"\n",
                veth = ep.host_veth,
                ip = ep.ip,
                mac = ep.mac
            )
        );
    }

    #[test]
    fn an_ipv6_endpoint_gets_a_neighbour_advertisement_rule() {
        assert_eq!(endpoint_lines(&endpoint()).len(), 1);
        let ep = Endpoint {
            ip6: Some("fd00:1::2".parse().unwrap()),
            ..endpoint()
        };
        let lines = endpoint_lines(&ep);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].0, "veth0 fd00:1::2 02:42:ac:12:00:02");
        assert_eq!(
            lines[1].1,
            "add rule bridge netctl antispoof iifname \"veth0\" icmpv6 type nd-neighbor-advert \
             @th,64,128 != 0xfd000001000000000000000000000002 counter drop \
             comment \"veth0 fd00:1::2 02:42:ac:12:00:02\"\n"
        );
    }

    #[test]
    fn reads_a_listing() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "bridge", "name": "netctl", "handle": 1}},
            {"chain": {"family": "bridge", "table": "netctl", "name": "antispoof", "handle": 1}},
            {"rule": {"family": "bridge", "table": "netctl", "chain": "antispoof", "handle": 3,
              "comment": "veth0 172.18.0.2 02:42:ac:12:00:02",
              "expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 294}}, {"drop": null}]}},
            {"table": {"family": "bridge", "name": "other", "handle": 2}},
            {"chain": {"family": "bridge", "table": "other", "name": "antispoof", "handle": 1}},
            {"rule": {"family": "bridge", "table": "other", "chain": "antispoof", "handle": 4,
              "comment": "not ours", "expr": [{"drop": null}]}}]}"#;
        let listed = parse_listing(text).unwrap();
        assert!(listed.table && listed.chain);
        assert_eq!(
            listed.rules,
            [ArpRule {
                handle: 3,
                comment: "veth0 172.18.0.2 02:42:ac:12:00:02".into(),
                packets: 7
            }]
        );
        assert_eq!(listed.rules[0].ip(), Some("172.18.0.2".parse().unwrap()));
        let na = ArpRule {
            comment: "veth0 fd00::2 02:42:ac:12:00:02".into(),
            ..listed.rules[0].clone()
        };
        assert_eq!(na.ip(), Some("fd00::2".parse().unwrap()));
        assert!(parse_listing("not json").is_err());
        // A bridge family without our table.
        let none = parse_listing(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#).unwrap();
        assert!(!none.table && !none.chain && none.rules.is_empty());
    }
}
