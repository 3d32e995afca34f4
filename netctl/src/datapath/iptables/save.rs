//! Reading `iptables-save`: its text parsed once into typed chains and
//! rules, so that planning, teardown and the audit ask questions ("where
//! does this DNAT rule send traffic?", "which veth is this rule about?")
//! instead of cutting strings. A rule keeps its specification verbatim as
//! well: that is what a [`Rule`] of ours is compared with, and what the
//! line deleting it repeats.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    ops::RangeInclusive,
    process::{Command, Stdio},
};

use ipnet::IpNet;

use super::{
    rules::{Rule, Table, CHAIN_PREFIX},
    Iptables,
};
use crate::error::{Error, Result};

pub(super) const SAVE: &str = "iptables-save";

/// What `iptables-save` printed for the tables netctl writes to (others,
/// such as mangle, are skipped).
#[derive(Debug, Default)]
pub struct Saved {
    tables: BTreeMap<Table, Dump>,
}

#[derive(Debug, Default)]
struct Dump {
    chains: Vec<SavedChain>,
    /// In the order they are evaluated.
    rules: Vec<SavedRule>,
}

/// A `:NAME POLICY [PACKETS:BYTES]` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedChain {
    pub name: String,
    /// The line as printed (for listings).
    pub line: String,
}

/// One `-A CHAIN MATCHES -j TARGET TARGET-OPTIONS` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    pub table: Table,
    pub chain: String,
    /// Everything after the chain, verbatim: the form of [`Rule::spec`].
    pub spec: String,
    /// The words before the target (`-o`, `nc-front`, `-m`, `conntrack`, ...),
    /// unquoted.
    pub matches: Vec<String>,
    /// The chain or target of `-j`/`-g`; none for a rule that only counts.
    pub target: Option<String>,
    /// The target's own options (`--to-destination`, `172.18.0.2:80`), unquoted.
    pub target_options: Vec<String>,
    /// `-s`, when the rule matches on the source address.
    pub source: Option<AddressMatch>,
    /// `-m physdev --physdev-in PORT`: the bridge port packets came in by.
    pub physdev_in: Option<String>,
    /// Where a `-j DNAT` rule sends traffic.
    pub dnat_to: Option<DnatDestination>,
}

/// `-s NET` or, negated, `! -s NET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressMatch {
    pub negated: bool,
    pub net: IpNet,
}

/// `--to-destination IP[:PORT[-PORT]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnatDestination {
    pub ip: IpAddr,
    pub ports: Option<RangeInclusive<u16>>,
}

impl Saved {
    /// Lines outside a table of ours, comments and `COMMIT` are skipped.
    pub fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        for (table, line) in table_lines(text) {
            if let Some(chain) = SavedChain::parse(line) {
                saved.tables.entry(table).or_default().chains.push(chain);
            } else if let Some(rule) = SavedRule::parse(table, line) {
                saved.tables.entry(table).or_default().rules.push(rule);
            }
        }
        saved
    }

    /// The rules of a table, in order.
    pub fn rules(&self, table: Table) -> &[SavedRule] {
        self.tables
            .get(&table)
            .map(|d| d.rules.as_slice())
            .unwrap_or_default()
    }

    /// The rules of one chain, in order.
    pub fn rules_in<'a>(
        &'a self,
        table: Table,
        chain: &'a str,
    ) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules(table).iter().filter(move |r| r.chain == chain)
    }

    /// Names of the chains of a table.
    pub fn chains(&self, table: Table) -> impl Iterator<Item = &str> {
        self.tables
            .get(&table)
            .into_iter()
            .flat_map(|d| d.chains.iter())
            .map(|c| c.name.as_str())
    }

    pub fn has_chain(&self, table: Table, chain: &str) -> bool {
        self.chains(table).any(|c| c == chain)
    }

    /// How many copies of `rule` exist.
    pub fn count(&self, rule: &Rule) -> usize {
        self.rules(rule.table).iter().filter(|r| r.is(rule)).count()
    }

    /// The rules of `chain`, in order, as saved (`-A CHAIN SPEC`).
    pub fn chain_rules(&self, table: Table, chain: &str) -> Vec<String> {
        self.rules_in(table, chain).map(SavedRule::line).collect()
    }

    /// Every chain and rule line mentioning NETCTL, as `TABLE LINE`.
    pub fn netctl_lines(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|(table, dump)| {
                let chains = dump.chains.iter().map(|c| c.line.clone());
                chains
                    .chain(dump.rules.iter().map(SavedRule::line))
                    .filter(|l| l.contains("NETCTL"))
                    .map(move |l| format!("{table} {l}"))
            })
            .collect()
    }
}

