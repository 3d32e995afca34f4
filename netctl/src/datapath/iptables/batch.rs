//! Batching: every change is one `iptables-restore --noflush` input,
//! planned against one [`Saved`] read so that it only adds what is missing
//! and only deletes what is there; and when `iptables-restore` refuses one,
//! the reason it gave, with the batch line it blamed.

use std::collections::BTreeMap;

use super::{
    rules::{host_rules, Rule, Table, CHAINS},
    save::Saved,
    Iptables,
};
use crate::error::{Error, Result};

pub(super) const RESTORE: &str = "iptables-restore";

/// One `iptables-restore` input: per table, chain declarations, then
/// operations, then COMMIT.
#[derive(Debug, Default)]
pub struct Batch {
    chains: BTreeMap<Table, Vec<String>>,
    ops: BTreeMap<Table, Vec<String>>,
}

impl Batch {
    fn declare(&mut self, table: Table, chain: &str) {
        self.chains
            .entry(table)
            .or_default()
            .push(format!(":{chain} - [0:0]"));
    }

    /// Adds one operation (`-A`, `-I`, `-D`, `-F`, `-X` line) on `table`.
    pub fn push(&mut self, table: Table, line: String) {
        self.ops.entry(table).or_default().push(line);
    }

    fn is_empty(&self) -> bool {
        self.chains
            .values()
            .chain(self.ops.values())
            .all(Vec::is_empty)
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for table in Table::ALL {
            let chains = self
                .chains
                .get(&table)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ops = self.ops.get(&table).map(Vec::as_slice).unwrap_or_default();
            if chains.is_empty() && ops.is_empty() {
                continue;
            }
            text.push_str(&format!("*{table}\n"));
            for line in chains.iter().chain(ops) {
                text.push_str(line);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        text
    }

    /// Chains and rules of the host that are missing: declares absent
    /// chains only (declaring an existing one would flush it).
    pub(super) fn ensure_host(&mut self, saved: &Saved) {
        for (table, chain) in CHAINS {
            if !saved.has_chain(table, chain) {
                self.declare(table, chain);
            }
        }
        for rule in host_rules() {
            if saved.count(&rule) == 0 {
                self.push(rule.table, rule.add());
            }
        }
    }

    /// Makes each table's share of `rules` present exactly once and in
    /// order: untouched when it already is, else its present copies are
    /// deleted and all of it appended again, in the same batch (an accept
    /// re-added alone would land after the DROP that ends a network).
    pub(super) fn ensure_in_order(&mut self, saved: &Saved, rules: &[Rule]) {
        for table in Table::ALL {
            let group: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
            if group.iter().all(|r| saved.count(r) == 1) {
                continue;
            }
            for rule in &group {
                for _ in 0..saved.count(rule) {
                    self.push(table, rule.delete());
                }
            }
            for rule in &group {
                self.push(table, rule.add());
            }
        }
    }

    /// Makes each of `rules` present exactly once, wherever it is (for
    /// rules whose order does not matter).
    pub(super) fn ensure_once(&mut self, saved: &Saved, rules: &[Rule]) {
        for rule in rules {
            match saved.count(rule) {
                0 => self.push(rule.table, rule.add()),
                n => (1..n).for_each(|_| self.push(rule.table, rule.delete())),
            }
        }
    }

    /// Deletes every present copy of `rules`; absent ones are no error.
    pub(super) fn remove(&mut self, saved: &Saved, rules: &[Rule]) {
        for rule in rules {
            for _ in 0..saved.count(rule) {
                self.push(rule.table, rule.delete());
            }
        }
    }
}

/// Why `iptables-restore` failed: the first line of its stderr that is not
/// a warning, and the batch line it blamed when it names one.
fn failure_reason(stderr: &str, batch: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut reason = lines
        .iter()
        .find(|l| !l.starts_with("Warning"))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| format!("{RESTORE} failed ({status})"));
    // "line 7 failed: ..." (rule errors) or "Error occurred at line: 2" (syntax).
    let blamed = lines.iter().find_map(|l| {
        let rest = &l[l.find("line")? + 4..];
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<usize>().ok()
    });
    if let Some(line) = blamed.and_then(|n| batch.lines().nth(n.checked_sub(1)?)) {
        reason.push_str(&format!(" (at `{line}`)"));
    }
    reason
}

impl Iptables {
    /// Runs one batch; `object` names the operation in the error.
    pub fn restore(&self, object: &str, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let text = batch.render();
        log::debug!("{object}:\n{text}");
        // -w: wait for the xtables lock (legacy backend) rather than fail.
        let (out, written) =
            super::run_with_input(object, &self.restore, &["-w", "--noflush"], &text)?;
        if !out.status.success() {
            return Err(Error::system(
                object,
                failure_reason(&String::from_utf8_lossy(&out.stderr), &text, out.status),
            ));
        }
        written
            .map_err(|e| Error::system(object, format!("{}: writing the batch: {e}", self.restore)))
    }

