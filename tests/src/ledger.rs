//! The sandbox ledger: when `cargo xtask test` sets `NETCTL_SANDBOX_LEDGER`
//! to a file, every sandbox writes a line when it is made and another when
//! its drop has run the leak checks, and every privileged test that was
//! skipped says so. xtask then reads the file: no skip, at least one
//! sandbox, and every sandbox made was judged (a sandbox leaked with
//! `mem::forget`, or a test process that died, would leave a `made` line
//! without its `judged` one).

use std::{fs::OpenOptions, io::Write as _};

/// The variable that names the ledger file.
pub const ENV: &str = "NETCTL_SANDBOX_LEDGER";

/// Appends one line (`made PREFIX`, `judged PREFIX`, `skipped WHAT`) to the
/// ledger, when there is one. Lines are short and written with one
/// `write` in append mode, so test threads never interleave within a line.
pub fn record(event: &str, what: &str) {
    let Some(path) = std::env::var_os(ENV) else {
        return;
    };
    let line = format!("{event} {what}\n");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("sandbox ledger {}: {e}", path.to_string_lossy());
    }
}
