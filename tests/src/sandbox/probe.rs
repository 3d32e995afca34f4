//! Negative probes attributed to the datapath. A probe that must not pass
//! proves something only if (1) the listener it aims at is up, shown by a
//! positive control to the same listener just before, (2) it ends in a
//! timeout, the mark of a drop, not in a refusal (a reset or an ICMP error:
//! the packet reached some stack), and (3) the datapath counted exactly
//! the packets it sent as dropped: the eBPF drop reasons of `netctl stats`,
//! or the packet counters of the DROP rules of netctl's iptables chains.
//! `nettool probe` reports the outcome and the packets it sent.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, time::Duration};

use super::{nettool_bin, Sandbox};

/// Timeout of a probe that must be dropped: past any round trip of a
/// loaded machine, and between TCP's first SYN retransmission (1 s) and
/// its second (3 s), so that a dropped TCP probe sends exactly 2 packets.
pub const DROP_TIMEOUT_MS: u64 = 1200;
/// Timeout of each attempt of a positive control (generous: 2 shared cores).
const ANSWER_TIMEOUT_MS: u64 = 3000;
/// Attempts of a positive control: a listener may still be starting.
const ANSWER_ATTEMPTS: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// How a probe ended (see nettool's probe.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first line of the answer (`peer=IP:PORT`, `from=IP` for ICMP).
    Answered(String),
    /// A reset or a port unreachable: a stack got it, nothing listened.
    Refused,
    /// No route, or an ICMP error other than port unreachable.
    Unreachable(String),
    /// Nothing came back: dropped.
    Timeout,
}

/// One probe's outcome and the packets it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub outcome: Outcome,
    pub packets: u64,
}

/// Why the datapath dropped a packet. eBPF counts each reason apart;
/// iptables has one DROP rule per network and direction, so its check
/// is on the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Between networks.
    Isolated,
    /// Into or out of an `--internal` network.
    Internal,
    /// From outside to a container's own address.
    Unsolicited,
}

impl Reason {
    fn stat(self) -> &'static str {
        match self {
            Reason::Isolated => "drop_isolated",
            Reason::Internal => "drop_internal",
            Reason::Unsolicited => "drop_unsolicited",
        }
    }
}

/// Drop counters of the datapath at one moment: eBPF `drop_*` reasons, or
/// the packets of each DROP rule of netctl's filter chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCounters(BTreeMap<String, u64>);

impl DropCounters {
    /// The counters that moved since `before`, by how much.
    pub fn since(&self, before: &DropCounters) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter_map(|(key, now)| {
                let delta = now - before.0.get(key).copied().unwrap_or(0);
                (delta > 0).then(|| (key.clone(), delta))
            })
            .collect()
    }
}

impl DropCounters {
    /// The packets of the counters whose name starts with `prefix` (on
    /// iptables, the DROP rules of one chain: `-A NETCTL-INPUT `).
    pub fn total_of(&self, prefix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, packets)| packets)
            .sum()
    }
}

/// Parses a `nettool probe` line: `OUTCOME packets=N [DETAIL]`.
fn parse_probe(line: &str) -> Option<Probe> {
    let mut words = line.trim().splitn(3, ' ');
    let outcome = words.next()?;
    let packets = words.next()?.strip_prefix("packets=")?.parse().ok()?;
    let detail = words.next().unwrap_or_default().to_owned();
    let outcome = match outcome {
        "answered" => Outcome::Answered(detail),
        "refused" => Outcome::Refused,
        "unreachable" => Outcome::Unreachable(detail),
        "timeout" => Outcome::Timeout,
        _ => return None,
    };
    Some(Probe { outcome, packets })
}

impl Sandbox {
    /// One probe from a namespace of the sandbox to `ip:port` (any port
    /// for ICMP).
    pub fn probe(
        &self,
        netns_name: &str,
        proto: Proto,
        ip: Ipv4Addr,
        port: u16,
        timeout_ms: u64,
    ) -> Probe {
        let tool = nettool_bin().display().to_string();
        let (proto, ip, port, ms) = (
            proto.to_string(),
            ip.to_string(),
            port.to_string(),
            timeout_ms.to_string(),
        );
        let argv = [&tool, "probe", &proto, &ip, &port, "--timeout-ms", &ms];
        let said = self.run_in_ok(netns_name, &argv);
        parse_probe(&said).unwrap_or_else(|| panic!("nettool probe said {said:?}"))
    }