    /// Runs `batch`; if it fails, runs its lines one by one so that
    /// everything that can be done is, and reports every failure.
    pub fn restore_keep_going(&self, object: &str, batch: &Batch, errors: &mut Vec<Error>) {
        if self.restore(object, batch).is_ok() {
            return;
        }
        for table in Table::ALL {
            for line in batch.ops.get(&table).into_iter().flatten() {
                let mut single = Batch::default();
                single.push(table, line.clone());
                if let Err(e) = self.restore(object, &single) {
                    errors.push(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::iptables::{
        fixtures::{front, front_ports, SAMPLE_SAVE},
        rules::{network_rules, port_rules, DNAT_CHAIN},
    };

    #[test]
    fn batch_renders_declarations_first_and_one_commit_per_table() {
        let mut batch = Batch::default();
        assert!(batch.is_empty());
        assert_eq!(batch.render(), "");
        batch.push(Table::Nat, "-A NETCTL-DNAT -j ACCEPT".into());
        batch.declare(Table::Nat, DNAT_CHAIN);
        batch.push(Table::Filter, "-I FORWARD 1 -j NETCTL-FORWARD".into());
        assert!(!batch.is_empty());
        assert_eq!(
            batch.render(),
            "*filter\n-I FORWARD 1 -j NETCTL-FORWARD\nCOMMIT\n\
             *nat\n:NETCTL-DNAT - [0:0]\n-A NETCTL-DNAT -j ACCEPT\nCOMMIT\n"
        );
    }

    /// What iptables-save would print for a host holding our chains and `rules`.
    fn fake_save(rules: &[Rule]) -> String {
        let mut text = String::new();
        for table in Table::ALL {
            text.push_str(&format!("*{table}\n"));
            for (_, chain) in CHAINS.iter().filter(|(t, _)| *t == table) {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for rule in rules.iter().filter(|r| r.table == table) {
                text.push_str(&format!("{}\n", rule.saved()));
            }
            text.push_str("COMMIT\n");
        }
        text
    }

    #[test]
    fn plans_add_only_what_is_missing_and_restore_order() {
        let saved = Saved::parse(SAMPLE_SAVE);
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(&front()));
        let text = batch.render();
        // Only absent chains are declared (an existing one would be flushed).
        assert!(!text.contains(":NETCTL-FORWARD "), "{text}");
        assert!(
            text.contains(":NETCTL-ISOLATION-1 - [0:0]\n:NETCTL-ISOLATION-2 - [0:0]\n"),
            "{text}"
        );
        assert!(
            text.contains(":NETCTL-DNAT - [0:0]\n:NETCTL-POSTROUTING - [0:0]\n"),
            "{text}"
        );
        // Present host jumps are not added again.
        assert!(!text.contains("-I FORWARD 1"), "{text}");
        assert!(!text.contains("-j NETCTL-ISOLATION-1\n"), "{text}");
        // The filter share of the network was partly there (and the DROP twice):
        // delete what is there, then append it all in order.
        let filter: Vec<&str> = text
            .split("*nat")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with('-'))
            .collect();
        // (The jump to the guard of 127.0.0.0/8 and the DNAT exemption of
        // the host are missing from the sample too.)
        let mut want = vec![
            "-I INPUT 1 -j NETCTL-INPUT",
            "-I NETCTL-ISOLATION-2 1 -m conntrack --ctstate DNAT -j RETURN",
        ];
        want.extend(["-D NETCTL-FORWARD -o nc-front -j DROP"; 2]);
        let adds: Vec<String> = network_rules(&front())
            .iter()
            .filter(|r| r.table == Table::Filter)
            .map(Rule::add)
            .collect();
        want.extend(adds.iter().map(String::as_str));
        assert_eq!(filter, want);

        // Everything present once: nothing to do.
        let rules: Vec<Rule> = host_rules()
            .into_iter()
            .chain(network_rules(&front()))
            .collect();
        let saved = Saved::parse(&fake_save(&rules));
        let mut batch = Batch::default();
        batch.ensure_host(&saved);
        batch.ensure_in_order(&saved, &network_rules(&front()));
        assert!(batch.is_empty(), "{}", batch.render());
        // Removing deletes each present rule, nothing else.
        let mut batch = Batch::default();
        batch.remove(&saved, &port_rules(&front_ports()));
        assert!(batch.is_empty());
        batch.remove(&saved, &network_rules(&front()));
        assert_eq!(batch.ops.values().map(Vec::len).sum::<usize>(), 11);
    }

    #[test]
    fn failure_reason_names_the_blamed_line() {
        let batch = "*nat\n-A NETCTL-DNAT -j ACCEPT\n-D NETCTL-DNAT -p tcp -m tcp --dport 99 -j ACCEPT\nCOMMIT\n";
        let ok = std::process::Command::new("true").status().unwrap();
        let reason = failure_reason(
            "iptables-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?).\n",
            batch,
            ok,
        );
        assert_eq!(
            reason,
            "iptables-restore: line 3 failed: Bad rule (does a matching rule exist in that chain?). \
             (at `-D NETCTL-DNAT -p tcp -m tcp --dport 99 -j ACCEPT`)"
        );
        let reason = failure_reason(
            "Warning: weird character in interface `a b'.\n\
             iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\"\n\
             Error occurred at line: 2\n",
            batch,
            ok,
        );
        assert_eq!(
            reason,
            "iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\" (at `-A NETCTL-DNAT -j ACCEPT`)"
        );
        assert!(failure_reason("", batch, ok).starts_with("iptables-restore failed"));
    }
}
