//! Running commands: every external command xtask runs goes through here, so
//! each one is printed before it runs and fails with its exit status.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// `cargo` (the one that runs xtask when there is one), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// A command as a shell line, with the environment it sets.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    words.push(cmd.get_program().to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the command, runs it with inherited stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Totals of the `test result:` lines of a cargo test run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTotals {
    /// Adds one libtest summary line ("test result: ok. 3 passed; 0 failed; 1 ignored; ...").
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Like [`run`], passing stdout through line by line while adding up the
/// test summaries it prints.
pub fn run_tests(cmd: &mut Command) -> (Result<()>, TestTotals) {
    use std::io::BufRead as _;
    let line = display(cmd);
    println!("$ {line}");
    let mut totals = TestTotals::default();
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => return (Err(anyhow::anyhow!("cannot start `{line}`: {e}")), totals),
    };
    let stdout = child.stdout.take().expect("piped stdout");
    for out in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        println!("{out}");
        totals.add_line(&out);
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow::anyhow!("`{line}` failed ({status})")),
        Err(e) => Err(anyhow::anyhow!("waiting for `{line}`: {e}")),
    };
    (result, totals)
}

/// Runs the command silently and returns its stdout; on failure the error
/// holds its stderr. For reading state (`dpkg-query`, `ip`, `iptables-save`).
pub fn read(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`read`], printing the command first.
pub fn read_echoed(cmd: &mut Command) -> Result<String> {
    println!("$ {}", display(cmd));
    read(cmd)
}

/// Whether the command runs and exits 0 (all output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints a step header.
pub fn step(what: &str) {
    println!("\n==> {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_summaries_add_up() {
        let mut totals = TestTotals::default();
        totals.add_line("test result: ok. 66 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.27s");
        totals.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        totals.add_line("running 4 tests");
        assert_eq!(
            totals,
            TestTotals {
                passed: 69,
                failed: 1,
                ignored: 2
            }
        );
    }
}
