//! The sandbox ledger of a test run (written by the tests library,
//! `tests/src/ledger.rs`): proof that the privileged tests ran rather than
//! returned early, and that every sandbox went through its leak checks.

use std::{collections::BTreeSet, fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::tools::target_dir;

/// The variables the tests library reads (`netctl_tests::ledger::ENV` and
/// `netctl_tests::SKIP_PRIVILEGED_ENV`; xtask does not link the tests crate).
const LEDGER_ENV: &str = "NETCTL_SANDBOX_LEDGER";
const SKIP_PRIVILEGED_ENV: &str = "NETCTL_SKIP_PRIVILEGED";

pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    /// An empty ledger for one test run.
    pub fn fresh() -> Result<Self> {
        let path = target_dir().join("sandbox-ledger.txt");
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(Ledger { path })
    }

    /// Points the tests at the ledger; no privileged test may skip.
    pub fn attach(&self, cmd: &mut Command) {
        cmd.env(LEDGER_ENV, &self.path)
            .env_remove(SKIP_PRIVILEGED_ENV);
    }

    /// After a run whose tests all passed: nothing skipped, at least one
    /// sandbox, and every sandbox made was judged by its drop.
    pub fn verify(&self) -> Result<String> {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        let (made, judged, skipped) = parse(&text);
        if !skipped.is_empty() {
            bail!("privileged tests were skipped: {skipped:?}");
        }
        if made.is_empty() {
            bail!("no sandbox was made: the privileged tests did not run");
        }
        let unjudged: Vec<&String> = made.difference(&judged).collect();
        if !unjudged.is_empty() {
            bail!("sandboxes never went through their leak checks: {unjudged:?}");
        }
        Ok(format!(
            "{} sandboxes made, each judged by its leak checks; no test skipped",
            made.len()
        ))
    }
}

/// (made, judged, skipped) from the ledger's lines.
fn parse(text: &str) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let (mut made, mut judged, mut skipped) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("made", prefix)) => {
                made.insert(prefix.to_owned());
            }
            Some(("judged", prefix)) => {
                judged.insert(prefix.to_owned());
            }
            Some(("skipped", what)) => skipped.push(what.to_owned()),
            _ => {}
        }
    }
    (made, judged, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_made_but_never_judged_is_found() {
        let (made, judged, skipped) = parse("made a\nmade b\njudged a\nskipped sandboxes\n");
        assert_eq!(made.difference(&judged).collect::<Vec<_>>(), ["b"]);
        assert_eq!(skipped, ["sandboxes"]);
    }
}