    /// A positive control: `ip:port` answers from `netns_name`, within a few
    /// attempts (a listener may still be coming up). The answer, or what
    /// the last attempt got.
    pub fn answers(
        &self,
        netns_name: &str,
        proto: Proto,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<String, String> {
        let mut last = None;
        for _ in 0..ANSWER_ATTEMPTS {
            let probe = self.probe(netns_name, proto, ip, port, ANSWER_TIMEOUT_MS);
            if let Outcome::Answered(reply) = probe.outcome {
                return Ok(reply);
            }
            last = Some(probe.outcome);
            std::thread::sleep(Duration::from_millis(150));
        }
        Err(format!(
            "{proto} {ip}:{port} from {netns_name} never answered ({last:?})"
        ))
    }

    /// A forbidden probe: one attempt, which must end in a timeout (a
    /// refusal means a stack got the packet). The packets it sent, or what
    /// happened instead.
    pub fn dropped(
        &self,
        netns_name: &str,
        proto: Proto,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<u64, String> {
        let probe = self.probe(netns_name, proto, ip, port, DROP_TIMEOUT_MS);
        match probe.outcome {
            Outcome::Timeout if probe.packets > 0 => Ok(probe.packets),
            other => Err(format!(
                "{proto} {ip}:{port} from {netns_name} must be dropped, got {other:?} \
                 after {} packet(s)",
                probe.packets
            )),
        }
    }

    /// A forbidden probe with its positive control: `ip:port` answers from
    /// `control` (so the listener is up), then a probe from `from` is
    /// dropped. The packets `from` sent, or what went wrong.
    pub fn forbidden(
        &self,
        control: &str,
        from: &str,
        proto: Proto,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<u64, String> {
        self.answers(control, proto, ip, port)
            .map_err(|e| format!("control: {e}"))?;
        self.dropped(from, proto, ip, port)
    }

    /// Packets translated to a published port so far: the eBPF `dnat`
    /// counter, or the packets of the rules of NETCTL-DNAT. A refusal with
    /// this unchanged came from the host's own stack, untranslated.
    pub fn dnat_packets(&self) -> u64 {
        if self.datapath == "ebpf" {
            let stats: serde_json::Value =
                serde_json::from_str(&self.netctl_ok(&["--format", "json", "stats"]))
                    .expect("stats json");
            return stats["dnat"]["packets"].as_u64().expect("dnat packets");
        }
        self.iptables_save_counters("nat")
            .lines()
            .filter_map(|l| l.strip_prefix('[')?.split_once("] -A NETCTL-DNAT "))
            .map(|(counters, _)| {
                let packets = counters.split(':').next().unwrap_or_default();
                packets.parse::<u64>().expect("packet counter")
            })
            .sum()
    }

    /// The datapath's drop counters now.
    pub fn drop_counters(&self) -> DropCounters {
        if self.datapath == "ebpf" {
            let stats: serde_json::Value =
                serde_json::from_str(&self.netctl_ok(&["--format", "json", "stats"]))
                    .expect("stats json");
            let stats = stats.as_object().expect("stats object");
            return DropCounters(
                stats
                    .iter()
                    .filter(|(name, _)| name.starts_with("drop_"))
                    .map(|(name, c)| (name.clone(), c["packets"].as_u64().expect("packets")))
                    .collect(),
            );
        }
        DropCounters(
            self.iptables_save_counters("filter")
                .lines()
                .filter_map(|line| {
                    let (counters, rule) = line.strip_prefix('[')?.split_once("] ")?;
                    if !rule.starts_with("-A NETCTL-") || !rule.ends_with("-j DROP") {
                        return None;
                    }
                    Some((rule.to_owned(), counters.split(':').next()?.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The datapath dropped exactly `expected` packets since `before`: on
    /// eBPF each reason by its count and no other reason moved; on iptables
    /// the DROP rules of netctl's chains by the total.
    pub fn assert_drops_since(&self, before: &DropCounters, expected: &[(Reason, u64)]) {
        let moved = self.drop_counters().since(before);
        if self.datapath == "ebpf" {
            let mut want = BTreeMap::new();
            for (reason, packets) in expected.iter().filter(|(_, n)| *n > 0) {
                *want.entry(reason.stat().to_owned()).or_insert(0) += packets;
            }
            assert_eq!(moved, want, "eBPF drop counters moved by");
        } else {
            let total: u64 = expected.iter().map(|(_, n)| n).sum();
            assert_eq!(
                moved.values().sum::<u64>(),
                total,
                "packets of netctl's iptables DROP rules, by rule: {moved:#?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_lines() {
        assert_eq!(
            parse_probe("answered packets=1 peer=172.18.0.2:40000\n"),
            Some(Probe {
                outcome: Outcome::Answered("peer=172.18.0.2:40000".into()),
                packets: 1
            })
        );
        assert_eq!(
            parse_probe("timeout packets=2"),
            Some(Probe {
                outcome: Outcome::Timeout,
                packets: 2
            })
        );
        assert_eq!(
            parse_probe("unreachable packets=0 Network_is_unreachable").map(|p| p.outcome),
            Some(Outcome::Unreachable("Network_is_unreachable".into()))
        );
        assert_eq!(parse_probe("hello"), None);
    }
}