impl SavedChain {
    fn parse(line: &str) -> Option<SavedChain> {
        let name = line.strip_prefix(':')?.split_whitespace().next()?;
        Some(SavedChain {
            name: name.to_owned(),
            line: line.to_owned(),
        })
    }
}

impl SavedRule {
    fn parse(table: Table, line: &str) -> Option<SavedRule> {
        let rest = line.strip_prefix("-A ")?;
        // A rule with neither matches nor target prints as `-A CHAIN`.
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut rule = SavedRule {
            table,
            chain: chain.to_owned(),
            spec: spec.to_owned(),
            matches: Vec::new(),
            target: None,
            target_options: Vec::new(),
            source: None,
            physdev_in: None,
            dnat_to: None,
        };
        let mut words = split_words(spec).into_iter();
        let mut negated = false;
        while let Some(word) = words.next() {
            if matches!(word.as_str(), "-j" | "--jump" | "-g" | "--goto") {
                // iptables-save prints the target last: the rest is its options.
                rule.target = words.next();
                rule.target_options = words.by_ref().collect();
                break;
            }
            let value = match word.as_str() {
                "-s" | "--source" | "--physdev-in" => words.next(),
                _ => None,
            };
            match (word.as_str(), &value) {
                ("-s" | "--source", Some(net)) => {
                    rule.source = parse_net(net).map(|net| AddressMatch { negated, net });
                }
                // A negated bridge port says nothing of where packets came from.
                ("--physdev-in", Some(port)) if !negated => rule.physdev_in = Some(port.clone()),
                _ => {}
            }
            negated = word == "!";
            rule.matches.push(word);
            rule.matches.extend(value);
        }
        if rule.target.as_deref() == Some("DNAT") {
            rule.dnat_to = rule
                .target_options
                .iter()
                .skip_while(|o| *o != "--to-destination")
                .nth(1)
                .map(String::as_str)
                .and_then(DnatDestination::parse);
        }
        Some(rule)
    }

    /// Whether this is (a copy of) `rule`.
    pub fn is(&self, rule: &Rule) -> bool {
        self.table == rule.table && self.chain == rule.chain && self.spec == rule.spec
    }

    /// Whether it lives in a chain of netctl's.
    pub fn in_netctl_chain(&self) -> bool {
        self.chain.starts_with(CHAIN_PREFIX)
    }

    /// Whether it jumps (or goes) to a chain of netctl's.
    pub fn jumps_to_netctl_chain(&self) -> bool {
        self.target
            .as_deref()
            .is_some_and(|t| t.starts_with(CHAIN_PREFIX))
    }

    /// The line `iptables-save` printed.
    pub fn line(&self) -> String {
        self.command("-A")
    }

    /// The restore line that deletes (one copy of) it.
    pub fn delete(&self) -> String {
        self.command("-D")
    }

    /// `OP CHAIN SPEC`, without a trailing space when the spec is empty.
    fn command(&self, op: &str) -> String {
        if self.spec.is_empty() {
            format!("{op} {}", self.chain)
        } else {
            format!("{op} {} {}", self.chain, self.spec)
        }
    }
}

/// `nat -A CHAIN SPEC`, as a [`Rule`] displays.
impl std::fmt::Display for SavedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.line())
    }
}

impl DnatDestination {
    /// `172.18.0.2`, `172.18.0.2:80`, `172.18.0.2:80-81`; an address range
    /// (`A-B`) is not one destination and gives none.
    /// ip6tables writes `[fd00::2]:80`, or a bare `fd00::2`.
    fn parse(text: &str) -> Option<DnatDestination> {
        let (ip, ports) = match text.strip_prefix('[') {
            Some(rest) => {
                let (ip, after) = rest.split_once(']')?;
                (ip, after.strip_prefix(':'))
            }
            None if text.matches(':').count() > 1 => (text, None),
            None => match text.split_once(':') {
                Some((ip, ports)) => (ip, Some(ports)),
                None => (text, None),
            },
        };
        let ports = match ports {
            None => None,
            Some(ports) => Some(match ports.split_once('-') {
                Some((low, high)) => low.parse().ok()?..=high.parse().ok()?,
                None => {
                    let port = ports.parse().ok()?;
                    port..=port
                }
            }),
        };
        Some(DnatDestination {
            ip: ip.parse().ok()?,
            ports,
        })
    }
}

/// `172.18.0.2/32`, `fd00::2/128`, or a bare address (a host prefix).
fn parse_net(text: &str) -> Option<IpNet> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The words of a rule: split at spaces, except inside the double quotes
/// iptables-save puts around a value with spaces (where `\"` and `\\`
/// stand for `"` and `\`).
fn split_words(spec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A rule as `iptables-save -c` prints it, with the packets and bytes that
/// matched it since it was written (for `netctl metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedRule {
    pub packets: u64,
    pub bytes: u64,
    pub rule: SavedRule,
}

impl CountedRule {
    /// The rules of `iptables-save -c` output (`[PACKETS:BYTES] -A ...`),
    /// in the tables netctl writes to; chain policies' counters are skipped.
    pub fn parse_all(text: &str) -> Vec<CountedRule> {
        table_lines(text)
            .filter_map(|(table, line)| {
                let (counters, rest) = line.strip_prefix('[')?.split_once("] ")?;
                let (packets, bytes) = counters.split_once(':')?;
                Some(CountedRule {
                    packets: packets.parse().ok()?,
                    bytes: bytes.parse().ok()?,
                    rule: SavedRule::parse(table, rest)?,
                })
            })
            .collect()
    }
}

/// The lines of `iptables-save` output inside the tables netctl writes
/// to, each with its table (the `*TABLE` lines themselves left out).
fn table_lines(text: &str) -> impl Iterator<Item = (Table, &str)> {
    let mut table = None;
    text.lines().filter_map(move |line| {
        if let Some(name) = line.strip_prefix('*') {
            table = Table::from_name(name.trim());
            return None;
        }
        Some((table?, line))
    })
}

impl Iptables {
    /// Reads the tables netctl writes to.
    pub fn saved(&self) -> Result<Saved> {
        Ok(Saved::parse(&self.run_save(&[])?))
    }

    /// Reads the tables with the rules' counters (`iptables-save -c`).
    pub fn rule_counters(&self) -> Result<Vec<CountedRule>> {
        Ok(CountedRule::parse_all(&self.run_save(&["-c"])?))
    }

    /// What `iptables-save ARGS` printed, or its first line of complaint.
    fn run_save(&self, args: &[&str]) -> Result<String> {
        let object = || format!("iptables: read rules ({})", self.save);
        let out = Command::new(&self.save)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::system(object(), e))?;
        if !out.status.success() {
            let first = super::first_complaint(&out.stderr);
            return Err(Error::system(object(), format!("{first} ({})", out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::iptables::{
        fixtures::SAMPLE_SAVE,
        rules::{host_rules, FORWARD_CHAIN},
    };

    #[test]
    fn counters_are_read_with_their_rules() {
        let text = "*nat\n:PREROUTING ACCEPT [9:900]\n\
                    [3:102] -A NETCTL-DNAT -p udp -m udp --dport 8080 -j DNAT --to-destination 172.18.0.2:80\n\
                    COMMIT\n*mangle\n[5:5] -A PREROUTING -j ACCEPT\nCOMMIT\n\
                    *raw\n[0:0] -A NETCTL-ANTISPOOF ! -s 172.18.0.2/32 -m physdev --physdev-in veabc -j DROP\nCOMMIT\n";
        let rules = CountedRule::parse_all(text);
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!((rules[0].packets, rules[0].bytes), (3, 102));
        assert_eq!(rules[0].rule.chain, "NETCTL-DNAT");
        assert_eq!(
            rules[0].rule.dnat_to.as_ref().map(|d| d.ip),
            Some(IpAddr::from([172, 18, 0, 2]))
        );
        assert_eq!(rules[1].rule.table, Table::Raw);
        assert_eq!(rules[1].rule.physdev_in.as_deref(), Some("veabc"));
    }

    #[test]
    fn saved_output_is_parsed_per_table() {
        let saved = Saved::parse(SAMPLE_SAVE);
        let host = host_rules();
        assert_eq!(saved.count(&host[3]), 1, "FORWARD jump");
        assert_eq!(saved.count(&host[0]), 0, "PREROUTING jump is absent");
        let drop = Rule {
            table: Table::Filter,
            chain: FORWARD_CHAIN,
            spec: "-o nc-front -j DROP".into(),
            first: false,
        };
        assert_eq!(saved.count(&drop), 2);
        // The same line in another table is another rule.
        assert_eq!(
            saved.count(&Rule {
                table: Table::Nat,
                ..drop.clone()
            }),
            0
        );
        assert!(saved.has_chain(Table::Filter, FORWARD_CHAIN));
        assert!(saved.has_chain(Table::Filter, "FORWARD"));
        assert!(!saved.has_chain(Table::Nat, FORWARD_CHAIN));
        assert_eq!(
            saved.chain_rules(Table::Filter, "FORWARD"),
            [
                "-A FORWARD -j NETCTL-FORWARD",
                "-A FORWARD -i eth9 -j ACCEPT"
            ]
        );
        // mangle is not ours to list or touch.
        assert_eq!(
            saved.netctl_lines(),
            [
                "filter :NETCTL-FORWARD - [0:0]",
                "filter -A FORWARD -j NETCTL-FORWARD",
                "filter -A NETCTL-FORWARD -j NETCTL-ISOLATION-1",
                "filter -A NETCTL-FORWARD -o nc-front -j DROP",
                "filter -A NETCTL-FORWARD -o nc-front -j DROP",
            ]
        );
    }

    /// The one rule of a `*TABLE` holding `line`.
    fn only_rule(table: Table, line: &str) -> SavedRule {
        let saved = Saved::parse(&format!("*{table}\n{line}\nCOMMIT\n"));
        let rules = saved.rules(table);
        assert_eq!(rules.len(), 1, "{line}");
        rules[0].clone()
    }

    #[test]
    fn rules_are_split_into_matches_target_and_options() {
        let rule = only_rule(
            Table::Nat,
            "-A NETCTL-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.18.0.2:80",
        );
        assert_eq!(rule.chain, "NETCTL-DNAT");
        assert_eq!(
            rule.spec,
            "-d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.18.0.2:80"
        );
        assert_eq!(
            rule.matches,
            [
                "-d",
                "127.0.0.1/32",
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                "8081"
            ]
        );
        assert_eq!(rule.target.as_deref(), Some("DNAT"));
        assert_eq!(rule.target_options, ["--to-destination", "172.18.0.2:80"]);
        assert_eq!(
            rule.dnat_to,
            Some(DnatDestination {
                ip: IpAddr::from([172, 18, 0, 2]),
                ports: Some(80..=80),
            })
        );
        assert_eq!(rule.source, None);
        assert_eq!(rule.physdev_in, None);
        assert!(rule.in_netctl_chain() && !rule.jumps_to_netctl_chain());
        // Deleting and listing repeat the line as printed.
        assert_eq!(
            rule.delete(),
            "-D NETCTL-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.18.0.2:80"
        );
        assert_eq!(
            rule.to_string(),
            "nat -A NETCTL-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.18.0.2:80"
        );
    }

    #[test]
    fn anti_spoofing_rules_give_their_source_and_bridge_port() {
        let address = only_rule(
            Table::Raw,
            "-A NETCTL-ANTISPOOF ! -s 172.18.0.2/32 -m physdev --physdev-in veth0 -j DROP",
        );
        assert_eq!(
            address.source,
            Some(AddressMatch {
                negated: true,
                net: "172.18.0.2/32".parse().unwrap(),
            })
        );
        assert_eq!(address.physdev_in.as_deref(), Some("veth0"));
        assert_eq!(address.dnat_to, None);
        let mac = only_rule(
            Table::Raw,
            "-A NETCTL-ANTISPOOF -m physdev --physdev-in veth0 -m mac ! --mac-source 02:42:ac:12:00:02 -j DROP",
        );
        assert_eq!(mac.source, None);
        assert_eq!(mac.physdev_in.as_deref(), Some("veth0"));
        let v6 = only_rule(
            Table::Raw,
            "-A NETCTL-ANTISPOOF ! -s fd00::2/128 -m physdev --physdev-in veth0 -j DROP",
        );
        assert_eq!(
            v6.source,
            Some(AddressMatch {
                negated: true,
                net: "fd00::2/128".parse().unwrap(),
            })
        );
        // A plain source, a bare address, and a negated bridge port.
        let other = only_rule(
            Table::Raw,
            "-A PREROUTING -s 10.0.0.1 -m physdev ! --physdev-in veth9 -j ACCEPT",
        );
        assert_eq!(
            other.source,
            Some(AddressMatch {
                negated: false,
                net: "10.0.0.1/32".parse().unwrap(),
            })
        );
        assert_eq!(other.physdev_in, None);
        assert_eq!(other.matches[..3], ["-s", "10.0.0.1", "-m"]);
    }

    #[test]
    fn jumps_gotos_and_quoted_words_are_read() {
        let jump = only_rule(Table::Filter, "-A FORWARD -j NETCTL-FORWARD");
        assert!(jump.jumps_to_netctl_chain() && !jump.in_netctl_chain());
        let goto = only_rule(Table::Filter, "-A INPUT -i eth0 -g NETCTL-X");
        assert_eq!(goto.target.as_deref(), Some("NETCTL-X"));
        assert!(goto.jumps_to_netctl_chain());
        // A comment naming our chains is not a jump into them.
        let comment = only_rule(
            Table::Filter,
            r#"-A FORWARD -m comment --comment "see \"NETCTL-FORWARD\" too" -j ACCEPT"#,
        );
        assert_eq!(
            comment.matches,
            ["-m", "comment", "--comment", r#"see "NETCTL-FORWARD" too"#]
        );
        assert_eq!(comment.target.as_deref(), Some("ACCEPT"));
        assert!(!comment.jumps_to_netctl_chain());
        // A rule that only counts has no target.
        let count = only_rule(Table::Filter, "-A FORWARD -i eth0");
        assert_eq!(count.target, None);
        assert!(count.target_options.is_empty());
    }

    #[test]
    fn dnat_destinations_are_typed() {
        let to = DnatDestination::parse;
        let ip = IpAddr::from([10, 9, 0, 9]);
        assert_eq!(to("10.9.0.9"), Some(DnatDestination { ip, ports: None }));
        // ip6tables' form.
        let ip6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(
            to("[fd00::2]:80"),
            Some(DnatDestination {
                ip: ip6,
                ports: Some(80..=80),
            })
        );
        assert_eq!(
            to("fd00::2"),
            Some(DnatDestination {
                ip: ip6,
                ports: None
            })
        );
        assert_eq!(
            to("10.9.0.9:22-24"),
            Some(DnatDestination {
                ip,
                ports: Some(22..=24),
            })
        );
        for bad in ["10.9.0.9-10.9.0.10:22", "10.9.0.9:x", "host:22", ""] {
            assert_eq!(to(bad), None, "{bad}");
        }
        // Only a DNAT target has one.
        let masquerade = only_rule(
            Table::Nat,
            "-A NETCTL-POSTROUTING -s 172.18.0.0/16 ! -o nc-front -j MASQUERADE --to-ports 1-2",
        );
        assert_eq!(masquerade.dnat_to, None);
        assert_eq!(masquerade.target_options, ["--to-ports", "1-2"]);
    }

    #[test]
    fn lines_outside_our_tables_are_skipped() {
        let saved = Saved::parse(
            "# Generated by iptables-save\n-A FORWARD -j ACCEPT\n*mangle\n-A PREROUTING -j ACCEPT\n\
             COMMIT\n*nat\n:NETCTL-DNAT - [0:0]\n[3:180] -A OUTPUT -j ACCEPT\n-A NETCTL-DNAT\nCOMMIT\n",
        );
        assert!(saved.rules(Table::Filter).is_empty());
        assert!(saved.chains(Table::Filter).next().is_none());
        assert_eq!(
            saved.chains(Table::Nat).collect::<Vec<_>>(),
            ["NETCTL-DNAT"]
        );
        // A rule with counters in front is not read (netctl never asks for
        // them); an empty rule is, and deleting it repeats it as printed.
        let empty = &saved.rules(Table::Nat);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].spec, "");
        assert_eq!(empty[0].target, None);
        assert_eq!(empty[0].line(), "-A NETCTL-DNAT");
        assert_eq!(empty[0].delete(), "-D NETCTL-DNAT");
    }
}
